//! `opampctl alerts rules`: the Prometheus rules shipped in deploy/prometheus.

use crate::error::Result;

/// deploy/prometheus/rules.yml, as built into this binary.
pub const RULES: &str = include_str!("../../../deploy/prometheus/rules.yml");

pub fn rules() -> Result<()> {
    crate::output::out(RULES);
    Ok(())
}
