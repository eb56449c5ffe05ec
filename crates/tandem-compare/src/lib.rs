//! `tandem compare`: every row of the classic thread-vs-process table,
//! measured on this machine, with the report as text, JSON and HTML.
//!
//! ```no_run
//! tandem::init();
//! let report = tandem_compare::run(&tandem_compare::Plan::quick(), false);
//! print!("{}", tandem_compare::text::render(&report));
//! ```
//!
//! The rows are data: [`rows::specs`] lists them, each a factor with a
//! thread probe and a process probe, so a new row is one more entry.

#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod claims;
pub mod html;
pub mod machine;
mod probes;
pub mod rows;
mod scaling;
pub mod stats;
pub mod text;

use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use machine::Machine;
pub use stats::Figure;

/// How much measuring to do. Same rows in every plan; only counts change.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// "full", "quick" or "smoke".
    pub name: String,
    /// Samples per figure for cheap operations.
    pub samples: usize,
    /// Samples per figure for expensive ones (memory, crashes, scaling).
    pub few_samples: usize,
    /// Untimed runs before the samples.
    pub warmup: usize,
    /// Operations averaged into one sample of a microsecond-scale figure.
    pub batch: usize,
    /// Idle units started for a memory sample.
    pub idle_units: usize,
    /// Idle tandem process units started for a memory sample (each is a
    /// re-executed binary, so fewer).
    pub idle_tandem_units: usize,
    /// Units in a crash row.
    pub crash_units: usize,
    /// Bytes per bandwidth transfer.
    pub chunk_bytes: usize,
    /// Transfers averaged into one bandwidth sample.
    pub chunks_per_sample: usize,
    /// Milliseconds of work in one scaling task.
    pub task_ms: u64,
    /// Tasks split among the units in a scaling run.
    pub scaling_tasks: usize,
}

impl Plan {
    /// The full run: under 3 minutes on a 2-core machine.
    pub fn full() -> Plan {
        Plan {
            name: "full".into(),
            samples: 60,
            few_samples: 7,
            warmup: 5,
            batch: 400,
            idle_units: 128,
            idle_tandem_units: 24,
            crash_units: 8,
            chunk_bytes: 1 << 20,
            chunks_per_sample: 16,
            task_ms: 10,
            scaling_tasks: 24,
        }
    }

    /// `--quick`: same rows, fewer samples; under 30 s.
    pub fn quick() -> Plan {
        Plan {
            name: "quick".into(),
            samples: 21,
            few_samples: 3,
            warmup: 2,
            batch: 150,
            idle_units: 64,
            idle_tandem_units: 8,
            crash_units: 4,
            chunk_bytes: 1 << 20,
            chunks_per_sample: 6,
            task_ms: 4,
            scaling_tasks: 12,
        }
    }

    /// The least that still measures every row: for tests.
    pub fn smoke() -> Plan {
        Plan {
            name: "smoke".into(),
            samples: 5,
            few_samples: 1,
            warmup: 1,
            batch: 20,
            idle_units: 8,
            idle_tandem_units: 2,
            crash_units: 3,
            chunk_bytes: 1 << 18,
            chunks_per_sample: 2,
            task_ms: 1,
            scaling_tasks: 4,
        }
    }

    /// The plan named by `TANDEM_COMPARE_PLAN` (full, quick, smoke) if set,
    /// else quick or full as asked.
    pub fn from_env_or(quick: bool) -> Plan {
        match std::env::var("TANDEM_COMPARE_PLAN").as_deref() {
            Ok("smoke") => Plan::smoke(),
            Ok("quick") => Plan::quick(),
            Ok("full") => Plan::full(),
            _ if quick => Plan::quick(),
            _ => Plan::full(),
        }
    }
}

/// Which part of the table a row belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    /// Starting and joining a unit.
    Creation,
    /// What an idle unit costs.
    Memory,
    /// Round trip between two units.
    Latency,
    /// Bytes per second between two units.
    Bandwidth,
    /// Switching between two units on one CPU.
    ContextSwitch,
    /// What one failing unit does to the others.
    Crash,
    /// Speedup with more units.
    Scaling,
}

impl Section {
    /// Every section, in report order.
    pub const ALL: [Section; 7] = [
        Section::Creation,
        Section::Memory,
        Section::Latency,
        Section::Bandwidth,
        Section::ContextSwitch,
        Section::Crash,
        Section::Scaling,
    ];

