//! A robust cross-process mutex: when a holder dies, the next locker gets the lock *and* is told.
//!
//! # Why our own futex lock and not a robust pthread mutex
//!
//! A process-shared robust `pthread_mutex_t` gets owner death from the kernel's robust-futex list,
//! which is excellent, but: (1) its bytes are glibc's private ABI, and a peer that writes garbage
//! into them (shared memory is untrusted) can trip glibc assertions or send its robust-list walk
//! through bad pointers — a crash in *our* process, which memlink must never allow; (2) the
//! robust-list head is per-thread and owned by glibc, so we cannot register our own lock words
//! with the kernel beside it; (3) it ties the layout to one libc.
//!
//! So the lock is a futex word in the kernel's robust-futex format, fully validated by us:
//! bits 0–29 the owner's thread id (`gettid`), bit 30 `OWNER_DIED`, bit 31 `WAITERS`. Owner death
//! is detected by the waiters instead of the kernel: a blocked locker sleeps in bounded slices
//! (1 ms doubling to 50 ms) and between slices checks whether the owner thread still exists
//! (`/proc/<tid>/stat`, zombies count as dead). A holder killed with `SIGKILL` is therefore noticed
//! within ~50 ms. Costs, accepted: a thread blocked behind a *live* holder for long wakes up to 20
//! times a second; ids are recycled only after `pid_max` allocations, so a reused id at worst
//! prolongs a wait, never grants the lock twice. Any word value is interpretable, so garbage from a
//! peer yields either a normal wait or an owner-died takeover — never a hang or a panic.
//!
//! Unlocking is thread-affine (the guard is `!Send`), as the owner recorded is the locking thread.

use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Deadline, Placement, create_named, create_or_open_named, open_named};
use crate::error::{Error, Result};
use crate::memory::header::ObjectKind;
use crate::memory::segment::{Segment, SegmentOptions};
use crate::platform::{futex, process};

const TAG: u32 = u32::from_le_bytes(*b"MUTX");
const TID_MASK: u32 = 0x3fff_ffff;
const OWNER_DIED: u32 = 0x4000_0000;
const WAITERS: u32 = 0x8000_0000;

/// Spin iterations before sleeping: enough to ride out a short critical section on another core,
/// far too few to matter when holder and waiter share one.
const SPIN_LIMIT: u32 = 100;
const FIRST_SLICE: Duration = Duration::from_millis(1);
const MAX_SLICE: Duration = Duration::from_millis(50);

/// A robust mutex shared between processes. It guards no data itself: it serialises access to
/// whatever the processes agree it protects (typically bytes in a [`Segment`]).
///
/// # Examples
/// ```
/// # fn main() -> memlink::Result<()> {
/// use memlink::{Lock, Mutex};
/// # let name = format!("doc-mutex-{}", std::process::id());
/// let mutex = Mutex::create(&name)?;
/// let guard = match mutex.lock()? {
///     Lock::Acquired(guard) => guard,
///     Lock::OwnerDied(recovering) => {
///         // The previous holder died mid-update: repair the protected state, then
///         recovering.make_consistent()?
///     }
/// };
/// drop(guard);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Mutex {
    place: Placement,
}

/// The outcome of acquiring a [`Mutex`]: either a normal acquisition, or one that must be
/// acknowledged because the previous holder died while holding the lock.
#[must_use = "the lock is released when this is dropped; an owner-died result must be handled"]
#[derive(Debug)]
pub enum Lock<'a> {
    /// The lock was free or released normally.
    Acquired(MutexGuard<'a>),
    /// The previous holder died holding the lock; the protected state may be half-updated.
    OwnerDied(OwnerDiedGuard<'a>),
}

impl Lock<'_> {
    /// Whether the previous owner died holding the lock.
    pub fn owner_died(&self) -> bool {
        matches!(self, Lock::OwnerDied(_))
    }
}

/// Holds a [`Mutex`]; releases it when dropped.
#[derive(Debug)]
pub struct MutexGuard<'a> {
    mutex: &'a Mutex,
    tid: u32,
    leave_owner_died: bool,
    // The owner recorded in the lock word is this thread, so the guard must not move to another.
    _not_send: PhantomData<*const ()>,
}

