//! Futex wait and wake on words in shared memory.
//!
//! Always the non-private (`FUTEX_WAIT`/`FUTEX_WAKE` without `FUTEX_PRIVATE_FLAG`) operations: the
//! kernel then keys waiters by the physical page, so waiters and wakers in different processes
//! meet even though they map the word at different addresses.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::io::Errno;
use rustix::thread::futex;

/// Why [`wait`] returned. Every outcome means "look at the word again"; none promises anything
/// about its value, because wake-ups can be spurious.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Woken by `futex_wake`, by a signal, or the word no longer held `expected`.
    Woken,
    /// The timeout elapsed.
    TimedOut,
}

/// `futex(word, FUTEX_WAIT, expected, timeout)`: sleeps while `*word == expected`.
pub(crate) fn wait(
    word: &AtomicU32,
    expected: u32,
    timeout: Option<Duration>,
) -> Result<Wake, Errno> {
    let timespec = timeout.map(|d| futex::Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    });
    match futex::wait(word, futex::Flags::empty(), expected, timespec.as_ref()) {
        Ok(()) | Err(Errno::AGAIN) | Err(Errno::INTR) => Ok(Wake::Woken),
        Err(Errno::TIMEDOUT) => Ok(Wake::TimedOut),
        Err(e) => Err(e),
    }
}

/// `futex(word, FUTEX_WAKE, count)`: wakes up to `count` waiters; returns how many woke.
pub(crate) fn wake(word: &AtomicU32, count: u32) -> Result<usize, Errno> {
    futex::wake(word, futex::Flags::empty(), count)
}

/// Wake every waiter.
pub(crate) fn wake_all(word: &AtomicU32) -> Result<usize, Errno> {
    wake(word, i32::MAX as u32)
}
