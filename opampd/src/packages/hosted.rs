//! Hosted package files: uploaded to opampd, kept under `packages.dir`
//! named by their SHA-256 (`ab/abcdef…`, so two versions with the same
//! bytes share one file), served to agents by `opamp::download`.
//!
//! Rules:
//!
//! - an upload is streamed to a temporary file in `packages.dir/tmp`, hashed
//!   and counted as it arrives; past `packages.max_file_bytes` (the rest of
//!   the body is read and dropped, so the client gets the answer), or when
//!   its SHA-256 is not the one declared, nothing is kept;
//! - a file is put under its name and its catalogue row committed while
//!   [`Hosted::changes`] is held; deleting a version removes its files no
//!   other version names under the same lock, so a removal never takes a
//!   file a new row is about to name;
//! - before a file is served it is hashed again on its first serve after
//!   start, when its size or modification time changed, and when its last
//!   check is older than `packages.verify_interval_seconds`; a file that no
//!   longer matches is refused ([`OpenError::Tampered`]) until it is
//!   uploaded again;
//! - a file no catalogue entry names (a version deleted on another replica,
//!   a crash between storing a file and committing its row, files restored
//!   without their catalogue) and an upload's temporary file left behind are
//!   removed once older than `packages.orphan_grace_seconds`, at start and
//!   every `packages.verify_interval_seconds` ([`sweep_loop`]); the grace
//!   period keeps an upload in progress (its temporary file is written to
//!   as the bytes arrive) and a file put back before its catalogue.

use crate::app::App;
use crate::config::Config;
use anyhow::{Context, Result};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::AsyncWriteExt;

/// The path, under the agents' address, of a hosted file.
pub const DOWNLOAD_PATH: &str = "/v1/packages/{name}/{version}/files/{os}/{arch}";

/// The hosted files of this server.
pub struct Hosted {
    dir: PathBuf,
    base_url: String,
    max_file_bytes: u64,
    verify_every: Duration,
    checks: Mutex<HashMap<String, Check>>,
    verifying: tokio::sync::Mutex<()>,
    /// Held from putting a file under its name to committing the catalogue
    /// row that names it, and from deleting a version to removing its files.
    pub changes: tokio::sync::Mutex<()>,
}

/// An upload received whole and hashed, still in its temporary file
/// (removed when dropped unless [`Hosted::keep`] took it).
#[derive(Debug)]
pub struct Received {
    pub sha256: String,
    pub size: u64,
    temp: Option<PathBuf>,
}

/// Why an upload is not kept.
#[derive(Debug)]
pub enum ReceiveError {
    /// More than `packages.max_file_bytes`.
    TooLarge {
        limit: u64,
    },
    /// The bytes' SHA-256 is not the one the request declared.
    ShaDiffers {
        declared: String,
        computed: String,
    },
    /// The request body broke off.
    Body(String),
    Io(anyhow::Error),
}

/// Why a stored file cannot be served.
#[derive(Debug)]
pub enum OpenError {
    /// Not in `packages.dir` (removed, or the shared directory is not mounted).
    Missing(PathBuf),
    /// Its bytes no longer have the SHA-256 it was stored under.
    Tampered {
        path: PathBuf,
        computed: String,
    },
    Io(anyhow::Error),
}

/// A file [`Hosted::sweep`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swept {
    pub path: PathBuf,
    pub bytes: u64,
}

/// A file checked against its SHA-256 and opened for reading.
#[derive(Debug)]
pub struct Opened {
    pub file: tokio::fs::File,
    pub size: u64,
}

#[derive(Debug, Clone, Copy)]
struct Check {
    size: u64,
    modified: SystemTime,
    at: Instant,
}

