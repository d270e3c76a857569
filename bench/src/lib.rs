//! The bundled benchmark of [`wgpu_adamw`]: on the default adapter, for each workload, the
//! fused step against a copy kernel that moves the same bytes (the device's achievable
//! roofline), an unfused baseline (one kernel per elementwise operation, as PyTorch's
//! single-tensor path) and the CPU reference; plus the cost of K steps in one submit and the
//! CPU time to record one step. `cargo bench` and `wgpu-adamw bench` both run [`run`].
//!
//! Besides the f32 rows, [`BenchOptions::precisions`] adds mixed-precision rows (bf16
//! parameters and gradients with bf16 moments, f32 moments or f32 master weights): the fused
//! step against a copy moving that row's own bytes per parameter ([`BenchPrecision`]).
//!
//! The benchmark measures and reports; it never asserts a timing. Its workloads carry the
//! names of the project's PyTorch benchmark script (`torch_adamw_bench.py`, kept with the shared
//! traces outside this repository), so the two reports can be read side by side.

#![warn(missing_docs)]

pub mod cli;
pub mod device;
pub mod precision;
pub mod repoint;
pub mod workloads;

use anyhow::{Context as _, Result};
use device::{
    Array, BaselineArrays, CopyKernel, Hyper, MixedCopy, MixedCopyKind, Timer, Timing, Unfused,
};
pub use precision::BenchPrecision;
use std::io::{IsTerminal as _, Write as _};
use std::time::Instant;
use wgpu_adamw::{
    wgpu, AdamWConfig, CpuAdamW, CpuParamGroup, GpuAdamW, GpuContext, ParamGroup, Schedule,
    TensorBinding,
};
pub use workloads::{gpt2_shapes, workloads, Workload};

/// Steps recorded into one submit for `k_submit_ms_per_step`.
pub const K: usize = 16;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The quick set (`flat_2^20`, `flat_2^22`, `gpt2_d256`, `flat_2^22_amsgrad`) instead of
    /// the full one.
    pub quick: bool,
    /// Timed steps per measurement (the median is reported; at least 10).
    pub iters: usize,
    /// Untimed warm-up steps before each measurement.
    pub warmup: usize,
    /// Times a K-step submit this many times (median).
    pub k_reps: usize,
    /// Time the CPU reference too.
    pub cpu: bool,
    /// Time with submit + wait even where timestamp queries exist.
    pub force_wall: bool,
    /// A progress line on stderr.
    pub progress: bool,
    /// Only the workloads whose names contain one of these (all when empty).
    pub filter: Vec<String>,
    /// The rows of each workload, one per element-type configuration (default: f32 only).
    /// Mixed-precision rows time the fused step, its copy roofline, K steps per submit and
    /// the encoding; they skip the amsgrad workloads.
    pub precisions: Vec<BenchPrecision>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            quick: false,
            iters: 10,
            warmup: 2,
            k_reps: 3,
            cpu: true,
            force_wall: false,
            progress: true,
            filter: Vec::new(),
            precisions: vec![BenchPrecision::F32],
        }
    }
}

/// The adapter the benchmark ran on.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    /// Adapter name.
    pub name: String,
    /// Backend (`Vulkan`, `Metal`, ...).
    pub backend: String,
    /// Device type (`DiscreteGpu`, `Cpu`, ...).
    pub device_type: String,
}

