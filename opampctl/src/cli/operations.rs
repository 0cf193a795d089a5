//! Operations on a deployment: backup, restore, logs, restart, doctor,
//! troubleshoot and db.

use super::parse::parse_duration;
use super::texts::DB_MIGRATE_ABOUT;
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Directory for the backup files (it must exist, unless --create-dir)
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub dir: PathBuf,
    /// Create --dir (and its parents) when it does not exist
    #[arg(long)]
    pub create_dir: bool,
    /// Delete backups in --dir older than N days, N at least 1 (only files named opamp_YYYYmmdd_HHMMSS.db.gz, .sql.gz or .packages.tar and their .sha256)
    #[arg(long, value_name = "N")]
    pub retention_days: Option<u64>,
    /// Read the written file back: checksum, decompression, SQLite integrity and schema (a PostgreSQL dump: header, schema statements of its version unchanged, every table's block complete with its row count, end line); with --with-packages also every package file's SHA-256
    #[arg(long)]
    pub verify: bool,
    /// Back up the database file in this opampd data directory instead of asking the server
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Also back up the hosted package files the catalogue names, in opamp_YYYYmmdd_HHMMSS.packages.tar beside the database backup (with its .sha256); without it the catalogue is backed up but not the files' bytes
    #[arg(long)]
    pub with_packages: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Backup file: opamp_*.db.gz or opamp_*.sql.gz (or uncompressed); the hosted package files in opamp_*.packages.tar beside it are put back too
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
    #[command(long_about = DB_MIGRATE_ABOUT)]
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
