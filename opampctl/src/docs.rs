//! Man pages and shell completions, generated from [`crate::cli::command`].
//! The committed copies in `completions/` and `man/` are checked by a test
//! that regenerates them.

use crate::cli::{self, ENVIRONMENT, EXIT_STATUS, FILES};
use crate::error::{CtlError, Result};
use clap_mangen::roff::{bold, italic, roman, Roff};
use clap_mangen::Man;
use std::path::Path;

/// Date of the man pages (`.TH`): change it when their content changes
/// materially. Fixed, so regenerating them is reproducible.
pub const MAN_DATE: &str = "2026-11-25";

/// Completion files as committed: (file name, shell).
pub const COMPLETION_FILES: &[(&str, clap_complete::Shell)] = &[
    ("opampctl.bash", clap_complete::Shell::Bash),
    ("_opampctl", clap_complete::Shell::Zsh),
    ("opampctl.fish", clap_complete::Shell::Fish),
];

/// The completion script for `shell`.
pub fn completion(shell: clap_complete::Shell) -> Vec<u8> {
    let mut cmd = cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "opampctl", &mut out);
    out
}

pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    crate::output::out_raw(&completion(shell));
    Ok(())
}

fn section(roff: &mut Roff, name: &str) {
    roff.control("SH", [name]);
}

fn exit_status(roff: &mut Roff) {
    section(roff, "EXIT STATUS");
    for line in EXIT_STATUS.lines() {
        let (code, text) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        roff.control("TP", []);
        roff.text([bold(code)]);
        roff.text([roman(text.trim())]);
    }
}

fn environment(roff: &mut Roff) {
    section(roff, "ENVIRONMENT");
    for (k, v) in ENVIRONMENT {
        roff.control("TP", []);
        roff.text([bold(*k)]);
        roff.text([roman(*v)]);
    }
}

fn files(roff: &mut Roff) {
    section(roff, "FILES");
    for (k, v) in FILES {
        roff.control("TP", []);
        roff.text([italic(*k)]);
        roff.text([roman(*v)]);
    }
}

fn see_also(roff: &mut Roff, pages: &[String]) {
    section(roff, "SEE ALSO");
    let mut inl = Vec::new();
    for (i, p) in pages.iter().enumerate() {
        let (name, sec) = p.split_once('(').unwrap_or((p, "1)"));
        inl.push(bold(name));
        let sep = if i + 1 < pages.len() { "), " } else { ")" };
        inl.push(roman(format!("({}{sep}", sec.trim_end_matches(')'))));
    }
    roff.text(inl);
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
        environment(&mut roff);
        files(&mut roff);
        see_also(&mut roff, &["opampd(8)".to_string()]);
    } else {
        section(&mut roff, "ENVIRONMENT");
        roff.text([
            roman("The options marked with an environment variable read it; see "),
            bold("opampctl"),
            roman("(1) for all of them."),
        ]);
        see_also(
            &mut roff,
            &["opampctl(1)".to_string(), "opampd(8)".to_string()],
        );
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
            for (name, text) in &pages {
                let p = d.join(name);
                std::fs::write(&p, text)
                    .map_err(|e| CtlError::failed(format!("cannot write {}: {e}", p.display())))?;
            }
            eprintln!("wrote {} man pages to {}", pages.len(), d.display());
            Ok(())
        }
    }
}
