//! A cross-process counting semaphore.
//!
//! The futex word is the count; the param field is the maximum count fixed at creation. A count
//! above the maximum is corruption.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{
    Deadline, FIRST_SLICE, Placement, create_named, create_or_open_named, open_named, sleep_slice,
};
use crate::error::{Error, Result};
use crate::memory::header::ObjectKind;
use crate::memory::segment::{Segment, SegmentOptions};
use crate::platform::futex;

const TAG: u32 = u32::from_le_bytes(*b"SEMA");

/// Largest maximum a semaphore can have (futex values are signed in the kernel's view).
const MAX_COUNT: u32 = Semaphore::MAX_COUNT;

/// A counting semaphore shared between processes.
///
/// # Examples
/// ```
/// # fn main() -> memlink::Result<()> {
/// # let name = format!("doc-sem-{}", std::process::id());
/// let slots = memlink::Semaphore::create(&name, 2)?;
/// assert!(slots.try_wait()?);
/// assert!(slots.try_wait()?);
/// assert!(!slots.try_wait()?);
/// slots.post()?;
/// assert_eq!(slots.value()?, 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Semaphore {
    pub(super) place: Placement,
    max: u32,
}

impl Semaphore {
    /// The largest maximum count a semaphore can have.
    pub const MAX_COUNT: u32 = i32::MAX as u32;

    /// Creates named semaphore `name` with count `initial` and maximum [`Semaphore::MAX_COUNT`], owner-only.
    ///
    /// # Errors
    /// As [`Segment::create`]; [`Error::Overflow`] if `initial` exceeds the maximum.
    pub fn create(name: &str, initial: u32) -> Result<Semaphore> {
        Self::create_with(name, initial, MAX_COUNT, &SegmentOptions::new())
    }

    /// Creates named semaphore `name` with count `initial`, maximum `max` and the given options.
    ///
    /// # Errors
    /// As [`Segment::create`]; [`Error::Overflow`] if `initial > max` or `max > MAX_COUNT`.
    pub fn create_with(
        name: &str,
        initial: u32,
        max: u32,
        options: &SegmentOptions,
    ) -> Result<Semaphore> {
        check_limits(initial, max)?;
        let place = create_named(name, ObjectKind::Semaphore, options, TAG, initial, max)?;
        Ok(Semaphore { place, max })
    }

    /// Opens named semaphore `name`, creating it with count `initial` if it does not exist.
    ///
    /// # Errors
    /// As [`Segment::create_or_open`].
    pub fn create_or_open(name: &str, initial: u32) -> Result<Semaphore> {
        Self::create_or_open_with(name, initial, &SegmentOptions::new())
    }

    /// [`Semaphore::create_or_open`] with the given options (permissions, trusted owners).
    ///
    /// # Errors
    /// As [`Semaphore::create_or_open`].
    pub fn create_or_open_with(
        name: &str,
        initial: u32,
        options: &SegmentOptions,
    ) -> Result<Semaphore> {
        check_limits(initial, MAX_COUNT)?;
        let (place, max) = create_or_open_named(
            name,
            ObjectKind::Semaphore,
            options,
            TAG,
            initial,
            MAX_COUNT,
            "semaphore",
        )?;
        Self::from_param(place, max)
    }

    /// Opens existing named semaphore `name`.
    ///
    /// # Errors
    /// As [`Segment::open`], and [`Error::Corrupted`] if its state is invalid.
    pub fn open(name: &str) -> Result<Semaphore> {
        Self::open_with(name, &SegmentOptions::new())
    }

    /// Opens existing named semaphore `name`, accepting the owners and modes `options` allow (see
    /// [`SegmentOptions::trust_owner_uid`]).
    ///
    /// # Errors
    /// As [`Semaphore::open`].
    pub fn open_with(name: &str, options: &SegmentOptions) -> Result<Semaphore> {
        let (place, max) = open_named(name, ObjectKind::Semaphore, options, TAG, "semaphore")?;
        Self::from_param(place, max)
    }

    /// Places a new semaphore at `offset` in `segment`.
    ///
    /// # Errors
    /// Bad offsets as for [`crate::Event::create_in`]; [`Error::Overflow`] as for `create_with`.
    pub fn create_in(
        segment: &Segment,
        offset: usize,
        initial: u32,
        max: u32,
    ) -> Result<Semaphore> {
        check_limits(initial, max)?;
        let place = Placement::init(segment, offset, TAG, initial, max)?;
        Ok(Semaphore { place, max })
    }

