// Numerics of the kernel (twin: src/twin/numerics.rs): exponentials and trigonometric
// polynomials for the schedules and bias corrections, the exact fused multiply-add, and the
// 16-bit float conversions (bf16, f16) done on the bits.

const HALF_PI: f32 = 1.5707963267948966;
const LN2_HI: f32 = 0.693145751953125;      // few mantissa bits: n * LN2_HI is exact
const LN2_LO: f32 = 1.428606765330187e-6;
const INV_LN2: f32 = 1.4426950408889634;

// ---------------------------------------------------------------- numerics helpers

// expm1(x) for x <= 0, without the builtin exp.
fn expm1_neg(x: f32) -> f32 {
    if (x > -0.34657359) {
        return expm1_poly(x);
    }
    if (x < -104.0) {
        return -1.0;
    }
    let n = round(x * INV_LN2);
    let r = (x - opaque(n * LN2_HI)) - opaque(n * LN2_LO);
    return ldexp(1.0 + expm1_poly(r), i32(n)) - 1.0;
}

// Taylor series to x^8 / 8!, |x| <= ln(2)/2: relative error < 1e-9.
// Products are `opaque` so that no driver contracts them into fmas (the twin rounds each).
fn expm1_poly(x: f32) -> f32 {
    let p = 1.0 / 5040.0 + opaque(x * (1.0 / 40320.0));
    let q = 1.0 / 120.0 + opaque(x * (1.0 / 720.0 + opaque(x * p)));
    let s = 1.0 / 6.0 + opaque(x * (1.0 / 24.0 + opaque(x * q)));
    return x * (1.0 + opaque(x * (0.5 + opaque(x * s))));
}

// sin and cos for |t| <= pi/4 (Taylor to t^9 / t^8: error < 3e-8).
fn sin_poly(t: f32) -> f32 {
    let t2 = t * t;
    let p = -1.0 / 5040.0 + opaque(t2 * (1.0 / 362880.0));
    let q = -1.0 / 6.0 + opaque(t2 * (1.0 / 120.0 + opaque(t2 * p)));
    return t * (1.0 + opaque(t2 * q));
}

fn cos_poly(t: f32) -> f32 {
    let t2 = t * t;
    let p = -1.0 / 720.0 + opaque(t2 * (1.0 / 40320.0));
    return 1.0 + opaque(t2 * (-0.5 + opaque(t2 * (1.0 / 24.0 + opaque(t2 * p)))));
}

// cos^2(pi/2 * a/b) where a + d = b, 0 <= a <= b, given both a and d = b - a exactly, so the
// result is relatively accurate near both ends (the cosine's crest and its trough).
fn cos_sq_half_pi(a: f32, d: f32, b: f32) -> f32 {
    let near = a <= d;
    let t = HALF_PI * div_rn(select(d, a, near), b);
    let c = select(sin_poly(t), cos_poly(t), near);
    return c * c;
}

// cos^2(pi/2 * (n + rem/period)) for an integer n (only its parity matters) and rem < period.
fn cos_sq_phase(n_odd: bool, rem: u32, period: u32) -> f32 {
    let a = f32(rem);
    let d = f32(period - rem);
    if (n_odd) {
        return cos_sq_half_pi(d, a, f32(period));
    }
    return cos_sq_half_pi(a, d, f32(period));
}

// Full 64-bit product of two u32, as (hi, lo).
fn mul_wide(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    let lo = (p00 & 0xffffu) | (mid << 16u);
    let hi = p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, lo);
}

// (hi * 2^32 + lo) divided by m > 0: (low 32 bits of the quotient, remainder).
// Bit-serial long division. The trip count is opaque (`dz`) so that no compiler unrolls the
// loop: unrolled at every call site it made the prologue take seconds to compile.
fn divmod64(hi: u32, lo: u32, m: u32) -> vec2<u32> {
    var rem = 0u;
    var q = 0u;
    for (var i = 0u; i < 64u + dz; i++) {
        let bit = select((lo >> (63u - i)) & 1u, (hi >> (31u - i)) & 1u, i < 32u);
        let carry = rem >> 31u;
        rem = (rem << 1u) | bit;
        q = q << 1u;
        if (carry == 1u || rem >= m) {
            rem = rem - m;
            q = q | 1u;
        }
    }
    return vec2<u32>(q, rem);
}

