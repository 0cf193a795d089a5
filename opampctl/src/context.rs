//! Resolves the global options into [`Settings`]: flag > environment >
//! config-file context > default.
//!
//! The config file (`OPAMPCTL_CONFIG`, else `$XDG_CONFIG_HOME/opampctl/config.yaml`,
//! else `~/.config/opampctl/config.yaml`) holds named contexts:
//!
//! ```yaml
//! current-context: prod
//! contexts:
//!   prod:
//!     server: https://opamp.example.com:8080
//!     token-file: ~/.config/opampctl/prod.token
//!   staging:
//!     server: https://staging.example.com:8080
//!     token: eyJ…   # a session stored by `opampctl login`
//! ```
//!
//! A context's `token` (a login session) is used before its `token-file`.
//! `opampctl login` and `logout` rewrite the file owner-only ([`save_config_file`]).

use crate::cli::{Format, Global};
use crate::error::{CtlError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Token files tried, in order, when none is given and the server is on this host.
pub const DEFAULT_TOKEN_FILES: &[&str] = &["./data/admin.token", "/var/lib/opampd/admin.token"];

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, ContextEntry>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ContextEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// A login session token (`opampctl login`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Everything a command needs to know about where and how to talk and print.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base URL without a trailing slash.
    pub server: String,
    /// Every server --server named (repeated or as a comma list), `server`
    /// first: the replicas `opampctl bench` drives. Just `server` otherwise.
    pub servers: Vec<String>,
    /// Whether --server, OPAMPCTL_SERVER or the context named the server
    /// (else it is [`DEFAULT_SERVER`]).
    pub server_given: bool,
    pub token: Option<String>,
    /// Where the token came from, for error messages.
    pub token_source: String,
    pub format: Format,
    pub quiet: bool,
    pub color: bool,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

impl Settings {
    /// Human output (tables, summaries) rather than JSON/YAML.
    pub fn human(&self) -> bool {
        matches!(self.format, Format::Table | Format::Wide)
    }

    /// Progress bars: only on a terminal, never with -q or machine output.
    pub fn progress(&self) -> bool {
        self.human() && !self.quiet && std::io::stderr().is_terminal()
    }

    /// Whether the server is on this host.
    pub fn server_is_local(&self) -> bool {
        is_local_url(&self.server)
    }
}

fn expand_home(p: &Path) -> PathBuf {
    match p.to_str().and_then(|s| s.strip_prefix("~/")) {
        Some(rest) => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(rest),
            None => p.to_path_buf(),
        },
        None => p.to_path_buf(),
    }
}

/// The config file's path and whether it was named explicitly.
pub fn config_path() -> Option<(PathBuf, bool)> {
    if let Some(p) = std::env::var_os("OPAMPCTL_CONFIG").filter(|p| !p.is_empty()) {
        return Some((expand_home(Path::new(&p)), true));
    }
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(x).join("opampctl/config.yaml"), false));
    }
    std::env::var_os("HOME").map(|h| (PathBuf::from(h).join(".config/opampctl/config.yaml"), false))
}

pub fn load_config_file() -> Result<Option<(PathBuf, ConfigFile)>> {
    let Some((path, explicit)) = config_path() else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(None),
        Err(e) => {
            return Err(CtlError::usage(format!(
                "cannot read the opampctl config file {} (OPAMPCTL_CONFIG): {e}",
                path.display()
            )))
        }
    };
    if text.trim().is_empty() {
        return Ok(Some((path, ConfigFile::default())));
    }
    let cfg: ConfigFile = serde_yaml::from_str(&text).map_err(|e| {
        CtlError::usage(format!(
            "opampctl config file {}: {e} (expected current-context and contexts: {{NAME: {{server, token-file, ca-file}}}})",
            path.display()
        ))
    })?;
    Ok(Some((path, cfg)))
}

