//! The Hugging Face recipes (`transformers.optimization`), as `LambdaLR`: `lr = b * factor(k)`.
//! All but `wsd` warm up linearly, `factor = k / max(1, W)` for `k < W` (0 at k = 0), then
//! follow a shape of `j = k - W`; on the device they share one node (`OP_WARMUP`).

use super::fields::Fields;
use super::program::{op, Node, Program};
use super::pytorch::json_map as map;
use super::{check_min, check_pos, check_range, dyadic, hyper, GroupCtx, Kind};
use crate::error::Result;
use serde_json::{json, Map, Value};
use std::f64::consts::PI;

/// The warmup factor `k / max(1, W)` for `k < W`, else `None`.
fn warmup(k: u64, w: u32) -> Option<f64> {
    (k < u64::from(w)).then(|| k as f64 / f64::from(w.max(1)))
}

/// `p = (k - W) / max(1, N - W)` for `k >= W`.
fn progress(k: u64, w: u32, n: u32) -> f64 {
    (k - u64::from(w)) as f64 / f64::from(n.saturating_sub(w).max(1))
}

/// `(1 + cos(2 pi c p)) / 2`, the phase reduced modulo 1 first (exact in f64 for the `p` here).
fn cos_wave(c: f64, p: f64) -> f64 {
    let x = (c * p).rem_euclid(1.0);
    0.5 * (1.0 + (2.0 * PI * x).cos())
}

/// Shapes of `OP_WARMUP` (word 2).
mod shape {
    pub const COSINE: u32 = 0;
    pub const LINEAR: u32 = 1;
    pub const CONSTANT: u32 = 2;
    pub const HARD_RESTARTS: u32 = 3;
    pub const POLYNOMIAL: u32 = 4;
    pub const INVERSE_SQRT: u32 = 5;
}

/// An `OP_WARMUP` node: warmup `w`, shape, total `n`.
fn warmup_node(w: u32, shape: u32, n: u32) -> Node {
    Node::new(op::WARMUP).u(1, w).u(2, shape).u(3, n).f(7, 1.0)
}

/// `get_cosine_schedule_with_warmup`'s lr with a floor `r` (`get_cosine_with_min_lr_...`):
/// `max(0, r + (1 - r)(1 + cos(2 pi c p)) / 2)` after the warmup.
fn warmup_cosine_lr(g: &GroupCtx, k: u64, w: u32, n: u32, c: f64, r: f64) -> f64 {
    let f =
        warmup(k, w).unwrap_or_else(|| (r + (1.0 - r) * cos_wave(c, progress(k, w, n))).max(0.0));
    g.base_lr * f
}

/// Their shared node: the cosine of `2 c` half-waves over `N - W`, floor `r`.
fn warmup_cosine_node(w: u32, n: u32, c: f64, r: f64) -> Node {
    let (num, shift) = dyadic(2.0 * c);
    warmup_node(w, shape::COSINE, n)
        .u(4, num)
        .u(5, shift)
        .f(6, r)
        .f(7, 1.0 - r)
}

fn check_cycles(c: f64) -> Result<()> {
    check_pos("num_cycles", c, 2147483647.0)
}

/// `get_cosine_schedule_with_warmup(W, N, num_cycles)`: after the warmup
/// `max(0, (1 + cos(2 pi c p)) / 2)`, `p = (k - W) / max(1, N - W)`; not clamped past `N`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarmupCosine {
    /// `W`: epochs of linear warmup.
    pub warmup_steps: u32,
    /// `N`: total epochs.
    pub total_steps: u32,
    /// `c`: cosine periods over `N - W` (0.5: one decay to zero).
    pub num_cycles: f64,
}

impl WarmupCosine {
    pub(crate) fn parse(f: &mut Fields<'_>) -> Result<Self> {
        Ok(WarmupCosine {
            warmup_steps: f.int("warmup_steps")?,
            total_steps: f.int("total_steps")?,
            num_cycles: f.num_or("num_cycles", 0.5)?,
        })
    }
}

