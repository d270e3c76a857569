//! AMP loss scaling and gradient clipping on the device.

mod common;

use common::{storage_buffer, Pair, Rng};
use wgpu_adamw::{AdamWConfig, GradNormOrder, Schedule};

const LENS: [usize; 4] = [3000, 7, 1024, 513];

struct Setup {
    pair: Pair,
    rng: Rng,
}

impl std::ops::Deref for Setup {
    type Target = Pair;
    fn deref(&self) -> &Pair {
        &self.pair
    }
}

impl std::ops::DerefMut for Setup {
    fn deref_mut(&mut self) -> &mut Pair {
        &mut self.pair
    }
}

fn setup(config: AdamWConfig, seed: u64) -> Setup {
    let mut rng = Rng(seed);
    Setup {
        pair: Pair::new(config, &LENS, &mut rng),
        rng,
    }
}

impl Setup {
    /// One step on both backends with these (scaled) gradients.
    fn step(&mut self, grads: &[Vec<f32>], scale: f32) {
        self.opt.set_loss_scale(scale);
        self.cpu.set_loss_scale(scale);
        self.pair.step(grads).unwrap();
    }

    fn grads(&mut self, scale: f32) -> Vec<Vec<f32>> {
        LENS.iter()
            .map(|&n| self.rng.grads(n).iter().map(|x| x * scale).collect())
            .collect()
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn non_finite_gradients_skip_the_step_and_change_nothing() {
    let config = AdamWConfig::default()
        .with_loss_scaling(true)
        .with_max_grad_norm(Some(1.0))
        .with_amsgrad(true)
        .with_schedule(Schedule::cosine(10, 0.0));
    let mut s = setup(config, 3);
    for _ in 0..3 {
        let g = s.grads(1024.0);
        s.step(&g, 1024.0);
    }
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let params = s.gpu_params();
        let state = s.opt.state().unwrap();
        let cpu_state = s.cpu.state();
        let cpu_params = s.host.clone();
        let lr_before = s.opt.read_lr().unwrap();
        let mut g = s.grads(1024.0);
        g[2][100] = bad;
        s.step(&g, 1024.0);
        assert!(
            s.opt.read_found_inf().unwrap() && s.opt.read_skipped().unwrap(),
            "{bad}"
        );
        assert_eq!(
            bits(&s.gpu_params()),
            bits(&params),
            "GPU params changed on a skipped step ({bad})"
        );
        let after = s.opt.state().unwrap();
        assert_eq!(
            after.tensors, state.tensors,
            "GPU moments changed on a skipped step ({bad})"
        );
        assert_eq!(after.counters.adam, state.counters.adam);
        assert_eq!(
            after.counters.sched,
            state.counters.sched + 1,
            "the schedule still advances"
        );
        assert_ne!(
            s.opt.read_lr().unwrap(),
            lr_before,
            "the lr of the skipped step is the next epoch's"
        );
        assert!(s.cpu.last_step().skipped);
        assert_eq!(s.host, cpu_params);
        assert_eq!(s.cpu.state().tensors, cpu_state.tensors);
        assert_eq!(s.cpu.counters().adam, cpu_state.counters.adam);
    }
    // A finite step afterwards updates again.
    let params = s.gpu_params();
    let g = s.grads(1024.0);
    s.step(&g, 1024.0);
    assert!(!s.opt.read_skipped().unwrap());
    assert_ne!(bits(&s.gpu_params()), bits(&params));
}

#[test]
fn clipping_matches_the_cpu_twin_and_an_f64_norm() {
    for order in [GradNormOrder::Compensated, GradNormOrder::TorchCpu] {
        let config = AdamWConfig::default()
            .with_loss_scaling(true)
            .with_max_grad_norm(Some(0.5))
            .with_grad_norm_order(order);
        let mut s = setup(config, 8);
        for i in 0..6 {
            let scale = [1.0f32, 65536.0, 3.0][i % 3];
            let g = s.grads(scale);
            s.step(&g, scale);
            let want: f64 = g
                .iter()
                .flatten()
                .map(|&x| (f64::from(x) / f64::from(scale)).powi(2))
                .sum::<f64>()
                .sqrt();
            let gpu = s.opt.read_grad_norm().unwrap();
            let cpu = s.cpu.last_step().grad_norm;
            assert!(
                (f64::from(gpu) - want).abs() <= 1e-6 * want,
                "{order:?}: gpu norm {gpu} vs f64 {want}"
            );
            assert!(
                (gpu - cpu).abs() <= 3e-7 * cpu,
                "{order:?}: device norm {gpu}, twin {cpu}"
            );
            assert!(s.cpu.last_step().clip_coef < 1.0);
        }
        let gpu = s.gpu_params();
        for (x, y) in gpu.iter().zip(s.host.concat()) {
            assert!(
                (x - y).abs() <= 4e-6 * y.abs() + 1e-30,
                "{order:?}: {x} vs {y}"
            );
        }
    }
}

#[test]
fn the_loss_scale_can_be_written_on_the_device() {
    // An engine's scaler writes the scale into the optimizer's buffer inside the same command
    // encoder; the step uses it without any host write.
    let config = AdamWConfig::default().with_loss_scaling(true);
    let mut a = setup(config.clone(), 21);
    let mut b = setup(config, 21);
    let g = a.grads(256.0);
    b.rng = Rng(0);
    let flat: Vec<f32> = g.concat();
    for s in [&a, &b] {
        s.ctx
            .queue
            .write_buffer(&s.g, 0, bytemuck::cast_slice(&flat));
    }
    a.opt.set_loss_scale(256.0);
    a.opt.step().unwrap();
    let scale = storage_buffer(&b.ctx.device, &b.ctx.queue, &[256.0]);
    let mut encoder = b.ctx.device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(&scale, 0, b.opt.amp_buffer(), 0, 4);
    b.opt.encode_step(&mut encoder);
    b.ctx.queue.submit([encoder.finish()]);
    assert_eq!(b.opt.read_loss_scale().unwrap(), 256.0);
    assert_eq!(bits(&a.gpu_params()), bits(&b.gpu_params()));
}
