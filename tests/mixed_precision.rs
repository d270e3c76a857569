//! 16-bit parameters, gradients and moments and f32 master weights (`adamw-trace/2`'s
//! `dtype` and `master_weights`) on both backends: the PyTorch traces with the format's
//! 16-bit rule, the GPU against the CPU twin bit for bit, 16-bit tensors that share a 32-bit
//! word with their neighbours, and bad input.

mod common;

use common::{buffer16, read16};
use std::path::PathBuf;
use wgpu_adamw::trace::{compare, replay, Backend, Trace};

fn data(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data")).join(name)
}

/// The traces whose features (dtype, master weights, amsgrad, maximize, clipping of f32
/// gradients) are built.
const DTYPE_TRACES: &[&str] = &[
    "mp_bf16_pure.safetensors",
    "mp_f16_pure.safetensors",
    "mp_bf16_state_f32.safetensors",
    "mp_f16_master.safetensors",
    "x_mp_bf16_pure_amsgrad_max_groups.safetensors",
    "x_mp_f16_state_f32_amsgrad.safetensors",
    "x_mp_bf16_master_step.safetensors",
    "x_mp_f32_bf16grad_clip.safetensors",
    "mp_grad_scaler.safetensors",
    "x_mp_f16_pure_scaler.safetensors",
    "mp_ema.safetensors",
    "x_mp_bf16_pure_ema.safetensors",
    "mp_accumulate_clip.safetensors",
    "x_mp_bf16_state_f32_accum_ema.safetensors",
    "x_mp_f16_master_scaler_accum.safetensors",
    "x_mp_f32_scaler_accum_ema_clip.safetensors",
    "mp_bf16_combined.safetensors",
    "x_mp_f16_pure_clip_accum.safetensors",
];

fn check(backend: Backend<'_>, label: &str, name: &str) -> wgpu_adamw::trace::ReplayOutput {
    let path = data(name);
    let trace = Trace::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let out = replay(&trace, backend, None).unwrap_or_else(|e| panic!("{label} {name}: {e}"));
    let cmp = compare(&trace, &out);
    for (kind, w) in cmp.rows() {
        let bits = w.bits16.map_or(String::new(), |(u, f)| {
            format!(" ({u:.1} ulps, {:.3}% not bit-identical)", 100.0 * f)
        });
        eprintln!(
            "{label} {name}: {kind} err/tol {:.4}{bits} at {}",
            w.ratio, w.at
        );
    }
    assert!(cmp.passed(), "{label} {name}: {cmp:?}");
    out
}

#[test]
fn cpu_matches_the_16bit_traces() {
    for name in DTYPE_TRACES {
        check(Backend::Cpu, "cpu", name);
    }
}

#[test]
fn gpu_matches_the_16bit_traces_and_the_cpu_bit_for_bit() {
    let ctx = common::gpu();
    for name in DTYPE_TRACES {
        let gpu = check(Backend::Gpu(&ctx), "gpu", name);
        let trace = Trace::load(data(name)).unwrap();
        let cpu = replay(&trace, Backend::Cpu, None).unwrap();
        let bits = |v: &[Vec<f32>]| -> Vec<Vec<u32>> {
            v.iter()
                .map(|t| t.iter().map(|x| x.to_bits()).collect())
                .collect()
        };
        assert_eq!(bits(&gpu.params), bits(&cpu.params), "{name}: params");
        assert_eq!(bits(&gpu.exp_avg), bits(&cpu.exp_avg), "{name}: exp_avg");
        assert_eq!(
            bits(&gpu.exp_avg_sq),
            bits(&cpu.exp_avg_sq),
            "{name}: exp_avg_sq"
        );
        assert_eq!(
            gpu.model.as_deref().map(bits),
            cpu.model.as_deref().map(bits),
            "{name}: model"
        );
        assert_eq!(
            gpu.ema.as_deref().map(bits),
            cpu.ema.as_deref().map(bits),
            "{name}: ema"
        );
    }
}

