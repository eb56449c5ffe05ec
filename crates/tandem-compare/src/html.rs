//! The HTML report: one self-contained page (no network, no external
//! assets) with a hand-written SVG chart per section.

use std::fmt::Write;

use crate::text::{cell_text, ratio_text};
use crate::{Curve, Figure, Report, Row, Section};

const THREAD_COLOR: &str = "#2f6fb3";
const PROCESS_COLOR: &str = "#d9822b";
const WIDTH: f64 = 1000.0;
const LABEL: f64 = 330.0;
const PLOT: f64 = WIDTH - LABEL - 90.0;

/// Escape text for HTML and SVG.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Horizontal scale for values in `lo..=hi`, logarithmic if asked.
struct Scale {
    lo: f64,
    hi: f64,
    log: bool,
}

impl Scale {
    fn x(&self, v: f64) -> f64 {
        let f = if self.log {
            (v.max(self.lo).ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln())
        } else {
            v / self.hi
        };
        LABEL + PLOT * f.clamp(0.0, 1.0)
    }
}

fn bar(out: &mut String, scale: &Scale, y: f64, f: &Figure, color: &str, label: &str, value: &str) {
    let x1 = scale.x(f.median);
    let _ = write!(
        out,
        r#"<rect x="{LABEL}" y="{y}" width="{:.1}" height="13" fill="{color}"><title>{}</title></rect>"#,
        (x1 - LABEL).max(1.0),
        esc(label)
    );
    if f.samples > 1 {
        let (a, b) = (scale.x(f.p10), scale.x(f.p90));
        let mid = y + 6.5;
        let _ = write!(
            out,
            r##"<line x1="{a:.1}" x2="{b:.1}" y1="{mid}" y2="{mid}" stroke="#222" stroke-width="1"/>"##
        );
    }
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{}" font-size="11">{}</text>"#,
        scale.x(f.p90.max(f.median)) + 4.0,
        y + 11.0,
        esc(value)
    );
}

/// Grouped horizontal bars: thread and process for each row.
fn bar_chart(report: &Report, rows: &[&Row], log: bool) -> String {
    let figures: Vec<&Figure> = rows
        .iter()
        .flat_map(|r| [&r.thread, &r.process].into_iter().flatten().filter_map(|c| c.figure.as_ref()))
        .collect();
    if figures.is_empty() {
        return String::new();
    }
    let hi = figures.iter().map(|f| f.p90.max(f.median)).fold(f64::MIN, f64::max).max(1e-9) * 1.05;
    let lo = figures.iter().map(|f| f.p10.min(f.median)).filter(|v| *v > 0.0).fold(f64::MAX, f64::min);
    let scale = Scale { lo: if lo == f64::MAX { hi / 1000.0 } else { lo / 2.0 }, hi, log };
    let row_h = 38.0;
    let height = 30.0 + row_h * rows.len() as f64;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" role="img">"#
    );
    for (i, row) in rows.iter().enumerate() {
        let y = 8.0 + row_h * i as f64;
        let _ = write!(out, r#"<text x="4" y="{}" font-size="12">{}</text>"#, y + 17.0, esc(&row.factor));
        for (k, (cell, color)) in
            [(&row.thread, THREAD_COLOR), (&row.process, PROCESS_COLOR)].into_iter().enumerate()
        {
            if let Some(f) = cell.as_ref().and_then(|c| c.figure.as_ref()) {
                let how = cell.as_ref().map_or("", |c| c.how.as_str());
                let value = match row.section {
                    Section::Crash => format!("{:.0} of {} alive", f.median, report.plan.crash_units),
                    _ => f.show(),
                };
                bar(&mut out, &scale, y + 15.0 * k as f64, f, color, how, &value);
            }
        }
    }
    let axis_y = height - 14.0;
    let _ = write!(
        out,
        r##"<line x1="{LABEL}" x2="{}" y1="{axis_y}" y2="{axis_y}" stroke="#888"/><text x="{LABEL}" y="{}" font-size="10" fill="#555">{}bars: median; whiskers: p10-p90</text>"##,
        LABEL + PLOT,
        axis_y + 12.0,
        if log { "log scale, " } else { "" },
    );
    out.push_str("</svg>");
    out
}

/// Speedup against unit count, one line per curve of this workload.
fn line_chart(curves: &[&Curve], cores: usize) -> String {
    let (w, h, left, bottom, top) = (480.0, 300.0, 50.0, 40.0, 20.0);
    let max_units = curves.iter().flat_map(|c| c.points.iter().map(|p| p.units)).max().unwrap_or(1).max(2);
    let max_speed = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.speedup.p90))
        .fold(max_units as f64, f64::max)
        .ceil();
    let px = |u: f64| left + (w - left - 20.0) * (u - 1.0) / (max_units as f64 - 1.0);
    let py = |s: f64| h - bottom - (h - bottom - top) * s / max_speed;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" role="img">"#
    );
    for s in 0..=(max_speed as usize) {
        let y = py(s as f64);
        let _ = write!(
            out,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" font-size="10" text-anchor="end">{s}x</text>"##,
            w - 20.0,
            left - 4.0,
            y + 3.0
        );
    }
    for u in 1..=max_units {
        let x = px(u as f64);
        let _ = write!(
            out,
            r#"<text x="{x:.1}" y="{}" font-size="10" text-anchor="middle">{u}</text>"#,
            h - bottom + 14.0
        );
    }
    let _ = write!(
        out,
        r##"<text x="{}" y="{}" font-size="11" text-anchor="middle">workers (this machine has {cores} cores)</text>"##,
        (left + w) / 2.0,
        h - 8.0
    );
    // Ideal for CPU work: linear up to the core count, flat after.
    let ideal: Vec<String> =
        (1..=max_units).map(|u| format!("{:.1},{:.1}", px(u as f64), py((u.min(cores)) as f64))).collect();
    if curves.iter().any(|c| c.workload == "cpu") {
        let _ = write!(
            out,
            r##"<polyline points="{}" fill="none" stroke="#999" stroke-dasharray="4 3"><title>ideal for CPU-bound work</title></polyline>"##,
            ideal.join(" ")
        );
    }
    for c in curves {
        let color = if c.unit == "thread" { THREAD_COLOR } else { PROCESS_COLOR };
        let pts: Vec<String> = c
            .points
            .iter()
            .map(|p| format!("{:.1},{:.1}", px(p.units as f64), py(p.speedup.median)))
            .collect();
        let _ = write!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            pts.join(" ")
        );
        for p in &c.points {
            let _ = write!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"><title>{} units: {}</title></circle>"#,
                px(p.units as f64),
                py(p.speedup.median),
                p.units,
                esc(&p.speedup.show())
            );
        }
    }
    out.push_str("</svg>");
    out
}