/// One workload's measurements at one precision. Times are medians in milliseconds per step.
#[derive(Clone, Debug)]
pub struct WorkloadResult {
    /// Workload name (the PyTorch script's).
    pub name: String,
    /// The element types ([`BenchPrecision::name`]: `f32`, `bf16`, `bf16-f32m`, ...).
    pub precision: String,
    /// Bytes one step moves per parameter ([`BenchPrecision::bytes_per_param`]).
    pub bytes_per_param: u64,
    /// Parameters.
    pub params: u64,
    /// Tensors.
    pub tensors: usize,
    /// Whether the step ran with amsgrad.
    pub amsgrad: bool,
    /// Bytes one step must move: `bytes_per_param` per parameter (f32: 28, 36 with amsgrad).
    pub bytes_per_step: u64,
    /// This crate's fused step, schedule on device.
    pub fused_ms: f64,
    /// The copy kernel over the same bytes: the achievable roofline.
    pub copy_ms: f64,
    /// One kernel per elementwise operation per tensor, lr uploaded every step (f32 rows).
    pub unfused_ms: Option<f64>,
    /// The CPU reference ([`CpuAdamW`]), when timed.
    pub cpu_ms: Option<f64>,
    /// Fused step on one flat tensor of the same total size (multi-tensor workloads only).
    pub flat_fused_ms: Option<f64>,
    /// The fused step with loss scaling and global-norm clipping on (the gradient reduce
    /// pass, unscaling and clipping in the same submit), PyTorch's `clip_amp_ms` counterpart
    /// (f32 rows).
    pub clip_amp_ms: Option<f64>,
    /// Per step, with [`K`] steps recorded into one submit.
    pub k_submit_ms_per_step: f64,
    /// CPU microseconds to record one step.
    pub encode_us: f64,
    /// `update` dispatches per fused step.
    pub fused_dispatches: usize,
    /// Dispatches per unfused step (f32 rows).
    pub unfused_dispatches: Option<usize>,
}

fn gbps(bytes: u64, ms: f64) -> f64 {
    bytes as f64 / (ms * 1e6)
}

impl WorkloadResult {
    /// Fused throughput in GB/s of [`Self::bytes_per_step`].
    pub fn fused_gbps(&self) -> f64 {
        gbps(self.bytes_per_step, self.fused_ms)
    }
    /// Copy throughput in GB/s.
    pub fn copy_gbps(&self) -> f64 {
        gbps(self.bytes_per_step, self.copy_ms)
    }
    /// `copy_ms / fused_ms`: the fraction of the roofline the fused step reaches.
    pub fn fused_vs_copy(&self) -> f64 {
        self.copy_ms / self.fused_ms
    }
    /// `unfused_ms / fused_ms` (f32 rows).
    pub fn speedup_vs_unfused(&self) -> Option<f64> {
        self.unfused_ms.map(|u| u / self.fused_ms)
    }
    /// `flat_fused_ms / fused_ms`: throughput of this tensor set relative to one flat tensor
    /// of the same size.
    pub fn shaped_vs_flat(&self) -> Option<f64> {
        self.flat_fused_ms.map(|f| f / self.fused_ms)
    }
}

/// The whole report.
#[derive(Clone, Debug)]
pub struct Report {
    /// The adapter.
    pub adapter: AdapterReport,
    /// How GPU times were measured.
    pub timing: Timing,
    /// Quick set or full.
    pub quick: bool,
    /// Timed steps per measurement.
    pub iters: usize,
    /// CPU threads of the reference.
    pub cpu_threads: usize,
    /// Seconds since the Unix epoch at the end of the run.
    pub unix_time: u64,
    /// One entry per workload and precision.
    pub workloads: Vec<WorkloadResult>,
}

/// Prints a progress line on stderr, overwritten in place on a terminal; elsewhere one line
/// per finished workload.
struct Progress {
    on: bool,
    tty: bool,
    prefix: String,
    started: Instant,
}

