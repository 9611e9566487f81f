//! `moat`: see the library's documentation.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    moat_cli::main()
}
