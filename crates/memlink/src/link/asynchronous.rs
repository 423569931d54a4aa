//! Waiting on a connection from async code (feature `tokio`): the same protocol as [`wait`] and
//! [`park_until`], with the sleep done by tokio's reactor instead of `poll` on a thread.
//!
//! An [`AsyncWake`] registers private duplicates of one waiter's wake pipe read end and of the
//! connection's socket with a [`tokio::io::unix::AsyncFd`] each. Parking is unchanged: set our
//! parked flag, SeqCst fence, look at the rings once more, and only then sleep; the peer's
//! existing `nudge` writes its wake-up byte to the pipe, which makes the reactor wake the task.
//! The socket hangs up when the peer dies, which wakes the task too, so a SIGKILLed peer is
//! noticed at once. Every park is bounded by [`PARK_RECHECK`] (a tokio timer), so a lost wake-up
//! costs a moment, as for a thread. The fast path costs no system call: the rings are looked at
//! first, and a short spin (only where the caller asks for one) comes before registering
//! interest.
//!
//! Cancellation: a task dropped while parked lowers its parked flag (a guard does), so the peer
//! stops writing wake-ups for it; a wake-up already written is drained by the next wait.
//!
//! Owns no connection: the pattern modules keep their rings and descriptors and lend them here.
//! May use `platform::notify` (draining pipes) and this module's parent; no `unsafe`.
//!
//! [`wait`]: super::wait
//! [`park_until`]: super::park_until

use std::future::Future;
use std::os::fd::OwnedFd;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

use super::wake::{MAX_WAKE_PIPE, PARK_RECHECK, Side, park_begin, park_end};
use super::{Parked, SocketMessage, TRANSIENT_PAUSE, socket_message};
use crate::error::{Error, Result};
use crate::memory::ring::RingError;
use crate::platform::mapping::Mapping;
use crate::platform::notify::{self, Drained};
use crate::platform::reactor;

/// Looks at the rings before deciding how to wait: while the peer is awake its answer comes
/// within a few hundred nanoseconds, and finding it here costs nothing.
pub(crate) const FIRST_LOOKS: u32 = 32;

/// While spinning, the clock is read once per this many looks.
const LOOKS_PER_CLOCK_READ: u32 = 64;

/// How long a waiter stays runnable before it parks (see [`AsyncWake::wait`]); the default is
/// not at all.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct AsyncPatience {
    /// Looking at the rings without giving the thread up.
    pub(crate) spin: Duration,
    /// Yielding to the runtime's other tasks between looks.
    pub(crate) yield_for: Duration,
}

/// What woke a park.
#[derive(Debug, Default, Clone, Copy)]
struct Woken {
    /// The wake pipe had bytes (drained now).
    wake: bool,
    /// Every writer of the wake pipe is gone, or the socket hung up (or said a goodbye).
    hung_up: bool,
    /// The socket could not be read for the moment (the kernel short of memory): it says nothing
    /// about the peer, and stays readable.
    not_now: bool,
}

/// One waiter's registrations with tokio's reactor: its wake pipe's read end and the
/// connection's socket (duplicates, so that the pattern module keeps its own descriptors).
#[derive(Debug)]
pub(crate) struct AsyncWake {
    wake_in: AsyncFd<OwnedFd>,
    socket: AsyncFd<OwnedFd>,
}

/// Our parked flag, lowered however the wait ends (a dropped future included).
struct ParkFlag<'a> {
    map: &'a Mapping,
    me: Side,
}

impl<'a> ParkFlag<'a> {
    fn raise(map: &'a Mapping, me: Side) -> Result<Self, RingError> {
        park_begin(map, me)?;
        Ok(ParkFlag { map, me })
    }
}

impl Drop for ParkFlag<'_> {
    fn drop(&mut self) {
        // Cannot fail here: `raise` found the flag inside the mapping.
        let _ = park_end(self.map, self.me);
    }
}

/// Whether the current thread runs a tokio runtime (for the waits that need only its blocking
/// pool: see [`reactor_present`] for the others).
pub(crate) fn runtime_present() -> Result<()> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => Ok(()),
        Err(_) => Err(no_runtime("must run inside a tokio runtime")),
    }
}

fn no_runtime(what: &str) -> Error {
    Error::InvalidOptions {
        reason: format!(
            "memlink's async API {what} (with IO and time enabled: `Builder::enable_all`)"
        ),
    }
}

