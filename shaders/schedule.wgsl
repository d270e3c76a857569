// ---------------------------------------------------------------- the schedule
// (CPU twin: src/twin/schedule.rs; the host side, which writes the programs: src/schedule/)
//
// A schedule is data. Each param group has a program in `meta`, in the schedule region that
// starts at g.sched_at: the group's program at offset group * g.sched_stride of the region,
// its node 0 first, then its children (NODE_WORDS words each), then lists (milestones).
// A node is an op and up to 15 parameter words. `schedule_eval` evaluates a program at a
// scheduler epoch k: a composite root picks one child (sequential) or multiplies the
// factors of all (chained); children are leaves. Offsets in a program are relative to the
// region (src/schedule/program.rs lays them out; the twin reads the same words).

const NODE_WORDS: u32 = 16u;
const OP_CONSTANT: u32 = 0u;
const OP_COSINE: u32 = 1u;
const OP_WARM_RESTARTS: u32 = 2u;
const OP_CONSTANT_FACTOR: u32 = 3u;
const OP_LINEAR: u32 = 4u;
const OP_POWER: u32 = 5u;
const OP_POLYNOMIAL: u32 = 6u;
const OP_ONECYCLE: u32 = 7u;
const OP_CYCLIC: u32 = 8u;
const OP_WARMUP: u32 = 9u;
const OP_WSD: u32 = 10u;
const OP_PLATEAU: u32 = 11u;
const OP_SEQUENTIAL: u32 = 16u;
const OP_CHAINED: u32 = 17u;
// Stand-in for ln(0) when beta1 is 0 (as the host's for a fixed beta).
const LN_ZERO: f32 = -1.0e4;

fn sw(at: u32) -> u32 {
    return meta_rw[g.sched_at + at];
}

fn sf(at: u32) -> f32 {
    return bitcast<f32>(meta_rw[g.sched_at + at]);
}

// k - (hi + lo) for a u32 k and a two-word f32 value, accurate to ~2^-40 relative to k.
fn sub_split(k: u32, hi: f32, lo: f32) -> f32 {
    let t = two_sum(f32(k & 0xffff0000u), -hi);
    return t.x + ((t.y + f32(k & 0xffffu)) - lo);
}

// cos^2(pi/2 * x) with x = (num / 2^shift) * j / span, reduced in integers: `mirror`: period
// 2 in x (the cosine continues: (1 + cos(pi x)) / 2); else period 1 (a sawtooth of restarts:
// (1 + cos(pi frac(x))) / 2). Exact phase for integer and dyadic num / 2^shift.
fn cos_sq_dyadic(num: u32, shift: u32, j: u32, span: u32, mirror: bool) -> f32 {
    let wide = mul_wide(num, j);
    let qr = divmod64(wide.x, wide.y, span);
    let q = qr.x & select((1u << shift) - 1u, (2u << shift) - 1u, mirror);
    let low = q & ((1u << shift) - 1u);
    // R / span and (span - R) / span: the smaller divided, the larger its complement (whose
    // rounding is relatively negligible).
    let small_r = qr.y <= span - qr.y;
    let f = div_rn(f32(select(span - qr.y, qr.y, small_r)), f32(span));
    let r_frac = select(1.0 - f, f, small_r);
    let rest = select(f, 1.0 - f, small_r);
    let a = f32(low) + r_frac;
    let d = f32(((1u << shift) - 1u) - low) + rest;
    let b = f32(1u << shift);
    let odd = (q >> shift) == 1u;
    return cos_sq_half_pi(select(a, d, odd), select(d, a, odd), b);
}

