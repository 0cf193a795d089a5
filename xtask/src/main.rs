//! `cargo xtask codegen [--check]`: see the library's documentation.

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask codegen [--check]

  codegen          regenerate man/ and completions/ from the clap definitions
  codegen --check  write nothing; exit 1 if a generated file is stale";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let root = xtask::codegen::repository_root();
    match args.as_slice() {
        ["codegen"] => match xtask::codegen::write(&root) {
            Ok(changes) => {
                for change in &changes {
                    println!("{change}");
                }
                println!(
                    "codegen: {} file(s) changed in man/ and completions/",
                    changes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("xtask codegen: error: {e:#}");
                ExitCode::FAILURE
            }
        },
        ["codegen", "--check"] => match xtask::codegen::stale(&root) {
            Ok(stale) if stale.is_empty() => {
                println!("codegen: man/ and completions/ are up to date");
                ExitCode::SUCCESS
            }
            Ok(stale) => {
                for problem in &stale {
                    eprintln!("{problem}");
                }
                eprintln!("run `cargo xtask codegen` and commit the result");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("xtask codegen: error: {e:#}");
                ExitCode::FAILURE
            }
        },
        ["help"] | ["--help"] | ["-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("xtask: unknown task {:?}\n{USAGE}", args.join(" "));
            ExitCode::from(2)
        }
    }
}
