//! Bad input never panics and never corrupts state: typed errors for hyperparameters,
//! registrations, device errors, damaged traces and checkpoints.

mod common;

use common::{storage_buffer, Rng};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use wgpu_adamw::trace::Trace;
use wgpu_adamw::{
    AdamWConfig, CpuAdamW, CpuParamGroup, Error, GpuAdamW, GroupConfig, OptimizerState, ParamGroup,
    Schedule, TensorBinding,
};

fn bad_configs() -> Vec<(&'static str, AdamWConfig)> {
    let d = AdamWConfig::default();
    vec![
        ("lr", d.clone().with_lr(-1e-3)),
        ("lr", d.clone().with_lr(f64::NAN)),
        ("lr", d.clone().with_lr(f64::INFINITY)),
        ("betas", d.clone().with_betas(1.0, 0.999)),
        ("betas", d.clone().with_betas(0.9, -0.1)),
        ("betas", d.clone().with_betas(f64::NAN, 0.9)),
        ("eps", d.clone().with_eps(0.0)),
        ("eps", d.clone().with_eps(-1e-8)),
        ("eps", d.clone().with_eps(f64::NAN)),
        ("weight_decay", d.clone().with_weight_decay(-0.01)),
        ("weight_decay", d.clone().with_weight_decay(f64::INFINITY)),
        ("t_max", d.clone().with_schedule(Schedule::cosine(0, 0.0))),
        (
            "eta_min",
            d.clone().with_schedule(Schedule::cosine(5, f64::NAN)),
        ),
        (
            "t_0",
            d.clone()
                .with_schedule(Schedule::cosine_warm_restarts(0, 2, 0.0)),
        ),
        (
            "t_mult",
            d.clone()
                .with_schedule(Schedule::cosine_warm_restarts(3, 0, 0.0)),
        ),
        (
            "warmup_steps",
            d.clone()
                .with_schedule(Schedule::warmup_cosine(11, 10, 0.5)),
        ),
        ("steps_per_epoch", d.clone().with_steps_per_epoch(0)),
        ("max_grad_norm", d.clone().with_max_grad_norm(Some(0.0))),
        (
            "max_grad_norm",
            d.clone().with_max_grad_norm(Some(f64::NAN)),
        ),
    ]
}

#[test]
fn bad_hyperparameters_are_named_errors_on_both_backends() {
    let ctx = common::gpu();
    let p = storage_buffer(&ctx.device, &ctx.queue, &[0.0; 16]);
    let g = storage_buffer(&ctx.device, &ctx.queue, &[0.0; 16]);
    for (name, config) in bad_configs() {
        let cpu = CpuAdamW::new(
            config.clone(),
            vec![CpuParamGroup {
                lens: vec![16],
                ..Default::default()
            }],
        );
        assert!(
            matches!(&cpu, Err(Error::InvalidHyperparameter { name: n, .. }) if *n == name),
            "{name}: {cpu:?}"
        );
        let gpu = GpuAdamW::new(
            &ctx.device,
            &ctx.queue,
            config,
            vec![ParamGroup {
                tensors: vec![TensorBinding::whole(&p, &g)],
                ..Default::default()
            }],
        );
        assert!(
            matches!(&gpu, Err(Error::InvalidHyperparameter { name: n, .. }) if *n == name),
            "{name}: {gpu:?}"
        );
    }
    let group = GroupConfig {
        lr: Some(-1.0),
        weight_decay: None,
    };
    let r = CpuAdamW::new(
        AdamWConfig::default(),
        vec![CpuParamGroup {
            config: group,
            lens: vec![1],
        }],
    );
    assert!(matches!(
        r,
        Err(Error::InvalidHyperparameter { name: "lr", .. })
    ));
}

#[test]
fn wrong_host_shapes_are_errors_and_change_nothing() {
    let mut opt = CpuAdamW::new(
        AdamWConfig::default(),
        vec![CpuParamGroup {
            lens: vec![4, 2],
            ..Default::default()
        }],
    )
    .unwrap();
    let before = opt.state();
    let (mut a, mut b) = (vec![0.0f32; 4], vec![0.0f32; 3]);
    let r = opt.step(&mut [&mut a, &mut b], &[&[0.1; 4], &[0.1; 3]]);
    assert!(matches!(r, Err(Error::ShapeMismatch(_))));
    let r = opt.step(&mut [&mut a], &[&[0.1; 4]]);
    assert!(matches!(r, Err(Error::ShapeMismatch(_))));
    assert_eq!(opt.state(), before);
}

#[test]
fn a_destroyed_engine_buffer_is_a_device_error() {
    let ctx = common::gpu();
    let p = storage_buffer(&ctx.device, &ctx.queue, &[1.0; 64]);
    let g = storage_buffer(&ctx.device, &ctx.queue, &[1.0; 64]);
    let opt = common::one_tensor_optimizer(&ctx, &p, &g).unwrap();
    opt.step().unwrap();
    g.destroy();
    let r = opt.step();
    assert!(matches!(r, Err(Error::Device(_))), "{r:?}");
}

