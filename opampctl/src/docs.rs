//! Man pages and shell completions, generated from [`crate::cli::command`].
//! `opampctl man` and `opampctl completions` print them; `cargo xtask codegen`
//! writes the committed copies in `man/` and `completions/` (with opampd's
//! page, which uses the roff helpers here), and a test checks they are fresh.

use crate::cli::{self, ENVIRONMENT, EXIT_STATUS, FILES};
use crate::error::{CtlError, Result};
use crate::files::{self, PrivateDir};
use clap_mangen::roff::{bold, italic, roman, Roff};
use clap_mangen::Man;
use std::path::Path;

mod completion;

/// Date of the man pages (`.TH`): change it when their content changes
/// materially. Fixed, so regenerating them is reproducible.
pub const MAN_DATE: &str = "2026-11-25";

/// Completion files as committed: (file name, shell).
pub const COMPLETION_FILES: &[(&str, clap_complete::Shell)] = &[
    ("opampctl.bash", clap_complete::Shell::Bash),
    ("_opampctl", clap_complete::Shell::Zsh),
    ("opampctl.fish", clap_complete::Shell::Fish),
];

/// The completion script for `shell`: clap's, plus what asks the server for
/// agent uids and configuration names (see [`server_values`]).
pub fn completion(shell: clap_complete::Shell) -> Vec<u8> {
    let mut cmd = cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "opampctl", &mut out);
    let script = String::from_utf8_lossy(&out).into_owned();
    let values = server_values();
    let script = match shell {
        clap_complete::Shell::Bash => completion::bash(&script, &values, &value_options()),
        clap_complete::Shell::Zsh => completion::zsh(&script, &values),
        clap_complete::Shell::Fish => completion::fish(&script, &values),
        _ => script,
    };
    script.into_bytes()
}

/// A positional argument whose candidates come from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerValue {
    /// Subcommand names from the top, e.g. `["agents", "show"]`.
    pub path: Vec<String>,
    /// Its index among the command's positional arguments.
    pub position: usize,
    /// The argument's id (`uid` or `config`), unique to its kind.
    pub id: String,
    /// What `opampctl __complete` lists: `agents` or `configs`.
    pub kind: &'static str,
}

/// The value names that mark an argument taking an agent uid or a
/// configuration name, with the id such arguments have and the kind.
const SERVER_VALUE_NAMES: &[(&str, &str, &str)] =
    &[("UID", "uid", "agents"), ("CONFIG", "config", "configs")];

/// Every positional argument named UID (an agent) or CONFIG (a
/// configuration) in the clap definition. Panics when such an argument has
/// another id than its kind's, or another argument uses that id: the zsh
/// script finds the arguments by id.
pub fn server_values() -> Vec<ServerValue> {
    fn walk(cmd: &clap::Command, path: &mut Vec<String>, out: &mut Vec<ServerValue>) {
        for (position, arg) in cmd.get_positionals().enumerate() {
            let value_name = arg
                .get_value_names()
                .and_then(|names| names.first())
                .map(|name| name.as_str());
            let marked = SERVER_VALUE_NAMES
                .iter()
                .find(|(name, _, _)| Some(*name) == value_name);
            let by_id = SERVER_VALUE_NAMES
                .iter()
                .find(|(_, id, _)| *id == arg.get_id().as_str());
            assert_eq!(
                marked.map(|m| m.1),
                by_id.map(|m| m.1),
                "opampctl {}: the argument {} must have the id and value name of its kind ({SERVER_VALUE_NAMES:?}) or neither",
                path.join(" "),
                arg.get_id()
            );
            if let Some((_, id, kind)) = marked {
                out.push(ServerValue {
                    path: path.clone(),
                    position,
                    id: id.to_string(),
                    kind,
                });
            }
        }
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            path.push(sub.get_name().to_string());
            walk(sub, path, out);
            path.pop();
        }
    }
    let mut cmd = cli::command();
    cmd.build();
    let mut out = Vec::new();
    walk(&cmd, &mut Vec::new(), &mut out);
    out
}

