//! Workload fit: the same tasks run by a tandem Pool of 1 up to 2x cores
//! thread or process workers, CPU-bound and I/O-bound (blocking sleep).

use std::hint::black_box;
use std::time::{Duration, Instant};

use tandem::{Mode, Pool, StartMethod};

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

/// One task: (task size) -> anything.
type Task = fn(u64) -> u64;

/// A CPU-bound task: `iters` rounds of xorshift.
fn cpu_task(iters: u64) -> u64 {
    burn(iters)
}

/// An I/O-bound task: a blocking wait of `ms` milliseconds.
fn io_task(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Rounds of `burn` that take about `ms` milliseconds here.
fn calibrate(ms: u64) -> u64 {
    let probe = 1_000_000;
    let start = Instant::now();
    burn(probe);
    let per_ms = probe as f64 / (start.elapsed().as_secs_f64() * 1e3);
    (per_ms * ms as f64).max(1.0) as u64
}

fn pool(mode: Mode, workers: usize) -> Pool {
    Pool::builder()
        .mode(mode)
        .workers(workers)
        .start_method(StartMethod::ForkServer)
        .build()
        .expect("build a scaling pool")
}

/// Wall time for `pool` to run `tasks` tasks of `param` each.
fn run_pool(pool: &Pool, tasks: usize, param: u64, task: Task) -> Duration {
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks).map(|_| pool.submit(param, task)).collect();
    for h in handles {
        h.join().expect("scaling task");
    }
    start.elapsed()
}

/// Speedup curves: CPU and I/O, threads and processes.
pub fn curves(plan: &Plan, bar: &indicatif::ProgressBar) -> Vec<Curve> {
    let iters = calibrate(plan.task_ms);
    let workloads: [(&str, u64, Task); 2] = [("cpu", iters, cpu_task), ("io", plan.task_ms, io_task)];
    let mut out = Vec::new();
    for (workload, param, task) in workloads {
        // Baseline: one thread, this one, doing every task in turn.
        let mut base: Vec<f64> = (0..plan.few_samples.max(3))
            .map(|_| {
                let start = Instant::now();
                for _ in 0..plan.scaling_tasks {
                    task(param);
                }
                start.elapsed().as_secs_f64()
            })
            .collect();
        base.sort_by(f64::total_cmp);
        let baseline = base[base.len() / 2];
        let mut samples = [vec![Vec::new(); max_units()], vec![Vec::new(); max_units()]];
        for units in 1..=max_units() {
            bar.set_message(format!("workload fit: {workload}-bound, {units} workers"));
            let pools = [pool(Mode::Thread, units), pool(Mode::Process, units)];
            for p in &pools {
                run_pool(p, plan.scaling_tasks, param, task); // warm-up: every worker started
            }
            // Thread and process samples alternate, so a burst of other work
            // on the machine hits both sides alike.
            for _ in 0..plan.few_samples {
                for (side, p) in pools.iter().enumerate() {
                    samples[side][units - 1]
                        .push(baseline / run_pool(p, plan.scaling_tasks, param, task).as_secs_f64());
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
            factor: format!("CPU-bound speedup, {cores} workers"),
            better: Better::Higher,
            thread: at("cpu", "thread", cores, "tandem Pool, Mode::Thread"),
            process: at("cpu", "process", cores, "tandem Pool, Mode::Process (ForkServer)"),
        },
        Row {
            id: "scaling.io".into(),
            section: Section::Scaling,
            factor: format!("I/O-bound speedup, {} workers", 2 * cores),
            better: Better::Higher,
            thread: at("io", "thread", 2 * cores, "tandem Pool, Mode::Thread"),
            process: at("io", "process", 2 * cores, "tandem Pool, Mode::Process (ForkServer)"),
        },
    ]
}
