// ---------------------------------------------------------------- prologue
// (CPU twin: src/twin/prologue.rs)

@group(0) @binding(8) var<storage, read_write> meta_rw: array<u32>;
@group(0) @binding(11) var<storage, read_write> amp_rw: array<u32>;
@group(0) @binding(13) var<storage, read> partials_ro: array<u32>;

// `dz` through workgroup memory: WGSL's uniformity analysis takes a value read from a
// read_write buffer or a private variable as non-uniform, and the barriers below sit in
// branches on `flags`; `workgroupUniformLoad` makes `zero` (hence `flags`) uniform.
var<workgroup> prologue_zero: u32;

@compute @workgroup_size(256)
fn prologue(@builtin(local_invocation_index) lid: u32) {
    if (lid == 0u) {
        prologue_zero = meta_rw[META_ZERO];
    }
    let zero = workgroupUniformLoad(&prologue_zero);
    dz = zero;
    let flags = g.flags | zero;
    let spe = g.steps_per_epoch | dz;
    let sched = meta_rw[COUNTER_SCHED];
    let adam = meta_rw[COUNTER_ADAM];
    // With accumulation, only the k-th call is an optimizer step; the others only counted
    // (and accumulated): nothing else changes.
    let micro = meta_rw[COUNTER_MICRO];
    let micro_step = (flags & FLAG_ACCUMULATE) != 0u && micro + 1u < g.accumulate;
    var skip = false;
    var inv = 1.0;
    var coef = 1.0;
    if ((flags & (FLAG_LOSS_SCALE | FLAG_CLIP)) != 0u) {
        var norm: f32;
        if ((flags & FLAG_TORCH_NORM) != 0u) {
            // The norm of the vector of per-tensor norms, in the same order; 8 lanes here.
            let n = g.n_tensors | dz;
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
            norm = finish_norm(b, red_flag[0], round_grad(sqrt_rn(b)));
        } else if ((flags & FLAG_SHARDED) != 0u) {
            // The ranks' gathered entries, folded in rank order by one invocation.
            if (lid == 0u) {
                var acc = vec2<f32>(0.0, 0.0);
                var flag = 0u;
                let at = exchange_at() + 4u;
                // `| dz`: a loop bound of uniform values alone makes lavapipe re-optimise the
                // prologue at every dispatch (see layout.wgsl).
                for (var r = 0u; r < (g.n_ranks | dz); r++) {
                    let p = vec2<f32>(bitcast<f32>(partials_ro[at + 4u * r]), bitcast<f32>(partials_ro[at + 4u * r + 1u]));
                    acc = add_double(acc, p);
                    flag = flag | partials_ro[at + 4u * r + 2u];
                }
                red_hi[0] = acc.x;
                red_lo[0] = acc.y;
                red_flag[0] = flag;
            }
            workgroupBarrier();
            let sum_sq = red_hi[0] + red_lo[0];
            norm = finish_norm(sum_sq, red_flag[0], sqrt(sum_sq));
        } else {
            var acc = vec2<f32>(0.0, 0.0);
            var flag = 0u;
            for (var i = lid; i < (g.n_chunks | dz); i += 256u) {
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
        skip = (flags & FLAG_LOSS_SCALE) != 0u && red_flag[0] != 0u;
        inv = grad_multiplier(amp_rw[0]);
        if ((flags & FLAG_CLIP) != 0u) {
            coef = clip_coefficient(norm);
        }
        if (lid == 0u && !micro_step) {
            amp_rw[1] = select(0u, 1u, red_flag[0] != 0u);
            amp_rw[2] = bitcast<u32>(norm);
            amp_rw[3] = bitcast<u32>(coef);
            amp_rw[CONTROL_SCALE_USED] = amp_rw[CONTROL_SCALE];
            if ((flags & FLAG_GRAD_SCALER) != 0u) {
                let next = grad_scaler_update(bitcast<f32>(amp_rw[CONTROL_SCALE]), amp_rw[CONTROL_GROWTH_TRACKER], red_flag[0] != 0u);
                amp_rw[CONTROL_SCALE] = bitcast<u32>(next.x);
                amp_rw[CONTROL_GROWTH_TRACKER] = bitcast<u32>(next.y);
            }
        }
    }
    // A counter at 2^32 - 1 cannot advance: the step is refused (skipped, counters kept)
    // rather than wrapped, which would restart the schedule or make t = 0 (bias correction 0).
    let at_limit = sched == 0xffffffffu || adam == 0xffffffffu || micro_step;
    skip = skip || at_limit;
    // Step s = sched + 1 uses epoch floor((s - 1) / K); a skipped step does not advance t.
    let epoch = sched / spe;
    // ReduceLROnPlateau decides at each epoch boundary, from the metric the engine wrote.
    if (lid == 0u && (flags & FLAG_PLATEAU) != 0u && !at_limit && sched > 0u
        && sched % spe == 0u) {
        plateau_step(bitcast<f32>(amp_rw[CONTROL_METRIC]));
    }
    storageBarrier();
    let lr_scale = bitcast<f32>(amp_rw[CONTROL_LR_SCALE]);
    let t = f32(adam + 1u);
    let bc2_sqrt = sqrt_rn(-expm1_neg(t * g.ln_beta2));
    for (var grp = lid; grp < (g.n_groups | dz) && !at_limit; grp += 256u) {
        let base_lr = bitcast<f32>(meta_rw[g.groups_at + 4u * grp]);
        let wd = bitcast<f32>(meta_rw[g.groups_at + 4u * grp + 1u]);
        let prog = grp * g.sched_stride;
        let sched_v = schedule_eval(prog, epoch, base_lr);
        let lr = sched_v.x * lr_scale;
        var beta1 = g.beta1;
        var omb1 = g.one_minus_beta1;
        var ln_b1 = g.ln_beta1;
        if ((flags & FLAG_CYCLE_MOMENTUM) != 0u) {
            beta1 = sched_v.y;
            omb1 = sched_v.z;
            ln_b1 = ln_beta(beta1, omb1);
        }
        let bc1 = -expm1_neg(t * ln_b1);
        let at = g.scalars_at + SCALAR_WORDS * grp;
        meta_rw[at] = bitcast<u32>(lr);
        meta_rw[at + 1u] = bitcast<u32>(1.0 - opaque(lr * wd));
        meta_rw[at + 2u] = bitcast<u32>(div_rn(lr, bc1));
        meta_rw[at + 3u] = bitcast<u32>(bc2_sqrt);
        meta_rw[at + 4u] = bitcast<u32>(omb1);
        meta_rw[at + 5u] = bitcast<u32>(omb1 - 1.0);
        meta_rw[at + 6u] = bitcast<u32>(beta1);
    }
    storageBarrier();
    if (lid == 0u && micro_step) {
        meta_rw[COUNTER_MICRO] = micro + 1u;
        meta_rw[STEP_SKIPPED] = STEP_MICRO;
    } else if (lid == 0u) {
        meta_rw[COUNTER_MICRO] = 0u;
        meta_rw[COUNTER_SCHED] = sched + select(1u, 0u, at_limit);
        meta_rw[COUNTER_ADAM] = adam + select(1u, 0u, skip);
        meta_rw[STEP_SKIPPED] = select(0u, 1u, skip);
        meta_rw[STEP_INV_SCALE] = bitcast<u32>(inv);
        meta_rw[STEP_CLIP_COEF] = bitcast<u32>(coef);
    }
}

// PyTorch's `_amp_update_scale_` after a step: on non-finite gradients the scale backs off
// and the tracker restarts; otherwise the tracker counts, and at `growth_interval` the scale
// grows unless that overflows (then it is kept) and the tracker restarts. Returns (scale,
// tracker bits). The products are f32 (PyTorch's are f64 rounded to f32: the same for
// factors that are powers of two, as GradScaler's defaults).
fn grad_scaler_update(scale: f32, tracker: u32, found_inf: bool) -> vec2<f32> {
    if (found_inf) {
        return vec2<f32>(opaque(scale * g.backoff_factor), bitcast<f32>(0u));
    }
    let n = tracker + 1u;
    if (n == g.growth_interval) {
        let grown = opaque(scale * g.growth_factor);
        let finite = (bitcast<u32>(grown) & 0x7f800000u) != 0x7f800000u;
        return vec2<f32>(select(scale, grown, finite), bitcast<f32>(0u));
    }
    return vec2<f32>(scale, bitcast<f32>(n));
}
