//! The command line: one clap definition that produces `--help`, the man
//! pages and the shell completions, so they cannot drift apart.

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Exit status, environment and files: the end of `opampctl --help` and the
/// man pages.
pub const EXIT_STATUS: &str = "\
0  success; the server or check is healthy
1  the operation failed, a check failed, or the server is unhealthy (also 401/403)
2  usage error: a bad flag, argument, file or value (also when opampd refuses the input: 400/413)
3  the server is unreachable: connection refused, DNS failure or timeout";

pub const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "OPAMPCTL_SERVER",
        "Base URL of opampd, like --server (default http://127.0.0.1:8080).",
    ),
    ("OPAMPCTL_TOKEN", "API token, like --token."),
    (
        "OPAMPCTL_TOKEN_FILE",
        "File holding the API token, like --token-file.",
    ),
    (
        "OPAMPCTL_CONTEXT",
        "Context of the config file to use, like --context.",
    ),
    (
        "OPAMPCTL_CONFIG",
        "Path of the config file (default ~/.config/opampctl/config.yaml).",
    ),
    (
        "NO_COLOR",
        "When set and not empty, no colour (like --no-color); so does TERM=dumb.",
    ),
];

pub const FILES: &[(&str, &str)] = &[
    (
        "~/.config/opampctl/config.yaml",
        "Named contexts: current-context and contexts: {NAME: {server, token-file, ca-file, token}}; token is the session opampctl login stores (the file is then written owner-only, 0600). $XDG_CONFIG_HOME is honoured.",
    ),
    (
        "./data/admin.token, /var/lib/opampd/admin.token",
        "Admin API token written by opampd at its first start; read when no token is given and the server is on this host.",
    ),
    (
        "opamp_YYYYmmdd_HHMMSS.db.gz, opamp_YYYYmmdd_HHMMSS.sql.gz, FILE.sha256",
        "Backups written by opampctl backup (.sql.gz: opampd's SQL dump of a PostgreSQL deployment), with checksums in sha256sum format.",
    ),
    (
        "DATA_DIR/opamp.db.before-restore-TIMESTAMP, DATA_DIR/opamp-postgresql.sql.before-restore-TIMESTAMP",
        "The database a restore replaced, kept aside (on PostgreSQL as a dump, in the restoring replica's data directory).",
    ),
];

fn after_help() -> String {
    let mut s = String::from("Exit status:\n");
    for l in EXIT_STATUS.lines() {
        s.push_str("  ");
        s.push_str(l);
        s.push('\n');
    }
    s.push_str("\nEnvironment:\n");
    for (k, v) in ENVIRONMENT {
        s.push_str(&format!("  {k}  {v}\n"));
    }
    s.push_str("\nFiles:\n");
    for (k, v) in FILES {
        s.push_str(&format!("  {k}\n      {v}\n"));
    }
    s
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
    pub server: Option<String>,
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
    #[command(long_about = "Write a consistent snapshot of the database as \
opamp_YYYYmmdd_HHMMSS.db.gz plus a .sha256 file (sha256sum format), while opampd runs. \
The snapshot comes from the server (GET /api/v1/admin/backup, admin token), or with \
--data-dir from the database file through SQLite's online backup API. The file is \
written under a temporary name, synced and renamed: there is never a partial file under \
the final name, and on any error (a full disk too) the temporary file is removed and the \
exit status is not 0. A server on PostgreSQL sends opampd's SQL dump instead, written as \
opamp_YYYYmmdd_HHMMSS.sql.gz: one REPEATABLE READ snapshot of every table in pg_dump's \
plain format (the schema, then COPY blocks), which `gunzip -c FILE | psql -v \
ON_ERROR_STOP=1 URL` loads into an empty database and opampctl restore loads into a running \
deployment.")]
    Backup(BackupArgs),
    /// Restore the database from a backup (checked before anything is touched)
    #[command(
        long_about = "Restore the database from a backup made by opampctl backup. \
The checksum (FILE.sha256, when present), SQLite integrity and schema version are checked \
first; nothing is touched if any check fails. Through the API the running server keeps \
the current database aside and asks every agent to report its full state; with \
--data-dir the daemon must be stopped, and the current database is moved aside as \
opamp.db.before-restore-TIMESTAMP before the restored file is moved in. A PostgreSQL dump \
(.sql.gz) is checked completely first (see backup --verify) and restored through the \
server only: in one transaction, every other replica then asks its agents for their full \
state; the replaced content is kept as a dump in the restoring replica's data directory."
    )]
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