/// Holds a [`Mutex`] whose previous owner died. Call [`OwnerDiedGuard::make_consistent`] once the
/// protected state is repaired; dropping it without doing so releases the lock but leaves the
/// owner-died mark, so the next locker is told too.
#[derive(Debug)]
pub struct OwnerDiedGuard<'a> {
    guard: MutexGuard<'a>,
    previous_owner: Option<u32>,
}

impl<'a> OwnerDiedGuard<'a> {
    /// Thread id of the holder that died, if this acquisition observed it (`None` if an earlier
    /// locker saw the death and released without making the lock consistent).
    pub fn previous_owner(&self) -> Option<u32> {
        self.previous_owner
    }

    /// Clears the owner-died mark and returns an ordinary guard.
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the shared state was invalid.
    #[doc(alias = "pthread_mutex_consistent")]
    pub fn make_consistent(mut self) -> Result<MutexGuard<'a>> {
        self.guard
            .mutex
            .place
            .word()?
            .fetch_and(!OWNER_DIED, Ordering::Relaxed);
        self.guard.leave_owner_died = false;
        Ok(self.guard)
    }
}

impl MutexGuard<'_> {
    /// Releases the lock, reporting whether the shared state was still consistent. (Dropping the
    /// guard does the same and ignores that report.)
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the lock word no longer named this thread as owner.
    pub fn unlock(self) -> Result<()> {
        let result = self.mutex.release(self.tid, self.leave_owner_died);
        std::mem::forget(self);
        result
    }
}

impl Drop for MutexGuard<'_> {
    fn drop(&mut self) {
        let _ = self.mutex.release(self.tid, self.leave_owner_died);
    }
}

impl Mutex {
    /// Creates named mutex `name`, unlocked, owner-only.
    ///
    /// # Errors
    /// As [`Segment::create`].
    pub fn create(name: &str) -> Result<Mutex> {
        Self::create_with(name, &SegmentOptions::new())
    }

    /// Creates named mutex `name` with the given permissions / removal options.
    ///
    /// # Errors
    /// As [`Segment::create`].
    pub fn create_with(name: &str, options: &SegmentOptions) -> Result<Mutex> {
        Ok(Mutex {
            place: create_named(name, ObjectKind::Mutex, options, TAG, 0, 0)?,
        })
    }

    /// Opens named mutex `name`, creating it unlocked if it does not exist.
    ///
    /// # Errors
    /// As [`Segment::create_or_open`].
    pub fn create_or_open(name: &str) -> Result<Mutex> {
        Self::create_or_open_with(name, &SegmentOptions::new())
    }

    /// [`Mutex::create_or_open`] with the given options (permissions, trusted owners).
    ///
    /// # Errors
    /// As [`Segment::create_or_open`].
    pub fn create_or_open_with(name: &str, options: &SegmentOptions) -> Result<Mutex> {
        let (place, _) =
            create_or_open_named(name, ObjectKind::Mutex, options, TAG, 0, 0, "mutex")?;
        Ok(Mutex { place })
    }

    /// Opens existing named mutex `name`.
    ///
    /// # Errors
    /// As [`Segment::open`].
    pub fn open(name: &str) -> Result<Mutex> {
        Self::open_with(name, &SegmentOptions::new())
    }

    /// Opens existing named mutex `name`, accepting the owners and modes `options` allow (see
    /// [`SegmentOptions::trust_owner_uid`]).
    ///
    /// # Errors
    /// As [`Segment::open`].
    pub fn open_with(name: &str, options: &SegmentOptions) -> Result<Mutex> {
        Ok(Mutex {
            place: open_named(name, ObjectKind::Mutex, options, TAG, "mutex")?.0,
        })
    }

    /// Places a new, unlocked mutex at `offset` in `segment`.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] or [`Error::Misaligned`] for a bad offset.
    pub fn create_in(segment: &Segment, offset: usize) -> Result<Mutex> {
        Ok(Mutex {
            place: Placement::init(segment, offset, TAG, 0, 0)?,
        })
    }

    /// Attaches to the mutex another process placed at `offset` in `segment`.
    ///
    /// # Errors
    /// [`Error::Incompatible`] if no mutex is there.
    pub fn open_in(segment: &Segment, offset: usize) -> Result<Mutex> {
        Ok(Mutex {
            place: Placement::attach(segment, offset, TAG, "mutex")?.0,
        })
    }

