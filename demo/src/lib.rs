//! # wgpu-adamw-demo
//!
//! A learning-curve demo of [`wgpu_adamw`]: a small MLP (2 → 64 → 64 → 2, ReLU) is trained
//! full-batch on two interleaved spirals, entirely on the GPU. Forward pass, softmax
//! cross-entropy and backward pass are WGSL kernels (`demo/shaders/`); the parameters and
//! gradients live in one arena buffer each, and [`wgpu_adamw::GpuAdamW`] updates them in
//! one compute pass per step (a prologue dispatch, then the update dispatches) with the
//! learning rate computed on the device. The loss and the lr
//! are copied into a log buffer on the device and read back every few dozen steps.
//!
//! The same model, data and initial weights are trained under four schedules (constant,
//! `CosineAnnealingLR`, `CosineAnnealingWarmRestarts`, warmup + cosine); [`run`] writes
//! `learning_curve.svg` and `learning_curve.csv` and prints a table of the final loss and
//! accuracy of each.
//!
//! [`cpu`] holds a plain-Rust implementation of the same forward and backward passes that
//! the tests check the kernels against.

#![warn(missing_docs)]

pub mod cpu;
pub mod data;
pub mod gpu;
pub mod model;
pub mod plot;

use anyhow::Context;
use gpu::{GpuMlp, LOG_RECORD_BYTES, LR_RECORD_BYTES};
use model::Mlp;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use wgpu_adamw::{AdamWConfig, GpuContext, Schedule};

/// Options of the demo; `Default` is the documented default run.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Output directory (created if missing).
    pub out: PathBuf,
    /// Optimizer steps per schedule.
    pub steps: u32,
    /// Log (copy loss and lr into the log buffer) every this many steps.
    pub log_every: u32,
    /// Submit and read back progress every this many steps.
    pub submit_every: u32,
    /// Points per spiral arm.
    pub per_class: usize,
    /// Turns of each spiral arm.
    pub turns: f64,
    /// Standard deviation of the Gaussian noise added to the points (the arms end at
    /// radius 2).
    pub noise: f64,
    /// Widths of the two hidden layers.
    pub hidden: [usize; 2],
    /// Base learning rate.
    pub lr: f64,
    /// Weight decay of the weights (biases get none).
    pub weight_decay: f64,
    /// Seed of the data set and of the initial weights.
    pub seed: u64,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Print the table of results on stdout.
    pub print_table: bool,
    /// The schedules to compare, named; empty: [`schedules`]`(steps, lr)`, the default set.
    pub schedules: Vec<(String, Schedule)>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            out: PathBuf::from("demo-out"),
            steps: 500,
            log_every: 10,
            submit_every: 50,
            per_class: 192,
            turns: 2.0,
            noise: 0.2,
            hidden: [64, 64],
            lr: 3e-2,
            weight_decay: 1e-2,
            seed: 0x5EED,
            progress: true,
            print_table: true,
            schedules: Vec::new(),
        }
    }
}

impl DemoOptions {
    /// The model these options describe.
    pub fn mlp(&self) -> Mlp {
        Mlp {
            inputs: 2,
            hidden: self.hidden,
            classes: 2,
        }
    }

    /// The data set these options describe: two noisy interleaved spirals.
    pub fn dataset(&self) -> data::Dataset {
        data::spirals(self.per_class, 2, self.turns, self.noise, self.seed)
    }

    /// The optimizer configuration of one run.
    pub fn adamw(&self, schedule: Schedule) -> AdamWConfig {
        AdamWConfig::default()
            .with_lr(self.lr)
            .with_weight_decay(self.weight_decay)
            .with_schedule(schedule)
    }

    /// The schedules of this run: [`DemoOptions::schedules`], else the default set.
    pub fn schedule_set(&self) -> Vec<(String, Schedule)> {
        if self.schedules.is_empty() {
            schedules(self.steps, self.lr)
                .into_iter()
                .map(|(n, s)| (n.to_string(), s))
                .collect()
        } else {
            self.schedules.clone()
        }
    }
}

/// Parses a `--schedule` argument: `NAME=JSON`, or a bare `JSON` named by its kind.
pub fn parse_schedule_arg(arg: &str) -> anyhow::Result<(String, Schedule)> {
    let (name, json) = match arg.split_once('=') {
        Some((n, j)) if !n.trim_start().starts_with('{') => (Some(n.trim().to_string()), j),
        _ => (None, arg),
    };
    let schedule = Schedule::from_json(json).with_context(|| format!("--schedule `{arg}`"))?;
    let name = name.unwrap_or_else(|| schedule.kind().to_string());
    anyhow::ensure!(!name.is_empty(), "--schedule `{arg}`: empty name");
    Ok((name, schedule))
}

