//! The kernel's f32 schedule code (on the device and in its CPU twin) against the f64 closed
//! forms, over ordinary and extreme step counts (beyond 2^24, up to 2^32 - 1).

mod common;

use wgpu_adamw::schedule::lr_at_step;
use wgpu_adamw::{schedule_lrs_cpu, schedule_lrs_gpu, AdamWConfig, Schedule};

fn schedules() -> Vec<Schedule> {
    vec![
        Schedule::default(),
        Schedule::cosine(60, 0.0),
        Schedule::cosine(1, 1e-5),
        Schedule::cosine(1_000_003, 1e-6),
        Schedule::cosine(3_000_000_000, 0.0),
        Schedule::cosine_warm_restarts(5, 2, 1e-4),
        Schedule::cosine_warm_restarts(7, 1, 0.0),
        Schedule::cosine_warm_restarts(1, 3, 0.0),
        // T_i overflows u32 within the step range: T_i = 2^31 * 2.
        Schedule::cosine_warm_restarts(1 << 31, 2, 0.0),
        Schedule::cosine_warm_restarts(3_000_000_000, 7, 1e-6),
        Schedule::warmup_cosine(4, 30, 0.5),
        Schedule::warmup_cosine(0, 100_000, 1.5),
        Schedule::warmup_cosine(2000, 2000, 0.5),
        Schedule::warmup_cosine(10, 4_000_000_000, 3.0),
        Schedule::warmup_cosine(3, 1000, 0.3),
    ]
}

fn steps() -> Vec<u32> {
    let mut s: Vec<u32> = (1..=200).collect();
    for base in [
        1u64 << 24,
        1 << 31,
        3_000_000_000,
        4_000_000_000,
        (1 << 32) - 1,
    ] {
        for d in [0u64, 1, 2, 3, 59, 60, 61, 1_000_003] {
            for x in [base.saturating_sub(d), base + d] {
                if (1..1 << 32).contains(&x) {
                    s.push(x as u32);
                }
            }
        }
    }
    s.extend([
        1_000_004,
        2_000_007,
        3_000_000_001,
        6_000_000_u32,
        2_147_483_649,
        4_294_967_295,
    ]);
    s.sort_unstable();
    s.dedup();
    s
}

/// Steps to check for a schedule. When `2 * num_cycles` is not a dyadic rational, the kernel
/// holds it to 32 fractional bits, so the phase drifts by up to 2^-32 per period of the decay:
/// checked up to 1000 periods past `total_steps`.
fn steps_for(schedule: &Schedule) -> Vec<u32> {
    let inexact = |c: f64, n: u32| ((c * 1024.0).fract() != 0.0).then_some(n);
    let limit = match schedule {
        Schedule::WarmupCosine(w) => inexact(w.num_cycles, w.total_steps),
        Schedule::WarmupCosineMinLr(w) => inexact(w.num_cycles, w.total_steps),
        Schedule::WarmupCosineHardRestarts(w) => inexact(w.num_cycles, w.total_steps),
        Schedule::Wsd(w) => inexact(w.num_cycles, w.decay_steps),
        _ => None,
    };
    match limit {
        Some(n) => steps()
            .into_iter()
            .filter(|&s| u64::from(s) <= 1000 * u64::from(n))
            .collect(),
        None => steps(),
    }
}

fn check(label: &str, lrs: &[f32], config: &AdamWConfig, base: f64, steps: &[u32]) {
    for (&s, &got) in steps.iter().zip(lrs) {
        let want = lr_at_step(&config.schedule, base, config.steps_per_epoch, u64::from(s));
        let tol = 1e-6 * want.abs() + 1e-9 * base;
        assert!(
            (f64::from(got) - want).abs() <= tol,
            "{label} {:?} K={} step {s}: got {got:e}, f64 closed form {want:e}",
            config.schedule,
            config.steps_per_epoch
        );
    }
}

#[test]
fn cpu_twin_schedule_matches_f64_closed_forms() {
    for schedule in schedules() {
        let steps = steps_for(&schedule);
        for k in [1, 3] {
            let config = AdamWConfig::default()
                .with_schedule(schedule.clone())
                .with_steps_per_epoch(k);
            for base in [1e-3, 0.37] {
                let lrs = schedule_lrs_cpu(&config, base, &steps).unwrap();
                check("cpu", &lrs, &config, base, &steps);
            }
        }
    }
}

#[test]
fn device_schedule_matches_f64_closed_forms() {
    let ctx = common::gpu();
    for schedule in schedules() {
        let steps = steps_for(&schedule);
        for k in [1, 3] {
            let config = AdamWConfig::default()
                .with_schedule(schedule.clone())
                .with_steps_per_epoch(k);
            let lrs = schedule_lrs_gpu(&ctx.device, &ctx.queue, &config, 1e-3, &steps).unwrap();
            check("gpu", &lrs, &config, 1e-3, &steps);
            // Device and twin agree to a few ulp (WGSL's division may round differently).
            for (g, c) in lrs
                .iter()
                .zip(schedule_lrs_cpu(&config, 1e-3, &steps).unwrap())
            {
                assert!(
                    (g - c).abs() <= 1e-6 * c.abs() + 1e-15,
                    "{schedule:?}: device {g:e}, twin {c:e}"
                );
            }
        }
    }
}

/// CosineAnnealingLR, CosineAnnealingWarmRestarts and the warmup recipe, checked at a few
/// values worked out by hand from PyTorch's definitions.
#[test]
fn closed_forms_hit_known_values() {
    let c = Schedule::cosine(10, 0.1);
    assert_eq!(lr_at_step(&c, 1.0, 1, 1), 1.0);
    assert!((lr_at_step(&c, 1.0, 1, 11) - 0.1).abs() < 1e-15); // the trough at epoch T
    assert!((lr_at_step(&c, 1.0, 1, 21) - 1.0).abs() < 1e-15); // back to base at 2T
    let w = Schedule::cosine_warm_restarts(2, 2, 0.0);
    // cycles: epochs 0-1 (T=2), 2-5 (T=4), 6-13 (T=8): restarts at epochs 2 and 6.
    assert_eq!(lr_at_step(&w, 1.0, 1, 3), 1.0);
    assert_eq!(lr_at_step(&w, 1.0, 1, 7), 1.0);
    assert!((lr_at_step(&w, 1.0, 1, 5) - 0.5).abs() < 1e-15); // T_cur = 2 of 4
    let u = Schedule::warmup_cosine(4, 8, 0.5);
    assert_eq!(lr_at_step(&u, 1.0, 1, 1), 0.0);
    assert_eq!(lr_at_step(&u, 1.0, 1, 3), 0.5);
    assert!((lr_at_step(&u, 1.0, 1, 7) - 0.5).abs() < 1e-15); // halfway through the decay
    assert_eq!(lr_at_step(&u, 1.0, 3, 7), 0.5); // epoch 2 with 3 steps per epoch
}
