//! The CPU reference: a plain Rust f32 AdamW built from the kernel's CPU twin
//! ([`crate::twin`]), multi-threaded over large tensors.

use crate::config::{AdamWConfig, GradNormOrder, GroupConfig};
use crate::error::{Error, Result};
use crate::kernel::{Globals, CHUNK, FLAG_AMSGRAD, FLAG_MAXIMIZE};
use crate::plan::{cpu_chunks, CpuChunk};
use crate::precision::{check_elems, Elems, ElemsMut};
use crate::schedule::program::{plateau_lr_at, split, Region};
use crate::schedule::GroupCtx;
use crate::shard::{self, ShardLayout};
use crate::state::{OptimizerState, TensorState};
use crate::twin::{self, Control, Counters, StepGlobals, StepScalars};

/// A param group of the CPU reference: overrides and the lengths of its tensors.
#[derive(Clone, Debug, Default)]
pub struct CpuParamGroup {
    /// Overrides of the optimizer's lr and weight decay.
    pub config: GroupConfig,
    /// Number of elements of each tensor of the group.
    pub lens: Vec<usize>,
}

/// AdamW + schedule on the CPU, with the same per-element formulas as the kernel.
#[derive(Clone, Debug)]
pub struct CpuAdamW {
    config: AdamWConfig,
    groups: Vec<GroupConfig>,
    globals: Globals,
    group_params: Vec<(f32, f32)>,
    tensors: Vec<TensorState>,
    counters: Counters,
    last: Vec<StepScalars>,
    last_step: StepGlobals,
    /// The schedule region of the kernel's `meta` (programs, then state).
    region: Vec<u32>,
    control: Control,
    threads: usize,
    /// The kernel's chunk plan for one buffer pair (the order of the norm's partial sums).
    chunks: Vec<CpuChunk>,
    /// The norm summed as shards of a layout would ([`CpuAdamW::set_norm_shards`]).
    norm_shards: Option<Vec<NormShard>>,
}

/// One shard's part of the gradient norm: its pieces and their chunk plan.
#[derive(Clone, Debug)]
struct NormShard {
    pieces: Vec<shard::Piece>,
    chunks: Vec<CpuChunk>,
}

/// The kernel's `reduce` over `chunks` (a plan of [`cpu_chunks`]), the gradients of its
/// tensor `i` being `grads(i)`.
fn chunk_partials<'a>(
    chunks: &[CpuChunk],
    grads: impl Fn(usize) -> &'a [f32],
    inv: f32,
) -> Vec<((f32, f32), u32)> {
    chunks
        .iter()
        .map(|c| match c {
            CpuChunk::Run {
                tensor,
                start,
                count,
            } => twin::reduce_chunk(&grads(*tensor)[*start..start + count], inv),
            CpuChunk::Packed(members) => {
                let joined: Vec<f32> = members
                    .iter()
                    .flat_map(|&t| grads(t).iter().copied())
                    .collect();
                twin::reduce_chunk(&joined, inv)
            }
        })
        .collect()
}

/// Elements below which a tensor is updated on the calling thread.
const PARALLEL_MIN: usize = 1 << 16;

impl CpuAdamW {
    /// Creates the optimizer for `groups` of tensors, all moments zero.
    pub fn new(config: AdamWConfig, groups: Vec<CpuParamGroup>) -> Result<Self> {
        let configs: Vec<GroupConfig> = groups.iter().map(|g| g.config).collect();
        config.validate_groups(&configs)?;
        let ctxs: Vec<GroupCtx> = configs
            .iter()
            .enumerate()
            .map(|(i, g)| config.group_ctx(i, g))
            .collect();
        let region = Region::new(&config.schedule, &ctxs);
        let mut globals = Globals::new(&config, groups.len() as u32);
        globals.sched_stride = region.stride;
        globals.sched_state_at = region.state_at;
        let group_params = groups
            .iter()
            .map(|g| {
                let (lr, wd) = config.resolve(&g.config);
                (lr as f32, wd as f32)
            })
            .collect();
        let lens: Vec<usize> = groups.iter().flat_map(|g| g.lens.iter().copied()).collect();
        let chunks = cpu_chunks(&lens, CHUNK as usize);
        let init_scale = config.grad_scaler.map_or(1.0, |s| s.init_scale as f32);
        let tensors = groups
            .iter()
            .enumerate()
            .flat_map(|(gi, g)| {
                g.lens.iter().map(move |&n| TensorState {
                    group: gi,
                    exp_avg: vec![0.0; n],
                    exp_avg_sq: vec![0.0; n],
                    max_exp_avg_sq: config.amsgrad.then(|| vec![0.0; n]),
                    master: None,
                    ema: None,
                    grad_acc: None,
                })
            })
            .collect();
        Ok(Self {
            config,
            groups: groups.iter().map(|g| g.config).collect(),
            globals,
            group_params,
            tensors,
            counters: Counters::default(),
            last: vec![StepScalars::default(); groups.len()],
            last_step: StepGlobals::default(),
            region: region.words,
            control: Control {
                loss_scale: init_scale,
                ..Control::default()
            },
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            chunks,
            norm_shards: None,
        })
    }

    /// Builds an optimizer from a saved state (config, groups and moments).
    pub fn from_state(state: &OptimizerState) -> Result<Self> {
        let mut groups: Vec<CpuParamGroup> = state
            .groups
            .iter()
            .map(|&config| CpuParamGroup {
                config,
                lens: Vec::new(),
            })
            .collect();
        // Tensors are registered group by group, so a state's tensor order is group order.
        for t in &state.tensors {
            groups
                .get_mut(t.group)
                .ok_or_else(|| Error::CheckpointMismatch(format!("no group {}", t.group)))?
                .lens
                .push(t.exp_avg.len());
        }
        let mut opt = Self::new(state.config.clone(), groups)?;
        opt.load_state(state)?;
        Ok(opt)
    }