/// Registers `fd` with the current runtime's reactor (`op` says what for, should it fail).
pub(crate) fn registered(fd: OwnedFd, op: &'static str) -> Result<AsyncFd<OwnedFd>> {
    reactor::register_readable(fd).map_err(|e| match e {
        reactor::RegisterError::NoIo => no_runtime("needs tokio's IO driver"),
        reactor::RegisterError::Os(source) => Error::Os { op, source },
    })
}

/// Whether the current thread runs a tokio runtime with the IO and time drivers every wait on a
/// connection needs (tokio panics where one is missing; this says so as an error instead).
pub(crate) fn reactor_present() -> Result<()> {
    runtime_present()?;
    match reactor::drivers() {
        Ok(()) => Ok(()),
        Err(reactor::Missing::Io) => Err(no_runtime("needs tokio's IO driver")),
        Err(reactor::Missing::Time) => Err(no_runtime("needs tokio's timers")),
    }
}

impl AsyncWake {
    /// Registers duplicates of `wake_in` (a non-blocking wake pipe read end) and `socket` (the
    /// connection's socket, watched for goodbyes and hang-up) with the current tokio runtime.
    ///
    /// # Errors
    /// `InvalidOptions` outside a tokio runtime with IO and time enabled; `Os` if a descriptor
    /// cannot be duplicated or registered.
    pub(crate) fn new(wake_in: &OwnedFd, socket: &OwnedFd) -> Result<AsyncWake> {
        // The registrations below find out about the IO driver.
        runtime_present()?;
        reactor::timers().map_err(|_| no_runtime("needs tokio's timers"))?;
        let register = |fd: &OwnedFd| {
            let own = notify::duplicate_wake_end(fd).map_err(|e| Error::Os {
                op: "duplicating a wake-up descriptor",
                source: e,
            })?;
            registered(own, "registering a wake-up descriptor with tokio")
        };
        Ok(AsyncWake {
            wake_in: register(wake_in)?,
            socket: register(socket)?,
        })
    }

