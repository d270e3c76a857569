//! Every schedule kind of SCHEDULES.md, on the device and in the CPU twin, against its f64
//! closed form at ordinary and extreme epochs (2^24, 2^31, 2^32 - 1 and around them), with
//! the lr tolerance of the trace format; device and twin bit for bit.

mod common;

use wgpu_adamw::schedule::{epoch_of_step, GroupCtx};
use wgpu_adamw::{
    schedule_beta1_cpu, schedule_beta1_gpu, schedule_lrs_cpu, schedule_lrs_gpu, AdamWConfig,
    Schedule,
};

const KINDS: &[&str] = &[
    r#"{"kind":"constant_factor","factor":0.25,"total_iters":12}"#,
    r#"{"kind":"constant_factor","factor":0.3333333,"total_iters":3000000000}"#,
    r#"{"kind":"linear","start_factor":0.05,"end_factor":1.0,"total_iters":20}"#,
    r#"{"kind":"linear","start_factor":1.0,"end_factor":0.0,"total_iters":40}"#,
    r#"{"kind":"linear","start_factor":0.5,"end_factor":0.0,"total_iters":4000000000}"#,
    r#"{"kind":"exponential","gamma":0.97}"#,
    r#"{"kind":"exponential","gamma":0.9999999}"#,
    r#"{"kind":"exponential","gamma":1.0}"#,
    r#"{"kind":"step","step_size":7,"gamma":0.5}"#,
    r#"{"kind":"step","step_size":1000000,"gamma":0.999}"#,
    r#"{"kind":"multistep","milestones":[50,15,35,35],"gamma":0.3}"#,
    r#"{"kind":"multistep","milestones":[1,2000000000,4294967295],"gamma":0.5}"#,
    r#"{"kind":"polynomial","total_iters":40,"power":0.5}"#,
    r#"{"kind":"polynomial","total_iters":4000000000,"power":2.0}"#,
    r#"{"kind":"polynomial","total_iters":100,"power":7.5}"#,
    r#"{"kind":"onecycle","max_lr":0.01,"total_steps":100,"pct_start":0.3,"anneal_strategy":"cos","div_factor":25.0,"final_div_factor":10000.0,"three_phase":false,"cycle_momentum":true,"base_momentum":0.85,"max_momentum":0.95}"#,
    r#"{"kind":"onecycle","max_lr":0.003,"total_steps":4000000000,"pct_start":0.25,"anneal_strategy":"linear","div_factor":10.0,"final_div_factor":100.0,"three_phase":true,"cycle_momentum":true,"base_momentum":0.8,"max_momentum":0.9}"#,
    r#"{"kind":"onecycle","max_lr":0.02,"total_steps":37,"pct_start":0.41,"anneal_strategy":"linear","div_factor":25.0,"final_div_factor":10000.0,"three_phase":false,"cycle_momentum":false,"base_momentum":0.85,"max_momentum":0.95}"#,
    r#"{"kind":"cyclic","base_lr":0.0001,"max_lr":0.001,"step_size_up":10,"step_size_down":15,"mode":"triangular","gamma":1.0,"cycle_momentum":true,"base_momentum":0.8,"max_momentum":0.9}"#,
    r#"{"kind":"cyclic","base_lr":0.0001,"max_lr":0.002,"step_size_up":8,"step_size_down":null,"mode":"triangular2","gamma":1.0,"cycle_momentum":true,"base_momentum":0.8,"max_momentum":0.9}"#,
    r#"{"kind":"cyclic","base_lr":0.00001,"max_lr":0.001,"step_size_up":1000,"step_size_down":3000,"mode":"exp_range","gamma":0.99999,"cycle_momentum":false,"base_momentum":0.8,"max_momentum":0.9}"#,
    r#"{"kind":"cyclic","base_lr":0.0,"max_lr":0.001,"step_size_up":2000000000,"step_size_down":2000000000,"mode":"triangular","gamma":1.0,"cycle_momentum":true,"base_momentum":0.0,"max_momentum":0.99}"#,
    r#"{"kind":"sequential","schedules":[{"kind":"linear","start_factor":0.1,"end_factor":1.0,"total_iters":5},{"kind":"cosine","t_max":100,"eta_min":0.0}],"milestones":[5]}"#,
    r#"{"kind":"sequential","schedules":[{"kind":"constant_factor","factor":0.5,"total_iters":3},{"kind":"exponential","gamma":0.999},{"kind":"cyclic","base_lr":0.0001,"max_lr":0.001,"step_size_up":10,"step_size_down":null,"mode":"triangular","gamma":1.0,"cycle_momentum":false,"base_momentum":0.8,"max_momentum":0.9}],"milestones":[10,3000000000]}"#,
    r#"{"kind":"sequential","schedules":[{"kind":"warmup_constant","warmup_steps":4},{"kind":"multistep","milestones":[3,9],"gamma":0.1},{"kind":"wsd","warmup_steps":2,"stable_steps":5,"decay_steps":7,"warmup_type":"linear","decay_type":"linear","min_lr_ratio":0.1,"num_cycles":0.5}],"milestones":[8,30]}"#,
    r#"{"kind":"chained","schedules":[{"kind":"constant_factor","factor":0.5,"total_iters":10},{"kind":"exponential","gamma":0.99}]}"#,
    r#"{"kind":"chained","schedules":[{"kind":"linear","start_factor":0.2,"end_factor":1.0,"total_iters":30},{"kind":"step","step_size":13,"gamma":0.7},{"kind":"multistep","milestones":[20,60],"gamma":0.5},{"kind":"polynomial","total_iters":150,"power":1.5}]}"#,
    r#"{"kind":"warmup_linear","warmup_steps":10,"total_steps":100}"#,
    r#"{"kind":"warmup_linear","warmup_steps":0,"total_steps":4000000000}"#,
    r#"{"kind":"warmup_constant","warmup_steps":100}"#,
    r#"{"kind":"warmup_constant","warmup_steps":0}"#,
    r#"{"kind":"warmup_cosine_hard_restarts","warmup_steps":5,"total_steps":100,"num_cycles":3.0}"#,
    r#"{"kind":"warmup_cosine_hard_restarts","warmup_steps":0,"total_steps":4000000000,"num_cycles":2.5}"#,
    r#"{"kind":"warmup_polynomial","warmup_steps":10,"total_steps":100,"lr_end":1e-7,"power":2.0}"#,
    r#"{"kind":"warmup_polynomial","warmup_steps":0,"total_steps":4000000000,"lr_end":0.0,"power":0.5}"#,
    r#"{"kind":"inverse_sqrt","warmup_steps":10,"timescale":null}"#,
    r#"{"kind":"inverse_sqrt","warmup_steps":0,"timescale":null}"#,
    r#"{"kind":"inverse_sqrt","warmup_steps":100,"timescale":7}"#,
    r#"{"kind":"wsd","warmup_steps":10,"stable_steps":20,"decay_steps":30,"warmup_type":"cosine","decay_type":"1-sqrt","min_lr_ratio":0.1,"num_cycles":0.5}"#,
    r#"{"kind":"wsd","warmup_steps":1000000000,"stable_steps":1000000000,"decay_steps":2000000000,"warmup_type":"1-sqrt","decay_type":"cosine","min_lr_ratio":0.0,"num_cycles":0.5}"#,
    r#"{"kind":"wsd","warmup_steps":7,"stable_steps":0,"decay_steps":11,"warmup_type":"linear","decay_type":"linear","min_lr_ratio":0.25,"num_cycles":1.0}"#,
    r#"{"kind":"warmup_cosine_min_lr","warmup_steps":10,"total_steps":100,"num_cycles":0.5,"min_lr_rate":0.1}"#,
    r#"{"kind":"warmup_cosine_min_lr","warmup_steps":0,"total_steps":4000000000,"num_cycles":1.5,"min_lr_rate":0.05}"#,
];

