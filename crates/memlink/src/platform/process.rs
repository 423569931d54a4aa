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
}
