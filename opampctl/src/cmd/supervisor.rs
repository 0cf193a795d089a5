//! The supervisors' own commands (systemd, docker compose, Kubernetes), as
//! the runbook gives them, and how opampctl runs them.

use crate::cli::{LogSource, Supervisor, SupervisorArgs};
use crate::error::{CtlError, Result};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};

pub const COMPOSE_SERVICE: &str = "opamp-server";
pub const K8S_DEPLOYMENT: &str = "deploy/opamp-server";
/// The pod label of deploy/kubernetes/deployment.yaml: every pod of the deployment.
pub const K8S_POD_SELECTOR: &str = "app.kubernetes.io/name=opampd";

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|word| word.to_string()).collect()
}

fn compose(sup: &SupervisorArgs) -> Vec<String> {
    let mut v = strings(&["docker", "compose"]);
    if let Some(f) = &sup.compose_file {
        v.push("-f".into());
        v.push(f.display().to_string());
    }
    v
}

/// The commands that restart opampd, in order.
pub fn restart_commands(via: Supervisor, sup: &SupervisorArgs) -> Vec<Vec<String>> {
    match via {
        Supervisor::Systemd => vec![strings(&["systemctl", "restart", &sup.unit])],
        Supervisor::Compose => {
            let mut v = compose(sup);
            v.extend(strings(&["restart", COMPOSE_SERVICE]));
            vec![v]
        }
        Supervisor::Kubernetes => vec![
            strings(&[
                "kubectl",
                "-n",
                &sup.namespace,
                "rollout",
                "restart",
                K8S_DEPLOYMENT,
            ]),
            strings(&[
                "kubectl",
                "-n",
                &sup.namespace,
                "rollout",
                "status",
                K8S_DEPLOYMENT,
            ]),
        ],
    }
}

/// journald's name for a minimum level.
fn journal_priority(level: &str) -> &'static str {
    match level {
        "error" => "err",
        "warn" => "warning",
        "info" => "info",
        _ => "debug",
    }
}

/// The command that shows opampd's log.
pub fn log_command(
    via: LogSource,
    sup: &SupervisorArgs,
    lines: usize,
    follow: bool,
    level: Option<&str>,
) -> Vec<String> {
    let n = lines.to_string();
    let mut v = match via {
        LogSource::Journald => strings(&["journalctl", "-u", &sup.unit, "-n", &n]),
        LogSource::Compose => {
            let mut v = compose(sup);
            v.extend(strings(&["logs", "--tail", &n]));
            v
        }
        // Every pod and container of the deployment, each line prefixed with
        // its pod (during a restart the old and the new pod both log).
        LogSource::Kubernetes => strings(&[
            "kubectl",
            "-n",
            &sup.namespace,
            "logs",
            "-l",
            K8S_POD_SELECTOR,
            "--all-containers",
            "--prefix",
            "--tail",
            &n,
        ]),
    };
    if follow {
        v.push("-f".into());
    }
    match via {
        LogSource::Journald => {
            if let Some(l) = level {
                v.push("-p".into());
                v.push(journal_priority(l).into());
            }
        }
        LogSource::Compose => v.push(COMPOSE_SERVICE.into()),
        LogSource::Kubernetes => {}
    }
    v
}

/// A program's path on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Shell-like rendering of an argv, for messages and --dry-run.
pub fn show(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| {
            if arg.is_empty()
                || arg
                    .chars()
                    .any(|ch| ch.is_whitespace() || "'\"$`\\|&;<>()*?".contains(ch))
            {
                format!("'{}'", arg.replace('\'', "'\\''"))
            } else {
                arg.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn command(argv: &[String]) -> Result<Command> {
    let program = &argv[0];
    if which(program).is_none() {
        return Err(CtlError::failed(format!(
            "{program} is not on PATH: cannot run `{}`; install it or pick another --via",
            show(argv)
        )));
    }
    let mut command = Command::new(program);
    command.args(&argv[1..]);
    Ok(command)
}

/// Runs with the terminal (stdin, stdout, stderr inherited).
pub fn run_inherit(argv: &[String]) -> Result<ExitStatus> {
    command(argv)?
        .stdin(Stdio::inherit())
        .status()
        .map_err(|e| CtlError::failed(format!("cannot run `{}`: {e}", show(argv))))
}

/// Runs and fails unless it exits 0; its output goes to stderr.
pub fn run_checked(argv: &[String]) -> Result<()> {
    let st = command(argv)?
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            std::io::stderr()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| CtlError::failed(e.to_string()))?,
        ))
        .status()
        .map_err(|e| CtlError::failed(format!("cannot run `{}`: {e}", show(argv))))?;
    if st.success() {
        Ok(())
    } else {
        Err(CtlError::failed(format!("`{}` failed ({st})", show(argv))))
    }
}

use std::os::fd::AsFd;

/// Runs with stdout piped, for filtering; stdin and stderr inherited.
pub fn spawn_piped(argv: &[String]) -> Result<std::process::Child> {
    command(argv)?
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| CtlError::failed(format!("cannot run `{}`: {e}", show(argv))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sup() -> SupervisorArgs {
        SupervisorArgs {
            unit: "opampd".into(),
            compose_file: None,
            namespace: "opamp-platform".into(),
        }
    }

    #[test]
    fn runbook_commands() {
        assert_eq!(
            show(&log_command(
                LogSource::Journald,
                &sup(),
                50,
                true,
                Some("warn")
            )),
            "journalctl -u opampd -n 50 -f -p warning"
        );
        assert_eq!(
            show(&log_command(LogSource::Compose, &sup(), 100, false, None)),
            "docker compose logs --tail 100 opamp-server"
        );
        assert_eq!(
            show(&log_command(LogSource::Kubernetes, &sup(), 100, true, None)),
            "kubectl -n opamp-platform logs -l app.kubernetes.io/name=opampd --all-containers --prefix --tail 100 -f"
        );
        let k = restart_commands(Supervisor::Kubernetes, &sup());
        assert_eq!(
            show(&k[1]),
            "kubectl -n opamp-platform rollout status deploy/opamp-server"
        );
    }
}
