//! The quick benchmark in the browser: for each workload of `cargo bench -- --quick`, the
//! fused step against the copy kernel that moves the same bytes, both timed by the page's
//! clock over the same number of steps (a submit each, then a wait for the queue).

use crate::{gpu, js_error, now_ms, take_device_errors, work_done};
use wasm_bindgen::prelude::*;
use wgpu_adamw::{wgpu, GpuAdamW, ParamGroup};
use wgpu_adamw_bench::device::{value, Array, BaselineArrays, CopyKernel, Hyper, Layout};
use wgpu_adamw_bench::{fused_config, workloads};

/// Runs the quick set (or the workloads whose names contain `filter`), `steps` timed steps
/// per kernel and round, best of two rounds, and returns the rows as JSON: params, ms per
/// step of the fused step and of the copy, GB/s of each, fused/copy.
#[wasm_bindgen]
pub async fn bench_quick(steps: u32, filter: String) -> Result<String, JsValue> {
    let ctx = gpu().await?;
    let (device, queue) = (&ctx.device, &ctx.queue);
    take_device_errors();
    let steps = steps.max(1);
    let mut rows = Vec::new();
    for w in workloads(true)
        .into_iter()
        .filter(|w| w.name.contains(&filter))
    {
        let layout = Layout::new(&w.lens(), &device.limits()).map_err(js_error)?;
        let array = |label, seed, scale| -> Result<Array, JsValue> {
            let a = Array::new(device, &layout, label);
            a.upload(queue, device, |i| value(i, seed, scale))
                .map_err(js_error)?;
            Ok(a)
        };
        let (p, g) = (array("p", 1, 1.0)?, array("g", 2, 1e-2)?);
        let state = BaselineArrays {
            m: Array::new(device, &layout, "m"),
            v: Array::new(device, &layout, "v"),
            vmax: w.amsgrad.then(|| Array::new(device, &layout, "vmax")),
            // Only the unfused baseline uses it, which the page does not run.
            denom: Array::new(
                device,
                &Layout::new(&[1], &device.limits()).map_err(js_error)?,
                "denom",
            ),
        };
        let copy = CopyKernel::new(device, queue, &layout, &p, &g, &state);
        let opt = GpuAdamW::new(
            device,
            queue,
            fused_config(w.amsgrad, &Hyper::default()),
            vec![ParamGroup {
                tensors: layout.bindings(&p, &g, (4, 4)),
                ..Default::default()
            }],
        )
        .map_err(js_error)?;
        let submit = |record: &dyn Fn(&mut wgpu::ComputePass<'_>)| {
            let mut encoder = device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                record(&mut pass);
            }
            queue.submit([encoder.finish()]);
        };
        let fused = |pass: &mut wgpu::ComputePass<'_>| opt.record_step(pass);
        let copied = |pass: &mut wgpu::ComputePass<'_>| copy.record(pass);
        // One untimed step of each (pipelines warm), then two timed rounds.
        submit(&fused);
        submit(&copied);
        work_done(queue).await;
        let (mut fused_ms, mut copy_ms) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..2 {
            for (record, best) in [
                (&fused as &dyn Fn(&mut wgpu::ComputePass<'_>), &mut fused_ms),
                (&copied, &mut copy_ms),
            ] {
                let t0 = now_ms();
                for _ in 0..steps {
                    submit(record);
                }
                work_done(queue).await;
                *best = best.min((now_ms() - t0) / f64::from(steps));
            }
        }
        let bytes = w.bytes_per_step() as f64;
        rows.push(serde_json::json!({
            "workload": w.name,
            "params": w.params(),
            "tensors": w.shapes.len(),
            "fused_ms": fused_ms,
            "copy_ms": copy_ms,
            "fused_gbps": bytes / fused_ms / 1e6,
            "copy_gbps": bytes / copy_ms / 1e6,
            "fused_vs_copy": copy_ms / fused_ms,
        }));
    }
    let errors = take_device_errors();
    Ok(serde_json::json!({ "steps": steps, "rows": rows, "device_errors": errors }).to_string())
}
