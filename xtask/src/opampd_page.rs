//! `man/opampd.8`: clap's sections of [`opampd::cli::command`], then the
//! sections clap does not describe, from the constants in `opampd::cli`.

use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;
use opampctl::docs::{definitions, section, see_also, tidy, MAN_DATE};
use opampd::cli;

/// File name and roff of opampd's man page.
pub fn render() -> std::io::Result<(String, Vec<u8>)> {
    let mut cmd = cli::command().long_about(cli::DESCRIPTION);
    cmd.build();
    let version = cmd.get_version().unwrap_or_default().to_string();
    let man = Man::new(cmd.clone())
        .title("OPAMPD")
        .section("8")
        .manual("System Administration")
        .date(MAN_DATE)
        .source(format!("opampd {version}"));
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    let mut roff = Roff::new();
    commands(&mut roff, &cmd);
    section(&mut roff, "CONFIGURATION");
    roff.text([roman(cli::CONFIGURATION_INTRO)]);
    for (keys, text) in cli::CONFIGURATION {
        roff.control("TP", []);
        roff.text([bold(*keys)]);
        roff.text([roman(*text)]);
    }
    definitions(&mut roff, "ENVIRONMENT", cli::ENVIRONMENT, false);
    definitions(&mut roff, "FILES", cli::FILES, true);
    definitions(&mut roff, "SIGNALS", cli::SIGNALS, false);
    definitions(&mut roff, "EXIT STATUS", cli::EXIT_STATUS, false);
    see_also(&mut roff, cli::SEE_ALSO);
    roff.to_writer(&mut out)?;
    Ok(("opampd.8".to_string(), tidy(&out)))
}

/// COMMANDS: each subcommand with its description and its own options (the
/// global ones are under OPTIONS already).
fn commands(roff: &mut Roff, cmd: &clap::Command) {
    section(roff, "COMMANDS");
    // clap's own `help` subcommand needs no entry.
    let subcommands = cmd
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help");
    for sub in subcommands {
        roff.control("TP", []);
        roff.text([bold(sub.get_name())]);
        let about = match sub.get_name() {
            "check-config" => cli::CHECK_CONFIG.to_string(),
            _ => sub.get_about().map(|a| a.to_string()).unwrap_or_default(),
        };
        roff.text([roman(about)]);
        let options: Vec<&clap::Arg> = sub
            .get_arguments()
            .filter(|arg| !arg.is_global_set() && !arg.is_hide_set() && arg.get_long().is_some())
            .filter(|arg| arg.get_id() != "help")
            .collect();
        if options.is_empty() {
            continue;
        }
        roff.control("RS", []);
        for arg in options {
            roff.control("TP", []);
            roff.text([bold(format!("--{}", arg.get_long().unwrap_or_default()))]);
            roff.text([roman(
                arg.get_help().map(|h| h.to_string()).unwrap_or_default(),
            )]);
        }
        roff.control("RE", []);
    }
}
