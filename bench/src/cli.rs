//! The benchmark's command line, shared by `cargo bench --bench adamw -- ARGS` and
//! `wgpu-adamw bench ARGS`: one parser, one set of flags, unknown ones refused; and the
//! comparison of a run with an earlier JSON report (`--compare OLD.json`).

use crate::{BenchOptions, BenchPrecision};
use anyhow::{bail, Context as _, Result};
use std::path::PathBuf;

/// The flags, as `--help` prints them.
pub const USAGE: &str = "\
flags:
  --quick              the quick set (flat_2^20, flat_2^22, gpt2_d256, flat_2^22_amsgrad)
  --json FILE          also write the report as JSON to FILE
  --compare OLD.json   after the run, each workload's times and ratios against OLD.json's
  --wall               time with submit + wait even where timestamp queries exist
  --no-cpu             do not time the CPU reference
  --cpu-only           only the CPU reference
  --no-progress        no progress line on stderr
  --iters N            timed steps per measurement (median; at least 10)
  --warmup N           untimed steps before each measurement
  --k-reps N           K-steps-per-submit timings (median)
  --mixed              add the bf16 rows (bf16, bf16-f32m, bf16-master)
  --precision LIST     the rows to run, comma-separated: f32, bf16, bf16-f32m, bf16-master,
                       f16, f16-f32m, f16-master
  --repoint            only the host cost of re-pointed gradients (GpuAdamW::set_grads)
  NAME ...             only the workloads whose names contain one of these";

/// What the command line asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// The GPU benchmark (and the CPU reference unless `--no-cpu`).
    #[default]
    Run,
    /// Only the CPU reference (`--cpu-only`).
    CpuOnly,
    /// Only the cost of re-pointing gradients (`--repoint`).
    Repoint,
    /// Print [`USAGE`] (`--help`).
    Help,
}

/// A parsed command line.
#[derive(Clone, Debug, Default)]
pub struct Invocation {
    /// What to run.
    pub mode: Mode,
    /// The benchmark's options.
    pub opts: BenchOptions,
    /// Where to write the JSON report.
    pub json: Option<PathBuf>,
    /// An earlier JSON report to compare the run with.
    pub compare: Option<PathBuf>,
}

/// Parses the benchmark's flags (see [`USAGE`]). `--bench`, which `cargo bench` passes, is
/// accepted and ignored; any other unknown flag is an error that lists the known ones.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Invocation> {
    let mut inv = Invocation::default();
    let mut args = args.into_iter();
    let value = |args: &mut dyn Iterator<Item = String>, flag: &str| {
        args.next().with_context(|| format!("{flag} takes a value"))
    };
    let number = |args: &mut dyn Iterator<Item = String>, flag: &str| -> Result<usize> {
        let v = value(args, flag)?;
        v.parse()
            .with_context(|| format!("{flag} takes a number, not `{v}`"))
    };
    let mut modes = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => inv.opts.quick = true,
            "--json" => inv.json = Some(value(&mut args, "--json")?.into()),
            "--compare" => inv.compare = Some(value(&mut args, "--compare")?.into()),
            "--wall" => inv.opts.force_wall = true,
            "--no-cpu" => inv.opts.cpu = false,
            "--no-progress" => inv.opts.progress = false,
            "--cpu-only" => modes.push(Mode::CpuOnly),
            "--repoint" => modes.push(Mode::Repoint),
            "--help" | "-h" => modes.push(Mode::Help),
            "--iters" => inv.opts.iters = number(&mut args, "--iters")?,
            "--warmup" => inv.opts.warmup = number(&mut args, "--warmup")?,
            "--k-reps" => inv.opts.k_reps = number(&mut args, "--k-reps")?,
            "--mixed" => {
                for p in BenchPrecision::mixed_set() {
                    if !inv.opts.precisions.contains(&p) {
                        inv.opts.precisions.push(p);
                    }
                }
            }
            "--precision" => {
                inv.opts.precisions = value(&mut args, "--precision")?
                    .split(',')
                    .map(BenchPrecision::parse)
                    .collect::<Result<_>>()?;
            }
            "--bench" => {}
            s if !s.starts_with('-') => inv.opts.filter.push(s.to_string()),
            other => bail!("unknown argument `{other}` (`--help` lists the flags)"),
        }
    }
    modes.dedup();
    inv.mode = match modes.as_slice() {
        [] => Mode::Run,
        [m] => m.clone(),
        _ if modes.contains(&Mode::Help) => Mode::Help,
        _ => bail!("--cpu-only and --repoint are separate runs: give one"),
    };
    if inv.mode != Mode::Run && (inv.json.is_some() || inv.compare.is_some()) {
        bail!("--json and --compare go with the GPU benchmark, not --cpu-only or --repoint");
    }
    Ok(inv)
}