impl Kind for WarmupCosine {
    fn fields(&self) -> Map<String, Value> {
        map(
            json!({"warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                   "num_cycles": self.num_cycles}),
        )
    }
    fn validate(&self, _: usize) -> Result<()> {
        if self.warmup_steps > self.total_steps {
            return Err(hyper(
                "warmup_steps",
                format!(
                    "must be <= total_steps ({}), got {}",
                    self.total_steps, self.warmup_steps
                ),
            ));
        }
        check_range("num_cycles", self.num_cycles, 0.0, 2147483647.0)
    }
    fn lr(&self, g: &GroupCtx, k: u64) -> f64 {
        let (w, n, c) = (self.warmup_steps, self.total_steps, self.num_cycles);
        warmup_cosine_lr(g, k, w, n, c, 0.0)
    }
    fn node(&self, _: &GroupCtx, _: &mut Program) -> Node {
        warmup_cosine_node(self.warmup_steps, self.total_steps, self.num_cycles, 0.0)
    }
}

/// `get_cosine_with_min_lr_schedule_with_warmup(W, N, num_cycles, min_lr_rate=r)`:
/// `max(0, r + (1 - r)(1 + cos(2 pi c p)) / 2)` after the warmup; `r` is a ratio of each
/// group's base lr.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarmupCosineMinLr {
    /// `W`.
    pub warmup_steps: u32,
    /// `N`.
    pub total_steps: u32,
    /// `c` (> 0).
    pub num_cycles: f64,
    /// `r`, in [0, 1].
    pub min_lr_rate: f64,
}

impl WarmupCosineMinLr {
    pub(crate) fn parse(f: &mut Fields<'_>) -> Result<Self> {
        Ok(WarmupCosineMinLr {
            warmup_steps: f.int("warmup_steps")?,
            total_steps: f.int("total_steps")?,
            num_cycles: f.num("num_cycles")?,
            min_lr_rate: f.num("min_lr_rate")?,
        })
    }
}

impl Kind for WarmupCosineMinLr {
    fn fields(&self) -> Map<String, Value> {
        map(
            json!({"warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                   "num_cycles": self.num_cycles, "min_lr_rate": self.min_lr_rate}),
        )
    }
    fn validate(&self, _: usize) -> Result<()> {
        check_min("total_steps", self.total_steps, 1)?;
        check_cycles(self.num_cycles)?;
        check_range("min_lr_rate", self.min_lr_rate, 0.0, 1.0)
    }
    fn lr(&self, g: &GroupCtx, k: u64) -> f64 {
        let (w, n, c) = (self.warmup_steps, self.total_steps, self.num_cycles);
        warmup_cosine_lr(g, k, w, n, c, self.min_lr_rate)
    }
    fn node(&self, _: &GroupCtx, _: &mut Program) -> Node {
        let (w, n) = (self.warmup_steps, self.total_steps);
        warmup_cosine_node(w, n, self.num_cycles, self.min_lr_rate)
    }
}

/// `get_linear_schedule_with_warmup(W, N)`: `max(0, (N - k) / max(1, N - W))` after the
/// warmup (0 from `N` on).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarmupLinear {
    /// `W`.
    pub warmup_steps: u32,
    /// `N`.
    pub total_steps: u32,
}

impl WarmupLinear {
    pub(crate) fn parse(f: &mut Fields<'_>) -> Result<Self> {
        Ok(WarmupLinear {
            warmup_steps: f.int("warmup_steps")?,
            total_steps: f.int("total_steps")?,
        })
    }
}

impl Kind for WarmupLinear {
    fn fields(&self) -> Map<String, Value> {
        map(json!({"warmup_steps": self.warmup_steps, "total_steps": self.total_steps}))
    }
    fn validate(&self, _: usize) -> Result<()> {
        check_min("total_steps", self.total_steps, 1)
    }
    fn lr(&self, g: &GroupCtx, k: u64) -> f64 {
        let (w, n) = (self.warmup_steps, self.total_steps);
        let f = warmup(k, w).unwrap_or_else(|| {
            ((f64::from(n) - k as f64) / f64::from(n.saturating_sub(w).max(1))).max(0.0)
        });
        g.base_lr * f
    }
    fn node(&self, _: &GroupCtx, _: &mut Program) -> Node {
        warmup_node(self.warmup_steps, shape::LINEAR, self.total_steps)
    }
}

/// `get_constant_schedule_with_warmup(W)`: 1 after the warmup.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarmupConstant {
    /// `W`.
    pub warmup_steps: u32,
}

impl WarmupConstant {
    pub(crate) fn parse(f: &mut Fields<'_>) -> Result<Self> {
        Ok(WarmupConstant {
            warmup_steps: f.int("warmup_steps")?,
        })
    }
}

impl Kind for WarmupConstant {
    fn fields(&self) -> Map<String, Value> {
        map(json!({"warmup_steps": self.warmup_steps}))
    }
    fn validate(&self, _: usize) -> Result<()> {
        Ok(())
    }
    fn lr(&self, g: &GroupCtx, k: u64) -> f64 {
        g.base_lr * warmup(k, self.warmup_steps).unwrap_or(1.0)
    }
    fn node(&self, _: &GroupCtx, _: &mut Program) -> Node {
        warmup_node(self.warmup_steps, shape::CONSTANT, 0)
    }
}

/// `get_cosine_with_hard_restarts_schedule_with_warmup(W, N, num_cycles)`: after the warmup,
/// `max(0, (1 + cos(pi ((c p) mod 1))) / 2)` for `p < 1`, then 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarmupCosineHardRestarts {
    /// `W`.
    pub warmup_steps: u32,
    /// `N`.
    pub total_steps: u32,
    /// `c`: the number of restarts' cycles (> 0).
    pub num_cycles: f64,
}

