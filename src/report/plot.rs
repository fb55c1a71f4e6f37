//! `training.png`: a run's log and its final evaluation as line charts, one panel each for the
//! loss, the learning rate, the kNN accuracy and (CPC) the accuracy per predicted offset. Drawn by
//! plotters into a pixel buffer with a bundled font (DejaVu Sans), so that a machine without
//! system fonts draws the same picture.

use std::path::Path;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, ValueFormatter};
use plotters::prelude::*;

use super::{metrics, read_summary};
use crate::checkpoint::write_atomic;
use crate::error::{Error, Result};
use crate::train::LogLine;

const W: u32 = 800;
const PANEL_H: u32 = 270;
/// The name the bundled font is registered under in plotters' font table.
const FONT: &str = "contrastive-sans";

/// Line colours, one per series.
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid font of this crate: a failure would show as a picture without
        // text, which the report tests look for.
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            include_bytes!("../../assets/fonts/DejaVuSans.ttf"),
        );
    });
}

/// An axis: its range and round tick values inside it, labelled with the digits its step needs.
#[derive(Clone, Copy)]
struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
}

impl Axis {
    /// About `n` ticks at multiples of 1, 2 or 5 × 10^k covering `[lo, hi]`; `whole` keeps the
    /// tick step at least 1 (the step axis). The value axis is widened to whole ticks, the step
    /// axis ends at its last step.
    fn new(lo: f64, hi: f64, n: usize, whole: bool) -> Axis {
        let (mut lo, mut hi) = (lo, hi);
        if hi <= lo {
            let pad = if whole {
                1.0
            } else {
                (0.1 * lo.abs()).max(1e-3)
            };
            (lo, hi) = (if whole { lo } else { lo - pad }, hi + pad);
        }
        let raw = (hi - lo) / n as f64;
        let mag = 10f64.powf(raw.log10().floor());
        let nice = [1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .find(|&f| raw <= f * mag * (1.0 + 1e-9))
            .unwrap_or(10.0);
        let step = if whole {
            (nice * mag).max(1.0)
        } else {
            nice * mag
        };
        if whole {
            Axis { lo, hi, step }
        } else {
            Axis {
                lo: (lo / step).floor() * step,
                hi: (hi / step).ceil() * step,
                step,
            }
        }
    }

    fn ticks(&self) -> Vec<f64> {
        let first = (self.lo / self.step).ceil() as i64;
        let last = (self.hi / self.step + 1e-9).floor() as i64;
        (first..=last).map(|k| k as f64 * self.step).collect()
    }

    /// A tick's label with as many digits as the tick step needs: `0.05`, `1200`, `2e-6`.
    fn label(&self, v: f64) -> String {
        let step_exp = self.step.log10().floor() as i32;
        if v.abs() < 0.5 * self.step {
            "0".into()
        } else if step_exp >= -4 {
            format!("{v:.*}", (-step_exp).max(0) as usize)
        } else {
            let digits = (v.abs().log10().floor() as i32 - step_exp).max(0) as usize;
            let text = format!("{v:.digits$e}");
            // `2e-5`, not `2.0e-5`.
            let (mantissa, exp) = text.split_once('e').unwrap_or((&text, "0"));
            let mantissa = if mantissa.contains('.') {
                mantissa.trim_end_matches('0').trim_end_matches('.')
            } else {
                mantissa
            };
            format!("{mantissa}e{exp}")
        }
    }
}

impl Ranged for Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let span = (limit.1 - limit.0) as f64;
        limit.0 + (span * (v - self.lo) / (self.hi - self.lo) + 1e-3).floor() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _: Hint) -> Vec<f64> {
        self.ticks()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

impl ValueFormatter<f64> for Axis {
    fn format_ext(&self, v: &f64) -> String {
        self.label(*v)
    }
}

/// How a series is drawn.
#[derive(Clone, Copy)]
enum Look {
    Line,
    /// A line through round markers: few points (a monitor every N steps).
    Markers,
    /// One large marker: a final value.
    Final,
    /// A dashed horizontal reference across the panel.
    Reference,
}

struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    look: Look,
}

