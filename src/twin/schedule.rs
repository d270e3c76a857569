//! Twin of `shaders/schedule.wgsl`: the learning rate of an epoch, from the uniform block.

use super::numerics::{cos_sq_half_pi, cos_sq_phase};
use crate::kernel::Globals;

/// The schedule's factor at `epoch` (see the kernel's `schedule_factor`).
pub fn schedule_factor(g: &Globals, epoch: u32) -> f32 {
    match g.kind {
        1 => {
            let t = g.period;
            cos_sq_phase((epoch / t) & 1 == 1, epoch % t, t)
        }
        2 => {
            let mut t_cur = epoch;
            let mut t_i = g.period;
            if g.t_mult == 1 {
                return cos_sq_phase(false, t_cur % t_i, t_i);
            }
            while t_cur >= t_i {
                t_cur -= t_i;
                let next = u64::from(t_i) * u64::from(g.t_mult);
                if next > u64::from(u32::MAX) {
                    // The kernel splits T_i and T_i - T_cur into two u32 words.
                    let (hi, lo) = ((next >> 32) as u32, next as u32);
                    let borrow = u32::from(lo < t_cur);
                    let d = (hi - borrow) as f32 * 4294967296.0 + lo.wrapping_sub(t_cur) as f32;
                    let b = hi as f32 * 4294967296.0 + lo as f32;
                    return cos_sq_half_pi(t_cur as f32, d, b);
                }
                t_i = next as u32;
            }
            cos_sq_phase(false, t_cur, t_i)
        }
        3 => {
            let w = g.period;
            if epoch < w {
                return epoch as f32 / w as f32;
            }
            let span = if g.total_steps > w {
                g.total_steps - w
            } else {
                1
            };
            let k = epoch - w;
            let wide = u64::from(g.cycles_num) * u64::from(k);
            let (q, rem) = (
                (wide / u64::from(span)) as u32,
                (wide % u64::from(span)) as u32,
            );
            let sh = g.cycles_shift;
            let q = q & (2u32 << sh).wrapping_sub(1);
            let low = q & ((1u32 << sh) - 1);
            let r = rem as f32 / span as f32;
            let a = low as f32 + r;
            let d = (((1u32 << sh) - 1) - low) as f32 + (span - rem) as f32 / span as f32;
            let b = (1u32 << sh) as f32;
            if q >> sh == 1 {
                return cos_sq_half_pi(d, a, b);
            }
            cos_sq_half_pi(a, d, b)
        }
        _ => 1.0,
    }
}

/// The learning rate at `epoch` for a group with base lr `base_lr`.
pub fn schedule_lr(g: &Globals, base_lr: f32, epoch: u32) -> f32 {
    let factor = schedule_factor(g, epoch);
    match g.kind {
        1 | 2 => g.eta_min + (base_lr - g.eta_min) * factor,
        3 => base_lr * factor,
        _ => base_lr,
    }
}
