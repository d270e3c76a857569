//! Gradients re-pointed every step (`GpuAdamW::set_grads`), as an engine whose gradients are
//! new allocations each step hands them: the optimizer follows them bit for bit with the CPU
//! reference fed the same values, with no copy and no rebuild; bad bindings are typed errors
//! that leave it unchanged.

mod common;

use common::{buffer16, gpu, packed16, read16, storage_buffer, Pair, Rng};
use wgpu_adamw::{
    AdamWConfig, CpuAdamW, CpuParamGroup, Dtype, Elems, ElemsMut, Error, GpuAdamW, GpuContext,
    GradBinding, ParamGroup, Precision, Schedule,
};

/// Long tensors (runs of their own) and short ones (packed with others).
const LENS: [usize; 7] = [5000, 3, 700, 1, 2600, 9, 64];

/// This step's gradients: every tensor at a random place in one of `pools` new buffers,
/// in a shuffled order with random gaps, as a pool allocator hands them out.
fn scatter(
    ctx: &GpuContext,
    rng: &mut Rng,
    grads: &[Vec<f32>],
    pools: usize,
) -> (Vec<wgpu::Buffer>, Vec<GradBinding>) {
    let mut order: Vec<usize> = (0..grads.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.range(0, i as u64 + 1) as usize);
    }
    let mut contents = vec![Vec::<f32>::new(); pools];
    let mut at = vec![(0usize, 0u64); grads.len()];
    for &t in &order {
        let pool = rng.range(0, pools as u64) as usize;
        let c = &mut contents[pool];
        c.resize(c.len() + rng.range(0, 70) as usize, f32::NAN); // never read
        at[t] = (pool, 4 * c.len() as u64);
        c.extend_from_slice(&grads[t]);
    }
    let buffers: Vec<wgpu::Buffer> = contents
        .iter()
        .map(|c| storage_buffer(&ctx.device, &ctx.queue, c))
        .collect();
    let bindings = bindings_at(&buffers, &at, grads);
    (buffers, bindings)
}

/// The bindings of gradients at `at[i] = (pool, byte offset)` of `buffers`.
fn bindings_at<T>(
    buffers: &[wgpu::Buffer],
    at: &[(usize, u64)],
    grads: &[Vec<T>],
) -> Vec<GradBinding> {
    grads
        .iter()
        .zip(at)
        .map(|(g, &(pool, offset))| GradBinding {
            buffer: buffers[pool].clone(),
            offset,
            len: g.len() as u64,
        })
        .collect()
}

/// One step of the CPU reference with these gradients.
fn cpu_step(pair: &mut Pair, grads: &[Vec<f32>]) {
    let mut views: Vec<&mut [f32]> = pair.host.iter_mut().map(|x| &mut x[..]).collect();
    let gs: Vec<&[f32]> = grads.iter().map(|x| &x[..]).collect();
    pair.cpu.step(&mut views, &gs).unwrap();
}

/// The GPU's parameters and state are the CPU's, bit for bit.
fn assert_same(pair: &Pair, what: &str) {
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&pair.gpu_params()),
        bits(&pair.host.concat()),
        "{what}"
    );
    assert_eq!(pair.opt.state().unwrap(), pair.cpu.state(), "{what}");
}

#[test]
fn re_pointed_f32_gradients_match_the_cpu_bit_for_bit() {
    let mut rng = Rng(7);
    let config = AdamWConfig::default()
        .with_lr(1e-2)
        .with_schedule(Schedule::cosine(12, 1e-4));
    let mut pair = Pair::new(config, &LENS, &mut rng);
    // Steps 0..4 one per submit, then 4..10 recorded into one encoder with different
    // gradients each: the tables are uploaded in command order.
    let mut encoder = pair.ctx.device.create_command_encoder(&Default::default());
    let mut alive = Vec::new();
    for step in 0..10 {
        let grads: Vec<Vec<f32>> = LENS.iter().map(|&n| rng.grads(n)).collect();
        let (buffers, bindings) = scatter(&pair.ctx, &mut rng, &grads, 1 + step % 3);
        pair.opt.set_grads(&mut encoder, &bindings).unwrap();
        pair.opt.encode_step(&mut encoder);
        alive.push(buffers);
        if step < 4 {
            let done = std::mem::replace(
                &mut encoder,
                pair.ctx.device.create_command_encoder(&Default::default()),
            );
            pair.ctx.queue.submit([done.finish()]);
        }
        cpu_step(&mut pair, &grads);
    }
    pair.ctx.queue.submit([encoder.finish()]);
    assert_same(&pair, "after 10 steps");
}

