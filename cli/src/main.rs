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
    /// Replay an adamw-trace/1 or /2 file and compare with the recorded PyTorch values.
    Replay {
        /// The trace (.safetensors).
        trace: PathBuf,
        #[arg(long, value_enum, default_value = "gpu")]
        backend: BackendArg,
        /// Write the results under the trace format's names, in the trace's dtypes (final
        /// parameters and moments, final_model/final_ema, lr/beta1, skipped, and the
        /// GradScaler's grad_scale/S, final_scale and final_growth_tracker).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Save the state after step K, build a fresh optimizer from that file, finish from it.
        #[arg(long, value_name = "K")]
        checkpoint_at: Option<u32>,
        /// Where `--checkpoint-at` writes its checkpoint (default: a temporary file).
        #[arg(long, value_name = "FILE")]
        checkpoint_file: Option<PathBuf>,
    },
    /// Print the lr of each optimizer step (CSV) for one or more schedules of any kind.
    ///
    /// The lrs are computed by the kernel's schedule code. Accepts every schedule kind of the
    /// trace format (see `--schedule`). Give `--schedule` several times to compare schedules:
    /// the CSV then has one column per schedule, `step,lr_0,lr_1,...` (`step,lr` with one),
    /// and `--plot` draws every curve in one chart. A `reduce_on_plateau` schedule is a state
    /// machine fed one metric per epoch: it needs `--metric FILE`, and its lrs come from
    /// really stepping an optimizer (on the chosen backend) over a one-element tensor with
    /// zero gradients, up to step 10^7.
    Schedule {
        #[arg(long = "schedule", value_name = "JSON", required = true, help = schedule_help())]
        schedules: Vec<String>,
        /// The base lr (also the optimizer's lr).
        #[arg(long)]
        base_lr: f64,
        #[arg(long, default_value_t = 1)]
        steps_per_epoch: u32,
        /// Comma-separated steps and inclusive ranges, e.g. `1..10,100,4294967295`.
        #[arg(long)]
        steps: String,
        #[arg(long, value_enum, default_value = "gpu")]
        backend: BackendArg,
        /// Draw the curves into an SVG file (one colour per schedule, with a legend).
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
        /// The metrics fed to a `reduce_on_plateau` schedule, one f32 per epoch: one per line
        /// (commas also separate; blank lines and lines starting with `#` are ignored). The
        /// metric of epoch j is read before the first step of epoch j + 1. Required by, and
        /// only accepted with, a `reduce_on_plateau` schedule.
        #[arg(long, value_name = "FILE")]
        metric: Option<PathBuf>,
    },
    /// List the adapters wgpu sees, with backend and limits.
    Adapters,
    /// Benchmark the fused step against the device's copy roofline, an unfused baseline and
    /// the CPU reference.
    Bench(bench_cmd::BenchArgs),
    /// Train a small MLP on the GPU under four lr schedules and plot the learning curves.
    Demo(demo_cmd::DemoArgs),
    /// Move the checkpoints of a sharded (ZeRO-1) optimizer, one file per rank, to another
    /// number of ranks or other cuts, bit for bit. Writes `OUT/rank-{r}-of-{M}.safetensors`.
    Reshard {
        /// Every rank's checkpoint file, in any order.
        #[arg(required = true)]
        shards: Vec<PathBuf>,
        /// Cut the flattened parameters into this many nearly equal ranges.
        #[arg(long, required_unless_present = "bounds", conflicts_with = "bounds")]
        ranks: Option<usize>,
        /// Or cut them at these element indices: comma-separated, from 0 to the total.
        #[arg(long, value_name = "0,B1,..,N")]
        bounds: Option<String>,
        /// The directory to write the new checkpoints into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
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
            schedules,
            base_lr,
            steps_per_epoch,
            steps,
            backend,
            plot,
            metric,
        } => schedule_cmd(&ScheduleArgs {
            schedules: &schedules,
            base_lr,
            steps_per_epoch,
            steps: &steps,
            backend,
            plot: plot.as_deref(),
            metric: metric.as_deref(),
        }),
        Command::Adapters => adapters(),
        Command::Bench(args) => bench_cmd::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Demo(args) => demo_cmd::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Reshard {
            shards,
            ranks,
            bounds,
            out,
        } => reshard(&shards, ranks, bounds.as_deref(), &out),
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