// ---------------------------------------------------------------- exact fused multiply-add
//
// WGSL's fma() may be evaluated unfused (lavapipe does), so the exact one is emulated:
// Dekker's product (every partial product is exact, so contracting a*b + c into a hardware
// fma cannot change a result), then Boldo & Melquiond's emulated FMA (the low parts added
// with rounding to odd). Only additions round. Shader compilers may rewrite float additions
// as if they were exact (`(a + b) - a` to `b`: lavapipe's NIR does), which would erase the
// rounding errors these algorithms compute; `opaque` hides each intermediate behind an
// integer xor with a uniform zero, which no compiler can see through.

fn opaque(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) ^ g.zero);
}

// x rounded to its 12 leading mantissa bits (Veltkamp's split, done on the bits).
fn hi12(x: f32) -> f32 {
    return bitcast<f32>((bitcast<u32>(x) + 0x800u) & 0xfffff000u);
}

// (s, e): s = a + b rounded, s + e = a + b exactly (Knuth's TwoSum).
fn two_sum(a: f32, b: f32) -> vec2<f32> {
    let s = opaque(a + b);
    let bb = opaque(s - a);
    return vec2<f32>(s, (a - opaque(s - bb)) + (b - bb));
}

// a * b = hi + lo exactly, hi = a * b rounded to nearest (Dekker).
fn two_prod(a: f32, b: f32) -> vec2<f32> {
    let ah = hi12(a);
    let al = a - ah;
    let bh = hi12(b);
    let bl = b - bh;
    let p = ah * bh;
    let q = opaque(ah * bl + al * bh);
    let z = opaque(p + q);
    let zz = opaque(opaque(p - z) + q) + al * bl;
    let hi = opaque(z + zz);
    return vec2<f32>(hi, zz - opaque(hi - z));
}

// a + b rounded to odd: on an inexact sum, the neighbour whose last mantissa bit is 1.
fn add_round_odd(a: f32, b: f32) -> f32 {
    let s = two_sum(a, b);
    let bits = bitcast<u32>(s.x);
    if (s.y == 0.0 || (bits & 1u) == 1u) {
        return s.x;
    }
    let away = (s.y > 0.0) == (s.x > 0.0);
    return bitcast<f32>(select(bits - 1u, bits + 1u, away));
}

// a * b + c with a single rounding, for operands whose products and sums stay below 2^126
// (the error-free transformations above overflow near 2^128).
fn fma_core(a: f32, b: f32, c: f32) -> f32 {
    let u = two_prod(a, b);
    let t = two_sum(c, u.x);
    return t.x + add_round_odd(t.y, u.y);
}

// Unbiased exponent of a finite x (-127 for zero and subnormals).
fn exponent(x: f32) -> i32 {
    return i32((bitcast<u32>(x) >> 23u) & 0xffu) - 127;
}

const TWO_POW_8: f32 = 256.0;
const TWO_POW_M8: f32 = 0.00390625;

// a * b + c with a single rounding, as IEEE fma: exact for every finite input whose result
// is not subnormal, +-inf where the exact result overflows, and fma's inf/NaN otherwise.
// Near the top of the range the error-free transformations would overflow, so there the
// larger factor and c are scaled by 2^-8 (exact: the larger factor is >= 2^62, or the product
// is negligible next to c), added once and scaled back (exact, or the correct overflow to
// inf). A c too small to scale only decides ties: any value of its sign far below the
// product's last bit does the same, so it becomes +-2^-100. Written with selects, not
// branches: one fma_core per element on every path.
fn fma_exact(a: f32, b: f32, c: f32) -> f32 {
    let ea = exponent(a);
    let eb = exponent(b);
    let ec = exponent(c);
    let big = ea >= 124 || eb >= 124 || ea + eb >= 124 || ec >= 124;
    let sa = select(a, a * TWO_POW_M8, big && ea >= eb);
    let sb = select(b, b * TWO_POW_M8, big && ea < eb);
    var sc = select(c, c * TWO_POW_M8, big);
    sc = select(sc, select(-TINY_TIE, TINY_TIE, c > 0.0), big && c != 0.0 && ec < -64);
    let r = fma_core(sa, sb, sc) * select(1.0, TWO_POW_8, big);
    // |a * b| >= 2^130 > 2 |c|: the exact result overflows.
    let product_overflows = ea + eb >= 130;
    // An infinity or NaN: with a and b finite the product is exact and the result is c;
    // otherwise the product is itself inf or NaN, and so is the sum.
    let special = select(a * b + c, c, ea != 128 && eb != 128);
    if (ea == 128 || eb == 128 || ec == 128) {
        return special;
    }
    // A zero factor: the product is an exact zero, and a * b + c gets the sign of a zero
    // result right (-0 + -0 = -0), which the error-free sum does not.
    return select(select(r, a * b, product_overflows), a * b + c, a == 0.0 || b == 0.0);
}

