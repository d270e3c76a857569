//! Reliability under concurrency and at the edges: consistent snapshots while another thread
//! steps, concurrent saves to one path, PyTorch's values where f32 overflows, hyperparameters
//! that overflow f32, public calls given bad arguments, counters at their limit, and the
//! compute-pass state `record_step` leaves behind.

mod common;

use common::{read_f32, storage_buffer, Pair, Rng};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use wgpu_adamw::{
    AdamWConfig, Counters, CpuAdamW, CpuParamGroup, Error, GpuAdamW, GpuOptions, OptimizerState,
    ParamGroup, Schedule, TensorBinding,
};

/// Agreement of the kernel and its CPU twin (see tests/gpu_vs_cpu.rs): bit for bit on
/// lavapipe, within an ulp or two per step where a GPU's division or sqrt rounds otherwise.
fn close(gpu: f32, cpu: f32) -> bool {
    gpu.to_bits() == cpu.to_bits() || (gpu - cpu).abs() <= 1e-6 * cpu.abs()
}

fn assert_states_close(got: &OptimizerState, want: &OptimizerState, what: &str) {
    assert_eq!(got.counters, want.counters, "{what}");
    for (i, (g, w)) in got.tensors.iter().zip(&want.tensors).enumerate() {
        for (kind, a, b) in [
            ("exp_avg", &g.exp_avg, &w.exp_avg),
            ("exp_avg_sq", &g.exp_avg_sq, &w.exp_avg_sq),
        ] {
            for (j, (&x, &y)) in a.iter().zip(b).enumerate() {
                assert!(close(x, y), "{what}: tensor {i} {kind}[{j}]: {x} vs {y}");
            }
        }
    }
}

fn tmp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "wgpu-adamw-reliability-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const LENS: [usize; 4] = [9000, 3, 20000, 517];

/// A GPU optimizer over `LENS` (state split over several arenas by a small binding size, so
/// a snapshot has several buffers to read), its CPU twin, and the fixed gradients.
fn stepping_setup(
    ctx: &wgpu_adamw::GpuContext,
) -> (GpuAdamW, CpuAdamW, Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut rng = Rng(11);
    let total: usize = LENS.iter().sum();
    let init: Vec<f32> = (0..total).map(|_| rng.normal()).collect();
    let grads = rng.grads(total);
    let p = storage_buffer(&ctx.device, &ctx.queue, &init);
    let g = storage_buffer(&ctx.device, &ctx.queue, &grads);
    let config = AdamWConfig::default().with_amsgrad(true);
    let opt = GpuAdamW::with_options(
        &ctx.device,
        &ctx.queue,
        config.clone(),
        vec![ParamGroup {
            tensors: common::packed(&p, &g, &LENS),
            ..Default::default()
        }],
        GpuOptions {
            max_binding_size: Some(64 << 10),
            ..Default::default()
        },
    )
    .unwrap();
    let cpu = CpuAdamW::new(
        config,
        vec![CpuParamGroup {
            lens: LENS.to_vec(),
            ..Default::default()
        }],
    )
    .unwrap();
    let split = |v: &[f32]| {
        let mut at = 0;
        LENS.iter()
            .map(|&n| {
                at += n;
                v[at - n..at].to_vec()
            })
            .collect::<Vec<_>>()
    };
    (opt, cpu, split(&init), split(&grads))
}

/// The CPU reference's state after each of `steps` steps (index = steps taken).
fn cpu_states(
    mut cpu: CpuAdamW,
    mut params: Vec<Vec<f32>>,
    grads: &[Vec<f32>],
    steps: usize,
) -> Vec<OptimizerState> {
    let mut out = vec![cpu.state()];
    for _ in 0..steps {
        let mut p: Vec<&mut [f32]> = params.iter_mut().map(|x| &mut x[..]).collect();
        let g: Vec<&[f32]> = grads.iter().map(|x| &x[..]).collect();
        cpu.step(&mut p, &g).unwrap();
        out.push(cpu.state());
    }
    out
}

