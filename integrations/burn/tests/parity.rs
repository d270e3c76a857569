//! Parity of the Burn integration, on both device-ownership routes:
//! (a) bit-identical to `CpuAdamW` fed the same Burn gradients;
//! (b) equal to Burn's own AdamW at equal settings, within a justified tolerance;
//! (c) the loss falls;
//! and the errors a user can run into.
//!
//! These tests need a GPU adapter and fail (never skip) without one; on Linux without a GPU
//! install the software Vulkan adapter: `apt-get install -y mesa-vulkan-drivers libvulkan1`.

use burn::module::{ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorData;
use std::collections::HashMap;
use std::sync::OnceLock;
use wgpu_adamw::{
    AdamWConfig, CpuAdamW, CpuParamGroup, Dtype, GpuContext, GroupConfig, Precision, Schedule,
};
use wgpu_adamw_burn::{BurnAdamW, Error, MissingGrad, SharedDevice};

const NO_ADAPTER: &str = "these tests need a GPU adapter; on Linux without a GPU install the \
                          software Vulkan adapter: `apt-get install -y mesa-vulkan-drivers libvulkan1`";

/// Our device registered with Burn, once per test binary.
fn ours() -> &'static SharedDevice {
    static SHARED: OnceLock<SharedDevice> = OnceLock::new();
    SHARED.get_or_init(|| {
        SharedDevice::new().unwrap_or_else(|e| panic!("{NO_ADAPTER}\n(ours → Burn: {e})"))
    })
}

/// Burn's default wgpu device, its handles shared with the optimizer.
fn burn_owned() -> SharedDevice {
    SharedDevice::burn_owned().unwrap_or_else(|e| panic!("{NO_ADAPTER}\n(Burn → ours: {e})"))
}

#[derive(Module, Debug)]
struct Net {
    a: Linear,
    b: Linear,
    act: Relu,
}

impl Net {
    fn new(device: &Device) -> Self {
        Self {
            a: LinearConfig::new(4, 16).init(device),
            b: LinearConfig::new(16, 3).init(device),
            act: Relu::new(),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.b.forward(self.act.forward(self.a.forward(x)))
    }
}

/// A net with a layer the loss never uses.
#[derive(Module, Debug)]
struct WithUnused {
    net: Net,
    unused: Linear,
}

/// 32 samples of a smooth 4 → 3 regression target.
fn data(device: &Device) -> (Tensor<2>, Tensor<2>) {
    let n = 32;
    let x: Vec<f32> = (0..n * 4)
        .map(|i| (i * 37 % 101) as f32 / 50.0 - 1.0)
        .collect();
    let y: Vec<f32> = (0..n)
        .flat_map(|r| {
            let row = &x[4 * r..4 * r + 4];
            [
                (row[0] + 0.5 * row[1]).sin(),
                row[2] * row[3],
                0.3 * row[0] - row[3],
            ]
        })
        .collect();
    (
        Tensor::from_data(TensorData::new(x, [n, 4]), device),
        Tensor::from_data(TensorData::new(y, [n, 3]), device),
    )
}

fn loss(net: &Net, (x, y): &(Tensor<2>, Tensor<2>)) -> Tensor<1> {
    (net.forward(x.clone()) - y.clone()).powi_scalar(2).mean()
}

/// Every float parameter's values (or, with `grads`, its gradient), by id.
struct Read<'a> {
    grads: Option<&'a GradientsParams>,
    out: HashMap<ParamId, Vec<f32>>,
}

impl ModuleVisitor for Read<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = match self.grads {
            Some(grads) => grads.get::<D>(param.id),
            None => Some(param.val()),
        };
        if let Some(t) = tensor {
            let values = t.into_data().try_to_vec::<f32>().expect("f32 data");
            self.out.insert(param.id, values);
        }
    }
}

fn read<M: Module>(module: &M, grads: Option<&GradientsParams>) -> HashMap<ParamId, Vec<f32>> {
    let mut r = Read {
        grads,
        out: HashMap::new(),
    };
    module.visit(&mut r);
    r.out
}