impl Progress {
    fn set(&mut self, prefix: String) {
        self.prefix = prefix;
        self.started = Instant::now();
    }
    fn tick(&self, what: &str, i: usize, n: usize) {
        if self.on && self.tty {
            let mut e = std::io::stderr().lock();
            let _ = write!(
                e,
                "\r\x1b[2K{} {what} {i}/{n} ({:.0} s)",
                self.prefix,
                self.started.elapsed().as_secs_f64()
            );
            let _ = e.flush();
        }
    }
    fn done(&self) {
        if self.on && self.tty {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
        } else if self.on {
            eprintln!(
                "{} done in {:.0} s",
                self.prefix,
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A variant to time: its name, what runs before each of its steps and its recorder.
type Variant<'a, 'b> = (&'a str, &'a mut dyn FnMut(), &'a mut device::Recorder<'b>);

/// Runs `warmup` untimed and `iters` timed single-step submits of every variant, interleaved
/// step by step (so that a change in the machine's load touches every variant alike, and the
/// ratios stay meaningful); the median of each in ms.
/// The fused step recorded `K` times per submit: the median ms per step over
/// `opts.k_reps` submits, and the median µs to encode a step.
fn time_k_per_submit(
    timer: &Timer,
    opts: &BenchOptions,
    progress: &Progress,
    rec_fused: &mut device::Recorder<'_>,
) -> Result<(f64, f64)> {
    let mut ks = Vec::new();
    for i in 0..opts.k_reps {
        progress.tick(&format!("fused x{K} per submit"), i, opts.k_reps);
        ks.push(timer.time(K, &mut || {}, rec_fused)? / K as f64);
    }
    let encode_us = median((0..7).map(|_| timer.encode_us(K, rec_fused)).collect());
    Ok((median(ks), encode_us))
}

fn time_interleaved(
    timer: &Timer,
    opts: &BenchOptions,
    progress: &Progress,
    variants: &mut [Variant<'_, '_>],
) -> Result<Vec<f64>> {
    let n = opts.warmup + opts.iters;
    let mut times = vec![Vec::with_capacity(opts.iters); variants.len()];
    for i in 0..n {
        for (v, (what, before, record)) in variants.iter_mut().enumerate() {
            progress.tick(what, i, n);
            let ms = timer.time(1, &mut **before, &mut **record)?;
            if i >= opts.warmup {
                times[v].push(ms);
            }
        }
    }
    Ok(times.into_iter().map(median).collect())
}

/// The fused step's configuration in every workload: `h`'s settings under the cosine schedule
/// the PyTorch script runs.
pub fn fused_config(amsgrad: bool, h: &Hyper) -> AdamWConfig {
    AdamWConfig::default()
        .with_lr(h.lr)
        .with_betas(h.betas.0, h.betas.1)
        .with_eps(h.eps)
        .with_weight_decay(h.weight_decay)
        .with_amsgrad(amsgrad)
        .with_schedule(Schedule::cosine(h.t_max, 0.0))
}

fn pass<'e>(
    encoder: &'e mut wgpu::CommandEncoder,
    ts: Option<wgpu::ComputePassTimestampWrites<'_>>,
    label: &str,
) -> wgpu::ComputePass<'e> {
    encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(label),
        timestamp_writes: ts,
    })
}

