//! The MLP: its shape, the layout of its parameters in one arena, and its initial weights.

use crate::data::Rng;

/// A dense layer's place in the parameter arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layer {
    /// Input features.
    pub in_dim: usize,
    /// Output features.
    pub out_dim: usize,
    /// Offset (in f32 elements) of the weight matrix `[out_dim, in_dim]`, row-major.
    pub w_off: usize,
    /// Offset of the bias `[out_dim]`.
    pub b_off: usize,
    /// Whether a ReLU follows the layer.
    pub relu: bool,
}

/// A multi-layer perceptron `inputs -> hidden[0] -> hidden[1] -> classes` with ReLUs between
/// the layers and softmax cross-entropy on the logits.
///
/// Parameters and gradients each live in one flat arena with the layout
/// `W1 b1 W2 b2 W3 b3`, each starting at a multiple of 4 elements (PyTorch's `nn.Linear` convention: `W` is `[out, in]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mlp {
    /// Input features.
    pub inputs: usize,
    /// Widths of the two hidden layers.
    pub hidden: [usize; 2],
    /// Output classes.
    pub classes: usize,
}

impl Mlp {
    /// The three dense layers, in order.
    pub fn layers(&self) -> [Layer; 3] {
        let dims = [self.inputs, self.hidden[0], self.hidden[1], self.classes];
        let mut off = 0;
        let mut layer = |l: usize| {
            let (in_dim, out_dim) = (dims[l], dims[l + 1]);
            // Every tensor starts at a multiple of 4 elements (the GPU kernels read vec4s).
            let w_off = off;
            let b_off = (w_off + in_dim * out_dim).div_ceil(4) * 4;
            off = (b_off + out_dim).div_ceil(4) * 4;
            Layer {
                in_dim,
                out_dim,
                w_off,
                b_off,
                relu: l < 2,
            }
        };
        [layer(0), layer(1), layer(2)]
    }

    /// Length of the arena: the parameters plus the padding that starts every tensor at a
    /// multiple of 4 elements (padding stays zero and is not registered with the optimizer).
    pub fn arena_len(&self) -> usize {
        let l = self.layers()[2];
        (l.b_off + l.out_dim).div_ceil(4) * 4
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.layers()
            .iter()
            .map(|l| (l.in_dim + 1) * l.out_dim)
            .sum()
    }

    /// `(offset, len)` of the weight matrices, then of the biases: the tensors as registered
    /// with the optimizer (group 0: weights, with weight decay; group 1: biases, without).
    pub fn tensors(&self) -> [Vec<(usize, usize)>; 2] {
        let layers = self.layers();
        [
            layers
                .iter()
                .map(|l| (l.w_off, l.in_dim * l.out_dim))
                .collect(),
            layers.iter().map(|l| (l.b_off, l.out_dim)).collect(),
        ]
    }

    /// PyTorch's default initialisation of `nn.Linear` (weights and biases uniform in
    /// `±1/sqrt(in_dim)`), drawn from `seed`.
    pub fn init_params(&self, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        let mut p = vec![0.0f32; self.arena_len()];
        for l in self.layers() {
            let bound = 1.0 / (l.in_dim as f64).sqrt();
            let w = l.w_off..l.w_off + l.in_dim * l.out_dim;
            for k in w.chain(l.b_off..l.b_off + l.out_dim) {
                p[k] = ((2.0 * rng.uniform() - 1.0) * bound) as f32;
            }
        }
        p
    }
}
