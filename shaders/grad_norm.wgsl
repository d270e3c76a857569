// ---------------------------------------------------------------- gradient norm and AMP
// (CPU twin: src/twin/grad_norm.rs)
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

// A float from its bits, evaluated at run time: WGSL rejects a constant expression whose
// value is NaN or infinite (Tint, the browser's compiler, enforces it; naga does not).
fn f32_from_bits(bits: u32) -> f32 {
    return bitcast<f32>(bits);
}

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
        return f32_from_bits(0x7fc00000u);
    }
    if ((flags & NONFINITE) != 0u || is_nonfinite(sum_sq)) {
        return f32_from_bits(0x7f800000u);
    }
    return root;
}

// torch.nn.utils.clip_grad_norm_'s coefficient: max_norm / (total_norm + 1e-6) clamped to 1;
// 0 for an infinite norm, NaN for a NaN one. On 16-bit gradients (g.grad_round) PyTorch
// computes it in the 16-bit type as round(round(1 / round(norm + 1e-6)) * max_norm).
fn clip_coefficient(norm: f32) -> f32 {
    if (is_nonfinite(norm)) {
        return select(0.0, norm, (bitcast<u32>(norm) & 0x7fffffu) != 0u);
    }
    if ((g.grad_round | dz) != DTYPE_F32) {
        let c = round_grad(round_grad(recip(round_grad(norm + 1e-6))) * g.max_grad_norm);
        return min(c, 1.0);
    }
    return min(div_rn(g.max_grad_norm, norm + 1e-6), 1.0);
}

// x rounded to the type of gradient arithmetic (g.grad_round; f32: unchanged).
fn round_grad(x: f32) -> f32 {
    let ty = g.grad_round | dz;
    if (ty == DTYPE_F32) {
        return x;
    }
    return widen16(narrow16(x, ty), ty);
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
    if (((g.flags | dz) & FLAG_LOSS_SCALE) != 0u) {
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

// Gradient i of the binding, widened to f32. 16-bit gradients (G_DTYPE, update_mixed.wgsl)
// are halves of the binding's words: their bits are moved, never computed on, until widened.
fn grad_value(i: u32) -> f32 {
    if (G_DTYPE == DTYPE_F32) {
        return grad[i];
    }
    return widen16(half_of(bitcast<u32>(grad[i >> 1u]), i), G_DTYPE);
}
@group(0) @binding(12) var<storage, read_write> partials_rw: array<u32>;

@compute @workgroup_size(256)
fn reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let chunk = wg.y * dispatch.grid_x + wg.x;
    if (chunk >= dispatch.n_chunks) {
        return;
    }
    let ce = g.chunks_at + 4u * (dispatch.first_chunk + chunk);
    // Accumulated gradients are the optimizer's, at the moments' offsets.
    let g0 = select(meta_ro[ce + 1u], meta_ro[ce + 2u], (g.flags & FLAG_ACCUMULATE) != 0u);
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
            let raw = grad_value(gi);
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

// ---------------------------------------------------------------- sharded norm
// (CPU twin: fold_shards in src/twin/grad_norm.rs; the rule: src/shard.rs)
//
// A shard (FLAG_SHARDED) folds its own chunk partials exactly as the unsharded prologue
// does (strided over 256 lanes, then the tree) into one (hi, lo, flag) entry at
// `exchange_at`. The engine's collective gathers every rank's entry, in rank order, into the
// n_ranks entries after it, and the prologue folds those left to right: every rank then
// computes the same norm from the same words, whatever the collective's timing.
// `fold_partials` repeats the prologue's loop: WGSL functions cannot take a storage buffer
// as an argument (portably), and the two entry points bind `partials` differently.
fn exchange_at() -> u32 {
    return g.tensor_norms_at + 2u * g.n_tensors;
}

@compute @workgroup_size(256)
fn fold_partials(@builtin(local_invocation_index) lid: u32) {
    var acc = vec2<f32>(0.0, 0.0);
    var flag = 0u;
    for (var i = lid; i < g.n_chunks; i += 256u) {
        let p = vec2<f32>(bitcast<f32>(partials_rw[4u * i]), bitcast<f32>(partials_rw[4u * i + 1u]));
        acc = add_double(acc, p);
        flag = flag | partials_rw[4u * i + 2u];
    }
    red_hi[lid] = acc.x;
    red_lo[lid] = acc.y;
    red_flag[lid] = flag;
    workgroup_tree(lid);
    if (lid == 0u) {
        let at = exchange_at();
        partials_rw[at] = bitcast<u32>(red_hi[0]);
        partials_rw[at + 1u] = bitcast<u32>(red_lo[0]);
        partials_rw[at + 2u] = red_flag[0];
        partials_rw[at + 3u] = 0u;
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

// a / b rounded to nearest (WGSL's division may be off by 2.5 ulp): the builtin's quotient or
// its neighbour, whichever has the smaller exact residual |a - c * b|. The clipping coefficient
// needs it: PyTorch's is a correctly rounded f32 division, and the first moments carry every
// ulp of it.
fn div_rn(a: f32, b: f32) -> f32 {
    let q = a / b;
    let res = div_residual(q, a, b);
    // The exact quotient lies on the residual's side of q (a - q b > 0 with b > 0: above);
    // only that neighbour can be nearer. Ties keep q.
    let up = (res > 0.0) == (b > 0.0);
    let c = bitcast<f32>(bitcast<u32>(q) + select(0xffffffffu, 1u, up == (q >= 0.0)));
    if (res != 0.0 && abs(div_residual(c, a, b)) < abs(res)) {
        return c;
    }
    return q;
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
    // Tensor table entry: grad offset in this binding, length, index in registration order,
    // offset of its moments (and accumulated gradients).
    var g0 = 0u;
    var len = 0u;
    var index = 0u;
    if (valid) {
        let te = g.tensors_at + 4u * (dispatch.first_tensor + t);
        g0 = select(meta_ro[te], meta_ro[te + 3u], (g.flags & FLAG_ACCUMULATE) != 0u);
        len = meta_ro[te + 1u];
        index = meta_ro[te + 2u];
    }
    let body = len - len % 8u;
    var acc = 0.0;
    var flag = 0u;
    for (var i = lane; i < body; i += 8u) {
        let raw = grad_value(g0 + i);
        flag = flag | nonfinite_flags(raw);
        acc = add_square(acc, round_grad(raw * inv));
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
            let raw = grad_value(g0 + i);
            f = f | nonfinite_flags(raw);
            b = add_square(b, round_grad(raw * inv));
        }
        let at = g.tensor_norms_at + 2u * index;
        partials_rw[at] = bitcast<u32>(round_grad(sqrt_rn(b)));
        partials_rw[at + 1u] = f;
    }
}
