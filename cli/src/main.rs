//! `wgpu-adamw`: replay PyTorch traces, print schedules, list adapters, run the benchmark
//! and the learning-curve demo.

mod bench_cmd;
mod demo_cmd;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use wgpu_adamw::trace::{self, Backend, Trace};
use wgpu_adamw::{AdamWConfig, Error, GpuContext, Schedule};

#[derive(Parser, Debug)]
#[command(
    name = "wgpu-adamw",
    version,
    about = "AdamW + learning-rate schedule fused in one WGSL kernel"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum BackendArg {
    /// The fused kernel on the default adapter.
    Gpu,
    /// The CPU reference.
    Cpu,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Replay an adamw-trace/1 file and compare with the recorded PyTorch values.
    Replay {
        /// The trace (.safetensors).
        trace: PathBuf,
        #[arg(long, value_enum, default_value = "gpu")]
        backend: BackendArg,
        /// Write the results under the trace's own names.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Save the state after step K, build a fresh optimizer from that file, finish from it.
        #[arg(long, value_name = "K")]
        checkpoint_at: Option<u32>,
        /// Where `--checkpoint-at` writes its checkpoint (default: a temporary file).
        #[arg(long, value_name = "FILE")]
        checkpoint_file: Option<PathBuf>,
    },
    /// Print `step,lr` for each optimizer step, computed by the kernel's schedule code.
    Schedule {
        /// The `schedule` object of the trace format, e.g. '{"kind":"cosine","t_max":100,"eta_min":0}'.
        #[arg(long)]
        schedule: String,
        #[arg(long)]
        base_lr: f64,
        #[arg(long, default_value_t = 1)]
        steps_per_epoch: u32,
        /// Comma-separated steps and inclusive ranges, e.g. `1..10,100,4294967295`.
        #[arg(long)]
        steps: String,
        #[arg(long, value_enum, default_value = "gpu")]
        backend: BackendArg,
        /// Draw the curve into an SVG file.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
    },
    /// List the adapters wgpu sees, with backend and limits.
    Adapters,
    /// Benchmark the fused step against the device's copy roofline, an unfused baseline and
    /// the CPU reference.
    Bench(bench_cmd::BenchArgs),
    /// Train a small MLP on the GPU under four lr schedules and plot the learning curves.
    Demo(demo_cmd::DemoArgs),
}

/// An error that makes the input unusable (exit status 2).
#[derive(Debug)]
struct Unusable(String);

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unusable {}

fn unusable(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(Unusable(e.to_string()))
}

fn gpu_context() -> Result<GpuContext> {
    GpuContext::new().map_err(|e| match e {
        Error::NoAdapter(_) | Error::RequestDevice(_) => unusable(format!(
            "{e} (or run on the CPU reference with --backend cpu)"
        )),
        other => anyhow!(other),
    })
}

fn main() -> ExitCode {
    // The Vulkan loader complains on stderr when XDG_RUNTIME_DIR is unset (headless
    // machines, CI); it does not need a real one.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay {
            trace,
            backend,
            out,
            checkpoint_at,
            checkpoint_file,
        } => replay(
            &trace,
            backend,
            out.as_deref(),
            checkpoint_at,
            checkpoint_file,
        ),
        Command::Schedule {
            schedule,
            base_lr,
            steps_per_epoch,
            steps,
            backend,
            plot,
        } => schedule_cmd(
            &schedule,
            base_lr,
            steps_per_epoch,
            &steps,
            backend,
            plot.as_deref(),
        ),
        Command::Adapters => adapters(),
        Command::Bench(args) => bench_cmd::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Demo(args) => demo_cmd::run(&args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let status = if e.downcast_ref::<Unusable>().is_some() {
                2
            } else {
                1
            };
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("wgpu-adamw: error: {msg}");
            ExitCode::from(status)
        }
    }
}