fn reshard(
    files: &[PathBuf],
    ranks: Option<usize>,
    bounds: Option<&str>,
    out: &Path,
) -> Result<ExitCode> {
    use wgpu_adamw::shard::{self, ShardLayout};
    let states = files
        .iter()
        .map(wgpu_adamw::OptimizerState::load)
        .collect::<wgpu_adamw::Result<Vec<_>>>()
        .map_err(unusable)?;
    let whole = shard::merge_states(&states).map_err(unusable)?;
    let total: u64 = whole.tensors.iter().map(|t| t.exp_avg.len() as u64).sum();
    let layout = match (ranks, bounds) {
        (Some(r), _) => ShardLayout::even(total, r),
        (None, Some(b)) => {
            let bounds = b
                .split(',')
                .map(|x| x.trim().parse::<u64>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| unusable(format!("--bounds {b}: {e}")))?;
            ShardLayout::new(bounds)
        }
        (None, None) => unreachable!("clap requires one of --ranks and --bounds"),
    }
    .map_err(unusable)?;
    // Everything is computed before the first file is written.
    let moved = shard::split_state(&whole, &layout).map_err(unusable)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let m = layout.ranks();
    for (r, s) in moved.iter().enumerate() {
        let path = out.join(shard::checkpoint_name(r, m));
        s.save(&path)?;
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
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
        let bits16 = w.bits16.map_or(String::new(), |(ulps, frac)| {
            format!(
                "  (16-bit: max {ulps:.1} ulps, {:.3}% not bit-identical)",
                frac * 100.0
            )
        });
        println!(
            "{kind:<16} {:>12.3e} {:>14.4}  {}{bits16}",
            w.abs, w.ratio, w.at
        );
    }
    if let Some(out) = out {
        trace::write_output(&trace, &output, out)
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote {} ({})", out.display(), trace::output_format(&trace));
    }
    let format = trace::output_format(&trace);
    if cmp.passed() {
        println!("PASS: within the tolerances of {format}");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("FAIL: outside the tolerances of {format}");
        Ok(ExitCode::from(1))
    }
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

/// The help of `schedule --schedule`: the trace format's object, and every kind it knows.
fn schedule_help() -> String {
    format!(
        "The `schedule` object of the trace format, e.g. \
         '{{\"kind\":\"cosine\",\"t_max\":100,\"eta_min\":0}}'. Repeat it to print and plot \
         several schedules side by side. Kinds: {}",
        Schedule::KINDS.join(", ")
    )
}

/// The arguments of the `schedule` subcommand.
struct ScheduleArgs<'a> {
    schedules: &'a [String],
    base_lr: f64,
    steps_per_epoch: u32,
    steps: &'a str,
    backend: BackendArg,
    plot: Option<&'a Path>,
    metric: Option<&'a Path>,
}

/// The largest step a `reduce_on_plateau` schedule is simulated to (step by step).
const PLATEAU_MAX_STEP: u32 = 10_000_000;

