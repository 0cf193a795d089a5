//! Prometheus metrics, rendered in the text exposition format.
//!
//! Cardinality is bounded by construction: HTTP series are keyed by the route
//! template (never a raw path), database series by a fixed operation name, and
//! nothing is keyed by agent.

use dashmap::DashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

const PREFIX: &str = "opamp_platform_";

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const SIZE_BUCKETS: &[f64] = &[
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 16777216.0,
];

/// A histogram with fixed buckets; lock-free.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    sum_bits: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(self.counts.iter()) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = f64::from_bits(self.sum_bits.load(Ordering::Relaxed));
        if labels.is_empty() {
            let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
        } else {
            let _ = writeln!(
                out,
                "{name}_sum{{{labels}}} {sum}\n{name}_count{{{labels}}} {count}"
            );
        }
    }
}

#[derive(Hash, PartialEq, Eq, Clone)]
struct HttpKey {
    method: &'static str,
    path: &'static str,
}

struct HttpSeries {
    by_status: DashMap<u16, AtomicU64>,
    duration: Histogram,
    request_size: Histogram,
    response_size: Histogram,
}

struct DbSeries {
    count: AtomicU64,
    slow: AtomicU64,
    duration: Histogram,
}

/// Gauges that other parts set; read at scrape time.
#[derive(Default)]
pub struct PoolGauges {
    pub open: AtomicI64,
    pub idle: AtomicI64,
    pub max: AtomicI64,
}

#[derive(Default)]
pub struct AgentGauges {
    pub total: AtomicI64,
    pub connected: AtomicI64,
    pub stale: AtomicI64,
    pub disconnected: AtomicI64,
}

pub struct Metrics {
    http: DashMap<HttpKey, HttpSeries>,
    db: DashMap<&'static str, DbSeries>,
    pub agents: AgentGauges,
    pub read_pool: PoolGauges,
    pub write_pool: PoolGauges,
    pub pool_waits: AtomicU64,
    pub agent_connects: [AtomicU64; 2],
    pub agent_disconnects: [AtomicU64; 2],
    pub opamp_messages: [AtomicU64; 2],
    pub ws_connections: AtomicI64,
    pub outgoing_dropped: AtomicU64,
    /// Packages whose latest rollout is running, paused, completed.
    package_rollouts: [AtomicI64; 3],
    slow_query: Duration,
    start_time: f64,
    replica: crate::replica::Replica,
}

/// Index into the per-transport arrays.
pub fn transport_index(websocket: bool) -> usize {
    usize::from(!websocket)
}

const TRANSPORTS: [&str; 2] = ["websocket", "http"];

impl Metrics {
    pub fn new(slow_query: Duration, replica: crate::replica::Replica) -> Self {
        let start_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        Metrics {
            http: DashMap::new(),
            db: DashMap::new(),
            agents: AgentGauges::default(),
            read_pool: PoolGauges::default(),
            write_pool: PoolGauges::default(),
            pool_waits: AtomicU64::new(0),
            agent_connects: Default::default(),
            agent_disconnects: Default::default(),
            opamp_messages: Default::default(),
            ws_connections: AtomicI64::new(0),
            outgoing_dropped: AtomicU64::new(0),
            package_rollouts: Default::default(),
            slow_query,
            start_time,
            replica,
        }
    }

    /// How many packages' latest rollout is in each of
    /// [`crate::packages::rollout::STATES`].
    pub fn set_package_rollouts(&self, counts: [i64; 3]) {
        for (gauge, n) in self.package_rollouts.iter().zip(counts) {
            gauge.store(n, Ordering::Relaxed);
        }
    }

    fn render_package_rollouts(&self, out: &mut String) {
        header(
            out,
            "package_rollouts",
            "gauge",
            "Packages by the state of their latest rollout",
        );
        for (state, gauge) in crate::packages::rollout::STATES
            .iter()
            .zip(&self.package_rollouts)
        {
            let n = gauge.load(Ordering::Relaxed);
            let _ = writeln!(out, "{PREFIX}package_rollouts{{state=\"{state}\"}} {n}");
        }
    }

    /// This replica's identity (the `replica_info` series).
    pub fn replica(&self) -> &crate::replica::Replica {
        &self.replica
    }

