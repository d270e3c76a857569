//! The outputs: `learning_curve.svg` (plotters) and `learning_curve.csv`.

use crate::ScheduleRun;
use anyhow::{anyhow, Context};
use plotters::prelude::*;
use std::io::Write;
use std::path::Path;

/// Line colours of the four runs (the first four of matplotlib's `tab10`).
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

/// Writes one row per logged step and schedule: `step,schedule,lr,loss`.
pub fn write_csv(path: &Path, runs: &[ScheduleRun]) -> anyhow::Result<()> {
    let mut out = String::from("step,schedule,lr,loss\n");
    for run in runs {
        for p in &run.log {
            out.push_str(&format!(
                "{},{},{:e},{:e}\n",
                p.step, run.name, p.lr, p.loss
            ));
        }
    }
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(out.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

/// Draws the training-loss curves (log scale) above the lr curves of every run.
pub fn write_svg(path: &Path, runs: &[ScheduleRun], caption: &str) -> anyhow::Result<()> {
    let steps = runs
        .iter()
        .flat_map(|r| r.log.last())
        .map(|p| p.step)
        .max()
        .unwrap_or(1)
        .max(1);
    let losses = runs
        .iter()
        .flat_map(|r| r.log.iter().map(|p| f64::from(p.loss)));
    let (lo, hi) = losses.fold((f64::INFINITY, 0.0f64), |(lo, hi), l| {
        (if l > 0.0 { lo.min(l) } else { lo }, hi.max(l))
    });
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo * 0.8, hi * 1.25)
    } else {
        (1e-3, 1.0)
    };
    let lr_max = runs
        .iter()
        .flat_map(|r| r.lr.iter().map(|&l| f64::from(l)))
        .fold(0.0f64, f64::max)
        .max(1e-12)
        * 1.08;

    let root = SVGBackend::new(path, (1000, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (head, body) = root.split_vertically(40);
    head.draw_text(
        caption,
        &("sans-serif", 18).into_font().color(&BLACK),
        (20, 14),
    )
    .map_err(|e| anyhow!("{e}"))?;
    let (top, bottom) = body.split_vertically(440);

    let mut loss_chart = ChartBuilder::on(&top)
        .caption("training loss (full batch, log scale)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(
            0u32..steps,
            (lo..hi).log_scale().with_key_points(log_ticks(lo, hi)),
        )
        .map_err(|e| anyhow!("{e}"))?;
    loss_chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("cross-entropy")
        .y_label_formatter(&|v| format!("{v:.3}"))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (run, &color) in runs.iter().zip(COLORS.iter().cycle()) {
        loss_chart
            .draw_series(LineSeries::new(
                run.log.iter().map(|p| (p.step, f64::from(p.loss).max(lo))),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label(format!("{} (final {:.4})", run.name, run.final_loss))
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
        .map_err(|e| anyhow!("{e}"))?;

    let mut lr_chart = ChartBuilder::on(&bottom)
        .caption(
            "learning rate (read back from the device)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0u32..steps, 0.0..lr_max)
        .map_err(|e| anyhow!("{e}"))?;
    lr_chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("lr")
        .y_label_formatter(&|v| format!("{v:.1e}"))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (run, &color) in runs.iter().zip(COLORS.iter().cycle()) {
        lr_chart
            .draw_series(LineSeries::new(
                // Every step's lr, as the device used it.
                (1u32..).zip(run.lr.iter().map(|&l| f64::from(l))),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
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
        .map_err(|e| anyhow!("{e}"))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Tick values 1, 2 and 5 times powers of ten within `lo..=hi` (plotters' log axis labels only
/// whole decades, and a loss curve often spans less than one).
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi {
        for m in [1.0, 2.0, 3.0, 5.0] {
            let v = m * decade;
            if (lo..=hi).contains(&v) {
                ticks.push(v);
            }
        }
        decade *= 10.0;
    }
    ticks
}
