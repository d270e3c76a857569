//! Twin of `shaders/grad_norm.wgsl`: unscaling, non-finite flags, the global gradient norm (a
//! compensated tree, or PyTorch's CPU order) and the clipping coefficient.

use super::numerics::{fma_exact, narrow16, two_prod, two_sum, widen16, DTYPE_F32};
use crate::kernel::{Globals, FLAG_LOSS_SCALE, FLAG_TORCH_NORM, WORKGROUP};

/// `1 / s` rounded to nearest, as the kernel's `recip`, for `|s|` in `[2^-100, 2^100]` and every
/// power of two.
pub fn recip(s: f32) -> f32 {
    let r = 1.0 / s;
    if is_nonfinite(s) || is_nonfinite(r) || r == 0.0 {
        return r;
    }
    let e = fma_exact(-s, r, 1.0);
    fma_exact(r, e, r)
}

/// The gradient multiplier: `1 / loss_scale` with loss scaling, else 1.
pub fn grad_multiplier(g: &Globals, loss_scale: f32) -> f32 {
    if g.flags & FLAG_LOSS_SCALE != 0 {
        recip(loss_scale)
    } else {
        1.0
    }
}

fn is_nonfinite(x: f32) -> bool {
    x.to_bits() & 0x7f80_0000 == 0x7f80_0000
}

/// Flag of [`nonfinite_flags`]: some gradient is +-inf or NaN.
pub const NONFINITE: u32 = 1;
/// Flag of [`nonfinite_flags`]: some gradient is NaN.
pub const NAN: u32 = 2;

/// The non-finite flags of one raw gradient, as the kernel's `nonfinite_flags`.
#[inline(always)]
pub fn nonfinite_flags(x: f32) -> u32 {
    if !is_nonfinite(x) {
        0
    } else if x.is_nan() {
        NONFINITE | NAN
    } else {
        NONFINITE
    }
}

/// The global norm from its sum of squares and the gradients' flags, as the kernel's
/// `finish_norm`: NaN if a gradient is NaN, inf if one is infinite or the squares overflow.
pub fn finish_norm(sum_sq: f32, flags: u32, root: f32) -> f32 {
    if flags & NAN != 0 {
        f32::NAN
    } else if flags & NONFINITE != 0 || is_nonfinite(sum_sq) {
        f32::INFINITY
    } else {
        root
    }
}

/// `clip_grad_norm_`'s coefficient `min(max_norm / (norm + 1e-6), 1)`, as the kernel's
/// `clip_coefficient`: 0 for an infinite norm, NaN for a NaN one.
pub fn clip_coefficient(g: &Globals, norm: f32) -> f32 {
    if norm.is_nan() {
        norm
    } else if norm.is_infinite() {
        0.0
    } else {
        if g.grad_round != DTYPE_F32 {
            let c = round_grad(
                g,
                round_grad(g, recip(round_grad(g, norm + 1e-6))) * g.max_grad_norm,
            );
            return c.min(1.0);
        }
        (g.max_grad_norm / (norm + 1e-6)).min(1.0)
    }
}

/// `x` rounded to the type of gradient arithmetic ([`Globals::grad_round`]; f32: unchanged).
#[inline(always)]
pub fn round_grad(g: &Globals, x: f32) -> f32 {
    if g.grad_round == DTYPE_F32 {
        x
    } else {
        widen16(narrow16(x, g.grad_round), g.grad_round)
    }
}

/// `(hi, lo) + (x, y)`, both unevaluated sums.
#[inline(always)]
pub fn add_double(a: (f32, f32), b: (f32, f32)) -> (f32, f32) {
    let (s, e) = two_sum(a.0, b.0);
    (s, e + (a.1 + b.1))
}

fn workgroup_tree(acc: &mut [(f32, f32); 256], flag: &mut [u32; 256]) {
    let mut stride = 128;
    while stride > 0 {
        for lane in 0..stride {
            acc[lane] = add_double(acc[lane], acc[lane + stride]);
            flag[lane] |= flag[lane + stride];
        }
        stride >>= 1;
    }
}

