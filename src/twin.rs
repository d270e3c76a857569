//! The CPU twin of `shaders/adamw.wgsl`: the same functions, in the same order of f32
//! operations, so the two can be read side by side and compared element by element.
//!
//! [`crate::CpuAdamW`] calls them for the schedule, the prologue and the gradient norm; its
//! vectorised per-element loop (`cpu.rs`) restates [`update_element`] and is tested bit for bit
//! against it. Tests compare these functions with the kernel and with the f64 closed forms of
//! [`crate::schedule`].

use crate::kernel::{
    Globals, FLAG_AMSGRAD, FLAG_CLIP, FLAG_LOSS_SCALE, FLAG_MAXIMIZE, FLAG_TORCH_NORM, WORKGROUP,
};

const HALF_PI: f32 = std::f64::consts::FRAC_PI_2 as f32;
/// ln 2 to 16 bits (0.693145751953125, exact): `n * LN2_HI` is exact for the `n` used.
const LN2_HI: f32 = f32::from_bits(0x3f31_7200);
const LN2_LO: f32 = c(1.428_606_765_330_187e-6);
const INV_LN2: f32 = std::f64::consts::LOG2_E as f32;

/// `expm1(x)` for `x <= 0`, as the kernel computes it (no builtin `exp`).
pub fn expm1_neg(x: f32) -> f32 {
    if x > c(-0.346_573_59) {
        return expm1_poly(x);
    }
    if x < -104.0 {
        return -1.0;
    }
    let n = (x * INV_LN2).round_ties_even();
    let r = (x - n * LN2_HI) - n * LN2_LO;
    ldexp(1.0 + expm1_poly(r), n as i32) - 1.0
}

fn ldexp(x: f32, n: i32) -> f32 {
    // n is in [-151, 0] here; the kernel's result is at least 2^-150, far below what matters.
    if n < -126 {
        return x * f32::from_bits(((n + 126 + 127) as u32) << 23) * f32::from_bits(1 << 23);
    }
    x * f32::from_bits(((n + 127) as u32) << 23)
}

/// Taylor series of `expm1` to `x^8 / 8!` for `|x| <= ln(2)/2`.
pub fn expm1_poly(x: f32) -> f32 {
    let p = c(1.0 / 5040.0) + x * c(1.0 / 40320.0);
    let q = c(1.0 / 120.0) + x * (c(1.0 / 720.0) + x * p);
    let s = c(1.0 / 6.0) + x * (c(1.0 / 24.0) + x * q);
    x * (1.0 + x * (0.5 + x * s))
}

/// A WGSL abstract-float constant as the shader compiler rounds it to f32.
const fn c(x: f64) -> f32 {
    x as f32
}

/// `sin(t)` for `|t| <= pi/4`.
pub fn sin_poly(t: f32) -> f32 {
    let t2 = t * t;
    t * (1.0
        + t2 * (c(-1.0 / 6.0)
            + t2 * (c(1.0 / 120.0) + t2 * (c(-1.0 / 5040.0) + t2 * c(1.0 / 362880.0)))))
}

/// `cos(t)` for `|t| <= pi/4`.
pub fn cos_poly(t: f32) -> f32 {
    let t2 = t * t;
    1.0 + t2 * (-0.5 + t2 * (c(1.0 / 24.0) + t2 * (c(-1.0 / 720.0) + t2 * c(1.0 / 40320.0))))
}

/// `cos^2(pi/2 * a/b)` given `a` and `d = b - a`.
pub fn cos_sq_half_pi(a: f32, d: f32, b: f32) -> f32 {
    let c = if a <= d {
        cos_poly(HALF_PI * (a / b))
    } else {
        sin_poly(HALF_PI * (d / b))
    };
    c * c
}

/// `cos^2(pi/2 * (n + rem/period))`, where only the parity of `n` matters.
pub fn cos_sq_phase(n_odd: bool, rem: u32, period: u32) -> f32 {
    let a = rem as f32;
    let d = (period - rem) as f32;
    if n_odd {
        return cos_sq_half_pi(d, a, period as f32);
    }
    cos_sq_half_pi(a, d, period as f32)
}

/// `x` rounded to its 12 leading mantissa bits (Veltkamp's split, done on the bits).
fn hi12(x: f32) -> f32 {
    f32::from_bits(x.to_bits().wrapping_add(0x800) & 0xffff_f000)
}

/// `(s, e)` with `s = a + b` rounded and `s + e = a + b` exactly (Knuth's TwoSum).
#[inline(always)]
pub fn two_sum(a: f32, b: f32) -> (f32, f32) {
    let s = a + b;
    let bb = s - a;
    (s, (a - (s - bb)) + (b - bb))
}

