//! Process and machine facts read from /proc (Linux), for metrics and diagnostics.

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
    let mut s = ProcSample::default();
    let ticks = clock_ticks();
    let page = page_size();
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the parenthesised command name; utime is field 14.
        if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            s.cpu_seconds = (num(11) + num(12)) as f64 / ticks;
            s.vsize_bytes = num(20);
            s.rss_bytes = num(21) * page;
        }
    }
    s.open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    s.max_fds = max_fds();
    s
}

fn max_fds() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY-free: getrlimit only writes into the struct we pass.
    if rlimit(&mut lim) {
        lim.rlim_cur
    } else {
        0
    }
}

#[allow(unsafe_code)]
fn rlimit(lim: &mut libc::rlimit) -> bool {
    // SAFETY: `lim` is a valid, exclusively borrowed rlimit for the call.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, lim) == 0 }
}

#[allow(unsafe_code)]
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

#[allow(unsafe_code)]
fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
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