/// The values of `ids`, in that order.
fn ordered(map: &HashMap<ParamId, Vec<f32>>, ids: &[ParamId]) -> Vec<Vec<f32>> {
    ids.iter().map(|id| map[id].clone()).collect()
}

/// A copy of a module in new allocations, with the same parameter ids.
struct DeepCopy;

impl ModuleMapper for DeepCopy {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| {
            let device = t.device();
            let require_grad = t.is_require_grad();
            Tensor::from_data(t.to_data(), &device).set_require_grad(require_grad)
        })
    }
}

/// The same gradients (shared tensors) under the same ids, for a second optimizer.
struct CopyGrads<'a> {
    from: &'a GradientsParams,
    to: GradientsParams,
}

impl ModuleVisitor for CopyGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.from.get::<D>(param.id) {
            self.to.register::<D>(param.id, g);
        }
    }
}

/// (a): `steps` steps of `model` under `opt` and of a `CpuAdamW` twin fed the same
/// gradients (read back each step); parameters and lr compared bit for bit. Returns the
/// number of parameters compared.
fn twin_check<M: Module>(
    model: &M,
    loss: impl Fn(&M) -> Tensor<1>,
    mut opt: BurnAdamW,
    config: AdamWConfig,
    group_configs: &[GroupConfig],
    steps: usize,
) -> usize {
    let infos: Vec<_> = opt.params().into_iter().cloned().collect();
    let ids: Vec<ParamId> = infos.iter().map(|p| p.id).collect();
    let cpu_groups = group_configs
        .iter()
        .enumerate()
        .map(|(g, config)| CpuParamGroup {
            config: *config,
            lens: infos
                .iter()
                .filter(|p| p.group == g)
                .map(|p| p.len)
                .collect(),
        })
        .collect();
    let mut cpu = CpuAdamW::new(config, cpu_groups).expect("cpu twin");
    let mut host = ordered(&read(model, None), &ids);
    let initial = host.clone();

    for step in 1..=steps {
        let grads = GradientsParams::from_grads(loss(model).backward(), model);
        let host_grads = ordered(&read(model, Some(&grads)), &ids);
        opt.step(model, grads).expect("step");
        let mut views: Vec<&mut [f32]> = host.iter_mut().map(Vec::as_mut_slice).collect();
        let grad_views: Vec<&[f32]> = host_grads.iter().map(Vec::as_slice).collect();
        cpu.step(&mut views, &grad_views).expect("cpu step");
        let (gpu_lr, cpu_lr) = (opt.lrs().expect("lr"), cpu.lr());
        assert_eq!(
            gpu_lr.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
            cpu_lr.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
            "lr at step {step}"
        );
    }
    let gpu = ordered(&read(model, None), &ids);
    let mut elements = 0;
    for ((info, g), c) in infos.iter().zip(&gpu).zip(&host) {
        for (i, (a, b)) in g.iter().zip(c).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{} [{i}]: Burn model {a} vs CpuAdamW {b}",
                info.path
            );
        }
        elements += g.len();
    }
    assert_ne!(gpu, initial, "the parameters moved");
    elements
}

/// (a) on [`Net`], with one param group or two (biases in the second).
fn bit_identical_to_cpu(shared: &SharedDevice, groups: bool, steps: usize) {
    let device = shared.device();
    let model = Net::new(device);
    let batch = data(device);
    let config = AdamWConfig::default()
        .with_lr(1e-2)
        .with_weight_decay(0.1)
        .with_schedule(Schedule::warmup_cosine(3, steps as u32, 0.5));
    let group_configs = if groups {
        vec![
            GroupConfig::default(),
            GroupConfig {
                lr: Some(3e-2),
                weight_decay: Some(0.0),
            },
        ]
    } else {
        vec![GroupConfig::default()]
    };
    let opt = BurnAdamW::with_groups(shared, &model, config.clone(), group_configs.clone(), |p| {
        usize::from(groups && p.shape.len() == 1)
    })
    .expect("optimizer");
    let paths: Vec<String> = opt.params().iter().map(|p| p.path.clone()).collect();
    if groups {
        assert_eq!(paths, ["a.weight", "b.weight", "a.bias", "b.bias"]);
    } else {
        assert_eq!(paths, ["a.weight", "a.bias", "b.weight", "b.bias"]);
    }
    let elements = twin_check(
        &model,
        |m| loss(m, &batch),
        opt,
        config,
        &group_configs,
        steps,
    );
    println!(
        "(a) {steps} steps, {elements} parameters in 4 tensors ({} groups): bit-identical to \
         CpuAdamW, lr included",
        group_configs.len(),
    );
}

