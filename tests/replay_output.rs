//! `replay --out`: the file a replay writes (`wgpu_adamw::trace::write_output`) holds every
//! output the trace format names for that trace, under the format's names, in the trace's
//! dtypes and shapes (expected set derived here from the config JSON by the rules of
//! /work/shared/traces/README.md, not from the library), with the replay's values (16-bit
//! ones narrowed exactly, checked against the `half` crate), and agreeing with the trace's own
//! recorded tensors within the format's tolerances (GradScaler outputs and `skipped` exactly).

mod common;

use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use wgpu_adamw::trace::{
    compare, output_tensors, replay, write_output, Backend, ReplayOutput, Trace,
};
use wgpu_adamw::Error;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(format!("{name}.safetensors"))
}

/// A safetensors file: its metadata and its tensors `name -> (dtype, shape, bytes)`.
struct File {
    meta: HashMap<String, String>,
    tensors: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
}

fn read(path: &Path) -> File {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    File {
        meta: header.metadata().clone().unwrap_or_default(),
        tensors: st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, (t.dtype(), t.shape().to_vec(), t.data().to_vec())))
            .collect(),
    }
}

fn st_dtype(name: &str) -> Dtype {
    match name {
        "f32" => Dtype::F32,
        "bf16" => Dtype::BF16,
        "f16" => Dtype::F16,
        other => panic!("unknown dtype {other}"),
    }
}

/// The outputs the format names for the trace with this config (README "Tensors" table and
/// the P/S/E rules): `name -> (dtype, shape)`. `cycles_momentum`: the trace has `beta1/G`.
fn expected(cfg: &Value, cycles_momentum: bool) -> BTreeMap<String, (Dtype, Vec<usize>)> {
    let dtype = &cfg["dtype"];
    let param = dtype["param"].as_str().unwrap_or("f32");
    let state_param = dtype["state"].as_str() == Some("param");
    let master = cfg["master_weights"].as_bool() == Some(true);
    let p = if master { Dtype::F32 } else { st_dtype(param) };
    let s = if state_param {
        st_dtype(param)
    } else {
        Dtype::F32
    };
    let e = s; // E = P when state is "param" (P is then the param type), else F32.
    let amsgrad = cfg["optimizer"]["amsgrad"].as_bool() == Some(true);
    let steps = cfg["steps"].as_u64().unwrap() as usize;
    let groups = cfg["groups"].as_array().unwrap();
    let mut want = BTreeMap::new();
    for g in groups {
        for entry in g["params"].as_array().unwrap() {
            let name = entry[0].as_str().unwrap();
            let n = vec![entry[1].as_u64().unwrap() as usize];
            want.insert(format!("final/{name}"), (p, n.clone()));
            want.insert(format!("final_exp_avg/{name}"), (s, n.clone()));
            want.insert(format!("final_exp_avg_sq/{name}"), (s, n.clone()));
            if amsgrad {
                want.insert(format!("final_max_exp_avg_sq/{name}"), (s, n.clone()));
            }
            if master {
                want.insert(format!("final_model/{name}"), (st_dtype(param), n.clone()));
            }
            if !cfg["ema"].is_null() {
                want.insert(format!("final_ema/{name}"), (e, n.clone()));
            }
        }
    }
    for g in 0..groups.len() {
        want.insert(format!("lr/{g}"), (Dtype::F64, vec![steps]));
        if cycles_momentum {
            want.insert(format!("beta1/{g}"), (Dtype::F64, vec![steps]));
        }
    }
    want.insert("skipped".into(), (Dtype::U8, vec![steps]));
    if !cfg["grad_scaler"].is_null() {
        for s in 1..=steps {
            want.insert(format!("grad_scale/{s}"), (Dtype::F32, vec![1]));
        }
        want.insert("final_scale".into(), (Dtype::F32, vec![1]));
        want.insert("final_growth_tracker".into(), (Dtype::I32, vec![1]));
    }
    want
}

/// f32 values as the bytes of `dtype`, narrowed by the `half` crate (nearest even); each
/// value must already be exactly representable (the replay holds 16-bit values widened).
fn encode(values: &[f32], dtype: Dtype, what: &str) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|&x| {
                let h = half::bf16::from_f32(x);
                assert!(
                    h.to_f32().to_bits() == x.to_bits() || x.is_nan(),
                    "{what}: {x} is not a bf16 value"
                );
                h.to_bits().to_le_bytes()
            })
            .collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|&x| {
                let h = half::f16::from_f32(x);
                assert!(
                    h.to_f32().to_bits() == x.to_bits() || x.is_nan(),
                    "{what}: {x} is not an f16 value"
                );
                h.to_bits().to_le_bytes()
            })
            .collect(),
        other => panic!("{what}: no float encoding for {other:?}"),
    }
}