fn run_workload(
    ctx: &GpuContext,
    timer: &Timer,
    opts: &BenchOptions,
    progress: &mut Progress,
    w: &Workload,
) -> Result<WorkloadResult> {
    let (device, queue) = (&ctx.device, &ctx.queue);
    let hyper = Hyper::default();
    let layout = device::check_fits(w, &device.limits())?;
    let lens = w.lens();

    let p = Array::new(device, &layout, "param");
    let g = Array::new(device, &layout, "grad");
    p.upload(queue, device, |i| device::value(i, 1, 0.02))?;
    g.upload(queue, device, |i| device::value(i, 2, 1e-3))?;

    // The fused step on the workload's tensors.
    let bindings = layout.bindings(&p, &g, (4, 4));
    let config = fused_config(w.amsgrad, &hyper);
    let opt = GpuAdamW::with_options(
        device,
        queue,
        config.clone(),
        vec![ParamGroup {
            tensors: bindings.clone(),
            ..Default::default()
        }],
        gpu_options(),
    )
    .context("creating the fused optimizer")?;
    let mut rec_fused = |enc: &mut wgpu::CommandEncoder,
                         ts: Option<wgpu::ComputePassTimestampWrites<'_>>| {
        let mut pass = pass(enc, ts, "fused");
        opt.record_step(&mut pass);
    };
    let fused_dispatches = opt.dispatches_per_step();

    // The same number of parameters as one flat tensor, for the shape goal.
    let flat = if lens.len() > 1 && layout.arenas.len() == 1 {
        Some(
            GpuAdamW::with_options(
                device,
                queue,
                config.clone(),
                vec![ParamGroup {
                    tensors: vec![TensorBinding {
                        param: p.buffers[0].clone(),
                        param_offset: 0,
                        grad: g.buffers[0].clone(),
                        grad_offset: 0,
                        len: w.params() as u64,
                    }],
                    ..Default::default()
                }],
                gpu_options(),
            )
            .context("creating the flat comparison")?,
        )
    } else {
        None
    };
    let mut rec_flat = |enc: &mut wgpu::CommandEncoder,
                        ts: Option<wgpu::ComputePassTimestampWrites<'_>>| {
        let mut pass = pass(enc, ts, "fused flat");
        if let Some(f) = &flat {
            f.record_step(&mut pass);
        }
    };

    // Copy roofline and unfused baseline, over the same param and grad buffers.
    let state = BaselineArrays {
        m: Array::new(device, &layout, "exp_avg"),
        v: Array::new(device, &layout, "exp_avg_sq"),
        vmax: w
            .amsgrad
            .then(|| Array::new(device, &layout, "max_exp_avg_sq")),
        denom: Array::new(device, &layout, "denom"),
    };
    let copy = CopyKernel::new(device, queue, &layout, &p, &g, &state);
    let mut rec_copy = |enc: &mut wgpu::CommandEncoder,
                        ts: Option<wgpu::ComputePassTimestampWrites<'_>>| {
        let mut pass = pass(enc, ts, "copy");
        copy.record(&mut pass);
    };
    let unfused =
        std::cell::RefCell::new(Unfused::new(device, queue, &layout, &p, &g, &state, hyper));
    let unfused_dispatches = unfused.borrow().dispatches_per_step();
    let mut rec_unfused =
        |enc: &mut wgpu::CommandEncoder, ts: Option<wgpu::ComputePassTimestampWrites<'_>>| {
            let u = unfused.borrow();
            let mut pass = pass(enc, ts, "unfused");
            u.record(&mut pass);
        };
    // The same step with loss scaling and clipping on, over the same buffers.
    let clip_amp = GpuAdamW::with_options(
        device,
        queue,
        config.with_loss_scaling(true).with_max_grad_norm(Some(1.0)),
        vec![ParamGroup {
            tensors: bindings,
            ..Default::default()
        }],
        gpu_options(),
    )
    .context("creating the clipping + loss scaling optimizer")?;
    clip_amp.set_loss_scale(1024.0);
    let mut rec_clip_amp =
        |enc: &mut wgpu::CommandEncoder, ts: Option<wgpu::ComputePassTimestampWrites<'_>>| {
            let mut pass = pass(enc, ts, "fused clip+amp");
            clip_amp.record_step(&mut pass);
        };
    let (mut nothing, mut nothing2, mut nothing3, mut nothing4) = (|| {}, || {}, || {}, || {});
    let mut upload = || unfused.borrow_mut().upload_scalars();
    let mut variants: Vec<Variant<'_, '_>> = vec![
        ("fused", &mut nothing, &mut rec_fused),
        ("copy", &mut nothing2, &mut rec_copy),
        ("unfused", &mut upload, &mut rec_unfused),
        (
            "fused, clipping + loss scaling",
            &mut nothing4,
            &mut rec_clip_amp,
        ),
    ];
    if flat.is_some() {
        variants.push(("fused, one flat tensor", &mut nothing3, &mut rec_flat));
    }
    let ms = time_interleaved(timer, opts, progress, &mut variants)?;
    drop(variants);
    let (fused_ms, copy_ms, unfused_ms, clip_amp_ms) = (ms[0], ms[1], ms[2], ms[3]);
    let flat_fused_ms = ms.get(4).copied();

    let (k_submit_ms_per_step, encode_us) =
        time_k_per_submit(timer, opts, progress, &mut rec_fused)?;
    drop(unfused);
    drop(copy);
    drop(state);
    drop(flat);
    drop(clip_amp);
    drop(opt);
    drop((p, g));
    timer.wait()?;

    let cpu_ms = if opts.cpu {
        Some(time_cpu(opts, progress, w, &hyper)?)
    } else {
        None
    };
    progress.done();
    Ok(WorkloadResult {
        name: w.name.clone(),
        precision: BenchPrecision::F32.name(),
        bytes_per_param: BenchPrecision::F32.bytes_per_param(w.amsgrad),
        params: w.params() as u64,
        tensors: lens.len(),
        amsgrad: w.amsgrad,
        bytes_per_step: w.bytes_per_step(),
        fused_ms,
        copy_ms,
        unfused_ms: Some(unfused_ms),
        cpu_ms,
        flat_fused_ms,
        clip_amp_ms: Some(clip_amp_ms),
        k_submit_ms_per_step,
        encode_us,
        fused_dispatches,
        unfused_dispatches: Some(unfused_dispatches),
    })
}

