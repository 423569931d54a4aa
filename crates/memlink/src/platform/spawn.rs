//! Starting a program that outlives us: a session of its own, its error output captured in a
//! file that never blocks it, and its whole process group killed if it must go.
//!
//! Used to start a server on demand ([`crate::rpc`]'s `launch`). The program is a child of the
//! calling process (so that its exit status can be read while it starts), but nothing else ties
//! it to the caller: a terminal's Ctrl-C or hang-up reaches only the caller's session, and the
//! capture file is written with plain `write(2)`s that succeed whether or not anyone reads them.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};

use rustix::fs::{MemfdFlags, Mode, OFlags};
use rustix::io::Errno;
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, WaitOptions};

/// Spawns `command` in a new session (`setsid(2)` in the child, before `exec`): it leads a
/// process group of its own, has no controlling terminal, and signals sent to the caller's
/// terminal or process group (Ctrl-C, `SIGHUP` when the terminal closes) do not reach it.
/// Standard streams are as `command` sets them.
///
/// The child inherits no other descriptor of ours but `keep`: every descriptor from 3 up is
/// made close-on-exec in the child before `exec` (`close_range(3, ~0, CLOSE_RANGE_CLOEXEC)`,
/// Linux 5.11; before that, one `fcntl` per possible descriptor), so one we were given without
/// close-on-exec (a shell's `flock`ed descriptor, a make jobserver's pipe, systemd's
/// `LISTEN_FDS`) does not stay open in a long-lived program we start; `keep` (which must be 3
/// or more) is then made inheritable, under the same number. `command` is consumed: the
/// number `keep` means nothing once this returns.
///
/// # References
/// `setsid(2)`, `close_range(2)`, `fcntl(2)` (`FD_CLOEXEC`), `credentials(7)`.
pub(crate) fn spawn_in_new_session(
    mut command: Command,
    keep: Option<BorrowedFd<'_>>,
) -> io::Result<Child> {
    let keep = keep.map(|fd| fd.as_raw_fd());
    if keep.is_some_and(|fd| fd <= 2) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // `in_child` makes async-signal-safe system calls only and touches no lock or heap
    // (what may run between fork and exec); `keep`, if any, is open in the parent for the whole
    // `spawn` (borrowed for this call), so it is open in the child.
    // SAFETY: the invariants just stated hold here.
    unsafe {
        command.pre_exec(move || in_child(keep));
    }
    command.spawn()
}

/// What a child started by [`spawn_in_new_session`] does between `fork` and `exec`: only
/// async-signal-safe system calls, errors as raw errnos (no allocation).
fn in_child(keep: Option<libc::c_int>) -> io::Result<()> {
    rustix::process::setsid().map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))?;
    // SAFETY: a system call with integer arguments only.
    let marked = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if marked != 0 {
        // Older than Linux 5.11: mark each descriptor up to the limit on their number.
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid, writable `rlimit` for the call.
        let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } == 0;
        let top = if known {
            libc::c_int::try_from(limit.rlim_cur.min(1 << 20)).unwrap_or(1 << 20)
        } else {
            1 << 16
        };
        for fd in 3..top {
            // SAFETY: integer arguments only; a number that is not open gives `EBADF`.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    if let Some(fd) = keep {
        // SAFETY: integer arguments only.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends `SIGKILL` to every process in the process group led by `leader` (a process started by
/// [`spawn_in_new_session`]). Sound only while `leader` is alive or an unreaped zombie (see
/// [`exit_status`]): its pid, hence its group id, cannot be reused until it is reaped, so it
/// cannot name an unrelated group. `ESRCH` means the group is empty.
pub(crate) fn kill_group(leader: u32) -> Result<(), Errno> {
    rustix::process::kill_process_group(pid(leader)?, Signal::KILL)
}

/// Sends `SIGKILL` to our child `child` (sound, as [`kill_group`], only until it is reaped).
pub(crate) fn kill(child: u32) -> Result<(), Errno> {
    rustix::process::kill_process(pid(child)?, Signal::KILL)
}

fn pid(raw: u32) -> Result<Pid, Errno> {
    i32::try_from(raw)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or(Errno::INVAL)
}

/// Where a child of ours is, as [`exit_status`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChildState {
    /// Running (or stopped).
    Running,
    /// Exited (or killed) with this status, and not reaped: it stays a zombie, its pid
    /// reserved, until [`reap`].
    Exited(ExitStatus),
    /// Not our child to wait for any more (`ECHILD`): the kernel reaped it at its exit because
    /// this process ignores `SIGCHLD`, or another thread of ours reaped it (`wait(-1)`). Its
    /// exit status is lost, and its pid may already belong to another process.
    Gone,
}

