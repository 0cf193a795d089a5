//! Man pages and shell completions, generated from [`crate::cli::command`].
//! `opampctl man` and `opampctl completions` print them; `cargo xtask codegen`
//! writes the committed copies in `man/` and `completions/` (with opampd's
//! page, which uses the roff helpers here), and a test checks they are fresh.

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
