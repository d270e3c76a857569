// Forward pass of one dense layer: dst[b, j] = act(bias[j] + sum_i in[b, i] * W[j, i]).

// One invocation per output element (any layer shape).
@compute @workgroup_size(64)
fn linear_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = thread_index(gid);
    if (t >= cfg.n_threads) {
        return;
    }
    let b = t / cfg.out_dim;
    let j = t % cfg.out_dim;
    let x0 = cfg.a_off + b * cfg.in_dim;
    let w0 = cfg.w_off + j * cfg.in_dim;
    var s = 0.0;
    for (var i = 0u; i < cfg.in_dim; i = i + 1u) {
        s = s + act(x0 + i) * params[w0 + i];
    }
    s = s + params[cfg.b_off + j];
    if (cfg.relu != 0u) {
        s = max(s, 0.0);
    }
    set_act(cfg.dst_off + t, s);
}

// The same, one invocation per 4x4 tile (4 samples x 4 output features) read as vec4s:
// 8 vector loads per 64 multiply-adds instead of 128 scalar loads. For layers whose
// `in_dim` and `out_dim` are multiples of 4 (software rasterizers such as lavapipe pay per
// load and lane, so this is what makes the demo fast there).
@compute @workgroup_size(64)
fn linear_forward_tiled(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = thread_index(gid);
    if (t >= cfg.n_threads) {
        return;
    }
    let jb = cfg.out_dim / 4u;
    let j0 = (t % jb) * 4u;
    let b0 = (t / jb) * 4u;
    let k4 = cfg.in_dim / 4u;
    let last = cfg.batch - 1u;
    let x_at = vec4<u32>(
        (cfg.a_off + b0 * cfg.in_dim) / 4u,
        (cfg.a_off + min(b0 + 1u, last) * cfg.in_dim) / 4u,
        (cfg.a_off + min(b0 + 2u, last) * cfg.in_dim) / 4u,
        (cfg.a_off + min(b0 + 3u, last) * cfg.in_dim) / 4u,
    );
    let w_at = (cfg.w_off + j0 * cfg.in_dim) / 4u;
    var acc = mat4x4<f32>();
    for (var k = 0u; k < k4; k = k + 1u) {
        let w = mat4x4<f32>(
            params4[w_at + k],
            params4[w_at + k4 + k],
            params4[w_at + 2u * k4 + k],
            params4[w_at + 3u * k4 + k],
        );
        // Row r of the product: sample r against the 4 weight rows.
        for (var r = 0u; r < 4u; r = r + 1u) {
            acc[r] = acc[r] + acts4[x_at[r] + k] * w;
        }
    }
    let bias = params4[(cfg.b_off + j0) / 4u];
    for (var r = 0u; r < 4u; r = r + 1u) {
        var y = acc[r] + bias;
        if (cfg.relu != 0u) {
            y = max(y, vec4<f32>(0.0));
        }
        if (b0 + r < cfg.batch) {
            acts4[(cfg.dst_off + (b0 + r) * cfg.out_dim + j0) / 4u] = y;
        }
    }
}