/// Whether our child `child` has exited, without reaping it
/// (`waitid(P_PID, child, WEXITED | WNOHANG | WNOWAIT)`): an exited child stays a zombie, so its
/// pid cannot be reused (and [`kill_group`] cannot hit a stranger) until [`reap`].
pub(crate) fn exit_status(child: u32) -> Result<ChildState, Errno> {
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    loop {
        return match rustix::process::waitid(WaitId::Pid(pid(child)?), options) {
            Ok(None) => Ok(ChildState::Running),
            Ok(Some(status)) => Ok(match (status.exit_status(), status.terminating_signal()) {
                (Some(code), _) => ChildState::Exited(ExitStatus::from_raw((code & 0xff) << 8)),
                (None, Some(signal)) => {
                    let core = if status.dumped() { 0x80 } else { 0 };
                    ChildState::Exited(ExitStatus::from_raw((signal & 0x7f) | core))
                }
                // Stopped or continued: not an exit (and not asked for).
                (None, None) => ChildState::Running,
            }),
            Err(Errno::INTR) => continue,
            Err(Errno::CHILD) => Ok(ChildState::Gone),
            Err(e) => Err(e),
        };
    }
}

/// Waits for our child `child` to exit and reaps it (a zombie is reaped at once). `ECHILD`
/// (someone else reaped it, or this process ignores `SIGCHLD`) counts as done.
pub(crate) fn reap(child: u32) {
    let Ok(child) = pid(child) else {
        return;
    };
    while let Err(Errno::INTR) = rustix::process::waitpid(Some(child), WaitOptions::empty()) {}
}

/// A new anonymous file (a memfd, never in any directory) to capture a program's output in.
/// Writes to it never block and never raise `SIGPIPE`, whether or not anyone reads it; it is
/// freed when the last descriptor to it closes.
pub(crate) fn capture_file(debug_name: &str) -> Result<OwnedFd, Errno> {
    rustix::fs::memfd_create(debug_name, MemfdFlags::CLOEXEC)
}

/// Why [`open_log_file`] refused a path.
#[derive(Debug)]
pub(crate) enum LogFileError {
    /// Opening it failed (`ELOOP`: it is a symbolic link).
    Os(Errno),
    /// It opened, but is not a file we may hand a program to write to; says why.
    Refused(String),
}

