//! `opampctl packages rollout start|status [--watch]|pause|resume`: staged
//! package rollouts, worded and exiting as `opampctl rollout` does.

use crate::cli::PackagesRolloutCmd;
use crate::client::{enc, Client};
use crate::cmd::staged::{
    self, allowance_text, batches_text, count, timeout_seconds, timeout_text, Staged,
};
use crate::context::Settings;
use crate::error::{CtlError, Result};
use crate::output;
use comfy_table::Cell;
use opamp_proto::api::{PackageRolloutPlan, PackageRolloutRequest, PackageRolloutStatus};
use reqwest::Method;

pub async fn run(settings: &Settings, client: &Client, cmd: PackagesRolloutCmd) -> Result<()> {
    match cmd {
        PackagesRolloutCmd::Start {
            name,
            version,
            selector,
            batch_size,
            max_failures,
            batch_timeout,
            dry_run,
        } => {
            if batch_size == Some(0) {
                return Err(CtlError::usage("--batch-size must be at least 1"));
            }
            let req = PackageRolloutRequest {
                version,
                selector,
                batch_size,
                max_failures,
                batch_timeout: batch_timeout.map(timeout_seconds).transpose()?,
                dry_run,
            };
            if dry_run {
                let (_, plan): (_, PackageRolloutPlan) = client
                    .send_json(Method::POST, &path(&name, "")?, &req)
                    .await?;
                return show_plan(settings, &plan);
            }
            let (_, st): (_, PackageRolloutStatus) = client
                .send_json(Method::POST, &path(&name, "")?, &req)
                .await?;
            if !settings.human() {
                return output::machine(settings, &st);
            }
            let batches = batches_text(st.batch_size, st.batches);
            output::info(
                settings,
                format!(
                    "rollout of {} {} started: {} {batches}, {}, {}; follow it with `opampctl packages rollout status {} --watch`",
                    st.name,
                    st.version,
                    count(st.total - st.skipped, "agent"),
                    allowance_text(st.max_failures),
                    timeout_text(st.batch_timeout),
                    st.name
                ),
            );
            if st.skipped > 0 {
                output::info(
                    settings,
                    format!(
                        "{} skipped: no AcceptsPackages, or no file for their platform (`opampctl packages rollout status {}` says which)",
                        count(st.skipped, "agent"),
                        st.name
                    ),
                );
            }
            Ok(())
        }
        PackagesRolloutCmd::Status {
            name,
            watch,
            interval,
        } => {
            staged::status::<PackageRolloutStatus>(
                settings,
                client,
                &path(&name, "")?,
                watch,
                interval,
            )
            .await
        }
        PackagesRolloutCmd::Pause { name } => {
            staged::change::<PackageRolloutStatus>(settings, client, &path(&name, "/pause")?, None)
                .await
        }
        PackagesRolloutCmd::Resume { name, max_failures } => {
            let path = path(&name, "/resume")?;
            staged::change::<PackageRolloutStatus>(settings, client, &path, max_failures).await
        }
    }
}

fn path(name: &str, tail: &str) -> Result<String> {
    if name.trim().is_empty() {
        return Err(CtlError::usage("the package name is empty"));
    }
    Ok(format!("/api/v1/packages/{}/rollout{tail}", enc(name)))
}

/// A dry run: every matching agent and the file it would get.
fn show_plan(settings: &Settings, plan: &PackageRolloutPlan) -> Result<()> {
    output::show(settings, plan, |wide| {
        let mut header = vec!["INSTANCE UID", "PLATFORM", "FILE", "BATCH"];
        if wide {
            header.push("URL");
        }
        header.push("SKIPPED BECAUSE");
        let mut t = output::table(settings, &header);
        for a in &plan.agents {
            let mut row = vec![
                Cell::new(&a.instance_uid),
                Cell::new(&a.platform),
                Cell::new(a.file.as_deref().unwrap_or("-")),
                Cell::new(a.batch.map_or("-".to_string(), |b| b.to_string())),
            ];
            if wide {
                row.push(Cell::new(a.url.as_deref().unwrap_or("-")));
            }
            row.push(Cell::new(a.reason.as_deref().unwrap_or("-")));
            t.add_row(row);
        }
        output::render(&t)
    })?;
    if settings.human() {
        output::info(
            settings,
            format!(
                "dry run of {} {}: {} offered in {}, {} skipped; nothing changed",
                plan.name,
                plan.version,
                count(plan.offered, "agent"),
                count(plan.batches, "batch"),
                plan.skipped
            ),
        );
    }
    Ok(())
}

