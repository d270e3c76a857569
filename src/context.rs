//! A device of its own, for standalone use and the CLI. An engine passes its own
//! `wgpu::Device` and `wgpu::Queue` to [`crate::GpuAdamW::new`] instead.

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
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// Every adapter wgpu sees on this machine.
pub fn list_adapters() -> Vec<wgpu::Adapter> {
    pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()))
}

impl GpuContext {
    /// Picks the default adapter (high performance; `WGPU_ADAPTER_NAME` selects one whose name
    /// contains the given text, `WGPU_BACKEND` restricts the backends) and creates a device
    /// with the adapter's real limits and, where available, timestamp queries.
    pub fn new() -> Result<Self> {
        let instance = instance();
        let adapter = match std::env::var("WGPU_ADAPTER_NAME") {
            Ok(name) => {
                let want = name.to_lowercase();
                pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&want))
                    .ok_or_else(|| Error::NoAdapter(format!("no adapter named like `{name}`")))?
            }
            Err(_) => pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            }))
            .map_err(|e| Error::NoAdapter(e.to_string()))?,
        };
        let wanted = wgpu::Features::TIMESTAMP_QUERY;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("wgpu-adamw"),
            required_features: adapter.features() & wanted,
            required_limits: adapter.limits(),
            ..Default::default()
        }))
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
        format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
    }
}
