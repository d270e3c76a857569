//! Composites: `SequentialLR` (children one after another) and `ChainedScheduler` (the
//! product of multiplicative children). On the device the root node picks or multiplies its
//! children, which are leaves: no code per combination.

use super::fields::Fields;
use super::program::{op, Node, Program};
use super::pytorch::json_map as map;
use super::{hyper, GroupCtx, Kind, Schedule};
use crate::error::Result;
use serde_json::{json, Map, Value};

/// `SequentialLR(schedulers, milestones)`: child `i` from milestone `i` (the first from 0), at
/// its own epoch `k - m_i`, restarting from the base lr (PyTorch 2.15 calls the child's closed
/// form at its epoch 0). Children may be any kind except onecycle, reduce_on_plateau and the
/// composites; cyclic only after the first and without `cycle_momentum`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sequential {
    /// The children (>= 1).
    pub schedules: Vec<Schedule>,
    /// Strictly increasing epochs >= 1, one fewer than the children.
    pub milestones: Vec<u32>,
}

impl Sequential {
    pub(crate) fn parse(f: &mut Fields<'_>) -> Result<Self> {
        Ok(Sequential {
            schedules: f.schedules("schedules")?,
            milestones: f.ints("milestones")?,
        })
    }

    fn child(&self, k: u64) -> (&Schedule, u64) {
        let i = self
            .milestones
            .iter()
            .take_while(|&&m| u64::from(m) <= k)
            .count();
        let start = if i == 0 {
            0
        } else {
            u64::from(self.milestones[i - 1])
        };
        (&self.schedules[i.min(self.schedules.len() - 1)], k - start)
    }
}

impl Kind for Sequential {
    fn fields(&self) -> Map<String, Value> {
        map(
            json!({"schedules": self.schedules.iter().map(Schedule::to_json_value).collect::<Vec<_>>(),
                   "milestones": self.milestones}),
        )
    }
    fn validate(&self, n_groups: usize) -> Result<()> {
        if self.schedules.is_empty() {
            return Err(hyper("schedules", "needs at least one child"));
        }
        if self.milestones.len() + 1 != self.schedules.len() {
            return Err(hyper(
                "milestones",
                format!(
                    "needs one fewer than the {} schedules, got {}",
                    self.schedules.len(),
                    self.milestones.len()
                ),
            ));
        }
        let mut last = 0;
        for &m in &self.milestones {
            if m <= last {
                return Err(hyper(
                    "milestones",
                    format!(
                        "must be strictly increasing integers >= 1, got {:?}",
                        self.milestones
                    ),
                ));
            }
            last = m;
        }
        for (i, s) in self.schedules.iter().enumerate() {
            let refused = match s {
                Schedule::OneCycle(_) => Some("onecycle rewrites every group's initial lr"),
                Schedule::Sequential(_) | Schedule::Chained(_) => {
                    Some("a nested composite has no closed form in PyTorch")
                }
                Schedule::ReduceOnPlateau(_) => Some("reduce_on_plateau is not a closed form"),
                Schedule::Cyclic(c) if i == 0 || c.cycle_momentum => {
                    Some("cyclic is allowed only after the first child, without cycle_momentum")
                }
                _ => None,
            };
            if let Some(why) = refused {
                return Err(hyper(
                    "schedules",
                    format!("child {i} ({}) is not allowed: {why}", s.kind()),
                ));
            }
            s.validate_groups(n_groups)?;
        }
        Ok(())
    }
    fn lr(&self, g: &GroupCtx, k: u64) -> f64 {
        let (s, kk) = self.child(k);
        s.lr(g, kk)
    }
    fn peak_lr(&self, g: &GroupCtx) -> f64 {
        self.schedules
            .iter()
            .map(|s| s.peak_lr(g))
            .fold(0.0, f64::max)
    }
    fn node(&self, _: &GroupCtx, p: &mut Program) -> Node {
        let at = p.list(&self.milestones);
        Node::new(op::SEQUENTIAL)
            .u(1, self.schedules.len() as u32)
            .u(2, at)
    }
    fn children(&self) -> &[Schedule] {
        &self.schedules
    }
}

/// `ChainedScheduler(schedulers)`: `b * prod_i f_i(k)`, each `f_i` a multiplicative child's
/// lr over `b` (constant_factor, linear, exponential, step, multistep, polynomial).
#[derive(Clone, Debug, PartialEq)]
pub struct Chained {
    /// The children (>= 1).
    pub schedules: Vec<Schedule>,
}

impl Chained {
    pub(crate) fn parse(f: &mut Fields<'_>) -> Result<Self> {
        Ok(Chained {
            schedules: f.schedules("schedules")?,
        })
    }
}

impl Kind for Chained {
    fn fields(&self) -> Map<String, Value> {
        map(
            json!({"schedules": self.schedules.iter().map(Schedule::to_json_value).collect::<Vec<_>>()}),
        )
    }
    fn validate(&self, n_groups: usize) -> Result<()> {
        if self.schedules.is_empty() {
            return Err(hyper("schedules", "needs at least one child"));
        }
        for (i, s) in self.schedules.iter().enumerate() {
            if !matches!(
                s,
                Schedule::ConstantFactor(_)
                    | Schedule::Linear(_)
                    | Schedule::Exponential(_)
                    | Schedule::Step(_)
                    | Schedule::MultiStep(_)
                    | Schedule::Polynomial(_)
            ) {
                return Err(hyper(
                    "schedules",
                    format!(
                        "child {i} ({}) is not multiplicative: chained takes constant_factor, linear, exponential, step, multistep and polynomial",
                        s.kind()
                    ),
                ));
            }
            s.validate_groups(n_groups)?;
        }
        Ok(())
    }
    fn lr(&self, g: &GroupCtx, k: u64) -> f64 {
        let unit = GroupCtx { base_lr: 1.0, ..*g };
        g.base_lr
            * self
                .schedules
                .iter()
                .map(|s| s.lr(&unit, k))
                .product::<f64>()
    }
    fn node(&self, _: &GroupCtx, _: &mut Program) -> Node {
        Node::new(op::CHAINED).u(1, self.schedules.len() as u32)
    }
    fn children(&self) -> &[Schedule] {
        &self.schedules
    }
}
