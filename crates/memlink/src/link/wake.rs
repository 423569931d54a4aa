//! What both ends of a connection share: the region's parked flags and CPU words, the wake-up
//! protocol, and the spin → yield → park backoff.
//!
//! # Sleeping without losing a wake-up
//!
//! A side that runs out of work *parks*: it sets its `parked` flag, issues a full barrier, looks at
//! its rings once more, and only then sleeps in `poll` on its wake pipe and the connection's
//! socket (so that peer death wakes it too). A side that makes progress the other may be waiting
//! for (published a record, or freed ring space while the other waits for room) issues a barrier
//! and reads the other's `parked` flag; only if it is set does it clear it and write a one-byte
//! wake-up to the other's wake pipe. The two store → barrier → load sequences are Dekker's
//! pattern: at least one side sees the other's store, so either the sleeper sees the new data or
//! the waker sees the flag. Hence a wake-up syscall is made only when the receiver has said it is
//! asleep.
//!
//! The barriers are asymmetric (`platform::barrier`): the waker's, paid for every message, is a
//! compiler fence in a process registered for `membarrier`; the parker's, paid once per sleep,
//! is a fence plus `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`, which puts a hardware barrier
//! on the waker's CPU for it. A side that parks after nearly every message (an rpc client whose
//! server is crowded: [`RPC_CLIENT`]) would pay that syscall and its interrupts per message, so
//! it and its waker use plain fences. (Symmetric SeqCst fences cost a store-buffer drain per message;
//! SeqCst stores and loads instead, one `xchg`, measured no faster.)
//!
//! # Wake-ups a peer cannot block or steal
//!
//! Each direction of each connection has its own pipe (see `platform::notify`). Our end is our own
//! open file description, non-blocking, so no write of ours ever blocks whatever the peer does to
//! its end; only the peer reads what we write, so nobody can steal another connection's wake-ups.
//! A peer can refuse to read its wake-ups (our writes then find the pipe full, which we ignore:
//! it is woken already), or scribble on the parked flags in its own region (then it misses its
//! own wake-ups); neither touches any other connection. A park is bounded anyway
//! ([`PARK_RECHECK`]), so even a wake-up lost to a failed write costs a moment, not a call.
//!
//! # Spinning only when it can pay off
//!
//! Spinning helps only if the peer is running on *another* CPU at the same time. Each side
//! publishes the CPU it last waited on (free to read via rseq); when the peer's CPU equals ours,
//! the spin phase is skipped and we go straight to yielding, so a client and server sharing one
//! core hand the CPU back and forth instead of burning a scheduler tick.
//!
//! Spinning also only pays while there are CPUs to spare. When a server has more active clients
//! than that, waiting clients that stay runnable take CPU time from the server and get served
//! ahead of clients that parked, starving them; so the server marks itself *crowded* and clients
//! then park at once, all alike.

use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::time::{Duration, Instant};

use super::protocol::RegionLayout;
use crate::memory::ring::RingError;
use crate::platform::notify::{self, Wake};
use crate::platform::{barrier, cpu, mapping::Mapping};
use std::os::fd::{AsFd, BorrowedFd};

/// Longest a parked side sleeps before it looks at its rings again on its own: a wake-up lost to
/// a failed write then costs a moment, never a connection.
pub(crate) const PARK_RECHECK: Duration = Duration::from_millis(100);

/// Largest wake pipe a peer may keep: ours are made one page; the kernel's default is 64 KiB.
pub(crate) const MAX_WAKE_PIPE: usize = 64 << 10;

/// One side's line in the region.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Side {
    parked: usize,
    cpu: usize,
    /// Whether this side parks after nearly every message it waits for (an rpc client whose
    /// server is crowded parks at once after each call). Such a side parks with a plain fence,
    /// and whoever wakes it pays a plain fence too: a `membarrier` per park (microseconds, and
    /// an interrupt on every CPU running a registered process) would cost more than the fence
    /// per message it saves. Every other side parks only once it has been idle for a while, so
    /// it pays the heavy barrier and its wakers the light one (see the module doc).
    parks_often: bool,
}

impl Side {
    /// A side whose parked flag and CPU word are at these offsets of the region it parks on.
    pub(crate) const fn at(parked: usize, cpu: usize) -> Side {
        Side {
            parked,
            cpu,
            parks_often: false,
        }
    }
}

/// The connecting side, waiting for records.
pub(crate) const CLIENT: Side = Side::at(RegionLayout::CLIENT_PARKED, RegionLayout::CLIENT_CPU);
/// An rpc client waiting for its reply: the connecting side, parking often (see
/// [`Side::parks_often`]).
pub(crate) const RPC_CLIENT: Side = Side {
    parks_often: true,
    ..CLIENT
};
/// The accepting side, waiting for records.
pub(crate) const SERVER: Side = Side::at(RegionLayout::SERVER_PARKED, RegionLayout::SERVER_CPU);
/// The connecting side, waiting for room in the ring it produces (duplex only).
pub(crate) const CLIENT_ROOM: Side =
    Side::at(RegionLayout::CLIENT_ROOM_PARKED, RegionLayout::CLIENT_CPU);