fn steps() -> Vec<u32> {
    let mut s: Vec<u32> = (1..=300).collect();
    for base in [
        1u64 << 24,
        1 << 31,
        1_000_000_000,
        2_000_000_000,
        3_000_000_000,
        4_000_000_000,
        (1 << 32) - 1,
    ] {
        for d in [0u64, 1, 2, 3, 7, 999, 1000, 1001, 1_000_003] {
            for x in [base.saturating_sub(d), base + d] {
                if (1..1 << 32).contains(&x) {
                    s.push(x as u32);
                }
            }
        }
    }
    s.extend([16_385, 1_000_004, 6_000_000]);
    s.sort_unstable();
    s.dedup();
    s
}

fn configs() -> Vec<AdamWConfig> {
    let mut v = Vec::new();
    for json in KINDS {
        let schedule = Schedule::from_json(json).unwrap_or_else(|e| panic!("{json}: {e}"));
        for k in [1, 3] {
            v.push(
                AdamWConfig::default()
                    .with_schedule(schedule.clone())
                    .with_steps_per_epoch(k),
            );
        }
    }
    v
}

/// The format's lr bar: `1e-6 |lr| + 1e-9 max(lr)`, the max taken as the schedule's peak.
fn check(label: &str, got: &[f32], config: &AdamWConfig, base: f64, beta1: bool) {
    let g = GroupCtx {
        index: 0,
        base_lr: base,
        optimizer_lr: config.lr,
    };
    let peak = if beta1 {
        1.0
    } else {
        config.schedule.peak_lr(&g)
    };
    let mut worst = 0.0f64;
    for (&s, &x) in steps().iter().zip(got) {
        let k = epoch_of_step(u64::from(s), config.steps_per_epoch);
        let want = if beta1 {
            config.schedule.beta1(&g, k).unwrap()
        } else {
            config.schedule.lr(&g, k)
        };
        let tol = 1e-6 * want.abs() + 1e-9 * peak;
        let ratio = (f64::from(x) - want).abs() / tol;
        worst = worst.max(ratio);
        assert!(
            ratio <= 1.0,
            "{label} {} K={} step {s} (epoch {k}): got {x:e}, f64 {want:e} ({ratio:.2} of the tolerance)",
            config.schedule.to_json_value(),
            config.steps_per_epoch
        );
    }
    eprintln!(
        "{label} {} K={}: worst err/tol {worst:.3}",
        config.schedule.kind(),
        config.steps_per_epoch
    );
}

