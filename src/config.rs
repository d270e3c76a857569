//! Optimizer hyperparameters, learning-rate schedules and parameter groups.
//!
//! Every default is PyTorch's (`torch.optim.AdamW`), and every schedule is the one of
//! `torch.optim.lr_scheduler` with the same name.

use crate::error::{hyper, Result};
pub use crate::precision::{Dtype, Precision, StateDtype};
use crate::schedule::GroupCtx;
pub use crate::schedule::Schedule;

/// How the global gradient norm (for clipping) is summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GradNormOrder {
    /// A parallel tree of compensated sums: as accurate as a sum in twice the precision and
    /// fast at any size. The default.
    #[default]
    Compensated,
    /// Exactly the order of PyTorch's CPU `clip_grad_norm_` (ATen's AVX2 kernel: 8 interleaved
    /// f32 lanes per tensor, then the norm of the per-tensor norms), which reproduces its
    /// clipping coefficient bit for bit. Each lane is a serial chain on the device: meant for
    /// parity checks against PyTorch traces and small models, not for large tensors.
    TorchCpu,
}

impl GradNormOrder {
    /// The name used in checkpoints and on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            GradNormOrder::Compensated => "compensated",
            GradNormOrder::TorchCpu => "torch_cpu",
        }
    }

    /// Parses [`GradNormOrder::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "compensated" => Some(GradNormOrder::Compensated),
            "torch_cpu" | "torch-cpu" => Some(GradNormOrder::TorchCpu),
            _ => None,
        }
    }
}

/// AdamW hyperparameters plus the learning-rate schedule.
///
/// `Default` is PyTorch's `torch.optim.AdamW()`: lr 1e-3, betas (0.9, 0.999), eps 1e-8,
/// weight_decay 1e-2, no amsgrad, no maximize; with a constant schedule stepped every
/// optimizer step. Derive variants with the `with_*` builder methods:
///
/// ```
/// use wgpu_adamw::{AdamWConfig, Schedule};
/// let cfg = AdamWConfig::default()
///     .with_lr(3e-4)
///     .with_weight_decay(0.1)
///     .with_schedule(Schedule::cosine(1000, 1e-5));
/// assert!(cfg.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Base learning rate of groups that do not set their own.
    pub lr: f64,
    /// `(beta1, beta2)`: decay rates of the first and second moments.
    pub betas: (f64, f64),
    /// Term added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay of groups that do not set their own.
    pub weight_decay: f64,
    /// Use the running maximum of the second moment (AMSGrad).
    pub amsgrad: bool,
    /// Maximize the objective instead of minimizing it.
    pub maximize: bool,
    /// The learning-rate schedule.
    pub schedule: Schedule,
    /// Optimizer steps per scheduler epoch (>= 1).
    pub steps_per_epoch: u32,
    /// Clip the global L2 norm of all gradients to this value before the update, as
    /// `torch.nn.utils.clip_grad_norm_` (computed on the device, after unscaling).
    pub max_grad_norm: Option<f64>,
    /// AMP loss scaling as `torch.amp.GradScaler` drives an optimizer: gradients are divided
    /// by the loss scale held in a device buffer, and a step with any non-finite gradient is
    /// skipped on the device (parameters, moments and Adam's `t` unchanged; the schedule still
    /// advances).
    pub loss_scaling: bool,
    /// How the gradient norm is summed when clipping.
    pub grad_norm_order: GradNormOrder,
    /// Element types of the parameters, gradients and moments; f32 master weights.
    pub precision: Precision,
    /// PyTorch's GradScaler on the device: the loss scale and its growth tracker live in the
    /// control buffer and are updated in the same pass as each step (needs `loss_scaling`;
    /// set both with [`AdamWConfig::with_grad_scaler`]).
    pub grad_scaler: Option<GradScalerConfig>,
    /// Keep an exponential moving average of the weights with this decay, updated in the
    /// same pass as each step that is not skipped (`torch.optim.swa_utils.AveragedModel`
    /// with `get_ema_multi_avg_fn(decay)`: the first update copies the weights).
    pub ema_decay: Option<f64>,
    /// Micro-batches per optimizer step (>= 1): the engine writes its gradient buffer once
    /// per micro-batch and calls the step each time; the optimizer sums the gradients in
    /// order (rounding each add to [`AdamWConfig::grad_acc_dtype`], as PyTorch's
    /// `p.grad += g`) and updates on every `accumulate`-th call. The counter lives on the
    /// device, so micro-batches recorded in one submit work. Unscaling, the non-finite
    /// check and clipping apply to the sum.
    pub accumulate: u32,
    /// Round the 16-bit parameters stochastically (unbiased, as torchao's bf16 optimizers)
    /// instead of to nearest, with random bits from a counter-based generator keyed by
    /// (this seed, Adam's step, the element's index in registration order): the GPU and the
    /// CPU agree bit for bit and a resumed run repeats itself. Needs 16-bit parameters
    /// without master weights. Moments and the EMA still round to nearest.
    pub stochastic_rounding: Option<u64>,
}