/// The accepting side, waiting for room in the ring it produces (duplex only).
pub(crate) const SERVER_ROOM: Side =
    Side::at(RegionLayout::SERVER_ROOM_PARKED, RegionLayout::SERVER_CPU);

#[inline]
fn word(map: &Mapping, at: usize) -> Result<&AtomicU32, RingError> {
    map.atomic_u32(at)
        .ok_or_else(|| RingError("region flag outside the mapping".into()))
}

/// Marks `me` as about to sleep. Follow with a last look at the rings, then sleep.
///
/// A side that napped (a bounded park) and was woken by nobody finds its flag still up: then
/// the barrier that raised it still orders every later look at the rings after the flag store,
/// so no new barrier is needed (an idle side would otherwise issue a `membarrier` at every
/// re-check). Only we raise the flag, and a waker only ever clears it; a peer that raises it for
/// us costs itself a wake-up, nobody else anything.
pub(crate) fn park_begin(map: &Mapping, me: Side) -> Result<(), RingError> {
    if !raise_parked(map, me)? {
        if me.parks_often {
            // SYNC POINT: pairs with the fence in `nudge` for such a side.
            fence(Ordering::SeqCst);
        } else {
            // SYNC POINT: pairs with the light barrier in `nudge` (Dekker): our flag store is
            // ordered before our re-check of the rings, the waker's ring update before its flag
            // load. The heavy barrier (a membarrier) is paid here, once per sleep, so that the
            // waker's, paid per message, can be a compiler fence (see `platform::barrier`).
            park_barrier();
        }
    }
    Ok(())
}

/// Raises `me`'s parked flag, without the barrier; whether it was up already (see
/// [`park_begin`]). A side that parks on many connections at once raises every flag, then
/// issues one [`park_barrier`] for all of them (unless every flag was up already), then looks
/// at every connection: Dekker's pattern needs one barrier between all the stores and all the
/// loads, not one per connection.
pub(crate) fn raise_parked(map: &Mapping, me: Side) -> Result<bool, RingError> {
    let flag = word(map, me.parked)?;
    if flag.load(Ordering::Relaxed) != 0 {
        return Ok(true);
    }
    flag.store(1, Ordering::Relaxed);
    Ok(false)
}

/// The parking side's barrier, between raising parked flags and the last look (see
/// [`raise_parked`]).
pub(crate) fn park_barrier() {
    // A failed membarrier costs a parked side at most a bounded re-check (`PARK_RECHECK`).
    let _ = barrier::heavy();
}

pub(crate) fn park_end(map: &Mapping, me: Side) -> Result<(), RingError> {
    word(map, me.parked)?.store(0, Ordering::Relaxed);
    Ok(())
}

/// After making progress `peer` may wait for: wakes it through its wake pipe if (and only if) it
/// is parked. A failed write is ignored: the peer is gone (which our own next wait sees as a
/// hang-up). A write the kernel kept refusing for want of memory (`notify::wake` retries it) is
/// logged: a parked peer looks again on its own within [`PARK_RECHECK`] anyway.
#[inline]
pub(crate) fn nudge(map: &Mapping, peer: Side, wake_write: impl AsFd) -> Result<(), RingError> {
    if peer.parks_often {
        // SYNC POINT: pairs with the fence in `park_begin` for such a side.
        fence(Ordering::SeqCst);
    } else {
        // SYNC POINT: pairs with the heavy barrier in `park_begin`.
        barrier::light();
    }
    nudge_fenced(map, peer, wake_write).map(|_| ())
}

/// Registers this process for the light barrier before it publishes anything a peer may park on
/// (`link::offer_regions` and `link::adopt_regions` do it for every connection).
pub(crate) fn prepare_barriers() {
    barrier::prepare();
}

/// The barrier a waker issues between publishing progress and reading the peers' parked flags,
/// where it wakes several with [`nudge_fenced`] (or reads a flag of its own protocol that its
/// peer sets before a [`park_begin`]).
pub(crate) fn barrier_before_nudging() {
    barrier::light();
}

/// As [`nudge`], after [`barrier_before_nudging`] (once, to wake many peers).
/// Returns whether the wake-up found the peer's pipe full (a peer that does not read it).
#[inline]
pub(crate) fn nudge_fenced(
    map: &Mapping,
    peer: Side,
    wake_write: impl AsFd,
) -> Result<bool, RingError> {
    let parked = word(map, peer.parked)?;
    // Read first: while the peer is awake the line stays shared and this costs no transfer.
    if parked.load(Ordering::Relaxed) == 0 {
        return Ok(false);
    }
    wake_parked(parked, wake_write.as_fd())
}

