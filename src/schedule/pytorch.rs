//! `torch.optim.lr_scheduler`'s closed-form and multiplicative schedulers: cosine annealing
//! (with warm restarts), ConstantLR, LinearLR, ExponentialLR, StepLR, MultiStepLR and
//! PolynomialLR. PyTorch computes most of them recursively (multiplying the current lr);
//! their closed forms below agree with that to far below the lr tolerance.

use super::fields::Fields;
use super::program::{op, Node, Program};
use super::{check_min, check_pos, check_range, GroupCtx, Kind, F32_MAX};
use crate::error::Result;
use json_map as map;
use serde_json::{json, Map, Value};
use std::f64::consts::PI;

pub(crate) fn json_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// `CosineAnnealingLR(T_max, eta_min)`: `eta_min + (b - eta_min)(1 + cos(pi k / t_max)) / 2`.
/// Not clamped past `t_max`: the curve climbs back to `b` with period `2 t_max`, as
/// PyTorch's does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cosine {
    /// Half period in epochs (>= 1).
    pub t_max: u32,
    /// Minimum lr (absolute, shared by every group).
    pub eta_min: f64,
}

impl Cosine {
    pub(crate) fn parse(f: &mut Fields<'_>) -> Result<Self> {
        Ok(Cosine {
            t_max: f.int("t_max")?,
            eta_min: f.num_or("eta_min", 0.0)?,
        })
    }
}

impl Kind for Cosine {
    fn fields(&self) -> Map<String, Value> {
        map(json!({"t_max": self.t_max, "eta_min": self.eta_min}))
    }
    fn validate(&self, _: usize) -> Result<()> {
        check_min("t_max", self.t_max, 1)?;
        check_range("eta_min", self.eta_min, 0.0, F32_MAX)
    }
    fn lr(&self, g: &GroupCtx, k: u64) -> f64 {
        let t = u64::from(self.t_max);
        let r = (k % (2 * t)) as f64;
        self.eta_min + (g.base_lr - self.eta_min) * (1.0 + (PI * r / t as f64).cos()) / 2.0
    }
    fn peak_lr(&self, g: &GroupCtx) -> f64 {
        g.base_lr.max(self.eta_min)
    }
    fn node(&self, _: &GroupCtx, _: &mut Program) -> Node {
        Node::new(op::COSINE).u(1, self.t_max).f(2, self.eta_min)
    }
}

/// `CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)` (its integer `step()` path): cycle
/// `i` has length `t_0 * t_mult^i`; restarts forever.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CosineWarmRestarts {
    /// Length of the first cycle in epochs (>= 1).
    pub t_0: u32,
    /// Factor by which each cycle is longer than the previous one (>= 1).
    pub t_mult: u32,
    /// Minimum lr (absolute, shared by every group).
    pub eta_min: f64,
}

impl CosineWarmRestarts {
    pub(crate) fn parse(f: &mut Fields<'_>) -> Result<Self> {
        Ok(CosineWarmRestarts {
            t_0: f.int("t_0")?,
            t_mult: f.int_or("t_mult", 1)?,
            eta_min: f.num_or("eta_min", 0.0)?,
        })
    }

    /// `(T_cur, T_i)` at epoch `k`, found with integer arithmetic as PyTorch's `step()`
    /// advances them.
    pub fn position(&self, k: u64) -> (u128, u128) {
        let (mut t_cur, mut t_i) = (u128::from(k), u128::from(self.t_0));
        if self.t_mult == 1 {
            return (t_cur % t_i, t_i);
        }
        while t_cur >= t_i {
            t_cur -= t_i;
            t_i *= u128::from(self.t_mult);
        }
        (t_cur, t_i)
    }
}

impl Kind for CosineWarmRestarts {
    fn fields(&self) -> Map<String, Value> {
        map(json!({"t_0": self.t_0, "t_mult": self.t_mult, "eta_min": self.eta_min}))
    }
    fn validate(&self, _: usize) -> Result<()> {
        check_min("t_0", self.t_0, 1)?;
        check_min("t_mult", self.t_mult, 1)?;
        check_range("eta_min", self.eta_min, 0.0, F32_MAX)
    }
    fn lr(&self, g: &GroupCtx, k: u64) -> f64 {
        let (t_cur, t_i) = self.position(k);
        self.eta_min
            + (g.base_lr - self.eta_min) * (1.0 + (PI * t_cur as f64 / t_i as f64).cos()) / 2.0
    }
    fn peak_lr(&self, g: &GroupCtx) -> f64 {
        g.base_lr.max(self.eta_min)
    }
    fn node(&self, _: &GroupCtx, _: &mut Program) -> Node {
        Node::new(op::WARM_RESTARTS)
            .u(1, self.t_0)
            .u(2, self.t_mult)
            .f(3, self.eta_min)
    }
}