    /// Sums the gradient norm as the shards of `layout` do ([`crate::shard`]): each shard's
    /// pieces by their own chunk plan into one entry, the entries folded in rank order; the
    /// unsharded reference that ZeRO-1 shards on their devices equal bit for bit. `None`
    /// restores the unsharded sum. What a shard refuses is refused here too
    /// ([`Error::Unsupported`]): PyTorch's CPU norm order with clipping or loss scaling, which
    /// cannot be cut, and stochastic rounding.
    pub fn set_norm_shards(&mut self, layout: Option<&ShardLayout>) -> Result<()> {
        let Some(layout) = layout else {
            self.norm_shards = None;
            return Ok(());
        };
        shard::check_config(&self.config)?;
        let lens: Vec<u64> = self
            .tensors
            .iter()
            .map(|t| t.exp_avg.len() as u64)
            .collect();
        let shards = (0..layout.ranks())
            .map(|rank| {
                let pieces = layout.pieces(rank, &lens)?;
                let piece_lens: Vec<usize> = pieces.iter().map(|p| p.len as usize).collect();
                Ok(NormShard {
                    chunks: cpu_chunks(&piece_lens, CHUNK as usize),
                    pieces,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.norm_shards = Some(shards);
        Ok(())
    }

    /// Sets the number of threads used for large tensors (default: available parallelism).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    #[doc(hidden)]
    /// The kernel's uniform block this optimizer mirrors.
    pub fn globals(&self) -> &Globals {
        &self.globals
    }

    /// One optimizer step: `params[i]` and `grads[i]` belong to tensor `i` in registration
    /// order (group by group). For f32 parameters and gradients; other element types go
    /// through [`CpuAdamW::step_mixed`]. The vectorised, multi-threaded loop serves the plain
    /// f32 update; with an EMA or accumulation this runs `step_mixed`'s per-element loop
    /// (the same results, single-threaded).
    pub fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]]) -> Result<()> {
        if !self.config.precision.is_f32() || self.config.precision.master_weights {
            return Err(Error::InvalidArgument(format!(
                "the precision is {:?}: use step_mixed",
                self.config.precision
            )));
        }
        if self.config.needs_mixed_update() {
            let mut views: Vec<ElemsMut<'_>> =
                params.iter_mut().map(|p| ElemsMut::F32(p)).collect();
            let grads: Vec<Elems<'_>> = grads.iter().map(|g| Elems::F32(g)).collect();
            return self.step_mixed(&mut views, &grads);
        }
        self.check_shapes(
            params.iter().map(|p| p.len()),
            grads.iter().map(|g| g.len()),
        )?;
        let Some(step) = self.begin_step(grads)? else {
            return Ok(());
        };
        let amp = self.config.reduces_gradients();
        let effective: Vec<Vec<f32>>;
        let grads: &[&[f32]] = if amp {
            effective = grads
                .iter()
                .map(|g| g.iter().map(|&x| twin::effective_grad(&step, x)).collect())
                .collect();
            &effective.iter().map(Vec::as_slice).collect::<Vec<_>>()
        } else {
            grads
        };
        let g = &self.globals;
        let last = &self.last;
        let total: usize = params.iter().map(|p| p.len()).sum();
        let threads = if total >= PARALLEL_MIN {
            self.threads
        } else {
            1
        };
        // Every tensor, cut into pieces so that each thread gets a contiguous run of about
        // `total / threads` elements, whatever the number and sizes of the tensors: one
        // spawn per extra thread per step, not one per tensor.
        let per = total.div_ceil(threads).div_ceil(64) * 64;
        let mut buckets: Vec<Vec<Piece<'_>>> = (0..threads).map(|_| Vec::new()).collect();
        let (mut bucket, mut room) = (0usize, per);
        for ((p, grad), t) in params.iter_mut().zip(grads).zip(&mut self.tensors) {
            let s = &last[t.group];
            let (mut p, mut grad) = (&mut p[..], *grad);
            let (mut m, mut v) = (&mut t.exp_avg[..], &mut t.exp_avg_sq[..]);
            let mut vmax = t.max_exp_avg_sq.as_deref_mut();
            while !p.is_empty() {
                if room == 0 && bucket + 1 < threads {
                    bucket += 1;
                    room = per;
                }
                let n = if bucket + 1 < threads {
                    p.len().min(room)
                } else {
                    p.len()
                };
                let (ph, pt) = p.split_at_mut(n);
                let (gh, gt) = grad.split_at(n);
                let (mh, mt) = m.split_at_mut(n);
                let (vh, vt) = v.split_at_mut(n);
                let (xh, xt) = match vmax {
                    Some(x) => {
                        let (a, b) = x.split_at_mut(n);
                        (Some(a), Some(b))
                    }
                    None => (None, None),
                };
                buckets[bucket].push(Piece {
                    s,
                    p: ph,
                    grad: gh,
                    m: mh,
                    v: vh,
                    vmax: xh,
                });
                (p, grad, m, v, vmax) = (pt, gt, mt, vt, xt);
                room = room.saturating_sub(n);
            }
        }
        let run = |pieces: Vec<Piece<'_>>| {
            for x in pieces {
                update_slice(g, x.s, x.p, x.grad, x.m, x.v, x.vmax);
            }
        };
        let mut buckets = buckets.into_iter();
        let mine = buckets.next().unwrap_or_default();
        if threads > 1 {
            std::thread::scope(|scope| {
                for b in buckets.by_ref() {
                    if !b.is_empty() {
                        scope.spawn(|| run(b));
                    }
                }
                run(mine);
            });
        } else {
            run(mine);
        }
        Ok(())
    }

