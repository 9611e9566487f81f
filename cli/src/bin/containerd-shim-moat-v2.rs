//! `containerd-shim-moat-v2`: containerd's task API v2 for moat (docs/containerd.md).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    moat_cli::shim::main()
}
