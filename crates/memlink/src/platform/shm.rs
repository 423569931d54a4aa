//! Named shared memory objects as files in the tmpfs at `/dev/shm` (what `shm_open` uses too).
//!
//! Working on the directory with `*at` calls instead of `shm_open` gives us two things `shm_open`
//! lacks: an *unnamed* object (`O_TMPFILE`) that is fully initialised before it is published under
//! its name with `linkat` — so no process ever sees a half-built object and a creator that dies
//! mid-create leaks nothing — and atomic exclusive publication (`linkat` fails with `EEXIST`).
//!
//! Liveness of an object's creator is an open-file-description (OFD) write lock on byte 0 that the
//! creator holds for as long as it has the object open. The kernel drops it when the creator's last
//! descriptor closes, including on `SIGKILL`; other processes query it with `F_OFD_GETLK`, which
//! reads the lock state without taking it.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

/// Where named objects live.
pub(crate) const SHM_DIR: &str = "/dev/shm";

/// What `fstat` tells us about an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileInfo {
    pub(crate) size: u64,
    /// Permission bits only (`st_mode & 0o7777`).
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    /// File type bits (`st_mode & S_IFMT`).
    pub(crate) file_type: u32,
}

impl FileInfo {
    fn from_stat(st: &rustix::fs::Stat) -> Self {
        FileInfo {
            size: u64::try_from(st.st_size).unwrap_or(0),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            dev: st.st_dev,
            ino: st.st_ino,
            file_type: st.st_mode & libc::S_IFMT,
        }
    }

    /// Whether it is a regular file (the only kind of file a memlink object can be).
    pub(crate) fn is_regular(&self) -> bool {
        self.file_type == libc::S_IFREG
    }

    /// What kind of file it is, in words (`"fifo"`, `"symlink"`, ...).
    pub(crate) fn type_name(&self) -> &'static str {
        match self.file_type {
            libc::S_IFREG => "regular file",
            libc::S_IFDIR => "directory",
            libc::S_IFLNK => "symlink",
            libc::S_IFIFO => "fifo",
            libc::S_IFSOCK => "socket",
            libc::S_IFCHR => "character device",
            libc::S_IFBLK => "block device",
            _ => "file of unknown type",
        }
    }

    /// Whether two infos describe the same file.
    pub(crate) fn same_file(&self, other: &FileInfo) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

/// An open handle on the shared memory directory.
#[derive(Debug)]
pub(crate) struct ShmDir {
    dir: OwnedFd,
}

