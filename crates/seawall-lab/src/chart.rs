//! SVG charts (plotters): per scenario, downstream attempts and requests
//! over time with seawall's breaker-open periods shaded, and the p50 and
//! p99 latency of each stack over time.

use plotters::prelude::*;

use crate::run::ScenarioResult;
use crate::stacks::StackKind;

/// No resilience is drawn wide and first, so it shows around a stack that
/// behaves the same (tower's built-ins in an overload).
fn width(kind: StackKind) -> u32 {
    if kind == StackKind::None {
        5
    } else {
        2
    }
}

fn colour(kind: StackKind) -> RGBColor {
    match kind {
        StackKind::None => RGBColor(150, 150, 150),
        StackKind::Tower => RGBColor(214, 96, 39),
        StackKind::TowerResilience => RGBColor(148, 103, 189),
        StackKind::Seawall => RGBColor(31, 119, 180),
        StackKind::SeawallHedge => RGBColor(44, 160, 44),
        StackKind::SeawallPreset => RGBColor(23, 190, 207),
        StackKind::SeawallFleet => RGBColor(214, 39, 40),
    }
}

const SHADE: RGBColor = RGBColor(255, 220, 200);
const FAULT: RGBColor = RGBColor(235, 235, 235);

/// Renders the chart of one scenario as an SVG document.
pub fn render(result: &ScenarioResult) -> Result<String, String> {
    let mut svg = String::new();
    draw(result, &mut svg).map_err(|e| e.to_string())?;
    Ok(svg)
}

fn draw(result: &ScenarioResult, out: &mut String) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(out, (1000, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(40);
    title.draw_text(
        &format!(
            "seawall-lab: {} (seed {}) — {}",
            result.scenario, result.seed, result.description
        ),
        &("sans-serif", 18).into_font().color(&BLACK),
        (12, 12),
    )?;
    let (top, bottom) = body.split_vertically(360);
    let seconds = result.duration_s.ceil().max(1.0);

    // Top: attempts per second.
    let peak = result
        .stacks
        .iter()
        .flat_map(|s| {
            s.figures
                .series
                .attempts
                .iter()
                .chain(&s.figures.series.requests)
        })
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            "Downstream attempts per second (shaded: a seawall breaker open; grey: fault window)",
            ("sans-serif", 15),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..seconds, 0.0..peak * 1.75)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("per second")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .light_line_style(WHITE)
        .draw()?;
    // Headroom above the data for the legend.
    let top_y = peak * 1.75;
    if let Some((a, b)) = result.fault_window {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(a, 0.0), (b, top_y * 0.03)],
            FAULT.filled(),
        )))?;
    }
    if let Some(seawall) = result.get(StackKind::Seawall) {
        chart.draw_series(seawall.figures.series.breaker_open.iter().map(|&(a, b)| {
            Rectangle::new([(a, top_y * 0.03), (b, top_y)], SHADE.mix(0.6).filled())
        }))?;
    }
    for s in &result.stacks {
        let c = colour(s.stack);
        chart
            .draw_series(LineSeries::new(
                points(&s.figures.series.attempts),
                c.stroke_width(width(s.stack)),
            ))?
            .label(format!("{} attempts", s.stack.name()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    // Drawn last so that it stays visible where a stack's attempts match it.
    if let Some(first) = result.stacks.first() {
        chart
            .draw_series(DashedLineSeries::new(
                points(&first.figures.series.requests),
                6,
                4,
                BLACK.stroke_width(1),
            ))?
            .label("requests arriving")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;

    // Bottom: p99 latency by arrival second, log scale.
    let lat_max = result
        .stacks
        .iter()
        .flat_map(|s| s.figures.series.p99_ms.iter().flatten())
        .copied()
        .fold(10.0_f64, f64::max);
    let lat_min = result
        .stacks
        .iter()
        .flat_map(|s| s.figures.series.p50_ms.iter().flatten())
        .copied()
        .fold(lat_max, f64::min)
        .max(1.0)
        / 2.0;
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "Latency of the dependency's answers by arrival second: p99 (solid), p50 (dashed)",
            ("sans-serif", 15),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..seconds, (lat_min..lat_max * 4.0).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("latency (ms, log)")
        .y_labels(6)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .light_line_style(WHITE)
        .draw()?;
    if let Some((a, b)) = result.fault_window {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(a, lat_min), (b, lat_min * 1.15)],
            FAULT.filled(),
        )))?;
    }
    for s in &result.stacks {
        let c = colour(s.stack);
        // p50 thin and dashed, under the p99 lines.
        for run in contiguous(&s.figures.series.p50_ms) {
            chart.draw_series(DashedLineSeries::new(run, 3, 3, c.stroke_width(1)))?;
        }
    }
    for s in &result.stacks {
        let c = colour(s.stack);
        let series = &s.figures.series.p99_ms;
        // Seconds without any answer leave a gap instead of a false zero.
        for run in contiguous(series) {
            let label_it = run.first() == first_point(series).as_ref();
            let drawn = chart.draw_series(LineSeries::new(run, c.stroke_width(width(s.stack))))?;
            if label_it {
                drawn
                    .label(format!("{} p99", s.stack.name()))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                    });
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn points(values: &[u64]) -> Vec<(f64, f64)> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as f64 + 0.5, v as f64))
        .collect()
}

fn first_point(values: &[Option<f64>]) -> Option<(f64, f64)> {
    values
        .iter()
        .enumerate()
        .find_map(|(i, v)| v.map(|v| (i as f64 + 0.5, v.max(1.0))))
}

fn contiguous(values: &[Option<f64>]) -> Vec<Vec<(f64, f64)>> {
    let mut runs = Vec::new();
    let mut current = Vec::new();
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) => current.push((i as f64 + 0.5, v.max(1.0))),
            None if !current.is_empty() => runs.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        runs.push(current);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_split_lines() {
        let runs = contiguous(&[Some(1.0), None, Some(3.0), Some(4.0)]);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[1], vec![(2.5, 3.0), (3.5, 4.0)]);
        assert_eq!(first_point(&[None, Some(0.5)]), Some((1.5, 1.0)));
    }
}