/// Runs what `args` asks for and prints it: the body of both benchmark commands.
pub fn main(args: impl IntoIterator<Item = String>) -> Result<()> {
    let inv = parse(args)?;
    match inv.mode {
        Mode::Help => println!("{USAGE}"),
        Mode::CpuOnly => {
            for (name, params, bytes, ms) in crate::run_cpu(&inv.opts)? {
                let gbps = bytes as f64 / (ms * 1e6);
                let per = bytes / params as u64;
                println!(
                    "{name:<18} params={params:>11} cpu_ms={ms:.3} ({gbps:.1} GB/s at {per} B/param)"
                );
            }
        }
        Mode::Repoint => {
            let ctx = wgpu_adamw::GpuContext::new()?;
            println!("adapter: {}", ctx.describe());
            for (n, one) in [(14, false), (150, false), (150, true)] {
                let c = crate::repoint::measure(&ctx, n, one, 400)?;
                println!(
                    "{:>4} tensors, params in {}: encode_step {:.1} us; set_grads + encode_step: same buffers {:.1} us (set_grads {:.1} us), other buffers {:.1} us, first time {:.1} us",
                    c.tensors,
                    if c.one_param_buffer { "one buffer" } else { "a buffer each" },
                    c.encode_us,
                    c.same_buffers_us,
                    c.same_buffers_set_grads_us,
                    c.repoint_us,
                    c.first_repoint_us
                );
            }
        }
        Mode::Run => {
            // Read the old report first: a bad path should not cost a whole run.
            let old = match &inv.compare {
                Some(path) => Some(read_report(path)?),
                None => None,
            };
            let report = crate::run(&inv.opts)?;
            report.print_table();
            if let Some(path) = &inv.json {
                report.write_json(path)?;
                eprintln!("wrote {}", path.display());
            }
            if let Some(old) = old {
                print!("{}", compare(&old, &report.to_json())?);
            }
        }
    }
    Ok(())
}

