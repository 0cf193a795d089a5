//! Questions to the person at the terminal: confirmations, a user name, a
//! password without echo. A script cannot answer them: without a terminal
//! each one is a usage error that names the flag to pass instead.

use crate::error::{CtlError, Result};
use std::io::{IsTerminal, Write};

/// Asks `what. Continue? [y/N]` on a terminal; `yes` (the --yes flag) skips
/// the question. Without a terminal and without --yes: exit 2.
pub fn confirm(yes: bool, what: &str) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(CtlError::usage(format!(
            "{what}: pass --yes to confirm (standard input is not a terminal to ask)"
        )));
    }
    eprint!("{what}. Continue? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        Err(CtlError::failed("not confirmed; nothing was changed"))
    }
}

/// The first line of standard input, without its line end (`what` names it
/// in errors, e.g. "the password"). An empty line is a usage error.
pub fn stdin_line(what: &str, flag: &str) -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| CtlError::usage(format!("cannot read {what} from stdin: {e}")))?;
    let text = line.trim_end_matches(['\r', '\n']).to_string();
    if text.is_empty() {
        return Err(CtlError::usage(format!(
            "{flag}: stdin held no {what} (an empty first line)"
        )));
    }
    Ok(text)
}

/// Asks for a line on the terminal (echoed); `flag` is what a script passes instead.
pub fn ask(question: &str, flag: &str) -> Result<String> {
    if !std::io::stdin().is_terminal() {
        return Err(CtlError::usage(format!(
            "pass {flag} (standard input is not a terminal to ask)"
        )));
    }
    // One write: a terminal echoing early typing cannot split the question.
    let _ = std::io::stderr().write_all(format!("{question}: ").as_bytes());
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| CtlError::usage(format!("cannot read the answer: {e}")))?;
    let answer = answer.trim().to_string();
    if answer.is_empty() {
        return Err(CtlError::usage(format!("no answer given: pass {flag}")));
    }
    Ok(answer)
}

/// Asks for a secret on the terminal without echoing it; `flag` is what a
/// script passes instead (e.g. --password-stdin).
pub fn ask_secret(question: &str, flag: &str) -> Result<String> {
    if !std::io::stdin().is_terminal() {
        return Err(CtlError::usage(format!(
            "pass {flag} (standard input is not a terminal to ask)"
        )));
    }
    // One write: a terminal echoing early typing cannot split the question.
    let _ = std::io::stderr().write_all(format!("{question}: ").as_bytes());
    let _ = std::io::stderr().flush();
    let secret = console::Term::stderr()
        .read_secure_line()
        .map_err(|e| CtlError::usage(format!("cannot read from the terminal: {e}")))?;
    if secret.is_empty() {
        return Err(CtlError::usage(format!("no answer given: pass {flag}")));
    }
    Ok(secret)
}
