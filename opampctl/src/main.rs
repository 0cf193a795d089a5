//! The opampctl binary; everything is in the library.

fn main() -> std::process::ExitCode {
    opampctl::main()
}