/// bf16 or f16 patterns of `value(i, seed, scale)`, two to a word (element `2w` in the low
/// half of word `w`).
fn packed16(dtype: wgpu_adamw::Dtype, word: u64, seed: u64, scale: f32) -> u32 {
    let lo = dtype.narrow(device::value(2 * word, seed, scale));
    let hi = dtype.narrow(device::value(2 * word + 1, seed, scale));
    u32::from(lo) | (u32::from(hi) << 16)
}

/// A mixed-precision row: the fused step with 16-bit parameters and gradients in the
/// engine's buffers (moments or master weights as `prec` says) against the copy that moves
/// the same bytes, interleaved step by step; then K steps per submit and the encoding.
fn run_workload_mixed(
    ctx: &GpuContext,
    timer: &Timer,
    opts: &BenchOptions,
    progress: &mut Progress,
    w: &Workload,
    prec: BenchPrecision,
) -> Result<WorkloadResult> {
    let (device, queue) = (&ctx.device, &ctx.queue);
    let hyper = Hyper::default();
    let kind = prec
        .copy_kind()?
        .context("run_workload_mixed takes a 16-bit precision")?;
    if w.amsgrad {
        anyhow::bail!("{}: mixed-precision rows skip amsgrad workloads", w.name);
    }
    let layout = device::check_fits(w, &device.limits())?;
    let half = layout.halved();
    let lens = w.lens();
    let (pt, gt) = (prec.0.param, prec.0.grad);

    // The engine's 16-bit parameters and gradients, at the f32 layout's element offsets.
    let p = Array::new(device, &half, "param16");
    let g = Array::new(device, &half, "grad16");
    p.upload_words(queue, device, |i| packed16(pt, i, 1, 0.02))?;
    g.upload_words(queue, device, |i| packed16(gt, i, 2, 1e-3))?;
    let bindings = layout.bindings(&p, &g, (pt.size(), gt.size()));
    let config = fused_config(false, &hyper).with_precision(prec.0);
    let opt = GpuAdamW::with_options(
        device,
        queue,
        config,
        vec![ParamGroup {
            tensors: bindings,
            ..Default::default()
        }],
        gpu_options(),
    )
    .with_context(|| format!("creating the fused optimizer ({prec})"))?;
    let mut rec_fused = |enc: &mut wgpu::CommandEncoder,
                         ts: Option<wgpu::ComputePassTimestampWrites<'_>>| {
        let mut pass = pass(enc, ts, "fused mixed");
        opt.record_step(&mut pass);
    };
    let fused_dispatches = opt.dispatches_per_step();

    // The copy roofline over the same parameter and gradient buffers and its own state.
    let state_layout = if kind == MixedCopyKind::Pure16 {
        &half
    } else {
        &layout
    };
    let m = Array::new(device, state_layout, "exp_avg");
    let v = Array::new(device, state_layout, "exp_avg_sq");
    let master = (kind == MixedCopyKind::Master).then(|| Array::new(device, &layout, "master"));
    let copy = MixedCopy::new(
        device,
        queue,
        &layout,
        kind,
        &p,
        &g,
        &m,
        &v,
        master.as_ref(),
    )?;
    let mut rec_copy = |enc: &mut wgpu::CommandEncoder,
                        ts: Option<wgpu::ComputePassTimestampWrites<'_>>| {
        let mut pass = pass(enc, ts, "copy mixed");
        copy.record(&mut pass);
    };
    let (mut nothing, mut nothing2) = (|| {}, || {});
    let mut variants: Vec<Variant<'_, '_>> = vec![
        ("fused", &mut nothing, &mut rec_fused),
        ("copy", &mut nothing2, &mut rec_copy),
    ];
    let ms = time_interleaved(timer, opts, progress, &mut variants)?;
    drop(variants);
    let (fused_ms, copy_ms) = (ms[0], ms[1]);

    let (k_submit_ms_per_step, encode_us) =
        time_k_per_submit(timer, opts, progress, &mut rec_fused)?;
    drop(copy);
    drop((m, v, master));
    drop(opt);
    drop((p, g));
    timer.wait()?;
    progress.done();
    let bytes_per_param = prec.bytes_per_param(false);
    Ok(WorkloadResult {
        name: w.name.clone(),
        precision: prec.name(),
        bytes_per_param,
        params: w.params() as u64,
        tensors: lens.len(),
        amsgrad: false,
        bytes_per_step: w.params() as u64 * bytes_per_param,
        fused_ms,
        copy_ms,
        unfused_ms: None,
        cpu_ms: None,
        flat_fused_ms: None,
        clip_amp_ms: None,
        k_submit_ms_per_step,
        encode_us,
        fused_dispatches,
        unfused_dispatches: None,
    })
}

