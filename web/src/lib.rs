//! # wgpu-adamw-web
//!
//! [`wgpu_adamw`] on the browser's WebGPU (wasm32, wasm-bindgen). The page `www/check.html`
//! uses three parts, one module each:
//! - [`replay`]: replays PyTorch traces with the GPU optimizer and compares them with their
//!   tolerances;
//! - [`bench`]: the quick benchmark's workloads, the fused step against a copy of the same
//!   bytes;
//! - [`demo`]: the learning-curve demo trained step by step, for `www/demo.html` to plot live;
//! - [`api`]: `GpuAdamW::step_async` against the CPU reference, and its error reporting.
//!
//! Nothing here blocks: every read-back is awaited and the browser polls the device. Errors
//! the device reports outside an error scope are collected ([`take_device_errors`]) so a check
//! fails on them instead of only logging them.

#![warn(missing_docs)]

pub mod api;
pub mod bench;
pub mod demo;
pub mod replay;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use wasm_bindgen::prelude::*;
use wgpu_adamw::{wgpu, GpuContext};

thread_local! {
    static GPU: RefCell<Option<Rc<GpuContext>>> = const { RefCell::new(None) };
}

/// Errors the device reported to its uncaptured-error handler, oldest first.
static DEVICE_ERRORS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The page's device: the browser's WebGPU adapter, created on first use.
pub async fn gpu() -> Result<Rc<GpuContext>, JsValue> {
    if let Some(ctx) = GPU.with(|g| g.borrow().clone()) {
        return Ok(ctx);
    }
    let ctx = GpuContext::new_async().await.map_err(js_error)?;
    ctx.device.on_uncaptured_error(Arc::new(|e| {
        let text = e.to_string();
        web_sys::console::error_1(&format!("WebGPU error: {text}").into());
        lock_errors().push(text);
    }));
    let ctx = Rc::new(ctx);
    GPU.with(|g| *g.borrow_mut() = Some(ctx.clone()));
    Ok(ctx)
}

fn lock_errors() -> std::sync::MutexGuard<'static, Vec<String>> {
    DEVICE_ERRORS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes the device errors reported since the last call.
pub fn take_device_errors() -> Vec<String> {
    std::mem::take(&mut *lock_errors())
}

/// An error as a JavaScript exception, with its chain of causes.
pub fn js_error(e: impl Into<anyhow::Error>) -> JsValue {
    JsValue::from_str(&format!("{:#}", e.into()))
}

/// Milliseconds of the page's clock (`performance.now()`).
pub fn now_ms() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map_or(0.0, |p| p.now())
}

/// Completes once the device has finished the work submitted to `queue` so far.
pub async fn work_done(queue: &wgpu::Queue) {
    let state: Arc<Mutex<(bool, Option<Waker>)>> = Arc::default();
    let done = state.clone();
    queue.on_submitted_work_done(move || {
        let mut s = done.lock().unwrap_or_else(|e| e.into_inner());
        s.0 = true;
        if let Some(w) = s.1.take() {
            w.wake();
        }
    });
    std::future::poll_fn(|cx| {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        if s.0 {
            Poll::Ready(())
        } else {
            s.1 = Some(cx.waker().clone());
            Poll::Pending
        }
    })
    .await
}

/// Panics go to the console (as errors the check sees), then abort as usual.
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        web_sys::console::error_1(&format!("panic: {info}").into());
    }));
}

/// The adapter, as JSON: name, backend, and the limits and features that matter here.
#[wasm_bindgen]
pub async fn adapter_info() -> Result<String, JsValue> {
    let ctx = gpu().await?;
    let info = ctx.adapter.get_info();
    let limits = ctx.device.limits();
    Ok(serde_json::json!({
        "name": info.name,
        "description": ctx.describe(),
        "backend": format!("{:?}", info.backend),
        "max_storage_buffers_per_shader_stage": limits.max_storage_buffers_per_shader_stage,
        "max_storage_buffer_binding_size": limits.max_storage_buffer_binding_size,
        "max_buffer_size": limits.max_buffer_size,
        "features": format!("{:?}", ctx.device.features()),
    })
    .to_string())
}
