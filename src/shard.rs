//! ZeRO-1 sharding: each rank's optimizer updates one contiguous range of the flattened
//! parameter space and keeps state for that range only; the step's two global quantities
//! (the gradient norm, the found-inf flag) are combined through the engine's collective.
//!
//! The flattened space is every registered tensor, group by group in registration order, end
//! to end. A [`ShardLayout`] cuts it anywhere (inside a tensor, or inside a 32-bit word of
//! 16-bit elements): rank `r` holds elements `bounds[r]..bounds[r + 1]`, as [`Piece`]s of the
//! tensors they belong to, registered with [`crate::GpuAdamW::shard`].
//!
//! # The rule that makes N shards bit-identical to one process
//! Every element's update depends on its own parameter, gradient and state and on the step's
//! scalars; of those only the clipping coefficient (through the norm) and the skip (through
//! found-inf) are global. Found-inf is an OR, independent of order. The norm's sum of squares
//! is an unevaluated `hi + lo` pair whose additions round, so its value depends on the order:
//! 1. each rank sums its own pieces chunk by chunk as an unsharded optimizer over those
//!    pieces would (its chunk plan, each chunk a 256-lane tree), and folds the chunk partials
//!    as the unsharded prologue does, into one `(hi, lo, flags)` entry;
//! 2. the engine gathers the entries of all ranks, in rank order, into every rank's
//!    exchange area ([`crate::ShardExchange`]): an all-gather, not an all-reduce, so no
//!    arithmetic happens in the collective and its timing cannot change a bit;
//! 3. every rank's prologue folds the gathered entries left to right from zero
//!    ([`crate::twin::fold_shards`]) and takes the square root.
//!
//! The unsharded reference "whose norm tree is cut the same way" is
//! [`crate::CpuAdamW::set_norm_shards`] with the same layout: steps 1 and 3 in one process.
//! With one rank the fold is exact, so a single shard equals the plain optimizer bit for bit.
//! Different rank counts sum in different orders; their norms may differ in the last bits.
//! PyTorch's CPU norm order ([`crate::GradNormOrder::TorchCpu`]) sums per tensor, which a cut
//! inside a tensor breaks, and stochastic rounding seeds by the plan's chunks: both are
//! refused for shards.
//!
//! Checkpoints are per shard: the state of the rank's pieces plus [`ShardMeta`] (the layout
//! and the whole tensors' shapes), so that [`reshard`] can move them to another rank count
//! offline, bit for bit ([`merge_states`] then [`split_state`]).

use crate::config::{AdamWConfig, GradNormOrder};
use crate::error::{Error, Result};
use crate::gpu::{ParamGroup, TensorBinding};
use crate::state::{OptimizerState, TensorState};
use std::ops::Range;

/// Where the flattened parameter space is cut: rank `r` holds elements
/// `bounds[r]..bounds[r + 1]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardLayout {
    bounds: Vec<u64>,
}

/// The part of one tensor a rank holds: `len` elements from element `start` of `tensor`
/// (registration order over all groups).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The tensor.
    pub tensor: usize,
    /// Its first element held.
    pub start: u64,
    /// Number of elements.
    pub len: u64,
}