/// The default schedules compared, named, for a run of `steps` steps at peak lr `lr`:
/// constant, cosine, warm restarts, warmup + cosine, warmup-stable-decay (MiniCPM's 1-sqrt
/// decay over the last 20%) and OneCycle (whose peak is `lr`).
pub fn schedules(steps: u32, lr: f64) -> Vec<(&'static str, Schedule)> {
    use wgpu_adamw::schedule::{OneCycle, PerGroup, Wsd, WsdShape};
    let steps = steps.max(1);
    vec![
        ("constant", Schedule::default()),
        ("cosine", Schedule::cosine(steps, 0.0)),
        (
            // Cycles of T, 2T and 4T fill the run (the third ends at or just after the end).
            "warm_restarts",
            Schedule::cosine_warm_restarts(steps.div_ceil(7), 2, 0.0),
        ),
        (
            "warmup_cosine",
            Schedule::warmup_cosine(steps / 10, steps, 0.5),
        ),
        (
            "wsd",
            Schedule::Wsd(Wsd {
                warmup_steps: steps / 10,
                stable_steps: steps - steps / 10 - steps / 5,
                decay_steps: steps / 5,
                warmup_type: WsdShape::Linear,
                decay_type: WsdShape::OneMinusSqrt,
                min_lr_ratio: 0.0,
                num_cycles: 0.5,
            }),
        ),
        (
            "onecycle",
            Schedule::OneCycle(OneCycle {
                max_lr: PerGroup::All(lr),
                total_steps: steps.max(4),
                pct_start: 0.3,
                anneal_cos: true,
                div_factor: 25.0,
                final_div_factor: 1e4,
                three_phase: false,
                cycle_momentum: true,
                base_momentum: PerGroup::All(0.85),
                max_momentum: PerGroup::All(0.95),
            }),
        ),
    ]
}

/// One logged step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogPoint {
    /// Optimizer step (1-based).
    pub step: u32,
    /// The lr the optimizer used at this step, read back from the device.
    pub lr: f32,
    /// Mean training loss of the forward pass of this step (before its update).
    pub loss: f32,
    /// Training accuracy of that forward pass.
    pub accuracy: f32,
}

/// The result of training under one schedule.
#[derive(Clone, Debug)]
pub struct ScheduleRun {
    /// Short name (`constant`, `cosine`, ..., or the user's).
    pub name: String,
    /// The schedule.
    pub schedule: Schedule,
    /// Logged steps.
    pub log: Vec<LogPoint>,
    /// The lr the device used at every step (group 0), step 1 first.
    pub lr: Vec<f32>,
    /// Loss of the final parameters.
    pub final_loss: f32,
    /// Accuracy of the final parameters.
    pub final_accuracy: f32,
    /// Wall time of this run.
    pub elapsed: Duration,
}

/// What [`run`] did.
#[derive(Clone, Debug)]
pub struct DemoReport {
    /// The adapter used.
    pub adapter: String,
    /// One entry per schedule.
    pub runs: Vec<ScheduleRun>,
    /// Path of the SVG plot.
    pub svg: PathBuf,
    /// Path of the CSV log.
    pub csv: PathBuf,
    /// Total wall time.
    pub elapsed: Duration,
}

impl DemoReport {
    /// The table of final loss and accuracy per schedule.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<15} {:>12} {:>10} {:>12} {:>9}\n",
            "schedule", "final loss", "accuracy", "lowest loss", "time"
        );
        for r in &self.runs {
            let lowest = r.log.iter().map(|p| p.loss).fold(r.final_loss, f32::min);
            s.push_str(&format!(
                "{:<15} {:>12.5} {:>9.2}% {:>12.5} {:>8.1}s\n",
                r.name,
                r.final_loss,
                100.0 * r.final_accuracy,
                lowest,
                r.elapsed.as_secs_f64()
            ));
        }
        s
    }
}

/// Runs the demo on the default adapter ([`GpuContext::new`]).
pub fn run(opts: &DemoOptions) -> anyhow::Result<DemoReport> {
    let ctx = GpuContext::new().context("no GPU to train on")?;
    run_with_context(&ctx, opts)
}

