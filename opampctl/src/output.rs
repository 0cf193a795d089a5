//! Printing: data to stdout (tables, JSON, YAML), everything else to stderr;
//! colour only where wanted; a closed pipe ends opampctl quietly.

use crate::cli::Format;
use crate::context::Settings;
use crate::error::{CtlError, Result};
use comfy_table::{Cell, Color, ContentArrangement, Table};
use serde::Serialize;
use std::io::Write;

/// The reader of our output went away (`opampctl … | head`): stop, quietly.
pub fn broken_pipe() -> ! {
    std::process::exit(0)
}

/// Writes text to stdout (a newline is added if missing).
pub fn out(text: &str) {
    let mut o = std::io::stdout().lock();
    let r = if text.ends_with('\n') || text.is_empty() {
        o.write_all(text.as_bytes())
    } else {
        o.write_all(text.as_bytes())
            .and_then(|_| o.write_all(b"\n"))
    };
    if let Err(e) = r.and_then(|_| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            broken_pipe();
        }
    }
}

/// Raw bytes to stdout, no newline added.
pub fn out_raw(bytes: &[u8]) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(bytes).and_then(|_| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            broken_pipe();
        }
    }
}

/// A status message on stderr, unless -q.
pub fn info(s: &Settings, msg: impl AsRef<str>) {
    if !s.quiet {
        eprintln!("{}", msg.as_ref());
    }
}

/// A warning on stderr (also with -q: it is not a success message).
pub fn warn(msg: impl AsRef<str>) {
    eprintln!("warning: {}", msg.as_ref());
}

/// Serialises `value` as JSON or YAML per the settings.
pub fn machine<T: Serialize + ?Sized>(s: &Settings, value: &T) -> Result<()> {
    if s.quiet {
        // -q: the exit status is the answer, whatever the format.
        return Ok(());
    }
    match s.format {
        Format::Yaml => {
            let y = serde_yaml::to_string(value)
                .map_err(|e| CtlError::failed(format!("cannot print YAML: {e}")))?;
            out(&y);
        }
        _ => {
            let j = serde_json::to_string_pretty(value)
                .map_err(|e| CtlError::failed(format!("cannot print JSON: {e}")))?;
            out(&j);
        }
    }
    Ok(())
}

/// Prints `value` as JSON/YAML, or as the table `table` builds (`true` = wide).
pub fn show<T: Serialize + ?Sized>(
    s: &Settings,
    value: &T,
    table: impl FnOnce(bool) -> String,
) -> Result<()> {
    if s.quiet {
        return Ok(());
    }
    match s.format {
        Format::Json | Format::Yaml => machine(s, value),
        Format::Table => {
            out(&table(false));
            Ok(())
        }
        Format::Wide => {
            out(&table(true));
            Ok(())
        }
    }
}

/// A borderless table with a header, like kubectl's.
pub fn table(s: &Settings, header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_content_arrangement(ContentArrangement::Disabled);
    if !s.color {
        t.force_no_tty();
    } else {
        t.enforce_styling();
    }
    t.set_header(header.iter().map(Cell::new));
    t
}

/// Renders a table without trailing blanks on each line.
pub fn render(t: &Table) -> String {
    t.lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A cell coloured by a status word (green ok, yellow warn, red bad).
pub fn status_cell(s: &Settings, word: &str) -> Cell {
    let c = Cell::new(word);
    if !s.color {
        return c;
    }
    match word {
        "ok" | "connected" | "applied" | "completed" | "ready" | "healthy" | "running" => {
            c.fg(Color::Green)
        }
        "warn" | "stale" | "pending" | "applying" | "paused" | "degraded" | "starting" => {
            c.fg(Color::Yellow)
        }
        "fail" | "failed" | "disconnected" | "down" | "unhealthy" | "draining" => c.fg(Color::Red),
        _ => c,
    }
}

/// Bytes in a human unit.
pub fn bytes(n: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// "3m ago" style age of an RFC 3339 time.
pub fn age(rfc3339: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(rfc3339) else {
        return rfc3339.to_string();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds();
    if secs < 0 {
        return "now".into();
    }
    let s = secs as u64;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(2048), "2.0 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
    }
}
