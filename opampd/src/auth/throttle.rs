//! Login throttling and the summary of failed logins for the audit log.
//!
//! Failures are counted per (username, client address), per client address
//! (whatever the usernames) and over the whole server. Past a free allowance
//! a key must wait before its next attempt, twice as long after each further
//! failure (1 s, 2 s, 4 s … at most [`MAX_DELAY`]); an attempt that comes
//! early is refused without any password work. The delay applies to the
//! address that failed, so an attacker slows down only itself: a real user
//! logging in from another address is never locked out. When the whole
//! server sees more than [`GLOBAL_FREE`] failures in a minute, every address
//! that has failed recently loses its allowance (many addresses, one attack).
//!
//! Failed attempts are anonymous: they are summarised in one audit row per
//! client address and window (a count, the usernames tried, how many were
//! throttled) instead of one row each.

use dashmap::DashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures a (username, address) pair may have before it is slowed down.
pub const USER_FREE: u32 = 10;
/// Failures an address may have, whatever the usernames, before it is slowed down.
pub const ADDRESS_FREE: u32 = 20;
/// Failures per minute over the whole server before every failing address is slowed down.
pub const GLOBAL_FREE: u32 = 100;
/// Longest wait between two attempts of one key.
pub const MAX_DELAY: Duration = Duration::from_secs(300);
/// A key's failures are forgotten after this long without a failure.
pub const FORGET_AFTER: Duration = Duration::from_secs(900);
/// One audit row summarises an address's failed logins over this long.
pub const AUDIT_WINDOW: Duration = Duration::from_secs(600);
/// Throttled attempts alone update the audit row at most this often.
const AUDIT_REFRESH: Duration = Duration::from_secs(5);
/// Usernames kept in one audit summary.
const AUDIT_USERNAMES: usize = 10;
/// Entries kept per map before old ones are swept.
const SWEEP_AT: usize = 50_000;

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

impl Failures {
    /// How long the key must still wait before another attempt.
    fn wait(&self, free: u32) -> Option<Duration> {
        if self.last.elapsed() >= FORGET_AFTER || self.count < free {
            return None;
        }
        let steps = (self.count - free).min(16);
        let delay = Duration::from_secs(1u64 << steps).min(MAX_DELAY);
        delay.checked_sub(self.last.elapsed())
    }
}

/// The client address as a throttling key: IPv6 clients by their /64, since
/// one host usually holds the whole prefix.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// A summary row of one address's failed logins, to be written to the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureSummary {
    /// The client address (without port).
    pub remote_addr: String,
    /// Start of the window (ms since the epoch): the row's time and identity.
    pub window_at: i64,
    pub failures: u64,
    pub throttled: u64,
    pub usernames: Vec<String>,
}

struct AuditWindow {
    started: Instant,
    summary: FailureSummary,
    written: Option<Instant>,
}

pub struct LoginThrottle {
    by_user: DashMap<(String, IpAddr), Failures>,
    by_address: DashMap<IpAddr, Failures>,
    global: Mutex<(Instant, u32)>,
    audit: DashMap<IpAddr, AuditWindow>,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        LoginThrottle {
            by_user: DashMap::new(),
            by_address: DashMap::new(),
            global: Mutex::new((Instant::now(), 0)),
            audit: DashMap::new(),
        }
    }
}

impl LoginThrottle {
    /// Seconds to wait (for Retry-After) if `username` from `ip` must not try yet.
    pub fn check(&self, username: &str, ip: IpAddr) -> Option<u64> {
        let ip = address_key(ip);
        let global_over = self.global_failures() > GLOBAL_FREE;
        let address_free = if global_over { 1 } else { ADDRESS_FREE };
        let user_free = if global_over { 1 } else { USER_FREE };
        let by_address = self.by_address.get(&ip).and_then(|f| f.wait(address_free));
        let by_user = self
            .by_user
            .get(&(username.to_lowercase(), ip))
            .and_then(|f| f.wait(user_free));
        by_address
            .max(by_user)
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
    }

    /// Counts a failed attempt.
    pub fn failed(&self, username: &str, ip: IpAddr) {
        let ip = address_key(ip);
        let now = Instant::now();
        sweep(&self.by_user);
        sweep(&self.by_address);
        bump(
            self.by_user
                .entry((username.to_lowercase(), ip))
                .or_insert(fresh(now)),
            now,
        );
        bump(self.by_address.entry(ip).or_insert(fresh(now)), now);
        let mut global = self.global.lock().unwrap_or_else(|e| e.into_inner());
        if global.0.elapsed() >= Duration::from_secs(60) {
            *global = (now, 0);
        }
        global.1 = global.1.saturating_add(1);
    }

    /// A successful login clears that user's failures from that address
    /// (not the address's: other usernames tried from it still count).
    pub fn succeeded(&self, username: &str, ip: IpAddr) {
        self.by_user
            .remove(&(username.to_lowercase(), address_key(ip)));
    }

