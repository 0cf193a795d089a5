//! Which server a diagnosis looks at: --server, OPAMPCTL_SERVER or the
//! context when one names it, else the address the opampd configuration
//! file of `--config` gives (`listen`, `tls.cert_file`, `opamp.path`,
//! `agent_listen`), else the default. And which data directory: --data-dir,
//! else the `data_dir` of `--config`; its `admin.token` is the token when
//! none is given and the server is that directory's (on this host, or at the
//! address of `--config`).

use crate::cli::DoctorArgs;
use crate::client::Client;
use crate::context::Settings;
use crate::error::Result;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// The server of one diagnosis and its OpAMP endpoint.
pub(super) struct Target {
    pub settings: Settings,
    pub client: Client,
    /// Where agents send OpAMP: --opamp-url, or the server plus the path.
    pub opamp_url: String,
    /// How the address was taken from --config, or why it was not.
    pub note: Option<String>,
    /// --data-dir, else the `data_dir` of --config.
    pub data_dir: Option<PathBuf>,
    /// Where the data directory came from, when not from --data-dir.
    pub data_dir_note: Option<String>,
    /// Where the token came from, when from the data directory.
    pub token_note: Option<String>,
    /// Set when --config names a PostgreSQL database (`database.url`).
    pub postgres_note: Option<String>,
}

/// Where the opampd of a configuration file serves.
#[derive(Debug, PartialEq)]
pub(super) struct ConfigAddress {
    /// The operator listener: `http://` or, with `tls.cert_file`, `https://`.
    pub server: String,
    /// `opamp.path` as written in the file.
    pub opamp_path: Option<String>,
    /// The agent listener (`agent_listen`), where agents send OpAMP.
    pub agent_server: Option<String>,
}

/// Where the opampd of a configuration file keeps its data, as written
/// there; `None` when the file leaves it to opampd's default (relative to
/// opampd's working directory) or cannot be read.
pub(super) fn data_dir_from_config(file: &Path) -> Option<PathBuf> {
    let tree = read_tree(file).ok()?;
    tree.get("data_dir")?.as_str().map(PathBuf::from)
}

/// Whether a configuration file puts opampd on PostgreSQL (a non-empty
/// `database.url`).
pub(super) fn postgres_in_config(file: &Path) -> bool {
    read_tree(file).ok().is_some_and(|tree| {
        tree.get("database")
            .and_then(|database| database.get("url"))
            .and_then(|url| url.as_str())
            .is_some_and(|url| !url.trim().is_empty())
    })
}

impl Target {
    pub(super) fn new(settings: &Settings, client: &Client, args: &DoctorArgs) -> Result<Target> {
        let mut target = Target {
            settings: settings.clone(),
            client: client.clone(),
            opamp_url: String::new(),
            note: None,
            data_dir: args.data_dir.clone(),
            data_dir_note: None,
            token_note: None,
            postgres_note: args
                .config
                .as_deref()
                .filter(|file| postgres_in_config(file))
                .map(|file| format!("{} sets database.url (PostgreSQL)", file.display())),
        };
        let mut address_from_file = false;
        let mut opamp_path = args.opamp_path.clone();
        let mut agent_server = None;
        if let (Some(file), false) = (&args.config, settings.server_given) {
            match address_from_config(file) {
                Ok(address) => {
                    target.note = Some(format!(
                        "the server address {} comes from this file (--server overrides it)",
                        address.server
                    ));
                    target.settings.server = address.server;
                    address_from_file = true;
                    opamp_path = opamp_path.or(address.opamp_path);
                    agent_server = address.agent_server;
                }
                Err(why) => {
                    target.note = Some(format!(
                        "the server address cannot be taken from it ({why}); checking {}",
                        settings.server
                    ))
                }
            }
        }
        if let (None, Some(file)) = (&target.data_dir, &args.config) {
            target.data_dir = data_dir_from_config(file);
            if target.data_dir.is_some() {
                target.data_dir_note = Some(format!(
                    "the data directory is data_dir of {} (--data-dir overrides it)",
                    file.display()
                ));
            }
        }
        // The data directory's admin.token, for the server it belongs to.
        if let (Some(dir), false) = (&target.data_dir, token_given(settings)) {
            if address_from_file || target.settings.server_is_local() {
                let file = dir.join("admin.token");
                if let Some(token) = std::fs::read_to_string(&file)
                    .ok()
                    .map(|token| token.trim().to_string())
                    .filter(|token| !token.is_empty())
                {
                    target.settings.token = Some(token);
                    target.settings.token_source = file.display().to_string();
                    target.token_note = Some(format!(
                        "the token is {} (--token, --token-file or OPAMPCTL_TOKEN override it)",
                        file.display()
                    ));
                }
            }
        }
        target.client = Client::new(&target.settings)?;
        let path = opamp_path.unwrap_or_else(default_opamp_path);
        let agent_server = agent_server.as_deref().unwrap_or(&target.client.base);
        target.opamp_url = args
            .opamp_url
            .clone()
            .unwrap_or_else(|| format!("{agent_server}{path}"));
        Ok(target)
    }
}