/// `ConstantLR(factor, total_iters)`: `b * factor` for `k < total_iters`, then `b`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConstantFactor {
    /// The factor, in (0, 1].
    pub factor: f64,
    /// Epochs at the reduced lr (>= 1).
    pub total_iters: u32,
}

impl ConstantFactor {
    pub(crate) fn parse(f: &mut Fields<'_>) -> Result<Self> {
        Ok(ConstantFactor {
            factor: f.num("factor")?,
            total_iters: f.int("total_iters")?,
        })
    }
}

impl Kind for ConstantFactor {
    fn fields(&self) -> Map<String, Value> {
        map(json!({"factor": self.factor, "total_iters": self.total_iters}))
    }
    fn validate(&self, _: usize) -> Result<()> {
        check_pos("factor", self.factor, 1.0)?;
        check_min("total_iters", self.total_iters, 1)
    }
    fn lr(&self, g: &GroupCtx, k: u64) -> f64 {
        if k < u64::from(self.total_iters) {
            g.base_lr * self.factor
        } else {
            g.base_lr
        }
    }
    fn node(&self, _: &GroupCtx, _: &mut Program) -> Node {
        Node::new(op::CONSTANT_FACTOR)
            .f(1, self.factor)
            .u(2, self.total_iters)
    }
}

/// `LinearLR(start_factor, end_factor, total_iters)`:
/// `b * (start + (end - start) * min(k, T) / T)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Linear {
    /// Factor at epoch 0, in (0, 1].
    pub start_factor: f64,
    /// Factor from epoch `total_iters` on, in [0, 1].
    pub end_factor: f64,
    /// Epochs of the ramp (>= 1).
    pub total_iters: u32,
}

impl Linear {
    pub(crate) fn parse(f: &mut Fields<'_>) -> Result<Self> {
        Ok(Linear {
            start_factor: f.num("start_factor")?,
            end_factor: f.num("end_factor")?,
            total_iters: f.int("total_iters")?,
        })
    }
}

impl Kind for Linear {
    fn fields(&self) -> Map<String, Value> {
        map(
            json!({"start_factor": self.start_factor, "end_factor": self.end_factor,
                   "total_iters": self.total_iters}),
        )
    }
    fn validate(&self, _: usize) -> Result<()> {
        check_pos("start_factor", self.start_factor, 1.0)?;
        check_range("end_factor", self.end_factor, 0.0, 1.0)?;
        check_min("total_iters", self.total_iters, 1)
    }
    fn lr(&self, g: &GroupCtx, k: u64) -> f64 {
        let t = f64::from(self.total_iters);
        let m = k.min(u64::from(self.total_iters)) as f64;
        g.base_lr * (self.start_factor + (self.end_factor - self.start_factor) * m / t)
    }
    fn node(&self, _: &GroupCtx, _: &mut Program) -> Node {
        // (start (T - m) + end m) / T: two non-negative terms, no cancellation near 0.
        Node::new(op::LINEAR)
            .f(1, self.start_factor)
            .f(2, self.end_factor)
            .u(3, self.total_iters)
    }
}

/// A `gamma^n` node: `n = floor(k / step_size)`, with `log2(gamma)` in f64 split in two.
fn power_node(step_size: u32, gamma: f64) -> Node {
    Node::new(op::POWER)
        .u(1, 0)
        .u(2, step_size)
        .split(4, gamma.log2())
}

/// `ExponentialLR(gamma)`: `b * gamma^k`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Exponential {
    /// Decay per epoch, in (0, 1].
    pub gamma: f64,
}

impl Exponential {
    pub(crate) fn parse(f: &mut Fields<'_>) -> Result<Self> {
        Ok(Exponential {
            gamma: f.num("gamma")?,
        })
    }
}

impl Kind for Exponential {
    fn fields(&self) -> Map<String, Value> {
        map(json!({"gamma": self.gamma}))
    }
    fn validate(&self, _: usize) -> Result<()> {
        check_pos("gamma", self.gamma, 1.0)
    }
    fn lr(&self, g: &GroupCtx, k: u64) -> f64 {
        g.base_lr * self.gamma.powf(k as f64)
    }
    fn node(&self, _: &GroupCtx, _: &mut Program) -> Node {
        power_node(1, self.gamma)
    }
}