    /// Records one HTTP request. `path` must be a route template.
    pub fn http_request(
        &self,
        method: &'static str,
        path: &'static str,
        status: u16,
        secs: f64,
        req_bytes: u64,
        resp_bytes: u64,
    ) {
        let key = HttpKey { method, path };
        let series = self.http.entry(key).or_insert_with(|| HttpSeries {
            by_status: DashMap::new(),
            duration: Histogram::new(LATENCY_BUCKETS),
            request_size: Histogram::new(SIZE_BUCKETS),
            response_size: Histogram::new(SIZE_BUCKETS),
        });
        series
            .by_status
            .entry(status)
            .or_insert_with(|| AtomicU64::new(0))
            .fetch_add(1, Ordering::Relaxed);
        series.duration.observe(secs);
        series.request_size.observe(req_bytes as f64);
        series.response_size.observe(resp_bytes as f64);
    }

    /// Records one database operation.
    pub fn db_query(&self, operation: &'static str, elapsed: Duration) {
        let series = self.db.entry(operation).or_insert_with(|| DbSeries {
            count: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            duration: Histogram::new(LATENCY_BUCKETS),
        });
        series.count.fetch_add(1, Ordering::Relaxed);
        if elapsed >= self.slow_query {
            series.slow.fetch_add(1, Ordering::Relaxed);
        }
        series.duration.observe(elapsed.as_secs_f64());
    }

