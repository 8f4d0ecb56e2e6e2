//! The two charts, `latency.svg` (pingpong p50) and `throughput.svg` (stream bytes/s),
//! drawn with plotters so that a person reads them at a glance:
//!
//! - **one series per mechanism, flavour and wait**, each with its own marker (16 shapes:
//!   filled, open, crosses) and the colour of its mechanism from the Okabe-Ito palette,
//!   which stays distinct under the common colour-vision deficiencies; so no two series
//!   look alike even in grey, and the colours group the mechanisms;
//! - **the legend beside the plot**, never over a point;
//! - **log axes with a labelled tick at every decade** and the units in the axis titles,
//!   in the table's units: ns/us/ms, B/KiB/MiB, and binary bytes per second (MiB/s, GiB/s:
//!   its "decades" are 1, 10 and 100 of each unit);
//! - **a run with one size per series** (the quick run: 64 B pingpong, 64 KiB stream) is
//!   a dot plot instead: one labelled row per series, its value written beside the marker,
//!   since a size axis with one size on it says nothing;
//! - series that lie on top of each other are found ([`coinciding`]) so that the page can
//!   say so under the chart.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use common::timing::{fmt_ns, fmt_rate};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::output::{size_label, Row};

/// Chart size in pixels; the legend takes the right-hand `LEGEND_W` of it.
const W: u32 = 1150;
const H: u32 = 640;
const LEGEND_W: u32 = 290;
/// Two series coincide when at least three in four of the sizes both measured (all of
/// them, up to three sizes) have values within this factor of each other: on these log
/// axes that is a few pixels, less than a marker, so one series hides the other.
pub const COINCIDE: f64 = 1.15;

/// One line of a chart: a mechanism, flavour and wait strategy, its points (size, value).
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub mechanism: String,
    pub points: Vec<(f64, f64)>,
}

/// Which kind of chart was drawn, and what the page should say under it.
#[derive(Clone, Debug, Default)]
pub struct Drawn {
    /// A dot plot (one size per series) rather than lines over sizes.
    pub dots: bool,
    /// Groups of series names that coincide (see [`coinciding`]).
    pub coinciding: Vec<Vec<String>>,
}

/// The series of one mode, in the order the rows first show them (the table's order).
pub fn series(rows: &[Row], mode: &str, value: fn(&Row) -> f64) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    for r in rows.iter().filter(|r| r.mode == mode && r.status == "ok") {
        let v = value(r);
        if v <= 0.0 {
            continue;
        }
        let name = series_name(r);
        let p = (r.size_bytes as f64, v);
        match out.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push(p),
            None => out.push(Series {
                name,
                mechanism: r.mechanism.clone(),
                points: vec![p],
            }),
        }
    }
    for s in &mut out {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

fn series_name(r: &Row) -> String {
    format!("{} {} {}", r.mechanism, r.flavour, r.wait)
}

/// Okabe-Ito colours (yellow left out: too faint on white), one per mechanism in the
/// note's order; black for anything else.
fn mechanism_color(mechanism: &str) -> RGBColor {
    match mechanism {
        "pipe" => RGBColor(0, 114, 178),        // blue
        "named-pipe" => RGBColor(86, 180, 233), // sky blue
        "msgqueue" => RGBColor(0, 158, 115),    // bluish green
        "shm" => RGBColor(213, 94, 0),          // vermillion
        "mmap" => RGBColor(230, 159, 0),        // orange
        "socket" => RGBColor(204, 121, 167),    // reddish purple
        _ => RGBColor(0, 0, 0),
    }
}

/// A marker's outline.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Circle,
    Square,
    Triangle,
    Diamond,
    InvTriangle,
    Star,
    Hexagon,
    Cross,
    Plus,
    Asterisk,
}

/// A shape, filled or drawn as an outline (crosses are always lines).
#[derive(Clone, Copy, Debug)]
struct Marker(Shape, bool);

/// Every series gets the next marker, so no two series of one chart share one (the
/// bench has at most 16 series); ordered so that neighbours in the legend differ most.
const MARKERS: [Marker; 16] = [
    Marker(Shape::Circle, true),
    Marker(Shape::Square, true),
    Marker(Shape::Triangle, true),
    Marker(Shape::Diamond, true),
    Marker(Shape::Cross, false),
    Marker(Shape::Circle, false),
    Marker(Shape::Square, false),
    Marker(Shape::Triangle, false),
    Marker(Shape::Diamond, false),
    Marker(Shape::Plus, false),
    Marker(Shape::InvTriangle, true),
    Marker(Shape::Star, true),
    Marker(Shape::InvTriangle, false),
    Marker(Shape::Star, false),
    Marker(Shape::Asterisk, false),
    Marker(Shape::Hexagon, true),
];

