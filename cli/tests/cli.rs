//! The `wgpu-adamw` binary end to end: exit statuses, output files, schedules.

use safetensors::tensor::{Dtype, TensorView};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data")
        .join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgpu-adamw"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap()
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("wgpu-adamw-cli-{}-{name}", std::process::id()))
}

#[test]
fn replay_passes_every_trace_on_both_backends_with_a_checkpoint() {
    for trace in [
        "cosine_default",
        "cosine_amsgrad_groups",
        "warm_restarts",
        "warmup_cosine_epochs",
    ] {
        for backend in ["gpu", "cpu"] {
            let path = data(&format!("{trace}.safetensors"));
            let o = run(&[
                "replay",
                path.to_str().unwrap(),
                "--backend",
                backend,
                "--checkpoint-at",
                "17",
            ]);
            let stdout = String::from_utf8_lossy(&o.stdout);
            assert_eq!(
                o.status.code(),
                Some(0),
                "{trace} {backend}: {stdout}{}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(stdout.contains("PASS"), "{stdout}");
        }
    }
}

#[test]
fn replay_writes_results_under_the_traces_names() {
    let out = tmp("out.safetensors");
    let o = run(&[
        "replay",
        data("cosine_amsgrad_groups.safetensors").to_str().unwrap(),
        "--backend",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0));
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let trace_bytes = std::fs::read(data("cosine_amsgrad_groups.safetensors")).unwrap();
    let trace = safetensors::SafeTensors::deserialize(&trace_bytes).unwrap();
    for name in [
        "final/emb",
        "final_exp_avg/proj",
        "final_exp_avg_sq/ln",
        "final_max_exp_avg_sq/bias",
        "lr/0",
        "lr/1",
    ] {
        let (a, b) = (st.tensor(name).unwrap(), trace.tensor(name).unwrap());
        assert_eq!((a.dtype(), a.shape()), (b.dtype(), b.shape()), "{name}");
    }
    // The lr the device used at each step is PyTorch's to within the format's tolerance.
    let lr: Vec<f64> = st
        .tensor("lr/1")
        .unwrap()
        .data()
        .chunks(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let want: Vec<f64> = trace
        .tensor("lr/1")
        .unwrap()
        .data()
        .chunks(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    for (x, t) in lr.iter().zip(&want) {
        assert!((x - t).abs() <= 1e-6 * t.abs() + 1e-9 * 1e-3, "{x} vs {t}");
    }
    std::fs::remove_file(&out).unwrap();
}

#[test]
fn replay_exits_1_outside_tolerance() {
    // The same trace with one recorded final parameter moved by 1e-4.
    let bytes = std::fs::read(data("warm_restarts.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Tensors = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    let w = owned.iter_mut().find(|t| t.0 == "final/w").unwrap();
    let x = f32::from_le_bytes(w.3[..4].try_into().unwrap()) + 1e-4;
    w.3[..4].copy_from_slice(&x.to_le_bytes());
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let path = tmp("moved.safetensors");
    safetensors::serialize_to_file(views, meta.metadata().clone(), &path).unwrap();
    let o = run(&["replay", path.to_str().unwrap(), "--backend", "cpu"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("w[0]"));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn unusable_input_exits_2_with_one_line() {
    let garbage = tmp("garbage.safetensors");
    std::fs::write(
        &garbage,
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all",
    )
    .unwrap();
    let missing = tmp("missing.safetensors");
    for args in [
        vec!["replay", garbage.to_str().unwrap(), "--backend", "cpu"],
        vec!["replay", missing.to_str().unwrap(), "--backend", "cpu"],
        vec![
            "schedule",
            "--schedule",
            "{\"kind\":\"linear\"}",
            "--base-lr",
            "1",
            "--steps",
            "1",
            "--backend",
            "cpu",
        ],
        vec![
            "schedule",
            "--schedule",
            "{\"kind\":\"cosine\",\"t_max\":0}",
            "--base-lr",
            "1",
            "--steps",
            "1",
            "--backend",
            "cpu",
        ],
        vec![
            "schedule",
            "--schedule",
            "{\"kind\":\"constant\"}",
            "--base-lr",
            "1",
            "--steps",
            "0",
            "--backend",
            "cpu",
        ],
        vec![
            "schedule",
            "--schedule",
            "{\"kind\":\"constant\"}",
            "--base-lr",
            "1",
            "--steps",
            "4294967296",
            "--backend",
            "cpu",
        ],
    ] {
        let o = run(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"));
    }
    std::fs::remove_file(&garbage).unwrap();
}

#[test]
fn schedule_prints_the_devices_lr_per_step() {
    let json = r#"{"kind":"cosine","t_max":10,"eta_min":0.0}"#;
    for backend in ["gpu", "cpu"] {
        let o = run(&[
            "schedule",
            "--schedule",
            json,
            "--base-lr",
            "0.5",
            "--steps",
            "1..3,11,21,4294967295",
            "--backend",
            backend,
        ]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let text = String::from_utf8_lossy(&o.stdout);
        let rows: Vec<(u64, f64)> = text
            .lines()
            .skip(1)
            .map(|l| {
                let (s, lr) = l.split_once(',').unwrap();
                (s.parse().unwrap(), lr.parse().unwrap())
            })
            .collect();
        assert_eq!(
            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            [1, 2, 3, 11, 21, 4294967295]
        );
        for (s, lr) in rows {
            let e = ((s - 1) % 20) as f64;
            let want = 0.5 * (1.0 + (std::f64::consts::PI * e / 10.0).cos()) / 2.0;
            assert!(
                (lr - want).abs() <= 1e-6 * want + 1e-9 * 0.5,
                "{backend} step {s}: {lr} vs {want}"
            );
        }
    }
}

#[test]
fn no_adapter_is_one_line_naming_the_software_adapter() {
    // Hide every Vulkan driver: wgpu then finds no adapter at all.
    let o = Command::new(env!("CARGO_BIN_EXE_wgpu-adamw"))
        .args([
            "replay",
            data("warm_restarts.safetensors").to_str().unwrap(),
        ])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env("WGPU_BACKEND", "vulkan")
        .env("VK_DRIVER_FILES", "/nonexistent.json")
        .env("VK_ICD_FILENAMES", "/nonexistent.json")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("mesa-vulkan-drivers") && stderr.contains("--backend cpu"),
        "{stderr}"
    );
}

/// A trace's tensors, owned: (name, dtype, shape, bytes).
type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;
/// A trace's metadata.
type Meta = std::collections::HashMap<String, String>;
/// An edit of a trace.
type Edit = Box<dyn FnOnce(&mut Tensors, &mut Meta)>;

/// Rewrites a trace: `edit` may change its tensors and metadata.
fn rewritten(name: &str, out: &Path, edit: impl FnOnce(&mut Tensors, &mut Meta)) {
    let bytes = std::fs::read(data(name)).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    let mut owned: Tensors = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    edit(&mut owned, &mut meta);
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, Some(meta), out).unwrap();
}

#[test]
fn unusable_traces_exit_2_with_one_line() {
    let path = tmp("unusable.safetensors");
    let cases: Vec<(&str, Edit)> = vec![
        (
            "wrong dtype",
            Box::new(|t, _| {
                let g = t.iter_mut().find(|t| t.0 == "grad/3/w").unwrap();
                g.1 = Dtype::I32;
            }),
        ),
        (
            "wrong shape",
            Box::new(|t, _| {
                let g = t.iter_mut().find(|t| t.0 == "init/v").unwrap();
                g.2 = vec![4, 4];
            }),
        ),
        (
            "missing tensor",
            Box::new(|t, _| t.retain(|t| t.0 != "grad/80/v")),
        ),
        (
            "bad JSON",
            Box::new(|_, m| {
                m.insert("config".into(), "{\"optimizer\": [".into());
            }),
        ),
        (
            "unknown schedule",
            Box::new(|_, m| {
                let c = m["config"].replace("cosine_warm_restarts", "polynomial");
                m.insert("config".into(), c);
            }),
        ),
        (
            "not a trace",
            Box::new(|_, m| {
                m.insert("format".into(), "something-else".into());
            }),
        ),
        (
            "bad hyperparameter",
            Box::new(|_, m| {
                let c = m["config"].replace("\"eps\": 1e-08", "\"eps\": -1.0");
                m.insert("config".into(), c);
            }),
        ),
    ];
    for (what, edit) in cases {
        rewritten("warm_restarts.safetensors", &path, edit);
        let o = run(&["replay", path.to_str().unwrap(), "--backend", "cpu"]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{what}: {stderr}{}",
            String::from_utf8_lossy(&o.stdout)
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{what}: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}");
    }
    // Truncated.
    let bytes = std::fs::read(data("warm_restarts.safetensors")).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    let o = run(&["replay", path.to_str().unwrap(), "--backend", "cpu"]);
    assert_eq!(o.status.code(), Some(2));
    std::fs::remove_file(&path).unwrap();
}

/// Runs `schedule` on the CPU backend; returns the CSV's header and rows (step, lrs).
fn schedule_csv(args: &[&str]) -> (String, Vec<(u32, Vec<f32>)>) {
    let mut all = vec!["schedule", "--backend", "cpu"];
    all.extend_from_slice(args);
    let o = run(&all);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8(o.stdout).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap().to_string();
    let rows = lines
        .map(|l| {
            let mut f = l.split(',');
            let step = f.next().unwrap().parse().unwrap();
            (step, f.map(|x| x.parse().unwrap()).collect())
        })
        .collect();
    (header, rows)
}

#[test]
fn several_schedules_print_one_column_each() {
    let jsons = [
        r#"{"kind":"cosine","t_max":10,"eta_min":0.001}"#,
        r#"{"kind":"step","step_size":4,"gamma":0.5}"#,
    ];
    let steps: Vec<u32> = (1..=30).chain([7, 1000]).collect();
    let (header, rows) = schedule_csv(&[
        "--schedule",
        jsons[0],
        "--schedule",
        jsons[1],
        "--base-lr",
        "0.25",
        "--steps-per-epoch",
        "3",
        "--steps",
        "1..30,7,1000",
    ]);
    assert_eq!(header, "step,lr_0,lr_1");
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), steps);
    for (i, json) in jsons.iter().enumerate() {
        let config = wgpu_adamw::AdamWConfig::default()
            .with_lr(0.25)
            .with_schedule(wgpu_adamw::Schedule::from_json(json).unwrap())
            .with_steps_per_epoch(3);
        let want = wgpu_adamw::schedule_lrs_cpu(&config, 0.25, &steps).unwrap();
        for (row, w) in rows.iter().zip(&want) {
            assert_eq!(row.1.len(), 2, "{row:?}");
            assert_eq!(row.1[i], *w, "{json} step {}", row.0);
        }
    }
}

const PLATEAU: &str = r#"{"kind":"reduce_on_plateau","mode":"min","factor":0.5,"patience":1,"threshold":0.01,"threshold_mode":"rel","cooldown":1,"min_lr":0.01,"eps":1e-8}"#;

#[test]
fn a_plateau_schedule_follows_the_metrics_of_its_file() {
    let metrics: Vec<f32> = vec![
        1.0, 0.8, 0.85, 0.9, 0.79, 0.795, 0.7, 0.71, 0.72, 0.73, 0.74, 0.75, 0.6, 0.61,
    ];
    // Comments, blank lines and commas are all accepted.
    let mut text = String::from("# validation loss per epoch\n\n");
    for (i, m) in metrics.iter().enumerate() {
        text.push_str(&m.to_string());
        text.push_str(if i % 3 == 2 { ",\n" } else { ", " });
    }
    text.push_str("\n# end\n");
    let path = tmp("metrics.txt");
    std::fs::write(&path, text).unwrap();
    let (base_lr, spe) = (0.1, 3u32);
    let (header, rows) = schedule_csv(&[
        "--schedule",
        PLATEAU,
        "--metric",
        path.to_str().unwrap(),
        "--base-lr",
        "0.1",
        "--steps-per-epoch",
        "3",
        "--steps",
        "1..43,5",
    ]);
    assert_eq!(header, "step,lr");
    let plateau = match wgpu_adamw::Schedule::from_json(PLATEAU).unwrap() {
        wgpu_adamw::Schedule::ReduceOnPlateau(p) => p,
        other => panic!("{other:?}"),
    };
    let epochs = plateau.lrs(&[wgpu_adamw::schedule::GroupCtx::single(base_lr)], &metrics);
    let mut cuts = 0;
    for (s, lr) in &rows {
        let want = epochs[((s - 1) / spe) as usize][0];
        let lr = f64::from(lr[0]);
        assert!((lr - want).abs() <= 1e-6 * want, "step {s}: {lr} vs {want}");
        cuts += usize::from(want < base_lr);
    }
    assert!(cuts > 0, "the metrics cut the lr at least once");
    assert_eq!(rows.len(), 44);

    // Too few metrics: the missing epochs read NaN, said once on stderr.
    std::fs::write(&path, "1.0\n0.9\n").unwrap();
    let o = run(&[
        "schedule",
        "--backend",
        "cpu",
        "--schedule",
        PLATEAU,
        "--metric",
        path.to_str().unwrap(),
        "--base-lr",
        "0.1",
        "--steps",
        "1..10",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr.matches("warning").count(), 1, "{stderr}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn metric_without_plateau_and_plateau_without_metric_exit_2() {
    let path = tmp("metric-2.txt");
    std::fs::write(&path, "1\n2\n").unwrap();
    let metric = path.to_str().unwrap();
    let cosine = r#"{"kind":"cosine","t_max":10,"eta_min":0}"#;
    for args in [
        vec!["--schedule", cosine, "--metric", metric, "--steps", "1..5"],
        vec![
            "--schedule",
            cosine,
            "--schedule",
            PLATEAU,
            "--steps",
            "1..5",
        ],
        vec!["--schedule", PLATEAU, "--steps", "1..5"],
        vec![
            "--schedule",
            PLATEAU,
            "--metric",
            metric,
            "--steps",
            "10000001",
        ],
    ] {
        let mut all = vec!["schedule", "--backend", "cpu", "--base-lr", "0.1"];
        all.extend(args.iter().copied());
        let o = run(&all);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn plot_draws_every_schedule_with_a_legend() {
    let jsons = [
        r#"{"kind":"cosine","t_max":10,"eta_min":0}"#,
        r#"{"kind":"exponential","gamma":0.9}"#,
    ];
    let svg = tmp("schedules.svg");
    let o = run(&[
        "schedule",
        "--backend",
        "cpu",
        "--schedule",
        jsons[0],
        "--schedule",
        jsons[1],
        "--base-lr",
        "0.1",
        "--steps",
        "1..40",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    for (kind, json) in [("cosine", jsons[0]), ("exponential", jsons[1])] {
        let legend = format!("{kind}: {json}").replace('"', "&quot;");
        assert!(text.contains(&legend), "no legend `{legend}` in the SVG");
    }
    assert!(text.contains("learning-rate schedules"));
    std::fs::remove_file(&svg).unwrap();
}

#[test]
fn reshard_moves_shard_checkpoints_to_another_rank_count_bit_for_bit() {
    use wgpu_adamw::shard::{merge_states, split_state, ShardLayout};
    use wgpu_adamw::{AdamWConfig, CpuAdamW, CpuParamGroup, OptimizerState};
    let lens = [5usize, 40, 3];
    let mut cpu = CpuAdamW::new(
        AdamWConfig::default().with_amsgrad(true),
        vec![CpuParamGroup {
            lens: lens.to_vec(),
            ..Default::default()
        }],
    )
    .unwrap();
    let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| vec![0.5; n]).collect();
    let grads: Vec<Vec<f32>> = lens
        .iter()
        .map(|&n| (0..n).map(|i| (i as f32 * 0.7).sin()).collect())
        .collect();
    let g: Vec<&[f32]> = grads.iter().map(|g| &g[..]).collect();
    let mut p: Vec<&mut [f32]> = params.iter_mut().map(|p| &mut p[..]).collect();
    cpu.step(&mut p, &g).unwrap();
    let whole = cpu.state();
    let dir = tmp("reshard");
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<String> = split_state(&whole, &ShardLayout::even(48, 2).unwrap())
        .unwrap()
        .iter()
        .enumerate()
        .map(|(r, s)| {
            let f = dir.join(format!("in-{r}.safetensors"));
            s.save(&f).unwrap();
            f.to_str().unwrap().to_string()
        })
        .collect();
    let out = dir.join("out");
    let o = run(&[
        "reshard",
        &files[1],
        &files[0],
        "--ranks",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let three: Vec<OptimizerState> = (0..3)
        .map(|r| OptimizerState::load(out.join(format!("rank-{r}-of-3.safetensors"))).unwrap())
        .collect();
    assert_eq!(
        three[1].shard.as_ref().unwrap().layout.bounds(),
        [0, 16, 32, 48]
    );
    assert_eq!(merge_states(&three).unwrap(), whole);
    let o = run(&[
        "reshard",
        &files[0],
        "--bounds",
        "0,1,47,48",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a missing shard is unusable input"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("1 shard checkpoints for a layout of 2 ranks"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