/// The man page of `opampctl login`.
const LOGIN_ABOUT: &str = "\
Log in to opampd with a user name and password (POST /api/v1/auth/login) and \
store the session token it returns in a context of opampctl's config file \
(OPAMPCTL_CONFIG, else ~/.config/opampctl/config.yaml), which is written \
owner-only (0600). Later commands with that context use the token, until it \
expires or opampctl logout ends it.\n\n\
The context is --context (or OPAMPCTL_CONTEXT), else the file's \
current-context, else a context named default; a context that does not \
exist yet is created with the server of --server (or the default), and \
becomes the current context when the file has none.\n\n\
On a terminal opampctl asks for the user name (without --username) and the \
password, which is not echoed. Scripts pass --username and \
--password-stdin. A wrong user name or password exits 1.";

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The user to log in as [default: asked on a terminal]
    #[arg(short = 'u', long, value_name = "NAME")]
    pub username: Option<String>,
    /// Read the password from stdin (its first line) instead of asking on the terminal
    #[arg(long)]
    pub password_stdin: bool,
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

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only entries by this actor (user name, or token:NAME)
    #[arg(long)]
    pub actor: Option<String>,
    /// Only entries of this action (login, config.apply, agent.delete, user.create, …)
    #[arg(long)]
    pub action: Option<String>,
    /// Only entries at or after this time: RFC 3339 (2026-01-31T12:00:00Z) or an age (30m, 2h, 7d)
    #[arg(long, value_name = "TIME|AGE", value_parser = parse_since)]
    pub since: Option<String>,
    /// At most this many entries, newest first (1-1000)
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Keep printing new entries as they are recorded (polls every --interval; Ctrl-C stops)
    #[arg(short, long)]
    pub follow: bool,
    /// How often -f polls
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub interval: Duration,
}