struct Panel {
    title: &'static str,
    y_label: &'static str,
    series: Vec<Series>,
    /// Shown in place of the chart when no series has a point.
    empty: &'static str,
    legend: SeriesLabelPosition,
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw_panel(area: &Area, p: &Panel, last_step: f64) -> DrawResult {
    let ys: Vec<f64> = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|q| q.1))
        .collect();
    let (lo, hi) = ys
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &y| (a.min(y), b.max(y)));
    let x = Axis::new(0.0, last_step, 8, true);
    // A little room above and below, so that no point lies on the frame.
    let pad = 0.03 * (hi - lo);
    let y = if ys.is_empty() {
        Axis::new(0.0, 1.0, 5, false)
    } else {
        Axis::new(lo - pad, hi + pad, 5, false)
    };
    let mut chart = ChartBuilder::on(area)
        .caption(p.title, (FONT, 17))
        .margin_top(8)
        .margin_left(8)
        .margin_right(36)
        .margin_bottom(4)
        .x_label_area_size(46)
        .y_label_area_size(80)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(p.y_label)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    if ys.is_empty() {
        chart.plotting_area().draw(&Text::new(
            p.empty,
            (x.lo + 0.03 * (x.hi - x.lo), 0.5),
            (FONT, 14).into_font().color(&RGBColor(120, 120, 120)),
        ))?;
        return Ok(());
    }
    for s in &p.series {
        let (color, name) = (s.color, s.name.clone());
        let style = color.stroke_width(2);
        let dash = move |(a, b)| PathElement::new([(a, b), (a + 18, b)], style);
        match s.look {
            Look::Line => {
                let drawn = chart.draw_series(LineSeries::new(s.points.iter().copied(), style))?;
                drawn.label(name).legend(dash);
            }
            Look::Markers => {
                chart.draw_series(LineSeries::new(s.points.iter().copied(), style))?;
                let drawn = chart
                    .draw_series(s.points.iter().map(|&q| Circle::new(q, 3, color.filled())))?;
                drawn
                    .label(name)
                    .legend(move |(a, b)| Circle::new((a + 9, b), 3, color.filled()));
            }
            Look::Final => {
                let drawn = chart.draw_series(
                    s.points
                        .iter()
                        .map(|&q| TriangleMarker::new(q, 7, color.filled())),
                )?;
                drawn
                    .label(name)
                    .legend(move |(a, b)| TriangleMarker::new((a + 9, b), 6, color.filled()));
            }
            Look::Reference => {
                let thin = color.stroke_width(1);
                let line = s.points.iter().flat_map(|&(_, v)| [(x.lo, v), (x.hi, v)]);
                let drawn = chart.draw_series(DashedLineSeries::new(line, 6, 4, thin))?;
                drawn
                    .label(name)
                    .legend(move |(a, b)| PathElement::new([(a, b), (a + 18, b)], thin));
            }
        }
    }
    if p.series.iter().any(|s| !s.name.is_empty()) {
        chart
            .configure_series_labels()
            .position(p.legend.clone())
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()?;
    }
    Ok(())
}

fn points(lines: &[LogLine], f: impl Fn(&LogLine) -> Option<f64>) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter_map(|l| f(l).filter(|v| v.is_finite()).map(|v| (l.step as f64, v)))
        .collect()
}

/// CPC's contrastive accuracy of at most six offsets spread over 1..=K, each a running mean over
/// 25 steps (one step's accuracy on one batch is noisy).
fn offset_series(lines: &[LogLine], offsets: usize) -> Vec<Series> {
    let shown = offsets.min(PALETTE.len());
    (0..shown)
        .map(|i| i * (offsets - 1) / (shown - 1).max(1))
        .zip(PALETTE)
        .map(|(k, color)| {
            let acc: Vec<f64> = lines
                .iter()
                .map(|l| l.offsets.get(k).map_or(f64::NAN, |o| 100.0 * o[1] as f64))
                .collect();
            let points = (0..lines.len())
                .filter(|&i| acc[i].is_finite())
                .map(|i| {
                    let w: Vec<f64> = acc[i.saturating_sub(24)..=i]
                        .iter()
                        .copied()
                        .filter(|v| v.is_finite())
                        .collect();
                    (lines[i].step as f64, w.iter().sum::<f64>() / w.len() as f64)
                })
                .collect();
            Series {
                name: format!("K={}", k + 1),
                points,
                color,
                look: Look::Line,
            }
        })
        .collect()
}

/// The kNN panel's series: the monitor's accuracy during training, and the final evaluation's
/// trained and random encoders from `summary.json`. The summary belongs to this log only when it
/// ends at the log's last step (a run started again over an old directory has an older one).
fn knn_series(lines: &[LogLine], summary: Option<&serde_json::Value>) -> Vec<Series> {
    let mut series = vec![Series {
        name: "kNN monitor".into(),
        points: points(lines, |l| l.knn.map(|k| 100.0 * k)),
        color: PALETTE[2],
        look: Look::Markers,
    }];
    let last = lines.last().map(|l| l.step);
    let summary = summary.filter(|s| s["steps"].as_u64().is_some() && s["steps"].as_u64() == last);
    for (key, name, color, look) in [
        ("trained", "final evaluation", PALETTE[3], Look::Final),
        ("random", "random encoder", PALETTE[5], Look::Reference),
    ] {
        let knn = summary.and_then(|s| s["evaluation"][key]["knn"].as_f64());
        if let (Some(knn), Some(step)) = (knn.filter(|k| k.is_finite()), last) {
            series.push(Series {
                name: format!("{name}: {:.1} %", 100.0 * knn),
                points: vec![(step as f64, 100.0 * knn)],
                color,
                look,
            });
        }
    }
    series.retain(|s| !s.points.is_empty());
    series
}

