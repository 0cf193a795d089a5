//! `opampctl doctor` and `opampctl troubleshoot startup|agent-connect|db-pool|memory`:
//! the runbook's checks, each with a verdict (ok, warn, fail, skip) and a
//! remedy. `-o json` gives a report to paste into a bug report.
//!
//! Layout: this file has the entry points (which checks each command runs,
//! in which order) and [`Diagnosis`], the state the checks share. The checks
//! are methods of `Diagnosis`, one file per group: `local` (config file and
//! data directory), `database` (the database file, read pool, slow queries,
//! size), `server` (port, health and token), `tls`, `connect` (OpAMP over HTTP and
//! WebSocket, agent secrets, agents), `memory` (the memory report and its
//! trend). `target` picks the server (--server, or the address of the
//! opampd config file of --config), the data directory (--data-dir, or the
//! data_dir of --config) and, when none is given, the token (the data
//! directory's admin.token); `report` has the check and report types and
//! their rendering.

mod connect;
mod database;
mod local;
mod memory;
mod postgres;
mod report;
mod server;
mod target;
mod tls;

pub use report::{Check, HostInfo, MemorySample, Report, Summary, Verdict};

use crate::cli::{DoctorArgs, TroubleshootCmd};
use crate::client::Client;
use crate::context::Settings;
use crate::error::Result;
use opamp_proto::api::HealthReport;
use target::Target;

/// `opampctl doctor`: every check.
pub async fn doctor(settings: &Settings, client: &Client, args: &DoctorArgs) -> Result<()> {
    let target = Target::new(settings, client, args)?;
    let mut diagnosis = Diagnosis::new(&target, args, Procedure::Doctor);
    diagnosis.check_config();
    diagnosis.check_data_dir();
    diagnosis.check_port().await;
    diagnosis.check_server().await;
    diagnosis.check_database_file();
    diagnosis.check_token().await;
    diagnosis.check_tls().await;
    diagnosis.check_opamp_http().await;
    diagnosis.check_opamp_ws().await;
    diagnosis.check_agent_secret().await;
    diagnosis.check_agents();
    if !diagnosis.server_down() {
        diagnosis.check_db_pool().await;
        diagnosis.check_memory().await;
    }
    report::finish(diagnosis, Vec::new())
}

/// `opampctl troubleshoot …`: the checks of one runbook procedure.
pub async fn troubleshoot(
    settings: &Settings,
    client: &Client,
    command: TroubleshootCmd,
) -> Result<()> {
    match command {
        TroubleshootCmd::Startup(args) => {
            let target = Target::new(settings, client, &args)?;
            let mut diagnosis = Diagnosis::new(&target, &args, Procedure::Startup);
            diagnosis.check_config();
            diagnosis.check_data_dir();
            diagnosis.check_port().await;
            diagnosis.check_server().await;
            diagnosis.check_database_file();
            report::finish(diagnosis, Vec::new())
        }
        TroubleshootCmd::AgentConnect(args) => {
            let target = Target::new(settings, client, &args)?;
            let mut diagnosis = Diagnosis::new(&target, &args, Procedure::AgentConnect);
            diagnosis.check_server().await;
            diagnosis.check_tls().await;
            diagnosis.check_opamp_http().await;
            diagnosis.check_opamp_ws().await;
            diagnosis.check_agent_secret().await;
            diagnosis.check_agents();
            report::finish(diagnosis, Vec::new())
        }
        TroubleshootCmd::DbPool(args) => {
            let target = Target::new(settings, client, &args)?;
            let mut diagnosis = Diagnosis::new(&target, &args, Procedure::DbPool);
            diagnosis.check_server().await;
            if !diagnosis.server_down() {
                diagnosis.check_db_pool().await;
            }
            diagnosis.check_database_file();
            report::finish(diagnosis, Vec::new())
        }
        TroubleshootCmd::Memory(args) => memory::trend(settings, client, &args).await,
    }
}

/// The command a diagnosis belongs to: its name in the report, and which
/// other command its remedies may send the operator to (never itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Procedure {
    Doctor,
    Startup,
    AgentConnect,
    DbPool,
    Memory,
}

impl Procedure {
    fn name(self) -> &'static str {
        match self {
            Procedure::Doctor => "doctor",
            Procedure::Startup => "troubleshoot startup",
            Procedure::AgentConnect => "troubleshoot agent-connect",
            Procedure::DbPool => "troubleshoot db-pool",
            Procedure::Memory => "troubleshoot memory",
        }
    }
}

/// The state of one diagnosis, shared by its checks: what the server said,
/// whether it answered, and the checks so far.
struct Diagnosis<'a> {
    settings: &'a Settings,
    client: &'a Client,
    args: &'a DoctorArgs,
    procedure: Procedure,
    /// Where agents send OpAMP.
    opamp_url: String,
    /// How --config gave the server address (for the config check).
    target_note: Option<String>,
    /// --data-dir, else the `data_dir` of --config.
    data_dir: Option<std::path::PathBuf>,
    /// How --config gave the data directory (for the data-dir check).
    data_dir_note: Option<String>,
    /// How the data directory gave the token (for the token check).
    token_note: Option<String>,
    /// Set when --config puts opampd on PostgreSQL.
    postgres_note: Option<String>,
    /// `None` until the server check ran.
    reachable: Option<bool>,
    /// Set by the server check when something other than opampd answers.
    not_opampd: bool,
    /// Set by the port check: who holds the port, when it is not opampd.
    port_holder: Option<String>,
    health: Option<HealthReport>,
    checks: Vec<Check>,
}

impl<'a> Diagnosis<'a> {
    fn new(target: &'a Target, args: &'a DoctorArgs, procedure: Procedure) -> Diagnosis<'a> {
        Diagnosis {
            settings: &target.settings,
            client: &target.client,
            args,
            procedure,
            opamp_url: target.opamp_url.clone(),
            target_note: target.note.clone(),
            data_dir: target.data_dir.clone(),
            data_dir_note: target.data_dir_note.clone(),
            token_note: target.token_note.clone(),
            postgres_note: target.postgres_note.clone(),
            reachable: None,
            not_opampd: false,
            port_holder: None,
            health: None,
            checks: Vec::new(),
        }
    }

    fn push(&mut self, check: Check) {
        self.checks.push(check);
    }

    /// True once the server check found nothing answering, or something
    /// that is not opampd: the checks that talk to opampd are skipped.
    fn server_down(&self) -> bool {
        self.reachable == Some(false) || self.not_opampd
    }

    /// Why the checks that talk to opampd are skipped.
    fn down_reason(&self) -> &'static str {
        if self.not_opampd {
            "what answers there is not opampd"
        } else {
            "the server is unreachable"
        }
    }

    /// The OpAMP endpoint: --opamp-url, else the server (or the agent
    /// listener of --config) and the OpAMP path.
    fn opamp_url(&self) -> String {
        self.opamp_url.clone()
    }
}
