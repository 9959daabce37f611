//! Telling a `fork()` child from the process that opened a store.

use std::sync::atomic::{AtomicU64, Ordering};

/// How many times this process is a `fork()` child of the process it started as (0 in the
/// original). Counting in an `atfork` handler keeps a `getpid` system call off every request.
pub(super) fn fork_generation() -> u64 {
    static FORKS: AtomicU64 = AtomicU64::new(0);
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    extern "C" fn in_child() {
        FORKS.fetch_add(1, Ordering::Relaxed);
    }
    REGISTERED.call_once(|| {
        // SAFETY: registers a handler that only increments an atomic (async-signal-safe, as
        // handlers run right after fork() must be); it is never unregistered, and the
        // function lives as long as the process.
        #[cfg(unix)]
        unsafe {
            libc::pthread_atfork(None, None, Some(in_child));
        }
        #[cfg(not(unix))]
        let _ = in_child; // no fork() there
    });
    FORKS.load(Ordering::Relaxed)
}
