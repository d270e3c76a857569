//! One MPI rank of a ZeRO-1 replay of a PyTorch trace: each rank runs its shard of the
//! optimizer on its own device and is given only its range of each micro-batch's gradients
//! (what the engine's reduce-scatter would leave), the gradient norm's entries are
//! all-gathered through MPI every step, and rank 0 checks the gathered result against the single-process reference
//! (the CPU optimizer with its norm cut the same way) bit for bit, and against PyTorch.
//!
//! ```text
//! mpirun -np N shard_replay run TRACE                 all steps on N even shards
//! mpirun -np N shard_replay save TRACE K DIR          steps 0..K, then checkpoints in DIR
//! mpirun -np N shard_replay resume TRACE K DIR FROM   DIR's N shards (re-sharded from FROM
//!                                                     ranks) from step K to the end
//! ```
//! Checkpoints are `DIR/rank-{r}-of-{N}.safetensors` and the flattened parameters
//! `DIR/params.f32` (little-endian f32). Exits non-zero when a check fails.

use anyhow::{bail, Context, Result};
use mpi::traits::*;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use wgpu_adamw::shard::{merge_states, ShardLayout};
use wgpu_adamw::trace::{compare, replay_cpu_sharded, ShardReplay, Trace};
use wgpu_adamw::{GpuContext, OptimizerState};
use wgpu_adamw_mpi::{all_gather_varcount, exchange, ExchangeTiming};

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Checkpoint file of `rank` of `ranks` in `dir`.
fn shard_file(dir: &Path, rank: usize, ranks: usize) -> PathBuf {
    dir.join(wgpu_adamw::shard::checkpoint_name(rank, ranks))
}

