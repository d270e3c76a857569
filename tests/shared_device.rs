//! Devices made for sharing with an engine: with the features an engine asks for (CubeCL
//! decides what its shaders use from the adapter's features, so it needs a device with all
//! of them), the optimizer runs as on its own device; a feature the adapter lacks is a typed
//! error naming it.

mod common;

use common::{read_f32, storage_buffer, Rng};
use wgpu_adamw::{
    AdamWConfig, CpuAdamW, CpuParamGroup, Error, GpuAdamW, GpuContext, ParamGroup, Schedule,
    TensorBinding,
};

/// Five steps on `ctx`'s device, compared bit for bit with the CPU reference.
fn steps_match_the_cpu(ctx: &GpuContext) {
    let mut rng = Rng(17);
    let n = 3000;
    let init: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    let p = storage_buffer(&ctx.device, &ctx.queue, &init);
    let g = storage_buffer(&ctx.device, &ctx.queue, &vec![0.0; n]);
    let config = AdamWConfig::default()
        .with_lr(1e-2)
        .with_schedule(Schedule::cosine(5, 0.0));
    let opt = GpuAdamW::new(
        &ctx.device,
        &ctx.queue,
        config.clone(),
        vec![ParamGroup {
            tensors: vec![TensorBinding::whole(&p, &g)],
            ..Default::default()
        }],
    )
    .unwrap();
    let mut cpu = CpuAdamW::new(
        config,
        vec![CpuParamGroup {
            lens: vec![n],
            ..Default::default()
        }],
    )
    .unwrap();
    let mut host = init;
    for _ in 0..5 {
        let grads = rng.grads(n);
        ctx.queue.write_buffer(&g, 0, bytemuck::cast_slice(&grads));
        opt.step().unwrap();
        cpu.step(&mut [&mut host], &[&grads]).unwrap();
    }
    assert_eq!(read_f32(ctx, &p, 0, n), host);
}

#[test]
fn a_device_with_every_adapter_feature_runs_the_optimizer() {
    common::gpu(); // fails with instructions when there is no adapter
    let ctx = GpuContext::with_adapter_features().unwrap();
    let expected = ctx
        .adapter
        .features()
        .difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS);
    assert_eq!(ctx.device.features(), expected);
    steps_match_the_cpu(&ctx);
}

#[test]
fn requested_features_are_on_the_device_and_missing_ones_are_named() {
    let own = common::gpu();
    let have = own.adapter.features();
    // What CubeCL needs at least, where the adapter has it.
    let wanted = have & wgpu::Features::SHADER_INT64;
    let ctx = GpuContext::with_features(wanted).unwrap();
    assert!(ctx.device.features().contains(wanted));
    steps_match_the_cpu(&ctx);

    let missing = wgpu::Features::all() - have;
    assert!(!missing.is_empty(), "no adapter has every wgpu feature");
    match GpuContext::with_features(wgpu::Features::all()) {
        Err(Error::Unsupported(why)) => assert!(why.contains("lacks"), "{why}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
}
