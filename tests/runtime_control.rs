//! Run-time control: a group's base lr and weight decay set from the host between steps, the
//! lr multiplier written by the host or on the device, and checkpoints restoring the
//! groups' hyperparameters from the file; on both backends, against the f64 schedule.

mod common;

use common::{Pair, Rng};
use wgpu_adamw::schedule::{epoch_of_step, GroupCtx};
use wgpu_adamw::{AdamWConfig, CpuAdamW, CpuParamGroup, Error, OptimizerState, Schedule};

const LENS: [usize; 2] = [700, 9];

fn grads(rng: &mut Rng) -> Vec<Vec<f32>> {
    LENS.iter().map(|&n| rng.grads(n)).collect()
}

fn within_lr_tol(got: f32, want: f64, label: &str) {
    let tol = 1e-6 * want.abs() + 1e-12;
    assert!(
        (f64::from(got) - want).abs() <= tol,
        "{label}: got {got:e}, want {want:e}"
    );
}

#[test]
fn base_lr_weight_decay_and_lr_scale_change_between_steps() {
    let config = AdamWConfig::default().with_schedule(Schedule::cosine(20, 1e-5));
    let mut pair = Pair::new(config.clone(), &LENS, &mut Rng(3));
    let mut rng = Rng(4);
    let f64_lr = |b: f64, step: u64| {
        config
            .schedule
            .lr(&GroupCtx::single(b), epoch_of_step(step, 1))
    };
    let mut base = config.lr;
    let mut scale = 1.0f32;
    for step in 1..=12u64 {
        if step == 5 {
            base = 3e-3;
            pair.opt.set_base_lr(0, base).unwrap();
            pair.cpu.set_base_lr(0, base).unwrap();
            pair.opt.set_weight_decay(0, 0.2).unwrap();
            pair.cpu.set_weight_decay(0, 0.2).unwrap();
        }
        if step == 9 {
            scale = 0.25;
            pair.opt.set_lr_scale(scale).unwrap();
            pair.cpu.set_lr_scale(scale).unwrap();
        }
        pair.step(&grads(&mut rng)).unwrap();
        let (g, c) = (pair.opt.read_lr().unwrap()[0], pair.cpu.lr()[0]);
        assert_eq!(
            g.to_bits(),
            c.to_bits(),
            "step {step}: device {g}, twin {c}"
        );
        within_lr_tol(g, f64_lr(base, step) * f64::from(scale), "lr");
    }
    assert_eq!(pair.opt.groups()[0].lr, Some(3e-3));
    assert_eq!(pair.opt.groups()[0].weight_decay, Some(0.2));
    let (gpu, cpu) = (pair.gpu_params(), pair.host.concat());
    for (i, (x, y)) in gpu.iter().zip(&cpu).enumerate() {
        assert!(
            (x - y).abs() <= 1e-6 * y.abs().max(1e-3),
            "param {i}: gpu {x} cpu {y}"
        );
    }
    // Bad values are typed errors and change nothing.
    assert!(matches!(
        pair.opt.set_base_lr(0, -1.0),
        Err(Error::InvalidHyperparameter { .. })
    ));
    assert!(matches!(
        pair.cpu.set_base_lr(5, 1e-3),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        pair.opt.set_lr_scale(f32::NAN),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(pair.opt.groups()[0].lr, Some(3e-3));
}

#[test]
fn the_engine_writes_the_lr_scale_on_the_device() {
    let config = AdamWConfig::default();
    let mut pair = Pair::new(config, &LENS, &mut Rng(5));
    let ctx = &pair.ctx;
    // The engine's own buffer (say, the output of its warmup kernel), copied in on the GPU.
    let src = common::storage_buffer(&ctx.device, &ctx.queue, &[0.125f32, 0.0, 0.0, 0.0]);
    let (dst, offset) = pair.opt.lr_scale_binding();
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(&src, 0, dst, offset, 4);
    ctx.queue.submit([encoder.finish()]);
    pair.cpu.set_lr_scale(0.125).unwrap();
    pair.step(&grads(&mut Rng(6))).unwrap();
    assert_eq!(pair.opt.read_lr().unwrap()[0], 1e-3f32 * 0.125);
    assert_eq!(pair.cpu.lr()[0], 1e-3f32 * 0.125);
}

/// Both backends restore the groups' lr and weight decay from the file (PyTorch's
/// `load_state_dict` rule), whatever the loading optimizer was built with.
#[test]
fn checkpoints_restore_group_hyperparameters_on_both_backends() {
    let config = AdamWConfig::default().with_schedule(Schedule::cosine(10, 0.0));
    let mut pair = Pair::new(config.clone(), &LENS, &mut Rng(7));
    let mut rng = Rng(8);
    pair.step(&grads(&mut rng)).unwrap();
    pair.opt.set_base_lr(0, 5e-3).unwrap();
    pair.opt.set_weight_decay(0, 0.0).unwrap();
    pair.opt.set_lr_scale(0.5).unwrap();
    let dir = std::env::temp_dir().join(format!("wgpu-adamw-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ckpt.safetensors");
    pair.opt.save_checkpoint(&file).unwrap();
    let state = OptimizerState::load(&file).unwrap();
    assert_eq!(state.groups[0].lr, Some(5e-3));
    assert_eq!(state.lr_scale, 0.5);

    // A CPU optimizer built with the defaults adopts the file's group values.
    let mut cpu = CpuAdamW::new(
        config.clone(),
        vec![CpuParamGroup {
            lens: LENS.to_vec(),
            ..Default::default()
        }],
    )
    .unwrap();
    cpu.load_checkpoint(&file).unwrap();
    assert_eq!(cpu.state().groups, state.groups);
    // And so does a fresh GPU one: both then take the same next step.
    let fresh = Pair::new(config, &LENS, &mut Rng(7));
    fresh.opt.load_checkpoint(&file).unwrap();
    assert_eq!(fresh.opt.groups(), state.groups);
    let g = grads(&mut rng);
    let mut host = pair.host.clone();
    let mut views: Vec<&mut [f32]> = host.iter_mut().map(|x| &mut x[..]).collect();
    cpu.step(&mut views, &g.iter().map(|x| &x[..]).collect::<Vec<_>>())
        .unwrap();
    pair.step(&g).unwrap();
    let want = config_lr(5e-3) * 0.5;
    within_lr_tol(cpu.lr()[0], want, "cpu after load");
    assert_eq!(pair.opt.read_lr().unwrap()[0], cpu.lr()[0]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The cosine lr at step 2 for base `b`.
fn config_lr(b: f64) -> f64 {
    Schedule::cosine(10, 0.0).lr(&GroupCtx::single(b), 1)
}

#[test]
fn setting_a_plateau_groups_lr_restarts_its_cuts_from_it() {
    let schedule = Schedule::from_json(
        r#"{"kind":"reduce_on_plateau","mode":"min","factor":0.5,"patience":0,"threshold":0.0,"threshold_mode":"abs","cooldown":0,"min_lr":0.0,"eps":0.0}"#,
    )
    .unwrap();
    let config = AdamWConfig::default().with_schedule(schedule);
    let mut pair = Pair::new(config, &LENS, &mut Rng(9));
    let mut rng = Rng(10);
    // Epoch 0 at 1e-3; the metric never improves after the first, so each epoch halves.
    for (step, metric) in [(1, 1.0f32), (2, 2.0), (3, 3.0)] {
        pair.opt.set_metric(metric);
        pair.cpu.set_metric(metric);
        pair.step(&grads(&mut rng)).unwrap();
        let want = 1e-3
            * if step == 1 {
                1.0
            } else {
                0.5f64.powi(step - 2)
            };
        within_lr_tol(pair.cpu.lr()[0], want, "cpu plateau");
        assert_eq!(pair.opt.read_lr().unwrap()[0], pair.cpu.lr()[0]);
    }
    pair.opt.set_base_lr(0, 4e-3).unwrap();
    pair.cpu.set_base_lr(0, 4e-3).unwrap();
    pair.opt.set_metric(4.0);
    pair.cpu.set_metric(4.0);
    pair.step(&grads(&mut rng)).unwrap();
    within_lr_tol(pair.cpu.lr()[0], 2e-3, "cut from the new lr");
    assert_eq!(pair.opt.read_lr().unwrap()[0], pair.cpu.lr()[0]);
}