    /// One optimizer step on tensors of any [`crate::Precision`]: `params[i]` and `grads[i]`
    /// belong to tensor `i` in registration order, each in the type the precision says
    /// (16-bit types as their bit patterns). Each element is widened, updated in f32 with
    /// the kernel's formulas and rounded once per store (nearest even). With master
    /// weights, the first step takes them from the parameters unless
    /// [`CpuAdamW::set_master_weights`] set them.
    pub fn step_mixed(&mut self, params: &mut [ElemsMut<'_>], grads: &[Elems<'_>]) -> Result<()> {
        let prec = self.config.precision;
        self.check_shapes(
            params.iter().map(|p| p.len()),
            grads.iter().map(|g| g.len()),
        )?;
        check_elems(&prec, params, grads)?;
        let mut wide: Vec<Vec<f32>> = grads.iter().map(|g| g.widen(prec.grad)).collect();
        let k = self.config.accumulate;
        if k > 1 {
            // `accumulate` then the prologue's micro-batch counter, as the kernel does.
            let (first, ty) = (self.counters.micro == 0, self.config.grad_acc_dtype());
            for (t, g) in self.tensors.iter_mut().zip(&wide) {
                let acc = t.grad_acc.get_or_insert_with(|| vec![0.0; g.len()]);
                for (a, &x) in acc.iter_mut().zip(g) {
                    *a = twin::accumulate_next(*a, x, first, ty);
                }
            }
            if self.counters.micro + 1 < k {
                self.counters.micro += 1;
                return Ok(());
            }
            self.counters.micro = 0;
            for (t, w) in self.tensors.iter().zip(wide.iter_mut()) {
                w.clone_from(t.grad_acc.as_ref().expect("accumulated above"));
            }
        }
        let wide_refs: Vec<&[f32]> = wide.iter().map(Vec::as_slice).collect();
        for (t, p) in self.tensors.iter_mut().zip(params.iter()) {
            let widened = || {
                (0..p.len())
                    .map(|i| p.get(i, prec.param))
                    .collect::<Vec<f32>>()
            };
            if prec.master_weights && t.master.is_none() {
                t.master = Some(widened());
            }
            if self.config.ema_decay.is_some() && t.ema.is_none() {
                t.ema = Some(t.master.clone().unwrap_or_else(widened));
            }
        }
        let Some(step) = self.begin_step(&wide_refs)? else {
            return Ok(());
        };
        let amp = self.config.reduces_gradients();
        let state = prec.state_dtype();
        let (ema_ty, first) = (self.config.ema_dtype(), self.counters.adam == 1);
        let g = &self.globals;
        let sr = self.config.stochastic_rounding;
        let mut index = 0u32; // the element's index in registration order, mod 2^32
        for ((p, grad), t) in params.iter_mut().zip(&wide).zip(&mut self.tensors) {
            let s = &self.last[t.group];
            for (i, &gr) in grad.iter().enumerate() {
                let gr = if amp {
                    twin::effective_grad_rounded(g, &step, gr)
                } else {
                    gr
                };
                let mut x = match &t.master {
                    Some(master) => master[i],
                    None => p.get(i, prec.param),
                };
                twin::update_element(
                    g,
                    s,
                    &mut x,
                    gr,
                    &mut t.exp_avg[i],
                    &mut t.exp_avg_sq[i],
                    t.max_exp_avg_sq.as_mut().map(|v| &mut v[i]),
                );
                // The moments are held widened: their rounding is the 16-bit store.
                t.exp_avg[i] = state.round(t.exp_avg[i]);
                t.exp_avg_sq[i] = state.round(t.exp_avg_sq[i]);
                if let Some(v) = t.max_exp_avg_sq.as_mut() {
                    v[i] = state.round(v[i]);
                }
                if let Some(master) = t.master.as_mut() {
                    master[i] = x;
                }
                // The parameter as stored (`param_bits` in the kernel).
                let stored = match (sr, &mut *p) {
                    (Some(seed), ElemsMut::Bits16(bits)) => {
                        let r = twin::sr_random(seed, index, self.counters.adam);
                        bits[i] = twin::narrow16_stochastic(x, prec.param.code(), r) as u16;
                        prec.param.widen(bits[i])
                    }
                    _ => {
                        p.set(i, x, prec.param);
                        p.get(i, prec.param)
                    }
                };
                index = index.wrapping_add(1);
                if let Some(ema) = t.ema.as_mut() {
                    // The model's weight: the master, or the parameter as stored.
                    let w = if t.master.is_some() { x } else { stored };
                    ema[i] = ema_ty.round(twin::ema_next(g, ema[i], w, first));
                }
            }
        }
        Ok(())
    }

    /// Sets the f32 master weights of every tensor (registration order), for an optimizer
    /// with [`crate::Precision::master_weights`] whose f32 weights are not the widened 16-bit
    /// parameters (a model initialised or loaded in f32). The weight EMA, if any, starts
    /// from them too: call it before the first step.
    pub fn set_master_weights(&mut self, values: &[&[f32]]) -> Result<()> {
        if !self.config.precision.master_weights {
            return Err(Error::InvalidArgument(
                "this optimizer keeps no master weights".into(),
            ));
        }
        self.check_shapes(
            values.iter().map(|v| v.len()),
            values.iter().map(|v| v.len()),
        )?;
        let ema = self.config.ema_decay.is_some();
        for (t, v) in self.tensors.iter_mut().zip(values) {
            t.master = Some(v.to_vec());
            if ema {
                t.ema = Some(v.to_vec());
            }
        }
        Ok(())
    }

