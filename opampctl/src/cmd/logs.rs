//! `opampctl logs [-n 100] [-f] [--level L] [--grep TEXT] [--via …]`.

use super::supervisor;
use crate::cli::{Format, LogsArgs};
use crate::client::{enc, Client};
use crate::context::Settings;
use crate::error::{CtlError, Result};
use crate::output;
use opamp_proto::api::LogEntry;
use reqwest::Method;
use std::io::BufRead;

fn rank(level: &str) -> u8 {
    match level.to_ascii_lowercase().as_str() {
        "error" | "err" | "fatal" => 0,
        "warn" | "warning" => 1,
        "info" => 2,
        "debug" => 3,
        _ => 4,
    }
}

/// Whether a supervisor log line passes --level/--grep (non-JSON lines pass the level test).
fn keep_line(line: &str, level: Option<&str>, grep: Option<&str>) -> bool {
    if let Some(g) = grep {
        if !line.contains(g) {
            return false;
        }
    }
    if let Some(l) = level {
        let json = line.find('{').map(|i| &line[i..]);
        if let Some(v) = json.and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok()) {
            if let Some(lv) = v["level"].as_str() {
                return rank(lv) <= rank(l);
            }
        }
    }
    true
}

/// One log line as text.
pub fn text(e: &LogEntry, color: bool) -> String {
    let level = format!("{:>5}", e.level.to_ascii_uppercase());
    let level = if color {
        let code = match rank(&e.level) {
            0 => "31",
            1 => "33",
            2 => "32",
            _ => "2",
        };
        format!("\x1b[{code}m{level}\x1b[0m")
    } else {
        level
    };
    let mut line = format!("{} {level} {}", e.ts, e.message);
    for (k, v) in &e.fields {
        match v {
            serde_json::Value::String(t) => line.push_str(&format!(" {k}={t}")),
            other => line.push_str(&format!(" {k}={other}")),
        }
    }
    line
}

pub async fn run(settings: &Settings, client: &Client, args: &LogsArgs) -> Result<()> {
    if let Some(via) = args.via {
        let argv = supervisor::log_command(
            via,
            &args.supervisor,
            args.lines,
            args.follow,
            args.level.as_deref(),
        );
        let filter_level = match via {
            crate::cli::LogSource::Journald => None,
            _ => args.level.as_deref(),
        };
        if args.grep.is_none() && filter_level.is_none() {
            let st = supervisor::run_inherit(&argv)?;
            return if st.success() {
                Ok(())
            } else {
                Err(CtlError::failed(format!(
                    "`{}` failed ({st})",
                    supervisor::show(&argv)
                )))
            };
        }
        let mut child = supervisor::spawn_piped(&argv)?;
        let stdout = child.stdout.take().expect("piped stdout");
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.map_err(|e| CtlError::failed(format!("reading the log: {e}")))?;
            if keep_line(&line, filter_level, args.grep.as_deref()) && !settings.quiet {
                output::out(&line);
            }
        }
        let st = child.wait().map_err(|e| CtlError::failed(e.to_string()))?;
        return if st.success() {
            Ok(())
        } else {
            Err(CtlError::failed(format!(
                "`{}` failed ({st})",
                supervisor::show(&argv)
            )))
        };
    }
    let mut path = format!("/api/v1/admin/logs?n={}", args.lines);
    if let Some(l) = &args.level {
        path.push_str(&format!("&level={l}"));
    }
    if let Some(g) = &args.grep {
        path.push_str(&format!("&grep={}", enc(g)));
    }
    if args.follow {
        path.push_str("&follow=true");
    }
    let mut resp = client
        .send(client.stream_request(Method::GET, &path))
        .await?;
    let mut pending: Vec<u8> = Vec::new();
    let json = matches!(settings.format, Format::Json | Format::Yaml);
    loop {
        let chunk = tokio::select! {
            r = resp.chunk() => r.map_err(|e| CtlError::failed(format!("the log stream from {} broke off: {e}", client.base)))?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(chunk) = chunk else { break };
        pending.extend_from_slice(&chunk);
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim();
            if line.is_empty() || settings.quiet {
                continue;
            }
            if json {
                output::out(line);
                continue;
            }
            match serde_json::from_str::<LogEntry>(line) {
                Ok(e) => output::out(&text(&e, settings.color)),
                Err(_) => output::out(line),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supervisor_lines_filter_by_grep_and_json_level() {
        let l = r#"opamp-server-1  | {"level":"DEBUG","message":"x agent"}"#;
        assert!(keep_line(l, None, Some("agent")));
        assert!(!keep_line(l, Some("info"), None));
        assert!(keep_line("plain text", Some("error"), None));
        assert!(!keep_line("plain text", None, Some("nope")));
    }
}
