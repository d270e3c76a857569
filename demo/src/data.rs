//! The synthetic data set: two interleaved spirals, generated from a fixed seed.

/// A small deterministic PRNG (SplitMix64): the same seed gives the same data set and the
/// same initial weights on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// A classification data set: `n` points in the plane with their class labels.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Inputs, row-major `[n, 2]`.
    pub x: Vec<f32>,
    /// Labels in `0..classes`.
    pub y: Vec<u32>,
    /// Number of classes.
    pub classes: usize,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Whether the data set has no samples.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Features per sample.
    pub fn features(&self) -> usize {
        2
    }
}

/// `classes` interleaved spiral arms of `per_class` points each, `turns` turns long, with
/// Gaussian noise of standard deviation `noise` (the arms end at radius 2). Samples are
/// interleaved class by class.
pub fn spirals(per_class: usize, classes: usize, turns: f64, noise: f64, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed);
    let n = per_class * classes;
    let mut x = Vec::with_capacity(2 * n);
    let mut y = Vec::with_capacity(n);
    for i in 0..per_class {
        for c in 0..classes {
            // Spread the points evenly along the arm, starting a little off the centre.
            let t = 0.05 + 0.95 * (i as f64 + rng.uniform()) / per_class as f64;
            let theta = t * turns * std::f64::consts::TAU
                + c as f64 * std::f64::consts::TAU / classes as f64;
            let r = 2.0 * t;
            x.push((r * theta.cos() + noise * rng.normal()) as f32);
            x.push((r * theta.sin() + noise * rng.normal()) as f32);
            y.push(c as u32);
        }
    }
    Dataset { x, y, classes }
}

/// [`spirals`] with a fraction `label_noise` of the labels replaced by a uniformly drawn
/// other class (noise the model cannot fit: it keeps the minibatch gradients noisy to the
/// end, which is what annealing removes).
pub fn noisy_spirals(
    per_class: usize,
    classes: usize,
    turns: f64,
    noise: f64,
    label_noise: f64,
    seed: u64,
) -> Dataset {
    let mut d = spirals(per_class, classes, turns, noise, seed);
    let mut rng = Rng::new(seed ^ 0x1abe_1abe);
    for y in &mut d.y {
        if rng.uniform() < label_noise {
            let shift = 1 + (rng.next_u64() % (classes as u64 - 1).max(1)) as u32;
            *y = (*y + shift) % classes as u32;
        }
    }
    d
}

impl Dataset {
    /// The samples at `indices`, in that order.
    pub fn select(&self, indices: &[u32]) -> Dataset {
        let mut x = Vec::with_capacity(2 * indices.len());
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            let i = i as usize;
            x.extend_from_slice(&self.x[2 * i..2 * i + 2]);
            y.push(self.y[i]);
        }
        Dataset {
            x,
            y,
            classes: self.classes,
        }
    }
}

/// The sample indices of `steps` minibatches of `batch` samples from a set of `n`: each
/// epoch a fresh shuffle (Fisher-Yates, from `seed`), cut into `n / batch` batches (the
/// remainder of a shuffle is left out). Step `s` (0-based) uses
/// `indices[s * batch..(s + 1) * batch]`.
pub fn batch_indices(n: usize, batch: usize, steps: usize, seed: u64) -> Vec<u32> {
    assert!(batch >= 1 && batch <= n, "batch {batch} of {n} samples");
    let mut rng = Rng::new(seed);
    let per_epoch = n / batch;
    let mut out = Vec::with_capacity(steps * batch);
    let mut perm: Vec<u32> = (0..n as u32).collect();
    while out.len() < steps * batch {
        for i in (1..n).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            perm.swap(i, j);
        }
        let take = (per_epoch * batch).min(steps * batch - out.len());
        out.extend_from_slice(&perm[..take]);
    }
    out
}
