//! The kernel's own code run on chosen inputs, on the device or by its CPU twin: the learning
//! rate of arbitrary steps (the `schedule_probe` entry point) and the numerics functions
//! (`numerics_probe`, for bit-for-bit tests).

use crate::config::{AdamWConfig, GroupConfig};
use crate::error::{Error, Result};
use crate::gpu::{checked, read_buffer};
use crate::kernel::{Globals, SHADER_SOURCE, SHADER_SOURCE_NATIVE_F16};
use crate::schedule::program::Region;
use crate::schedule::GroupCtx;
use crate::twin;

/// Group 0's schedule region for a probe: the optimizer's lr is `config.lr`.
fn probe_region(config: &AdamWConfig, base_lr: f64) -> (Globals, Region) {
    let ctx = GroupCtx {
        index: 0,
        base_lr,
        optimizer_lr: config.lr,
    };
    let region = Region::new(&config.schedule, &[ctx]);
    let mut g = Globals::new(config, 1);
    g.sched_stride = region.stride;
    g.sched_state_at = region.state_at;
    (g, region)
}

/// The lr of each optimizer step in `steps` (1-based, each >= 1) for a group with base lr
/// `base_lr`, evaluated on the device.
pub fn schedule_lrs_gpu(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    config: &AdamWConfig,
    base_lr: f64,
    steps: &[u32],
) -> Result<Vec<f32>> {
    config.validate()?;
    config.validate_group(&GroupConfig {
        lr: Some(base_lr),
        weight_decay: None,
    })?;
    if steps.contains(&0) {
        return Err(Error::ShapeMismatch("steps are 1-based".into()));
    }
    let io_buf = checked(device, || {
        probe(device, queue, config, base_lr, steps, "schedule_probe")
    })?;
    let out = read_buffer(device, queue, &io_buf, 0, io_buf.size())?;
    Ok(out[1..].iter().map(|&b| f32::from_bits(b)).collect())
}

/// beta1 of each optimizer step in `steps` for a schedule that cycles momentum (onecycle,
/// cyclic with `cycle_momentum`), evaluated on the device (group 0's bounds).
pub fn schedule_beta1_gpu(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    config: &AdamWConfig,
    steps: &[u32],
) -> Result<Vec<f32>> {
    config.validate()?;
    if !config.schedule.cycles_momentum() {
        return Err(Error::InvalidArgument(
            "the schedule does not cycle momentum".into(),
        ));
    }
    if steps.contains(&0) {
        return Err(Error::ShapeMismatch("steps are 1-based".into()));
    }
    let io_buf = checked(device, || {
        probe(device, queue, config, config.lr, steps, "momentum_probe")
    })?;
    let out = read_buffer(device, queue, &io_buf, 0, io_buf.size())?;
    Ok(out[1..].iter().map(|&b| f32::from_bits(b)).collect())
}

/// The same as [`schedule_beta1_gpu`], on the CPU twin.
pub fn schedule_beta1_cpu(config: &AdamWConfig, steps: &[u32]) -> Result<Vec<f32>> {
    config.validate()?;
    if !config.schedule.cycles_momentum() {
        return Err(Error::InvalidArgument(
            "the schedule does not cycle momentum".into(),
        ));
    }
    let (g, region) = probe_region(config, config.lr);
    steps
        .iter()
        .map(|&s| {
            if s == 0 {
                return Err(Error::ShapeMismatch("steps are 1-based".into()));
            }
            Ok(twin::schedule_eval(&region.words, 0, (s - 1) / g.steps_per_epoch, 1.0)[1])
        })
        .collect()
}

/// A numerics function of the kernel, for [`numerics_gpu`] and [`numerics_cpu`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Numerics {
    /// `fma_exact(a, b, c)`.
    FmaExact = 0,
    /// `lerp_fma(a, b, c)` (the first moment's fma, `|a| <= 1`).
    LerpFma = 1,
    /// `recip(a)`: `1 / a` rounded to nearest.
    Recip = 2,
    /// `div_rn(a, b)`: `a / b` rounded to nearest.
    DivRn = 3,
    /// `sqrt_rn(a)`: `sqrt(a)` rounded to nearest.
    SqrtRn = 4,
    /// `expm1_neg(a)` for `a <= 0`.
    Expm1Neg = 5,
    /// `ln_pos(a)` for a positive normal `a`.
    LnPos = 6,
    /// `ln_one_minus(a)` = `ln(1 - a)` for `0 <= a <= 1/2`.
    LnOneMinus = 7,
    /// `exp_neg(a)` for `a <= 0`.
    ExpNeg = 8,
    /// `exp2_mul(bits(a), b, c)` = `2^(n * (b + c))`.
    Exp2Mul = 9,
    /// `pow_ratio(bits(a), bits(b), c)` = `(num / den)^c`.
    PowRatio = 10,
    /// `cos_sq_half_pi(a, b, c)` = `cos^2(pi/2 * a / c)` given `b = c - a`.
    CosSqHalfPi = 11,
    /// `widen16(bits(a), bits(b))`: the 16-bit float in `a`'s bits, of type `DTYPE_*` `b`.
    Widen16 = 12,
    /// `narrow16(a, bits(b))`: `a` rounded to type `b`, its 16 bits returned as the result's
    /// bits (`f32::from_bits`).
    Narrow16 = 13,
    /// `narrow16_stochastic(a, bits(b), bits(c))`: `a` rounded to type `b` stochastically
    /// with the random word `c`, its 16 bits returned as the result's bits.
    Narrow16Stochastic = 14,
}

