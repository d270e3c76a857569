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

/// The schedules' logarithms, exponentials and powers: the kernel equals its twin bit for bit
/// on every input, and the twin is within a few ulp of f64 (the schedules' accuracy rests on
/// these; the lr tolerance is ~16 ulp).
#[test]
fn schedule_numerics_match_the_twin_and_f64() {
    let ctx = common::gpu();
    let mut rng = Rng(77);
    let ulps = |got: f32, want: f64| {
        (f64::from(got) - want).abs() / (want.abs() * f64::EPSILON * 2f64.powi(29))
    };
    // ln of positive normals.
    let cases: Vec<[f32; 3]> = (0..4000)
        .map(|_| [normal(&mut rng, -126, 127).abs(), 0.0, 0.0])
        .chain([
            [1.0, 0.0, 0.0],
            [f32::MIN_POSITIVE, 0.0, 0.0],
            [f32::MAX, 0.0, 0.0],
        ])
        .collect();
    check(&ctx, Numerics::LnPos, &cases, |_| None);
    for (c, r) in cases.iter().zip(numerics_cpu(Numerics::LnPos, &cases)) {
        let want = f64::from(c[0]).ln();
        assert!(
            (f64::from(r) - want).abs() <= 2e-7 * want.abs().max(1e-7 / 2e-7),
            "ln({}) = {r}, f64 {want}",
            c[0]
        );
    }
    // ln(1 - u) for u in [0, 1/2].
    let cases: Vec<[f32; 3]> = (0..4000)
        .map(|i| {
            [
                if i % 2 == 0 {
                    rng.unit() as f32 * 0.5
                } else {
                    normal(&mut rng, -40, -1).abs()
                },
                0.0,
                0.0,
            ]
        })
        .chain([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]])
        .collect();
    check(&ctx, Numerics::LnOneMinus, &cases, |_| None);
    for (c, r) in cases.iter().zip(numerics_cpu(Numerics::LnOneMinus, &cases)) {
        let want = (-f64::from(c[0])).ln_1p();
        assert!(
            want == 0.0 && r == 0.0 || ulps(r, want) <= 3.0,
            "ln(1 - {}) = {r}, f64 {want}",
            c[0]
        );
    }
    // exp(x) for x <= 0, down to the flush at 2^-126.
    let cases: Vec<[f32; 3]> = (0..4000)
        .map(|_| [-(rng.unit() as f32) * 90.0, 0.0, 0.0])
        .chain([
            [0.0, 0.0, 0.0],
            [-87.0, 0.0, 0.0],
            [-87.5, 0.0, 0.0],
            [-1e-30, 0.0, 0.0],
        ])
        .collect();
    check(&ctx, Numerics::ExpNeg, &cases, |_| None);
    for (c, r) in cases.iter().zip(numerics_cpu(Numerics::ExpNeg, &cases)) {
        let want = f64::from(c[0]).exp();
        assert!(
            if c[0] < -87.0 {
                r == 0.0
            } else {
                ulps(r, want) <= 2.0
            },
            "exp({}) = {r}, f64 {want}",
            c[0]
        );
    }
    // 2^(n * log2(gamma)) over every n, gamma^n in f64.
    let mut cases = Vec::new();
    for gamma in [0.5f64, 0.97, 0.999, 0.9999999, 1.0, 1e-3] {
        let l = gamma.log2();
        let (hi, lo) = (l as f32, (l - f64::from(l as f32)) as f32);
        for n in [
            0u32,
            1,
            2,
            7,
            100,
            10_000,
            1 << 24,
            (1 << 24) + 1,
            123_456_789,
            u32::MAX,
        ] {
            cases.push([f32::from_bits(n), hi, lo]);
        }
        for _ in 0..200 {
            cases.push([
                f32::from_bits(rng.next_u64() as u32 >> rng.range(0, 32)),
                hi,
                lo,
            ]);
        }
    }
    check(&ctx, Numerics::Exp2Mul, &cases, |_| None);
    for (c, r) in cases.iter().zip(numerics_cpu(Numerics::Exp2Mul, &cases)) {
        let n = f64::from(c[0].to_bits());
        let want = (n * (f64::from(c[1]) + f64::from(c[2]))).exp2();
        assert!(
            if want < 1.2e-38 {
                r == 0.0 || ulps(r, want) <= 2.0
            } else {
                ulps(r, want) <= 2.0
            },
            "2^({n} * l) = {r}, f64 {want}"
        );
    }
    // (num / den)^p.
    let mut cases = Vec::new();
    for p in [0.5f32, 1.0, 2.0, 3.7, 7.5] {
        for (num, den) in [
            (0u32, 10u32),
            (1, 40),
            (39, 40),
            (40, 40),
            (1, 4_000_000_000),
            (3_999_999_999, 4_000_000_000),
            (123_456, 7_654_321),
        ] {
            cases.push([f32::from_bits(num), f32::from_bits(den), p]);
        }
        for _ in 0..200 {
            let den = (rng.next_u64() as u32).max(1);
            let num = (rng.next_u64() as u32) % den;
            cases.push([f32::from_bits(num), f32::from_bits(den), p]);
        }
    }
    check(&ctx, Numerics::PowRatio, &cases, |_| None);
    for (c, r) in cases.iter().zip(numerics_cpu(Numerics::PowRatio, &cases)) {
        let (num, den, p) = (
            f64::from(c[0].to_bits()),
            f64::from(c[1].to_bits()),
            f64::from(c[2]),
        );
        let want = (num / den).powf(p);
        // A few ulp of the value, growing with |ln(value)|: num and den above 2^24 are rounded
        // to f32 (1.5 ulp on their ratio, multiplied by p into the exponent).
        let err = (f64::from(r) - want).abs();
        assert!(
            err == 0.0 || err <= 2.5e-7 * want * (1.0 + want.ln().abs()) + 1e-37,
            "({num}/{den})^{p} = {r}, f64 {want}"
        );
    }
    // cos^2(pi/2 a/b) given d = b - a.
    let cases: Vec<[f32; 3]> = (0..2000)
        .map(|_| {
            let b = (rng.range(1, 1 << 24)) as f32;
            let a = (rng.range(0, b as u64 + 1)) as f32;
            [a, b - a, b]
        })
        .collect();
    check(&ctx, Numerics::CosSqHalfPi, &cases, |_| None);
}
