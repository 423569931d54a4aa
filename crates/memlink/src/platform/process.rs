//! Process and thread identity, and whether a task recorded in shared memory still runs.

use rustix::io::Errno;
use rustix::process::Pid;

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

/// Whether the task (process or thread) with kernel id `tid` is alive.
///
/// A killed process stays visible to `kill(pid, 0)` as a zombie until its parent reaps it, so
/// `/proc/<tid>/stat` is consulted first: state `Z` (zombie) or `X` (dead) counts as dead. Where
/// `/proc` is unavailable we fall back to `kill(tid, 0)`, which treats zombies as alive.
///
/// Ids are recycled only after `pid_max` (4M by default on 64-bit) allocations, so a dead owner's
/// id being reused while a waiter sleeps is possible but rare; the effect is a wait that lasts
/// until the new task exits, never a false "dead".
pub(crate) fn is_alive(tid: u32) -> bool {
    let Ok(raw) = i32::try_from(tid) else {
        return false;
    };
    let Some(pid) = Pid::from_raw(raw) else {
        return false;
    };
    match std::fs::read(format!("/proc/{tid}/stat")) {
        Ok(stat) => !is_zombie_or_dead(&stat),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) => match rustix::process::test_kill_process(pid) {
            Ok(()) | Err(Errno::PERM) => true,
            Err(_) => false,
        },
    }
}

/// Parses the state field of `/proc/<pid>/stat`: "pid (comm) S ...". The command name may itself
/// contain ") ", so the state is the first field after the *last* ')'.
fn is_zombie_or_dead(stat: &[u8]) -> bool {
    let Some(close) = stat.iter().rposition(|&b| b == b')') else {
        return false;
    };
    matches!(stat.get(close + 2), Some(b'Z' | b'X' | b'x'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_state_after_last_paren() {
        assert!(!is_zombie_or_dead(b"12 (sleep) S 1 12 12"));
        assert!(is_zombie_or_dead(b"12 (a) Z (b) Z 1"));
        assert!(!is_zombie_or_dead(b"12 (evil) Z) R 1"));
        assert!(is_zombie_or_dead(b"99 (x) X 0"));
        assert!(!is_zombie_or_dead(b"garbage"));
    }

    #[test]
    fn self_is_alive_and_absurd_ids_are_not() {
        assert!(is_alive(current_pid()));
        assert!(is_alive(current_tid()));
        assert!(!is_alive(0));
        assert!(!is_alive(u32::MAX));
        assert!(!is_alive(0x3fff_fff0));
    }
}