    /// Attaches to the semaphore another process placed at `offset` in `segment`.
    ///
    /// # Errors
    /// [`Error::Incompatible`] if no semaphore is there.
    pub fn open_in(segment: &Segment, offset: usize) -> Result<Semaphore> {
        let (place, max) = Placement::attach(segment, offset, TAG, "semaphore")?;
        Self::from_param(place, max)
    }

    fn from_param(place: Placement, max: u32) -> Result<Semaphore> {
        if max == 0 || max > MAX_COUNT {
            return Err(place.corrupted(format!(
                "semaphore maximum {max} is outside 1..={MAX_COUNT}"
            )));
        }
        Ok(Semaphore { place, max })
    }

    /// The maximum count.
    pub fn max(&self) -> u32 {
        self.max
    }

    fn check(&self, count: u32) -> Result<u32> {
        if count <= self.max {
            Ok(count)
        } else {
            Err(self.place.corrupted(format!(
                "semaphore count {count} exceeds its maximum {}",
                self.max
            )))
        }
    }

    /// The current count (a snapshot).
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the shared count is invalid.
    pub fn value(&self) -> Result<u32> {
        self.check(self.place.word()?.load(Ordering::Relaxed))
    }

    /// Adds one to the count, waking one waiter.
    ///
    /// # Errors
    /// [`Error::Overflow`] if the count is at its maximum; [`Error::Corrupted`].
    #[doc(alias = "ReleaseSemaphore")]
    #[doc(alias = "sem_post")]
    pub fn post(&self) -> Result<()> {
        let word = self.place.word()?;
        let mut count = word.load(Ordering::Relaxed);
        loop {
            if self.check(count)? == self.max {
                return Err(Error::Overflow { max: self.max });
            }
            // SYNC POINT: SeqCst (hence Release), pairs with the Acquire decrement in `try_wait`,
            // publishing the data posted with the permit. No lost wake-up: the wake below is
            // unconditional, and `futex_wait` sleeps only while the count is still 0.
            match word.compare_exchange_weak(count, count + 1, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => count = now,
            }
        }
        // Always wake: no peer-writable count decides whether our waiters are woken (module doc).
        futex::wake(word, 1).map_err(|e| Error::os("futex wake", e))?;
        Ok(())
    }

    /// Takes one from the count if it is positive, without waiting. Returns whether it did.
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the shared count is invalid.
    #[doc(alias = "sem_trywait")]
    pub fn try_wait(&self) -> Result<bool> {
        let word = self.place.word()?;
        let mut count = word.load(Ordering::Relaxed);
        loop {
            if self.check(count)? == 0 {
                return Ok(false);
            }
            // SYNC POINT: Acquire, pairs with the SeqCst increment in `post`.
            match word.compare_exchange_weak(count, count - 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return Ok(true),
                Err(now) => count = now,
            }
        }
    }

    /// Waits until the count is positive, then takes one.
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the shared count is invalid.
    #[doc(alias = "sem_wait")]
    pub fn wait(&self) -> Result<()> {
        self.wait_until(Deadline::never())
    }

    /// Like [`Semaphore::wait`], giving up after `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`]; [`Error::Corrupted`].
    #[doc(alias = "sem_timedwait")]
    pub fn wait_timeout(&self, timeout: Duration) -> Result<()> {
        self.wait_until(Deadline::after(timeout))
    }

    fn wait_until(&self, deadline: Deadline) -> Result<()> {
        let mut slice = FIRST_SLICE;
        loop {
            if self.try_wait()? {
                return Ok(());
            }
            // Bounded: a peer that raises the count without waking us costs one slice at most.
            sleep_slice(self.place.word()?, 0, &deadline, &mut slice)?;
        }
    }
}

fn check_limits(initial: u32, max: u32) -> Result<()> {
    if max == 0 || max > MAX_COUNT {
        return Err(Error::Overflow { max: MAX_COUNT });
    }
    if initial > max {
        return Err(Error::Overflow { max });
    }
    Ok(())
}
