//! Twin of `shaders/schedule.wgsl`: a group's schedule program evaluated at an epoch, from
//! the words of the schedule region (`r`, the region's words from its start).

use super::numerics::{
    cos_sq_half_pi, cos_sq_phase, exp2_mul, expm1_neg, ldexp, ln_one_minus, ln_pos, pow_ratio,
    two_prod, two_sum,
};

const LN2: f32 = std::f64::consts::LN_2 as f32;
use crate::kernel::{Globals, LN_ZERO};
use crate::schedule::program::{op, NODE_WORDS};

const NODE: u32 = NODE_WORDS as u32;

fn sf(r: &[u32], at: u32) -> f32 {
    f32::from_bits(r[at as usize])
}

fn sw(r: &[u32], at: u32) -> u32 {
    r[at as usize]
}

/// `k - (hi + lo)` (see the kernel's `sub_split`).
fn sub_split(k: u32, hi: f32, lo: f32) -> f32 {
    let t = two_sum((k & 0xffff_0000) as f32, -hi);
    t.0 + ((t.1 + (k & 0xffff) as f32) - lo)
}

/// `cos^2(pi/2 * x)`, `x = (num / 2^shift) * j / span` reduced in integers.
fn cos_sq_dyadic(num: u32, shift: u32, j: u32, span: u32, mirror: bool) -> f32 {
    let wide = u64::from(num) * u64::from(j);
    let (q, rem) = (
        (wide / u64::from(span)) as u32,
        (wide % u64::from(span)) as u32,
    );
    let mask = if mirror {
        (2u32 << shift).wrapping_sub(1)
    } else {
        (1u32 << shift) - 1
    };
    let q = q & mask;
    let low = q & ((1u32 << shift) - 1);
    let small_r = rem <= span - rem;
    let f = (if small_r { rem } else { span - rem }) as f32 / span as f32;
    let (r_frac, rest) = if small_r { (f, 1.0 - f) } else { (1.0 - f, f) };
    let a = low as f32 + r_frac;
    let d = (((1u32 << shift) - 1) - low) as f32 + rest;
    let b = (1u32 << shift) as f32;
    if q >> shift == 1 {
        return cos_sq_half_pi(d, a, b);
    }
    cos_sq_half_pi(a, d, b)
}