// fma_exact(coeff, b, c) for the first moment, where the coefficient is normal and
// |coeff| <= 1 (so the product cannot overflow where b does not): fma_exact's scaling
// reduced to a few selects on the bit patterns of b and c, cheap enough for every element.
// Infinities, NaN and a zero b: coeff * b + c is already fma's result.
fn lerp_fma(coeff: f32, b: f32, c: f32) -> f32 {
    let mb = bitcast<u32>(b) & 0x7fffffffu;
    let mc = bitcast<u32>(c) & 0x7fffffffu;
    let top = max(mb, mc);
    let big = top >= 0x7d800000u; // 2^124
    let s = select(1.0, TWO_POW_M8, big);
    let tie = select(-TINY_TIE, TINY_TIE, c > 0.0);
    let sc = select(c * s, tie, big && mc != 0u && mc < 0x1f800000u); // 2^-64
    let r = fma_core(coeff, b * s, sc) * select(1.0, TWO_POW_8, big);
    // Infinities and NaN, and b = 0 (an exact zero product: the sign of a zero result).
    return select(r, coeff * b + c, top >= 0x7f800000u || mb == 0u);
}

// 2^-100.
const TINY_TIE: f32 = 7.888609052210118e-31;

// ---------------------------------------------------------------- powers and logarithms
//
// For the schedules' gamma^n and x^power and a cycled beta1's ln(beta1); never the builtins.

const LN2: f32 = 0.6931471805599453;
const SQRT2: f32 = 1.4142135623730951;

// (atanh(s) - s) / s = s^2/3 + s^4/5 + ... for |s| <= 1/3 (to s^18: error < 2e-11).
fn atanh_tail(s2: f32) -> f32 {
    var acc = 1.0 / 19.0;
    acc = 1.0 / 17.0 + opaque(s2 * acc);
    acc = 1.0 / 15.0 + opaque(s2 * acc);
    acc = 1.0 / 13.0 + opaque(s2 * acc);
    acc = 1.0 / 11.0 + opaque(s2 * acc);
    acc = 1.0 / 9.0 + opaque(s2 * acc);
    acc = 1.0 / 7.0 + opaque(s2 * acc);
    acc = 1.0 / 5.0 + opaque(s2 * acc);
    acc = 1.0 / 3.0 + opaque(s2 * acc);
    return opaque(s2 * acc);
}

// ln(x) for a positive normal x, as two f32 (hi + lo): x = m 2^e with m in [sqrt(1/2),
// sqrt(2)), ln(m) = 2 atanh(s), s = (m - 1) / (m + 1); e ln 2 exact in its high part.
fn ln_pos2(x: f32) -> vec2<f32> {
    let bits = bitcast<u32>(x);
    var e = i32(bits >> 23u) - 127;
    var m = bitcast<f32>((bits & 0x007fffffu) | 0x3f800000u);
    if (m > SQRT2) {
        m = m * 0.5;
        e = e + 1;
    }
    let s = div_rn(m - 1.0, m + 1.0);
    let ln_m = 2.0 * (s + opaque(s * atanh_tail(opaque(s * s))));
    let fe = f32(e);
    return two_sum(opaque(fe * LN2_HI), opaque(fe * LN2_LO) + ln_m);
}

fn ln_pos(x: f32) -> f32 {
    let r = ln_pos2(x);
    return r.x + r.y;
}

// ln(1 - u) for 0 <= u <= 1/2, relatively accurate for small u: -2 atanh(u / (2 - u)).
fn ln_one_minus(u: f32) -> f32 {
    let s = div_rn(u, 2.0 - u);
    return -2.0 * (s + opaque(s * atanh_tail(opaque(s * s))));
}