/// `torch.amp.GradScaler`'s dynamic loss scale: after a step with non-finite gradients (which
/// is skipped) the scale is multiplied by `backoff_factor`; after `growth_interval`
/// consecutive finite steps by `growth_factor` (unless that overflows f32).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradScalerConfig {
    /// The first step's scale.
    pub init_scale: f64,
    /// Multiplies the scale after `growth_interval` finite steps (> 1).
    pub growth_factor: f64,
    /// Multiplies the scale after a step with non-finite gradients (in (0, 1)).
    pub backoff_factor: f64,
    /// Consecutive finite steps before the scale grows (>= 1).
    pub growth_interval: u32,
}

impl Default for GradScalerConfig {
    /// PyTorch's defaults: 2^16, 2, 0.5, 2000.
    fn default() -> Self {
        Self {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }
}

impl GradScalerConfig {
    /// Checks PyTorch's ranges, in f32.
    pub fn validate(&self) -> Result<()> {
        let s = self.init_scale;
        if !(s > 0.0 && s <= F32_MAX && (s as f32) > 0.0) {
            return Err(hyper(
                "init_scale",
                format!("must be > 0 and finite in f32, got {s}"),
            ));
        }
        if !(self.growth_factor > 1.0 && self.growth_factor <= F32_MAX) {
            return Err(hyper(
                "growth_factor",
                format!("must be > 1 and finite, got {}", self.growth_factor),
            ));
        }
        if !(self.backoff_factor > 0.0 && self.backoff_factor < 1.0) {
            return Err(hyper(
                "backoff_factor",
                format!("must be in (0, 1), got {}", self.backoff_factor),
            ));
        }
        if self.growth_interval == 0 {
            return Err(hyper("growth_interval", "must be >= 1"));
        }
        Ok(())
    }
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 1e-2,
            amsgrad: false,
            maximize: false,
            schedule: Schedule::default(),
            steps_per_epoch: 1,
            max_grad_norm: None,
            loss_scaling: false,
            grad_norm_order: GradNormOrder::Compensated,
            precision: Precision::F32,
            grad_scaler: None,
            ema_decay: None,
            accumulate: 1,
            stochastic_rounding: None,
        }
    }
}

