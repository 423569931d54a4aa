//! Process and thread identity.
//!
//! Ids are only meaningful inside one pid namespace, so none is ever used to judge whether a peer
//! is alive: see [`super::file_lock`] for how the robust mutex does that.

/// The calling process's id.
pub(crate) fn current_pid() -> u32 {
    rustix::process::getpid()
        .as_raw_nonzero()
        .get()
        .unsigned_abs()
}

/// The calling thread's kernel id (`gettid`). Unique system-wide among live tasks.
pub(crate) fn current_tid() -> u32 {
    rustix::thread::gettid()
        .as_raw_nonzero()
        .get()
        .unsigned_abs()
}

/// The effective user id of the calling process.
pub(crate) fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Whether process `pid` (as our pid namespace numbers it; 0 = unknown) provably reads the same
/// `CLOCK_MONOTONIC` as we do: it is in our time namespace (Linux 5.6+ lets a namespace offset
/// that clock). `false` when that cannot be told (the process is another user's, gone, or in a
/// pid namespace we cannot see), so callers that rely on a shared clock stay on the safe side.
/// A kernel without time namespaces has one clock for all: `true`.
pub(crate) fn shares_monotonic_clock_with(pid: u32) -> bool {
    let Ok(ours) = std::fs::read_link("/proc/self/ns/time") else {
        // No time namespaces on this kernel (or no /proc): then there is one clock.
        return std::fs::metadata("/proc/self/ns").is_ok();
    };
    if pid == 0 {
        return false;
    }
    std::fs::read_link(format!("/proc/{pid}/ns/time")).is_ok_and(|theirs| theirs == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_positive_and_the_main_thread_is_the_process() {
        assert!(current_pid() > 0);
        assert!(current_tid() > 0);
        let main = current_pid();
        let other = std::thread::spawn(current_tid).join().unwrap();
        assert_ne!(other, main);
    }

    #[test]
    fn we_share_our_own_clock_and_not_an_unknown_process_s() {
        assert!(shares_monotonic_clock_with(current_pid()));
        assert!(!shares_monotonic_clock_with(0));
    }
}
