//! Capability bits of both sides, with the names used in the REST API.

/// Agent capability bits (AgentCapabilities) and their names.
pub const AGENT_CAPABILITIES: &[(u64, &str)] = &[
    (0x1, "ReportsStatus"),
    (0x2, "AcceptsRemoteConfig"),
    (0x4, "ReportsEffectiveConfig"),
    (0x8, "AcceptsPackages"),
    (0x10, "ReportsPackageStatuses"),
    (0x20, "ReportsOwnTraces"),
    (0x40, "ReportsOwnMetrics"),
    (0x80, "ReportsOwnLogs"),
    (0x100, "AcceptsOpAMPConnectionSettings"),
    (0x200, "AcceptsOtherConnectionSettings"),
    (0x400, "AcceptsRestartCommand"),
    (0x800, "ReportsHealth"),
    (0x1000, "ReportsRemoteConfig"),
    (0x2000, "ReportsHeartbeat"),
    (0x4000, "ReportsAvailableComponents"),
    (0x8000, "ReportsConnectionSettingsStatus"),
];

pub const REPORTS_STATUS: u64 = 0x1;
pub const ACCEPTS_REMOTE_CONFIG: u64 = 0x2;
pub const REPORTS_EFFECTIVE_CONFIG: u64 = 0x4;
pub const ACCEPTS_PACKAGES: u64 = 0x8;
pub const REPORTS_PACKAGE_STATUSES: u64 = 0x10;
pub const REPORTS_OWN_TRACES: u64 = 0x20;
pub const REPORTS_OWN_METRICS: u64 = 0x40;
pub const REPORTS_OWN_LOGS: u64 = 0x80;
pub const ACCEPTS_OPAMP_CONNECTION_SETTINGS: u64 = 0x100;
pub const ACCEPTS_RESTART_COMMAND: u64 = 0x400;
pub const REPORTS_HEALTH: u64 = 0x800;
pub const REPORTS_REMOTE_CONFIG: u64 = 0x1000;
pub const REPORTS_HEARTBEAT: u64 = 0x2000;
pub const REPORTS_AVAILABLE_COMPONENTS: u64 = 0x4000;
pub const REPORTS_CONNECTION_SETTINGS_STATUS: u64 = 0x8000;

/// Server capability bits (ServerCapabilities).
pub const SERVER_ACCEPTS_STATUS: u64 = 0x1;
pub const SERVER_OFFERS_REMOTE_CONFIG: u64 = 0x2;
pub const SERVER_ACCEPTS_EFFECTIVE_CONFIG: u64 = 0x4;
pub const SERVER_OFFERS_PACKAGES: u64 = 0x8;
pub const SERVER_ACCEPTS_PACKAGES_STATUS: u64 = 0x10;
pub const SERVER_OFFERS_CONNECTION_SETTINGS: u64 = 0x20;

/// ServerToAgent flags.
pub const FLAG_REPORT_FULL_STATE: u64 = 0x1;
/// ServerToAgent flag: send the full list of available components.
pub const FLAG_REPORT_AVAILABLE_COMPONENTS: u64 = 0x2;
/// AgentToServer flags.
pub const FLAG_REQUEST_INSTANCE_UID: u64 = 0x1;

/// The names of the capability bits set in `bits`; unknown bits are skipped.
pub fn agent_capability_names(bits: u64) -> Vec<String> {
    AGENT_CAPABILITIES
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| (*name).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_bits() {
        assert_eq!(
            agent_capability_names(0x1 | 0x2 | 0x1_0000_0000),
            vec!["ReportsStatus", "AcceptsRemoteConfig"]
        );
    }
}
