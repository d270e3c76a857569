//! The kernel's numerics functions run on the device (`numerics_probe`) against their CPU
//! twin and against IEEE arithmetic, bit for bit: the exact fma over the whole normal range
//! and at the top of it (where PyTorch's values overflow to 3.4e37 or inf, not NaN), the
//! correctly rounded reciprocal, division and square root, `expm1` for the bias
//! corrections, and the 16-bit float conversions (against the `half` crate: every bf16 and f16
//! widened, narrowing to nearest even at every tie, stochastic rounding's neighbours and bias).

mod common;

use common::Rng;
use wgpu_adamw::probe::{numerics_cpu, numerics_gpu, Numerics};
use wgpu_adamw::twin::{self, DTYPE_BF16, DTYPE_F16};

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

// ---------------------------------------------------------------- 16-bit floats

/// The kernel's result bits for each case, asserted equal bit for bit to the twin's.
fn gpu_bits_are_twin_bits(
    ctx: &wgpu_adamw::GpuContext,
    f: Numerics,
    cases: &[[f32; 3]],
) -> Vec<u32> {
    let gpu = numerics_gpu(&ctx.device, &ctx.queue, f, cases).unwrap();
    let cpu = numerics_cpu(f, cases);
    assert_eq!(gpu.len(), cases.len());
    for ((c, g), t) in cases.iter().zip(&gpu).zip(&cpu) {
        assert_eq!(
            g.to_bits(),
            t.to_bits(),
            "{f:?}({:#x}, {:#x}, {:#x}): kernel {:#x}, twin {:#x}",
            c[0].to_bits(),
            c[1].to_bits(),
            c[2].to_bits(),
            g.to_bits(),
            t.to_bits()
        );
    }
    cpu.iter().map(|t| t.to_bits()).collect()
}

fn dtype_name(dtype: u32) -> &'static str {
    if dtype == DTYPE_F16 {
        "f16"
    } else {
        "bf16"
    }
}

/// The `half` crate's round to nearest even.
fn half_narrow(x: f32, dtype: u32) -> u32 {
    u32::from(if dtype == DTYPE_F16 {
        half::f16::from_f32(x).to_bits()
    } else {
        half::bf16::from_f32(x).to_bits()
    })
}

/// A 16-bit NaN pattern of `dtype`.
fn is_nan16(h: u32, dtype: u32) -> bool {
    let (exp, man) = if dtype == DTYPE_F16 {
        (0x7c00, 0x3ff)
    } else {
        (0x7f80, 0x7f)
    };
    h & exp == exp && h & man != 0
}

/// The largest finite magnitude's bits.
fn max_finite16(dtype: u32) -> u32 {
    if dtype == DTYPE_F16 {
        0x7bff
    } else {
        0x7f7f
    }
}

#[test]
fn every_bf16_and_f16_widens_exactly() {
    let ctx = common::gpu();
    for dtype in [DTYPE_BF16, DTYPE_F16] {
        let cases: Vec<[f32; 3]> = (0..=0xffffu32)
            .map(|h| [f32::from_bits(h), f32::from_bits(dtype), 0.0])
            .collect();
        let got = gpu_bits_are_twin_bits(&ctx, Numerics::Widen16, &cases);
        for (h, &g) in (0..=0xffffu16).zip(&got) {
            let want = if dtype == DTYPE_F16 {
                half::f16::from_bits(h).to_f32()
            } else {
                half::bf16::from_bits(h).to_f32()
            };
            let g = f32::from_bits(g);
            if want.is_nan() {
                // A NaN keeps its sign and its payload, shifted (`half` also sets the quiet bit).
                let h = u32::from(h);
                let bits = if dtype == DTYPE_F16 {
                    (h & 0x8000) << 16 | 0x7f80_0000 | (h & 0x3ff) << 13
                } else {
                    h << 16
                };
                assert!(
                    g.is_nan() && g.to_bits() == bits,
                    "{h:#x}: {:#x}",
                    g.to_bits()
                );
            } else {
                assert_eq!(
                    g.to_bits(),
                    want.to_bits(),
                    "{} {h:#x}: {g:e}, half {want:e}",
                    dtype_name(dtype)
                );
            }
        }
    }
}