fn warm_restarts_factor(t_0: u32, t_mult: u32, k: u32) -> f32 {
    let mut t_cur = k;
    let mut t_i = t_0;
    if t_mult == 1 {
        return cos_sq_phase(false, t_cur % t_i, t_i);
    }
    while t_cur >= t_i {
        t_cur -= t_i;
        let next = u64::from(t_i) * u64::from(t_mult);
        if next > u64::from(u32::MAX) {
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

fn power_count(r: &[u32], prog: u32, at: u32, k: u32) -> u32 {
    if sw(r, at + 1) == 0 {
        return k / sw(r, at + 2);
    }
    let list = prog + sw(r, at + 2);
    let (mut lo, mut hi) = (0u32, sw(r, at + 3));
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if sw(r, list + mid) <= k {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

fn anneal_weight(linear: bool, a: f32, d: f32, len: f32) -> f32 {
    if linear {
        return a.min(d) / len;
    }
    cos_sq_half_pi(a.max(d), a.min(d), len)
}

fn anneal(w: f32, from_start: bool, start: f32, end: f32) -> f32 {
    let (near, far) = if from_start {
        (start, end)
    } else {
        (end, start)
    };
    near + (far - near) * w
}

/// OneCycleLR's `(lr, beta1, 1 - beta1)`.
fn onecycle(r: &[u32], at: u32, k: u32) -> [f32; 3] {
    let flags = sw(r, at + 1);
    let (linear, three) = (flags & 1 != 0, flags & 2 != 0);
    let n = sw(r, at + 2);
    let (lr_i, lr_m, lr_l) = (sf(r, at + 9), sf(r, at + 10), sf(r, at + 11));
    let (m_max, m_base) = (sf(r, at + 12), sf(r, at + 13));
    let (om_max, om_base) = (sf(r, at + 14), sf(r, at + 15));
    if k > n {
        return [lr_l, m_max, om_max];
    }
    let (e1, e2) = (
        (sf(r, at + 5), sf(r, at + 6)),
        (sf(r, at + 7), sf(r, at + 8)),
    );
    let (a, d, lr0, lr1, m0, m1, om0, om1);
    if k <= sw(r, at + 3) {
        a = k as f32;
        d = -sub_split(k, e1.0, e1.1);
        (lr0, lr1, m0, m1, om0, om1) = (lr_i, lr_m, m_max, m_base, om_max, om_base);
    } else if three && k <= sw(r, at + 4) {
        a = sub_split(k, e1.0, e1.1);
        d = -sub_split(k, e2.0, e2.1);
        (lr0, lr1, m0, m1, om0, om1) = (lr_m, lr_i, m_base, m_max, om_base, om_max);
    } else {
        if three {
            a = sub_split(k, e2.0, e2.1);
            (lr0, m0, om0) = (lr_i, m_max, om_max);
        } else {
            a = sub_split(k, e1.0, e1.1);
            (lr0, m0, om0) = (lr_m, m_base, om_base);
        }
        d = if k == n { -1.0 } else { (n - 1 - k) as f32 };
        (lr1, m1, om1) = (lr_l, m_max, om_max);
    }
    let w = anneal_weight(linear, a, d, a + d);
    let s = a <= d;
    [
        anneal(w, s, lr0, lr1),
        anneal(w, s, m0, m1),
        anneal(w, s, om0, om1),
    ]
}

/// CyclicLR's `(lr, beta1, 1 - beta1)`.
fn cyclic(r: &[u32], at: u32, k: u32) -> [f32; 3] {
    let (up, down, mode) = (sw(r, at + 1), sw(r, at + 2), sw(r, at + 3));
    let period = up + down;
    let rem = k % period;
    let (x, omx) = if rem <= up {
        (rem as f32 / up as f32, (up - rem) as f32 / up as f32)
    } else {
        (
            (period - rem) as f32 / down as f32,
            (rem - up) as f32 / down as f32,
        )
    };
    let (scale, oms) = match mode {
        1 => {
            let c = k / period;
            let s = if c < 127 {
                ldexp(1.0, -(c as i32))
            } else {
                0.0
            };
            (s, 1.0 - s)
        }
        2 => (
            exp2_mul(k, sf(r, at + 4), sf(r, at + 5)),
            -expm1_neg(k as f32 * sf(r, at + 4) * LN2),
        ),
        _ => (1.0, 0.0),
    };
    let xs = x * scale;
    let omxs = omx + x * oms;
    let dm = sf(r, at + 9);
    let beta1 = if xs <= 0.5 {
        sf(r, at + 8) - dm * xs
    } else {
        sf(r, at + 11) + dm * omxs
    };
    [
        sf(r, at + 6) + sf(r, at + 7) * xs,
        beta1,
        sf(r, at + 10) + dm * xs,
    ]
}

fn warmup_factor(r: &[u32], at: u32, k: u32) -> f32 {
    let w = sw(r, at + 1);
    if k < w {
        return k as f32 / w as f32;
    }
    let (shape, n) = (sw(r, at + 2), sw(r, at + 3));
    let j = k - w;
    let span = if n > w { n - w } else { 1 };
    let (rr, omr) = (sf(r, at + 6), sf(r, at + 7));
    match shape {
        0 => rr + omr * cos_sq_dyadic(sw(r, at + 4), sw(r, at + 5), j, span, true),
        1 => {
            if k < n {
                (n - k) as f32 / span as f32
            } else {
                0.0
            }
        }
        3 => {
            if j < span {
                cos_sq_dyadic(sw(r, at + 4), sw(r, at + 5), j, span, false)
            } else {
                0.0
            }
        }
        4 => {
            if k <= n {
                rr + omr * pow_ratio(n - k, span, sf(r, at + 8))
            } else {
                rr
            }
        }
        5 => {
            let ts = sw(r, at + 9) as f32;
            (ts / (j as f32 + ts)).sqrt()
        }
        _ => 1.0,
    }
}

fn one_minus_sqrt_rest(num: u32, den: u32) -> f32 {
    let p = num as f32 / den as f32;
    p / (1.0 + ((den - num) as f32 / den as f32).sqrt())
}

fn wsd_factor(r: &[u32], at: u32, k: u32) -> f32 {
    let (w, s, dd) = (sw(r, at + 1), sw(r, at + 2), sw(r, at + 3));
    let (rr, omr) = (sf(r, at + 6), sf(r, at + 7));
    if k < w {
        let shape = match sw(r, at + 4) {
            0 => k as f32 / w as f32,
            1 => cos_sq_half_pi((w - k) as f32, k as f32, w as f32),
            _ => one_minus_sqrt_rest(k, w),
        };
        return rr + omr * shape;
    }
    if k - w < s {
        return 1.0;
    }
    let j = k - w - s;
    if j >= dd {
        return rr;
    }
    let shape = match sw(r, at + 5) {
        0 => (dd - j) as f32 / dd as f32,
        1 => cos_sq_dyadic(sw(r, at + 8), sw(r, at + 9), j, dd, true),
        _ => ((dd - j) as f32 / dd as f32) / (1.0 + (j as f32 / dd as f32).sqrt()),
    };
    rr + omr * shape
}

/// A leaf at epoch `k` from base lr `b`: `[lr, beta1, 1 - beta1]` (the kernel's `leaf`).
fn leaf(r: &[u32], prog: u32, at: u32, k: u32, b: f32) -> [f32; 3] {
    let lr = match sw(r, at) {
        op::COSINE => {
            let t = sw(r, at + 1);
            let eta = sf(r, at + 2);
            eta + (b - eta) * cos_sq_phase((k / t) & 1 == 1, k % t, t)
        }
        op::WARM_RESTARTS => {
            let eta = sf(r, at + 3);
            eta + (b - eta) * warm_restarts_factor(sw(r, at + 1), sw(r, at + 2), k)
        }
        op::CONSTANT_FACTOR => {
            if k < sw(r, at + 2) {
                b * sf(r, at + 1)
            } else {
                b
            }
        }
        op::LINEAR => {
            let t = sw(r, at + 3);
            let m = k.min(t);
            let f = sf(r, at + 1) * (t - m) as f32 + sf(r, at + 2) * m as f32;
            b * (f / t as f32)
        }
        op::POWER => b * exp2_mul(power_count(r, prog, at, k), sf(r, at + 4), sf(r, at + 5)),
        op::POLYNOMIAL => {
            let t = sw(r, at + 1);
            b * pow_ratio(t - k.min(t), t, sf(r, at + 2))
        }
        op::ONECYCLE => return onecycle(r, at, k),
        op::CYCLIC => return cyclic(r, at, k),
        op::WARMUP => b * warmup_factor(r, at, k),
        op::WSD => b * wsd_factor(r, at, k),
        op::PLATEAU => sf(r, sw(r, at + 1)),
        _ => b,
    };
    [lr, 0.0, 0.0]
}

/// The program at `prog` (an offset in the region) at epoch `k`, base lr `b`:
/// `[lr, beta1, 1 - beta1]` (the kernel's `schedule_eval`).
pub fn schedule_eval(r: &[u32], prog: u32, k: u32, b: f32) -> [f32; 3] {
    let op = sw(r, prog);
    let (mut first, mut count, mut kk, mut bb) = (prog, 1, k, b);
    if op == op::SEQUENTIAL {
        let n = sw(r, prog + 1);
        let list = prog + sw(r, prog + 2);
        let (mut i, mut start) = (0u32, 0u32);
        while i + 1 < n {
            let m = sw(r, list + i);
            if k < m {
                break;
            }
            start = m;
            i += 1;
        }
        first = prog + NODE * (1 + i);
        kk = k - start;
    } else if op == op::CHAINED {
        first = prog + NODE;
        count = sw(r, prog + 1);
        bb = 1.0;
    }
    let mut f = [1.0f32, 0.0, 0.0];
    for i in 0..count {
        let v = leaf(r, prog, first + NODE * i, kk, bb);
        f = [f[0] * v[0], v[1], v[2]];
    }
    if op == op::CHAINED {
        f[0] *= b;
    }
    f
}

/// The lr of the program at `prog` at epoch `k`, base lr `b`.
pub fn schedule_lr(r: &[u32], prog: u32, k: u32, b: f32) -> f32 {
    schedule_eval(r, prog, k, b)[0]
}

/// `ln(beta1)` from beta1 and `1 - beta1`.
pub fn ln_beta(beta: f32, one_minus: f32) -> f32 {
    if one_minus <= 0.5 {
        return ln_one_minus(one_minus);
    }
    if beta > 0.0 {
        return ln_pos(beta);
    }
    LN_ZERO
}

/// ReduceLROnPlateau's `step(metric)` on the region's state words (the kernel's
/// `plateau_step`).
pub fn plateau_step(g: &Globals, r: &mut [u32], metric: f32) {
    let st = g.sched_state_at;
    let node = 0u32;
    let mode = sw(r, node + 2);
    let best = sf(r, st);
    let mut bad = sw(r, st + 1);
    let mut cool = sw(r, st + 2);
    let is_max = mode & 1 != 0;
    let (th_hi, th_lo) = (sf(r, node + 5), sf(r, node + 6));
    let better = if metric.is_nan() {
        false
    } else if best.is_infinite() {
        if is_max {
            metric > best
        } else {
            metric < best
        }
    } else if mode & 2 == 0 {
        let p = two_prod(best, th_hi);
        let diff = (metric - p.0) - (p.1 + best * th_lo);
        if is_max {
            diff > 0.0
        } else {
            diff < 0.0
        }
    } else {
        let s = two_sum(metric, -best);
        let sgn = if is_max { -1.0 } else { 1.0 };
        let diff = (s.0 + sgn * th_hi) + (s.1 + sgn * th_lo);
        if is_max {
            diff > 0.0
        } else {
            diff < 0.0
        }
    };
    let mut new_best = best;
    if better {
        new_best = metric;
        bad = 0;
    } else {
        bad = bad.min(0xffff_fffe) + 1;
    }
    if cool > 0 {
        cool -= 1;
        bad = 0;
    }
    if bad > sw(r, node + 3) {
        let (f_hi, f_lo) = (sf(r, node + 7), sf(r, node + 8));
        for grp in 0..g.n_groups {
            let pn = grp * g.sched_stride;
            let at = sw(r, pn + 1);
            let (hi, lo) = (sf(r, at), sf(r, at + 1));
            let p = two_prod(hi, f_hi);
            let mut n = two_sum(p.0, p.1 + (hi * f_lo + lo * f_hi));
            let min_lr = sf(r, pn + 9);
            if n.0 < min_lr {
                n = (min_lr, 0.0);
            }
            if (hi - n.0) + (lo - n.1) > sf(r, pn + 10) {
                r[at as usize] = n.0.to_bits();
                r[at as usize + 1] = n.1.to_bits();
            }
        }
        cool = sw(r, node + 4);
        bad = 0;
    }
    r[st as usize] = new_best.to_bits();
    r[st as usize + 1] = bad;
    r[st as usize + 2] = cool;
}
