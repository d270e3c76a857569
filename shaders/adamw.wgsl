// AdamW fused with an on-device learning-rate schedule.
//
// One compute pass per optimizer step records, in this order:
//   `reduce` or `tensor_norms` (only with loss scaling or clipping): per chunk (or per tensor,
//       in PyTorch's CPU order) the gradients' sum of squares and non-finite flags;
//   `prologue` (one workgroup): the global norm and found_inf, the step counters, and per
//       param group the step's scalars (lr, 1 - lr*wd, lr / bc1, sqrt(bc2)) into `meta`;
//   `update` (one workgroup per chunk of 256 * ELEMS_PER_THREAD elements of one tensor) and
//       `update_packed` (one per chunk of packed short tensors): the per-element AdamW update.
// wgpu orders the dispatches because each writes what the next reads. A sixth entry point,
// `schedule_probe`, evaluates the schedule at arbitrary steps (the CLI's `schedule`).
//
// The CPU twin of this file is `src/twin.rs`: same functions, same order of operations.
// Numerics (see the crate docs): `1 - beta` and `ln(beta)` come from the host in f64;
// `1 - beta^t` is `-expm1(t * ln(beta))`; the cosine is reduced in integers and evaluated with
// our own polynomials, never with WGSL's builtin transcendentals, whose precision varies.

struct Globals {
    kind: u32,            // 0 constant, 1 cosine, 2 cosine warm restarts, 3 warmup + cosine
    steps_per_epoch: u32,
    period: u32,          // t_max | t_0 | warmup_steps
    t_mult: u32,
    total_steps: u32,
    cycles_num: u32,      // 2 * num_cycles = cycles_num / 2^cycles_shift
    flags: u32,           // FLAG_AMSGRAD | FLAG_MAXIMIZE | FLAG_LOSS_SCALE | FLAG_CLIP | FLAG_TORCH_NORM
    n_groups: u32,
    eta_min: f32,
    cycles_shift: u32,
    eps: f32,
    beta1: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    lerp_big_coeff: f32,  // (1 - beta1) - 1 in f32: torch.lerp's coefficient for weights >= 0.5
    ln_beta1: f32,
    ln_beta2: f32,
    groups_at: u32,       // word offsets into `meta`
    scalars_at: u32,
    chunks_at: u32,
    zero: u32,            // always 0, opaque to the compiler (see `opaque`)
    n_chunks: u32,        // chunks of all dispatches (gradient-norm partials)
    max_grad_norm: f32,   // clipping threshold (FLAG_CLIP)
    n_tensors: u32,
    tensors_at: u32,      // word offset of the tensor table in `meta` (FLAG_TORCH_NORM)
    tensor_norms_at: u32, // word offset of the per-tensor norms in `partials`
    segments_at: u32,     // word offset of the segment table of packed chunks in `meta`
}

struct DispatchInfo {
    first_chunk: u32,
    n_chunks: u32,
    grid_x: u32,
    first_tensor: u32,    // this binding's tensors in the tensor table (FLAG_TORCH_NORM)
    n_tensors: u32,
    n_runs: u32,          // chunks [0, n_runs) are runs of one tensor (`update`), the rest
    packed_grid_x: u32,   // packed chunks of short tensors (`update_packed`, this grid width)
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> g: Globals;

const FLAG_AMSGRAD: u32 = 1u;
const FLAG_MAXIMIZE: u32 = 2u;
const FLAG_LOSS_SCALE: u32 = 4u;  // unscale by amp[0] and skip the step on non-finite gradients
const FLAG_CLIP: u32 = 8u;        // clip the global gradient norm to max_grad_norm
const FLAG_TORCH_NORM: u32 = 16u; // the norm in PyTorch's CPU summation order (see below)

// meta[0]: scheduler steps taken, meta[1]: Adam steps taken (t of the last update),
// meta[2]: the last step was skipped, meta[3]: its gradient multiplier 1/loss_scale,
// meta[4]: its clipping coefficient.
const COUNTER_SCHED: u32 = 0u;
const COUNTER_ADAM: u32 = 1u;
const STEP_SKIPPED: u32 = 2u;
const STEP_INV_SCALE: u32 = 3u;
const STEP_CLIP_COEF: u32 = 4u;

const WORKGROUP: u32 = 256u;
// Elements per invocation of `update` and `reduce`: a chunk is WORKGROUP * ELEMS_PER_THREAD
// elements (set by the host, GpuOptions::elems_per_thread).
override ELEMS_PER_THREAD: u32 = 8u;

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
    let r = (x - n * LN2_HI) - n * LN2_LO;
    return ldexp(1.0 + expm1_poly(r), i32(n)) - 1.0;
}

