//! A shared memory mapping and the only code that touches its bytes.
//!
//! Memory in a [`Mapping`] is shared with other processes that may write it at any moment, so this
//! module never hands out `&[u8]` or `&mut [u8]` over it: bytes are copied in and out through raw
//! pointers, and the only references formed are to atomics, which are made for concurrent mutation.
//! Every access is bounds- and alignment-checked here, whatever the caller already checked (a
//! [`RingArea`]'s header lines by masking, see below).
//!
//! Two kinds of copy: [`Mapping::read_atomic`] / [`Mapping::write_atomic`] copy with relaxed
//! atomic loads and stores, for bytes that threads of this process may also reach through
//! [`Mapping::atomic_u32`] / [`Mapping::atomic_u64`] at the same time (a segment's payload). The
//! `memcpy`-based [`Mapping::copy_in`], [`RingArea::copy_in`] and [`RingArea::append_to_vec`] are
//! for bytes that, within this process, only one thread touches at a time (a ring's payloads,
//! owned by one side of the ring between its index updates). A ring's record headers are words
//! ([`RingArea::line`]), stored and loaded atomically; on another lap of the ring the same bytes
//! may hold payload, and the ring's protocol orders the two kinds of access.
//!
//! A [`RingArea`] is checked once, when it is made: its header lines are then found by masking
//! an offset into the data area, with no comparison, and a payload copy makes one comparison
//! against the area's size.

use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

/// `mmap(NULL, len, prot, flags, fd, 0)`: a new mapping of the first `len` bytes of `fd`, at an
/// address the kernel picks (it also validates `fd`, `len` and the protection).
fn map_fresh(
    fd: impl AsFd,
    len: usize,
    prot: ProtFlags,
    flags: MapFlags,
) -> Result<NonNull<u8>, Errno> {
    if len == 0 {
        return Err(Errno::INVAL);
    }
    // SAFETY: a fresh mapping (null hint, no MAP_FIXED) replaces no existing memory.
    let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0)? };
    NonNull::new(ptr.cast::<u8>()).ok_or(Errno::INVAL)
}