/// Parameters made by hand; `w`'s gradient comes out of Burn's backward pass as a strided
/// view (the transpose's: strides [1, 3]), which the step makes contiguous.
#[derive(Module, Debug)]
struct Raw {
    w: Param<Tensor<2>>,
    v: Param<Tensor<1>>,
}

#[test]
fn strided_gradients_and_parameters() {
    let shared = ours();
    let device = shared.device();
    let values = |n: usize, f: fn(f32) -> f32| (0..n).map(|i| f(i as f32)).collect::<Vec<f32>>();
    let raw = Raw {
        w: Param::from_data(
            TensorData::new(values(12, |i| i / 10.0 - 0.5), [3, 4]),
            device,
        ),
        v: Param::from_data(TensorData::new(values(3, |i| 0.1 * i), [3]), device),
    };
    let c = Tensor::<2>::from_data(TensorData::new(values(12, f32::sin), [4, 3]), device);
    let loss =
        |m: &Raw| (m.w.val().transpose() * c.clone()).sum() + m.v.val().sum().mul_scalar(2.0);
    let config = AdamWConfig::default().with_lr(1e-2);
    let opt = BurnAdamW::new(shared, &raw, config.clone()).expect("optimizer");
    let elements = twin_check(&raw, loss, opt, config, &[GroupConfig::default()], 4);
    assert_eq!(elements, 15);

    // A parameter that is itself a strided view cannot be updated in place.
    let strided = Raw {
        w: Param::from_tensor(
            Tensor::<2>::from_data(TensorData::new(values(12, |i| i), [4, 3]), device).transpose(),
        ),
        v: Param::from_data(TensorData::new(values(3, |i| i), [3]), device),
    };
    match BurnAdamW::new(shared, &strided, AdamWConfig::default()) {
        Err(Error::Tensor { path, reason }) => {
            assert_eq!(path, "w");
            assert!(reason.contains("contiguous"), "{reason}");
        }
        other => panic!("expected a layout error, got {other:?}"),
    }
}

/// (c): the loss of a short training run falls.
fn loss_falls(shared: &SharedDevice) {
    let device = shared.device();
    let model = Net::new(device);
    let batch = data(device);
    let config = AdamWConfig::default()
        .with_lr(2e-2)
        .with_schedule(Schedule::cosine(150, 1e-3));
    let mut opt = BurnAdamW::new(shared, &model, config).expect("optimizer");
    let first = loss(&model, &batch).into_scalar::<f32>();
    for _ in 0..150 {
        let grads = GradientsParams::from_grads(loss(&model, &batch).backward(), &model);
        opt.step(&model, grads).expect("step");
    }
    let last = loss(&model, &batch).into_scalar::<f32>();
    println!("(c) loss {first:.4} -> {last:.4} in 150 steps");
    assert!(last < 0.1 * first, "loss {first} -> {last}");
    assert_eq!(opt.steps(), 150);
}

#[test]
fn ours_bit_identical_to_cpu_adamw() {
    bit_identical_to_cpu(ours(), false, 8);
}

#[test]
fn ours_bit_identical_to_cpu_adamw_with_groups() {
    bit_identical_to_cpu(ours(), true, 8);
}

#[test]
fn burn_owned_bit_identical_to_cpu_adamw() {
    bit_identical_to_cpu(&burn_owned(), false, 8);
}

#[test]
fn ours_loss_falls() {
    loss_falls(ours());
}

#[test]
fn burn_owned_loss_falls() {
    loss_falls(&burn_owned());
}

