//! `opampctl configs` and `opampctl rollout`.

use super::parse::parse_duration;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum ConfigsCmd {
    /// Create or update a configuration from a file (idempotent)
    Apply(ConfigsApplyArgs),
    /// List configurations
    List,
    /// Show a configuration's newest (or a given) version
    Show {
        /// Configuration name
        #[arg(id = "config", value_name = "CONFIG")]
        name: String,
        /// The version to show
        #[arg(long, value_name = "N")]
        version: Option<u64>,
    },
    /// List every version of a configuration
    History {
        /// Configuration name
        #[arg(id = "config", value_name = "CONFIG")]
        name: String,
    },
    /// Show what changed between two versions
    Diff {
        /// Configuration name
        #[arg(id = "config", value_name = "CONFIG")]
        name: String,
        /// Older version [default: the one before --to]
        #[arg(long, value_name = "N")]
        from: Option<u64>,
        /// Newer version [default: the newest]
        #[arg(long, value_name = "N")]
        to: Option<u64>,
    },
    /// Make an earlier version's body the newest version again
    Rollback {
        /// Configuration name
        #[arg(id = "config", value_name = "CONFIG")]
        name: String,
        /// The version to go back to [default: the one before the newest]
        #[arg(long, value_name = "N")]
        to: Option<u64>,
    },
    /// Delete a configuration and its versions
    Delete {
        /// Configuration name
        #[arg(id = "config", value_name = "CONFIG")]
        name: String,
        /// Delete even if it is rolled out to agents
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
pub struct ConfigsApplyArgs {
    /// The configuration file (- for standard input)
    #[arg(short = 'f', long, value_name = "FILE")]
    pub file: PathBuf,
    /// Configuration name [default: the file name without its extension]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Which agents get it: k=v, k!=v, k; comma means and
    #[arg(long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Content type [default: from the extension: .yaml/.yml text/yaml, .json application/json, else text/plain]
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// Description of the configuration
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum RolloutCmd {
    /// Start rolling a version out (the newest by default)
    Start {
        /// Configuration name
        #[arg(id = "config", value_name = "CONFIG")]
        name: String,
        /// Version to roll out
        #[arg(long, value_name = "N")]
        version: Option<u64>,
        /// Agents per batch
        #[arg(long, value_name = "N")]
        batch_size: Option<u64>,
        /// Failure allowance: pause the rollout when more than N agents fail (default 0: at the first failure)
        #[arg(long, value_name = "N")]
        max_failures: Option<u64>,
        /// Change nothing: list the targeted agents and the components each lacks
        #[arg(long)]
        dry_run: bool,
        /// Also roll out to agents whose available components lack one the configuration uses (skipped by default)
        #[arg(long)]
        force: bool,
        /// Time a batch may take; then its agents that have not reported are counted unconfirmed and the rollout moves on (0: wait for every report) [default: the server's rollouts.batch_timeout_seconds, 300s]
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        batch_timeout: Option<Duration>,
    },
    /// Show a rollout's progress and the agents it waits for; exit 0 when completed or running, 1 when failed or paused
    Status {
        /// Configuration name
        #[arg(id = "config", value_name = "CONFIG")]
        name: String,
        /// Follow the progress until the rollout completes, fails or pauses
        #[arg(long, short = 'w')]
        watch: bool,
        /// Poll interval of --watch
        #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
        interval: Duration,
    },
    /// Pause a running rollout
    Pause {
        /// Configuration name
        #[arg(id = "config", value_name = "CONFIG")]
        name: String,
    },
    /// Resume a paused rollout
    Resume {
        /// Configuration name
        #[arg(id = "config", value_name = "CONFIG")]
        name: String,
        /// A new failure allowance: pause when more than N agents fail (to go on after failures paused it)
        #[arg(long, value_name = "N")]
        max_failures: Option<u64>,
    },
}