    /// Acquires the lock, waiting as long as it takes (a dead holder is detected within ~50 ms).
    ///
    /// # Errors
    /// [`Error::WouldDeadlock`] if this thread already holds it; [`Error::Corrupted`].
    #[doc(alias = "pthread_mutex_lock")]
    pub fn lock(&self) -> Result<Lock<'_>> {
        self.acquire(Deadline::never(), false)
            .and_then(|lock| lock.ok_or(Error::Timeout))
    }

    /// Acquires the lock, giving up after `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`]; otherwise as [`Mutex::lock`].
    #[doc(alias = "pthread_mutex_timedlock")]
    pub fn lock_timeout(&self, timeout: Duration) -> Result<Lock<'_>> {
        self.acquire(Deadline::after(timeout), false)
            .and_then(|lock| lock.ok_or(Error::Timeout))
    }

    /// Acquires the lock if it is free or its holder is dead; `Ok(None)` if a live holder has it.
    ///
    /// # Errors
    /// As [`Mutex::lock`].
    #[doc(alias = "pthread_mutex_trylock")]
    pub fn try_lock(&self) -> Result<Option<Lock<'_>>> {
        self.acquire(Deadline::never(), true)
    }

    fn guard(&self, tid: u32, previous: Option<u32>, owner_died: bool) -> Lock<'_> {
        let guard = MutexGuard {
            mutex: self,
            tid,
            leave_owner_died: owner_died,
            _not_send: PhantomData,
        };
        if owner_died {
            Lock::OwnerDied(OwnerDiedGuard {
                guard,
                previous_owner: previous,
            })
        } else {
            Lock::Acquired(guard)
        }
    }

    fn acquire(&self, deadline: Deadline, try_only: bool) -> Result<Option<Lock<'_>>> {
        let tid = process::current_tid();
        let word = self.place.word()?;
        // SYNC POINT (every Acquire CAS below): pairs with the Release CAS in `release`, so the
        // previous holder's writes to the protected state are visible to the new holder.
        if word
            .compare_exchange(0, tid, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return Ok(Some(self.guard(tid, None, false)));
        }
        let mut spins = 0;
        let mut slept = false;
        let mut slice = FIRST_SLICE;
        loop {
            let current = word.load(Ordering::Relaxed);
            let owner = current & TID_MASK;
            if owner == 0 {
                // Free (maybe marked owner-died). Having slept, other sleepers may exist, so keep
                // WAITERS set conservatively: the unlock that follows then wakes one of them.
                let waiters = if slept { WAITERS } else { current & WAITERS };
                let claimed = tid | (current & OWNER_DIED) | waiters;
                if word
                    .compare_exchange(current, claimed, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(Some(self.guard(tid, None, current & OWNER_DIED != 0)));
                }
                continue;
            }
            if owner == tid {
                return Err(Error::WouldDeadlock { tid });
            }
            if (try_only || slept) && !process::is_alive(owner) {
                // Whoever wins this CAS takes over the dead holder's lock; losers re-read.
                let claimed = tid | OWNER_DIED | WAITERS;
                if word
                    .compare_exchange(current, claimed, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(Some(self.guard(tid, Some(owner), true)));
                }
                continue;
            }
            if try_only {
                return Ok(None);
            }
            if spins < SPIN_LIMIT {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let left = deadline.remaining()?;
            if current & WAITERS == 0
                && word
                    .compare_exchange(
                        current,
                        current | WAITERS,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_err()
            {
                continue;
            }
            let nap = left.map_or(slice, |left| left.min(slice));
            if futex::wait(word, current | WAITERS, Some(nap))
                .map_err(|e| Error::os("futex wait", e))?
                == futex::Wake::TimedOut
            {
                slice = (slice * 2).min(MAX_SLICE);
            }
            slept = true;
        }
    }

    fn release(&self, tid: u32, leave_owner_died: bool) -> Result<()> {
        let word = self.place.word()?;
        let released = if leave_owner_died { OWNER_DIED } else { 0 };
        let mut current = word.load(Ordering::Relaxed);
        loop {
            if current & TID_MASK != tid {
                return Err(self.place.corrupted(format!(
                    "mutex word {current:#x} no longer names this thread ({tid}) as owner; \
                     another process overwrote it"
                )));
            }
            // SYNC POINT: Release, pairs with the Acquire CASes in `acquire`.
            match word.compare_exchange_weak(
                current,
                released,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        if current & WAITERS != 0 {
            futex::wake(word, 1).map_err(|e| Error::os("futex wake", e))?;
        }
        Ok(())
    }
}
