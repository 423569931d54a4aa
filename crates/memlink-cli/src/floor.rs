//! The shared-memory *ring floor* of `memlink bench duplex` and `memlink bench stream`: a minimal
//! single-producer single-consumer byte ring between two processes that does the copies any
//! shared-memory channel must do (the sender's message into shared memory, then out into the
//! receiver's buffer) and nothing else: no validation beyond bounds, no wake-ups, no
//! reassembly, no framework. It bounds what a shared-memory channel can reach on this machine; it
//! trusts its peer (our own child process) and is not meant for anything else.
//!
//! This is the CLI's only module with `unsafe` (mapping a memfd, forming atomics over it, copying
//! in and out); everything above [`Region`] is safe code. [`Region`] also carries the round-trip
//! floors of `memlink bench rpc` ([`crate::rpc_floor`]).
//!
//! # Layout
//!
//! A region starts with a random key (written by its creator, read once by each side), then
//! holds two rings, one per direction. A ring is a control block of 128 bytes holding `head`
//! (the bytes the consumer has released, a `u64` that only grows, alone on its 128-byte line
//! pair: adjacent-line prefetch pairs 64-byte lines), then a data area of `capacity` bytes (a
//! power of two, at least `4 * CHUNK`); a stream position `p` is at `p % capacity` in it.
//!
//! A message is one record per [`CHUNK`] of it: a 64-byte header slot (a stamp, then the
//! record's length with the top bit set on a message's last record), then the payload padded to
//! a multiple of 64 bytes, so every header and payload starts 64-byte aligned (as memlink's
//! records do). A header never wraps around the end of the data area (positions and capacity are
//! multiples of 64); a payload may, and is then copied in two pieces.
//!
//! # Protocol
//!
//! The producer writes a record's payload and length, then publishes it by storing its stamp,
//! `(position + 1) ^ key`, with Release. The consumer waits for the stamp it expects at its own
//! position (Acquire), copies the payload out, and publishes its new `head` with Release. The
//! producer keeps the last `head` it read and reads the shared one again only when that leaves
//! too little room (Lamport's ring with a cached index, as in FastFlow or rigtorp's
//! `SPSCQueue`). There is no shared tail index: a first version had one (on its own line, as
//! usual), and memlink, whose consumer also waits on the next record's own stamp, beat its
//! latency, since a tail index costs every message one more cache line crossing between the
//! cores. The key makes stale payload bytes at the consumer's position (an older message's)
//! practically never pass for the stamp it expects.
//!
//! Records of up to 32 KiB: a larger message is published every 32 KiB, so the consumer copies
//! out while the producer copies in (memlink does the same with 16 KiB fragments). Of 8 to 64
//! KiB, 32 KiB made the best floor here: 64 KiB moved 64 KiB and 1 MiB messages a few percent
//! faster back to back but delivered a single one later (larger records overlap the two copies
//! less), 16 KiB and less cost more in both.
//!
//! A side that must wait spins for [`SPIN`], then yields for [`YIELD`] (both as memlink's waits
//! do), then sleeps [`NAP`] at a time; it gives up with an error after [`STALL`] without progress
//! (the peer died). Both mappings are populated when made, so no message pays for a page's first
//! touch.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// Offsets within a ring's control block, and of its data area.
const HEAD_AT: usize = 0;
const DATA_AT: usize = 128;
/// Offsets within a record's header slot.
const STAMP_AT: usize = 0;
const LEN_AT: usize = 8;
/// Header slots and payloads are aligned to this.
const SLOT: usize = 64;
/// Largest record: a large message is published in pieces of this size.
pub(crate) const CHUNK: usize = 32 << 10;
/// Largest message the consumer accepts (a length read from the peer is checked against it).
const MAX_MESSAGE: u64 = 1 << 30;

/// How long a waiting side spins, then yields, before it sleeps; how long each sleep lasts; and
/// after how long without progress it gives up.
const SPIN: Duration = Duration::from_micros(50);
const YIELD: Duration = Duration::from_micros(100);
const NAP: Duration = Duration::from_micros(50);
const STALL: Duration = Duration::from_secs(30);

