//! The multi-tensor chunk plan: which workgroup of `update` (and `reduce`) handles which
//! elements, and where each tensor's state lives.
//!
//! A tensor of at least half a chunk gets chunks of its own (runs of up to `chunk` elements).
//! Shorter tensors are packed: consecutive short tensors of one buffer pair share a chunk
//! until it is full, and the workgroup finds each element's tensor by a binary search over the
//! chunk's segments. The step's cost then follows the number of elements, not the number of
//! tensors. The CPU reference follows the same plan ([`cpu_chunks`]) wherever its results
//! depend on it: the gradient norm is summed chunk by chunk.

use crate::error::{Error, Result};
use std::collections::HashMap;

/// Tensors shorter than this (half a chunk of `chunk` elements) are packed with others.
pub fn pack_below(chunk: u64) -> u64 {
    chunk / 2
}

/// One chunk of the CPU reference's plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpuChunk {
    /// `count` elements of `tensor` from `start`.
    Run {
        /// The tensor (registration order).
        tensor: usize,
        /// First element.
        start: usize,
        /// Number of elements.
        count: usize,
    },
    /// Whole short tensors, in this order.
    Packed(Vec<usize>),
}

/// The chunks of tensors of `lens` elements that share one buffer pair, in the order the
/// kernel's chunk table lists them: the runs in tensor order, then the packed chunks in the
/// order they were opened.
pub fn cpu_chunks(lens: &[usize], chunk: usize) -> Vec<CpuChunk> {
    let mut out = Vec::new();
    let mut packed = Vec::new();
    let mut open: Option<(usize, usize)> = None; // (index in packed, elements)
    for (tensor, &len) in lens.iter().enumerate() {
        if len == 0 {
            continue;
        }
        if (len as u64) < pack_below(chunk as u64) {
            match &mut open {
                Some((at, fill)) if *fill + len <= chunk => {
                    if let CpuChunk::Packed(m) = &mut packed[*at] {
                        m.push(tensor);
                    }
                    *fill += len;
                }
                _ => {
                    open = Some((packed.len(), len));
                    packed.push(CpuChunk::Packed(vec![tensor]));
                }
            }
            continue;
        }
        for start in (0..len).step_by(chunk) {
            out.push(CpuChunk::Run {
                tensor,
                start,
                count: (len - start).min(chunk),
            });
        }
    }
    out.extend(packed);
    out
}

/// Where a piece of a tensor's state lives.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Piece {
    pub arena: usize,
    pub state_offset: u64,
    pub len: u64,
}

/// A registered tensor: its group, length and the pieces of its state.
#[derive(Debug)]
pub(crate) struct TensorInfo {
    pub group: usize,
    pub len: u64,
    pub pieces: Vec<Piece>,
}

/// What one `update` dispatch binds: (param buffer, window), (grad buffer, window), arena;
/// buffers by their index in the optimizer's list of distinct engine buffers.
pub(crate) type DispatchKey = (usize, u64, usize, u64, usize);

/// A tensor as the plan sees it: its group, and its param and grad ranges as (buffer index,
/// buffer size in bytes, byte offset). No device is needed to plan.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PlanTensor {
    pub group: usize,
    pub param: (usize, u64, u64),
    pub grad: (usize, u64, u64),
    pub len: u64,
}

/// One entry of a dispatch's chunk table, before the segment table is laid out.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ChunkEntry {
    /// `[param, grad, state offset, count | group << 16]`.
    Run([u32; 4]),
    /// Index into [`GpuPlan::packed`].
    Packed(usize),
}

/// The segments of one packed chunk: `[param, grad, state offset, start | group << 16]`.
#[derive(Debug, Default)]
pub(crate) struct PackedChunk {
    pub segments: Vec<[u32; 4]>,
    /// The tensor of each segment.
    pub tensors: Vec<usize>,
    pub fill: u64,
}

/// The chunk, segment and element-map tables of [`GpuPlan::meta_tables`].
#[derive(Debug, Default)]
pub(crate) struct MetaTables {
    pub chunks: Vec<u32>,
    pub segments: Vec<u32>,
    pub maps: Vec<u32>,
    /// Every word of the tables (the tensor lists included) that holds a gradient's place,
    /// as `(word in meta, tensor, elements after the tensor's first gradient)`: where the
    /// gradients' buffers keep one window, re-pointing them only rewrites these.
    pub grad_fields: Vec<(u32, u32, u32)>,
}

