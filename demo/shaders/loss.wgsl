// Softmax cross-entropy of the logits at `a_off` ([batch, out_dim]) against `labels`.
// Writes the gradient of the mean loss w.r.t. the logits to `d_off`, and each sample's loss
// and hit (1.0 when the arg-max is the label) to `aux_off` and `aux_off + batch`.
// One thread per sample.

@compute @workgroup_size(64)
fn softmax_xent(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = thread_index(gid);
    if (b >= cfg.batch) {
        return;
    }
    let n = cfg.out_dim;
    let z0 = cfg.a_off + b * n;
    var m = act(z0);
    var arg = 0u;
    for (var c = 1u; c < n; c = c + 1u) {
        let z = act(z0 + c);
        if (z > m) {
            m = z;
            arg = c;
        }
    }
    var se = 0.0;
    for (var c = 0u; c < n; c = c + 1u) {
        se = se + exp(act(z0 + c) - m);
    }
    let lse = m + log(se);
    let y = labels[b];
    set_act(cfg.aux_off + b, lse - act(z0 + y));
    set_act(cfg.aux_off + cfg.batch + b, select(0.0, 1.0, arg == y));
    let inv_batch = 1.0 / f32(cfg.batch);
    for (var c = 0u; c < n; c = c + 1u) {
        let p = exp(act(z0 + c) - lse);
        set_act(cfg.d_off + b * n + c, (p - select(0.0, 1.0, c == y)) * inv_batch);
    }
}

var<workgroup> part_loss: array<f32, 256>;
var<workgroup> part_hits: array<f32, 256>;

// Sums the per-sample losses and hits into stats[0] (mean loss) and stats[1] (accuracy).
// Dispatched as a single workgroup.
@compute @workgroup_size(256)
fn reduce_loss(@builtin(local_invocation_index) li: u32) {
    var l = 0.0;
    var h = 0.0;
    for (var b = li; b < cfg.batch; b = b + 256u) {
        l = l + act(cfg.aux_off + b);
        h = h + act(cfg.aux_off + cfg.batch + b);
    }
    part_loss[li] = l;
    part_hits[li] = h;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (li < s) {
            part_loss[li] = part_loss[li] + part_loss[li + s];
            part_hits[li] = part_hits[li] + part_hits[li + s];
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        let inv_batch = 1.0 / f32(cfg.batch);
        stats[0] = part_loss[0] * inv_batch;
        stats[1] = part_hits[0] * inv_batch;
    }
}