/// A `MAP_SHARED`, read-write mapping of a whole file, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: a `Mapping` is a raw region of process memory that is valid until drop, owned by no
// thread. All access goes through `&self` methods that form atomics (sound from any number of
// threads) or copy via raw pointers; the `memcpy` copies state, as their precondition, that no
// other thread of this process touches the same bytes meanwhile, and their only caller (the SPSC
// ring, whose index protocol hands each byte range to one side at a time) keeps it.
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
        let base = map_fresh(fd, len, ProtFlags::READ | ProtFlags::WRITE, flags)?;
        Ok(Mapping { base, len })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn check(&self, offset: usize, len: usize) -> Option<usize> {
        let end = offset.checked_add(len)?;
        (end <= self.len).then_some(end)
    }

    /// Copies `data` into the mapping at `offset` with `memcpy`. Returns `false` (copying
    /// nothing) if the range is not inside the mapping.
    ///
    /// Caller's invariant: no other thread of this process reads, writes or atomically accesses
    /// the range during the copy. Use [`Mapping::write_atomic`] for bytes without that guarantee.
    #[must_use]
    #[inline]
    pub(crate) fn copy_in(&self, offset: usize, data: &[u8]) -> bool {
        if self.check(offset, data.len()).is_none() {
            return false;
        }
        let destination = self.base.as_ptr().wrapping_add(offset);
        // No reference into the mapping exists, and no thread of this process accesses the range
        // meanwhile (caller's invariant), so the write races nothing in this process.
        // SAFETY: the destination is inside the live, writable mapping (checked); `data` is
        // disjoint; no thread of this process accesses the range concurrently (caller's invariant).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), destination, data.len()) };
        true
    }

    /// The `AtomicU8` at `offset`, which the caller has bounds-checked.
    fn byte_at(&self, offset: usize) -> &AtomicU8 {
        debug_assert!(offset < self.len);
        let ptr = self.base.as_ptr().wrapping_add(offset);
        // Every access to these bytes from this process is atomic (the atomic copies, the
        // `atomic_*` accessors) or excluded by the `memcpy` copies' caller invariant; `AtomicU8`
        // has alignment 1; the mapping outlives the returned borrow of `self`.
        // SAFETY: `offset < len` (checked by every caller), so `ptr` is inside the live mapping.
        unsafe { AtomicU8::from_ptr(ptr) }
    }

    /// The `AtomicU64` at `offset`, which the caller has bounds- and alignment-checked.
    fn word_at(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset + 8 <= self.len && offset.is_multiple_of(8));
        let ptr = self.base.as_ptr().wrapping_add(offset);
        // As for `byte_at`. The base is page-aligned, so an 8-aligned offset is an 8-aligned
        // address; `offset + 8 <= len` and `offset % 8 == 0` are checked by every caller.
        // SAFETY: `ptr` is in bounds and aligned for `AtomicU64`.
        unsafe { AtomicU64::from_ptr(ptr.cast::<u64>()) }
    }

    /// Splits `offset..offset + len` into an unaligned head, whole aligned 8-byte words, and a
    /// tail: returns `(head_len, words)`.
    fn split_aligned(offset: usize, len: usize) -> (usize, usize) {
        let head = (8 - offset % 8) % 8;
        let head = head.min(len);
        (head, (len - head) / 8)
    }

    /// Copies `out.len()` bytes starting at `offset` into `out` with relaxed atomic loads (bytes
    /// for the unaligned ends, 8-byte words in between). Returns `false` (copying nothing) if the
    /// range is not inside the mapping.
    ///
    /// May race with any other access from this process: no non-atomic access is involved, so
    /// there is no data race (which a `memcpy` racing [`Mapping::atomic_u32`] would be). Racing
    /// atomics of *different sizes* (these bytes and words against a caller's `AtomicU32`) are
    /// not yet given a meaning by Rust's memory model when one of them writes; every platform
    /// Linux runs on makes each such access single-copy atomic, and callers rely only on each
    /// byte read being some byte that was written: the assumption cross-process sharing already
    /// makes. Bytes may be torn across words; callers validate what they read.
    #[must_use]
    pub(crate) fn read_atomic(&self, offset: usize, out: &mut [u8]) -> bool {
        if self.check(offset, out.len()).is_none() {
            return false;
        }
        let (head, words) = Self::split_aligned(offset, out.len());
        let (head_out, rest) = out.split_at_mut(head);
        let (word_out, tail_out) = rest.split_at_mut(words * 8);
        for (i, b) in head_out.iter_mut().enumerate() {
            *b = self.byte_at(offset + i).load(Ordering::Relaxed);
        }
        let mut at = offset + head;
        for chunk in word_out.chunks_exact_mut(8) {
            chunk.copy_from_slice(&self.word_at(at).load(Ordering::Relaxed).to_ne_bytes());
            at += 8;
        }
        for b in tail_out.iter_mut() {
            *b = self.byte_at(at).load(Ordering::Relaxed);
            at += 1;
        }
        true
    }

    /// Copies `data` into the mapping at `offset` with relaxed atomic stores; the counterpart of
    /// [`Mapping::read_atomic`]. Returns `false` (copying nothing) if the range is not inside the
    /// mapping.
    #[must_use]
    pub(crate) fn write_atomic(&self, offset: usize, data: &[u8]) -> bool {
        if self.check(offset, data.len()).is_none() {
            return false;
        }
        let (head, words) = Self::split_aligned(offset, data.len());
        let (head_in, rest) = data.split_at(head);
        let (word_in, tail_in) = rest.split_at(words * 8);
        for (i, &b) in head_in.iter().enumerate() {
            self.byte_at(offset + i).store(b, Ordering::Relaxed);
        }
        let mut at = offset + head;
        for chunk in word_in.chunks_exact(8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.word_at(at)
                .store(u64::from_ne_bytes(word), Ordering::Relaxed);
            at += 8;
        }
        for &b in tail_in {
            self.byte_at(at).store(b, Ordering::Relaxed);
            at += 1;
        }
        true
    }

    /// The `AtomicU32` at `offset`, or `None` if it is out of bounds or misaligned.
    #[inline]
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
    #[inline]
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