#[test]
fn every_kind_matches_its_f64_form_on_the_twin() {
    let steps = steps();
    for config in configs() {
        for base in [1e-3, 0.37] {
            let lrs = schedule_lrs_cpu(&config, base, &steps).unwrap();
            check("cpu", &lrs, &config, base, false);
        }
        if config.schedule.cycles_momentum() {
            let b1 = schedule_beta1_cpu(&config, &steps).unwrap();
            check("cpu beta1", &b1, &config, config.lr, true);
        }
    }
}

#[test]
fn every_kind_on_the_device_is_its_twin_bit_for_bit() {
    let ctx = common::gpu();
    let steps = steps();
    for config in configs() {
        let gpu = schedule_lrs_gpu(&ctx.device, &ctx.queue, &config, 1e-3, &steps).unwrap();
        let cpu = schedule_lrs_cpu(&config, 1e-3, &steps).unwrap();
        for ((s, g), c) in steps.iter().zip(&gpu).zip(&cpu) {
            assert_eq!(
                g.to_bits(),
                c.to_bits(),
                "{} step {s}: device {g:e}, twin {c:e}",
                config.schedule.to_json_value()
            );
        }
        check("gpu", &gpu, &config, 1e-3, false);
        if config.schedule.cycles_momentum() {
            let g1 = schedule_beta1_gpu(&ctx.device, &ctx.queue, &config, &steps).unwrap();
            let c1 = schedule_beta1_cpu(&config, &steps).unwrap();
            assert_eq!(
                g1.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                c1.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{} beta1",
                config.schedule.to_json_value()
            );
        }
    }
}