#[test]
fn re_pointed_bf16_micro_batches_with_master_weights_and_ema() {
    let config = AdamWConfig::default()
        .with_lr(1e-2)
        .with_precision(Precision::master(Dtype::Bf16))
        .with_ema(0.9)
        .with_accumulation(2);
    re_pointed_16bit(config);
}

#[test]
fn re_pointed_pure_bf16_gradients_with_stochastic_rounding() {
    let config = AdamWConfig::default()
        .with_lr(1e-2)
        .with_precision(Precision::pure(Dtype::Bf16))
        .with_stochastic_rounding(5);
    re_pointed_16bit(config);
}

/// The mixed-precision kernel (`update_mixed`) with 16-bit gradients at any element offset.
fn re_pointed_16bit(config: AdamWConfig) {
    let ctx = gpu();
    let mut rng = Rng(21);
    let dtype = config.precision.param;
    let total: usize = LENS.iter().sum();
    let init: Vec<u16> = (0..total).map(|_| dtype.narrow(rng.normal())).collect();
    let p = buffer16(&ctx, &init);
    let g = buffer16(&ctx, &vec![0; total]);
    let tensors = packed16(&p, &g, &LENS);
    let mut opt = GpuAdamW::new(
        &ctx.device,
        &ctx.queue,
        config.clone(),
        vec![ParamGroup {
            tensors,
            ..Default::default()
        }],
    )
    .unwrap();
    let mut reference = CpuAdamW::new(
        config.clone(),
        vec![CpuParamGroup {
            lens: LENS.to_vec(),
            ..Default::default()
        }],
    )
    .unwrap();
    let mut host: Vec<Vec<u16>> = {
        let mut at = 0;
        LENS.iter()
            .map(|&n| {
                at += n;
                init[at - n..at].to_vec()
            })
            .collect()
    };
    // Odd steps reuse the buffers of the step before, each tensor in the same one at a new
    // place (the tables are patched), even steps get new buffers (a new plan).
    let room = (total + 8 * LENS.len()).next_multiple_of(2);
    let mut buffers: Vec<wgpu::Buffer> = Vec::new();
    let mut pool_of: Vec<usize> = Vec::new();
    for step in 0..8 {
        let grads: Vec<Vec<u16>> = LENS
            .iter()
            .map(|&n| rng.grads(n).iter().map(|&x| dtype.narrow(x)).collect())
            .collect();
        if step % 2 == 0 {
            pool_of = LENS.iter().map(|_| rng.range(0, 2) as usize).collect();
            buffers = (0..2).map(|_| buffer16(&ctx, &vec![0; room])).collect();
        }
        // Two pools of 16-bit gradients at random even or odd element offsets.
        let mut pools = vec![Vec::<u16>::new(); 2];
        let mut at = Vec::new();
        for (g, &pool) in grads.iter().zip(&pool_of) {
            let c = &mut pools[pool];
            c.resize(c.len() + rng.range(0, 5) as usize, 0x7fc0); // NaN, never read
            at.push((pool, 2 * c.len() as u64));
            c.extend_from_slice(g);
        }
        for (b, c) in buffers.iter().zip(&mut pools) {
            c.resize(room, 0x7fc0);
            ctx.queue.write_buffer(b, 0, bytemuck::cast_slice(c));
        }
        let bindings = bindings_at(&buffers, &at, &grads);
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        opt.set_grads(&mut encoder, &bindings).unwrap();
        opt.encode_step(&mut encoder);
        ctx.queue.submit([encoder.finish()]);
        let mut views: Vec<ElemsMut<'_>> = host.iter_mut().map(|x| ElemsMut::Bits16(x)).collect();
        let gs: Vec<Elems<'_>> = grads.iter().map(|x| Elems::Bits16(x)).collect();
        reference.step_mixed(&mut views, &gs).unwrap();
        assert_eq!(read16(&ctx, &p, total), host.concat(), "step {step}");
    }
    assert_eq!(opt.state().unwrap(), reference.state());
}

