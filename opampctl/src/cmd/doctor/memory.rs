//! Memory: the server's memory report, and its trend over several samples
//! (`troubleshoot memory`).

use super::report::{self, ok, warn, Check, MemorySample};
use super::target::Target;
use super::{Diagnosis, Procedure};
use crate::cli::{DoctorArgs, MemoryArgs};
use crate::client::Client;
use crate::context::Settings;
use crate::error::{CtlError, Result};
use crate::output;
use opamp_proto::api::MemoryReport;
use std::time::{Duration, Instant};

/// `troubleshoot memory`: the server check, `--samples` memory reports
/// spread over `--duration`, their trend, and the last report.
pub(super) async fn trend(settings: &Settings, client: &Client, args: &MemoryArgs) -> Result<()> {
    if args.samples < 2 {
        return Err(CtlError::usage(
            "--samples must be at least 2 to show a trend",
        ));
    }
    let doctor_args = DoctorArgs::default();
    let target = Target::new(settings, client, &doctor_args)?;
    let mut diagnosis = Diagnosis::new(&target, &doctor_args, Procedure::Memory);
    diagnosis.check_server().await;
    if diagnosis.server_down() {
        return report::finish(diagnosis, Vec::new());
    }
    let started = Instant::now();
    let samples = sample(settings, client, args.samples, args.duration).await?;
    diagnosis.push(trend_verdict(&samples, started.elapsed()));
    diagnosis.check_memory().await;
    report::finish(diagnosis, samples)
}

impl Diagnosis<'_> {
    /// `memory`: RSS, peak, agents, connections and the largest subsystems.
    pub(super) async fn check_memory(&mut self) {
        let check = match self
            .client
            .get::<MemoryReport>("/api/v1/admin/memory")
            .await
        {
            Ok(memory) => ok(
                "memory",
                format!(
                    "RSS {} (peak {}), {} agents, {} connections; largest: {}",
                    output::bytes(memory.rss_bytes),
                    output::bytes(memory.allocator.get("VmHWM").copied().unwrap_or(0)),
                    memory.agents_live,
                    memory.connections,
                    top_subsystems(&memory)
                ),
            ),
            Err(e) => warn(
                "memory",
                format!("cannot read the memory report: {}", e.message),
                "use an admin token",
            ),
        };
        self.push(check);
    }
}

/// `count` memory reports, evenly spread over `duration`.
async fn sample(
    settings: &Settings,
    client: &Client,
    count: u32,
    duration: Duration,
) -> Result<Vec<MemorySample>> {
    let gap = duration / (count - 1);
    let bar = settings.progress().then(|| {
        let bar = indicatif::ProgressBar::new(count as u64);
        bar.set_message("sampling memory");
        bar
    });
    let start = Instant::now();
    let mut samples: Vec<MemorySample> = Vec::new();
    for i in 0..count {
        if i > 0 {
            let due = start + gap * i;
            tokio::time::sleep(due.saturating_duration_since(Instant::now())).await;
        }
        let memory: MemoryReport = client.get("/api/v1/admin/memory").await?;
        samples.push(MemorySample {
            at: chrono::Local::now().format("%H:%M:%S").to_string(),
            rss_bytes: memory.rss_bytes,
            agents_live: memory.agents_live,
            connections: memory.connections,
            subsystems: memory.subsystems,
        });
        if let Some(bar) = &bar {
            bar.inc(1);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(samples)
}

/// `memory-trend`: a warning when RSS grew by more than 16 MiB and 10%
/// without more agents, or when the memory per agent doubled.
fn trend_verdict(samples: &[MemorySample], elapsed: Duration) -> Check {
    let first = &samples[0];
    let last = &samples[samples.len() - 1];
    let growth = last.rss_bytes as i64 - first.rss_bytes as i64;
    let minutes = elapsed.as_secs_f64().max(1.0) / 60.0;
    let per_agent_before = first.rss_bytes / first.agents_live.max(1);
    let per_agent_after = last.rss_bytes / last.agents_live.max(1);
    let detail = format!(
        "RSS {} -> {} ({}{} in {:.1} min, {:.1} MiB/min); agents {} -> {}",
        output::bytes(first.rss_bytes),
        output::bytes(last.rss_bytes),
        if growth >= 0 { "+" } else { "-" },
        output::bytes(growth.unsigned_abs()),
        minutes,
        growth as f64 / 1048576.0 / minutes,
        first.agents_live,
        last.agents_live
    );
    let grew = growth > (16 << 20) && growth as f64 > first.rss_bytes as f64 * 0.10;
    let agents_grew = last.agents_live > first.agents_live;
    if grew && !agents_grew {
        warn(
            "memory-trend",
            detail,
            "memory grows without more agents: sample again over a longer --duration; if it keeps growing, attach `opampctl troubleshoot memory -o json` to a bug report and restart with `opampctl restart`",
        )
    } else if grew && per_agent_after > per_agent_before * 2 {
        warn(
            "memory-trend",
            detail,
            "memory per agent doubled: check the log ring (log.ring_lines) and agent attribute sizes",
        )
    } else {
        ok("memory-trend", detail)
    }
}

/// The three largest subsystems with their sizes, largest first.
fn top_subsystems(memory: &MemoryReport) -> String {
    let mut subsystems: Vec<(&String, &u64)> = memory.subsystems.iter().collect();
    subsystems.sort_by(|a, b| b.1.cmp(a.1));
    subsystems
        .iter()
        .take(3)
        .map(|(name, bytes)| format!("{name} {}", output::bytes(**bytes)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_of(rss_mib: u64, agents: u64) -> MemorySample {
        MemorySample {
            at: String::new(),
            rss_bytes: rss_mib << 20,
            agents_live: agents,
            connections: agents,
            subsystems: Default::default(),
        }
    }

    fn check_trend(first: (u64, u64), last: (u64, u64), expected: super::super::Verdict) {
        let samples = [sample_of(first.0, first.1), sample_of(last.0, last.1)];
        let check = trend_verdict(&samples, Duration::from_secs(60));
        assert_eq!(check.verdict, expected, "{first:?} -> {last:?}: {check:?}");
    }

    #[test]
    fn memory_trends() {
        use super::super::Verdict;
        check_trend((100, 1000), (101, 1000), Verdict::Ok);
        check_trend((100, 1000), (200, 1000), Verdict::Warn);
        check_trend((100, 1000), (200, 2000), Verdict::Ok);
        check_trend((100, 1000), (300, 1001), Verdict::Warn);
    }
}