/// Word offsets in `meta` of the tables that depend on where the gradients are, and the
/// room each has ([`GpuPlan::table_layout`]), so that re-pointing the gradients rewrites the
/// tables in place.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TableLayout {
    /// Per dispatch, its tensors (the torch_cpu norm order): one entry per tensor.
    pub tensors_at: u32,
    /// The stochastic rounding table: the seed, then one word per run chunk.
    pub sr_at: u32,
    /// One segment per packed tensor.
    pub segments_at: u32,
    /// The chunk table.
    pub chunks_at: u32,
    /// Chunks the chunk table has room for.
    pub chunk_capacity: usize,
    /// The packed chunks' element maps.
    pub maps_at: u32,
    /// The word after the last table.
    pub end: u32,
    /// Dispatch keys any plan of these parameters can have (one per piece at most).
    pub key_capacity: usize,
}

/// The whole plan of a GPU optimizer.
#[derive(Debug, Default)]
pub(crate) struct GpuPlan {
    pub tensors: Vec<TensorInfo>,
    /// Elements used in each state arena (a multiple of 4).
    pub arena_fill: Vec<u64>,
    pub keys: Vec<DispatchKey>,
    pub chunk_lists: Vec<Vec<ChunkEntry>>,
    pub packed: Vec<PackedChunk>,
    /// Per key, its tensors that lie wholly in it: `[grad offset, len, tensor index, state
    /// offset]`.
    pub tensor_lists: Vec<Vec<[u32; 4]>>,
    /// Per key, the (tensor index, element offset in the tensor) of each of its run chunks'
    /// first element, in the order of its runs.
    pub run_origins: Vec<Vec<(usize, u64)>>,
}

/// The window of a buffer that holds byte `offset`: the whole buffer when it fits in one
/// binding, else a window of `limit` bytes starting at a multiple of `stride`.
pub(crate) fn window_of(offset: u64, buffer_size: u64, limit: u64, stride: u64) -> (u64, u64) {
    if buffer_size <= limit {
        return (0, buffer_size);
    }
    let start = (offset / stride) * stride;
    (start, (buffer_size - start).min(limit))
}

/// Binding limits the plan must respect.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PlanLimits {
    /// Bytes per storage binding.
    pub max_binding: u64,
    /// Window stride in bytes.
    pub stride: u64,
    /// Elements per chunk.
    pub chunk: u64,
    /// The torch_cpu norm order is on: every tensor must lie in one window.
    pub torch_norm: bool,
    /// Bytes per element of the parameters and of the gradients (4, or 2 for 16-bit types).
    pub elem_bytes: (u64, u64),
    /// Plan for the mixed-precision update (`update_mixed`): no packed chunks; each run's
    /// state starts at the parity of its parameters' first element (so a 32-bit word of
    /// 16-bit moments holds the moments of the parameters of one parameter word), and a
    /// tensor's chunks after its first start at even parameter elements (so no two
    /// workgroups write one word of 16-bit parameters or moments, except at the tensor's
    /// ends, which the kernel writes with atomics).
    pub mixed: bool,
}

impl GpuPlan {
    /// Plans `groups`: pieces that each fit one window of their buffers and one arena, chunk
    /// tables per dispatch key, short tensors packed per buffer-pair window.
    pub(crate) fn new(tensors: &[PlanTensor], lim: PlanLimits) -> Result<Self> {
        Self::with_state(tensors, lim, None)
    }