/// The rest of [`nudge_fenced`] once the peer's flag was seen up: out of line, since an awake
/// peer (the case that must be fast) never gets here.
#[cold]
#[inline(never)]
fn wake_parked(parked: &AtomicU32, wake_write: BorrowedFd<'_>) -> Result<bool, RingError> {
    if parked.swap(0, Ordering::Relaxed) == 0 {
        return Ok(false);
    }
    let full = match notify::wake(wake_write) {
        Wake::Full => true,
        Wake::Sent | Wake::Gone => false,
        Wake::Lost(error) => {
            // The peer sleeps on until it looks again on its own (within `PARK_RECHECK`).
            tracing::warn!(%error, "a wake-up was lost: the kernel is short of memory");
            false
        }
    };
    // A pipe full of one-byte wake-ups means the peer does not read them; enlarging it as well
    // would pin kernel memory charged to whoever created the pipe.
    if full && notify::pipe_size(wake_write).is_ok_and(|size| size > MAX_WAKE_PIPE) {
        return Err(RingError(
            format!(
                "the peer enlarged its wake pipe beyond {MAX_WAKE_PIPE} bytes and does not read it"
            )
            .into(),
        ));
    }
    Ok(full)
}

/// Records the CPU `me` runs on and reports whether `peer` was last seen on the same one.
pub(crate) fn shares_cpu_with_peer(map: &Mapping, me: Side, peer: Side) -> bool {
    let here = cpu::current_cpu();
    let (Ok(mine), Ok(theirs)) = (word(map, me.cpu), word(map, peer.cpu)) else {
        return false;
    };
    // Stored as cpu + 1 so that 0 means "not yet known".
    if mine.load(Ordering::Relaxed) != here.wrapping_add(1) {
        mine.store(here.wrapping_add(1), Ordering::Relaxed);
    }
    theirs.load(Ordering::Relaxed) == here.wrapping_add(1)
}

/// Server side: tells this connection's client whether the server has more active clients than
/// the machine has CPUs to spare (written only when it changes, so the line stays shared).
pub(crate) fn set_crowded(map: &Mapping, crowded: bool) -> Result<(), RingError> {
    let word = word(map, RegionLayout::SERVER_CROWDED)?;
    if (word.load(Ordering::Relaxed) != 0) != crowded {
        word.store(u32::from(crowded), Ordering::Relaxed);
    }
    Ok(())
}

/// Client side: whether the server says it is crowded. Any nonzero value counts (untrusted, but
/// it only changes how we wait, never what we read).
#[inline]
pub(crate) fn server_is_crowded(map: &Mapping) -> bool {
    word(map, RegionLayout::SERVER_CROWDED).is_ok_and(|w| w.load(Ordering::Relaxed) != 0)
}

/// How long to spin, then yield, before parking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Patience {
    pub(crate) spin: Duration,
    pub(crate) yield_for: Duration,
}

/// Spin a while, then yield a while, then give up (the caller parks).
///
/// The defaults are long enough to cover a cross-core wake-up (~11 µs) plus a typical handler, so
/// a sender that spins catches replies without sleeping; and short enough that an idle side parks
/// within a fraction of a millisecond and costs nothing.
#[derive(Debug)]
pub(crate) struct Backoff {
    started: Instant,
    /// When the clock was last read.
    now: Instant,
    patience: Patience,
    /// Calls since the clock was last read.
    calls: u32,
    /// Where the last clock read put us.
    phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Spin,
    Yield,
    Done,
}

/// While spinning, the clock is read once per this many pauses. One `pause` instruction takes
/// from ~10 to ~140 cycles depending on the CPU, so a waiter that spun several per look (as an
/// earlier version did, 16) noticed the peer's record up to a microsecond late: most of the gap
/// between a call and the bare shared-memory floor.
const SPINS_PER_CLOCK_READ: u32 = 64;

impl Backoff {
    pub(crate) fn new(patience: Patience) -> Self {
        let now = Instant::now();
        Backoff {
            started: now,
            now,
            patience,
            calls: 0,
            phase: if patience.spin.is_zero() {
                Phase::Yield
            } else {
                Phase::Spin
            },
        }
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The time as of the last clock read (at most [`SPINS_PER_CLOCK_READ`] pauses ago).
    pub(crate) fn last_clock_read(&self) -> Instant {
        self.now
    }

    fn update_phase(&mut self) {
        self.now = Instant::now();
        let elapsed = self.now.duration_since(self.started);
        self.phase = if elapsed < self.patience.spin {
            Phase::Spin
        } else if elapsed < self.patience.spin + self.patience.yield_for {
            Phase::Yield
        } else {
            Phase::Done
        };
    }

    /// Waits a little (one spin-loop hint, or a yield); `false` once it is time to park. The
    /// caller looks at what it waits for between calls, so a short pause means a prompt look.
    pub(crate) fn pause(&mut self) -> bool {
        match self.phase {
            Phase::Spin => {
                std::hint::spin_loop();
                self.calls += 1;
                if self.calls >= SPINS_PER_CLOCK_READ {
                    self.calls = 0;
                    self.update_phase();
                }
                true
            }
            Phase::Yield => {
                std::thread::yield_now();
                self.update_phase();
                self.phase != Phase::Done
            }
            Phase::Done => false,
        }
    }
}
