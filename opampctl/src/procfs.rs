//! What opampctl reads from /proc and the process limits (Linux): whether a
//! process exists, another process's CPU time, resident memory and open
//! files, this
//! process's open-file limit and user id, the kernel release, the ephemeral
//! port range, and the listening TCP sockets with their owners. The CPU time
//! and the open-file limit are opampd's readers (`opampd::procinfo`). Every
//! reader returns `None` (or a stated default) when the entry is missing or
//! unreadable; none of them fails.

use std::path::Path;

/// A process's resident memory in KiB (VmRSS of /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

/// A process's CPU time and this process's open-file limit: opampd's
/// readers, shared.
pub use opampd::procinfo::{cpu_seconds, raise_nofile};

/// How many files (sockets included) a process has open: the entries of
/// /proc/PID/fd.
pub fn open_files(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|entries| entries.count())
}

/// Whether a process with this id exists (a zombie counts).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Ephemeral ports per source address, from ip_local_port_range.
pub fn ephemeral_ports() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let bounds: Vec<usize> = text
        .split_whitespace()
        .filter_map(|value| value.parse().ok())
        .collect();
    (bounds.len() == 2 && bounds[1] >= bounds[0]).then(|| bounds[1] - bounds[0] + 1)
}

/// The real user id of this process (`u32::MAX` if /proc/self/status says none).
pub fn current_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|value| value.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

/// The running kernel's release (empty if unknown).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| release.trim().to_string())
        .unwrap_or_default()
}

/// A listening TCP socket and, if visible, its process.
#[derive(Debug, Clone)]
pub struct Listener {
    pub local: String,
    pub uid: u32,
    pub inode: u64,
    /// Process id and command name.
    pub owner: Option<(u32, String)>,
}

/// Listening sockets on `port`, from /proc/net/tcp{,6}, with their processes
/// (found through /proc/*/fd; other users' processes need root).
pub fn listening_sockets(port: u16) -> Vec<Listener> {
    let mut listeners = listening_on(port);
    if !listeners.is_empty() {
        find_owners(&mut listeners);
    }
    listeners
}

/// The sockets of /proc/net/tcp{,6} in state LISTEN (0A) on `port`.
fn listening_on(port: u16) -> Vec<Listener> {
    let mut listeners = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 || fields[3] != "0A" {
                continue;
            }
            let Some((address, hex_port)) = fields[1].split_once(':') else {
                continue;
            };
            if u16::from_str_radix(hex_port, 16).ok() != Some(port) {
                continue;
            }
            listeners.push(Listener {
                local: format!("{}:{port}", hex_addr(address, v6)),
                uid: fields[7].parse().unwrap_or(0),
                inode: fields[9].parse().unwrap_or(0),
                owner: None,
            });
        }
    }
    listeners
}

/// Fills in the process holding each socket, by its inode in /proc/*/fd.
fn find_owners(listeners: &mut [Listener]) {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return;
    };
    for process in processes.filter_map(|entry| entry.ok()) {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        for fd in fds.filter_map(|entry| entry.ok()) {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|rest| rest.parse::<u64>().ok())
            else {
                continue;
            };
            for listener in listeners
                .iter_mut()
                .filter(|listener| listener.inode == inode && listener.owner.is_none())
            {
                let comm = std::fs::read_to_string(process.path().join("comm"))
                    .map(|comm| comm.trim().to_string())
                    .unwrap_or_else(|_| "?".into());
                listener.owner = Some((pid, comm));
            }
        }
    }
}

/// An address of /proc/net/tcp{,6} (hex, in host byte order) as text.
fn hex_addr(hex: &str, v6: bool) -> String {
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect();
    if !v6 && bytes.len() == 4 {
        return std::net::Ipv4Addr::new(bytes[3], bytes[2], bytes[1], bytes[0]).to_string();
    }
    if v6 && bytes.len() == 16 {
        // Four 32-bit words, each in host (little-endian) order.
        let mut ordered = [0u8; 16];
        for word in 0..4 {
            for i in 0..4 {
                ordered[word * 4 + i] = bytes[word * 4 + 3 - i];
            }
        }
        return format!("[{}]", std::net::Ipv6Addr::from(ordered));
    }
    hex.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_measurable() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(process_exists(me));
        assert!(!process_exists(u32::MAX));
        assert!(cpu_seconds(me).is_some());
        assert!(rss_kib(u32::MAX).is_none());
        assert!(cpu_seconds(u32::MAX).is_none());
    }

    #[test]
    fn proc_net_addresses() {
        assert_eq!(hex_addr("0100007F", false), "127.0.0.1");
        assert_eq!(hex_addr("00000000000000000000000001000000", true), "[::1]");
    }

    #[test]
    fn finds_its_own_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let found = listening_sockets(port);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].owner.as_ref().map(|owner| owner.0),
            Some(std::process::id())
        );
    }

    #[test]
    fn ranges_and_the_user_are_read() {
        assert!(ephemeral_ports().is_some_and(|ports| ports > 0));
        assert_ne!(current_uid(), u32::MAX);
    }
}