/// f32 inputs for narrowing to `dtype`: every 16-bit value, every midpoint between neighbours
/// (a tie) and the f32 on either side of it, both signs; random bit patterns over the whole
/// range, f32 subnormals, zeros, infinities, NaNs, and the overflow thresholds.
fn narrowing_inputs(dtype: u32, rng: &mut Rng) -> Vec<f32> {
    let mut xs: Vec<f32> = (0..=0xffffu32).map(|h| twin::widen16(h, dtype)).collect();
    let top = max_finite16(dtype);
    for h in 0..=top {
        let lo = f64::from(twin::widen16(h, dtype));
        let hi = if h == top {
            // The next value past the largest finite one, were the exponent not saturated.
            2.0 * lo - f64::from(twin::widen16(h - 1, dtype))
        } else {
            f64::from(twin::widen16(h + 1, dtype))
        };
        let mid = (lo + hi) / 2.0;
        assert_eq!(f64::from(mid as f32), mid, "midpoint {mid:e} is an f32");
        let bits = (mid as f32).to_bits();
        for b in [bits - 1, bits, bits + 1] {
            xs.push(f32::from_bits(b));
            xs.push(-f32::from_bits(b));
        }
    }
    xs.extend((0..200_000).map(|_| f32::from_bits(rng.next_u64() as u32)));
    xs.extend((0..20_000).map(|_| f32::from_bits(rng.next_u64() as u32 & 0x807f_ffff)));
    for b in [1u32, 2, 3, 0x7f_ffff, 0x40_0000, 0x40_0001] {
        xs.push(f32::from_bits(b));
        xs.push(-f32::from_bits(b));
    }
    xs.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY]);
    xs.extend(
        [
            0x7fc0_0000u32,
            0x7f80_0001,
            0x7fa0_0000,
            0x7f80_2000,
            0x7fff_ffff,
            0xffc0_0000,
        ]
        .map(f32::from_bits),
    );
    xs.extend([0xff80_0001u32, 0xffbf_ffff, 0x7fc1_2345].map(f32::from_bits));
    // f16: 65504 (largest), 65520 (the tie to inf), 65536; bf16: around f32::MAX.
    let around: Vec<u32> = (0x477f_dfc0..=0x4780_0040)
        .chain(0x7f7f_7000..=0x7f7f_ffff)
        .chain(0x7f7f_7f00 - 64..0x7f7f_7f00 + 64)
        .collect();
    for b in around {
        xs.push(f32::from_bits(b));
        xs.push(-f32::from_bits(b));
    }
    xs
}

#[test]
fn narrowing_rounds_to_nearest_even_as_half_does() {
    let ctx = common::gpu();
    let mut rng = Rng(78);
    for dtype in [DTYPE_BF16, DTYPE_F16] {
        let xs = narrowing_inputs(dtype, &mut rng);
        let cases: Vec<[f32; 3]> = xs
            .iter()
            .map(|&x| [x, f32::from_bits(dtype), 0.0])
            .collect();
        let got = gpu_bits_are_twin_bits(&ctx, Numerics::Narrow16, &cases);
        for (&x, &g) in xs.iter().zip(&got) {
            let name = dtype_name(dtype);
            assert!(g <= 0xffff, "{name}({x:e}): {g:#x}");
            if x.is_nan() {
                // A quiet NaN with x's sign and the top of its payload.
                let bits = x.to_bits();
                let want = if dtype == DTYPE_F16 {
                    (bits >> 16) & 0x8000 | 0x7e00 | (bits >> 13) & 0x3ff
                } else {
                    bits >> 16 | 0x40
                };
                assert!(is_nan16(g, dtype) && g == want, "{name}({bits:#x}): {g:#x}");
                continue;
            }
            assert_eq!(
                g,
                half_narrow(x, dtype),
                "{name}({x:e} = {:#x})",
                x.to_bits()
            );
        }
    }
    // The thresholds, spelled out.
    let f16 = |x: f32| twin::narrow16(x, DTYPE_F16);
    assert_eq!(f16(65504.0), 0x7bff);
    assert_eq!(f16(f32::from_bits(0x477f_efff)), 0x7bff); // just below 65520
    assert_eq!(f16(65520.0), 0x7c00);
    assert_eq!(f16(-65520.0), 0xfc00);
    assert_eq!(f16(2f32.powi(-25)), 0); // the tie with the smallest subnormal goes to 0
    assert_eq!(f16(f32::from_bits(0x3300_0001)), 1);
    assert_eq!(f16(3.0 * 2f32.powi(-25)), 2); // 1.5 subnormal units: even
    assert_eq!(f16(-f32::from_bits(1)), 0x8000);
    assert_eq!(f16(f32::NAN) & 0x7e00, 0x7e00);
    assert_eq!(f16(-f32::NAN) & 0xfe00, 0xfe00);
    let bf16 = |x: f32| twin::narrow16(x, DTYPE_BF16);
    assert_eq!(bf16(f32::MAX), 0x7f80);
    assert_eq!(bf16(f32::from_bits(0x7f7f_7fff)), 0x7f7f);
    assert_eq!(bf16(f32::from_bits(0x7f7f_8000)), 0x7f80);
    assert_eq!(bf16(f32::from_bits(0x0000_8000)), 0); // a tie between f32 subnormals
    assert_eq!(bf16(f32::from_bits(0x0001_8000)), 2);
}

