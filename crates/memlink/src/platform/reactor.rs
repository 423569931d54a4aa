//! Registering a descriptor with tokio's reactor (feature `tokio`), which since tokio 1.54 is an
//! `unsafe` call: the reactor keeps the raw descriptor number, so it must stay open and mean the
//! same file for as long as it is registered.
//!
//! Also whether the current runtime has the drivers memlink's waits need: tokio has no way to
//! ask, and panics where one is missing (a runtime built without `enable_io` or
//! `enable_time`), so the panic is caught and turned into an answer. (The default panic hook
//! still prints tokio's message; a program built with `panic = "abort"` aborts instead.)

use std::os::fd::OwnedFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A driver the current tokio runtime lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missing {
    /// Built without `enable_io`: no descriptor can be registered.
    Io,
    /// Built without `enable_time`: no timer can be made.
    Time,
}

/// Why [`register_readable`] failed.
#[derive(Debug)]
pub(crate) enum RegisterError {
    /// The runtime has no IO driver.
    NoIo,
    /// The reactor refused the descriptor.
    Os(std::io::Error),
}

/// Registers `fd` (non-blocking) with the current tokio runtime's reactor, for readability and
/// hang-up. The `AsyncFd` owns it: it is deregistered before it is closed.
///
/// Callers check for a runtime first (tokio panics outside one); a runtime without its IO
/// driver is [`RegisterError::NoIo`].
pub(crate) fn register_readable(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>, RegisterError> {
    let registered = catch_unwind(AssertUnwindSafe(move || {
        // An `OwnedFd` is a valid open descriptor that only its owner closes, and its
        // `as_raw_fd` always returns that same number. The `AsyncFd` takes ownership of it, so it
        // stays open (and names the same file description) until the `AsyncFd` is dropped, which
        // deregisters it before closing it. (If tokio panics, the descriptor is dropped
        // unregistered while unwinding.)
        // SAFETY: the descriptor stays open and the same for the registration's life (above).
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
    }));
    match registered {
        Ok(Ok(registered)) => Ok(registered),
        Ok(Err(e)) => Err(RegisterError::Os(e.into_parts().1)),
        Err(_) => Err(RegisterError::NoIo),
    }
}

/// Whether the current runtime (there must be one) can make timers.
pub(crate) fn timers() -> Result<(), Missing> {
    // Making a timer asks for the time driver (nothing is registered until it is polled).
    catch_unwind(|| drop(tokio::time::sleep(Duration::ZERO))).map_err(|_| Missing::Time)
}

/// Whether the current runtime (there must be one) has both drivers memlink's waits on a
/// connection need: timers ([`timers`]) and IO (a throwaway eventfd is registered to find out:
/// a few system calls, for the calls that open a connection).
pub(crate) fn drivers() -> Result<(), Missing> {
    timers()?;
    let Ok(probe) = super::notify::doorbell() else {
        // No descriptor to try with: the registrations to come will say.
        return Ok(());
    };
    match register_readable(probe) {
        Err(RegisterError::NoIo) => Err(Missing::Io),
        Ok(_) | Err(RegisterError::Os(_)) => Ok(()),
    }
}