impl Hosted {
    /// The hosted files of `config`, creating `packages.dir` (owner-only) if
    /// needed; `agent_addr` (and `tls`) make the download address when
    /// neither `packages.public_url` nor `opamp.public_url` is set.
    pub fn open(config: &Config, agent_addr: SocketAddr, tls: bool) -> Result<Hosted> {
        let dir = config.packages_dir();
        let temp = dir.join("tmp");
        create_private_dir(&temp).with_context(|| {
            format!(
                "cannot create packages.dir {} (where uploaded package files are kept)",
                dir.display()
            )
        })?;
        // Uploads cut short by a stop of opampd leave their temporary file:
        // the orphan sweep removes it once older than
        // packages.orphan_grace_seconds, never at start (replicas sharing
        // packages.dir may be receiving uploads into it now).
        Ok(Hosted {
            dir,
            base_url: base_url(config, agent_addr, tls),
            max_file_bytes: config.packages.max_file_bytes,
            verify_every: Duration::from_secs(config.packages.verify_interval_seconds),
            checks: Mutex::new(HashMap::new()),
            verifying: tokio::sync::Mutex::new(()),
            changes: tokio::sync::Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The URL agents download the hosted file of `name` `version` for `os/arch` from.
    pub fn url(&self, name: &str, version: &str, os: &str, arch: &str) -> String {
        format!(
            "{}{}",
            self.base_url,
            DOWNLOAD_PATH
                .replace("{name}", name)
                .replace("{version}", version)
                .replace("{os}", os)
                .replace("{arch}", arch)
        )
    }

    /// Where the file with `sha256` (lowercase hex) is kept.
    pub fn path_of(&self, sha256: &str) -> PathBuf {
        self.dir.join(&sha256[..2.min(sha256.len())]).join(sha256)
    }

    /// Streams `body` into a temporary file, hashing and counting it;
    /// refused past the size limit or when `declared` (lowercase hex) differs.
    pub async fn receive(
        &self,
        body: axum::body::Body,
        declared: Option<&str>,
    ) -> Result<Received, ReceiveError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let temp = self.dir.join("tmp").join(format!(
            "upload-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let mut received = Received {
            sha256: String::new(),
            size: 0,
            temp: Some(temp.clone()),
        };
        let io = |what: &str, e: std::io::Error| {
            ReceiveError::Io(anyhow::anyhow!("{what} {}: {e}", temp.display()))
        };
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .await
            .map_err(|e| io("cannot create", e))?;
        let mut hash = Sha256::new();
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ReceiveError::Body(body_error(&e)))?;
            received.size += chunk.len() as u64;
            if received.size > self.max_file_bytes {
                // The rest is read and dropped: a client still sending
                // would miss the answer if the connection closed under it.
                drop(file);
                let _ = tokio::fs::remove_file(&temp).await;
                while let Some(Ok(_)) = stream.next().await {}
                return Err(ReceiveError::TooLarge {
                    limit: self.max_file_bytes,
                });
            }
            hash.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| io("cannot write", e))?;
        }
        file.sync_all().await.map_err(|e| io("cannot sync", e))?;
        received.sha256 = hex::encode(hash.finalize());
        if let Some(declared) = declared.filter(|d| *d != received.sha256) {
            return Err(ReceiveError::ShaDiffers {
                declared: declared.to_string(),
                computed: received.sha256.clone(),
            });
        }
        Ok(received)
    }

