//! Learning-rate schedules: every `torch.optim.lr_scheduler` scheduler and the Hugging Face
//! recipes, as data the device evaluates.
//!
//! A [`Schedule`] is a description (one struct per kind, in one file per family: its JSON
//! fields, validation, f64 closed form and device encoding). The kernel evaluates its device
//! form, a small program per param group ([`program`]), at every step from `meta`: there is
//! no host work per step. The f64 closed forms here follow PyTorch's formulas and are what
//! the device's f32 values are tested against (`../shared/traces/SCHEDULES.md` specifies each
//! kind; PyTorch computes the lr in f64 on the host).
//!
//! Adding a kind: a struct implementing [`Kind`] (fields, `validate`, `lr`, `node`), a line in
//! the `schedule_kinds!` list below, and its case in `shaders/schedule.wgsl` and
//! `src/twin/schedule.rs` (an op code in [`program::op`]).

mod compose;
mod cyclic;
mod fields;
mod hf;
mod plateau;
#[doc(hidden)]
pub mod program;
mod pytorch;

pub use compose::{Chained, Sequential};
pub use cyclic::{Cyclic, CyclicMode, OneCycle};
pub use hf::{
    InverseSqrt, WarmupConstant, WarmupCosine, WarmupCosineHardRestarts, WarmupCosineMinLr,
    WarmupLinear, WarmupPolynomial, Wsd, WsdShape,
};
pub use plateau::{PlateauState, ReduceOnPlateau};
pub use pytorch::{
    ConstantFactor, Cosine, CosineWarmRestarts, Exponential, Linear, MultiStep, Polynomial, StepLr,
};

use crate::error::{Error, Result};
use fields::Fields;
use program::{Node, Program};
use serde_json::{json, Map, Value};

/// A value given for all param groups at once or one per group (`max_lr`, `min_lr`, ...),
/// as PyTorch's schedulers accept a float or a list.
#[derive(Clone, Debug, PartialEq)]
pub enum PerGroup {
    /// The same value for every group.
    All(f64),
    /// One value per group, in group order.
    Each(Vec<f64>),
}

impl PerGroup {
    /// The value of group `i` (the last one's for a list too short; validation refuses that).
    pub fn get(&self, i: usize) -> f64 {
        match self {
            PerGroup::All(x) => *x,
            PerGroup::Each(xs) => xs[i.min(xs.len() - 1)],
        }
    }

    fn values(&self) -> Vec<f64> {
        match self {
            PerGroup::All(x) => vec![*x],
            PerGroup::Each(xs) => xs.clone(),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            PerGroup::All(x) => json!(x),
            PerGroup::Each(xs) => json!(xs),
        }
    }

    /// Checks the list length against `n_groups` and every value with `ok`.
    fn check(
        &self,
        name: &'static str,
        n_groups: usize,
        ok: impl Fn(f64) -> bool,
        range: &str,
    ) -> Result<()> {
        if let PerGroup::Each(xs) = self {
            // n_groups 0: not known yet (checked again when the groups are).
            if n_groups != 0 && xs.len() != n_groups {
                return Err(hyper(
                    name,
                    format!("has {} values for {n_groups} param groups", xs.len()),
                ));
            }
        }
        for x in self.values() {
            if !ok(x) {
                return Err(hyper(name, format!("must be {range}, got {x}")));
            }
        }
        Ok(())
    }
}

/// What a schedule needs to know about a param group: its index, its base lr `b` (the
/// group's lr, else the optimizer's) and the optimizer's lr `B`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupCtx {
    /// Index of the group.
    pub index: usize,
    /// The group's base lr.
    pub base_lr: f64,
    /// The optimizer's lr (`optimizer.defaults["lr"]`).
    pub optimizer_lr: f64,
}

impl GroupCtx {
    /// A group with base lr `b` that is also the optimizer's lr.
    pub fn single(base_lr: f64) -> Self {
        GroupCtx {
            index: 0,
            base_lr,
            optimizer_lr: base_lr,
        }
    }
}

