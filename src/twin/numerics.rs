//! Twin of `shaders/numerics.wgsl`: exponentials and trigonometric polynomials, the exact
//! fused multiply-add (Dekker's product, Boldo and Melquiond's rounding to odd) and the
//! first moment's form of it; the 16-bit float conversions (bf16, f16), done on the bits.

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

/// `x * 2^n` for `n <= 0`, as WGSL's `ldexp`.
pub fn ldexp(x: f32, n: i32) -> f32 {
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
    // `/` is correctly rounded here, as the kernel's `div_rn`.
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

const LN2: f32 = std::f64::consts::LN_2 as f32;
const SQRT2: f32 = std::f64::consts::SQRT_2 as f32;

/// `(atanh(s) - s) / s` for `|s| <= 1/3`, as the kernel's `atanh_tail(s^2)`.
pub fn atanh_tail(s2: f32) -> f32 {
    let mut acc = c(1.0 / 19.0);
    for k in [17.0, 15.0, 13.0, 11.0, 9.0, 7.0, 5.0, 3.0] {
        acc = c(1.0 / k) + s2 * acc;
    }
    s2 * acc
}

/// `ln(x)` for a positive normal `x`, as two f32 (the kernel's `ln_pos2`).
pub fn ln_pos2(x: f32) -> (f32, f32) {
    let bits = x.to_bits();
    let mut e = (bits >> 23) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    if m > SQRT2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let ln_m = 2.0 * (s + s * atanh_tail(s * s));
    let fe = e as f32;
    two_sum(fe * LN2_HI, fe * LN2_LO + ln_m)
}

/// `ln(x)` for a positive normal `x`.
pub fn ln_pos(x: f32) -> f32 {
    let (hi, lo) = ln_pos2(x);
    hi + lo
}

/// `ln(1 - u)` for `0 <= u <= 1/2`.
pub fn ln_one_minus(u: f32) -> f32 {
    let s = u / (2.0 - u);
    -2.0 * (s + s * atanh_tail(s * s))
}

/// `ln(num / den)` for `0 < num <= den`, as two f32.
pub fn ln_ratio2(num: u32, den: u32) -> (f32, f32) {
    let gap = den - num;
    if gap <= num {
        return (ln_one_minus(gap as f32 / den as f32), 0.0);
    }
    ln_pos2(num as f32 / den as f32)
}

/// `exp(hi + lo)` for `hi <= 0`; 0 below 2^-126.
pub fn exp_neg2(hi: f32, lo: f32) -> f32 {
    if hi < -87.0 {
        return 0.0;
    }
    let n = (hi * INV_LN2).round_ties_even();
    let r = ((hi - n * LN2_HI) - n * LN2_LO) + lo;
    ldexp(1.0 + expm1_poly(r), n as i32)
}

/// `exp(x)` for `x <= 0`; 0 below 2^-126.
pub fn exp_neg(x: f32) -> f32 {
    exp_neg2(x, 0.0)
}

/// `(num / den)^p` for `0 <= num <= den`, `p > 0`.
pub fn pow_ratio(num: u32, den: u32, p: f32) -> f32 {
    if num == 0 {
        return 0.0;
    }
    let l = ln_ratio2(num, den);
    let e = two_prod(p, l.0);
    exp_neg2(e.0, e.1 + p * l.1)
}

/// `2^(n * (l_hi + l_lo))` for `l <= 0`, the product formed exactly (see the kernel).
pub fn exp2_mul(n: u32, l_hi: f32, l_lo: f32) -> f32 {
    let nf = n as f32;
    if nf * l_hi < -128.0 {
        return 0.0;
    }
    let p1 = two_prod((n & 0xffff_0000) as f32, l_hi);
    let p2 = two_prod((n & 0xffff) as f32, l_hi);
    let s = two_sum(p1.0, p2.0);
    let t = ((p1.1 + p2.1) + s.1) + nf * l_lo;
    let m = s.0.round_ties_even();
    let f = (s.0 - m) + t;
    if m <= -126.0 {
        return 0.0;
    }
    ldexp(1.0 + expm1_poly(f * LN2), m as i32)
}

// ---------------------------------------------------------------- 16-bit floats
//
// bf16 and IEEE f16 in the low 16 bits of a u32, converted with integer operations only, as
// the kernel does (no float conversion or arithmetic: the same bits on every device).

/// The kernel's code for f32 elements.
pub const DTYPE_F32: u32 = 0;
/// The kernel's code for bf16 elements.
pub const DTYPE_BF16: u32 = 1;
/// The kernel's code for IEEE f16 elements.
pub const DTYPE_F16: u32 = 2;

/// The bf16 in `h`'s low 16 bits as f32: exact (`h << 16`, NaN payloads untouched).
pub fn bf16_to_f32(h: u32) -> f32 {
    f32::from_bits(h << 16)
}

/// The f16 in `h`'s low 16 bits as f32: exact, subnormals included. A NaN stays NaN with its
/// sign and its payload shifted into the f32's top mantissa bits (not quieted).
pub fn f16_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000) << 16;
    let e = (h >> 10) & 0x1f;
    let m = h & 0x3ff;
    if e == 0x1f {
        return f32::from_bits(sign | 0x7f80_0000 | (m << 13));
    }
    if e != 0 {
        return f32::from_bits(sign | ((e + 112) << 23) | (m << 13));
    }
    if m == 0 {
        return f32::from_bits(sign);
    }
    // m 2^-24 with m's leading 1 at bit p (0..9): 2^(p - 24) (1 + the bits below it).
    let p = 31 - m.leading_zeros();
    f32::from_bits(sign | ((p + 103) << 23) | ((m << (23 - p)) & 0x7f_ffff))
}