    /// Checks the number and lengths of the tensors of a step and that the counters can
    /// advance.
    fn check_shapes(
        &self,
        params: impl ExactSizeIterator<Item = usize>,
        grads: impl ExactSizeIterator<Item = usize>,
    ) -> Result<()> {
        if params.len() != self.tensors.len() || grads.len() != self.tensors.len() {
            return Err(Error::ShapeMismatch(format!(
                "{} tensors registered, got {} params and {} grads",
                self.tensors.len(),
                params.len(),
                grads.len()
            )));
        }
        for (i, ((p, g), t)) in params.zip(grads).zip(&self.tensors).enumerate() {
            if p != t.exp_avg.len() || g != t.exp_avg.len() {
                return Err(Error::ShapeMismatch(format!(
                    "tensor {i}: {} elements registered, got {p} params and {g} grads",
                    t.exp_avg.len(),
                )));
            }
        }
        if self.counters.at_limit() {
            return Err(Error::StepLimit(format!(
                "the counters ({}, {}) are at 2^32 - 1",
                self.counters.sched, self.counters.adam
            )));
        }
        Ok(())
    }

    /// The kernel's `reduce` (with loss scaling or clipping) and `prologue`: the step's
    /// scalars, or `None` for a skipped step (which only advanced the schedule).
    fn begin_step(&mut self, grads: &[&[f32]]) -> Result<Option<StepGlobals>> {
        // Loss scaling and clipping: the kernel's `reduce` per chunk of each tensor, then
        // its prologue. A skipped step only advances the schedule.
        let amp = self.config.reduces_gradients();
        let reduced = if amp {
            let inv = twin::grad_multiplier(&self.globals, self.control.loss_scale);
            if self.config.grad_norm_order == GradNormOrder::TorchCpu {
                let norms: Vec<(f32, u32)> = grads
                    .iter()
                    .map(|g| twin::tensor_norm_torch(&self.globals, g, inv))
                    .collect();
                twin::final_norm(&self.globals, &[], &norms)
            } else if let Some(shards) = &self.norm_shards {
                // Each shard's chunks folded into its entry, the entries in rank order.
                let entries: Vec<((f32, f32), u32)> = shards
                    .iter()
                    .map(|s| {
                        let piece = |i: usize| {
                            let p = &s.pieces[i];
                            &grads[p.tensor][p.start as usize..(p.start + p.len) as usize]
                        };
                        twin::reduce_partials(&chunk_partials(&s.chunks, piece, inv))
                    })
                    .collect();
                twin::norm_of(twin::fold_shards(&entries))
            } else {
                // Chunk by chunk in the kernel's plan (short tensors packed), as its `reduce`.
                let partials = chunk_partials(&self.chunks, |t| grads[t], inv);
                twin::final_norm(&self.globals, &partials, &[])
            }
        } else {
            (0.0, 0)
        };
        let (last, step) = twin::prologue_amp(
            &self.globals,
            &mut self.region,
            &self.group_params,
            &mut self.counters,
            reduced,
            &mut self.control,
        );
        self.last = last;
        self.last_step = step;
        Ok((!step.skipped).then_some(step))
    }

    /// The learning rate each group used at the last step.
    pub fn lr(&self) -> Vec<f32> {
        self.last.iter().map(|s| s.lr).collect()
    }

    /// The step counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Sets the AMP loss scale (used with [`AdamWConfig::loss_scaling`]).
    pub fn set_loss_scale(&mut self, scale: f32) {
        self.control.loss_scale = scale;
    }

    /// The AMP loss scale (with a GradScaler: the next step's).
    pub fn loss_scale(&self) -> f32 {
        self.control.loss_scale
    }

    /// The loss scale the last step used (loss scaling or clipping on).
    pub fn last_loss_scale(&self) -> f32 {
        self.control.scale_used
    }

    /// The GradScaler's growth tracker: consecutive finite steps since the scale last changed.
    pub fn growth_tracker(&self) -> u32 {
        self.control.growth_tracker
    }

    /// Sets the metric ReduceLROnPlateau reads at the next epoch boundary (write epoch `j`'s
    /// metric before the first step of epoch `j + 1`).
    pub fn set_metric(&mut self, metric: f32) {
        self.control.metric = metric;
    }

    /// Sets the multiplier applied to every group's scheduled lr (1 by default).
    pub fn set_lr_scale(&mut self, scale: f32) -> Result<()> {
        check_lr_scale(scale)?;
        self.control.lr_scale = scale;
        Ok(())
    }

