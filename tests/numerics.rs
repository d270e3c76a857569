//! The kernel's numerics functions run on the device (`numerics_probe`) against their CPU
//! twin and against IEEE arithmetic, bit for bit: the exact fma over the whole normal range
//! and at the top of it (where PyTorch's values overflow to 3.4e37 or inf, not NaN), the
//! correctly rounded reciprocal, division and square root, and `expm1` for the bias
//! corrections.

mod common;

use common::Rng;
use wgpu_adamw::probe::{numerics_cpu, numerics_gpu, Numerics};

/// Bit patterns equal, or both NaN.
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// A normal f32 with a random sign, mantissa and an exponent in `lo..hi` (unbiased).
fn normal(rng: &mut Rng, lo: i32, hi: i32) -> f32 {
    let e = (rng.range((lo + 127) as u64, (hi + 127) as u64)) as u32;
    f32::from_bits(e << 23 | (rng.next_u64() as u32 & 0x807f_ffff))
}

const EDGES: [f32; 14] = [
    f32::MAX,
    3.402_408_3e38, // 0x7f7ff800: Dekker's split rounds it up to inf
    3.4025e38,
    3.0e38,
    1.0e38,
    2.0e37,
    1.9e19,
    1.0,
    0.1,
    1e-30,
    0.0,
    f32::INFINITY,
    f32::MIN_POSITIVE,
    3.7,
];

fn edge_cases(coeffs: &[f32]) -> Vec<[f32; 3]> {
    let mut cases = Vec::new();
    for &a in coeffs {
        for &b in &EDGES {
            for &c in &EDGES {
                for (sb, sc) in [(1.0, 1.0), (-1.0, 1.0), (1.0, -1.0), (-1.0, -1.0)] {
                    cases.push([a, sb * b, sc * c]);
                }
            }
        }
    }
    cases
}

fn check(
    ctx: &wgpu_adamw::GpuContext,
    f: Numerics,
    cases: &[[f32; 3]],
    ieee: impl Fn(&[f32; 3]) -> Option<f32>,
) {
    let gpu = numerics_gpu(&ctx.device, &ctx.queue, f, cases).unwrap();
    let cpu = numerics_cpu(f, cases);
    assert_eq!(gpu.len(), cases.len());
    for ((c, &g), &t) in cases.iter().zip(&gpu).zip(&cpu) {
        assert!(
            same(g, t),
            "{f:?}{c:?}: kernel {g:e} ({:#x}), twin {t:e}",
            g.to_bits()
        );
        if let Some(want) = ieee(c) {
            assert!(same(t, want), "{f:?}{c:?}: twin {t:e}, IEEE {want:e}");
        }
    }
}

/// IEEE's fma where the result is not subnormal (the emulation's stated range).
fn ieee_fma(&[a, b, c]: &[f32; 3]) -> Option<f32> {
    let r = a.mul_add(b, c);
    (r == 0.0 || r.is_nan() || r.abs() >= f32::MIN_POSITIVE * 2f32.powi(24)).then_some(r)
}

#[test]
fn the_kernels_fma_is_ieee_fma_at_the_edges_and_everywhere() {
    let ctx = common::gpu();
    let coeffs = [
        0.1f32, -0.9, 0.7, -0.3, 1.0, 1e-3, 2.0, -1.5e-5, 3.3e38, 0.0,
    ];
    check(&ctx, Numerics::FmaExact, &edge_cases(&coeffs), ieee_fma);
    let mut rng = Rng(71);
    let random: Vec<[f32; 3]> = (0..50_000)
        .map(|_| {
            [
                normal(&mut rng, -126, 128),
                normal(&mut rng, -126, 128),
                normal(&mut rng, -126, 128),
            ]
        })
        .collect();
    check(&ctx, Numerics::FmaExact, &random, ieee_fma);
}

#[test]
fn the_first_moments_fma_is_ieee_fma_for_its_coefficients() {
    let ctx = common::gpu();
    let coeffs = [0.1f32, -0.9, 0.7, -0.3, 1.0, -0.5, 1e-3, 1e-7];
    check(&ctx, Numerics::LerpFma, &edge_cases(&coeffs), ieee_fma);
    let mut rng = Rng(72);
    let random: Vec<[f32; 3]> = (0..50_000)
        .map(|i| {
            [
                coeffs[i % coeffs.len()],
                normal(&mut rng, -100, 128),
                normal(&mut rng, -100, 128),
            ]
        })
        .collect();
    check(&ctx, Numerics::LerpFma, &random, ieee_fma);
}

#[test]
fn reciprocal_division_and_sqrt_are_correctly_rounded() {
    let ctx = common::gpu();
    let mut rng = Rng(73);
    let mut scales: Vec<[f32; 3]> = (0..20_000)
        .map(|_| [normal(&mut rng, -100, 100), 0.0, 0.0])
        .collect();
    // GradScaler's edges: an infinite scale unscales by 0 (PyTorch's 1/inf), 0 gives inf.
    for s in [
        f32::INFINITY,
        0.0,
        65536.0,
        2f32.powi(-24),
        2f32.powi(126),
        2f32.powi(-126),
    ] {
        scales.push([s, 0.0, 0.0]);
    }
    check(&ctx, Numerics::Recip, &scales, |&[s, _, _]| {
        let r = (1.0 / f64::from(s)) as f32;
        (r == 0.0 || r.is_infinite() || r.abs() >= f32::MIN_POSITIVE).then_some(r)
    });
    let quotients: Vec<[f32; 3]> = (0..20_000)
        .map(|_| [normal(&mut rng, -60, 60), normal(&mut rng, -60, 60), 0.0])
        .collect();
    check(&ctx, Numerics::DivRn, &quotients, |&[a, b, _]| Some(a / b));
    let roots: Vec<[f32; 3]> = (0..20_000)
        .map(|_| [normal(&mut rng, -100, 128).abs(), 0.0, 0.0])
        .chain([[0.0, 0.0, 0.0], [f32::INFINITY, 0.0, 0.0]])
        .collect();
    check(&ctx, Numerics::SqrtRn, &roots, |&[a, _, _]| Some(a.sqrt()));
}

#[test]
fn expm1_for_the_bias_corrections_matches_the_twin() {
    let ctx = common::gpu();
    let mut rng = Rng(74);
    let xs: Vec<[f32; 3]> = (0..20_000)
        .map(|_| [-normal(&mut rng, -30, 8).abs(), 0.0, 0.0])
        .chain([[0.0, 0.0, 0.0], [-104.5, 0.0, 0.0], [-1e-4 * 4e9, 0.0, 0.0]])
        .collect();
    check(&ctx, Numerics::Expm1Neg, &xs, |&[x, _, _]| {
        // Relatively accurate: within 4 ulp of the f64 value.
        let want = f64::from(x).exp_m1();
        let got = wgpu_adamw::twin::expm1_neg(x);
        assert!(
            (f64::from(got) - want).abs() <= 4.0 * f64::from(f32::EPSILON) * want.abs() + 1e-45,
            "expm1({x}) = {got}, f64 {want}"
        );
        None
    });
}