/// One kind of schedule: its fields, validation, f64 closed form and device node.
pub trait Kind: std::fmt::Debug {
    /// The kind's fields as JSON (without `kind`).
    fn fields(&self) -> Map<String, Value>;
    /// Checks every field (lists against the number of param groups).
    fn validate(&self, n_groups: usize) -> Result<()>;
    /// The lr of group `g` at scheduler epoch `k`, in f64 (PyTorch's value).
    fn lr(&self, g: &GroupCtx, k: u64) -> f64;
    /// `betas[0]` at epoch `k` where the schedule cycles momentum, else `None`.
    fn beta1(&self, _g: &GroupCtx, _k: u64) -> Option<f64> {
        None
    }
    /// The largest lr the schedule reaches for group `g` (for the f32 overflow checks).
    fn peak_lr(&self, g: &GroupCtx) -> f64 {
        g.base_lr
    }
    /// The device node of group `g` (lists go into `p`).
    fn node(&self, g: &GroupCtx, p: &mut Program) -> Node;
    /// A composite's children (leaves have none).
    fn children(&self) -> &[Schedule] {
        &[]
    }
    /// Nodes of the device program: this one and its children's.
    fn nodes(&self) -> usize {
        1 + self.children().iter().map(Schedule::nodes).sum::<usize>()
    }
    /// Appends the device program of group `g` to `p`: this node, then its children.
    fn encode(&self, g: &GroupCtx, p: &mut Program) {
        let node = self.node(g, p);
        p.nodes.push(node);
        for c in self.children() {
            c.encode(g, p);
        }
    }
}

/// The constant schedule: the base lr at every step (no PyTorch scheduler).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Constant;

impl Kind for Constant {
    fn fields(&self) -> Map<String, Value> {
        Map::new()
    }
    fn validate(&self, _: usize) -> Result<()> {
        Ok(())
    }
    fn lr(&self, g: &GroupCtx, _: u64) -> f64 {
        g.base_lr
    }
    fn node(&self, _: &GroupCtx, _: &mut Program) -> Node {
        Node::new(program::op::CONSTANT)
    }
}

fn parse_constant(f: &mut Fields<'_>) -> Result<Constant> {
    let _ = f;
    Ok(Constant)
}

