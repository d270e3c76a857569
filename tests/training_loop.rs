//! The training loop on the device beyond the traces: stochastic rounding (GPU = CPU bit for
//! bit, unbiased, better than round-to-nearest at a tiny lr) and a pure-bf16 run with the
//! GradScaler, accumulation, a weight EMA and stochastic rounding that resumes bit for bit
//! from a checkpoint taken in the middle of an accumulation, on both backends and across
//! them.

mod common;

use common::Rng;
use wgpu_adamw::{
    twin, AdamWConfig, CpuAdamW, CpuParamGroup, Dtype, Elems, ElemsMut, GpuAdamW, GpuContext,
    GradScalerConfig, OptimizerState, ParamGroup, Precision,
};

const LENS: [usize; 3] = [1001, 7, 2050];
const TOTAL: usize = 1001 + 7 + 2050;

use common::buffer16;

fn read16(ctx: &GpuContext, buf: &wgpu::Buffer) -> Vec<u16> {
    common::read16(ctx, buf, TOTAL)
}

/// The three tensors packed back to back in one param and one grad buffer (odd offsets).
fn gpu_optimizer(
    ctx: &GpuContext,
    config: &AdamWConfig,
    pbuf: &wgpu::Buffer,
    gbuf: &wgpu::Buffer,
) -> GpuAdamW {
    let tensors = common::packed16(pbuf, gbuf, &LENS);
    GpuAdamW::new(
        &ctx.device,
        &ctx.queue,
        config.clone(),
        vec![ParamGroup {
            tensors,
            ..Default::default()
        }],
    )
    .unwrap()
}

fn cpu_optimizer(config: &AdamWConfig) -> CpuAdamW {
    CpuAdamW::new(
        config.clone(),
        vec![CpuParamGroup {
            lens: LENS.to_vec(),
            ..Default::default()
        }],
    )
    .unwrap()
}

/// One call of the CPU optimizer on the packed host buffers.
fn cpu_call(opt: &mut CpuAdamW, params: &mut [u16], grads: &[u16]) {
    let (a, rest) = params.split_at_mut(LENS[0]);
    let (b, c) = rest.split_at_mut(LENS[1]);
    let (ga, rest) = grads.split_at(LENS[0]);
    let (gb, gc) = rest.split_at(LENS[1]);
    opt.step_mixed(
        &mut [
            ElemsMut::Bits16(a),
            ElemsMut::Bits16(b),
            ElemsMut::Bits16(c),
        ],
        &[Elems::Bits16(ga), Elems::Bits16(gb), Elems::Bits16(gc)],
    )
    .unwrap();
}

/// The gradients of call `i`: random, scaled by `scale`, in `dtype`; an infinity at the
/// calls in `inf_at`.
fn grads(rng: &mut Rng, dtype: Dtype, scale: f32, inf: bool) -> Vec<u16> {
    let mut g: Vec<u16> = rng
        .grads(TOTAL)
        .iter()
        .map(|&x| dtype.narrow(x * scale))
        .collect();
    if inf {
        g[TOTAL - 3] = dtype.narrow(f32::INFINITY);
    }
    g
}