/// Whether the token came from --token, --token-file, OPAMPCTL_TOKEN or the
/// context, rather than from the default token files (or nowhere).
fn token_given(settings: &Settings) -> bool {
    settings.token.is_some()
        && !crate::context::DEFAULT_TOKEN_FILES
            .iter()
            .any(|file| settings.token_source == format!("{file} (default lookup)"))
}

fn default_opamp_path() -> String {
    opampd::config::Config::default().opamp.path
}

/// Reads the addresses from an opampd configuration file. Only the keys it
/// needs are read, so a file with other mistakes (which the config check
/// reports) still says where opampd listens; a key the file leaves out has
/// opampd's default.
pub(super) fn address_from_config(file: &Path) -> std::result::Result<ConfigAddress, String> {
    let tree = read_tree(file)?;
    let text_at = |path: &[&str]| {
        let mut value = &tree;
        for key in path {
            value = value.get(key)?;
        }
        value.as_str().map(str::to_owned)
    };
    let scheme = if text_at(&["tls", "cert_file"]).is_some() {
        "https"
    } else {
        "http"
    };
    let listen = text_at(&["listen"]).unwrap_or_else(|| opampd::config::Config::default().listen);
    let server = format!("{scheme}://{}", reachable(&listen, "listen")?);
    let agent_server = match text_at(&["agent_listen"]) {
        Some(agent_listen) => Some(format!(
            "{scheme}://{}",
            reachable(&agent_listen, "agent_listen")?
        )),
        None => None,
    };
    Ok(ConfigAddress {
        server,
        opamp_path: text_at(&["opamp", "path"]),
        agent_server,
    })
}

/// The YAML of an opampd configuration file (empty: no keys).
fn read_tree(file: &Path) -> std::result::Result<serde_yaml::Value, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read it: {e}"))?;
    if text.trim().is_empty() {
        return Ok(serde_yaml::Value::Null);
    }
    serde_yaml::from_str(&text).map_err(|e| format!("it is not YAML: {e}"))
}

/// The address to connect to for a listen address: a wildcard (`0.0.0.0`,
/// `[::]`) is reached on loopback.
fn reachable(listen: &str, key: &str) -> std::result::Result<SocketAddr, String> {
    let mut address: SocketAddr = listen
        .parse()
        .map_err(|_| format!("{key} {listen:?} is not an address like 127.0.0.1:8080"))?;
    match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => address.set_ip(Ipv4Addr::LOCALHOST.into()),
        IpAddr::V6(ip) if ip.is_unspecified() => address.set_ip(Ipv6Addr::LOCALHOST.into()),
        _ => {}
    }
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> std::result::Result<ConfigAddress, String> {
        let dir = crate::files::PrivateDir::new_temp("test").unwrap();
        let file = dir.join("config.yaml");
        std::fs::write(&file, yaml).unwrap();
        address_from_config(&file)
    }

    #[test]
    fn a_database_url_in_the_file_means_postgresql() {
        let dir = crate::files::PrivateDir::new_temp("test").unwrap();
        let file = dir.join("config.yaml");
        for (yaml, postgres) in [
            ("", false),
            ("database:\n  max_open_conns: 4\n", false),
            ("database:\n  url: \"\"\n", false),
            (
                "database:\n  url: postgres://opamp:secret@db:5432/opamp\n",
                true,
            ),
        ] {
            std::fs::write(&file, yaml).unwrap();
            assert_eq!(postgres_in_config(&file), postgres, "{yaml}");
        }
    }

    #[test]
    fn the_address_follows_listen_tls_and_the_agent_listener() {
        assert_eq!(
            check("").unwrap().server,
            format!("http://{}", opampd::config::Config::default().listen)
        );
        let plain = check("listen: 0.0.0.0:9000\n").unwrap();
        assert_eq!(plain.server, "http://127.0.0.1:9000");
        assert_eq!((plain.opamp_path, plain.agent_server), (None, None));
        let tls = check(
            "listen: \"[::]:9443\"\ntls:\n  cert_file: c.pem\n  key_file: k.pem\nagent_listen: 0.0.0.0:4320\nopamp:\n  path: /opamp\n",
        )
        .unwrap();
        assert_eq!(tls.server, "https://[::1]:9443");
        assert_eq!(tls.agent_server.as_deref(), Some("https://127.0.0.1:4320"));
        assert_eq!(tls.opamp_path.as_deref(), Some("/opamp"));
        // Other mistakes do not hide the address; a bad listen is named.
        assert_eq!(
            check("listen: 10.1.2.3:8080\nno_such_key: 1\n")
                .unwrap()
                .server,
            "http://10.1.2.3:8080"
        );
        assert!(check("listen: nowhere\n")
            .unwrap_err()
            .contains("listen \"nowhere\""));
        assert!(check("listen: [\n").unwrap_err().contains("not YAML"));
    }
}
