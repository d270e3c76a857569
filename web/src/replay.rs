//! Replays a PyTorch trace (`adamw-trace/1` or `/2`) with the GPU optimizer in the browser
//! and compares it with the trace's tolerances ([`wgpu_adamw::trace::compare`]).

use crate::{gpu, js_error, now_ms, take_device_errors};
use std::path::Path;
use wasm_bindgen::prelude::*;
use wgpu_adamw::trace::{compare, replay_async, Trace};

/// Replays the trace file `bytes` (named `name`), then again resumed from checkpoint bytes
/// after its middle step, and returns, as JSON: whether it passed (within tolerance, the
/// resumed run bit-identical, no device error), the worst error as a multiple of its
/// tolerance with its kind and place, every kind's row, the first replay's wall time, and
/// any device errors.
#[wasm_bindgen]
pub async fn replay_trace(name: String, bytes: Vec<u8>) -> Result<String, JsValue> {
    let ctx = gpu().await?;
    take_device_errors();
    let trace = Trace::from_bytes(&bytes, Path::new(&name)).map_err(js_error)?;
    let t0 = now_ms();
    let out = replay_async(&trace, &ctx, None).await.map_err(js_error)?;
    let ms = now_ms() - t0;
    let cmp = compare(&trace, &out);
    // The same run resumed from checkpoint bytes after its middle step: bit for bit.
    let resumed = replay_async(&trace, &ctx, Some(trace.steps / 2))
        .await
        .map_err(js_error)?;
    let resumed_identical = format!("{resumed:?}") == format!("{out:?}");
    let errors = take_device_errors();
    let rows = cmp.rows();
    let worst = rows
        .iter()
        .max_by(|a, b| a.1.ratio.total_cmp(&b.1.ratio))
        .map(|(kind, w)| (kind.to_string(), w.ratio, w.at.clone()));
    let (worst_kind, worst_ratio, worst_at) = worst.unwrap_or_default();
    Ok(serde_json::json!({
        "name": name,
        "steps": trace.steps,
        "params": trace.params.iter().map(|p| p.init.len()).sum::<usize>(),
        "passed": cmp.passed() && resumed_identical && errors.is_empty(),
        "resumed_identical": resumed_identical,
        "worst_kind": worst_kind,
        "worst_ratio": worst_ratio,
        "worst_at": worst_at,
        "rows": rows
            .iter()
            .map(|(kind, w)| serde_json::json!({
                "kind": kind, "ratio": w.ratio, "abs": w.abs, "at": w.at,
            }))
            .collect::<Vec<_>>(),
        "ms": ms,
        "device_errors": errors,
    })
    .to_string())
}
