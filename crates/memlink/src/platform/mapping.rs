//! A shared memory mapping and the only code that touches its bytes.
//!
//! Memory in a [`Mapping`] is shared with other processes that may write it at any moment, so this
//! module never hands out `&[u8]` or `&mut [u8]` over it: bytes are copied in and out through raw
//! pointers, and the only references formed are to atomics, which are made for concurrent mutation.
//! Every access is bounds- and alignment-checked here, whatever the caller already checked.

use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

/// A `MAP_SHARED`, read-write mapping of a whole file, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: a `Mapping` is a raw region of process memory that is valid until drop. All access goes
// through `&self` methods that copy via raw pointers or form atomics, both of which are sound to do
// from several threads at once (other processes already write it concurrently).
unsafe impl Send for Mapping {}
// SAFETY: see `Send`; no method hands out non-atomic references into the region.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// `mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)`.
    ///
    /// The caller must have checked with `fstat` that the file is at least `len` bytes long;
    /// touching pages past the end of the file raises `SIGBUS`.
    pub(crate) fn map_shared(fd: impl AsFd, len: usize) -> Result<Self, Errno> {
        Self::map(fd, len, MapFlags::SHARED)
    }

    fn map(fd: impl AsFd, len: usize, flags: MapFlags) -> Result<Self, Errno> {
        if len == 0 {
            return Err(Errno::INVAL);
        }
        // The kernel validates fd, len and protection and picks the address.
        // SAFETY: a fresh mapping (null hint, no MAP_FIXED) replaces no existing memory.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                flags,
                fd,
                0,
            )?
        };
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(Errno::INVAL)?;
        Ok(Mapping { base, len })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn check(&self, offset: usize, len: usize) -> Option<usize> {
        let end = offset.checked_add(len)?;
        (end <= self.len).then_some(end)
    }

    /// Copies `out.len()` bytes starting at `offset` into `out`. Returns `false` (copying nothing)
    /// if the range is not inside the mapping.
    #[must_use]
    pub(crate) fn copy_out(&self, offset: usize, out: &mut [u8]) -> bool {
        if self.check(offset, out.len()).is_none() {
            return false;
        }
        let source = self.base.as_ptr().wrapping_add(offset);
        // A concurrent writer in another process can only make us read stale or torn bytes, which
        // callers validate after copying; no reference into the mapping exists to be aliased.
        // SAFETY: the source range is inside the live mapping (checked); `out` is disjoint from it.
        unsafe { std::ptr::copy_nonoverlapping(source, out.as_mut_ptr(), out.len()) };
        true
    }

    /// Copies `data` into the mapping at `offset`. Returns `false` (copying nothing) if the range
    /// is not inside the mapping.
    #[must_use]
    pub(crate) fn copy_in(&self, offset: usize, data: &[u8]) -> bool {
        if self.check(offset, data.len()).is_none() {
            return false;
        }
        let destination = self.base.as_ptr().wrapping_add(offset);
        // No reference into the mapping exists, so the write aliases nothing in this process.
        // SAFETY: the destination is inside the live, writable mapping (checked); `data` is disjoint.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), destination, data.len()) };
        true
    }

    /// Appends the `len` bytes at `offset` to `out`, without zero-filling them first. Returns
    /// `false` (appending nothing) if the range is not inside the mapping.
    #[must_use]
    pub(crate) fn append_to_vec(&self, offset: usize, len: usize, out: &mut Vec<u8>) -> bool {
        if self.check(offset, len).is_none() {
            return false;
        }
        out.reserve(len);
        let old_len = out.len();
        let source = self.base.as_ptr().wrapping_add(offset);
        let destination = out.spare_capacity_mut().as_mut_ptr().cast::<u8>();
        // `destination` is our own allocation, disjoint from the mapping.
        // SAFETY: the source is inside the live mapping (checked); `destination` has room for `len`.
        unsafe { std::ptr::copy_nonoverlapping(source, destination, len) };
        // `old_len + len` is within the capacity reserved above.
        // SAFETY: the copy above initialised exactly the `len` bytes following `old_len`.
        unsafe { out.set_len(old_len + len) };
        true
    }

    /// The `AtomicU32` at `offset`, or `None` if it is out of bounds or misaligned.
    pub(crate) fn atomic_u32(&self, offset: usize) -> Option<&AtomicU32> {
        self.check(offset, 4)?;
        let ptr = self.base.as_ptr().wrapping_add(offset);
        if !(ptr as usize).is_multiple_of(align_of::<AtomicU32>()) {
            return None;
        }
        // All accesses to shared words, ours and every memlink peer's, are atomic, as
        // `AtomicU32::from_ptr` requires; the mapping outlives the returned borrow of `self`.
        // SAFETY: `ptr` is in bounds and aligned for `AtomicU32` (both checked above).
        Some(unsafe { AtomicU32::from_ptr(ptr.cast::<u32>()) })
    }

    /// The `AtomicU64` at `offset`, or `None` if it is out of bounds or misaligned.
    pub(crate) fn atomic_u64(&self, offset: usize) -> Option<&AtomicU64> {
        self.check(offset, 8)?;
        let ptr = self.base.as_ptr().wrapping_add(offset);
        if !(ptr as usize).is_multiple_of(align_of::<AtomicU64>()) {
            return None;
        }
        // Shared words are only ever accessed atomically; the mapping outlives the borrow.
        // SAFETY: `ptr` is in bounds and aligned for `AtomicU64` (both checked above).
        Some(unsafe { AtomicU64::from_ptr(ptr.cast::<u64>()) })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // No borrow of the region outlives `self`: all borrows are tied to `&self`.
        // SAFETY: `base`/`len` describe exactly the region `mmap` returned in `map`.
        let result = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
        debug_assert!(
            result.is_ok(),
            "munmap of our own mapping failed: {result:?}"
        );
    }
}