fn schedule_cmd(args: &ScheduleArgs<'_>) -> Result<ExitCode> {
    let several = args.schedules.len() > 1;
    let name = |i: usize| {
        if several {
            format!("--schedule #{i}")
        } else {
            "--schedule".to_string()
        }
    };
    let mut configs = Vec::with_capacity(args.schedules.len());
    for (i, json) in args.schedules.iter().enumerate() {
        let schedule =
            Schedule::from_json(json).map_err(|e| unusable(format!("{}: {e}", name(i))))?;
        let config = AdamWConfig::default()
            .with_lr(args.base_lr)
            .with_schedule(schedule)
            .with_steps_per_epoch(args.steps_per_epoch);
        config
            .validate()
            .map_err(|e| unusable(format!("{}: {e}", name(i))))?;
        configs.push(config);
    }
    let steps = parse_steps(args.steps)?;
    let max_step = steps.iter().copied().max().unwrap_or(1);
    let plateau = configs.iter().position(|c| c.schedule.needs_metric());
    let metrics = match (plateau, args.metric) {
        (None, Some(path)) => {
            return Err(unusable(format!(
                "--metric {} is given but no --schedule is reduce_on_plateau (the only kind \
                 that reads a metric)",
                path.display()
            )))
        }
        (Some(i), None) => {
            return Err(unusable(format!(
                "{} is reduce_on_plateau: it needs --metric FILE (one metric per epoch)",
                name(i)
            )))
        }
        (Some(i), Some(path)) => {
            if max_step > PLATEAU_MAX_STEP {
                return Err(unusable(format!(
                    "{} is reduce_on_plateau, which is simulated step by step: step {max_step} \
                     is past the {PLATEAU_MAX_STEP} steps it can run",
                    name(i)
                )));
            }
            let metrics = read_metrics(path)?;
            let needed = ((max_step - 1) / args.steps_per_epoch) as usize;
            if metrics.len() < needed {
                eprintln!(
                    "wgpu-adamw: warning: {} holds {} metrics but the steps up to {max_step} read \
                     {needed} (one per finished epoch); the epochs past it get NaN (a bad epoch)",
                    path.display(),
                    metrics.len()
                );
            }
            metrics
        }
        (None, None) => Vec::new(),
    };
    let ctx = match args.backend {
        BackendArg::Gpu => Some(gpu_context()?),
        BackendArg::Cpu => None,
    };
    let mut columns: Vec<Vec<f32>> = Vec::with_capacity(configs.len());
    for config in &configs {
        let lrs = match (&ctx, config.schedule.needs_metric()) {
            (Some(ctx), false) => {
                wgpu_adamw::schedule_lrs_gpu(&ctx.device, &ctx.queue, config, args.base_lr, &steps)?
            }
            (None, false) => wgpu_adamw::schedule_lrs_cpu(config, args.base_lr, &steps)?,
            (Some(ctx), true) => plateau_lrs_gpu(ctx, config, &metrics, &steps)?,
            (None, true) => plateau_lrs_cpu(config, &metrics, &steps)?,
        };
        columns.push(lrs);
    }
    let mut out = String::with_capacity(steps.len() * (12 + 14 * columns.len()));
    if several {
        out.push_str("step");
        for i in 0..columns.len() {
            out.push_str(&format!(",lr_{i}"));
        }
        out.push('\n');
    } else {
        out.push_str("step,lr\n");
    }
    for (row, s) in steps.iter().enumerate() {
        out.push_str(&s.to_string());
        for lrs in &columns {
            out.push_str(&format!(",{:e}", lrs[row]));
        }
        out.push('\n');
    }
    print!("{out}");
    if let Some(path) = args.plot {
        let curves: Vec<Curve<'_>> = configs
            .iter()
            .zip(args.schedules)
            .zip(&columns)
            .map(|((config, json), lrs)| Curve {
                label: legend_label(config.schedule.kind(), json),
                lrs,
            })
            .collect();
        let title = if several {
            "learning-rate schedules".to_string()
        } else {
            args.schedules[0].clone()
        };
        plot_schedule(path, &steps, &curves, &title)
            .with_context(|| format!("drawing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a metric file: f32s separated by newlines or commas; blank lines and lines
/// starting with `#` are skipped.
fn read_metrics(path: &Path) -> Result<Vec<f32>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| unusable(format!("--metric {}: {e}", path.display())))?;
    let mut metrics = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        for field in line.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let m: f32 = field.parse().map_err(|_| {
                unusable(format!(
                    "--metric {}:{}: `{field}` is not a number",
                    path.display(),
                    n + 1
                ))
            })?;
            metrics.push(m);
        }
    }
    Ok(metrics)
}

/// The metric written before optimizer step `s` (1-based), if `s` starts an epoch after the
/// first: epoch `j`'s metric is read before the first step of epoch `j + 1`.
fn metric_before(s: u32, steps_per_epoch: u32, metrics: &[f32]) -> Option<f32> {
    let done = s - 1;
    if done > 0 && done.is_multiple_of(steps_per_epoch) {
        let epoch = (done / steps_per_epoch) as usize;
        Some(metrics.get(epoch - 1).copied().unwrap_or(f32::NAN))
    } else {
        None
    }
}