/// Colour and marker of each series name, the same in both charts: markers in the order
/// the rows first show the series (all rows, so a failed case does not shift the others).
fn styles(rows: &[Row]) -> BTreeMap<String, (RGBColor, Marker)> {
    let mut out = BTreeMap::new();
    for r in rows {
        let n = out.len();
        out.entry(series_name(r))
            .or_insert((mechanism_color(&r.mechanism), MARKERS[n % MARKERS.len()]));
    }
    out
}

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {e}")
}

/// Draws `m` centred on the pixel `(x, y)` of `area`.
fn draw_marker(
    area: &DrawingArea<SVGBackend, Shift>,
    (x, y): (i32, i32),
    m: Marker,
    color: RGBColor,
) -> Result<()> {
    let r = 5;
    let fill = color.filled();
    let line = color.stroke_width(2);
    let closed = |pts: Vec<(i32, i32)>| -> Result<()> {
        if m.1 {
            area.draw(&Polygon::new(pts, fill)).map_err(plot_err)
        } else {
            let mut p = pts.clone();
            p.push(pts[0]);
            area.draw(&PathElement::new(p, line)).map_err(plot_err)
        }
    };
    let segment = |a: (i32, i32), b: (i32, i32)| -> Result<()> {
        area.draw(&PathElement::new(vec![a, b], line))
            .map_err(plot_err)
    };
    let style = if m.1 { fill } else { line };
    match m.0 {
        Shape::Circle => area
            .draw(&Circle::new((x, y), r, style))
            .map_err(plot_err)?,
        Shape::Square => area
            .draw(&Rectangle::new([(x - r, y - r), (x + r, y + r)], style))
            .map_err(plot_err)?,
        Shape::Triangle => closed(vec![(x, y - r - 1), (x + r + 1, y + r), (x - r - 1, y + r)])?,
        Shape::InvTriangle => closed(vec![(x, y + r + 1), (x + r + 1, y - r), (x - r - 1, y - r)])?,
        Shape::Diamond => closed(vec![
            (x, y - r - 2),
            (x + r + 1, y),
            (x, y + r + 2),
            (x - r - 1, y),
        ])?,
        Shape::Star | Shape::Hexagon => {
            let (n, inner) = if matches!(m.0, Shape::Star) {
                (10, 0.45)
            } else {
                (6, 1.0)
            };
            let pts = (0..n)
                .map(|k| {
                    let a = std::f64::consts::PI * 2.0 * k as f64 / n as f64
                        - std::f64::consts::FRAC_PI_2;
                    let rr = f64::from(r + 2) * if k % 2 == 1 { inner } else { 1.0 };
                    (
                        x + (rr * a.cos()).round() as i32,
                        y + (rr * a.sin()).round() as i32,
                    )
                })
                .collect();
            closed(pts)?
        }
        Shape::Cross => {
            segment((x - r, y - r), (x + r, y + r))?;
            segment((x - r, y + r), (x + r, y - r))?
        }
        Shape::Plus => {
            segment((x - r - 1, y), (x + r + 1, y))?;
            segment((x, y - r - 1), (x, y + r + 1))?
        }
        Shape::Asterisk => {
            segment((x - r, y - r), (x + r, y + r))?;
            segment((x - r, y + r), (x + r, y - r))?;
            segment((x, y - r - 1), (x, y + r + 1))?
        }
    }
    Ok(())
}

/// A value axis: its range, the labelled ticks, the lighter grid lines between them, how
/// a tick is labelled and a value written, and its title (with the units).
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    minor: Vec<f64>,
    label: fn(f64) -> String,
    value: fn(f64) -> String,
    title: &'static str,
}

