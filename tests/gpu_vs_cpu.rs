//! The fused kernel against its CPU twin: randomized shapes and hyperparameters, K steps per
//! submit, splitting across bindings, and the engine-buffer registration rules.

mod common;

use common::{read_f32, storage_buffer, Rng};
use wgpu_adamw::schedule::{self, PerGroup};
use wgpu_adamw::{
    AdamWConfig, CpuAdamW, CpuParamGroup, Error, GpuAdamW, GpuOptions, GroupConfig, ParamGroup,
    Schedule, TensorBinding,
};

/// A random model: groups of tensors laid out in one param arena and one grad arena at
/// random (4-byte aligned, often unaligned to 16) offsets.
struct Model {
    groups: Vec<(GroupConfig, Vec<(u64, usize)>)>, // (offset in elements, len)
    total: usize,
}

fn random_model(rng: &mut Rng, max_len: u64) -> Model {
    let mut groups = Vec::new();
    let mut at = rng.range(0, 5);
    for _ in 0..rng.range(1, 4) {
        let gc = GroupConfig {
            lr: (rng.unit() < 0.5).then(|| 10f64.powf(-2.0 - 2.0 * rng.unit())),
            weight_decay: (rng.unit() < 0.5).then(|| rng.unit() * 0.2),
        };
        let mut tensors = Vec::new();
        for _ in 0..rng.range(1, 8) {
            let len = rng.range(1, max_len) as usize;
            tensors.push((at, len));
            at += len as u64 + rng.range(0, 7);
        }
        groups.push((gc, tensors));
    }
    Model {
        groups,
        total: at as usize + 3,
    }
}

fn random_config(rng: &mut Rng) -> AdamWConfig {
    let schedule = match rng.range(0, 8) {
        0 => Schedule::default(),
        1 => Schedule::cosine(rng.range(1, 20) as u32, 1e-5 * rng.unit()),
        2 => Schedule::cosine_warm_restarts(
            rng.range(1, 6) as u32,
            rng.range(1, 4) as u32,
            1e-5 * rng.unit(),
        ),
        3 => {
            let w = rng.range(0, 5) as u32;
            Schedule::warmup_cosine(
                w,
                w + rng.range(0, 20) as u32,
                [0.5, 1.0, 0.3, 2.5][rng.range(0, 4) as usize],
            )
        }
        4 => Schedule::Exponential(schedule::Exponential {
            gamma: 0.8 + 0.2 * rng.unit(),
        }),
        5 => Schedule::OneCycle(schedule::OneCycle {
            max_lr: PerGroup::All(1e-3 + 1e-2 * rng.unit()),
            total_steps: 30,
            pct_start: 0.3,
            anneal_cos: rng.range(0, 2) == 1,
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: rng.range(0, 2) == 1,
            cycle_momentum: true,
            base_momentum: PerGroup::All(0.85),
            max_momentum: PerGroup::All(0.95),
        }),
        6 => Schedule::Cyclic(schedule::Cyclic {
            base_lr: PerGroup::All(1e-4),
            max_lr: PerGroup::All(1e-3 + 1e-2 * rng.unit()),
            step_size_up: rng.range(1, 5) as u32,
            step_size_down: None,
            mode: schedule::CyclicMode::ExpRange,
            gamma: 0.9,
            cycle_momentum: true,
            base_momentum: PerGroup::All(0.8),
            max_momentum: PerGroup::All(0.9),
        }),
        _ => Schedule::Sequential(schedule::Sequential {
            schedules: vec![
                Schedule::Linear(schedule::Linear {
                    start_factor: 0.1,
                    end_factor: 1.0,
                    total_iters: 3,
                }),
                Schedule::cosine(rng.range(1, 20) as u32, 0.0),
            ],
            milestones: vec![rng.range(1, 5) as u32],
        }),
    };
    AdamWConfig::default()
        .with_lr(10f64.powf(-1.0 - 3.0 * rng.unit()))
        .with_betas(
            [0.9, 0.5, 0.3, 0.0][rng.range(0, 4) as usize],
            [0.999, 0.95, 0.9999][rng.range(0, 3) as usize],
        )
        .with_eps([1e-8, 1e-6, 1e-3][rng.range(0, 3) as usize])
        .with_weight_decay(rng.unit() * 0.1)
        .with_amsgrad(rng.unit() < 0.5)
        .with_maximize(rng.unit() < 0.3)
        .with_schedule(schedule)
        .with_steps_per_epoch(rng.range(1, 4) as u32)
}