/// (b): `steps` steps of Burn's own AdamW (on a deep copy) and of ours, fed the same
/// gradients (computed on our model, so that only the optimizers differ), at equal settings.
/// Returns the largest difference and the largest tolerance, after asserting each element
/// against its tolerance.
///
/// Burn's AdamW is PyTorch's formula — decoupled decay `p *= 1 - lr*wd`, then
/// `p -= lr * m̂ / (sqrt(v̂) + eps)` with bias-corrected moments — rounded differently: it
/// keeps the betas in f32 and computes the bias corrections `1 - beta^t` as f32 `powi` and
/// a subtraction, which cancels (`1 - 0.999^t` keeps few bits for small `t`); our kernel
/// takes `1 - beta` from f64 and computes `-expm1(t ln beta)`. The bound per element:
///
/// `sum_t lr * U_t * (rho1_t + rho2_t / 2 + 16 * 2^-24) + 2 * steps * ulp(p)`
///
/// where `rho_t` is the relative error of Burn's f32 bias correction against the exact one
/// (computed below, step by step), halved for `v̂` under the square root; `U_t` bounds
/// `|m̂ / sqrt(v̂)|` (Cauchy–Schwarz over the moments' weights, `sqrt(sum w1^2 / w2)`, 1 at
/// the first step); 16 f32 ulps cover the rounding of the rest of one update, and 2 ulps
/// of the parameter per step the decay's and the subtraction's rounding.
fn against_burn_adamw(shared: &SharedDevice, (b1, b2): (f64, f64), steps: u32) -> (f32, f32) {
    let device = shared.device();
    let (lr, wd, eps) = (1e-2, 1e-2, 1e-8);
    let model = Net::new(device);
    let batch = data(device);
    let config = AdamWConfig::default()
        .with_lr(lr)
        .with_weight_decay(wd)
        .with_eps(eps)
        .with_betas(b1, b2);
    let mut opt = BurnAdamW::new(shared, &model, config).expect("optimizer");
    let ids: Vec<ParamId> = opt.params().iter().map(|p| p.id).collect();
    let mut reference = model.clone().map(&mut DeepCopy);
    let mut burn_opt = burn::optim::AdamWConfig::new()
        .with_beta_1(b1 as f32)
        .with_beta_2(b2 as f32)
        .with_epsilon(eps as f32)
        .with_weight_decay(wd as f32)
        .init();
    let before = ordered(&read(&model, None), &ids);
    assert_eq!(before, ordered(&read(&reference, None), &ids), "same start");
    for _ in 0..steps {
        let grads = GradientsParams::from_grads(loss(&model, &batch).backward(), &model);
        let mut copy = CopyGrads {
            from: &grads,
            to: GradientsParams::new(),
        };
        model.visit(&mut copy);
        reference = burn_opt.step(lr, reference, copy.to);
        opt.step(&model, grads).expect("step");
    }

    // The bound's update part, summed over the steps.
    let mut update_bound = 0f64;
    for t in 1..=steps as i32 {
        let rho = |beta: f64| {
            let burn = f64::from(1f32 - (beta as f32).powi(t));
            let exact = -(f64::from(t) * beta.ln()).exp_m1();
            (burn / exact - 1.0).abs()
        };
        let u: f64 = (1..=t)
            .map(|i| {
                let w1 = (1.0 - b1) * b1.powi(t - i) / (1.0 - b1.powi(t));
                let w2 = (1.0 - b2) * b2.powi(t - i) / (1.0 - b2.powi(t));
                w1 * w1 / w2
            })
            .sum::<f64>()
            .sqrt();
        update_bound += lr * u * (rho(b1) + rho(b2) / 2.0 + 16.0 * 2f64.powi(-24));
    }

    let ours_p = ordered(&read(&model, None), &ids);
    let burn_p = ordered(&read(&reference, None), &ids);
    let (mut max_diff, mut max_tolerance, mut max_move) = (0f32, 0f32, 0f32);
    for ((o, b), s) in ours_p.iter().zip(&burn_p).zip(&before) {
        for ((&o, &b), &s) in o.iter().zip(b).zip(s) {
            let ulp = f32::EPSILON * b.abs().max(o.abs());
            let tolerance = update_bound as f32 + 2.0 * steps as f32 * ulp;
            let diff = (o - b).abs();
            assert!(
                diff <= tolerance,
                "ours {o} vs Burn {b}: {diff:e} > {tolerance:e}"
            );
            max_diff = max_diff.max(diff);
            max_tolerance = max_tolerance.max(tolerance);
            max_move = max_move.max((o - s).abs());
        }
    }
    println!(
        "(b) betas ({b1}, {b2}), {steps} steps vs Burn's AdamW: max |ours - Burn| = \
         {max_diff:e} (bound {max_tolerance:e}; largest move {max_move:e})"
    );
    (max_diff, max_tolerance)
}