/// Range and ticks of a log axis over `[lo, hi]` whose "decades" are `steps` (1, 10, 100)
/// times each power of `base` (10 for time, 1024 for binary units): every such value in
/// the range is a labelled tick, and the range reaches one tick beyond the data each side.
fn log_axis(lo: f64, hi: f64, base: f64) -> (f64, f64, Vec<f64>, Vec<f64>) {
    let steps: &[f64] = if base == 10.0 {
        &[1.0]
    } else {
        &[1.0, 10.0, 100.0]
    };
    let mut grid = Vec::new();
    let mut p = 1.0;
    while p < 1e16 {
        grid.extend(steps.iter().map(|s| s * p));
        p *= base;
    }
    let below = grid.iter().copied().rfind(|&t| t <= lo).unwrap_or(1.0);
    // At least two ticks, even for a single value that sits on one.
    let above = grid
        .iter()
        .copied()
        .find(|&t| t >= hi && t > below)
        .unwrap_or(below * base);
    let ticks: Vec<f64> = grid
        .iter()
        .copied()
        .filter(|&t| t >= below && t <= above)
        .collect();
    // Light grid lines at 2, 3, ... 9 times each tick, up to the next one.
    let mut minor = Vec::new();
    for w in ticks.windows(2) {
        let mut m = 2.0 * w[0];
        while m < w[1] * 0.999 {
            minor.push(m);
            m += w[0];
        }
    }
    // A little room beyond the outer ticks, so no marker sits on the frame.
    (below / 1.25, above * 1.25, ticks, minor)
}

/// `100 ns`, `1 us`, `10 ms`: a decade of nanoseconds in the table's units.
fn decade_ns(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{} s", (v / 1e9).round()),
        v if v >= 1e6 => format!("{} ms", (v / 1e6).round()),
        v if v >= 1e3 => format!("{} us", (v / 1e3).round()),
        v => format!("{} ns", v.round()),
    }
}

/// `10 MiB/s`, `1 GiB/s`: a binary rate tick in the table's units.
fn decade_rate(v: f64) -> String {
    const UNITS: [&str; 5] = ["B/s", "KiB/s", "MiB/s", "GiB/s", "TiB/s"];
    let mut u = 0;
    let mut x = v;
    while x >= 1023.5 && u < UNITS.len() - 1 {
        x /= 1024.0;
        u += 1;
    }
    format!("{} {}", x.round(), UNITS[u])
}

fn latency_axis(lo: f64, hi: f64) -> Axis {
    let (lo, hi, ticks, minor) = log_axis(lo, hi, 10.0);
    Axis {
        lo,
        hi,
        ticks,
        minor,
        label: decade_ns,
        value: |v| fmt_ns(v as u64),
        title: "round trip, p50 (ns, us, ms; log scale)",
    }
}

fn rate_axis(lo: f64, hi: f64) -> Axis {
    let (lo, hi, ticks, minor) = log_axis(lo, hi, 1024.0);
    Axis {
        lo,
        hi,
        ticks,
        minor,
        label: decade_rate,
        value: |v| fmt_rate(v).replace(' ', "\u{a0}"),
        title: "payload per second (binary units: 1 GiB/s = 2^30 B/s; log scale)",
    }
}

