//! `tandem compare --quick` end to end: the real binary, the real quick plan.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn quick_compare_runs_end_to_end_and_writes_json_and_html() {
    let dir = std::env::temp_dir().join(format!("tandem-cli-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, html) = (dir.join("compare.json"), dir.join("compare.html"));
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["compare", "--quick", "--json"])
        .arg(&json)
        .arg("--html")
        .arg(&html)
        .env_remove("TANDEM_COMPARE_PLAN")
        .output()
        .unwrap();
    let took = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("quick plan") && stdout.contains("machine:"), "{stdout}");
    assert!(stdout.contains("The classic claims"), "{stdout}");
    assert!(!stdout.contains("failed probes"), "{stdout}");

    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["plan"]["name"], "quick");
    // The promise of --quick (under 30 s) holds for an optimized build on a
    // machine that is not already busy; other programs' load stretches it.
    let load = v["machine"]["load_average"].as_f64().unwrap();
    let cores = v["machine"]["cores"].as_f64().unwrap();
    if !cfg!(debug_assertions) && load <= cores / 3.0 {
        assert!(took < Duration::from_secs(30), "--quick took {took:?} at load {load}");
    }
    let ids: Vec<&str> = v["rows"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    for id in [
        "creation.os_floor",
        "memory.uss",
        "latency.pipe",
        "bandwidth.shm",
        "context_switch.futex",
        "crash.segfault",
        "scaling.cpu",
        "scaling.io",
    ] {
        assert!(ids.contains(&id), "JSON lacks {id}: {ids:?}");
    }
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>") && page.contains("<svg"));
    let _ = std::fs::remove_dir_all(&dir);
}