/// The values of a float tensor, widened to f64.
fn floats(dtype: Dtype, bytes: &[u8]) -> Vec<f64> {
    match dtype {
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap())))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| f64::from(half::bf16::from_le_bytes([b[0], b[1]]).to_f32()))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| f64::from(half::f16::from_le_bytes([b[0], b[1]]).to_f32()))
            .collect(),
        other => panic!("not a float dtype: {other:?}"),
    }
}

/// The ulp of a 16-bit type at `t` (the format's unit for 16-bit tolerances).
fn ulp16(dtype: Dtype, t: f64) -> f64 {
    let (mant, min_exp) = if dtype == Dtype::F16 {
        (10, -14)
    } else {
        (7, -126)
    };
    let e = if t == 0.0 || !t.is_finite() {
        min_exp
    } else {
        (t.abs().log2().floor() as i32).max(min_exp)
    };
    2f64.powi(e - mant)
}

/// The replay's values for output tensor `name` (per-param kinds and per-group series).
fn replay_values(trace: &Trace, out: &ReplayOutput, name: &str) -> Option<Vec<f32>> {
    let (kind, key) = name.split_once('/')?;
    let param = || trace.params.iter().position(|p| p.name == key);
    let group = || key.parse::<usize>().ok();
    Some(match kind {
        "final" => out.params[param()?].clone(),
        "final_exp_avg" => out.exp_avg[param()?].clone(),
        "final_exp_avg_sq" => out.exp_avg_sq[param()?].clone(),
        "final_max_exp_avg_sq" => out.max_exp_avg_sq.as_ref()?[param()?].clone(),
        "final_model" => out.model.as_ref()?[param()?].clone(),
        "final_ema" => out.ema.as_ref()?[param()?].clone(),
        "lr" => out.lr[group()?].clone(),
        "beta1" => out.beta1[group()?].clone(),
        _ => return None,
    })
}

