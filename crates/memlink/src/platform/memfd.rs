//! Anonymous, sealed shared memory (`memfd_create`) for per-connection regions.
//!
//! A memfd has no name, so it can never be left behind: the kernel frees it when the last process
//! holding a descriptor or mapping of it goes away. Sealing it against shrinking means a peer that
//! received the descriptor cannot truncate it under our mapping, which would raise `SIGBUS` here.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::Errno;

const SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// A new memfd of exactly `len` bytes, sealed against resizing. Its pages are allocated when first
/// touched, not now, so a connection costs the memory its messages have needed so far. (The price:
/// a machine out of memory meets it at a first touch, through the OOM killer, rather than as an
/// error here.)
pub(crate) fn create_sealed(debug_name: &str, len: u64) -> Result<OwnedFd, Errno> {
    let fd = rustix::fs::memfd_create(debug_name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, len)?;
    rustix::fs::fcntl_add_seals(&fd, SEALS)?;
    Ok(fd)
}

/// Whether `fd` is a memfd sealed so that nobody can shrink it.
pub(crate) fn is_sealed_against_shrinking(fd: impl AsFd) -> bool {
    rustix::fs::fcntl_get_seals(fd).is_ok_and(|seals| seals.contains(SealFlags::SHRINK))
}

/// A new memfd of exactly `len` bytes, sealed against resizing but still writable, for a region
/// one process writes and others only read: the writer maps it, then calls [`seal_writes`]
/// before handing the descriptor to anyone.
pub(crate) fn create_for_one_writer(debug_name: &str, len: u64) -> Result<OwnedFd, Errno> {
    let fd = rustix::fs::memfd_create(debug_name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, len)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW)?;
    Ok(fd)
}

/// Seals `fd` against every write but through mappings that already exist
/// (`F_SEAL_FUTURE_WRITE`, Linux 5.1): from now on nobody, whoever holds the descriptor, can map
/// it writable, `write` it, punch holes in it, or make a read-only mapping of it writable.
pub(crate) fn seal_writes(fd: impl AsFd) -> Result<(), Errno> {
    rustix::fs::fcntl_add_seals(fd, SealFlags::FUTURE_WRITE | SealFlags::SEAL)
}

/// Whether `fd` is a memfd that nobody can resize or write except through mappings made before
/// it was sealed (see [`seal_writes`]).
pub(crate) fn is_sealed_read_only(fd: impl AsFd) -> bool {
    rustix::fs::fcntl_get_seals(fd).is_ok_and(|seals| {
        seals.contains(SealFlags::SHRINK | SealFlags::GROW)
            && seals.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE)
    })
}