    /// [`GpuPlan::new`], keeping each tensor's state where `state` (an earlier plan's
    /// [`GpuPlan::tensors`] for the same parameters) put it: the plan of re-pointed
    /// gradients. The pieces of a tensor depend on its parameters only, so they match.
    pub(crate) fn with_state(
        tensors: &[PlanTensor],
        lim: PlanLimits,
        state: Option<&[TensorInfo]>,
    ) -> Result<Self> {
        let PlanLimits {
            max_binding,
            stride,
            chunk,
            torch_norm,
            elem_bytes: (pb, gb),
            mixed,
        } = lim;
        // A piece of a tensor must fit in one window of each of its buffers and in one arena;
        // an even number of elements keeps the pieces' parities.
        let max_piece = (max_binding - stride) / 4 / 2 * 2;
        let arena_capacity = max_binding / 16 * 4;
        let mut plan = GpuPlan {
            arena_fill: vec![0],
            ..Default::default()
        };
        let mut key_index: HashMap<DispatchKey, usize> = HashMap::new();
        // The open packed chunk of each (param, window, grad, window): (key, packed index).
        let mut open: HashMap<(usize, u64, usize, u64), (usize, usize)> = HashMap::new();
        let mut key_of = |plan: &mut GpuPlan, key: DispatchKey| {
            *key_index.entry(key).or_insert_with(|| {
                plan.keys.push(key);
                plan.chunk_lists.push(Vec::new());
                plan.tensor_lists.push(Vec::new());
                plan.run_origins.push(Vec::new());
                plan.keys.len() - 1
            })
        };
        for t in tensors {
            let gi = t.group;
            {
                let index = plan.tensors.len();
                let (p_buf, p_size, p_off) = t.param;
                let (g_buf, g_size, g_off) = t.grad;
                let windows = |done: u64| {
                    let p_byte = p_off + pb * done;
                    let g_byte = g_off + gb * done;
                    let (p_win, _) = window_of(p_byte, p_size, max_binding, stride);
                    let (g_win, _) = window_of(g_byte, g_size, max_binding, stride);
                    (p_win, g_win, (p_byte - p_win) / pb, (g_byte - g_win) / gb)
                };
                if !mixed && t.len > 0 && t.len < pack_below(chunk) {
                    // Short: a segment of its buffer pair's open packed chunk, its state packed
                    // tightly (no alignment) in that chunk's arena.
                    let (p_win, g_win, p0, g0) = windows(0);
                    let pair = (p_buf, p_win, g_buf, g_win);
                    let fixed = state.map(|s| s[index].pieces[0]);
                    let slot = open.get(&pair).copied().filter(|&(k, pi)| {
                        plan.packed[pi].fill + t.len <= chunk
                            && match fixed {
                                Some(f) => plan.keys[k].4 == f.arena,
                                None => plan.arena_fill[plan.keys[k].4] + t.len <= arena_capacity,
                            }
                    });
                    let (k, pi) = match slot {
                        Some(s) => s,
                        None => {
                            let mut arena = plan.arena_fill.len() - 1;
                            if let Some(f) = fixed {
                                arena = f.arena;
                            } else if plan.arena_fill[arena] + t.len > arena_capacity {
                                plan.arena_fill.push(0);
                                arena += 1;
                            }
                            let k = key_of(&mut plan, (p_buf, p_win, g_buf, g_win, arena));
                            plan.packed.push(PackedChunk::default());
                            let pi = plan.packed.len() - 1;
                            plan.chunk_lists[k].push(ChunkEntry::Packed(pi));
                            open.insert(pair, (k, pi));
                            (k, pi)
                        }
                    };
                    let arena = plan.keys[k].4;
                    let state_offset = match fixed {
                        Some(f) => f.state_offset,
                        None => {
                            plan.arena_fill[arena] += t.len;
                            plan.arena_fill[arena] - t.len
                        }
                    };
                    let packed = &mut plan.packed[pi];
                    packed.segments.push([
                        p0 as u32,
                        g0 as u32,
                        state_offset as u32,
                        packed.fill as u32 | (gi as u32) << 16,
                    ]);
                    packed.tensors.push(index);
                    packed.fill += t.len;
                    plan.tensor_lists[k].push([
                        g0 as u32,
                        t.len as u32,
                        index as u32,
                        state_offset as u32,
                    ]);
                    plan.tensors.push(TensorInfo {
                        group: gi,
                        len: t.len,
                        pieces: vec![Piece {
                            arena,
                            state_offset,
                            len: t.len,
                        }],
                    });
                    continue;
                }
                let mut pieces = Vec::new();
                let mut done = 0u64;
                while done < t.len {
                    let len = (t.len - done).min(max_piece);
                    let (p_win, g_win, p0, g0) = windows(done);
                    let parity = if mixed { p0 & 1 } else { 0 };
                    let (arena, state_offset) = match state {
                        Some(s) => {
                            let f = s[index].pieces[pieces.len()];
                            debug_assert_eq!(f.len, len);
                            (f.arena, f.state_offset)
                        }
                        None => {
                            let mut arena = plan.arena_fill.len() - 1;
                            // Every run's state starts 256-byte aligned (plus the parity).
                            let mut state_offset =
                                plan.arena_fill[arena].div_ceil(64) * 64 + parity;
                            if state_offset + len > arena_capacity {
                                plan.arena_fill.push(0);
                                arena += 1;
                                state_offset = parity;
                            }
                            plan.arena_fill[arena] = (state_offset + len).div_ceil(4) * 4;
                            (arena, state_offset)
                        }
                    };
                    let k = key_of(&mut plan, (p_buf, p_win, g_buf, g_win, arena));
                    if done == 0 {
                        plan.tensor_lists[k].push([
                            g0 as u32,
                            t.len as u32,
                            index as u32,
                            state_offset as u32,
                        ]);
                    } else if torch_norm {
                        return Err(Error::Unsupported(format!(
                            "tensor {index}: the torch_cpu gradient-norm order needs every tensor within one storage binding ({max_binding} bytes)"
                        )));
                    }
                    // Mixed: a first chunk one short when the run starts at an odd element.
                    let first = if mixed { chunk - (p0 & 1) } else { chunk };
                    let starts = std::iter::once(0).chain((first..len).step_by(chunk as usize));
                    for start in starts.filter(|&s| s < len) {
                        let count =
                            (len - start).min(if start == 0 { first } else { chunk }) as u32;
                        plan.run_origins[k].push((index, done + start));
                        plan.chunk_lists[k].push(ChunkEntry::Run([
                            (p0 + start) as u32,
                            (g0 + start) as u32,
                            (state_offset + start) as u32,
                            count | (gi as u32) << 16,
                        ]));
                    }
                    pieces.push(Piece {
                        arena,
                        state_offset,
                        len,
                    });
                    done += len;
                }
                plan.tensors.push(TensorInfo {
                    group: gi,
                    len: t.len,
                    pieces,
                });
            }
        }
        if let Some(state) = state {
            // The arenas' fill is the state's, not this plan's to choose.
            for p in state.iter().flat_map(|t| &t.pieces) {
                if plan.arena_fill.len() <= p.arena {
                    plan.arena_fill.resize(p.arena + 1, 0);
                }
                plan.arena_fill[p.arena] = plan.arena_fill[p.arena].max(p.state_offset + p.len);
            }
        }
        for fill in &mut plan.arena_fill {
            *fill = fill.div_ceil(4) * 4;
        }
        Ok(plan)
    }

