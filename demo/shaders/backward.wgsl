// Backward pass of one dense layer, given its delta d[b, j] (gradient of the loss w.r.t. its
// pre-activation output) at `d_off` and its input activations at `a_off`. Each kernel has a
// plain version (one invocation per result, any shape) and a tiled one (4x4 results per
// invocation, vec4 loads; `in_dim` and `out_dim` multiples of 4).

// Parameter gradients, written (not accumulated) into the grad arena:
// dW[j, i] = sum_b d[b, j] * in[b, i], dbias[j] = sum_b d[b, j].
// One invocation per weight, then one per bias.
@compute @workgroup_size(64)
fn linear_grad_params(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = thread_index(gid);
    if (t >= cfg.n_threads) {
        return;
    }
    let n_w = cfg.out_dim * cfg.in_dim;
    var s = 0.0;
    if (t < n_w) {
        let j = t / cfg.in_dim;
        let i = t % cfg.in_dim;
        for (var b = 0u; b < cfg.batch; b = b + 1u) {
            s = s + act(cfg.d_off + b * cfg.out_dim + j) * act(cfg.a_off + b * cfg.in_dim + i);
        }
        grads[cfg.w_off + t] = s;
    } else {
        let j = t - n_w;
        for (var b = 0u; b < cfg.batch; b = b + 1u) {
            s = s + act(cfg.d_off + b * cfg.out_dim + j);
        }
        grads[cfg.b_off + j] = s;
    }
}

// Tiled: one invocation per 4x4 block of W (rows j0.., columns i0..); the invocations of
// column block 0 also write the 4 biases.
@compute @workgroup_size(64)
fn linear_grad_params_tiled(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = thread_index(gid);
    if (t >= cfg.n_threads) {
        return;
    }
    let ib = cfg.in_dim / 4u;
    let i0 = (t % ib) * 4u;
    let j0 = (t / ib) * 4u;
    var acc = mat4x4<f32>();
    var bias = vec4<f32>(0.0);
    for (var b = 0u; b < cfg.batch; b = b + 1u) {
        let d = acts4[(cfg.d_off + b * cfg.out_dim + j0) / 4u];
        let a = acts4[(cfg.a_off + b * cfg.in_dim + i0) / 4u];
        acc[0] = acc[0] + d.x * a;
        acc[1] = acc[1] + d.y * a;
        acc[2] = acc[2] + d.z * a;
        acc[3] = acc[3] + d.w * a;
        bias = bias + d;
    }
    for (var c = 0u; c < 4u; c = c + 1u) {
        grads[cfg.w_off + (j0 + c) * cfg.in_dim + i0] = acc[c].x;
        grads[cfg.w_off + (j0 + c) * cfg.in_dim + i0 + 1u] = acc[c].y;
        grads[cfg.w_off + (j0 + c) * cfg.in_dim + i0 + 2u] = acc[c].z;
        grads[cfg.w_off + (j0 + c) * cfg.in_dim + i0 + 3u] = acc[c].w;
    }
    if (i0 == 0u) {
        for (var c = 0u; c < 4u; c = c + 1u) {
            grads[cfg.b_off + j0 + c] = bias[c];
        }
    }
}

// Delta of the previous layer: dst[b, i] = relu'(in[b, i]) * sum_j d[b, j] * W[j, i].
// One invocation per input element.
@compute @workgroup_size(64)
fn linear_grad_input(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = thread_index(gid);
    if (t >= cfg.n_threads) {
        return;
    }
    let b = t / cfg.in_dim;
    let i = t % cfg.in_dim;
    let d0 = cfg.d_off + b * cfg.out_dim;
    var s = 0.0;
    for (var j = 0u; j < cfg.out_dim; j = j + 1u) {
        s = s + act(d0 + j) * params[cfg.w_off + j * cfg.in_dim + i];
    }
    // The input is the previous layer's ReLU output: its derivative is 0 where it is 0.
    if (cfg.relu != 0u && act(cfg.a_off + t) <= 0.0) {
        s = 0.0;
    }
    set_act(cfg.dst_off + t, s);
}

// Tiled: one invocation per 4 samples x 4 input features.
@compute @workgroup_size(64)
fn linear_grad_input_tiled(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = thread_index(gid);
    if (t >= cfg.n_threads) {
        return;
    }
    let ib = cfg.in_dim / 4u;
    let i0 = (t % ib) * 4u;
    let b0 = (t / ib) * 4u;
    let j4 = cfg.out_dim / 4u;
    let last = cfg.batch - 1u;
    let d_at = vec4<u32>(
        (cfg.d_off + b0 * cfg.out_dim) / 4u,
        (cfg.d_off + min(b0 + 1u, last) * cfg.out_dim) / 4u,
        (cfg.d_off + min(b0 + 2u, last) * cfg.out_dim) / 4u,
        (cfg.d_off + min(b0 + 3u, last) * cfg.out_dim) / 4u,
    );
    let w_at = (cfg.w_off + i0) / 4u;
    let w_row = cfg.in_dim / 4u;
    var acc = mat4x4<f32>();
    for (var k = 0u; k < j4; k = k + 1u) {
        // Rows 4k..4k+4 of W, columns i0..i0+4.
        let w = mat4x4<f32>(
            params4[w_at + (4u * k) * w_row],
            params4[w_at + (4u * k + 1u) * w_row],
            params4[w_at + (4u * k + 2u) * w_row],
            params4[w_at + (4u * k + 3u) * w_row],
        );
        for (var r = 0u; r < 4u; r = r + 1u) {
            acc[r] = acc[r] + w * acts4[d_at[r] + k];
        }
    }
    for (var r = 0u; r < 4u; r = r + 1u) {
        if (b0 + r < cfg.batch) {
            let at = (cfg.a_off + (b0 + r) * cfg.in_dim + i0) / 4u;
            var y = acc[r];
            if (cfg.relu != 0u) {
                y = select(y, vec4<f32>(0.0), acts4[at] <= vec4<f32>(0.0));
            }
            acts4[(cfg.dst_off + (b0 + r) * cfg.in_dim + i0) / 4u] = y;
        }
    }
}