/// Runs the demo on `ctx`: trains under each of [`schedules`], writes the SVG and CSV into
/// `opts.out`, prints the table.
pub fn run_with_context(ctx: &GpuContext, opts: &DemoOptions) -> anyhow::Result<DemoReport> {
    anyhow::ensure!(opts.steps >= 1, "steps must be >= 1");
    let start = Instant::now();
    let mlp = opts.mlp();
    let data = opts.dataset();
    let init = mlp.init_params(opts.seed ^ 0xA5A5_A5A5);
    if opts.progress {
        eprintln!(
            "training a {}-{}-{}-{} MLP ({} parameters) on {} points of two spirals, {} steps per schedule, on {}",
            mlp.inputs,
            mlp.hidden[0],
            mlp.hidden[1],
            mlp.classes,
            mlp.num_params(),
            data.len(),
            opts.steps,
            ctx.describe()
        );
    }
    let scheds = opts.schedule_set();
    let mut runs = Vec::new();
    for (k, (name, schedule)) in scheds.iter().enumerate() {
        let label = format!("[{}/{}] {name}", k + 1, scheds.len());
        runs.push(train_one(
            ctx,
            opts,
            &mlp,
            &data,
            &init,
            name,
            schedule.clone(),
            &label,
        )?);
    }
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let svg = opts.out.join("learning_curve.svg");
    let csv = opts.out.join("learning_curve.csv");
    plot::write_csv(&csv, &runs)?;
    let caption = format!(
        "wgpu-adamw: {}-{}-{}-{} MLP, two spirals ({} points), full-batch AdamW lr={} wd={}",
        mlp.inputs,
        mlp.hidden[0],
        mlp.hidden[1],
        mlp.classes,
        data.len(),
        opts.lr,
        opts.weight_decay
    );
    plot::write_svg(&svg, &runs, &caption)?;
    let report = DemoReport {
        adapter: ctx.describe(),
        runs,
        svg,
        csv,
        elapsed: start.elapsed(),
    };
    if opts.print_table {
        println!("{}", report.table());
        println!(
            "wrote {} and {} in {:.1}s",
            report.svg.display(),
            report.csv.display(),
            report.elapsed.as_secs_f64()
        );
    }
    Ok(report)
}

/// The steps at which a run of `steps` steps logs: the first, every `every`-th, the last.
pub fn logged_steps(steps: u32, every: u32) -> Vec<u32> {
    let every = every.max(1);
    (1..=steps)
        .filter(|&s| s == 1 || s % every == 0 || s == steps)
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn train_one(
    ctx: &GpuContext,
    opts: &DemoOptions,
    mlp: &Mlp,
    data: &data::Dataset,
    init: &[f32],
    name: &str,
    schedule: Schedule,
    label: &str,
) -> anyhow::Result<ScheduleRun> {
    let start = Instant::now();
    let model = GpuMlp::new(
        &ctx.device,
        &ctx.queue,
        *mlp,
        data,
        init,
        opts.adamw(schedule.clone()),
    )?;
    let logged = logged_steps(opts.steps, opts.log_every);
    let log = model.create_log_buffer(logged.len());
    let lr_log = model.create_lr_buffer(opts.steps);
    let mut next = 0usize;
    let mut step = 1u32;
    while step <= opts.steps {
        let end = step
            .saturating_add(opts.submit_every.max(1) - 1)
            .min(opts.steps);
        let mut encoder = model.encoder();
        for s in step..=end {
            model.encode_train_step(&mut encoder);
            model.encode_lr(&mut encoder, &lr_log, s - 1)?;
            if logged.get(next) == Some(&s) {
                model.encode_log(&mut encoder, &log, next as u64 * LOG_RECORD_BYTES)?;
                next += 1;
            }
        }
        model.submit(encoder);
        // The only read-back while training: the latest log record, every `submit_every` steps.
        if next > 0 {
            let r = model.read_log(&log, (next as u64 - 1) * LOG_RECORD_BYTES, LOG_RECORD_BYTES)?;
            if opts.progress {
                progress(label, end, opts.steps, r[0], r[4]);
            }
        }
        step = end + 1;
    }
    let words = model.read_log(&log, 0, logged.len() as u64 * LOG_RECORD_BYTES)?;
    let points = logged
        .iter()
        .zip(words.chunks(LOG_RECORD_BYTES as usize / 4))
        .map(|(&step, r)| LogPoint {
            step,
            lr: r[4],
            loss: r[0],
            accuracy: r[1],
        })
        .collect();
    let lr_words = model.read_log(&lr_log, 0, LR_RECORD_BYTES * u64::from(opts.steps))?;
    let lr = lr_words
        .chunks(LR_RECORD_BYTES as usize / 4)
        .map(|r| r[0])
        .collect();
    let (final_loss, final_accuracy) = model.evaluate()?;
    if opts.progress {
        eprintln!();
    }
    Ok(ScheduleRun {
        name: name.to_string(),
        schedule,
        log: points,
        lr,
        final_loss,
        final_accuracy,
        elapsed: start.elapsed(),
    })
}

fn progress(label: &str, step: u32, steps: u32, loss: f32, lr: f32) {
    const WIDTH: usize = 30;
    let filled = (WIDTH as u64 * u64::from(step) / u64::from(steps.max(1))) as usize;
    let bar: String = "#".repeat(filled) + &"-".repeat(WIDTH - filled);
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r{label:<20} [{bar}] {step:>5}/{steps}  loss {loss:.4}  lr {lr:.2e}  "
    );
    let _ = err.flush();
}