    /// Number of chunks of all dispatches.
    pub(crate) fn total_chunks(&self) -> usize {
        self.chunk_lists.iter().map(Vec::len).sum()
    }

    /// Number of run chunks (not packed) of dispatch `k`.
    pub(crate) fn runs_of(&self, k: usize) -> usize {
        self.chunk_lists[k]
            .iter()
            .filter(|e| matches!(e, ChunkEntry::Run(_)))
            .count()
    }

    /// Where the tables of this plan go in `meta`, from word `at` on, with room for the
    /// tables of any plan of the same parameters (re-pointed gradients change the packing,
    /// never the runs, the packed tensors or the tensors' pieces).
    pub(crate) fn table_layout(&self, at: u32, stochastic_rounding: bool) -> TableLayout {
        let runs: usize = (0..self.keys.len()).map(|k| self.runs_of(k)).sum();
        let packed_tensors: usize = self.packed.iter().map(|p| p.segments.len()).sum();
        let packed_elems: u64 = self.packed.iter().map(|p| p.fill).sum();
        let listed: usize = self.tensor_lists.iter().map(Vec::len).sum();
        let tensors_at = at;
        let sr_at = tensors_at + 4 * listed as u32;
        let segments_at = sr_at
            + if stochastic_rounding {
                2 + runs as u32
            } else {
                0
            };
        let chunks_at = segments_at + 4 * packed_tensors as u32;
        let chunk_capacity = runs + packed_tensors;
        let maps_at = chunks_at + 4 * chunk_capacity as u32;
        // A packed chunk's map takes ceil(fill / 2) words: at most half its elements plus one.
        let end = maps_at + (packed_elems / 2) as u32 + packed_tensors as u32;
        TableLayout {
            tensors_at,
            sr_at,
            segments_at,
            chunks_at,
            chunk_capacity,
            maps_at,
            end,
            key_capacity: self.tensors.iter().map(|t| t.pieces.len()).sum(),
        }
    }

