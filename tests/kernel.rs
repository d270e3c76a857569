//! The WGSL itself: naga validates it, its uniform structs match the Rust ones byte for byte,
//! and the numerical building blocks of the CPU twin are checked against f64.

mod common;

use common::Rng;
use std::mem::{offset_of, size_of};
use wgpu_adamw::kernel::{DispatchInfo, Globals, SHADER_SOURCE};
use wgpu_adamw::schedule::dyadic;
use wgpu_adamw::twin;

fn module() -> naga::Module {
    naga::front::wgsl::parse_str(SHADER_SOURCE).expect("the WGSL parses")
}

#[test]
fn naga_validates_the_shader() {
    let m = module();
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&m)
    .expect("the WGSL validates without optional capabilities");
    let entries: Vec<&str> = m.entry_points.iter().map(|e| e.name.as_str()).collect();
    for e in [
        "prologue",
        "update",
        "update_packed",
        "reduce",
        "tensor_norms",
        "schedule_probe",
        "momentum_probe",
        "numerics_probe",
    ] {
        assert!(entries.contains(&e), "{e} missing");
    }
}

fn wgsl_layout(name: &str) -> (Vec<(String, u32)>, u32) {
    let m = module();
    let (_, ty) = m
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some(name))
        .unwrap();
    match &ty.inner {
        naga::TypeInner::Struct { members, span } => (
            members
                .iter()
                .map(|mb| (mb.name.clone().unwrap(), mb.offset))
                .collect(),
            *span,
        ),
        other => panic!("{name} is {other:?}"),
    }
}

#[test]
fn globals_layout_matches_the_shader() {
    let (members, span) = wgsl_layout("Globals");
    assert_eq!(span as usize, size_of::<Globals>());
    let rust: &[(&str, usize)] = &[
        ("sched_at", offset_of!(Globals, sched_at)),
        ("steps_per_epoch", offset_of!(Globals, steps_per_epoch)),
        ("sched_stride", offset_of!(Globals, sched_stride)),
        ("sched_state_at", offset_of!(Globals, sched_state_at)),
        ("growth_interval", offset_of!(Globals, growth_interval)),
        ("ema_weight", offset_of!(Globals, ema_weight)),
        ("flags", offset_of!(Globals, flags)),
        ("n_groups", offset_of!(Globals, n_groups)),
        ("growth_factor", offset_of!(Globals, growth_factor)),
        ("backoff_factor", offset_of!(Globals, backoff_factor)),
        ("eps", offset_of!(Globals, eps)),
        ("beta1", offset_of!(Globals, beta1)),
        ("beta2", offset_of!(Globals, beta2)),
        ("one_minus_beta1", offset_of!(Globals, one_minus_beta1)),
        ("one_minus_beta2", offset_of!(Globals, one_minus_beta2)),
        ("lerp_big_coeff", offset_of!(Globals, lerp_big_coeff)),
        ("ln_beta1", offset_of!(Globals, ln_beta1)),
        ("ln_beta2", offset_of!(Globals, ln_beta2)),
        ("groups_at", offset_of!(Globals, groups_at)),
        ("scalars_at", offset_of!(Globals, scalars_at)),
        ("chunks_at", offset_of!(Globals, chunks_at)),
        ("zero", offset_of!(Globals, zero)),
        ("n_chunks", offset_of!(Globals, n_chunks)),
        ("max_grad_norm", offset_of!(Globals, max_grad_norm)),
        ("n_tensors", offset_of!(Globals, n_tensors)),
        ("tensors_at", offset_of!(Globals, tensors_at)),
        ("tensor_norms_at", offset_of!(Globals, tensor_norms_at)),
        ("segments_at", offset_of!(Globals, segments_at)),
        ("accumulate", offset_of!(Globals, accumulate)),
        ("grad_round", offset_of!(Globals, grad_round)),
        ("sr_at", offset_of!(Globals, sr_at)),
        ("n_ranks", offset_of!(Globals, n_ranks)),
    ];
    let named: Vec<(String, u32)> = members
        .into_iter()
        .filter(|(n, _)| !n.starts_with('_'))
        .collect();
    assert_eq!(named.len(), rust.len(), "{named:?}");
    for ((wn, wo), (rn, ro)) in named.iter().zip(rust) {
        assert_eq!((wn.as_str(), *wo as usize), (*rn, *ro));
    }
}

