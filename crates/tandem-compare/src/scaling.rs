//! Workload fit: the same work split among 1 up to 2x cores threads or
//! processes, CPU-bound and I/O-bound (blocking sleep).

use std::hint::black_box;
use std::time::{Duration, Instant};

use tandem::StartMethod;

use crate::{Better, Cell, Curve, Figure, Plan, Point, Row, Section};

/// Most units tried: twice the CPUs.
fn max_units() -> usize {
    2 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Progress steps taken by [`curves`].
pub fn steps() -> u64 {
    4 * max_units() as u64
}

/// CPU work that the optimizer cannot remove: `iters` rounds of xorshift.
fn burn(iters: u64) -> u64 {
    let mut x = black_box(0x9e37_79b9_7f4a_7c15u64);
    for _ in 0..iters {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    black_box(x)
}

/// A unit's share of the work: (size of one task, number of tasks).
type Share = fn((u64, u64)) -> u64;

/// One unit's share: `count` CPU tasks of `iters` rounds each.
fn cpu_share((iters, count): (u64, u64)) -> u64 {
    (0..count).fold(0, |acc, _| acc ^ burn(iters))
}

/// One unit's share: `count` blocking waits of `ms` each (I/O stand-in).
fn io_share((ms, count): (u64, u64)) -> u64 {
    for _ in 0..count {
        std::thread::sleep(Duration::from_millis(ms));
    }
    count
}

/// Rounds of `burn` that take about `ms` milliseconds here.
fn calibrate(ms: u64) -> u64 {
    let probe = 1_000_000;
    let start = Instant::now();
    burn(probe);
    let per_ms = probe as f64 / (start.elapsed().as_secs_f64() * 1e3);
    (per_ms * ms as f64).max(1.0) as u64
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Thread,
    Process,
}

/// Wall time for `units` units sharing `tasks` tasks of `param` each.
fn run_split(kind: Kind, units: usize, tasks: usize, param: u64, share: Share) -> Duration {
    let builder = tandem::process::Builder::new().start_method(StartMethod::ForkServer);
    let start = Instant::now();
    let handles: Vec<_> = (0..units)
        .map(|i| {
            let count = (tasks / units + usize::from(i < tasks % units)) as u64;
            match kind {
                Kind::Thread => tandem::thread::spawn((param, count), share),
                Kind::Process => builder.spawn((param, count), share),
            }
            .expect("start a scaling unit")
        })
        .collect();
    for h in handles {
        h.join().expect("scaling unit");
    }
    start.elapsed()
}

/// Speedup curves: CPU and I/O, threads and processes.
pub fn curves(plan: &Plan, bar: &indicatif::ProgressBar) -> Vec<Curve> {
    let iters = calibrate(plan.task_ms);
    let workloads: [(&str, u64, Share); 2] = [("cpu", iters, cpu_share), ("io", plan.task_ms, io_share)];
    let mut out = Vec::new();
    for (workload, param, share) in workloads {
        // Baseline: one thread, this one, doing every task in turn.
        let mut base: Vec<f64> = (0..plan.few_samples.max(3))
            .map(|_| {
                let start = Instant::now();
                share((param, plan.scaling_tasks as u64));
                start.elapsed().as_secs_f64()
            })
            .collect();
        base.sort_by(f64::total_cmp);
        let baseline = base[base.len() / 2];
        run_split(Kind::Process, 1, 1, param, share); // warm-up (fork server start)
        // Thread and process samples alternate, so a burst of other work on
        // the machine hits both sides alike.
        let mut samples = [vec![Vec::new(); max_units()], vec![Vec::new(); max_units()]];
        for units in 1..=max_units() {
            bar.set_message(format!("workload fit: {workload}-bound, {units} units"));
            for _ in 0..plan.few_samples {
                for (side, kind) in [Kind::Thread, Kind::Process].into_iter().enumerate() {
                    let t = run_split(kind, units, plan.scaling_tasks, param, share).as_secs_f64();
                    samples[side][units - 1].push(baseline / t);
                }
            }
            bar.inc(2);
        }
        for (side, unit) in ["thread", "process"].into_iter().enumerate() {
            let points = samples[side]
                .iter()
                .enumerate()
                .map(|(i, s)| Point {
                    units: i + 1,
                    speedup: Figure::from_samples("x", s).expect("finite speedups"),
                })
                .collect();
            out.push(Curve { workload: workload.to_string(), unit: unit.to_string(), points });
        }
    }
    out
}

/// Table rows taken from the curves: CPU-bound at as many units as cores,
/// I/O-bound at twice as many.
pub fn summary_rows(curves: &[Curve]) -> Vec<Row> {
    let cores = max_units() / 2;
    let at = |workload: &str, unit: &str, units: usize, how: &str| {
        let figure = curves
            .iter()
            .find(|c| c.workload == workload && c.unit == unit)
            .and_then(|c| c.points.iter().find(|p| p.units == units))
            .map(|p| p.speedup.clone());
        Some(Cell {
            how: how.to_string(),
            error: figure.is_none().then(|| "not measured".to_string()),
            figure,
        })
    };
    vec![
        Row {
            id: "scaling.cpu".into(),
            section: Section::Scaling,
            factor: format!("CPU-bound speedup, {cores} units"),
            better: Better::Higher,
            thread: at("cpu", "thread", cores, "tandem thread units"),
            process: at("cpu", "process", cores, "tandem process units (ForkServer)"),
        },
        Row {
            id: "scaling.io".into(),
            section: Section::Scaling,
            factor: format!("I/O-bound speedup, {} units", 2 * cores),
            better: Better::Higher,
            thread: at("io", "thread", 2 * cores, "tandem thread units"),
            process: at("io", "process", 2 * cores, "tandem process units (ForkServer)"),
        },
    ]
}
