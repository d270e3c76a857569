//! `OneCycleLR` and `CyclicLR`: pure functions of the epoch that ignore the group's lr (their
//! bounds are per-group fields) and may cycle `betas[0]` (`cycle_momentum`).

use super::fields::Fields;
use super::program::{op, Node, Program};
use super::pytorch::json_map as map;
use super::{check_min, check_pos, hyper, GroupCtx, Kind, PerGroup, F32_MAX};
use crate::error::Result;
use serde_json::{json, Map, Value};
use std::f64::consts::PI;

fn check_momenta(base: &PerGroup, max: &PerGroup, n_groups: usize) -> Result<()> {
    let unit = |x: f64| (0.0..1.0).contains(&x);
    base.check("base_momentum", n_groups, unit, "in [0, 1)")?;
    max.check("max_momentum", n_groups, unit, "in [0, 1)")
}

/// `OneCycleLR`: per group `I = max_lr / div_factor` up to `max_lr` over the first
/// `pct_start` of `total_steps`, then down to `I / final_div_factor` (three-phase: back to
/// `I` first). The group's own lr is ignored. Past `total_steps` (where PyTorch raises) the
/// final lr and momentum are held; at `k = total_steps` the last phase is extrapolated, as
/// PyTorch does.
#[derive(Clone, Debug, PartialEq)]
pub struct OneCycle {
    /// Peak lr per group (> 0).
    pub max_lr: PerGroup,
    /// `N`: epochs of the cycle (>= 1).
    pub total_steps: u32,
    /// Fraction of the cycle spent increasing the lr, in (0, 1), with `pct_start * N > 1`.
    pub pct_start: f64,
    /// Cosine (`false`: linear) annealing.
    pub anneal_cos: bool,
    /// `max_lr / initial lr` (> 0).
    pub div_factor: f64,
    /// `initial lr / final lr` (> 0).
    pub final_div_factor: f64,
    /// Three phases (up, down to the initial lr, down to the final lr).
    pub three_phase: bool,
    /// Cycle beta1 between `max_momentum` and `base_momentum`.
    pub cycle_momentum: bool,
    /// Lowest beta1 per group, in [0, 1).
    pub base_momentum: PerGroup,
    /// Highest beta1 per group, in [0, 1).
    pub max_momentum: PerGroup,
}

impl OneCycle {
    pub(crate) fn parse(f: &mut Fields<'_>) -> Result<Self> {
        Ok(OneCycle {
            max_lr: f.per_group("max_lr")?,
            total_steps: f.int("total_steps")?,
            pct_start: f.num("pct_start")?,
            anneal_cos: f.choice("anneal_strategy", &["linear", "cos"])? == 1,
            div_factor: f.num("div_factor")?,
            final_div_factor: f.num("final_div_factor")?,
            three_phase: f.boolean("three_phase")?,
            cycle_momentum: f.boolean("cycle_momentum")?,
            base_momentum: f.per_group("base_momentum")?,
            max_momentum: f.per_group("max_momentum")?,
        })
    }

    /// Phase ends in f64: `e1`, `e2` (three-phase) and `N - 1`.
    fn ends(&self) -> (f64, f64, f64) {
        let n = f64::from(self.total_steps);
        (
            self.pct_start * n - 1.0,
            2.0 * self.pct_start * n - 2.0,
            n - 1.0,
        )
    }

    /// The phase of epoch `k` (clamped to `N`): `(start, end, phase index)`.
    fn phase(&self, k: u64) -> (f64, f64, usize) {
        let (e1, e2, last) = self.ends();
        let k = k as f64;
        if k <= e1 {
            (0.0, e1, 0)
        } else if self.three_phase && k <= e2 {
            (e1, e2, 1)
        } else if self.three_phase {
            (e2, last, 2)
        } else {
            (e1, last, 1)
        }
    }

    fn anneal(&self, start: f64, end: f64, pct: f64) -> f64 {
        if self.anneal_cos {
            end + (start - end) / 2.0 * (1.0 + (PI * pct).cos())
        } else {
            (end - start) * pct + start
        }
    }

    /// `(initial, max, final)` lr of group `i`.
    fn lrs(&self, i: usize) -> (f64, f64, f64) {
        let m = self.max_lr.get(i);
        let init = m / self.div_factor;
        (init, m, init / self.final_div_factor)
    }

    /// The value at epoch `k` of a schedule that goes through `points` (per phase).
    fn value(&self, k: u64, points: [f64; 4]) -> f64 {
        let kk = k.min(u64::from(self.total_steps));
        if k > u64::from(self.total_steps) {
            return points[3];
        }
        let (start, end, i) = self.phase(kk);
        let pct = (kk as f64 - start) / (end - start);
        self.anneal(points[i], points[i + 1], pct)
    }
}