impl WarmupCosineHardRestarts {
    pub(crate) fn parse(f: &mut Fields<'_>) -> Result<Self> {
        Ok(WarmupCosineHardRestarts {
            warmup_steps: f.int("warmup_steps")?,
            total_steps: f.int("total_steps")?,
            num_cycles: f.num("num_cycles")?,
        })
    }
}

impl Kind for WarmupCosineHardRestarts {
    fn fields(&self) -> Map<String, Value> {
        map(
            json!({"warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                   "num_cycles": self.num_cycles}),
        )
    }
    fn validate(&self, _: usize) -> Result<()> {
        check_min("total_steps", self.total_steps, 1)?;
        check_cycles(self.num_cycles)
    }
    fn lr(&self, g: &GroupCtx, k: u64) -> f64 {
        let f = warmup(k, self.warmup_steps).unwrap_or_else(|| {
            let p = progress(k, self.warmup_steps, self.total_steps);
            if p >= 1.0 {
                return 0.0;
            }
            let x = (self.num_cycles * p).rem_euclid(1.0);
            (0.5 * (1.0 + (PI * x).cos())).max(0.0)
        });
        g.base_lr * f
    }
    fn node(&self, _: &GroupCtx, _: &mut Program) -> Node {
        let (num, shift) = dyadic(self.num_cycles);
        warmup_node(self.warmup_steps, shape::HARD_RESTARTS, self.total_steps)
            .u(4, num)
            .u(5, shift)
    }
}

/// `get_polynomial_decay_schedule_with_warmup(W, N, lr_end, power)`: after the warmup
/// `((B - lr_end)(1 - (k - W)/(N - W))^power + lr_end) / B`, `lr_end / B` past `N`, where
/// `B` is the optimizer's lr (a group with another base lr ends at `lr_end * b / B`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarmupPolynomial {
    /// `W`.
    pub warmup_steps: u32,
    /// `N` (> `W`).
    pub total_steps: u32,
    /// The final lr (absolute, for a group at the optimizer's lr), in [0, B).
    pub lr_end: f64,
    /// The power (> 0).
    pub power: f64,
}

impl WarmupPolynomial {
    pub(crate) fn parse(f: &mut Fields<'_>) -> Result<Self> {
        Ok(WarmupPolynomial {
            warmup_steps: f.int("warmup_steps")?,
            total_steps: f.int("total_steps")?,
            lr_end: f.num("lr_end")?,
            power: f.num("power")?,
        })
    }