    /// Puts a received file under its name (hold [`Hosted::changes`] until
    /// its catalogue row is committed). A file already there is kept when
    /// it matches, replaced when it does not (an upload heals a tampered file).
    pub async fn keep(&self, mut received: Received) -> Result<()> {
        let Some(temp) = received.temp.take() else {
            return Ok(());
        };
        let path = self.path_of(&received.sha256);
        let sha256 = received.sha256.clone();
        let intact = tokio::task::spawn_blocking({
            let path = path.clone();
            move || match sha256_of_file(&path) {
                Ok(found) => Ok(found == sha256),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await?
        .with_context(|| format!("cannot read {}", path.display()))?;
        if intact {
            let _ = tokio::fs::remove_file(&temp).await;
            return Ok(());
        }
        let parent = path.parent().unwrap_or(&self.dir).to_path_buf();
        create_private_dir(&parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        if let Err(e) = tokio::fs::rename(&temp, &path).await {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(e).with_context(|| format!("cannot store {}", path.display()));
        }
        self.forget(&received.sha256);
        Ok(())
    }

    /// Removes the files of `candidates` (SHA-256s) that `referenced` does
    /// not name (hold [`Hosted::changes`]); the SHA-256s removed.
    pub async fn remove_unreferenced(
        &self,
        candidates: &[String],
        referenced: &HashSet<String>,
    ) -> Vec<String> {
        let mut removed = Vec::new();
        for sha256 in candidates {
            if referenced.contains(sha256) || removed.contains(sha256) {
                continue;
            }
            let path = self.path_of(sha256);
            match tokio::fs::remove_file(&path).await {
                Ok(()) => removed.push(sha256.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a package file no longer listed")
                }
            }
            self.forget(sha256);
        }
        removed
    }

    /// Removes the files named by a SHA-256 that `referenced` does not name,
    /// and the temporary files of uploads, when last modified more than
    /// `grace` ago (hold [`Hosted::changes`]); what it removed. Other names
    /// are left alone.
    pub async fn sweep(&self, referenced: &HashSet<String>, grace: Duration) -> Vec<Swept> {
        let dir = self.dir.clone();
        let referenced = referenced.clone();
        let swept = tokio::task::spawn_blocking(move || sweep_dir(&dir, &referenced, grace))
            .await
            .unwrap_or_default();
        for file in &swept {
            if let Some(name) = file.path.file_name().and_then(|n| n.to_str()) {
                self.forget(name);
            }
        }
        swept
    }

    /// Opens the file with `sha256` for serving, checked against it as the
    /// rules say.
    pub async fn open_checked(&self, sha256: &str) -> Result<Opened, OpenError> {
        let path = self.path_of(sha256);
        let stat = |path: &Path| match std::fs::metadata(path) {
            Ok(m) => Ok((m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(OpenError::Missing(path.to_path_buf()))
            }
            Err(e) => Err(OpenError::Io(anyhow::anyhow!(
                "cannot read {}: {e}",
                path.display()
            ))),
        };
        let (size, modified) = stat(&path)?;
        if !self.checked(sha256, size, modified) {
            let _one_at_a_time = self.verifying.lock().await;
            let (size, modified) = stat(&path)?;
            if !self.checked(sha256, size, modified) {
                let computed = tokio::task::spawn_blocking({
                    let path = path.clone();
                    move || sha256_of_file(&path)
                })
                .await
                .map_err(|e| OpenError::Io(e.into()))?
                .map_err(|e| {
                    OpenError::Io(anyhow::anyhow!("cannot read {}: {e}", path.display()))
                })?;
                if computed != sha256 {
                    self.forget(sha256);
                    return Err(OpenError::Tampered { path, computed });
                }
                self.checks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        sha256.to_string(),
                        Check {
                            size,
                            modified,
                            at: Instant::now(),
                        },
                    );
            }
        }
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| OpenError::Io(anyhow::anyhow!("cannot open {}: {e}", path.display())))?;
        Ok(Opened { file, size })
    }

    fn checked(&self, sha256: &str, size: u64, modified: SystemTime) -> bool {
        self.checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sha256)
            .is_some_and(|c| {
                c.size == size && c.modified == modified && c.at.elapsed() < self.verify_every
            })
    }

    fn forget(&self, sha256: &str) {
        self.checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sha256);
    }
}

impl Drop for Received {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = std::fs::remove_file(temp);
        }
    }
}

