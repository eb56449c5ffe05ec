//! What machine the figures come from.

use serde::{Deserialize, Serialize};

/// The measured machine, as the header of every report names it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model name from /proc/cpuinfo.
    pub cpu: String,
    /// CPUs this process may use.
    pub cores: usize,
    /// Kernel release.
    pub kernel: String,
    /// Total memory, GiB.
    pub memory_gib: f64,
    /// The CPU reports a hypervisor (cpuinfo flag `hypervisor`).
    pub hypervisor_flag: bool,
    /// /sys/class/dmi/id/product_name, if readable.
    pub product: Option<String>,
    /// `systemd-detect-virt` output, if the tool exists.
    pub virt: Option<String>,
    /// One-minute load average when the run started: other work running
    /// during the run makes every figure noisier.
    pub load_average: f64,
}

impl Machine {
    /// Read it from /proc and /sys.
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
        };
        let cpu = field("model name").unwrap_or_else(|| "unknown CPU".into());
        let hypervisor_flag = field("flags").is_some_and(|f| f.split_whitespace().any(|x| x == "hypervisor"));
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| meminfo_kib(&m, "MemTotal"))
            .map_or(0.0, |k| k / (1024.0 * 1024.0));
        let virt = std::process::Command::new("systemd-detect-virt")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty());
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into()),
            memory_gib,
            hypervisor_flag,
            product: read_trimmed("/sys/class/dmi/id/product_name"),
            virt,
            load_average: read_trimmed("/proc/loadavg")
                .and_then(|l| l.split_whitespace().next()?.parse().ok())
                .unwrap_or(0.0),
        }
    }

    /// A warning when other work kept the CPUs busy (load above a third of
    /// the cores), else None.
    pub fn busy_warning(&self) -> Option<String> {
        (self.load_average > self.cores as f64 / 3.0).then(|| {
            format!(
                "warning: the machine was busy (load average {:.2} on {} cores): other programs compete for the CPUs, so figures are noisier, CPU scaling most of all",
                self.load_average, self.cores
            )
        })
    }

    /// One line: "Intel Xeon ..., 2 cores, Linux 6.1, 24 GiB, virtual machine (kvm, Standard PC)".
    pub fn describe(&self) -> String {
        let virtual_or_not = match (&self.virt, self.hypervisor_flag) {
            // systemd-detect-virt names the innermost layer (a container
            // says "docker"); the CPU flag tells whether a hypervisor is below.
            (Some(v), true) if v != "none" => format!("virtual machine (hypervisor flag set), {v}"),
            (Some(v), false) if v != "none" => format!("virtualized: {v}"),
            (_, true) => "virtual machine (hypervisor flag set)".to_string(),
            (Some(_), false) => "bare metal".to_string(),
            (None, false) => "no hypervisor flag".to_string(),
        };
        let product = self.product.as_deref().map(|p| format!(", {p}")).unwrap_or_default();
        format!(
            "{}, {} cores, Linux {}, {:.0} GiB, {virtual_or_not}{product}",
            self.cpu, self.cores, self.kernel, self.memory_gib
        )
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// A "Name:   1234 kB" field of /proc/meminfo or smaps_rollup, in KiB.
pub(crate) fn meminfo_kib(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}
