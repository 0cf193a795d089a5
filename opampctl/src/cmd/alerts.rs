//! `opampctl alerts rules`: the Prometheus rules shipped in deploy/prometheus.

use crate::error::Result;

/// deploy/prometheus/rules.yml, as built into this binary.
pub const RULES: &str = include_str!("../../../deploy/prometheus/rules.yml");

/// Prints the rules (nothing with -q: the exit status says they are built in).
pub fn rules(quiet: bool) -> Result<()> {
    if !quiet {
        crate::output::out(RULES);
    }
    Ok(())
}