/// 16-bit tensors that share 32-bit words (f16 through both conversion paths): an
/// unregistered element, tensor A (group 0, odd
/// offset, odd length), tensor B (group 1, a different lr and weight decay, long enough for
/// several chunks, odd length), an unregistered element, tensor C (group 0, one element),
/// and an unregistered tail. Every word at a boundary holds two owners, updated by
/// different workgroups of one dispatch. After several steps the unregistered elements
/// keep their bits and the tensors equal the CPU twin's (which updates them as separate
/// slices) bit for bit; in bf16 and f16, pure 16-bit and with master weights, on the GPU
/// and on the CPU.
#[test]
fn tensors_sharing_words_never_touch_their_neighbours() {
    use wgpu_adamw::{
        AdamWConfig, CpuAdamW, CpuParamGroup, Dtype, Elems, ElemsMut, F16Path, GpuAdamW,
        GpuOptions, GroupConfig, ParamGroup, Precision, TensorBinding,
    };
    let ctx = common::gpu();
    let mut rng = common::Rng(7);
    // (offset, len) of A, B, C in one buffer of TOTAL elements.
    let (a, b, c) = ((1usize, 7usize), (8usize, 4099usize), (4108usize, 1usize));
    const TOTAL: usize = 4111;
    let registered = |i: usize| {
        (a.0..a.0 + a.1).contains(&i)
            || (b.0..b.0 + b.1).contains(&i)
            || (c.0..c.0 + c.1).contains(&i)
    };
    // f16 both through the packed integer conversions and the device's own (lavapipe's
    // are exact, so F16Path::Native is available there).
    // And bindings of 2 KiB with 256-element chunks: tensor B crosses several windows of
    // its buffers and several state arenas.
    let small = GpuOptions {
        max_binding_size: Some(2048),
        elems_per_thread: Some(1),
        ..Default::default()
    };
    for (dtype, path, options) in [
        (Dtype::Bf16, F16Path::Auto, GpuOptions::default()),
        (Dtype::F16, F16Path::Packed, GpuOptions::default()),
        (Dtype::F16, F16Path::Native, GpuOptions::default()),
        (Dtype::Bf16, F16Path::Auto, small),
        (Dtype::F16, F16Path::Packed, small),
    ] {
        for precision in [Precision::pure(dtype), Precision::master(dtype)] {
            let config = AdamWConfig::default()
                .with_lr(1e-2)
                .with_weight_decay(0.1)
                .with_precision(precision);
            let groups = [
                GroupConfig::default(),
                GroupConfig {
                    lr: Some(3e-2),
                    weight_decay: Some(0.0),
                },
            ];
            let init: Vec<u16> = (0..TOTAL).map(|_| dtype.narrow(rng.normal())).collect();
            let pbuf = buffer16(&ctx, &init);
            let gbuf = buffer16(&ctx, &vec![0; TOTAL]);
            let binding = |(off, len): (usize, usize)| TensorBinding {
                param: pbuf.clone(),
                param_offset: 2 * off as u64,
                grad: gbuf.clone(),
                grad_offset: 2 * off as u64,
                len: len as u64,
            };
            let gpu = GpuAdamW::with_options(
                &ctx.device,
                &ctx.queue,
                config.clone(),
                vec![
                    ParamGroup {
                        config: groups[0],
                        tensors: vec![binding(a), binding(c)],
                    },
                    ParamGroup {
                        config: groups[1],
                        tensors: vec![binding(b)],
                    },
                ],
                GpuOptions {
                    f16: path,
                    ..options
                },
            )
            .unwrap();
            assert_eq!(gpu.native_f16(), path == F16Path::Native, "{path:?}");
            let mut cpu = CpuAdamW::new(
                config.clone(),
                vec![
                    CpuParamGroup {
                        config: groups[0],
                        lens: vec![a.1, c.1],
                    },
                    CpuParamGroup {
                        config: groups[1],
                        lens: vec![b.1],
                    },
                ],
            )
            .unwrap();
            let mut host = init.clone();
            for _ in 0..4 {
                // TOTAL is odd: one half word of padding.
                let mut grads: Vec<u16> = rng
                    .grads(TOTAL + 1)
                    .iter()
                    .map(|&x| dtype.narrow(x))
                    .collect();
                ctx.queue
                    .write_buffer(&gbuf, 0, bytemuck::cast_slice(&grads));
                grads.pop();
                gpu.step().unwrap();
                // The CPU updates the same three tensors as slices of one host buffer.
                let (head, rest) = host.split_at_mut(b.0);
                let (pa, _) = head[a.0..].split_at_mut(a.1);
                let (pb, rest) = rest.split_at_mut(b.1);
                let pc = &mut rest[c.0 - b.0 - b.1..][..c.1];
                let g = |(off, len): (usize, usize)| Elems::Bits16(&grads[off..off + len]);
                cpu.step_mixed(
                    &mut [
                        ElemsMut::Bits16(pa),
                        ElemsMut::Bits16(pc),
                        ElemsMut::Bits16(pb),
                    ],
                    &[g(a), g(c), g(b)],
                )
                .unwrap();
            }
            let got = read16(&ctx, &pbuf, TOTAL);
            let label = format!("{precision:?} {path:?} {options:?}");
            // (Updates under half a 16-bit ulp vanish, so not every element moves.)
            let moved = (0..TOTAL)
                .filter(|&i| registered(i) && host[i] != init[i])
                .count();
            assert!(
                moved > (a.1 + b.1 + c.1) / 2,
                "{label}: only {moved} elements moved"
            );
            for &(off, len) in &[a, b, c] {
                assert!(
                    (off..off + len).any(|i| host[i] != init[i]),
                    "{label}: a tensor at {off} never moved"
                );
            }
            for i in 0..TOTAL {
                if !registered(i) {
                    assert_eq!(
                        host[i], init[i],
                        "{label}: the CPU changed unregistered {i}"
                    );
                    assert_eq!(got[i], init[i], "{label}: the GPU changed unregistered {i}");
                }
            }
            assert_eq!(got, host, "{label}: GPU and CPU differ");
        }
    }
}