/// (b) at PyTorch's defaults (betas 0.9, 0.999, eps 1e-8 in both).
#[test]
fn matches_burn_adamw() {
    against_burn_adamw(ours(), (0.9, 0.999), 20);
}

/// (b) with betas whose powers f32 holds exactly (0.5^t, 0.75^t for t <= 15): Burn's bias
/// corrections are then exact too, and the two agree to the rounding of one update.
#[test]
fn matches_burn_adamw_with_exact_betas() {
    let (diff, _) = against_burn_adamw(ours(), (0.5, 0.75), 12);
    // A few ulps of a parameter of magnitude 1: the moments, bias corrections and update
    // round alike but in other orders.
    assert!(diff <= 4.0 * f32::EPSILON, "{diff:e}");
}

#[test]
fn missing_gradient_is_an_error_or_zero() {
    let shared = ours();
    let device = shared.device();
    let model = WithUnused {
        net: Net::new(device),
        unused: LinearConfig::new(3, 3).init(device),
    };
    let batch = data(device);
    let config = AdamWConfig::default().with_weight_decay(0.5);
    let mut opt = BurnAdamW::new(shared, &model, config.clone()).expect("optimizer");
    let grads = GradientsParams::from_grads(loss(&model.net, &batch).backward(), &model);
    let before = read(&model, None);
    match opt.step(&model, grads) {
        Err(Error::MissingGradient { path }) => assert_eq!(path, "unused.weight"),
        other => panic!("expected a missing gradient, got {other:?}"),
    }
    assert_eq!(read(&model, None), before, "nothing changed");
    assert_eq!(opt.steps(), 0);

    let mut opt = BurnAdamW::new(shared, &model, config)
        .expect("optimizer")
        .with_missing_grad(MissingGrad::Zero);
    let grads = GradientsParams::from_grads(loss(&model.net, &batch).backward(), &model);
    opt.step(&model, grads).expect("step with zero gradients");
    let after = read(&model, None);
    // A zero gradient at the first step: m = v = 0, so only the decay moves the weights.
    let w = model.unused.weight.id;
    for (a, b) in after[&w].iter().zip(&before[&w]) {
        let expected = b * (1.0 - 1e-3 * 0.5);
        assert!(
            (a - expected).abs() <= 1e-6 * b.abs(),
            "decayed only: {a} vs {expected}"
        );
    }
}

#[test]
fn frozen_parameters_are_left_alone() {
    let shared = ours();
    let device = shared.device();
    let net = Net::new(device);
    let net = Net {
        a: net.a.no_grad(),
        ..net
    };
    let batch = data(device);
    let mut opt = BurnAdamW::new(shared, &net, AdamWConfig::default()).expect("optimizer");
    let paths: Vec<String> = opt.params().iter().map(|p| p.path.clone()).collect();
    assert_eq!(paths, ["b.weight", "b.bias"]);
    let before = read(&net, None);
    for _ in 0..3 {
        let grads = GradientsParams::from_grads(loss(&net, &batch).backward(), &net);
        opt.step(&net, grads).expect("step");
    }
    let after = read(&net, None);
    assert_eq!(after[&net.a.weight.id], before[&net.a.weight.id]);
    assert_ne!(after[&net.b.weight.id], before[&net.b.weight.id]);
}

