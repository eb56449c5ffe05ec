//! The table as data: each row names a factor and how its thread side and
//! its process side are measured. Adding a row is adding one entry to
//! [`specs`] (and, for a new mechanism, one probe function).

use crate::probes as p;
use crate::{Better, Cell, Figure, Plan, Section};

/// How one side of a row is measured.
pub struct Probe {
    /// The mechanism, shown in the reports.
    pub how: &'static str,
    /// Returns the samples (warm-up already done and discarded), in the row's unit.
    pub run: fn(&Plan) -> Result<Vec<f64>, String>,
}

/// One row to measure.
pub struct RowSpec {
    /// Stable identifier (JSON key).
    pub id: &'static str,
    /// Which part of the table.
    pub section: Section,
    /// What is compared.
    pub factor: &'static str,
    /// Unit of both figures.
    pub unit: &'static str,
    /// Whether lower or higher is better.
    pub better: Better,
    /// Thread side.
    pub thread: Option<Probe>,
    /// Process side.
    pub process: Option<Probe>,
}

const fn probe(how: &'static str, run: fn(&Plan) -> Result<Vec<f64>, String>) -> Option<Probe> {
    Some(Probe { how, run })
}

/// Every measured row, in report order (the workload-fit summary rows are
/// derived from the speedup curves and appended after these).
pub fn specs() -> Vec<RowSpec> {
    use Better::{Higher, Lower};
    use Section::*;
    let row = |id, section, factor, unit, better, thread, process| RowSpec {
        id,
        section,
        factor,
        unit,
        better,
        thread,
        process,
    };
    vec![
        row(
            "creation.os_floor",
            Creation,
            "OS floor",
            "us",
            Lower,
            probe("std::thread::spawn + join", p::create_std_thread),
            probe("fork + _exit + waitid", p::create_fork),
        ),
        row(
            "creation.new_program",
            Creation,
            "new program",
            "us",
            Lower,
            probe("std::thread::spawn + join", p::create_std_thread),
            probe("posix_spawn /bin/true + wait", p::create_posix_spawn),
        ),
        row(
            "creation.tandem_spawn",
            Creation,
            "tandem unit, Spawn",
            "us",
            Lower,
            probe("tandem::thread::spawn + join", p::create_tandem_thread),
            probe("tandem process, StartMethod::Spawn", p::create_tandem_spawn),
        ),
        row(
            "creation.tandem_forkserver",
            Creation,
            "tandem unit, ForkServer",
            "us",
            Lower,
            probe("tandem::thread::spawn + join", p::create_tandem_thread),
            probe("tandem process, StartMethod::ForkServer", p::create_tandem_forkserver),
        ),
        row(
            "memory.uss",
            Memory,
            "USS (private memory)",
            "KiB",
            Lower,
            probe("idle std thread", p::mem_thread_uss),
            probe("idle forked child", p::mem_fork_uss),
        ),
        row(
            "memory.pss",
            Memory,
            "PSS (shared pages split)",
            "KiB",
            Lower,
            probe("idle std thread", p::mem_thread_pss),
            probe("idle forked child", p::mem_fork_pss),
        ),
        row(
            "memory.kernel",
            Memory,
            "kernel (stack + page tables)",
            "KiB",
            Lower,
            probe("idle std thread", p::mem_thread_kernel),
            probe("idle forked child", p::mem_fork_kernel),
        ),
        row(
            "memory.tandem_uss",
            Memory,
            "tandem unit USS",
            "KiB",
            Lower,
            probe("idle std thread (what a tandem thread unit runs on)", p::mem_thread_uss),
            probe("idle tandem process unit (Spawn)", p::mem_tandem_process_uss),
        ),
        row(
            "memory.tandem_pss",
            Memory,
            "tandem unit PSS",
            "KiB",
            Lower,
            probe("idle std thread (what a tandem thread unit runs on)", p::mem_thread_pss),
            probe("idle tandem process unit (Spawn)", p::mem_tandem_process_pss),
        ),
        row(
            "memory.tandem_kernel",
            Memory,
            "tandem unit kernel",
            "KiB",
            Lower,
            probe("idle std thread (what a tandem thread unit runs on)", p::mem_thread_kernel),
            probe("idle tandem process unit (Spawn)", p::mem_tandem_process_kernel),
        ),
        row(
            "latency.channel",
            Latency,
            "std mpsc channel",
            "us",
            Lower,
            probe("two std channels, echo thread", p::lat_std_channel),
            None,
        ),
        row(
            "latency.pipe",
            Latency,
            "pipe",
            "us",
            Lower,
            probe("1 byte over two pipes, echo thread", p::lat_pipe_thread),
            probe("1 byte over two pipes, echo process", p::lat_pipe_process),
        ),
        row(
            "latency.unix_socket",
            Latency,
            "Unix stream socket",
            "us",
            Lower,
            probe("1 byte, socketpair, echo thread", p::lat_unix_thread),
            probe("1 byte, socketpair, echo process", p::lat_unix_process),
        ),
        row(
            "latency.tcp",
            Latency,
            "TCP loopback (127.0.0.1)",
            "us",
            Lower,
            probe("1 byte, TCP_NODELAY, echo thread", p::lat_tcp_thread),
            probe("1 byte, TCP_NODELAY, echo process", p::lat_tcp_process),
        ),
        row(
            "latency.shm_futex",
            Latency,
            "shared memory + futex wake",
            "us",
            Lower,
            probe("atomic word + futex, thread", p::lat_shm_futex_thread),
            probe("memfd MAP_SHARED word + futex, process", p::lat_shm_futex_process),
        ),
        row(
            "latency.shm_spin",
            Latency,
            "shared memory, spin then futex",
            "us",
            Lower,
            probe("atomic word, spin 20k then futex, thread", p::lat_shm_spin_thread),
            probe("MAP_SHARED word, spin 20k then futex, process", p::lat_shm_spin_process),
        ),
        row(
            "latency.tandem_unit",
            Latency,
            "tandem unit: start, one task, join",
            "us",
            Lower,
            probe("tandem::thread::spawn(u64) + join", p::lat_tandem_thread),
            probe("tandem process unit (ForkServer) + join", p::lat_tandem_process),
        ),
        row(
            "latency.tandem_channel",
            Latency,
            "tandem ipc channel",
            "us",
            Lower,
            probe("tandem::ipc::channel pair, echo in a thread unit", p::lat_tandem_channel_thread),
            probe("tandem::ipc::channel pair, echo in a process unit", p::lat_tandem_channel_process),
        ),
        row(
            "latency.tandem_pool",
            Latency,
            "tandem Pool: submit + join one task",
            "us",
            Lower,
            probe("Pool, Mode::Thread, 2 workers", p::lat_tandem_pool_thread),
            probe("Pool, Mode::Process (ForkServer), 2 workers", p::lat_tandem_pool_process),
        ),
        row(
            "bandwidth.pipe",
            Bandwidth,
            "pipe",
            "GB/s",
            Higher,
            probe("1 MiB chunks to a reader thread", p::bw_pipe_thread),
            probe("1 MiB chunks to a reader process", p::bw_pipe_process),
        ),
        row(
            "bandwidth.unix_socket",
            Bandwidth,
            "Unix stream socket",
            "GB/s",
            Higher,
            probe("1 MiB chunks to a reader thread", p::bw_unix_thread),
            probe("1 MiB chunks to a reader process", p::bw_unix_process),
        ),
        row(
            "bandwidth.tcp",
            Bandwidth,
            "TCP loopback",
            "GB/s",
            Higher,
            probe("1 MiB chunks to a reader thread", p::bw_tcp_thread),
            probe("1 MiB chunks to a reader process", p::bw_tcp_process),
        ),
        row(
            "bandwidth.shm",
            Bandwidth,
            "shared memory (write; peer reads)",
            "GB/s",
            Higher,
            probe("1 MiB of shared words, reader thread", p::bw_shm_thread),
            probe("1 MiB of MAP_SHARED words, reader process", p::bw_shm_process),
        ),
        row(
            "context_switch.pipe",
            ContextSwitch,
            "pipe ping-pong, per switch",
            "us",
            Lower,
            probe("two threads on CPU 0", p::cs_pipe_thread),
            probe("two processes on CPU 0", p::cs_pipe_process),
        ),
        row(
            "context_switch.futex",
            ContextSwitch,
            "futex ping-pong, per switch",
            "us",
            Lower,
            probe("two threads on CPU 0", p::cs_futex_thread),
            probe("two processes on CPU 0", p::cs_futex_process),
        ),
        row(
            "crash.segfault",
            Crash,
            "one unit of N gets SIGSEGV",
            "alive",
            Higher,
            probe("N threads in one (sacrificial) process", p::crash_segv_threads),
            probe("N tandem process units", p::crash_segv_processes),
        ),
        row(
            "crash.panic",
            Crash,
            "one unit of N panics",
            "alive",
            Higher,
            probe("N tandem thread units", p::crash_panic_threads),
            probe("N tandem process units", p::crash_panic_processes),
        ),
    ]
}

/// Run one probe and summarize it; a failure is kept as the cell's error.
pub fn measure(probe: &Probe, unit: &str, plan: &Plan) -> Cell {
    match (probe.run)(plan) {
        Ok(samples) => Cell {
            how: probe.how.to_string(),
            figure: Figure::from_samples(unit, &samples),
            error: samples.is_empty().then(|| "no samples".to_string()),
        },
        Err(e) => Cell { how: probe.how.to_string(), figure: None, error: Some(e) },
    }
}