impl Staged for PackageRolloutStatus {
    fn title(&self) -> String {
        format!("{} {}", self.name, self.version)
    }

    fn state(&self) -> &str {
        &self.state
    }

    fn ended(&self) -> bool {
        matches!(self.state.as_str(), "completed" | "superseded")
    }

    /// Paused.
    fn stopped(&self) -> bool {
        self.state == "paused"
    }

    fn line(&self) -> String {
        line(self)
    }

    fn table(&self, settings: &Settings, wide: bool) -> String {
        table(settings, self, wide)
    }

    fn advice(&self) -> String {
        stopped_advice(self)
    }

    fn bar(&self) -> (String, u64, u64, String) {
        (
            format!("{} {}", self.name, self.version),
            self.total - self.skipped,
            self.installed + self.failed + self.unconfirmed,
            format!(
                "{} installing, {} pending, {} failed, {} unconfirmed ({})",
                self.installing, self.pending, self.failed, self.unconfirmed, self.state
            ),
        )
    }
}

fn line(st: &PackageRolloutStatus) -> String {
    format!(
        "{} {} {}: {} installed, {} installing, {} pending, {} failed, {} unconfirmed, {} skipped of {}",
        st.name,
        st.version,
        st.state,
        st.installed,
        st.installing,
        st.pending,
        st.failed,
        st.unconfirmed,
        st.skipped,
        st.total
    )
}

/// How many agents a table lists (`-o wide` lists all the server sent).
const AGENTS_SHOWN: usize = 20;

fn table(settings: &Settings, st: &PackageRolloutStatus, wide: bool) -> String {
    let mut t = output::table(
        settings,
        &[
            "NAME",
            "VERSION",
            "STATE",
            "BATCHES",
            "TOTAL",
            "INSTALLED",
            "INSTALLING",
            "PENDING",
            "FAILED",
            "UNCONFIRMED",
            "SKIPPED",
        ],
    );
    t.add_row(vec![
        Cell::new(&st.name),
        Cell::new(&st.version),
        output::status_cell(settings, &st.state),
        Cell::new(format!("{}/{}", st.released_batches, st.batches)),
        Cell::new(st.total),
        Cell::new(st.installed),
        Cell::new(st.installing),
        Cell::new(st.pending),
        Cell::new(st.failed),
        Cell::new(st.unconfirmed),
        Cell::new(st.skipped),
    ]);
    let mut text = output::render(&t);
    if let Some(r) = &st.reason {
        text.push_str(&format!("\nreason: {r}"));
    }
    let mut agents = output::table(
        settings,
        &[
            "INSTANCE UID",
            "BATCH",
            "PLATFORM",
            "STATE",
            "STATUS",
            "DETAIL",
        ],
    );
    let shown = if wide { usize::MAX } else { AGENTS_SHOWN };
    for a in st.agents.iter().take(shown) {
        let detail = match (&a.error, &a.reason, a.download_percent) {
            (Some(error), _, _) => error.clone(),
            (None, Some(reason), _) => reason.clone(),
            (None, None, Some(percent)) if a.state == "downloading" => format!("{percent:.0}%"),
            _ => "-".into(),
        };
        agents.add_row(vec![
            Cell::new(&a.instance_uid),
            Cell::new(a.batch),
            Cell::new(&a.platform),
            output::status_cell(settings, &a.state),
            Cell::new(&a.status),
            Cell::new(detail),
        ]);
    }
    if !st.agents.is_empty() {
        text.push('\n');
        text.push_str(&output::render(&agents));
    }
    if st.agents.len() > shown {
        text.push_str(&format!(
            "\n… and {} more agents (-o wide lists up to 1000)",
            st.agents.len() - shown
        ));
    }
    text
}

/// What to do about a paused rollout, in commands.
fn stopped_advice(st: &PackageRolloutStatus) -> String {
    let name = &st.name;
    if st.failed > st.max_failures {
        format!(
            "rollout of {name} {} paused after {}: fix the agents (their errors are above), then \
             `opampctl packages rollout resume {name}`, or go on with `--max-failures {}`, or roll out a fixed version",
            st.version,
            count(st.failed, "failed install"),
            st.failed
        )
    } else {
        format!(
            "rollout of {name} is paused{}: go on with `opampctl packages rollout resume {name}`",
            st.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        )
    }
}