    /// Sets group `group`'s base lr from the next step on: the lr the schedule scales
    /// (for a constant schedule, PyTorch's `param_group["lr"] = lr`; for ReduceLROnPlateau
    /// the group's current lr, which later cuts start from; onecycle and cyclic, whose bounds
    /// are their own fields, ignore it as they ignore the group's lr).
    pub fn set_base_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        self.groups[group] = self
            .config
            .changed_group(&self.groups, group, |gc| gc.lr = Some(lr))?;
        self.group_params[group].0 = lr as f32;
        if self.config.schedule.needs_metric() {
            let at = plateau_lr_at(self.globals.sched_state_at, group);
            let (hi, lo) = split(lr);
            self.region[at] = hi.to_bits();
            self.region[at + 1] = lo.to_bits();
        }
        Ok(())
    }

    /// Sets group `group`'s weight decay from the next step on.
    pub fn set_weight_decay(&mut self, group: usize, weight_decay: f64) -> Result<()> {
        self.groups[group] = self.config.changed_group(&self.groups, group, |gc| {
            gc.weight_decay = Some(weight_decay)
        })?;
        self.group_params[group].1 = weight_decay as f32;
        Ok(())
    }

    /// AMP and clipping results of the last step: skipped, found_inf, gradient norm.
    pub fn last_step(&self) -> StepGlobals {
        self.last_step
    }

    /// beta1 each group used at the last step (the schedule's where it cycles momentum).
    pub fn beta1(&self) -> Vec<f32> {
        self.last.iter().map(|s| s.beta1).collect()
    }

    /// A copy of the whole state.
    pub fn state(&self) -> OptimizerState {
        OptimizerState {
            config: self.config.clone(),
            groups: self.groups.clone(),
            counters: self.counters,
            loss_scale: self.control.loss_scale,
            schedule_state: self.region[self.globals.sched_state_at as usize..].to_vec(),
            metric: self.control.metric,
            lr_scale: self.control.lr_scale,
            growth_tracker: self.control.growth_tracker,
            tensors: self
                .tensors
                .iter()
                .map(|t| TensorState {
                    // Mid-step only: the accumulator is meaningless at a step boundary.
                    grad_acc: t.grad_acc.clone().filter(|_| self.counters.micro > 0),
                    ..t.clone()
                })
                .collect(),
            shard: None,
        }
    }

    /// Restores a state, the groups' lr and weight decay included (as PyTorch's
    /// `load_state_dict`); on a mismatch nothing is changed.
    pub fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        let shape: Vec<(usize, usize)> = self
            .tensors
            .iter()
            .map(|t| (t.group, t.exp_avg.len()))
            .collect();
        let state_at = self.globals.sched_state_at as usize;
        state.check_matches(
            &self.config,
            &self.groups,
            &shape,
            self.region.len() - state_at,
        )?;
        for (i, g) in state.groups.iter().enumerate() {
            self.config.validate_group_at(i, g)?;
        }
        self.tensors = state.tensors.clone();
        self.counters = state.counters;
        self.control = Control {
            loss_scale: state.loss_scale,
            metric: state.metric,
            lr_scale: state.lr_scale,
            growth_tracker: state.growth_tracker,
            scale_used: self.control.scale_used,
        };
        self.region[state_at..].copy_from_slice(&state.schedule_state);
        self.groups = state.groups.clone();
        self.group_params = self
            .groups
            .iter()
            .map(|g| {
                let (lr, wd) = self.config.resolve(g);
                (lr as f32, wd as f32)
            })
            .collect();
        Ok(())
    }

    /// Saves a checkpoint (the same format as the GPU optimizer's).
    pub fn save_checkpoint(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        self.state().save(path)
    }

    /// Loads a checkpoint saved by either backend.
    pub fn load_checkpoint(&mut self, path: impl AsRef<std::path::Path>) -> Result<()> {
        self.load_state(&OptimizerState::load(path)?)
    }
}

/// Checks an lr multiplier: finite and >= 0.
pub(crate) fn check_lr_scale(scale: f32) -> Result<()> {
    if scale.is_finite() && scale >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "the lr scale must be finite and >= 0, got {scale}"
        )))
    }
}

/// A contiguous run of one tensor's elements, updated by one thread.
struct Piece<'a> {
    s: &'a StepScalars,
    p: &'a mut [f32],
    grad: &'a [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    vmax: Option<&'a mut [f32]>,
}

