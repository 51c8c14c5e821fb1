//! `simulate --plot FILE.png|FILE.svg`: the main metrics per cycle, one panel each,
//! and with apps, what they did per interval.
//!
//! Text is drawn with DejaVu Sans, read at run time (`scripts/setup` installs the
//! Debian package `fonts-dejavu-core`; `NODEMANAGER_FONT` names another TTF file).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context as _, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

#[cfg(test)]
use super::MessageCounts;
use super::{AppInterval, CycleMetrics};

/// Where the font is looked for when `NODEMANAGER_FONT` is not set.
const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// The family name the font is registered under.
const FAMILY: &str = "sans-serif";

/// Registers the font once per process.
fn load_font() -> Result<()> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = std::env::var_os("NODEMANAGER_FONT")
                .map(PathBuf::from)
                .unwrap_or_else(|| DEFAULT_FONT.into());
            let bytes = std::fs::read(&path).map_err(|e| {
                format!(
                    "--plot needs a TrueType font: cannot read {} ({e}); install fonts-dejavu-core or set NODEMANAGER_FONT",
                    path.display()
                )
            })?;
            plotters::style::register_font(FAMILY, FontStyle::Normal, Vec::leak(bytes))
                .map_err(|_| format!("{} is not a TrueType font", path.display()))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// A named series of (cycle, value) points; cycles without a value are skipped.
struct Series {
    name: &'static str,
    points: Vec<(f64, f64)>,
}

/// Something with a value per cycle.
trait PerCycle {
    fn cycle(&self) -> u64;
}

impl PerCycle for CycleMetrics {
    fn cycle(&self) -> u64 {
        self.cycle
    }
}

impl PerCycle for AppInterval {
    fn cycle(&self) -> u64 {
        self.cycle
    }
}

fn series<R: PerCycle>(
    rows: &[R],
    name: &'static str,
    value: impl Fn(&R) -> Option<f64>,
) -> Series {
    Series {
        name,
        points: rows
            .iter()
            .filter_map(|r| value(r).map(|v| (r.cycle() as f64, v)))
            .collect(),
    }
}

