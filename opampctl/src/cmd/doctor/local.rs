//! Local files: the opampd config file (validated by `opampd check-config`)
//! and the data directory's permissions.

use super::report::{fail, ok, skip, warn, Check, Verdict};
use super::Diagnosis;
use crate::cmd::supervisor;
use crate::procfs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

impl Diagnosis<'_> {
    /// `config`: --config FILE exists and `opampd check-config` accepts it;
    /// says when the server address came from it.
    pub(super) fn check_config(&mut self) {
        let Some(config) = &self.args.config else {
            self.push(skip("config", "no --config FILE given"));
            return;
        };
        let mut check = config_verdict(config);
        if let Some(note) = &self.target_note {
            check.detail.push_str(&format!("; {note}"));
        }
        self.push(check);
    }

    /// `data-dir`: a writable directory, not open to other users, with a
    /// private admin.token.
    pub(super) fn check_data_dir(&mut self) {
        let Some(dir) = self.data_dir.clone() else {
            self.push(skip("data-dir", self.no_data_dir()));
            return;
        };
        let dir = dir.as_path();
        let meta = match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => meta,
            Ok(_) => {
                self.push(fail(
                    "data-dir",
                    format!("{} is not a directory", dir.display()),
                    "point opampd's --data-dir (OPAMPD_DATA_DIR) at a directory",
                ));
                return;
            }
            Err(e) => {
                self.push(fail(
                    "data-dir",
                    format!("{}: {e}", dir.display()),
                    "create it (opampd creates it at start if its parent is writable), owned by the service user",
                ));
                return;
            }
        };
        let mut check = data_dir_verdict(dir, &meta);
        if let Some(note) = &self.data_dir_note {
            check.detail.push_str(&format!("; {note}"));
        }
        self.push(check);
    }

    /// Why there is no data directory to check.
    pub(super) fn no_data_dir(&self) -> String {
        match &self.args.config {
            Some(config) => format!(
                "no --data-dir DIR given, and {} sets no data_dir",
                config.display()
            ),
            None => "no --data-dir DIR given".to_string(),
        }
    }
}

fn config_verdict(config: &Path) -> Check {
    if !config.is_file() {
        return fail(
            "config",
            format!("{} does not exist", config.display()),
            "pass the path opampd is started with (see the unit file or OPAMPD_CONFIG)",
        );
    }
    if supervisor::which("opampd").is_none() {
        return warn(
            "config",
            format!(
                "opampd is not on PATH: cannot validate {}",
                config.display()
            ),
            "put opampd on PATH (or run on the server host) to validate the configuration",
        );
    }
    check_config_with_opampd(config)
}

fn check_config_with_opampd(config: &Path) -> Check {
    match std::process::Command::new("opampd")
        .arg("check-config")
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(output) if output.status.success() => ok(
            "config",
            format!("{} is valid (opampd check-config)", config.display()),
        ),
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let message = stderr
                .lines()
                .find(|line| line.contains("error"))
                .unwrap_or(stderr.trim())
                .trim()
                .to_string();
            fail(
                "config",
                format!("{}: {message}", config.display()),
                "fix the key or value named above; `opampd check-config --print-defaults` lists every key",
            )
        }
        Err(e) => warn(
            "config",
            format!("cannot run opampd check-config: {e}"),
            "check that the opampd binary on PATH runs",
        ),
    }
}

/// Writable (fail if not), closed to others and a private admin.token (warn if not).
fn data_dir_verdict(dir: &Path, meta: &std::fs::Metadata) -> Check {
    let mode = meta.permissions().mode() & 0o777;
    // A new file under a name nobody can plant in advance, created without
    // following symlinks, removed again.
    let probe = dir.join(format!(
        ".opampctl-doctor-probe-{}",
        uuid::Uuid::new_v4().as_simple()
    ));
    let writable = match crate::files::create_private(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            true
        }
        Err(_) => false,
    };
    let mut notes = vec![format!(
        "{} mode {:o}, owner uid {}",
        dir.display(),
        mode,
        meta.uid()
    )];
    let mut verdict = Verdict::Ok;
    let mut remedy = None;
    if !writable {
        verdict = Verdict::Fail;
        notes.push(format!(
            "not writable by this user (uid {})",
            procfs::current_uid()
        ));
        remedy = Some(format!(
            "chown -R <service user> {} (opampd must write the database, WAL and backups there); or run opampctl as the service user",
            dir.display()
        ));
    }
    if mode & 0o007 != 0 {
        if verdict == Verdict::Ok {
            verdict = Verdict::Warn;
        }
        notes.push("readable by other users".into());
        remedy.get_or_insert_with(|| {
            format!(
                "chmod o-rwx {}: it holds the database and admin.token",
                dir.display()
            )
        });
    }
    let token = dir.join("admin.token");
    if let Ok(token_meta) = std::fs::metadata(&token) {
        if token_meta.permissions().mode() & 0o077 != 0 {
            if verdict == Verdict::Ok {
                verdict = Verdict::Warn;
            }
            notes.push(format!(
                "admin.token mode {:o} (should be 600)",
                token_meta.permissions().mode() & 0o777
            ));
            remedy.get_or_insert_with(|| format!("chmod 600 {}", token.display()));
        }
    }
    Check {
        name: "data-dir".into(),
        verdict,
        detail: notes.join("; "),
        remedy,
    }
}
