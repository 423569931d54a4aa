//! Cross-process synchronisation primitives in shared memory: [`Event`], [`Semaphore`], [`Mutex`].
//!
//! Each primitive is a 16-byte state block of 32-bit atomics that lives either in its own named
//! object (`Event::create(name, ..)`, `Event::open(name)`) or at an offset inside a [`Segment`] the
//! caller owns (`Event::create_in(&segment, offset, ..)`, `Event::open_in(&segment, offset)`). Both
//! give the same type; a primitive keeps its segment mapped for as long as it lives.
//!
//! State block layout (every field a little-endian `u32` accessed atomically):
//!
//! | offset | field    | meaning                                                              |
//! |--------|----------|----------------------------------------------------------------------|
//! | 0      | tag      | which primitive lives here; written last by `create_in`              |
//! | 4      | word     | the futex word (event: 0/1, semaphore: count, mutex: see below)      |
//! | 8      | reserved | written 0 at creation, never read (was a waiter count; see below)    |
//! | 12     | param    | fixed at creation (event mode, semaphore maximum)                    |
//!
//! The mutex word is `token | OWNER_DIED (bit 30) | WAITERS (bit 31)`, where the 30-bit token names
//! the holding *process* through a lock the kernel keeps on the object's file (see [`Mutex`]).
//!
//! # Peers cannot leave our waiters asleep
//!
//! Anything a peer can write, it can write wrongly, so nothing a peer writes decides whether one of
//! our waiters gets woken:
//! - Wakers (`Event::set`, `Semaphore::post`) always issue the `futex_wake` after changing the
//!   word. Skipping it when a shared waiter count said "nobody sleeps" saved one ~250 ns syscall,
//!   next to a cross-process wake-up of ~11 us, and let a peer that zeroed the count strand our
//!   waiters; the count is gone and its field is reserved (kept so the 16-byte layout stays).
//! - Waiters sleep in bounded slices (1 ms doubling to 200 ms) and re-check the word after each,
//!   so even a peer that writes "set" or a count without waking anyone delays our waiter by at
//!   most one slice. Cost: a waiter blocked for long wakes about 5 times a second.
//! - The mutex still skips the wake on unlock when its word's `WAITERS` bit is clear (the bit is
//!   in the lock word itself, which a peer can corrupt anyway); its waiters sleep in slices of at
//!   most 50 ms, so a cleared bit delays them, never strands them.
//!
//! Waiting sleeps in `futex_wait` (non-private, so it works across processes); nothing spins
//! without bound. Values read from the block are validated on every use: a block a peer has
//! scribbled over gives [`Error::Corrupted`], never a hang or a panic.
//!
//! Uses the segment layer and the platform futex, process and file-lock calls.

#[cfg(feature = "tokio")]
mod asynchronous;
mod event;
mod mutex;
mod semaphore;

pub use event::{Event, EventMode};
pub use mutex::{Lock, Mutex, MutexGuard, OwnerDiedGuard};
pub use semaphore::Semaphore;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::header::ObjectKind;
use super::segment::{Segment, SegmentOptions};
use crate::error::{Error, Result};
use crate::platform::futex;

/// Bytes a primitive's state block occupies inside a segment.
pub const STATE_SIZE: usize = 16;
/// Alignment a primitive's offset inside a segment must have.
pub const STATE_ALIGN: usize = 4;

const TAG: usize = 0;
const WORD: usize = 4;
/// Reserved (once a waiter count): zeroed at creation, never read, so a peer writing it is harmless.
const RESERVED: usize = 8;
const PARAM: usize = 12;

/// Where a primitive's state block is: a segment kept mapped, and the block's payload offset.
#[derive(Debug, Clone)]
struct Placement {
    segment: Segment,
    offset: usize,
}

impl Placement {
    fn checked(segment: &Segment, offset: usize) -> Result<Self> {
        if !offset.is_multiple_of(STATE_ALIGN) {
            return Err(Error::Misaligned {
                offset,
                align: STATE_ALIGN,
            });
        }
        match offset.checked_add(STATE_SIZE) {
            Some(end) if end <= segment.len() => Ok(Placement {
                segment: segment.clone(),
                offset,
            }),
            _ => Err(Error::OutOfBounds {
                offset,
                len: STATE_SIZE,
                size: segment.len(),
            }),
        }
    }

