//! Open-file-description (OFD) byte locks at any offset, the file behind a mapping, and fork
//! detection: what the robust mutex builds its owner-liveness tokens from.
//!
//! An OFD lock (`F_OFD_SETLK`) belongs to an open file description, not to a process id: the kernel
//! drops it when the last descriptor referring to that description closes — on exit, `exec` of a
//! close-on-exec descriptor, or `SIGKILL` — and `F_OFD_GETLK` from any other description of the same
//! inode sees it, whatever pid namespace or `/proc` mount either side has. Locks may lie beyond the
//! end of the file, so a range far above any real size serves as a table of liveness flags.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

/// Identity of a file: device and inode numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileId {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

fn byte_request(kind: libc::c_int, offset: u64) -> Result<libc::flock, Errno> {
    Ok(libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: libc::off_t::try_from(offset).map_err(|_| Errno::INVAL)?,
        l_len: 1,
        l_pid: 0, // required to be 0 for OFD locks
    })
}

fn last_errno() -> Errno {
    Errno::from_raw_os_error(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

/// Takes a write lock on byte `offset` of `fd`'s file for `fd`'s open file description, without
/// waiting: `Ok(true)` if the description now holds it, `Ok(false)` if another description does.
/// `fd` must be open for writing.
pub(crate) fn try_lock_byte(fd: impl AsFd, offset: u64) -> Result<bool, Errno> {
    let mut request = byte_request(libc::F_WRLCK, offset)?;
    // F_OFD_SETLK only reads the struct; `fd` is borrowed, so open for the duration of the call.
    // SAFETY: `request` is an initialised `struct flock` that outlives the call.
    let rc = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_OFD_SETLK, &mut request) };
    if rc == 0 {
        return Ok(true);
    }
    match last_errno() {
        Errno::AGAIN | Errno::ACCESS => Ok(false),
        e => Err(e),
    }
}

/// Whether an open file description other than `fd`'s holds a lock on byte `offset`.
pub(crate) fn byte_locked_elsewhere(fd: impl AsFd, offset: u64) -> Result<bool, Errno> {
    let mut request = byte_request(libc::F_WRLCK, offset)?;
    // The kernel overwrites `request` with a conflicting lock, or sets `l_type = F_UNLCK`;
    // `fd` is borrowed, so open for the duration of the call.
    // SAFETY: `request` is an initialised `struct flock` that outlives the call.
    let rc = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_OFD_GETLK, &mut request) };
    if rc != 0 {
        return Err(last_errno());
    }
    Ok(request.l_type != libc::F_UNLCK as libc::c_short)
}

/// The file mapped at the address of `word` (which must point into a shared file mapping), from
/// `/proc/self/maps`. Only our own `/proc/self` is read, which every process can see.
pub(crate) fn mapped_file(word: &AtomicU32) -> Result<FileId, Errno> {
    let addr = std::ptr::from_ref(word).addr() as u64;
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(io_errno)?;
    for line in maps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(range), Some(_perms), Some(_offset), Some(dev), Some(ino)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        if !(start..end).contains(&addr) {
            continue;
        }
        let (major, minor) = dev.split_once(':').ok_or(Errno::NOENT)?;
        let major = u32::from_str_radix(major, 16).map_err(|_| Errno::NOENT)?;
        let minor = u32::from_str_radix(minor, 16).map_err(|_| Errno::NOENT)?;
        let ino = ino.parse::<u64>().map_err(|_| Errno::NOENT)?;
        if ino == 0 {
            return Err(Errno::NOENT); // anonymous memory: no file behind it
        }
        return Ok(FileId {
            dev: rustix::fs::makedev(major, minor),
            ino,
        });
    }
    Err(Errno::NOENT)
}

/// A new open file description (read-write, close-on-exec) of file `id`, which one of this
/// process's descriptors must refer to (it is found in `/proc/self/fd` and re-opened through that
/// link, so it works even after the file's name was removed).
pub(crate) fn reopen(id: FileId) -> Result<OwnedFd, Errno> {
    let entries = std::fs::read_dir("/proc/self/fd").map_err(io_errno)?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(st) = rustix::fs::stat(&path) else {
            continue; // closed meanwhile, or not ours to look at
        };
        if st.st_dev != id.dev || st.st_ino != id.ino {
            continue;
        }
        let Ok(fd) = rustix::fs::open(&path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()) else {
            continue;
        };
        // The descriptor number may have been closed and reused between stat and open.
        let st = rustix::fs::fstat(&fd)?;
        if st.st_dev == id.dev && st.st_ino == id.ino {
            return Ok(fd);
        }
    }
    Err(Errno::NOENT)
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_io_error(&e).unwrap_or(Errno::IO)
}

static FORKS: AtomicU32 = AtomicU32::new(0);
static ATFORK: Once = Once::new();
static ATFORK_OK: AtomicBool = AtomicBool::new(false);

extern "C" fn count_fork_in_child() {
    // Async-signal-safe: one atomic add, as a fork child handler must be.
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// A number that changes in a child created by `fork` (and stays put otherwise): descriptors and
/// their OFD locks are shared with a forked child, so per-process state built on them must be
/// rebuilt there. Counted by a `pthread_atfork` child handler (one relaxed load per call); should
/// registering it fail, the process id serves instead (one syscall per call).
///
/// A child made by a raw `clone` syscall that bypasses libc's `fork` is not seen.
pub(crate) fn fork_generation() -> u32 {
    ATFORK.call_once(|| {
        // Registers a plain `extern "C"` function with no preconditions as the child handler;
        // null prepare/parent handlers are allowed. Handlers can never be unregistered.
        // SAFETY: the handler is a `static` item, valid for the life of the process.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(count_fork_in_child)) };
        ATFORK_OK.store(rc == 0, Ordering::Relaxed);
    });
    if ATFORK_OK.load(Ordering::Relaxed) {
        FORKS.load(Ordering::Relaxed)
    } else {
        super::process::current_pid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::shm::ShmDir;

    #[test]
    fn byte_locks_are_per_description_and_found_from_a_mapping() {
        let dir = ShmDir::open().unwrap();
        let fd = dir.create_unnamed(0o600).unwrap();
        crate::platform::shm::reserve(&fd, 4096).unwrap();
        let map = crate::platform::mapping::Mapping::map_shared(&fd, 4096).unwrap();
        let word = map.atomic_u32(64).unwrap();
        let st = rustix::fs::fstat(&fd).unwrap();
        let id = mapped_file(word).unwrap();
        assert_eq!(
            id,
            FileId {
                dev: st.st_dev,
                ino: st.st_ino
            }
        );

        let a = reopen(id).unwrap();
        let b = reopen(id).unwrap();
        let far = (1u64 << 40) + 12345;
        assert!(!byte_locked_elsewhere(&b, far).unwrap());
        assert!(try_lock_byte(&a, far).unwrap());
        assert!(try_lock_byte(&a, far).unwrap(), "a description's own lock");
        assert!(!try_lock_byte(&b, far).unwrap());
        assert!(byte_locked_elsewhere(&b, far).unwrap());
        assert!(
            !byte_locked_elsewhere(&a, far).unwrap(),
            "own locks do not conflict"
        );
        assert!(!byte_locked_elsewhere(&b, far + 1).unwrap());
        drop(a);
        assert!(!byte_locked_elsewhere(&b, far).unwrap());
        assert_eq!(fork_generation(), fork_generation());
    }
}
