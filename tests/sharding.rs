//! ZeRO-1 shards (`wgpu_adamw::shard`) in one process: N shard optimizers on one device, their
//! gradient-norm entries gathered through the host as an MPI all-gather would, against the
//! unsharded CPU reference whose norm is cut the same way (bit for bit) and against PyTorch
//! (the trace's tolerances). The multi-process runs are in `integrations/mpi`.

mod common;

use wgpu_adamw::shard::{merge_states, reshard, split_state, ShardLayout};
use wgpu_adamw::trace::{compare, replay_cpu_sharded, ReplayOutput, ShardReplay, Trace};
use wgpu_adamw::{
    AdamWConfig, CpuAdamW, CpuParamGroup, Error, GpuAdamW, GpuContext, GpuOptions, GradNormOrder,
    OptimizerState, ParamGroup, ShardExchange, TensorBinding,
};

fn trace(name: &str) -> Trace {
    Trace::load(format!(
        "{}/tests/data/{name}.safetensors",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn total(trace: &Trace) -> u64 {
    trace.params.iter().map(|p| p.init.len() as u64).sum()
}

/// Each rank's entry copied into every rank's gathered area, in rank order: the all-gather
/// an engine's collective does (here on the one device; `integrations/mpi` goes through the
/// host between processes).
fn exchange(ctx: &GpuContext, ranks: &[ShardReplay<'_>]) {
    let entries: Option<Vec<_>> = ranks.iter().map(|r| r.exchange()).collect();
    let Some(entries) = entries else {
        return;
    };
    // Through a buffer of its own: a copy within one buffer is not allowed.
    let bytes = ShardExchange::ENTRY_BYTES;
    let all = bytes * ranks.len() as u64;
    let gathered = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("gathered entries"),
        size: all,
        usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    for (r, src) in entries.iter().enumerate() {
        encoder.copy_buffer_to_buffer(&src.buffer, src.local, &gathered, bytes * r as u64, bytes);
    }
    for dst in &entries {
        assert_eq!(dst.ranks, ranks.len());
        encoder.copy_buffer_to_buffer(&gathered, 0, &dst.buffer, dst.gathered, all);
    }
    ctx.queue.submit([encoder.finish()]);
}

/// Fills every rank's gathered area with entries no exchange could produce (NaN sums, every
/// non-finite flag): what a call that must not read them finds there.
fn poison(ctx: &GpuContext, ranks: &[ShardReplay<'_>]) {
    for ex in ranks.iter().filter_map(|r| r.exchange()) {
        let entry = [f32::NAN.to_bits(), f32::NAN.to_bits(), u32::MAX, u32::MAX];
        let words: Vec<u32> = entry.repeat(ex.ranks);
        ctx.queue
            .write_buffer(&ex.buffer, ex.gathered, bytemuck::cast_slice(&words));
    }
}

/// Runs steps `steps` of `trace` on the shards `ranks`, exchanging once per step: on the
/// call that completes it. The other calls of an accumulating step find garbage in the
/// gathered area, which they must not read.
fn run(ctx: &GpuContext, ranks: &mut [ShardReplay<'_>], steps: std::ops::Range<usize>, k: usize) {
    for s in steps {
        for micro in 0..k {
            for r in ranks.iter_mut() {
                r.partials(s, micro).unwrap();
            }
            if micro + 1 == k {
                exchange(ctx, ranks);
            } else {
                poison(ctx, ranks);
            }
            for r in ranks.iter_mut() {
                r.apply(s, micro).unwrap();
            }
        }
    }
}

/// The whole flattened parameters and the merged state of `ranks`.
fn gather(ranks: &[ShardReplay<'_>]) -> (Vec<f32>, OptimizerState) {
    let params = ranks.iter().flat_map(|r| r.params().unwrap()).collect();
    let states: Vec<OptimizerState> = ranks
        .iter()
        .map(|r| r.optimizer().state().unwrap())
        .collect();
    // Each rank keeps state for its own range only.
    for s in &states {
        let meta = s.shard.as_ref().unwrap();
        let range = meta.layout.range(meta.rank).unwrap();
        let held: usize = s.tensors.iter().map(|t| t.exp_avg.len()).sum();
        assert_eq!(held as u64, range.end - range.start, "rank {}", meta.rank);
    }
    (params, merge_states(&states).unwrap())
}

/// Where each rank reads its gradients.
#[derive(Clone, Copy)]
enum Grads {
    /// The whole model's, in the buffer registered at creation (after an all-reduce).
    Whole,
    /// Its range alone, in a buffer of its own (after a reduce-scatter).
    Scattered,
}

/// Ranks of `layout` reading their gradients as `grads` says.
fn shards<'a>(ranks: impl Iterator<Item = ShardReplay<'a>>, grads: Grads) -> Vec<ShardReplay<'a>> {
    ranks
        .map(|mut r| {
            if let Grads::Scattered = grads {
                r.scatter_grads().unwrap();
            }
            r
        })
        .collect()
}

/// The sharded replay of `trace` on `layout`, re-sharded to `then` (through checkpoint
/// bytes) before 0-based step `at` when given.
fn sharded(
    ctx: &GpuContext,
    trace: &Trace,
    layout: &ShardLayout,
    then: Option<(usize, &ShardLayout)>,
    grads: Grads,
) -> ReplayOutput {
    let k = trace.config.accumulate as usize;
    let steps = trace.steps as usize;
    let mut ranks = shards(
        (0..layout.ranks())
            .map(|r| ShardReplay::new(trace, &ctx.device, &ctx.queue, layout, r).unwrap()),
        grads,
    );
    let at = then.map_or(steps, |(at, _)| at);
    run(ctx, &mut ranks, 0..at, k);
    let mut early = None;
    if let Some((at, next)) = then {
        let (params, state) = gather(&ranks);
        early = Some(ranks[0].output(&params, state).unwrap());
        // Each rank's checkpoint file as bytes, re-sharded offline, loaded by the new ranks.
        let files: Vec<Vec<u8>> = ranks
            .iter()
            .map(|r| r.optimizer().state().unwrap().to_bytes().unwrap())
            .collect();
        let states: Vec<OptimizerState> = files
            .iter()
            .map(|b| OptimizerState::from_bytes(b, "shard".as_ref()).unwrap())
            .collect();
        let moved = reshard(&states, next).unwrap();
        ranks = shards(
            moved
                .iter()
                .map(|s| ShardReplay::resume(trace, &ctx.device, &ctx.queue, s, &params).unwrap()),
            grads,
        );
        run(ctx, &mut ranks, at..steps, k);
    }
    let (params, state) = gather(&ranks);
    let mut out = ranks[0].output(&params, state).unwrap();
    // The logs of the steps before a re-shard are the first ranks'.
    if let Some(early) = early {
        out.skipped[..at].copy_from_slice(&early.skipped[..at]);
        out.grad_scale[..at].copy_from_slice(&early.grad_scale[..at]);
        for (l, e) in out.lr.iter_mut().zip(&early.lr) {
            l[..at].copy_from_slice(&e[..at]);
        }
    }
    out
}

/// Every output of `got` bit for bit `want`'s: parameters, moments, the other streams, lr,
/// skips and loss scale ([`ReplayOutput::same_bits`]).
fn assert_same(got: &ReplayOutput, want: &ReplayOutput, what: &str) {
    for (field, same) in got.same_bits(want) {
        assert!(same, "{what}: {field} differ");
    }
}

/// Layouts of `n` elements: even ones over 2 and 3 ranks, and cuts after the first element
/// and at an odd one (inside a tensor, and inside a 32-bit word of 16-bit values).
fn layouts(n: u64) -> Vec<ShardLayout> {
    vec![
        ShardLayout::even(n, 2).unwrap(),
        ShardLayout::even(n, 3).unwrap(),
        ShardLayout::new(vec![0, 1, (n / 2) | 1, n]).unwrap(),
    ]
}

#[test]
fn shards_equal_the_reference_cut_the_same_way_and_pytorch() {
    let ctx = common::gpu();
    // f32 with loss scaling and clipping; f32 with a GradScaler, accumulation, EMA and
    // clipping; f16 with master weights, a GradScaler and accumulation; bf16 params and
    // gradients with clipping and accumulation.
    for name in [
        "amp_clip",
        "x_mp_f32_scaler_accum_ema_clip",
        "x_mp_f16_master_scaler_accum",
        "mp_accumulate_clip",
    ] {
        let trace = trace(name);
        let mut layouts = layouts(total(&trace));
        if name != "amp_clip" {
            // Each shard compiles its pipelines, which lavapipe takes seconds for: the odd cuts
            // only here.
            layouts.drain(..2);
        }
        for layout in layouts {
            let what = format!("{name} on {:?}", layout.bounds());
            let got = sharded(&ctx, &trace, &layout, None, Grads::Whole);
            let want = replay_cpu_sharded(&trace, &[(0, layout.clone())]).unwrap();
            assert_same(&got, &want, &what);
            let c = compare(&trace, &got);
            assert!(c.passed(), "{what}: not within PyTorch's tolerances\n{c:?}");
        }
    }
}

#[test]
fn shards_reading_their_range_of_gradients_alone_equal_the_reference() {
    let ctx = common::gpu();
    // What a rank holds after a reduce-scatter: its range of the flattened gradients, in a
    // buffer of its own (`GpuAdamW::shard_grads`). On f16 the even 3-rank cuts (410, 821)
    // start a range mid-tensor and, at 821, mid-word: its parameters then begin in the
    // upper half of a word, its gradients at element 0 of their buffer.
    for name in ["amp_clip", "x_mp_f16_master_scaler_accum"] {
        let trace = trace(name);
        let layout = ShardLayout::even(total(&trace), 3).unwrap();
        let got = sharded(&ctx, &trace, &layout, None, Grads::Scattered);
        let want = replay_cpu_sharded(&trace, &[(0, layout.clone())]).unwrap();
        let what = format!("{name} on {:?}, scattered gradients", layout.bounds());
        assert_same(&got, &want, &what);
    }
}

#[test]
fn one_shard_is_the_unsharded_optimizer_bit_for_bit() {
    let ctx = common::gpu();
    let mut trace = trace("amp_clip");
    let layout = ShardLayout::even(total(&trace), 1).unwrap();
    let got = sharded(&ctx, &trace, &layout, None, Grads::Whole);
    trace.config.grad_norm_order = GradNormOrder::Compensated;
    let want =
        wgpu_adamw::trace::replay(&trace, wgpu_adamw::trace::Backend::Gpu(&ctx), None).unwrap();
    assert_same(&got, &want, "one shard");
}

#[test]
fn resharding_two_to_three_ranks_resumes_bit_exactly() {
    let ctx = common::gpu();
    for name in ["amp_clip", "x_mp_f16_master_scaler_accum"] {
        let trace = trace(name);
        let n = total(&trace);
        let (two, three) = (
            ShardLayout::even(n, 2).unwrap(),
            ShardLayout::even(n, 3).unwrap(),
        );
        let at = trace.steps as usize / 2;
        let got = sharded(&ctx, &trace, &two, Some((at, &three)), Grads::Whole);
        let want =
            replay_cpu_sharded(&trace, &[(0, two.clone()), (at as u32, three.clone())]).unwrap();
        assert_same(
            &got,
            &want,
            &format!("{name}: 2 ranks, then 3 from step {at}"),
        );
    }
}

#[test]
fn shard_checkpoints_split_merge_and_reshard_exactly() {
    // A state with three streams more than the moments: amsgrad's maximum and the EMA.
    let config = AdamWConfig::default().with_ema(0.9).with_amsgrad(true);
    let lens = [7usize, 300, 1, 64];
    let mut cpu = CpuAdamW::new(
        config,
        vec![
            CpuParamGroup {
                lens: lens[..2].to_vec(),
                ..Default::default()
            },
            CpuParamGroup {
                lens: lens[2..].to_vec(),
                ..Default::default()
            },
        ],
    )
    .unwrap();
    let mut rng = common::Rng(7);
    let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| rng.grads(n)).collect();
    for _ in 0..3 {
        let grads: Vec<Vec<f32>> = lens.iter().map(|&n| rng.grads(n)).collect();
        let g: Vec<&[f32]> = grads.iter().map(|g| &g[..]).collect();
        let mut p: Vec<&mut [f32]> = params.iter_mut().map(|p| &mut p[..]).collect();
        cpu.step(&mut p, &g).unwrap();
    }
    let whole = cpu.state();
    let n: u64 = lens.iter().sum::<usize>() as u64;
    let two = ShardLayout::new(vec![0, 8, n]).unwrap();
    let three = ShardLayout::new(vec![0, 5, 306, n]).unwrap();
    let shards = split_state(&whole, &two).unwrap();
    // Through files' bytes.
    let shards: Vec<OptimizerState> = shards
        .iter()
        .map(|s| OptimizerState::from_bytes(&s.to_bytes().unwrap(), "s".as_ref()).unwrap())
        .collect();
    assert_eq!(shards[0].tensors.len(), 2, "7 + 1 element of the 300");
    assert_eq!(shards[0].tensors[1].exp_avg, whole.tensors[1].exp_avg[..1]);
    assert_eq!(merge_states(&shards).unwrap(), whole);
    // Any order of the files.
    let swapped = [shards[1].clone(), shards[0].clone()];
    assert_eq!(merge_states(&swapped).unwrap(), whole);
    let moved = reshard(&shards, &three).unwrap();
    assert_eq!(moved.len(), 3);
    // Rank 1 of `three` holds elements 5..306: 2 of the first tensor, 299 of the second.
    let ema = |t: &wgpu_adamw::TensorState| t.ema.clone().unwrap();
    assert_eq!(ema(&moved[1].tensors[0]), ema(&whole.tensors[0])[5..]);
    assert_eq!(ema(&moved[1].tensors[1]), ema(&whole.tensors[1])[..299]);
    assert_eq!(merge_states(&moved).unwrap(), whole);

    // Typed errors, nothing merged.
    let mismatch = |r: wgpu_adamw::Result<OptimizerState>| {
        assert!(
            matches!(r, Err(Error::CheckpointMismatch(_))),
            "expected a CheckpointMismatch, got {r:?}"
        )
    };
    mismatch(merge_states(&shards[..1]));
    mismatch(merge_states(&[shards[0].clone(), shards[0].clone()]));
    mismatch(merge_states(&[whole.clone(), shards[1].clone()]));
    let mut later = shards[1].clone();
    later.counters.adam += 1;
    mismatch(merge_states(&[shards[0].clone(), later]));
    assert!(matches!(
        split_state(&shards[0], &three),
        Err(Error::CheckpointMismatch(_))
    ));
    assert!(matches!(
        split_state(&whole, &ShardLayout::even(n + 1, 2).unwrap()),
        Err(Error::ShapeMismatch(_))
    ));
}

#[test]
fn bad_layouts_and_shard_misuse_are_typed_errors() {
    let invalid = |r: wgpu_adamw::Result<ShardLayout>| {
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}")
    };
    invalid(ShardLayout::new(vec![0]));
    invalid(ShardLayout::new(vec![1, 5]));
    invalid(ShardLayout::new(vec![0, 3, 3, 5]));
    invalid(ShardLayout::even(2, 3));
    invalid(ShardLayout::even(2, 0));
    let layout = ShardLayout::new(vec![0, 3, 10]).unwrap();
    assert!(matches!(layout.range(2), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        layout.pieces(0, &[4, 5]),
        Err(Error::ShapeMismatch(_))
    ));

    let ctx = common::gpu();
    let params = common::storage_buffer(&ctx.device, &ctx.queue, &[0.5; 10]);
    let grads = common::storage_buffer(&ctx.device, &ctx.queue, &[0.25; 10]);
    let groups = vec![ParamGroup {
        config: Default::default(),
        tensors: vec![
            TensorBinding {
                len: 4,
                ..TensorBinding::whole(&params, &grads)
            },
            TensorBinding {
                param_offset: 16,
                grad_offset: 16,
                len: 6,
                ..TensorBinding::whole(&params, &grads)
            },
        ],
    }];
    let shard = |config: AdamWConfig, rank: usize| {
        GpuAdamW::shard(
            &ctx.device,
            &ctx.queue,
            config,
            groups.clone(),
            &layout,
            rank,
            GpuOptions::default(),
        )
    };
    let clip = AdamWConfig::default().with_max_grad_norm(Some(1.0));
    let mut torch = clip.clone();
    torch.grad_norm_order = GradNormOrder::TorchCpu;
    assert!(matches!(shard(torch, 0), Err(Error::Unsupported(_))));
    assert!(matches!(
        shard(clip.clone(), 2),
        Err(Error::InvalidArgument(_))
    ));
    let opt = shard(clip.clone(), 1).unwrap();
    assert_eq!(
        opt.num_tensors(),
        2,
        "a piece of each tensor: 1 + 6 elements"
    );
    assert!(opt.needs_exchange());
    assert!(matches!(opt.step(), Err(Error::Unsupported(_))));
    // Another rank's checkpoint, and an unsharded one, are refused; nothing is loaded.
    let other = shard(clip.clone(), 0).unwrap();
    let refused = |s: &OptimizerState| {
        assert!(matches!(
            opt.load_state(s),
            Err(Error::CheckpointMismatch(_))
        ))
    };
    refused(&other.state().unwrap());
    let mut unsharded = opt.state().unwrap();
    unsharded.shard = None;
    refused(&unsharded);
    // Rank 1's range [3, 10) end to end: element 3 of tensor 0, then all of tensor 1.
    let at: Vec<(u64, u64)> = opt
        .shard_grads(&grads, 8)
        .unwrap()
        .iter()
        .map(|g| (g.offset, g.len))
        .collect();
    assert_eq!(at, [(8, 1), (12, 6)]);
    let whole = GpuAdamW::new(&ctx.device, &ctx.queue, clip.clone(), groups.clone()).unwrap();
    assert!(matches!(
        whole.shard_grads(&grads, 0),
        Err(Error::InvalidArgument(_))
    ));
    // Without clipping or loss scaling a shard steps on its own.
    let plain = shard(AdamWConfig::default(), 0).unwrap();
    assert!(!plain.needs_exchange() && plain.exchange().is_none());
    plain.step().unwrap();
}
