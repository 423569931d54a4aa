//! Wake-ups that are file descriptors: eventfd doorbells private to one process, `poll` for one
//! waiter, `epoll` for many.
//!
//! Waking through an fd (rather than a bare futex) lets a sleeper wait for "data arrived" and
//! "peer died" (its socket hung up) in one call, and lets an async runtime watch the same fd later.
//! An eventfd is never handed to another process: its `O_NONBLOCK` flag and its counter belong to
//! the open file description, so a peer holding it could make our `write` block or read away our
//! wake-ups. Wake-ups between processes travel on each connection's own socket instead
//! ([`super::socket::send_wake`]).

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags, epoll};
use rustix::io::Errno;

fn timespec(timeout: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(timeout.subsec_nanos()),
    }
}

/// A non-blocking eventfd used as a doorbell between threads of this process.
pub(crate) fn doorbell() -> Result<OwnedFd, Errno> {
    rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
}

/// Rings a doorbell. Safe to call from a signal handler (one `write`, no allocation, no lock).
pub(crate) fn ring(doorbell: impl AsFd) -> Result<(), Errno> {
    match rustix::io::write(doorbell, &1u64.to_ne_bytes()) {
        Ok(_) | Err(Errno::AGAIN) => Ok(()), // AGAIN: counter saturated, it is ringing anyway
        Err(e) => Err(e),
    }
}

/// Resets a doorbell so that it stops being readable.
pub(crate) fn silence(doorbell: impl AsFd) {
    let mut buf = [0u8; 8];
    let _ = rustix::io::read(doorbell, &mut buf);
}

/// Sleeps until `socket` is readable (a wake-up or goodbye arrived, or the peer hung up) or
/// `timeout` passes; returns whether it is readable. The caller then [`drain`]s it.
///
/// [`drain`]: super::socket::drain
pub(crate) fn wait_readable(socket: impl AsFd, timeout: Option<Duration>) -> Result<bool, Errno> {
    let mut fds = [PollFd::new(&socket, PollFlags::IN | PollFlags::RDHUP)];
    let ts = timeout.map(timespec);
    match rustix::event::poll(&mut fds, ts.as_ref()) {
        Ok(_) | Err(Errno::INTR) => {}
        Err(e) => return Err(e),
    }
    Ok(!fds[0].revents().is_empty())
}

/// An epoll set whose entries carry a `u64` token.
pub(crate) struct Poller {
    epoll: OwnedFd,
    events: Vec<epoll::Event>,
}

// SAFETY: `epoll::Event` is `!Send` only because its data union can hold a pointer. We only ever
// store `u64` tokens in it and never dereference anything it holds; the epoll fd itself may be
// used from any thread.
unsafe impl Send for Poller {}

/// One readiness report from [`Poller::wait`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ready {
    pub(crate) token: u64,
    pub(crate) hung_up: bool,
}

impl Poller {
    pub(crate) fn new() -> Result<Self, Errno> {
        Ok(Poller {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            events: Vec::with_capacity(64),
        })
    }

    /// Watches `fd` for readability and hang-up (level-triggered).
    pub(crate) fn add(&self, fd: impl AsFd, token: u64) -> Result<(), Errno> {
        let flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
        epoll::add(&self.epoll, fd, epoll::EventData::new_u64(token), flags)
    }

    pub(crate) fn remove(&self, fd: impl AsFd) -> Result<(), Errno> {
        epoll::delete(&self.epoll, fd)
    }

    /// Waits up to `timeout` (`None`: forever) and returns what became ready.
    pub(crate) fn wait(
        &mut self,
        timeout: Option<Duration>,
        ready: &mut Vec<Ready>,
    ) -> Result<(), Errno> {
        ready.clear();
        self.events.clear();
        let ts = timeout.map(timespec);
        match epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut self.events),
            ts.as_ref(),
        ) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
        let hangup = epoll::EventFlags::RDHUP | epoll::EventFlags::HUP | epoll::EventFlags::ERR;
        ready.extend(self.events.iter().map(|e| {
            let (data, flags) = (e.data, e.flags); // copies: the struct is packed
            Ready {
                token: data.u64(),
                hung_up: flags.intersects(hangup),
            }
        }));
        Ok(())
    }
}
