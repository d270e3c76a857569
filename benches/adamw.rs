//! `cargo bench`: the bundled benchmark (see the `wgpu-adamw-bench` crate) on the default
//! adapter. It takes the flags of `wgpu-adamw bench` after `--` (one parser,
//! `wgpu_adamw_bench::cli`; `-- --help` lists them; unknown flags are refused).
//!
//! ```text
//! cargo bench -- --quick
//! cargo bench -- --json target/bench.json
//! cargo bench -- --quick --compare target/bench.json
//! cargo bench -- --quick --mixed --no-cpu flat_2^22
//! cargo bench -- --repoint
//! ```

fn main() -> anyhow::Result<()> {
    wgpu_adamw_bench::cli::main(std::env::args().skip(1))
}
