//! Checkpoints: round trips on both backends, moving between backends, and rejection of
//! damaged or mismatched files without touching the optimizer.

mod common;

use common::{storage_buffer, Rng};
use wgpu_adamw::{
    AdamWConfig, CpuAdamW, CpuParamGroup, Error, GpuAdamW, OptimizerState, ParamGroup, Schedule,
    TensorBinding,
};

fn config() -> AdamWConfig {
    AdamWConfig::default()
        .with_amsgrad(true)
        .with_schedule(Schedule::warmup_cosine(3, 20, 0.5))
        .with_steps_per_epoch(2)
}

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "wgpu-adamw-ckpt-test-{}-{name}",
        std::process::id()
    ))
}

#[test]
fn gpu_checkpoint_loads_into_the_cpu_reference_and_back() {
    let ctx = common::gpu();
    let mut rng = Rng(5);
    let lens = [1000usize, 3, 517];
    let total: usize = lens.iter().sum();
    let p = storage_buffer(
        &ctx.device,
        &ctx.queue,
        &(0..total).map(|_| rng.normal()).collect::<Vec<_>>(),
    );
    let g = storage_buffer(&ctx.device, &ctx.queue, &rng.grads(total));
    let tensors = common::packed(&p, &g, &lens);
    let opt = GpuAdamW::new(
        &ctx.device,
        &ctx.queue,
        config(),
        vec![ParamGroup {
            tensors,
            ..Default::default()
        }],
    )
    .unwrap();
    for _ in 0..5 {
        opt.step().unwrap();
    }
    let path = tmp("interop.safetensors");
    opt.save_checkpoint(&path).unwrap();
    let state = OptimizerState::load(&path).unwrap();
    assert_eq!(state, opt.state().unwrap());
    assert_eq!(state.counters.adam, 5);
    let cpu = CpuAdamW::from_state(&state).unwrap();
    assert_eq!(cpu.state(), state);
    // A fresh GPU optimizer restored from the file holds the same state.
    let tensors2 = vec![
        TensorBinding {
            param: p.clone(),
            param_offset: 0,
            grad: g.clone(),
            grad_offset: 0,
            len: 1000,
        },
        TensorBinding {
            param: p.clone(),
            param_offset: 4000,
            grad: g.clone(),
            grad_offset: 4000,
            len: 3,
        },
        TensorBinding {
            param: p.clone(),
            param_offset: 4012,
            grad: g.clone(),
            grad_offset: 4012,
            len: 517,
        },
    ];
    let opt2 = GpuAdamW::new(
        &ctx.device,
        &ctx.queue,
        state.config.clone(),
        vec![ParamGroup {
            tensors: tensors2,
            ..Default::default()
        }],
    )
    .unwrap();
    opt2.load_checkpoint(&path).unwrap();
    assert_eq!(opt2.state().unwrap(), state);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn damaged_and_mismatched_checkpoints_are_rejected_and_change_nothing() {
    let groups = || {
        vec![CpuParamGroup {
            lens: vec![10, 20],
            ..Default::default()
        }]
    };
    let mut opt = CpuAdamW::new(config(), groups()).unwrap();
    let mut rng = Rng(11);
    let mut a: Vec<f32> = (0..10).map(|_| rng.normal()).collect();
    let mut b: Vec<f32> = (0..20).map(|_| rng.normal()).collect();
    let (ga, gb) = (rng.grads(10), rng.grads(20));
    opt.step(&mut [&mut a, &mut b], &[&ga, &gb]).unwrap();
    let good = opt.state().to_bytes().unwrap();
    let before = opt.state();
    let path = tmp("damaged.safetensors");
    let mut cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        good[..good.len() / 2].to_vec(),
        good[..7].to_vec(),
        b"not a checkpoint".to_vec(),
    ];
    for i in 0..300 {
        let mut bad = good.clone();
        let at = rng.range(0, bad.len() as u64) as usize;
        bad[at] ^= 1 << (i % 8);
        cases.push(bad);
    }
    for bytes in cases {
        std::fs::write(&path, &bytes).unwrap();
        match opt.load_checkpoint(&path) {
            Err(_) => assert_eq!(opt.state(), before, "a rejected file changed the optimizer"),
            // A flipped bit inside a tensor's data is still a well-formed checkpoint.
            Ok(()) => opt.load_state(&before).unwrap(),
        }
    }
    // Other tensor sizes, other tensor counts, amsgrad off.
    for other in [
        CpuAdamW::new(
            config(),
            vec![CpuParamGroup {
                lens: vec![10, 21],
                ..Default::default()
            }],
        )
        .unwrap(),
        CpuAdamW::new(
            config(),
            vec![CpuParamGroup {
                lens: vec![10],
                ..Default::default()
            }],
        )
        .unwrap(),
        CpuAdamW::new(config().with_amsgrad(false), groups()).unwrap(),
    ] {
        other.save_checkpoint(&path).unwrap();
        let r = opt.load_checkpoint(&path);
        assert!(matches!(r, Err(Error::CheckpointMismatch(_))), "{r:?}");
        assert_eq!(opt.state(), before);
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn saving_replaces_the_file_atomically() {
    let opt = CpuAdamW::new(
        config(),
        vec![CpuParamGroup {
            lens: vec![4],
            ..Default::default()
        }],
    )
    .unwrap();
    let path = tmp("atomic.safetensors");
    std::fs::write(&path, b"previous").unwrap();
    opt.save_checkpoint(&path).unwrap();
    assert_eq!(OptimizerState::load(&path).unwrap(), opt.state());
    // A directory that does not exist: an error, and nothing is left behind.
    let missing = tmp("no-such-dir").join("x.safetensors");
    assert!(matches!(
        opt.save_checkpoint(&missing),
        Err(Error::Io { .. })
    ));
    std::fs::remove_file(&path).unwrap();
    let leftovers = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.contains("atomic.safetensors") && name.ends_with(".tmp")
        })
        .count();
    assert_eq!(leftovers, 0);
}