impl AdamWConfig {
    /// Sets the base learning rate.
    pub fn with_lr(mut self, lr: f64) -> Self {
        self.lr = lr;
        self
    }
    /// Sets `(beta1, beta2)`.
    pub fn with_betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.betas = (beta1, beta2);
        self
    }
    /// Sets eps.
    pub fn with_eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
    /// Sets the decoupled weight decay.
    pub fn with_weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }
    /// Turns AMSGrad on or off.
    pub fn with_amsgrad(mut self, amsgrad: bool) -> Self {
        self.amsgrad = amsgrad;
        self
    }
    /// Turns maximize on or off.
    pub fn with_maximize(mut self, maximize: bool) -> Self {
        self.maximize = maximize;
        self
    }
    /// Sets the learning-rate schedule.
    pub fn with_schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self
    }
    /// Sets how many optimizer steps make one scheduler epoch.
    pub fn with_steps_per_epoch(mut self, steps_per_epoch: u32) -> Self {
        self.steps_per_epoch = steps_per_epoch;
        self
    }

    /// Sets (or removes) global gradient-norm clipping.
    pub fn with_max_grad_norm(mut self, max_grad_norm: Option<f64>) -> Self {
        self.max_grad_norm = max_grad_norm;
        self
    }
    /// Sets how the gradient norm is summed.
    pub fn with_grad_norm_order(mut self, order: GradNormOrder) -> Self {
        self.grad_norm_order = order;
        self
    }
    /// Turns AMP loss scaling on or off.
    pub fn with_loss_scaling(mut self, loss_scaling: bool) -> Self {
        self.loss_scaling = loss_scaling;
        self
    }

    /// Turns on loss scaling with PyTorch's GradScaler on the device (see
    /// [`GradScalerConfig`]); the scale starts at `init_scale`.
    pub fn with_grad_scaler(mut self, scaler: GradScalerConfig) -> Self {
        self.grad_scaler = Some(scaler);
        self.loss_scaling = true;
        self
    }

    /// Keeps a weight EMA with `decay` (see [`AdamWConfig::ema_decay`]).
    pub fn with_ema(mut self, decay: f64) -> Self {
        self.ema_decay = Some(decay);
        self
    }

    /// The EMA's element type: the parameters' with 16-bit moments, else f32.
    pub fn ema_dtype(&self) -> crate::precision::Dtype {
        if self.precision.is_pure_16bit() {
            self.precision.param
        } else {
            crate::precision::Dtype::F32
        }
    }

    /// Rounds the 16-bit parameters stochastically with `seed` (see
    /// [`AdamWConfig::stochastic_rounding`]).
    pub fn with_stochastic_rounding(mut self, seed: u64) -> Self {
        self.stochastic_rounding = Some(seed);
        self
    }

    /// Accumulates `k` micro-batches per optimizer step (see [`AdamWConfig::accumulate`]).
    pub fn with_accumulation(mut self, k: u32) -> Self {
        self.accumulate = k;
        self
    }

    /// The type gradients are summed in: the 16-bit gradients' own in pure 16-bit training
    /// (PyTorch's `p.grad` is 16-bit there), else f32.
    pub fn grad_acc_dtype(&self) -> crate::precision::Dtype {
        if self.precision.is_pure_16bit() {
            self.precision.grad
        } else {
            crate::precision::Dtype::F32
        }
    }

    /// The type the update and the gradient norm read gradients in: the accumulator's with
    /// accumulation, else the engine's.
    pub(crate) fn grad_read_dtype(&self) -> crate::precision::Dtype {
        if self.accumulate > 1 {
            self.grad_acc_dtype()
        } else {
            self.precision.grad
        }
    }

    /// A step reduces the gradients (their global norm and non-finite check): with clipping
    /// or loss scaling.
    pub(crate) fn reduces_gradients(&self) -> bool {
        self.loss_scaling || self.max_grad_norm.is_some()
    }

    /// The GPU updates with the mixed-precision kernel: a 16-bit stream, master weights, an
    /// EMA or accumulation.
    pub(crate) fn needs_mixed_update(&self) -> bool {
        self.precision.needs_mixed_update() || self.ema_decay.is_some() || self.accumulate > 1
    }

    /// Sets the element types ([`Precision`]).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// Checks every hyperparameter (PyTorch's ranges) and the schedule.
    ///
    /// The kernel computes in f32, so values PyTorch would accept but that overflow f32 are
    /// rejected (an [`crate::Error::InvalidHyperparameter`]) rather than turned into infinite
    /// parameters: lr, weight decay, eps, `eta_min` and `max_grad_norm` must be finite in f32,
    /// and so must each group's `peak lr * weight_decay` (the decay factor `1 - lr * wd`) and
    /// `peak lr / (1 - beta1)` (the step size at t = 1), where the peak lr is the larger of the
    /// base lr and `eta_min`.
    pub fn validate(&self) -> Result<()> {
        check_lr("lr", self.lr)?;
        let (b1, b2) = self.betas;
        for b in [b1, b2] {
            if !(b.is_finite() && (0.0..1.0).contains(&b)) {
                return Err(hyper(
                    "betas",
                    format!("each beta must be in [0, 1), got ({b1}, {b2})"),
                ));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(hyper(
                "eps",
                format!("must be finite and > 0, got {}", self.eps),
            ));
        }
        check_weight_decay(self.weight_decay)?;
        if self.steps_per_epoch == 0 {
            return Err(hyper("steps_per_epoch", "must be >= 1"));
        }
        if let Some(n) = self.max_grad_norm {
            if !(n.is_finite() && n > 0.0 && n <= F32_MAX) {
                return Err(hyper(
                    "max_grad_norm",
                    format!("must be > 0 and finite in f32, got {n}"),
                ));
            }
        }
        if self.eps > F32_MAX {
            return Err(hyper(
                "eps",
                format!("must be finite in f32, got {}", self.eps),
            ));
        }
        self.precision.validate()?;
        if self.stochastic_rounding.is_some()
            && (!self.precision.param.is_16bit() || self.precision.master_weights)
        {
            return Err(hyper(
                "stochastic_rounding",
                "needs 16-bit parameters without master weights",
            ));
        }
        if self.accumulate == 0 {
            return Err(hyper("accumulate", "must be >= 1 micro-batch per step"));
        }
        if let Some(d) = self.ema_decay {
            if !(0.0..=1.0).contains(&d) {
                return Err(hyper("ema_decay", format!("must be in [0, 1], got {d}")));
            }
        }
        if let Some(scaler) = &self.grad_scaler {
            scaler.validate()?;
            if !self.loss_scaling {
                return Err(hyper(
                    "grad_scaler",
                    "needs loss_scaling (AdamWConfig::with_grad_scaler sets both)",
                ));
            }
        }
        if self.precision.is_pure_16bit()
            && self.max_grad_norm.is_some()
            && self.grad_norm_order != GradNormOrder::TorchCpu
        {
            // PyTorch's clip_grad_norm_ rounds each tensor's norm to the 16-bit type there.
            return Err(crate::Error::Unsupported(
                "clipping pure 16-bit gradients needs GradNormOrder::TorchCpu (per-tensor norms, each rounded to 16 bits)".into(),
            ));
        }
        self.schedule.validate()?;
        if let Schedule::WarmupPolynomial(p) = &self.schedule {
            p.check_lr(self.lr)?;
        }
        self.check_products(0, self.lr, self.weight_decay)
    }

    /// Checks a group's overrides, and that its resolved lr and weight decay keep the
    /// kernel's per-step scalars finite in f32 (see [`AdamWConfig::validate`]).
    pub fn validate_group(&self, group: &GroupConfig) -> Result<()> {
        self.validate_group_at(0, group)
    }

    /// [`AdamWConfig::validate_group`] for the group at `index` (per-group schedule fields).
    pub fn validate_group_at(&self, index: usize, group: &GroupConfig) -> Result<()> {
        group.validate()?;
        let (lr, wd) = self.resolve(group);
        self.check_products(index, lr, wd)
    }

    /// Group `index` of `groups` changed by `change` and checked, for a run-time change of
    /// its lr or weight decay: an [`crate::Error::InvalidArgument`] for a group that does not
    /// exist, the group's validation error for a bad value.
    pub(crate) fn changed_group(
        &self,
        groups: &[GroupConfig],
        index: usize,
        change: impl FnOnce(&mut GroupConfig),
    ) -> Result<GroupConfig> {
        let mut gc = *groups
            .get(index)
            .ok_or_else(|| crate::Error::InvalidArgument(format!("no param group {index}")))?;
        change(&mut gc);
        self.validate_group_at(index, &gc)?;
        Ok(gc)
    }

    /// Checks the config and every group, the schedule's per-group lists against their number.
    pub fn validate_groups(&self, groups: &[GroupConfig]) -> Result<()> {
        self.validate()?;
        self.schedule.validate_groups(groups.len())?;
        for (i, g) in groups.iter().enumerate() {
            self.validate_group_at(i, g)?;
        }
        Ok(())
    }

    /// What the schedule needs to know about group `index`.
    pub fn group_ctx(&self, index: usize, group: &GroupConfig) -> GroupCtx {
        GroupCtx {
            index,
            base_lr: self.resolve(group).0,
            optimizer_lr: self.lr,
        }
    }

    fn check_products(&self, index: usize, lr: f64, wd: f64) -> Result<()> {
        let peak_lr = self.schedule.peak_lr(&GroupCtx {
            index,
            base_lr: lr,
            optimizer_lr: self.lr,
        });
        let peak = f64::from(lr as f32).max(f64::from(peak_lr as f32));
        if peak * f64::from(wd as f32) >= F32_MAX {
            return Err(hyper(
                "weight_decay",
                format!("lr {peak} * weight_decay {wd} overflows f32 (1 - lr * wd on the device)"),
            ));
        }
        if peak / (1.0 - self.betas.0) >= F32_MAX {
            return Err(hyper(
                "lr",
                format!(
                    "lr {peak} / (1 - beta1) overflows f32 (the step size at t = 1 on the device)"
                ),
            ));
        }
        Ok(())
    }

    /// The base learning rate and weight decay a group ends up with.
    pub fn resolve(&self, group: &GroupConfig) -> (f64, f64) {
        (
            group.lr.unwrap_or(self.lr),
            group.weight_decay.unwrap_or(self.weight_decay),
        )
    }
}

