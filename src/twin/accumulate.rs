//! Twin of `shaders/accumulate.wgsl`: gradient accumulation over micro-batches.

use crate::precision::Dtype;

/// The accumulator's next value: the first micro-batch's gradient, else the sum rounded to
/// the accumulator's type `acc` (PyTorch's `p.grad += g` in `p.grad`'s dtype).
#[inline(always)]
pub fn accumulate_next(acc_value: f32, grad: f32, first: bool, acc: Dtype) -> f32 {
    if first {
        grad
    } else {
        acc.round(acc_value + grad)
    }
}