macro_rules! schedule_kinds {
    ($( $(#[$doc:meta])* $variant:ident($ty:ty) = $name:literal by $parse:path, )*) => {
        /// A learning-rate schedule, evaluated per scheduler epoch on the device.
        ///
        /// The epoch of optimizer step `s` (1-based) is `floor((s - 1) / steps_per_epoch)`, as
        /// in a training loop that calls `scheduler.step()` once every `steps_per_epoch`
        /// optimizer steps. Each kind is its PyTorch or Hugging Face namesake
        /// (`../shared/traces/SCHEDULES.md` has every formula); its JSON form is the
        /// `schedule` object of the trace format, `{"kind": ..., fields}`.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Schedule {
            $( $(#[$doc])* $variant($ty), )*
        }

        impl Schedule {
            /// The kind's name in JSON.
            pub fn kind(&self) -> &'static str {
                match self { $( Schedule::$variant(_) => $name, )* }
            }

            /// The kind's description.
            pub fn as_kind(&self) -> &dyn Kind {
                match self { $( Schedule::$variant(x) => x, )* }
            }

            fn parse_kind(kind: &str, f: &mut Fields<'_>) -> Result<Option<Self>> {
                $( if kind == $name { return Ok(Some(Schedule::$variant($parse(f)?))); } )*
                Ok(None)
            }

            /// Every kind's JSON name.
            pub const KINDS: &'static [&'static str] = &[$($name),*];
        }
    };
}

schedule_kinds! {
    /// The base lr at every step.
    Constant(Constant) = "constant" by parse_constant,
    /// `CosineAnnealingLR`.
    Cosine(Cosine) = "cosine" by Cosine::parse,
    /// `CosineAnnealingWarmRestarts`.
    CosineWarmRestarts(CosineWarmRestarts) = "cosine_warm_restarts" by CosineWarmRestarts::parse,
    /// `ConstantLR`.
    ConstantFactor(ConstantFactor) = "constant_factor" by ConstantFactor::parse,
    /// `LinearLR`.
    Linear(Linear) = "linear" by Linear::parse,
    /// `ExponentialLR`.
    Exponential(Exponential) = "exponential" by Exponential::parse,
    /// `StepLR`.
    Step(StepLr) = "step" by StepLr::parse,
    /// `MultiStepLR`.
    MultiStep(MultiStep) = "multistep" by MultiStep::parse,
    /// `PolynomialLR`.
    Polynomial(Polynomial) = "polynomial" by Polynomial::parse,
    /// `OneCycleLR` (cycles beta1 with `cycle_momentum`).
    OneCycle(OneCycle) = "onecycle" by OneCycle::parse,
    /// `CyclicLR` (cycles beta1 with `cycle_momentum`).
    Cyclic(Cyclic) = "cyclic" by Cyclic::parse,
    /// `SequentialLR`: children one after another at milestones.
    Sequential(Sequential) = "sequential" by Sequential::parse,
    /// `ChainedScheduler`: the product of multiplicative children.
    Chained(Chained) = "chained" by Chained::parse,
    /// `ReduceLROnPlateau`, decided on the device from a metric the engine writes.
    ReduceOnPlateau(ReduceOnPlateau) = "reduce_on_plateau" by ReduceOnPlateau::parse,
    /// HF `get_cosine_schedule_with_warmup`.
    WarmupCosine(WarmupCosine) = "warmup_cosine" by WarmupCosine::parse,
    /// HF `get_linear_schedule_with_warmup`.
    WarmupLinear(WarmupLinear) = "warmup_linear" by WarmupLinear::parse,
    /// HF `get_constant_schedule_with_warmup`.
    WarmupConstant(WarmupConstant) = "warmup_constant" by WarmupConstant::parse,
    /// HF `get_cosine_with_hard_restarts_schedule_with_warmup`.
    WarmupCosineHardRestarts(WarmupCosineHardRestarts) = "warmup_cosine_hard_restarts" by WarmupCosineHardRestarts::parse,
    /// HF `get_polynomial_decay_schedule_with_warmup`.
    WarmupPolynomial(WarmupPolynomial) = "warmup_polynomial" by WarmupPolynomial::parse,
    /// HF `get_inverse_sqrt_schedule`.
    InverseSqrt(InverseSqrt) = "inverse_sqrt" by InverseSqrt::parse,
    /// HF `get_wsd_schedule` (warmup, stable, decay).
    Wsd(Wsd) = "wsd" by Wsd::parse,
    /// HF `get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate=...)`.
    WarmupCosineMinLr(WarmupCosineMinLr) = "warmup_cosine_min_lr" by WarmupCosineMinLr::parse,
}

impl Default for Schedule {
    /// [`Schedule::Constant`].
    fn default() -> Self {
        Schedule::Constant(Constant)
    }
}

impl Schedule {
    /// `CosineAnnealingLR(T_max, eta_min)`.
    pub fn cosine(t_max: u32, eta_min: f64) -> Self {
        Schedule::Cosine(Cosine { t_max, eta_min })
    }

    /// `CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)`.
    pub fn cosine_warm_restarts(t_0: u32, t_mult: u32, eta_min: f64) -> Self {
        Schedule::CosineWarmRestarts(CosineWarmRestarts {
            t_0,
            t_mult,
            eta_min,
        })
    }

    /// HF's linear warmup then cosine decay.
    pub fn warmup_cosine(warmup_steps: u32, total_steps: u32, num_cycles: f64) -> Self {
        Schedule::WarmupCosine(WarmupCosine {
            warmup_steps,
            total_steps,
            num_cycles,
        })
    }

    /// Checks every field for any number of param groups (per-group lists are checked
    /// against the groups by [`Schedule::validate_groups`]).
    pub fn validate(&self) -> Result<()> {
        self.as_kind().validate(0)
    }

    /// Checks every field for `n_groups` param groups.
    pub fn validate_groups(&self, n_groups: usize) -> Result<()> {
        self.as_kind().validate(n_groups)
    }

    /// Whether the device sets beta1 from this schedule (onecycle, cyclic with
    /// `cycle_momentum`).
    pub fn cycles_momentum(&self) -> bool {
        match self {
            Schedule::OneCycle(x) => x.cycle_momentum,
            Schedule::Cyclic(x) => x.cycle_momentum,
            _ => false,
        }
    }

    /// Whether the schedule is a state machine fed a metric (ReduceLROnPlateau).
    pub fn needs_metric(&self) -> bool {
        matches!(self, Schedule::ReduceOnPlateau(_))
    }

    /// The lr of group `g` at scheduler epoch `k` in f64 (PyTorch's value). For
    /// ReduceLROnPlateau this is the lr before any metric: use
    /// [`ReduceOnPlateau::lrs`] with the metrics.
    pub fn lr(&self, g: &GroupCtx, k: u64) -> f64 {
        self.as_kind().lr(g, k)
    }

    /// `betas[0]` at epoch `k` where the schedule cycles momentum.
    pub fn beta1(&self, g: &GroupCtx, k: u64) -> Option<f64> {
        self.as_kind().beta1(g, k)
    }

    /// The largest lr the schedule reaches for group `g`.
    pub fn peak_lr(&self, g: &GroupCtx) -> f64 {
        self.as_kind().peak_lr(g)
    }

    pub(crate) fn nodes(&self) -> usize {
        self.as_kind().nodes()
    }

    pub(crate) fn encode(&self, g: &GroupCtx, p: &mut Program) {
        self.as_kind().encode(g, p)
    }

    /// Parses the `schedule` object of the trace format, e.g.
    /// `{"kind": "cosine", "t_max": 60, "eta_min": 0.0}`.
    pub fn from_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|e| Error::InvalidJson(e.to_string()))?;
        Self::from_json_value(&v)
    }

    /// Like [`Schedule::from_json`], from an already parsed value. Unknown, missing and
    /// mistyped fields are refused, naming the field.
    pub fn from_json_value(v: &Value) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::InvalidJson("schedule must be a JSON object".into()))?;
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::InvalidJson("schedule needs a string `kind`".into()))?;
        let mut f = Fields::new(kind, obj);
        let s = Self::parse_kind(kind, &mut f)?.ok_or_else(|| {
            Error::InvalidJson(format!(
                "unknown schedule kind `{kind}` (expected one of {})",
                Self::KINDS.join(", ")
            ))
        })?;
        f.finish()?;
        s.validate()?;
        Ok(s)
    }

    /// The schedule as the `schedule` object of the trace format.
    pub fn to_json_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("kind".into(), json!(self.kind()));
        m.extend(self.as_kind().fields());
        Value::Object(m)
    }
}