impl ShardLayout {
    /// A layout from its bounds: `bounds[0] == 0`, strictly increasing (every rank holds at
    /// least one element), the last one the total number of elements.
    pub fn new(bounds: Vec<u64>) -> Result<Self> {
        if bounds.len() < 2 || bounds[0] != 0 {
            return Err(Error::InvalidArgument(format!(
                "shard bounds {bounds:?}: need at least two, the first 0"
            )));
        }
        if bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidArgument(format!(
                "shard bounds {bounds:?} must increase strictly: every rank holds an element"
            )));
        }
        if bounds.len() - 1 > u32::MAX as usize {
            return Err(Error::InvalidArgument("too many ranks".into()));
        }
        Ok(Self { bounds })
    }

    /// `ranks` ranges of nearly equal size over `total` elements: rank `r` starts at
    /// `floor(r * total / ranks)`.
    pub fn even(total: u64, ranks: usize) -> Result<Self> {
        if ranks == 0 || ranks as u64 > total {
            return Err(Error::InvalidArgument(format!(
                "{ranks} ranks over {total} elements: need 1..={total}"
            )));
        }
        let bounds = (0..=ranks as u128)
            .map(|r| (r * u128::from(total) / ranks as u128) as u64)
            .collect();
        Self::new(bounds)
    }

    /// Number of ranks.
    pub fn ranks(&self) -> usize {
        self.bounds.len() - 1
    }

    /// Elements of the flattened space.
    pub fn total(&self) -> u64 {
        *self.bounds.last().expect("at least two bounds")
    }

    /// The bounds (one more than the ranks).
    pub fn bounds(&self) -> &[u64] {
        &self.bounds
    }

    /// The elements rank `rank` holds.
    pub fn range(&self, rank: usize) -> Result<Range<u64>> {
        if rank >= self.ranks() {
            return Err(Error::InvalidArgument(format!(
                "rank {rank} of a layout of {} ranks",
                self.ranks()
            )));
        }
        Ok(self.bounds[rank]..self.bounds[rank + 1])
    }

    /// The pieces rank `rank` holds of tensors of `lens` elements (flattened in this order),
    /// in that order. The lengths must add up to [`ShardLayout::total`].
    pub fn pieces(&self, rank: usize, lens: &[u64]) -> Result<Vec<Piece>> {
        let total: u64 = lens.iter().sum();
        if total != self.total() {
            return Err(Error::ShapeMismatch(format!(
                "the tensors hold {total} elements, the shard layout {}",
                self.total()
            )));
        }
        let range = self.range(rank)?;
        let mut out = Vec::new();
        let mut at = 0u64;
        for (tensor, &len) in lens.iter().enumerate() {
            let (lo, hi) = (at.max(range.start), (at + len).min(range.end));
            if lo < hi {
                out.push(Piece {
                    tensor,
                    start: lo - at,
                    len: hi - lo,
                });
            }
            at += len;
        }
        Ok(out)
    }
}

/// The file name of rank `rank`'s checkpoint among `ranks` shards, as `wgpu-adamw reshard`
/// writes them: `rank-{rank}-of-{ranks}.safetensors`.
pub fn checkpoint_name(rank: usize, ranks: usize) -> String {
    format!("rank-{rank}-of-{ranks}.safetensors")
}

/// Refuses what a shard cannot do alike on every rank: PyTorch's CPU norm order (per whole
/// tensor) with clipping or loss scaling, and stochastic rounding (seeded by the unsharded
/// chunk plan).
pub(crate) fn check_config(config: &AdamWConfig) -> Result<()> {
    if config.grad_norm_order == GradNormOrder::TorchCpu && config.reduces_gradients() {
        return Err(Error::Unsupported(
            "a shard sums the gradient norm in the compensated order only (PyTorch's CPU order \
             needs whole tensors)"
                .into(),
        ));
    }
    if config.stochastic_rounding.is_some() {
        return Err(Error::Unsupported(
            "stochastic rounding on a shard (its seeds follow the unsharded chunk plan)".into(),
        ));
    }
    Ok(())
}

/// What a shard's checkpoint records besides its pieces' state: its rank, the layout, and
/// the whole tensors (group, length) in registration order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMeta {
    /// This shard's rank.
    pub rank: usize,
    /// The layout of all shards.
    pub layout: ShardLayout,
    /// Every whole tensor: (group, elements).
    pub tensors: Vec<(usize, u64)>,
}

impl ShardMeta {
    /// The pieces this shard holds.
    pub fn pieces(&self) -> Result<Vec<Piece>> {
        let lens: Vec<u64> = self.tensors.iter().map(|t| t.1).collect();
        self.layout.pieces(self.rank, &lens)
    }
}