/// `--since`: an RFC 3339 time as it is, or an age (`30m`, `2h`, `7d`) as the time that long ago.
fn parse_since(text: &str) -> std::result::Result<String, String> {
    if chrono::DateTime::parse_from_rfc3339(text).is_ok() {
        return Ok(text.to_string());
    }
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let seconds = match (number.parse::<i64>(), unit) {
        (Ok(n), "s") => n,
        (Ok(n), "m") => n * 60,
        (Ok(n), "h") => n * 3600,
        (Ok(n), "d") => n * 86400,
        _ => {
            return Err(format!(
            "{text:?} is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor an age (30m, 2h, 7d)"
        ))
        }
    };
    let at = chrono::Utc::now() - chrono::Duration::seconds(seconds);
    Ok(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
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

#[derive(Subcommand, Debug)]
pub enum AgentsCmd {
    /// List agents
    List(AgentsListArgs),
    /// Show one agent
    Show {
        /// Instance uid (UUID), or a unique prefix of one
        #[arg(value_name = "UID")]
        uid: String,
    },
    /// Set or remove server-side labels of one agent, or of every agent -l/--status picks
    #[command(
        override_usage = "opampctl agents label [OPTIONS] <UID> <LABEL>...\n       \
opampctl agents label [OPTIONS] (-l <SELECTOR> | --status <STATUS>) <LABEL>..."
    )]
    Label {
        /// Instance uid (UUID), or a unique prefix of one; left out when -l or --status picks the agents
        #[arg(value_name = "UID")]
        uid: Option<String>,
        /// k=v to set a label, k- to remove it
        #[arg(value_name = "LABEL")]
        labels: Vec<String>,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Delete one agent from the inventory, or every agent -l/--status picks
    Delete {
        /// Instance uid (UUID), or a unique prefix of one
        #[arg(value_name = "UID", required_unless_present_any = ["selector", "status"], conflicts_with_all = ["selector", "status"])]
        uid: Option<String>,
        /// Delete even if the agent is connected (it comes back at its next message)
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Ask a connected agent, or every agent -l/--status picks, to restart
    Restart {
        /// Instance uid (UUID), or a unique prefix of one
        #[arg(value_name = "UID", required_unless_present_any = ["selector", "status"], conflicts_with_all = ["selector", "status"])]
        uid: Option<String>,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// List the components an agent can run, as it reported them (kind, type/name, version)
    Components {
        /// Instance uid (UUID), or a unique prefix of one
        #[arg(value_name = "UID")]
        uid: String,
    },
}

/// Picks many agents instead of one uid: `agents label|delete|restart`.
#[derive(Args, Debug, Clone, Default)]
pub struct FleetArgs {
    /// Act on every agent this label selector matches (k=v, k!=v, k; comma means and), instead of one UID
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Act on every agent with this status (with -l: agents that match both)
    #[arg(long, value_enum, value_name = "STATUS")]
    pub status: Option<AgentStatus>,
    /// Do not ask before acting on the agents -l/--status picks (needed when standard input is not a terminal)
    #[arg(long, short = 'y')]
    pub yes: bool,
}

impl FleetArgs {
    /// Whether the agents are picked by selector or status rather than by uid.
    pub fn picks(&self) -> bool {
        self.selector.is_some() || self.status.is_some()
    }
}

#[derive(Args, Debug)]
pub struct AgentsListArgs {
    /// Label selector: k=v, k!=v, k (present); comma means and; component=KIND/TYPE needs an available component
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Only agents with this status
    #[arg(long, value_enum)]
    pub status: Option<AgentStatus>,
    /// Page size (1-1000)
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub limit: usize,
    /// Follow the pages to the end instead of stopping after the first
    #[arg(long)]
    pub all: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentStatus {
    Connected,
    Stale,
    Disconnected,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Connected => "connected",
            AgentStatus::Stale => "stale",
            AgentStatus::Disconnected => "disconnected",
        }
    }
}

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

/// The man page of `opampctl packages rollout`.
const PACKAGES_ROLLOUT_ABOUT: &str = "\
Roll a package version out to agents in staged batches, as `opampctl rollout` \
does for configurations. Each agent gets the catalogue file for its platform \
(its os.type and host.arch attributes); agents without AcceptsPackages or \
without a file for their platform are skipped and reported. A failed install \
pauses the rollout once failures exceed --max-failures; progress survives a \
restart of opampd.";

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

/// The man page of `opampctl packages add`.
const PACKAGES_ADD_ABOUT: &str = "\
List a package version in opampd's catalogue by reference: agents will \
download the file from its URL (opampd never fetches it). One call adds one \
platform's file; call again with another --platform to add more files to \
the same version (a platform's file never changes once listed).\n\n\
Safety rules, each with its override: the URL must be https (--allow-http); \
a signature is required, e.g. the .sigstore.json bundle published beside a \
collector release (--unsigned); a version older than the newest listed for \
the name is refused (--allow-downgrade). The SHA-256 comes from the release's \
checksums file.";

/// The man page of `opampctl packages upload`.
const PACKAGES_UPLOAD_ABOUT: &str = "\
Upload a package file (e.g. a collector release's .tar.gz) to opampd, which \
keeps it in packages.dir named by its SHA-256 and serves it to agents under \
/v1/packages/ with their OpAMP credentials, resumable with Range requests. \
opampd computes the SHA-256 as the bytes arrive; with --sha256 (from the \
release's checksums file) an upload whose bytes differ is refused and \
nothing is kept. opampctl also checks that the server's SHA-256 is the one \
of the bytes it sent. The file size is limited by packages.max_file_bytes \
(512 MiB by default).\n\n\
The same safety rules as `packages add`: a signature is required \
(--signature-file, e.g. the .sigstore.json bundle; --unsigned to accept \
none), and a version older than the newest listed needs --allow-downgrade. \
A progress bar shows the transfer on a terminal; -o json prints the \
package version as stored.";

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

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Directory for the backup files (it must exist, unless --create-dir)
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub dir: PathBuf,
    /// Create --dir (and its parents) when it does not exist
    #[arg(long)]
    pub create_dir: bool,
    /// Delete backups in --dir older than N days, N at least 1 (only files named opamp_YYYYmmdd_HHMMSS.db.gz or .sql.gz and their .sha256)
    #[arg(long, value_name = "N")]
    pub retention_days: Option<u64>,
    /// Read the written file back: checksum, decompression, SQLite integrity and schema (a PostgreSQL dump: header, schema statements of its version unchanged, every table's block complete with its row count, end line)
    #[arg(long)]
    pub verify: bool,
    /// Back up the database file in this opampd data directory instead of asking the server
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Backup file: opamp_*.db.gz or opamp_*.sql.gz (or uncompressed)
    pub file: PathBuf,
    /// Restore into this data directory of a stopped opampd instead of through the server
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Do not ask for confirmation
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Number of recent lines
    #[arg(short = 'n', long, default_value_t = 100, value_name = "N")]
    pub lines: usize,
    /// Keep printing new lines
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Minimum level: error, warn, info, debug or trace
    #[arg(long, value_name = "LEVEL", value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub level: Option<String>,
    /// Only lines containing this text
    #[arg(long, value_name = "TEXT")]
    pub grep: Option<String>,
    /// Read the supervisor's log instead of the API stream
    #[arg(long, value_enum, value_name = "SUPERVISOR")]
    pub via: Option<LogSource>,
    #[command(flatten)]
    pub supervisor: SupervisorArgs,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSource {
    /// journalctl -u opampd
    Journald,
    /// docker compose logs opamp-server
    Compose,
    /// kubectl logs -l app.kubernetes.io/name=opampd --all-containers (every pod)
    Kubernetes,
}

/// Where the supervisor keeps opampd.
#[derive(Args, Debug, Clone)]
pub struct SupervisorArgs {
    /// systemd unit name
    #[arg(long, default_value = "opampd", value_name = "UNIT")]
    pub unit: String,
    /// docker compose file [default: compose's own lookup in the current directory]
    #[arg(long, value_name = "FILE")]
    pub compose_file: Option<PathBuf>,
    /// Kubernetes namespace
    #[arg(long, default_value = "opamp-platform", value_name = "NS")]
    pub namespace: String,
}

#[derive(Args, Debug)]
pub struct RestartArgs {
    /// The supervisor that runs opampd
    #[arg(long, value_enum, default_value_t = Supervisor::Systemd, value_name = "SUPERVISOR")]
    pub via: Supervisor,
    /// Print the commands without running anything
    #[arg(long)]
    pub dry_run: bool,
    /// Validate this opampd config file first (opampd check-config)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// How long to wait for ready and for the agents to come back
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    #[command(flatten)]
    pub supervisor: SupervisorArgs,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Supervisor {
    /// systemctl restart opampd
    Systemd,
    /// docker compose restart opamp-server
    Compose,
    /// kubectl rollout restart deploy/opamp-server
    Kubernetes,
}

/// What the diagnostic checks may look at besides the server.
#[derive(Args, Debug, Clone, Default)]
pub struct DoctorArgs {
    /// opampd config file: validated (opampd check-config); gives the server address when no --server, OPAMPCTL_SERVER or context names one, and the data directory when no --data-dir does
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// opampd data directory on this host: permissions, database (opened read-only), and its admin.token when no token is given [default: data_dir of --config]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TLS certificate file (PEM) to check [default: the server's, for an https URL]
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// An agent secret to test against the OpAMP endpoint
    #[arg(
        long,
        env = "OPAMPCTL_AGENT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub agent_secret: Option<String>,
    /// Path of the OpAMP endpoint [default: opamp.path of --config, else /v1/opamp]
    #[arg(long, value_name = "PATH")]
    pub opamp_path: Option<String>,
    /// OpAMP URL when agents use another listener, e.g. http://host:4320/v1/opamp [default: from agent_listen of --config]
    #[arg(long, value_name = "URL")]
    pub opamp_url: Option<String>,
    /// On PostgreSQL: a statement or transaction running this long is reported (long-queries)
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub long_query_seconds: u64,
}

#[derive(Subcommand, Debug)]
pub enum TroubleshootCmd {
    /// opampd does not start: config, data directory, database, port
    Startup(DoctorArgs),
    /// Agents do not connect: OpAMP over HTTP and WebSocket, TLS, agent secret
    AgentConnect(DoctorArgs),
    /// Slow API or waits on the database: read pool, slow queries, database size
    DbPool(DoctorArgs),
    /// Memory grows: RSS trend and the subsystems that hold memory
    Memory(MemoryArgs),
}

#[derive(Args, Debug)]
pub struct MemoryArgs {
    /// Number of samples
    #[arg(long, default_value_t = 6, value_name = "N")]
    pub samples: u32,
    /// Time over which the samples are spread
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Duration,
}

#[derive(Subcommand, Debug)]
pub enum DbCmd {
    /// Size, pages, WAL and rows per table; on PostgreSQL table sizes, dead rows, the pool, connections and running statements
    Stats {
        /// Also run PRAGMA integrity_check (slow on large databases)
        #[arg(long)]
        integrity: bool,
        /// Read the database file in this data directory (read-only) instead of asking the server
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// ANALYZE, PRAGMA optimize, VACUUM and a WAL checkpoint (through the server); on PostgreSQL VACUUM (ANALYZE) of every table
    Optimize,
    /// Move a stopped SQLite deployment into an empty PostgreSQL database, every row checked
    #[command(
        long_about = "Move a SQLite deployment to PostgreSQL. Its opampd must be \
stopped (refused while a process holds DATA_DIR/opamp.db). The database is copied with \
SQLite's online backup API, the copy brought to this release's schema and written as \
opampd's dump in a private directory inside DATA_DIR; the dump is loaded into the \
PostgreSQL database in one transaction (users, API tokens, audit log, configurations with \
every version, rollouts, agents and their events, component lists, packages), and every \
table's row count is compared with the SQLite one before and after the commit. A database \
that already holds opampd rows is refused unless --replace. The SQLite file is only read. \
Then start opampd with --database-url URL and the JWT key the deployment used."
    )]
    Migrate {
        /// Data directory of the stopped SQLite opampd (the one holding opamp.db)
        #[arg(long = "from-sqlite", value_name = "DATA_DIR")]
        from_sqlite: PathBuf,
        /// The PostgreSQL database: postgres://USER:PASSWORD@HOST:PORT/DATABASE
        #[arg(long, value_name = "URL")]
        to: String,
        /// Replace the content of a database that already holds opampd rows
        #[arg(long)]
        replace: bool,
    },
}

/// The man page of `opampctl bench`.
const BENCH_ABOUT: &str = "\
Simulate agents against a running opampd and measure what the server spends \
on them, to size a deployment. Run it against a release build on a test \
server, not against production: the simulated agents register (service.name \
opampctl-bench, attribute bench.run=RUN) and are deleted from the inventory \
when the run ends, which needs an operator token; --keep leaves them there \
(as disconnected agents), and so does a run without a token, which says so \
and how to delete them later.\n\n\
hold: connect --agents WebSocket agents (a full first report with an \
effective config of --config-bytes, then a heartbeat every --heartbeat, each \
reply awaited) and hold them for --duration. Reports connect time (p50, p99), \
heartbeat latency and errors; with --server-pid, the server's RSS before, \
after connecting and at the end, the RSS per agent (against a freshly \
started opampd: memory freed by an earlier run stays with the process), \
whether RSS stays flat (sampled every few seconds) and the server CPU time \
per heartbeat.\n\n\
status: agents send a changed health status, wait for the reply and repeat, \
as fast as possible, for --duration: messages/s, latency p50/p99 and, with \
--server-pid, server CPU seconds per 1000 messages.\n\n\
http: agents poll over plain HTTP (uid, sequence number and capabilities; a \
full report first) through --connections keep-alive connections, as fast as \
possible: requests/s, latency p50/p99, server CPU seconds per 1000 polls. \
--gzip sends Accept-Encoding: gzip.\n\n\
rollout: agents that accept remote configuration answer every offer with \
APPLIED. A configuration bench-RUN of --config-bytes with the selector \
bench.run=RUN is created and rolled out (an operator token is needed): the \
time until every agent received it and until the rollout says all applied. \
The configuration is deleted afterwards.\n\n\
reconnect: agents wait for opampd to restart (run --restart-cmd, or restart \
it yourself within --duration), reconnect at once with a jitter of up to \
--jitter, send a minimal message and a full report when asked for one: the \
time until all are back, and the slowest answer of /health/live polled every \
50 ms meanwhile.\n\n\
One process holds at most as many connections as its open-file limit allows \
(opampctl raises its soft limit to the hard limit), and one source address \
gives about 28,000 ports to one server: --processes P runs P worker \
processes, each simulating a share of the agents, and --source-ips spreads \
the connections over local addresses. Every process uses one core. The exit \
status is 1 when any error occurred.\n\n\
compare: runs --load (hold, status or http; default hold) with the same \
flags against two OpAMP servers on this host, any implementation: --server-a \
URL --pid-a PID and --server-b URL --pid-b PID, --rounds times each, \
alternating which goes first (A B, then B A), each run a fresh opampctl bench \
process that keeps its agents (--keep: the servers' inventories are not \
touched). Shows the server CPU per heartbeat, per message or per poll, the \
RSS per agent and the latency of each server (median over the rounds) and \
B/A, the ratio that counts: absolute figures move between runs on a shared \
machine, the ratio of one comparison much less.\n\n\
Example:\n\n\
opampctl bench hold --agents 15000 --processes 2 --source-ips 127.0.0.1-127.0.0.4 \
--ramp 2000/s --duration 60s --server-pid $(pidof opampd)";

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// What to measure
    #[arg(value_enum)]
    pub mode: BenchMode,
    /// Number of simulated agents, in total over all processes
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub agents: usize,
    /// Measured phase; for rollout and reconnect, the longest wait
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Duration,
    /// Heartbeat interval of the agents of hold, rollout and reconnect
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub heartbeat: Duration,
    /// Transport of hold and status [default: ws; http mode always uses http, rollout and reconnect ws]
    #[arg(long, value_enum, value_name = "TRANSPORT")]
    pub transport: Option<BenchTransport>,
    /// Keep-alive connections of plain-HTTP agents, in total
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub connections: usize,
    /// Size of each agent's effective config, and of the rolled-out configuration
    #[arg(long, default_value_t = 2048, value_name = "BYTES")]
    pub config_bytes: usize,
    /// opampd's process id on this host: measure its memory (VmRSS) and CPU time
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Worker processes simulating the agents (each one a share of --agents)
    #[arg(long, default_value_t = 1, value_name = "P")]
    pub processes: usize,
    /// Local addresses to connect from, round-robin: a range A-B, a list A,B,C or one address
    #[arg(long, value_name = "IPS")]
    pub source_ips: Option<String>,
    /// How fast agents connect, in total: N/s, N/m or N (per second)
    #[arg(long, default_value = "1000/s", value_parser = parse_rate, value_name = "RATE")]
    pub ramp: f64,
    /// Agent secret, sent as 'Authorization: Bearer SECRET'
    #[arg(
        long,
        env = "OPAMPCTL_AGENT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub secret: Option<String>,
    /// OpAMP endpoint (http://, plain listeners only) [default: SERVER/v1/opamp]
    #[arg(long, value_name = "URL")]
    pub opamp_url: Option<String>,
    /// http: send 'Accept-Encoding: gzip'
    #[arg(long)]
    pub gzip: bool,
    /// reconnect: command that restarts opampd, run with sh -c (without it, restart opampd yourself)
    #[arg(long, value_name = "COMMAND")]
    pub restart_cmd: Option<String>,
    /// reconnect: the longest random delay before an agent reconnects
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub jitter: Duration,
    /// Leave the simulated agents in the inventory (by default they are deleted at the end, with an operator token)
    #[arg(long)]
    pub keep: bool,
    /// The default now: the simulated agents are deleted unless --keep
    #[arg(long, hide = true, conflicts_with = "keep")]
    pub cleanup: bool,
    /// compare: the load run against both servers (hold, status or http) [default: hold]
    #[arg(long, value_enum, value_name = "MODE")]
    pub load: Option<BenchMode>,
    /// compare: OpAMP endpoint of the first server (ws:// or http://; path /v1/opamp when none)
    #[arg(long, value_name = "URL")]
    pub server_a: Option<String>,
    /// compare: process id of the first server on this host
    #[arg(long, value_name = "PID")]
    pub pid_a: Option<u32>,
    /// compare: OpAMP endpoint of the second server (ws:// or http://; path /v1/opamp when none)
    #[arg(long, value_name = "URL")]
    pub server_b: Option<String>,
    /// compare: process id of the second server on this host
    #[arg(long, value_name = "PID")]
    pub pid_b: Option<u32>,
    /// compare: rounds, each one run against each server (A B, then B A)
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub rounds: usize,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchMode {
    /// Idle agents with heartbeats: connect time, RSS per agent, CPU per heartbeat
    Hold,
    /// Health-status changes as fast as possible: messages/s, latency, CPU
    Status,
    /// Plain-HTTP polls as fast as possible: requests/s, latency, CPU
    Http,
    /// Time for a configuration to reach and be applied by every agent
    Rollout,
    /// Time for every agent to come back after a server restart
    Reconnect,
    /// The same load against two OpAMP servers, alternately: each figure side by side and its ratio
    Compare,
}

impl BenchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BenchMode::Hold => "hold",
            BenchMode::Status => "status",
            BenchMode::Http => "http",
            BenchMode::Rollout => "rollout",
            BenchMode::Reconnect => "reconnect",
            BenchMode::Compare => "compare",
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchTransport {
    /// WebSocket
    Ws,
    /// Plain HTTP (POST per message)
    Http,
}

/// The roles of users and tokens.
const ROLES: [&str; 3] = ["admin", "operator", "viewer"];

#[derive(Subcommand, Debug)]
pub enum UsersCmd {
    /// List the users and their roles
    List,
    /// Create a user; the password is read from stdin (--password-stdin)
    Create {
        /// User name: 1-64 of letters, digits, '.', '_', '-', '@'
        name: String,
        /// The user's role
        #[arg(long, value_parser = ROLES)]
        role: String,
        /// Read the password from stdin (its first line)
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's role (their tokens above it are lowered to it)
    SetRole {
        /// The user to change
        name: String,
        /// The new role
        #[arg(value_parser = ROLES)]
        role: String,
    },
    /// Set a user's password, read from stdin (--password-stdin)
    SetPassword {
        /// The user to change
        name: String,
        /// Read the password from stdin (its first line)
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user and revoke their tokens
    Delete {
        /// The user to delete
        name: String,
    },
}

/// `--expires-in-days`: 1-3650 days, or `never`.
fn parse_lifetime(text: &str) -> std::result::Result<opamp_proto::api::TokenLifetime, String> {
    use opamp_proto::api::{NeverExpires, TokenLifetime};
    if text == "never" {
        return Ok(TokenLifetime::Never(NeverExpires::Never));
    }
    match text.parse::<u64>() {
        Ok(days) if (1..=3650).contains(&days) => Ok(TokenLifetime::Days(days)),
        _ => Err(format!(
            "{text:?} is neither a number of days from 1 to 3650 nor `never`"
        )),
    }
}

#[derive(Subcommand, Debug)]
pub enum TokensCmd {
    /// List your tokens (an admin: everybody's)
    List,
    /// Create a token; prints its secret once (also with -q)
    Create {
        /// What the token is for (1-64 characters)
        name: String,
        /// Its role, at most yours (default: yours)
        #[arg(long, value_parser = ROLES)]
        role: Option<String>,
        /// Lifetime in days (1-3650), or `never` (default: the server's, 90 days)
        #[arg(long, value_name = "DAYS|never", value_parser = parse_lifetime)]
        expires_in_days: Option<opamp_proto::api::TokenLifetime>,
    },
    /// Revoke a token by its id (see tokens list)
    Revoke {
        /// The token's id (the ID column of tokens list)
        id: String,
    },
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

/// The clap command: the single source of help, man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Parses a rate: `2000/s`, `600/m` or a plain number per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, per) = match t.split_once('/') {
        Some((n, u)) => (n.trim(), u.trim()),
        None => (t, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a rate: use e.g. 2000/s or 600/m"))?;
    let per_s = match per {
        "s" => n,
        "m" => n / 60.0,
        _ => return Err(format!("{s:?} has an unknown unit {per:?}: use /s or /m")),
    };
    if !per_s.is_finite() || per_s <= 0.0 {
        return Err(format!("{s:?} is not a rate above 0"));
    }
    Ok(per_s)
}

/// Parses `30s`, `5m`, `1h`, `500ms` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: use e.g. 30s, 5m, 1h or 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(format!(
                "{s:?} has an unknown unit {unit:?}: use ms, s, m, h or d"
            ))
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("2000/s"), Ok(2000.0));
        assert_eq!(parse_rate("600/m"), Ok(10.0));
        assert_eq!(parse_rate("50"), Ok(50.0));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("5/h").unwrap_err().contains("unknown unit"));
    }
}