    /// Writes a fresh state block. The tag goes last, with Release.
    fn init(segment: &Segment, offset: usize, tag: u32, word: u32, param: u32) -> Result<Self> {
        let place = Self::checked(segment, offset)?;
        place.field(WORD)?.store(word, Ordering::Relaxed);
        place.field(RESERVED)?.store(0, Ordering::Relaxed);
        place.field(PARAM)?.store(param, Ordering::Relaxed);
        // SYNC POINT: pairs with the Acquire tag load in `attach`, so whoever sees the tag sees
        // the fields written above.
        place.field(TAG)?.store(tag, Ordering::Release);
        Ok(place)
    }

    /// Attaches to an existing block, checking its tag; returns the block and its param.
    fn attach(segment: &Segment, offset: usize, tag: u32, what: &str) -> Result<(Self, u32)> {
        let place = Self::checked(segment, offset)?;
        // SYNC POINT: pairs with the Release tag store in `init`.
        if place.field(TAG)?.load(Ordering::Acquire) != tag {
            return Err(Error::incompatible(
                segment.name(),
                format!("there is no {what} at offset {offset}"),
            ));
        }
        let param = place.field(PARAM)?.load(Ordering::Relaxed);
        Ok((place, param))
    }

    fn field(&self, at: usize) -> Result<&AtomicU32> {
        self.segment.atomic_u32(self.offset + at)
    }

    fn word(&self) -> Result<&AtomicU32> {
        self.field(WORD)
    }

    fn corrupted(&self, reason: String) -> Error {
        Error::corrupted(self.segment.name(), reason)
    }
}

/// Creates a named object holding one state block at payload offset 0.
fn create_named(
    name: &str,
    kind: ObjectKind,
    options: &SegmentOptions,
    tag: u32,
    word: u32,
    param: u32,
) -> Result<Placement> {
    let segment = options
        .clone()
        .kind(kind)
        .create_initialized(name, STATE_SIZE, |segment| {
            Placement::init(segment, 0, tag, word, param).map(drop)
        })?;
    Placement::checked(&segment, 0)
}

/// Opens a named object holding one state block, or creates it if absent.
fn create_or_open_named(
    name: &str,
    kind: ObjectKind,
    options: &SegmentOptions,
    tag: u32,
    word: u32,
    param: u32,
    what: &str,
) -> Result<(Placement, u32)> {
    let segment =
        options
            .clone()
            .kind(kind)
            .create_or_open_initialized(name, STATE_SIZE, |segment| {
                Placement::init(segment, 0, tag, word, param).map(drop)
            })?;
    Placement::attach(&segment, 0, tag, what)
}

/// Opens a named object holding one state block; `options` say whose objects and which modes are
/// accepted.
fn open_named(
    name: &str,
    kind: ObjectKind,
    options: &SegmentOptions,
    tag: u32,
    what: &str,
) -> Result<(Placement, u32)> {
    let segment = options.clone().kind(kind).open(name)?;
    Placement::attach(&segment, 0, tag, what)
}

/// An optional point in time after which a wait gives up.
#[derive(Debug, Clone, Copy)]
struct Deadline(Option<Instant>);

impl Deadline {
    fn never() -> Self {
        Deadline(None)
    }

    fn after(timeout: Duration) -> Self {
        Deadline(Instant::now().checked_add(timeout))
    }

    /// Time left: `Ok(None)` for no deadline, [`Error::Timeout`] once it has passed.
    fn remaining(&self) -> Result<Option<Duration>> {
        match self.0 {
            None => Ok(None),
            Some(at) => match at.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Ok(Some(left)),
                _ => Err(Error::Timeout),
            },
        }
    }
}

/// First sleep of a blocked waiter before it re-checks the word on its own.
const FIRST_SLICE: Duration = Duration::from_millis(1);
/// Longest sleep between re-checks: bounds how long a missing wake-up can delay a waiter.
const MAX_SLICE: Duration = Duration::from_millis(200);

/// Sleeps in `futex_wait` while `word` holds `expected`, for at most one slice (and never past
/// `deadline`), then grows the slice. The caller re-checks the word whatever the outcome.
fn sleep_slice(
    word: &AtomicU32,
    expected: u32,
    deadline: &Deadline,
    slice: &mut Duration,
) -> Result<()> {
    let left = deadline.remaining()?;
    let nap = left.map_or(*slice, |left| left.min(*slice));
    futex::wait(word, expected, Some(nap)).map_err(|e| Error::os("futex wait", e))?;
    *slice = (*slice * 2).min(MAX_SLICE);
    Ok(())
}