fn read_report(path: &std::path::Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the report {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing the report {}", path.display()))
}

/// The rows two JSON reports ([`crate::Report::to_json`]) share, workload by workload and
/// precision by precision: each time of the old and the new report and the new one's ratio
/// to it (below 1: faster now), and the fused/copy ratio of both. Rows only one report has
/// are listed by name.
pub fn compare(old: &serde_json::Value, new: &serde_json::Value) -> Result<String> {
    use std::fmt::Write as _;
    let rows = |r: &serde_json::Value, which: &str| -> Result<Vec<serde_json::Value>> {
        r["workloads"]
            .as_array()
            .cloned()
            .with_context(|| format!("the {which} report has no `workloads` list"))
    };
    let (old_rows, new_rows) = (rows(old, "old")?, rows(new, "new")?);
    let key = |w: &serde_json::Value| {
        format!(
            "{} {}",
            w["name"].as_str().unwrap_or("?"),
            w["precision"].as_str().unwrap_or("f32")
        )
    };
    let mut s = String::new();
    let adapter = |r: &serde_json::Value| r["adapter"]["name"].as_str().unwrap_or("?").to_string();
    let _ = writeln!(
        s,
        "\ncompared with the old report (adapter {}; now {}): new / old per time, below 1 is faster now",
        adapter(old),
        adapter(new)
    );
    let _ = writeln!(
        s,
        "{:<28} {:>22} {:>22} {:>22} {:>17}",
        "workload", "fused_ms old→new", "copy_ms old→new", "cpu_ms old→new", "fused/copy"
    );
    let cell = |o: &serde_json::Value, n: &serde_json::Value, field: &str| -> String {
        match (o[field].as_f64(), n[field].as_f64()) {
            (Some(a), Some(b)) if a > 0.0 => format!("{a:.3}→{b:.3} ({:.2})", b / a),
            _ => "-".into(),
        }
    };
    let ratio = |w: &serde_json::Value| match (w["fused_ms"].as_f64(), w["copy_ms"].as_f64()) {
        (Some(f), Some(c)) if f > 0.0 => format!("{:.2}", c / f),
        _ => "-".into(),
    };
    for n in &new_rows {
        match old_rows.iter().find(|o| key(o) == key(n)) {
            Some(o) => {
                let _ = writeln!(
                    s,
                    "{:<28} {:>22} {:>22} {:>22} {:>17}",
                    key(n),
                    cell(o, n, "fused_ms"),
                    cell(o, n, "copy_ms"),
                    cell(o, n, "cpu_ms"),
                    format!("{}→{}", ratio(o), ratio(n))
                );
            }
            None => {
                let _ = writeln!(s, "{:<28} only in the new report", key(n));
            }
        }
    }
    for o in old_rows
        .iter()
        .filter(|o| !new_rows.iter().any(|n| key(n) == key(o)))
    {
        let _ = writeln!(s, "{:<28} only in the old report", key(o));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags_parse_and_unknown_ones_are_refused() {
        let inv = parse(args(
            "--bench --quick --json out.json --compare old.json --no-cpu --iters 20 --precision f32,bf16 flat",
        ))
        .unwrap();
        assert_eq!(inv.mode, Mode::Run);
        assert!(inv.opts.quick && !inv.opts.cpu);
        assert_eq!(inv.opts.iters, 20);
        assert_eq!(inv.opts.precisions.len(), 2);
        assert_eq!(inv.opts.filter, ["flat"]);
        assert_eq!(inv.json, Some("out.json".into()));
        assert_eq!(inv.compare, Some("old.json".into()));
        assert_eq!(parse(args("--cpu-only")).unwrap().mode, Mode::CpuOnly);
        for bad in [
            "--qiuck",
            "--iters",
            "--iters many",
            "--precision f64",
            "--cpu-only --repoint",
            "--repoint --json x.json",
        ] {
            assert!(parse(args(bad)).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn compare_lists_shared_rows_with_ratios_and_the_rest_by_name() {
        let report = |rows: serde_json::Value| serde_json::json!({"adapter": {"name": "x"}, "workloads": rows});
        let old = report(serde_json::json!([
            {"name": "flat_2^20", "precision": "f32", "fused_ms": 2.0, "copy_ms": 1.0, "cpu_ms": null},
            {"name": "gone", "precision": "f32", "fused_ms": 1.0, "copy_ms": 1.0},
        ]));
        let new = report(serde_json::json!([
            {"name": "flat_2^20", "precision": "f32", "fused_ms": 1.0, "copy_ms": 1.0, "cpu_ms": 3.0},
            {"name": "new", "precision": "bf16", "fused_ms": 1.0, "copy_ms": 1.0},
        ]));
        let text = compare(&old, &new).unwrap();
        let row = text
            .lines()
            .find(|l| l.starts_with("flat_2^20 f32"))
            .unwrap();
        assert!(row.contains("2.000→1.000 (0.50)"), "{row}");
        assert!(row.contains("0.50→1.00"), "{row}");
        assert!(text.contains("new bf16") && text.contains("only in the new report"));
        assert!(text.contains("gone f32") && text.contains("only in the old report"));
        assert!(compare(&serde_json::json!({}), &new).is_err());
    }
}
