//! Benchmark switch: with `moat.bench=reset` on the kernel command line, PID 1 mounts what it
//! always mounts and then ends the VM at once (sync + reboot) instead of connecting to the host.
//!
//! `bench/run` boots moat-vmm and QEMU microvm to this same point to compare them; normal runs
//! never set it.

/// The command-line word that asks for the reset.
const RESET_WORD: &str = "moat.bench=reset";

/// Whether `cmdline` (the contents of /proc/cmdline) asks for the benchmark reset.
fn wants_reset(cmdline: &str) -> bool {
    cmdline.split_ascii_whitespace().any(|w| w == RESET_WORD)
}

/// Whether this boot asks for the benchmark reset; false when /proc/cmdline cannot be read.
pub fn reset_requested() -> bool {
    std::fs::read_to_string("/proc/cmdline").is_ok_and(|c| wants_reset(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_word_counts() {
        assert!(wants_reset("console=ttyS0 quiet moat.bench=reset\n"));
        assert!(wants_reset("moat.bench=reset"));
        assert!(!wants_reset("console=ttyS0 quiet\n"));
        assert!(!wants_reset("moat.bench=resetx moat.bench=exit"));
        assert!(!wants_reset(""));
    }
}
