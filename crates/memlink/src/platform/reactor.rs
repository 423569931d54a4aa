//! Registering a descriptor with tokio's reactor (feature `tokio`), which since tokio 1.54 is an
//! `unsafe` call: the reactor keeps the raw descriptor number, so it must stay open and mean the
//! same file for as long as it is registered.

use std::os::fd::OwnedFd;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Registers `fd` (non-blocking) with the current tokio runtime's reactor, for readability and
/// hang-up. The `AsyncFd` owns it: it is deregistered before it is closed.
///
/// Panics (tokio's) outside a runtime whose IO driver is enabled: callers check for a runtime
/// first.
pub(crate) fn register_readable(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // An `OwnedFd` is a valid open descriptor that only its owner closes, and its `as_raw_fd`
    // always returns that same number. The `AsyncFd` takes ownership of it, so it stays open
    // (and names the same file description) until the `AsyncFd` is dropped, which deregisters it
    // before closing it.
    // SAFETY: the descriptor stays open and the same for the registration's life (just stated).
    let registered = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
    registered.map_err(|e| e.into_parts().1)
}