fn run() -> Result<bool> {
    let universe = mpi::initialize().context("MPI_Init")?;
    let world = universe.world();
    let (rank, ranks) = (world.rank() as usize, world.size() as usize);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: shard_replay run TRACE | save TRACE K DIR | resume TRACE K DIR FROM";
    let (mode, trace_path) = match &args[..] {
        [mode, trace, ..] => (mode.as_str(), trace),
        _ => bail!("{usage}"),
    };
    let trace = Trace::load(trace_path)?;
    let total: u64 = trace.params.iter().map(|p| p.init.len() as u64).sum();
    let layout = ShardLayout::even(total, ranks)?;
    let steps = trace.steps as usize;
    let step_arg = |i: usize| -> Result<usize> {
        let k: usize = args.get(i).context(usage)?.parse()?;
        if k > steps {
            bail!("step {k} is past the trace's {steps}");
        }
        Ok(k)
    };
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    let ctx = GpuContext::new()?;
    // (steps to run, layouts of the reference, checkpoint directory to write)
    let (range, history, save, mut shard) = match mode {
        "run" => (
            0..steps,
            vec![(0, layout.clone())],
            None,
            ShardReplay::new(&trace, &ctx.device, &ctx.queue, &layout, rank)?,
        ),
        "save" => {
            let k = step_arg(2)?;
            let dir = PathBuf::from(args.get(3).context(usage)?);
            (
                0..k,
                vec![(0, layout.clone())],
                Some(dir),
                ShardReplay::new(&trace, &ctx.device, &ctx.queue, &layout, rank)?,
            )
        }
        "resume" => {
            let k = step_arg(2)?;
            let dir = PathBuf::from(args.get(3).context(usage)?);
            let from: usize = args.get(4).context(usage)?.parse()?;
            let state = OptimizerState::load(shard_file(&dir, rank, ranks))?;
            if state.shard.as_ref().map(|m| &m.layout) != Some(&layout) {
                bail!("{}: not a shard of {ranks} even ranks", dir.display());
            }
            let bytes = std::fs::read(dir.join("params.f32"))?;
            let params: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect();
            (
                k..steps,
                vec![
                    (0, ShardLayout::even(total, from)?),
                    (k as u32, layout.clone()),
                ],
                None,
                ShardReplay::resume(&trace, &ctx.device, &ctx.queue, &state, &params)?,
            )
        }
        _ => bail!("{usage}"),
    };
    // Each rank gets its range of the gradients alone, as after a reduce-scatter.
    shard.scatter_grads()?;

    // The collective alone: an all-gather of one 16-byte entry per rank, timed over 1000
    // rounds (what the exchange costs beyond the read-back and the ranks' skew).
    world.barrier();
    let t = Instant::now();
    let mut all = vec![0u32; 4 * ranks];
    for i in 0..1000u32 {
        world.all_gather_into(&[i; 4][..], &mut all[..]);
    }
    let all_gather_alone = t.elapsed() / 1000;

    let k = trace.config.accumulate as usize;
    let mut timings: Vec<ExchangeTiming> = Vec::new();
    world.barrier();
    let start = Instant::now();
    for s in range.clone() {
        for micro in 0..k {
            shard.partials(s, micro)?;
            // Only the call that completes a step reads the gathered entries.
            if let Some(ex) = shard.exchange().filter(|_| micro + 1 == k) {
                timings.push(exchange(&world, &ctx.device, &ctx.queue, &ex)?);
            }
            shard.apply(s, micro)?;
        }
    }
    // Wait for the last step, so the wall time covers the device's work.
    let params = shard.params()?;
    let wall = start.elapsed();

    let all_params: Vec<f32> = all_gather_varcount(&world, &params)?;
    let state = shard.optimizer().state()?;
    if let Some(dir) = &save {
        std::fs::create_dir_all(dir)?;
        state.save(shard_file(dir, rank, ranks))?;
        if rank == 0 {
            let bytes: Vec<u8> = all_params.iter().flat_map(|x| x.to_le_bytes()).collect();
            std::fs::write(dir.join("params.f32"), bytes)?;
        }
    }
    let own = state.to_bytes()?;
    let bytes: Vec<u8> = all_gather_varcount(&world, &own)?;
    let lens: Vec<u64> = all_gather_varcount(&world, &[own.len() as u64])?;
    if rank != 0 {
        return Ok(true);
    }
    let mut states = Vec::new();
    let mut at = 0usize;
    for &n in &lens {
        states.push(OptimizerState::from_bytes(
            &bytes[at..at + n as usize],
            Path::new("<gathered>"),
        )?);
        at += n as usize;
    }
    let merged = merge_states(&states)?;
    let mut got = shard.output(&all_params, merged)?;
    report(ranks, &range, k, wall, &timings);
    println!(
        "rank 0 of {ranks}: an all-gather of 16 bytes per rank alone: {:.1} us",
        all_gather_alone.as_secs_f64() * 1e6
    );

    // The single-process reference, its norm cut as the shards' was.
    let mut want = replay_cpu_sharded(&trace, &history)?;
    if range.start > 0 || range.end < steps {
        // Only the steps this run took are in its logs; compare those, and a partial run's
        // final values against the reference's at the same step.
        if range.end < steps {
            let mut partial = trace.clone();
            partial.steps = range.end as u32;
            want = replay_cpu_sharded(&partial, &history)?;
        }
        for v in [&mut got.skipped, &mut want.skipped] {
            v.drain(..range.start);
            v.truncate(range.len());
        }
        for v in got.lr.iter_mut().chain(want.lr.iter_mut()) {
            v.drain(..range.start);
            v.truncate(range.len());
        }
    }
    let mut ok = true;
    for (what, same) in got.same_bits(&want) {
        println!(
            "{} {what}: {} ranks {} the single-process reference",
            if same { "PASS" } else { "FAIL" },
            ranks,
            if same {
                "bit-identical to"
            } else {
                "differ from"
            }
        );
        ok &= same;
    }
    if range == (0..steps) {
        let c = compare(&trace, &got);
        println!(
            "{} PyTorch: within the trace's tolerances: {}",
            if c.passed() { "PASS" } else { "FAIL" },
            c.passed()
        );
        ok &= c.passed();
    }
    Ok(ok)
}

/// Rank 0's timing line: the wall time per optimizer call and the exchange's share.
fn report(
    ranks: usize,
    range: &std::ops::Range<usize>,
    k: usize,
    wall: Duration,
    t: &[ExchangeTiming],
) {
    let calls = (range.len() * k).max(1) as f64;
    let mean = |f: fn(&ExchangeTiming) -> Duration| {
        t.iter().map(|x| f(x).as_secs_f64()).sum::<f64>() / t.len().max(1) as f64 * 1e6
    };
    println!(
        "rank 0 of {ranks}: {} calls in {:.1} ms, {:.0} us per call; per exchange: read-back \
         {:.0} us, all-gather {:.0} us, write {:.0} us ({} exchanges)",
        range.len() * k,
        wall.as_secs_f64() * 1e3,
        wall.as_secs_f64() * 1e6 / calls,
        mean(|x| x.read_back),
        mean(|x| x.all_gather),
        mean(|x| x.write),
        t.len()
    );
}