    /// The meta words of the chunk tables of all dispatches, of the segment table and of the
    /// packed chunks' element maps, for tables at `layout`'s places. A packed chunk's entry is `[first segment, word offset of its element
    /// map, elements, 0]` (count 0 marks it); its element map holds, for each element, the
    /// index of its segment within the chunk, as 16-bit halves of u32 words (element `i` in
    /// word `i / 2`, bits `16 * (i % 2)..`).
    pub(crate) fn meta_tables(&self, layout: &TableLayout) -> MetaTables {
        let maps_at = layout.maps_at;
        let mut t = MetaTables::default();
        for (i, e) in self.tensor_lists.iter().flatten().enumerate() {
            t.grad_fields
                .push((layout.tensors_at + 4 * i as u32, e[2], 0));
        }
        // Per dispatch, its runs first, then its packed chunks.
        let ordered = self
            .chunk_lists
            .iter()
            .zip(&self.run_origins)
            .flat_map(|(list, origins)| {
                let runs = list
                    .iter()
                    .filter(|e| matches!(e, ChunkEntry::Run(_)))
                    .zip(origins.iter().map(Some));
                runs.chain(
                    list.iter()
                        .filter(|e| matches!(e, ChunkEntry::Packed(_)))
                        .map(|e| (e, None)),
                )
            });
        for (entry, origin) in ordered {
            match *entry {
                ChunkEntry::Run(e) => {
                    if let Some(&(tensor, offset)) = origin {
                        let word = layout.chunks_at + t.chunks.len() as u32 + 1;
                        t.grad_fields.push((word, tensor as u32, offset as u32));
                    }
                    t.chunks.extend_from_slice(&e)
                }
                ChunkEntry::Packed(pi) => {
                    let p = &self.packed[pi];
                    t.chunks.extend_from_slice(&[
                        (t.segments.len() / 4) as u32,
                        maps_at + t.maps.len() as u32,
                        p.fill as u32,
                        0,
                    ]);
                    let mut map = vec![0u32; (p.fill as usize).div_ceil(2)];
                    for (j, seg) in p.segments.iter().enumerate() {
                        let start = (seg[3] & 0xffff) as usize;
                        let end = p
                            .segments
                            .get(j + 1)
                            .map_or(p.fill as usize, |n| (n[3] & 0xffff) as usize);
                        for i in start..end {
                            map[i / 2] |= (j as u32) << (16 * (i % 2));
                        }
                    }
                    t.maps.extend(map);
                    for (j, &tensor) in p.tensors.iter().enumerate() {
                        let word = layout.segments_at + (t.segments.len() + 4 * j) as u32 + 1;
                        t.grad_fields.push((word, tensor as u32, 0));
                    }
                    t.segments.extend(p.segments.iter().flatten());
                }
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn limits(max_binding: u64, chunk: u64) -> PlanLimits {
        PlanLimits {
            max_binding,
            stride: max_binding / 2 / 256 * 256,
            chunk,
            torch_norm: false,
            elem_bytes: (4, 4),
            mixed: false,
        }
    }

    /// Tensors of `lens` back to back (with a gap of `gap` elements) in buffer pair
    /// (`pair`, `pair + 1`), in `groups` groups by turn.
    fn model(lens: &[u64], gap: u64, pair: usize, groups: usize) -> Vec<PlanTensor> {
        let total: u64 = lens.iter().map(|l| l + gap).sum::<u64>() * 4;
        let mut at = 0;
        lens.iter()
            .enumerate()
            .map(|(i, &len)| {
                let t = PlanTensor {
                    group: i % groups,
                    param: (pair, total, at),
                    grad: (pair + 1, total, at),
                    len,
                };
                at += 4 * (len + gap);
                t
            })
            .collect()
    }

    /// Every element of every tensor is updated exactly once, by an entry that points at its
    /// param and grad in a window that holds them, at the state its tensor's pieces give it,
    /// with its group; states never overlap and stay inside their arenas.
    fn check(tensors: &[PlanTensor], lim: PlanLimits) -> GpuPlan {
        verify(tensors, lim, GpuPlan::new(tensors, lim).unwrap())
    }

    /// [`check`] of a plan that keeps `earlier`'s state.
    fn check_with_state(tensors: &[PlanTensor], lim: PlanLimits, earlier: &GpuPlan) -> GpuPlan {
        let plan = GpuPlan::with_state(tensors, lim, Some(&earlier.tensors)).unwrap();
        assert_eq!(plan.arena_fill, earlier.arena_fill);
        verify(tensors, lim, plan)
    }

    fn verify(tensors: &[PlanTensor], lim: PlanLimits, plan: GpuPlan) -> GpuPlan {
        let capacity = lim.max_binding / 16 * 4;
        // State: where each element of each tensor lives.
        let mut state_of = HashMap::new();
        let mut used = HashSet::new();
        for (ti, (t, info)) in tensors.iter().zip(&plan.tensors).enumerate() {
            assert_eq!(info.group, t.group);
            let mut e = 0;
            for p in &info.pieces {
                if t.len >= pack_below(lim.chunk) {
                    assert_eq!(
                        p.state_offset % 64,
                        0,
                        "a run's state starts 256-byte aligned"
                    );
                }
                assert!(p.state_offset + p.len <= plan.arena_fill[p.arena]);
                assert!(plan.arena_fill[p.arena] <= capacity);
                for i in 0..p.len {
                    assert!(used.insert((p.arena, p.state_offset + i)), "state shared");
                    state_of.insert((ti, e), (p.arena, p.state_offset + i));
                    e += 1;
                }
            }
            assert_eq!(e, t.len);
        }
        // The chunk tables, dispatch by dispatch, read back as the kernel reads them.
        let layout = plan.table_layout(0, false);
        let tables = plan.meta_tables(&layout);
        let word = |at: u32| -> u32 {
            let at = at as usize;
            let (seg_at, chunks_at, maps_at) = (
                layout.segments_at as usize,
                layout.chunks_at as usize,
                layout.maps_at as usize,
            );
            assert!(at >= seg_at && at < layout.end as usize);
            if at < chunks_at {
                tables.segments[at - seg_at]
            } else if at < maps_at {
                tables.chunks[at - chunks_at]
            } else {
                tables.maps[at - maps_at]
            }
        };
        // Absolute (buffer, byte) of each tensor's elements, to find them again.
        let mut param_at = HashMap::new();
        for (ti, t) in tensors.iter().enumerate() {
            for e in 0..t.len {
                param_at.insert((t.param.0, t.param.2 + 4 * e), (ti, e));
            }
        }
        let mut seen = HashSet::new();
        let mut visit = |key: &DispatchKey, p: u32, g: u32, s: u32, group: u32| {
            let &(p_buf, p_win, g_buf, g_win, arena) = key;
            let p_size = window_of(
                p_win,
                tensors.iter().find(|t| t.param.0 == p_buf).unwrap().param.1,
                lim.max_binding,
                lim.stride,
            )
            .1;
            assert!(u64::from(p) * 4 + 4 <= p_size, "param outside its window");
            let &(ti, e) = param_at
                .get(&(p_buf, p_win + 4 * u64::from(p)))
                .expect("a tensor's element");
            let t = &tensors[ti];
            assert_eq!(
                (t.grad.0, t.grad.2 + 4 * e),
                (g_buf, g_win + 4 * u64::from(g))
            );
            assert_eq!(state_of[&(ti, e)], (arena, u64::from(s)));
            assert_eq!(group as usize, t.group);
            assert!(seen.insert((ti, e)), "an element updated twice");
        };
        let mut at = layout.chunks_at;
        for (k, key) in plan.keys.iter().enumerate() {
            for c in 0..plan.chunk_lists[k].len() {
                let ce = at + 4 * c as u32;
                let count = word(ce + 3) & 0xffff;
                if c < plan.runs_of(k) {
                    assert!(count > 0 && u64::from(count) <= lim.chunk);
                    for i in 0..count {
                        visit(
                            key,
                            word(ce) + i,
                            word(ce + 1) + i,
                            word(ce + 2) + i,
                            word(ce + 3) >> 16,
                        );
                    }
                } else {
                    assert_eq!(count, 0, "packed chunks come after the runs");
                    let (first, map_at, total) = (word(ce), word(ce + 1), word(ce + 2));
                    assert!(u64::from(total) <= lim.chunk);
                    for i in 0..total {
                        let j = (word(map_at + i / 2) >> (16 * (i % 2))) & 0xffff;
                        let se = layout.segments_at + 4 * (first + j);
                        let info = word(se + 3);
                        let off = i - (info & 0xffff);
                        visit(
                            key,
                            word(se) + off,
                            word(se + 1) + off,
                            word(se + 2) + off,
                            info >> 16,
                        );
                    }
                }
            }
            at += 4 * plan.chunk_lists[k].len() as u32;
        }
        assert_eq!(
            seen.len() as u64,
            tensors.iter().map(|t| t.len).sum::<u64>()
        );
        plan
    }

    #[test]
    fn one_buffer_pair_is_one_dispatch_with_short_tensors_packed() {
        let mut lens = vec![3, 5, 5000, 0, 2, 1000, 1500, 1100, 2000];
        lens.extend((0..700).map(|i| 1 + i % 7));
        let tensors = model(&lens, 1, 0, 3);
        let plan = check(&tensors, limits(1 << 31, 2048));
        assert_eq!(plan.keys.len(), 1);
        assert_eq!(plan.packed.len(), 2); // 3 + 5 + 2 + 1000 + 2800 elements of short tensors
                                          // The CPU reference plans the same chunks.
        let cpu = cpu_chunks(&lens.iter().map(|&l| l as usize).collect::<Vec<_>>(), 2048);
        assert_eq!(cpu.len(), plan.total_chunks());
    }

    #[test]
    fn large_buffers_are_split_into_windows_and_arenas() {
        let lens: Vec<u64> = (0..40).map(|i| [3, 700, 5000, 9000][i % 4]).collect();
        let tensors = model(&lens, 3, 0, 2);
        let plan = check(&tensors, limits(64 << 10, 1024));
        assert!(plan.keys.len() > 4, "{} dispatches", plan.keys.len());
        assert!(
            plan.arena_fill.len() > 4,
            "{} arenas",
            plan.arena_fill.len()
        );
    }

    #[test]
    fn buffer_pairs_are_planned_apart() {
        let mut tensors = model(&[7, 3000, 2, 9], 0, 0, 1);
        tensors.extend(model(&[5, 6, 4000], 2, 2, 2));
        let plan = check(&tensors, limits(1 << 31, 2048));
        assert_eq!(plan.keys.len(), 2);
        assert_eq!(plan.packed.len(), 2);
    }

    #[test]
    fn re_pointed_gradients_keep_every_tensor_state_and_fit_the_tables_room() {
        let lens: Vec<u64> = (0..60).map(|i| [3, 700, 5000, 9000, 1][i % 5]).collect();
        let lim = limits(64 << 10, 1024);
        let first = model(&lens, 1, 0, 2);
        let plan = check(&first, lim);
        let room = plan.table_layout(0, true);
        // The same parameters, gradients spread over three other buffers in another order.
        let mut at = [0u64; 3];
        let sizes = [1_000_000u64, 900_000, 800_000];
        for order in 0..3 {
            let mut moved = first.clone();
            for (i, t) in moved.iter_mut().enumerate().rev() {
                let b = (i * 7 + order) % 3;
                t.grad = (2 + b, sizes[b], at[b]);
                at[b] += 4 * (t.len + (i as u64 % 3));
            }
            at = [0; 3];
            let again = GpuPlan::with_state(&moved, lim, Some(&plan.tensors)).unwrap();
            for (a, b) in plan.tensors.iter().zip(&again.tensors) {
                let pieces = |t: &TensorInfo| -> Vec<_> {
                    t.pieces
                        .iter()
                        .map(|p| (p.arena, p.state_offset, p.len))
                        .collect()
                };
                assert_eq!(pieces(a), pieces(b));
            }
            let lay = again.table_layout(0, true);
            assert!(again.total_chunks() <= room.chunk_capacity);
            assert!(again.keys.len() <= room.key_capacity);
            assert!(lay.end <= room.end);
            assert_eq!(lay.maps_at, room.maps_at);
            // Every element found at its own (unchanged) state through the new tables.
            check_with_state(&moved, lim, &plan);
        }
    }

    #[test]
    fn the_torch_norm_order_refuses_a_tensor_split_across_windows() {
        let tensors = model(&[40_000], 0, 0, 1);
        let mut lim = limits(64 << 10, 1024);
        lim.torch_norm = true;
        assert!(matches!(
            GpuPlan::new(&tensors, lim),
            Err(Error::Unsupported(_))
        ));
    }
}
