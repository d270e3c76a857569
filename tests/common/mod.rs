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

/// A second device on `ctx`'s adapter, created with `limits` (WebGPU's defaults, say).
pub fn with_limits(ctx: &GpuContext, label: &str, limits: wgpu::Limits) -> GpuContext {
    let (device, queue) = pollster::block_on(ctx.adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some(label),
        required_limits: limits,
        ..Default::default()
    }))
    .unwrap();
    GpuContext {
        instance: ctx.instance.clone(),
        adapter: ctx.adapter.clone(),
        device,
        queue,
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
    packed_elems(param, grad, lens, 4)
}

/// [`packed`] for 16-bit elements (tensors may start at odd elements).
pub fn packed16(
    param: &wgpu::Buffer,
    grad: &wgpu::Buffer,
    lens: &[usize],
) -> Vec<wgpu_adamw::TensorBinding> {
    packed_elems(param, grad, lens, 2)
}

fn packed_elems(
    param: &wgpu::Buffer,
    grad: &wgpu::Buffer,
    lens: &[usize],
    elem_bytes: u64,
) -> Vec<wgpu_adamw::TensorBinding> {
    let mut off = 0u64;
    lens.iter()
        .map(|&n| {
            let t = wgpu_adamw::TensorBinding {
                param: param.clone(),
                param_offset: off * elem_bytes,
                grad: grad.clone(),
                grad_offset: off * elem_bytes,
                len: n as u64,
            };
            off += n as u64;
            t
        })
        .collect()
}

/// A GPU optimizer and its CPU reference over tensors of `lens` elements packed in one buffer
/// pair, both starting from the same random parameters.
pub struct Pair {
    pub ctx: GpuContext,
    pub p: wgpu::Buffer,
    pub g: wgpu::Buffer,
    pub opt: wgpu_adamw::GpuAdamW,
    pub cpu: wgpu_adamw::CpuAdamW,
    /// The CPU reference's parameters, per tensor.
    pub host: Vec<Vec<f32>>,
}

impl Pair {
    pub fn new(config: wgpu_adamw::AdamWConfig, lens: &[usize], rng: &mut Rng) -> Self {
        let ctx = gpu();
        let total: usize = lens.iter().sum();
        let init: Vec<f32> = (0..total).map(|_| rng.normal()).collect();
        let p = storage_buffer(&ctx.device, &ctx.queue, &init);
        let g = storage_buffer(&ctx.device, &ctx.queue, &vec![0.0; total]);
        let opt = wgpu_adamw::GpuAdamW::new(
            &ctx.device,
            &ctx.queue,
            config.clone(),
            vec![wgpu_adamw::ParamGroup {
                tensors: packed(&p, &g, lens),
                ..Default::default()
            }],
        )
        .unwrap();
        let cpu = wgpu_adamw::CpuAdamW::new(
            config,
            vec![wgpu_adamw::CpuParamGroup {
                lens: lens.to_vec(),
                ..Default::default()
            }],
        )
        .unwrap();
        let mut host = Vec::new();
        let mut at = 0;
        for &n in lens {
            host.push(init[at..at + n].to_vec());
            at += n;
        }
        Pair {
            ctx,
            p,
            g,
            opt,
            cpu,
            host,
        }
    }

    /// One step on both backends with the same gradients (the GPU's error first).
    pub fn step(&mut self, grads: &[Vec<f32>]) -> wgpu_adamw::Result<()> {
        let flat: Vec<f32> = grads.concat();
        self.ctx
            .queue
            .write_buffer(&self.g, 0, bytemuck::cast_slice(&flat));
        self.opt.step()?;
        let mut p: Vec<&mut [f32]> = self.host.iter_mut().map(|x| &mut x[..]).collect();
        let g: Vec<&[f32]> = grads.iter().map(|x| &x[..]).collect();
        self.cpu.step(&mut p, &g)
    }

    /// The GPU's parameters, all tensors back to back.
    pub fn gpu_params(&self) -> Vec<f32> {
        read_f32(&self.ctx, &self.p, 0, self.host.iter().map(Vec::len).sum())
    }
}

/// An optimizer with PyTorch's defaults over one tensor that fills `p` and `g`, on the device
/// `ctx` (whose instance the buffers may or may not belong to).
pub fn one_tensor_optimizer(
    ctx: &GpuContext,
    p: &wgpu::Buffer,
    g: &wgpu::Buffer,
) -> wgpu_adamw::Result<wgpu_adamw::GpuAdamW> {
    wgpu_adamw::GpuAdamW::new(
        &ctx.device,
        &ctx.queue,
        wgpu_adamw::AdamWConfig::default(),
        vec![wgpu_adamw::ParamGroup {
            tensors: vec![wgpu_adamw::TensorBinding::whole(p, g)],
            ..Default::default()
        }],
    )
}

/// A storage buffer holding 16-bit patterns, padded to whole 32-bit words.
pub fn buffer16(ctx: &GpuContext, halves: &[u16]) -> wgpu::Buffer {
    let mut padded = halves.to_vec();
    padded.resize(halves.len().div_ceil(2) * 2, 0);
    let buf = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("16-bit test buffer"),
        size: (padded.len() as u64 * 2).max(4),
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    ctx.queue
        .write_buffer(&buf, 0, bytemuck::cast_slice(&padded));
    buf
}

/// The first `n` 16-bit patterns of a buffer (waits for the queue).
pub fn read16(ctx: &GpuContext, buf: &wgpu::Buffer, n: usize) -> Vec<u16> {
    let words = wgpu_adamw::read_buffer(&ctx.device, &ctx.queue, buf, 0, buf.size()).unwrap();
    bytemuck::cast_slice::<u32, u16>(&words)[..n].to_vec()
}