/// The whole page.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tandem compare: threads vs processes</title>
<style>
body {{ font-family: sans-serif; margin: 24px; max-width: 1040px; color: #222; }}
table {{ border-collapse: collapse; width: 100%; font-size: 13px; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 3px 6px; text-align: left; }}
th.section {{ background: #f3f3f3; }}
.t {{ color: {THREAD_COLOR}; }} .p {{ color: {PROCESS_COLOR}; }}
.how {{ color: #777; font-size: 11px; }}
.verdict {{ font-weight: bold; }}
</style></head><body>
<h1>tandem compare: threads vs processes</h1>
<p><b>Machine:</b> {}<br><b>Run:</b> tandem {}, {} plan, {:.1} s. Figures are medians of repeated runs after a warm-up; whiskers and ranges are p10-p90.
<span class="t">&#9632; thread</span> <span class="p">&#9632; process</span>{}</p>
"#,
        esc(&report.machine.describe()),
        esc(&report.version),
        esc(&report.plan.name),
        report.elapsed_s,
        report.machine.busy_warning().map_or(String::new(), |w| format!("<br><b>{}</b>", esc(&w)))
    );
    out.push_str("<h2>The table</h2><table><tr><th>Factor</th><th>Thread</th><th>Process</th><th>ratio (process / thread)</th></tr>");
    for section in Section::ALL {
        let rows: Vec<&Row> = report.rows.iter().filter(|r| r.section == section).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = write!(out, r#"<tr><th class="section" colspan="4">{}</th></tr>"#, esc(section.title()));
        for row in rows {
            let cell = |c: Option<&crate::Cell>| {
                let how = c.map_or(String::new(), |c| esc(&c.how));
                format!("{}<br><span class=\"how\">{how}</span>", esc(&cell_text(report, row, c)))
            };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&row.factor),
                cell(row.thread.as_ref()),
                cell(row.process.as_ref()),
                esc(&ratio_text(row))
            );
        }
    }
    out.push_str("</table>\n<h2>The classic claims, on this machine</h2><ul>");
    for c in &report.claims {
        let _ = write!(
            out,
            r#"<li>{} <span class="verdict">{}</span><br>{}</li>"#,
            esc(&c.claim),
            c.verdict.label(),
            esc(&c.detail)
        );
    }
    out.push_str("</ul>\n");
    for section in Section::ALL {
        if section == Section::Scaling {
            continue;
        }
        let rows: Vec<&Row> = report.rows.iter().filter(|r| r.section == section).collect();
        if rows.is_empty() {
            continue;
        }
        let log = matches!(section, Section::Creation | Section::Latency | Section::Memory);
        let _ = write!(out, "<h2>{}</h2>\n{}\n", esc(section.title()), bar_chart(report, &rows, log));
    }
    let _ = writeln!(out, "<h2>{}</h2>", esc(Section::Scaling.title()));
    for (workload, title) in [("cpu", "CPU-bound"), ("io", "I/O-bound (blocking sleep)")] {
        let curves: Vec<&Curve> = report.curves.iter().filter(|c| c.workload == workload).collect();
        let _ = write!(
            out,
            r#"<figure style="display:inline-block;margin:0 8px"><figcaption>{title}: <span class="t">threads</span>, <span class="p">processes</span>{}</figcaption>{}</figure>"#,
            if workload == "cpu" { ", dashed: ideal (one unit per core)" } else { "" },
            line_chart(&curves, report.machine.cores)
        );
    }
    // The only script: marks the page rendered and records any error in the
    // DOM, so a headless browser's dump shows both.
    out.push_str(
        r#"
<script>
window.addEventListener("error", function (e) { document.body.setAttribute("data-errors", String(e.message)); });
document.body.setAttribute("data-rendered", document.querySelectorAll("svg").length + " charts");
</script>
</body></html>
"#,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(esc("<a href=\"x\">&</a>"), "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;");
    }

    #[test]
    fn log_scale_orders_values() {
        let s = Scale { lo: 1.0, hi: 1000.0, log: true };
        assert_eq!(s.x(1.0), LABEL);
        assert!((s.x(1000.0) - (LABEL + PLOT)).abs() < 1e-9);
        assert!(s.x(10.0) < s.x(100.0));
    }
}
