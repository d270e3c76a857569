//! One wgpu device shared by Burn and the optimizer, created by either side.

use crate::error::{Error, Result};
use burn::tensor::wgpu::WgpuSetup;
use burn::tensor::Device;
use std::sync::Mutex;
use wgpu_adamw::wgpu;
use wgpu_adamw::GpuContext;

/// A Burn device (with autodiff) and the [`GpuContext`] (instance, adapter, device, queue)
/// behind it: the optimizer records its steps on the very queue Burn submits to.
///
/// Create it either way round:
/// - [`SharedDevice::from_context`]: our device, registered with Burn;
/// - [`SharedDevice::burn_owned`]: Burn's default wgpu device, its handles wrapped.
///
/// Build the model on [`SharedDevice::device`] and the optimizer with
/// [`crate::BurnAdamW::new`] from the same `SharedDevice`.
#[derive(Debug)]
pub struct SharedDevice {
    device: Device,
    ctx: GpuContext,
}

impl Clone for SharedDevice {
    fn clone(&self) -> Self {
        Self {
            device: self.device.clone(),
            ctx: clone_context(&self.ctx),
        }
    }
}

fn clone_context(ctx: &GpuContext) -> GpuContext {
    GpuContext {
        instance: ctx.instance.clone(),
        adapter: ctx.adapter.clone(),
        device: ctx.device.clone(),
        queue: ctx.queue.clone(),
    }
}

/// Burn's default wgpu runtime can be initialised once per process: the first
/// [`SharedDevice::burn_owned`] keeps its device and handles for the later ones.
static BURN_OWNED: Mutex<Option<(Device, WgpuSetup)>> = Mutex::new(None);

impl SharedDevice {
    /// Registers our device with Burn (ours → Burn): Burn's tensors then live on `ctx`'s
    /// device and its kernels run on `ctx`'s queue.
    ///
    /// CubeCL compiles its shaders for the features of the *adapter*, so the device must have
    /// been created with all of them ([`GpuContext::with_adapter_features`]); a device that
    /// lacks any (but `MAPPABLE_PRIMARY_BUFFERS`) is an [`Error::MissingFeatures`]. Each call
    /// registers a new Burn runtime: call it once per context and clone the result.
    pub fn from_context(ctx: GpuContext) -> Result<Self> {
        let wanted = ctx
            .adapter
            .features()
            .difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS);
        let missing = wanted.difference(ctx.device.features());
        if !missing.is_empty() {
            return Err(Error::MissingFeatures(format!("{missing:?}")));
        }
        let setup = WgpuSetup {
            instance: ctx.instance.clone(),
            adapter: ctx.adapter.clone(),
            device: ctx.device.clone(),
            queue: ctx.queue.clone(),
            backend: ctx.adapter.get_info().backend,
        };
        let device = Device::wgpu_options().setup(setup).init()?.autodiff();
        Ok(Self { device, ctx })
    }

    /// A new device of our own with every adapter feature
    /// ([`GpuContext::with_adapter_features`]), registered with Burn: `WGPU_ADAPTER_NAME` and
    /// `WGPU_BACKEND` select the adapter.
    pub fn new() -> Result<Self> {
        Self::from_context(GpuContext::with_adapter_features()?)
    }

    /// Burn's default wgpu device (Burn → ours): Burn picks the adapter and creates the
    /// device (`Device::wgpu_options().init_with_setup()`), and its handles are wrapped in a
    /// [`GpuContext`].
    ///
    /// Burn initialises its default wgpu runtime once per process: the first call does it
    /// and later calls return the same device. It is an [`Error::BurnInit`] when something
    /// else initialised that runtime first (a tensor created on `Device::default()`, say):
    /// call this before any other use of Burn's default wgpu device.
    pub fn burn_owned() -> Result<Self> {
        let mut cached = BURN_OWNED.lock().unwrap_or_else(|e| e.into_inner());
        let (device, setup) = match &*cached {
            Some(pair) => pair.clone(),
            None => {
                let (device, setup) = Device::wgpu_options().init_with_setup()?;
                let pair = (device.autodiff(), setup);
                *cached = Some(pair.clone());
                pair
            }
        };
        Ok(Self {
            device,
            ctx: GpuContext {
                instance: setup.instance,
                adapter: setup.adapter,
                device: setup.device,
                queue: setup.queue,
            },
        })
    }

    /// The Burn device, with autodiff: create the model and the data on it.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The wgpu handles Burn runs on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// A one-line description of the adapter: name, backend and device type.
    pub fn describe(&self) -> String {
        self.ctx.describe()
    }
}