/// Steps `opt` `steps` times on one thread while `snapshot` runs in a loop on another; the
/// stepping thread waits for a new snapshot every few steps, so the two interleave.
fn step_while_snapshotting(opt: &GpuAdamW, steps: usize, snapshot: impl Fn() + Sync) -> usize {
    let done = AtomicBool::new(false);
    let taken = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let snapshots = s.spawn(|| {
            while !done.load(Ordering::Acquire) {
                snapshot();
                taken.fetch_add(1, Ordering::AcqRel);
            }
        });
        for k in 0..steps {
            opt.step().unwrap();
            if k % 4 == 0 {
                let seen = taken.load(Ordering::Acquire);
                // (A snapshot that panicked ends the wait; the join below reports it.)
                while taken.load(Ordering::Acquire) == seen && !snapshots.is_finished() {
                    std::thread::yield_now();
                }
            }
        }
        done.store(true, Ordering::Release);
        snapshots.join().expect("the snapshot thread");
    });
    taken.load(Ordering::Acquire)
}

#[test]
fn state_snapshots_are_of_one_step_while_another_thread_steps() {
    let ctx = common::gpu();
    let (opt, cpu, init, grads) = stepping_setup(&ctx);
    let steps = 40;
    let want = cpu_states(cpu, init, &grads, steps);
    let snapshots = std::sync::Mutex::new(Vec::new());
    let taken = step_while_snapshotting(&opt, steps, || {
        snapshots.lock().unwrap().push(opt.state().unwrap());
    });
    let snapshots = snapshots.into_inner().unwrap();
    assert!(taken >= steps / 4, "the threads interleaved");
    for s in &snapshots {
        let k = s.counters.adam as usize;
        assert_states_close(s, &want[k], &format!("snapshot at step {k}"));
    }
}

