//! A cross-process event with Win32 semantics: auto-reset (each `set` releases one waiter) or
//! manual-reset (stays set, releasing everyone, until `reset`).
//!
//! The futex word is 0 (unset) or 1 (set); any other value is corruption.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{
    Deadline, FIRST_SLICE, Placement, create_named, create_or_open_named, open_named, sleep_slice,
};
use crate::error::{Error, Result};
use crate::memory::header::ObjectKind;
use crate::memory::segment::{Segment, SegmentOptions};
use crate::platform::futex;

const TAG: u32 = u32::from_le_bytes(*b"EVNT");
pub(super) const UNSET: u32 = 0;
const SET: u32 = 1;

/// How an [`Event`] behaves once set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventMode {
    /// A `set` releases exactly one waiter and the event resets itself as that waiter wakes
    /// (if nobody waits, the event stays set until one comes).
    AutoReset,
    /// The event stays set, releasing every waiter, until [`Event::reset`].
    ManualReset,
}

impl EventMode {
    fn code(self) -> u32 {
        match self {
            EventMode::AutoReset => 1,
            EventMode::ManualReset => 2,
        }
    }
}

/// An event shared between processes.
///
/// # Examples
/// ```
/// # fn main() -> memlink::Result<()> {
/// use memlink::{Event, EventMode};
/// # let name = format!("doc-event-{}", std::process::id());
/// let ready = Event::create(&name, EventMode::ManualReset)?;
/// let seen_elsewhere = Event::open(&name)?; // usually in another process
/// ready.set()?;
/// seen_elsewhere.wait_timeout(std::time::Duration::from_secs(1))?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Event {
    pub(super) place: Placement,
    mode: EventMode,
}

impl Event {
    /// Creates named event `name`, initially unset, owner-only.
    ///
    /// # Errors
    /// As [`Segment::create`].
    pub fn create(name: &str, mode: EventMode) -> Result<Event> {
        Self::create_with(name, mode, &SegmentOptions::new())
    }

    /// Creates named event `name` with the given permissions / removal options.
    ///
    /// # Errors
    /// As [`Segment::create`].
    pub fn create_with(name: &str, mode: EventMode, options: &SegmentOptions) -> Result<Event> {
        let place = create_named(name, ObjectKind::Event, options, TAG, UNSET, mode.code())?;
        Ok(Event { place, mode })
    }

    /// Opens named event `name`, creating it (unset, in `mode`) if it does not exist. An existing
    /// event keeps the mode it was created with.
    ///
    /// # Errors
    /// As [`Segment::create_or_open`].
    pub fn create_or_open(name: &str, mode: EventMode) -> Result<Event> {
        Self::create_or_open_with(name, mode, &SegmentOptions::new())
    }

    /// [`Event::create_or_open`] with the given options (permissions, trusted owners).
    ///
    /// # Errors
    /// As [`Segment::create_or_open`].
    pub fn create_or_open_with(
        name: &str,
        mode: EventMode,
        options: &SegmentOptions,
    ) -> Result<Event> {
        let (place, param) = create_or_open_named(
            name,
            ObjectKind::Event,
            options,
            TAG,
            UNSET,
            mode.code(),
            "event",
        )?;
        Self::from_param(place, param)
    }

    /// Opens existing named event `name`.
    ///
    /// # Errors
    /// As [`Segment::open`], and [`Error::Corrupted`] if its state is invalid.
    pub fn open(name: &str) -> Result<Event> {
        Self::open_with(name, &SegmentOptions::new())
    }

    /// Opens existing named event `name`, accepting the owners and modes `options` allow (see
    /// [`SegmentOptions::trust_owner_uid`]).
    ///
    /// # Errors
    /// As [`Event::open`].
    pub fn open_with(name: &str, options: &SegmentOptions) -> Result<Event> {
        let (place, param) = open_named(name, ObjectKind::Event, options, TAG, "event")?;
        Self::from_param(place, param)
    }