#[test]
fn bad_gradient_bindings_are_typed_errors_that_change_nothing() {
    let mut rng = Rng(3);
    let config = AdamWConfig::default().with_lr(1e-2);
    let mut pair = Pair::new(config, &LENS, &mut rng);
    let total: usize = LENS.iter().sum();
    let grads: Vec<Vec<f32>> = LENS.iter().map(|&n| rng.grads(n)).collect();
    let (_keep, good) = scatter(&pair.ctx, &mut rng, &grads, 2);
    let mut encoder = pair.ctx.device.create_command_encoder(&Default::default());
    pair.opt.set_grads(&mut encoder, &good).unwrap();
    pair.ctx.queue.submit([encoder.finish()]);

    let no_storage = pair.ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 4 * total as u64,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let params = pair.p.clone();
    let with = |i: usize, f: &dyn Fn(&mut GradBinding)| {
        let mut b = good.clone();
        f(&mut b[i]);
        b
    };
    let cases: Vec<(&str, Vec<GradBinding>)> = vec![
        ("one binding short", good[..LENS.len() - 1].to_vec()),
        ("a wrong length", with(2, &|b| b.len += 1)),
        ("an unaligned offset", with(0, &|b| b.offset += 2)),
        ("past the end", with(4, &|b| b.offset = b.buffer.size())),
        ("no STORAGE", with(1, &|b| b.buffer = no_storage.clone())),
        (
            "over the parameters",
            with(3, &|b| {
                b.buffer = params.clone();
                b.offset = 0;
            }),
        ),
    ];
    for (what, bindings) in cases {
        let mut encoder = pair.ctx.device.create_command_encoder(&Default::default());
        let err = pair.opt.set_grads(&mut encoder, &bindings).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument(_) | Error::InvalidTensor { .. }),
            "{what}: {err}"
        );
        // Nothing was recorded or changed: the next step still reads `good`.
        pair.ctx.queue.submit([encoder.finish()]);
    }
    pair.opt.step().unwrap();
    cpu_step(&mut pair, &grads);
    assert_same(&pair, "after the refused bindings");
}

#[test]
fn gradients_moving_within_the_same_buffers_and_between_them_match_the_cpu() {
    let mut rng = Rng(29);
    let config = AdamWConfig::default()
        .with_lr(1e-2)
        .with_schedule(Schedule::cosine(12, 1e-4));
    let mut pair = Pair::new(config, &LENS, &mut rng);
    let total: usize = LENS.iter().sum();
    // Two sets of two pools, each reused for several steps with the gradients at new
    // places: the tables are patched in place until the buffers change.
    let room = 2 * total + 70 * LENS.len();
    let sets: Vec<[wgpu::Buffer; 2]> = (0..2)
        .map(|_| {
            [0, 1].map(|_| storage_buffer(&pair.ctx.device, &pair.ctx.queue, &vec![0.0; room]))
        })
        .collect();
    for step in 0..9 {
        let pools = &sets[(step / 3) % 2];
        let grads: Vec<Vec<f32>> = LENS.iter().map(|&n| rng.grads(n)).collect();
        let mut contents = [vec![f32::NAN; room], vec![f32::NAN; room]];
        let mut at = [0usize; 2];
        let mut bindings = Vec::new();
        for (i, g) in grads.iter().enumerate() {
            // Each tensor keeps its pool within a set; its place there moves.
            let pool = (i + step / 3) % 2;
            at[pool] += rng.range(0, 70) as usize;
            contents[pool][at[pool]..at[pool] + g.len()].copy_from_slice(g);
            bindings.push(GradBinding {
                buffer: pools[pool].clone(),
                offset: 4 * at[pool] as u64,
                len: g.len() as u64,
            });
            at[pool] += g.len();
        }
        for (b, c) in pools.iter().zip(&contents) {
            pair.ctx.queue.write_buffer(b, 0, bytemuck::cast_slice(c));
        }
        let mut encoder = pair.ctx.device.create_command_encoder(&Default::default());
        pair.opt.set_grads(&mut encoder, &bindings).unwrap();
        // Again, unchanged: nothing to upload, and nothing lost.
        pair.opt.set_grads(&mut encoder, &bindings).unwrap();
        pair.opt.encode_step(&mut encoder);
        pair.ctx.queue.submit([encoder.finish()]);
        cpu_step(&mut pair, &grads);
        assert_same(&pair, &format!("step {step}"));
    }
}