/// Updates one run of elements with [`twin::update_element`]'s formulas: on x86_64 the loop is
/// compiled again for AVX-512F and for AVX2 (each with FMA) and the best the CPU has is picked
/// at run time. Only the instruction
/// set changes (Rust never contracts `a * b + c` into an fma on its own, and every f32
/// operation rounds the same in a vector lane), so the results are bit for bit the twin's.
fn update_slice(
    g: &Globals,
    s: &StepScalars,
    p: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    vmax: Option<&mut [f32]>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX-512F and FMA, checked just above.
            unsafe { update_slice_avx512(g, s, p, grad, m, v, vmax) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            unsafe { update_slice_avx2(g, s, p, grad, m, v, vmax) };
            return;
        }
    }
    update_slice_generic::<false>(g, s, p, grad, m, v, vmax);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn update_slice_avx512(
    g: &Globals,
    s: &StepScalars,
    p: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    vmax: Option<&mut [f32]>,
) {
    update_slice_generic::<true>(g, s, p, grad, m, v, vmax);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn update_slice_avx2(
    g: &Globals,
    s: &StepScalars,
    p: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    vmax: Option<&mut [f32]>,
) {
    update_slice_generic::<true>(g, s, p, grad, m, v, vmax);
}

/// Dispatches on the loop-invariant flags so that each loop body is branch-free.
/// `HW_FMA`: the target has a hardware fma (see [`update_run`]).
#[inline(always)]
fn update_slice_generic<const HW_FMA: bool>(
    g: &Globals,
    s: &StepScalars,
    p: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    vmax: Option<&mut [f32]>,
) {
    let maximize = g.flags & FLAG_MAXIMIZE != 0;
    let small = s.one_minus_beta1 < 0.5;
    let vmax = vmax.filter(|_| g.flags & FLAG_AMSGRAD != 0);
    // The hardware fma equals the emulated one for a coefficient in this range and the
    // operands `fma_fast_ok` checks (see there).
    let coeff = if small {
        s.one_minus_beta1
    } else {
        s.lerp_big_coeff
    };
    let fast = HW_FMA && (FMA_COEFF_MIN..=FMA_COEFF_MAX).contains(&coeff.abs());
    macro_rules! go {
        ($ams:literal, $max:literal, $small:literal, $x:expr) => {
            if fast {
                update_run::<$ams, $max, $small, HW_FMA>(g, s, p, grad, m, v, $x)
            } else {
                update_run::<$ams, $max, $small, false>(g, s, p, grad, m, v, $x)
            }
        };
    }
    match (vmax, maximize, small) {
        (Some(x), false, true) => go!(true, false, true, x),
        (Some(x), false, false) => go!(true, false, false, x),
        (Some(x), true, true) => go!(true, true, true, x),
        (Some(x), true, false) => go!(true, true, false, x),
        (None, false, true) => go!(false, false, true, &mut []),
        (None, false, false) => go!(false, false, false, &mut []),
        (None, true, true) => go!(false, true, true, &mut []),
        (None, true, false) => go!(false, true, false, &mut []),
    }
}

/// Range of `|coeff|` (the lerp weight) for which the hardware fma may stand in for
/// [`twin::fma_exact`].
const FMA_COEFF_MIN: f32 = 1.0 / 256.0;
const FMA_COEFF_MAX: f32 = 4.0;
/// Smallest `|b|`: with `|coeff| >= 2^-8`, every partial product of Dekker's `two_prod` has
/// its lowest bit at or above `2^(-8 - 90 - 46) = 2^-144`, so it is exact.
const FMA_B_MIN: f32 = 8.077_936e-28; // 2^-90
/// Largest `|b|` and `|c|`: nothing in the emulation comes near overflow.
const FMA_ABS_MAX: f32 = 1.267_650_6e30; // 2^100
/// Smallest `|result|`: the result and the emulation's last additions stay normal.
const FMA_RESULT_MIN: f32 = 7.888_609e-31; // 2^-100

/// Whether `a.mul_add(b, c) == twin::fma_exact(a, b, c)` is guaranteed, for `|a|` in
/// `FMA_COEFF_MIN..=FMA_COEFF_MAX` and `r = a.mul_add(b, c)`: the emulation (Dekker's exact
/// product, then Boldo and Melquiond's sum with rounding to odd) is correctly rounded
/// wherever no partial product underflows and nothing overflows or goes subnormal, which
/// these bounds ensure. Zeros, subnormals, infinities and NaN take the emulated path.
#[inline(always)]
fn fma_fast_ok(b: f32, c: f32, r: f32) -> bool {
    let (b, c, r) = (b.abs(), c.abs(), r.abs());
    // `&`, not `&&`: no branches, so the check vectorizes.
    (FMA_B_MIN..=FMA_ABS_MAX).contains(&b) & (c <= FMA_ABS_MAX) & (r >= FMA_RESULT_MIN)
}

/// Elements per block of [`update_run`]'s fast path: one AVX-512 vector, two AVX2 ones.
const BLOCK: usize = 16;

/// [`twin::update_element`] over a run, with its flags as constants. Keep the two in step:
/// a test compares them bit for bit. With `HW_FMA`, each block of [`BLOCK`] elements first
/// tries the hardware fma and keeps it only when [`fma_fast_ok`] holds for every lane; else
/// the block is recomputed with the emulated fma.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn update_run<const AMSGRAD: bool, const MAXIMIZE: bool, const SMALL: bool, const HW_FMA: bool>(
    g: &Globals,
    s: &StepScalars,
    p: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    vmax: &mut [f32],
) {
    let n = p.len();
    let (grad, m, v) = (&grad[..n], &mut m[..n], &mut v[..n]);
    let vmax = if AMSGRAD { &mut vmax[..n] } else { vmax };
    let coeff = if SMALL {
        s.one_minus_beta1
    } else {
        s.lerp_big_coeff
    };
    let k = Consts {
        coeff,
        beta2: g.beta2,
        omb2: g.one_minus_beta2,
        eps: g.eps,
        decay: s.decay,
        step_size: s.step_size,
        bc2_sqrt: s.bc2_sqrt,
    };
    let mut i = 0;
    if HW_FMA {
        // Fixed-size blocks: no bounds checks, so each block compiles to vector code.
        let mut xs = vmax.chunks_exact_mut(BLOCK);
        for (((pc, gc), mc), vc) in p
            .chunks_exact_mut(BLOCK)
            .zip(grad.chunks_exact(BLOCK))
            .zip(m.chunks_exact_mut(BLOCK))
            .zip(v.chunks_exact_mut(BLOCK))
        {
            let x = if AMSGRAD {
                xs.next().and_then(|x| x.try_into().ok())
            } else {
                None
            };
            if let (Ok(pc), Ok(gc), Ok(mc), Ok(vc)) =
                (pc.try_into(), gc.try_into(), mc.try_into(), vc.try_into())
            {
                update_block::<MAXIMIZE, SMALL>(&k, pc, gc, mc, vc, x);
            }
        }
        i = n / BLOCK * BLOCK;
    }
    for i in i..n {
        let gr = if MAXIMIZE { -grad[i] } else { grad[i] };
        let m_old = m[i];
        let base = if SMALL { m_old } else { gr };
        let mi = fma_exact(coeff, gr - m_old, base);
        let x = if AMSGRAD { Some(&mut vmax[i]) } else { None };
        finish::<MAXIMIZE>(&k, &mut p[i], grad[i], mi, &mut m[i], &mut v[i], x);
    }
}

/// One block of [`update_run`]'s fast path: the hardware fma for the new `exp_avg` where
/// [`fma_fast_ok`] holds in every lane, else the emulated one for the whole block.
#[inline(always)]
fn update_block<const MAXIMIZE: bool, const SMALL: bool>(
    k: &Consts,
    p: &mut [f32; BLOCK],
    grad: &[f32; BLOCK],
    m: &mut [f32; BLOCK],
    v: &mut [f32; BLOCK],
    vmax: Option<&mut [f32; BLOCK]>,
) {
    let mut gr = [0f32; BLOCK];
    let mut b = [0f32; BLOCK];
    let mut base = [0f32; BLOCK];
    let mut new_m = [0f32; BLOCK];
    let mut ok = true;
    for j in 0..BLOCK {
        gr[j] = if MAXIMIZE { -grad[j] } else { grad[j] };
        b[j] = gr[j] - m[j];
        base[j] = if SMALL { m[j] } else { gr[j] };
        new_m[j] = k.coeff.mul_add(b[j], base[j]);
        ok &= fma_fast_ok(b[j], base[j], new_m[j]);
    }
    if !ok {
        for j in 0..BLOCK {
            new_m[j] = fma_exact(k.coeff, b[j], base[j]);
        }
    }
    // AMSGrad in one pass per lane: a separate `max` pass over a stack array of the new
    // `exp_avg_sq` compiled to shuffles and scalar stores (the step was ~1.4x slower).
    match vmax {
        Some(x) => {
            for j in 0..BLOCK {
                let v_new = v[j] * k.beta2 + k.omb2 * gr[j] * gr[j];
                v[j] = v_new;
                let v_hat = x[j].max(v_new);
                x[j] = v_hat;
                let denom = v_hat.sqrt() / k.bc2_sqrt + k.eps;
                p[j] = p[j] * k.decay - k.step_size * (new_m[j] / denom);
                m[j] = new_m[j];
            }
        }
        None => {
            for j in 0..BLOCK {
                v[j] = v[j] * k.beta2 + k.omb2 * gr[j] * gr[j];
            }
            for j in 0..BLOCK {
                let denom = v[j].sqrt() / k.bc2_sqrt + k.eps;
                p[j] = p[j] * k.decay - k.step_size * (new_m[j] / denom);
                m[j] = new_m[j];
            }
        }
    }
}

