//! The demo's WGSL forward/backward against the plain-Rust CPU implementation (f64), over a
//! few optimizer steps on the demo's task (label-noised spirals), each on its own shuffled
//! minibatch; the held-out and whole-training-set evaluations; and the optimizer's update
//! of the demo's arena against `CpuAdamW`.
//!
//! Tolerances: the loss within 1e-5 relative; each gradient tensor within 1e-4 of the
//! tensor's largest CPU gradient (f32 sums over ~130 samples against f64 ones); the
//! parameters after each update within 1e-6 absolute of `CpuAdamW` fed the same gradients.

mod common;

use wgpu_adamw::Schedule;
use wgpu_adamw_demo::cpu::{forward_backward, CpuTrainer};
use wgpu_adamw_demo::gpu::GpuMlp;
use wgpu_adamw_demo::DemoOptions;

const LOSS_TOL: f64 = 1e-5;
const GRAD_TOL: f64 = 1e-4;
const PARAM_TOL: f32 = 1e-6;

#[test]
fn gpu_forward_backward_and_update_match_cpu() {
    let ctx = common::gpu();
    // Minibatches of 130 samples (not a multiple of 4: the tiles' edges) from 200 training
    // points; 64-unit hidden layers use the tiled kernels, the thin first and last layers
    // the plain ones.
    let opts = DemoOptions {
        per_class: 100,
        test_per_class: 33,
        batch: 130,
        steps: 5,
        ..Default::default()
    };
    let mlp = opts.mlp();
    let (train, test) = (opts.train_set(), opts.test_set());
    let init = mlp.init_params(7);
    let config = opts.adamw(Schedule::warmup_cosine(2, 10, 0.5));
    let mut gpu = GpuMlp::new(
        &ctx.device,
        &ctx.queue,
        mlp,
        opts.batch,
        &[&test, &train],
        &init,
        config.clone(),
    )
    .unwrap();
    let indices = opts.batch_indices(3);
    let batches = train.select(&indices);
    gpu.upload_batches(&batches.x, &batches.y).unwrap();
    let mut cpu_opt = CpuTrainer::new(mlp, init.clone(), config).unwrap();

    let (mut worst_loss, mut worst_grad, mut worst_param) = (0.0f64, 0.0f64, 0.0f32);
    for step in 1..=5 {
        let params = gpu.read_params().unwrap();
        let b = opts.batch;
        let minibatch = train.select(&indices[(step - 1) * b..step * b]);
        let reference = forward_backward(&mlp, &params, &minibatch);
        // The evaluation passes over the held-out and the whole training set.
        for (set, data) in [&test, &train].into_iter().enumerate() {
            let (loss, acc) = gpu.evaluate(set).unwrap();
            let want = forward_backward(&mlp, &params, data);
            assert!(
                (f64::from(loss) - want.loss).abs() <= LOSS_TOL * want.loss,
                "step {step}: eval set {set}: loss {loss} vs CPU {}",
                want.loss
            );
            assert!((f64::from(acc) - want.accuracy).abs() < 1e-6);
        }

        let mut encoder = gpu.encoder();
        gpu.encode_train_step(&mut encoder, step as u32 - 1)
            .unwrap();
        gpu.submit(encoder);
        let (loss, accuracy) = gpu.read_stats().unwrap();
        let grads = gpu.read_grads().unwrap();

        let loss_err = (f64::from(loss) - reference.loss).abs() / reference.loss;
        worst_loss = worst_loss.max(loss_err);
        assert!(
            loss_err <= LOSS_TOL,
            "step {step}: GPU loss {loss}, CPU loss {}",
            reference.loss
        );
        assert!((f64::from(accuracy) - reference.accuracy).abs() < 1e-6);

        for (name, tensors) in ["weights", "biases"].iter().zip(mlp.tensors()) {
            for (t, &(off, len)) in tensors.iter().enumerate() {
                let want = &reference.grads[off..off + len];
                let got = &grads[off..off + len];
                let scale = want.iter().fold(0.0f64, |m, g| m.max(g.abs()));
                assert!(
                    scale > 0.0,
                    "step {step}: {name} {t} has an all-zero gradient"
                );
                for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
                    let err = (f64::from(g) - w).abs() / scale;
                    worst_grad = worst_grad.max(err);
                    assert!(
                        err <= GRAD_TOL,
                        "step {step}: {name} {t}[{k}]: GPU {g}, CPU {w} (scale {scale})"
                    );
                }
            }
        }

        // The same update on the CPU, from the same parameters and gradients.
        cpu_opt.params = params.clone();
        cpu_opt.apply(&grads).unwrap();
        let updated = gpu.read_params().unwrap();
        for (k, (&g, &c)) in updated.iter().zip(&cpu_opt.params).enumerate() {
            let err = (g - c).abs();
            worst_param = worst_param.max(err);
            assert!(err <= PARAM_TOL, "step {step}: param {k}: GPU {g}, CPU {c}");
        }
        // Step 1 is the first warmup step, whose lr is 0.
        assert_eq!(
            updated == params,
            step == 1,
            "step {step}: parameters moved?"
        );
    }
    eprintln!(
        "worst relative loss error {worst_loss:.2e} (tol {LOSS_TOL:e}), worst gradient error \
         {worst_grad:.2e} of the tensor's max (tol {GRAD_TOL:e}), worst parameter error \
         {worst_param:.2e} (tol {PARAM_TOL:e})"
    );
}
