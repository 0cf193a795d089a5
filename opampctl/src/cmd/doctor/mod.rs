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
//! trend). `report` has the check and report types and their rendering.

mod connect;
mod database;
mod local;
mod memory;
mod report;
mod server;
mod tls;

pub use report::{Check, HostInfo, MemorySample, Report, Summary, Verdict};

use crate::cli::{DoctorArgs, TroubleshootCmd};
use crate::client::Client;
use crate::context::Settings;
use crate::error::Result;
use opamp_proto::api::HealthReport;

/// `opampctl doctor`: every check.
pub async fn doctor(settings: &Settings, client: &Client, args: &DoctorArgs) -> Result<()> {
    let mut diagnosis = Diagnosis::new(settings, client, args);
    diagnosis.check_config();
    diagnosis.check_data_dir();
    diagnosis.check_database_file();
    diagnosis.check_port().await;
    diagnosis.check_server().await;
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
    report::finish(settings, "doctor", diagnosis, Vec::new())
}

/// `opampctl troubleshoot …`: the checks of one runbook procedure.
pub async fn troubleshoot(
    settings: &Settings,
    client: &Client,
    command: TroubleshootCmd,
) -> Result<()> {
    match command {
        TroubleshootCmd::Startup(args) => {
            let mut diagnosis = Diagnosis::new(settings, client, &args);
            diagnosis.check_config();
            diagnosis.check_data_dir();
            diagnosis.check_database_file();
            diagnosis.check_port().await;
            diagnosis.check_server().await;
            report::finish(settings, "troubleshoot startup", diagnosis, Vec::new())
        }
        TroubleshootCmd::AgentConnect(args) => {
            let mut diagnosis = Diagnosis::new(settings, client, &args);
            diagnosis.check_server().await;
            diagnosis.check_tls().await;
            diagnosis.check_opamp_http().await;
            diagnosis.check_opamp_ws().await;
            diagnosis.check_agent_secret().await;
            diagnosis.check_agents();
            report::finish(
                settings,
                "troubleshoot agent-connect",
                diagnosis,
                Vec::new(),
            )
        }
        TroubleshootCmd::DbPool(args) => {
            let mut diagnosis = Diagnosis::new(settings, client, &args);
            diagnosis.check_server().await;
            if !diagnosis.server_down() {
                diagnosis.check_db_pool().await;
            }
            diagnosis.check_database_file();
            report::finish(settings, "troubleshoot db-pool", diagnosis, Vec::new())
        }
        TroubleshootCmd::Memory(args) => memory::trend(settings, client, &args).await,
    }
}

/// The state of one diagnosis, shared by its checks: what the server said,
/// whether it answered, and the checks so far.
struct Diagnosis<'a> {
    settings: &'a Settings,
    client: &'a Client,
    args: &'a DoctorArgs,
    /// `None` until the server check ran.
    reachable: Option<bool>,
    health: Option<HealthReport>,
    checks: Vec<Check>,
}

impl<'a> Diagnosis<'a> {
    fn new(settings: &'a Settings, client: &'a Client, args: &'a DoctorArgs) -> Diagnosis<'a> {
        Diagnosis {
            settings,
            client,
            args,
            reachable: None,
            health: None,
            checks: Vec::new(),
        }
    }

    fn push(&mut self, check: Check) {
        self.checks.push(check);
    }

    /// True once the server check found nothing answering.
    fn server_down(&self) -> bool {
        self.reachable == Some(false)
    }

    /// The OpAMP endpoint: --opamp-url, or --opamp-path on the server.
    fn opamp_url(&self) -> String {
        match &self.args.opamp_url {
            Some(url) => url.clone(),
            None => format!("{}{}", self.client.base, self.args.opamp_path),
        }
    }
}