/// Writes the config file owner-only (0600) under a new temporary name
/// (never through a symlink), then renames it over the old file; creates its
/// directory (0700) when needed.
pub fn save_config_file(path: &Path, file: &ConfigFile) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::DirBuilderExt;
    let failed = |e: &dyn std::fmt::Display| {
        CtlError::failed(format!(
            "cannot write the opampctl config file {}: {e}",
            path.display()
        ))
    };
    let text = serde_yaml::to_string(file).map_err(|e| failed(&e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| failed(&e))?;
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("config.yaml");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut out = crate::files::create_private(&tmp)?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(failed(&e));
    }
    Ok(())
}

/// Whether the URL's host is this host: `localhost`, a loopback address
/// (`127.0.0.0/8`, `::1`, `::ffff:127.x.y.z`) or the unspecified one
/// (`0.0.0.0`, `::`, which reach this host). A name is not resolved:
/// `127.example.com` is somebody else's.
pub fn is_local_url(url: &str) -> bool {
    let host = url::host(url);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .map(|ip| ip.to_canonical())
        .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

/// Tiny URL helpers (no URL crate needed for what opampctl does).
pub mod url {
    /// `http` or `https` (lowercase); empty when the URL has no scheme.
    pub fn scheme(url: &str) -> String {
        url.split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// `host:port` part, without user info.
    pub fn authority(url: &str) -> String {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let auth = rest.split(['/', '?', '#']).next().unwrap_or("");
        auth.rsplit_once('@').map_or(auth, |(_, a)| a).to_string()
    }

    /// Host without port or brackets.
    pub fn host(url: &str) -> String {
        let a = authority(url);
        if let Some(rest) = a.strip_prefix('[') {
            return rest.split(']').next().unwrap_or("").to_string();
        }
        a.split(':').next().unwrap_or("").to_ascii_lowercase()
    }

    /// Port, or the scheme's default.
    pub fn port(url: &str) -> Option<u16> {
        let a = authority(url);
        let after = match a.rfind(']') {
            Some(i) => &a[i + 1..],
            None => &a[..],
        };
        match after.rsplit_once(':') {
            Some((_, p)) if !p.is_empty() => p.parse().ok(),
            _ => match scheme(url).as_str() {
                "https" | "wss" => Some(443),
                "http" | "ws" => Some(80),
                _ => None,
            },
        }
    }
}

/// Checks a server URL given by the user.
pub fn check_server_url(url: &str, source: &str) -> Result<String> {
    let trimmed = url.trim().trim_end_matches('/').to_string();
    let scheme = url::scheme(&trimmed);
    if scheme != "http" && scheme != "https" {
        return Err(CtlError::usage(format!(
            "{source} {url:?} is not an http:// or https:// URL: use e.g. http://127.0.0.1:8080"
        )));
    }
    if url::host(&trimmed).is_empty() {
        return Err(CtlError::usage(format!(
            "{source} {url:?} has no host: use e.g. http://127.0.0.1:8080"
        )));
    }
    Ok(trimmed)
}

/// The servers --server (or OPAMPCTL_SERVER) names, checked: every value
/// of a repeated flag, each split at commas. Empty without the flag.
pub fn given_servers(g: &Global) -> Result<Vec<String>> {
    g.server
        .iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| check_server_url(url, "--server"))
        .collect()
}

/// The error for several servers given to a command that talks to one.
pub fn several_servers(count: usize) -> CtlError {
    CtlError::usage(format!(
        "--server names {count} servers: only opampctl bench drives several replicas; give this command one --server"
    ))
}

fn read_token_file(path: &Path, source: &str) -> Result<String> {
    let path = expand_home(path);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        CtlError::usage(format!(
            "cannot read the token file {} ({source}): {e}",
            path.display()
        ))
    })?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(CtlError::usage(format!(
            "the token file {} ({source}) is empty",
            path.display()
        )));
    }
    Ok(token)
}