// Taylor series to x^8 / 8!, |x| <= ln(2)/2: relative error < 1e-9.
fn expm1_poly(x: f32) -> f32 {
    let p = 1.0 / 5040.0 + x * (1.0 / 40320.0);
    let q = 1.0 / 120.0 + x * (1.0 / 720.0 + x * p);
    let s = 1.0 / 6.0 + x * (1.0 / 24.0 + x * q);
    return x * (1.0 + x * (0.5 + x * s));
}

// sin and cos for |t| <= pi/4 (Taylor to t^9 / t^8: error < 3e-8).
fn sin_poly(t: f32) -> f32 {
    let t2 = t * t;
    return t * (1.0 + t2 * (-1.0 / 6.0 + t2 * (1.0 / 120.0 + t2 * (-1.0 / 5040.0 + t2 * (1.0 / 362880.0)))));
}

fn cos_poly(t: f32) -> f32 {
    let t2 = t * t;
    return 1.0 + t2 * (-0.5 + t2 * (1.0 / 24.0 + t2 * (-1.0 / 720.0 + t2 * (1.0 / 40320.0))));
}

// cos^2(pi/2 * a/b) where a + d = b, 0 <= a <= b, given both a and d = b - a exactly, so the
// result is relatively accurate near both ends (the cosine's crest and its trough).
fn cos_sq_half_pi(a: f32, d: f32, b: f32) -> f32 {
    var c: f32;
    if (a <= d) {
        c = cos_poly(HALF_PI * (a / b));
    } else {
        c = sin_poly(HALF_PI * (d / b));
    }
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
// Bit-serial long division.
fn divmod64(hi: u32, lo: u32, m: u32) -> vec2<u32> {
    var rem = 0u;
    var q = 0u;
    for (var i = 0u; i < 64u; i++) {
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

// ---------------------------------------------------------------- the schedule

// The schedule's factor in [0, 1] at `epoch`: lr = eta_min + (base - eta_min) * factor for the
// cosine kinds, lr = base * factor for warmup + cosine.
fn schedule_factor(epoch: u32) -> f32 {
    switch (g.kind) {
        case 1u: {
            // CosineAnnealingLR: (1 + cos(pi e/T)) / 2 = cos^2(pi/2 * e/T), e = n*T + rem.
            let t = g.period;
            return cos_sq_phase(((epoch / t) & 1u) == 1u, epoch % t, t);
        }
        case 2u: {
            // CosineAnnealingWarmRestarts: find (T_cur, T_i) in integers, as PyTorch's step().
            var t_cur = epoch;
            var t_i = g.period;
            if (g.t_mult == 1u) {
                return cos_sq_phase(false, t_cur % t_i, t_i);
            }
            for (var i = 0u; i < 33u; i++) {
                if (t_cur < t_i) {
                    break;
                }
                t_cur = t_cur - t_i;
                let next = mul_wide(t_i, g.t_mult);
                if (next.x != 0u) {
                    // T_i >= 2^32 > T_cur: evaluate with T_i and T_i - T_cur split in two words.
                    let borrow = select(0u, 1u, next.y < t_cur);
                    let d_lo = next.y - t_cur;
                    let d = f32(next.x - borrow) * 4294967296.0 + f32(d_lo);
                    let b = f32(next.x) * 4294967296.0 + f32(next.y);
                    return cos_sq_half_pi(f32(t_cur), d, b);
                }
                t_i = next.y;
            }
            return cos_sq_phase(false, t_cur, t_i);
        }
        case 3u: {
            let w = g.period;
            if (epoch < w) {
                return f32(epoch) / f32(w);
            }
            let span = select(1u, g.total_steps - w, g.total_steps > w);
            // Phase pi * (2 num_cycles) * k / span, with 2 num_cycles = cycles_num / 2^cycles_shift
            // (exact for integers and dyadic values, else to 2^-32): with
            // cycles_num * k = Q * span + R, the phase is pi * (Q + R/span) / 2^shift, reduced
            // modulo 2 pi in integers.
            let k = epoch - w;
            let wide = mul_wide(g.cycles_num, k);
            let qr = divmod64(wide.x, wide.y, span);
            let sh = g.cycles_shift;
            let q = qr.x & ((2u << sh) - 1u);
            let low = q & ((1u << sh) - 1u);
            let r = f32(qr.y) / f32(span);
            let a = f32(low) + r;
            let d = f32(((1u << sh) - 1u) - low) + f32(span - qr.y) / f32(span);
            let b = f32(1u << sh);
            if ((q >> sh) == 1u) {
                return cos_sq_half_pi(d, a, b);
            }
            return cos_sq_half_pi(a, d, b);
        }
        default: {
            return 1.0;
        }
    }
}

fn schedule_lr(base_lr: f32, epoch: u32) -> f32 {
    let factor = schedule_factor(epoch);
    switch (g.kind) {
        case 1u, 2u: {
            return g.eta_min + opaque((base_lr - g.eta_min) * factor);
        }
        case 3u: {
            return base_lr * factor;
        }
        default: {
            return base_lr;
        }
    }
}

// ---------------------------------------------------------------- gradient norm and AMP
//
// With loss scaling or clipping on, a `reduce` dispatch per chunk writes four words into
// `partials`: the sum of squares of the chunk's unscaled gradients as an unevaluated sum
// hi + lo (each square exact by two_prod, each addition exact by two_sum: as accurate as a
// sum in twice the precision, so the norm matches PyTorch's double accumulation), a tree
// over the workgroup, and whether any raw gradient is non-finite (tested on the bits: WGSL
// may assume floats are finite). The prologue reduces all partials the same way.
// amp: [0] loss scale (written by the host or the engine's scaler), [1] found_inf,
// [2] total gradient norm (unscaled, before clipping), [3] clipping coefficient.

var<workgroup> red_hi: array<f32, 256>;
var<workgroup> red_lo: array<f32, 256>;
var<workgroup> red_flag: array<u32, 256>;

fn is_nonfinite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u;
}

// The non-finite flags of a raw gradient: NONFINITE for +-inf, NONFINITE | NAN for NaN.
const NONFINITE: u32 = 1u;
const NAN: u32 = 2u;
fn nonfinite_flags(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    if ((bits & 0x7f800000u) != 0x7f800000u) {
        return 0u;
    }
    return select(NONFINITE, NONFINITE | NAN, (bits & 0x7fffffu) != 0u);
}

// The global norm from the sum of squares, as PyTorch's f32 norm ends up: NaN if any gradient
// is NaN, inf if any is infinite or the squares overflow (which leaves the compensated sum
// inf or NaN), else the square root.
fn finish_norm(sum_sq: f32, flags: u32, root: f32) -> f32 {
    if ((flags & NAN) != 0u) {
        return bitcast<f32>(0x7fc00000u);
    }
    if ((flags & NONFINITE) != 0u || is_nonfinite(sum_sq)) {
        return bitcast<f32>(0x7f800000u);
    }
    return root;
}

// torch.nn.utils.clip_grad_norm_'s coefficient: max_norm / (total_norm + 1e-6) clamped to 1;
// 0 for an infinite norm, NaN for a NaN one.
fn clip_coefficient(norm: f32) -> f32 {
    if (is_nonfinite(norm)) {
        return select(0.0, norm, (bitcast<u32>(norm) & 0x7fffffu) != 0u);
    }
    return min(div_rn(g.max_grad_norm, norm + 1e-6), 1.0);
}

// 1 / s rounded to nearest (one Newton step with exact residuals), as PyTorch's
// `scale.double().reciprocal().float()`: for |s| in [2^-100, 2^100] and every power of two
// (beyond, the correction's product is subnormal and the result may be an ulp off).
fn recip(s: f32) -> f32 {
    let r = 1.0 / s;
    if (is_nonfinite(s) || is_nonfinite(r) || r == 0.0) {
        // PyTorch: 1/inf = 0 (an infinite scale zeroes the gradients), 1/0 = inf, NaN stays.
        return r;
    }
    let e = fma_exact(-s, r, 1.0);
    return fma_exact(r, e, r);
}

fn grad_multiplier(scale_bits: u32) -> f32 {
    if ((g.flags & FLAG_LOSS_SCALE) != 0u) {
        return recip(bitcast<f32>(scale_bits));
    }
    return 1.0;
}

// (hi, lo) + (x, y), both unevaluated sums.
fn add_double(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let s = two_sum(a.x, b.x);
    return vec2<f32>(s.x, s.y + (a.y + b.y));
}

// Tree over the workgroup's 256 (sum, flag) pairs; the result is in slot 0.
fn workgroup_tree(lid: u32) {
    for (var stride = 128u; stride > 0u; stride = stride >> 1u) {
        workgroupBarrier();
        if (lid < stride) {
            let s = add_double(vec2<f32>(red_hi[lid], red_lo[lid]), vec2<f32>(red_hi[lid + stride], red_lo[lid + stride]));
            red_hi[lid] = s.x;
            red_lo[lid] = s.y;
            red_flag[lid] = red_flag[lid] | red_flag[lid + stride];
        }
    }
    workgroupBarrier();
}

@group(0) @binding(10) var<storage, read> amp_ro: array<u32>;
@group(0) @binding(12) var<storage, read_write> partials_rw: array<u32>;

@compute @workgroup_size(256)
fn reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let chunk = wg.y * dispatch.grid_x + wg.x;
    if (chunk >= dispatch.n_chunks) {
        return;
    }
    let ce = g.chunks_at + 4u * (dispatch.first_chunk + chunk);
    let g0 = meta_ro[ce + 1u];
    var count = meta_ro[ce + 3u] & 0xffffu;
    let is_packed = count == 0u;
    if (is_packed) {
        count = meta_ro[ce + 2u];
    }
    let inv = grad_multiplier(amp_ro[0]);
    var acc = vec2<f32>(0.0, 0.0);
    var flag = 0u;
    for (var k = 0u; k < ELEMS_PER_THREAD; k++) {
        let i = k * WORKGROUP + lid;
        if (i < count) {
            var gi = g0 + i;
            if (is_packed) {
                let se = g.segments_at + 4u * segment_of(meta_ro[ce], meta_ro[ce + 1u], i);
                gi = meta_ro[se + 1u] + i - (meta_ro[se + 3u] & 0xffffu);
            }
            let raw = grad[gi];
            flag = flag | nonfinite_flags(raw);
            let x = raw * inv;
            acc = add_double(acc, two_prod(x, x));
        }
    }
    red_hi[lid] = acc.x;
    red_lo[lid] = acc.y;
    red_flag[lid] = flag;
    workgroup_tree(lid);
    if (lid == 0u) {
        let at = 4u * (dispatch.first_chunk + chunk);
        partials_rw[at] = bitcast<u32>(red_hi[0]);
        partials_rw[at + 1u] = bitcast<u32>(red_lo[0]);
        partials_rw[at + 2u] = red_flag[0];
    }
}

// ---------------------------------------------------------------- PyTorch's CPU norm order
//
// With FLAG_TORCH_NORM the gradient norm is summed in exactly the order of PyTorch's CPU
// `torch.linalg.vector_norm` (ATen's AVX2 kernel, 8 f32 lanes), which `clip_grad_norm_`
// applies to each tensor and then to the vector of the tensors' norms: lane j sums the
// squares of elements j, j+8, ... one by one, the lanes are added left to right, then the
// tail, then a correctly rounded sqrt. PyTorch's own result depends on that order (its
// rounding moves the clipping coefficient by an ulp or two, which the first moments carry),
// so only the same order reproduces its traces. Each lane is a serial chain: this mode is
// for parity with PyTorch, not for speed on large tensors.

var<workgroup> lane_acc: array<f32, 64>;
var<workgroup> lane_flag: array<u32, 64>;

// a / b rounded to nearest (WGSL's division may be off by 2.5 ulp): the candidate around the
// builtin's quotient with the smallest exact residual |a - c * b|. The clipping coefficient
// needs it: PyTorch's is a correctly rounded f32 division, and the first moments carry every
// ulp of it.
fn div_rn(a: f32, b: f32) -> f32 {
    let q = a / b;
    var best = q;
    var best_res = abs(div_residual(q, a, b));
    for (var k = 0u; k < 2u; k++) {
        let c = bitcast<f32>(bitcast<u32>(q) + select(0xffffffffu, 1u, k == 1u));
        let res = abs(div_residual(c, a, b));
        if (res < best_res) {
            best = c;
            best_res = res;
        }
    }
    return best;
}

// a - c * b, the subtraction exact (c * b is within a factor 2 of a).
fn div_residual(c: f32, a: f32, b: f32) -> f32 {
    let p = two_prod(c, b);
    return (a - p.x) - p.y;
}

// sqrt rounded to nearest: the candidate around the builtin's result with the smallest
// exact residual |c^2 - b| (exact for b >= 2^-100; below, the residual's low part is
// subnormal).
fn sqrt_rn(b: f32) -> f32 {
    let r = sqrt(b);
    if (b == 0.0) {
        return r;
    }
    var best = r;
    var best_res = abs(sq_residual(r, b));
    for (var k = 0u; k < 2u; k++) {
        let c = bitcast<f32>(bitcast<u32>(r) + select(0xffffffffu, 1u, k == 1u));
        let res = abs(sq_residual(c, b));
        if (res < best_res) {
            best = c;
            best_res = res;
        }
    }
    return best;
}

// c * c - b, the first subtraction exact (Sterbenz: c * c is within a factor 2 of b).
fn sq_residual(c: f32, b: f32) -> f32 {
    let p = two_prod(c, c);
    return (p.x - b) + p.y;
}

// acc + x * x, rounded twice as ATen's unfused `acc + x * x` is.
fn add_square(acc: f32, x: f32) -> f32 {
    return acc + opaque(x * x);
}

@compute @workgroup_size(64)
fn tensor_norms(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wg.x * 8u + lid / 8u;
    let lane = lid % 8u;
    let valid = t < dispatch.n_tensors;
    let inv = grad_multiplier(amp_ro[0]);
    // Tensor table entry: grad offset in this binding, length, index in registration order.
    var g0 = 0u;
    var len = 0u;
    var index = 0u;
    if (valid) {
        let te = g.tensors_at + 4u * (dispatch.first_tensor + t);
        g0 = meta_ro[te];
        len = meta_ro[te + 1u];
        index = meta_ro[te + 2u];
    }
    let body = len - len % 8u;
    var acc = 0.0;
    var flag = 0u;
    for (var i = lane; i < body; i += 8u) {
        let raw = grad[g0 + i];
        flag = flag | nonfinite_flags(raw);
        acc = add_square(acc, raw * inv);
    }
    lane_acc[lid] = acc;
    lane_flag[lid] = flag;
    workgroupBarrier();
    if (valid && lane == 0u) {
        var b = lane_acc[lid];
        var f = lane_flag[lid];
        for (var j = 1u; j < 8u; j++) {
            b = b + lane_acc[lid + j];
            f = f | lane_flag[lid + j];
        }
        for (var i = body; i < len; i++) {
            let raw = grad[g0 + i];
            f = f | nonfinite_flags(raw);
            b = add_square(b, raw * inv);
        }
        let at = g.tensor_norms_at + 2u * index;
        partials_rw[at] = bitcast<u32>(sqrt_rn(b));
        partials_rw[at + 1u] = f;
    }
}

// ---------------------------------------------------------------- prologue

@group(0) @binding(8) var<storage, read_write> meta_rw: array<u32>;
@group(0) @binding(11) var<storage, read_write> amp_rw: array<u32>;
@group(0) @binding(13) var<storage, read> partials_ro: array<u32>;

@compute @workgroup_size(256)
fn prologue(@builtin(local_invocation_index) lid: u32) {
    let sched = meta_rw[COUNTER_SCHED];
    let adam = meta_rw[COUNTER_ADAM];
    var skip = false;
    var inv = 1.0;
    var coef = 1.0;
    if ((g.flags & (FLAG_LOSS_SCALE | FLAG_CLIP)) != 0u) {
        var norm: f32;
        if ((g.flags & FLAG_TORCH_NORM) != 0u) {
            // The norm of the vector of per-tensor norms, in the same order; 8 lanes here.
            let n = g.n_tensors;
            let body = n - n % 8u;
            var acc = 0.0;
            var flag = 0u;
            for (var i = lid; i < n; i += 256u) {
                flag = flag | partials_ro[g.tensor_norms_at + 2u * i + 1u];
            }
            if (lid < 8u) {
                for (var i = lid; i < body; i += 8u) {
                    acc = add_square(acc, bitcast<f32>(partials_ro[g.tensor_norms_at + 2u * i]));
                }
            }
            red_hi[lid] = acc;
            red_lo[lid] = 0.0;
            red_flag[lid] = flag;
            workgroupBarrier();
            var b = red_hi[0];
            for (var j = 1u; j < 8u; j++) {
                b = b + red_hi[j];
            }
            for (var i = body; i < n; i++) {
                b = add_square(b, bitcast<f32>(partials_ro[g.tensor_norms_at + 2u * i]));
            }
            workgroup_tree(lid);
            norm = finish_norm(b, red_flag[0], sqrt_rn(b));
        } else {
            var acc = vec2<f32>(0.0, 0.0);
            var flag = 0u;
            for (var i = lid; i < g.n_chunks; i += 256u) {
                let p = vec2<f32>(bitcast<f32>(partials_ro[4u * i]), bitcast<f32>(partials_ro[4u * i + 1u]));
                acc = add_double(acc, p);
                flag = flag | partials_ro[4u * i + 2u];
            }
            red_hi[lid] = acc.x;
            red_lo[lid] = acc.y;
            red_flag[lid] = flag;
            workgroup_tree(lid);
            let sum_sq = red_hi[0] + red_lo[0];
            norm = finish_norm(sum_sq, red_flag[0], sqrt(sum_sq));
        }
        skip = (g.flags & FLAG_LOSS_SCALE) != 0u && red_flag[0] != 0u;
        inv = grad_multiplier(amp_rw[0]);
        if ((g.flags & FLAG_CLIP) != 0u) {
            coef = clip_coefficient(norm);
        }
        if (lid == 0u) {
            amp_rw[1] = select(0u, 1u, red_flag[0] != 0u);
            amp_rw[2] = bitcast<u32>(norm);
            amp_rw[3] = bitcast<u32>(coef);
        }
    }
    // A counter at 2^32 - 1 cannot advance: the step is refused (skipped, counters kept)
    // rather than wrapped, which would restart the schedule or make t = 0 (bias correction 0).
    let at_limit = sched == 0xffffffffu || adam == 0xffffffffu;
    skip = skip || at_limit;
    // Step s = sched + 1 uses epoch floor((s - 1) / K); a skipped step does not advance t.
    let epoch = sched / g.steps_per_epoch;
    let t = f32(adam + 1u);
    let bc1 = -expm1_neg(t * g.ln_beta1);
    let bc2_sqrt = sqrt(-expm1_neg(t * g.ln_beta2));
    for (var grp = lid; grp < g.n_groups && !at_limit; grp += 256u) {
        let base_lr = bitcast<f32>(meta_rw[g.groups_at + 4u * grp]);
        let wd = bitcast<f32>(meta_rw[g.groups_at + 4u * grp + 1u]);
        let lr = schedule_lr(base_lr, epoch);
        let at = g.scalars_at + 4u * grp;
        meta_rw[at] = bitcast<u32>(lr);
        meta_rw[at + 1u] = bitcast<u32>(1.0 - opaque(lr * wd));
        meta_rw[at + 2u] = bitcast<u32>(lr / bc1);
        meta_rw[at + 3u] = bitcast<u32>(bc2_sqrt);
    }
    storageBarrier();
    if (lid == 0u) {
        meta_rw[COUNTER_SCHED] = sched + select(1u, 0u, at_limit);
        meta_rw[COUNTER_ADAM] = adam + select(1u, 0u, skip);
        meta_rw[STEP_SKIPPED] = select(0u, 1u, skip);
        meta_rw[STEP_INV_SCALE] = bitcast<u32>(inv);
        meta_rw[STEP_CLIP_COEF] = bitcast<u32>(coef);
    }
}

// ---------------------------------------------------------------- update
//
// The engine's buffers are bound twice: as f32 (any alignment, the ragged ends) and as vec4
// (chunks whose param, grad and state offsets are multiples of 4: 16-byte loads, which a GPU
// needs to reach its copy bandwidth). The state is the optimizer's own and always aligned.

@group(0) @binding(1) var<uniform> dispatch: DispatchInfo;
@group(0) @binding(2) var<storage, read> meta_ro: array<u32>;
@group(0) @binding(3) var<storage, read_write> param: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad: array<f32>;
@group(0) @binding(5) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> max_exp_avg_sq: array<vec4<f32>>;
@group(0) @binding(14) var<storage, read_write> param4: array<vec4<f32>>;
@group(0) @binding(15) var<storage, read_write> grad4: array<vec4<f32>>;

struct StepConsts {
    decay: f32,
    step_size: f32,
    bc2_sqrt: f32,
    inv_scale: f32,
    clip_coef: f32,
}

// One element's update: returns (param, exp_avg, exp_avg_sq, max_exp_avg_sq).
fn adam_element(raw_grad: f32, p_old: f32, m_old: f32, v_old: f32, vmax_old: f32, k: StepConsts) -> vec4<f32> {
    // Unscale, then clip: two roundings, as GradScaler and clip_grad_norm_ do.
    var gr = (raw_grad * k.inv_scale) * k.clip_coef;
    if ((g.flags & FLAG_MAXIMIZE) != 0u) {
        gr = -gr;
    }
    // `opaque` keeps a driver from contracting a product into the next addition (NVIDIA
    // does): PyTorch rounds each product, and so do the CPU twin and lavapipe.
    let p = opaque(p_old * k.decay);
    // torch.lerp(m, g, w) as PyTorch's CPU kernel computes it: one fused multiply-add,
    // fma(w, g - m, m) for w < 0.5, else fma(w - 1, g - m, g).
    let small = g.one_minus_beta1 < 0.5;
    let coeff = select(g.lerp_big_coeff, g.one_minus_beta1, small);
    let base = select(gr, m_old, small);
    let m = lerp_fma(coeff, gr - m_old, base);
    let v = opaque(v_old * g.beta2) + opaque(g.one_minus_beta2 * gr * gr);
    var v_hat = v;
    if ((g.flags & FLAG_AMSGRAD) != 0u) {
        v_hat = max(vmax_old, v);
    }
    let denom = sqrt(v_hat) / k.bc2_sqrt + g.eps;
    return vec4<f32>(p - opaque(k.step_size * (m / denom)), m, v, v_hat);
}

fn update_scalar(pi: u32, gi: u32, si: u32, k: StepConsts) {
    let amsgrad = (g.flags & FLAG_AMSGRAD) != 0u;
    let a = si >> 2u;
    let c = si & 3u;
    var vmax_old = 0.0;
    if (amsgrad) {
        vmax_old = max_exp_avg_sq[a][c];
    }
    let r = adam_element(grad[gi], param[pi], exp_avg[a][c], exp_avg_sq[a][c], vmax_old, k);
    param[pi] = r.x;
    exp_avg[a][c] = r.y;
    exp_avg_sq[a][c] = r.z;
    if (amsgrad) {
        max_exp_avg_sq[a][c] = r.w;
    }
}

// The per-step scalars of a param group.
fn step_consts(group: u32) -> StepConsts {
    let sc = g.scalars_at + 4u * group;
    return StepConsts(
        bitcast<f32>(meta_ro[sc + 1u]),
        bitcast<f32>(meta_ro[sc + 2u]),
        bitcast<f32>(meta_ro[sc + 3u]),
        bitcast<f32>(meta_ro[STEP_INV_SCALE]),
        bitcast<f32>(meta_ro[STEP_CLIP_COEF]),
    );
}

// Packed chunks (src/plan.rs): short tensors share a chunk. Its entry is (first segment,
// word offset of its element map, elements, 0: the count 0 marks it); each
// segment entry in the segment table is (param, grad and state offsets of the tensor's first
// element, its start in the chunk | group << 16), and the element map gives each element's
// segment as a 16-bit index.
fn segment_of(first: u32, map_at: u32, i: u32) -> u32 {
    let j = (meta_ro[map_at + i / 2u] >> (16u * (i & 1u))) & 0xffffu;
    return first + j;
}

// A packed chunk's update: element i of the chunk by thread i % 256, as in any chunk (loads
// coalesced across the workgroup), each element's tensor from the element map.
// It is an entry point of its own, not a branch of `update`: the extra code slowed every chunk.
@compute @workgroup_size(256)
fn update_packed(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let chunk = dispatch.n_runs + wg.y * dispatch.packed_grid_x + wg.x;
    if (chunk >= dispatch.n_chunks || meta_ro[STEP_SKIPPED] != 0u) {
        return;
    }
    let ce = g.chunks_at + 4u * (dispatch.first_chunk + chunk);
    let first = meta_ro[ce];
    let map_at = meta_ro[ce + 1u];
    let total = meta_ro[ce + 2u];
    var k = step_consts(0u);
    for (var e = 0u; e < ELEMS_PER_THREAD; e++) {
        let i = e * WORKGROUP + lid;
        if (i < total) {
            let se = g.segments_at + 4u * segment_of(first, map_at, i);
            let info = meta_ro[se + 3u];
            let off = i - (info & 0xffffu);
            let sc = g.scalars_at + 4u * (info >> 16u);
            k.decay = bitcast<f32>(meta_ro[sc + 1u]);
            k.step_size = bitcast<f32>(meta_ro[sc + 2u]);
            update_scalar(meta_ro[se] + off, meta_ro[se + 1u] + off, meta_ro[se + 2u] + off, k);
        }
    }
}

@compute @workgroup_size(256)
fn update(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let chunk = wg.y * dispatch.grid_x + wg.x;
    if (chunk >= dispatch.n_runs || meta_ro[STEP_SKIPPED] != 0u) {
        return;
    }
    // Chunk entry: element offsets of its first element in the param, grad and state
    // bindings, then (count | group << 16).
    let ce = g.chunks_at + 4u * (dispatch.first_chunk + chunk);
    let p0 = meta_ro[ce];
    let g0 = meta_ro[ce + 1u];
    let s0 = meta_ro[ce + 2u];
    let packed = meta_ro[ce + 3u];
    let count = packed & 0xffffu;
    let k = step_consts(packed >> 16u);
    let amsgrad = (g.flags & FLAG_AMSGRAD) != 0u;

    if (((p0 | g0 | s0) & 3u) != 0u) {
        // Unaligned tensor: element i of the chunk by thread i % 256, every load coalesced.
        for (var e = 0u; e < ELEMS_PER_THREAD; e++) {
            let i = e * WORKGROUP + lid;
            if (i < count) {
                update_scalar(p0 + i, g0 + i, s0 + i, k);
            }
        }
        return;
    }
    // Aligned: vec4 j of the chunk by thread j % 256, then the ragged end (< 4 elements).
    let n4 = count / 4u;
    let pv = p0 / 4u;
    let gv = g0 / 4u;
    let sv = s0 / 4u;
    for (var e = 0u; e < (ELEMS_PER_THREAD + 3u) / 4u; e++) {
        let j = e * WORKGROUP + lid;
        if (j < n4) {
            let gr = grad4[gv + j];
            let p = param4[pv + j];
            let m = exp_avg[sv + j];
            let v = exp_avg_sq[sv + j];
            var vmax = vec4<f32>(0.0);
            if (amsgrad) {
                vmax = max_exp_avg_sq[sv + j];
            }
            let r0 = adam_element(gr.x, p.x, m.x, v.x, vmax.x, k);
            let r1 = adam_element(gr.y, p.y, m.y, v.y, vmax.y, k);
            let r2 = adam_element(gr.z, p.z, m.z, v.z, vmax.z, k);
            let r3 = adam_element(gr.w, p.w, m.w, v.w, vmax.w, k);
            param4[pv + j] = vec4<f32>(r0.x, r1.x, r2.x, r3.x);
            exp_avg[sv + j] = vec4<f32>(r0.y, r1.y, r2.y, r3.y);
            exp_avg_sq[sv + j] = vec4<f32>(r0.z, r1.z, r2.z, r3.z);
            if (amsgrad) {
                max_exp_avg_sq[sv + j] = vec4<f32>(r0.w, r1.w, r2.w, r3.w);
            }
        }
    }
    let i = 4u * n4 + lid;
    if (i < count) {
        update_scalar(p0 + i, g0 + i, s0 + i, k);
    }
}

// ---------------------------------------------------------------- schedule probe
//
// The lr of arbitrary optimizer steps, through the same `schedule_lr` the prologue uses:
// probe_io[0] holds the base lr's bits, probe_io[1..] step numbers (1-based), replaced by
// their lr's bits.

@group(0) @binding(9) var<storage, read_write> probe_io: array<u32>;

@compute @workgroup_size(64)
fn schedule_probe(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {
    // A 2-D grid past 65535 workgroups: rows of n.x * 64 steps.
    let i = id.y * n.x * 64u + id.x + 1u;
    if (i >= arrayLength(&probe_io)) {
        return;
    }
    let step = probe_io[i];
    let epoch = (step - 1u) / g.steps_per_epoch;
    probe_io[i] = bitcast<u32>(schedule_lr(bitcast<f32>(probe_io[0]), epoch));
}

// ---------------------------------------------------------------- numerics probe
//
// One numerics function over many inputs, for bit-for-bit tests against the CPU twin:
// probe_io[0] selects the function (NUMERICS_* in src/probe.rs), then 4 words per case:
// a, b, c (f32 bits), and the result written in the fourth.

@compute @workgroup_size(64)
fn numerics_probe(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {
    let at = 1u + 4u * (id.y * n.x * 64u + id.x);
    if (at + 3u >= arrayLength(&probe_io)) {
        return;
    }
    let a = bitcast<f32>(probe_io[at]);
    let b = bitcast<f32>(probe_io[at + 1u]);
    let c = bitcast<f32>(probe_io[at + 2u]);
    var r: f32;
    switch (probe_io[0]) {
        case 0u: { r = fma_exact(a, b, c); }
        case 1u: { r = lerp_fma(a, b, c); }
        case 2u: { r = recip(a); }
        case 3u: { r = div_rn(a, b); }
        case 4u: { r = sqrt_rn(a); }
        default: { r = expm1_neg(a); }
    }
    probe_io[at + 3u] = bitcast<u32>(r);
}
