// ---------------------------------------------------------------- update, mixed precision
// (CPU twin: CpuAdamW::step_mixed, element by element with twin::update_element)
//
// The update for 16-bit parameters, gradients or moments and f32 master weights: every
// element is widened (exactly), updated by the same `adam_element` as the f32 update, and
// rounded to nearest even once per store. The parameters are updated from the unrounded new
// moments, as PyTorch's `AdamW(fused=True)`.
//
// Every stream is bound as 32-bit words; the types are pipeline constants, so each
// optimizer's pipeline holds the code of its own types only. Two 16-bit elements share a
// word. The plan (src/plan.rs, `mixed`) gives a 16-bit run's moments the parity of its
// parameters, so one invocation handles one parameter word and the matching moment word;
// only the first and last words of a tensor's parameters can hold another tensor's element
// (registered or not, in this dispatch or another): those two words are changed with
// atomics that touch this tensor's 16 bits only.

override P_DTYPE: u32 = 0u; // DTYPE_* of the parameters
override G_DTYPE: u32 = 0u; // of the gradients
override S_DTYPE: u32 = 0u; // of the moments
override MASTER: bool = false; // f32 master weights in `master_w`
override EMA: bool = false;    // a weight EMA in `ema_w`
override E_DTYPE: u32 = 0u;    // of the EMA
override SR: bool = false;     // stochastic rounding of the parameters

@group(0) @binding(16) var<storage, read_write> param_w: array<atomic<u32>>;
@group(0) @binding(17) var<storage, read> grad_w: array<u32>;
@group(0) @binding(18) var<storage, read_write> m_w: array<u32>;
@group(0) @binding(19) var<storage, read_write> v_w: array<u32>;
@group(0) @binding(20) var<storage, read_write> vmax_w: array<u32>;
@group(0) @binding(21) var<storage, read_write> master_w: array<u32>;
@group(0) @binding(22) var<storage, read_write> ema_w: array<u32>;

// Half `i & 1` of a word holding 16-bit elements (element i of the buffer).
fn half_of(word: u32, i: u32) -> u32 {
    return (word >> (16u * (i & 1u))) & 0xffffu;
}

// `word` with half `i & 1` replaced by `h`.
fn with_half(word: u32, i: u32, h: u32) -> u32 {
    let shift = 16u * (i & 1u);
    return (word & ~(0xffffu << shift)) | (h << shift);
}

fn grad_at(i: u32) -> f32 {
    if (G_DTYPE == DTYPE_F32) {
        return bitcast<f32>(grad_w[i]);
    }
    return widen16(half_of(grad_w[i >> 1u], i), G_DTYPE);
}

// Element i of an optimizer-owned stream of type `dtype` (a pipeline constant) from the
// word that holds it.
fn elem(word: u32, i: u32, dtype: u32) -> f32 {
    if (dtype == DTYPE_F32) {
        return bitcast<f32>(word);
    }
    return widen16(half_of(word, i), dtype);
}

// `x` stored as element i into the word that holds it (rounded to nearest even if 16-bit).
fn store_elem(word: u32, i: u32, x: f32, dtype: u32) -> u32 {
    if (dtype == DTYPE_F32) {
        return bitcast<u32>(x);
    }
    return with_half(word, i, narrow16(x, dtype));
}

// The weight EMA of AveragedModel + get_ema_multi_avg_fn: the first update (Adam's t = 1,
// the first step not skipped) copies the weights, later ones are torch.lerp(e, p, 1 - decay)
// as PyTorch's CPU kernel computes it (one fma, its two branches as for the first moment).
// `p` is the model's weight after the step: the master, or the parameter as stored.
fn ema_next(e_old: f32, p: f32, first: bool) -> f32 {
    if (first) {
        return p;
    }
    let w = g.ema_weight;
    let small = w < 0.5;
    return lerp_fma(select(w - 1.0, w, small), p - e_old, select(p, e_old, small));
}


// The gradient the update sees: unscaled, then clipped, each rounded to the type of gradient
// arithmetic (16-bit in pure 16-bit training with clipping, as PyTorch's ops on p.grad).
fn effective_grad(raw: f32, k: StepConsts) -> f32 {
    return round_grad(round_grad(raw * k.inv_scale) * k.clip_coef);
}