/// Bytes of a region holding two rings of `capacity` bytes each.
pub(crate) fn region_len(capacity: usize) -> usize {
    RINGS_AT + 2 * (DATA_AT + capacity)
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

// --- the raw region ------------------------------------------------------------------------------

/// A `MAP_SHARED` mapping of a whole memfd, unmapped on drop. Every access is bounds-checked;
/// no reference to its bytes is ever formed except to the atomics the rings use as indices and
/// length words.
pub(crate) struct Region {
    fd: OwnedFd,
    base: NonNull<u8>,
    len: usize,
}

impl Region {
    /// A fresh region of `len` bytes (zeroed), in a memfd sealed against resizing.
    pub(crate) fn create(len: usize) -> io::Result<Self> {
        let fd = rustix::fs::memfd_create(
            "memlink-bench-floor",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        Self::map(fd, len)
    }

    /// The region a parent handed us as the inherited descriptor `fd` (see
    /// [`Region::inheritable`]), which must be sealed and exactly `len` bytes long.
    pub(crate) fn open_inherited(fd: i32, len: usize) -> io::Result<Self> {
        // Reopening through /proc gives a descriptor of our own without trusting a raw number.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/self/fd/{fd}"))?;
        let fd = OwnedFd::from(file);
        let size = rustix::fs::fstat(&fd)?.st_size;
        let seals = rustix::fs::fcntl_get_seals(&fd)?;
        if size != len as i64 || !seals.contains(SealFlags::SHRINK) {
            return Err(invalid(format!(
                "the floor region is {size} bytes ({seals:?}), expected {len} and sealed"
            )));
        }
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(invalid("an empty floor region"));
        }
        // A fresh mapping (null hint, no MAP_FIXED) replaces no existing memory; the file
        // is `len` bytes long and sealed against shrinking, so no access within `len` can fault.
        // SAFETY: the invariants just stated hold here.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                // Faulted in now, so that no measurement pays for a page's first touch.
                MapFlags::SHARED | MapFlags::POPULATE,
                &fd,
                0,
            )?
        };
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| invalid("mmap returned null"))?;
        Ok(Region { fd, base, len })
    }

    /// A duplicate of the region's descriptor *without* close-on-exec, for a child to inherit
    /// (close it once the child has started). Returns it with its number.
    pub(crate) fn inheritable(&self) -> io::Result<(OwnedFd, i32)> {
        let fd = rustix::io::dup(&self.fd)?;
        let number = fd.as_raw_fd();
        Ok((fd, number))
    }

    fn check(&self, offset: usize, len: usize) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(invalid(format!(
                "floor access {offset}+{len} outside its {}-byte region",
                self.len
            ))),
        }
    }

    /// The 64-bit atomic at `offset` (8-byte aligned, inside the region).
    fn word(&self, offset: usize) -> io::Result<&AtomicU64> {
        self.check(offset, 8)?;
        if !offset.is_multiple_of(8) {
            return Err(invalid("misaligned floor word"));
        }
        let ptr = self.base.as_ptr().wrapping_add(offset).cast::<u64>();
        // `ptr` is inside the live mapping (checked) and 8-byte aligned (the mapping is
        // page-aligned, `offset` checked); this process touches these bytes only through atomics
        // (the rings never copy over index or length words while the other side may read them);
        // the mapping outlives the returned borrow of `self`.
        // SAFETY: the invariants just stated hold here.
        Ok(unsafe { AtomicU64::from_ptr(ptr) })
    }

    /// The 32-bit atomic at `offset` (4-byte aligned, inside the region): a futex word.
    pub(crate) fn word32(&self, offset: usize) -> io::Result<&AtomicU32> {
        self.check(offset, 4)?;
        if !offset.is_multiple_of(4) {
            return Err(invalid("misaligned floor word"));
        }
        let ptr = self.base.as_ptr().wrapping_add(offset).cast::<u32>();
        // `ptr` is inside the live mapping (checked) and 4-byte aligned (the mapping is
        // page-aligned, `offset` checked); this process touches these bytes only through atomics
        // (the round-trip floor never copies over its sequence and flag words); the mapping
        // outlives the returned borrow of `self`.
        // SAFETY: the invariants just stated hold here.
        Ok(unsafe { AtomicU32::from_ptr(ptr) })
    }

    /// Copies `data` into the region at `offset`.
    pub(crate) fn copy_in(&self, offset: usize, data: &[u8]) -> io::Result<()> {
        self.check(offset, data.len())?;
        let destination = self.base.as_ptr().wrapping_add(offset);
        // The destination range is inside the live, writable mapping (checked); `data` is
        // our own memory, disjoint from it; within this process only the ring's producer touches
        // these bytes until it publishes them (a writer in another process can only make the
        // reader see stale bytes, which it does not trust beyond bounds).
        // SAFETY: the invariants just stated hold here.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), destination, data.len()) };
        Ok(())
    }

    /// Appends the `len` bytes at `offset` to `out`, without zero-filling them first.
    pub(crate) fn append_to(&self, offset: usize, len: usize, out: &mut Vec<u8>) -> io::Result<()> {
        self.check(offset, len)?;
        out.reserve(len);
        let old_len = out.len();
        let source = self.base.as_ptr().wrapping_add(offset);
        let destination = out.spare_capacity_mut().as_mut_ptr().cast::<u8>();
        // The source range is inside the live mapping (checked); `destination` is `out`'s
        // spare capacity, at least `len` bytes (reserved above) and disjoint from the mapping;
        // within this process only the ring's consumer touches the source until it releases it.
        // SAFETY: the invariants just stated hold here.
        unsafe { std::ptr::copy_nonoverlapping(source, destination, len) };
        // The copy above initialised exactly the `len` bytes following `old_len`, which
        // are within the capacity reserved above.
        // SAFETY: the invariants just stated hold here.
        unsafe { out.set_len(old_len + len) };
        Ok(())
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // `base`/`len` are the mapping made in `map`, unmapped only here; every borrow of
        // it (atomics) is tied to `&self`, so none outlives this.
        // SAFETY: the invariants just stated hold here.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

// --- waiting -------------------------------------------------------------------------------------

/// Spin, then yield, then sleep; an error after [`STALL`].
struct Wait {
    started: Instant,
    spins: u32,
    elapsed: Duration,
}

impl Wait {
    fn new() -> Self {
        Wait {
            started: Instant::now(),
            spins: 0,
            elapsed: Duration::ZERO,
        }
    }

    fn pause(&mut self) -> io::Result<()> {
        if self.elapsed < SPIN {
            std::hint::spin_loop();
            self.spins += 1;
            // The clock is read once per 64 pauses, as memlink's backoff does.
            if self.spins.is_multiple_of(64) {
                self.elapsed = self.started.elapsed();
            }
            return Ok(());
        }
        if self.elapsed < SPIN + YIELD {
            std::thread::yield_now();
        } else if self.elapsed < STALL {
            std::thread::sleep(NAP);
        } else {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the floor's peer made no progress for 30 s",
            ));
        }
        self.elapsed = self.started.elapsed();
        Ok(())
    }
}

