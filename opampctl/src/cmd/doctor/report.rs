//! A check's verdict and remedy, the whole report (the JSON of `-o json`),
//! its table, and the exit status it gives.

use super::Diagnosis;
use crate::context::Settings;
use crate::error::{CtlError, Exit, Result};
use crate::output;
use crate::procfs;
use comfy_table::Cell;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
    /// Not applicable with the options given.
    Skip,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
            Verdict::Skip => "skip",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
}

/// A passed check.
pub(super) fn ok(name: &str, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        verdict: Verdict::Ok,
        detail: detail.into(),
        remedy: None,
    }
}

/// A check that does not apply with the options given.
pub(super) fn skip(name: &str, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        verdict: Verdict::Skip,
        detail: detail.into(),
        remedy: None,
    }
}

pub(super) fn fail(name: &str, detail: impl Into<String>, remedy: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        verdict: Verdict::Fail,
        detail: detail.into(),
        remedy: Some(remedy.into()),
    }
}

pub(super) fn warn(name: &str, detail: impl Into<String>, remedy: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        verdict: Verdict::Warn,
        detail: detail.into(),
        remedy: Some(remedy.into()),
    }
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub ok: usize,
    pub warn: usize,
    pub fail: usize,
    pub skip: usize,
}

/// The whole diagnosis; the JSON of `-o json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub command: String,
    pub opampctl_version: String,
    pub server: String,
    pub generated_at: String,
    pub host: HostInfo,
    pub server_reachable: bool,
    pub checks: Vec<Check>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub memory_samples: Vec<MemorySample>,
    pub summary: Summary,
}

#[derive(Debug, Serialize)]
pub struct HostInfo {
    pub os: String,
    pub arch: String,
    pub kernel: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemorySample {
    pub at: String,
    pub rss_bytes: u64,
    pub agents_live: u64,
    pub connections: u64,
    pub subsystems: std::collections::BTreeMap<String, u64>,
}

/// Shows the report (unless quiet) and turns it into the exit status:
/// 3 when the server is unreachable, 1 when a check failed.
pub(super) fn finish(diagnosis: Diagnosis<'_>, samples: Vec<MemorySample>) -> Result<()> {
    let settings = diagnosis.settings;
    let report = build(diagnosis, samples);
    if !settings.quiet {
        output::show(settings, &report, |wide| render(settings, &report, wide))?;
    }
    exit_status(settings, &report)
}

fn build(diagnosis: Diagnosis<'_>, samples: Vec<MemorySample>) -> Report {
    let count = |verdict: Verdict| {
        diagnosis
            .checks
            .iter()
            .filter(|check| check.verdict == verdict)
            .count()
    };
    Report {
        command: diagnosis.procedure.name().into(),
        opampctl_version: env!("CARGO_PKG_VERSION").into(),
        server: diagnosis.client.base.clone(),
        generated_at: chrono::Utc::now().to_rfc3339(),
        host: HostInfo {
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            kernel: procfs::kernel_release(),
        },
        server_reachable: diagnosis.reachable != Some(false),
        summary: Summary {
            ok: count(Verdict::Ok),
            warn: count(Verdict::Warn),
            fail: count(Verdict::Fail),
            skip: count(Verdict::Skip),
        },
        checks: diagnosis.checks,
        memory_samples: samples,
    }
}

/// The text form: memory samples (if any), the checks (skipped ones only
/// when `wide`), what to do, and the counts.
fn render(settings: &Settings, report: &Report, wide: bool) -> String {
    let mut text = String::new();
    if !report.memory_samples.is_empty() {
        text.push_str(&memory_table(settings, &report.memory_samples));
        text.push_str("\n\n");
    }
    let mut table = output::table(settings, &["CHECK", "VERDICT", "DETAIL"]);
    for check in &report.checks {
        if check.verdict == Verdict::Skip && !wide {
            continue;
        }
        table.add_row(vec![
            Cell::new(&check.name),
            output::status_cell(settings, check.verdict.word()),
            Cell::new(&check.detail),
        ]);
    }
    text.push_str(&output::render(&table));
    let remedies: Vec<String> = report
        .checks
        .iter()
        .filter_map(|check| {
            check
                .remedy
                .as_ref()
                .map(|remedy| format!("  {}: {remedy}", check.name))
        })
        .collect();
    if !remedies.is_empty() {
        text.push_str("\n\nWhat to do:\n");
        text.push_str(&remedies.join("\n"));
    }
    text.push_str(&format!(
        "\n\n{} ok, {} warn, {} fail{}",
        report.summary.ok,
        report.summary.warn,
        report.summary.fail,
        if report.summary.skip > 0 && !wide {
            format!(" ({} skipped: -o wide shows them)", report.summary.skip)
        } else {
            String::new()
        }
    ));
    text
}

fn memory_table(settings: &Settings, samples: &[MemorySample]) -> String {
    let mut table = output::table(
        settings,
        &["TIME", "RSS", "AGENTS", "CONNECTIONS", "LARGEST"],
    );
    for sample in samples {
        let mut top: Vec<(&String, &u64)> = sample.subsystems.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1));
        table.add_row(vec![
            Cell::new(&sample.at),
            Cell::new(output::bytes(sample.rss_bytes)),
            Cell::new(sample.agents_live),
            Cell::new(sample.connections),
            Cell::new(
                top.first()
                    .map(|(name, bytes)| format!("{name} {}", output::bytes(**bytes)))
                    .unwrap_or_default(),
            ),
        ]);
    }
    output::render(&table)
}

fn exit_status(settings: &Settings, report: &Report) -> Result<()> {
    if !report.server_reachable {
        return Err(if settings.quiet {
            CtlError::unreachable(format!("{} is unreachable", report.server))
        } else {
            CtlError::silent(Exit::Unreachable)
        });
    }
    if report.summary.fail > 0 {
        return Err(if settings.quiet {
            let failed: Vec<&str> = report
                .checks
                .iter()
                .filter(|check| check.verdict == Verdict::Fail)
                .map(|check| check.name.as_str())
                .collect();
            CtlError::failed(format!("failed checks: {}", failed.join(", ")))
        } else {
            CtlError::silent(Exit::Failed)
        });
    }
    Ok(())
}
