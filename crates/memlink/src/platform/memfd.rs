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
