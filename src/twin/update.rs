//! Twin of `shaders/update.wgsl`: the per-element AdamW update.

use super::numerics::lerp_fma;
use super::prologue::{StepGlobals, StepScalars};
use crate::kernel::{Globals, FLAG_AMSGRAD, FLAG_MAXIMIZE};

/// The gradient the update sees: unscaled, then clipped (two roundings, as GradScaler and
/// `clip_grad_norm_` do). The kernel's `update` does this as it loads each gradient.
#[inline(always)]
pub fn effective_grad(step: &StepGlobals, grad: f32) -> f32 {
    (grad * step.inv_scale) * step.clip_coef
}

/// [`effective_grad`] with each op rounded to the type of gradient arithmetic
/// ([`Globals::grad_round`]), as `update_mixed`'s `effective_grad`.
#[inline(always)]
pub fn effective_grad_rounded(g: &Globals, step: &StepGlobals, grad: f32) -> f32 {
    use super::grad_norm::round_grad;
    round_grad(g, round_grad(g, grad * step.inv_scale) * step.clip_coef)
}

/// The kernel's per-element update, given the [`effective_grad`]. `max_exp_avg_sq` is only
/// touched with amsgrad.
#[inline(always)]
pub fn update_element(
    g: &Globals,
    s: &StepScalars,
    param: &mut f32,
    grad: f32,
    exp_avg: &mut f32,
    exp_avg_sq: &mut f32,
    max_exp_avg_sq: Option<&mut f32>,
) {
    let gr = if g.flags & FLAG_MAXIMIZE != 0 {
        -grad
    } else {
        grad
    };
    let p = *param * s.decay;
    let m_old = *exp_avg;
    // torch.lerp(m, g, w) as PyTorch's vectorized CPU kernel computes it: one fused
    // multiply-add, fma(w, g - m, m) for w < 0.5 else fma(w - 1, g - m, g). Unfused, m loses
    // its relative accuracy wherever it cancels towards zero.
    let (coeff, base) = if s.one_minus_beta1 < 0.5 {
        (s.one_minus_beta1, m_old)
    } else {
        (s.lerp_big_coeff, gr)
    };
    let m = lerp_fma(coeff, gr - m_old, base);
    let v = *exp_avg_sq * g.beta2 + g.one_minus_beta2 * gr * gr;
    let mut v_hat = v;
    if g.flags & FLAG_AMSGRAD != 0 {
        if let Some(vmax) = max_exp_avg_sq {
            v_hat = vmax.max(v);
            *vmax = v_hat;
        }
    }
    let denom = v_hat.sqrt() / s.bc2_sqrt + g.eps;
    *param = p - s.step_size * (m / denom);
    *exp_avg = m;
    *exp_avg_sq = v;
}

/// The weight EMA's next value (`ema_next` in `shaders/update_mixed.wgsl`): the first update
/// copies the weight `p`, later ones are `torch.lerp(e, p, w)` with `w = 1 - decay`, as
/// PyTorch's CPU kernel computes it (one fma; for `w >= 0.5` from the other end).
#[inline(always)]
pub fn ema_next(g: &Globals, e_old: f32, p: f32, first: bool) -> f32 {
    if first {
        return p;
    }
    let w = g.ema_weight;
    if w < 0.5 {
        lerp_fma(w, p - e_old, e_old)
    } else {
        lerp_fma(w - 1.0, p - e_old, p)
    }
}

/// murmur3's 32-bit finalizer (`fmix32` in `shaders/update_mixed.wgsl`).
#[inline(always)]
pub fn fmix32(x: u32) -> u32 {
    let mut h = x;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The random word that rounds element `index` (registration order, mod 2^32) at Adam step
/// `t` with `seed` (`sr_random` in the kernel).
#[inline(always)]
pub fn sr_random(seed: u64, index: u32, t: u32) -> u32 {
    let h = fmix32(fmix32(index) ^ t.wrapping_mul(0x9e37_79b9));
    fmix32(fmix32(h ^ seed as u32) ^ (seed >> 32) as u32)
}
