//! Errors carry the exit status they end opampctl with.

use std::fmt;

/// Exit statuses; documented in the man page (see `cli::EXIT_STATUS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// The operation or a check failed, or the server is unhealthy.
    Failed = 1,
    /// Bad command line: flags, arguments, files or values given.
    Usage = 2,
    /// The server could not be reached (refused, DNS, timeout).
    Unreachable = 3,
}

#[derive(Debug)]
pub struct CtlError {
    pub exit: Exit,
    /// Empty when the command already said everything (e.g. an unhealthy report).
    pub message: String,
}

pub type Result<T> = std::result::Result<T, CtlError>;

impl CtlError {
    pub fn failed(message: impl Into<String>) -> Self {
        CtlError {
            exit: Exit::Failed,
            message: message.into(),
        }
    }
    pub fn usage(message: impl Into<String>) -> Self {
        CtlError {
            exit: Exit::Usage,
            message: message.into(),
        }
    }
    pub fn unreachable(message: impl Into<String>) -> Self {
        CtlError {
            exit: Exit::Unreachable,
            message: message.into(),
        }
    }
    /// Exit with `exit` and no further message.
    pub fn silent(exit: Exit) -> Self {
        CtlError {
            exit,
            message: String::new(),
        }
    }
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CtlError {}

impl From<anyhow::Error> for CtlError {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<CtlError>() {
            Ok(c) => c,
            Err(e) => CtlError::failed(format!("{e:#}")),
        }
    }
}

impl From<std::io::Error> for CtlError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            crate::output::broken_pipe();
        }
        CtlError::failed(e.to_string())
    }
}

/// Adds what was being done to an error's message.
pub trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| CtlError::failed(format!("{}: {e}", what())))
    }
}
