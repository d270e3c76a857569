//! The optimizer's own API on the web, beyond trace replay: `step_async` steps as the CPU
//! reference does and reports a device error as an `Err`, through error scopes the browser
//! resolves asynchronously.

use crate::{gpu, js_error, take_device_errors};
use wasm_bindgen::prelude::*;
use wgpu_adamw::{
    read_buffer_async, wgpu, AdamWConfig, CpuAdamW, CpuParamGroup, GpuAdamW, ParamGroup, Schedule,
    TensorBinding,
};

/// Steps a small optimizer three times with `GpuAdamW::step_async`, compares its parameters
/// with `CpuAdamW`'s bit for bit, then destroys the gradient buffer and expects the next
/// `step_async` to fail with a device error. Returns JSON: `identical`, `error_reported` (the
/// error's text), `passed`.
#[wasm_bindgen]
pub async fn step_async_check() -> Result<String, JsValue> {
    let ctx = gpu().await?;
    let (device, queue) = (&ctx.device, &ctx.queue);
    take_device_errors();
    const N: usize = 1000;
    let init: Vec<f32> = (0..N).map(|i| (i as f32 * 0.37).sin()).collect();
    let grads: Vec<f32> = (0..N).map(|i| (i as f32 * 0.11).cos() * 1e-2).collect();
    let buffer = |label, data: &[f32]| {
        let b = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: 4 * data.len() as u64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        queue.write_buffer(&b, 0, bytemuck::cast_slice(data));
        b
    };
    let (p, g) = (buffer("params", &init), buffer("grads", &grads));
    let config = AdamWConfig::default()
        .with_lr(1e-2)
        .with_weight_decay(0.1)
        .with_schedule(Schedule::cosine(10, 0.0));
    let opt = GpuAdamW::new(
        device,
        queue,
        config.clone(),
        vec![ParamGroup {
            tensors: vec![TensorBinding::whole(&p, &g)],
            ..Default::default()
        }],
    )
    .map_err(js_error)?;
    let mut cpu = CpuAdamW::new(
        config,
        vec![CpuParamGroup {
            config: Default::default(),
            lens: vec![N],
        }],
    )
    .map_err(js_error)?;
    let mut host = init.clone();
    for _ in 0..3 {
        opt.step_async().await.map_err(js_error)?;
        cpu.step(&mut [&mut host[..]], &[&grads[..]])
            .map_err(js_error)?;
    }
    let words = read_buffer_async(device, queue, &p, 0, p.size())
        .await
        .map_err(js_error)?;
    let identical = words.iter().zip(&host).all(|(&w, &h)| w == h.to_bits());
    g.destroy();
    let error = match opt.step_async().await {
        Err(wgpu_adamw::Error::Device(e)) => Some(e),
        _ => None,
    };
    let passed = identical && error.is_some();
    Ok(serde_json::json!({
        "identical": identical,
        "error_reported": error,
        "passed": passed,
        // The scope caught the error: none may reach the uncaptured-error handler.
        "device_errors": take_device_errors(),
    })
    .to_string())
}
