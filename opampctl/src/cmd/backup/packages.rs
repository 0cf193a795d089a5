//! The hosted package files of a backup: which files the catalogue names
//! (asked of the server, or read from a local snapshot), and, with
//! `--with-packages`, the archive of their bytes beside the database backup
//! ([`crate::package_archive`]).

use crate::client::Client;
use crate::context::Settings;
use crate::error::{CtlError, Result};
use crate::output;
use crate::package_archive::Writer;
use opamp_proto::api::HostedFile;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use std::io::Read;
use std::path::Path;

/// The API route listing the hosted files the catalogue names.
pub const LIST_PATH: &str = "/api/v1/admin/packages/files";

/// What a backup did with the hosted package files; part of its JSON.
#[derive(Debug, Default, Serialize)]
pub struct PackagesReport {
    /// Whether their bytes are in the backup (`--with-packages`).
    pub included: bool,
    /// Hosted files the catalogue names (each once).
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
    /// The archive holding them, when included and there are any.
    pub file: Option<String>,
    pub sha256_file: Option<String>,
    pub sha256: Option<String>,
}

impl PackagesReport {
    pub fn of(files: &[HostedFile]) -> PackagesReport {
        PackagesReport {
            files: files.len() as u64,
            bytes: files.iter().map(|f| f.size).sum(),
            ..Default::default()
        }
    }

    /// The line a person reads, if any.
    pub fn line(&self) -> Option<String> {
        match (self.included, self.files) {
            (_, 0) => None,
            (true, n) => Some(format!(
                "{n} hosted package file{} ({}) in {}",
                if n == 1 { "" } else { "s" },
                output::bytes(self.bytes),
                self.file.as_deref().unwrap_or("?")
            )),
            (false, n) => Some(format!(
                "{n} hosted package file{} ({}) not included: use --with-packages",
                if n == 1 { "" } else { "s" },
                output::bytes(self.bytes)
            )),
        }
    }
}

/// The hosted files the server's catalogue names; `None` from a server
/// that does not list them (older than this opampctl).
pub async fn listed(client: &Client) -> Result<Option<Vec<HostedFile>>> {
    let response = client
        .send_any(client.request(Method::GET, LIST_PATH))
        .await?;
    if response.status() == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !response.status().is_success() {
        return Err(client.error_reply(response).await);
    }
    Ok(Some(crate::client::decode(response, LIST_PATH).await?))
}

/// Writes `files` into a new archive at `path`, each fetched from the
/// server, or read from `local_dir` (the data directory's `packages`).
pub async fn write_archive(
    settings: &Settings,
    client: &Client,
    local_dir: Option<&Path>,
    files: &[HostedFile],
    path: &Path,
) -> Result<(String, u64)> {
    let failed = |e: String| CtlError::failed(format!("writing {}: {e}", path.display()));
    let mut writer = Writer::create(path).map_err(|e| failed(e.to_string()))?;
    let total: u64 = files.iter().map(|f| f.size).sum();
    let bar = settings.progress().then(|| {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "package files {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    for file in files {
        writer.begin(&file.sha256, file.size).map_err(failed)?;
        match local_dir {
            Some(dir) => {
                let source = dir
                    .join(&file.sha256[..2.min(file.sha256.len())])
                    .join(&file.sha256);
                let mut from = std::fs::File::open(&source).map_err(|e| {
                    CtlError::failed(format!(
                        "cannot read the hosted package file {}: {e} (opampctl reads DATA_DIR/packages; with another packages.dir, back up through the server)",
                        source.display()
                    ))
                })?;
                let mut buffer = vec![0u8; 256 * 1024];
                loop {
                    let n = from.read(&mut buffer).map_err(|e| {
                        CtlError::failed(format!("cannot read {}: {e}", source.display()))
                    })?;
                    if n == 0 {
                        break;
                    }
                    writer.write(&buffer[..n]).map_err(failed)?;
                    if let Some(bar) = &bar {
                        bar.inc(n as u64);
                    }
                }
            }
            None => {
                let route = format!("{LIST_PATH}/{}", file.sha256);
                let mut response = client
                    .send(client.stream_request(Method::GET, &route))
                    .await?;
                loop {
                    let chunk = response.chunk().await.map_err(|e| {
                        CtlError::failed(format!(
                            "the package file {} from {} broke off: {e}",
                            file.sha256, client.base
                        ))
                    })?;
                    let Some(chunk) = chunk else { break };
                    writer.write(&chunk).map_err(failed)?;
                    if let Some(bar) = &bar {
                        bar.inc(chunk.len() as u64);
                    }
                }
            }
        }
        writer.end().map_err(failed)?;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    writer.finish().map_err(failed)
}