// ln(num / den) for 0 < num <= den as two f32, the ratio's rounding kept relative.
fn ln_ratio2(num: u32, den: u32) -> vec2<f32> {
    let gap = den - num;
    if (gap <= num) {
        return vec2<f32>(ln_one_minus(div_rn(f32(gap), f32(den))), 0.0);
    }
    return ln_pos2(div_rn(f32(num), f32(den)));
}

// exp(hi + lo) for hi <= 0, |lo| <= ulp(hi); 0 where the result would be below 2^-126.
fn exp_neg2(hi: f32, lo: f32) -> f32 {
    if (hi < -87.0) {
        return 0.0;
    }
    let n = round(hi * INV_LN2);
    let r = ((hi - opaque(n * LN2_HI)) - opaque(n * LN2_LO)) + lo;
    return ldexp(1.0 + expm1_poly(r), i32(n));
}

fn exp_neg(x: f32) -> f32 {
    return exp_neg2(x, 0.0);
}

// (num / den)^p for 0 <= num <= den, den > 0, p > 0: exp(p ln(num/den)) with the exponent
// carried in two f32 (its rounding would cost |p ln(x)| ulp).
fn pow_ratio(num: u32, den: u32, p: f32) -> f32 {
    if (num == 0u) {
        return 0.0;
    }
    let l = ln_ratio2(num, den);
    let e = two_prod(p, l.x);
    return exp_neg2(e.x, e.y + opaque(p * l.y));
}

// 2^(n * l) for l = l_hi + l_lo <= 0 (log2(gamma) from the host in f64, split in two f32):
// n * l_hi is formed exactly (n split in 16-bit halves, Dekker's products), so the exponent
// is accurate to ~2^-40 absolute at any n < 2^32; 0 below 2^-126.
fn exp2_mul(n: u32, l_hi: f32, l_lo: f32) -> f32 {
    let nf = f32(n);
    if (opaque(nf * l_hi) < -128.0) {
        return 0.0;
    }
    let p1 = two_prod(f32(n & 0xffff0000u), l_hi);
    let p2 = two_prod(f32(n & 0xffffu), l_hi);
    let s = two_sum(p1.x, p2.x);
    let t = ((p1.y + p2.y) + s.y) + opaque(nf * l_lo);
    let m = round(s.x);
    let f = (s.x - m) + t;
    if (m <= -126.0) {
        return 0.0;
    }
    return ldexp(1.0 + expm1_poly(opaque(f * LN2)), i32(m));
}

// ---------------------------------------------------------------- 16-bit floats
//
// bf16 and IEEE f16 held in the low 16 bits of a u32, converted to and from f32 with integer
// operations only: WGSL's f16 conversions and pack2x16float round as the implementation
// likes, and float arithmetic on subnormals may be flushed to zero. Every f32 here is only
// bitcast, so the results are the same bits on every device (and on the twin).

const DTYPE_F32: u32 = 0u;
const DTYPE_BF16: u32 = 1u;
const DTYPE_F16: u32 = 2u;

// The bf16 in h's low 16 bits as f32: exact (its bits are the top half of the f32's).
fn bf16_to_f32(h: u32) -> f32 {
    return bitcast<f32>(h << 16u);
}

// The f16 in h's low 16 bits as f32: exact, subnormals included (normalized with
// countLeadingZeros). Infinities stay infinite; a NaN stays NaN with its sign and its payload
// shifted into the f32's top mantissa bits (not quieted: widening is a pure bit map).
fn f16_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0x1fu) {
        return bitcast<f32>(sign | 0x7f800000u | (m << 13u));
    }
    if (e != 0u) {
        return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
    }
    if (m == 0u) {
        return bitcast<f32>(sign);
    }
    // m 2^-24 with m's leading 1 at bit p (0..9): 2^(p - 24) (1 + the bits below it).
    let p = 31u - countLeadingZeros(m);
    return bitcast<f32>(sign | ((p + 103u) << 23u) | ((m << (23u - p)) & 0x7fffffu));
}

// x rounded to the nearest bf16, ties to even: a carry into the exponent gives the next
// binade or, past the largest finite bf16, infinity; f32 subnormals round like any other
// value. A NaN gives a quiet NaN with its sign and the top of its payload.
fn f32_to_bf16(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        return (bits >> 16u) | 0x40u;
    }
    return (bits + 0x7fffu + ((bits >> 16u) & 1u)) >> 16u;
}

