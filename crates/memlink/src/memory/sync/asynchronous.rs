//! Async waits on the synchronisation primitives (feature `tokio`): [`Event::wait_async`],
//! [`Semaphore::wait_async`], [`Mutex::lock_async`].
//!
//! A futex has no descriptor the reactor could watch, so these hand the *sleep* to tokio's
//! blocking pool: the task looks at the word itself (the same non-blocking step as the blocking
//! call: take the event, decrement the count, claim the lock), and if it must wait, a blocking
//! task sleeps in `futex_wait` while the word is unchanged, for one bounded slice (1 ms doubling
//! to 200 ms; 50 ms for the mutex, as the blocking waits), then the task looks again. Each
//! waiting future thus occupies a blocking-pool thread while it sleeps (tokio's pool grows to 512
//! by default, and queues beyond that), never a runtime thread.
//!
//! Cancellation: the blocking task only sleeps; it never takes the event, a unit of the
//! semaphore or the lock. Whatever is acquired is acquired by the future itself, in the poll that
//! returns it, so a dropped future holds nothing, and its blocking task ends within a slice.
//!
//! May use the parent module's internals, `platform::futex` and `tokio`; no `unsafe`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::event::UNSET;
use super::mutex::{
    FIRST_SLICE as MUTEX_FIRST_SLICE, MAX_SLICE as MUTEX_MAX_SLICE, TOKEN_MASK, WAITERS,
};
use super::{Deadline, Event, FIRST_SLICE, Lock, MAX_SLICE, Mutex, Placement, Semaphore};
use crate::error::{Error, Result};
use crate::link::asynchronous::runtime_present;
use crate::platform::futex;

/// Sleeps on tokio's blocking pool in `futex_wait` while the word of `place` holds `expected`, for
/// at most `slice` (and never past `deadline`), then doubles `slice` up to `max`. The caller
/// looks at the word again whatever the outcome.
async fn sleep_slice(
    place: &Placement,
    expected: u32,
    deadline: &Deadline,
    slice: &mut Duration,
    max: Duration,
) -> Result<()> {
    let left = deadline.remaining()?;
    let nap = left.map_or(*slice, |left| left.min(*slice));
    let place = place.clone();
    tokio::task::spawn_blocking(move || {
        futex::wait(place.word()?, expected, Some(nap)).map_err(|e| Error::os("futex wait", e))
    })
    .await
    .map_err(|e| Error::Os {
        op: "waiting on tokio's blocking pool",
        source: std::io::Error::other(e.to_string()),
    })??;
    *slice = (*slice * 2).min(max);
    Ok(())
}

impl Event {
    /// Waits until the event is set (and, for auto-reset, consumes it): the async twin of
    /// [`Event::wait`] (feature `tokio`).
    ///
    /// A futex cannot be watched by tokio's reactor: while it waits, this future hands the sleep
    /// to tokio's blocking pool in bounded slices (see the `memory::sync::asynchronous` module).
    /// Dropping the future consumes nothing.
    ///
    /// # Errors
    /// As [`Event::wait`]; [`Error::InvalidOptions`] outside a tokio runtime.
    pub async fn wait_async(&self) -> Result<()> {
        self.wait_async_until(Deadline::never()).await
    }

    /// Like [`Event::wait_async`], giving up after `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`]; otherwise as [`Event::wait_async`].
    pub async fn wait_async_timeout(&self, timeout: Duration) -> Result<()> {
        self.wait_async_until(Deadline::after(timeout)).await
    }

    async fn wait_async_until(&self, deadline: Deadline) -> Result<()> {
        runtime_present()?;
        let mut slice = FIRST_SLICE;
        loop {
            if self.try_take()? {
                return Ok(());
            }
            sleep_slice(&self.place, UNSET, &deadline, &mut slice, MAX_SLICE).await?;
        }
    }
}

impl Semaphore {
    /// Waits until the count is positive, then takes one: the async twin of
    /// [`Semaphore::wait`] (feature `tokio`).
    ///
    /// A futex cannot be watched by tokio's reactor: while it waits, this future hands the sleep
    /// to tokio's blocking pool in bounded slices (see the `memory::sync::asynchronous` module).
    /// The unit is taken by the future itself when it returns: dropping it takes nothing.
    ///
    /// # Errors
    /// As [`Semaphore::wait`]; [`Error::InvalidOptions`] outside a tokio runtime.
    pub async fn wait_async(&self) -> Result<()> {
        self.wait_async_until(Deadline::never()).await
    }

    /// Like [`Semaphore::wait_async`], giving up after `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`]; otherwise as [`Semaphore::wait_async`].
    pub async fn wait_async_timeout(&self, timeout: Duration) -> Result<()> {
        self.wait_async_until(Deadline::after(timeout)).await
    }

    async fn wait_async_until(&self, deadline: Deadline) -> Result<()> {
        runtime_present()?;
        let mut slice = FIRST_SLICE;
        loop {
            if self.try_wait()? {
                return Ok(());
            }
            sleep_slice(&self.place, 0, &deadline, &mut slice, MAX_SLICE).await?;
        }
    }
}

impl Mutex {
    /// Acquires the lock: the async twin of [`Mutex::lock`] (feature `tokio`). A dead holder is
    /// detected within ~50 ms, as there.
    ///
    /// A futex cannot be watched by tokio's reactor: while it waits, this future hands the sleep
    /// to tokio's blocking pool in bounded slices (see the `memory::sync::asynchronous` module).
    /// The lock is claimed by the future itself, in the poll that returns the guard: a dropped
    /// future never leaves it held. The guard is the blocking API's, held by this thread (not
    /// `Send`): on a multi-thread runtime, release it before the next `.await` of a spawned task.
    ///
    /// # Errors
    /// As [`Mutex::lock`]; [`Error::InvalidOptions`] outside a tokio runtime.
    pub async fn lock_async(&self) -> Result<Lock<'_>> {
        self.lock_async_until(Deadline::never()).await
    }

    /// Like [`Mutex::lock_async`], giving up after `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`]; otherwise as [`Mutex::lock_async`].
    pub async fn lock_async_timeout(&self, timeout: Duration) -> Result<Lock<'_>> {
        self.lock_async_until(Deadline::after(timeout)).await
    }

    async fn lock_async_until(&self, deadline: Deadline) -> Result<Lock<'_>> {
        runtime_present()?;
        let mut slice = MUTEX_FIRST_SLICE;
        let mut slept = false;
        loop {
            if let Some(lock) = self.try_lock()? {
                if slept {
                    // As the blocking lock after a sleep: other sleepers may exist, so the
                    // unlock must wake one (setting the bit while we hold the lock is harmless).
                    self.place.word()?.fetch_or(WAITERS, Ordering::Relaxed);
                }
                return Ok(lock);
            }
            let word = self.place.word()?;
            let current = word.load(Ordering::Relaxed);
            if current & TOKEN_MASK == 0 {
                continue; // freed meanwhile: claim it
            }
            // Tell the holder's unlock that someone sleeps (as the blocking lock does).
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
            sleep_slice(
                &self.place,
                current | WAITERS,
                &deadline,
                &mut slice,
                MUTEX_MAX_SLICE,
            )
            .await?;
            slept = true;
        }
    }
}