    /// Checks `lr_end < B`, the optimizer's lr (HF raises otherwise).
    pub fn check_lr(&self, optimizer_lr: f64) -> Result<()> {
        if self.lr_end < optimizer_lr {
            Ok(())
        } else {
            Err(hyper(
                "lr_end",
                format!(
                    "must be below the optimizer's lr ({optimizer_lr}), got {}",
                    self.lr_end
                ),
            ))
        }
    }
}

impl Kind for WarmupPolynomial {
    fn fields(&self) -> Map<String, Value> {
        map(
            json!({"warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                   "lr_end": self.lr_end, "power": self.power}),
        )
    }
    fn validate(&self, _: usize) -> Result<()> {
        if self.total_steps <= self.warmup_steps {
            return Err(hyper(
                "total_steps",
                format!(
                    "must be > warmup_steps ({}), got {}",
                    self.warmup_steps, self.total_steps
                ),
            ));
        }
        check_range("lr_end", self.lr_end, 0.0, super::F32_MAX)?;
        check_pos("power", self.power, super::F32_MAX)
    }
    fn lr(&self, g: &GroupCtx, k: u64) -> f64 {
        let (w, n, big_b) = (self.warmup_steps, self.total_steps, g.optimizer_lr);
        let f = warmup(k, w).unwrap_or_else(|| {
            if k > u64::from(n) {
                return self.lr_end / big_b;
            }
            let rest = 1.0 - (k - u64::from(w)) as f64 / f64::from(n - w);
            ((big_b - self.lr_end) * rest.powf(self.power) + self.lr_end) / big_b
        });
        g.base_lr * f
    }
    fn node(&self, g: &GroupCtx, _: &mut Program) -> Node {
        let r = self.lr_end / g.optimizer_lr;
        warmup_node(self.warmup_steps, shape::POLYNOMIAL, self.total_steps)
            .f(6, r)
            .f(7, (g.optimizer_lr - self.lr_end) / g.optimizer_lr)
            .f(8, self.power)
    }
}

/// `get_inverse_sqrt_schedule(W, timescale)`: `1 / sqrt((k + ts - W) / ts)` after the
/// warmup; `ts` = `timescale`, or `W` (10000 if `W` = 0) when `None`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InverseSqrt {
    /// `W`.
    pub warmup_steps: u32,
    /// `ts` (>= 1), or `None` for HF's default.
    pub timescale: Option<u32>,
}

impl InverseSqrt {
    pub(crate) fn parse(f: &mut Fields<'_>) -> Result<Self> {
        Ok(InverseSqrt {
            warmup_steps: f.int("warmup_steps")?,
            timescale: f.int_or_null("timescale")?,
        })
    }

    fn ts(&self) -> u32 {
        self.timescale.unwrap_or(if self.warmup_steps > 0 {
            self.warmup_steps
        } else {
            10000
        })
    }
}

impl Kind for InverseSqrt {
    fn fields(&self) -> Map<String, Value> {
        map(json!({"warmup_steps": self.warmup_steps, "timescale": self.timescale}))
    }
    fn validate(&self, _: usize) -> Result<()> {
        if let Some(t) = self.timescale {
            check_min("timescale", t, 1)?;
        }
        Ok(())
    }
    fn lr(&self, g: &GroupCtx, k: u64) -> f64 {
        let ts = f64::from(self.ts());
        let f = warmup(k, self.warmup_steps)
            .unwrap_or_else(|| 1.0 / ((k as f64 + ts - f64::from(self.warmup_steps)) / ts).sqrt());
        g.base_lr * f
    }
    fn node(&self, _: &GroupCtx, _: &mut Program) -> Node {
        warmup_node(self.warmup_steps, shape::INVERSE_SQRT, 0).u(9, self.ts())
    }
}

/// A warmup or decay shape of [`Wsd`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsdShape {
    /// `p` (warmup) or `1 - p` (decay).
    Linear = 0,
    /// `(1 - cos(pi p)) / 2` (warmup) or `(1 + cos(2 pi c p)) / 2` (decay).
    Cosine = 1,
    /// `1 - sqrt(1 - p)` (warmup) or `1 - sqrt(p)` (decay).
    OneMinusSqrt = 2,
}

const WSD_SHAPES: [&str; 3] = ["linear", "cosine", "1-sqrt"];

impl WsdShape {
    fn from_index(i: u32) -> Self {
        match i {
            0 => WsdShape::Linear,
            1 => WsdShape::Cosine,
            _ => WsdShape::OneMinusSqrt,
        }
    }
}

/// `get_wsd_schedule(W, S, D, warmup_type, decay_type, min_lr_ratio, num_cycles)`:
/// warmup from `r` to 1, `S` epochs at 1, decay to `r`, then `r` (each factor
/// `max(0, r + (1 - r) g)`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Wsd {
    /// `W`.
    pub warmup_steps: u32,
    /// `S`: epochs at the peak.
    pub stable_steps: u32,
    /// `D`: epochs of decay.
    pub decay_steps: u32,
    /// Shape of the warmup.
    pub warmup_type: WsdShape,
    /// Shape of the decay.
    pub decay_type: WsdShape,
    /// `r`, in [0, 1]: start of the warmup and end of the decay, as a ratio of `b`.
    pub min_lr_ratio: f64,
    /// `c` of the cosine decay (> 0).
    pub num_cycles: f64,
}