fn replay(
    path: &Path,
    backend: BackendArg,
    out: Option<&Path>,
    checkpoint_at: Option<u32>,
    checkpoint_file: Option<PathBuf>,
) -> Result<ExitCode> {
    let trace = Trace::load(path).map_err(unusable)?;
    if let Some(k) = checkpoint_at {
        if k > trace.steps {
            return Err(unusable(format!(
                "--checkpoint-at {k} is past the trace's {} steps",
                trace.steps
            )));
        }
    }
    let ctx;
    let backend = match backend {
        BackendArg::Gpu => {
            ctx = gpu_context()?;
            eprintln!("adapter: {}", ctx.describe());
            Backend::Gpu(&ctx)
        }
        BackendArg::Cpu => Backend::Cpu,
    };
    let tmp = std::env::temp_dir().join(format!(
        "wgpu-adamw-{}.ckpt.safetensors",
        std::process::id()
    ));
    let ckpt_path = checkpoint_file.unwrap_or_else(|| tmp.clone());
    let result = trace::replay(
        &trace,
        backend,
        checkpoint_at.map(|k| (k, ckpt_path.as_path())),
    );
    let _ = std::fs::remove_file(&tmp);
    let output = result?;
    let cmp = trace::compare(&trace, &output);
    println!(
        "{}: {} steps, {} tensors, {} groups{}",
        path.display(),
        trace.steps,
        trace.params.len(),
        trace.groups.len(),
        checkpoint_at.map_or(String::new(), |k| format!(
            ", resumed from a checkpoint after step {k}"
        ))
    );
    println!(
        "{:<16} {:>12} {:>14}  at",
        "kind", "max |err|", "err/tolerance"
    );
    for (kind, w) in cmp.rows() {
        println!("{kind:<16} {:>12.3e} {:>14.4}  {}", w.abs, w.ratio, w.at);
    }
    if let Some(out) = out {
        write_output(&trace, &output, out).with_context(|| format!("writing {}", out.display()))?;
    }
    if cmp.passed() {
        println!("PASS: within the tolerances of adamw-trace/1");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("FAIL: outside the tolerances of adamw-trace/1");
        Ok(ExitCode::from(1))
    }
}