/// The loop-invariant scalars of [`update_run`].
struct Consts {
    coeff: f32,
    beta2: f32,
    omb2: f32,
    eps: f32,
    decay: f32,
    step_size: f32,
    bc2_sqrt: f32,
}

/// The rest of [`twin::update_element`] once the new `exp_avg` is known.
#[inline(always)]
fn finish<const MAXIMIZE: bool>(
    k: &Consts,
    p: &mut f32,
    grad: f32,
    mi: f32,
    m: &mut f32,
    v: &mut f32,
    vmax: Option<&mut f32>,
) {
    let gr = if MAXIMIZE { -grad } else { grad };
    let pd = *p * k.decay;
    let vi = *v * k.beta2 + k.omb2 * gr * gr;
    let mut v_hat = vi;
    if let Some(x) = vmax {
        v_hat = x.max(vi);
        *x = v_hat;
    }
    let denom = v_hat.sqrt() / k.bc2_sqrt + k.eps;
    *p = pd - k.step_size * (mi / denom);
    *m = mi;
    *v = vi;
}

/// [`twin::fma_exact`] with its rounding to odd written without a branch, so it vectorizes;
/// operands near the top of the range, infinities and NaN (where the error-free
/// transformations would overflow) and zero factors (the sign of a zero result) go to the
/// twin's own path.
#[inline(always)]
fn fma_exact(a: f32, b: f32, c: f32) -> f32 {
    let (uh, ul) = twin::two_prod(a, b);
    let (th, tl) = twin::two_sum(c, uh);
    let core = th + add_round_odd(tl, ul);
    let exp = |x: f32| ((x.to_bits() >> 23) & 0xff) as i32 - 127;
    let (ea, eb, ec) = (exp(a), exp(b), exp(c));
    if (ea < 124) & (eb < 124) & (ea + eb < 124) & (ec < 124) & (a != 0.0) & (b != 0.0) {
        core
    } else {
        twin::fma_exact(a, b, c)
    }
}

