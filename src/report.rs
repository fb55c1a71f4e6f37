//! Run reports: PNG plots of a run's `metrics.jsonl` (loss, learning rate, kNN accuracy per step)
//! and a summary table of the runs in a directory.
//!
//! The plots are drawn here, pixel by pixel, with a built-in 5×7 bitmap font: nothing depends on a
//! system font or a plotting library that a fresh machine may lack.

use std::io;
use std::path::Path;

use crate::train::LogLine;

const W: usize = 720;
const PANEL_H: usize = 220;
const LEFT: usize = 104;
const RIGHT: usize = 16;
const TOP: usize = 30;
const BOTTOM: usize = 34;
const SCALE: usize = 2;

const GLYPHS: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.-%:()/ ,+_=";
#[rustfmt::skip]
const FONT: [[u8; 7]; 48] = [
    [0x0E,0x11,0x13,0x15,0x19,0x11,0x0E], [0x04,0x0C,0x04,0x04,0x04,0x04,0x0E],
    [0x0E,0x11,0x01,0x02,0x04,0x08,0x1F], [0x1F,0x02,0x04,0x02,0x01,0x11,0x0E],
    [0x02,0x06,0x0A,0x12,0x1F,0x02,0x02], [0x1F,0x10,0x1E,0x01,0x01,0x11,0x0E],
    [0x06,0x08,0x10,0x1E,0x11,0x11,0x0E], [0x1F,0x01,0x02,0x04,0x08,0x08,0x08],
    [0x0E,0x11,0x11,0x0E,0x11,0x11,0x0E], [0x0E,0x11,0x11,0x0F,0x01,0x02,0x0C],
    [0x0E,0x11,0x11,0x1F,0x11,0x11,0x11], [0x1E,0x11,0x11,0x1E,0x11,0x11,0x1E],
    [0x0E,0x11,0x10,0x10,0x10,0x11,0x0E], [0x1C,0x12,0x11,0x11,0x11,0x12,0x1C],
    [0x1F,0x10,0x10,0x1E,0x10,0x10,0x1F], [0x1F,0x10,0x10,0x1E,0x10,0x10,0x10],
    [0x0E,0x11,0x10,0x17,0x11,0x11,0x0F], [0x11,0x11,0x11,0x1F,0x11,0x11,0x11],
    [0x0E,0x04,0x04,0x04,0x04,0x04,0x0E], [0x07,0x02,0x02,0x02,0x02,0x12,0x0C],
    [0x11,0x12,0x14,0x18,0x14,0x12,0x11], [0x10,0x10,0x10,0x10,0x10,0x10,0x1F],
    [0x11,0x1B,0x15,0x15,0x11,0x11,0x11], [0x11,0x11,0x19,0x15,0x13,0x11,0x11],
    [0x0E,0x11,0x11,0x11,0x11,0x11,0x0E], [0x1E,0x11,0x11,0x1E,0x10,0x10,0x10],
    [0x0E,0x11,0x11,0x11,0x15,0x12,0x0D], [0x1E,0x11,0x11,0x1E,0x14,0x12,0x11],
    [0x0F,0x10,0x10,0x0E,0x01,0x01,0x1E], [0x1F,0x04,0x04,0x04,0x04,0x04,0x04],
    [0x11,0x11,0x11,0x11,0x11,0x11,0x0E], [0x11,0x11,0x11,0x11,0x11,0x0A,0x04],
    [0x11,0x11,0x11,0x15,0x15,0x15,0x0A], [0x11,0x11,0x0A,0x04,0x0A,0x11,0x11],
    [0x11,0x11,0x11,0x0A,0x04,0x04,0x04], [0x1F,0x01,0x02,0x04,0x08,0x10,0x1F],
    [0x00,0x00,0x00,0x00,0x00,0x0C,0x0C], [0x00,0x00,0x00,0x1F,0x00,0x00,0x00],
    [0x18,0x19,0x02,0x04,0x08,0x13,0x03], [0x00,0x0C,0x0C,0x00,0x0C,0x0C,0x00],
    [0x02,0x04,0x08,0x08,0x08,0x04,0x02], [0x08,0x04,0x02,0x02,0x02,0x04,0x08],
    [0x00,0x01,0x02,0x04,0x08,0x10,0x00], [0x00,0x00,0x00,0x00,0x00,0x00,0x00],
    [0x00,0x00,0x00,0x00,0x0C,0x04,0x08], [0x00,0x04,0x04,0x1F,0x04,0x04,0x00],
    [0x00,0x00,0x00,0x00,0x00,0x00,0x1F], [0x00,0x00,0x1F,0x00,0x1F,0x00,0x00],
];

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<[u8; 3]>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            px: vec![[255; 3]; w * h],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            self.px[y as usize * self.w + x as usize] = c;
        }
    }

    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text in upper case; `anchor_right` aligns its right end at x.
    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3], anchor_right: bool) {
        let s = s.to_uppercase();
        let width = (s.chars().count() * 6 * SCALE) as i64;
        let x0 = if anchor_right { x - width } else { x };
        for (i, ch) in s.chars().enumerate() {
            let Some(g) = GLYPHS.find(ch) else { continue };
            for (row, bits) in FONT[g].iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        for (a, b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                            let px = x0 + ((i * 6 + col) * SCALE + a) as i64;
                            self.set(px, y + (row * SCALE + b) as i64, c);
                        }
                    }
                }
            }
        }
    }

    fn save(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension("png.tmp");
        {
            let file = io::BufWriter::new(std::fs::File::create(&tmp)?);
            let mut enc = png::Encoder::new(file, self.w as u32, self.h as u32);
            enc.set_color(png::ColorType::Rgb);
            let mut writer = enc.write_header().map_err(io::Error::other)?;
            writer
                .write_image_data(&self.px.concat())
                .map_err(io::Error::other)?;
        }
        std::fs::rename(tmp, path)
    }
}