fn write_output(trace: &Trace, out: &trace::ReplayOutput, path: &Path) -> Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let mut tensors: Vec<(String, Dtype, Vec<u8>, usize)> = Vec::new();
    let f32s = |d: &[f32]| d.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    for (i, p) in trace.params.iter().enumerate() {
        let n = p.init.len();
        tensors.push((
            format!("final/{}", p.name),
            Dtype::F32,
            f32s(&out.params[i]),
            n,
        ));
        tensors.push((
            format!("final_exp_avg/{}", p.name),
            Dtype::F32,
            f32s(&out.exp_avg[i]),
            n,
        ));
        tensors.push((
            format!("final_exp_avg_sq/{}", p.name),
            Dtype::F32,
            f32s(&out.exp_avg_sq[i]),
            n,
        ));
        if let Some(v) = &out.max_exp_avg_sq {
            tensors.push((
                format!("final_max_exp_avg_sq/{}", p.name),
                Dtype::F32,
                f32s(&v[i]),
                n,
            ));
        }
    }
    for (g, lr) in out.lr.iter().enumerate() {
        let bytes = lr
            .iter()
            .flat_map(|&x| f64::from(x).to_le_bytes())
            .collect();
        tensors.push((format!("lr/{g}"), Dtype::F64, bytes, lr.len()));
    }
    let views = tensors
        .iter()
        .map(|(name, dtype, bytes, n)| {
            Ok((name.clone(), TensorView::new(*dtype, vec![*n], bytes)?))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    // Written beside the target, then renamed: an interrupted run never leaves half a file.
    let tmp = path.with_extension("partial");
    safetensors::serialize_to_file(views, None, &tmp)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Parses `1..10,100,4294967295` into step numbers (1 <= step <= 2^32 - 1).
fn parse_steps(list: &str) -> Result<Vec<u32>> {
    let num = |s: &str| -> Result<u32> {
        let n: u64 = s
            .trim()
            .parse()
            .map_err(|_| unusable(format!("bad step `{s}`")))?;
        if n == 0 || n > u64::from(u32::MAX) {
            bail!(unusable(format!("step {n} is outside 1..=4294967295")));
        }
        Ok(n as u32)
    };
    let mut steps = Vec::new();
    for part in list.split(',').filter(|p| !p.trim().is_empty()) {
        if let Some((a, b)) = part.split_once("..") {
            let (a, b) = (num(a)?, num(b.trim_start_matches('='))?);
            if b < a {
                bail!(unusable(format!("empty range `{part}`")));
            }
            if u64::from(b - a) >= 10_000_000 {
                bail!(unusable(format!("range `{part}` has more than 10^7 steps")));
            }
            steps.extend(a..=b);
        } else {
            steps.push(num(part)?);
        }
    }
    if steps.is_empty() {
        bail!(unusable("--steps lists no step"));
    }
    Ok(steps)
}

fn schedule_cmd(
    json: &str,
    base_lr: f64,
    steps_per_epoch: u32,
    steps: &str,
    backend: BackendArg,
    plot: Option<&Path>,
) -> Result<ExitCode> {
    let schedule = Schedule::from_json(json).map_err(unusable)?;
    let config = AdamWConfig::default()
        .with_lr(base_lr)
        .with_schedule(schedule)
        .with_steps_per_epoch(steps_per_epoch);
    config.validate().map_err(unusable)?;
    let steps = parse_steps(steps)?;
    let lrs = match backend {
        BackendArg::Gpu => {
            let ctx = gpu_context()?;
            wgpu_adamw::schedule_lrs_gpu(&ctx.device, &ctx.queue, &config, base_lr, &steps)?
        }
        BackendArg::Cpu => wgpu_adamw::schedule_lrs_cpu(&config, base_lr, &steps)?,
    };
    let mut out = String::with_capacity(steps.len() * 24);
    out.push_str("step,lr\n");
    for (s, lr) in steps.iter().zip(&lrs) {
        out.push_str(&format!("{s},{lr:e}\n"));
    }
    print!("{out}");
    if let Some(path) = plot {
        plot_schedule(path, &steps, &lrs, json)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn plot_schedule(path: &Path, steps: &[u32], lrs: &[f32], title: &str) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let (x0, x1) = (
        steps.iter().min().copied().unwrap_or(1),
        steps.iter().max().copied().unwrap_or(1),
    );
    let y1 = lrs.iter().fold(0f32, |a, &b| a.max(b)) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(
            f64::from(x0)..f64::from(x1.max(x0 + 1)),
            0f64..f64::from(y1.max(1e-12)),
        )?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .y_desc("lr")
        .draw()?;
    let mut points: Vec<(f64, f64)> = steps
        .iter()
        .zip(lrs)
        .map(|(&s, &l)| (f64::from(s), f64::from(l)))
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    chart.draw_series(LineSeries::new(points, &BLUE))?;
    root.present()?;
    Ok(())
}

fn adapters() -> Result<ExitCode> {
    let list = wgpu_adamw::list_adapters();
    if list.is_empty() {
        return Err(unusable(
            "no adapter found; on Linux without a GPU install the software Vulkan adapter: apt-get install -y mesa-vulkan-drivers libvulkan1",
        ));
    }
    for a in list {
        let i = a.get_info();
        let l = a.limits();
        println!(
            "{} ({:?}, {:?}, driver: {} {})",
            i.name, i.backend, i.device_type, i.driver, i.driver_info
        );
        println!(
            "  max_storage_buffer_binding_size={} max_buffer_size={} max_storage_buffers_per_shader_stage={} \
             max_compute_workgroups_per_dimension={} max_compute_invocations_per_workgroup={} timestamp_query={}",
            l.max_storage_buffer_binding_size,
            l.max_buffer_size,
            l.max_storage_buffers_per_shader_stage,
            l.max_compute_workgroups_per_dimension,
            l.max_compute_invocations_per_workgroup,
            a.features().contains(wgpu_adamw::wgpu::Features::TIMESTAMP_QUERY)
        );
    }
    Ok(ExitCode::SUCCESS)
}
