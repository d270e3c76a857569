//! # wgpu-adamw-demo
//!
//! A learning-curve demo of [`wgpu_adamw`]: a small MLP (2 → 64 → 64 → 2, ReLU) is trained
//! with minibatches on two interleaved spirals with 10% of the training labels flipped,
//! entirely on the GPU. Forward pass, softmax cross-entropy and backward pass are WGSL
//! kernels (`demo/shaders/`); the parameters and gradients live in one arena buffer each,
//! and [`wgpu_adamw::GpuAdamW`] updates them in one compute pass per step with the learning
//! rate computed on the device. Every minibatch of a run is uploaded once and copied into
//! place on the device; the held-out and whole-training-set evaluations run on the device
//! too, and the logs are read back once per few hundred steps.
//!
//! Each schedule (constant, cosine, warm restarts, warmup + cosine, WSD, OneCycle by
//! default, or any the user names) is trained from several seeds (initial weights and
//! minibatch order); [`run`] writes `learning_curve.svg` (mean and min–max band per
//! schedule: training loss, held-out accuracy, and the lr the device used at every step)
//! and `learning_curve.csv` (every seed), and prints a table of the final values.
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
use gpu::{GpuMlp, LR_RECORD_BYTES};
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
    /// Optimizer steps per run.
    pub steps: u32,
    /// Evaluate and log every this many steps (and at the first and the last).
    pub log_every: u32,
    /// Submit and read back progress every this many steps.
    pub submit_every: u32,
    /// Training points per spiral arm.
    pub per_class: usize,
    /// Held-out points per spiral arm (drawn from the same spirals, labels not flipped).
    pub test_per_class: usize,
    /// Turns of each spiral arm.
    pub turns: f64,
    /// Standard deviation of the Gaussian noise added to the points (the arms end at
    /// radius 2).
    pub noise: f64,
    /// Fraction of the training labels flipped to the other class.
    pub label_noise: f64,
    /// Samples per minibatch.
    pub batch: usize,
    /// Widths of the two hidden layers.
    pub hidden: [usize; 2],
    /// Peak learning rate.
    pub lr: f64,
    /// Weight decay of the weights (biases get none).
    pub weight_decay: f64,
    /// Seed of the data sets.
    pub data_seed: u64,
    /// Runs per schedule, with seeds `0..seeds` (initial weights and minibatch order).
    pub seeds: u32,
    /// Draw a progress line on stderr.
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
            steps: 800,
            log_every: 25,
            submit_every: 100,
            per_class: 512,
            test_per_class: 512,
            turns: 2.0,
            noise: 0.1,
            label_noise: 0.1,
            batch: 64,
            hidden: [64, 64],
            lr: 3e-2,
            weight_decay: 1e-2,
            data_seed: 0x5EED,
            seeds: 5,
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

    /// The training set: two noisy interleaved spirals, [`DemoOptions::label_noise`] of the
    /// labels flipped.
    pub fn train_set(&self) -> data::Dataset {
        data::noisy_spirals(
            self.per_class,
            2,
            self.turns,
            self.noise,
            self.label_noise,
            self.data_seed,
        )
    }

    /// The held-out set: fresh points of the same spirals, clean labels.
    pub fn test_set(&self) -> data::Dataset {
        data::noisy_spirals(
            self.test_per_class,
            2,
            self.turns,
            self.noise,
            0.0,
            self.data_seed ^ 0x7E57,
        )
    }

    /// The initial parameter arena of run `seed`.
    pub fn init(&self, seed: u32) -> Vec<f32> {
        self.mlp().init_params(0xA5A5_A5A5 ^ u64::from(seed))
    }

    /// The training-set indices of run `seed`'s minibatches, step after step.
    pub fn batch_indices(&self, seed: u32) -> Vec<u32> {
        let n = 2 * self.per_class;
        data::batch_indices(
            n,
            self.batch.min(n),
            self.steps as usize,
            0xB47C_0000 ^ u64::from(seed),
        )
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

/// One logged step of one run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogPoint {
    /// Optimizer step (1-based).
    pub step: u32,
    /// The lr the optimizer used at this step, read back from the device.
    pub lr: f32,
    /// Mean loss of this step's minibatch (its forward pass, before the update).
    pub batch_loss: f32,
    /// Mean loss over the whole training set after this step's update.
    pub train_loss: f32,
    /// Accuracy on the whole training set (flipped labels included) after the update.
    pub train_accuracy: f32,
    /// Mean loss on the held-out set after the update.
    pub test_loss: f32,
    /// Accuracy on the held-out set after the update.
    pub test_accuracy: f32,
}