impl Kind for OneCycle {
    fn fields(&self) -> Map<String, Value> {
        map(
            json!({"max_lr": self.max_lr.to_json(), "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "anneal_strategy": if self.anneal_cos { "cos" } else { "linear" },
            "div_factor": self.div_factor, "final_div_factor": self.final_div_factor,
            "three_phase": self.three_phase, "cycle_momentum": self.cycle_momentum,
            "base_momentum": self.base_momentum.to_json(),
            "max_momentum": self.max_momentum.to_json()}),
        )
    }
    fn validate(&self, n_groups: usize) -> Result<()> {
        self.max_lr
            .check("max_lr", n_groups, |x| x > 0.0 && x <= F32_MAX, "> 0")?;
        check_min("total_steps", self.total_steps, 1)?;
        if !(self.pct_start > 0.0 && self.pct_start < 1.0) {
            return Err(hyper(
                "pct_start",
                format!("must be in (0, 1), got {}", self.pct_start),
            ));
        }
        let (e1, e2, last) = self.ends();
        if e1 <= 0.0 {
            return Err(hyper(
                "pct_start",
                "pct_start * total_steps must be > 1 (the first phase needs an epoch)",
            ));
        }
        if self.three_phase && e2 >= last {
            return Err(hyper(
                "pct_start",
                "three-phase needs 2 * pct_start * total_steps - 2 < total_steps - 1",
            ));
        }
        check_pos("div_factor", self.div_factor, F32_MAX)?;
        check_pos("final_div_factor", self.final_div_factor, F32_MAX)?;
        check_momenta(&self.base_momentum, &self.max_momentum, n_groups)
    }
    fn lr(&self, g: &GroupCtx, k: u64) -> f64 {
        let (init, max, fin) = self.lrs(g.index);
        let points = if self.three_phase {
            [init, max, init, fin]
        } else {
            [init, max, fin, fin]
        };
        self.value(k, points)
    }
    fn beta1(&self, g: &GroupCtx, k: u64) -> Option<f64> {
        if !self.cycle_momentum {
            return None;
        }
        let (lo, hi) = (
            self.base_momentum.get(g.index),
            self.max_momentum.get(g.index),
        );
        // Two-phase: max -> base -> max; three-phase: max -> base -> max -> max.
        let points = [hi, lo, hi, hi];
        Some(self.value(k, points))
    }
    fn peak_lr(&self, g: &GroupCtx) -> f64 {
        self.max_lr.get(g.index)
    }
    fn node(&self, g: &GroupCtx, _: &mut Program) -> Node {
        let (e1, e2, _) = self.ends();
        let (init, max, fin) = self.lrs(g.index);
        let (lo, hi) = (
            self.base_momentum.get(g.index),
            self.max_momentum.get(g.index),
        );
        let floor = |x: f64| x.floor().clamp(0.0, 4294967295.0) as u32;
        Node::new(op::ONECYCLE)
            .u(
                1,
                u32::from(!self.anneal_cos) | (u32::from(self.three_phase) << 1),
            )
            .u(2, self.total_steps)
            .u(3, floor(e1))
            .u(4, floor(e2))
            .split(5, e1)
            .split(7, e2)
            .f(9, init)
            .f(10, max)
            .f(11, fin)
            .f(12, hi)
            .f(13, lo)
            .f(14, 1.0 - hi)
            .f(15, 1.0 - lo)
    }
}

/// `CyclicLR`'s amplitude scaling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CyclicMode {
    /// Constant amplitude.
    Triangular = 0,
    /// Amplitude halved every cycle (PyTorch overflows from cycle 1025; the lr is `base_lr`).
    Triangular2 = 1,
    /// Amplitude `gamma^k`.
    ExpRange = 2,
}

const CYCLIC_MODES: [&str; 3] = ["triangular", "triangular2", "exp_range"];

/// `CyclicLR`: per group between `base_lr` and `max_lr`, up over `step_size_up` epochs and
/// down over `step_size_down`, forever. The group's own lr is ignored.
#[derive(Clone, Debug, PartialEq)]
pub struct Cyclic {
    /// Lower bound per group (>= 0).
    pub base_lr: PerGroup,
    /// Upper bound per group (>= 0).
    pub max_lr: PerGroup,
    /// Epochs going up (>= 1).
    pub step_size_up: u32,
    /// Epochs going down (>= 1), `None`: `step_size_up`.
    pub step_size_down: Option<u32>,
    /// Amplitude scaling.
    pub mode: CyclicMode,
    /// `exp_range`'s decay per epoch, in (0, 1].
    pub gamma: f64,
    /// Cycle beta1 between `max_momentum` and `base_momentum` (inversely to the lr).
    pub cycle_momentum: bool,
    /// Lowest beta1 per group, in [0, 1).
    pub base_momentum: PerGroup,
    /// Highest beta1 per group, in [0, 1).
    pub max_momentum: PerGroup,
}