/// A layer the module holds twice: one set of parameters, updated once per step.
#[derive(Module, Debug)]
struct Tied {
    first: Linear,
    again: Linear,
}

#[test]
fn tied_parameters_are_one_tensor() {
    let shared = ours();
    let device = shared.device();
    let layer = LinearConfig::new(4, 4).init(device);
    let tied = Tied {
        first: layer.clone(),
        again: layer,
    };
    let x = data(device).0;
    let loss = |m: &Tied| {
        m.again
            .forward(m.first.forward(x.clone()))
            .powi_scalar(2)
            .mean()
    };
    let config = AdamWConfig::default().with_lr(1e-2);
    let opt = BurnAdamW::new(shared, &tied, config.clone()).expect("optimizer");
    let paths: Vec<String> = opt.params().iter().map(|p| p.path.clone()).collect();
    assert_eq!(paths, ["first.weight", "first.bias"]);
    let elements = twin_check(&tied, loss, opt, config, &[GroupConfig::default()], 3);
    assert_eq!(elements, 20);
}

#[test]
fn another_module_is_refused() {
    let shared = ours();
    let device = shared.device();
    let (one, other) = (Net::new(device), Net::new(device));
    let batch = data(device);
    let mut opt = BurnAdamW::new(shared, &one, AdamWConfig::default()).expect("optimizer");
    let grads = GradientsParams::from_grads(loss(&other, &batch).backward(), &other);
    assert!(matches!(
        opt.step(&other, grads),
        Err(Error::ModuleChanged(_))
    ));
    // The same parameters in new allocations (a reloaded record, say).
    let copy = one.clone().map(&mut DeepCopy);
    let grads = GradientsParams::from_grads(loss(&copy, &batch).backward(), &copy);
    assert!(matches!(
        opt.step(&copy, grads),
        Err(Error::ModuleChanged(_))
    ));
    assert_eq!(opt.steps(), 0);
}

/// The optimizer can move to a training thread.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<BurnAdamW>();
    send::<SharedDevice>();
};

#[test]
fn bad_setups_are_errors() {
    let shared = ours();
    // A module without autodiff has nothing to train.
    let plain = Net::new(&shared.device().clone().inner());
    assert!(matches!(
        BurnAdamW::new(shared, &plain, AdamWConfig::default()),
        Err(Error::NoParameters)
    ));
    // A group index out of range.
    let net = Net::new(shared.device());
    assert!(matches!(
        BurnAdamW::with_groups(shared, &net, AdamWConfig::default(), vec![], |_| 0),
        Err(Error::InvalidArgument(_))
    ));
    // Burn's tensors are bound as f32.
    let bf16 = AdamWConfig::default().with_precision(Precision::pure(Dtype::Bf16));
    assert!(matches!(
        BurnAdamW::new(shared, &net, bf16),
        Err(Error::InvalidArgument(_))
    ));
    // A module on another device than the optimizer's.
    let elsewhere = Net::new(burn_owned().device());
    match BurnAdamW::new(shared, &elsewhere, AdamWConfig::default()) {
        Err(Error::Tensor { reason, .. }) => assert!(reason.contains("shared device"), "{reason}"),
        other => panic!("expected a device error, got {other:?}"),
    }
    // Bad hyperparameters are the optimizer's typed errors.
    assert!(matches!(
        BurnAdamW::new(shared, &net, AdamWConfig::default().with_lr(-1.0)),
        Err(Error::Optimizer(_))
    ));
    // A device without the adapter's features cannot host CubeCL.
    let ctx = GpuContext::new().expect(NO_ADAPTER);
    let extra = ctx.adapter.features()
        - burn::tensor::wgpu::wgpu::Features::MAPPABLE_PRIMARY_BUFFERS
        - burn::tensor::wgpu::wgpu::Features::TIMESTAMP_QUERY;
    if !extra.is_empty() {
        assert!(matches!(
            SharedDevice::from_context(ctx),
            Err(Error::MissingFeatures(_))
        ));
    }
}
