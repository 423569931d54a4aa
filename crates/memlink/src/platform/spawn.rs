//! Starting a program that outlives us: a session of its own, its error output captured in a
//! file that never blocks it, and its whole process group killed if it must go.
//!
//! Used to start a server on demand ([`crate::rpc`]'s `launch`). The program is a child of the
//! calling process (so that its exit status can be read while it starts), but nothing else ties
//! it to the caller: a terminal's Ctrl-C or hang-up reaches only the caller's session, and the
//! capture file is written with plain `write(2)`s that succeed whether or not anyone reads them.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use rustix::fs::MemfdFlags;
use rustix::io::Errno;
use rustix::process::{Pid, Signal};

/// Spawns `command` in a new session (`setsid(2)` in the child, before `exec`): it leads a
/// process group of its own, has no controlling terminal, and signals sent to the caller's
/// terminal or process group (Ctrl-C, `SIGHUP` when the terminal closes) do not reach it.
/// Standard streams are as `command` sets them.
///
/// # References
/// `setsid(2)`, `credentials(7)` (sessions and process groups).
pub(crate) fn spawn_in_new_session(command: &mut Command) -> io::Result<Child> {
    // Between fork and exec only async-signal-safe calls may be made: `setsid` is one system
    // call, and its error conversion keeps the raw errno (no allocation).
    // SAFETY: the closure makes one async-signal-safe system call and touches no lock or heap.
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid()
                .map(drop)
                .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))
        });
    }
    command.spawn()
}

/// Sends `SIGKILL` to every process in the process group led by `leader` (a process started by
/// [`spawn_in_new_session`]; its group id is its pid, and stays taken while any member lives, so
/// it cannot name an unrelated group). `ESRCH` means the group is empty.
pub(crate) fn kill_group(leader: u32) -> Result<(), Errno> {
    let pid = i32::try_from(leader)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or(Errno::INVAL)?;
    rustix::process::kill_process_group(pid, Signal::KILL)
}

/// A new anonymous file (a memfd, never in any directory) to capture a program's output in.
/// Writes to it never block and never raise `SIGPIPE`, whether or not anyone reads it; it is
/// freed when the last descriptor to it closes.
pub(crate) fn capture_file(debug_name: &str) -> Result<OwnedFd, Errno> {
    rustix::fs::memfd_create(debug_name, MemfdFlags::CLOEXEC)
}

/// The current size of the regular file (or memfd) `fd`.
pub(crate) fn file_size(fd: impl AsFd) -> Result<u64, Errno> {
    Ok(u64::try_from(rustix::fs::fstat(fd)?.st_size).unwrap_or(0))
}

/// At most the last `max` bytes written to the file `fd` after its first `since` bytes, read
/// with `pread` (the file offset, which a writing child may share, is left alone).
pub(crate) fn read_tail(fd: impl AsFd, since: u64, max: usize) -> Result<Vec<u8>, Errno> {
    let size = file_size(&fd)?;
    let from = size.saturating_sub(max as u64).max(since);
    let len = usize::try_from(size.saturating_sub(from))
        .unwrap_or(max)
        .min(max);
    let mut tail = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match rustix::io::pread(&fd, &mut tail[filled..], from + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    tail.truncate(filled);
    Ok(tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[test]
    fn a_child_gets_its_own_session_and_its_stderr_is_captured() {
        let capture = capture_file("memlink-test-capture").unwrap();
        let mut command = Command::new("/bin/sh");
        command
            .args([
                "-c",
                "echo one >&2; echo two >&2; ps -o sid= -p $$ >&2; exit 3",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(capture.try_clone().unwrap()));
        let mut child = spawn_in_new_session(&mut command).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(3));
        let all = String::from_utf8(read_tail(&capture, 0, 4096).unwrap()).unwrap();
        let mut lines = all.lines();
        assert_eq!((lines.next(), lines.next()), (Some("one"), Some("two")));
        if let Some(sid) = lines.next() {
            // `ps` may be missing; if it is there, the child led its own session.
            assert_eq!(sid.trim(), child.id().to_string(), "{all}");
        }
        assert_eq!(
            read_tail(&capture, 0, 4).unwrap(),
            &all.as_bytes()[all.len() - 4..]
        );
        assert_eq!(read_tail(&capture, 4, 4096).unwrap(), &all.as_bytes()[4..]);
        assert_eq!(
            read_tail(&capture, file_size(&capture).unwrap(), 4096).unwrap(),
            b""
        );
    }
}
