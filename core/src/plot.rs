//! PNG charts for results people would rather look at than read: training
//! curves, policy comparisons and quality heat maps (feature `plot`).
//!
//! Text is drawn with DejaVu Sans from the system (Debian `fonts-dejavu-core`),
//! or with the TrueType file named by `MOE_EDGE_FONT`.

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// No usable font was found.
    #[error("no font for chart text: install fonts-dejavu-core or set MOE_EDGE_FONT ({0})")]
    NoFont(String),
    /// The data cannot be drawn (empty, mismatched lengths or not finite).
    #[error("cannot plot: {0}")]
    BadData(String),
    /// The drawing backend failed (usually writing the PNG).
    #[error("drawing failed: {0}")]
    Draw(String),
}

/// One named line of a [`line_chart`].
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// (x, y) points, in x order.
    pub points: Vec<(f64, f64)>,
}

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 600;
const FONT_CANDIDATES: [&str; 2] =
    ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"];

/// Registers the chart font once per process.
fn ensure_font() -> Result<(), PlotError> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<String> = match std::env::var("MOE_EDGE_FONT") {
            Ok(path) => vec![path],
            Err(_) => FONT_CANDIDATES.iter().map(|s| s.to_string()).collect(),
        };
        for path in &candidates {
            if let Ok(bytes) = std::fs::read(path) {
                // plotters keeps a &'static [u8]; the font lives for the whole process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                return plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                    .map_err(|_| format!("{path} is not a TrueType font"));
            }
        }
        Err(format!("tried {}", candidates.join(", ")))
    })
    .clone()
    .map_err(PlotError::NoFont)
}

fn draw_err(e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// A padded range covering every value.
fn span(values: impl Iterator<Item = f64>) -> Result<Range<f64>, PlotError> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() || !hi.is_finite() {
        return Err(PlotError::BadData("no finite values".into()));
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { lo.abs().max(1.0) * 0.05 };
    Ok(lo - pad..hi + pad)
}

/// The colour of the i-th series or bar.
fn colour(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    PALETTE[i % PALETTE.len()]
}

/// Draws named lines against a shared x axis (e.g. reward per training episode).
pub fn line_chart(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<(), PlotError> {
    ensure_font()?;
    if series.iter().all(|s| s.points.is_empty()) {
        return Err(PlotError::BadData("every series is empty".into()));
    }
    let points = || series.iter().flat_map(|s| s.points.iter());
    let x = span(points().map(|p| p.0))?;
    let y = span(points().map(|p| p.1))?;
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)
        .map_err(draw_err)?;
    chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw().map_err(draw_err)?;
    for (i, s) in series.iter().enumerate() {
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
            .map_err(draw_err)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(draw_err)?;
    root.present().map_err(draw_err)
}

/// Draws grouped bars: for each category (e.g. a method) one bar per measure
/// (e.g. mean and final reward), each value written above its bar.
pub fn bar_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    categories: &[String],
    measures: &[(String, Vec<f64>)],
) -> Result<(), PlotError> {
    ensure_font()?;
    if categories.is_empty() || measures.is_empty() {
        return Err(PlotError::BadData("no bars".into()));
    }
    if let Some((name, _)) = measures.iter().find(|(_, v)| v.len() != categories.len()) {
        return Err(PlotError::BadData(format!("measure {name} has a value count unlike the categories")));
    }
    let values = || measures.iter().flat_map(|(_, v)| v.iter().copied());
    let y = span(values().chain([0.0]))?;
    let n = categories.len();
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n as f64, y)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-6 && i < n { categories[i].clone() } else { String::new() }
        })
        .y_desc(y_label)
        .draw()
        .map_err(draw_err)?;
    let width = 0.8 / measures.len() as f64;
    for (m, (name, vals)) in measures.iter().enumerate() {
        let c = colour(m);
        let bars = vals.iter().enumerate().map(|(i, &v)| {
            let left = i as f64 + 0.1 + m as f64 * width;
            Rectangle::new([(left, 0.0), (left + width * 0.95, v)], c.filled())
        });
        chart
            .draw_series(bars)
            .map_err(draw_err)?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], c.filled()));
        let labels = vals.iter().enumerate().map(|(i, &v)| {
            let centre = i as f64 + 0.1 + (m as f64 + 0.5) * width;
            let style = ("sans-serif", 13).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom));
            Text::new(format!("{v:.2}"), (centre, v), style)
        });
        chart.draw_series(labels).map_err(draw_err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(draw_err)?;
    root.present().map_err(draw_err)
}