#[test]
fn dispatch_info_layout_matches_the_shader() {
    let (members, span) = wgsl_layout("DispatchInfo");
    assert_eq!(span as usize, size_of::<DispatchInfo>());
    let rust = [
        ("first_chunk", offset_of!(DispatchInfo, first_chunk)),
        ("n_chunks", offset_of!(DispatchInfo, n_chunks)),
        ("grid_x", offset_of!(DispatchInfo, grid_x)),
        ("first_tensor", offset_of!(DispatchInfo, first_tensor)),
        ("n_tensors", offset_of!(DispatchInfo, n_tensors)),
        ("n_runs", offset_of!(DispatchInfo, n_runs)),
        ("packed_grid_x", offset_of!(DispatchInfo, packed_grid_x)),
    ];
    for ((wn, wo), (rn, ro)) in members.iter().zip(rust) {
        assert_eq!((wn.as_str(), *wo as usize), (rn, ro));
    }
}

#[test]
fn emulated_fma_is_correctly_rounded() {
    let mut rng = Rng(99);
    let f = |rng: &mut Rng| {
        let e = 100 + rng.range(0, 50) as u32; // 2^-27 .. 2^22: no overflow, no subnormals
        f32::from_bits((rng.next_u64() as u32 & 0x807f_ffff) | (e << 23))
    };
    for _ in 0..1_000_000 {
        let (a, b, c) = (f(&mut rng), f(&mut rng), f(&mut rng));
        assert_eq!(
            twin::fma_exact(a, b, c).to_bits(),
            a.mul_add(b, c).to_bits(),
            "{a:e} * {b:e} + {c:e}"
        );
    }
    assert_eq!(twin::fma_exact(0.0, 3.0, -2.5), -2.5);
    assert_eq!(twin::fma_exact(0.1, -0.7, 0.0), 0.1f32.mul_add(-0.7, 0.0));
}