    /// The slowest-looking operations: (operation, count, slow count, mean seconds).
    pub fn db_summary(&self) -> Vec<(String, u64, u64, f64)> {
        let mut rows: Vec<_> = self
            .db
            .iter()
            .map(|e| {
                let s = e.value();
                let n = s.duration.count.load(Ordering::Relaxed);
                let sum = f64::from_bits(s.duration.sum_bits.load(Ordering::Relaxed));
                (
                    e.key().to_string(),
                    s.count.load(Ordering::Relaxed),
                    s.slow.load(Ordering::Relaxed),
                    if n > 0 { sum / n as f64 } else { 0.0 },
                )
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    /// Renders every series in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.render_http(&mut out);
        self.render_agents(&mut out);
        self.render_db(&mut out);
        self.render_package_rollouts(&mut out);
        render_process(&mut out, self.start_time);
        out
    }

    fn render_http(&self, out: &mut String) {
        let mut keys: Vec<HttpKey> = self.http.iter().map(|e| e.key().clone()).collect();
        keys.sort_by(|a, b| (a.path, a.method).cmp(&(b.path, b.method)));
        header(
            out,
            "http_requests_total",
            "counter",
            "HTTP requests by method, route template and status",
        );
        for k in &keys {
            if let Some(s) = self.http.get(k) {
                let mut statuses: Vec<(u16, u64)> = s
                    .by_status
                    .iter()
                    .map(|e| (*e.key(), e.value().load(Ordering::Relaxed)))
                    .collect();
                statuses.sort();
                for (status, n) in statuses {
                    let _ = writeln!(out, "{PREFIX}http_requests_total{{method=\"{}\",path=\"{}\",status=\"{status}\"}} {n}", k.method, k.path);
                }
            }
        }
        for (name, help, pick) in [
            (
                "http_request_duration_seconds",
                "HTTP request duration by method and route template",
                0,
            ),
            (
                "http_request_size_bytes",
                "HTTP request body size by method and route template",
                1,
            ),
            (
                "http_response_size_bytes",
                "HTTP response body size by method and route template",
                2,
            ),
        ] {
            header(out, name, "histogram", help);
            for k in &keys {
                if let Some(s) = self.http.get(k) {
                    let h = match pick {
                        0 => &s.duration,
                        1 => &s.request_size,
                        _ => &s.response_size,
                    };
                    h.render(
                        out,
                        &format!("{PREFIX}{name}"),
                        &format!("method=\"{}\",path=\"{}\"", k.method, k.path),
                    );
                }
            }
        }
    }

    fn render_agents(&self, out: &mut String) {
        let a = &self.agents;
        for (name, help, v) in [
            (
                "agents_known",
                "Agents known to the server, connected or not (a gauge: `_total` is for counters)",
                &a.total,
            ),
            (
                "agents_connected",
                "Agents connected and heartbeating",
                &a.connected,
            ),
            (
                "agents_stale",
                "Agents connected but silent past opamp.stale_after_seconds",
                &a.stale,
            ),
            (
                "agents_disconnected",
                "Agents known but not connected",
                &a.disconnected,
            ),
        ] {
            header(out, name, "gauge", help);
            let _ = writeln!(out, "{PREFIX}{name} {}", v.load(Ordering::Relaxed));
        }
        for (name, help, arr) in [
            (
                "agent_connect_total",
                "Agent connections (WebSocket) and first polls after absence (HTTP)",
                &self.agent_connects,
            ),
            (
                "agent_disconnect_total",
                "Agent disconnections",
                &self.agent_disconnects,
            ),
            (
                "opamp_messages_total",
                "AgentToServer messages received",
                &self.opamp_messages,
            ),
        ] {
            header(out, name, "counter", help);
            for (i, t) in TRANSPORTS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{PREFIX}{name}{{transport=\"{t}\"}} {}",
                    arr[i].load(Ordering::Relaxed)
                );
            }
        }
        header(
            out,
            "websocket_connections",
            "gauge",
            "Open OpAMP WebSocket connections",
        );
        let _ = writeln!(
            out,
            "{PREFIX}websocket_connections {}",
            self.ws_connections.load(Ordering::Relaxed)
        );
        header(
            out,
            "outgoing_messages_dropped_total",
            "counter",
            "ServerToAgent messages not sent because they exceeded opamp.max_send_bytes",
        );
        let _ = writeln!(
            out,
            "{PREFIX}outgoing_messages_dropped_total {}",
            self.outgoing_dropped.load(Ordering::Relaxed)
        );
    }

    fn render_db(&self, out: &mut String) {
        for (name, help, pick) in [
            (
                "db_connections_open",
                "Open database connections by pool",
                0,
            ),
            (
                "db_connections_idle",
                "Idle database connections by pool",
                1,
            ),
            (
                "db_connections_max",
                "Maximum database connections by pool",
                2,
            ),
        ] {
            header(out, name, "gauge", help);
            for (pool, g) in [("read", &self.read_pool), ("write", &self.write_pool)] {
                let v = match pick {
                    0 => &g.open,
                    1 => &g.idle,
                    _ => &g.max,
                };
                let _ = writeln!(
                    out,
                    "{PREFIX}{name}{{pool=\"{pool}\"}} {}",
                    v.load(Ordering::Relaxed)
                );
            }
        }
        header(
            out,
            "db_pool_waits_total",
            "counter",
            "Times a reader waited for a free pooled connection",
        );
        let _ = writeln!(
            out,
            "{PREFIX}db_pool_waits_total {}",
            self.pool_waits.load(Ordering::Relaxed)
        );
        let mut ops: Vec<&'static str> = self.db.iter().map(|e| *e.key()).collect();
        ops.sort_unstable();
        header(
            out,
            "db_queries_total",
            "counter",
            "Database operations by operation",
        );
        for op in &ops {
            if let Some(s) = self.db.get(op) {
                let _ = writeln!(
                    out,
                    "{PREFIX}db_queries_total{{operation=\"{op}\"}} {}",
                    s.count.load(Ordering::Relaxed)
                );
            }
        }
        header(
            out,
            "db_slow_queries_total",
            "counter",
            "Database operations slower than database.slow_query_ms",
        );
        for op in &ops {
            if let Some(s) = self.db.get(op) {
                let _ = writeln!(
                    out,
                    "{PREFIX}db_slow_queries_total{{operation=\"{op}\"}} {}",
                    s.slow.load(Ordering::Relaxed)
                );
            }
        }
        header(
            out,
            "db_query_duration_seconds",
            "histogram",
            "Database operation duration by operation",
        );
        for op in &ops {
            if let Some(s) = self.db.get(op) {
                s.duration.render(
                    out,
                    &format!("{PREFIX}db_query_duration_seconds"),
                    &format!("operation=\"{op}\""),
                );
            }
        }
        header(
            out,
            "machine_memory_bytes",
            "gauge",
            "Memory available to this process: the cgroup limit, else the machine's total",
        );
        let _ = writeln!(
            out,
            "{PREFIX}machine_memory_bytes {}",
            crate::procinfo::machine_memory_bytes()
        );
        header(out, "build_info", "gauge", "Build information");
        let _ = writeln!(
            out,
            "{PREFIX}build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        header(
            out,
            "replica_info",
            "gauge",
            "This replica's id (cluster.replica_id, else the host name) and database backend",
        );
        let _ = writeln!(
            out,
            "{PREFIX}replica_info{{replica=\"{}\",backend=\"{}\"}} 1",
            self.replica.id, self.replica.backend
        );
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(
        out,
        "# HELP {PREFIX}{name} {help}\n# TYPE {PREFIX}{name} {kind}"
    );
}

fn render_process(out: &mut String, start_time: f64) {
    let p = crate::procinfo::sample();
    let rows: [(&str, &str, &str, f64); 6] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds",
            p.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes",
            p.rss_bytes as f64,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes",
            p.vsize_bytes as f64,
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors",
            p.open_fds as f64,
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors",
            p.max_fds as f64,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds",
            start_time,
        ),
    ];
    for (name, kind, help, v) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
}
