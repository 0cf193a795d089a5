//! A bounded in-memory ring of recent log lines, fed by a tracing layer, that
//! backs the log stream endpoint (`opampctl logs -f` works on any deployment).

use serde::Serialize;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub ts: String,
    pub level: &'static str,
    pub target: String,
    pub message: String,
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl LogLine {
    /// One line of text, as `opampctl logs` prints it.
    pub fn text(&self) -> String {
        let mut s = format!("{} {:>5} {}", self.ts, self.level, self.message);
        for (k, v) in &self.fields {
            let _ = match v {
                serde_json::Value::String(t) => write!(s, " {k}={t}"),
                other => write!(s, " {k}={other}"),
            };
        }
        s
    }
}

#[derive(Clone)]
pub struct LogRing {
    inner: Arc<Inner>,
}

struct Inner {
    lines: Mutex<VecDeque<Arc<LogLine>>>,
    cap: usize,
    tx: broadcast::Sender<Arc<LogLine>>,
}

impl LogRing {
    pub fn new(cap: usize) -> LogRing {
        let (tx, _) = broadcast::channel(1024);
        LogRing {
            inner: Arc::new(Inner {
                lines: Mutex::new(VecDeque::with_capacity(cap.min(1024))),
                cap: cap.max(1),
                tx,
            }),
        }
    }

    pub fn push(&self, line: LogLine) {
        let line = Arc::new(line);
        {
            let mut lines = self.inner.lines.lock().unwrap_or_else(|e| e.into_inner());
            if lines.len() >= self.inner.cap {
                lines.pop_front();
            }
            lines.push_back(line.clone());
        }
        let _ = self.inner.tx.send(line);
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<Arc<LogLine>> {
        let lines = self.inner.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LogLine>> {
        self.inner.tx.subscribe()
    }

    pub fn layer(&self) -> RingLayer {
        RingLayer { ring: self.clone() }
    }
}

pub struct RingLayer {
    ring: LogRing,
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields.insert(field.name().to_string(), value.into());
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.insert(field.name().to_string(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.insert(field.name().to_string(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.insert(field.name().to_string(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let v = format!("{value:?}");
        if field.name() == "message" {
            self.message = v;
        } else {
            self.fields.insert(field.name().to_string(), v.into());
        }
    }
}

pub fn level_name(l: &Level) -> &'static str {
    match *l {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

impl<S: Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        self.ring.push(LogLine {
            ts: crate::store::rfc3339(crate::store::now_ms()),
            level: level_name(event.metadata().level()),
            target: event.metadata().target().to_string(),
            message: f.message,
            fields: f.fields,
        });
    }
}
