//! Who may do what: login, users, tokens and the audit log.

use super::parse::{parse_duration, parse_lifetime, parse_since};
use clap::{Args, Subcommand};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The user to log in as [default: asked on a terminal]
    #[arg(short = 'u', long, value_name = "NAME")]
    pub username: Option<String>,
    /// Read the password from stdin (its first line) instead of asking on the terminal
    #[arg(long)]
    pub password_stdin: bool,
}

/// The roles of users and tokens.
const ROLES: [&str; 3] = ["admin", "operator", "viewer"];

#[derive(Subcommand, Debug)]
pub enum UsersCmd {
    /// List the users and their roles
    List,
    /// Create a user; the password is read from stdin (--password-stdin)
    Create {
        /// User name: 1-64 of letters, digits, '.', '_', '-', '@'
        name: String,
        /// The user's role
        #[arg(long, value_parser = ROLES)]
        role: String,
        /// Read the password from stdin (its first line)
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's role (their tokens above it are lowered to it)
    SetRole {
        /// The user to change
        name: String,
        /// The new role
        #[arg(value_parser = ROLES)]
        role: String,
    },
    /// Set a user's password, read from stdin (--password-stdin)
    SetPassword {
        /// The user to change
        name: String,
        /// Read the password from stdin (its first line)
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user and revoke their tokens
    Delete {
        /// The user to delete
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokensCmd {
    /// List your tokens (an admin: everybody's)
    List,
    /// Create a token; prints its secret once (also with -q)
    Create {
        /// What the token is for (1-64 characters)
        name: String,
        /// Its role, at most yours (default: yours)
        #[arg(long, value_parser = ROLES)]
        role: Option<String>,
        /// Lifetime in days (1-3650), or `never` (default: the server's, 90 days)
        #[arg(long, value_name = "DAYS|never", value_parser = parse_lifetime)]
        expires_in_days: Option<opamp_proto::api::TokenLifetime>,
    },
    /// Revoke a token by its id (see tokens list)
    Revoke {
        /// The token's id (the ID column of tokens list)
        id: String,
    },
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only entries by this actor (user name, or token:NAME)
    #[arg(long)]
    pub actor: Option<String>,
    /// Only entries of this action (login, config.apply, agent.delete, user.create, …)
    #[arg(long)]
    pub action: Option<String>,
    /// Only entries at or after this time: RFC 3339 (2026-01-31T12:00:00Z) or an age (30m, 2h, 7d)
    #[arg(long, value_name = "TIME|AGE", value_parser = parse_since)]
    pub since: Option<String>,
    /// At most this many entries, newest first (1-1000)
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Keep printing new entries as they are recorded (polls every --interval; Ctrl-C stops)
    #[arg(short, long)]
    pub follow: bool,
    /// How often -f polls
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub interval: Duration,
}
