//! A device of its own, for standalone use and the CLI, or to share with an engine: an
//! engine that created its device passes its own `wgpu::Device` and `wgpu::Queue` to
//! [`crate::GpuAdamW::new`] instead (the optimizer works with any feature set, and within
//! `wgpu::Limits::default()`); one that takes a device from us asks for the features it
//! needs ([`GpuContext::with_features`], [`GpuContext::with_adapter_features`]).

use crate::error::{Error, Result};

/// An adapter, its device and queue, picked by [`GpuContext::new`].
#[derive(Debug)]
pub struct GpuContext {
    /// The wgpu instance.
    pub instance: wgpu::Instance,
    /// The adapter in use.
    pub adapter: wgpu::Adapter,
    /// The device, created with the adapter's own limits (not WebGPU's defaults).
    pub device: wgpu::Device,
    /// The device's queue.
    pub queue: wgpu::Queue,
}

fn instance() -> wgpu::Instance {
    // Honors WGPU_BACKEND (e.g. `vulkan`, `metal`, `dx12`) and the debug flags from the environment.
    #[cfg(not(target_arch = "wasm32"))]
    let desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    // The browser's WebGPU: WebGL has no compute shaders.
    #[cfg(target_arch = "wasm32")]
    let desc = wgpu::InstanceDescriptor {
        backends: wgpu::Backends::BROWSER_WEBGPU,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    };
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu sees on this machine (native only: on the web the browser offers one
/// adapter, through [`GpuContext::new_async`]).
pub fn list_adapters() -> Vec<wgpu::Adapter> {
    #[cfg(not(target_arch = "wasm32"))]
    return pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()));
    #[cfg(target_arch = "wasm32")]
    return Vec::new();
}

impl GpuContext {
    /// Picks the default adapter (high performance; `WGPU_ADAPTER_NAME` selects one whose name
    /// contains the given text, `WGPU_BACKEND` restricts the backends) and creates a device
    /// with the adapter's real limits and, where available, timestamp queries.
    ///
    /// Blocks until the device exists: on the web (wasm32) it is an [`Error::Unsupported`];
    /// use [`GpuContext::new_async`] there.
    pub fn new() -> Result<Self> {
        Self::with_features(wgpu::Features::empty())
    }

    /// [`GpuContext::new`] without blocking: the form for the web (wasm32), where the
    /// browser's WebGPU adapter is the one used. Works natively too.
    pub async fn new_async() -> Result<Self> {
        Self::create_async(|adapter| Ok(adapter.features() & wgpu::Features::TIMESTAMP_QUERY)).await
    }

    /// [`GpuContext::new`], with `features` on the device as well: those an engine sharing
    /// the device needs. An adapter that lacks any of them is an [`Error::Unsupported`]
    /// naming them. The optimizer itself needs no feature.
    pub fn with_features(features: wgpu::Features) -> Result<Self> {
        Self::create(|adapter| {
            let missing = features - adapter.features();
            if !missing.is_empty() {
                return Err(Error::Unsupported(format!(
                    "the adapter `{}` lacks the features {missing:?}",
                    adapter.get_info().name
                )));
            }
            Ok(features | (adapter.features() & wgpu::Features::TIMESTAMP_QUERY))
        })
    }

    /// [`GpuContext::new`], with every feature the adapter has (but
    /// `MAPPABLE_PRIMARY_BUFFERS`, which no portable engine relies on): for an engine that
    /// chooses its shaders from the adapter's features, as CubeCL (Burn's wgpu runtime) does
    /// for 64-bit integers, f16 and f64. The same device CubeCL would create for itself.
    pub fn with_adapter_features() -> Result<Self> {
        Self::create(|adapter| {
            Ok(adapter
                .features()
                .difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS))
        })
    }

    fn create(features: impl FnOnce(&wgpu::Adapter) -> Result<wgpu::Features>) -> Result<Self> {
        #[cfg(not(target_arch = "wasm32"))]
        return pollster::block_on(Self::create_async(features));
        #[cfg(target_arch = "wasm32")]
        {
            let _ = features;
            Err(Error::Unsupported(
                "a blocking device request on the web: use GpuContext::new_async".into(),
            ))
        }
    }

    async fn create_async(
        features: impl FnOnce(&wgpu::Adapter) -> Result<wgpu::Features>,
    ) -> Result<Self> {
        let instance = instance();
        let adapter = match std::env::var("WGPU_ADAPTER_NAME") {
            Ok(name) => {
                let want = name.to_lowercase();
                instance
                    .enumerate_adapters(wgpu::Backends::all())
                    .await
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&want))
                    .ok_or_else(|| Error::NoAdapter(format!("no adapter named like `{name}`")))?
            }
            Err(_) => instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::HighPerformance,
                    ..Default::default()
                })
                .await
                .map_err(|e| Error::NoAdapter(e.to_string()))?,
        };
        let required_features = features(&adapter)?;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("wgpu-adamw"),
                required_features,
                required_limits: adapter.limits(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::RequestDevice(e.to_string()))?;
        Ok(Self {
            instance,
            adapter,
            device,
            queue,
        })
    }

    /// A one-line description: name, backend and device type.
    pub fn describe(&self) -> String {
        let i = self.adapter.get_info();
        // Browsers may hide the adapter's name (Chromium's SwiftShader reports none).
        let name = if i.name.is_empty() {
            "unnamed adapter"
        } else {
            &i.name
        };
        format!("{name} ({:?}, {:?})", i.backend, i.device_type)
    }
}
