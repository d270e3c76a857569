//! `wgpu-adamw demo`: the learning-curve demo (see the `wgpu-adamw-demo` crate).

use std::path::PathBuf;

/// Trains a small MLP on the GPU under four lr schedules and plots the learning curves.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Directory for learning_curve.svg and learning_curve.csv.
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,
    /// Optimizer steps per schedule.
    #[arg(long, default_value_t = wgpu_adamw_demo::DemoOptions::default().steps)]
    pub steps: u32,
}

/// Runs the demo with `args`.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.steps >= 1, "--steps must be >= 1");
    let opts = wgpu_adamw_demo::DemoOptions {
        out: args.out.clone(),
        steps: args.steps,
        ..Default::default()
    };
    wgpu_adamw_demo::run(&opts)?;
    Ok(())
}