impl Cyclic {
    pub(crate) fn parse(f: &mut Fields<'_>) -> Result<Self> {
        let mode = match f.choice("mode", &CYCLIC_MODES)? {
            0 => CyclicMode::Triangular,
            1 => CyclicMode::Triangular2,
            _ => CyclicMode::ExpRange,
        };
        Ok(Cyclic {
            base_lr: f.per_group("base_lr")?,
            max_lr: f.per_group("max_lr")?,
            step_size_up: f.int("step_size_up")?,
            step_size_down: f.int_or_null("step_size_down")?,
            mode,
            gamma: f.num("gamma")?,
            cycle_momentum: f.boolean("cycle_momentum")?,
            base_momentum: f.per_group("base_momentum")?,
            max_momentum: f.per_group("max_momentum")?,
        })
    }

    fn down(&self) -> u32 {
        self.step_size_down.unwrap_or(self.step_size_up)
    }

    /// `x * scale` at epoch `k`: the fraction of the amplitude.
    fn height(&self, k: u64) -> f64 {
        let (up, down) = (u64::from(self.step_size_up), u64::from(self.down()));
        let period = up + down;
        let r = k % period;
        let x = if r <= up {
            r as f64 / up as f64
        } else {
            (period - r) as f64 / down as f64
        };
        let scale = match self.mode {
            CyclicMode::Triangular => 1.0,
            CyclicMode::Triangular2 => 0.5f64.powf((k / period) as f64),
            CyclicMode::ExpRange => self.gamma.powf(k as f64),
        };
        x * scale
    }
}

impl Kind for Cyclic {
    fn fields(&self) -> Map<String, Value> {
        map(
            json!({"base_lr": self.base_lr.to_json(), "max_lr": self.max_lr.to_json(),
            "step_size_up": self.step_size_up, "step_size_down": self.step_size_down,
            "mode": CYCLIC_MODES[self.mode as usize], "gamma": self.gamma,
            "cycle_momentum": self.cycle_momentum,
            "base_momentum": self.base_momentum.to_json(),
            "max_momentum": self.max_momentum.to_json()}),
        )
    }
    fn validate(&self, n_groups: usize) -> Result<()> {
        let ok = |x: f64| (0.0..=F32_MAX).contains(&x);
        self.base_lr.check("base_lr", n_groups, ok, ">= 0")?;
        self.max_lr.check("max_lr", n_groups, ok, ">= 0")?;
        check_min("step_size_up", self.step_size_up, 1)?;
        if let Some(d) = self.step_size_down {
            check_min("step_size_down", d, 1)?;
        }
        if u64::from(self.step_size_up) + u64::from(self.down()) > u64::from(u32::MAX) {
            return Err(hyper(
                "step_size_up",
                "step_size_up + step_size_down must be below 2^32",
            ));
        }
        check_pos("gamma", self.gamma, 1.0)?;
        check_momenta(&self.base_momentum, &self.max_momentum, n_groups)
    }
    fn lr(&self, g: &GroupCtx, k: u64) -> f64 {
        let (lo, hi) = (self.base_lr.get(g.index), self.max_lr.get(g.index));
        lo + (hi - lo) * self.height(k)
    }
    fn beta1(&self, g: &GroupCtx, k: u64) -> Option<f64> {
        let (lo, hi) = (
            self.base_momentum.get(g.index),
            self.max_momentum.get(g.index),
        );
        self.cycle_momentum.then(|| hi - (hi - lo) * self.height(k))
    }
    fn peak_lr(&self, g: &GroupCtx) -> f64 {
        self.base_lr.get(g.index).max(self.max_lr.get(g.index))
    }
    fn node(&self, g: &GroupCtx, _: &mut Program) -> Node {
        let (lo, hi) = (self.base_lr.get(g.index), self.max_lr.get(g.index));
        let (mlo, mhi) = (
            self.base_momentum.get(g.index),
            self.max_momentum.get(g.index),
        );
        Node::new(op::CYCLIC)
            .u(1, self.step_size_up)
            .u(2, self.down())
            .u(3, self.mode as u32)
            .split(4, self.gamma.log2())
            .f(6, lo)
            .f(7, hi - lo)
            .f(8, mhi)
            .f(9, mhi - mlo)
            .f(10, 1.0 - mhi)
            .f(11, mlo)
    }
}
