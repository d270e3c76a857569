//! `wgpu-adamw bench`: the bundled benchmark (the `wgpu-adamw-bench` crate) on the default
//! adapter, the same one `cargo bench` runs.

use std::path::PathBuf;

/// Arguments of `wgpu-adamw bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The quick set: flat_2^20, flat_2^22, gpt2_d256 and flat_2^22_amsgrad.
    #[arg(long)]
    pub quick: bool,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Runs the benchmark, prints its table and goal ratios, and writes the JSON report if asked.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let opts = wgpu_adamw_bench::BenchOptions {
        quick: args.quick,
        ..Default::default()
    };
    let report = wgpu_adamw_bench::run(&opts)?;
    report.print_table();
    if let Some(path) = &args.json {
        report.write_json(path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