/// Draws `rows` and the apps' timeline `apps` (if any) to `path` (PNG or SVG, by
/// extension), titled `title`.
pub fn plot(rows: &[CycleMetrics], apps: &[AppInterval], path: &Path, title: &str) -> Result<()> {
    if rows.is_empty() {
        bail!("--plot: no cycle to draw");
    }
    let size = if apps.is_empty() {
        (1400, 1200)
    } else {
        (1400, 1600)
    };
    match path.extension().and_then(|e| e.to_str()) {
        Some("png") => {
            load_font()?;
            draw(
                BitMapBackend::new(path, size).into_drawing_area(),
                rows,
                apps,
                title,
            )
        }
        Some("svg") => {
            load_font()?;
            draw(
                SVGBackend::new(path, size).into_drawing_area(),
                rows,
                apps,
                title,
            )
        }
        _ => bail!(
            "--plot {}: the file name must end in .png or .svg",
            path.display()
        ),
    }
    .with_context(|| format!("cannot draw {}", path.display()))
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    rows: &[CycleMetrics],
    apps: &[AppInterval],
    title: &str,
) -> Result<()> {
    let error = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");
    root.fill(&WHITE).map_err(error)?;
    let root = root.titled(title, (FAMILY, 28)).map_err(error)?;
    let panels = root.split_evenly((if apps.is_empty() { 3 } else { 4 }, 2));
    let mut groups = vec![
        (
            "In-degree",
            vec![
                series(rows, "mean", |r| Some(r.indegree_mean)),
                series(rows, "std", |r| Some(r.indegree_std)),
                series(rows, "max", |r| Some(r.indegree_max as f64)),
            ],
        ),
        (
            "Shares of view entries and samples",
            vec![
                series(rows, "dead links", |r| Some(r.dead_links)),
                series(rows, "Byzantine in views", |r| r.byz_view_share),
                series(rows, "Byzantine in samples", |r| r.byz_sample_share),
            ],
        ),
        (
            "Clustering coefficient",
            vec![series(rows, "clustering", |r| r.clustering)],
        ),
        (
            "Average shortest path",
            vec![series(rows, "avg path", |r| r.avg_path)],
        ),
        (
            "Partitions",
            vec![series(rows, "partitions", |r| Some(r.partitions as f64))],
        ),
        (
            "Sample uniformity (KL from uniform, bits)",
            vec![series(rows, "KL", |r| r.sample_uniformity)],
        ),
    ];
    if !apps.is_empty() {
        groups.push((
            "App messages per interval",
            vec![
                series(apps, "sent", |r| Some(r.messages.sent as f64)),
                series(apps, "delivered", |r| Some(r.messages.delivered as f64)),
                series(apps, "failed", |r| Some(r.messages.failed as f64)),
                series(apps, "unknown", |r| Some(r.messages.unknown as f64)),
                series(apps, "dropped", |r| Some(r.messages.dropped as f64)),
            ],
        ));
        groups.push((
            "Delivery latency (ms) and messages received per node",
            vec![
                series(apps, "latency mean", |r| {
                    let latency = r.messages.latency;
                    (latency.count > 0).then_some(latency.mean_us as f64 / 1000.0)
                }),
                series(apps, "latency max", |r| {
                    let latency = r.messages.latency;
                    (latency.count > 0).then_some(latency.max_us as f64 / 1000.0)
                }),
                series(apps, "received min", |r| Some(r.received_min as f64)),
                series(apps, "received max", |r| Some(r.received_max as f64)),
            ],
        ));
    }
    let last_cycle = rows.last().map_or(1.0, |r| r.cycle as f64).max(1.0);
    for (panel, (caption, all)) in panels.iter().zip(groups) {
        let drawn: Vec<Series> = all.into_iter().filter(|s| !s.points.is_empty()).collect();
        let top = drawn
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0f64, f64::max);
        let top = if top > 0.0 { top * 1.1 } else { 1.0 };
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, (FAMILY, 20))
            .margin(12)
            .margin_right(28)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..last_cycle, 0.0..top)
            .map_err(error)?;
        chart
            .configure_mesh()
            .x_desc("cycle")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style((FAMILY, 14))
            .draw()
            .map_err(error)?;
        if drawn.is_empty() {
            // Say so rather than leave a blank chart (e.g. no attackers, or a costly
            // metric never due).
            let (width, height) = panel.dim_in_pixel();
            panel
                .draw(&Text::new(
                    "not measured in this run",
                    (width as i32 / 2 - 90, height as i32 / 2),
                    (FAMILY, 18).into_font().color(&BLACK.mix(0.5)),
                ))
                .map_err(error)?;
            continue;
        }
        for (i, s) in drawn.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(error)?
                .label(s.name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
            // Points too: a metric measured once (or every K cycles) still shows.
            chart
                .draw_series(
                    s.points
                        .iter()
                        .map(|&point| Circle::new(point, 3, color.filled())),
                )
                .map_err(error)?;
        }
        chart
            .configure_series_labels()
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(error)?;
    }
    root.present().map_err(error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<CycleMetrics> {
        (1..=5)
            .map(|cycle| CycleMetrics {
                cycle,
                indegree_mean: 8.0,
                indegree_std: 1.0 / cycle as f64,
                indegree_max: 10,
                clustering: (cycle % 2 == 0).then_some(0.1),
                avg_path: (cycle % 2 == 0).then_some(2.5),
                partitions: 1,
                dead_links: 0.0,
                byz_view_share: Some(0.1),
                byz_sample_share: None,
                sample_uniformity: Some(0.5 / cycle as f64),
            })
            .collect()
    }

    #[test]
    fn draws_png_and_svg_and_refuses_other_names() {
        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("m.svg");
        plot(&rows(), &[], &svg, "test").unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(
            text.contains("<svg") && text.contains("In-degree"),
            "{text}"
        );
        assert!(!text.contains("App messages"), "no apps, no app panels");
        assert!(!text.contains("not measured in this run"), "{text}");
        // A metric never computed says so instead of a blank chart.
        let unmeasured: Vec<CycleMetrics> = rows()
            .into_iter()
            .map(|r| CycleMetrics {
                clustering: None,
                ..r
            })
            .collect();
        plot(&unmeasured, &[], &svg, "test").unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert_eq!(
            text.matches("not measured in this run").count(),
            1,
            "{text}"
        );
        let apps: Vec<AppInterval> = (1..=5)
            .map(|cycle| AppInterval {
                cycle,
                messages: MessageCounts {
                    sent: 10 * cycle,
                    delivered: 9 * cycle,
                    ..MessageCounts::default()
                },
                ..AppInterval::default()
            })
            .collect();
        plot(&rows(), &apps, &svg, "test").unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("App messages per interval"), "{text}");
        let png = dir.path().join("m.png");
        plot(&rows(), &apps, &png, "test").unwrap();
        assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
        let error = plot(&rows(), &[], &dir.path().join("m.pdf"), "test").unwrap_err();
        assert!(
            error.to_string().contains("must end in .png or .svg"),
            "{error}"
        );
    }
}