/// Agreement expected between the kernel and its twin: the same formulas and roundings,
/// where only WGSL's division and sqrt (2.5 ulp allowed, approximate on NVIDIA) may round
/// differently from the CPU, an ulp or two per step. The tolerance is a tenth of the
/// adamw-trace/1 format's: parameters 1e-7 + 1e-6 |x|, moments and lr 1e-6 |x|.
fn close(gpu: f32, cpu: f32) -> bool {
    gpu == cpu || (gpu - cpu).abs() <= 1e-6 * cpu.abs()
}

fn close_param(gpu: f32, cpu: f32) -> bool {
    gpu == cpu || (gpu - cpu).abs() <= 1e-7 + 1e-6 * cpu.abs()
}

fn run_case(seed: u64, options: GpuOptions, max_len: u64, steps: usize, steps_per_submit: usize) {
    let mut rng = Rng(seed);
    let model = random_model(&mut rng, max_len);
    let config = random_config(&mut rng);
    run_model(seed, rng, model, config, options, steps, steps_per_submit);
}

/// Steps `model` on the GPU and the CPU twin with the same random gradients and compares
/// parameters, moments, lr and (with clipping or loss scaling) the gradient norm.
fn run_model(
    seed: u64,
    mut rng: Rng,
    model: Model,
    config: AdamWConfig,
    options: GpuOptions,
    steps: usize,
    steps_per_submit: usize,
) {
    let ctx = common::gpu();
    let init: Vec<f32> = (0..model.total).map(|_| rng.normal()).collect();
    let pbuf = storage_buffer(&ctx.device, &ctx.queue, &init);
    let gbuf = storage_buffer(&ctx.device, &ctx.queue, &vec![0.0; model.total]);
    let gpu_groups = model
        .groups
        .iter()
        .map(|(gc, ts)| ParamGroup {
            config: *gc,
            tensors: ts
                .iter()
                .map(|&(off, len)| TensorBinding {
                    param: pbuf.clone(),
                    param_offset: off * 4,
                    grad: gbuf.clone(),
                    grad_offset: off * 4,
                    len: len as u64,
                })
                .collect(),
        })
        .collect();
    let opt = GpuAdamW::with_options(&ctx.device, &ctx.queue, config.clone(), gpu_groups, options)
        .unwrap();
    if options.max_binding_size.is_some() {
        assert!(
            opt.dispatches_per_step() > 1,
            "the split case should need several bindings"
        );
    }
    let cpu_groups = model
        .groups
        .iter()
        .map(|(gc, ts)| CpuParamGroup {
            config: *gc,
            lens: ts.iter().map(|t| t.1).collect(),
        })
        .collect();
    let mut cpu = CpuAdamW::new(config.clone(), cpu_groups).unwrap();
    let mut host = init.clone();
    let offsets: Vec<(u64, usize)> = model.groups.iter().flat_map(|g| g.1.clone()).collect();
    let mut step = 0;
    while step < steps {
        // Gradients for `steps_per_submit` steps go to separate buffers, copied into the grad
        // arena between the steps of one command encoder.
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        let mut keep = Vec::new();
        for _ in 0..steps_per_submit.min(steps - step) {
            let grads = rng.grads(model.total);
            let staging = storage_buffer(&ctx.device, &ctx.queue, &grads);
            encoder.copy_buffer_to_buffer(&staging, 0, &gbuf, 0, model.total as u64 * 4);
            opt.encode_step(&mut encoder);
            keep.push(staging);
            let gs: Vec<&[f32]> = offsets
                .iter()
                .map(|&(o, l)| &grads[o as usize..o as usize + l])
                .collect();
            let mut ps: Vec<Vec<f32>> = offsets
                .iter()
                .map(|&(o, l)| host[o as usize..o as usize + l].to_vec())
                .collect();
            let mut views: Vec<&mut [f32]> = ps.iter_mut().map(|v| v.as_mut_slice()).collect();
            cpu.step(&mut views, &gs).unwrap();
            for (&(o, l), p) in offsets.iter().zip(&ps) {
                host[o as usize..o as usize + l].copy_from_slice(p);
            }
            step += 1;
        }
        ctx.queue.submit([encoder.finish()]);
    }
    let got = read_f32(&ctx, &pbuf, 0, model.total);
    for (i, (&g, &c)) in got.iter().zip(&host).enumerate() {
        assert!(
            close_param(g, c),
            "seed {seed} {config:?}: param {i}: gpu {g} cpu {c}"
        );
    }
    let gs = opt.state().unwrap();
    let cs = cpu.state();
    assert_eq!(gs.counters, cs.counters);
    for (t, (a, b)) in gs.tensors.iter().zip(&cs.tensors).enumerate() {
        for (x, y) in a
            .exp_avg
            .iter()
            .zip(&b.exp_avg)
            .chain(a.exp_avg_sq.iter().zip(&b.exp_avg_sq))
        {
            assert!(
                close(*x, *y),
                "seed {seed}: tensor {t}: moment gpu {x} cpu {y}"
            );
        }
        if let (Some(a), Some(b)) = (&a.max_exp_avg_sq, &b.max_exp_avg_sq) {
            for (x, y) in a.iter().zip(b) {
                assert!(
                    close(*x, *y),
                    "seed {seed}: tensor {t}: max_exp_avg_sq gpu {x} cpu {y}"
                );
            }
        }
    }
    for (g, c) in opt.read_lr().unwrap().iter().zip(cpu.lr()) {
        assert!(close(*g, c), "seed {seed}: lr gpu {g} cpu {c}");
    }
    if config.max_grad_norm.is_some() && opt.dispatches_per_step() == 1 {
        // One buffer pair: the same chunk plan on both, so the same partial sums.
        let (g, c) = (opt.read_grad_norm().unwrap(), cpu.last_step().grad_norm);
        assert_eq!(
            g.to_bits(),
            c.to_bits(),
            "seed {seed}: grad norm gpu {g} cpu {c}"
        );
    }
}