    /// Places a new, unset event at `offset` in `segment` (see [`super::STATE_SIZE`] and
    /// [`super::STATE_ALIGN`]). Other processes attach with [`Event::open_in`].
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] or [`Error::Misaligned`] for a bad offset.
    pub fn create_in(segment: &Segment, offset: usize, mode: EventMode) -> Result<Event> {
        let place = Placement::init(segment, offset, TAG, UNSET, mode.code())?;
        Ok(Event { place, mode })
    }

    /// Attaches to the event another process placed at `offset` in `segment`.
    ///
    /// # Errors
    /// [`Error::Incompatible`] if no event is there; bad offsets as for [`Event::create_in`].
    pub fn open_in(segment: &Segment, offset: usize) -> Result<Event> {
        let (place, param) = Placement::attach(segment, offset, TAG, "event")?;
        Self::from_param(place, param)
    }

    fn from_param(place: Placement, param: u32) -> Result<Event> {
        let mode = match param {
            1 => EventMode::AutoReset,
            2 => EventMode::ManualReset,
            other => {
                return Err(place.corrupted(format!(
                    "event mode {other} is neither auto (1) nor manual (2)"
                )));
            }
        };
        Ok(Event { place, mode })
    }

    /// The event's mode.
    pub fn mode(&self) -> EventMode {
        self.mode
    }

    fn check(&self, value: u32) -> Result<u32> {
        if value == UNSET || value == SET {
            Ok(value)
        } else {
            Err(self
                .place
                .corrupted(format!("event word is {value:#x}, expected 0 or 1")))
        }
    }

    /// Sets the event, waking one waiter (auto-reset) or all of them (manual-reset).
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the shared state was invalid.
    #[doc(alias = "SetEvent")]
    pub fn set(&self) -> Result<()> {
        let word = self.place.word()?;
        self.replace_valid(UNSET, SET)?;
        // Always wake: no peer-writable count decides whether our waiters are woken (module doc).
        match self.mode {
            EventMode::AutoReset => futex::wake(word, 1),
            EventMode::ManualReset => futex::wake_all(word),
        }
        .map_err(|e| Error::os("futex wake", e))?;
        Ok(())
    }

    /// Resets the event to unset.
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the shared state was invalid.
    #[doc(alias = "ResetEvent")]
    pub fn reset(&self) -> Result<()> {
        self.replace_valid(SET, UNSET)
    }

    /// Moves the word from `from` to `to` (a no-op if it already holds `to`), refusing to touch a
    /// word that holds neither: overwriting garbage would hide the corruption.
    fn replace_valid(&self, from: u32, to: u32) -> Result<()> {
        // SYNC POINT: SeqCst (hence Release), pairs with the Acquire loads in `try_take`. No lost
        // wake-up: `set` wakes after this store unconditionally, and `futex_wait` only sleeps
        // while the word still holds UNSET, checked atomically with queueing the waiter.
        match self
            .place
            .word()?
            .compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => Ok(()),
            Err(now) => self.check(now).map(drop),
        }
    }

    /// Whether the event is currently set.
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the shared state is invalid.
    pub fn is_set(&self) -> Result<bool> {
        Ok(self.check(self.place.word()?.load(Ordering::Acquire))? == SET)
    }

    /// Waits until the event is set (and, for auto-reset, consumes it).
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the shared state is invalid.
    #[doc(alias = "WaitForSingleObject")]
    pub fn wait(&self) -> Result<()> {
        self.wait_until(Deadline::never())
    }

    /// Waits at most `timeout` for the event to be set.
    ///
    /// # Errors
    /// [`Error::Timeout`] if it was not set in time; [`Error::Corrupted`] as for [`Event::wait`].
    pub fn wait_timeout(&self, timeout: Duration) -> Result<()> {
        self.wait_until(Deadline::after(timeout))
    }

    pub(super) fn try_take(&self) -> Result<bool> {
        let word = self.place.word()?;
        // SYNC POINT: Acquire, pairs with the SeqCst (hence Release) swap in `set`, so data the
        // setter wrote before setting is visible to us after the wait returns.
        match self.mode {
            EventMode::AutoReset => {
                match word.compare_exchange(SET, UNSET, Ordering::Acquire, Ordering::Relaxed) {
                    Ok(_) => Ok(true),
                    Err(now) => self.check(now).map(|_| false),
                }
            }
            EventMode::ManualReset => Ok(self.check(word.load(Ordering::Acquire))? == SET),
        }
    }

    fn wait_until(&self, deadline: Deadline) -> Result<()> {
        let mut slice = FIRST_SLICE;
        loop {
            if self.try_take()? {
                return Ok(());
            }
            // Bounded: a peer that sets the word without waking us costs one slice at most.
            sleep_slice(self.place.word()?, UNSET, &deadline, &mut slice)?;
        }
    }
}