/// Replays `name` on `backend`, writes `--out`, reads it back and checks it.
fn check(name: &str, backend: Backend<'_>, label: &str) {
    let path = data(name);
    let trace = Trace::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let out = replay(&trace, backend, None).unwrap_or_else(|e| panic!("{label} {name}: {e}"));
    assert!(
        compare(&trace, &out).passed(),
        "{label} {name}: replay fails"
    );

    // A directory of its own: the write must leave exactly the one file there.
    let dir = std::env::temp_dir().join(format!(
        "wgpu-adamw-replay-output-{}-{label}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("out.safetensors");
    write_output(&trace, &out, &file).unwrap_or_else(|e| panic!("{label} {name}: {e}"));
    // Written twice (over an existing file): still one file, no temporary left behind.
    write_output(&trace, &out, &file).unwrap();
    let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(entries.len(), 1, "{label} {name}: temporary files left");
    let written = read(&file);
    std::fs::remove_dir_all(&dir).unwrap();

    let recorded = read(&path);
    let cfg: Value = serde_json::from_str(&recorded.meta["config"]).unwrap();
    let ctx = format!("{label} {name}");

    // Metadata.
    assert_eq!(
        written.meta.get("format"),
        recorded.meta.get("format"),
        "{ctx}: format"
    );
    assert_eq!(
        written.meta.get("source").map(String::as_str),
        Some("wgpu-adamw replay"),
        "{ctx}: source"
    );

    // Names, dtypes and shapes: exactly the format's outputs for this config...
    let want = expected(&cfg, recorded.tensors.contains_key("beta1/0"));
    let got: BTreeMap<String, (Dtype, Vec<usize>)> = written
        .tensors
        .iter()
        .map(|(n, (d, s, _))| (n.clone(), (*d, s.clone())))
        .collect();
    assert_eq!(got, want, "{ctx}: names, dtypes, shapes");
    // ...and every one of them is a tensor of the trace with the same dtype and shape.
    for (n, (d, s)) in &got {
        let (rd, rs, _) = recorded
            .tensors
            .get(n)
            .unwrap_or_else(|| panic!("{ctx}: `{n}` is not in the trace"));
        assert_eq!((d, s), (rd, rs), "{ctx}: `{n}` dtype/shape vs the trace");
    }
    // The trace's outputs are all written (its inputs are init/, grad/, metric, AMP scales).
    let amp = !cfg["amp"].is_null();
    for n in recorded.tensors.keys() {
        let input = n.starts_with("init/")
            || n.starts_with("grad/")
            || n == "metric"
            || (amp && n.starts_with("grad_scale/"));
        assert!(input || got.contains_key(n), "{ctx}: `{n}` not written");
    }

    // Values: the replay's, in the file's dtype (16-bit narrowed exactly).
    for (n, (d, _, bytes)) in &written.tensors {
        if let Some(v) = replay_values(&trace, &out, n) {
            let expect = if *d == Dtype::F64 {
                v.iter().flat_map(|&x| f64::from(x).to_le_bytes()).collect()
            } else {
                encode(&v, *d, &format!("{ctx} {n}"))
            };
            assert!(bytes == &expect, "{ctx}: `{n}` differs from the replay");
        }
    }
    let skipped: Vec<u8> = out.skipped.iter().map(|&s| u8::from(s)).collect();
    assert_eq!(written.tensors["skipped"].2, skipped, "{ctx}: skipped");

    // Against the trace's recorded values, with the format's tolerances.
    let mut kinds16: BTreeMap<&str, (f64, usize, usize)> = BTreeMap::new();
    for (n, (d, _, bytes)) in &written.tensors {
        let (_, _, rbytes) = &recorded.tensors[n];
        let kind = n.split('/').next().unwrap();
        let exact = matches!(
            kind,
            "skipped" | "grad_scale" | "final_scale" | "final_growth_tracker"
        );
        if exact {
            assert!(bytes == rbytes, "{ctx}: `{n}` not exactly the trace's");
            continue;
        }
        let (x, t) = (floats(*d, bytes), floats(*d, rbytes));
        if matches!(d, Dtype::BF16 | Dtype::F16) {
            let e = kinds16.entry(kind).or_default();
            for (&x, &t) in x.iter().zip(&t) {
                e.2 += 1;
                if x.to_bits() != t.to_bits() && !(x.is_nan() && t.is_nan()) {
                    e.1 += 1;
                    let ulps = if x.is_finite() && t.is_finite() {
                        (x - t).abs() / ulp16(*d, t)
                    } else {
                        f64::INFINITY
                    };
                    e.0 = e.0.max(ulps);
                }
            }
            continue;
        }
        let max = t.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
        for (i, (&x, &t)) in x.iter().zip(&t).enumerate() {
            let tol = match kind {
                "final" | "final_ema" => 1e-6 + 1e-5 * t.abs(),
                "final_exp_avg" | "final_exp_avg_sq" | "final_max_exp_avg_sq" => {
                    1e-5 * t.abs() + 1e-6 * max
                }
                "lr" | "beta1" => 1e-6 * t.abs() + 1e-9 * max,
                other => panic!("{ctx}: no tolerance for `{other}`"),
            };
            let ok = if x.is_finite() && t.is_finite() {
                (x - t).abs() <= tol
            } else {
                x == t || (x.is_nan() && t.is_nan())
            };
            assert!(ok, "{ctx}: `{n}`[{i}] = {x}, the trace has {t} (tol {tol})");
        }
    }
    for (kind, (ulps, differ, total)) in &kinds16 {
        let frac = *differ as f64 / *total as f64;
        eprintln!("{ctx}: {kind}: max {ulps} ulps, {differ}/{total} not bit-identical");
        assert!(
            *ulps <= 8.0 && frac <= 0.01,
            "{ctx}: {kind}: {ulps} ulps, {frac} not identical"
        );
    }
}

#[test]
fn cpu_bf16_pure_scaler_accumulate_clip() {
    check("mp_bf16_combined", Backend::Cpu, "cpu");
}

#[test]
fn cpu_f16_master_weights() {
    check("mp_f16_master", Backend::Cpu, "cpu");
}

#[test]
fn cpu_f16_master_scaler_accumulate() {
    check("x_mp_f16_master_scaler_accum", Backend::Cpu, "cpu");
}

#[test]
fn cpu_ema_f32_and_bf16() {
    check("mp_ema", Backend::Cpu, "cpu");
    check("x_mp_bf16_pure_ema", Backend::Cpu, "cpu");
}

#[test]
fn cpu_format1_amsgrad_groups() {
    check("cosine_amsgrad_groups", Backend::Cpu, "cpu");
}

#[test]
fn cpu_format1_beta1() {
    check("onecycle_momentum", Backend::Cpu, "cpu");
}

#[test]
fn cpu_f32_params_f16_grads_scaler() {
    check("mp_grad_scaler", Backend::Cpu, "cpu");
}

#[test]
fn gpu_bf16_pure_scaler_accumulate_clip() {
    let ctx = common::gpu();
    check("mp_bf16_combined", Backend::Gpu(&ctx), "gpu");
}

#[test]
fn mismatched_output_refused_and_io_errors_typed() {
    let trace = Trace::load(data("mp_bf16_combined")).unwrap();
    let out = replay(&trace, Backend::Cpu, None).unwrap();
    assert!(output_tensors(&trace, &out).is_ok());

    let mut short = out.clone();
    short.params.pop();
    assert!(matches!(
        output_tensors(&trace, &short),
        Err(Error::ShapeMismatch(_))
    ));
    let mut no_scales = out.clone();
    no_scales.grad_scale.clear();
    assert!(matches!(
        output_tensors(&trace, &no_scales),
        Err(Error::ShapeMismatch(_))
    ));

    let missing_dir = std::env::temp_dir()
        .join(format!("wgpu-adamw-no-such-dir-{}", std::process::id()))
        .join("out.safetensors");
    assert!(matches!(
        write_output(&trace, &out, &missing_dir),
        Err(Error::Io { .. })
    ));
}
