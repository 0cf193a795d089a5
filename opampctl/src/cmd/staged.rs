//! What `opampctl rollout` and `opampctl packages rollout` share: following
//! a staged rollout (`status --watch`: a progress bar on a terminal, a
//! line when it changes otherwise), its exit code (1 when it stopped, with
//! what to do next), pause and resume, and the words for its settings.

use crate::client::Client;
use crate::context::Settings;
use crate::error::{CtlError, Exit, Result};
use crate::output;
use opamp_proto::api::RolloutResume;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::{Duration, Instant};

/// A staged rollout's status, as the commands that follow it see it.
pub trait Staged: Serialize + DeserializeOwned {
    /// The name and version, as messages name the rollout.
    fn title(&self) -> String;
    /// The state word (running, paused, completed, …).
    fn state(&self) -> &str;
    /// Whether it ended by itself: there is nothing more to watch.
    fn ended(&self) -> bool;
    /// Whether it stopped and needs someone (exit 1).
    fn stopped(&self) -> bool;
    /// One line of figures, for scripts and logs.
    fn line(&self) -> String;
    /// The table for people (`wide`: every agent the server named).
    fn table(&self, settings: &Settings, wide: bool) -> String;
    /// What to do about a stopped rollout, in commands.
    fn advice(&self) -> String;
    /// The progress bar's prefix, length, position and message.
    fn bar(&self) -> (String, u64, u64, String);
}

/// `status [--watch]`: shows the rollout at `path`, following it until it
/// ends or stops with `watch`.
pub async fn status<S: Staged>(
    settings: &Settings,
    client: &Client,
    path: &str,
    watch: bool,
    interval: Duration,
) -> Result<()> {
    let mut st: S = client.get(path).await?;
    if !watch || st.ended() {
        return finish(settings, &st);
    }
    let bar = settings.progress().then(|| {
        let b = indicatif::ProgressBar::new(st.bar().1);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {prefix} [{bar:30}] {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_prefix(st.bar().0);
        b.enable_steady_tick(Duration::from_millis(150));
        b
    });
    let plain = bar.is_none() && settings.human() && !settings.quiet;
    let mut last_line = String::new();
    let mut last_print = Instant::now();
    loop {
        if let Some(b) = &bar {
            let (_, length, position, message) = st.bar();
            b.set_length(length);
            b.set_position(position);
            b.set_message(message);
        } else if plain {
            let l = st.line();
            if l != last_line || last_print.elapsed() > Duration::from_secs(30) {
                eprintln!("{} {l}", chrono::Local::now().format("%H:%M:%S"));
                last_line = l;
                last_print = Instant::now();
            }
        }
        if st.ended() || st.stopped() {
            break;
        }
        tokio::time::sleep(interval).await;
        st = client.get(path).await?;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    finish(settings, &st)
}

/// Shows the status and exits 1 (with advice for people) when it stopped.
pub fn finish<S: Staged>(settings: &Settings, st: &S) -> Result<()> {
    if !settings.quiet {
        output::show(settings, st, |wide| st.table(settings, wide))?;
    }
    if st.stopped() {
        if settings.human() {
            eprintln!("{}", st.advice());
        }
        return Err(if settings.quiet {
            CtlError::failed(st.line())
        } else {
            CtlError::silent(Exit::Failed)
        });
    }
    Ok(())
}

/// `pause` and `resume` (`path` ends in the action).
pub async fn change<S: Staged>(
    settings: &Settings,
    client: &Client,
    path: &str,
    max_failures: Option<u64>,
) -> Result<()> {
    let body = RolloutResume { max_failures };
    let (_, st): (_, S) = client.send_json(Method::POST, path, &body).await?;
    if settings.human() {
        output::info(
            settings,
            format!("rollout of {}: {}", st.title(), st.state()),
        );
        Ok(())
    } else {
        output::machine(settings, &st)
    }
}

pub fn count(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// "in one batch", "in 3 batches of 10".
pub fn batches_text(batch_size: u64, batches: u64) -> String {
    if batch_size == 0 || batches <= 1 {
        "in one batch".into()
    } else {
        format!("in {batches} batches of {batch_size}")
    }
}

/// What the failure allowance means, in words.
pub fn allowance_text(max_failures: u64) -> String {
    match max_failures {
        0 => "pausing at the first failed agent".into(),
        n => format!("pausing when more than {} fail", count(n, "agent")),
    }
}

/// `--batch-timeout` in whole seconds (rounded up); 0 stays 0 (no limit).
pub fn timeout_seconds(timeout: Duration) -> Result<u64> {
    if timeout.is_zero() {
        return Ok(0);
    }
    if timeout < Duration::from_secs(1) {
        return Err(CtlError::usage(
            "--batch-timeout must be at least 1s (or 0 to wait for every report)",
        ));
    }
    Ok(timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0))
}

/// The batch timeout, in words.
pub fn timeout_text(seconds: u64) -> String {
    match seconds {
        0 => "waiting for every agent's report".into(),
        s => format!("counting agents silent after {s}s per batch as unconfirmed"),
    }
}
