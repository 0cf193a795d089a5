//! The one way opampctl turns what the user typed into an agent's uid: a
//! full instance uid, or a unique prefix of one (`0190c1e2`, with or without
//! the dashes).

use crate::client::{enc, Client};
use crate::error::{CtlError, Result};
use opamp_proto::api::{Agent, Page};

/// How many candidates an ambiguous prefix names.
const CANDIDATES: usize = 10;

/// The canonical uid `text` names. A full uid is taken as it is (the server
/// says whether it exists); a prefix must match exactly one agent: none is
/// "no agent" (exit 1), several a usage error (exit 2) naming them.
pub async fn agent_uid(client: &Client, text: &str) -> Result<String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(CtlError::usage("the agent uid is empty"));
    }
    if let Some(uid) = opamp_proto::parse_uid(text) {
        return Ok(opamp_proto::uid_string(&uid));
    }
    let prefix = prefix_of(text)?;
    let page: Page<Agent> = client
        .get(&format!(
            "/api/v1/agents?uid_prefix={}&limit={CANDIDATES}",
            enc(&prefix)
        ))
        .await?;
    match page.items.as_slice() {
        [] => Err(CtlError::failed(format!(
            "no agent has an instance uid starting with {prefix} (see `opampctl agents list`)"
        ))),
        [only] => Ok(only.instance_uid.clone()),
        several => {
            let mut list = several
                .iter()
                .map(|agent| agent.instance_uid.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let more = page.total.saturating_sub(several.len() as u64);
            if more > 0 {
                list.push_str(&format!(" and {more} more"));
            }
            Err(CtlError::usage(format!(
                "the uid prefix {prefix} is ambiguous: {} agents match ({list}); type more of the uid",
                page.total
            )))
        }
    }
}

/// A prefix of a canonical uid (lowercase, dashes where the uid has them),
/// or a usage error for text no uid can start with.
fn prefix_of(text: &str) -> Result<String> {
    let lower = text.to_ascii_lowercase();
    let well_formed = lower.len() <= 36 && lower.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if !well_formed {
        return Err(CtlError::usage(format!(
            "{text:?} is not an instance uid: expected a UUID like 0190c1e2-7dec-71d0-a765-00a0c91e6bf6, or a unique prefix of one (see `opampctl agents list`)"
        )));
    }
    if lower.contains('-') || lower.len() <= 8 {
        return Ok(lower);
    }
    // Hex digits only: put the dashes where the canonical form has them.
    let mut out = String::with_capacity(lower.len() + 4);
    for (i, c) in lower.chars().enumerate() {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push('-');
        }
        out.push(c);
    }
    if out.len() > 36 {
        return Err(CtlError::usage(format!(
            "{text:?} is not an instance uid: it has more than 32 hex digits"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::prefix_of;

    #[test]
    fn prefixes_take_the_canonical_form() {
        assert_eq!(prefix_of("0190C1").unwrap(), "0190c1");
        assert_eq!(prefix_of("0190c1e27dec").unwrap(), "0190c1e2-7dec");
        assert_eq!(prefix_of("0190c1e2-7d").unwrap(), "0190c1e2-7d");
        assert_eq!(
            prefix_of("0190c1e27dec71d0a76500a0c91e6bf").unwrap(),
            "0190c1e2-7dec-71d0-a765-00a0c91e6bf"
        );
        assert!(prefix_of("not-a-uid")
            .unwrap_err()
            .message
            .contains("not an instance uid"));
        assert!(prefix_of("0190c1e27dec71d0a76500a0c91e6bf6aa").is_err());
    }
}