// --- the ring ------------------------------------------------------------------------------------

/// Where the region's key is, and where its rings start.
const KEY_AT: usize = 0;
const RINGS_AT: usize = 128;

/// A fresh region for two rings of `capacity` bytes, with a fresh random key.
pub(crate) fn create(capacity: usize) -> io::Result<Region> {
    let region = Region::create(region_len(capacity))?;
    let mut key = [0u8; 8];
    rustix::rand::getrandom(&mut key, rustix::rand::GetRandomFlags::empty())?;
    // The top bit set: a stamp is then never 0 (a fresh slot) nor a small number.
    region
        .word(KEY_AT)?
        .store(u64::from_le_bytes(key) | 1 << 63, Ordering::Relaxed);
    Ok(region)
}

/// The region for rings of `capacity` bytes that a parent made with [`create`] and handed us as
/// the inherited descriptor `fd`.
pub(crate) fn open(fd: i32, capacity: usize) -> io::Result<Region> {
    Region::open_inherited(fd, region_len(capacity))
}

/// The stamp that publishes the record at stream position `position`.
fn stamp(position: u64, key: u64) -> u64 {
    (position + 1) ^ key
}

/// One ring of a region: where its control block is, how large its data area is, and its key.
#[derive(Clone, Copy)]
struct Ring {
    control: usize,
    capacity: usize,
    key: u64,
}