#[test]
fn stochastic_rounding_is_the_same_on_the_gpu_and_the_cpu() {
    let ctx = common::gpu();
    for dtype in [Dtype::Bf16, Dtype::F16] {
        for precision in [
            Precision::pure(dtype),
            Precision {
                state: wgpu_adamw::StateDtype::F32,
                ..Precision::pure(dtype)
            },
        ] {
            let config = AdamWConfig::default()
                .with_lr(3e-3)
                .with_precision(precision)
                .with_stochastic_rounding(0x1234_5678_9abc_def0);
            let mut rng = Rng(5);
            let init: Vec<u16> = (0..TOTAL).map(|_| dtype.narrow(rng.normal())).collect();
            let (pbuf, gbuf) = (buffer16(&ctx, &init), buffer16(&ctx, &[0; TOTAL]));
            let gpu = gpu_optimizer(&ctx, &config, &pbuf, &gbuf);
            let mut cpu = cpu_optimizer(&config);
            let mut host = init.clone();
            for _ in 0..5 {
                let g = grads(&mut rng, dtype, 1.0, false);
                ctx.queue.write_buffer(
                    &gbuf,
                    0,
                    bytemuck::cast_slice(&{
                        let mut w = g.clone();
                        w.resize(TOTAL.div_ceil(2) * 2, 0);
                        w
                    }),
                );
                gpu.step().unwrap();
                cpu_call(&mut cpu, &mut host, &g);
            }
            assert_eq!(read16(&ctx, &pbuf), host, "{precision:?}");
            // Stochastic, not nearest: some elements differ from a round-to-nearest run.
            let mut nearest = cpu_optimizer(&AdamWConfig {
                stochastic_rounding: None,
                ..config.clone()
            });
            let mut rng = Rng(5);
            let mut near = init.clone();
            for _ in 0..TOTAL {
                rng.normal();
            }
            for _ in 0..5 {
                let g = grads(&mut rng, dtype, 1.0, false);
                cpu_call(&mut nearest, &mut near, &g);
            }
            let differ = near.iter().zip(&host).filter(|(a, b)| a != b).count();
            assert!(differ > TOTAL / 100, "{precision:?}: only {differ} differ");
        }
    }
}

/// The generator and the rounding together are unbiased: for values between two bf16
/// (and f16) neighbours, the mean of their stochastic roundings over many elements is the
/// value, within 5 standard deviations of the binomial draw.
#[test]
fn stochastic_rounding_is_unbiased() {
    let n = 200_000u32;
    for (dtype, lo) in [
        (Dtype::Bf16, 1.0f32),
        (Dtype::F16, 1.0f32),
        (Dtype::Bf16, 3.0e-3),
    ] {
        let up = dtype.widen(dtype.narrow(lo) + 1);
        let ulp = f64::from(up - lo);
        for frac in [0.01, 0.3, 0.5, 0.77] {
            let x = (f64::from(lo) + frac * ulp) as f32;
            let p = (f64::from(x) - f64::from(lo)) / ulp;
            for t in [1u32, 1000] {
                let sum: f64 = (0..n)
                    .map(|i| {
                        let r = twin::sr_random(42, i, t);
                        f64::from(dtype.widen(twin::narrow16_stochastic(x, dtype.code(), r) as u16))
                    })
                    .sum();
                let mean = sum / f64::from(n);
                let sigma = ulp * (p * (1.0 - p) / f64::from(n)).sqrt();
                assert!(
                    (mean - f64::from(x)).abs() <= 5.0 * sigma + 1e-12,
                    "{dtype:?} x={x} t={t}: mean {mean}, {} sigma",
                    (mean - f64::from(x)).abs() / sigma
                );
            }
        }
    }
}

