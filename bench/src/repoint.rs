//! The host cost of re-pointed gradients ([`wgpu_adamw::GpuAdamW::set_grads`]): an engine
//! whose gradients are new allocations every step (Burn's are) hands their places to the
//! optimizer before each step. Measured as CPU time to record `set_grads` plus one step,
//! against recording the step alone.

use anyhow::Result;
use std::time::Instant;
use wgpu_adamw::{wgpu, AdamWConfig, GpuAdamW, GpuContext, GradBinding, ParamGroup, TensorBinding};

/// What [`measure`] found, in microseconds per step (medians).
#[derive(Clone, Debug)]
pub struct RepointCost {
    /// Registered tensors.
    pub tensors: usize,
    /// The parameters share one buffer (else each has a buffer of its own).
    pub one_param_buffer: bool,
    /// Recording one step, gradients fixed.
    pub encode_us: f64,
    /// `set_grads` plus recording one step, every tensor's gradients at a new offset of the
    /// buffer it had the step before (only the gradients' places in the tables change).
    pub same_buffers_us: f64,
    /// Of which `set_grads` alone.
    pub same_buffers_set_grads_us: f64,
    /// `set_grads` plus recording one step, every tensor's gradients moved to the other of
    /// two buffers (a new plan; bind groups reused).
    pub repoint_us: f64,
    /// The same, the first time each gradient buffer is seen (bind groups created).
    pub first_repoint_us: f64,
}

/// `n` tensors shaped like a model's layers (a weight matrix and a bias, alternately), the
/// parameters in one buffer (an engine's arena) or each in a buffer of its own (as Burn
/// keeps them); gradients in two pool buffers at offsets that change every step.
pub fn measure(
    ctx: &GpuContext,
    n: usize,
    one_param_buffer: bool,
    steps: usize,
) -> Result<RepointCost> {
    let lens: Vec<u64> = (0..n as u64)
        .map(|i| if i % 2 == 0 { 4096 + 64 * i } else { 64 + i })
        .collect();
    let storage = |size: u64| {
        ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("repoint bench"),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    let total: u64 = lens.iter().sum();
    let align = u64::from(ctx.device.limits().min_storage_buffer_offset_alignment);
    let pool_size = 4 * total + (n + steps) as u64 * align;
    let pools = [storage(pool_size), storage(pool_size)];
    let arena = storage(pool_size);
    let mut at = 0;
    let tensors = lens
        .iter()
        .map(|&len| {
            let (param, param_offset) = if one_param_buffer {
                at += (4 * len).div_ceil(align) * align;
                (arena.clone(), at - (4 * len).div_ceil(align) * align)
            } else {
                (storage(4 * len), 0)
            };
            TensorBinding {
                param,
                param_offset,
                grad: pools[0].clone(),
                grad_offset: 0,
                len,
            }
        })
        .collect();
    let groups = vec![ParamGroup {
        tensors,
        ..Default::default()
    }];
    let mut opt = GpuAdamW::new(&ctx.device, &ctx.queue, AdamWConfig::default(), groups)?;
    // Step `s`'s gradients: every tensor in pool `(i + s / 2) % 2`, at a shifting offset.
    let bindings = |s: u64| -> Vec<GradBinding> {
        let mut at = [s * align; 2];
        lens.iter()
            .enumerate()
            .map(|(i, &len)| {
                let pool = (i + s as usize / 2) % 2;
                let offset = at[pool];
                at[pool] += (4 * len).div_ceil(align) * align;
                GradBinding {
                    buffer: pools[pool].clone(),
                    offset,
                    len,
                }
            })
            .collect()
    };
    let prepared: Vec<Vec<GradBinding>> = (0..steps as u64).map(bindings).collect();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut encode = Vec::new();
    let mut repoint = Vec::new();
    let mut same_buffers = Vec::new();
    let mut same_set = Vec::new();
    let mut first = 0.0;
    for (s, grads) in prepared.iter().enumerate() {
        // Each timing in an encoder of its own (an encoder's first pass costs more).
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        let t0 = Instant::now();
        opt.encode_step(&mut encoder);
        encode.push(t0.elapsed().as_secs_f64() * 1e6);
        ctx.queue.submit([encoder.finish()]);
        ctx.device.poll(wgpu::PollType::wait_indefinitely())?;
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        let t0 = Instant::now();
        opt.set_grads(&mut encoder, grads)?;
        let set_us = t0.elapsed().as_secs_f64() * 1e6;
        opt.encode_step(&mut encoder);
        let us = t0.elapsed().as_secs_f64() * 1e6;
        match s {
            0 => first = us,
            _ if s % 2 == 1 => {
                same_buffers.push(us);
                same_set.push(set_us);
            }
            _ => repoint.push(us),
        }
        // Submitted and waited for before the next timing: the staging buffers `set_grads`
        // writes through come back for reuse (as in a training loop that reads its loss),
        // and no step runs while the next is recorded (on a software adapter the device's
        // work shares the CPU with the timed recording).
        ctx.queue.submit([encoder.finish()]);
        ctx.device.poll(wgpu::PollType::wait_indefinitely())?;
    }
    Ok(RepointCost {
        tensors: n,
        one_param_buffer,
        encode_us: median(encode),
        same_buffers_us: median(same_buffers),
        same_buffers_set_grads_us: median(same_set),
        repoint_us: median(repoint),
        first_repoint_us: first,
    })
}