impl Mapping {
    /// The `len` bytes at `offset` as a slice, or `None` if the range is not inside the mapping.
    ///
    /// # Safety
    ///
    /// While the slice lives, nothing writes the range: no thread of this process and no other
    /// process (a publisher's loaned slot, read back by the publisher that fills it).
    pub(crate) unsafe fn view(&self, offset: usize, len: usize) -> Option<&[u8]> {
        self.check(offset, len)?;
        let ptr = self.base.as_ptr().wrapping_add(offset);
        // The range is inside the live mapping (checked above).
        // SAFETY: in bounds, and nothing writes it while the slice lives (caller's contract).
        Some(unsafe { std::slice::from_raw_parts(ptr, len) })
    }

    /// The `len` bytes at `offset` as a mutable slice, or `None` if the range is not inside the
    /// mapping.
    ///
    /// # Safety
    ///
    /// While the slice lives, nothing else reads or writes the range: no other reference or
    /// copy in this process, and no other process writes it (a publisher's loaned slot: only the
    /// publisher maps the region writable, and it hands a slot out once at a time).
    // The exclusivity `&mut self` would give comes from the caller's contract instead: the
    // mapping is shared (`Arc`) by the publisher and its acceptor thread.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn view_mut(&self, offset: usize, len: usize) -> Option<&mut [u8]> {
        self.check(offset, len)?;
        let ptr = self.base.as_ptr().wrapping_add(offset);
        // The range is inside the live mapping (checked above).
        // SAFETY: in bounds, and nothing else accesses it while the slice lives (caller's contract).
        Some(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
    }
}

/// A ring's memory inside a [`Mapping`], checked once when made: a data area whose size is a
/// power of two (at least a line), 64-byte aligned, and a control block of [`RING_CONTROL_LEN`]
/// bytes. Data offsets are masked into the area, so finding a record's header line needs no
/// further check: the ring's hot path pays one `and` where it paid a bounds and an alignment
/// check per access. Holds the mapping, so it stays mapped while this lives.
#[derive(Debug)]
pub(crate) struct RingArea {
    /// Keeps the mapping mapped while the pointers below are in use.
    _map: Arc<Mapping>,
    /// Start of the data area (inside `map`, 64-byte aligned).
    data: NonNull<u8>,
    /// Data area size minus one.
    mask: usize,
    /// Start of the control block (inside `map`, 8-byte aligned).
    control: NonNull<u8>,
}

/// Appends the `len` bytes at `source` to `out` with `memcpy`, without zero-filling them first.
///
/// # Safety
///
/// `source` is valid for reading `len` bytes, which no thread of this process writes during the
/// copy, and lies outside any buffer `out` owns, before or after growing (mapped memory, say,
/// which is never part of a heap allocation).
#[inline(always)]
unsafe fn append_from(source: *const u8, len: usize, out: &mut Vec<u8>) {
    out.reserve(len);
    let old_len = out.len();
    let destination = out.spare_capacity_mut().as_mut_ptr().cast::<u8>();
    // `destination` has room for `len` (reserved above) and is disjoint from the source (the
    // caller's contract), which nothing races.
    // SAFETY: both ranges valid and disjoint, the read unraced.
    unsafe { std::ptr::copy_nonoverlapping(source, destination, len) };
    // `old_len + len` is within the capacity reserved above.
    // SAFETY: the copy above initialised exactly the `len` bytes following `old_len`.
    unsafe { out.set_len(old_len + len) };
}

/// Bytes of a ring's control block that [`RingArea::control_word`] reaches.
pub(crate) const RING_CONTROL_LEN: usize = 256;

/// Bytes of one line of a ring's data area.
const LINE: usize = 64;