/// Every option that takes a value (`--server`, `-l`), for the bash script
/// to skip their values when it counts positional arguments.
fn value_options() -> Vec<String> {
    fn walk(cmd: &clap::Command, out: &mut std::collections::BTreeSet<String>) {
        for arg in cmd.get_arguments().filter(|a| !a.is_positional()) {
            if arg.get_action().takes_values() {
                if let Some(long) = arg.get_long() {
                    out.insert(format!("--{long}"));
                }
                if let Some(short) = arg.get_short() {
                    out.insert(format!("-{short}"));
                }
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut cmd = cli::command();
    cmd.build();
    let mut out = std::collections::BTreeSet::new();
    walk(&cmd, &mut out);
    out.into_iter().collect()
}

pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    crate::output::out_raw(&completion(shell));
    Ok(())
}

/// Starts a section (`.SH`).
pub fn section(roff: &mut Roff, name: &str) {
    roff.control("SH", [name]);
}

/// A section of terms and their descriptions (`.TP`), the terms in bold, or
/// in italics for file names (`italic_terms`).
pub fn definitions(roff: &mut Roff, name: &str, entries: &[(&str, &str)], italic_terms: bool) {
    section(roff, name);
    for (term, text) in entries {
        roff.control("TP", []);
        roff.text([if italic_terms {
            italic(*term)
        } else {
            bold(*term)
        }]);
        roff.text([roman(*text)]);
    }
}

fn exit_status(roff: &mut Roff) {
    let entries: Vec<(&str, &str)> = EXIT_STATUS
        .lines()
        .map(|line| {
            let (code, text) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            (code, text.trim())
        })
        .collect();
    definitions(roff, "EXIT STATUS", &entries, false);
}

/// SEE ALSO: (page, section) pairs, as `name(section), ...`.
pub fn see_also(roff: &mut Roff, pages: &[(&str, &str)]) {
    section(roff, "SEE ALSO");
    let mut inline = Vec::new();
    for (i, (name, sec)) in pages.iter().enumerate() {
        inline.push(bold(*name));
        let sep = if i + 1 < pages.len() { "), " } else { ")" };
        inline.push(roman(format!("({sec}{sep}")));
    }
    roff.text(inline);
}

/// Renders one page: clap's sections, then exit status, environment, files.
fn page(cmd: clap::Command, root: bool) -> std::io::Result<(String, Vec<u8>)> {
    let name = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string();
    let has_subs = cmd.get_subcommands().any(|s| !s.is_hide_set());
    let man = Man::new(cmd)
        .title(name.to_uppercase())
        .manual("opampctl manual")
        .date(MAN_DATE)
        .source(format!("opampctl {}", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    if has_subs {
        man.render_subcommands_section(&mut out)?;
    }
    let mut roff = Roff::new();
    exit_status(&mut roff);
    if root {
        definitions(&mut roff, "ENVIRONMENT", ENVIRONMENT, false);
        definitions(&mut roff, "FILES", FILES, true);
        see_also(&mut roff, &[("opampd", "8")]);
    } else {
        section(&mut roff, "ENVIRONMENT");
        roff.text([
            roman("The options marked with an environment variable read it; see "),
            bold("opampctl"),
            roman("(1) for all of them."),
        ]);
        see_also(&mut roff, &[("opampctl", "1"), ("opampd", "8")]);
    }
    roff.to_writer(&mut out)?;
    Ok((format!("{name}.1"), tidy(&out)))
}

/// Smooths clap_mangen's roff for `mandoc -T lint`: no trailing blanks, no
/// `.br` around blank lines, text lines of at most 80 bytes (fill mode joins
/// them again).
pub fn tidy(roff: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(roff).replace(".br\n\n.br\n", ".sp\n");
    let mut out = String::with_capacity(text.len());
    let mut prev = "";
    for line in text.lines() {
        let line = line.trim_end();
        let is_text = !line.starts_with('.') && !line.starts_with('\'');
        if is_text && line.len() > 80 && prev != ".TP" {
            let mut cur = String::new();
            for word in line.split(' ').filter(|w| !w.is_empty()) {
                if !cur.is_empty() && cur.len() + 1 + word.len() > 80 {
                    out.push_str(&cur);
                    out.push('\n');
                    cur.clear();
                }
                if cur.is_empty() {
                    if word.starts_with('.') || word.starts_with('\'') {
                        cur.push_str("\\&");
                    }
                } else {
                    cur.push(' ');
                }
                cur.push_str(word);
            }
            out.push_str(&cur);
            out.push('\n');
        } else {
            out.push_str(line);
            out.push('\n');
        }
        prev = line;
    }
    out.into_bytes()
}

/// Every opampctl man page: (file name, roff), root first.
pub fn man_pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = cli::command();
    cmd.build();
    let mut pages = vec![page(cmd.clone(), true)?];
    fn walk(cmd: &clap::Command, pages: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            pages.push(page(sub.clone(), false)?);
            walk(sub, pages)?;
        }
        Ok(())
    }
    walk(&cmd, &mut pages)?;
    Ok(pages)
}

pub fn man(dir: Option<&Path>) -> Result<()> {
    let pages =
        man_pages().map_err(|e| CtlError::failed(format!("rendering the man pages: {e}")))?;
    match dir {
        None => {
            crate::output::out_raw(&pages[0].1);
            Ok(())
        }
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| {
                CtlError::failed(format!("cannot create --dir {}: {e}", d.display()))
            })?;
            // Each page is written new and renamed over its name: an earlier
            // page is replaced, a planted symlink is never written through.
            let scratch = PrivateDir::new_in(d, "man").map_err(|e| {
                CtlError::failed(format!(
                    "cannot create a private temporary directory in --dir {}: {e}",
                    d.display()
                ))
            })?;
            for (name, text) in &pages {
                let p = d.join(name);
                files::write_replacing(&scratch, &p, text, 0o644)
                    .map_err(|e| CtlError::failed(format!("cannot write {}: {e}", p.display())))?;
            }
            eprintln!("wrote {} man pages to {}", pages.len(), d.display());
            Ok(())
        }
    }
}