/// Groups of series that coincide: they share at least one size, and at three in four of
/// the sizes both measured (a stray point of a noisy run does not part them) each value is
/// within [`COINCIDE`] of the other's, so on a log chart their points overlap. Groups are
/// joined transitively; names in series order.
pub fn coinciding(data: &[Series]) -> Vec<Vec<String>> {
    let close = |a: &Series, b: &Series| {
        let (mut shared, mut near) = (0usize, 0usize);
        for &(x, y) in &a.points {
            if let Some(&(_, z)) = b.points.iter().find(|p| p.0 == x) {
                shared += 1;
                if y.max(z) / y.min(z) <= COINCIDE {
                    near += 1;
                }
            }
        }
        shared > 0 && 4 * near >= 3 * shared
    };
    // Union-find over series indices.
    let mut parent: Vec<usize> = (0..data.len()).collect();
    fn root(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            i = p[i];
        }
        i
    }
    for i in 0..data.len() {
        for j in i + 1..data.len() {
            if close(&data[i], &data[j]) {
                let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                parent[b.max(a)] = a.min(b);
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (i, series) in data.iter().enumerate() {
        let r = root(&mut parent, i);
        groups.entry(r).or_default().push(series.name.clone());
    }
    groups.into_values().filter(|g| g.len() > 1).collect()
}

/// Draws one chart into `path`: lines over sizes, or a dot plot when every series has a
/// single point.
fn chart(
    path: &Path,
    title: &str,
    axis: &dyn Fn(f64, f64) -> Axis,
    data: &[Series],
    styles: &BTreeMap<String, (RGBColor, Marker)>,
) -> Result<Drawn> {
    let root = SVGBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let values = data.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (lo, hi) = values.fold((f64::MAX, 0f64), |(l, h), v| (l.min(v), h.max(v)));
    let axis = if data.is_empty() {
        axis(1.0, 10.0)
    } else {
        axis(lo, hi)
    };
    let dots = data.iter().all(|s| s.points.len() <= 1);
    if data.is_empty() {
        root.draw(&Text::new(
            format!("{title}: no verified result to show"),
            (40, 40),
            ("sans-serif", 20).into_font(),
        ))
        .map_err(plot_err)?;
    } else if dots {
        dot_plot(&root, title, &axis, data, styles)?;
    } else {
        line_chart(&root, title, &axis, data, styles)?;
    }
    root.present().map_err(plot_err)?;
    Ok(Drawn {
        dots,
        coinciding: coinciding(data),
    })
}

/// One row per series: the value on a log axis, the series named on the left.
fn dot_plot(
    root: &DrawingArea<SVGBackend, Shift>,
    title: &str,
    axis: &Axis,
    data: &[Series],
    styles: &BTreeMap<String, (RGBColor, Marker)>,
) -> Result<()> {
    // The size most series have goes in the title; a row at another size says so.
    let mut sizes: BTreeMap<u64, usize> = BTreeMap::new();
    for s in data {
        *sizes.entry(s.points[0].0 as u64).or_default() += 1;
    }
    let common = sizes.iter().max_by_key(|(_, n)| **n).map_or(0, |(s, _)| *s);
    let names: Vec<String> = data
        .iter()
        .map(|s| {
            let size = s.points[0].0 as u64;
            if size == common {
                s.name.clone()
            } else {
                format!("{} ({})", s.name, size_label(size))
            }
        })
        .collect();
    let n = data.len();
    let longest = names.iter().map(|s| s.chars().count()).max().unwrap_or(10);
    let title = format!("{title}, at {}", size_label(common));
    let label_names = names.clone();
    let mut c = ChartBuilder::on(root)
        .caption(&title, ("sans-serif", 22))
        .margin(16)
        .margin_right(110)
        .x_label_area_size(56)
        .y_label_area_size((longest as u32 * 8 + 24).min(420))
        .build_cartesian_2d(
            (axis.lo..axis.hi)
                .log_scale()
                .with_key_points(axis.ticks.clone())
                .with_light_points(axis.minor.clone()),
            // One segment per series; row 0 at the top.
            (0..n as i32 - 1).into_segmented(),
        )
        .map_err(plot_err)?;
    let label = axis.label;
    c.configure_mesh()
        .x_desc(axis.title)
        .x_label_formatter(&|v| label(*v))
        .y_labels(n + 1)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => label_names
                .get(n.wrapping_sub(1 + *i as usize))
                .cloned()
                .unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(BLACK.mix(0.04))
        .draw()
        .map_err(plot_err)?;
    for (i, s) in data.iter().enumerate() {
        let (color, marker) = styles[&s.name];
        let v = s.points[0].1;
        let (px, py) = c.backend_coord(&(v, SegmentValue::CenterOf((n - 1 - i) as i32)));
        draw_marker(root, (px, py), marker, color)?;
        root.draw(&Text::new(
            (axis.value)(v),
            (px + 12, py - 8),
            ("sans-serif", 14).into_font().color(&BLACK),
        ))
        .map_err(plot_err)?;
    }
    Ok(())
}

/// Lines over message sizes, the legend in its own column on the right.
fn line_chart(
    root: &DrawingArea<SVGBackend, Shift>,
    title: &str,
    axis: &Axis,
    data: &[Series],
    styles: &BTreeMap<String, (RGBColor, Marker)>,
) -> Result<()> {
    let (plot, _legend) = root.split_horizontally(W - LEGEND_W);
    let (xlo, xhi) = data
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold((f64::MAX, 0f64), |(l, h), x| (l.min(x), h.max(x)));
    // A labelled tick at every power of 4 (the sweep's sizes): 64 B, 256 B, 1 KiB, ...
    let size_ticks: Vec<f64> = (0..32)
        .map(|k| 4f64.powi(k))
        .filter(|&t| t >= xlo / 1.01 && t <= xhi * 1.01)
        .collect();
    let mut c = ChartBuilder::on(&plot)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(56)
        .y_label_area_size(90)
        .build_cartesian_2d(
            (xlo / 1.4..xhi * 1.4)
                .log_scale()
                .with_key_points(size_ticks),
            (axis.lo..axis.hi)
                .log_scale()
                .with_key_points(axis.ticks.clone())
                .with_light_points(axis.minor.clone()),
        )
        .map_err(plot_err)?;
    let label = axis.label;
    c.configure_mesh()
        .x_desc("message size (B, KiB = 1024 B, MiB; log scale)")
        .y_desc(axis.title)
        .x_label_formatter(&|x| size_label(x.round() as u64))
        .y_label_formatter(&|v| label(*v))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(BLACK.mix(0.04))
        .draw()
        .map_err(plot_err)?;
    for s in data {
        let (color, _) = styles[&s.name];
        c.draw_series(LineSeries::new(
            s.points.iter().copied(),
            color.stroke_width(2),
        ))
        .map_err(plot_err)?;
    }
    for s in data {
        let (color, marker) = styles[&s.name];
        for p in &s.points {
            draw_marker(root, c.backend_coord(p), marker, color)?;
        }
    }
    // The legend: a line and the marker, then the name, one entry per series.
    let x0 = (W - LEGEND_W) as i32 + 8;
    root.draw(&Text::new(
        "series (colour: mechanism)",
        (x0, 40),
        ("sans-serif", 15).into_font().color(&BLACK.mix(0.7)),
    ))
    .map_err(plot_err)?;
    for (i, s) in data.iter().enumerate() {
        let (color, marker) = styles[&s.name];
        let y = 72 + 24 * i as i32;
        root.draw(&PathElement::new(
            vec![(x0, y), (x0 + 34, y)],
            color.stroke_width(2),
        ))
        .map_err(plot_err)?;
        draw_marker(root, (x0 + 17, y), marker, color)?;
        root.draw(&Text::new(
            s.name.clone(),
            (x0 + 44, y - 8),
            ("sans-serif", 14).into_font().color(&BLACK),
        ))
        .map_err(plot_err)?;
    }
    Ok(())
}

/// Draws `latency.svg` and `throughput.svg` into `dir`; what each shows.
pub fn draw(dir: &Path, rows: &[Row]) -> Result<(Drawn, Drawn)> {
    let styles = styles(rows);
    let latency = chart(
        &dir.join("latency.svg"),
        "pingpong round trip, p50 (lower is better)",
        &latency_axis,
        &series(rows, "pingpong", |r| r.p50_ns as f64),
        &styles,
    )?;
    let throughput = chart(
        &dir.join("throughput.svg"),
        "stream throughput (higher is better)",
        &rate_axis,
        &series(rows, "stream", |r| r.bytes_per_s),
        &styles,
    )?;
    Ok((latency, throughput))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axes_label_every_decade_around_the_data() {
        let (lo, hi, ticks, _) = log_axis(350.0, 45_000.0, 10.0);
        assert_eq!(ticks, vec![100.0, 1e3, 1e4, 1e5]);
        assert!(lo < 100.0 && hi > 1e5);
        let labels: Vec<String> = ticks.iter().map(|&t| decade_ns(t)).collect();
        assert_eq!(labels, ["100 ns", "1 us", "10 us", "100 us"]);
        let (_, _, ticks, _) = log_axis(3e8, 2.5e10, 1024.0);
        let labels: Vec<String> = ticks.iter().map(|&t| decade_rate(t)).collect();
        assert_eq!(labels, ["100 MiB/s", "1 GiB/s", "10 GiB/s", "100 GiB/s"]);
    }

    #[test]
    fn a_single_value_still_gets_two_labelled_ticks() {
        let (_, _, ticks, _) = log_axis(1000.0, 1000.0, 10.0);
        assert_eq!(ticks, vec![1e3, 1e4]);
    }

    #[test]
    fn coinciding_series_are_grouped() {
        let s = |name: &str, pts: &[(f64, f64)]| Series {
            name: name.into(),
            mechanism: name.split(' ').next().unwrap_or("").into(),
            points: pts.to_vec(),
        };
        let data = [
            s("shm posix spin", &[(64.0, 350.0), (4096.0, 940.0)]),
            s("pipe spawn block", &[(64.0, 44_600.0), (4096.0, 46_100.0)]),
            s("mmap tmpfs spin", &[(64.0, 360.0), (4096.0, 950.0)]),
            s("socket tcp block", &[(64.0, 56_700.0), (4096.0, 69_400.0)]),
        ];
        assert_eq!(
            coinciding(&data),
            vec![vec!["shm posix spin".to_string(), "mmap tmpfs spin".into()]]
        );
    }

    #[test]
    fn every_series_of_a_run_has_its_own_marker() {
        let names: Vec<_> = MARKERS.iter().map(|m| format!("{m:?}")).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
    }
}
