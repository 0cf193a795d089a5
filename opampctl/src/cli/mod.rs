//! The command line: one clap definition that produces `--help`, the man
//! pages and the shell completions, so they cannot drift apart.

mod access;
mod agents;
mod bench;
mod configs;
mod operations;
mod packages;
mod parse;
mod texts;

pub use access::*;
pub use agents::*;
pub use bench::*;
pub use configs::*;
pub use operations::*;
pub use packages::*;
pub use parse::{parse_duration, parse_rate};
pub use texts::{ENVIRONMENT, EXIT_STATUS, FILES};

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;
use texts::{after_help, BACKUP_ABOUT, BENCH_ABOUT, LOGIN_ABOUT, RESTORE_ABOUT};

/// The clap command: the single source of help, man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Operator CLI for opampd: health, agents, configurations, rollouts, backups, troubleshooting.
#[derive(Parser, Debug)]
#[command(
    name = "opampctl",
    version,
    about = "Operator CLI for opampd: health, agents, configurations, rollouts, backups, troubleshooting",
    long_about = "Operator CLI for opampd, the OpAMP server. Every step of the operations runbook is a \
subcommand: health checks, agent inventory, configurations and staged rollouts, log tailing, \
backup and restore with retention, safe restarts, troubleshooting and database maintenance.\n\n\
Data goes to standard output; progress, logs and errors go to standard error. Tables are for \
people; -o json and -o yaml are for scripts (their field names are stable), and -q makes the \
exit code the answer.",
    after_long_help = after_help(),
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Base URL of opampd [default: http://127.0.0.1:8080]
    #[arg(long, global = true, env = "OPAMPCTL_SERVER", value_name = "URL")]
    pub server: Vec<String>,
    /// API token (an admin or operator token, or a login JWT)
    #[arg(
        long,
        global = true,
        env = "OPAMPCTL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// File holding the API token [default: ./data/admin.token, then /var/lib/opampd/admin.token, for a server on this host]
    #[arg(long, global = true, env = "OPAMPCTL_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Context of the config file to use (server and token file)
    #[arg(long, global = true, env = "OPAMPCTL_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
    /// Output format
    #[arg(
        short = 'o',
        long,
        global = true,
        value_enum,
        default_value_t = Format::Table,
        value_name = "FORMAT"
    )]
    pub output: Format,
    /// Print nothing on success: the exit code is the answer (errors still go to stderr)
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// No colour (also with NO_COLOR set or TERM=dumb)
    #[arg(long, global = true)]
    pub no_color: bool,
    /// PEM file of a CA to trust for an https server (besides the built-in roots)
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Timeout of one request to the server, e.g. 10s
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for people
    Table,
    /// Like table, with more columns
    Wide,
    /// JSON: stable field names, for scripts
    Json,
    /// YAML, same fields as JSON
    Yaml,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check /health, /health/ready and /health/live; exit 1 unless healthy
    Health(HealthArgs),
    /// Inspect and manage agents
    #[command(subcommand)]
    Agents(AgentsCmd),
    /// Manage versioned configurations
    #[command(subcommand)]
    Configs(ConfigsCmd),
    /// Roll a configuration version out to its agents, in batches
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// Manage the package catalogue: agent releases and addons, per platform
    #[command(subcommand)]
    Packages(PackagesCmd),
    /// Write a consistent, compressed, checksummed backup of the database
    #[command(long_about = BACKUP_ABOUT)]
    Backup(BackupArgs),
    /// Restore the database from a backup (checked before anything is touched)
    #[command(long_about = RESTORE_ABOUT)]
    Restore(RestoreArgs),
    /// Show opampd's log, from the API or the supervisor's log
    Logs(LogsArgs),
    /// Restart opampd through its supervisor, then wait for ready and agents
    Restart(RestartArgs),
    /// Run every diagnostic check, each with a verdict and a remedy
    Doctor(DoctorArgs),
    /// Focused diagnostics for one runbook problem
    #[command(subcommand)]
    Troubleshoot(TroubleshootCmd),
    /// Database statistics and maintenance
    #[command(subcommand)]
    Db(DbCmd),
    /// Review the audit log: logins, configuration changes, agents, users, tokens
    Audit(AuditArgs),
    /// Manage user accounts and their roles (admin)
    #[command(subcommand)]
    Users(UsersCmd),
    /// Manage API tokens: your own, or everybody's as admin
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Log in with a user name and password and keep the session token in a context
    #[command(long_about = LOGIN_ABOUT)]
    Login(LoginArgs),
    /// End the session opampctl login stored for the context, and forget its token
    Logout,
    /// Prometheus alerting rules for opampd
    #[command(subcommand)]
    Alerts(AlertsCmd),
    /// Simulate agents against a running opampd and measure it, for sizing
    #[command(long_about = BENCH_ABOUT)]
    Bench(BenchArgs),
    /// Print a shell completion script
    Completions(CompletionsArgs),
    /// Print the man page, or write all man pages to a directory
    Man(ManArgs),
    /// Agent uids or configuration names from the server, one per line, for
    /// the completion scripts; prints nothing when the server cannot be asked
    #[command(name = "__complete", hide = true)]
    Complete(CompleteArgs),
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// Poll /health/ready until it answers 200 (or --timeout passes)
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

#[derive(Args, Debug)]
pub struct CompleteArgs {
    /// What to list
    #[arg(value_enum)]
    pub kind: CompleteKind,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompleteKind {
    /// Agent instance uids
    Agents,
    /// Configuration names
    Configs,
}

#[derive(Subcommand, Debug)]
pub enum AlertsCmd {
    /// Print the Prometheus alerting rules (rules.yml)
    Rules,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// Shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write opampctl.1 and one page per subcommand into this directory
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        command().debug_assert();
    }
}