/// Every way of damaging a file: truncations, bit flips (mostly in the header, where they
/// matter), random headers.
fn damaged(good: &[u8], rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut out = vec![
        Vec::new(),
        good[..4].to_vec(),
        good[..good.len() - 1].to_vec(),
    ];
    for i in 1..40 {
        out.push(good[..good.len() * i / 40].to_vec());
    }
    let header = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    for i in 0..400 {
        let mut bad = good.to_vec();
        let at = if i % 4 == 0 {
            rng.range(0, good.len() as u64)
        } else {
            rng.range(0, header as u64)
        } as usize;
        bad[at] ^= 1 << (i % 8);
        out.push(bad);
    }
    for _ in 0..50 {
        let mut bad = good.to_vec();
        let len = rng.range(0, 4096);
        bad[..8].copy_from_slice(&len.to_le_bytes());
        let n = (len as usize).min(bad.len() - 8);
        let alphabet = b"{}[]\":,0123456789abcdefFFSUPTYE __metadata__ dtype shape data_offsets";
        for b in &mut bad[8..8 + n] {
            *b = alphabet[rng.range(0, alphabet.len() as u64) as usize];
        }
        out.push(bad);
    }
    out
}

#[test]
fn damaged_traces_are_clean_errors() {
    let mut rng = Rng(77);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    for name in ["warm_restarts.safetensors", "amp_clip.safetensors"] {
        let good = std::fs::read(dir.join(name)).unwrap();
        let (mut ok, mut err) = (0, 0);
        for bytes in damaged(&good, &mut rng) {
            match catch_unwind(AssertUnwindSafe(|| {
                Trace::from_bytes(&bytes, Path::new(name))
            })) {
                Ok(Ok(_)) => ok += 1,
                Ok(Err(e)) => {
                    assert!(!e.to_string().is_empty());
                    err += 1
                }
                Err(_) => panic!("{name}: a damaged trace panicked"),
            }
        }
        assert!(err > 300, "{name}: {ok} accepted, {err} rejected");
    }
}

#[test]
fn damaged_checkpoints_are_clean_errors() {
    let mut rng = Rng(78);
    let mut opt = CpuAdamW::new(
        AdamWConfig::default().with_amsgrad(true),
        vec![CpuParamGroup {
            lens: vec![100, 3],
            ..Default::default()
        }],
    )
    .unwrap();
    let (mut a, mut b) = (vec![0.5f32; 100], vec![0.5f32; 3]);
    opt.step(&mut [&mut a, &mut b], &[&[0.1; 100], &[0.2; 3]])
        .unwrap();
    let good = opt.state().to_bytes().unwrap();
    let before = opt.state();
    for bytes in damaged(&good, &mut rng) {
        match catch_unwind(AssertUnwindSafe(|| {
            OptimizerState::from_bytes(&bytes, Path::new("ckpt"))
        })) {
            Ok(Ok(state)) => {
                // Accepted (a flipped bit in the data): loading it either fits or is refused
                // whole.
                if opt.load_state(&state).is_err() {
                    assert_eq!(opt.state(), before);
                }
                opt.load_state(&before).unwrap();
            }
            Ok(Err(_)) => {}
            Err(_) => panic!("a damaged checkpoint panicked"),
        }
    }
    assert_eq!(opt.state(), before);
}

/// `step_async` (the web's form: it awaits the error scopes) steps as `step` does and turns a
/// device error into `Error::Device` too.
#[test]
fn step_async_steps_and_reports_device_errors() {
    let ctx = common::gpu();
    let values: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
    let (p1, g1) = (
        storage_buffer(&ctx.device, &ctx.queue, &values),
        storage_buffer(&ctx.device, &ctx.queue, &[0.25; 64]),
    );
    let (p2, g2) = (
        storage_buffer(&ctx.device, &ctx.queue, &values),
        storage_buffer(&ctx.device, &ctx.queue, &[0.25; 64]),
    );
    let sync = common::one_tensor_optimizer(&ctx, &p1, &g1).unwrap();
    let async_ = common::one_tensor_optimizer(&ctx, &p2, &g2).unwrap();
    for _ in 0..3 {
        sync.step().unwrap();
        pollster::block_on(async_.step_async()).unwrap();
    }
    assert_eq!(sync.state().unwrap(), async_.state().unwrap());
    assert_eq!(
        common::read_f32(&ctx, &p1, 0, 64),
        common::read_f32(&ctx, &p2, 0, 64)
    );
    g2.destroy();
    let r = pollster::block_on(async_.step_async());
    assert!(matches!(r, Err(Error::Device(_))), "{r:?}");
}
