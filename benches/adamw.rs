//! `cargo bench`: the bundled benchmark (see the `wgpu-adamw-bench` crate) on the default
//! adapter. Arguments after `--`: `--quick` for the quick set, `--json FILE` for the report,
//! `--wall`, `--no-cpu`, `--cpu-only`, `--iters N`, `--warmup N`, `--k-reps N`, `--mixed`
//! (adds the bf16 rows: `bf16`, `bf16-f32m`, `bf16-master`), `--precision LIST` (the rows to
//! run, comma-separated: `f32`, `bf16`, `bf16-f32m`, `bf16-master`, `f16`, `f16-f32m`,
//! `f16-master`), `--repoint` (only the host cost of re-pointing the gradients per step,
//! `GpuAdamW::set_grads`, for 14 and 150 tensors), and bare words that select workloads by
//! name.
//!
//! ```text
//! cargo bench -- --quick
//! cargo bench -- --json target/bench.json
//! cargo bench -- --quick --mixed --no-cpu flat_2^22
//! cargo bench -- --repoint
//! ```

use wgpu_adamw_bench::{run, BenchOptions, BenchPrecision};

fn number(flag: &str, arg: Option<String>) -> anyhow::Result<usize> {
    arg.and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{flag} takes a number"))
}

fn main() -> anyhow::Result<()> {
    let mut opts = BenchOptions::default();
    let mut json = None;
    let mut cpu_only = false;
    let mut repoint = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--json" => {
                json = Some(
                    args.next()
                        .ok_or_else(|| anyhow::anyhow!("--json takes a file name"))?,
                )
            }
            "--wall" => opts.force_wall = true,
            "--no-cpu" => opts.cpu = false,
            "--cpu-only" => cpu_only = true,
            "--repoint" => repoint = true,
            "--iters" => opts.iters = number("--iters", args.next())?,
            "--warmup" => opts.warmup = number("--warmup", args.next())?,
            "--k-reps" => opts.k_reps = number("--k-reps", args.next())?,
            "--mixed" => {
                for p in BenchPrecision::mixed_set() {
                    if !opts.precisions.contains(&p) {
                        opts.precisions.push(p);
                    }
                }
            }
            "--precision" => {
                let list = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--precision takes a list"))?;
                opts.precisions = list
                    .split(',')
                    .map(BenchPrecision::parse)
                    .collect::<anyhow::Result<_>>()?;
            }
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            // A bare word filters workloads by name.
            s if !s.starts_with('-') => opts.filter.push(s.to_string()),
            other => anyhow::bail!(
                "unknown argument `{other}` (known: --quick, --json FILE, --wall, --no-cpu, --cpu-only, --iters N, --warmup N, --k-reps N, --mixed, --precision LIST, --repoint, workload names)"
            ),
        }
    }
    if repoint {
        let ctx = wgpu_adamw::GpuContext::new()?;
        println!("adapter: {}", ctx.describe());
        for (n, one) in [(14, false), (150, false), (150, true)] {
            let c = wgpu_adamw_bench::repoint::measure(&ctx, n, one, 400)?;
            println!(
                "{:>4} tensors, params in {}: encode_step {:.1} us; set_grads + encode_step: same buffers {:.1} us, other buffers {:.1} us, first time {:.1} us",
                c.tensors,
                if c.one_param_buffer { "one buffer" } else { "a buffer each" },
                c.encode_us, c.same_buffers_us, c.repoint_us, c.first_repoint_us
            );
        }
        return Ok(());
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
