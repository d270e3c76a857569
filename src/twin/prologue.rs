//! Twin of `shaders/prologue.wgsl`: the step counters and each group's per-step scalars.

use super::grad_norm::{clip_coefficient, grad_multiplier};
use super::numerics::expm1_neg;
use super::schedule::{ln_beta, plateau_step, schedule_eval};
use crate::kernel::{
    Globals, FLAG_CLIP, FLAG_CYCLE_MOMENTUM, FLAG_GRAD_SCALER, FLAG_LOSS_SCALE, FLAG_PLATEAU,
};

/// The optimizer's step counters, as the kernel keeps them in its `meta` buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Scheduler steps taken (optimizer steps, including skipped ones).
    pub sched: u32,
    /// Adam steps taken: `t` of the last update.
    pub adam: u32,
    /// Micro-batches accumulated since the last optimizer step
    /// ([`crate::AdamWConfig::accumulate`]).
    pub micro: u32,
}

impl Counters {
    /// Whether a counter is at `u32::MAX`, so that no further step can be taken: the kernel
    /// refuses such a step (skipped, nothing changed) rather than wrap the counter.
    pub fn at_limit(&self) -> bool {
        self.sched == u32::MAX || self.adam == u32::MAX
    }
}

/// Per-group scalars of one step, as the kernel's prologue writes them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepScalars {
    /// The learning rate of this step.
    pub lr: f32,
    /// `1 - lr * weight_decay`.
    pub decay: f32,
    /// `lr / (1 - beta1^t)`.
    pub step_size: f32,
    /// `sqrt(1 - beta2^t)`.
    pub bc2_sqrt: f32,
    /// `1 - beta1` (the lerp weight of the first moment).
    pub one_minus_beta1: f32,
    /// `(1 - beta1) - 1`: torch.lerp's coefficient for weights >= 0.5.
    pub lerp_big_coeff: f32,
    /// beta1 of this step (the schedule's where it cycles momentum).
    pub beta1: f32,
}

/// The words of the control buffer the prologue reads: written by the host or the engine.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Control {
    /// The AMP loss scale.
    pub loss_scale: f32,
    /// The metric of the last epoch (ReduceLROnPlateau).
    pub metric: f32,
    /// Multiplies every group's scheduled lr.
    pub lr_scale: f32,
    /// The GradScaler's growth tracker.
    pub growth_tracker: u32,
    /// The loss scale the last step used.
    pub scale_used: f32,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            loss_scale: 1.0,
            metric: 0.0,
            lr_scale: 1.0,
            growth_tracker: 0,
            scale_used: 1.0,
        }
    }
}

/// PyTorch's `_amp_update_scale_` after a step: `(scale, growth_tracker)` for the next one.
pub fn grad_scaler_update(g: &Globals, scale: f32, tracker: u32, found_inf: bool) -> (f32, u32) {
    if found_inf {
        return (scale * g.backoff_factor, 0);
    }
    let n = tracker + 1;
    if n == g.growth_interval {
        let grown = scale * g.growth_factor;
        return (if grown.is_finite() { grown } else { scale }, 0);
    }
    (scale, n)
}

/// Step-wide results of the prologue: AMP and clipping.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepGlobals {
    /// The step is skipped (non-finite gradients under loss scaling).
    pub skipped: bool,
    /// Some raw gradient was non-finite.
    pub found_inf: bool,
    /// `1 / loss_scale` (1 without loss scaling).
    pub inv_scale: f32,
    /// The clipping coefficient (1 without clipping).
    pub clip_coef: f32,
    /// The global L2 norm of the unscaled gradients (0 unless scaling or clipping is on).
    pub grad_norm: f32,
}

impl Default for StepGlobals {
    fn default() -> Self {
        Self {
            skipped: false,
            found_inf: false,
            inv_scale: 1.0,
            clip_coef: 1.0,
            grad_norm: 0.0,
        }
    }
}

/// The kernel's `prologue` without loss scaling or clipping: per group
/// `(base_lr, weight_decay)`, the scalars of the next step; advances the counters.
/// `region` is the schedule region's words (its state advances with a plateau schedule).
pub fn prologue(
    g: &Globals,
    region: &mut [u32],
    groups: &[(f32, f32)],
    counters: &mut Counters,
) -> Vec<StepScalars> {
    prologue_amp(
        g,
        region,
        groups,
        counters,
        (0.0, 0),
        &mut Control::default(),
    )
    .0
}

/// The kernel's `prologue`: per group `(base_lr, weight_decay)`, the scalars of the next step,
/// and the step's AMP/clipping results; advances the counters and the schedule's state.
/// `reduced` is [`final_norm`](super::final_norm)'s `(norm, flags)` (used only with loss
/// scaling or clipping). A counter at its limit (`u32::MAX`) refuses the step: skipped,
/// counters unchanged, as the kernel does.
pub fn prologue_amp(
    g: &Globals,
    region: &mut [u32],
    groups: &[(f32, f32)],
    counters: &mut Counters,
    reduced: (f32, u32),
    control: &mut Control,
) -> (Vec<StepScalars>, StepGlobals) {
    let mut step = StepGlobals::default();
    if g.flags & (FLAG_LOSS_SCALE | FLAG_CLIP) != 0 {
        let (norm, flags) = reduced;
        step.found_inf = flags != 0;
        step.skipped = g.flags & FLAG_LOSS_SCALE != 0 && step.found_inf;
        step.inv_scale = grad_multiplier(g, control.loss_scale);
        step.grad_norm = norm;
        if g.flags & FLAG_CLIP != 0 {
            step.clip_coef = clip_coefficient(g, norm);
        }
        control.scale_used = control.loss_scale;
        if g.flags & FLAG_GRAD_SCALER != 0 {
            (control.loss_scale, control.growth_tracker) = grad_scaler_update(
                g,
                control.loss_scale,
                control.growth_tracker,
                step.found_inf,
            );
        }
    }
    if counters.at_limit() {
        step.skipped = true;
        return (Vec::new(), step);
    }
    let sched = counters.sched;
    let epoch = sched / g.steps_per_epoch;
    if g.flags & FLAG_PLATEAU != 0 && sched > 0 && sched.is_multiple_of(g.steps_per_epoch) {
        plateau_step(g, region, control.metric);
    }
    let t = (counters.adam + 1) as f32;
    let bc2_sqrt = (-expm1_neg(t * g.ln_beta2)).sqrt();
    let scalars = groups
        .iter()
        .enumerate()
        .map(|(grp, &(base_lr, wd))| {
            let prog = grp as u32 * g.sched_stride;
            let v = schedule_eval(region, prog, epoch, base_lr);
            let lr = v[0] * control.lr_scale;
            let (mut beta1, mut omb1, mut ln_b1) = (g.beta1, g.one_minus_beta1, g.ln_beta1);
            if g.flags & FLAG_CYCLE_MOMENTUM != 0 {
                (beta1, omb1) = (v[1], v[2]);
                ln_b1 = ln_beta(beta1, omb1);
            }
            let bc1 = -expm1_neg(t * ln_b1);
            StepScalars {
                lr,
                decay: 1.0 - lr * wd,
                step_size: lr / bc1,
                bc2_sqrt,
                one_minus_beta1: omb1,
                lerp_big_coeff: omb1 - 1.0,
                beta1,
            }
        })
        .collect();
    counters.sched += 1;
    counters.adam += u32::from(!step.skipped);
    (scalars, step)
}
