//! `opampctl packages`.

use super::parse::parse_duration;
use super::texts::{PACKAGES_ADD_ABOUT, PACKAGES_ROLLOUT_ABOUT, PACKAGES_UPLOAD_ABOUT};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum PackagesCmd {
    /// List a package version by reference: its download URL, SHA-256 and signature (admin)
    #[command(long_about = PACKAGES_ADD_ABOUT)]
    Add(PackagesAddArgs),
    /// Upload a package file to opampd, which stores it and serves it to agents (admin)
    #[command(long_about = PACKAGES_UPLOAD_ABOUT)]
    Upload(PackagesUploadArgs),
    /// List the package versions in the catalogue
    List {
        /// Only this package's versions
        #[arg(value_name = "NAME")]
        name: Option<String>,
    },
    /// Show a package version and its files
    Show {
        /// Package name
        #[arg(value_name = "NAME")]
        name: String,
        /// Version
        #[arg(value_name = "VERSION")]
        version: String,
    },
    /// Delete a package version from the catalogue (admin)
    Delete {
        /// Package name
        #[arg(value_name = "NAME")]
        name: String,
        /// Version
        #[arg(value_name = "VERSION")]
        version: String,
    },
    /// Roll a package version out to agents in staged batches (operator)
    #[command(subcommand, long_about = PACKAGES_ROLLOUT_ABOUT)]
    Rollout(PackagesRolloutCmd),
}

#[derive(Subcommand, Debug)]
pub enum PackagesRolloutCmd {
    /// Start rolling a package version out (the newest listed by default)
    Start {
        /// Package name
        #[arg(value_name = "NAME")]
        name: String,
        /// Version to roll out
        #[arg(long, value_name = "VERSION")]
        version: Option<String>,
        /// Which agents get it: k=v, k!=v, k; comma means and [default: every agent]
        #[arg(long, value_name = "SELECTOR")]
        selector: Option<String>,
        /// Agents per batch
        #[arg(long, value_name = "N")]
        batch_size: Option<u64>,
        /// Failure allowance: pause the rollout when more than N agents fail (default 0: at the first failure)
        #[arg(long, value_name = "N")]
        max_failures: Option<u64>,
        /// Time a batch may take; then its agents that have not reported are counted unconfirmed and the rollout moves on (0: wait for every report) [default: the server's rollouts.batch_timeout_seconds]
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        batch_timeout: Option<Duration>,
        /// Change nothing: list which agents would get which file, and why others would not
        #[arg(long)]
        dry_run: bool,
    },
    /// Show a package rollout's progress and each agent's state; exit 0 when completed or running, 1 when paused
    Status {
        /// Package name
        #[arg(value_name = "NAME")]
        name: String,
        /// Follow the progress until the rollout completes or pauses
        #[arg(long, short = 'w')]
        watch: bool,
        /// Poll interval of --watch
        #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
        interval: Duration,
    },
    /// Pause a running package rollout
    Pause {
        /// Package name
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Resume a paused package rollout
    Resume {
        /// Package name
        #[arg(value_name = "NAME")]
        name: String,
        /// A new failure allowance: pause when more than N agents fail (to go on after failures paused it)
        #[arg(long, value_name = "N")]
        max_failures: Option<u64>,
    },
}

#[derive(Args, Debug)]
pub struct PackagesUploadArgs {
    /// Package name, e.g. otelcol-contrib
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Version, e.g. 0.120.0
    #[arg(value_name = "VERSION")]
    pub version: String,
    /// The file to upload
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The file's OS as agents report os.type (any matches every one)
    #[arg(long, value_name = "OS", required_unless_present = "platform")]
    pub os: Option<String>,
    /// The file's architecture as agents report host.arch (any matches every one)
    #[arg(long, value_name = "ARCH", required_unless_present = "platform")]
    pub arch: Option<String>,
    /// OS/ARCH in one, as `packages add` takes it (instead of --os and --arch)
    #[arg(long, value_name = "OS/ARCH", conflicts_with_all = ["os", "arch"])]
    pub platform: Option<String>,
    /// The SHA-256 the file must have (64 hex digits); refused when it differs
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// The signature file, e.g. the release's .sigstore.json bundle
    #[arg(long, value_name = "FILE", visible_alias = "signature")]
    pub signature_file: Option<PathBuf>,
    /// An addon rather than the agent itself
    #[arg(long)]
    pub addon: bool,
    /// Accept a file without a signature
    #[arg(long, conflicts_with = "signature_file")]
    pub unsigned: bool,
    /// Accept a version older than the newest one listed
    #[arg(long)]
    pub allow_downgrade: bool,
}

#[derive(Args, Debug)]
pub struct PackagesAddArgs {
    /// Package name, e.g. otelcol-contrib
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Version, e.g. 0.120.0
    #[arg(value_name = "VERSION")]
    pub version: String,
    /// The platform of the file: OS/ARCH as agents report os.type and host.arch (any matches every one)
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: String,
    /// Where agents download the file
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// SHA-256 of the file (64 hex digits)
    #[arg(long, value_name = "HEX")]
    pub sha256: String,
    /// The signature file, e.g. the release's .sigstore.json bundle
    #[arg(long, value_name = "FILE")]
    pub signature_file: Option<PathBuf>,
    /// An addon rather than the agent itself
    #[arg(long)]
    pub addon: bool,
    /// Accept a file without a signature
    #[arg(long)]
    pub unsigned: bool,
    /// Accept an http:// URL
    #[arg(long)]
    pub allow_http: bool,
    /// Accept a version older than the newest one listed
    #[arg(long)]
    pub allow_downgrade: bool,
}