// CosineAnnealingWarmRestarts: find (T_cur, T_i) in integers, as PyTorch's step().
fn warm_restarts_factor(t_0: u32, t_mult: u32, k: u32) -> f32 {
    var t_cur = k;
    var t_i = t_0;
    if (t_mult == 1u) {
        return cos_sq_phase(false, t_cur % t_i, t_i);
    }
    for (var i = 0u; i < 33u + dz; i++) {
        if (t_cur < t_i) {
            break;
        }
        t_cur = t_cur - t_i;
        let next = mul_wide(t_i, t_mult);
        if (next.x != 0u) {
            // T_i >= 2^32 > T_cur: evaluate with T_i and T_i - T_cur split in two words.
            let borrow = select(0u, 1u, next.y < t_cur);
            let d = f32(next.x - borrow) * 4294967296.0 + f32(next.y - t_cur);
            let b = f32(next.x) * 4294967296.0 + f32(next.y);
            return cos_sq_half_pi(f32(t_cur), d, b);
        }
        t_i = next.y;
    }
    return cos_sq_phase(false, t_cur, t_i);
}

// The exponent n of gamma^n: floor(k / step_size) (step, exponential), or the number of
// milestones <= k in a sorted list (multistep; a repeated milestone counts twice).
fn power_count(prog: u32, at: u32, k: u32) -> u32 {
    if (sw(at + 1u) == 0u) {
        return k / sw(at + 2u);
    }
    let list = prog + sw(at + 2u);
    var lo = 0u;
    var hi = sw(at + 3u);
    for (var i = 0u; i < 33u + dz && lo < hi; i++) {
        let mid = lo + (hi - lo) / 2u;
        if (sw(list + mid) <= k) {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    return lo;
}

// The weight of an annealing phase at a = k - phase start, d = phase end - k, len = a + d,
// measured from the nearer end (`a <= d`: from the start): the value is then
// `near + (far - near) * w`, which keeps its relative accuracy at both ends (a peak 25x the
// initial lr would otherwise cost the start ~25 ulp).
fn anneal_weight(linear: bool, a: f32, d: f32, len: f32) -> f32 {
    if (linear) {
        return div_rn(min(a, d), len);
    }
    return cos_sq_half_pi(max(a, d), min(a, d), len);
}

fn anneal(w: f32, from_start: bool, start: f32, end: f32) -> f32 {
    let near = select(end, start, from_start);
    let far = select(start, end, from_start);
    return near + opaque((far - near) * w);
}

// OneCycleLR: (lr, beta1, 1 - beta1). Phases are chosen in integers (k <= floor(end)); past
// total_steps the final values are held (PyTorch raises there).
fn onecycle(at: u32, k: u32) -> vec3<f32> {
    let flags = sw(at + 1u);
    let linear = (flags & 1u) != 0u;
    let three = (flags & 2u) != 0u;
    let n = sw(at + 2u);
    let lr_i = sf(at + 9u);
    let lr_m = sf(at + 10u);
    let lr_l = sf(at + 11u);
    let m_max = sf(at + 12u);
    let m_base = sf(at + 13u);
    let om_max = sf(at + 14u);
    let om_base = sf(at + 15u);
    if (k > n) {
        return vec3<f32>(lr_l, m_max, om_max);
    }
    var a: f32;
    var d: f32;
    var lr0: f32;
    var lr1: f32;
    var m0: f32;
    var m1: f32;
    var om0: f32;
    var om1: f32;
    if (k <= sw(at + 3u)) {
        a = f32(k);
        d = -sub_split(k, sf(at + 5u), sf(at + 6u));
        lr0 = lr_i; lr1 = lr_m; m0 = m_max; m1 = m_base; om0 = om_max; om1 = om_base;
    } else if (three && k <= sw(at + 4u)) {
        a = sub_split(k, sf(at + 5u), sf(at + 6u));
        d = -sub_split(k, sf(at + 7u), sf(at + 8u));
        lr0 = lr_m; lr1 = lr_i; m0 = m_base; m1 = m_max; om0 = om_base; om1 = om_max;
    } else {
        if (three) {
            a = sub_split(k, sf(at + 7u), sf(at + 8u));
            lr0 = lr_i; m0 = m_max; om0 = om_max;
        } else {
            a = sub_split(k, sf(at + 5u), sf(at + 6u));
            lr0 = lr_m; m0 = m_base; om0 = om_base;
        }
        // The last phase ends at N - 1; k = N extrapolates it, as PyTorch does.
        d = select(f32(n - 1u - k), -1.0, k == n);
        lr1 = lr_l; m1 = m_max; om1 = om_max;
    }
    let w = anneal_weight(linear, a, d, a + d);
    let s = a <= d;
    return vec3<f32>(anneal(w, s, lr0, lr1), anneal(w, s, m0, m1), anneal(w, s, om0, om1));
}

// CyclicLR: (lr, beta1, 1 - beta1). triangular2's scale 2^-(cycle - 1) is 0 from cycle 128
// on (PyTorch overflows from cycle 1025; the lr is base_lr long before).
fn cyclic(at: u32, k: u32) -> vec3<f32> {
    let up = sw(at + 1u);
    let down = sw(at + 2u);
    let mode = sw(at + 3u);
    let period = up + down;
    let r = k % period;
    // x and 1 - x, each from its integer ratio.
    var x: f32;
    var omx: f32;
    if (r <= up) {
        x = div_rn(f32(r), f32(up));
        omx = div_rn(f32(up - r), f32(up));
    } else {
        x = div_rn(f32(period - r), f32(down));
        omx = div_rn(f32(r - up), f32(down));
    }
    var scale = 1.0;
    var oms = 0.0;
    if (mode == 1u) {
        let c = k / period;
        scale = select(0.0, ldexp(1.0, -i32(min(c, 127u))), c < 127u);
        oms = 1.0 - scale;
    } else if (mode == 2u) {
        scale = exp2_mul(k, sf(at + 4u), sf(at + 5u));
        oms = -expm1_neg(opaque(opaque(f32(k) * sf(at + 4u)) * LN2));
    }
    let xs = opaque(x * scale);
    // 1 - x scale, without cancellation: beta1 near base_momentum keeps its relative accuracy.
    let omxs = omx + opaque(x * oms);
    let dm = sf(at + 9u);
    var beta1: f32;
    if (xs <= 0.5) {
        beta1 = sf(at + 8u) - opaque(dm * xs);
    } else {
        beta1 = sf(at + 11u) + opaque(dm * omxs);
    }
    return vec3<f32>(sf(at + 6u) + opaque(sf(at + 7u) * xs), beta1, sf(at + 10u) + opaque(dm * xs));
}

// The Hugging Face recipes but wsd: k / W for k < W, then a shape of j = k - W.
fn warmup_factor(at: u32, k: u32) -> f32 {
    let w = sw(at + 1u);
    if (k < w) {
        return div_rn(f32(k), f32(w));
    }
    let shape = sw(at + 2u);
    let n = sw(at + 3u);
    let j = k - w;
    let span = select(1u, n - w, n > w);
    let r = sf(at + 6u);
    let omr = sf(at + 7u);
    switch (shape) {
        case 0u: {
            return r + opaque(omr * cos_sq_dyadic(sw(at + 4u), sw(at + 5u), j, span, true));
        }
        case 1u: {
            return select(0.0, div_rn(f32(n - k), f32(span)), k < n);
        }
        case 3u: {
            return select(0.0, cos_sq_dyadic(sw(at + 4u), sw(at + 5u), j, span, false), j < span);
        }
        case 4u: {
            return select(r, r + opaque(omr * pow_ratio(n - k, span, sf(at + 8u))), k <= n);
        }
        case 5u: {
            let ts = f32(sw(at + 9u));
            return sqrt_rn(div_rn(ts, f32(j) + ts));
        }
        default: {
            return 1.0;
        }
    }
}

// 1 - sqrt(1 - num/den), written without the cancellation: (num/den) / (1 + sqrt(1 - num/den)).
fn one_minus_sqrt_rest(num: u32, den: u32) -> f32 {
    let p = div_rn(f32(num), f32(den));
    return div_rn(p, 1.0 + sqrt_rn(div_rn(f32(den - num), f32(den))));
}

// get_wsd_schedule: warmup (from min_lr_ratio), stable, decay, then min_lr_ratio.
fn wsd_factor(at: u32, k: u32) -> f32 {
    let w = sw(at + 1u);
    let s = sw(at + 2u);
    let dd = sw(at + 3u);
    let r = sf(at + 6u);
    let omr = sf(at + 7u);
    var shape: f32;
    if (k < w) {
        switch (sw(at + 4u)) {
            case 0u: { shape = div_rn(f32(k), f32(w)); }
            case 1u: { shape = cos_sq_half_pi(f32(w - k), f32(k), f32(w)); }
            default: { shape = one_minus_sqrt_rest(k, w); }
        }
        return r + opaque(omr * shape);
    }
    if (k - w < s) {
        return 1.0;
    }
    let j = k - w - s;
    if (j >= dd) {
        return r;
    }
    switch (sw(at + 5u)) {
        case 0u: { shape = div_rn(f32(dd - j), f32(dd)); }
        case 1u: { shape = cos_sq_dyadic(sw(at + 8u), sw(at + 9u), j, dd, true); }
        default: { shape = div_rn(div_rn(f32(dd - j), f32(dd)), 1.0 + sqrt_rn(div_rn(f32(j), f32(dd)))); }
    }
    return r + opaque(omr * shape);
}

// A leaf at epoch k from base lr b (b = 1: the factor of a chained child): (lr, beta1,
// 1 - beta1), the momentum only for onecycle and cyclic. Each kind's code appears once in
// the prologue: one call site of this function, so a compiler that inlines everything
// (every driver) compiles it once.
fn leaf(prog: u32, at: u32, k: u32, b: f32) -> vec3<f32> {
    var lr = b;
    switch (sw(at)) {
        case OP_COSINE: {
            let t = sw(at + 1u);
            let eta = sf(at + 2u);
            lr = eta + opaque((b - eta) * cos_sq_phase(((k / t) & 1u) == 1u, k % t, t));
        }
        case OP_WARM_RESTARTS: {
            let eta = sf(at + 3u);
            lr = eta + opaque((b - eta) * warm_restarts_factor(sw(at + 1u), sw(at + 2u), k));
        }
        case OP_CONSTANT_FACTOR: {
            lr = select(b, b * sf(at + 1u), k < sw(at + 2u));
        }
        case OP_LINEAR: {
            let t = sw(at + 3u);
            let m = min(k, t);
            let f = opaque(sf(at + 1u) * f32(t - m)) + opaque(sf(at + 2u) * f32(m));
            lr = b * div_rn(f, f32(t));
        }
        case OP_POWER: {
            lr = b * exp2_mul(power_count(prog, at, k), sf(at + 4u), sf(at + 5u));
        }
        case OP_POLYNOMIAL: {
            let t = sw(at + 1u);
            lr = b * pow_ratio(t - min(k, t), t, sf(at + 2u));
        }
        case OP_ONECYCLE: {
            return onecycle(at, k);
        }
        case OP_CYCLIC: {
            return cyclic(at, k);
        }
        case OP_WARMUP: {
            lr = b * warmup_factor(at, k);
        }
        case OP_WSD: {
            lr = b * wsd_factor(at, k);
        }
        case OP_PLATEAU: {
            lr = sf(sw(at + 1u));
        }
        default: {}
    }
    return vec3<f32>(lr, 0.0, 0.0);
}

// The program at `prog` at epoch k for base lr b: (lr, beta1, 1 - beta1) as `leaf`. A
// sequential root picks one child at its own epoch (restarting from b); a chained root
// multiplies its children's factors; either way one loop around the one call of `leaf`.
fn schedule_eval(prog: u32, k: u32, b: f32) -> vec3<f32> {
    let op = sw(prog);
    var first = prog;
    var count = 1u;
    var kk = k;
    var bb = b;
    if (op == OP_SEQUENTIAL) {
        let n = sw(prog + 1u);
        let list = prog + sw(prog + 2u);
        var i = 0u;
        var start = 0u;
        for (; i + 1u < n; i++) {
            let m = sw(list + i);
            if (k < m) {
                break;
            }
            start = m;
        }
        first = prog + NODE_WORDS * (1u + i);
        kk = k - start;
    } else if (op == OP_CHAINED) {
        first = prog + NODE_WORDS;
        count = sw(prog + 1u);
        bb = 1.0;
    }
    var f = vec3<f32>(1.0, 0.0, 0.0);
    for (var i = 0u; i < count; i++) {
        let v = leaf(prog, first + NODE_WORDS * i, kk, bb);
        f = vec3<f32>(f.x * v.x, v.y, v.z);
    }
    if (op == OP_CHAINED) {
        f.x = b * f.x;
    }
    return f;
}

// ln(beta1) from beta1 and 1 - beta1, whichever keeps it accurate.
fn ln_beta(beta: f32, one_minus: f32) -> f32 {
    if (one_minus <= 0.5) {
        return ln_one_minus(one_minus);
    }
    if (beta > 0.0) {
        return ln_pos(beta);
    }
    return LN_ZERO;
}

// ReduceLROnPlateau's step(metric) at an epoch boundary (one invocation): the decision in
// g.sched_state_at's words (best, bad epochs, cooldown left), each group's lr (two f32 words,
// in the region at the word its plateau node names) cut by `factor` when bad epochs exceed
// the patience. The comparisons against best * (1 -+ threshold) or best -+ threshold are
// those of PyTorch's f64 ones (the threshold arrives in two f32 words).
fn plateau_step(metric: f32) {
    let st = g.sched_state_at;
    let node = 0u; // every group's plateau node shares the decision parameters
    let mode = sw(node + 2u);
    let best = sf(st);
    var bad = sw(st + 1u);
    var cool = sw(st + 2u);
    let is_max = (mode & 1u) != 0u;
    let th_hi = sf(node + 5u);
    let th_lo = sf(node + 6u);
    var better: bool;
    // Bit tests, not float ones: a compiler may assume no infinities or NaN.
    let metric_nan = (bitcast<u32>(metric) & 0x7fffffffu) > 0x7f800000u;
    if (metric_nan) {
        better = false;
    } else if ((bitcast<u32>(best) & 0x7fffffffu) == 0x7f800000u) {
        better = select((metric < best), (metric > best), is_max);
    } else if ((mode & 2u) == 0u) {
        // rel: metric vs best * (1 -+ threshold), threshold factor th_hi + th_lo.
        let p = two_prod(best, th_hi);
        let diff = (metric - p.x) - (p.y + opaque(best * th_lo));
        better = select((diff < 0.0), (diff > 0.0), is_max);
    } else {
        let s = two_sum(metric, -best);
        let sgn = select(1.0, -1.0, is_max);
        let diff = (s.x + sgn * th_hi) + (s.y + sgn * th_lo);
        better = select((diff < 0.0), (diff > 0.0), is_max);
    }
    var new_best = best;
    if (better) {
        new_best = metric;
        bad = 0u;
    } else {
        bad = min(bad, 0xfffffffeu) + 1u;
    }
    if (cool > 0u) {
        cool = cool - 1u;
        bad = 0u;
    }
    if (bad > sw(node + 3u)) {
        let f_hi = sf(node + 7u);
        let f_lo = sf(node + 8u);
        for (var grp = 0u; grp < (g.n_groups | dz); grp++) {
            let pn = grp * g.sched_stride;
            let at = sw(pn + 1u);
            let hi = sf(at);
            let lo = sf(at + 1u);
            let p = two_prod(hi, f_hi);
            var n = two_sum(p.x, p.y + (opaque(hi * f_lo) + opaque(lo * f_hi)));
            let min_lr = sf(pn + 9u);
            if (n.x < min_lr) {
                n = vec2<f32>(min_lr, 0.0);
            }
            if ((hi - n.x) + (lo - n.y) > sf(pn + 10u)) {
                meta_rw[g.sched_at + at] = bitcast<u32>(n.x);
                meta_rw[g.sched_at + at + 1u] = bitcast<u32>(n.y);
            }
        }
        cool = sw(node + 4u);
        bad = 0u;
    }
    meta_rw[g.sched_at + st] = bitcast<u32>(new_best);
    meta_rw[g.sched_at + st + 1u] = bad;
    meta_rw[g.sched_at + st + 2u] = cool;
}
