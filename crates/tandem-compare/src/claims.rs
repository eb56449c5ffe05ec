//! The classic claims, judged by this machine's figures.

use serde::{Deserialize, Serialize};

use crate::stats::significant;
use crate::{Figure, Report};

/// What the figures say about a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The figures agree with the claim.
    Holds,
    /// The figures disagree.
    DoesNotHold,
    /// It holds in Python (the GIL) but not for Rust threads.
    PythonOnly,
    /// A figure needed was not measured.
    Unmeasured,
}

impl Verdict {
    /// Short label for reports.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Holds => "HOLDS",
            Verdict::DoesNotHold => "DOES NOT HOLD",
            Verdict::PythonOnly => "PYTHON ONLY",
            Verdict::Unmeasured => "NOT MEASURED",
        }
    }
}

/// One classic claim with this machine's verdict and the numbers behind it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claim {
    /// The claim as textbooks state it.
    pub claim: String,
    /// What the figures say.
    pub verdict: Verdict,
    /// By how much, in numbers.
    pub detail: String,
}

fn fig<'a>(r: &'a Report, id: &str, process: bool) -> Option<&'a Figure> {
    let row = r.row(id)?;
    let cell = if process { row.process.as_ref() } else { row.thread.as_ref() };
    cell?.figure.as_ref()
}

fn show(f: &Figure) -> String {
    f.show()
}

fn x(a: f64) -> String {
    format!("{}x", significant(a))
}