/// The kernel's `reduce` for one chunk (at most `256 * ELEMS_PER_THREAD` gradients): the sum
/// of squares of the unscaled gradients as an unevaluated sum `hi + lo`, and the raw
/// gradients' [`nonfinite_flags`].
pub fn reduce_chunk(grads: &[f32], inv: f32) -> ((f32, f32), u32) {
    let (mut acc, mut flag) = ([(0f32, 0f32); 256], [0u32; 256]);
    for k in 0..grads.len().div_ceil(WORKGROUP as usize) {
        for lane in 0..WORKGROUP as usize {
            if let Some(&raw) = grads.get(k * WORKGROUP as usize + lane) {
                flag[lane] |= nonfinite_flags(raw);
                let x = raw * inv;
                acc[lane] = add_double(acc[lane], two_prod(x, x));
            }
        }
    }
    workgroup_tree(&mut acc, &mut flag);
    (acc[0], flag[0])
}

/// The prologue's reduction of all chunk partials: strided per lane, then a tree.
pub fn reduce_partials(partials: &[((f32, f32), u32)]) -> ((f32, f32), u32) {
    let (mut acc, mut flag) = ([(0f32, 0f32); 256], [0u32; 256]);
    for lane in 0..256 {
        for &(x, f) in partials.iter().skip(lane).step_by(256) {
            acc[lane] = add_double(acc[lane], x);
            flag[lane] |= f;
        }
    }
    workgroup_tree(&mut acc, &mut flag);
    (acc[0], flag[0])
}

/// The prologue's fold of the ranks' entries ([`reduce_partials`] of each shard's chunks), as
/// a sharded optimizer's prologue does it: left to right in rank order, from zero.
pub fn fold_shards(shards: &[((f32, f32), u32)]) -> ((f32, f32), u32) {
    shards
        .iter()
        .fold(((0.0, 0.0), 0), |(acc, flags), &(x, f)| {
            (add_double(acc, x), flags | f)
        })
}

/// The global norm of a folded `(hi, lo)` sum of squares and its flags, as the prologue
/// finishes it (compensated order, sharded or not).
pub fn norm_of(((hi, lo), flags): ((f32, f32), u32)) -> (f32, u32) {
    let sum_sq = hi + lo;
    (finish_norm(sum_sq, flags, sum_sq.sqrt()), flags)
}

/// `acc + x * x` with two roundings, as ATen's (unfused) CPU norm kernel adds a square.
#[inline(always)]
fn add_square(acc: f32, x: f32) -> f32 {
    acc + x * x
}

/// The kernel's `tensor_norms` for one tensor: its norm summed in PyTorch's CPU order
/// (8 interleaved lanes, lanes added left to right, then the tail), and whether any raw
/// gradient is non-finite ([`nonfinite_flags`]). Rust's `sqrt` is correctly rounded, as the
/// kernel's `sqrt_rn`.
pub fn tensor_norm_torch(g: &Globals, grads: &[f32], inv: f32) -> (f32, u32) {
    let (sum_sq, flags) = torch_sum_sq(g, grads, inv);
    (round_grad(g, sum_sq.sqrt()), flags)
}

/// The sum of squares of [`tensor_norm_torch`], before its square root.
fn torch_sum_sq(g: &Globals, grads: &[f32], inv: f32) -> (f32, u32) {
    let body = grads.len() - grads.len() % 8;
    let mut lanes = [0f32; 8];
    let mut flag = 0;
    for (lane, acc) in lanes.iter_mut().enumerate() {
        for &raw in grads[..body].iter().skip(lane).step_by(8) {
            flag |= nonfinite_flags(raw);
            *acc = add_square(*acc, round_grad(g, raw * inv));
        }
    }
    let mut b = lanes[0];
    for &l in &lanes[1..] {
        b += l;
    }
    for &raw in &grads[body..] {
        flag |= nonfinite_flags(raw);
        b = add_square(b, round_grad(g, raw * inv));
    }
    (b, flag)
}

/// The prologue's final reduction: the global norm and the gradients' non-finite flags,
/// from the chunk partials ([`reduce_chunk`]) or, with [`crate::GradNormOrder::TorchCpu`],
/// from the per-tensor norms ([`tensor_norm_torch`], in registration order).
pub fn final_norm(
    g: &Globals,
    partials: &[((f32, f32), u32)],
    tensor_norms: &[(f32, u32)],
) -> (f32, u32) {
    if g.flags & FLAG_TORCH_NORM != 0 {
        let norms: Vec<f32> = tensor_norms.iter().map(|t| t.0).collect();
        let flags = tensor_norms.iter().fold(0, |f, t| f | t.1);
        // The kernel sums the squares of the norms as `tensor_norm_torch` does.
        let (sum_sq, _) = torch_sum_sq(g, &norms, 1.0);
        return (
            finish_norm(sum_sq, flags, round_grad(g, sum_sq.sqrt())),
            flags,
        );
    }
    norm_of(reduce_partials(partials))
}