/// `x` rounded to the nearest bf16 (ties to even; overflow to infinity); a NaN gives a quiet
/// NaN with its sign and the top of its payload (`(bits >> 16) | 0x40`).
pub fn f32_to_bf16(x: f32) -> u32 {
    let bits = x.to_bits();
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        return (bits >> 16) | 0x40;
    }
    (bits + 0x7fff + ((bits >> 16) & 1)) >> 16
}

/// `x` rounded to the nearest f16 (ties to even), through the subnormals (2^-25 and below,
/// f32 subnormals included, give a signed zero); 65520 and above give infinity; a NaN gives
/// `sign | 0x7e00 | the payload's top 9 bits`.
pub fn f32_to_f16(x: f32) -> u32 {
    let bits = x.to_bits();
    let sign = (bits >> 16) & 0x8000;
    let a = bits & 0x7fff_ffff;
    if a > 0x7f80_0000 {
        return sign | 0x7e00 | ((a >> 13) & 0x3ff);
    }
    if a >= 0x477f_f000 {
        return sign | 0x7c00;
    }
    if a >= 0x3880_0000 {
        return sign | (((a + 0xfff + ((a >> 13) & 1)) >> 13) - 0x1_c000);
    }
    let e = a >> 23;
    if e < 102 {
        return sign;
    }
    let mant = (a & 0x7f_ffff) | 0x80_0000;
    let shift = 126 - e;
    sign | ((mant + ((1 << (shift - 1)) - 1) + ((mant >> shift) & 1)) >> shift)
}

/// `h` of type `dtype` ([`DTYPE_BF16`] or [`DTYPE_F16`]; anything but f16 is read as bf16)
/// as f32.
pub fn widen16(h: u32, dtype: u32) -> f32 {
    if dtype == DTYPE_F16 {
        return f16_to_f32(h);
    }
    bf16_to_f32(h)
}

/// `x` rounded to nearest even in `dtype` (as [`widen16`]).
pub fn narrow16(x: f32, dtype: u32) -> u32 {
    if dtype == DTYPE_F16 {
        return f32_to_f16(x);
    }
    f32_to_bf16(x)
}

/// `x` rounded stochastically to `dtype` with the random word `r`: to one of its two
/// neighbours (`x` itself if exact), the one of larger magnitude with probability
/// `(|x| - |lower|) / ulp`, so unbiased. Random bits are added to the bits to be discarded,
/// which are then truncated: for bf16 the f32's 16 low bits plus `r & 0xffff`; for f16
/// normals 13 mantissa bits plus `r & 0x1fff`; in the f16 subnormal range the bits below
/// 2^-24 (14 to 125 of them) plus as many low bits of `r`, or from 32 on the discarded
/// part's top 32 bits plus `r`, the carry out deciding. A carry past the largest finite value
/// gives infinity (for f16 so does every `|x| >= 65536`); infinities pass, NaN as
/// [`narrow16`].
pub fn narrow16_stochastic(x: f32, dtype: u32, r: u32) -> u32 {
    let bits = x.to_bits();
    let a = bits & 0x7fff_ffff;
    if a > 0x7f80_0000 {
        return narrow16(x, dtype);
    }
    if dtype != DTYPE_F16 {
        return (bits + (r & 0xffff)) >> 16;
    }
    let sign = (bits >> 16) & 0x8000;
    if a >= 0x3880_0000 {
        return sign | (((a + (r & 0x1fff)) >> 13) - 0x1_c000).min(0x7c00);
    }
    // Units of 2^-24; f32 subnormals have exponent 1's scale and no implicit bit.
    let e = (a >> 23).max(1);
    let mant = if a >= 0x80_0000 {
        (a & 0x7f_ffff) | 0x80_0000
    } else {
        a & 0x7f_ffff
    };
    let shift = 126 - e;
    if shift < 32 {
        return sign | ((mant + (r & ((1 << shift) - 1))) >> shift);
    }
    let top = mant >> (shift - 32).min(31);
    sign | u32::from(top > !r)
}
