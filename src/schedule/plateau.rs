//! `ReduceLROnPlateau`: a state machine fed one metric per epoch. On the device the decision
//! is taken in the prologue at each epoch boundary, from a metric the engine writes into the
//! control buffer ([`crate::GpuAdamW::metric_binding`]); nothing is read back.

use super::fields::Fields;
use super::program::{op, split, Node, Program, PLATEAU_HEADER};
use super::pytorch::json_map as map;
use super::{check_range, hyper, GroupCtx, Kind, PerGroup, F32_MAX};
use crate::error::Result;
use serde_json::{json, Map, Value};

/// `ReduceLROnPlateau(mode, factor, patience, threshold, threshold_mode, cooldown, min_lr,
/// eps)`: after each epoch's metric, when the metric has not improved on the best one
/// (by `threshold`, relative or absolute) for more than `patience` epochs, every group's lr
/// is cut to `max(lr * factor, min_lr)` (unless the cut is at most `eps`), then `cooldown`
/// epochs pass without counting.
#[derive(Clone, Debug, PartialEq)]
pub struct ReduceOnPlateau {
    /// Maximize the metric (`"max"`) instead of minimizing it.
    pub maximize: bool,
    /// Cut factor, in (0, 1).
    pub factor: f64,
    /// Bad epochs tolerated before a cut.
    pub patience: u32,
    /// Improvement needed to count as better (>= 0).
    pub threshold: f64,
    /// `threshold` is absolute (`"abs"`) instead of relative.
    pub threshold_abs: bool,
    /// Epochs after a cut during which bad epochs are not counted.
    pub cooldown: u32,
    /// Lowest lr per group (>= 0).
    pub min_lr: PerGroup,
    /// Cuts of at most this much (absolute) are skipped.
    pub eps: f64,
}

/// The decision state of [`ReduceOnPlateau`] (shared by all groups) and each group's lr.
#[derive(Clone, Debug, PartialEq)]
pub struct PlateauState {
    /// Best metric so far (`+inf` / `-inf` before the first).
    pub best: f64,
    /// Bad epochs counted.
    pub bad: u32,
    /// Cooldown epochs left.
    pub cooldown: u32,
    /// Each group's lr.
    pub lrs: Vec<f64>,
}

impl ReduceOnPlateau {
    pub(crate) fn parse(f: &mut Fields<'_>) -> Result<Self> {
        Ok(ReduceOnPlateau {
            maximize: f.choice("mode", &["min", "max"])? == 1,
            factor: f.num("factor")?,
            patience: f.int("patience")?,
            threshold: f.num("threshold")?,
            threshold_abs: f.choice("threshold_mode", &["rel", "abs"])? == 1,
            cooldown: f.int("cooldown")?,
            min_lr: f.per_group("min_lr")?,
            eps: f.num("eps")?,
        })
    }

    /// The state before any metric.
    pub fn initial(&self, groups: &[GroupCtx]) -> PlateauState {
        PlateauState {
            best: if self.maximize {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            },
            bad: 0,
            cooldown: 0,
            lrs: groups.iter().map(|g| g.base_lr).collect(),
        }
    }

    /// PyTorch's `step(metric)`, in f64.
    pub fn step(&self, s: &mut PlateauState, metric: f64) {
        let t = self.threshold;
        let better = match (self.maximize, self.threshold_abs) {
            (false, false) => metric < s.best * (1.0 - t),
            (false, true) => metric < s.best - t,
            (true, false) => metric > s.best * (1.0 + t),
            (true, true) => metric > s.best + t,
        };
        if better {
            s.best = metric;
            s.bad = 0;
        } else {
            s.bad = s.bad.saturating_add(1);
        }
        if s.cooldown > 0 {
            s.cooldown -= 1;
            s.bad = 0;
        }
        if s.bad > self.patience {
            for (i, lr) in s.lrs.iter_mut().enumerate() {
                let new = (*lr * self.factor).max(self.min_lr.get(i));
                if *lr - new > self.eps {
                    *lr = new;
                }
            }
            s.cooldown = self.cooldown;
            s.bad = 0;
        }
    }

    /// Each group's lr at every epoch `0..=metrics.len()` (epoch `k` after `metrics[..k]`).
    pub fn lrs(&self, groups: &[GroupCtx], metrics: &[f32]) -> Vec<Vec<f64>> {
        let mut s = self.initial(groups);
        let mut out = vec![s.lrs.clone()];
        for &m in metrics {
            self.step(&mut s, f64::from(m));
            out.push(s.lrs.clone());
        }
        out
    }

    /// The state's device words (after the programs): best, bad, cooldown, 0, then each
    /// group's lr as two f32.
    pub(crate) fn initial_state(&self, groups: &[GroupCtx]) -> Vec<u32> {
        let s = self.initial(groups);
        state_words(&s)
    }
}

/// A [`PlateauState`] as the device's words.
pub(crate) fn state_words(s: &PlateauState) -> Vec<u32> {
    let mut w = vec![(s.best as f32).to_bits(), s.bad, s.cooldown, 0];
    for &lr in &s.lrs {
        let (hi, lo) = split(lr);
        w.extend([hi.to_bits(), lo.to_bits()]);
    }
    debug_assert_eq!(w.len(), PLATEAU_HEADER + 2 * s.lrs.len());
    w
}

impl Kind for ReduceOnPlateau {
    fn fields(&self) -> Map<String, Value> {
        map(
            json!({"mode": if self.maximize { "max" } else { "min" }, "factor": self.factor,
            "patience": self.patience, "threshold": self.threshold,
            "threshold_mode": if self.threshold_abs { "abs" } else { "rel" },
            "cooldown": self.cooldown, "min_lr": self.min_lr.to_json(), "eps": self.eps}),
        )
    }
    fn validate(&self, n_groups: usize) -> Result<()> {
        if !(self.factor > 0.0 && self.factor < 1.0) {
            return Err(hyper(
                "factor",
                format!("must be in (0, 1), got {}", self.factor),
            ));
        }
        check_range("threshold", self.threshold, 0.0, F32_MAX)?;
        self.min_lr
            .check("min_lr", n_groups, |x| (0.0..=F32_MAX).contains(&x), ">= 0")?;
        check_range("eps", self.eps, 0.0, F32_MAX)
    }
    fn lr(&self, g: &GroupCtx, _: u64) -> f64 {
        g.base_lr
    }
    fn node(&self, g: &GroupCtx, _: &mut Program) -> Node {
        let th = match (self.threshold_abs, self.maximize) {
            (true, _) => self.threshold,
            (false, false) => 1.0 - self.threshold,
            (false, true) => 1.0 + self.threshold,
        };
        // Word 1 (the group's lr words in the region) is set by `program::Region`.
        Node::new(op::PLATEAU)
            .u(
                2,
                u32::from(self.maximize) | (u32::from(self.threshold_abs) << 1),
            )
            .u(3, self.patience)
            .u(4, self.cooldown)
            .split(5, th)
            .split(7, self.factor)
            .f(9, self.min_lr.get(g.index))
            .f(10, self.eps)
    }
}
