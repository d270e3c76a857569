//! Shared test helpers.
#![allow(dead_code)]

use wgpu_adamw::GpuContext;

/// The default adapter's device. GPU tests fail (never skip) when there is none.
pub fn gpu() -> GpuContext {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    match GpuContext::new() {
        Ok(ctx) => ctx,
        Err(e) => panic!(
            "GPU tests need a wgpu adapter and found none: {e}\n\
             On Linux without a GPU: apt-get install -y mesa-vulkan-drivers libvulkan1 (lavapipe)"
        ),
    }
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }
    /// Roughly normal (sum of uniforms), scaled.
    pub fn normal(&mut self) -> f32 {
        ((0..4).map(|_| self.unit()).sum::<f64>() - 2.0) as f32 * 1.7
    }
    /// Gradient-like values spanning several decades, some exactly zero.
    pub fn grads(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                if self.unit() < 0.05 {
                    0.0
                } else {
                    self.normal() * 10f32.powf(-(self.unit() * 4.0) as f32)
                }
            })
            .collect()
    }
}

pub fn storage_buffer(device: &wgpu::Device, queue: &wgpu::Queue, data: &[f32]) -> wgpu::Buffer {
    let buf = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("test"),
        size: (data.len() as u64 * 4).max(16),
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    queue.write_buffer(&buf, 0, bytemuck::cast_slice(data));
    buf
}

pub fn read_f32(ctx: &GpuContext, buf: &wgpu::Buffer, offset: u64, len: usize) -> Vec<f32> {
    let words =
        wgpu_adamw::read_buffer(&ctx.device, &ctx.queue, buf, offset, len as u64 * 4).unwrap();
    bytemuck::cast_slice(&words).to_vec()
}

/// Tensors of `lens` elements packed back to back (no padding) in one param and one grad
/// buffer, as an engine's arenas hold them.
pub fn packed(
    param: &wgpu::Buffer,
    grad: &wgpu::Buffer,
    lens: &[usize],
) -> Vec<wgpu_adamw::TensorBinding> {
    let mut off = 0u64;
    lens.iter()
        .map(|&n| {
            let t = wgpu_adamw::TensorBinding {
                param: param.clone(),
                param_offset: off * 4,
                grad: grad.clone(),
                grad_offset: off * 4,
                len: n as u64,
            };
            off += n as u64;
            t
        })
        .collect()
}