/// The groups of rank `rank`: each group keeps its config and gets the pieces of its tensors
/// that the rank holds (possibly none), as bindings into the same buffers. `elem_bytes` is
/// the size of a parameter and of a gradient element.
pub(crate) fn shard_groups(
    groups: &[ParamGroup],
    layout: &ShardLayout,
    rank: usize,
    elem_bytes: (u64, u64),
) -> Result<(Vec<ParamGroup>, ShardMeta)> {
    let tensors: Vec<(usize, u64)> = groups
        .iter()
        .enumerate()
        .flat_map(|(gi, g)| g.tensors.iter().map(move |t| (gi, t.len)))
        .collect();
    let meta = ShardMeta {
        rank,
        layout: layout.clone(),
        tensors,
    };
    let all: Vec<&TensorBinding> = groups.iter().flat_map(|g| &g.tensors).collect();
    let mut out: Vec<ParamGroup> = groups
        .iter()
        .map(|g| ParamGroup {
            config: g.config,
            tensors: Vec::new(),
        })
        .collect();
    for p in meta.pieces()? {
        let t = all[p.tensor];
        out[meta.tensors[p.tensor].0].tensors.push(TensorBinding {
            param: t.param.clone(),
            param_offset: t.param_offset + p.start * elem_bytes.0,
            grad: t.grad.clone(),
            grad_offset: t.grad_offset + p.start * elem_bytes.1,
            len: p.len,
        });
    }
    Ok((out, meta))
}

/// A tensor's streams, `None` where the state does not keep one.
fn streams(t: &TensorState) -> [Option<&Vec<f32>>; 6] {
    [
        Some(&t.exp_avg),
        Some(&t.exp_avg_sq),
        t.max_exp_avg_sq.as_ref(),
        t.master.as_ref(),
        t.ema.as_ref(),
        t.grad_acc.as_ref(),
    ]
}

/// A tensor state from its streams (the order of [`streams`]).
fn from_streams(group: usize, s: [Option<Vec<f32>>; 6]) -> TensorState {
    let [exp_avg, exp_avg_sq, max_exp_avg_sq, master, ema, grad_acc] = s;
    TensorState {
        group,
        exp_avg: exp_avg.unwrap_or_default(),
        exp_avg_sq: exp_avg_sq.unwrap_or_default(),
        max_exp_avg_sq,
        master,
        ema,
        grad_acc,
    }
}