fn time_cpu(opts: &BenchOptions, progress: &Progress, w: &Workload, h: &Hyper) -> Result<f64> {
    let lens = w.lens();
    let mut opt = CpuAdamW::new(
        fused_config(w.amsgrad, h),
        vec![CpuParamGroup {
            config: Default::default(),
            lens: lens.clone(),
        }],
    )?;
    let mut at = 0u64;
    let mut params: Vec<Vec<f32>> = Vec::new();
    let mut grads: Vec<Vec<f32>> = Vec::new();
    for &n in &lens {
        params.push(
            (at..at + n as u64)
                .map(|i| device::value(i, 1, 0.02))
                .collect(),
        );
        grads.push(
            (at..at + n as u64)
                .map(|i| device::value(i, 2, 1e-3))
                .collect(),
        );
        at += n as u64;
    }
    let grads: Vec<&[f32]> = grads.iter().map(|g| &g[..]).collect();
    let n = opts.warmup + opts.iters;
    let mut times = Vec::new();
    for i in 0..n {
        progress.tick("cpu reference", i, n);
        let mut views: Vec<&mut [f32]> = params.iter_mut().map(|p| &mut p[..]).collect();
        let t0 = Instant::now();
        opt.step(&mut views, &grads)?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if i >= opts.warmup {
            times.push(ms);
        }
    }
    Ok(median(times))
}

/// Times only the CPU reference on each workload (no adapter needed): `(workload, params,
/// bytes one step moves, median ms per step)`, to put beside `torch_adamw_bench.py --device
/// cpu`.
pub fn run_cpu(opts: &BenchOptions) -> Result<Vec<(String, usize, u64, f64)>> {
    let mut progress = Progress {
        on: opts.progress,
        tty: std::io::stderr().is_terminal(),
        prefix: String::new(),
        started: Instant::now(),
    };
    let mut out = Vec::new();
    for w in workloads(opts.quick)
        .into_iter()
        .filter(|w| opts.filter.is_empty() || opts.filter.iter().any(|f| w.name.contains(f)))
    {
        progress.set(format!("{}:", w.name));
        let ms = time_cpu(opts, &progress, &w, &Hyper::default())?;
        progress.done();
        out.push((w.name.clone(), w.params(), w.bytes_per_step(), ms));
    }
    Ok(out)
}

/// Runs the benchmark on the default adapter (see [`GpuContext::new`]: `WGPU_BACKEND` and
/// `WGPU_ADAPTER_NAME` pick another).
pub fn run(opts: &BenchOptions) -> Result<Report> {
    let ctx = GpuContext::new().context("opening the default adapter")?;
    let info = ctx.adapter.get_info();
    let timer = Timer::new(&ctx.device, &ctx.queue, opts.force_wall);
    let mut opts = opts.clone();
    opts.iters = opts.iters.max(1);
    let list: Vec<Workload> = workloads(opts.quick)
        .into_iter()
        .filter(|w| opts.filter.is_empty() || opts.filter.iter().any(|f| w.name.contains(f)))
        .collect();
    if opts.precisions.is_empty() {
        opts.precisions.push(BenchPrecision::F32);
    }
    // Rows: every workload at every precision, but mixed precision on no amsgrad workload.
    let rows: Vec<(&Workload, BenchPrecision)> = list
        .iter()
        .flat_map(|w| opts.precisions.iter().map(move |&p| (w, p)))
        .filter(|(w, p)| p.is_f32() || !w.amsgrad)
        .collect();
    for p in &opts.precisions {
        p.copy_kind()?;
    }
    if opts.progress {
        eprintln!(
            "wgpu-adamw bench on {} ({:?}, {:?}); timing: {}; {} workloads, precisions {}; {} rows",
            info.name,
            info.backend,
            info.device_type,
            timer.timing.as_str(),
            list.len(),
            opts.precisions
                .iter()
                .map(BenchPrecision::name)
                .collect::<Vec<_>>()
                .join(", "),
            rows.len()
        );
    }
    let mut progress = Progress {
        on: opts.progress,
        tty: std::io::stderr().is_terminal(),
        prefix: String::new(),
        started: Instant::now(),
    };
    let mut results = Vec::new();
    for (i, &(w, prec)) in rows.iter().enumerate() {
        progress.set(format!("[{}/{}] {} {prec}:", i + 1, rows.len(), w.name));
        results.push(if prec.is_f32() {
            run_workload(&ctx, &timer, &opts, &mut progress, w)?
        } else {
            run_workload_mixed(&ctx, &timer, &opts, &mut progress, w, prec)?
        });
    }
    Ok(Report {
        adapter: AdapterReport {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
        },
        timing: timer.timing,
        quick: opts.quick,
        iters: opts.iters,
        cpu_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        workloads: results,
    })
}

