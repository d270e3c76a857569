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
        steps: 150,
        log_every: 10,
        submit_every: 50,
        per_class: 128,
        test_per_class: 64,
        seeds: 2,
        progress: false,
        print_table: false,
        ..Default::default()
    };
    let report = run_with_context(&ctx, &opts).unwrap();

    let mlp = opts.mlp();
    let train = opts.train_set();
    assert_eq!(report.runs.len(), 6);
    for (run, (name, schedule)) in report.runs.iter().zip(schedules(opts.steps, opts.lr)) {
        assert_eq!(run.name, name);
        assert_eq!(run.seeds.len(), 2);
        for seed in &run.seeds {
            // Step 1's minibatch loss is the initial weights' loss on that minibatch,
            // computed on the CPU.
            let first_batch = train.select(&opts.batch_indices(seed.seed)[..opts.batch]);
            let initial = forward_backward(&mlp, &opts.init(seed.seed), &first_batch).loss;
            let first = seed.log.first().unwrap();
            assert_eq!(first.step, 1);
            assert!(
                (f64::from(first.batch_loss) - initial).abs() <= 1e-5 * initial,
                "{name} seed {}: first loss {} vs CPU {initial}",
                seed.seed,
                first.batch_loss
            );
            // The loss falls under every schedule: the whole training set's loss ends well
            // below chance (ln 2 = 0.693), and the held-out accuracy well above it.
            let last = seed.last();
            assert!(
                f64::from(last.train_loss) < 0.6,
                "{name} seed {}: final training loss {}",
                seed.seed,
                last.train_loss
            );
            assert!(last.test_accuracy > 0.6, "{name}: {}", last.test_accuracy);
            // The lr read back from the device is the schedule's, at every step.
            assert_eq!(seed.lr.len(), opts.steps as usize);
            for (s, &lr) in (1u64..).zip(&seed.lr) {
                let want = lr_at_step(&schedule, opts.lr, 1, s);
                assert!(
                    (f64::from(lr) - want).abs() <= 1e-6 * opts.lr,
                    "{name} step {s}: lr {lr} vs {want}"
                );
            }
            for p in &seed.log {
                assert_eq!(p.lr, seed.lr[p.step as usize - 1]);
            }
            let steps: Vec<u32> = seed.log.iter().map(|p| p.step).collect();
            assert_eq!(steps, wgpu_adamw_demo::logged_steps(150, 10));
        }
        // Different seeds train differently (weights and minibatch order).
        assert_ne!(
            run.seeds[0].log[1].train_loss,
            run.seeds[1].log[1].train_loss
        );
    }

    let csv = std::fs::read_to_string(out.join("learning_curve.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("schedule,seed,step,lr,batch_loss,train_loss,train_accuracy,test_loss,test_accuracy")
    );
    assert_eq!(lines.count(), 6 * 2 * 16);
    let svg = std::fs::read_to_string(out.join("learning_curve.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("warm_restarts"));
    assert!(report.table().contains("onecycle"));
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