/// `n` tensors of 1-7 elements (the biases and norms of a deep model, or worse) with a few
/// large ones among them, in three groups, at random 4-byte offsets.
fn tiny_model(rng: &mut Rng, n: usize) -> Model {
    let mut groups: Vec<(GroupConfig, Vec<(u64, usize)>)> = (0..3)
        .map(|g| {
            (
                GroupConfig {
                    lr: (g > 0).then_some(1e-2 / g as f64),
                    weight_decay: (g == 2).then_some(0.0),
                },
                Vec::new(),
            )
        })
        .collect();
    let mut at = rng.range(0, 3);
    for i in 0..n {
        let len = if i % 997 == 500 {
            rng.range(1000, 6000) as usize
        } else {
            rng.range(1, 8) as usize
        };
        groups[rng.range(0, 3) as usize].1.push((at, len));
        at += len as u64 + rng.range(0, 3);
    }
    Model {
        groups,
        total: at as usize + 1,
    }
}

#[test]
fn thousands_of_tiny_tensors_match_the_cpu_twin() {
    for (seed, options) in [
        (61, GpuOptions::default()),
        (
            62,
            GpuOptions {
                max_binding_size: Some(16 << 10),
                ..Default::default()
            },
        ),
    ] {
        let mut rng = Rng(seed);
        let model = tiny_model(&mut rng, 5000);
        let config = AdamWConfig::default()
            .with_amsgrad(true)
            .with_max_grad_norm(Some(0.5))
            .with_schedule(Schedule::cosine(5, 1e-5));
        run_model(seed, rng, model, config, options, 4, 2);
    }
}

#[test]
fn randomized_models_match_the_cpu_twin() {
    for seed in 1..=12 {
        run_case(seed, GpuOptions::default(), 3000, 7, 1);
    }
}

#[test]
fn every_chunk_size_matches_the_cpu_twin() {
    for (seed, ept) in [(300, 1), (301, 3), (302, 255)] {
        let options = GpuOptions {
            elems_per_thread: Some(ept),
            ..Default::default()
        };
        run_case(seed, options, 70_000, 3, 1);
    }
}

#[test]
fn many_steps_in_one_submit_match_the_cpu_twin() {
    for seed in 100..104 {
        run_case(seed, GpuOptions::default(), 2000, 9, 4);
    }
}

#[test]
fn tensors_larger_than_a_binding_are_split() {
    // A 64 KiB binding limit: windows of 64 KiB over the arenas, pieces of <= 8K elements,
    // several state arenas; tensors up to 40K elements cross many windows.
    let options = GpuOptions {
        max_binding_size: Some(64 << 10),
        elems_per_thread: Some(4),
        ..Default::default()
    };
    for seed in 200..203 {
        run_case(seed, options, 40_000, 3, 2);
    }
}

