// ---------------------------------------------------------------- gradient accumulation
// (CPU twin: twin::accumulate_element)
//
// With `accumulate` = k > 1 micro-batches per optimizer step, the engine's backward writes
// its gradient buffer once per micro-batch and every call of the step records this
// dispatch first: the optimizer's accumulator (`acc_w`, at the moments' offsets, of type
// A_DTYPE) takes the first micro-batch's gradients and adds the others in order, rounded to
// A_DTYPE after each add, as PyTorch's `p.grad += g` is. The reduce and the update read the
// accumulator instead of the engine's gradients (FLAG_ACCUMULATE), and only the k-th call
// is an optimizer step (the prologue's micro-batch counter, meta[COUNTER_MICRO]). A 16-bit
// accumulator shares the moments' parity (src/plan.rs), so one invocation owns each word.

override A_DTYPE: u32 = 0u; // DTYPE_* of the accumulator

@group(0) @binding(23) var<storage, read_write> acc_w: array<u32>;

// The accumulator's next value: the first micro-batch's gradient, else the rounded sum.
fn accumulate_next(acc: f32, g_new: f32, first: bool) -> f32 {
    if (first) {
        return g_new;
    }
    let sum = acc + g_new;
    if (A_DTYPE == DTYPE_F32) {
        return sum;
    }
    return widen16(narrow16(sum, A_DTYPE), A_DTYPE);
}

@compute @workgroup_size(256)
fn accumulate(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let chunk = wg.y * dispatch.grid_x + wg.x;
    if (chunk >= dispatch.n_runs) {
        return;
    }
    let ce = g.chunks_at + 4u * (dispatch.first_chunk + chunk);
    let g0 = meta_ro[ce + 1u];
    let s0 = meta_ro[ce + 2u];
    let count = meta_ro[ce + 3u] & 0xffffu;
    let first = meta_ro[COUNTER_MICRO] == 0u;
    if (A_DTYPE == DTYPE_F32) {
        for (var j = lid; j < count; j += WORKGROUP) {
            let acc = bitcast<f32>(acc_w[s0 + j]);
            acc_w[s0 + j] = bitcast<u32>(accumulate_next(acc, grad_at(g0 + j), first));
        }
        return;
    }
    // Unit u: the accumulator word (s0 >> 1) + u, elements 2u - lead and 2u - lead + 1.
    let lead = s0 & 1u;
    let units = (count + lead + 1u) / 2u;
    for (var u = lid; u < units; u += WORKGROUP) {
        let w = (s0 >> 1u) + u;
        var word = acc_w[w];
        for (var e = 0u; e < 2u; e++) {
            let j = i32(2u * u + e) - i32(lead);
            if (j >= 0 && u32(j) < count) {
                let si = s0 + u32(j);
                let next = accumulate_next(widen16(half_of(word, si), A_DTYPE), grad_at(g0 + u32(j)), first);
                word = with_half(word, si, narrow16(next, A_DTYPE));
            }
        }
        acc_w[w] = word;
    }
}