/// A short label for an axis value.
fn label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e4).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// Line colours, one per series.
const PALETTE: [[u8; 3]; 6] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [140, 86, 75],
];

/// One panel: a titled line chart of `points` (x, y) at vertical offset `top`.
fn panel(c: &mut Canvas, top: usize, title: &str, points: &[(f64, f64)], color: [u8; 3]) {
    panel_series(c, top, title, &[(String::new(), points.to_vec(), color)]);
}

/// A named line of a chart: (legend, points, colour).
type Series = (String, Vec<(f64, f64)>, [u8; 3]);

/// A panel with several named series on shared axes, a legend at the top right.
fn panel_series(c: &mut Canvas, top: usize, title: &str, series: &[Series]) {
    let points: Vec<(f64, f64)> = series.iter().flat_map(|s| s.1.iter().copied()).collect();
    let (x0, x1) = (LEFT as i64, (W - RIGHT) as i64);
    let (y0, y1) = ((top + TOP) as i64, (top + PANEL_H - BOTTOM) as i64);
    let grey = [200, 200, 200];
    let black = [0, 0, 0];
    c.text(x0, top as i64 + 8, title, black, false);
    c.line((x0, y1), (x1, y1), black);
    c.line((x0, y0), (x0, y1), black);
    if points.is_empty() {
        c.text(x0 + 10, (y0 + y1) / 2, "none logged (yet)", grey, false);
        return;
    }
    let (mut xmin, mut xmax) = (f64::MAX, f64::MIN);
    let (mut ymin, mut ymax) = (f64::MAX, f64::MIN);
    for &(x, y) in &points {
        (xmin, xmax) = (xmin.min(x), xmax.max(x));
        (ymin, ymax) = (ymin.min(y), ymax.max(y));
    }
    if xmax <= xmin {
        xmax = xmin + 1.0;
    }
    if ymax <= ymin {
        (ymin, ymax) = (
            ymin - 0.5 * ymin.abs().max(1e-3),
            ymax + 0.5 * ymax.abs().max(1e-3),
        );
    }
    let px = |x: f64| x0 + ((x - xmin) / (xmax - xmin) * (x1 - x0) as f64) as i64;
    let py = |y: f64| y1 - ((y - ymin) / (ymax - ymin) * (y1 - y0) as f64) as i64;
    for k in 0..=4 {
        let v = ymin + (ymax - ymin) * k as f64 / 4.0;
        let y = py(v);
        c.line((x0 + 1, y), (x1, y), [235, 235, 235]);
        c.text(x0 - 6, y - 7, &label(v), black, true);
        let xv = xmin + (xmax - xmin) * k as f64 / 4.0;
        let x = px(xv);
        c.line((x, y1), (x, y1 + 4), black);
        // The last label ends at the axis' end so that it stays inside the picture.
        let text = format!("{xv:.0}");
        if k == 4 {
            c.text(x, y1 + 8, &text, black, true);
        } else {
            c.text(x - 12, y1 + 8, &text, black, false);
        }
    }
    let mut legend_x = x1;
    for (name, points, color) in series.iter().rev() {
        if points.len() == 1 {
            let (x, y) = (px(points[0].0), py(points[0].1));
            for d in -2..=2 {
                c.line((x - 2, y + d), (x + 2, y + d), *color);
            }
        }
        for w in points.windows(2) {
            c.line((px(w[0].0), py(w[0].1)), (px(w[1].0), py(w[1].1)), *color);
        }
        if !name.is_empty() {
            c.text(legend_x, top as i64 + 8, name, *color, true);
            legend_x -= (name.len() as i64 + 1) * 6 * SCALE as i64;
        }
    }
}