/// `steps` sorted, without repeats.
fn distinct(steps: &[u32]) -> Vec<u32> {
    let mut want = steps.to_vec();
    want.sort_unstable();
    want.dedup();
    want
}

/// Puts the lrs of the distinct steps `want` back in the order (and repeats) of `steps`.
fn in_request_order(steps: &[u32], want: &[u32], lrs: &[f32]) -> Vec<f32> {
    steps
        .iter()
        .map(|s| lrs[want.binary_search(s).expect("every step is wanted")])
        .collect()
}

/// The lr at each of `steps` of a stateful (ReduceLROnPlateau) schedule, from stepping the
/// CPU reference over one element with zero gradients and feeding it `metrics`.
fn plateau_lrs_cpu(config: &AdamWConfig, metrics: &[f32], steps: &[u32]) -> Result<Vec<f32>> {
    let want = distinct(steps);
    let last = *want.last().expect("--steps lists a step");
    let mut opt = wgpu_adamw::CpuAdamW::new(
        config.clone(),
        vec![wgpu_adamw::CpuParamGroup {
            lens: vec![1],
            ..Default::default()
        }],
    )?;
    let (mut p, g) = ([0f32], [0f32]);
    let mut lrs = Vec::with_capacity(want.len());
    for s in 1..=last {
        if let Some(m) = metric_before(s, config.steps_per_epoch, metrics) {
            opt.set_metric(m);
        }
        opt.step(&mut [&mut p[..]], &[&g[..]])?;
        if want[lrs.len()] == s {
            lrs.push(opt.lr()[0]);
        }
    }
    Ok(in_request_order(steps, &want, &lrs))
}

/// [`plateau_lrs_cpu`] on the device: every step is recorded with a copy of its scalars
/// into a log read back in chunks.
fn plateau_lrs_gpu(
    ctx: &GpuContext,
    config: &AdamWConfig,
    metrics: &[f32],
    steps: &[u32],
) -> Result<Vec<f32>> {
    use wgpu_adamw::wgpu::{self, BufferUsages};
    /// Bytes of one step's scalars (one group): the lr is the first f32.
    const ROW: u64 = 32;
    /// Steps logged before the log is read back.
    const LOG_ROWS: usize = 1 << 16;
    let want = distinct(steps);
    let last = *want.last().expect("--steps lists a step");
    let (device, queue) = (&ctx.device, &ctx.queue);
    let buffer = |label, size, usage| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        })
    };
    let tensor = BufferUsages::STORAGE | BufferUsages::COPY_DST | BufferUsages::COPY_SRC;
    let p = buffer("schedule param", 16, tensor);
    let g = buffer("schedule grad", 16, tensor);
    let rows = want.len().min(LOG_ROWS);
    let log = buffer(
        "schedule lr log",
        rows as u64 * ROW,
        BufferUsages::COPY_DST | BufferUsages::COPY_SRC,
    );
    let opt = wgpu_adamw::GpuAdamW::new(
        device,
        queue,
        config.clone(),
        vec![wgpu_adamw::ParamGroup {
            tensors: vec![wgpu_adamw::TensorBinding::whole(&p, &g)],
            ..Default::default()
        }],
    )?;
    let mut batch = Batch {
        device,
        queue,
        encoder: None,
        recorded: 0,
        in_flight: 0,
    };
    let read_log = |lrs: &mut Vec<f32>, logged: usize| -> Result<()> {
        let words = wgpu_adamw::read_buffer(device, queue, &log, 0, logged as u64 * ROW)?;
        lrs.extend(
            words
                .chunks(ROW as usize / 4)
                .map(|row| f32::from_bits(row[0])),
        );
        Ok(())
    };
    let mut lrs = Vec::with_capacity(want.len());
    let mut logged = 0usize;
    for s in 1..=last {
        if let Some(m) = metric_before(s, config.steps_per_epoch, metrics) {
            // The write goes through the queue: the steps before it must be submitted first.
            batch.submit()?;
            opt.set_metric(m);
        }
        let e = batch.encoder();
        opt.encode_step(e);
        if want[lrs.len() + logged] == s {
            opt.encode_copy_step_scalars(e, &log, logged as u64 * ROW)?;
            logged += 1;
        }
        batch.recorded += 1;
        if logged == rows {
            batch.submit()?;
            read_log(&mut lrs, logged)?;
            logged = 0;
        } else if batch.recorded >= Batch::STEPS {
            batch.submit()?;
        }
    }
    batch.submit()?;
    if logged > 0 {
        read_log(&mut lrs, logged)?;
    }
    Ok(in_request_order(steps, &want, &lrs))
}