/// The two `dtype` values around `x` (finite or infinite, not NaN), as 16-bit patterns:
/// `(lower, upper)` in magnitude, equal when `x` is exact.
fn neighbours(x: f32, dtype: u32) -> (u32, u32) {
    let n = twin::narrow16(x, dtype);
    let w = twin::widen16(n, dtype);
    if w == x {
        (n, n)
    } else if w.abs() < x.abs() {
        (n, n + 1)
    } else {
        (n - 1, n)
    }
}

#[test]
fn stochastic_rounding_picks_a_neighbour_the_same_on_the_device() {
    let ctx = common::gpu();
    let mut rng = Rng(79);
    for dtype in [DTYPE_BF16, DTYPE_F16] {
        let mut xs: Vec<f32> = (0..100_000)
            .map(|_| f32::from_bits(rng.next_u64() as u32))
            .collect();
        // Magnitudes from 2^-60 to 2^17: f16's subnormals (every count of discarded bits),
        // normals and overflow; f32 subnormals; exact values; the edges.
        xs.extend((0..100_000).map(|_| {
            let e = rng.range(127 - 60, 127 + 17) as u32;
            f32::from_bits(e << 23 | (rng.next_u64() as u32 & 0x807f_ffff))
        }));
        xs.extend((0..10_000).map(|_| f32::from_bits(rng.next_u64() as u32 & 0x807f_ffff)));
        xs.extend((0..10_000).map(|_| twin::widen16(rng.next_u64() as u32 & 0xffff, dtype)));
        xs.extend((0..10_000).map(|_| {
            f32::from_bits(rng.range(0x477f_c000, 0x4780_4000) as u32)
                * if rng.unit() < 0.5 { -1.0 } else { 1.0 }
        }));
        xs.extend((0..10_000).map(|_| f32::from_bits(rng.range(0x7f7f_0000, 0x7f80_0000) as u32)));
        xs.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
        ]);
        let mut cases: Vec<[f32; 3]> = xs
            .iter()
            .map(|&x| {
                let r = rng.next_u64() as u32;
                [x, f32::from_bits(dtype), f32::from_bits(r)]
            })
            .collect();
        // r = 0 (the truncation: checked below) and r = all ones (the largest carry).
        for &x in &xs[..20_000] {
            for r in [0, u32::MAX] {
                cases.push([x, f32::from_bits(dtype), f32::from_bits(r)]);
            }
        }
        let got = gpu_bits_are_twin_bits(&ctx, Numerics::Narrow16Stochastic, &cases);
        for (c, &g) in cases.iter().zip(&got) {
            let (x, r) = (c[0], c[2].to_bits());
            let name = dtype_name(dtype);
            if x.is_nan() {
                assert_eq!(g, twin::narrow16(x, dtype), "{name}({x:e})");
                continue;
            }
            let (lo, hi) = neighbours(x, dtype);
            assert!(
                g == lo || g == hi,
                "{name}({x:e} = {:#x}, r {r:#x}): {g:#x}, not {lo:#x} or {hi:#x}",
                x.to_bits()
            );
            let f16_beyond = dtype == DTYPE_F16 && x.abs() >= 65536.0;
            if r == 0 && !f16_beyond {
                assert_eq!(g, lo, "{name}({x:e}, r 0) truncates");
            }
        }
    }
}

