//! Several `moat run` at once all succeed and keep their outputs apart.

use moat_tests::{moat, vm_available};

#[test]
fn three_runs_at_once() {
    if !vm_available("three_runs_at_once") {
        return;
    }
    let handles: Vec<_> = (0..3)
        .map(|i| {
            std::thread::spawn(move || {
                let word = format!("run-{i}");
                let o = moat(&["run", "--", "echo", &word], None);
                (word, o)
            })
        })
        .collect();
    for h in handles {
        let (word, o) = h.join().expect("thread");
        o.expect_code(0);
        assert_eq!(o.out(), format!("{word}\n"), "{}", o.diagnostics());
    }
}