/// Bad 16-bit input gets a typed error and changes nothing.
#[test]
fn bad_16bit_input_is_refused() {
    use wgpu_adamw::{
        AdamWConfig, CpuAdamW, CpuParamGroup, Dtype, Elems, ElemsMut, Error, GpuAdamW, ParamGroup,
        Precision, StateDtype, TensorBinding,
    };
    let ctx = common::gpu();
    let config = AdamWConfig::default().with_precision(Precision::pure(Dtype::Bf16));
    let pbuf = buffer16(&ctx, &[0x3f80; 16]);
    let odd_size = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 6,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let tensor = |param: &wgpu::Buffer, offset: u64, len: u64| ParamGroup {
        tensors: vec![TensorBinding {
            param: param.clone(),
            param_offset: offset,
            grad: pbuf.clone(),
            grad_offset: 0,
            len,
        }],
        ..Default::default()
    };
    let new = |g: ParamGroup| GpuAdamW::new(&ctx.device, &ctx.queue, config.clone(), vec![g]);
    // A byte offset that is not a whole element.
    let e = new(tensor(&pbuf, 3, 4)).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidTensor { reason, .. } if reason.contains("multiple of 2")),
        "{e}"
    );
    // A 16-bit range past the end, and a buffer that is not whole words.
    let e = new(tensor(&pbuf, 4, 15)).unwrap_err();
    assert!(matches!(e, Error::InvalidTensor { .. }), "{e}");
    let e = new(tensor(&odd_size, 0, 3)).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidTensor { reason, .. } if reason.contains("multiple of 4")),
        "{e}"
    );
    // Master weights need 16-bit parameters and f32 moments.
    for p in [
        Precision {
            master_weights: true,
            ..Precision::F32
        },
        Precision {
            master_weights: true,
            ..Precision::pure(Dtype::F16)
        },
    ] {
        let e = AdamWConfig::default()
            .with_precision(p)
            .validate()
            .unwrap_err();
        assert!(
            matches!(e, Error::InvalidHyperparameter { .. }),
            "{p:?}: {e}"
        );
    }
    assert!(Precision {
        state: StateDtype::F32,
        ..Precision::master(Dtype::F16)
    }
    .validate()
    .is_ok());
    // The training loop's settings, each named in its error; GpuAdamW::new refuses them too.
    let scaler = wgpu_adamw::GradScalerConfig::default();
    for (bad, field) in [
        (AdamWConfig::default().with_accumulation(0), "accumulate"),
        (AdamWConfig::default().with_ema(-0.1), "ema_decay"),
        (
            AdamWConfig::default().with_grad_scaler(wgpu_adamw::GradScalerConfig {
                growth_factor: 1.0,
                ..scaler
            }),
            "growth_factor",
        ),
        (
            AdamWConfig::default().with_grad_scaler(wgpu_adamw::GradScalerConfig {
                backoff_factor: 0.0,
                ..scaler
            }),
            "backoff_factor",
        ),
        (
            AdamWConfig::default().with_grad_scaler(wgpu_adamw::GradScalerConfig {
                init_scale: f64::INFINITY,
                ..scaler
            }),
            "init_scale",
        ),
        (
            AdamWConfig::default().with_stochastic_rounding(1),
            "stochastic_rounding",
        ),
        (
            AdamWConfig::default()
                .with_precision(Precision::master(Dtype::Bf16))
                .with_stochastic_rounding(1),
            "stochastic_rounding",
        ),
    ] {
        let e = bad.validate().unwrap_err();
        assert!(
            matches!(&e, Error::InvalidHyperparameter { name, .. } if *name == field),
            "{field}: {e}"
        );
        let g = tensor(&pbuf, 0, 4);
        let e = GpuAdamW::new(&ctx.device, &ctx.queue, bad, vec![g]).unwrap_err();
        assert!(
            matches!(e, Error::InvalidHyperparameter { .. }),
            "{field}: {e}"
        );
    }
    // Pure 16-bit clipping needs the per-tensor (torch_cpu) norm order.
    let e = config
        .clone()
        .with_max_grad_norm(Some(1.0))
        .validate()
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
    // The CPU: elements of the wrong type, or f32 slices through `step`.
    let mut cpu = CpuAdamW::new(
        config.clone(),
        vec![CpuParamGroup {
            lens: vec![2],
            ..Default::default()
        }],
    )
    .unwrap();
    let before = cpu.state();
    let mut p32 = [1.0f32, 2.0];
    let e = cpu
        .step_mixed(&mut [ElemsMut::F32(&mut p32)], &[Elems::Bits16(&[0, 0])])
        .unwrap_err();
    assert!(matches!(e, Error::InvalidTensor { .. }), "{e}");
    let e = cpu.step(&mut [&mut p32], &[&[0.0, 0.0]]).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    assert_eq!(cpu.state(), before);
    assert_eq!(p32, [1.0, 2.0]);
}
