//! End to end: a short run of the demo under all four schedules, checked against values
//! computed on the CPU.

mod common;

use wgpu_adamw::schedule::lr_at_step;
use wgpu_adamw_demo::cpu::forward_backward;
use wgpu_adamw_demo::{run_with_context, schedules, DemoOptions};

#[test]
fn loss_falls_and_outputs_are_written() {
    let ctx = common::gpu();
    let out = std::env::temp_dir().join(format!("wgpu-adamw-demo-test-{}", std::process::id()));
    let opts = DemoOptions {
        out: out.clone(),
        steps: 60,
        log_every: 5,
        submit_every: 20,
        per_class: 48,
        progress: false,
        print_table: false,
        ..Default::default()
    };
    let report = run_with_context(&ctx, &opts).unwrap();

    // The first logged loss is the loss of the initial weights, computed on the CPU.
    let mlp = opts.mlp();
    let init = mlp.init_params(opts.seed ^ 0xA5A5_A5A5);
    let initial = forward_backward(&mlp, &init, &opts.dataset()).loss;
    assert_eq!(report.runs.len(), 6);
    for (run, (name, schedule)) in report.runs.iter().zip(schedules(opts.steps, opts.lr)) {
        assert_eq!(run.name, name);
        let first = run.log.first().unwrap();
        assert_eq!(first.step, 1);
        assert!(
            (f64::from(first.loss) - initial).abs() <= 1e-5 * initial,
            "{name}: first loss {} vs CPU {initial}",
            first.loss
        );
        // The loss falls: well below the initial loss after 60 steps.
        assert!(
            f64::from(run.final_loss) < 0.8 * initial,
            "{name}: loss {initial} -> {}",
            run.final_loss
        );
        // The lr read back from the device is the schedule's, at every logged step and in
        // the every-step lr log.
        for p in &run.log {
            let want = lr_at_step(&schedule, opts.lr, 1, u64::from(p.step));
            assert!(
                (f64::from(p.lr) - want).abs() <= 1e-6 * opts.lr,
                "{name} step {}: lr {} vs {want}",
                p.step,
                p.lr
            );
        }
        assert_eq!(run.lr.len(), opts.steps as usize);
        for (s, &lr) in (1u64..).zip(&run.lr) {
            let want = lr_at_step(&schedule, opts.lr, 1, s);
            assert!(
                (f64::from(lr) - want).abs() <= 1e-6 * opts.lr,
                "{name} step {s}: lr {lr} vs {want}"
            );
        }
        let steps: Vec<u32> = run.log.iter().map(|p| p.step).collect();
        assert_eq!(steps, wgpu_adamw_demo::logged_steps(60, 5));
    }

    let csv = std::fs::read_to_string(out.join("learning_curve.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("step,schedule,lr,loss"));
    assert_eq!(lines.count(), 6 * 13);
    let svg = std::fs::read_to_string(out.join("learning_curve.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("warm_restarts"));
    std::fs::remove_dir_all(&out).unwrap();
}

/// `--schedule` arguments: `NAME=JSON` or a bare JSON named by its kind; bad ones are errors.
#[test]
fn schedule_arguments_name_any_schedule() {
    let (name, s) =
        wgpu_adamw_demo::parse_schedule_arg(r#"slow={"kind":"exponential","gamma":0.995}"#)
            .unwrap();
    assert_eq!(name, "slow");
    assert_eq!(s.kind(), "exponential");
    let (name, _) =
        wgpu_adamw_demo::parse_schedule_arg(r#"{"kind":"warmup_constant","warmup_steps":5}"#)
            .unwrap();
    assert_eq!(name, "warmup_constant");
    assert!(wgpu_adamw_demo::parse_schedule_arg(r#"x={"kind":"nope"}"#).is_err());
    assert!(wgpu_adamw_demo::parse_schedule_arg("not json").is_err());
}