/// `f` of each `(a, b, c)` in `cases`, computed by the kernel's own function on the device
/// (the `numerics_probe` entry point): for bit-for-bit tests of the kernel against its twin.
pub fn numerics_gpu(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    f: Numerics,
    cases: &[[f32; 3]],
) -> Result<Vec<f32>> {
    numerics_gpu_in(device, queue, SHADER_SOURCE, f, cases)
}

/// [`numerics_gpu`] in the kernel whose f16 conversions are the device's own
/// ([`SHADER_SOURCE_NATIVE_F16`]).
pub fn numerics_gpu_native_f16(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    f: Numerics,
    cases: &[[f32; 3]],
) -> Result<Vec<f32>> {
    numerics_gpu_in(device, queue, SHADER_SOURCE_NATIVE_F16, f, cases)
}

/// Whether this device's native f16 conversions ([`SHADER_SOURCE_NATIVE_F16`]) equal the
/// packed ones bit for bit: every f16 widened, and narrowed every f16 value, every midpoint
/// between neighbours and the f32 values next to it, both signs, f16 subnormals and
/// underflow, the overflow threshold and infinities. `false` also where the device cannot
/// compile them.
pub fn native_f16_is_exact(device: &wgpu::Device, queue: &wgpu::Queue) -> Result<bool> {
    let f16 = f32::from_bits(twin::DTYPE_F16);
    let widen: Vec<[f32; 3]> = (0..=0xffffu32)
        .map(|h| [f32::from_bits(h), f16, 0.0])
        .collect();
    let mut narrow: Vec<[f32; 3]> = Vec::new();
    for h in 0..0x7c00u32 {
        let lo = twin::f16_to_f32(h);
        let hi = twin::f16_to_f32(h + 1);
        let mid = ((f64::from(lo) + f64::from(hi)) / 2.0) as f32;
        for x in [
            lo,
            mid,
            f32::from_bits(mid.to_bits() - 1),
            f32::from_bits(mid.to_bits() + 1),
        ] {
            narrow.push([x, f16, 0.0]);
            narrow.push([-x, f16, 0.0]);
        }
    }
    for x in [
        1e-10f32,
        2.9e-8,
        3.0e-8,
        65519.0,
        65520.0,
        1e6,
        f32::MAX,
        f32::INFINITY,
    ] {
        narrow.push([x, f16, 0.0]);
        narrow.push([-x, f16, 0.0]);
    }
    for (f, cases) in [(Numerics::Widen16, widen), (Numerics::Narrow16, narrow)] {
        // A device without the conversions (wgpu's DownlevelFlags::SHADER_F16_IN_F32, which
        // WebGPU-compliant adapters have) refuses the module: packed, then.
        let Ok(gpu) = numerics_gpu_native_f16(device, queue, f, &cases) else {
            return Ok(false);
        };
        let cpu = numerics_cpu(f, &cases);
        // NaN payloads aside (f16 parameters are never NaN).
        let same = |a: &f32, b: &f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        if !gpu.iter().zip(&cpu).all(|(a, b)| same(a, b)) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn numerics_gpu_in(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    source: &'static str,
    f: Numerics,
    cases: &[[f32; 3]],
) -> Result<Vec<f32>> {
    let mut io = vec![f as u32];
    for c in cases {
        io.extend(c.iter().map(|x| x.to_bits()));
        io.push(0);
    }
    let config = AdamWConfig::default();
    let buf = checked(device, || {
        run_probe(
            device,
            queue,
            source,
            &config,
            None,
            "numerics_probe",
            &io,
            cases.len(),
        )
    })?;
    let out = read_buffer(device, queue, &buf, 0, buf.size())?;
    Ok(out[1..].chunks(4).map(|w| f32::from_bits(w[3])).collect())
}

/// The same as [`numerics_gpu`], on the CPU twin.
pub fn numerics_cpu(f: Numerics, cases: &[[f32; 3]]) -> Vec<f32> {
    cases
        .iter()
        .map(|&[a, b, c]| match f {
            Numerics::FmaExact => twin::fma_exact(a, b, c),
            Numerics::LerpFma => twin::lerp_fma(a, b, c),
            Numerics::Recip => twin::recip(a),
            Numerics::DivRn => a / b,
            Numerics::SqrtRn => a.sqrt(),
            Numerics::Expm1Neg => twin::expm1_neg(a),
            Numerics::LnPos => twin::ln_pos(a),
            Numerics::LnOneMinus => twin::ln_one_minus(a),
            Numerics::ExpNeg => twin::exp_neg(a),
            Numerics::Exp2Mul => twin::exp2_mul(a.to_bits(), b, c),
            Numerics::PowRatio => twin::pow_ratio(a.to_bits(), b.to_bits(), c),
            Numerics::CosSqHalfPi => twin::cos_sq_half_pi(a, b, c),
            Numerics::Widen16 => twin::widen16(a.to_bits(), b.to_bits()),
            Numerics::Narrow16 => f32::from_bits(twin::narrow16(a, b.to_bits())),
            Numerics::Narrow16Stochastic => {
                f32::from_bits(twin::narrow16_stochastic(a, b.to_bits(), c.to_bits()))
            }
        })
        .collect()
}

/// Records and submits the schedule probe; returns the buffer it writes.
fn probe(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    config: &AdamWConfig,
    base_lr: f64,
    steps: &[u32],
    entry: &str,
) -> wgpu::Buffer {
    let mut io = Vec::with_capacity(steps.len() + 1);
    io.push((base_lr as f32).to_bits());
    io.extend_from_slice(steps);
    let (g, region) = probe_region(config, base_lr);
    run_probe(
        device,
        queue,
        SHADER_SOURCE,
        config,
        Some((g, &region.words)),
        entry,
        &io,
        steps.len(),
    )
}

/// Runs `entry` (64 invocations per workgroup, one per case) over the words `io`, bound at
/// binding 9 beside the uniform block of `config` (or the given one, with a schedule region
/// bound as `meta`); returns the buffer.
#[allow(clippy::too_many_arguments)]
fn run_probe(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    source: &'static str,
    config: &AdamWConfig,
    schedule: Option<(Globals, &[u32])>,
    entry: &str,
    io: &[u32],
    cases: usize,
) -> wgpu::Buffer {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("wgpu-adamw probe"),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry),
        layout: None,
        module: &module,
        entry_point: Some(entry),
        compilation_options: Default::default(),
        cache: None,
    });
    let globals = schedule.map_or_else(|| Globals::new(config, 1), |(g, _)| g);
    let uniform = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("probe globals"),
        size: std::mem::size_of::<Globals>() as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&uniform, 0, bytemuck::bytes_of(&globals));
    let io_buf = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("probe io"),
        size: (io.len() * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    queue.write_buffer(&io_buf, 0, bytemuck::cast_slice(io));
    let meta = schedule.map(|(_, words)| {
        let b = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("probe meta"),
            size: (words.len() * 4).max(16) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        queue.write_buffer(&b, 0, bytemuck::cast_slice(words));
        b
    });
    let mut entries = vec![
        wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        },
        wgpu::BindGroupEntry {
            binding: 9,
            resource: io_buf.as_entire_binding(),
        },
    ];
    if let Some(m) = &meta {
        entries.push(wgpu::BindGroupEntry {
            binding: 8,
            resource: m.as_entire_binding(),
        });
    }
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("probe"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        let groups = (cases as u32).div_ceil(64);
        let max = device.limits().max_compute_workgroups_per_dimension;
        pass.dispatch_workgroups(groups.min(max), groups.div_ceil(max).max(1), 1);
    }
    queue.submit([encoder.finish()]);
    io_buf
}

/// The same as [`schedule_lrs_gpu`], on the CPU twin of the kernel.
pub fn schedule_lrs_cpu(config: &AdamWConfig, base_lr: f64, steps: &[u32]) -> Result<Vec<f32>> {
    config.validate()?;
    config.validate_group(&GroupConfig {
        lr: Some(base_lr),
        weight_decay: None,
    })?;
    let (g, region) = probe_region(config, base_lr);
    steps
        .iter()
        .map(|&s| {
            if s == 0 {
                return Err(Error::ShapeMismatch("steps are 1-based".into()));
            }
            Ok(twin::schedule_lr(
                &region.words,
                0,
                (s - 1) / g.steps_per_epoch,
                base_lr as f32,
            ))
        })
        .collect()
}