/// The state of the whole optimizer from the checkpoints of all its shards (any order): the
/// pieces of each tensor joined, everything else checked equal across the shards. The result
/// has no [`ShardMeta`]; [`crate::CpuAdamW::from_state`] loads it.
pub fn merge_states(shards: &[OptimizerState]) -> Result<OptimizerState> {
    let mismatch = |s: String| Error::CheckpointMismatch(s);
    let first = shards
        .first()
        .ok_or_else(|| mismatch("no shard checkpoints".into()))?;
    let meta0 = first
        .shard
        .as_ref()
        .ok_or_else(|| mismatch("not a shard checkpoint (no shard metadata)".into()))?;
    let ranks = meta0.layout.ranks();
    if shards.len() != ranks {
        return Err(mismatch(format!(
            "{} shard checkpoints for a layout of {ranks} ranks",
            shards.len()
        )));
    }
    let mut by_rank: Vec<Option<&OptimizerState>> = vec![None; ranks];
    for s in shards {
        let m = s
            .shard
            .as_ref()
            .ok_or_else(|| mismatch("not a shard checkpoint (no shard metadata)".into()))?;
        if m.layout != meta0.layout || m.tensors != meta0.tensors {
            return Err(mismatch(format!(
                "rank {}'s layout or tensors differ from rank {}'s",
                m.rank, meta0.rank
            )));
        }
        let same = |a: &OptimizerState, b: &OptimizerState| {
            a.config == b.config
                && a.groups == b.groups
                && a.counters == b.counters
                && a.loss_scale.to_bits() == b.loss_scale.to_bits()
                && a.schedule_state == b.schedule_state
                && a.metric.to_bits() == b.metric.to_bits()
                && a.lr_scale.to_bits() == b.lr_scale.to_bits()
                && a.growth_tracker == b.growth_tracker
        };
        if !same(s, first) {
            return Err(mismatch(format!(
                "rank {}'s config, counters or control words differ from rank {}'s: the \
                 checkpoints are not of one step",
                m.rank, meta0.rank
            )));
        }
        match by_rank.get_mut(m.rank) {
            Some(slot @ None) => *slot = Some(s),
            _ => {
                return Err(mismatch(format!(
                    "rank {} twice, or out of 0..{ranks}",
                    m.rank
                )))
            }
        }
    }
    let mut whole: Vec<[Option<Vec<f32>>; 6]> = meta0
        .tensors
        .iter()
        .map(|_| std::array::from_fn(|_| None))
        .collect();
    let lens: Vec<u64> = meta0.tensors.iter().map(|t| t.1).collect();
    for (rank, s) in by_rank.iter().enumerate() {
        let s = s.expect("every rank present");
        let pieces = meta0.layout.pieces(rank, &lens)?;
        if pieces.len() != s.tensors.len() {
            return Err(mismatch(format!(
                "rank {rank} holds {} pieces, its checkpoint {} tensors",
                pieces.len(),
                s.tensors.len()
            )));
        }
        for (p, t) in pieces.iter().zip(&s.tensors) {
            for (k, stream) in streams(t).into_iter().enumerate() {
                let Some(values) = stream else { continue };
                if values.len() as u64 != p.len {
                    return Err(mismatch(format!(
                        "rank {rank}: a piece of tensor {} has {} values, the layout {}",
                        p.tensor,
                        values.len(),
                        p.len
                    )));
                }
                whole[p.tensor][k]
                    .get_or_insert_with(Vec::new)
                    .extend_from_slice(values);
            }
        }
    }
    let tensors = whole
        .into_iter()
        .zip(&meta0.tensors)
        .map(|(s, &(group, len))| {
            if s.iter().flatten().any(|v| v.len() as u64 != len) {
                return Err(mismatch(
                    "a stream is kept by some shards and not others".into(),
                ));
            }
            Ok(from_streams(group, s))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(OptimizerState {
        tensors,
        shard: None,
        ..first.clone()
    })
}

/// The checkpoints of the shards of `layout`, from the state of the whole optimizer (of
/// [`merge_states`], or of an unsharded optimizer): each holds its rank's pieces.
pub fn split_state(whole: &OptimizerState, layout: &ShardLayout) -> Result<Vec<OptimizerState>> {
    if whole.shard.is_some() {
        return Err(Error::CheckpointMismatch(
            "a shard's checkpoint: merge the shards first".into(),
        ));
    }
    let tensors: Vec<(usize, u64)> = whole
        .tensors
        .iter()
        .map(|t| (t.group, t.exp_avg.len() as u64))
        .collect();
    (0..layout.ranks())
        .map(|rank| {
            let meta = ShardMeta {
                rank,
                layout: layout.clone(),
                tensors: tensors.clone(),
            };
            let pieces = meta
                .pieces()?
                .iter()
                .map(|p| {
                    let t = &whole.tensors[p.tensor];
                    let (a, b) = (p.start as usize, (p.start + p.len) as usize);
                    from_streams(t.group, streams(t).map(|s| s.map(|v| v[a..b].to_vec())))
                })
                .collect();
            Ok(OptimizerState {
                tensors: pieces,
                shard: Some(meta),
                ..whole.clone()
            })
        })
        .collect()
}

/// Moves the checkpoints of all shards of one layout to another (another rank count, or other
/// cuts), bit for bit: [`merge_states`], then [`split_state`].
pub fn reshard(shards: &[OptimizerState], layout: &ShardLayout) -> Result<Vec<OptimizerState>> {
    split_state(&merge_states(shards)?, layout)
}