/// The scheduler epoch used by optimizer step `step` (1-based):
/// `floor((step - 1) / steps_per_epoch)`.
pub fn epoch_of_step(step: u64, steps_per_epoch: u32) -> u64 {
    step.saturating_sub(1) / u64::from(steps_per_epoch.max(1))
}

/// The f64 lr of optimizer step `step` (1-based) for a single group with base lr `base_lr`.
pub fn lr_at_step(schedule: &Schedule, base_lr: f64, steps_per_epoch: u32, step: u64) -> f64 {
    schedule.lr(
        &GroupCtx::single(base_lr),
        epoch_of_step(step, steps_per_epoch),
    )
}

pub(crate) use crate::error::hyper;

/// The largest finite f32.
pub(crate) const F32_MAX: f64 = f32::MAX as f64;

/// Checks `lo <= x <= hi` (finite), naming the field.
pub(crate) fn check_range(name: &'static str, x: f64, lo: f64, hi: f64) -> Result<()> {
    if x.is_finite() && (lo..=hi).contains(&x) {
        Ok(())
    } else {
        Err(hyper(name, format!("must be in [{lo}, {hi}], got {x}")))
    }
}

/// Checks `0 < x <= hi`.
pub(crate) fn check_pos(name: &'static str, x: f64, hi: f64) -> Result<()> {
    if x.is_finite() && x > 0.0 && x <= hi {
        Ok(())
    } else {
        Err(hyper(name, format!("must be in (0, {hi}], got {x}")))
    }
}

/// Checks an integer field is at least `min`.
pub(crate) fn check_min(name: &'static str, x: u32, min: u32) -> Result<()> {
    if x >= min {
        Ok(())
    } else {
        Err(hyper(name, format!("must be >= {min}, got {x}")))
    }
}

/// `(num, shift)` with `num / 2^shift` the closest such fraction to `x` (0 <= x < 2^32),
/// `num < 2^32`, `shift <= 31` as large as possible: exact for integers and dyadic rationals.
pub fn dyadic(x: f64) -> (u32, u32) {
    let mut shift = 31;
    while shift > 0 && (x * f64::from(1u32 << shift)).round() >= 4294967296.0 {
        shift -= 1;
    }
    let num = (x * f64::from(1u32 << shift)).round().min(4294967295.0);
    (num as u32, shift)
}