/// At an lr far below half a bf16 ulp of the weights, round-to-nearest never moves them
/// (each update vanishes) while stochastic rounding follows the f32 trajectory on average,
/// as torchao shows: on the GPU, 300 steps of pulling weights at 1 towards 1.05.
#[test]
fn stochastic_rounding_beats_nearest_at_a_tiny_lr() {
    let ctx = common::gpu();
    let target = 1.05f32;
    let run = |sr: bool| -> f64 {
        let mut config = AdamWConfig::default()
            .with_lr(1e-4)
            .with_weight_decay(0.0)
            .with_precision(Precision::pure(Dtype::Bf16));
        if sr {
            config = config.with_stochastic_rounding(7);
        }
        let init = vec![Dtype::Bf16.narrow(1.0); TOTAL];
        let (pbuf, gbuf) = (buffer16(&ctx, &init), buffer16(&ctx, &[0; TOTAL]));
        let gpu = gpu_optimizer(&ctx, &config, &pbuf, &gbuf);
        let mut w = init;
        for _ in 0..300 {
            // d/dw (w - target)^2
            let mut g: Vec<u16> = w
                .iter()
                .map(|&h| Dtype::Bf16.narrow(2.0 * (Dtype::Bf16.widen(h) - target)))
                .collect();
            g.resize(TOTAL.div_ceil(2) * 2, 0);
            ctx.queue.write_buffer(&gbuf, 0, bytemuck::cast_slice(&g));
            gpu.step().unwrap();
            w = read16(&ctx, &pbuf);
        }
        w.iter()
            .map(|&h| f64::from(Dtype::Bf16.widen(h) - target).powi(2))
            .sum::<f64>()
            / TOTAL as f64
    };
    let (nearest, stochastic) = (run(false), run(true));
    // Nearest stalls at the start, (1 - 1.05)^2; stochastic gets ~0.03 closer.
    assert!(
        (nearest - 0.0025).abs() < 1e-6,
        "nearest moved: loss {nearest}"
    );
    assert!(
        stochastic < 0.5 * nearest,
        "stochastic {stochastic} vs nearest {nearest}"
    );
}