#[test]
fn bias_corrections_are_relatively_accurate() {
    // 1 - beta^t = -expm1(t ln beta), against f64, from t = 1 (where it cancels) to 2^32 - 1.
    for beta in [0.9f64, 0.95, 0.999, 0.9999, 0.5] {
        let ln = beta.ln() as f32;
        for t in (1..2000u64).chain([1 << 20, 1 << 24, (1 << 24) + 1, 4_294_967_295]) {
            let got = -twin::expm1_neg(t as f32 * ln);
            let want = -(t as f32 as f64 * f64::from(ln)).exp_m1();
            assert!(
                ((f64::from(got) - want) / want).abs() < 4e-7,
                "beta {beta} t {t}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn polynomials_match_f64() {
    for i in 0..=10_000 {
        let t = std::f32::consts::FRAC_PI_4 * i as f32 / 10_000.0;
        assert!(
            (f64::from(twin::sin_poly(t)) - f64::from(t).sin()).abs()
                < 1.2e-7 * f64::from(t).sin().max(1e-30) + 1e-30
        );
        assert!((f64::from(twin::cos_poly(t)) - f64::from(t).cos()).abs() < 1.2e-7);
    }
}

#[test]
fn dyadic_cycles_are_exact_or_close() {
    assert_eq!(dyadic(1.0), (1 << 31, 31));
    assert_eq!(dyadic(3.0), (3 << 30, 30));
    let (n, s) = dyadic(0.6);
    assert!((f64::from(n) / f64::from(1u32 << s) - 0.6).abs() <= 2f64.powi(-32));
    let (n, s) = dyadic(70_000.0);
    assert_eq!(f64::from(n) / f64::from(1u32 << s), 70_000.0);
}

/// The binding table the layouts are built from (`kernel::BINDINGS`) is the shader's: every
/// global an entry point uses is bound in its layout with the same kind and access, and every
/// binding of a layout is used by one of its entry points.
#[test]
fn binding_table_matches_every_entry_point() {
    use wgpu_adamw::kernel::{BindingKind, BINDINGS};
    let m = module();
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&m)
    .unwrap();
    for l in BINDINGS {
        let (layout, entries, table) = (l.name, l.entry_points, l.bindings);
        let mut used = std::collections::BTreeSet::new();
        for &entry in entries {
            let index = m
                .entry_points
                .iter()
                .position(|e| e.name == entry)
                .unwrap_or_else(|| panic!("{entry} missing"));
            let fi = info.get_entry_point(index);
            for (handle, var) in m.global_variables.iter() {
                if fi[handle].is_empty() {
                    continue;
                }
                let Some(rb) = &var.binding else { continue };
                let name = var.name.as_deref().unwrap_or("?");
                assert_eq!(rb.group, 0, "{entry}: {name}");
                let kind = table
                    .iter()
                    .find(|(b, _)| *b == rb.binding)
                    .map(|(_, k)| *k)
                    .unwrap_or_else(|| {
                        panic!(
                            "{entry} uses {name} at binding {}, not in layout {layout}",
                            rb.binding
                        )
                    });
                let ty = m.types[var.ty].name.as_deref();
                let ok = match (var.space, kind) {
                    (naga::AddressSpace::Uniform, BindingKind::Globals) => ty == Some("Globals"),
                    (naga::AddressSpace::Uniform, BindingKind::DispatchInfo) => {
                        ty == Some("DispatchInfo")
                    }
                    (naga::AddressSpace::Storage { access }, BindingKind::StorageRead) => {
                        !access.contains(naga::StorageAccess::STORE)
                    }
                    (naga::AddressSpace::Storage { access }, BindingKind::StorageReadWrite) => {
                        access.contains(naga::StorageAccess::STORE)
                    }
                    _ => false,
                };
                assert!(
                    ok,
                    "{entry}: {name} at {} is {:?}, the table says {kind:?}",
                    rb.binding, var.space
                );
                used.insert(rb.binding);
            }
        }
        let listed: std::collections::BTreeSet<u32> = table.iter().map(|(b, _)| *b).collect();
        assert_eq!(used, listed, "layout {layout}: bindings used vs listed");
    }
}

/// naga translates every entry point of both kernel variants (packed and native f16
/// conversions) to SPIR-V (Vulkan), MSL (Metal) and HLSL (DX12), overrides at their defaults.
#[test]
fn naga_translates_every_entry_point_to_spirv_msl_and_hlsl() {
    use naga::back::{hlsl, msl, spv};
    use naga::ShaderStage::Compute;
    // pack2x16float/unpack2x16float are core WGSL; naga counts them as a capability that
    // every WebGPU-compliant adapter has (wgpu's DownlevelFlags::SHADER_F16_IN_F32).
    for (source, caps) in [
        (
            wgpu_adamw::kernel::SHADER_SOURCE,
            naga::valid::Capabilities::empty(),
        ),
        (
            wgpu_adamw::kernel::SHADER_SOURCE_NATIVE_F16,
            naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32,
        ),
    ] {
        let m = naga::front::wgsl::parse_str(source).expect("the WGSL parses");
        let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
            .validate(&m)
            .expect("the WGSL validates");
        let names: Vec<String> = m.entry_points.iter().map(|e| e.name.clone()).collect();
        assert!(names.len() >= 10, "{names:?}");
        for name in names {
            let (m, info) = naga::back::pipeline_constants::process_overrides(
                &m,
                &info,
                Some((Compute, &name)),
                &Default::default(),
            )
            .unwrap_or_else(|e| panic!("{name}: overrides: {e}"));
            spv::write_vec(
                &m,
                &info,
                &spv::Options::default(),
                Some(&spv::PipelineOptions {
                    shader_stage: Compute,
                    entry_point: name.clone(),
                }),
            )
            .unwrap_or_else(|e| panic!("{name}: SPIR-V: {e}"));
            msl::write_string(
                &m,
                &info,
                &msl::Options {
                    lang_version: (2, 1),
                    ..Default::default()
                },
                &msl::PipelineOptions {
                    entry_point: Some((Compute, name.clone())),
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{name}: MSL: {e}"));
            let mut hlsl_out = String::new();
            let options = hlsl::Options::default();
            let pipeline = hlsl::PipelineOptions {
                entry_point: Some((Compute, name.clone())),
            };
            hlsl::Writer::new(&mut hlsl_out, &options, &pipeline)
                .write(&m, &info, None)
                .unwrap_or_else(|e| panic!("{name}: HLSL: {e}"));
        }
    }
}