// `k` with the unscaling and clipping already applied by `effective_grad`.
fn unit_consts(k: StepConsts) -> StepConsts {
    var u = k;
    u.inv_scale = 1.0;
    u.clip_coef = 1.0;
    return u;
}

// murmur3's 32-bit finalizer: a bijection with full avalanche.
fn fmix32(x: u32) -> u32 {
    var h = x;
    h ^= h >> 16u;
    h *= 0x85ebca6bu;
    h ^= h >> 13u;
    h *= 0xc2b2ae35u;
    h ^= h >> 16u;
    return h;
}

// The random word that rounds element `index` (registration order, mod 2^32) at Adam step
// t: a counter-based generator keyed by the seed, so any element of any step can be
// reproduced (the CPU twin, a resumed run).
fn sr_random(index: u32, t: u32) -> u32 {
    let h = fmix32(fmix32(index) ^ (t * 0x9e3779b9u));
    return fmix32(fmix32(h ^ meta_ro[g.sr_at]) ^ meta_ro[g.sr_at + 1u]);
}

// A parameter's 16-bit pattern: rounded to nearest, or stochastically (SR).
fn param_bits(x: f32, index: u32, t: u32) -> u32 {
    if (SR) {
        return narrow16_stochastic(x, P_DTYPE, sr_random(index, t));
    }
    return narrow16(x, P_DTYPE);
}

// The word index of element i of a stream of type `dtype`.
fn word_of(i: u32, dtype: u32) -> u32 {
    return select(i >> 1u, i, dtype == DTYPE_F32);
}