/// Steps recorded into command buffers and submitted in batches, with at most about
/// [`Batch::STEPS`] steps in flight (a queue left to grow holds every submission's memory).
struct Batch<'a> {
    device: &'a wgpu_adamw::wgpu::Device,
    queue: &'a wgpu_adamw::wgpu::Queue,
    encoder: Option<wgpu_adamw::wgpu::CommandEncoder>,
    /// Steps recorded in `encoder`.
    recorded: u32,
    /// Steps submitted since the last wait.
    in_flight: u32,
}

impl Batch<'_> {
    /// Steps per command buffer, and in flight, at most.
    const STEPS: u32 = 256;

    /// The command encoder of the batch.
    fn encoder(&mut self) -> &mut wgpu_adamw::wgpu::CommandEncoder {
        let device = self.device;
        self.encoder
            .get_or_insert_with(|| device.create_command_encoder(&Default::default()))
    }

    /// Submits the recorded steps; waits for the device when enough are in flight.
    fn submit(&mut self) -> Result<()> {
        use wgpu_adamw::wgpu::PollType;
        if let Some(e) = self.encoder.take() {
            self.queue.submit([e.finish()]);
        }
        self.in_flight += std::mem::take(&mut self.recorded);
        let poll = if self.in_flight >= Self::STEPS {
            self.in_flight = 0;
            PollType::wait_indefinitely()
        } else {
            PollType::Poll
        };
        self.device.poll(poll).context("waiting for the device")?;
        Ok(())
    }
}

/// One curve of the plot.
struct Curve<'a> {
    label: String,
    lrs: &'a [f32],
}

/// The legend of a schedule: its kind, then its JSON on one line, cut to 70 characters.
fn legend_label(kind: &str, json: &str) -> String {
    const MAX: usize = 70;
    let json = json.split_whitespace().collect::<Vec<_>>().join(" ");
    let label = format!("{kind}: {json}");
    if label.chars().count() <= MAX {
        label
    } else {
        let mut cut: String = label.chars().take(MAX - 3).collect();
        cut.push_str("...");
        cut
    }
}

fn plot_schedule(path: &Path, steps: &[u32], curves: &[Curve<'_>], title: &str) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let (x0, x1) = (
        steps.iter().min().copied().unwrap_or(1),
        steps.iter().max().copied().unwrap_or(1),
    );
    let y1 = curves
        .iter()
        .flat_map(|c| c.lrs.iter())
        .filter(|l| l.is_finite())
        .fold(0f32, |a, &b| a.max(b))
        * 1.05;
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
    for (i, curve) in curves.iter().enumerate() {
        let mut points: Vec<(f64, f64)> = steps
            .iter()
            .zip(curve.lrs)
            .filter(|(_, l)| l.is_finite())
            .map(|(&s, &l)| (f64::from(s), f64::from(l)))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let colour = CURVE_COLOURS[i % CURVE_COLOURS.len()];
        let style = colour.stroke_width(2);
        chart
            .draw_series(LineSeries::new(points, style))?
            .label(curve.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Curve colours that stay readable on white (plotters' palette has a pale yellow third).
const CURVE_COLOURS: [plotters::style::RGBColor; 8] = [
    plotters::style::RGBColor(31, 119, 180),
    plotters::style::RGBColor(214, 39, 40),
    plotters::style::RGBColor(44, 160, 44),
    plotters::style::RGBColor(148, 103, 189),
    plotters::style::RGBColor(255, 127, 14),
    plotters::style::RGBColor(0, 0, 0),
    plotters::style::RGBColor(23, 190, 207),
    plotters::style::RGBColor(140, 86, 75),
];

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