/// `(hi, lo)` with `hi = a * b` rounded and `hi + lo = a * b` exactly (Dekker).
#[inline(always)]
pub fn two_prod(a: f32, b: f32) -> (f32, f32) {
    let (ah, bh) = (hi12(a), hi12(b));
    let (al, bl) = (a - ah, b - bh);
    let p = ah * bh;
    let q = ah * bl + al * bh;
    let z = p + q;
    let zz = ((p - z) + q) + al * bl;
    let hi = z + zz;
    (hi, zz - (hi - z))
}

/// `a + b` rounded to odd.
#[inline(always)]
pub fn add_round_odd(a: f32, b: f32) -> f32 {
    let (s, e) = two_sum(a, b);
    let bits = s.to_bits();
    if e == 0.0 || bits & 1 == 1 {
        return s;
    }
    let away = (e > 0.0) == (s > 0.0);
    f32::from_bits(if away { bits + 1 } else { bits - 1 })
}

/// `a * b + c` with one rounding, for operands whose products and sums stay below 2^126.
#[inline(always)]
fn fma_core(a: f32, b: f32, c: f32) -> f32 {
    let (uh, ul) = two_prod(a, b);
    let (th, tl) = two_sum(c, uh);
    th + add_round_odd(tl, ul)
}

/// Unbiased exponent of a finite `x` (-127 for zero and subnormals; 128 for inf and NaN).
#[inline(always)]
fn exponent(x: f32) -> i32 {
    ((x.to_bits() >> 23) & 0xff) as i32 - 127
}

/// 2^-100: stands in for a `c` too small to scale (see [`fma_exact`]).
const TINY_TIE: f32 = f32::from_bits(27 << 23);

/// `a * b + c` with one rounding, emulated as the kernel does it (WGSL's `fma` may be
/// unfused): equals `f32::mul_add` for every input whose result is not subnormal, including
/// overflow to +-inf and infinite or NaN operands.
#[inline(always)]
pub fn fma_exact(a: f32, b: f32, c: f32) -> f32 {
    let (ea, eb, ec) = (exponent(a), exponent(b), exponent(c));
    if ea == 128 || eb == 128 || ec == 128 {
        if ea != 128 && eb != 128 {
            return c;
        }
        return a * b + c;
    }
    if a == 0.0 || b == 0.0 {
        // An exact zero product: `a * b + c` gets the sign of a zero result right.
        return a * b + c;
    }
    if ea < 124 && eb < 124 && ea + eb < 124 && ec < 124 {
        return fma_core(a, b, c);
    }
    if ea + eb >= 130 {
        return a * b;
    }
    let (sa, sb) = if ea >= eb {
        (a * (1.0 / 256.0), b)
    } else {
        (a, b * (1.0 / 256.0))
    };
    let sc = if c != 0.0 && ec < -64 {
        TINY_TIE.copysign(c)
    } else {
        c * (1.0 / 256.0)
    };
    fma_core(sa, sb, sc) * 256.0
}

/// [`fma_exact`] for the first moment, where `coeff` is normal and `|coeff| <= 1`, as the
/// kernel's `lerp_fma`: the same scaling reduced to selects on the bits of `b` and `c`.
#[inline(always)]
pub fn lerp_fma(coeff: f32, b: f32, c: f32) -> f32 {
    let (mb, mc) = (b.to_bits() & 0x7fff_ffff, c.to_bits() & 0x7fff_ffff);
    let top = mb.max(mc);
    if top >= 0x7f80_0000 || mb == 0 {
        return coeff * b + c;
    }
    let big = top >= 0x7d80_0000;
    let s = if big { 1.0 / 256.0 } else { 1.0 };
    let sc = if big && mc != 0 && mc < 0x1f80_0000 {
        TINY_TIE.copysign(c)
    } else {
        c * s
    };
    fma_core(coeff, b * s, sc) * if big { 256.0 } else { 1.0 }
}

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

/// The optimizer's step counters, as the kernel keeps them in its `meta` buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Scheduler steps taken (optimizer steps, including skipped ones).
    pub sched: u32,
    /// Adam steps taken: `t` of the last update.
    pub adam: u32,
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

/// `1 / s` rounded to nearest, as the kernel's `recip`, for `|s|` in `[2^-100, 2^100]` and every
/// power of two.
pub fn recip(s: f32) -> f32 {
    let r = 1.0 / s;
    if is_nonfinite(s) || is_nonfinite(r) || r == 0.0 {
        return r;
    }
    let e = fma_exact(-s, r, 1.0);
    fma_exact(r, e, r)
}

/// The gradient multiplier: `1 / loss_scale` with loss scaling, else 1.
pub fn grad_multiplier(g: &Globals, loss_scale: f32) -> f32 {
    if g.flags & FLAG_LOSS_SCALE != 0 {
        recip(loss_scale)
    } else {
        1.0
    }
}

