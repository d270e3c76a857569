//! `cargo bench`: the bundled benchmark (see the `wgpu-adamw-bench` crate) on the default
//! adapter. Arguments after `--`: `--quick` for the quick set, `--json FILE` for the report,
//! `--wall`, `--no-cpu`, `--cpu-only`, `--iters N`, `--warmup N`, `--k-reps N`, and bare words
//! that select workloads by name.
//!
//! ```text
//! cargo bench -- --quick
//! cargo bench -- --json target/bench.json
//! ```

use wgpu_adamw_bench::{run, BenchOptions};

fn number(arg: Option<String>) -> usize {
    arg.and_then(|a| a.parse().ok())
        .expect("--iters, --warmup and --k-reps take a number")
}

fn main() -> anyhow::Result<()> {
    let mut opts = BenchOptions::default();
    let mut json = None;
    let mut cpu_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--json" => json = args.next(),
            "--wall" => opts.force_wall = true,
            "--no-cpu" => opts.cpu = false,
            "--cpu-only" => cpu_only = true,
            "--iters" => opts.iters = number(args.next()),
            "--warmup" => opts.warmup = number(args.next()),
            "--k-reps" => opts.k_reps = number(args.next()),
            // `cargo bench` passes `--bench`; a bare word filters workloads by name.
            s if !s.starts_with('-') => opts.filter.push(s.to_string()),
            _ => {}
        }
    }
    if cpu_only {
        for (name, params, ms) in wgpu_adamw_bench::run_cpu(&opts)? {
            let gbps = params as f64 * 28.0 / (ms * 1e6);
            println!(
                "{name:<18} params={params:>11} cpu_ms={ms:.3} ({gbps:.1} GB/s at 28 B/param)"
            );
        }
        return Ok(());
    }
    let report = run(&opts)?;
    report.print_table();
    if let Some(path) = json {
        report.write_json(&path)?;
        eprintln!("wrote {path}");
    }
    Ok(())
}
