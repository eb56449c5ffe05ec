//! What one task cost inside its worker process: CPU time and peak
//! resident memory, measured by the worker around the task
//! ([`Meter`]) and sent after the Done frame's header (see
//! `task::done_parts`) when the pool asks for reports
//! (`PoolBuilder::reports`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use rustix::time::{ClockId, clock_gettime};

/// A task's cost, as its worker measured it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Usage {
    /// User + system CPU time of the worker process during the task
    /// (`clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`, every thread).
    pub cpu_nanos: u64,
    /// The worker's peak resident set while the task ran, in bytes
    /// (`VmHWM` of `/proc/self/status`, reset to the current resident set
    /// when the task started); 0 if the kernel would not say.
    pub peak_bytes: u64,
}

/// Bytes of a [`Usage`] on the wire.
pub(crate) const USAGE_LEN: usize = 16;

impl Usage {
    pub(crate) fn to_bytes(self) -> [u8; USAGE_LEN] {
        let mut b = [0u8; USAGE_LEN];
        b[..8].copy_from_slice(&self.cpu_nanos.to_le_bytes());
        b[8..].copy_from_slice(&self.peak_bytes.to_le_bytes());
        b
    }

    pub(crate) fn from_bytes(b: &[u8]) -> Option<Usage> {
        Some(Usage {
            cpu_nanos: u64::from_le_bytes(b.get(..8)?.try_into().ok()?),
            peak_bytes: u64::from_le_bytes(b.get(8..USAGE_LEN)?.try_into().ok()?),
        })
    }
}

/// The worker's measuring instruments, opened once: `/proc/self/clear_refs`
/// (writing `5` resets the peak resident set, `VmHWM`, to the current one:
/// proc(5)) and `/proc/self/status` (where `VmHWM` is read).
pub(crate) struct Meter {
    clear_refs: Option<File>,
    status: Option<File>,
    buf: Vec<u8>,
}

/// A task being measured: what the clock said when it started.
pub(crate) struct Started {
    cpu: u64,
}

impl Meter {
    pub(crate) fn open() -> Meter {
        Meter {
            clear_refs: File::options().write(true).open("/proc/self/clear_refs").ok(),
            status: File::open("/proc/self/status").ok(),
            buf: Vec::with_capacity(2048),
        }
    }

    /// A task starts now: reset the peak and read the CPU clock.
    pub(crate) fn start(&mut self) -> Started {
        if let Some(f) = &mut self.clear_refs {
            // Without it (an old kernel, a sandbox) the peak is the
            // worker's since it started: still at least the task's.
            if f.write_all(b"5").is_err() {
                self.clear_refs = None;
            }
        }
        Started { cpu: cpu_nanos() }
    }

    /// The task that `started` has ended: what it cost.
    pub(crate) fn finish(&mut self, started: Started) -> Usage {
        let cpu_nanos = cpu_nanos().saturating_sub(started.cpu);
        Usage { cpu_nanos, peak_bytes: self.peak_bytes().unwrap_or(0) }
    }

    fn peak_bytes(&mut self) -> Option<u64> {
        let status = self.status.as_mut()?;
        status.seek(SeekFrom::Start(0)).ok()?;
        self.buf.clear();
        status.read_to_end(&mut self.buf).ok()?;
        vm_hwm(&self.buf)
    }
}

/// `VmHWM` (in kB in the file) of a `/proc/PID/status` text, in bytes.
pub(crate) fn vm_hwm(status: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(status).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line["VmHWM:".len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

fn cpu_nanos() -> u64 {
    let t = clock_gettime(ClockId::ProcessCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_round_trips_and_vm_hwm_parses() {
        let u = Usage { cpu_nanos: 123_456_789, peak_bytes: 100 << 20 };
        assert_eq!(Usage::from_bytes(&u.to_bytes()), Some(u));
        assert_eq!(Usage::from_bytes(&[0; 15]), None);
        assert_eq!(vm_hwm(b"Name:\tx\nVmPeak:\t  9 kB\nVmHWM:\t    2048 kB\nVmRSS: 1 kB\n"), Some(2 << 20));
        assert_eq!(vm_hwm(b"Name:\tx\n"), None);
        let mut meter = Meter::open();
        let started = meter.start();
        let touched = vec![1u8; 8 << 20];
        std::hint::black_box(&touched);
        let usage = meter.finish(started);
        assert!(usage.peak_bytes >= 8 << 20, "{usage:?}");
    }
}