fn is_nonfinite(x: f32) -> bool {
    x.to_bits() & 0x7f80_0000 == 0x7f80_0000
}

/// Flag of [`nonfinite_flags`]: some gradient is +-inf or NaN.
pub const NONFINITE: u32 = 1;
/// Flag of [`nonfinite_flags`]: some gradient is NaN.
pub const NAN: u32 = 2;

/// The non-finite flags of one raw gradient, as the kernel's `nonfinite_flags`.
#[inline(always)]
pub fn nonfinite_flags(x: f32) -> u32 {
    if !is_nonfinite(x) {
        0
    } else if x.is_nan() {
        NONFINITE | NAN
    } else {
        NONFINITE
    }
}

/// The global norm from its sum of squares and the gradients' flags, as the kernel's
/// `finish_norm`: NaN if a gradient is NaN, inf if one is infinite or the squares overflow.
pub fn finish_norm(sum_sq: f32, flags: u32, root: f32) -> f32 {
    if flags & NAN != 0 {
        f32::NAN
    } else if flags & NONFINITE != 0 || is_nonfinite(sum_sq) {
        f32::INFINITY
    } else {
        root
    }
}

/// `clip_grad_norm_`'s coefficient `min(max_norm / (norm + 1e-6), 1)`, as the kernel's
/// `clip_coefficient`: 0 for an infinite norm, NaN for a NaN one.
pub fn clip_coefficient(g: &Globals, norm: f32) -> f32 {
    if norm.is_nan() {
        norm
    } else if norm.is_infinite() {
        0.0
    } else {
        (g.max_grad_norm / (norm + 1e-6)).min(1.0)
    }
}

/// `(hi, lo) + (x, y)`, both unevaluated sums.
#[inline(always)]
pub fn add_double(a: (f32, f32), b: (f32, f32)) -> (f32, f32) {
    let (s, e) = two_sum(a.0, b.0);
    (s, e + (a.1 + b.1))
}

fn workgroup_tree(acc: &mut [(f32, f32); 256], flag: &mut [u32; 256]) {
    let mut stride = 128;
    while stride > 0 {
        for lane in 0..stride {
            acc[lane] = add_double(acc[lane], acc[lane + stride]);
            flag[lane] |= flag[lane + stride];
        }
        stride >>= 1;
    }
}

/// The kernel's `reduce` for one chunk (at most `256 * ELEMS_PER_THREAD` gradients): the sum
/// of squares of the unscaled gradients as an unevaluated sum `hi + lo`, and the raw
/// gradients' [`nonfinite_flags`].
pub fn reduce_chunk(grads: &[f32], inv: f32) -> ((f32, f32), u32) {
    let (mut acc, mut flag) = ([(0f32, 0f32); 256], [0u32; 256]);
    for k in 0..grads.len().div_ceil(WORKGROUP as usize) {
        for lane in 0..WORKGROUP as usize {
            if let Some(&raw) = grads.get(k * WORKGROUP as usize + lane) {
                flag[lane] |= nonfinite_flags(raw);
                let x = raw * inv;
                acc[lane] = add_double(acc[lane], two_prod(x, x));
            }
        }
    }
    workgroup_tree(&mut acc, &mut flag);
    (acc[0], flag[0])
}

/// The prologue's reduction of all chunk partials: strided per lane, then a tree.
pub fn reduce_partials(partials: &[((f32, f32), u32)]) -> ((f32, f32), u32) {
    let (mut acc, mut flag) = ([(0f32, 0f32); 256], [0u32; 256]);
    for lane in 0..256 {
        for &(x, f) in partials.iter().skip(lane).step_by(256) {
            acc[lane] = add_double(acc[lane], x);
            flag[lane] |= f;
        }
    }
    workgroup_tree(&mut acc, &mut flag);
    (acc[0], flag[0])
}

/// `acc + x * x` with two roundings, as ATen's (unfused) CPU norm kernel adds a square.
#[inline(always)]
fn add_square(acc: f32, x: f32) -> f32 {
    acc + x * x
}

/// The kernel's `tensor_norms` for one tensor: its norm summed in PyTorch's CPU order
/// (8 interleaved lanes, lanes added left to right, then the tail), and whether any raw
/// gradient is non-finite ([`nonfinite_flags`]). Rust's `sqrt` is correctly rounded, as the
/// kernel's `sqrt_rn`.
pub fn tensor_norm_torch(grads: &[f32], inv: f32) -> (f32, u32) {
    let (sum_sq, flags) = torch_sum_sq(grads, inv);
    (sum_sq.sqrt(), flags)
}