    /// Heading used in the reports.
    pub fn title(self) -> &'static str {
        match self {
            Section::Creation => "Creation (spawn + join of a trivial unit; the creator on CPU 0)",
            Section::Memory => "Memory per idle unit",
            Section::Latency => "Communication latency (round trip; the two units on different CPUs)",
            Section::Bandwidth => "Communication bandwidth (the two units on different CPUs)",
            Section::ContextSwitch => "Context switch (two units ping-pong on one pinned CPU)",
            Section::Crash => "Crash impact (units still running after one fails)",
            Section::Scaling => "Workload fit (speedup of a Pool over one thread doing it all)",
        }
    }
}

/// Whether smaller or bigger figures are better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    /// Time, memory.
    Lower,
    /// Bandwidth, speedup, survivors.
    Higher,
}

/// One side of a row: how it was measured and what came out.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cell {
    /// The mechanism measured, e.g. "fork + _exit + waitid".
    pub how: String,
    /// The figure, or None if the probe failed.
    pub figure: Option<Figure>,
    /// Why the probe failed.
    pub error: Option<String>,
}

/// One row of the table: a factor measured for threads and for processes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// Stable identifier, e.g. "creation.os_floor".
    pub id: String,
    /// Which part of the table.
    pub section: Section,
    /// What is compared, e.g. "spawn + join, OS floor".
    pub factor: String,
    /// Whether lower or higher is better.
    pub better: Better,
    /// The thread side.
    pub thread: Option<Cell>,
    /// The process side.
    pub process: Option<Cell>,
}

impl Row {
    /// Process median over thread median, when both were measured.
    pub fn ratio(&self) -> Option<f64> {
        let t = self.thread.as_ref()?.figure.as_ref()?.median;
        let p = self.process.as_ref()?.figure.as_ref()?.median;
        (t > 0.0).then_some(p / t)
    }
}

/// A speedup curve: one workload, one kind of unit, 1..=2x cores units.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Curve {
    /// "cpu" or "io".
    pub workload: String,
    /// "thread" or "process".
    pub unit: String,
    /// Speedup at each unit count.
    pub points: Vec<Point>,
}

/// One point of a [`Curve`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Point {
    /// How many units shared the work.
    pub units: usize,
    /// Sequential time over this time.
    pub speedup: Figure,
}

/// Everything one `tandem compare` run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// tandem's version.
    pub version: String,
    /// The machine measured.
    pub machine: Machine,
    /// The plan used.
    pub plan: Plan,
    /// The table.
    pub rows: Vec<Row>,
    /// Speedup curves for the workload-fit section.
    pub curves: Vec<Curve>,
    /// The classic claims with this machine's verdict.
    pub claims: Vec<claims::Claim>,
    /// Wall time of the run, seconds.
    pub elapsed_s: f64,
}

impl Report {
    /// The row with this id.
    pub fn row(&self, id: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.id == id)
    }
}

/// Measure everything in `plan`; show a progress bar on stderr if asked.
pub fn run(plan: &Plan, progress: bool) -> Report {
    let started = Instant::now();
    // Before the run, so the load is others' work, not ours.
    let machine = Machine::detect();
    let specs = rows::specs();
    let cells: u64 = specs.iter().map(|s| s.thread.is_some() as u64 + s.process.is_some() as u64).sum();
    let bar = if progress {
        indicatif::ProgressBar::new(cells + scaling::steps())
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    probes::start_fork_server_unpinned();
    let mut measured = Vec::with_capacity(specs.len());
    for spec in &specs {
        let side = |probe: &Option<rows::Probe>, who: &str| {
            probe.as_ref().map(|p| {
                bar.set_message(format!("{} ({who})", spec.factor));
                let cell = rows::measure(p, spec.unit, plan);
                bar.inc(1);
                cell
            })
        };
        let thread = side(&spec.thread, "thread");
        let process = side(&spec.process, "process");
        measured.push(Row {
            id: spec.id.to_string(),
            section: spec.section,
            factor: spec.factor.to_string(),
            better: spec.better,
            thread,
            process,
        });
    }
    bar.set_message("workload fit");
    let curves = scaling::curves(plan, &bar);
    measured.extend(scaling::summary_rows(&curves));
    bar.finish_and_clear();
    let mut report = Report {
        version: env!("CARGO_PKG_VERSION").to_string(),
        machine,
        plan: plan.clone(),
        rows: measured,
        curves,
        claims: Vec::new(),
        elapsed_s: 0.0,
    };
    report.claims = claims::judge(&report);
    report.elapsed_s = started.elapsed().as_secs_f64();
    report
}
