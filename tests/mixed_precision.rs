//! 16-bit parameters, gradients and moments and f32 master weights (`adamw-trace/2`'s
//! `dtype` and `master_weights`) on both backends: the PyTorch traces with the format's
//! 16-bit rule, the GPU against the CPU twin bit for bit, 16-bit tensors that share a 32-bit
//! word with their neighbours, and bad input.

mod common;

use std::path::PathBuf;
use wgpu_adamw::trace::{compare, replay, Backend, Trace};

fn data(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data")).join(name)
}

/// The traces whose features (dtype, master weights, amsgrad, maximize, clipping of f32
/// gradients) are built.
const DTYPE_TRACES: &[&str] = &[
    "mp_bf16_pure.safetensors",
    "mp_f16_pure.safetensors",
    "mp_bf16_state_f32.safetensors",
    "mp_f16_master.safetensors",
    "x_mp_bf16_pure_amsgrad_max_groups.safetensors",
    "x_mp_f16_state_f32_amsgrad.safetensors",
    "x_mp_bf16_master_step.safetensors",
    "x_mp_f32_bf16grad_clip.safetensors",
];

fn check(backend: Backend<'_>, label: &str, name: &str) -> wgpu_adamw::trace::ReplayOutput {
    let path = data(name);
    let trace = Trace::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let out = replay(&trace, backend, None).unwrap_or_else(|e| panic!("{label} {name}: {e}"));
    let cmp = compare(&trace, &out);
    for (kind, w) in cmp.rows() {
        let bits = w.bits16.map_or(String::new(), |(u, f)| {
            format!(" ({u:.1} ulps, {:.3}% not bit-identical)", 100.0 * f)
        });
        eprintln!(
            "{label} {name}: {kind} err/tol {:.4}{bits} at {}",
            w.ratio, w.at
        );
    }
    assert!(cmp.passed(), "{label} {name}: {cmp:?}");
    out
}

#[test]
fn cpu_matches_the_16bit_traces() {
    for name in DTYPE_TRACES {
        check(Backend::Cpu, "cpu", name);
    }
}

#[test]
fn gpu_matches_the_16bit_traces_and_the_cpu_bit_for_bit() {
    let ctx = common::gpu();
    for name in DTYPE_TRACES {
        let gpu = check(Backend::Gpu(&ctx), "gpu", name);
        let trace = Trace::load(data(name)).unwrap();
        let cpu = replay(&trace, Backend::Cpu, None).unwrap();
        let bits = |v: &[Vec<f32>]| -> Vec<Vec<u32>> {
            v.iter()
                .map(|t| t.iter().map(|x| x.to_bits()).collect())
                .collect()
        };
        assert_eq!(bits(&gpu.params), bits(&cpu.params), "{name}: params");
        assert_eq!(bits(&gpu.exp_avg), bits(&cpu.exp_avg), "{name}: exp_avg");
        assert_eq!(
            bits(&gpu.exp_avg_sq),
            bits(&cpu.exp_avg_sq),
            "{name}: exp_avg_sq"
        );
        assert_eq!(
            gpu.model.as_deref().map(bits),
            cpu.model.as_deref().map(bits),
            "{name}: model"
        );
    }
}