/// The log lines of a run. A line that does not parse (cut short by a crash) is skipped; a
/// missing accuracy written as `null` by older versions reads as none.
fn read_metrics(dir: &Path) -> io::Result<Vec<LogLine>> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).ok()?;
            if v.get("accuracy").is_some_and(|a| a.is_null()) {
                v.as_object_mut()?.remove("accuracy");
            }
            serde_json::from_value::<LogLine>(v).ok()
        })
        .collect())
}

/// Draws `training.png` in `dir` from its `metrics.jsonl`: loss, learning rate and kNN accuracy
/// against the step, and for CPC each offset's contrastive accuracy.
pub fn draw(dir: &Path) -> io::Result<()> {
    let lines = read_metrics(dir)?;
    let offsets = lines.iter().map(|l| l.offsets.len()).max().unwrap_or(0);
    let panels = if offsets > 0 { 4 } else { 3 };
    let mut c = Canvas::new(W, panels * PANEL_H);
    let pts = |f: &dyn Fn(&LogLine) -> Option<f64>| -> Vec<(f64, f64)> {
        lines
            .iter()
            .filter_map(|l| f(l).filter(|v| v.is_finite()).map(|v| (l.step as f64, v)))
            .collect()
    };
    panel(
        &mut c,
        0,
        "training loss per step",
        &pts(&|l| Some(l.loss as f64)),
        [31, 119, 180],
    );
    panel(
        &mut c,
        PANEL_H,
        "learning rate per step",
        &pts(&|l| Some(l.lr as f64)),
        [214, 39, 40],
    );
    panel(
        &mut c,
        2 * PANEL_H,
        "knn accuracy (%) per evaluation",
        &pts(&|l| l.knn.map(|k| 100.0 * k)),
        [44, 160, 44],
    );
    if offsets > 0 {
        // CPC's contrastive accuracy of at most six offsets spread over 1..=K, each a running
        // mean over 25 steps.
        let shown: Vec<usize> = (0..offsets.min(PALETTE.len()))
            .map(|i| i * (offsets - 1) / (offsets.min(PALETTE.len()) - 1).max(1))
            .collect();
        let series: Vec<_> = shown
            .iter()
            .zip(PALETTE)
            .map(|(&k, color)| {
                let acc: Vec<f64> = lines
                    .iter()
                    .map(|l| l.offsets.get(k).map_or(f64::NAN, |o| 100.0 * o[1] as f64))
                    .collect();
                let points = (0..lines.len())
                    .filter(|&i| acc[i].is_finite())
                    .map(|i| {
                        let w = &acc[i.saturating_sub(24)..=i];
                        let w: Vec<f64> = w.iter().copied().filter(|v| v.is_finite()).collect();
                        (lines[i].step as f64, w.iter().sum::<f64>() / w.len() as f64)
                    })
                    .collect();
                (format!("K={}", k + 1), points, color)
            })
            .collect();
        panel_series(&mut c, 3 * PANEL_H, "accuracy (%) per offset", &series);
    }
    c.save(&dir.join("training.png"))
}

/// Redraws the plots every 25 steps (cheap enough not to matter beside a training step).
pub fn refresh(dir: &Path, step: u64) -> io::Result<()> {
    if step.is_multiple_of(25) {
        draw(dir)?;
    }
    Ok(())
}

/// Prints a table of the runs under `dir` (method, steps, final loss, kNN and linear accuracy)
/// and redraws each run's `training.png` from its metrics.
pub fn summarize(dir: &Path) -> io::Result<()> {
    let mut rows = vec![];
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.join("metrics.jsonl").exists() {
            continue;
        }
        let lines = read_metrics(&path)?;
        draw(&path)?;
        let summary: Option<serde_json::Value> = std::fs::read_to_string(path.join("summary.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok());
        let get = |k: &str| {
            summary
                .as_ref()
                .and_then(|s| s.pointer(k))
                .and_then(|v| v.as_f64())
                .map_or("-".to_string(), |v| format!("{:.2}", 100.0 * v))
        };
        rows.push(format!(
            "{:<28} {:<6} {:>7} {:>10} {:>9} {:>9} {:>9}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            summary
                .as_ref()
                .and_then(|s| s["method"].as_str().map(String::from))
                .unwrap_or_else(|| "-".into()),
            lines.last().map_or(0, |l| l.step),
            lines
                .last()
                .map_or("-".into(), |l| format!("{:.4}", l.loss)),
            get("/evaluation/trained/knn"),
            get("/evaluation/trained/linear"),
            if summary.is_some() { "done" } else { "partial" },
        ));
    }
    rows.sort();
    println!(
        "{:<28} {:<6} {:>7} {:>10} {:>9} {:>9} {:>9}",
        "run", "method", "steps", "loss", "kNN %", "linear %", "state"
    );
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
