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
    let small = common::with_limits(&ctx, "WebGPU default limits", wgpu::Limits::default());
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

/// A device with fewer storage buffers per stage than the update pipeline binds (wgpu's
/// downlevel limits: 4) is refused at creation with an error that names the limit and what
/// fits, not a pipeline validation error.
#[test]
fn too_few_storage_buffers_is_a_clear_error() {
    let ctx = common::gpu();
    let GpuContext { device, queue, .. } =
        common::with_limits(&ctx, "downlevel limits", wgpu::Limits::downlevel_defaults());
    let buffer = |label| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: 4096,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    };
    let (p, g) = (buffer("p"), buffer("g"));
    let e = wgpu_adamw::GpuAdamW::new(
        &device,
        &queue,
        wgpu_adamw::AdamWConfig::default(),
        vec![wgpu_adamw::ParamGroup {
            tensors: vec![wgpu_adamw::TensorBinding::whole(&p, &g)],
            ..Default::default()
        }],
    )
    .unwrap_err();
    assert!(matches!(e, wgpu_adamw::Error::DeviceLimit(_)), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("8 storage buffers") && text.contains("allows 4"),
        "{text}"
    );
}