/// `StepLR(step_size, gamma)`: `b * gamma^floor(k / step_size)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepLr {
    /// Epochs between decays (>= 1).
    pub step_size: u32,
    /// Decay, in (0, 1].
    pub gamma: f64,
}

impl StepLr {
    pub(crate) fn parse(f: &mut Fields<'_>) -> Result<Self> {
        Ok(StepLr {
            step_size: f.int("step_size")?,
            gamma: f.num("gamma")?,
        })
    }
}

impl Kind for StepLr {
    fn fields(&self) -> Map<String, Value> {
        map(json!({"step_size": self.step_size, "gamma": self.gamma}))
    }
    fn validate(&self, _: usize) -> Result<()> {
        check_min("step_size", self.step_size, 1)?;
        check_pos("gamma", self.gamma, 1.0)
    }
    fn lr(&self, g: &GroupCtx, k: u64) -> f64 {
        g.base_lr * self.gamma.powf((k / u64::from(self.step_size)) as f64)
    }
    fn node(&self, _: &GroupCtx, _: &mut Program) -> Node {
        power_node(self.step_size, self.gamma)
    }
}

/// `MultiStepLR(milestones, gamma)`: `b * gamma^n`, `n` = the number of milestones `<= k`.
/// Milestones may come in any order and repeat (a repeated one applies `gamma` twice, as
/// PyTorch's `Counter` does).
#[derive(Clone, Debug, PartialEq)]
pub struct MultiStep {
    /// Epochs at which the lr is multiplied by `gamma` (each >= 1).
    pub milestones: Vec<u32>,
    /// Decay, in (0, 1].
    pub gamma: f64,
}

impl MultiStep {
    pub(crate) fn parse(f: &mut Fields<'_>) -> Result<Self> {
        Ok(MultiStep {
            milestones: f.ints("milestones")?,
            gamma: f.num("gamma")?,
        })
    }
}

impl Kind for MultiStep {
    fn fields(&self) -> Map<String, Value> {
        map(json!({"milestones": self.milestones, "gamma": self.gamma}))
    }
    fn validate(&self, _: usize) -> Result<()> {
        if let Some(&m) = self.milestones.iter().find(|&&m| m == 0) {
            return Err(super::hyper("milestones", format!("must be >= 1, got {m}")));
        }
        check_pos("gamma", self.gamma, 1.0)
    }
    fn lr(&self, g: &GroupCtx, k: u64) -> f64 {
        let n = self
            .milestones
            .iter()
            .filter(|&&m| u64::from(m) <= k)
            .count();
        g.base_lr * self.gamma.powi(n as i32)
    }
    fn node(&self, _: &GroupCtx, p: &mut Program) -> Node {
        let mut sorted = self.milestones.clone();
        sorted.sort_unstable();
        let at = p.list(&sorted);
        Node::new(op::POWER)
            .u(1, 1)
            .u(2, at)
            .u(3, sorted.len() as u32)
            .split(4, self.gamma.log2())
    }
}

/// `PolynomialLR(total_iters, power)`: `b * ((T - min(k, T)) / T)^power`; 0 from `T` on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Polynomial {
    /// Epochs of the decay (>= 1).
    pub total_iters: u32,
    /// The power (> 0).
    pub power: f64,
}

impl Polynomial {
    pub(crate) fn parse(f: &mut Fields<'_>) -> Result<Self> {
        Ok(Polynomial {
            total_iters: f.int("total_iters")?,
            power: f.num("power")?,
        })
    }
}

impl Kind for Polynomial {
    fn fields(&self) -> Map<String, Value> {
        map(json!({"total_iters": self.total_iters, "power": self.power}))
    }
    fn validate(&self, _: usize) -> Result<()> {
        check_min("total_iters", self.total_iters, 1)?;
        check_pos("power", self.power, F32_MAX)
    }
    fn lr(&self, g: &GroupCtx, k: u64) -> f64 {
        let t = u64::from(self.total_iters);
        g.base_lr * ((t - k.min(t)) as f64 / t as f64).powf(self.power)
    }
    fn node(&self, _: &GroupCtx, _: &mut Program) -> Node {
        Node::new(op::POLYNOMIAL)
            .u(1, self.total_iters)
            .f(2, self.power)
    }
}
