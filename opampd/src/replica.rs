//! This process's identity among several replicas: the name `/health`,
//! `/health/ready`, `/metrics` and the start-up log line show, so that an
//! operator behind a load balancer can tell which replica answered.

/// Who this replica is and which database backend it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// `cluster.replica_id`, else the host name, else `opampd-<random>`.
    pub id: String,
    /// `sqlite` or `postgresql`.
    pub backend: &'static str,
}

/// Longest replica id accepted (a DNS name's length).
const MAX_ID_LEN: usize = 253;

impl Replica {
    /// The configured id, or the host name, or `opampd-<8 random hex digits>`
    /// when the host name is not usable as an id.
    pub fn new(configured: Option<&str>, backend: &'static str) -> Replica {
        let id = configured
            .map(str::to_owned)
            .or_else(|| host_name().filter(|name| check_id(name).is_ok()))
            .unwrap_or_else(random_id);
        Replica { id, backend }
    }
}

/// Why `id` cannot name a replica, or Ok. Ids are label values in metrics
/// and words in logs: letters, digits, `.`, `_`, `-` and `:` only.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(
            "is empty: leave it unset to use the host name, or set a name such as opampd-1".into(),
        );
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!(
            "is {} characters long: at most {MAX_ID_LEN} are allowed",
            id.len()
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
    {
        return Err(format!(
            "contains {bad:?}: use letters, digits, '.', '_', '-' and ':' only (e.g. opampd-1)"
        ));
    }
    Ok(())
}

/// The kernel's host name (the pod name in Kubernetes, the container's
/// host name in Compose).
pub(crate) fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

fn random_id() -> String {
    let digits = uuid::Uuid::new_v4().simple().to_string();
    format!("opampd-{}", &digits[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_id_wins() {
        let replica = Replica::new(Some("eu-1"), "sqlite");
        assert_eq!(replica.id, "eu-1");
        assert_eq!(replica.backend, "sqlite");
    }

    #[test]
    fn without_a_configured_id_the_host_name_or_a_random_one() {
        let id = Replica::new(None, "sqlite").id;
        assert!(check_id(&id).is_ok(), "{id:?}");
        match host_name().filter(|n| check_id(n).is_ok()) {
            Some(host) => assert_eq!(id, host),
            None => assert!(id.starts_with("opampd-") && id.len() == 15, "{id:?}"),
        }
        let random = random_id();
        assert!(random.starts_with("opampd-") && check_id(&random).is_ok());
        assert_ne!(random, random_id(), "random ids differ");
    }

    #[test]
    fn bad_ids_are_refused_with_the_reason() {
        assert!(check_id("").unwrap_err().contains("leave it unset"));
        assert!(check_id("a b").unwrap_err().contains("' '"));
        assert!(check_id("x\"y").unwrap_err().contains("letters, digits"));
        assert!(check_id(&"a".repeat(254))
            .unwrap_err()
            .contains("at most 253"));
        for good in ["opampd-1", "pod.ns.svc", "host_2", "10.0.0.1:8080"] {
            assert!(check_id(good).is_ok(), "{good}");
        }
    }
}
