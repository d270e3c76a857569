//! Closed-form learning-rate schedules in f64: the reference the device's f32 schedule code
//! is tested against. These follow the PyTorch formulas literally (PyTorch computes the lr in
//! f64 on the host); the only liberty is reducing the epoch modulo the period first, which
//! does not change the mathematical value.

use crate::config::Schedule;
use std::f64::consts::PI;

/// The scheduler epoch used by optimizer step `step` (1-based):
/// `floor((step - 1) / steps_per_epoch)`.
pub fn epoch_of_step(step: u64, steps_per_epoch: u32) -> u64 {
    step.saturating_sub(1) / u64::from(steps_per_epoch.max(1))
}

/// The learning rate at scheduler epoch `epoch` for a group whose base lr is `base_lr`.
pub fn lr_at_epoch(schedule: &Schedule, base_lr: f64, epoch: u64) -> f64 {
    match *schedule {
        Schedule::Constant => base_lr,
        Schedule::Cosine { t_max, eta_min } => {
            let t = u64::from(t_max);
            let r = (epoch % (2 * t)) as f64;
            eta_min + (base_lr - eta_min) * (1.0 + (PI * r / t as f64).cos()) / 2.0
        }
        Schedule::CosineWarmRestarts {
            t_0,
            t_mult,
            eta_min,
        } => {
            let (t_cur, t_i) = warm_restart_position(epoch, t_0, t_mult);
            eta_min + (base_lr - eta_min) * (1.0 + (PI * t_cur as f64 / t_i as f64).cos()) / 2.0
        }
        Schedule::WarmupCosine {
            warmup_steps,
            total_steps,
            num_cycles,
        } => {
            let (w, n) = (u64::from(warmup_steps), u64::from(total_steps));
            let factor = if epoch < w {
                epoch as f64 / w.max(1) as f64
            } else {
                let progress = (epoch - w) as f64 / (n.saturating_sub(w)).max(1) as f64;
                (0.5 * (1.0 + (PI * num_cycles * 2.0 * progress).cos())).max(0.0)
            };
            base_lr * factor
        }
    }
}

/// `(T_cur, T_i)` of `CosineAnnealingWarmRestarts` at `epoch`, found with integer arithmetic
/// exactly as PyTorch's `step()` advances them.
pub fn warm_restart_position(epoch: u64, t_0: u32, t_mult: u32) -> (u128, u128) {
    let (mut t_cur, mut t_i) = (u128::from(epoch), u128::from(t_0));
    if t_mult == 1 {
        return (t_cur % t_i, t_i);
    }
    while t_cur >= t_i {
        t_cur -= t_i;
        t_i *= u128::from(t_mult);
    }
    (t_cur, t_i)
}

/// The learning rate of optimizer step `step` (1-based).
pub fn lr_at_step(schedule: &Schedule, base_lr: f64, steps_per_epoch: u32, step: u64) -> f64 {
    lr_at_epoch(schedule, base_lr, epoch_of_step(step, steps_per_epoch))
}
