//! Shared by the GPU tests.

use wgpu_adamw::GpuContext;

/// The default adapter; a test without one fails (it does not skip) and says how to get one.
pub fn gpu() -> GpuContext {
    GpuContext::new().unwrap_or_else(|e| {
        panic!(
            "this test needs a GPU adapter and found none ({e}). On Linux without a GPU, \
             install the software Vulkan driver: apt-get install -y mesa-vulkan-drivers libvulkan1"
        )
    })
}
