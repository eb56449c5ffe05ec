//! One smoke-sized run of every probe, then checks on the figures, the JSON
//! and the HTML page (rendered for real in headless Chromium).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tandem_compare::{Plan, Report, Section};

fn report() -> &'static Report {
    static REPORT: OnceLock<Report> = OnceLock::new();
    REPORT.get_or_init(|| tandem_compare::run(&Plan::smoke(), false))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-compare-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn every_row_is_measured_on_both_sides() {
    let r = report();
    let mut expected: Vec<String> = tandem_compare::rows::specs().iter().map(|s| s.id.to_string()).collect();
    expected.extend(["scaling.cpu".to_string(), "scaling.io".to_string()]);
    let got: Vec<&str> = r.rows.iter().map(|row| row.id.as_str()).collect();
    assert_eq!(got, expected);
    for section in Section::ALL {
        assert!(r.rows.iter().any(|row| row.section == section), "no row in {section:?}");
    }
    for row in &r.rows {
        for cell in [&row.thread, &row.process].into_iter().flatten() {
            assert!(cell.error.is_none(), "{} ({}) failed: {:?}", row.id, cell.how, cell.error);
            let f = cell.figure.as_ref().unwrap();
            assert!(f.p10 <= f.median && f.median <= f.p90, "{}: {f:?}", row.id);
            assert!(f.samples >= 1);
        }
    }
    // Every figure that is a cost or a rate is positive (kernel memory is a
    // machine-wide /proc/meminfo difference that other programs can move).
    for row in r.rows.iter().filter(|row| row.section != Section::Crash && !row.id.ends_with("kernel")) {
        for cell in [&row.thread, &row.process].into_iter().flatten() {
            assert!(cell.figure.as_ref().unwrap().median > 0.0, "{}: {:?}", row.id, cell.figure);
        }
    }
}

#[test]
fn crash_rows_count_real_survivors() {
    let r = report();
    let n = r.plan.crash_units as f64;
    let segv = r.row("crash.segfault").unwrap();
    assert_eq!(segv.thread.as_ref().unwrap().figure.as_ref().unwrap().median, 0.0);
    assert_eq!(segv.process.as_ref().unwrap().figure.as_ref().unwrap().median, n - 1.0);
    let panic = r.row("crash.panic").unwrap();
    assert_eq!(panic.thread.as_ref().unwrap().figure.as_ref().unwrap().median, n - 1.0);
    assert_eq!(panic.process.as_ref().unwrap().figure.as_ref().unwrap().median, n - 1.0);
}

#[test]
fn curves_cover_one_to_twice_the_cores() {
    let r = report();
    assert_eq!(r.curves.len(), 4);
    for c in &r.curves {
        let units: Vec<usize> = c.points.iter().map(|p| p.units).collect();
        assert_eq!(units, (1..=2 * r.machine.cores).collect::<Vec<_>>(), "{} {}", c.workload, c.unit);
    }
}

#[test]
fn json_has_every_figure_with_unit_and_spread() {
    let r = report();
    let text = serde_json::to_string(r).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), r.rows.len());
    for row in rows {
        for side in ["thread", "process"] {
            if row[side].is_null() {
                continue;
            }
            let f = &row[side]["figure"];
            for key in ["unit", "median", "p10", "p90", "samples"] {
                assert!(!f[key].is_null(), "{} {side} lacks {key}", row["id"]);
            }
        }
    }
    assert!(v["machine"]["cpu"].is_string());
    assert_eq!(v["claims"].as_array().unwrap().len(), r.claims.len());
    let back: Report = serde_json::from_str(&text).unwrap();
    assert_eq!(back.rows.len(), r.rows.len());
}

#[test]
fn text_report_names_machine_rows_and_claims() {
    let r = report();
    let text = tandem_compare::text::render(r);
    assert!(text.contains(&r.machine.cpu));
    for row in &r.rows {
        assert!(text.contains(&row.factor), "missing {}", row.factor);
    }
    for c in &r.claims {
        assert!(text.contains(&c.claim) && text.contains(c.verdict.label()));
    }
}

/// Chromium as CI installs it (scripts/setup.sh).
fn chromium() -> &'static str {
    "/usr/bin/chromium"
}

fn headless(profile: &Path, extra: &[&str], page: &Path) -> std::process::Output {
    Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap_or_else(|e| panic!("run {} (scripts/setup.sh installs it): {e}", chromium()))
}

#[test]
fn html_page_renders_in_a_browser_without_errors() {
    let r = report();
    let html = tandem_compare::html::render(r);
    let without_svg_namespace = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    assert!(!without_svg_namespace.contains("http"), "the page must not reach the network");
    assert!(!html.contains("<link") && !html.contains(" src="), "the page must be self-contained");
    let page = scratch("compare.html");
    std::fs::write(&page, &html).unwrap();

    let dom = headless(&scratch("profile-dom"), &["--dump-dom"], &page);
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    let charts = html.matches("<svg").count();
    assert!(charts >= 8, "one chart per section and two curves, got {charts}");
    assert!(
        dom_text.contains(&format!("data-rendered=\"{charts} charts\"")),
        "script did not run: {dom_text:.300}"
    );
    assert!(!dom_text.contains("data-errors=\""), "page raised an error: {dom_text:.300}");
    let log = String::from_utf8_lossy(&dom.stderr);
    assert!(!log.contains("Uncaught") && !log.contains("CONSOLE"), "console errors: {log}");

    // The error check can fail: a page with a broken script is caught.
    let broken = scratch("broken.html");
    std::fs::write(&broken, html.replace("</body>", "<script>notDefinedAnywhere();</script></body>"))
        .unwrap();
    let dom = headless(&scratch("profile-broken"), &["--dump-dom"], &broken);
    assert!(
        String::from_utf8_lossy(&dom.stdout).contains("data-errors=\""),
        "a broken script went unnoticed"
    );

    let png = scratch("compare.png");
    let shot = headless(
        &scratch("profile-shot"),
        &[&format!("--screenshot={}", png.display()), "--window-size=1200,3000"],
        &page,
    );
    assert!(shot.status.success(), "screenshot failed: {}", String::from_utf8_lossy(&shot.stderr));
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 20_000, "not a real screenshot");
}

fn cpus_allowed(_: ()) -> usize {
    rustix::thread::sched_getaffinity(None).unwrap().count() as usize
}

#[test]
fn pinned_probes_do_not_pin_later_process_units() {
    let _ = report(); // runs the pinned probes, and starts the fork server
    let here = cpus_allowed(());
    let unit = tandem::process::Builder::new()
        .start_method(tandem::StartMethod::ForkServer)
        .spawn((), cpus_allowed)
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(unit, here, "a fork-server unit inherited a probe's CPU pinning");
    assert_eq!(tandem::thread::spawn((), cpus_allowed).unwrap().join().unwrap(), here);
}
