//! Project tasks, run as `cargo xtask TASK` (an alias in `.cargo/config.toml`).
//!
//! - [`codegen`]: regenerates the files generated from the clap definitions
//!   (`man/`, `completions/`); the freshness test calls the same code.

pub mod codegen;
mod opampd_page;