/// The sum of squares of [`tensor_norm_torch`], before its square root.
fn torch_sum_sq(grads: &[f32], inv: f32) -> (f32, u32) {
    let body = grads.len() - grads.len() % 8;
    let mut lanes = [0f32; 8];
    let mut flag = 0;
    for (lane, acc) in lanes.iter_mut().enumerate() {
        for &raw in grads[..body].iter().skip(lane).step_by(8) {
            flag |= nonfinite_flags(raw);
            *acc = add_square(*acc, raw * inv);
        }
    }
    let mut b = lanes[0];
    for &l in &lanes[1..] {
        b += l;
    }
    for &raw in &grads[body..] {
        flag |= nonfinite_flags(raw);
        b = add_square(b, raw * inv);
    }
    (b, flag)
}

/// The prologue's final reduction: the global norm and the gradients' non-finite flags,
/// from the chunk partials ([`reduce_chunk`]) or, with [`crate::GradNormOrder::TorchCpu`],
/// from the per-tensor norms ([`tensor_norm_torch`], in registration order).
pub fn final_norm(
    g: &Globals,
    partials: &[((f32, f32), u32)],
    tensor_norms: &[(f32, u32)],
) -> (f32, u32) {
    if g.flags & FLAG_TORCH_NORM != 0 {
        let norms: Vec<f32> = tensor_norms.iter().map(|t| t.0).collect();
        let flags = tensor_norms.iter().fold(0, |f, t| f | t.1);
        // The kernel sums the squares of the norms as `tensor_norm_torch` does.
        let (sum_sq, _) = torch_sum_sq(&norms, 1.0);
        return (finish_norm(sum_sq, flags, sum_sq.sqrt()), flags);
    }
    let ((hi, lo), flags) = reduce_partials(partials);
    let sum_sq = hi + lo;
    (finish_norm(sum_sq, flags, sum_sq.sqrt()), flags)
}

/// The kernel's `prologue` without loss scaling or clipping: per group
/// `(base_lr, weight_decay)`, the scalars of the next step; advances the counters.
pub fn prologue(g: &Globals, groups: &[(f32, f32)], counters: &mut Counters) -> Vec<StepScalars> {
    prologue_amp(g, groups, counters, (0.0, 0), 1.0).0
}

/// The kernel's `prologue`: per group `(base_lr, weight_decay)`, the scalars of the next step,
/// and the step's AMP/clipping results; advances the counters. `reduced` is
/// [`final_norm`]'s `(norm, flags)` (used only with loss scaling or clipping). A counter at
/// its limit (`u32::MAX`) refuses the step: skipped, counters unchanged, as the kernel does.
pub fn prologue_amp(
    g: &Globals,
    groups: &[(f32, f32)],
    counters: &mut Counters,
    reduced: (f32, u32),
    loss_scale: f32,
) -> (Vec<StepScalars>, StepGlobals) {
    let mut step = StepGlobals::default();
    if g.flags & (FLAG_LOSS_SCALE | FLAG_CLIP) != 0 {
        let (norm, flags) = reduced;
        step.found_inf = flags != 0;
        step.skipped = g.flags & FLAG_LOSS_SCALE != 0 && step.found_inf;
        step.inv_scale = grad_multiplier(g, loss_scale);
        step.grad_norm = norm;
        if g.flags & FLAG_CLIP != 0 {
            step.clip_coef = clip_coefficient(g, norm);
        }
    }
    if counters.at_limit() {
        step.skipped = true;
        return (Vec::new(), step);
    }
    let epoch = counters.sched / g.steps_per_epoch;
    let t = (counters.adam + 1) as f32;
    let bc1 = -expm1_neg(t * g.ln_beta1);
    let bc2_sqrt = (-expm1_neg(t * g.ln_beta2)).sqrt();
    let scalars = groups
        .iter()
        .map(|&(base_lr, wd)| {
            let lr = schedule_lr(g, base_lr, epoch);
            StepScalars {
                lr,
                decay: 1.0 - lr * wd,
                step_size: lr / bc1,
                bc2_sqrt,
            }
        })
        .collect();
    counters.sched += 1;
    counters.adam += u32::from(!step.skipped);
    (scalars, step)
}

/// The gradient the update sees: unscaled, then clipped (two roundings, as GradScaler and
/// `clip_grad_norm_` do). The kernel's `update` does this as it loads each gradient.
#[inline(always)]
pub fn effective_grad(step: &StepGlobals, grad: f32) -> f32 {
    (grad * step.inv_scale) * step.clip_coef
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
    let (coeff, base) = if g.one_minus_beta1 < 0.5 {
        (g.one_minus_beta1, m_old)
    } else {
        (g.lerp_big_coeff, gr)
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
