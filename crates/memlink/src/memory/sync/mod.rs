//! Cross-process synchronisation primitives in shared memory: [`Event`], [`Semaphore`], [`Mutex`].
//!
//! Each primitive is a 16-byte state block of 32-bit atomics that lives either in its own named
//! object (`Event::create(name, ..)`, `Event::open(name)`) or at an offset inside a [`Segment`] the
//! caller owns (`Event::create_in(&segment, offset, ..)`, `Event::open_in(&segment, offset)`). Both
//! give the same type; a primitive keeps its segment mapped for as long as it lives.
//!
//! State block layout (every field a little-endian `u32` accessed atomically):
//!
//! | offset | field   | meaning                                                        |
//! |--------|---------|----------------------------------------------------------------|
//! | 0      | tag     | which primitive lives here; written last by `create_in`        |
//! | 4      | word    | the futex word (event: 0/1, semaphore: count, mutex: owner)    |
//! | 8      | waiters | sleepers, so wakers skip the `futex_wake` syscall when zero    |
//! | 12     | param   | fixed at creation (event mode, semaphore maximum)              |
//!
//! Waiting sleeps in `futex_wait` (non-private, so it works across processes); nothing spins
//! without bound. Values read from the block are validated on every use: a block a peer has
//! scribbled over gives [`Error::Corrupted`], never a hang or a panic.
//!
//! Uses the segment layer and the platform futex/process calls.

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

/// Bytes a primitive's state block occupies inside a segment.
pub const STATE_SIZE: usize = 16;
/// Alignment a primitive's offset inside a segment must have.
pub const STATE_ALIGN: usize = 4;

const TAG: usize = 0;
const WORD: usize = 4;
const WAITERS: usize = 8;
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
        place.field(WAITERS)?.store(0, Ordering::Relaxed);
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

    fn waiters(&self) -> Result<&AtomicU32> {
        self.field(WAITERS)
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

/// Increments the waiter count for the lifetime of the value. A waiter killed while registered
/// leaves the count too high, which only costs wakers a spare `futex_wake`.
struct WaiterRegistration<'a>(&'a AtomicU32);

impl<'a> WaiterRegistration<'a> {
    fn new(waiters: &'a AtomicU32) -> Self {
        // SYNC POINT: SeqCst, paired with the SeqCst word store and waiters load in the wakers
        // (`Event::set`, `Semaphore::post`): either the waker sees us registered and wakes us, or
        // we see its new word value and do not sleep.
        waiters.fetch_add(1, Ordering::SeqCst);
        WaiterRegistration(waiters)
    }
}

impl Drop for WaiterRegistration<'_> {
    fn drop(&mut self) {
        // Saturating: a peer may have zeroed the count while we slept.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
    }
}