fn color_wanted(no_color_flag: bool) -> bool {
    if no_color_flag {
        return false;
    }
    if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
        return false;
    }
    if std::env::var("TERM").is_ok_and(|t| t == "dumb") {
        return false;
    }
    std::io::stdout().is_terminal()
}

/// Whether `flag` was given on the command line (not through the environment).
fn flag_given(flag: &str) -> bool {
    std::env::args()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
}

/// The context `opampctl login` and `logout` work on, and the file it is
/// (or will be) in.
pub struct SessionContext {
    pub path: PathBuf,
    pub file: ConfigFile,
    /// --context (or OPAMPCTL_CONTEXT), else the file's current context, else `default`.
    pub name: String,
}

impl SessionContext {
    /// The context as stored, if it exists.
    pub fn entry(&self) -> Option<&ContextEntry> {
        self.file.contexts.get(&self.name)
    }
}

/// Finds the context login and logout work on; unlike [`resolve`], the
/// context and the file need not exist yet.
pub fn session_context(g: &Global) -> Result<SessionContext> {
    let (path, _) = config_path().ok_or_else(|| {
        CtlError::usage(
            "neither OPAMPCTL_CONFIG nor HOME is set: there is no place for opampctl's config file",
        )
    })?;
    // A file that does not exist yet is the one login creates.
    let file = match path.exists() {
        true => load_config_file()?
            .map(|(_, file)| file)
            .unwrap_or_default(),
        false => ConfigFile::default(),
    };
    let name = g
        .context
        .clone()
        .or_else(|| file.current_context.clone())
        .unwrap_or_else(|| "default".to_string());
    Ok(SessionContext { path, file, name })
}

/// Settings to reach the server of `entry` (or --server, which comes first)
/// with `token` as the only credential.
pub fn settings_with(g: &Global, entry: &ContextEntry, token: Option<String>) -> Result<Settings> {
    let given = given_servers(g)?;
    if given.len() > 1 {
        return Err(several_servers(given.len()));
    }
    let server = match (given.first(), &entry.server) {
        (Some(s), _) => s.clone(),
        (None, Some(s)) => check_server_url(s, "the context's server")?,
        (None, None) => DEFAULT_SERVER.to_string(),
    };
    Ok(Settings {
        server_given: !given.is_empty() || entry.server.is_some(),
        servers: vec![server.clone()],
        server,
        token_source: "the login session".to_string(),
        token,
        format: g.output,
        quiet: g.quiet,
        color: color_wanted(g.no_color),
        ca_file: g
            .ca_file
            .clone()
            .or(entry.ca_file.as_deref().map(expand_home)),
        timeout: g.request_timeout,
    })
}