// SAFETY: the pointers point into `map`, which is `Send` and outlives them (held here);
// `RingArea` hands out only atomics and copies, as `Mapping` does. Not `Sync`: its `memcpy`
// copies rely on one thread at a time touching a range, which the ring's single producer and
// single consumer, each owning its `RingArea`, keep.
unsafe impl Send for RingArea {}

impl RingArea {
    /// The ring whose control block is at `control` and whose data area of `capacity` bytes is
    /// at `data`; `None` unless both lie inside `map` without overlapping, the capacity is a
    /// power of two of at least a line, and the offsets are aligned (control to 8 bytes, data
    /// to 64).
    pub(crate) fn new(
        map: Arc<Mapping>,
        control: usize,
        data: usize,
        capacity: usize,
    ) -> Option<Self> {
        if !capacity.is_power_of_two()
            || capacity < LINE
            || !data.is_multiple_of(LINE)
            || !control.is_multiple_of(8)
        {
            return None;
        }
        let control_end = map.check(control, RING_CONTROL_LEN)?;
        let data_end = map.check(data, capacity)?;
        // Apart: the control words are atomics, the data area is also copied with `memcpy`.
        if control < data_end && data < control_end {
            return None;
        }
        // The base is page-aligned, so aligned offsets are aligned addresses.
        let data = map.base.as_ptr().wrapping_add(data);
        let control = map.base.as_ptr().wrapping_add(control);
        Some(RingArea {
            data: NonNull::new(data)?,
            control: NonNull::new(control)?,
            mask: capacity - 1,
            _map: map,
        })
    }

    /// The words of the data area's line that holds offset `at & (capacity - 1)`.
    #[inline(always)]
    pub(crate) fn line(&self, at: usize) -> &[AtomicU64; LINE / 8] {
        let ptr = self
            .data
            .as_ptr()
            .wrapping_add(at & self.mask & !(LINE - 1));
        // The masked offset is a multiple of 64 below the capacity, which is itself a multiple
        // of 64 (a power of two of at least 64), so the line lies inside the data area, which
        // `new` checked lies inside the live mapping; the data area is 64-byte aligned. The
        // bytes may at other times be copied with `memcpy` (payload on another lap of the
        // ring): the ring's protocol orders those copies before or after its atomic accesses.
        // SAFETY: in bounds, aligned, and no non-atomic access races them (the ring's protocol).
        unsafe { &*ptr.cast::<[AtomicU64; LINE / 8]>() }
    }

    /// The control block's `index`-th word (`index < RING_CONTROL_LEN / 8`, checked at compile
    /// time).
    #[inline(always)]
    pub(crate) fn control_word<const INDEX: usize>(&self) -> &AtomicU64 {
        const { assert!(INDEX < RING_CONTROL_LEN / 8) };
        let ptr = self.control.as_ptr().wrapping_add(INDEX * 8);
        // `new` checked that the control block's bytes lie inside the live mapping and start
        // 8-byte aligned; `INDEX * 8 + 8 <= RING_CONTROL_LEN`. Shared words are only ever
        // accessed atomically.
        // SAFETY: in bounds and aligned for `AtomicU64`.
        unsafe { AtomicU64::from_ptr(ptr.cast::<u64>()) }
    }

    /// Whether `len` bytes from data offset `at` lie inside the data area.
    #[inline(always)]
    fn fits(&self, at: usize, len: usize) -> bool {
        at.checked_add(len).is_some_and(|end| end <= self.mask + 1)
    }

    /// [`Mapping::copy_in`] at data offset `at`: `false` (copying nothing) unless the range lies
    /// inside the data area. Same caller's invariant.
    #[must_use]
    #[inline(always)]
    pub(crate) fn copy_in(&self, at: usize, data: &[u8]) -> bool {
        if !self.fits(at, data.len()) {
            return false;
        }
        let destination = self.data.as_ptr().wrapping_add(at);
        // The destination range lies inside the data area (checked), inside the live, writable
        // mapping; `data` is disjoint; no thread of this process accesses the range meanwhile
        // (caller's invariant).
        // SAFETY: in bounds, disjoint, unraced.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), destination, data.len()) };
        true
    }