/// `training.png` of the run directory `dir` (see [`super::draw`]).
pub fn draw(dir: &Path) -> Result<()> {
    register_font();
    let lines = metrics::read(&dir.join("metrics.jsonl"))?;
    let summary = read_summary(dir)?;
    let offsets = lines.iter().map(|l| l.offsets.len()).max().unwrap_or(0);
    let mut panels = vec![
        Panel {
            title: "training loss",
            y_label: "loss",
            series: vec![Series {
                name: String::new(),
                points: points(&lines, |l| Some(l.loss as f64)),
                color: PALETTE[0],
                look: Look::Line,
            }],
            empty: "no step logged yet",
            legend: SeriesLabelPosition::UpperRight,
        },
        Panel {
            title: "learning rate",
            y_label: "learning rate",
            series: vec![Series {
                name: String::new(),
                points: points(&lines, |l| Some(l.lr as f64)),
                color: PALETTE[1],
                look: Look::Line,
            }],
            empty: "no step logged yet",
            legend: SeriesLabelPosition::UpperRight,
        },
        Panel {
            title: "kNN accuracy on held-out data",
            y_label: "accuracy (%)",
            series: knn_series(&lines, summary.as_ref()),
            empty: "none yet: the final evaluation shows here when the run ends",
            legend: SeriesLabelPosition::UpperLeft,
        },
    ];
    if offsets > 0 {
        panels.push(Panel {
            title: "contrastive accuracy per predicted offset (mean of 25 steps)",
            y_label: "accuracy (%)",
            series: offset_series(&lines, offsets),
            empty: "no step logged yet",
            legend: SeriesLabelPosition::UpperLeft,
        });
    }
    let path = dir.join("training.png");
    let h = PANEL_H * panels.len() as u32;
    let mut rgb = vec![255u8; (W * h * 3) as usize];
    let drawn: DrawResult = (|| {
        let root = BitMapBackend::with_buffer(&mut rgb, (W, h)).into_drawing_area();
        let last_step = lines.last().map_or(1.0, |l| l.step as f64);
        for (area, p) in root.split_evenly((panels.len(), 1)).iter().zip(&panels) {
            draw_panel(area, p, last_step)?;
        }
        root.present()?;
        Ok(())
    })();
    let failed = |e: String| Error::io(&path, std::io::Error::other(e));
    drawn.map_err(|e| failed(e.to_string()))?;
    let mut png_bytes = vec![];
    {
        let mut enc = png::Encoder::new(&mut png_bytes, W, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()
            .and_then(|mut w| w.write_image_data(&rgb))
            .map_err(|e| failed(e.to_string()))?;
    }
    write_atomic(&path, &png_bytes)
}

#[cfg(test)]
mod tests {
    use super::Axis;

    fn labels(a: &Axis) -> Vec<String> {
        a.ticks().iter().map(|&v| a.label(v)).collect()
    }

    #[test]
    fn steps_tick_at_whole_numbers() {
        assert_eq!(labels(&Axis::new(0.0, 3.0, 8, true)), ["0", "1", "2", "3"]);
        assert_eq!(labels(&Axis::new(0.0, 1.0, 8, true)), ["0", "1"]);
        let long = Axis::new(0.0, 1234.0, 8, true);
        assert_eq!(long.step, 200.0);
        assert_eq!(long.ticks().last(), Some(&1200.0));
    }

    #[test]
    fn values_tick_at_round_numbers() {
        let lr = Axis::new(0.0, 0.06, 5, false);
        assert_eq!(labels(&lr), ["0", "0.02", "0.04", "0.06"]);
        let flat = Axis::new(0.06, 0.06, 5, false);
        assert!(flat.lo < 0.06 && flat.hi > 0.06);
        assert_eq!(labels(&flat)[0], "0.050");
        let tiny = Axis::new(1.2e-6, 2.8e-6, 5, false);
        assert_eq!(labels(&tiny), ["1e-6", "1.5e-6", "2e-6", "2.5e-6", "3e-6"]);
        let loss = Axis::new(1.4046, 1.4080, 5, false);
        assert!(
            labels(&loss).iter().all(|l| l.len() <= 5),
            "{:?}",
            labels(&loss)
        );
    }
}
