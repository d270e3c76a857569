//! The CPU implementation of the same forward and backward passes, in plain Rust (f64
//! internally): the reference the GPU kernels are checked against.

use crate::data::Dataset;
use crate::model::Mlp;
use wgpu_adamw::{AdamWConfig, CpuAdamW, CpuParamGroup, GroupConfig};

/// The result of one forward and backward pass over a data set (or a minibatch).
#[derive(Clone, Debug)]
pub struct Pass {
    /// Mean softmax cross-entropy.
    pub loss: f64,
    /// Fraction of samples whose arg-max logit is the label.
    pub accuracy: f64,
    /// Gradient of the mean loss w.r.t. every parameter, in the arena's layout.
    pub grads: Vec<f64>,
}

/// Forward pass, softmax cross-entropy (mean over the data set) and backward pass.
pub fn forward_backward(mlp: &Mlp, params: &[f32], data: &Dataset) -> Pass {
    assert_eq!(params.len(), mlp.arena_len(), "parameter arena length");
    let layers = mlp.layers();
    let n = data.len();
    let p: Vec<f64> = params.iter().map(|&v| f64::from(v)).collect();
    // Activations: acts[0] is the input, acts[l + 1] the output of layer l (post-ReLU).
    let mut acts: Vec<Vec<f64>> = vec![data.x.iter().map(|&v| f64::from(v)).collect()];
    for l in &layers {
        let input = acts.last().expect("input");
        let mut out = vec![0.0; n * l.out_dim];
        for b in 0..n {
            let x = &input[b * l.in_dim..(b + 1) * l.in_dim];
            for j in 0..l.out_dim {
                let w = &p[l.w_off + j * l.in_dim..l.w_off + (j + 1) * l.in_dim];
                let mut s = p[l.b_off + j];
                for (xi, wi) in x.iter().zip(w) {
                    s += xi * wi;
                }
                out[b * l.out_dim + j] = if l.relu { s.max(0.0) } else { s };
            }
        }
        acts.push(out);
    }
    // Softmax cross-entropy and its gradient w.r.t. the logits.
    let c = mlp.classes;
    let logits = &acts[3];
    let mut delta = vec![0.0; n * c];
    let (mut loss, mut hits) = (0.0, 0usize);
    for b in 0..n {
        let z = &logits[b * c..(b + 1) * c];
        let (mut arg, mut m) = (0, z[0]);
        for (k, &v) in z.iter().enumerate().skip(1) {
            if v > m {
                (arg, m) = (k, v);
            }
        }
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        let y = data.y[b] as usize;
        loss += lse - z[y];
        hits += usize::from(arg == y);
        for k in 0..c {
            let target = if k == y { 1.0 } else { 0.0 };
            delta[b * c + k] = ((z[k] - lse).exp() - target) / n as f64;
        }
    }
    // Backward, last layer first.
    let mut grads = vec![0.0; p.len()];
    for (li, l) in layers.iter().enumerate().rev() {
        let input = &acts[li];
        for b in 0..n {
            let x = &input[b * l.in_dim..(b + 1) * l.in_dim];
            for j in 0..l.out_dim {
                let d = delta[b * l.out_dim + j];
                grads[l.b_off + j] += d;
                let g = &mut grads[l.w_off + j * l.in_dim..l.w_off + (j + 1) * l.in_dim];
                for (gi, xi) in g.iter_mut().zip(x) {
                    *gi += d * xi;
                }
            }
        }
        if li > 0 {
            let mut prev = vec![0.0; n * l.in_dim];
            for b in 0..n {
                for i in 0..l.in_dim {
                    // The input is the previous layer's ReLU output: zero where it is not positive.
                    if input[b * l.in_dim + i] <= 0.0 {
                        continue;
                    }
                    let mut s = 0.0;
                    for j in 0..l.out_dim {
                        s += delta[b * l.out_dim + j] * p[l.w_off + j * l.in_dim + i];
                    }
                    prev[b * l.in_dim + i] = s;
                }
            }
            delta = prev;
        }
    }
    Pass {
        loss: loss / n as f64,
        accuracy: hits as f64 / n as f64,
        grads,
    }
}

/// The optimizer's param groups for `mlp`: weights (with the config's weight decay), then
/// biases (without weight decay).
pub fn param_groups(mlp: &Mlp) -> Vec<CpuParamGroup> {
    let [weights, biases] = mlp.tensors();
    vec![
        CpuParamGroup {
            config: GroupConfig::default(),
            lens: weights.iter().map(|t| t.1).collect(),
        },
        CpuParamGroup {
            config: GroupConfig {
                weight_decay: Some(0.0),
                ..Default::default()
            },
            lens: biases.iter().map(|t| t.1).collect(),
        },
    ]
}

/// Training on the CPU with [`CpuAdamW`], on whatever (mini)batch each step is given: the CPU twin of
/// [`crate::gpu::GpuMlp`].
#[derive(Debug)]
pub struct CpuTrainer {
    /// The model.
    pub mlp: Mlp,
    /// The parameter arena.
    pub params: Vec<f32>,
    /// The optimizer.
    pub opt: CpuAdamW,
}

impl CpuTrainer {
    /// A trainer starting from `params` (the arena).
    pub fn new(mlp: Mlp, params: Vec<f32>, config: AdamWConfig) -> anyhow::Result<Self> {
        Ok(Self {
            mlp,
            params,
            opt: CpuAdamW::new(config, param_groups(&mlp))?,
        })
    }

    /// One step: forward, backward, optimizer update. Returns the pass (loss and gradients
    /// before the update).
    pub fn step(&mut self, data: &Dataset) -> anyhow::Result<Pass> {
        let pass = forward_backward(&self.mlp, &self.params, data);
        let grads: Vec<f32> = pass.grads.iter().map(|&g| g as f32).collect();
        self.apply(&grads)?;
        Ok(pass)
    }

    /// One optimizer update of the parameters with the gradient arena `grads`.
    pub fn apply(&mut self, grads: &[f32]) -> anyhow::Result<()> {
        anyhow::ensure!(grads.len() == self.params.len(), "gradient arena length");
        let order = registration_order(&self.mlp);
        let grad_slices: Vec<&[f32]> = order.iter().map(|&(o, n)| &grads[o..o + n]).collect();
        let mut param_slices = split_mut(&mut self.params, &order);
        self.opt.step(&mut param_slices, &grad_slices)?;
        Ok(())
    }
}

/// `(offset, len)` of every tensor in the optimizer's registration order.
pub fn registration_order(mlp: &Mlp) -> Vec<(usize, usize)> {
    mlp.tensors().concat()
}

/// Disjoint mutable slices of `arena` at the given non-overlapping `(offset, len)` ranges,
/// in the order given.
fn split_mut<'a>(arena: &'a mut [f32], ranges: &[(usize, usize)]) -> Vec<&'a mut [f32]> {
    let mut sorted: Vec<(usize, usize, usize)> = ranges
        .iter()
        .enumerate()
        .map(|(k, &(o, n))| (o, n, k))
        .collect();
    sorted.sort_unstable();
    let mut out: Vec<Option<&mut [f32]>> = (0..ranges.len()).map(|_| None).collect();
    let mut rest = arena;
    let mut at = 0;
    for (o, n, k) in sorted {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(o - at);
        let (mine, tail) = tail.split_at_mut(n);
        out[k] = Some(mine);
        rest = tail;
        at = o + n;
    }
    out.into_iter().map(|s| s.expect("every range")).collect()
}
