//! The start of the VMM's threads: each loads its own filter, then all wait for each other, so
//! no vCPU enters `KVM_RUN` before every thread is filtered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

use super::{Policy, SeccompError, ThreadKind};

/// Shared by the threads of one VM while they start.
#[derive(Debug)]
pub struct Startup {
    /// The filters; `None` with `--no-seccomp`.
    policy: Option<Arc<Policy>>,
    barrier: Barrier,
    failed: AtomicBool,
    /// Test hook: the thread kind that issues a call outside its filter once all are loaded.
    violate_in: Option<ThreadKind>,
}

impl Startup {
    /// A start of `threads` threads (the main thread included).
    pub fn new(
        policy: Option<Arc<Policy>>,
        threads: usize,
        violate_in: Option<ThreadKind>,
    ) -> Arc<Self> {
        Arc::new(Self {
            policy,
            barrier: Barrier::new(threads),
            failed: AtomicBool::new(false),
            violate_in,
        })
    }

    /// Loads the filter of `kind` on the calling thread and waits until every thread has
    /// loaded its own. `Ok(true)`: go on. `Ok(false)`: another thread failed (and reports it).
    /// `Err`: this thread's filter could not be loaded; every other thread sees `Ok(false)`.
    pub fn enter(&self, kind: ThreadKind) -> Result<bool, SeccompError> {
        let loaded = match &self.policy {
            Some(policy) => policy.install(kind),
            None => Ok(()),
        };
        if loaded.is_err() {
            self.failed.store(true, Ordering::SeqCst);
        }
        self.barrier.wait();
        loaded?;
        if self.failed.load(Ordering::SeqCst) {
            return Ok(false);
        }
        if self.violate_in == Some(kind) {
            super::violate();
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_filters_every_thread_goes_on() {
        let startup = Startup::new(None, 3, None);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let s = startup.clone();
                std::thread::spawn(move || s.enter(ThreadKind::Vcpu).unwrap())
            })
            .collect();
        assert!(startup.enter(ThreadKind::Main).unwrap());
        for t in threads {
            assert!(t.join().unwrap());
        }
    }
}