/// The largest finite f32: every value the kernel uses must stay below it.
const F32_MAX: f64 = f32::MAX as f64;

fn check_lr(name: &'static str, lr: f64) -> Result<()> {
    if (0.0..=F32_MAX).contains(&lr) {
        Ok(())
    } else {
        Err(hyper(
            name,
            format!("must be >= 0 and finite in f32 (<= 3.4028235e38), got {lr}"),
        ))
    }
}

fn check_weight_decay(wd: f64) -> Result<()> {
    if (0.0..=F32_MAX).contains(&wd) {
        Ok(())
    } else {
        Err(hyper(
            "weight_decay",
            format!("must be >= 0 and finite in f32 (<= 3.4028235e38), got {wd}"),
        ))
    }
}

/// Per-group overrides, as in a PyTorch param group dict: a `None` falls back to the
/// optimizer's value. Each group follows the schedule from its own base lr.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GroupConfig {
    /// This group's base learning rate.
    pub lr: Option<f64>,
    /// This group's weight decay.
    pub weight_decay: Option<f64>,
}

impl GroupConfig {
    /// Checks the overrides.
    pub fn validate(&self) -> Result<()> {
        if let Some(lr) = self.lr {
            check_lr("lr", lr)?;
        }
        if let Some(wd) = self.weight_decay {
            check_weight_decay(wd)?;
        }
        Ok(())
    }
}

