//! The workloads, named and shaped as `shared/tools/torch_adamw_bench.py` names and shapes
//! them, so that the two reports can be put side by side.

/// One workload: a list of tensor shapes updated by one optimizer step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Its name, as the PyTorch script prints it (`flat_2^24`, `gpt2_small`, ...); the
    /// amsgrad variant gets an `_amsgrad` suffix.
    pub name: String,
    /// The tensors' shapes.
    pub shapes: Vec<Vec<usize>>,
    /// Whether the step runs with amsgrad (one more state array: 36 bytes per parameter).
    pub amsgrad: bool,
}

impl Workload {
    fn new(name: &str, shapes: Vec<Vec<usize>>) -> Self {
        Self {
            name: name.to_string(),
            shapes,
            amsgrad: false,
        }
    }

    /// Number of elements of each tensor.
    pub fn lens(&self) -> Vec<usize> {
        self.shapes.iter().map(|s| s.iter().product()).collect()
    }

    /// Total number of parameters.
    pub fn params(&self) -> usize {
        self.lens().iter().sum()
    }

    /// Bytes one step moves at the minimum: param, grad, exp_avg, exp_avg_sq read (and
    /// max_exp_avg_sq with amsgrad); all but grad written.
    pub fn bytes_per_step(&self) -> u64 {
        self.params() as u64 * if self.amsgrad { 36 } else { 28 }
    }
}

/// GPT-2's parameter shapes (`gpt2_shapes` of the PyTorch script): token and position
/// embeddings, then per layer ln_1, attention (qkv and projection), ln_2 and the MLP, then the
/// final layer norm.
pub fn gpt2_shapes(d: usize, layers: usize, vocab: usize, ctx: usize) -> Vec<Vec<usize>> {
    let mut s = vec![vec![vocab, d], vec![ctx, d]];
    for _ in 0..layers {
        s.extend([
            vec![d],
            vec![d],
            vec![d, 3 * d],
            vec![3 * d],
            vec![d, d],
            vec![d],
            vec![d],
            vec![d],
            vec![d, 4 * d],
            vec![4 * d],
            vec![4 * d, d],
            vec![d],
        ]);
    }
    s.extend([vec![d], vec![d]]);
    s
}

/// The benchmark's workloads: the PyTorch script's set (`--quick` or full), then the amsgrad
/// variant of its largest flat workload.
pub fn workloads(quick: bool) -> Vec<Workload> {
    let flat = |log2: u32| Workload::new(&format!("flat_2^{log2}"), vec![vec![1 << log2]]);
    let mut w = if quick {
        vec![
            flat(20),
            flat(22),
            Workload::new("gpt2_d256", gpt2_shapes(256, 4, 8192, 256)),
        ]
    } else {
        vec![
            flat(20),
            flat(24),
            flat(26),
            Workload::new("gpt2_small", gpt2_shapes(768, 12, 50257, 1024)),
        ]
    };
    // Thousands of tiny tensors (1 to 7 elements) in one buffer pair: the step should cost
    // what their elements cost, as one flat tensor of the same size (`flat_fused_ms`).
    w.push(Workload::new(
        "tiny_10k",
        (0..10_000).map(|i| vec![1 + i % 7]).collect(),
    ));
    let mut ams = flat(if quick { 22 } else { 26 });
    ams.name.push_str("_amsgrad");
    ams.amsgrad = true;
    w.push(ams);
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_the_pytorch_script() {
        let w = workloads(false);
        let gpt2 = w.iter().find(|w| w.name == "gpt2_small").unwrap();
        assert_eq!(gpt2.shapes.len(), 148);
        assert_eq!(gpt2.params(), 124_439_808);
        let q = workloads(true);
        let d256 = q.iter().find(|w| w.name == "gpt2_d256").unwrap();
        assert_eq!(d256.shapes.len(), 52);
        assert_eq!(d256.params(), 5_322_240);
        let tiny = q.iter().find(|w| w.name == "tiny_10k").unwrap();
        assert_eq!(tiny.shapes.len(), 10_000);
        assert_eq!(tiny.params(), 39_994);
        assert_eq!(q.last().unwrap().name, "flat_2^22_amsgrad");
        assert_eq!(q.last().unwrap().bytes_per_step(), 36 << 22);
    }
}
