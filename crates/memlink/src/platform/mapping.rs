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

    /// Like [`Mapping::map_shared`], with every page faulted in now (`MAP_POPULATE`): for small,
    /// hot regions such as rings, where a first-touch page fault (several µs) in the middle of a
    /// message exchange would show up as a latency spike.
    pub(crate) fn map_shared_populated(fd: impl AsFd, len: usize) -> Result<Self, Errno> {
        Self::map(fd, len, MapFlags::SHARED | MapFlags::POPULATE)
    }

    fn map(fd: impl AsFd, len: usize, flags: MapFlags) -> Result<Self, Errno> {
        if len == 0 {
            return Err(Errno::INVAL);
        }
        // SAFETY: we ask for a fresh mapping (null hint, no MAP_FIXED), so no existing memory is
        // replaced; the kernel validates fd, len and protection.
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
        // SAFETY: `source..source + out.len()` lies inside the mapping (checked above), which stays
        // mapped while `self` lives. `out` is our own memory and cannot overlap a shared mapping
        // that no reference points into. A concurrent writer in another process can only make us
        // read stale or torn bytes, which callers validate after copying.
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
        // SAFETY: the destination range lies inside the mapping (checked above), which is writable
        // and stays mapped while `self` lives; no reference to it exists, so the write aliases
        // nothing in this process. `data` is ordinary process memory, disjoint from the mapping.
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
        // SAFETY: the source range is inside the mapping (checked) and no reference points into
        // it; `destination` has room for `len` bytes (reserved above) and is our own allocation,
        // disjoint from the mapping.
        unsafe { std::ptr::copy_nonoverlapping(source, destination, len) };
        // SAFETY: the copy above initialised exactly the `len` bytes following `old_len`, and
        // `old_len + len` is within the capacity reserved above.
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
        // SAFETY: `ptr` is inside the mapping (checked), aligned for `AtomicU32` (checked), and the
        // mapping outlives the returned borrow of `self`. All accesses to shared words — ours and
        // every memlink peer's — are atomic, which is what `AtomicU32::from_ptr` requires.
        Some(unsafe { AtomicU32::from_ptr(ptr.cast::<u32>()) })
    }

    /// The `AtomicU64` at `offset`, or `None` if it is out of bounds or misaligned.
    pub(crate) fn atomic_u64(&self, offset: usize) -> Option<&AtomicU64> {
        self.check(offset, 8)?;
        let ptr = self.base.as_ptr().wrapping_add(offset);
        if !(ptr as usize).is_multiple_of(align_of::<AtomicU64>()) {
            return None;
        }
        // SAFETY: in bounds and aligned (both checked); the mapping outlives the borrow; shared
        // words are only ever accessed atomically.
        Some(unsafe { AtomicU64::from_ptr(ptr.cast::<u64>()) })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe exactly the region returned by `mmap` in `map_shared`, and
        // no borrow of it outlives `self` (all borrows are tied to `&self`).
        let result = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
        debug_assert!(
            result.is_ok(),
            "munmap of our own mapping failed: {result:?}"
        );
    }
}