impl Ring {
    /// Ring `index` (0 or 1) of a region made by [`region_len`]`(capacity)`.
    fn nth(region: &Region, index: usize, capacity: usize) -> io::Result<Self> {
        if !capacity.is_power_of_two() || capacity < 4 * CHUNK || index > 1 {
            return Err(invalid(format!(
                "bad floor ring {index} of {capacity} bytes"
            )));
        }
        let control = RINGS_AT + index * (DATA_AT + capacity);
        region.check(control, DATA_AT + capacity)?;
        Ok(Ring {
            control,
            capacity,
            key: region.word(KEY_AT)?.load(Ordering::Relaxed),
        })
    }

    /// Offset in the region of stream position `position`.
    fn at(&self, position: u64) -> usize {
        self.control + DATA_AT + (position % self.capacity as u64) as usize
    }

    /// Bytes from stream position `position` to the end of the data area.
    fn left_before_end(&self, position: u64) -> usize {
        self.capacity - (position % self.capacity as u64) as usize
    }
}

/// The sending end of a ring.
pub(crate) struct Producer {
    region: Rc<Region>,
    ring: Ring,
    tail: u64,
    head_seen: u64,
}

impl Producer {
    /// The producer of ring `index` of `region` (fresh: all zero but its key).
    pub(crate) fn new(region: Rc<Region>, index: usize, capacity: usize) -> io::Result<Self> {
        let ring = Ring::nth(&region, index, capacity)?;
        Ok(Producer {
            region,
            ring,
            tail: 0,
            head_seen: 0,
        })
    }

    /// Waits until `need` bytes are free.
    fn room(&mut self, need: usize) -> io::Result<()> {
        let capacity = self.ring.capacity as u64;
        let mut wait: Option<Wait> = None;
        loop {
            if capacity - (self.tail - self.head_seen) >= need as u64 {
                return Ok(());
            }
            // SYNC POINT: Acquire, pairs with the Release `head` store in `Consumer::recv_into`:
            // the consumer's copies out of the space it released are done before we reuse it.
            let head = self
                .region
                .word(self.ring.control + HEAD_AT)?
                .load(Ordering::Acquire);
            if head < self.head_seen || head > self.tail {
                return Err(invalid(format!(
                    "floor head {head} impossible (tail {})",
                    self.tail
                )));
            }
            self.head_seen = head;
            if capacity - (self.tail - head) >= need as u64 {
                return Ok(());
            }
            wait.get_or_insert_with(Wait::new).pause()?;
        }
    }

    /// Sends one message, waiting for room as needed: one record per [`CHUNK`] of it.
    pub(crate) fn send(&mut self, message: &[u8]) -> io::Result<()> {
        let mut done = 0;
        loop {
            let end = (done + CHUNK).min(message.len());
            let last = end == message.len();
            let chunk = &message[done..end];
            let padded = chunk.len().next_multiple_of(SLOT);
            self.room(SLOT + padded)?;
            let header = self.tail;
            let payload = header + SLOT as u64;
            let first = chunk.len().min(self.ring.left_before_end(payload));
            self.region
                .copy_in(self.ring.at(payload), &chunk[..first])?;
            if first < chunk.len() {
                let rest = payload + first as u64;
                self.region.copy_in(self.ring.at(rest), &chunk[first..])?;
            }
            let at = self.ring.at(header);
            self.region.word(at + LEN_AT)?.store(
                chunk.len() as u64 | u64::from(last) << 63,
                Ordering::Relaxed,
            );
            // SYNC POINT: Release, pairs with the Acquire stamp load in `Consumer::recv_into`:
            // the payload and length written above are visible to a consumer that sees it.
            self.region
                .word(at + STAMP_AT)?
                .store(stamp(header, self.ring.key), Ordering::Release);
            self.tail = payload + padded as u64;
            done = end;
            if last {
                return Ok(());
            }
        }
    }
}

