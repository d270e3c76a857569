//! `wgpu-adamw bench`: the bundled benchmark (the `wgpu-adamw-bench` crate) on the default
//! adapter, with the flags of `cargo bench --bench adamw --` (one parser,
//! `wgpu_adamw_bench::cli`).

/// Arguments of `wgpu-adamw bench`: passed as they are to the benchmark's own parser.
#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true, after_help = wgpu_adamw_bench::cli::USAGE)]
pub struct BenchArgs {
    /// The benchmark's flags (`--help` lists them).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "FLAGS"
    )]
    pub args: Vec<String>,
}

/// Runs the benchmark as its flags ask, printing its table, goal ratios and comparison.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    wgpu_adamw_bench::cli::main(args.args.iter().cloned())
}
