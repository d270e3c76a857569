//! Read-backs without blocking (what the web needs): the async forms return what the
//! blocking ones do, once the device is polled; a checkpoint goes to bytes and back.

mod common;

use common::{Pair, Rng};
use std::sync::atomic::{AtomicBool, Ordering};
use wgpu_adamw::{AdamWConfig, Error, GpuAdamW, ParamGroup, Schedule};

/// Runs `future` to completion on this thread while another polls the device (on the web the
/// browser polls; natively someone must).
fn drive<T>(device: &wgpu::Device, future: impl std::future::Future<Output = T>) -> T {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let _ = device.poll(wgpu::PollType::Poll);
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        });
        let out = pollster::block_on(future);
        stop.store(true, Ordering::Relaxed);
        out
    })
}

#[test]
fn async_reads_equal_the_blocking_ones_and_checkpoints_round_trip_as_bytes() {
    let mut rng = Rng(41);
    let config = AdamWConfig::default()
        .with_lr(1e-2)
        .with_amsgrad(true)
        .with_ema(0.99)
        .with_schedule(Schedule::cosine(20, 1e-4));
    let lens = [3000, 7, 1];
    let mut pair = Pair::new(config.clone(), &lens, &mut rng);
    for _ in 0..4 {
        let grads: Vec<Vec<f32>> = lens.iter().map(|&n| rng.grads(n)).collect();
        pair.step(&grads).unwrap();
    }
    let device = pair.ctx.device.clone();
    let state = drive(&device, pair.opt.state_async()).unwrap();
    assert_eq!(state, pair.opt.state().unwrap());
    assert_eq!(state, pair.cpu.state());
    assert_eq!(
        drive(&device, pair.opt.read_lr_async()).unwrap(),
        pair.opt.read_lr().unwrap()
    );
    let counters = drive(&device, pair.opt.read_counters_async()).unwrap();
    assert_eq!(counters, pair.opt.read_counters().unwrap());
    assert_eq!(counters.adam, 4);

    // Bytes out of one optimizer, into a new one over other buffers: the same state.
    let bytes = drive(&device, pair.opt.checkpoint_bytes_async()).unwrap();
    let fresh = GpuAdamW::new(
        &pair.ctx.device,
        &pair.ctx.queue,
        config,
        vec![ParamGroup {
            tensors: common::packed(&pair.p, &pair.g, &lens),
            ..Default::default()
        }],
    )
    .unwrap();
    fresh.load_checkpoint_bytes(&bytes).unwrap();
    assert_eq!(fresh.state().unwrap(), state);
    assert!(matches!(
        fresh.load_checkpoint_bytes(&bytes[..bytes.len() / 2]),
        Err(Error::InvalidFile { .. })
    ));

    // A bad range is refused before anything is submitted.
    assert!(matches!(
        drive(
            &device,
            wgpu_adamw::read_buffer_async(&device, &pair.ctx.queue, &pair.p, 2, 4)
        ),
        Err(Error::InvalidArgument(_))
    ));
}

/// The non-blocking replay (the browser's), straight and resumed from checkpoint bytes, gives
/// what the blocking one does, bit for bit,
/// on an f32 trace with groups and AMSGrad and on mixed-precision ones (master weights and an
/// EMA, whose creation reads the parameters back).
#[test]
fn async_replay_equals_the_blocking_one() {
    let ctx = common::gpu();
    for name in [
        "cosine_amsgrad_groups",
        "mp_bf16_combined",
        "mp_ema",
        "mp_f16_master",
    ] {
        let path = format!(
            "{}/tests/data/{name}.safetensors",
            env!("CARGO_MANIFEST_DIR")
        );
        let trace = wgpu_adamw::trace::Trace::load(&path).unwrap();
        let blocking =
            wgpu_adamw::trace::replay(&trace, wgpu_adamw::trace::Backend::Gpu(&ctx), None).unwrap();
        let async_ = drive(
            &ctx.device,
            wgpu_adamw::trace::replay_async(&trace, &ctx, None),
        )
        .unwrap();
        assert_eq!(format!("{async_:?}"), format!("{blocking:?}"), "{name}");
        assert!(
            wgpu_adamw::trace::compare(&trace, &async_).passed(),
            "{name}"
        );
        // Resumed from checkpoint bytes after the middle step: the same, bit for bit.
        let half = Some(trace.steps / 2);
        let resumed = drive(
            &ctx.device,
            wgpu_adamw::trace::replay_async(&trace, &ctx, half),
        )
        .unwrap();
        assert_eq!(
            format!("{resumed:?}"),
            format!("{blocking:?}"),
            "{name} resumed"
        );
    }
}