#[test]
fn checkpoints_saved_while_another_thread_steps_are_of_one_step() {
    let ctx = common::gpu();
    let (opt, cpu, init, grads) = stepping_setup(&ctx);
    let steps = 24;
    let want = cpu_states(cpu, init, &grads, steps);
    let dir = tmp_dir("stepping");
    let path = dir.join("ckpt.safetensors");
    let loaded = std::sync::Mutex::new(Vec::new());
    step_while_snapshotting(&opt, steps, || {
        opt.save_checkpoint(&path).unwrap();
        loaded
            .lock()
            .unwrap()
            .push(OptimizerState::load(&path).unwrap());
    });
    for s in loaded.into_inner().unwrap() {
        let k = s.counters.adam as usize;
        assert_states_close(&s, &want[k], &format!("checkpoint at step {k}"));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn small_state(adam: u32) -> OptimizerState {
    let mut cpu = CpuAdamW::new(
        AdamWConfig::default(),
        vec![CpuParamGroup {
            lens: vec![5000],
            ..Default::default()
        }],
    )
    .unwrap();
    let mut p = vec![0.5f32; 5000];
    let g: Vec<f32> = (0..5000).map(|i| (i as f32).sin()).collect();
    cpu.step(&mut [&mut p[..]], &[&g[..]]).unwrap();
    let mut s = cpu.state();
    s.counters = Counters {
        sched: adam,
        adam,
        micro: 0,
    };
    s
}

#[test]
fn concurrent_saves_to_one_path_leave_a_complete_file() {
    let dir = tmp_dir("concurrent");
    let path = dir.join("shared.safetensors");
    let states: Vec<OptimizerState> = (1..=4).map(small_state).collect();
    let writing = AtomicBool::new(true);
    std::thread::scope(|s| {
        let writers: Vec<_> = states
            .iter()
            .map(|st| {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..25 {
                        st.save(path).unwrap();
                    }
                })
            })
            .collect();
        s.spawn(|| {
            let mut loads = 0;
            while writing.load(Ordering::Acquire) || loads < 50 {
                match OptimizerState::load(&path) {
                    Ok(got) => {
                        assert!(states.contains(&got), "a load read a state nobody saved");
                        loads += 1;
                    }
                    Err(Error::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => panic!("a concurrent load failed: {e}"),
                }
            }
        });
        for w in writers {
            w.join().unwrap();
        }
        writing.store(false, Ordering::Release);
    });
    assert!(states.contains(&OptimizerState::load(&path).unwrap()));
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["shared.safetensors"], "temporary files left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_read_only_checkpoint_is_refused_and_left_alone() {
    let dir = tmp_dir("readonly");
    let path = dir.join("ro.safetensors");
    small_state(1).save(&path).unwrap();
    let before = std::fs::read(&path).unwrap();
    let mut perm = std::fs::metadata(&path).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&path, perm).unwrap();
    match small_state(2).save(&path) {
        Err(Error::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied)
        }
        other => panic!("saving over a read-only file: {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert!(std::fs::metadata(&path).unwrap().permissions().readonly());
    let mut perm = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&path, perm).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[test]
fn saving_keeps_the_files_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp_dir("mode");
    let path = dir.join("mode.safetensors");
    small_state(1).save(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    small_state(2).save(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    assert_eq!(OptimizerState::load(&path).unwrap(), small_state(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `f32::mul_add` with NaNs compared as NaNs.
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[test]
fn emulated_fma_equals_ieee_fma_at_the_top_of_the_range() {
    use wgpu_adamw::twin::fma_exact;
    let max = f32::MAX;
    // The case: PyTorch (and mul_add) give 3.4028235e37.
    assert_eq!(fma_exact(0.1, max, 0.0), 0.1f32.mul_add(max, 0.0));
    let big = [
        max,
        f32::from_bits(0x7f7f_f800),
        3.4025e38,
        3.0e38,
        1.0e38,
        2.0e37,
        1.9e19,
        1.7e38,
        f32::INFINITY,
    ];
    let coeffs = [0.1f32, -0.9, 0.7, -0.3, 1.0, 0.5, 1e-3, 2.0, 8.0, -1.5e-5];
    let small = [0.0f32, -0.0, 1.0, -3.7, 1e-30, -1e-40, 1e-45, 5e37, -3.3e38];
    let mut rng = Rng(3);
    for &x in &big {
        for sx in [1.0f32, -1.0] {
            for &a in &coeffs {
                for &c in small.iter().chain(&big) {
                    let b = sx * x;
                    let want = a.mul_add(b, c);
                    assert!(
                        same(fma_exact(a, b, c), want),
                        "fma({a:e}, {b:e}, {c:e}) = {:e}, want {want:e}",
                        fma_exact(a, b, c)
                    );
                    // Same operands, a and b swapped (the scaled factor is the larger one).
                    assert!(same(fma_exact(b, a, c), b.mul_add(a, c)));
                    // The first moment's form (|coeff| <= 1).
                    if a.abs() <= 1.0 {
                        assert!(same(wgpu_adamw::twin::lerp_fma(a, b, c), want));
                        assert!(same(wgpu_adamw::twin::lerp_fma(a, c, b), a.mul_add(c, b)));
                    }
                }
            }
        }
    }
    // Random operands with exponents anywhere in the normal range (results not subnormal).
    let mut checked = 0;
    while checked < 200_000 {
        let r = |rng: &mut Rng| {
            let e = rng.range(0, 254) as u32 + 1;
            f32::from_bits(e << 23 | (rng.next_u64() as u32 & 0x807f_ffff))
        };
        let (a, b, c) = (r(&mut rng), r(&mut rng), r(&mut rng));
        let want = a.mul_add(b, c);
        if want != 0.0 && want.abs() < f32::MIN_POSITIVE * 2f32.powi(24) {
            continue;
        }
        assert!(
            same(fma_exact(a, b, c), want),
            "fma({a:e}, {b:e}, {c:e}) = {:e}, want {want:e}",
            fma_exact(a, b, c)
        );
        checked += 1;
    }
}

fn grads_for(lens: &[usize], rng: &mut Rng) -> Vec<Vec<f32>> {
    lens.iter().map(|&n| rng.grads(n)).collect()
}

/// Runs the same steps with loss scaling at an infinite scale and, as the independent
/// expectation, on a plain optimizer fed zero gradients.
#[test]
fn an_infinite_loss_scale_is_a_zero_gradient_step_as_in_pytorch() {
    let lens = [3000usize, 7, 1029];
    let scaled = AdamWConfig::default().with_loss_scaling(true);
    let mut amp = Pair::new(scaled, &lens, &mut Rng(21));
    let mut plain = Pair::new(AdamWConfig::default(), &lens, &mut Rng(21));
    amp.opt.set_loss_scale(f32::INFINITY);
    amp.cpu.set_loss_scale(f32::INFINITY);
    let mut rng = Rng(22);
    let zeros: Vec<Vec<f32>> = lens.iter().map(|&n| vec![0.0; n]).collect();
    for _ in 0..3 {
        amp.step(&grads_for(&lens, &mut rng)).unwrap();
        plain.step(&zeros).unwrap();
        assert!(!amp.opt.read_skipped().unwrap());
    }
    let (a, z) = (amp.gpu_params(), plain.host.concat());
    assert!(a.iter().all(|x| x.is_finite()));
    for (i, (&x, &y)) in a.iter().zip(&z).enumerate() {
        assert!(close(x, y), "gpu param {i}: {x} vs zero-gradient {y}");
    }
    assert_eq!(amp.host.concat(), z, "the CPU reference too");
    assert_eq!(amp.opt.state().unwrap().counters.adam, 3);
}

/// Gradients whose squares overflow f32: PyTorch's norm is inf, its clipping coefficient 0,
/// so the step is a zero-gradient step; a NaN gradient makes the norm and everything NaN.
#[test]
fn clipping_an_overflowing_norm_is_a_zero_gradient_step_as_in_pytorch() {
    let lens = [2048usize, 5, 700];
    let clipped = AdamWConfig::default().with_max_grad_norm(Some(1.0));
    let mut clip = Pair::new(clipped, &lens, &mut Rng(31));
    let mut plain = Pair::new(AdamWConfig::default(), &lens, &mut Rng(31));
    let mut rng = Rng(32);
    let zeros: Vec<Vec<f32>> = lens.iter().map(|&n| vec![0.0; n]).collect();
    let mut grads = grads_for(&lens, &mut rng);
    grads[0][100] = 3.0e30;
    grads[2][5] = -f32::MAX;
    clip.step(&grads).unwrap();
    plain.step(&zeros).unwrap();
    assert_eq!(clip.opt.read_grad_norm().unwrap(), f32::INFINITY);
    assert!(!clip.opt.read_found_inf().unwrap());
    let (c, z) = (clip.gpu_params(), plain.host.concat());
    for (i, (&x, &y)) in c.iter().zip(&z).enumerate() {
        assert!(close(x, y), "gpu param {i}: {x} vs zero-gradient {y}");
    }
    assert_eq!(clip.host.concat(), z, "the CPU reference too");
    // A NaN gradient: NaN norm and coefficient, every parameter NaN (as PyTorch's
    // clip_grad_nor_ without error_if_nonfinite).
    grads[1][2] = f32::NAN;
    clip.step(&grads).unwrap();
    assert!(clip.opt.read_grad_norm().unwrap().is_nan());
    assert!(clip.gpu_params().iter().all(|x| x.is_nan()));
    assert!(clip.host.concat().iter().all(|x| x.is_nan()));
}

#[test]
fn hyperparameters_that_overflow_f32_are_rejected() {
    let bad = [
        AdamWConfig::default().with_weight_decay(1e40),
        AdamWConfig::default().with_lr(1e39),
        AdamWConfig::default().with_lr(1e30).with_weight_decay(1e10),
        AdamWConfig::default().with_lr(1e38),
        AdamWConfig::default().with_eps(1e39),
        AdamWConfig::default().with_max_grad_norm(Some(1e39)),
        AdamWConfig::default().with_schedule(Schedule::cosine(10, 1e39)),
        AdamWConfig::default()
            .with_weight_decay(1.0)
            .with_schedule(Schedule::cosine_warm_restarts(10, 2, 3.4e38)),
    ];
    for c in bad {
        assert!(
            matches!(c.validate(), Err(Error::InvalidHyperparameter { .. })),
            "{c:?}"
        );
        let r = CpuAdamW::new(c, vec![CpuParamGroup::default()]);
        assert!(matches!(r, Err(Error::InvalidHyperparameter { .. })));
    }
    // Large but representable: accepted.
    let ok = AdamWConfig::default().with_lr(1e30).with_weight_decay(1e-9);
    assert!(ok.validate().is_ok());
    // A group's own lr or weight decay is checked with the optimizer's other values.
    let ctx = common::gpu();
    let p = storage_buffer(&ctx.device, &ctx.queue, &[1.0; 16]);
    let g = storage_buffer(&ctx.device, &ctx.queue, &[1.0; 16]);
    for group in [
        wgpu_adamw::GroupConfig {
            lr: Some(1e39),
            weight_decay: None,
        },
        wgpu_adamw::GroupConfig {
            lr: Some(1e20),
            weight_decay: Some(1e20),
        },
    ] {
        let r = GpuAdamW::new(
            &ctx.device,
            &ctx.queue,
            AdamWConfig::default(),
            vec![ParamGroup {
                config: group,
                tensors: vec![TensorBinding::whole(&p, &g)],
            }],
        );
        assert!(
            matches!(r, Err(Error::InvalidHyperparameter { .. })),
            "{r:?}"
        );
    }
}

fn plain_buffer(
    ctx: &wgpu_adamw::GpuContext,
    size: u64,
    usage: wgpu::BufferUsages,
) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("test"),
        size,
        usage,
        mapped_at_creation: false,
    })
}

#[test]
fn reads_and_copies_with_bad_arguments_are_errors() {
    let ctx = common::gpu();
    let read = |b: &wgpu::Buffer, off: u64, size: u64| {
        wgpu_adamw::read_buffer(&ctx.device, &ctx.queue, b, off, size)
    };
    let no_copy_src = plain_buffer(&ctx, 64, wgpu::BufferUsages::STORAGE);
    let ok = storage_buffer(&ctx.device, &ctx.queue, &[1.0; 16]);
    for (what, r) in [
        ("no COPY_SRC", read(&no_copy_src, 0, 16)),
        ("size not a multiple of 4", read(&ok, 0, 6)),
        ("offset not a multiple of 4", read(&ok, 2, 8)),
        ("past the end", read(&ok, 48, 32)),
        ("offset overflows", read(&ok, u64::MAX - 3, 8)),
    ] {
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{what}: {r:?}");
    }
    assert_eq!(read(&ok, 60, 4).unwrap(), [1.0f32.to_bits()]);

    let p = storage_buffer(&ctx.device, &ctx.queue, &[1.0; 64]);
    let g = storage_buffer(&ctx.device, &ctx.queue, &[0.5; 64]);
    let groups = |n: usize| {
        (0..n)
            .map(|i| ParamGroup {
                tensors: vec![TensorBinding {
                    param: p.clone(),
                    param_offset: 64 * i as u64,
                    grad: g.clone(),
                    grad_offset: 64 * i as u64,
                    len: 16,
                }],
                ..Default::default()
            })
            .collect()
    };
    let opt = GpuAdamW::new(&ctx.device, &ctx.queue, AdamWConfig::default(), groups(3)).unwrap();
    assert!(matches!(
        opt.read_words(&no_copy_src, 0, 4),
        Err(Error::InvalidArgument(_))
    ));
    let small = plain_buffer(&ctx, 32, wgpu::BufferUsages::COPY_DST);
    let no_dst = plain_buffer(&ctx, 256, wgpu::BufferUsages::STORAGE);
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    for r in [
        opt.encode_copy_step_scalars(&mut encoder, &small, 0), // 48 bytes into 32
        opt.encode_copy_step_scalars(&mut encoder, &no_dst, 0),
        opt.encode_copy_amp(&mut encoder, &small, 20),
        opt.encode_copy_amp(&mut encoder, &small, 2),
    ] {
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    }
    // Nothing bad was recorded: the encoder still submits cleanly.
    let log = plain_buffer(
        &ctx,
        96,
        wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
    );
    opt.encode_step(&mut encoder);
    opt.encode_copy_step_scalars(&mut encoder, &log, 0).unwrap();
    let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
    ctx.queue.submit([encoder.finish()]);
    assert!(pollster::block_on(scope.pop()).is_none());
    let lr = read(&log, 0, 96).unwrap();
    assert_eq!(f32::from_bits(lr[0]), 1e-3);
}

#[test]
fn buffers_of_another_wgpu_instance_are_an_error_not_a_panic() {
    let ctx = common::gpu();
    let other = common::gpu();
    // The engine's buffers live on `other`, created after some of its own resources so that
    // their handles do not exist on `ctx`.
    let _pad: Vec<wgpu::Buffer> = (0..16)
        .map(|_| storage_buffer(&other.device, &other.queue, &[0.0; 4]))
        .collect();
    let p = storage_buffer(&other.device, &other.queue, &[1.0; 64]);
    let g = storage_buffer(&other.device, &other.queue, &[1.0; 64]);
    let r = common::one_tensor_optimizer(&ctx, &p, &g);
    assert!(matches!(r, Err(Error::Device(_))), "{r:?}");
    // Handles that do exist on `ctx` (wgpu numbers each instance's buffers from 0) name
    // the optimizer's own buffers there: refused too.
    let other2 = common::gpu();
    let p1 = storage_buffer(&other2.device, &other2.queue, &[1.0; 64]);
    let g1 = storage_buffer(&other2.device, &other2.queue, &[1.0; 64]);
    let r = common::one_tensor_optimizer(&ctx, &p1, &g1);
    assert!(r.is_err(), "{r:?}");
    // The device is still usable.
    let p2 = storage_buffer(&ctx.device, &ctx.queue, &[1.0; 64]);
    let g2 = storage_buffer(&ctx.device, &ctx.queue, &[1.0; 64]);
    let opt = common::one_tensor_optimizer(&ctx, &p2, &g2).unwrap();
    opt.step().unwrap();
}

/// Counters at 2^32 - 1 never wrap: a state there is refused on load, and a step that would
/// take a counter past it is refused (skipped on the device, an error on the CPU), leaving
/// parameters, moments and counters as they were.
#[test]
fn counters_at_their_limit_refuse_the_step_instead_of_wrapping() {
    let lens = [1500usize, 9];
    let config = AdamWConfig::default().with_schedule(Schedule::cosine(1000, 1e-5));
    for start in [
        Counters {
            sched: u32::MAX - 1,
            adam: 7,
            micro: 0,
        },
        Counters {
            sched: 40,
            adam: u32::MAX - 1,
            micro: 0,
        },
    ] {
        let mut pair = Pair::new(config.clone(), &lens, &mut Rng(41));
        let mut rng = Rng(42);
        // Give the moments some history, then move the counters next to the limit.
        pair.step(&grads_for(&lens, &mut rng)).unwrap();
        let mut state = pair.cpu.state();
        state.counters = Counters {
            sched: u32::MAX,
            adam: start.adam,
            micro: 0,
        };
        let before = pair.opt.state().unwrap();
        assert!(matches!(
            pair.opt.load_state(&state),
            Err(Error::StepLimit(_))
        ));
        assert!(matches!(
            pair.cpu.load_state(&state),
            Err(Error::StepLimit(_))
        ));
        assert_eq!(pair.opt.state().unwrap(), before);
        state.counters = start;
        pair.opt.load_state(&state).unwrap();
        pair.cpu.load_state(&state).unwrap();
        // The last step there is: both backends take it alike.
        pair.step(&grads_for(&lens, &mut rng)).unwrap();
        let after = pair.opt.state().unwrap();
        assert_eq!(
            after.counters,
            Counters {
                sched: start.sched + 1,
                adam: start.adam + 1,
                micro: 0,
            }
        );
        assert_states_close(&after, &pair.cpu.state(), "the last step");
        let params = pair.gpu_params();
        for (i, (&x, &y)) in params.iter().zip(&pair.host.concat()).enumerate() {
            assert!(x.is_finite() && close(x, y), "param {i}: {x} vs {y}");
        }
        // The next one is refused.
        let grads = grads_for(&lens, &mut rng);
        let r = pair.step(&grads);
        assert!(matches!(r, Err(Error::StepLimit(_))), "{r:?}");
        assert!(pair.opt.read_skipped().unwrap());
        assert_eq!(pair.opt.state().unwrap(), after);
        assert_eq!(pair.cpu.state(), after);
        assert_eq!(
            pair.gpu_params()
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>(),
            params.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }
}

const ENGINE_KERNEL: &str = "
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < arrayLength(&dst)) {
        dst[id.x] = 2.0 * src[id.x] + 1.0;
    }
}";

/// An engine kernel recorded after `record_step` in the same pass, setting its own pipeline
/// and bind group 0 as the rustdoc says, runs as if alone, and the optimizer's step is
/// applied exactly once.
#[test]
fn an_engine_kernel_after_record_step_runs_correctly_with_its_own_state() {
    let lens = [4096usize, 33];
    let mut pair = Pair::new(AdamWConfig::default(), &lens, &mut Rng(51));
    let ctx = &pair.ctx;
    let module = ctx
        .device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("engine"),
            source: wgpu::ShaderSource::Wgsl(ENGINE_KERNEL.into()),
        });
    let pipeline = ctx
        .device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("engine"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
    let src_data: Vec<f32> = (0..1000).map(|i| i as f32 * 0.25).collect();
    let src = storage_buffer(&ctx.device, &ctx.queue, &src_data);
    let dst = storage_buffer(&ctx.device, &ctx.queue, &[0.0; 1000]);
    let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("engine"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: src.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &dst,
                    offset: 0,
                    size: wgpu::BufferSize::new(4000),
                }),
            },
        ],
    });
    let mut rng = Rng(52);
    let grads = grads_for(&lens, &mut rng);
    ctx.queue
        .write_buffer(&pair.g, 0, bytemuck::cast_slice(&grads.concat()));
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pair.opt.record_step(&mut pass);
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(1000u32.div_ceil(64), 1, 1);
    }
    let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
    ctx.queue.submit([encoder.finish()]);
    assert!(pollster::block_on(scope.pop()).is_none());
    let out = read_f32(ctx, &dst, 0, 1000);
    for (i, (&o, &s)) in out.iter().zip(&src_data).enumerate() {
        assert_eq!(o, 2.0 * s + 1.0, "engine output {i}");
    }
    let gpu = pair.gpu_params();
    let mut p: Vec<&mut [f32]> = pair.host.iter_mut().map(|x| &mut x[..]).collect();
    let g: Vec<&[f32]> = grads.iter().map(|x| &x[..]).collect();
    pair.cpu.step(&mut p, &g).unwrap();
    for (i, (&x, &y)) in gpu.iter().zip(&pair.host.concat()).enumerate() {
        assert!(close(x, y), "param {i}: {x} vs {y} (one step)");
    }
    assert_eq!(pair.opt.read_counters().unwrap().adam, 1);
}