/// Parses a GradScaler object (`init_scale`, `growth_factor`, `backoff_factor`,
/// `growth_interval`; missing keys take PyTorch's defaults, other keys are ignored) and
/// checks it.
pub fn parse_grad_scaler_json(v: &serde_json::Value) -> Result<GradScalerConfig> {
    use crate::Error;
    let o = v
        .as_object()
        .ok_or_else(|| Error::InvalidJson(format!("`grad_scaler` must be an object, got {v}")))?;
    let d = GradScalerConfig::default();
    let num = |k: &str, dflt: f64| -> Result<f64> {
        match o.get(k) {
            None => Ok(dflt),
            Some(x) => x.as_f64().ok_or_else(|| {
                Error::InvalidJson(format!("`grad_scaler.{k}` must be a number, got {x}"))
            }),
        }
    };
    let interval = match o.get("growth_interval") {
        None => d.growth_interval,
        Some(x) => x
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                Error::InvalidJson(format!(
                    "`grad_scaler.growth_interval` must be an integer, got {x}"
                ))
            })?,
    };
    let s = GradScalerConfig {
        init_scale: num("init_scale", d.init_scale)?,
        growth_factor: num("growth_factor", d.growth_factor)?,
        backoff_factor: num("backoff_factor", d.backoff_factor)?,
        growth_interval: interval,
    };
    s.validate()?;
    Ok(s)
}
