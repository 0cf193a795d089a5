//! opampd configuration: defaults < YAML file < `OPAMPD_*` environment < flags.
//!
//! Every key of the file can also come from the environment: the key path in
//! upper case joined by `_` after `OPAMPD_` (`database.max_open_conns` is
//! `OPAMPD_DATABASE_MAX_OPEN_CONNS`); lists are comma-separated. Unknown keys,
//! in the file or as `OPAMPD_*` variables, stop start-up with the key named.

mod layers;
mod sections;
mod validate;

pub use layers::from_yaml;
use layers::{apply_env, merge_file};
pub use sections::*;
pub use validate::refuse_published_secret;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Operator plane (REST, health, metrics) and, unless `agent_listen` is set, OpAMP too.
    pub listen: String,
    /// Optional second listener serving only the OpAMP endpoint (e.g. `0.0.0.0:4320`).
    pub agent_listen: Option<String>,
    pub data_dir: PathBuf,
    pub log: LogConfig,
    pub tls: TlsConfig,
    pub opamp: OpampConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub http: HttpConfig,
    pub audit: AuditConfig,
    pub telemetry: TelemetryConfig,
    pub rollouts: RolloutsConfig,
    pub cluster: ClusterConfig,
    pub packages: PackagesConfig,
}

/// Values given on the command line; `None` = not given.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub agent_listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub database_url: Option<String>,
}

impl Config {
    /// Builds the effective configuration from all layers.
    pub fn load(
        file: Option<&Path>,
        env: &[(String, String)],
        flags: &Overrides,
    ) -> Result<Config> {
        let mut tree = serde_yaml::to_value(Config::default())?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            merge_file(&mut tree, &text, path)?;
        }
        apply_env(&mut tree, env)?;
        let mut config: Config = serde_yaml::from_value(tree)
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        if let Some(v) = &flags.listen {
            config.listen = v.clone();
        }
        if let Some(v) = &flags.agent_listen {
            config.agent_listen = Some(v.clone());
        }
        if let Some(v) = &flags.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = &flags.log_level {
            config.log.level = v.clone();
        }
        if let Some(v) = &flags.log_format {
            config.log.format = v.clone();
        }
        if let Some(v) = &flags.database_url {
            config.database.url = Some(v.clone());
        }
        config.validate()?;
        Ok(config)
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("opamp.db")
    }

    /// Where hosted package files are kept.
    pub fn packages_dir(&self) -> PathBuf {
        self.packages
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("packages"))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            agent_listen: None,
            data_dir: PathBuf::from("./data"),
            log: LogConfig::default(),
            tls: TlsConfig::default(),
            opamp: OpampConfig::default(),
            database: DatabaseConfig::default(),
            auth: AuthConfig::default(),
            http: HttpConfig::default(),
            audit: AuditConfig::default(),
            telemetry: TelemetryConfig::default(),
            rollouts: RolloutsConfig::default(),
            cluster: ClusterConfig::default(),
            packages: PackagesConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests;
