// ---------------------------------------------------------------- update
// (CPU twin: src/twin/update.rs)
//
// The engine's windows are bound as vec4 (16-byte loads, which a GPU needs to reach its copy
// bandwidth, for chunks whose param, grad and state offsets are multiples of 4; any other
// element is a component), or, where a window's last 16-byte unit would pass its buffer's
// end, as f32. One view per window and dispatch, never both: WebGPU forbids two writable
// bindings whose ranges overlap (Dawn enforces it). The state is the optimizer's own and
// always aligned.

@group(0) @binding(1) var<uniform> dispatch: DispatchInfo;
@group(0) @binding(2) var<storage, read> meta_ro: array<u32>;
@group(0) @binding(3) var<storage, read_write> param: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad: array<f32>;
@group(0) @binding(5) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> max_exp_avg_sq: array<vec4<f32>>;
@group(0) @binding(14) var<storage, read_write> param4: array<vec4<f32>>;
@group(0) @binding(15) var<storage, read_write> grad4: array<vec4<f32>>;

const VIEWS_VEC4: u32 = 0u;
const VIEWS_F32: u32 = 1u;

fn param_elem(i: u32) -> f32 {
    if (dispatch.views == VIEWS_F32) {
        return param[i];
    }
    return param4[i >> 2u][i & 3u];
}

fn set_param(i: u32, x: f32) {
    if (dispatch.views == VIEWS_F32) {
        param[i] = x;
    } else {
        param4[i >> 2u][i & 3u] = x;
    }
}

fn grad_elem(i: u32) -> f32 {
    if (dispatch.views == VIEWS_F32) {
        return grad[i];
    }
    return grad4[i >> 2u][i & 3u];
}

struct StepConsts {
    one_minus_beta1: f32,
    lerp_big_coeff: f32,
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
    let small = k.one_minus_beta1 < 0.5;
    let coeff = select(k.lerp_big_coeff, k.one_minus_beta1, small);
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
    let r = adam_element(grad_elem(gi), param_elem(pi), exp_avg[a][c], exp_avg_sq[a][c], vmax_old, k);
    set_param(pi, r.x);
    exp_avg[a][c] = r.y;
    exp_avg_sq[a][c] = r.z;
    if (amsgrad) {
        max_exp_avg_sq[a][c] = r.w;
    }
}

// The per-step scalars of a param group.
fn step_consts(group: u32) -> StepConsts {
    let sc = g.scalars_at + SCALAR_WORDS * group;
    return StepConsts(
        bitcast<f32>(meta_ro[sc + 4u]),
        bitcast<f32>(meta_ro[sc + 5u]),
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
    for (var e = 0u; e < ELEMS_PER_THREAD; e++) {
        let i = e * WORKGROUP + lid;
        if (i < total) {
            let se = g.segments_at + 4u * segment_of(first, map_at, i);
            let info = meta_ro[se + 3u];
            let off = i - (info & 0xffffu);
            let k = step_consts(info >> 16u);
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

    if (((p0 | g0 | s0) & 3u) != 0u || dispatch.views == VIEWS_F32) {
        // Unaligned tensor (or f32 views): element i of the chunk by thread i % 256, every
        // load coalesced.
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
