//! The `moat-vmm` binary.

fn main() {
    eprintln!("moat-vmm: not built yet");
    std::process::exit(1);
}
