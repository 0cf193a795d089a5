//! `database.url`: parsing with errors that name the setting and never show
//! the password, and the redacted form used wherever the URL is printed.

use std::str::FromStr;

/// The setting the URL comes from, as errors name it.
const SETTING: &str = "database.url";
const EXAMPLE: &str = "postgres://opampd:PASSWORD@db.example.com:5432/opampd";

/// Query parameters accepted after `?`.
const PARAMETERS: &[&str] = &["sslmode", "application_name", "connect_timeout"];

/// A checked PostgreSQL URL.
#[derive(Clone)]
pub struct DatabaseUrl {
    config: tokio_postgres::Config,
    redacted: String,
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl DatabaseUrl {
    /// Parses `postgres://user:password@host:port/database[?sslmode=disable]`.
    pub fn parse(url: &str) -> anyhow::Result<DatabaseUrl> {
        let shown = redact(url);
        let refuse = |what: &str| {
            anyhow::anyhow!(
                "{SETTING} {shown:?} is not usable: {what}; write it as \
                 postgres://USER:PASSWORD@HOST:PORT/DATABASE, e.g. {EXAMPLE}"
            )
        };
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| refuse("it must start with postgres:// or postgresql://"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, database) = rest
            .split_once('/')
            .ok_or_else(|| refuse("the database name is missing (…/DATABASE at the end)"))?;
        if database.is_empty() || database.contains('/') {
            return Err(refuse("the database name is missing or contains '/'"));
        }
        let (user, host) = authority
            .rsplit_once('@')
            .ok_or_else(|| refuse("the user name is missing (USER@ before the host)"))?;
        let user_name = user.split_once(':').map_or(user, |(name, _)| name);
        if user_name.is_empty() {
            return Err(refuse("the user name is empty"));
        }
        let host_name = match host.strip_prefix('[') {
            Some(bracketed) => bracketed.split_once(']').map_or("", |(name, _)| name),
            None => host.split_once(':').map_or(host, |(name, _)| name),
        };
        if host_name.is_empty() || host.contains(',') {
            return Err(refuse("it needs exactly one host name or address"));
        }
        let port = match host.rsplit_once(':') {
            Some((_, port)) if !host.ends_with(']') => Some(port),
            _ => None,
        };
        if let Some(port) = port {
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(refuse(&format!(
                    "the port {port:?} is not a number from 1 to 65535"
                )));
            }
        }
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !PARAMETERS.contains(&key) {
                return Err(refuse(&format!(
                    "the parameter {key:?} is not supported (supported: {})",
                    PARAMETERS.join(", ")
                )));
            }
            if key == "sslmode" && !matches!(value, "disable" | "prefer") {
                return Err(refuse(&format!(
                    "sslmode={value} is not supported: this opampd connects without TLS \
                     (sslmode=disable or prefer); reach a TLS-only server through a local proxy"
                )));
            }
        }
        let config = tokio_postgres::Config::from_str(url).map_err(|e| refuse(&e.to_string()))?;
        Ok(DatabaseUrl {
            config,
            redacted: shown,
        })
    }

    /// The connection settings for the driver.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The URL with its password replaced by `********`.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }
}

/// `url` with the password (between `user:` and `@`) replaced by `********`;
/// text that is not a URL with a password comes back unchanged.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let start = scheme_end + 3;
    let authority_end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let Some(at) = url[start..authority_end].rfind('@').map(|i| start + i) else {
        return url.to_string();
    };
    match url[start..at].find(':') {
        Some(colon) => format!("{}********{}", &url[..start + colon + 1], &url[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_form() {
        let url = DatabaseUrl::parse("postgres://opampd:s3cr%40t@127.0.0.1:5433/opamp").unwrap();
        assert_eq!(
            url.redacted(),
            "postgres://opampd:********@127.0.0.1:5433/opamp"
        );
        assert_eq!(url.config().get_user(), Some("opampd"));
        assert_eq!(url.config().get_password(), Some(&b"s3cr@t"[..]));
        assert_eq!(url.config().get_dbname(), Some("opamp"));
        assert_eq!(url.config().get_ports(), &[5433]);
        assert!(DatabaseUrl::parse("postgresql://u@db/opamp?sslmode=disable").is_ok());
        assert!(DatabaseUrl::parse("postgres://u:p@[::1]:5432/opamp").is_ok());
    }

    #[test]
    fn refusals_name_the_setting_and_hide_the_password() {
        for (url, reason) in [
            ("mysql://u:hunter2@db/opamp", "must start with postgres://"),
            ("postgres://u:hunter2@db", "database name is missing"),
            ("postgres://db/opamp", "user name is missing"),
            ("postgres://:hunter2@db/opamp", "user name is empty"),
            (
                "postgres://u:hunter2@db:99999/opamp",
                "not a number from 1 to 65535",
            ),
            ("postgres://u:hunter2@/opamp", "exactly one host"),
            ("postgres://u:hunter2@a,b/opamp", "exactly one host"),
            (
                "postgres://u:hunter2@db/opamp?sslmode=require",
                "sslmode=require is not supported",
            ),
            (
                "postgres://u:hunter2@db/opamp?target_session_attrs=any",
                "\"target_session_attrs\" is not supported",
            ),
        ] {
            let message = format!("{:#}", DatabaseUrl::parse(url).unwrap_err());
            assert!(message.starts_with("database.url "), "{message}");
            assert!(message.contains(reason), "{url}: {message}");
            assert!(message.contains(EXAMPLE), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
    }

    #[test]
    fn redacts_only_the_password() {
        assert_eq!(redact("postgres://u:p@h/d"), "postgres://u:********@h/d");
        assert_eq!(redact("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(
            redact("postgres://u:p:q@x@h/d?a=b@c"),
            "postgres://u:********@h/d?a=b@c"
        );
        assert_eq!(redact("not a url"), "not a url");
    }
}