/// Opens (creating it with mode 0600 if missing) the file at `path` for a program's error
/// output, appending: `O_RDWR | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY`, and
/// `O_NONBLOCK` while it is checked (a FIFO or device must not block the open). Then `fstat`:
/// it must be a regular file owned by our effective user, writable by nobody else (no group or
/// other write bit). Anything else (a symbolic link, another user's file, a world-writable one,
/// a FIFO, a device) is refused: a file someone else controls could be swapped, read or
/// filled behind our back.
///
/// # References
/// `open(2)` (`O_NOFOLLOW`), `fstat(2)`.
pub(crate) fn open_log_file(path: &Path) -> Result<OwnedFd, LogFileError> {
    let flags = OFlags::RDWR
        | OFlags::APPEND
        | OFlags::CREATE
        | OFlags::NOFOLLOW
        | OFlags::CLOEXEC
        | OFlags::NOCTTY
        | OFlags::NONBLOCK;
    let fd = rustix::fs::open(path, flags, Mode::from_raw_mode(0o600)).map_err(LogFileError::Os)?;
    let stat = rustix::fs::fstat(&fd).map_err(LogFileError::Os)?;
    let kind = stat.st_mode & libc::S_IFMT;
    let us = rustix::process::geteuid().as_raw();
    if kind != libc::S_IFREG {
        let what = match kind {
            libc::S_IFIFO => "a FIFO",
            libc::S_IFCHR | libc::S_IFBLK => "a device",
            libc::S_IFSOCK => "a socket",
            libc::S_IFDIR => "a directory",
            _ => "not a regular file",
        };
        return Err(LogFileError::Refused(format!(
            "it is {what}; give the path of a regular file"
        )));
    }
    if stat.st_uid != us {
        return Err(LogFileError::Refused(format!(
            "it belongs to uid {}, not to us (uid {us}); give a file of our own",
            stat.st_uid
        )));
    }
    if stat.st_mode & 0o022 != 0 {
        return Err(LogFileError::Refused(format!(
            "its mode {:o} lets other users write it; remove their write permission \
             (chmod go-w) or give another file",
            stat.st_mode & 0o7777
        )));
    }
    rustix::fs::fcntl_setfl(&fd, OFlags::APPEND).map_err(LogFileError::Os)?;
    Ok(fd)
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
    use std::os::fd::AsRawFd;
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
        let mut child = spawn_in_new_session(command, None).unwrap();
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

    #[test]
    fn a_child_inherits_only_its_standard_streams_and_the_descriptor_kept() {
        let leaked =
            rustix::fs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).unwrap();
        // As if inherited without close-on-exec (a shell's `9>lockfile`).
        rustix::io::fcntl_setfd(&leaked, rustix::io::FdFlags::empty()).unwrap();
        let kept = rustix::io::fcntl_dupfd_cloexec(&leaked, 3).unwrap();
        let mut command = Command::new("/bin/sh");
        command
            .args(["-c", "exec ls -l /proc/self/fd 1>&2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = spawn_in_new_session(command, Some(kept.as_fd())).unwrap();
        let out = child.wait_with_output().unwrap();
        let listing = String::from_utf8_lossy(&out.stderr).into_owned();
        // `N -> TARGET` per descriptor; `ls` itself holds the directory it lists.
        let mut open: Vec<(i32, &str)> = listing
            .lines()
            .filter_map(|line| {
                let (left, target) = line.split_once(" -> ")?;
                Some((left.split_whitespace().last()?.parse().ok()?, target))
            })
            .filter(|(_, target)| !target.starts_with("/proc/"))
            .collect();
        open.sort();
        let numbers: Vec<i32> = open.iter().map(|(fd, _)| *fd).collect();
        assert_eq!(numbers, [0, 1, 2, kept.as_raw_fd()], "{listing}");
        assert_eq!(open[3].1, "/dev/null", "{listing}");
        drop(leaked);
    }

    #[test]
    fn an_exited_child_stays_a_zombie_until_reaped() {
        let mut command = Command::new("/bin/sh");
        command.args(["-c", "exit 3"]).stdin(Stdio::null());
        // Known by its pid only: it is reaped with `reap`, below.
        let pid = spawn_in_new_session(command, None).unwrap().id();
        let status = loop {
            match exit_status(pid).unwrap() {
                ChildState::Running => std::thread::sleep(std::time::Duration::from_millis(1)),
                ChildState::Exited(status) => break status,
                ChildState::Gone => panic!("reaped behind our back"),
            }
        };
        assert_eq!(status.code(), Some(3));
        // Still there, as a zombie: asking again gives the same answer, and its group is ours.
        assert_eq!(exit_status(pid).unwrap(), ChildState::Exited(status));
        assert!(
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap()
                .contains(") Z ")
        );
        reap(pid);
        assert_eq!(exit_status(pid).unwrap(), ChildState::Gone);
        let mut command = Command::new("/bin/sh");
        command.args(["-c", "kill -9 $$"]).stdin(Stdio::null());
        let pid = spawn_in_new_session(command, None).unwrap().id();
        let status = loop {
            if let ChildState::Exited(status) = exit_status(pid).unwrap() {
                break status;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        reap(pid);
        assert_eq!(status.signal(), Some(9));
    }

    #[test]
    fn a_log_file_must_be_our_own_private_regular_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("memlink-unit-log-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let refused = |path: &Path| match open_log_file(path) {
            Err(LogFileError::Refused(why)) => why,
            other => panic!("{}: expected a refusal, got {other:?}", path.display()),
        };
        let file = dir.join("log");
        let fd = open_log_file(&file).unwrap();
        assert_eq!(rustix::fs::fstat(&fd).unwrap().st_mode & 0o777, 0o600);
        std::os::unix::fs::symlink(&file, dir.join("link")).unwrap();
        assert!(matches!(
            open_log_file(&dir.join("link")),
            Err(LogFileError::Os(Errno::LOOP))
        ));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o620)).unwrap();
        assert!(refused(&file).contains("620"));
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.join("fifo"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(refused(&dir.join("fifo")).contains("FIFO"));
        assert!(refused(Path::new("/dev/null")).contains("device"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