/// Builds the settings from the parsed global options.
pub fn resolve(g: &Global) -> Result<Settings> {
    let file = load_config_file()?;
    let mut ctx = ContextEntry::default();
    let mut ctx_name = None;
    if let Some((path, cfg)) = &file {
        let name = g.context.clone().or_else(|| cfg.current_context.clone());
        if let Some(name) = name {
            match cfg.contexts.get(&name) {
                Some(c) => {
                    ctx = c.clone();
                    ctx_name = Some(name);
                }
                None => {
                    let known: Vec<&str> = cfg.contexts.keys().map(String::as_str).collect();
                    return Err(CtlError::usage(format!(
                        "context {name:?} is not in {} (contexts there: {})",
                        path.display(),
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    )));
                }
            }
        }
    } else if let Some(name) = &g.context {
        return Err(CtlError::usage(format!(
            "--context {name:?} given but there is no opampctl config file (set OPAMPCTL_CONFIG or create ~/.config/opampctl/config.yaml)"
        )));
    }
    let given = given_servers(g)?;
    let server = match (given.first(), &ctx.server) {
        (Some(s), _) => s.clone(),
        (None, Some(s)) => check_server_url(s, "the context's server")?,
        (None, None) => DEFAULT_SERVER.to_string(),
    };
    // A flag beats an environment variable: --token-file on the command line
    // wins over OPAMPCTL_TOKEN from the environment.
    let file_flag = flag_given("--token-file");
    let token_flag = flag_given("--token");
    let token = g.token.as_ref().filter(|t| !t.trim().is_empty());
    let (token, token_source) = if let (Some(t), true) = (token, token_flag || !file_flag) {
        (
            Some(t.trim().to_string()),
            "--token / OPAMPCTL_TOKEN".to_string(),
        )
    } else if let Some(p) = &g.token_file {
        (
            Some(read_token_file(p, "--token-file")?),
            format!("--token-file {}", p.display()),
        )
    } else if let Some(t) = ctx.token.as_ref().filter(|t| !t.trim().is_empty()) {
        (
            Some(t.trim().to_string()),
            format!(
                "the login session of context {:?}",
                ctx_name.as_deref().unwrap_or("")
            ),
        )
    } else if let Some(p) = &ctx.token_file {
        (
            Some(read_token_file(p, "the context's token-file")?),
            format!("token-file {}", p.display()),
        )
    } else if is_local_url(&server) {
        DEFAULT_TOKEN_FILES
            .iter()
            .find_map(|p| {
                let t = std::fs::read_to_string(p).ok()?;
                let t = t.trim().to_string();
                (!t.is_empty()).then(|| (Some(t), format!("{p} (default lookup)")))
            })
            .unwrap_or((None, "none".to_string()))
    } else {
        (None, "none".to_string())
    };
    Ok(Settings {
        server_given: !given.is_empty() || ctx.server.is_some(),
        servers: if given.is_empty() {
            vec![server.clone()]
        } else {
            given
        },
        server,
        token,
        token_source,
        format: g.output,
        quiet: g.quiet,
        color: color_wanted(g.no_color),
        ca_file: g.ca_file.clone().or(ctx.ca_file.map(|p| expand_home(&p))),
        timeout: g.request_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parts() {
        assert_eq!(url::host("http://127.0.0.1:8080/x"), "127.0.0.1");
        assert_eq!(url::port("http://127.0.0.1:8080/x"), Some(8080));
        assert_eq!(url::port("https://example.com"), Some(443));
        assert_eq!(url::host("http://[::1]:9/"), "::1");
        assert_eq!(url::port("http://[::1]:9/"), Some(9));
        for local in [
            "http://localhost:1",
            "http://LOCALHOST:1",
            "http://127.0.0.1:8080",
            "http://127.0.0.2:8080",
            "https://127.255.0.1",
            "http://[::1]:8080",
            "http://[::ffff:127.0.0.1]:8080",
            "http://user@127.0.0.1:1/x",
            "http://0.0.0.0:8080",
        ] {
            assert!(is_local_url(local), "{local}");
        }
        for remote in [
            "https://opamp.example.com",
            "http://127.example.com:8080",
            "http://127.0.0.1.example.com",
            "http://localhost.example.com",
            "http://10.0.0.1:8080",
            "http://[::2]:8080",
        ] {
            assert!(!is_local_url(remote), "{remote}");
        }
    }

    #[test]
    fn server_urls_are_checked() {
        assert_eq!(
            check_server_url("http://h:1/", "--server").unwrap(),
            "http://h:1"
        );
        assert!(check_server_url("h:1", "--server")
            .unwrap_err()
            .message
            .contains("not an http"));
    }

    #[test]
    fn config_file_parses_contexts() {
        let c: ConfigFile = serde_yaml::from_str(
            "current-context: a\ncontexts:\n  a:\n    server: http://x:1\n    token-file: /t\n",
        )
        .unwrap();
        assert_eq!(c.contexts["a"].server.as_deref(), Some("http://x:1"));
        assert!(serde_yaml::from_str::<ConfigFile>("contexts:\n  a:\n    sever: x\n").is_err());
    }
}
