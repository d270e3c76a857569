// AdamW fused with an on-device learning-rate schedule.
//
// Two entry points, recorded back to back in one compute pass per optimizer step:
//   `prologue` (one workgroup): advances the step counters and writes, per param group, the
//       step's scalars (lr, 1 - lr*wd, lr / bc1, sqrt(bc2)) into `meta`;
//   `update` (one workgroup per chunk of 1024 elements): the per-element AdamW update.
// wgpu orders the two dispatches because both touch `meta`.
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
    flags: u32,           // bit 0: amsgrad, bit 1: maximize
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
    _pad1: u32,
    _pad2: u32,
}

struct DispatchInfo {
    first_chunk: u32,
    n_chunks: u32,
    grid_x: u32,
    _pad: u32,
}

const FLAG_AMSGRAD: u32 = 1u;
const FLAG_MAXIMIZE: u32 = 2u;

// meta[0]: scheduler steps taken, meta[1]: Adam steps taken (t of the last update).
const COUNTER_SCHED: u32 = 0u;
const COUNTER_ADAM: u32 = 1u;

const WORKGROUP: u32 = 256u;
const ELEMS_PER_THREAD: u32 = 4u;
const CHUNK: u32 = 1024u; // WORKGROUP * ELEMS_PER_THREAD

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

// a * b + c with a single rounding.
fn fma_exact(a: f32, b: f32, c: f32) -> f32 {
    let u = two_prod(a, b);
    let t = two_sum(c, u.x);
    return t.x + add_round_odd(t.y, u.y);
}

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
            return g.eta_min + (base_lr - g.eta_min) * factor;
        }
        case 3u: {
            return base_lr * factor;
        }
        default: {
            return base_lr;
        }
    }
}

// ---------------------------------------------------------------- prologue

@group(0) @binding(0) var<uniform> g: Globals;
@group(0) @binding(8) var<storage, read_write> meta_rw: array<u32>;

@compute @workgroup_size(64)
fn prologue(@builtin(local_invocation_index) lid: u32) {
    let sched = meta_rw[COUNTER_SCHED];
    let adam = meta_rw[COUNTER_ADAM];
    // Step s = sched + 1 uses epoch floor((s - 1) / K).
    let epoch = sched / g.steps_per_epoch;
    let t = f32(adam + 1u);
    let bc1 = -expm1_neg(t * g.ln_beta1);
    let bc2_sqrt = sqrt(-expm1_neg(t * g.ln_beta2));
    for (var grp = lid; grp < g.n_groups; grp += 64u) {
        let base_lr = bitcast<f32>(meta_rw[g.groups_at + 4u * grp]);
        let wd = bitcast<f32>(meta_rw[g.groups_at + 4u * grp + 1u]);
        let lr = schedule_lr(base_lr, epoch);
        let at = g.scalars_at + 4u * grp;
        meta_rw[at] = bitcast<u32>(lr);
        meta_rw[at + 1u] = bitcast<u32>(1.0 - lr * wd);
        meta_rw[at + 2u] = bitcast<u32>(lr / bc1);
        meta_rw[at + 3u] = bitcast<u32>(bc2_sqrt);
    }
    storageBarrier();
    if (lid == 0u) {
        meta_rw[COUNTER_SCHED] = sched + 1u;
        meta_rw[COUNTER_ADAM] = adam + 1u;
    }
}

// ---------------------------------------------------------------- update

@group(0) @binding(1) var<uniform> dispatch: DispatchInfo;
@group(0) @binding(2) var<storage, read> meta_ro: array<u32>;
@group(0) @binding(3) var<storage, read_write> param: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad: array<f32>;
@group(0) @binding(5) var<storage, read_write> exp_avg: array<f32>;
@group(0) @binding(6) var<storage, read_write> exp_avg_sq: array<f32>;
@group(0) @binding(7) var<storage, read_write> max_exp_avg_sq: array<f32>;

@compute @workgroup_size(256)
fn update(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let chunk = wg.y * dispatch.grid_x + wg.x;
    if (chunk >= dispatch.n_chunks) {
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
    let sc = g.scalars_at + 4u * (packed >> 16u);
    let decay = bitcast<f32>(meta_ro[sc + 1u]);
    let step_size = bitcast<f32>(meta_ro[sc + 2u]);
    let bc2_sqrt = bitcast<f32>(meta_ro[sc + 3u]);
    let amsgrad = (g.flags & FLAG_AMSGRAD) != 0u;
    let maximize = (g.flags & FLAG_MAXIMIZE) != 0u;

    // Element i of the chunk is handled by thread i % 256: every load is coalesced.
    for (var k = 0u; k < ELEMS_PER_THREAD; k++) {
        let i = k * WORKGROUP + lid;
        if (i < count) {
            var gr = grad[g0 + i];
            if (maximize) {
                gr = -gr;
            }
            let p = param[p0 + i] * decay;
            let m_old = exp_avg[s0 + i];
            // torch.lerp(m, g, w) as PyTorch's CPU kernel computes it: one fused multiply-add,
            // fma(w, g - m, m) for w < 0.5, else fma(w - 1, g - m, g).
            let small = g.one_minus_beta1 < 0.5;
            let coeff = select(g.lerp_big_coeff, g.one_minus_beta1, small);
            let base = select(gr, m_old, small);
            let m = fma_exact(coeff, gr - m_old, base);
            let v = exp_avg_sq[s0 + i] * g.beta2 + g.one_minus_beta2 * gr * gr;
            var v_hat = v;
            if (amsgrad) {
                v_hat = max(max_exp_avg_sq[s0 + i], v);
                max_exp_avg_sq[s0 + i] = v_hat;
            }
            let denom = sqrt(v_hat) / bc2_sqrt + g.eps;
            param[p0 + i] = p - step_size * (m / denom);
            exp_avg[s0 + i] = m;
            exp_avg_sq[s0 + i] = v;
        }
    }
}

// ---------------------------------------------------------------- schedule probe
//
// The lr of arbitrary optimizer steps, through the same `schedule_lr` the prologue uses:
// probe_io[0] holds the base lr's bits, probe_io[1..] step numbers (1-based), replaced by
// their lr's bits.

@group(0) @binding(9) var<storage, read_write> probe_io: array<u32>;

@compute @workgroup_size(64)
fn schedule_probe(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x + 1u;
    if (i >= arrayLength(&probe_io)) {
        return;
    }
    let step = probe_io[i];
    let epoch = (step - 1u) / g.steps_per_epoch;
    probe_io[i] = bitcast<u32>(schedule_lr(bitcast<f32>(probe_io[0]), epoch));
}