// x rounded to the nearest f16, ties to even, through the f16 subnormals (down to 2^-24;
// 2^-25 and below round to a signed zero, f32 subnormals included); 65520 and above become
// infinity. A NaN gives a quiet NaN with its sign and the top of its payload
// (sign | 0x7e00 | the payload's top 9 bits).
fn f32_to_f16(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    let sign = (bits >> 16u) & 0x8000u;
    let a = bits & 0x7fffffffu;
    if (a > 0x7f800000u) {
        return sign | 0x7e00u | ((a >> 13u) & 0x3ffu);
    }
    if (a >= 0x477ff000u) {
        return sign | 0x7c00u;
    }
    if (a >= 0x38800000u) {
        // A normal f16: drop 13 mantissa bits, rebias the exponent by 127 - 15.
        return sign | (((a + 0xfffu + ((a >> 13u) & 1u)) >> 13u) - 0x1c000u);
    }
    let e = a >> 23u;
    if (e < 102u) {
        return sign;
    }
    // In units of 2^-24: (1.m 2^23) 2^(e - 126), shifted right by 14 to 24 bits; a carry
    // out of the subnormals gives the smallest normal's bits (0x400).
    let mant = (a & 0x7fffffu) | 0x800000u;
    let shift = 126u - e;
    return sign | ((mant + ((1u << (shift - 1u)) - 1u) + ((mant >> shift) & 1u)) >> shift);
}

// h of type dtype (DTYPE_BF16 or DTYPE_F16; anything but DTYPE_F16 is read as bf16) as f32.
fn widen16(h: u32, dtype: u32) -> f32 {
    if (dtype == DTYPE_F16) {
        return f16_widen(h); // f16_packed.wgsl or f16_native.wgsl
    }
    return bf16_to_f32(h);
}

// x rounded to nearest even in dtype (DTYPE_BF16 or DTYPE_F16, as widen16).
fn narrow16(x: f32, dtype: u32) -> u32 {
    if (dtype == DTYPE_F16) {
        return f16_narrow(x);
    }
    return f32_to_bf16(x);
}

// x rounded stochastically to dtype with the random word r: to one of its two neighbours (x
// itself if exact), the one of larger magnitude with probability (|x| - |lower|) / ulp,
// so the rounding is unbiased. The rule: add random bits to the bits to be discarded, then
// truncate them (toward zero, on the magnitude).
// - bf16: the 16 low bits of the f32, plus r & 0xffff (torchao's stochastic rounding).
// - f16 normals: 13 mantissa bits, plus r & 0x1fff.
// - f16 subnormals (|x| < 2^-14): the bits below 2^-24, 14 to 125 of them: for fewer than
//   32, plus as many low bits of r; for 32 or more, the discarded part's top 32 bits plus all
//   of r, the carry out of 32 bits deciding (the error on the probability is below 2^-32).
// The same carry past the largest finite value gives infinity (for f16 every |x| >= 65536
// does: its truncation is already out of range). Infinities pass; NaN as narrow16.
fn narrow16_stochastic(x: f32, dtype: u32, r: u32) -> u32 {
    let bits = bitcast<u32>(x);
    let a = bits & 0x7fffffffu;
    if (a > 0x7f800000u) {
        return narrow16(x, dtype);
    }
    if (dtype != DTYPE_F16) {
        return (bits + (r & 0xffffu)) >> 16u;
    }
    let sign = (bits >> 16u) & 0x8000u;
    if (a >= 0x38800000u) {
        return sign | min(((a + (r & 0x1fffu)) >> 13u) - 0x1c000u, 0x7c00u);
    }
    // Units of 2^-24; f32 subnormals have exponent 1's scale and no implicit bit.
    let e = max(a >> 23u, 1u);
    let mant = select(a & 0x7fffffu, (a & 0x7fffffu) | 0x800000u, a >= 0x800000u);
    let shift = 126u - e;
    if (shift < 32u) {
        return sign | ((mant + (r & ((1u << shift) - 1u))) >> shift);
    }
    let top = mant >> min(shift - 32u, 31u);
    return sign | select(0u, 1u, top > ~r);
}