#[test]
fn json_round_trips_and_bad_fields_are_named() {
    for json in KINDS {
        let s = Schedule::from_json(json).unwrap();
        assert_eq!(Schedule::from_json_value(&s.to_json_value()).unwrap(), s);
    }
    let bad = [
        (
            r#"{"kind":"linear","start_factor":0.5,"end_factor":1.0}"#,
            "total_iters",
        ),
        (
            r#"{"kind":"linear","start_factor":0.5,"end_factor":1.0,"total_iters":3.0}"#,
            "total_iters",
        ),
        (r#"{"kind":"exponential","gamma":0.9,"extra":1}"#, "extra"),
        (r#"{"kind":"exponential","gamma":1.5}"#, "gamma"),
        (r#"{"kind":"step","step_size":0,"gamma":0.5}"#, "step_size"),
        (
            r#"{"kind":"constant_factor","factor":0.5,"total_iters":0}"#,
            "total_iters",
        ),
        (
            r#"{"kind":"polynomial","total_iters":10,"power":0.0}"#,
            "power",
        ),
        (
            r#"{"kind":"cyclic","base_lr":0.1,"max_lr":0.2,"step_size_up":3,"step_size_down":null,"mode":"sawtooth","gamma":1.0,"cycle_momentum":false,"base_momentum":0.8,"max_momentum":0.9}"#,
            "mode",
        ),
        (
            r#"{"kind":"onecycle","max_lr":0.01,"total_steps":3,"pct_start":0.3,"anneal_strategy":"cos","div_factor":25.0,"final_div_factor":10000.0,"three_phase":false,"cycle_momentum":true,"base_momentum":0.85,"max_momentum":0.95}"#,
            "pct_start",
        ),
        (
            r#"{"kind":"sequential","schedules":[{"kind":"exponential","gamma":0.9}],"milestones":[3]}"#,
            "milestones",
        ),
        (
            r#"{"kind":"sequential","schedules":[{"kind":"exponential","gamma":0.9},{"kind":"onecycle","max_lr":0.01,"total_steps":100,"pct_start":0.3,"anneal_strategy":"cos","div_factor":25.0,"final_div_factor":10000.0,"three_phase":false,"cycle_momentum":false,"base_momentum":0.85,"max_momentum":0.95}],"milestones":[3]}"#,
            "schedules",
        ),
        (
            r#"{"kind":"chained","schedules":[{"kind":"cosine","t_max":10,"eta_min":0.0}]}"#,
            "schedules",
        ),
        (
            r#"{"kind":"reduce_on_plateau","mode":"min","factor":1.0,"patience":2,"threshold":1e-4,"threshold_mode":"rel","cooldown":0,"min_lr":0.0,"eps":1e-8}"#,
            "factor",
        ),
        (
            r#"{"kind":"wsd","warmup_steps":1,"stable_steps":1,"decay_steps":1,"warmup_type":"linear","decay_type":"linear","min_lr_ratio":1.5,"num_cycles":0.5}"#,
            "min_lr_ratio",
        ),
    ];
    for (json, field) in bad {
        let e = Schedule::from_json(json).unwrap_err().to_string();
        assert!(e.contains(field), "{json}: {e}");
    }
    // Per-group lists must have one value per group.
    let s = Schedule::from_json(
        r#"{"kind":"cyclic","base_lr":[0.1,0.2],"max_lr":0.3,"step_size_up":3,"step_size_down":null,"mode":"triangular","gamma":1.0,"cycle_momentum":false,"base_momentum":0.8,"max_momentum":0.9}"#,
    )
    .unwrap();
    assert!(s.validate_groups(2).is_ok());
    assert!(s
        .validate_groups(3)
        .unwrap_err()
        .to_string()
        .contains("base_lr"));
}