/// Judge every claim.
pub fn judge(r: &Report) -> Vec<Claim> {
    let mut out = Vec::new();
    let mut push = |claim: &str, judged: Option<(Verdict, String)>| {
        let (verdict, detail) = judged.unwrap_or((Verdict::Unmeasured, "a figure it needs failed".into()));
        out.push(Claim { claim: claim.into(), verdict, detail });
    };

    push(
        "Threads are faster to create than processes",
        (|| {
            let (t, p) = (fig(r, "creation.os_floor", false)?, fig(r, "creation.os_floor", true)?);
            let ratio = p.median / t.median;
            let spawn = fig(r, "creation.new_program", true)?;
            let tandem_fs = fig(r, "creation.tandem_forkserver", true)?;
            let tandem_t = fig(r, "creation.tandem_forkserver", false)?;
            let verdict = if ratio > 1.2 { Verdict::Holds } else { Verdict::DoesNotHold };
            Some((
                verdict,
                format!(
                    "a bare fork + wait takes {} against {} for a thread ({} as long); starting a new program (posix_spawn) takes {} ({}); a tandem process unit from the fork server {} against {} for a tandem thread unit ({})",
                    show(p),
                    show(t),
                    x(ratio),
                    show(spawn),
                    x(spawn.median / t.median),
                    show(tandem_fs),
                    show(tandem_t),
                    x(tandem_fs.median / tandem_t.median)
                ),
            ))
        })(),
    );

    push(
        "Processes use more memory than threads",
        (|| {
            let tu = fig(r, "memory.uss", false)?.median + fig(r, "memory.kernel", false)?.median;
            let pu = fig(r, "memory.uss", true)?.median + fig(r, "memory.kernel", true)?.median;
            let tandem_p =
                fig(r, "memory.tandem_uss", true)?.median + fig(r, "memory.tandem_kernel", true)?.median;
            let verdict = if pu > tu * 1.2 { Verdict::Holds } else { Verdict::DoesNotHold };
            Some((
                verdict,
                format!(
                    "an idle forked child costs {} KiB (private + kernel) against {} KiB for an idle thread ({}); a tandem process unit, a whole re-executed program, costs {} KiB ({}). RSS would overstate a forked child: its pages are shared with the parent until written",
                    significant(pu),
                    significant(tu),
                    x(pu / tu),
                    significant(tandem_p),
                    x(tandem_p / tu)
                ),
            ))
        })(),
    );

    push(
        "Shared memory beats IPC (pipes, sockets)",
        (|| {
            let pipe = fig(r, "latency.pipe", true)?;
            let shm = fig(r, "latency.shm_futex", true)?;
            let spin = fig(r, "latency.shm_spin", true)?;
            let bw_pipe = fig(r, "bandwidth.pipe", true)?;
            let bw_shm = fig(r, "bandwidth.shm", true)?;
            let pipe_threads = fig(r, "latency.pipe", false)?;
            let faster = pipe.median / spin.median.min(shm.median);
            let verdict = if faster > 1.2 || bw_shm.median > bw_pipe.median * 1.2 {
                Verdict::Holds
            } else {
                Verdict::DoesNotHold
            };
            Some((
                verdict,
                format!(
                    "between processes a round trip through shared memory takes {} when the waiting side polls briefly, against {} over a pipe ({} faster); with futex sleeps it takes {} ({} the pipe's time): waking a sleeping unit, not copying bytes, is the cost. Bandwidth {} against {} ({}). Two threads talking over a pipe pay the same {}: the cost is the mechanism, not threads vs processes",
                    show(spin),
                    show(pipe),
                    x(pipe.median / spin.median),
                    show(shm),
                    x(shm.median / pipe.median),
                    show(bw_shm),
                    show(bw_pipe),
                    x(bw_shm.median / bw_pipe.median),
                    show(pipe_threads)
                ),
            ))
        })(),
    );

    push(
        "A crashing process harms no one else; a crashing thread takes its whole process down",
        (|| {
            let n = r.plan.crash_units as f64;
            let t = fig(r, "crash.segfault", false)?;
            let p = fig(r, "crash.segfault", true)?;
            let panic_t = fig(r, "crash.panic", false)?;
            let verdict =
                if t.median == 0.0 && p.median == n - 1.0 { Verdict::Holds } else { Verdict::DoesNotHold };
            Some((
                verdict,
                format!(
                    "after one real SIGSEGV, {:.0} of {n} threads were left (the process died) and {:.0} of {n} processes. A Rust panic is not a crash: it unwinds one thread, and {:.0} of {n} threads lived on",
                    t.median, p.median, panic_t.median
                ),
            ))
        })(),
    );

    push(
        "Use processes for CPU-bound work (threads do not scale)",
        (|| {
            let t = fig(r, "scaling.cpu", false)?;
            let p = fig(r, "scaling.cpu", true)?;
            let cores = r.machine.cores as f64;
            if cores >= 2.0 && t.median.max(p.median) < 1.0 + 0.3 * (cores - 1.0) {
                return Some((
                    Verdict::Unmeasured,
                    format!(
                        "neither scaled (threads {}, processes {} with one worker per core): other programs held the CPUs during the run; run again on a quiet machine",
                        show(t),
                        show(p)
                    ),
                ));
            }
            let verdict = if t.median >= 0.85 * p.median { Verdict::PythonOnly } else { Verdict::Holds };
            Some((
                verdict,
                format!(
                    "with one worker per core, threads reach {} and processes {} of one thread's speed. Rust threads run in parallel; the claim comes from Python, whose GIL lets one thread run Python code at a time",
                    show(t),
                    show(p)
                ),
            ))
        })(),
    );

    push(
        "Use threads for I/O-bound work",
        (|| {
            let t = fig(r, "scaling.io", false)?;
            let p = fig(r, "scaling.io", true)?;
            let cores = r.machine.cores as f64;
            let verdict = if t.median > cores { Verdict::Holds } else { Verdict::DoesNotHold };
            Some((
                verdict,
                format!(
                    "with twice as many workers as cores, waiting work speeds up {} on threads and {} on processes: both pass the core count because a blocked unit needs no CPU; threads do it with less memory and faster starts",
                    show(t),
                    show(p)
                ),
            ))
        })(),
    );

    push(
        "Switching between threads is cheaper than between processes",
        (|| {
            let t = fig(r, "context_switch.futex", false)?;
            let p = fig(r, "context_switch.futex", true)?;
            let ratio = p.median / t.median;
            let verdict = if ratio > 1.1 { Verdict::Holds } else { Verdict::DoesNotHold };
            Some((
                verdict,
                format!(
                    "on one CPU a switch costs {} between threads and {} between processes ({}){}",
                    show(t),
                    show(p),
                    x(ratio),
                    if verdict == Verdict::Holds {
                        ": switching address spaces costs extra"
                    } else {
                        ": switching address spaces adds little here"
                    }
                ),
            ))
        })(),
    );

    out
}
