// ---------------------------------------------------------------- the schedule
// (CPU twin: src/twin/schedule.rs)

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
            return g.eta_min + opaque((base_lr - g.eta_min) * factor);
        }
        case 3u: {
            return base_lr * factor;
        }
        default: {
            return base_lr;
        }
    }
}