/// Pure bf16 with the GradScaler (non-finite gradients at two steps), accumulation of 3
/// micro-batches, a weight EMA and stochastic rounding: a checkpoint taken after the first
/// micro-batch of step 5 resumes bit for bit on the GPU, on the CPU, and from the GPU's
/// checkpoint on the CPU.
#[test]
fn pure_bf16_training_loop_resumes_bit_for_bit_mid_accumulation() {
    let ctx = common::gpu();
    let dtype = Dtype::Bf16;
    let config = AdamWConfig::default()
        .with_lr(2e-3)
        .with_precision(Precision::pure(dtype))
        .with_grad_scaler(GradScalerConfig {
            init_scale: 1024.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 3,
        })
        .with_accumulation(3)
        .with_ema(0.9)
        .with_stochastic_rounding(99);
    let steps = 8;
    let mut rng = Rng(11);
    let init: Vec<u16> = (0..TOTAL).map(|_| dtype.narrow(rng.normal())).collect();
    // Every call's gradients, scaled by 1024 (the engine scales its loss); infinities in
    // steps 2 and 6.
    let calls: Vec<Vec<u16>> = (0..3 * steps)
        .map(|c| grads(&mut rng, dtype, 1024.0, c == 4 || c == 16))
        .collect();
    let ckpt_after = 3 * 4 + 1; // calls
    let dir = std::env::temp_dir().join(format!("wgpu-adamw-loop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mid.safetensors");

    // The GPU, straight through and resumed from a checkpoint.
    let gpu_run = |resume: bool| -> (Vec<u16>, OptimizerState) {
        let (pbuf, gbuf) = (buffer16(&ctx, &init), buffer16(&ctx, &[0; TOTAL]));
        let mut opt = gpu_optimizer(&ctx, &config, &pbuf, &gbuf);
        for (c, g) in calls.iter().enumerate() {
            if resume && c == ckpt_after {
                opt.save_checkpoint(&file).unwrap();
                opt = gpu_optimizer(&ctx, &config, &pbuf, &gbuf);
                opt.load_checkpoint(&file).unwrap();
            }
            let mut w = g.clone();
            w.resize(TOTAL.div_ceil(2) * 2, 0);
            ctx.queue.write_buffer(&gbuf, 0, bytemuck::cast_slice(&w));
            opt.step().unwrap();
        }
        (read16(&ctx, &pbuf), opt.state().unwrap())
    };
    let (gpu_params, gpu_state) = gpu_run(false);
    let (resumed_params, resumed_state) = gpu_run(true);
    assert_eq!(resumed_params, gpu_params);
    assert_eq!(resumed_state, gpu_state);
    assert_eq!(
        gpu_state.counters.adam,
        steps as u32 - 2,
        "two steps skipped"
    );
    assert_ne!(gpu_state.loss_scale, 1024.0);

    // The CPU, straight through: bit for bit the GPU.
    let mut cpu = cpu_optimizer(&config);
    let mut host = init.clone();
    for g in &calls {
        cpu_call(&mut cpu, &mut host, g);
    }
    assert_eq!(host, gpu_params);
    assert_eq!(cpu.state(), gpu_state);

    // The CPU resumed from the GPU's checkpoint mid-accumulation.
    let (pbuf, gbuf) = (buffer16(&ctx, &init), buffer16(&ctx, &[0; TOTAL]));
    let opt = gpu_optimizer(&ctx, &config, &pbuf, &gbuf);
    for g in &calls[..ckpt_after] {
        let mut w = g.clone();
        w.resize(TOTAL.div_ceil(2) * 2, 0);
        ctx.queue.write_buffer(&gbuf, 0, bytemuck::cast_slice(&w));
        opt.step().unwrap();
    }
    opt.save_checkpoint(&file).unwrap();
    let state = OptimizerState::load(&file).unwrap();
    assert_eq!(state.counters.micro, 1);
    assert!(state.tensors.iter().all(|t| t.grad_acc.is_some()));
    let mut cpu = CpuAdamW::from_state(&state).unwrap();
    let mut host = read16(&ctx, &pbuf);
    for g in &calls[ckpt_after..] {
        cpu_call(&mut cpu, &mut host, g);
    }
    assert_eq!(host, gpu_params);
    assert_eq!(cpu.state(), gpu_state);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every stream at once fits WebGPU's default limits (8 storage buffers per stage): on a
/// device created with `wgpu::Limits::default()`, master weights + AMSGrad + EMA +
/// accumulation + GradScaler + clipping, and pure f16 with the same plus stochastic
/// rounding, step without a validation error and equal the CPU twin bit for bit.
#[test]
fn every_stream_at_once_runs_within_webgpu_default_limits() {
    let ctx = common::gpu();
    let small = common::with_limits(&ctx, "WebGPU default limits", wgpu::Limits::default());
    let scaler = GradScalerConfig {
        init_scale: 256.0,
        ..Default::default()
    };
    let base = AdamWConfig::default()
        .with_amsgrad(true)
        .with_grad_scaler(scaler)
        .with_accumulation(2)
        .with_ema(0.9)
        .with_max_grad_norm(Some(1.0))
        .with_grad_norm_order(wgpu_adamw::GradNormOrder::TorchCpu);
    for (dtype, config) in [
        (
            Dtype::Bf16,
            base.clone().with_precision(Precision::master(Dtype::Bf16)),
        ),
        (
            Dtype::F16,
            base.clone()
                .with_precision(Precision::pure(Dtype::F16))
                .with_stochastic_rounding(3),
        ),
    ] {
        let mut rng = Rng(21);
        let init: Vec<u16> = (0..TOTAL).map(|_| dtype.narrow(rng.normal())).collect();
        let (pbuf, gbuf) = (buffer16(&small, &init), buffer16(&small, &[0; TOTAL]));
        let gpu = gpu_optimizer(&small, &config, &pbuf, &gbuf);
        let mut cpu = cpu_optimizer(&config);
        let mut host = init.clone();
        for c in 0..8 {
            let g = grads(&mut rng, dtype, 256.0, c == 3);
            let mut w = g.clone();
            w.resize(TOTAL.div_ceil(2) * 2, 0);
            small.queue.write_buffer(&gbuf, 0, bytemuck::cast_slice(&w));
            gpu.step().unwrap();
            cpu_call(&mut cpu, &mut host, &g);
        }
        assert_eq!(read16(&small, &pbuf), host, "{dtype:?}");
        assert_eq!(gpu.state().unwrap(), cpu.state(), "{dtype:?}");
    }
}