    /// Waits until `ready` holds: [`FIRST_LOOKS`] looks, then looks for up to `patience.spin`
    /// (this holds the executor's thread, so only for a caller alone on it), then yields to the
    /// runtime's other tasks, looking after each turn, for up to `patience.yield_for` (while the
    /// peer stays awake this catches its answer with no system call of ours or the peer's), then
    /// parks as `me` ([`AsyncWake::park_until`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn wait(
        &mut self,
        name: &str,
        map: &Mapping,
        me: Side,
        patience: AsyncPatience,
        deadline: Option<Instant>,
        mut ready: impl FnMut() -> Result<bool, RingError>,
    ) -> Result<Parked> {
        let corrupted = |e: RingError| Error::corrupted(name, e.0);
        let AsyncPatience { spin, yield_for } = patience;
        for _ in 0..FIRST_LOOKS {
            if ready().map_err(corrupted)? {
                return Ok(Parked::Ready);
            }
            std::hint::spin_loop();
        }
        if !spin.is_zero() {
            let started = Instant::now();
            loop {
                for _ in 0..LOOKS_PER_CLOCK_READ {
                    if ready().map_err(corrupted)? {
                        return Ok(Parked::Ready);
                    }
                    std::hint::spin_loop();
                }
                let now = Instant::now();
                if deadline.is_some_and(|t| now >= t) {
                    return Ok(Parked::TimedOut);
                }
                if now.duration_since(started) >= spin {
                    break;
                }
            }
        }
        if !yield_for.is_zero() {
            let started = Instant::now();
            loop {
                tokio::task::yield_now().await;
                if ready().map_err(corrupted)? {
                    return Ok(Parked::Ready);
                }
                let now = Instant::now();
                if deadline.is_some_and(|t| now >= t) {
                    return Ok(Parked::TimedOut);
                }
                if now.duration_since(started) >= yield_for {
                    break;
                }
            }
        }
        self.park_until(name, map, me, deadline, ready).await
    }

    /// Sleeps until `ready` holds, parked as `me`: raises the parked flag, looks once more, and
    /// awaits the wake pipe, the socket or a [`PARK_RECHECK`] timer, then looks again. A hang-up
    /// is reported only after a last look, so whatever the peer published before it died is
    /// taken first (as [`super::park_until`]).
    pub(crate) async fn park_until(
        &mut self,
        name: &str,
        map: &Mapping,
        me: Side,
        deadline: Option<Instant>,
        mut ready: impl FnMut() -> Result<bool, RingError>,
    ) -> Result<Parked> {
        let corrupted = |e: RingError| Error::corrupted(name, e.0);
        let mut flag: Option<ParkFlag<'_>> = None;
        loop {
            match &flag {
                // Kept up through a nap nobody ended: `park_begin` raises it again (with the
                // barrier) only if a waker lowered it meanwhile, else it needs no new barrier.
                Some(_) => park_begin(map, me).map_err(corrupted)?,
                None => flag = Some(ParkFlag::raise(map, me).map_err(corrupted)?),
            }
            if ready().map_err(corrupted)? {
                drop(flag);
                return Ok(Parked::Ready);
            }
            let left = match deadline {
                None => None,
                Some(t) => match t.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Ok(Parked::TimedOut),
                },
            };
            let nap = left.map_or(PARK_RECHECK, |left| left.min(PARK_RECHECK));
            let woken = self.sleep(name, nap).await?;
            if !(woken.wake || woken.hung_up || woken.not_now) {
                // Only the timer (or a socket with nothing to say): keep the flag up, so that
                // an idle waiter does not pay a membarrier at every re-check. Dropping this
                // future still lowers it.
                continue;
            }
            flag = None;
            if woken.not_now && !woken.hung_up {
                // Readable still: look again in a moment rather than spin (as `park_until`).
                tokio::time::sleep(TRANSIENT_PAUSE).await;
                continue;
            }
            if woken.hung_up {
                // The peer may have published just before it went away.
                if ready().map_err(corrupted)? {
                    return Ok(Parked::Ready);
                }
                return Ok(Parked::HungUp);
            }
        }
    }

    /// One sleep: until the wake pipe or the socket is readable, or `nap` has passed.
    async fn sleep(&mut self, name: &str, nap: Duration) -> Result<Woken> {
        let mut timer = std::pin::pin!(tokio::time::sleep(nap));
        let AsyncWake { wake_in, socket } = self;
        std::future::poll_fn(|cx| {
            let mut woken = Woken::default();
            let mut any = false;
            if let Poll::Ready(guard) = wake_in.poll_read_ready(cx) {
                let mut guard = guard.map_err(|e| Error::Os {
                    op: "waiting for the peer's wake-up",
                    source: e,
                })?;
                any = true;
                woken.wake = true;
                match notify::drain_some_wakes(guard.get_inner()) {
                    // Read empty: the reactor tells us of the next byte (edge-triggered). A
                    // byte that came after our read has moved the readiness on, and this
                    // clears nothing.
                    Drained::Empty => guard.clear_ready(),
                    // More than wake-ups need (a peer writing on purpose): the pipe stays
                    // readable, and the next turn reads on, after the caller has looked at its
                    // rings and the runtime's budget has let other tasks run. Reading it empty
                    // here could take forever. A pipe grown beyond what we allow is refused.
                    Drained::Full => {
                        if notify::pipe_size(guard.get_inner())
                            .is_ok_and(|size| size > MAX_WAKE_PIPE)
                        {
                            return Poll::Ready(Err(Error::corrupted(
                                name,
                                format!(
                                    "the peer enlarged our wake pipe beyond {MAX_WAKE_PIPE} \
                                     bytes and floods it"
                                ),
                            )));
                        }
                    }
                    // Readable for good (end of file): whoever waits next on this pipe is told
                    // at once, so a hang-up is final for every caller.
                    Drained::Gone => woken.hung_up = true,
                    Drained::NotNow => woken.not_now = true,
                }
            }
            if let Poll::Ready(guard) = socket.poll_read_ready(cx) {
                let mut guard = guard.map_err(|e| Error::Os {
                    op: "watching the connection's socket",
                    source: e,
                })?;
                any = true;
                if guard.ready().is_read_closed() {
                    woken.hung_up = true;
                } else {
                    // Readable but not hung up: after the handshake only a goodbye travels here.
                    match socket_message(name, guard.get_inner()) {
                        SocketMessage::Nothing => guard.clear_ready(),
                        SocketMessage::NotNow => woken.not_now = true,
                        SocketMessage::Closed => woken.hung_up = true,
                        SocketMessage::Corrupted(error) => return Poll::Ready(Err(error)),
                    }
                }
            }
            if any || timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(woken));
            }
            Poll::Pending
        })
        .await
    }
}
