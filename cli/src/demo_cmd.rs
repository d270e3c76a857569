//! `wgpu-adamw demo`: the learning-curve demo (see the `wgpu-adamw-demo` crate).

use std::path::PathBuf;

/// Trains a small MLP on the GPU with minibatches under several lr schedules, from several
/// seeds each, and plots the learning curves (mean and min–max band) and the held-out
/// accuracy.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Directory for learning_curve.svg and learning_curve.csv.
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,
    /// Optimizer steps per run.
    #[arg(long, default_value_t = wgpu_adamw_demo::DemoOptions::default().steps)]
    pub steps: u32,
    /// Runs per schedule (seeds of the initial weights and the minibatch order).
    #[arg(long, default_value_t = wgpu_adamw_demo::DemoOptions::default().seeds)]
    pub seeds: u32,
    /// A schedule to compare, `NAME=JSON` or a bare JSON `schedule` object (named by its
    /// kind); repeat it to compare several. Replaces the default set (constant, cosine, warm
    /// restarts, warmup + cosine, wsd, onecycle).
    #[arg(long = "schedule", value_name = "[NAME=]JSON")]
    pub schedules: Vec<String>,
}

/// Runs the demo with `args`.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.steps >= 1, "--steps must be >= 1");
    anyhow::ensure!(args.seeds >= 1, "--seeds must be >= 1");
    let schedules = args
        .schedules
        .iter()
        .map(|s| wgpu_adamw_demo::parse_schedule_arg(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let opts = wgpu_adamw_demo::DemoOptions {
        out: args.out.clone(),
        steps: args.steps,
        seeds: args.seeds,
        schedules,
        ..Default::default()
    };
    wgpu_adamw_demo::run(&opts)?;
    Ok(())
}