/// [`twin::add_round_odd`] as a select.
#[inline(always)]
fn add_round_odd(a: f32, b: f32) -> f32 {
    let (s, e) = twin::two_sum(a, b);
    let bits = s.to_bits();
    let away = (e > 0.0) == (s > 0.0);
    let moved = f32::from_bits(if away {
        bits.wrapping_add(1)
    } else {
        bits.wrapping_sub(1)
    });
    if e == 0.0 || bits & 1 == 1 {
        s
    } else {
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Rust leaves NaN payloads unspecified: two NaNs count as equal, every other value must
    // match bit for bit.

    /// Inputs that exercise the emulated fma's corners: zeros of both signs, subnormals,
    /// huge values, infinities and NaN, besides ordinary random values.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let special = [
            0.0,
            -0.0,
            1e-45,
            -1e-45,
            1e-39,
            -3e-38,
            1e-30,
            3e38,
            -3e38,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1.0,
            -1.0,
        ];
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 7 == 3 {
                    special[(x % special.len() as u64) as usize]
                } else {
                    // Random bits: every exponent, sign and mantissa.
                    f32::from_bits((x >> 16) as u32)
                }
            })
            .collect()
    }

    #[test]
    fn hardware_fma_equals_the_emulation_where_allowed() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut checked = 0u32;
        for &a in &[0.1f32, -0.9, 0.3, -0.7, 1.0 / 256.0, 4.0, 0.5, -0.5] {
            for _ in 0..400_000 {
                let r = rnd();
                // Magnitudes over the whole allowed range, and near-cancelling pairs.
                let b = f32::from_bits(
                    (r as u32 & 0x807f_ffff) | ((((r >> 32) % 200) as u32 + 27) << 23),
                );
                let c = if r >> 60 & 1 == 0 {
                    f32::from_bits(
                        (rnd() as u32 & 0x807f_ffff) | ((((r >> 40) % 200) as u32 + 27) << 23),
                    )
                } else {
                    -(a * b) * (1.0 + (rnd() % 64) as f32 * f32::EPSILON)
                };
                let fast = a.mul_add(b, c);
                if fma_fast_ok(b, c, fast) {
                    checked += 1;
                    let slow = twin::fma_exact(a, b, c);
                    assert_eq!(fast.to_bits(), slow.to_bits(), "fma({a:e}, {b:e}, {c:e})");
                }
            }
        }
        assert!(checked > 1_000_000);
    }

    #[test]
    fn vectorized_runs_match_the_twin_bit_for_bit() {
        let n = 4099;
        for (case, (amsgrad, maximize, beta1)) in [
            (false, false, 0.9),
            (true, false, 0.9),
            (false, true, 0.9),
            (true, true, 0.3),
            (false, false, 0.3),
        ]
        .into_iter()
        .enumerate()
        {
            let config = AdamWConfig {
                amsgrad,
                maximize,
                betas: (beta1, 0.999),
                ..AdamWConfig::default()
            };
            let region = Region::new(&config.schedule, &[GroupCtx::single(1e-3)]);
            let mut g = Globals::new(&config, 1);
            g.sched_stride = region.stride;
            let mut counters = Counters::default();
            let mut words = region.words;
            let s = twin::prologue(&g, &mut words, &[(1e-3, 1e-2)], &mut counters)[0];
            for seed in 0..4u64 {
                let seed = seed + 10 * case as u64;
                // Odd seeds: ordinary values, which take the hardware fma; even seeds: every
                // bit pattern, which mostly takes the emulation.
                let values = |n: usize, seed: u64| -> Vec<f32> {
                    let v = values(n, seed);
                    if seed.is_multiple_of(2) {
                        return v;
                    }
                    v.iter()
                        .enumerate()
                        .map(|(i, x)| {
                            ((x.to_bits() >> 9) as f32 / (1u32 << 23) as f32 - 0.5)
                                * [1e-3, 0.02, 1.0][i % 3]
                        })
                        .collect()
                };
                let grad = values(n, seed);
                let (mut p1, mut m1, mut v1, mut x1) = (
                    values(n, seed + 100),
                    values(n, seed + 200),
                    values(n, seed + 300)
                        .iter()
                        .map(|v| v.abs())
                        .collect::<Vec<_>>(),
                    values(n, seed + 400)
                        .iter()
                        .map(|v| v.abs())
                        .collect::<Vec<_>>(),
                );
                let inputs = (p1.clone(), m1.clone(), v1.clone(), x1.clone());
                for i in 0..n {
                    let x = amsgrad.then_some(&mut x1[i]);
                    twin::update_element(&g, &s, &mut p1[i], grad[i], &mut m1[i], &mut v1[i], x);
                }
                // Every instruction set this CPU has, not only the one `update_slice` picks.
                for (name, run) in slice_variants() {
                    let (mut p2, mut m2, mut v2, mut x2) = inputs.clone();
                    let x = amsgrad.then_some(&mut x2[..]);
                    run(&g, &s, &mut p2, &grad, &mut m2, &mut v2, x);
                    for (what, a, b) in [
                        ("param", &p1, &p2),
                        ("exp_avg", &m1, &m2),
                        ("exp_avg_sq", &v1, &v2),
                        ("max", &x1, &x2),
                    ] {
                        for i in 0..n {
                            assert!(
                                a[i].to_bits() == b[i].to_bits()
                                    || (a[i].is_nan() && b[i].is_nan()),
                                "case {case} seed {seed} {name}: {what}[{i}]: twin {} vectorized {}",
                                a[i],
                                b[i]
                            );
                        }
                    }
                }
            }
        }
    }

    type SliceFn =
        fn(&Globals, &StepScalars, &mut [f32], &[f32], &mut [f32], &mut [f32], Option<&mut [f32]>);

    /// The per-element loop compiled for each instruction set this CPU supports.
    fn slice_variants() -> Vec<(&'static str, SliceFn)> {
        let mut v: Vec<(&'static str, SliceFn)> = vec![("generic", |g, s, p, gr, m, vv, x| {
            update_slice_generic::<false>(g, s, p, gr, m, vv, x)
        })];
        #[cfg(target_arch = "x86_64")]
        {
            let fma = std::arch::is_x86_feature_detected!("fma");
            if fma && std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 and FMA are present, checked just above.
                v.push(("avx2", |g, s, p, gr, m, vv, x| unsafe {
                    update_slice_avx2(g, s, p, gr, m, vv, x)
                }));
            }
            if fma && std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F and FMA are present, checked just above.
                v.push(("avx512", |g, s, p, gr, m, vv, x| unsafe {
                    update_slice_avx512(g, s, p, gr, m, vv, x)
                }));
            }
        }
        v
    }

    #[test]
    fn threaded_steps_equal_single_threaded_ones() {
        let lens = [3, 70_000, 1, 64, 200_000, 5, 129];
        let config = AdamWConfig {
            amsgrad: true,
            ..AdamWConfig::default()
        };
        let groups = vec![
            CpuParamGroup {
                config: GroupConfig::default(),
                lens: lens[..3].to_vec(),
            },
            CpuParamGroup {
                config: GroupConfig {
                    lr: Some(1e-2),
                    weight_decay: None,
                },
                lens: lens[3..].to_vec(),
            },
        ];
        let mut a = CpuAdamW::new(config.clone(), groups.clone()).unwrap();
        let mut b = CpuAdamW::new(config, groups).unwrap();
        a.set_threads(1);
        b.set_threads(3);
        let mut pa: Vec<Vec<f32>> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| values(n, i as u64))
            .collect();
        let mut pb = pa.clone();
        for step in 0..3u64 {
            let gs: Vec<Vec<f32>> = lens
                .iter()
                .enumerate()
                .map(|(i, &n)| values(n, 1000 * step + i as u64))
                .collect();
            let gr: Vec<&[f32]> = gs.iter().map(|g| &g[..]).collect();
            let mut va: Vec<&mut [f32]> = pa.iter_mut().map(|p| &mut p[..]).collect();
            a.step(&mut va, &gr).unwrap();
            let mut vb: Vec<&mut [f32]> = pb.iter_mut().map(|p| &mut p[..]).collect();
            b.step(&mut vb, &gr).unwrap();
        }
        let bits = |v: &Vec<Vec<f32>>| -> Vec<Vec<u32>> {
            v.iter()
                .map(|t| t.iter().map(|x| x.to_bits()).collect())
                .collect()
        };
        assert_eq!(bits(&pa), bits(&pb));
        let (sa, sb) = (a.state(), b.state());
        for (x, y) in sa.tensors.iter().zip(&sb.tensors) {
            let b = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(b(&x.exp_avg), b(&y.exp_avg));
            assert_eq!(b(&x.exp_avg_sq), b(&y.exp_avg_sq));
        }
    }
}
