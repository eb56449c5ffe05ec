//! The terminal report: machine header, the table, the claims.

use std::fmt::Write;

use crate::stats::significant;
use crate::{Cell, Report, Row, Section};

const FACTOR: usize = 40;
const CELL: usize = 25;

/// A cell as text: "12.3 us (11.8-14.1)", or why it is missing.
pub fn cell_text(report: &Report, row: &Row, cell: Option<&Cell>) -> String {
    let Some(cell) = cell else { return "-".into() };
    match &cell.figure {
        Some(f) if row.section == Section::Crash => {
            format!("{:.0} of {} alive", f.median, report.plan.crash_units)
        }
        Some(f) if f.samples > 1 => {
            format!("{} ({}-{})", f.show(), significant(f.p10), significant(f.p90))
        }
        Some(f) => f.show(),
        None => "failed".into(),
    }
}

/// Process over thread, as "12.3x".
pub fn ratio_text(row: &Row) -> String {
    row.ratio().map_or_else(|| "-".into(), |r| format!("{}x", significant(r)))
}

fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        format!("{s:width$}")
    } else {
        let cut: String = s.chars().take(width - 1).collect();
        format!("{cut}~")
    }
}

/// The whole terminal report.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tandem compare {} ({} plan, {:.1} s): threads vs processes on this machine",
        report.version, report.plan.name, report.elapsed_s
    );
    let _ = writeln!(out, "machine: {}", report.machine.describe());
    if let Some(w) = report.machine.busy_warning() {
        let _ = writeln!(out, "{w}");
    }
    let _ = writeln!(
        out,
        "figures: median (p10-p90) of repeated runs after a warm-up; ratio = process / thread\n"
    );
    let line = "-".repeat(FACTOR + 2 * CELL + 18);
    let _ = writeln!(
        out,
        "{} | {} | {} | ratio",
        fit("Factor", FACTOR),
        fit("Thread", CELL),
        fit("Process", CELL)
    );
    for section in Section::ALL {
        let rows: Vec<&Row> = report.rows.iter().filter(|r| r.section == section).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{line}\n{}", section.title());
        for row in rows {
            let _ = writeln!(
                out,
                "{} | {} | {} | {}",
                fit(&format!("  {}", row.factor), FACTOR),
                fit(&cell_text(report, row, row.thread.as_ref()), CELL),
                fit(&cell_text(report, row, row.process.as_ref()), CELL),
                ratio_text(row)
            );
        }
    }
    let _ = writeln!(out, "{line}");
    let failures: Vec<String> = report
        .rows
        .iter()
        .flat_map(|r| [&r.thread, &r.process].into_iter().flatten().map(move |c| (r, c)))
        .filter_map(|(r, c)| c.error.as_ref().map(|e| format!("  {} ({}): {e}", r.factor, c.how)))
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(out, "failed probes:\n{}", failures.join("\n"));
    }
    let _ = writeln!(out, "\nThe classic claims, on this machine:");
    for c in &report.claims {
        let _ = writeln!(out, "- {}: {}\n    {}", c.claim, c.verdict.label(), c.detail);
    }
    out
}
