//! Whether a process recorded earlier still runs, from /proc/PID/stat.
//!
//! A process is named by its pid *and* its start time (clock ticks after
//! boot), so a pid reused by a younger process does not pass for the one
//! recorded. Used by the [`Barrier`](super::Barrier) to notice a dead
//! party; no descriptor is held per process, so a table in shared memory
//! can name processes that other units started.

/// The start time to record when /proc could not be read: "unknown", so a
/// later check looks only at whether the pid lives.
pub const UNKNOWN_START: u64 = 1;

/// A process's state letter and start time, from /proc/PID/stat. `None` if
/// there is no such process.
fn stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted after its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?; // field 22 overall
    Some((state, start))
}

/// The start time of process `pid`, to record beside it.
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

/// Whether the process recorded as (`pid`, `start`) still runs: it exists,
/// is not a zombie or dead, and (if its start time was known) is the same
/// process, not a younger one with its pid.
pub fn still_runs(pid: u32, start: u64) -> bool {
    match stat(pid) {
        None => false,
        Some((state, now)) => !(matches!(state, 'Z' | 'X' | 'x') || (start != UNKNOWN_START && now != start)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_runs_and_a_wrong_start_time_does_not_pass() {
        let me = std::process::id();
        let start = start_time(me).expect("/proc/self/stat");
        assert!(still_runs(me, start));
        assert!(still_runs(me, UNKNOWN_START));
        assert!(!still_runs(me, start + 12345));
        assert!(!still_runs(u32::MAX, UNKNOWN_START));
    }
}