fn opt_num(x: Option<f64>) -> serde_json::Value {
    x.map_or(serde_json::Value::Null, serde_json::Value::from)
}

fn fmt_opt(x: Option<f64>, prec: usize) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.prec$}"))
}

impl Report {
    /// The JSON report: `adapter` {name, backend, device_type}, `timing`, and per workload
    /// and precision `name, precision, bytes_per_param, params, tensors, bytes_per_step,
    /// fused_ms, copy_ms, unfused_ms, cpu_ms, fused_gbps, copy_gbps, k_submit_ms_per_step,
    /// encode_us` (plus a few more fields; `null` where a row does not time them).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "adapter": {
                "name": self.adapter.name,
                "backend": self.adapter.backend,
                "device_type": self.adapter.device_type,
            },
            "timing": self.timing.as_str(),
            "quick": self.quick,
            "iters": self.iters,
            "k": K,
            "cpu_threads": self.cpu_threads,
            "unix_time": self.unix_time,
            "workloads": self.workloads.iter().map(|w| serde_json::json!({
                "name": w.name,
                "precision": w.precision,
                "bytes_per_param": w.bytes_per_param,
                "params": w.params,
                "tensors": w.tensors,
                "amsgrad": w.amsgrad,
                "bytes_per_step": w.bytes_per_step,
                "fused_ms": w.fused_ms,
                "copy_ms": w.copy_ms,
                "unfused_ms": opt_num(w.unfused_ms),
                "cpu_ms": opt_num(w.cpu_ms),
                "fused_gbps": w.fused_gbps(),
                "copy_gbps": w.copy_gbps(),
                "k_submit_ms_per_step": w.k_submit_ms_per_step,
                "encode_us": w.encode_us,
                "flat_fused_ms": opt_num(w.flat_fused_ms),
                "clip_amp_ms": opt_num(w.clip_amp_ms),
                "fused_dispatches": w.fused_dispatches,
                "unfused_dispatches": w.unfused_dispatches,
            })).collect::<Vec<_>>(),
        })
    }

    /// The table and the goal ratios, as text.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "adapter: {} ({}, {}); timing: {}; median of {} steps; K = {K}; CPU reference on {} threads",
            self.adapter.name,
            self.adapter.backend,
            self.adapter.device_type,
            self.timing.as_str(),
            self.iters,
            self.cpu_threads
        );
        let _ = writeln!(
            s,
            "{:<18} {:<11} {:>3} {:>11} {:>4} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>6} {:>6} {:>9} {:>8}",
            "workload",
            "precision",
            "B/p",
            "params",
            "tens",
            "fused_ms",
            "copy_ms",
            "unfused_ms",
            "cpu_ms",
            "fusedGB/s",
            "copyGB/s",
            "f/copy",
            "unf/f",
            "K-sub_ms",
            "enc_us"
        );
        for w in &self.workloads {
            let _ = writeln!(
                s,
                "{:<18} {:<11} {:>3} {:>11} {:>4} {:>10.3} {:>10.3} {:>10} {:>10} {:>8.1} {:>8.1} {:>6.2} {:>6} {:>9.3} {:>8.1}",
                w.name,
                w.precision,
                w.bytes_per_param,
                w.params,
                w.tensors,
                w.fused_ms,
                w.copy_ms,
                fmt_opt(w.unfused_ms, 3),
                fmt_opt(w.cpu_ms, 3),
                w.fused_gbps(),
                w.copy_gbps(),
                w.fused_vs_copy(),
                fmt_opt(w.speedup_vs_unfused(), 2),
                w.k_submit_ms_per_step,
                w.encode_us
            );
        }
        let _ = writeln!(
            s,
            "\ngoals (measured ratios; the benchmark does not assert them):"
        );
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        for w in self.workloads.iter().filter(|w| w.params >= 1 << 22) {
            let r = w.fused_vs_copy();
            let _ = writeln!(
                s,
                "  fused >= 0.9 x copy bandwidth   {:<30} {:.2} x  {}",
                format!("{} {} ({} B/p)", w.name, w.precision, w.bytes_per_param),
                r,
                verdict(r >= 0.9)
            );
        }
        for w in &self.workloads {
            if let (Some(r), Some(f)) = (w.shaped_vs_flat(), w.flat_fused_ms) {
                let _ = writeln!(
                    s,
                    "  shaped >= 0.9 x flat throughput {:<18} {:.2} x  {} ({} tensors {:.3} ms, one flat tensor {:.3} ms)",
                    w.name,
                    r,
                    verdict(r >= 0.9),
                    w.tensors,
                    w.fused_ms,
                    f
                );
            }
        }
        for w in &self.workloads {
            let Some(r) = w.speedup_vs_unfused() else {
                continue;
            };
            let _ = writeln!(
                s,
                "  fused >= 2.5 x unfused          {:<18} {:.2} x  {}",
                w.name,
                r,
                verdict(r >= 2.5)
            );
        }
        for w in self.workloads.iter().filter(|w| w.params >= 1 << 22) {
            let Some(c) = w.clip_amp_ms else {
                continue;
            };
            let r = c / w.fused_ms;
            let _ = writeln!(
                s,
                "  clip+AMP <= 1.15 x plain step   {:<18} {:.2} x  {} ({:.3} ms; compare PyTorch's clip_amp_ms)",
                w.name,
                r,
                verdict(r <= 1.15),
                c
            );
        }
        for w in self
            .workloads
            .iter()
            .filter(|w| w.tensors > 1 && w.precision == "f32")
        {
            let _ = writeln!(
                s,
                "  encode_us <= 50                 {:<18} {:.1} us  {} ({} tensors)",
                w.name,
                w.encode_us,
                verdict(w.encode_us <= 50.0),
                w.tensors
            );
        }
        if self.workloads.iter().any(|w| w.cpu_ms.is_some()) {
            let _ = writeln!(
                s,
                "  CPU reference within 0.8 x of PyTorch's fused CPU AdamW: compare cpu_ms with\n    PyTorch's (the project's `torch_adamw_bench.py --device cpu{}`) on this machine",
                if self.quick { " --quick" } else { "" }
            );
            for w in &self.workloads {
                if let Some(c) = w.cpu_ms {
                    let _ = writeln!(
                        s,
                        "    {:<18} cpu {:.3} ms/step = {:.1} GB/s",
                        w.name,
                        c,
                        gbps(w.bytes_per_step, c)
                    );
                }
            }
        }
        s
    }

    /// Writes [`Report::to_json`] to `path`, pretty-printed.
    pub fn write_json(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let path = path.as_ref();
        let text = serde_json::to_string_pretty(&self.to_json())?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }

    /// Prints [`Report::table`] on stdout.
    pub fn print_table(&self) {
        print!("{}", self.table());
    }
}

/// The fused optimizer's options: `WGPU_ADAMW_ELEMS_PER_THREAD` overrides the kernel's
/// elements per invocation (for tuning runs; default the crate's).
fn gpu_options() -> wgpu_adamw::GpuOptions {
    wgpu_adamw::GpuOptions {
        elems_per_thread: std::env::var("WGPU_ADAMW_ELEMS_PER_THREAD")
            .ok()
            .and_then(|v| v.parse().ok()),
        ..Default::default()
    }
}
