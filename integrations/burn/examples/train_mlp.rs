//! Trains a Burn MLP (2 → 64 → 64 → 2) on two interleaved spirals with wgpu-adamw, once per
//! learning-rate schedule, printing each epoch's training loss, held-out accuracy and lr.
//!
//! ```text
//! cargo run --release --example train_mlp --manifest-path integrations/burn/Cargo.toml
//! cargo run --release --example train_mlp --manifest-path integrations/burn/Cargo.toml -- --burn-owned
//! ```
//!
//! By default the device is ours, registered with Burn (`SharedDevice::new`); with
//! `--burn-owned` Burn creates it and the optimizer uses Burn's handles
//! (`SharedDevice::burn_owned`).

use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::{Int, TensorData};
use std::time::Instant;
use wgpu_adamw::{AdamWConfig, Schedule};
use wgpu_adamw_burn::{BurnAdamW, SharedDevice};

const TRAIN: usize = 1024;
const HELD_OUT: usize = 512;
const BATCH: usize = 64;
const EPOCHS: u32 = 25;
const STEPS_PER_EPOCH: u32 = (TRAIN / BATCH) as u32;

#[derive(Module, Debug)]
struct Mlp {
    input: Linear,
    hidden: Linear,
    output: Linear,
    activation: Relu,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        Self {
            input: LinearConfig::new(2, 64).init(device),
            hidden: LinearConfig::new(64, 64).init(device),
            output: LinearConfig::new(64, 2).init(device),
            activation: Relu::new(),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = self.activation.forward(self.input.forward(x));
        let x = self.activation.forward(self.hidden.forward(x));
        self.output.forward(x)
    }
}

/// SplitMix64: a small, fixed-seed generator for the data and the shuffles.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f32 {
        let u = self.uniform().max(1e-7);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// Two interleaved spirals of 1.5 turns with Gaussian noise: points (x, y) and labels.
fn spirals(n: usize, rng: &mut Rng) -> (Vec<[f32; 2]>, Vec<i64>) {
    let mut points = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let class = (i % 2) as i64;
        let t = rng.uniform().sqrt();
        let angle = 3.0 * std::f32::consts::PI * t + class as f32 * std::f32::consts::PI;
        let r = 0.1 + 0.9 * t;
        points.push([
            r * angle.cos() + 0.04 * rng.normal(),
            r * angle.sin() + 0.04 * rng.normal(),
        ]);
        labels.push(class);
    }
    (points, labels)
}

fn inputs(points: &[[f32; 2]], device: &Device) -> Tensor<2> {
    let flat: Vec<f32> = points.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [points.len(), 2]), device)
}

fn targets(labels: &[i64], device: &Device) -> Tensor<1, Int> {
    Tensor::from_data(TensorData::new(labels.to_vec(), [labels.len()]), device)
}

fn run(
    shared: &SharedDevice,
    name: &str,
    schedule: Schedule,
    train: &(Vec<[f32; 2]>, Vec<i64>),
    held_out: &(Vec<[f32; 2]>, Vec<i64>),
) -> Result<(), Box<dyn std::error::Error>> {
    let device = shared.device();
    device.seed(7);
    let model = Mlp::new(device);
    let config = AdamWConfig::default()
        .with_lr(1e-2)
        .with_weight_decay(1e-4)
        .with_schedule(schedule);
    let mut opt = BurnAdamW::new(shared, &model, config)?;
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let (x_held, y_held) = (inputs(&held_out.0, device), targets(&held_out.1, device));
    let mut rng = Rng(11);
    let mut order: Vec<usize> = (0..TRAIN).collect();

    println!("\n== {name} ==");
    println!("epoch  train_loss  held_out_acc        lr");
    let start = Instant::now();
    // Host time spent in `opt.step`.
    let mut in_step = 0.0;
    for epoch in 1..=EPOCHS {
        rng.shuffle(&mut order);
        // Summed on the device, read once per epoch.
        let mut loss_sum = Tensor::<1>::zeros([1], &device.clone().inner());
        for batch in order.chunks(BATCH) {
            let points: Vec<[f32; 2]> = batch.iter().map(|&i| train.0[i]).collect();
            let labels: Vec<i64> = batch.iter().map(|&i| train.1[i]).collect();
            let logits = model.forward(inputs(&points, device));
            let loss = loss_fn.forward(logits, targets(&labels, device));
            loss_sum = loss_sum + loss.clone().inner();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let t = Instant::now();
            opt.step(&model, grads)?;
            in_step += t.elapsed().as_secs_f64();
        }
        let mean_loss = loss_sum.into_scalar::<f32>() / STEPS_PER_EPOCH as f32;
        let predicted = model
            .valid()
            .forward(x_held.clone())
            .argmax(1)
            .squeeze::<1>();
        let correct = predicted
            .equal(y_held.clone())
            .int()
            .sum()
            .into_scalar::<i64>();
        let accuracy = correct as f32 / HELD_OUT as f32;
        println!(
            "{epoch:>5}  {mean_loss:>10.4}  {:>11.1}%  {:>9.3e}",
            100.0 * accuracy,
            opt.lr()?
        );
    }
    println!(
        "{name}: {} steps in {:.2} s; `opt.step` {:.3} ms per call on the host (submitting \
         Burn's pending passes included; it does not wait for the GPU)",
        opt.steps(),
        start.elapsed().as_secs_f64(),
        1e3 * in_step / opt.steps() as f64
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let burn_owned = std::env::args().any(|a| a == "--burn-owned");
    let shared = if burn_owned {
        SharedDevice::burn_owned()?
    } else {
        SharedDevice::new()?
    };
    println!(
        "device: {} ({})",
        shared.describe(),
        if burn_owned {
            "created by Burn, shared with the optimizer"
        } else {
            "created by wgpu-adamw, registered with Burn"
        }
    );
    let mut rng = Rng(2024);
    let train = spirals(TRAIN, &mut rng);
    let held_out = spirals(HELD_OUT, &mut rng);
    let total = EPOCHS * STEPS_PER_EPOCH;
    println!(
        "two spirals: {TRAIN} training / {HELD_OUT} held-out points, batches of {BATCH}, \
         {EPOCHS} epochs ({total} steps)"
    );

    let schedules = [
        ("constant lr 1e-2", Schedule::default()),
        ("cosine annealing to 1e-4", Schedule::cosine(total, 1e-4)),
        (
            "linear warmup (1 epoch) + cosine",
            Schedule::warmup_cosine(STEPS_PER_EPOCH, total, 0.5),
        ),
    ];
    for (name, schedule) in schedules {
        run(&shared, name, schedule, &train, &held_out)?;
    }
    println!("\ntotal {:.2} s", start.elapsed().as_secs_f64());
    Ok(())
}
