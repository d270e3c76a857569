//! The device form of a schedule: one program of words per param group, evaluated by
//! `shaders/schedule.wgsl` (and its twin `src/twin/schedule.rs`). Op codes and word
//! positions here and in the WGSL must agree; `tests/schedule_kinds.rs` holds every kind
//! against its f64 form on both.

use super::{GroupCtx, Schedule};

/// Words of one node.
pub const NODE_WORDS: usize = 16;

/// Node op codes (`OP_*` in `shaders/schedule.wgsl`).
#[allow(missing_docs)]
pub mod op {
    pub const CONSTANT: u32 = 0;
    pub const COSINE: u32 = 1;
    pub const WARM_RESTARTS: u32 = 2;
    pub const CONSTANT_FACTOR: u32 = 3;
    pub const LINEAR: u32 = 4;
    pub const POWER: u32 = 5;
    pub const POLYNOMIAL: u32 = 6;
    pub const ONECYCLE: u32 = 7;
    pub const CYCLIC: u32 = 8;
    pub const WARMUP: u32 = 9;
    pub const WSD: u32 = 10;
    pub const PLATEAU: u32 = 11;
    pub const SEQUENTIAL: u32 = 16;
    pub const CHAINED: u32 = 17;
}

/// One node: an op and its parameter words.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Node(pub [u32; NODE_WORDS]);

impl Node {
    /// A node with op `op`, parameters zero.
    pub fn new(op: u32) -> Self {
        let mut w = [0; NODE_WORDS];
        w[0] = op;
        Node(w)
    }
    /// Sets parameter word `i` (1-based, as the WGSL's `at + i`).
    pub fn u(mut self, i: usize, x: u32) -> Self {
        self.0[i] = x;
        self
    }
    /// Sets parameter word `i` to `x` rounded to f32.
    pub fn f(self, i: usize, x: f64) -> Self {
        self.u(i, (x as f32).to_bits())
    }
    /// Sets words `i` and `i + 1` to `x` as two f32 (`hi = f32(x)`, `lo = f32(x - hi)`).
    pub fn split(self, i: usize, x: f64) -> Self {
        let (hi, lo) = split(x);
        self.u(i, hi.to_bits()).u(i + 1, lo.to_bits())
    }
}

/// `x` as two f32, `hi + lo` within 2^-48 of `x`.
pub fn split(x: f64) -> (f32, f32) {
    let hi = x as f32;
    (hi, (x - f64::from(hi)) as f32)
}

/// A group's program while it is built: its nodes and its lists.
#[derive(Clone, Debug, Default)]
pub struct Program {
    /// Node 0 (the root), then the children.
    pub nodes: Vec<Node>,
    /// Lists, placed after the nodes; [`Program::list`] gives their offsets.
    pub lists: Vec<u32>,
    /// The number of nodes the program will have (lists start after them).
    pub n_nodes: usize,
}

impl Program {
    /// Appends a list; returns its offset relative to the program's start.
    pub fn list(&mut self, words: &[u32]) -> u32 {
        let at = self.n_nodes * NODE_WORDS + self.lists.len();
        self.lists.extend_from_slice(words);
        at as u32
    }

    /// The program's words.
    pub fn words(&self) -> Vec<u32> {
        let mut w: Vec<u32> = self.nodes.iter().flat_map(|n| n.0).collect();
        w.extend_from_slice(&self.lists);
        w
    }
}

/// The schedule region of `meta` for a set of groups: every group's program (each
/// `stride` words), then the state of a stateful schedule (ReduceLROnPlateau) at `state_at`.
#[derive(Clone, Debug, PartialEq)]
pub struct Region {
    /// The region's words, as uploaded.
    pub words: Vec<u32>,
    /// Words per group program.
    pub stride: u32,
    /// Offset of the state words in the region.
    pub state_at: u32,
}

/// Words of plateau state before the per-group lrs: best, bad epochs, cooldown left, unused.
pub const PLATEAU_HEADER: usize = 4;

/// Offset in the region of group `group`'s plateau lr (two f32 words), for state at
/// `state_at`.
pub fn plateau_lr_at(state_at: u32, group: usize) -> usize {
    state_at as usize + PLATEAU_HEADER + 2 * group
}

impl Region {
    /// Lays out `schedule` for `groups` (their base lrs and the optimizer's lr).
    pub fn new(schedule: &Schedule, groups: &[GroupCtx]) -> Self {
        let programs: Vec<Vec<u32>> = groups
            .iter()
            .map(|g| {
                let mut p = Program {
                    n_nodes: schedule.nodes(),
                    ..Default::default()
                };
                schedule.encode(g, &mut p);
                p.words()
            })
            .collect();
        let stride = programs.iter().map(Vec::len).max().unwrap_or(NODE_WORDS);
        let state_at = stride * groups.len();
        let mut words = vec![0u32; state_at];
        for (i, p) in programs.iter().enumerate() {
            words[i * stride..i * stride + p.len()].copy_from_slice(p);
        }
        if let Schedule::ReduceOnPlateau(p) = schedule {
            words.extend(p.initial_state(groups));
            for i in 0..groups.len() {
                // Each group's node names the words of its lr.
                words[i * stride + 1] = plateau_lr_at(state_at as u32, i) as u32;
            }
        }
        Region {
            words,
            stride: stride as u32,
            state_at: state_at as u32,
        }
    }

    /// The state words (empty unless the schedule has state).
    pub fn state(&self) -> &[u32] {
        &self.words[self.state_at as usize..]
    }
}