/// Draws a table of values as coloured cells, each annotated with its value
/// (e.g. quality per expert and domain). `values[r][c]` is row `r`, column `c`.
pub fn heat_map(
    path: &Path,
    title: &str,
    rows: &[String],
    columns: &[String],
    values: &[Vec<f64>],
) -> Result<(), PlotError> {
    ensure_font()?;
    if rows.is_empty() || columns.is_empty() || values.len() != rows.len() {
        return Err(PlotError::BadData("rows and values must match and be non-empty".into()));
    }
    if values.iter().any(|r| r.len() != columns.len()) {
        return Err(PlotError::BadData("every row needs one value per column".into()));
    }
    let range = span(values.iter().flatten().copied())?;
    let (lo, hi) = (range.start, range.end);
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let (nr, nc) = (rows.len(), columns.len());
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(140)
        .build_cartesian_2d(0.0..nc as f64, 0.0..nr as f64)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(nc * 2 + 1)
        .y_labels(nr * 2 + 1)
        .x_label_formatter(&|x| centred_label(*x, columns))
        .y_label_formatter(&|y| centred_label(nr as f64 - *y, rows))
        .draw()
        .map_err(draw_err)?;
    let cells = values.iter().enumerate().flat_map(|(r, row)| {
        row.iter().enumerate().map(move |(c, &v)| {
            let t = ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
            let top = (nr - r) as f64;
            let fill = RGBColor((255.0 - 200.0 * t) as u8, (255.0 - 120.0 * t) as u8, (255.0 - 40.0 * t) as u8);
            Rectangle::new([(c as f64, top - 1.0), (c as f64 + 1.0, top)], fill.filled())
        })
    });
    chart.draw_series(cells).map_err(draw_err)?;
    let labels = values.iter().enumerate().flat_map(|(r, row)| {
        row.iter().enumerate().map(move |(c, &v)| {
            let style = ("sans-serif", 16).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Center));
            Text::new(format!("{v:.2}"), (c as f64 + 0.5, (nr - r) as f64 - 0.5), style)
        })
    });
    chart.draw_series(labels).map_err(draw_err)?;
    root.present().map_err(draw_err)
}

/// The label of the cell whose centre is at `x`, or nothing between cells.
fn centred_label(x: f64, names: &[String]) -> String {
    let i = x.floor();
    if (x - i - 0.5).abs() < 1e-6 && i >= 0.0 {
        names.get(i as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_png(path: &Path) -> bool {
        std::fs::read(path).map(|b| b.starts_with(b"\x89PNG")).unwrap_or(false)
    }

    #[test]
    fn draws_all_three_chart_kinds() {
        let dir = std::env::temp_dir().join(format!("moe-edge-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let line = dir.join("line.png");
        let series = vec![
            Series { name: "a".into(), points: (0..50).map(|i| (i as f64, (i as f64).sqrt())).collect() },
            Series { name: "b".into(), points: (0..50).map(|i| (i as f64, 3.0)).collect() },
        ];
        line_chart(&line, "curve", "episode", "reward", &series).unwrap();
        let bars = dir.join("bars.png");
        let cats = vec!["sac".to_string(), "random".to_string()];
        bar_chart(
            &bars,
            "reward",
            "reward",
            &cats,
            &[("mean".into(), vec![4.0, 2.0]), ("final".into(), vec![4.5, 2.1])],
        )
        .unwrap();
        let heat = dir.join("heat.png");
        heat_map(&heat, "quality", &cats, &cats, &[vec![1.0, 2.0], vec![3.0, 4.0]]).unwrap();
        assert!(is_png(&line) && is_png(&bars) && is_png(&heat));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_bad_data() {
        let path = std::env::temp_dir().join("moe-edge-never-written.png");
        assert!(matches!(line_chart(&path, "t", "x", "y", &[]), Err(PlotError::BadData(_))));
        let cats = vec!["a".to_string()];
        assert!(matches!(bar_chart(&path, "t", "y", &cats, &[("m".into(), vec![])]), Err(PlotError::BadData(_))));
        assert!(matches!(heat_map(&path, "t", &cats, &cats, &[vec![f64::NAN]]), Err(PlotError::BadData(_))));
    }
}
