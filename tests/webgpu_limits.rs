//! WebGPU's default limits (8 storage buffers per shader stage, 128 MiB bindings), which a
//! browser grants without asking: every configuration the shared traces hold (AMSGrad,
//! clipping in both norm orders, loss scaling and GradScaler, accumulation, EMA, master
//! weights, pure 16-bit with 16-bit or f32 moments, param groups, every schedule kind) steps on
//! a device created with `wgpu::Limits::default()`, within PyTorch's tolerances and bit for bit
//! as on the same adapter with its own limits. (Every stream at once: training_loop.rs.)

mod common;

use wgpu_adamw::trace::{compare, replay, Backend, Trace};
use wgpu_adamw::GpuContext;

#[test]
fn every_trace_replays_within_webgpu_default_limits() {
    let ctx = common::gpu();
    let (device, queue) = pollster::block_on(ctx.adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("WebGPU default limits"),
        required_limits: wgpu::Limits::default(),
        ..Default::default()
    }))
    .unwrap();
    let small = GpuContext {
        instance: ctx.instance.clone(),
        adapter: ctx.adapter.clone(),
        device,
        queue,
    };
    assert_eq!(
        small.device.limits().max_storage_buffers_per_shader_stage,
        8
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 40,
        "tests/data should hold the shared traces"
    );
    for path in &paths {
        let trace = Trace::load(path).unwrap();
        let limited = replay(&trace, Backend::Gpu(&small), None)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let cmp = compare(&trace, &limited);
        assert!(cmp.passed(), "{}: {cmp:?}", path.display());
        let full = replay(&trace, Backend::Gpu(&ctx), None).unwrap();
        assert_eq!(
            format!("{limited:?}"),
            format!("{full:?}"),
            "{}",
            path.display()
        );
    }
}