impl ShmDir {
    pub(crate) fn open() -> Result<Self, Errno> {
        let dir = rustix::fs::open(
            SHM_DIR,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(ShmDir { dir })
    }

    /// A new, nameless, empty object with exactly `mode` permissions (the umask is overridden).
    pub(crate) fn create_unnamed(&self, mode: u32) -> Result<OwnedFd, Errno> {
        let fd = rustix::fs::openat(
            &self.dir,
            ".",
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?;
        rustix::fs::fchmod(&fd, Mode::from_bits_truncate(mode))?;
        Ok(fd)
    }

    /// Gives the unnamed object `fd` the name `file_name`; fails with `EEXIST` if taken.
    pub(crate) fn publish(&self, fd: impl AsFd, file_name: &str) -> Result<(), Errno> {
        // Linking an O_TMPFILE through /proc/self/fd needs no privilege; AT_EMPTY_PATH does
        // (CAP_DAC_READ_SEARCH on older kernels), so it is only the fallback when /proc is absent.
        let proc_path = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
        match rustix::fs::linkat(
            rustix::fs::CWD,
            &proc_path,
            &self.dir,
            file_name,
            AtFlags::SYMLINK_FOLLOW,
        ) {
            Err(Errno::NOENT) => {
                rustix::fs::linkat(fd, "", &self.dir, file_name, AtFlags::EMPTY_PATH)
            }
            other => other,
        }
    }

    /// Opens an existing object read-write (or read-only for inspection). Never follows a symlink
    /// (`ELOOP`), never blocks (`O_NONBLOCK`: a FIFO planted under the name opens at once instead
    /// of waiting for a writer) and never acquires a controlling terminal. The caller must `fstat`
    /// the result: this opens whatever file is there, not only regular ones.
    pub(crate) fn open_existing(&self, file_name: &str, writable: bool) -> Result<OwnedFd, Errno> {
        let access = if writable {
            OFlags::RDWR
        } else {
            OFlags::RDONLY
        };
        rustix::fs::openat(
            &self.dir,
            file_name,
            access | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
    }

    pub(crate) fn stat(&self, file_name: &str) -> Result<FileInfo, Errno> {
        rustix::fs::statat(&self.dir, file_name, AtFlags::SYMLINK_NOFOLLOW)
            .map(|st| FileInfo::from_stat(&st))
    }

    pub(crate) fn unlink(&self, file_name: &str) -> Result<(), Errno> {
        rustix::fs::unlinkat(&self.dir, file_name, AtFlags::empty())
    }

    /// Removes `file_name` only if it still names the file `expected`; `Ok(false)` if it names
    /// another file or nothing. The check and the unlink are two calls, but the directory is
    /// sticky: between them only the file's owner or root can replace the entry.
    pub(crate) fn unlink_if_same(
        &self,
        file_name: &str,
        expected: &FileInfo,
    ) -> Result<bool, Errno> {
        match self.stat(file_name) {
            Ok(now) if now.same_file(expected) => self.unlink(file_name).map(|()| true),
            Ok(_) | Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Names in the directory that start with `prefix`.
    pub(crate) fn list(&self, prefix: &str) -> Result<Vec<String>, Errno> {
        let entries = std::fs::read_dir(SHM_DIR)
            .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        Ok(names)
    }
}

pub(crate) fn fstat(fd: impl AsFd) -> Result<FileInfo, Errno> {
    rustix::fs::fstat(fd).map(|st| FileInfo::from_stat(&st))
}

/// Sets the object's size to `len` and reserves its pages, so that running out of tmpfs space is
/// an error now instead of a `SIGBUS` on first touch later.
pub(crate) fn reserve(fd: impl AsFd, len: u64) -> Result<(), Errno> {
    rustix::fs::ftruncate(&fd, len)?;
    match rustix::fs::fallocate(&fd, rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) | Err(Errno::OPNOTSUPP) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `pread` that fills as much of `buf` as the file has; returns the byte count.
pub(crate) fn read_at(fd: impl AsFd, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
    let mut done = 0;
    while done < buf.len() {
        let n = rustix::io::pread(&fd, &mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

fn owner_lock_request(kind: libc::c_int) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 1,
        l_pid: 0, // required to be 0 for OFD locks
    }
}

/// Takes the owner lock without waiting: `Ok(true)` if we now hold it, `Ok(false)` if another open
/// file description holds it.
pub(crate) fn try_lock_owner(fd: impl AsFd) -> Result<bool, Errno> {
    let mut request = owner_lock_request(libc::F_WRLCK);
    // F_OFD_SETLK only reads the struct.
    // SAFETY: `fd` is open for the call; `request` is an initialised `struct flock` that outlives it.
    let rc = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_OFD_SETLK, &mut request) };
    if rc == 0 {
        return Ok(true);
    }
    match Errno::from_raw_os_error(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    ) {
        Errno::AGAIN | Errno::ACCESS => Ok(false),
        e => Err(e),
    }
}

/// Whether any open file description other than `fd`'s holds the owner lock.
pub(crate) fn owner_lock_held(fd: impl AsFd) -> Result<bool, Errno> {
    let mut request = owner_lock_request(libc::F_WRLCK);
    // The kernel overwrites `request` with the conflicting lock, or sets `l_type = F_UNLCK`.
    // SAFETY: `fd` is open for the call; `request` is an initialised `struct flock` that outlives it.
    let rc = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_OFD_GETLK, &mut request) };
    if rc != 0 {
        return Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        ));
    }
    Ok(request.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_lock_is_seen_by_other_descriptions_and_dies_with_the_holder() {
        let dir = ShmDir::open().unwrap();
        let fd = dir.create_unnamed(0o600).unwrap();
        let name = format!("memlink-unit-lock-{}", std::process::id());
        dir.publish(&fd, &name).unwrap();
        assert_eq!(dir.publish(&fd, &name), Err(Errno::EXIST));

        let other = dir.open_existing(&name, true).unwrap();
        assert!(!owner_lock_held(&other).unwrap());
        assert!(try_lock_owner(&fd).unwrap());
        assert!(owner_lock_held(&other).unwrap());
        assert!(!try_lock_owner(&other).unwrap());
        drop(fd); // closing the holder's description releases the lock
        assert!(!owner_lock_held(&other).unwrap());
        assert!(try_lock_owner(&other).unwrap());

        let info = fstat(&other).unwrap();
        assert_eq!(info.mode, 0o600);
        assert!(dir.unlink_if_same(&name, &info).unwrap());
        assert_eq!(dir.stat(&name), Err(Errno::NOENT));
    }
}
