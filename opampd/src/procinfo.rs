//! Process and machine facts read from /proc and the process limits (Linux),
//! for metrics and diagnostics; opampctl uses the same readers.

#[derive(Debug, Default, Clone, Copy)]
pub struct ProcSample {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub vsize_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
}

/// Reads this process's CPU time, memory and file descriptors.
pub fn sample() -> ProcSample {
    let mut sample = ProcSample::default();
    if let Some(stat) = Stat::read("self") {
        sample.cpu_seconds = stat.cpu_seconds();
        sample.vsize_bytes = stat.field(VSIZE).unwrap_or(0);
        sample.rss_bytes = stat.field(RSS_PAGES).unwrap_or(0) * page_size();
    }
    sample.open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.count() as u64)
        .unwrap_or(0);
    sample.max_fds = nofile_limit().map_or(0, |(soft, _)| soft);
    sample
}

/// A process's CPU time in seconds (utime + stime of /proc/PID/stat), or
/// `None` when there is no such process.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    Stat::read(&pid.to_string()).map(|stat| stat.cpu_seconds())
}

/// Clock ticks per second, the unit of /proc/PID/stat's times (100 if unknown).
#[allow(unsafe_code)]
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// This process's open-file limits (soft, hard), `None` if unreadable.
#[allow(unsafe_code)]
// rlim_t is not u64 on every target.
#[allow(clippy::unnecessary_cast)]
pub fn nofile_limit() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, exclusively borrowed rlimit for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    Some((limit.rlim_cur as u64, limit.rlim_max as u64))
}

/// Raises this process's open-file soft limit to its hard limit; returns the
/// soft limit now in force (1024 when it cannot be read).
#[allow(unsafe_code)]
pub fn raise_nofile() -> u64 {
    let Some((soft, hard)) = nofile_limit() else {
        return 1024;
    };
    if soft < hard {
        let raised = libc::rlimit {
            rlim_cur: hard as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: `raised` is a valid rlimit that outlives the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return hard;
        }
    }
    soft
}

/// Indexes of /proc/PID/stat's fields after the command name (field 3 is 0).
const UTIME: usize = 11;
const STIME: usize = 12;
const VSIZE: usize = 20;
const RSS_PAGES: usize = 21;

/// The fields of /proc/PID/stat after the parenthesised command name.
struct Stat(Vec<String>);

impl Stat {
    /// `pid` is a process id or `self`.
    fn read(pid: &str) -> Option<Stat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = text.get(text.rfind(')')? + 2..)?;
        Some(Stat(rest.split_whitespace().map(str::to_owned).collect()))
    }

    fn field(&self, index: usize) -> Option<u64> {
        self.0.get(index)?.parse().ok()
    }

    fn cpu_seconds(&self) -> f64 {
        let ticks = self.field(UTIME).unwrap_or(0) + self.field(STIME).unwrap_or(0);
        ticks as f64 / clock_ticks()
    }
}

#[allow(unsafe_code)]
fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 {
        page as u64
    } else {
        4096
    }
}

/// Memory this process may use: the cgroup v2 limit if one is set, else MemTotal.
pub fn machine_memory_bytes() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    match cgroup {
        Some(limit) if limit > 0 && (total == 0 || limit < total) => limit,
        _ => total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_measured_and_a_missing_one_is_none() {
        assert!(cpu_seconds(std::process::id()).is_some());
        assert!(cpu_seconds(u32::MAX).is_none());
        assert!(clock_ticks() > 0.0);
        let sample = sample();
        assert!(sample.rss_bytes > 0 && sample.open_fds > 0, "{sample:?}");
        assert!(
            sample.cpu_seconds >= 0.0 && sample.max_fds >= 1,
            "{sample:?}"
        );
        let (soft, hard) = nofile_limit().unwrap();
        assert!(soft >= 1 && soft <= hard);
        assert!(raise_nofile() >= soft);
    }
}