/// One run: a schedule from one seed.
#[derive(Clone, Debug)]
pub struct SeedRun {
    /// The seed (initial weights and minibatch order).
    pub seed: u32,
    /// Logged steps.
    pub log: Vec<LogPoint>,
    /// The lr the device used at every step (group 0), step 1 first.
    pub lr: Vec<f32>,
}

impl SeedRun {
    /// The last logged point (after the last step).
    pub fn last(&self) -> LogPoint {
        *self.log.last().expect("a run logs its last step")
    }
}

/// The runs of one schedule.
#[derive(Clone, Debug)]
pub struct ScheduleRun {
    /// Short name (`constant`, `cosine`, ..., or the user's).
    pub name: String,
    /// The schedule.
    pub schedule: Schedule,
    /// One run per seed.
    pub seeds: Vec<SeedRun>,
    /// Wall time of all its runs.
    pub elapsed: Duration,
}

/// `(mean, min, max)` of `f` over the seeds' last points.
fn spread(run: &ScheduleRun, f: impl Fn(&LogPoint) -> f32) -> (f64, f64, f64) {
    let v: Vec<f64> = run.seeds.iter().map(|s| f64::from(f(&s.last()))).collect();
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    (mean, lo, hi)
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
    /// The table of the final training loss and held-out accuracy per schedule: mean over
    /// the seeds and, in brackets, the lowest and highest seed.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<15} {:>26} {:>30} {:>8}\n",
            "schedule", "final train loss [min, max]", "held-out accuracy [min, max]", "time"
        );
        for r in &self.runs {
            let (l, l0, l1) = spread(r, |p| p.train_loss);
            let (a, a0, a1) = spread(r, |p| p.test_accuracy);
            s.push_str(&format!(
                "{:<15} {:>8.4} [{:.4}, {:.4}] {:>11.2}% [{:.2}, {:.2}] {:>7.1}s\n",
                r.name,
                l,
                l0,
                l1,
                100.0 * a,
                100.0 * a0,
                100.0 * a1,
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

/// Runs the demo on `ctx`: trains each schedule from each seed, writes the SVG and CSV into
/// `opts.out`, prints the table.
pub fn run_with_context(ctx: &GpuContext, opts: &DemoOptions) -> anyhow::Result<DemoReport> {
    anyhow::ensure!(opts.steps >= 1, "steps must be >= 1");
    anyhow::ensure!(opts.seeds >= 1, "seeds must be >= 1");
    anyhow::ensure!(
        opts.batch >= 1 && opts.batch <= 2 * opts.per_class,
        "the batch ({}) must hold 1 to {} samples",
        opts.batch,
        2 * opts.per_class
    );
    let start = Instant::now();
    let mlp = opts.mlp();
    let (train, test) = (opts.train_set(), opts.test_set());
    if opts.progress {
        eprintln!(
            "training a {}-{}-{}-{} MLP ({} parameters) on {} points of two spirals ({}% of the labels flipped; {} held out), minibatches of {}, {} steps, {} seeds per schedule, on {}",
            mlp.inputs,
            mlp.hidden[0],
            mlp.hidden[1],
            mlp.classes,
            mlp.num_params(),
            train.len(),
            100.0 * opts.label_noise,
            test.len(),
            opts.batch,
            opts.steps,
            opts.seeds,
            ctx.describe()
        );
    }
    let scheds = opts.schedule_set();
    let mut runs = Vec::new();
    for (k, (name, schedule)) in scheds.iter().enumerate() {
        let label = format!("[{}/{}] {name}", k + 1, scheds.len());
        runs.push(train_schedule(
            ctx,
            opts,
            &mlp,
            (&train, &test),
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
        "wgpu-adamw: {}-{}-{}-{} MLP, two spirals ({} points, {}% labels flipped), minibatch {}, AdamW lr={} wd={}, {} seeds",
        mlp.inputs,
        mlp.hidden[0],
        mlp.hidden[1],
        mlp.classes,
        train.len(),
        100.0 * opts.label_noise,
        opts.batch,
        opts.lr,
        opts.weight_decay,
        opts.seeds
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

/// Trains one schedule from every seed: one model on the device, reset between seeds.
fn train_schedule(
    ctx: &GpuContext,
    opts: &DemoOptions,
    mlp: &Mlp,
    (train, test): (&data::Dataset, &data::Dataset),
    name: &str,
    schedule: Schedule,
    label: &str,
) -> anyhow::Result<ScheduleRun> {
    let start = Instant::now();
    let batch = opts.batch.min(train.len());
    let mut model = GpuMlp::new(
        &ctx.device,
        &ctx.queue,
        *mlp,
        batch,
        &[test, train],
        &opts.init(0),
        opts.adamw(schedule.clone()),
    )?;
    let logged = logged_steps(opts.steps, opts.log_every);
    let record = model.log_record_bytes();
    let words = record as usize / 4;
    let log = model.create_log_buffer(logged.len());
    let lr_log = model.create_lr_buffer(opts.steps);
    let mut seeds = Vec::new();
    for seed in 0..opts.seeds {
        model.reset(&opts.init(seed))?;
        let batches = train.select(&opts.batch_indices(seed));
        model.upload_batches(&batches.x, &batches.y)?;
        let mut next = 0usize;
        let mut step = 1u32;
        while step <= opts.steps {
            let end = step
                .saturating_add(opts.submit_every.max(1) - 1)
                .min(opts.steps);
            let mut encoder = model.encoder();
            for s in step..=end {
                model.encode_train_step(&mut encoder, s - 1)?;
                model.encode_lr(&mut encoder, &lr_log, s - 1)?;
                if logged.get(next) == Some(&s) {
                    model.encode_eval(&mut encoder, 0);
                    model.encode_eval(&mut encoder, 1);
                    model.encode_log(&mut encoder, &log, next as u64 * record)?;
                    next += 1;
                }
            }
            model.submit(encoder);
            // The only read-back while training: the latest log record, every
            // `submit_every` steps.
            if opts.progress && next > 0 {
                let r = model.read_log(&log, (next as u64 - 1) * record, record)?;
                progress(label, seed, opts.seeds, end, opts.steps, r[8], r[12]);
            }
            step = end + 1;
        }
        let all = model.read_log(&log, 0, logged.len() as u64 * record)?;
        let points = logged
            .iter()
            .zip(all.chunks(words))
            .map(|(&step, r)| LogPoint {
                step,
                lr: r[12],
                batch_loss: r[0],
                test_loss: r[4],
                test_accuracy: r[5],
                train_loss: r[8],
                train_accuracy: r[9],
            })
            .collect();
        let lr_words = model.read_log(&lr_log, 0, LR_RECORD_BYTES * u64::from(opts.steps))?;
        let lr = lr_words
            .chunks(LR_RECORD_BYTES as usize / 4)
            .map(|r| r[0])
            .collect();
        seeds.push(SeedRun {
            seed,
            log: points,
            lr,
        });
    }
    if opts.progress {
        eprintln!();
    }
    Ok(ScheduleRun {
        name: name.to_string(),
        schedule,
        seeds,
        elapsed: start.elapsed(),
    })
}

fn progress(label: &str, seed: u32, seeds: u32, step: u32, steps: u32, loss: f32, lr: f32) {
    const WIDTH: usize = 24;
    let done = u64::from(seed) * u64::from(steps) + u64::from(step);
    let total = u64::from(seeds) * u64::from(steps.max(1));
    let filled = (WIDTH as u64 * done / total.max(1)) as usize;
    let bar: String = "#".repeat(filled) + &"-".repeat(WIDTH - filled);
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r{label:<20} [{bar}] seed {}/{seeds} step {step:>5}/{steps}  train loss {loss:.4}  lr {lr:.2e}  ",
        seed + 1
    );
    let _ = err.flush();
}
