//! Trains a small MLP on the GPU under several lr schedules and plots the learning curves.
//!
//! ```text
//! cargo run --release --example learning_curve [-- --out DIR] [--steps N] [--seeds N] [--schedule [NAME=]JSON ...]
//! ```
//!
//! `--schedule` (repeatable) replaces the default set with any schedules the crate supports,
//! e.g. `--schedule 'slow={"kind":"exponential","gamma":0.995}'`.
//!
//! Each schedule is trained from `--seeds` seeds (default 5). Writes
//! `DIR/learning_curve.svg` (mean and min–max band of the seeds) and `DIR/learning_curve.csv`
//! (every seed) (default `demo-out/`) and prints the final training loss and held-out
//! accuracy of each schedule. See the `wgpu-adamw-demo` crate.

use std::path::PathBuf;
use std::process::ExitCode;
use wgpu_adamw_demo::DemoOptions;

const USAGE: &str =
    "usage: learning_curve [--out DIR] [--steps N] [--seeds N] [--schedule [NAME=]JSON ...]";

fn parse() -> Result<DemoOptions, String> {
    let mut opts = DemoOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--out" => opts.out = PathBuf::from(value("--out")?),
            "--steps" => {
                let v = value("--steps")?;
                opts.steps = v
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or(format!("--steps needs a positive integer, got `{v}`"))?;
            }
            "--seeds" => {
                let v = value("--seeds")?;
                opts.seeds = v
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or(format!("--seeds needs a positive integer, got `{v}`"))?;
            }
            "--schedule" => {
                let v = value("--schedule")?;
                opts.schedules
                    .push(wgpu_adamw_demo::parse_schedule_arg(&v).map_err(|e| format!("{e:#}"))?);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let opts = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match wgpu_adamw_demo::run(&opts) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