impl Wsd {
    pub(crate) fn parse(f: &mut Fields<'_>) -> Result<Self> {
        Ok(Wsd {
            warmup_steps: f.int("warmup_steps")?,
            stable_steps: f.int("stable_steps")?,
            decay_steps: f.int("decay_steps")?,
            warmup_type: WsdShape::from_index(f.choice("warmup_type", &WSD_SHAPES)?),
            decay_type: WsdShape::from_index(f.choice("decay_type", &WSD_SHAPES)?),
            min_lr_ratio: f.num("min_lr_ratio")?,
            num_cycles: f.num("num_cycles")?,
        })
    }
}

impl Kind for Wsd {
    fn fields(&self) -> Map<String, Value> {
        map(
            json!({"warmup_steps": self.warmup_steps, "stable_steps": self.stable_steps,
                   "decay_steps": self.decay_steps,
                   "warmup_type": WSD_SHAPES[self.warmup_type as usize],
                   "decay_type": WSD_SHAPES[self.decay_type as usize],
                   "min_lr_ratio": self.min_lr_ratio, "num_cycles": self.num_cycles}),
        )
    }
    fn validate(&self, _: usize) -> Result<()> {
        check_range("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)?;
        check_cycles(self.num_cycles)
    }
    fn lr(&self, g: &GroupCtx, k: u64) -> f64 {
        let r = self.min_lr_ratio;
        let (w, s, d) = (
            u64::from(self.warmup_steps),
            u64::from(self.stable_steps),
            u64::from(self.decay_steps),
        );
        let shaped = |x: f64| (r + (1.0 - r) * x).max(0.0);
        let f = if k < w {
            let p = k as f64 / w.max(1) as f64;
            shaped(match self.warmup_type {
                WsdShape::Linear => p,
                WsdShape::Cosine => 0.5 * (1.0 - (PI * p).cos()),
                WsdShape::OneMinusSqrt => 1.0 - (1.0 - p).sqrt(),
            })
        } else if k < w + s {
            1.0
        } else if k < w + s + d {
            let p = (k - w - s) as f64 / d.max(1) as f64;
            shaped(match self.decay_type {
                WsdShape::Linear => 1.0 - p,
                WsdShape::Cosine => cos_wave(self.num_cycles, p),
                WsdShape::OneMinusSqrt => 1.0 - p.sqrt(),
            })
        } else {
            r
        };
        g.base_lr * f
    }
    fn node(&self, _: &GroupCtx, _: &mut Program) -> Node {
        let (num, shift) = dyadic(2.0 * self.num_cycles);
        Node::new(op::WSD)
            .u(1, self.warmup_steps)
            .u(2, self.stable_steps)
            .u(3, self.decay_steps)
            .u(4, self.warmup_type as u32)
            .u(5, self.decay_type as u32)
            .f(6, self.min_lr_ratio)
            .f(7, 1.0 - self.min_lr_ratio)
            .u(8, num)
            .u(9, shift)
    }
}