/// Sweeps orphaned files ([`Hosted::sweep`]) now and every
/// `packages.verify_interval_seconds` until shutdown.
pub async fn sweep_loop(app: Arc<App>) {
    let every = Duration::from_secs(app.config.packages.verify_interval_seconds);
    let mut shutdown = app.shutdown.clone();
    loop {
        if let Err(e) = sweep_orphans(&app).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot sweep orphaned package files; retrying later");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The SHA-256s of the hosted files the catalogue names.
pub async fn referenced(app: &App) -> Result<HashSet<String>> {
    Ok(app
        .store
        .packages(None)
        .await?
        .into_iter()
        .flat_map(|p| p.files)
        .filter(|f| f.hosted)
        .map(|f| f.sha256)
        .collect())
}

/// One sweep: the files in `packages.dir` no catalogue entry names, older
/// than `packages.orphan_grace_seconds`, removed and logged.
pub async fn sweep_orphans(app: &App) -> Result<Vec<Swept>> {
    let _changes = app.hosted.changes.lock().await;
    let referenced = referenced(app).await?;
    let grace = Duration::from_secs(app.config.packages.orphan_grace_seconds);
    let swept = app.hosted.sweep(&referenced, grace).await;
    for file in &swept {
        tracing::info!(
            path = %file.path.display(),
            bytes = file.bytes,
            "removed an orphaned package file: no catalogue entry names it (older than packages.orphan_grace_seconds)"
        );
    }
    Ok(swept)
}

fn sweep_dir(dir: &Path, referenced: &HashSet<String>, grace: Duration) -> Vec<Swept> {
    let now = SystemTime::now();
    let old = |meta: &std::fs::Metadata| {
        meta.modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age >= grace)
    };
    let mut swept = Vec::new();
    let mut remove = |path: PathBuf, meta: &std::fs::Metadata| match std::fs::remove_file(&path) {
        Ok(()) => swept.push(Swept {
            path,
            bytes: meta.len(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an orphaned package file")
        }
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return swept;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir {
            continue;
        }
        let temp = name == "tmp";
        if !(temp || name.len() == 2 && is_lower_hex(&name)) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(entry.path()) else {
            continue;
        };
        for file in files.flatten() {
            let Ok(meta) = file.metadata() else { continue };
            if !meta.is_file() || !old(&meta) {
                continue;
            }
            let file_name = file.file_name().to_string_lossy().into_owned();
            let orphan = if temp {
                file_name.starts_with("upload-")
            } else {
                file_name.len() == 64
                    && is_lower_hex(&file_name)
                    && file_name.starts_with(&name)
                    && !referenced.contains(&file_name)
            };
            if orphan {
                remove(file.path(), &meta);
            }
        }
    }
    swept
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The address agents download hosted files from: `packages.public_url`,
/// else the scheme and host of `opamp.public_url` (`wss` → `https`), else
/// the agent listener (its host name when it listens on every address).
pub fn base_url(config: &Config, agent_addr: SocketAddr, tls: bool) -> String {
    if let Some(url) = &config.packages.public_url {
        return url.trim_end_matches('/').to_string();
    }
    if let Some(uri) = config
        .opamp
        .public_url
        .as_deref()
        .and_then(|u| u.parse::<http::Uri>().ok())
    {
        if let Some(authority) = uri.authority() {
            let scheme = match uri.scheme_str() {
                Some("wss" | "https") => "https",
                _ => "http",
            };
            return format!("{scheme}://{authority}");
        }
    }
    let scheme = if tls { "https" } else { "http" };
    let host = if agent_addr.ip().is_unspecified() {
        crate::replica::host_name().unwrap_or_else(|| "localhost".into())
    } else if agent_addr.is_ipv6() {
        format!("[{}]", agent_addr.ip())
    } else {
        agent_addr.ip().to_string()
    };
    format!("{scheme}://{host}:{}", agent_addr.port())
}

/// SHA-256 (lowercase hex) of a file, read in pieces.
pub fn sha256_of_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hash = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(hex::encode(hash.finalize()));
        }
        hash.update(&buffer[..n]);
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn body_error(error: &axum::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Config {
        let mut config = Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        config.packages.max_file_bytes = 10;
        config
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_download_address_comes_from_the_settings_then_the_listener() {
        let mut config = Config::default();
        let at = addr("127.0.0.1:4320");
        assert_eq!(base_url(&config, at, false), "http://127.0.0.1:4320");
        assert_eq!(base_url(&config, at, true), "https://127.0.0.1:4320");
        config.opamp.public_url = Some("wss://opamp.example.com:8443/v1/opamp".into());
        assert_eq!(
            base_url(&config, at, false),
            "https://opamp.example.com:8443"
        );
        config.packages.public_url = Some("https://files.example.com/".into());
        assert_eq!(base_url(&config, at, false), "https://files.example.com");
    }

    #[tokio::test]
    async fn uploads_are_hashed_limited_and_checked_before_serving() {
        let dir = tempfile::tempdir().unwrap();
        let hosted = Hosted::open(&config(dir.path()), addr("127.0.0.1:1"), false).unwrap();
        let body = |bytes: &'static [u8]| axum::body::Body::from(bytes);
        let sha = hex::encode(Sha256::digest(b"hello"));

        let received = hosted.receive(body(b"hello"), Some(&sha)).await.unwrap();
        assert_eq!((received.sha256.as_str(), received.size), (sha.as_str(), 5));
        hosted.keep(received).await.unwrap();
        assert!(hosted.open_checked(&sha).await.is_ok());

        match hosted.receive(body(b"hello"), Some(&"0".repeat(64))).await {
            Err(ReceiveError::ShaDiffers { computed, .. }) => assert_eq!(computed, sha),
            other => panic!("expected a refusal, got {other:?}"),
        }
        match hosted.receive(body(b"more than ten bytes"), None).await {
            Err(ReceiveError::TooLarge { limit: 10 }) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
        let left = std::fs::read_dir(dir.path().join("packages/tmp")).unwrap();
        assert_eq!(left.count(), 0, "refused uploads leave nothing");

        std::fs::write(hosted.path_of(&sha), b"HELLO").unwrap();
        match hosted.open_checked(&sha).await {
            Err(OpenError::Tampered { .. }) => {}
            other => panic!("expected a tampered file, got {other:?}"),
        }
        // Uploading it again heals it.
        let received = hosted.receive(body(b"hello"), None).await.unwrap();
        hosted.keep(received).await.unwrap();
        assert!(hosted.open_checked(&sha).await.is_ok());

        let referenced = HashSet::from([sha.clone()]);
        assert!(hosted
            .remove_unreferenced(std::slice::from_ref(&sha), &referenced)
            .await
            .is_empty());
        assert_eq!(
            hosted
                .remove_unreferenced(std::slice::from_ref(&sha), &HashSet::new())
                .await,
            vec![sha.clone()]
        );
        assert!(matches!(
            hosted.open_checked(&sha).await,
            Err(OpenError::Missing(_))
        ));
    }

    #[tokio::test]
    async fn the_sweep_removes_only_old_unnamed_files() {
        let dir = tempfile::tempdir().unwrap();
        let hosted = Hosted::open(&config(dir.path()), addr("127.0.0.1:1"), false).unwrap();
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        let plant = |path: PathBuf, old: bool| {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let file = std::fs::File::create(&path).unwrap();
            std::io::Write::write_all(&mut &file, b"bytes").unwrap();
            if old {
                file.set_modified(hour_ago).unwrap();
            }
            path
        };
        let named = plant(hosted.path_of(&"a".repeat(64)), true);
        let orphan = plant(hosted.path_of(&"b".repeat(64)), true);
        let fresh = plant(hosted.path_of(&"c".repeat(64)), false);
        let stray = plant(dir.path().join("packages/dd/notes.txt"), true);
        let upload = plant(dir.path().join("packages/tmp/upload-1-1"), true);
        let referenced = HashSet::from(["a".repeat(64)]);
        let mut swept: Vec<PathBuf> = hosted
            .sweep(&referenced, Duration::from_secs(600))
            .await
            .into_iter()
            .map(|s| s.path)
            .collect();
        swept.sort();
        let mut want = vec![orphan.clone(), upload.clone()];
        want.sort();
        assert_eq!(swept, want);
        assert!(named.exists() && fresh.exists() && stray.exists());
        assert!(!orphan.exists() && !upload.exists());
    }
}