// Updates elements j = j0, j0 + 1 (of the run's `count`, relative to its first element)
// that lie in [0, count) when `pair`, else j0 alone. With 16-bit parameters the pair's
// parameters share one word (p0 + j0 even), and so do their 16-bit moments.
// `e0`: the index of the run's first element in registration order (stochastic rounding).
fn update_unit(p0: u32, g0: u32, s0: u32, e0: u32, j0: i32, pair: bool, count: u32, k: StepConsts) {
    let amsgrad = (g.flags & FLAG_AMSGRAD) != 0u;
    let n = select(1, 2, pair);
    // The words this unit reads and writes, loaded once (the first valid element's).
    var jf = j0;
    if (jf < 0) {
        jf = 0;
    }
    let pw = word_of(p0 + u32(jf), P_DTYPE);
    let sw = word_of(s0 + u32(jf), S_DTYPE);
    var p_word = 0u;
    if (!MASTER) {
        p_word = atomicLoad(&param_w[pw]);
    }
    var m_word = m_w[sw];
    var v_word = v_w[sw];
    var x_word = 0u;
    if (amsgrad) {
        x_word = vmax_w[sw];
    }
    let ew = word_of(s0 + u32(jf), E_DTYPE);
    let t = meta_ro[COUNTER_ADAM];
    let first = t == 1u;
    var e_word = 0u;
    if (EMA) {
        e_word = ema_w[ew];
    }
    var new_p = p_word;
    var mask = 0u; // the parameter bits this unit owns
    for (var e = 0; e < n; e++) {
        let j = j0 + e;
        if (j < 0 || u32(j) >= count) {
            continue;
        }
        let pi = p0 + u32(j);
        let si = s0 + u32(j);
        // A 16-bit pair's second element reads its own words only when f32.
        var p_old: f32;
        if (MASTER) {
            p_old = bitcast<f32>(master_w[si]);
        } else if (P_DTYPE == DTYPE_F32) {
            p_old = bitcast<f32>(atomicLoad(&param_w[pi]));
        } else {
            p_old = widen16(half_of(p_word, pi), P_DTYPE);
        }
        var m_src = m_word;
        var v_src = v_word;
        var x_src = x_word;
        if (S_DTYPE == DTYPE_F32 && e > 0) {
            m_src = m_w[si];
            v_src = v_w[si];
            if (amsgrad) {
                x_src = vmax_w[si];
            }
        }
        var vmax_old = 0.0;
        if (amsgrad) {
            vmax_old = elem(x_src, si, S_DTYPE);
        }
        let r = adam_element(effective_grad(grad_at(g0 + u32(j)), k), p_old, elem(m_src, si, S_DTYPE), elem(v_src, si, S_DTYPE), vmax_old, unit_consts(k));
        if (S_DTYPE == DTYPE_F32) {
            m_w[si] = bitcast<u32>(r.y);
            v_w[si] = bitcast<u32>(r.z);
            if (amsgrad) {
                vmax_w[si] = bitcast<u32>(r.w);
            }
        } else {
            m_word = store_elem(m_word, si, r.y, S_DTYPE);
            v_word = store_elem(v_word, si, r.z, S_DTYPE);
            x_word = store_elem(x_word, si, r.w, S_DTYPE);
        }
        if (MASTER) {
            master_w[si] = bitcast<u32>(r.x);
        }
        var p_bits = 0u;
        if (P_DTYPE != DTYPE_F32) {
            p_bits = param_bits(r.x, e0 + u32(j), t);
        }
        if (EMA) {
            var p_avg = r.x;
            if (!MASTER && P_DTYPE != DTYPE_F32) {
                p_avg = widen16(p_bits, P_DTYPE);
            }
            var e_src = e_word;
            if (E_DTYPE == DTYPE_F32 && e > 0) {
                e_src = ema_w[si];
            }
            let e_new = ema_next(elem(e_src, si, E_DTYPE), p_avg, first);
            if (E_DTYPE == DTYPE_F32) {
                ema_w[si] = bitcast<u32>(e_new);
            } else {
                e_word = store_elem(e_word, si, e_new, E_DTYPE);
            }
        }
        if (P_DTYPE == DTYPE_F32) {
            atomicStore(&param_w[pi], bitcast<u32>(r.x));
        } else {
            new_p = with_half(new_p, pi, p_bits);
            mask |= 0xffffu << (16u * (pi & 1u));
        }
    }
    if (EMA && E_DTYPE != DTYPE_F32) {
        ema_w[ew] = e_word;
    }
    if (S_DTYPE != DTYPE_F32) {
        m_w[sw] = m_word;
        v_w[sw] = v_word;
        if (amsgrad) {
            vmax_w[sw] = x_word;
        }
    }
    if (P_DTYPE != DTYPE_F32) {
        if (mask == 0xffffffffu) {
            atomicStore(&param_w[pw], new_p);
        } else {
            // The other half belongs to another tensor (or to none): clear ours, set ours.
            atomicAnd(&param_w[pw], ~mask);
            atomicOr(&param_w[pw], new_p & mask);
        }
    }
}

@compute @workgroup_size(256)
fn update_mixed(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let chunk = wg.y * dispatch.grid_x + wg.x;
    if (chunk >= dispatch.n_runs || meta_ro[STEP_SKIPPED] != 0u) {
        return;
    }
    let ce = g.chunks_at + 4u * (dispatch.first_chunk + chunk);
    let p0 = meta_ro[ce];
    let s0 = meta_ro[ce + 2u];
    // Accumulated gradients are the optimizer's, at the moments' offsets.
    let g0 = select(meta_ro[ce + 1u], s0, (g.flags & FLAG_ACCUMULATE) != 0u);
    let packed = meta_ro[ce + 3u];
    let count = packed & 0xffffu;
    let k = step_consts(packed >> 16u);
    var e0 = 0u;
    if (SR) {
        e0 = meta_ro[g.sr_at + 2u + dispatch.first_chunk + chunk];
    }
    if (P_DTYPE == DTYPE_F32) {
        for (var u = lid; u < count; u += WORKGROUP) {
            update_unit(p0, g0, s0, e0, i32(u), false, count, k);
        }
        return;
    }
    // Unit u: the parameter word (p0 >> 1) + u, elements 2u - lead and 2u - lead + 1.
    let lead = p0 & 1u;
    let units = (count + lead + 1u) / 2u;
    for (var u = lid; u < units; u += WORKGROUP) {
        update_unit(p0, g0, s0, e0, i32(2u * u) - i32(lead), true, count, k);
    }
}