/// The receiving end of a ring.
pub(crate) struct Consumer {
    region: Rc<Region>,
    ring: Ring,
    head: u64,
}

impl Consumer {
    /// The consumer of ring `index` of `region`.
    pub(crate) fn new(region: Rc<Region>, index: usize, capacity: usize) -> io::Result<Self> {
        let ring = Ring::nth(&region, index, capacity)?;
        Ok(Consumer {
            region,
            ring,
            head: 0,
        })
    }

    /// Receives the next message into `out` (cleared first), waiting as long as it takes.
    pub(crate) fn recv_into(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        out.clear();
        loop {
            let at = self.ring.at(self.head);
            let expected = stamp(self.head, self.ring.key);
            let word = self.region.word(at + STAMP_AT)?;
            let mut wait: Option<Wait> = None;
            // SYNC POINT: Acquire, pairs with the Release stamp store in `Producer::send`.
            while word.load(Ordering::Acquire) != expected {
                wait.get_or_insert_with(Wait::new).pause()?;
            }
            let len = self.region.word(at + LEN_AT)?.load(Ordering::Relaxed);
            let (last, len) = (len >> 63 != 0, (len & !(1 << 63)) as usize);
            if len > CHUNK || out.len() + len > MAX_MESSAGE as usize {
                return Err(invalid(format!("a floor record of {len} bytes")));
            }
            let payload = self.head + SLOT as u64;
            let first = len.min(self.ring.left_before_end(payload));
            self.region.append_to(self.ring.at(payload), first, out)?;
            if first < len {
                let rest = payload + first as u64;
                self.region
                    .append_to(self.ring.at(rest), len - first, out)?;
            }
            self.head = payload + len.next_multiple_of(SLOT) as u64;
            // SYNC POINT: Release, pairs with the Acquire `head` load in `Producer::room`: our
            // copies out of the released space happen-before the producer reuses it.
            self.region
                .word(self.ring.control + HEAD_AT)?
                .store(self.head, Ordering::Release);
            if last {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(seed: usize, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| ((seed * 31 + i * 7) % 251) as u8)
            .collect()
    }

    /// Messages of every awkward length, larger than the ring included, arrive intact and in
    /// order when producer and consumer run on two threads (each with its own mapping of one
    /// memfd, as two processes would have).
    #[test]
    fn messages_cross_intact_in_order() {
        let capacity = 4 * CHUNK;
        let region = create(capacity).unwrap();
        let (_inheritable, number) = region.inheritable().unwrap();
        let lens: Vec<usize> = (0..400)
            .map(|i| match i % 7 {
                0 => 0,
                1 => 1,
                2 => 63,
                3 => CHUNK + 1,
                4 => 3 * capacity + 17,
                _ => (i * 997) % 5000,
            })
            .collect();
        let expected = lens.clone();
        let writer = std::thread::spawn(move || {
            let region = Rc::new(open(number, capacity).unwrap());
            let mut producer = Producer::new(region, 1, capacity).unwrap();
            for (i, len) in lens.into_iter().enumerate() {
                producer.send(&pattern(i, len)).unwrap();
            }
        });
        let mut consumer = Consumer::new(Rc::new(region), 1, capacity).unwrap();
        let mut out = Vec::new();
        for (i, &len) in expected.iter().enumerate() {
            consumer.recv_into(&mut out).unwrap();
            assert_eq!(out.len(), len, "message {i}");
            assert!(out == pattern(i, len), "message {i}");
        }
        writer.join().unwrap();
    }

    #[test]
    fn out_of_bounds_access_is_an_error() {
        let region = Region::create(4096).unwrap();
        assert!(region.word(4096).is_err());
        assert!(region.word(4).is_err());
        assert!(region.copy_in(4000, &[0; 100]).is_err());
        assert!(region.append_to(usize::MAX, 2, &mut Vec::new()).is_err());
        assert!(Producer::new(Rc::new(region), 0, 4 * CHUNK).is_err());
    }
}