    /// Appends the `len` bytes at data offset `at` to `out` with `memcpy`, without zero-filling
    /// them first: `false` (appending nothing) unless the range lies inside the data area. Same
    /// caller's invariant as [`Mapping::copy_in`], for reading.
    #[must_use]
    #[inline(always)]
    pub(crate) fn append_to_vec(&self, at: usize, len: usize, out: &mut Vec<u8>) -> bool {
        if !self.fits(at, len) {
            return false;
        }
        // The source range lies inside the data area (checked), inside the live mapping, which
        // no allocation of ours overlaps; nothing in this process writes it meanwhile (caller's
        // invariant).
        // SAFETY: as `append_from` requires.
        unsafe { append_from(self.data.as_ptr().wrapping_add(at), len, out) };
        true
    }
}

/// A `MAP_SHARED`, read-only mapping of a whole file, unmapped on drop: a region another process
/// writes and we only read (a publisher's samples). Offers loads and copies, and, to callers that
/// can vouch that nobody writes a range meanwhile, a slice over it ([`ReadOnlyMapping::view`]).
#[derive(Debug)]
pub(crate) struct ReadOnlyMapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: valid until drop and owned by no thread; this process never writes it (it cannot: the
// pages are mapped without write permission), so shared access from any thread is sound.
unsafe impl Send for ReadOnlyMapping {}
// SAFETY: see `Send`.
unsafe impl Sync for ReadOnlyMapping {}

impl ReadOnlyMapping {
    /// `mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0)`. The caller must have checked with
    /// `fstat` that the file is at least `len` bytes long and sealed against shrinking.
    pub(crate) fn map(fd: impl AsFd, len: usize) -> Result<Self, Errno> {
        let base = map_fresh(fd, len, ProtFlags::READ, MapFlags::SHARED)?;
        Ok(ReadOnlyMapping { base, len })
    }

    #[inline]
    fn check(&self, offset: usize, len: usize) -> Option<usize> {
        let end = offset.checked_add(len)?;
        (end <= self.len).then_some(end)
    }

    /// The `u64` at `offset`, loaded atomically with `order` (an atomic load of a lock-free
    /// size is allowed on read-only memory); `None` if out of bounds or misaligned.
    pub(crate) fn load_u64(&self, offset: usize, order: Ordering) -> Option<u64> {
        self.check(offset, 8)?;
        let ptr = self.base.as_ptr().wrapping_add(offset);
        if !(ptr as usize).is_multiple_of(align_of::<AtomicU64>()) {
            return None;
        }
        // The writer accesses shared words only atomically; we only load.
        // SAFETY: `ptr` is in bounds and aligned for `AtomicU64` (both checked above).
        Some(unsafe { AtomicU64::from_ptr(ptr.cast::<u64>()) }.load(order))
    }

    /// The `u32` at `offset`, as [`ReadOnlyMapping::load_u64`].
    pub(crate) fn load_u32(&self, offset: usize, order: Ordering) -> Option<u32> {
        self.check(offset, 4)?;
        let ptr = self.base.as_ptr().wrapping_add(offset);
        if !(ptr as usize).is_multiple_of(align_of::<AtomicU32>()) {
            return None;
        }
        // As for `load_u64`.
        // SAFETY: `ptr` is in bounds and aligned for `AtomicU32` (both checked above).
        Some(unsafe { AtomicU32::from_ptr(ptr.cast::<u32>()) }.load(order))
    }

    /// Appends the `len` bytes at `offset` to `out`; `false` (appending nothing) if the range is
    /// not inside the mapping. The writer is another process (nothing in this process writes a
    /// read-only mapping), so a concurrent write can only give torn bytes, which callers must
    /// not trust.
    #[must_use]
    pub(crate) fn append_to_vec(&self, offset: usize, len: usize, out: &mut Vec<u8>) -> bool {
        if self.check(offset, len).is_none() {
            return false;
        }
        // The source is inside the live mapping (checked), which no allocation of ours
        // overlaps. This mapping is never written; the caller holds the range it reads (a
        // subscriber's held slot), so no writer of ours touches it through another mapping of
        // the same memory either.
        // SAFETY: as `append_from` requires.
        unsafe { append_from(self.base.as_ptr().wrapping_add(offset), len, out) };
        true
    }

    /// The `len` bytes at `offset` as a slice, or `None` if the range is not inside the mapping.
    ///
    /// # Safety
    ///
    /// No process writes the range while the slice lives. (This process cannot; the caller
    /// vouches for the others: for a publisher's sample, the region is sealed so that only the
    /// publisher can write it, the publisher is run by our own user or root, who could write
    /// our memory directly anyway, and its protocol never writes a slot a subscriber holds.)
    pub(crate) unsafe fn view(&self, offset: usize, len: usize) -> Option<&[u8]> {
        self.check(offset, len)?;
        let ptr = self.base.as_ptr().wrapping_add(offset);
        // The range is inside the live, readable mapping (checked above).
        // SAFETY: in bounds, and nothing writes it while the slice lives (caller's contract).
        Some(unsafe { std::slice::from_raw_parts(ptr, len) })
    }
}

impl Drop for ReadOnlyMapping {
    fn drop(&mut self) {
        // Every borrow of the region is tied to `&self`, so none outlives this.
        // SAFETY: `base`/`len` describe exactly the region `mmap` returned in `map`.
        let result = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
        debug_assert!(
            result.is_ok(),
            "munmap of our own mapping failed: {result:?}"
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The atomic copies against a plain reference model, at every alignment and length 0..200.
    #[test]
    fn atomic_copies_match_a_reference_at_every_alignment_and_length() {
        const LEN: usize = 256;
        // The first `LEN` bytes are also a ring area's data area (its control block follows).
        const MAP_LEN: usize = LEN + RING_CONTROL_LEN;
        let fd = super::super::memfd::create_sealed("memlink-unit-copies", MAP_LEN as u64).unwrap();
        let map = Arc::new(Mapping::map_shared(&fd, MAP_LEN).unwrap());
        let area = RingArea::new(map.clone(), LEN, 0, LEN).unwrap();
        let pattern = |i: usize| (i.wrapping_mul(37) ^ 0x5a) as u8;
        let mut reference = [0u8; LEN];
        for offset in 0..16 {
            for len in 0..200 {
                // Reset mapping and reference to the same background.
                let background: Vec<u8> = (0..LEN).map(|i| (i as u8).wrapping_add(1)).collect();
                assert!(map.write_atomic(0, &background));
                reference.copy_from_slice(&background);

                let data: Vec<u8> = (0..len).map(|i| pattern(i + offset)).collect();
                assert!(map.write_atomic(offset, &data));
                reference[offset..offset + len].copy_from_slice(&data);

                let mut whole = [0u8; LEN];
                assert!(map.read_atomic(0, &mut whole));
                assert_eq!(whole, reference, "write at {offset} len {len}");
                let mut part = vec![0u8; len];
                assert!(map.read_atomic(offset, &mut part));
                assert_eq!(part, data, "read at {offset} len {len}");
                let mut plain = Vec::new();
                assert!(area.append_to_vec(offset, len, &mut plain));
                assert_eq!(plain, data, "memcpy read at {offset} len {len}");
                // Appended after what the vector holds, which stays as it was.
                let mut behind = vec![0xee; offset + 3];
                assert!(area.append_to_vec(offset, len, &mut behind));
                assert_eq!(behind[..offset + 3], vec![0xee; offset + 3][..]);
                assert_eq!(
                    behind[offset + 3..],
                    data[..],
                    "append at {offset} len {len}"
                );

                // `copy_in`: exactly the range, nothing around it.
                assert!(map.write_atomic(0, &background));
                let reversed: Vec<u8> = data.iter().rev().copied().collect();
                assert!(map.copy_in(offset, &reversed));
                reference.copy_from_slice(&background);
                reference[offset..offset + len].copy_from_slice(&reversed);
                assert!(map.read_atomic(0, &mut whole));
                assert_eq!(whole, reference, "memcpy write at {offset} len {len}");
                // The ring area's `copy_in` (its data area starts the mapping) writes the same.
                assert!(map.write_atomic(0, &background));
                assert!(area.copy_in(offset, &reversed));
                assert!(map.read_atomic(0, &mut whole));
                assert_eq!(whole, reference, "ring copy_in at {offset} len {len}");
            }
        }
        assert!(map.read_atomic(MAP_LEN, &mut []));
        assert!(!map.read_atomic(MAP_LEN - 3, &mut [0u8; 4]));
        assert!(!map.write_atomic(usize::MAX, &[1]));
        assert!(!map.write_atomic(MAP_LEN - 7, &[0u8; 8]));
        // The plain copies refuse the same ranges (the ring area's, past its data area), and a
        // refused append leaves the vector alone.
        assert!(!map.copy_in(MAP_LEN - 7, &[0u8; 8]));
        assert!(!map.copy_in(usize::MAX, &[1]));
        let mut kept = vec![1, 2, 3];
        assert!(!area.append_to_vec(LEN - 3, 4, &mut kept));
        assert!(!area.append_to_vec(usize::MAX, 1, &mut kept));
        assert!(!area.append_to_vec(LEN + 1, 0, &mut kept));
        assert_eq!(kept, [1, 2, 3]);
        assert!(!area.copy_in(LEN - 7, &[0u8; 8]));
        assert!(!area.copy_in(usize::MAX, &[1]));
        assert!(area.copy_in(LEN, &[]));
    }

    /// A ring area is refused unless it lies inside its mapping, aligned, with a power-of-two
    /// data area; a line is found by masking, so any offset reaches a line inside the area.
    #[test]
    fn ring_areas_are_checked_once_and_mask_their_offsets() {
        const LEN: usize = 8192;
        let fd = super::super::memfd::create_sealed("memlink-unit-ring-area", LEN as u64).unwrap();
        let map = Arc::new(Mapping::map_shared(&fd, LEN).unwrap());
        let area = |control, data, capacity| RingArea::new(map.clone(), control, data, capacity);
        assert!(area(0, 4096, 4096).is_some());
        assert!(area(LEN - RING_CONTROL_LEN, 0, 4096).is_some());
        assert!(area(0, 4096, 2048).is_some());
        for (control, data, capacity) in [
            (0, 4096, 3000),            // not a power of two
            (0, 4096, 32),              // smaller than a line
            (0, 4096 + 8, 2048),        // data misaligned
            (4, 4096, 4096),            // control misaligned
            (0, 8192, 4096),            // data past the end
            (LEN - 128, 0, 4096),       // control past the end
            (0, usize::MAX - 63, 4096), // overflowing
            (usize::MAX - 7, 0, 4096),  // overflowing
            (4096 + 1024, 4096, 4096),  // control inside the data area
            (4096 - 128, 4096, 4096),   // control overlapping its start
        ] {
            assert!(
                area(control, data, capacity).is_none(),
                "{control} {data} {capacity}"
            );
        }
        // Lines are found modulo the capacity, at their line's start.
        let ring = area(0, 4096, 4096).unwrap();
        map.atomic_u64(4096 + 128)
            .unwrap()
            .store(7, Ordering::Relaxed);
        for at in [128, 128 + 63, 4096 + 128, usize::MAX - 4095 + 128] {
            assert_eq!(ring.line(at)[0].load(Ordering::Relaxed), 7, "{at}");
        }
        ring.control_word::<3>().store(9, Ordering::Relaxed);
        assert_eq!(map.atomic_u64(24).unwrap().load(Ordering::Relaxed), 9);
    }
}
