//! The outputs: `learning_curve.svg` (plotters) and `learning_curve.csv`.

use crate::{LogPoint, ScheduleRun};
use anyhow::{anyhow, Context};
use plotters::prelude::*;
use std::io::Write;
use std::path::Path;

/// Line colours of the schedules (matplotlib's `tab10`).
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(0, 0, 0),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
];

/// Writes one row per logged step, schedule and seed:
/// `schedule,seed,step,lr,batch_loss,train_loss,train_accuracy,test_loss,test_accuracy`.
pub fn write_csv(path: &Path, runs: &[ScheduleRun]) -> anyhow::Result<()> {
    let mut out = String::from(
        "schedule,seed,step,lr,batch_loss,train_loss,train_accuracy,test_loss,test_accuracy\n",
    );
    for run in runs {
        for seed in &run.seeds {
            for p in &seed.log {
                out.push_str(&format!(
                    "{},{},{},{:e},{:e},{:e},{:e},{:e},{:e}\n",
                    run.name,
                    seed.seed,
                    p.step,
                    p.lr,
                    p.batch_loss,
                    p.train_loss,
                    p.train_accuracy,
                    p.test_loss,
                    p.test_accuracy
                ));
            }
        }
    }
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(out.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

/// Per logged step of a schedule's runs: `(step, mean, min, max)` of `f` over the seeds.
fn band(run: &ScheduleRun, f: impl Fn(&LogPoint) -> f64) -> Vec<(u32, f64, f64, f64)> {
    let Some(first) = run.seeds.first() else {
        return Vec::new();
    };
    (0..first.log.len())
        .map(|i| {
            let v: Vec<f64> = run
                .seeds
                .iter()
                .filter_map(|s| s.log.get(i))
                .map(&f)
                .collect();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (first.log[i].step, mean, lo, hi)
        })
        .collect()
}

/// Draws, for every schedule, the mean over its seeds as a line and the min–max over its
/// seeds as a band: the training loss over the whole training set (log scale), the
/// held-out accuracy, and the lr the device used at every step.
pub fn write_svg(path: &Path, runs: &[ScheduleRun], caption: &str) -> anyhow::Result<()> {
    let e = |e: DrawingAreaErrorKind<std::io::Error>| anyhow!("{e}");
    let steps = runs
        .iter()
        .flat_map(|r| r.seeds.iter().flat_map(|s| s.log.last()))
        .map(|p| p.step)
        .max()
        .unwrap_or(1)
        .max(1);
    let loss = |p: &LogPoint| f64::from(p.train_loss);
    let acc = |p: &LogPoint| 100.0 * f64::from(p.test_accuracy);
    let losses: Vec<Vec<(u32, f64, f64, f64)>> = runs.iter().map(|r| band(r, loss)).collect();
    let accs: Vec<Vec<(u32, f64, f64, f64)>> = runs.iter().map(|r| band(r, acc)).collect();
    let (lo, hi) = losses
        .iter()
        .flatten()
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), &(_, _, l, h)| {
            (if l > 0.0 { lo.min(l) } else { lo }, hi.max(h))
        });
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo * 0.95, hi * 1.05)
    } else {
        (1e-3, 1.0)
    };
    let acc_lo = accs
        .iter()
        .flatten()
        .map(|&(_, m, _, _)| m)
        .fold(100.0f64, f64::min)
        .clamp(0.0, 95.0);
    let lr_max = runs
        .iter()
        .flat_map(|r| {
            r.seeds
                .iter()
                .flat_map(|s| s.lr.iter().map(|&l| f64::from(l)))
        })
        .fold(0.0f64, f64::max)
        .max(1e-12)
        * 1.08;

    let root = SVGBackend::new(path, (1000, 1100)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let (head, body) = root.split_vertically(40);
    head.draw_text(
        caption,
        &("sans-serif", 15).into_font().color(&BLACK),
        (20, 14),
    )
    .map_err(e)?;
    let (top, rest) = body.split_vertically(420);
    let (middle, bottom) = rest.split_vertically(380);
    // "name: final mean [min, max]".
    let legend = |name: &str, (mean, l, h): (f64, f64, f64), pct: bool| {
        if pct {
            format!("{name}: {mean:.2}% [{l:.2}, {h:.2}]")
        } else {
            format!("{name}: {mean:.4} [{l:.4}, {h:.4}]")
        }
    };

    let mut loss_chart = ChartBuilder::on(&top)
        .caption(
            "training loss, whole training set (mean and min-max of the seeds)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0u32..steps, lo..hi)
        .map_err(e)?;
    loss_chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("cross-entropy")
        .y_label_formatter(&|v| format!("{v:.2}"))
        .draw()
        .map_err(e)?;
    for ((run, b), &color) in runs.iter().zip(&losses).zip(COLORS.iter().cycle()) {
        draw_band(&mut loss_chart, b, color, lo)?;
        let last = b.last().map_or((0.0, 0.0, 0.0), |&(_, m, l, h)| (m, l, h));
        loss_chart
            .draw_series(LineSeries::new(
                b.iter().map(|&(s, m, _, _)| (s, m.max(lo))),
                color.stroke_width(2),
            ))
            .map_err(e)?
            .label(legend(&run.name, last, false))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
    }
    loss_chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(e)?;

    let mut acc_chart = ChartBuilder::on(&middle)
        .caption(
            "held-out accuracy (mean and min-max of the seeds)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0u32..steps, acc_lo..100.0)
        .map_err(e)?;
    acc_chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("accuracy (%)")
        .draw()
        .map_err(e)?;
    for ((run, b), &color) in runs.iter().zip(&accs).zip(COLORS.iter().cycle()) {
        draw_band(&mut acc_chart, b, color, acc_lo)?;
        let last = b.last().map_or((0.0, 0.0, 0.0), |&(_, m, l, h)| (m, l, h));
        acc_chart
            .draw_series(LineSeries::new(
                b.iter().map(|&(s, m, _, _)| (s, m.max(acc_lo))),
                color.stroke_width(2),
            ))
            .map_err(e)?
            .label(legend(&run.name, last, true))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
    }
    acc_chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(e)?;

    let mut lr_chart = ChartBuilder::on(&bottom)
        .caption(
            "learning rate of every step (read back from the device)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0u32..steps, 0.0..lr_max)
        .map_err(e)?;
    lr_chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("lr")
        .y_label_formatter(&|v| format!("{v:.1e}"))
        .draw()
        .map_err(e)?;
    for (run, &color) in runs.iter().zip(COLORS.iter().cycle()) {
        let Some(first) = run.seeds.first() else {
            continue;
        };
        lr_chart
            .draw_series(LineSeries::new(
                // Every step's lr, as the device used it (the same for every seed).
                (1u32..).zip(first.lr.iter().map(|&l| f64::from(l))),
                color.stroke_width(2),
            ))
            .map_err(e)?
            .label(run.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
    }
    lr_chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(e)?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The min–max band of `b` as a filled polygon (values clamped to the axis' `floor`).
fn draw_band<'a, Y>(
    chart: &mut ChartContext<
        'a,
        SVGBackend<'a>,
        Cartesian2d<plotters::coord::types::RangedCoordu32, Y>,
    >,
    b: &[(u32, f64, f64, f64)],
    color: RGBColor,
    floor: f64,
) -> anyhow::Result<()>
where
    Y: Ranged<ValueType = f64>,
{
    let mut poly: Vec<(u32, f64)> = b.iter().map(|&(s, _, _, h)| (s, h.max(floor))).collect();
    poly.extend(b.iter().rev().map(|&(s, _, l, _)| (s, l.max(floor))));
    chart
        .draw_series(std::iter::once(Polygon::new(
            poly,
            color.mix(0.18).filled(),
        )))
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
