//! `opampctl agents`.

use clap::{Args, Subcommand, ValueEnum};

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