    fn global_failures(&self) -> u32 {
        let global = self.global.lock().unwrap_or_else(|e| e.into_inner());
        if global.0.elapsed() >= Duration::from_secs(60) {
            0
        } else {
            global.1
        }
    }

    /// Adds a failed (`throttled == false`) or refused-early attempt to the
    /// address's audit summary; returns the summary when the row should be
    /// written now (every failure; throttled attempts every few seconds).
    pub fn audit(
        &self,
        username: &str,
        ip: IpAddr,
        throttled: bool,
        now_ms: i64,
    ) -> Option<FailureSummary> {
        let key = address_key(ip);
        if self.audit.len() > SWEEP_AT {
            self.audit.retain(|_, w| w.started.elapsed() < AUDIT_WINDOW);
        }
        let mut entry = self
            .audit
            .entry(key)
            .or_insert_with(|| new_window(key, now_ms));
        if entry.started.elapsed() >= AUDIT_WINDOW {
            *entry = new_window(key, now_ms);
        }
        let w = &mut *entry;
        if throttled {
            w.summary.throttled += 1;
        } else {
            w.summary.failures += 1;
        }
        if w.summary.usernames.len() < AUDIT_USERNAMES
            && !w.summary.usernames.iter().any(|u| u == username)
        {
            w.summary.usernames.push(username.to_string());
        }
        let due = !throttled || w.written.is_none_or(|t| t.elapsed() >= AUDIT_REFRESH);
        if due {
            w.written = Some(Instant::now());
            Some(w.summary.clone())
        } else {
            None
        }
    }
}

fn new_window(key: IpAddr, now_ms: i64) -> AuditWindow {
    AuditWindow {
        started: Instant::now(),
        summary: FailureSummary {
            remote_addr: key.to_string(),
            window_at: now_ms,
            failures: 0,
            throttled: 0,
            usernames: Vec::new(),
        },
        written: None,
    }
}

fn fresh(now: Instant) -> Failures {
    Failures {
        count: 0,
        last: now,
    }
}

fn bump(
    mut f: dashmap::mapref::one::RefMut<'_, impl std::hash::Hash + Eq, Failures>,
    now: Instant,
) {
    if f.last.elapsed() >= FORGET_AFTER {
        f.count = 0;
    }
    f.count = f.count.saturating_add(1);
    f.last = now;
}

fn sweep<K: std::hash::Hash + Eq>(map: &DashMap<K, Failures>) {
    if map.len() > SWEEP_AT {
        map.retain(|_, f| f.last.elapsed() < FORGET_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_user_is_slowed_down_only_from_the_failing_address() {
        let t = LoginThrottle::default();
        for _ in 0..USER_FREE {
            assert_eq!(t.check("alice", ip("10.0.0.1")), None);
            t.failed("alice", ip("10.0.0.1"));
        }
        assert_eq!(t.check("Alice", ip("10.0.0.1")), Some(1));
        assert_eq!(t.check("alice", ip("10.0.0.2")), None, "another address");
        assert_eq!(t.check("bob", ip("10.0.0.1")), None, "another user");
        t.failed("alice", ip("10.0.0.1"));
        assert_eq!(t.check("alice", ip("10.0.0.1")), Some(2), "doubles");
    }

    #[test]
    fn varying_the_username_does_not_escape_the_address_limit() {
        let t = LoginThrottle::default();
        for i in 0..ADDRESS_FREE {
            t.failed(&format!("user{i}"), ip("2001:db8::1"));
        }
        assert!(t.check("someone-new", ip("2001:db8::1")).is_some());
        assert!(
            t.check("someone-new", ip("2001:db8::ffff")).is_some(),
            "the same /64"
        );
        assert_eq!(t.check("someone-new", ip("2001:db8:1::1")), None);
    }

    #[test]
    fn a_global_flood_removes_the_allowance_of_failing_addresses_only() {
        let t = LoginThrottle::default();
        for i in 0..=GLOBAL_FREE {
            t.failed("x", IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8]));
        }
        assert!(t.check("x", ip("10.1.0.0")).is_some());
        assert_eq!(t.check("x", ip("192.0.2.1")), None, "a fresh address");
    }

    #[test]
    fn audit_rows_summarise_an_address() {
        let t = LoginThrottle::default();
        let first = t.audit("a", ip("10.0.0.1"), false, 1000).unwrap();
        assert_eq!((first.failures, first.window_at), (1, 1000));
        let second = t.audit("b", ip("10.0.0.1"), false, 2000).unwrap();
        assert_eq!(
            (second.failures, second.window_at, second.usernames.len()),
            (2, 1000, 2)
        );
        assert!(
            t.audit("b", ip("10.0.0.1"), true, 3000).is_none(),
            "throttled: refreshed later"
        );
        let other = t.audit("a", ip("10.0.0.2"), true, 4000).unwrap();
        assert_eq!((other.failures, other.throttled), (0, 1));
    }
}