/// K steps recorded into one encoder and submitted once equal K submitted steps, bit for bit.
#[test]
fn k_steps_per_submit_are_bit_identical_to_k_submits() {
    let ctx = common::gpu();
    let mut rng = Rng(7);
    let n = 5000;
    let init: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    let grads = rng.grads(n);
    let config = AdamWConfig::default()
        .with_amsgrad(true)
        .with_schedule(Schedule::cosine_warm_restarts(2, 2, 1e-5));
    let run = |per_submit: usize| {
        let p = storage_buffer(&ctx.device, &ctx.queue, &init);
        let g = storage_buffer(&ctx.device, &ctx.queue, &grads);
        let opt = GpuAdamW::new(
            &ctx.device,
            &ctx.queue,
            config.clone(),
            vec![ParamGroup {
                tensors: vec![TensorBinding::whole(&p, &g)],
                ..Default::default()
            }],
        )
        .unwrap();
        for _ in 0..16 / per_submit {
            let mut encoder = ctx.device.create_command_encoder(&Default::default());
            for _ in 0..per_submit {
                opt.encode_step(&mut encoder);
            }
            ctx.queue.submit([encoder.finish()]);
        }
        (
            read_f32(&ctx, &p, 0, n),
            opt.state().unwrap(),
            opt.read_lr().unwrap(),
        )
    };
    let one = run(1);
    let sixteen = run(16);
    assert_eq!(one.1.counters.adam, 16);
    assert_eq!(
        one.0.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        sixteen.0.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(one.1, sixteen.1);
    assert_eq!(one.2, sixteen.2);
}

#[test]
fn dispatches_do_not_grow_with_the_number_of_tensors() {
    let ctx = common::gpu();
    let n_tensors = 300;
    let total = n_tensors * 37;
    let p = storage_buffer(&ctx.device, &ctx.queue, &vec![1.0; total]);
    let g = storage_buffer(&ctx.device, &ctx.queue, &vec![0.5; total]);
    let tensors = (0..n_tensors as u64)
        .map(|i| TensorBinding {
            param: p.clone(),
            param_offset: i * 148,
            grad: g.clone(),
            grad_offset: i * 148,
            len: 37,
        })
        .collect();
    let opt = GpuAdamW::new(
        &ctx.device,
        &ctx.queue,
        AdamWConfig::default(),
        vec![ParamGroup {
            tensors,
            ..Default::default()
        }],
    )
    .unwrap();
    assert_eq!(opt.num_tensors(), n_tensors);
    assert_eq!(opt.dispatches_per_step(), 1);
    // Short tensors share chunks: 55 of these per chunk of 2048, as the CPU plan says.
    let plan = wgpu_adamw::plan::cpu_chunks(&[37; 300], wgpu_adamw::kernel::CHUNK as usize);
    assert_eq!(plan.len(), 6);
    assert_eq!(opt.globals().n_chunks as usize, plan.len());
}

#[test]
fn short_tensors_share_chunks_in_the_plan() {
    use wgpu_adamw::plan::{cpu_chunks, CpuChunk};
    let run = |tensor, start, count| CpuChunk::Run {
        tensor,
        start,
        count,
    };
    assert_eq!(
        cpu_chunks(&[3, 5, 5000, 0, 2, 1000, 1500, 1100, 2000], 2048),
        [
            run(2, 0, 2048),
            run(2, 2048, 2048),
            run(2, 4096, 904),
            run(6, 0, 1500),
            run(7, 0, 1100),
            run(8, 0, 2000),
            CpuChunk::Packed(vec![0, 1, 4, 5]),
        ]
    );
    // A full packed chunk closes; the next short tensor opens another.
    assert_eq!(
        cpu_chunks(&[1000, 1000, 100, 7, 2048], 2048),
        [
            run(4, 0, 2048),
            CpuChunk::Packed(vec![0, 1]),
            CpuChunk::Packed(vec![2, 3]),
        ]
    );
}

#[test]
fn bad_registrations_are_typed_errors() {
    let ctx = common::gpu();
    let p = storage_buffer(&ctx.device, &ctx.queue, &[0.0; 64]);
    let g = storage_buffer(&ctx.device, &ctx.queue, &[0.0; 64]);
    let uniform_only = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 256,
        usage: wgpu::BufferUsages::UNIFORM,
        mapped_at_creation: false,
    });
    let t =
        |param: &wgpu::Buffer, param_offset, grad: &wgpu::Buffer, grad_offset, len| TensorBinding {
            param: param.clone(),
            param_offset,
            grad: grad.clone(),
            grad_offset,
            len,
        };
    let cases = vec![
        vec![t(&p, 2, &g, 0, 4)],                       // unaligned offset
        vec![t(&p, 0, &g, 0, 65)],                      // past the end
        vec![t(&p, 0, &g, 200, 16)],                    // grad range past the end
        vec![t(&uniform_only, 0, &g, 0, 4)],            // no STORAGE usage
        vec![t(&p, 0, &g, 0, 8), t(&p, 16, &g, 64, 8)], // overlapping params
    ];
    for tensors in cases {
        let r = GpuAdamW::new(
            &ctx.device,
            &ctx.queue,
            AdamWConfig::default(),
            vec![ParamGroup {
                tensors,
                ..Default::default()
            }],
        );
        assert!(matches!(r, Err(Error::InvalidTensor { .. })), "{r:?}");
    }
    let r = GpuAdamW::new(
        &ctx.device,
        &ctx.queue,
        AdamWConfig::default().with_betas(1.0, 0.999),
        vec![],
    );
    assert!(
        matches!(r, Err(Error::InvalidHyperparameter { name: "betas", .. })),
        "{r:?}"
    );
}