/// The mean of stochastic rounding over many random words, in f64.
fn stochastic_mean(x: f32, dtype: u32, rs: impl Iterator<Item = u32>) -> f64 {
    let (mut sum, mut n) = (0.0f64, 0u32);
    for r in rs {
        sum += f64::from(twin::widen16(twin::narrow16_stochastic(x, dtype, r), dtype));
        n += 1;
    }
    sum / f64::from(n)
}

#[test]
fn stochastic_rounding_is_unbiased() {
    let ulp = |x: f32, dtype: u32| {
        let (lo, hi) = neighbours(x, dtype);
        assert_ne!(lo, hi, "{x:e} is not exact");
        (f64::from(twin::widen16(hi, dtype)) - f64::from(twin::widen16(lo, dtype))).abs()
    };
    // Every value of the random bits that are added (16 for bf16, 13 for f16 normals, 15 for
    // f16 subnormals above 2^-15), equally often: the mean is x exactly.
    let exact: [(f32, u32); 12] = [
        (1.234_567_9, DTYPE_BF16),
        (-3.141_59e-3, DTYPE_BF16),
        (1.0e30, DTYPE_BF16),
        (f32::from_bits(0x7f7e_1234), DTYPE_BF16),
        (1.234_5e-39, DTYPE_BF16), // an f32 subnormal, a bf16 subnormal
        (-f32::from_bits(0x0000_7abc), DTYPE_BF16),
        (1.234_567_9, DTYPE_F16),
        (-1.234e-4, DTYPE_F16),
        (60_000.5, DTYPE_F16),
        (65_503.0, DTYPE_F16),
        (3.0e-5, DTYPE_F16), // f16 subnormal: 15 discarded bits
        (-4.1e-5, DTYPE_F16),
    ];
    for (x, dtype) in exact {
        let mean = stochastic_mean(x, dtype, 0..1 << 16);
        assert_eq!(
            mean,
            f64::from(x),
            "{}({x:e}) ulp {:e}",
            dtype_name(dtype),
            ulp(x, dtype)
        );
    }
    // Deeper in f16's subnormals more bits are discarded: an odd multiplier makes i * K
    // equidistributed in the low 20 bits over 2^20 draws, so the mean is exact down to 20
    // discarded bits (|x| >= 2^-21) and within a small fraction of an ulp below (a random
    // sample of 2^20 would be within ~5e-4 ulp).
    let weyl = || (0..1u32 << 20).map(|i| i.wrapping_mul(0x9e37_79b9));
    for x in [1.0e-6f32, 7.7e-7, -5.0e-7] {
        let mean = stochastic_mean(x, DTYPE_F16, weyl());
        assert_eq!(mean, f64::from(x), "f16({x:e})");
    }
    for x in [1.0e-8f32, -3.3e-9, 1.0e-10, 1.0e-12, 2.0e-13] {
        let mean = stochastic_mean(x, DTYPE_F16, weyl());
        let err = (mean - f64::from(x)).abs() / ulp(x, DTYPE_F16);
        assert!(err < 1e-4, "f16({x:e}): mean {mean:e}, {err:e} ulp");
    }
}

/// The native f16 variant of the kernel (the device's own conversions) converts exactly as
/// the packed one on lavapipe (`GpuOptions::f16` picks the native path only where the same
/// probe holds on the device at hand).
#[test]
fn native_f16_conversions_equal_the_packed_ones_on_lavapipe() {
    let ctx = common::gpu();
    assert!(wgpu_adamw::probe::native_f16_is_exact(&ctx.device, &ctx.queue).unwrap());
}
