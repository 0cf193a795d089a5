//! Generated files stay fresh: completions/ and man/ are what
//! `cargo xtask codegen` produces from the clap definitions (this test calls
//! the same code); the binaries print the same pages and scripts; man pages
//! pass `mandoc -T lint`; bash loads the completion; the operator guide covers
//! every subcommand.

use opamp_tests::{ctl_env, root, stderr, stdout};
use std::process::Command;

use xtask::codegen::REGENERATE;

fn tool(name: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("OPAMP_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
            panic!("{name} is required (OPAMP_REQUIRE_TOOLS=1): run scripts/test-deps.sh");
        }
        println!("SKIPPED: {name} is not installed (scripts/test-deps.sh installs it)");
    }
    found
}

#[test]
fn generated_files_are_fresh() {
    let differences = xtask::codegen::stale(&root()).unwrap();
    assert!(
        differences.is_empty(),
        "{}; {REGENERATE}",
        differences
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let generated = xtask::codegen::generate().unwrap();
    let pages = generated
        .iter()
        .filter(|file| file.path.starts_with("man/opampctl"))
        .count();
    assert!(pages > 30, "{pages} opampctl man pages");
    assert!(generated.iter().any(|file| file.path == "man/opampd.8"));
}

#[test]
fn opampctl_prints_the_committed_pages_and_completions() {
    for (file, shell) in [
        ("opampctl.bash", "bash"),
        ("_opampctl", "zsh"),
        ("opampctl.fish", "fish"),
    ] {
        let o = ctl_env(&["completions", shell], &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        let committed = std::fs::read(root().join("completions").join(file))
            .unwrap_or_else(|e| panic!("completions/{file}: {e}; {REGENERATE}"));
        assert!(
            committed == o.stdout,
            "opampctl completions {shell} differs from completions/{file}; {REGENERATE}"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let o = ctl_env(&["man", "--dir", tmp.path().to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut written: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    written.sort();
    assert!(written.len() > 30, "{written:?}");
    for name in &written {
        let new = std::fs::read(tmp.path().join(name)).unwrap();
        let old = std::fs::read(root().join("man").join(name))
            .unwrap_or_else(|e| panic!("man/{name}: {e}; {REGENERATE}"));
        assert!(
            new == old,
            "opampctl man writes another man/{name}; {REGENERATE}"
        );
    }
    // Without --dir: the main page on stdout.
    let o = ctl_env(&["man"], &[]);
    assert_eq!(
        o.stdout,
        std::fs::read(root().join("man/opampctl.1")).unwrap()
    );
}

#[test]
fn the_main_page_documents_exit_status_environment_and_files() {
    let page = std::fs::read_to_string(root().join("man/opampctl.1")).unwrap();
    for needle in [
        ".SH \"EXIT STATUS\"",
        ".SH ENVIRONMENT",
        ".SH FILES",
        "OPAMPCTL_SERVER",
        "OPAMPCTL_TOKEN",
        "NO_COLOR",
        "unreachable",
        "admin.token",
    ] {
        assert!(page.contains(needle), "opampctl.1 lacks {needle}");
    }
    let sub = std::fs::read_to_string(root().join("man/opampctl-backup.1")).unwrap();
    assert!(
        sub.contains("EXIT STATUS") && sub.contains("\\-\\-retention\\-days"),
        "{sub}"
    );
    let daemon = std::fs::read_to_string(root().join("man/opampd.8")).unwrap();
    for needle in [
        "OPAMPD_DATA_DIR",
        "JWT_SECRET_KEY",
        "SIGHUP",
        "EXIT STATUS",
        "database.max_open_conns",
        "check\\-config",
        ".SH CONFIGURATION",
        ".SH SIGNALS",
        ".SH FILES",
    ] {
        assert!(daemon.contains(needle), "opampd.8 lacks {needle}");
    }
}

#[test]
fn man_pages_pass_mandoc_lint() {
    if !tool("mandoc") {
        return;
    }
    let mut pages: Vec<String> = std::fs::read_dir(root().join("man"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    pages.sort();
    let o = Command::new("mandoc")
        .arg("-T")
        .arg("lint")
        .args(&pages)
        .output()
        .unwrap();
    assert!(
        o.status.success() && o.stdout.is_empty() && o.stderr.is_empty(),
        "mandoc -T lint:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
}

#[test]
fn bash_loads_the_completion() {
    if !tool("bash") {
        return;
    }
    let o = Command::new("bash")
        .current_dir(root())
        .arg("-c")
        .arg("source completions/opampctl.bash && complete -p opampctl")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("opampctl"), "{}", stdout(&o));
    // And it completes subcommands.
    let o = Command::new("bash")
        .current_dir(root())
        .arg("-c")
        .arg("source completions/opampctl.bash; COMP_WORDS=(opampctl ba); COMP_CWORD=1; _opampctl opampctl ba opampctl; printf '%s\\n' \"${COMPREPLY[@]}\"")
        .output()
        .unwrap();
    assert!(
        stdout(&o).lines().any(|l| l == "backup"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
}

#[test]
fn every_subcommand_has_help_and_an_operator_section() {
    let guide = std::fs::read_to_string(root().join("docs/opampctl.md")).unwrap();
    let subs = [
        "health",
        "agents",
        "configs",
        "rollout",
        "backup",
        "restore",
        "logs",
        "restart",
        "doctor",
        "troubleshoot",
        "db",
        "alerts",
        "completions",
        "man",
    ];
    for sub in subs {
        let o = ctl_env(&[sub, "--help"], &[]);
        assert!(o.status.success(), "{sub} --help: {}", stderr(&o));
        assert!(
            guide.contains(&format!("opampctl {sub}")),
            "docs/opampctl.md does not show `opampctl {sub}`"
        );
    }
    assert!(guide.contains(
        "17 3 * * * opampctl -q backup --dir /var/backups/opampd --retention-days 14 --verify"
    ));
}

#[test]
fn man_dir_replaces_its_pages_and_never_writes_through_a_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let planted = tmp.path().join("opampctl.1");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let dir = tmp.path().to_str().unwrap();
    for _ in 0..2 {
        // The second run replaces the first run's pages.
        let o = ctl_env(&["man", "--dir", dir], &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        let meta = planted.symlink_metadata().unwrap();
        assert!(meta.is_file(), "the symlink is replaced by the page");
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(
            std::fs::read(&planted).unwrap(),
            std::fs::read(root().join("man/opampctl.1")).unwrap()
        );
        let left: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| !name.ends_with(".1"))
            .collect();
        assert!(left.is_empty(), "no temporary left: {left:?}");
    }
}
