//! The round-trip floors of `memlink bench rpc`: the echo done between two processes with nothing
//! but its copies (the request into shared memory, out into the server's buffer, the reply into
//! shared memory, out into the client's) and one sequence word per direction, in a
//! [`floor::Region`] (a populated memfd mapping) that the client hands its child.
//!
//! How a side waits for the other's sequence word to move is what tells the floors apart:
//!
//! - [`Waiting::Spin`], the **spin floor**: both sides busy-wait on the word, and publishing is
//!   one store. The least any shared-memory round trip can cost on this machine.
//! - [`Waiting::Futex`], **futex ping-pong**: both sides sleep in `futex_wait` at once, and every
//!   publication is followed by a `futex_wake`. The floor for a peer that always sleeps.
//! - [`Waiting::Memlink`], the **sleeping floor**: memlink's own policy, with the same constants
//!   (from `memlink::__wait`): 32 looks, then spin (skipped when the peer last ran on this CPU),
//!   then yield, then sleep (here in `futex_wait`, memlink on a pipe, both at most 100 ms at a
//!   time). A side says it sleeps in its *parked* word (store, SeqCst fence, a last look), and
//!   the publisher calls `futex_wake` only if it finds that word set (store, SeqCst fence, load:
//!   Dekker's pattern, as memlink's `link::wake`). memlink's "asleep" and "same core" rows are
//!   compared with this one: same waiting, nothing else.
//!
//! # Layout
//!
//! The request's sequence word at 0, the reply's at 128, the client's parked and CPU words at 256
//! and 320, the server's at 384 and 448 (each word alone on its 64-byte line, each side's on its
//! own 128-byte pair), then the request area at 4096 and the reply area after it, each a whole
//! number of pages. The client bumps the request word after copying a request in; the server
//! copies it out, copies it back into the reply area and sets the reply word to the same value.
//! The server is our child and is killed when we are done with it; a side waiting for more than
//! [`STALL`] gives up with an error.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::time::{Duration, Instant};

use memlink::__wait as policy;
use rustix::thread::futex;

use crate::floor::Region;

const REQUEST_SEQ: usize = 0;
const REPLY_SEQ: usize = 128;
const CLIENT_SIDE: usize = 256;
const SERVER_SIDE: usize = 384;
/// Offsets within a side's words.
const PARKED: usize = 0;
const CPU: usize = 64;
const DATA: usize = 4096;

/// The request word's value that tells the server to return.
const STOP: u32 = u32::MAX;

/// A side waiting this long without the other's word moving gives up (the peer died).
const STALL: Duration = Duration::from_secs(30);
/// Spins between two looks at the clock for [`STALL`] (about a millisecond or more).
const SPINS_PER_STALL_CHECK: u32 = 1 << 16;

/// How the two sides of a floor wait (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waiting {
    Spin,
    Futex,
    Memlink,
}

/// Bytes of the request (or reply) area for messages of `size` bytes.
fn area(size: usize) -> usize {
    size.next_multiple_of(4096).max(4096)
}

fn region_len(size: usize) -> usize {
    DATA + 2 * area(size)
}

/// One side's parked and CPU words, looked up only by the floor that uses them (the spin floor
/// never does).
struct Side<'r> {
    region: &'r Region,
    base: usize,
}

impl<'r> Side<'r> {
    fn at(region: &'r Region, base: usize) -> Self {
        Side { region, base }
    }

    fn parked(&self) -> io::Result<&'r AtomicU32> {
        self.region.word32(self.base + PARKED)
    }

    fn cpu(&self) -> io::Result<&'r AtomicU32> {
        self.region.word32(self.base + CPU)
    }
}

fn stalled() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the floor's peer made no progress for 30 s",
    )
}

/// Whether `started` (set on the first call) is more than [`STALL`] ago.
fn stalled_since(started: &mut Option<Instant>) -> bool {
    started.get_or_insert_with(Instant::now).elapsed() > STALL
}

/// Waits for `word` to differ from `old` and returns its new value.
fn wait(
    word: &AtomicU32,
    old: u32,
    waiting: Waiting,
    me: &Side<'_>,
    peer: &Side<'_>,
    patience: (Duration, Duration),
) -> io::Result<u32> {
    let mut since = None;
    match waiting {
        Waiting::Spin => {
            let mut spins = 0u32;
            loop {
                // SYNC POINT: Acquire, pairs with the Release store in `publish`: the peer's
                // copy into shared memory is visible once we see its sequence number.
                let now = word.load(Ordering::Acquire);
                if now != old {
                    return Ok(now);
                }
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(SPINS_PER_STALL_CHECK) && stalled_since(&mut since) {
                    return Err(stalled());
                }
            }
        }
        Waiting::Futex => loop {
            let now = word.load(Ordering::Acquire);
            if now != old {
                return Ok(now);
            }
            futex_wait(word, old)?;
            if stalled_since(&mut since) {
                return Err(stalled());
            }
        },
        Waiting::Memlink => {
            for _ in 0..policy::FIRST_LOOKS {
                let now = word.load(Ordering::Acquire);
                if now != old {
                    return Ok(now);
                }
                std::hint::spin_loop();
            }
            // As memlink decides before each wait: no spinning while the peer last ran here.
            let (my_cpu, parked) = (me.cpu()?, me.parked()?);
            let here = policy::current_cpu().wrapping_add(1);
            if my_cpu.load(Ordering::Relaxed) != here {
                my_cpu.store(here, Ordering::Relaxed);
            }
            let (spin, yield_for) = patience;
            let spin = if peer.cpu()?.load(Ordering::Relaxed) == here {
                Duration::ZERO
            } else {
                spin
            };
            let mut backoff = policy::Backoff::new(spin, yield_for);
            loop {
                let now = word.load(Ordering::Acquire);
                if now != old {
                    return Ok(now);
                }
                if !backoff.pause() {
                    break;
                }
            }
            // Park: say so, fence, look once more, then sleep (memlink's `park_until`).
            loop {
                parked.store(1, Ordering::Relaxed);
                // SYNC POINT: pairs with the fence in `publish` (Dekker): our flag store is
                // ordered before our last look, the publisher's store before its flag load.
                fence(Ordering::SeqCst);
                let now = word.load(Ordering::Acquire);
                if now != old {
                    parked.store(0, Ordering::Relaxed);
                    return Ok(now);
                }
                futex_wait(word, old)?;
                parked.store(0, Ordering::Relaxed);
                let now = word.load(Ordering::Acquire);
                if now != old {
                    return Ok(now);
                }
                if stalled_since(&mut since) {
                    return Err(stalled());
                }
            }
        }
    }
}

/// Sleeps while `word` holds `old`, at most [`policy::PARK_RECHECK`] (a wake-up, a changed word,
/// a signal or the timeout all end it).
fn futex_wait(word: &AtomicU32, old: u32) -> io::Result<()> {
    let timeout = futex::Timespec {
        tv_sec: 0,
        tv_nsec: policy::PARK_RECHECK.as_nanos() as i64,
    };
    match futex::wait(word, futex::Flags::empty(), old, Some(&timeout)) {
        Ok(()) => Ok(()),
        Err(e)
            if e == rustix::io::Errno::AGAIN
                || e == rustix::io::Errno::INTR
                || e == rustix::io::Errno::TIMEDOUT =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Publishes `value` in `word` and wakes the peer as `waiting` says.
fn publish(word: &AtomicU32, value: u32, waiting: Waiting, peer: &Side<'_>) -> io::Result<()> {
    // SYNC POINT: Release, pairs with the Acquire loads in `wait`.
    word.store(value, Ordering::Release);
    let wake = match waiting {
        Waiting::Spin => false,
        Waiting::Futex => true,
        Waiting::Memlink => {
            // SYNC POINT: pairs with the fence in `wait`'s park (Dekker).
            fence(Ordering::SeqCst);
            // Read first: while the peer is awake the line stays shared (as memlink's `nudge`).
            let parked = peer.parked()?;
            parked.load(Ordering::Relaxed) != 0 && parked.swap(0, Ordering::Relaxed) != 0
        }
    };
    if wake {
        futex::wake(word, futex::Flags::empty(), 1)?;
    }
    Ok(())
}

/// The client's end: a round trip copies the request in, bumps the request word, waits for the
/// reply word to match and copies the reply out.
pub(crate) struct FloorClient {
    region: Region,
    waiting: Waiting,
    size: usize,
    seq: u32,
}

impl FloorClient {
    /// A fresh floor for messages of `size` bytes.
    pub(crate) fn create(size: usize, waiting: Waiting) -> io::Result<Self> {
        Ok(FloorClient {
            region: Region::create(region_len(size))?,
            waiting,
            size,
            seq: 0,
        })
    }

    /// The region, to hand to the server process (see [`Region::inheritable`]).
    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    /// One echo round trip of `request` (exactly the floor's size), the reply into `reply`.
    pub(crate) fn round_trip(&mut self, request: &[u8], reply: &mut Vec<u8>) -> io::Result<()> {
        if request.len() != self.size {
            return Err(io::Error::other(format!(
                "a {}-byte request on a {}-byte floor",
                request.len(),
                self.size
            )));
        }
        let r = &self.region;
        let (requests, replies) = (r.word32(REQUEST_SEQ)?, r.word32(REPLY_SEQ)?);
        let (me, server) = (Side::at(r, CLIENT_SIDE), Side::at(r, SERVER_SIDE));
        r.copy_in(DATA, request)?;
        self.seq = match self.seq.wrapping_add(1) {
            STOP => 1,
            seq => seq,
        };
        publish(requests, self.seq, self.waiting, &server)?;
        let patience = (policy::CLIENT_SPIN, policy::CLIENT_YIELD);
        let mut seen = replies.load(Ordering::Acquire);
        while seen != self.seq {
            seen = wait(replies, seen, self.waiting, &me, &server, patience)?;
        }
        reply.clear();
        r.append_to(DATA + area(self.size), self.size, reply)
    }
}

impl Drop for FloorClient {
    /// Tells the server to return (it is killed anyway if it does not).
    fn drop(&mut self) {
        if let Ok(requests) = self.region.word32(REQUEST_SEQ) {
            let server = Side::at(&self.region, SERVER_SIDE);
            let _ = publish(requests, STOP, Waiting::Futex, &server);
        }
    }
}

/// `memlink __peer serve spin|futex|sleeping FD SIZE`: the server's end, on the region inherited
/// as descriptor `fd`; calls `ready` once it waits for requests, then echoes until the client says
/// stop (or it is killed).
pub(crate) fn serve(
    fd: i32,
    size: usize,
    waiting: Waiting,
    ready: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    let r = Region::open_inherited(fd, region_len(size))?;
    let (requests, replies) = (r.word32(REQUEST_SEQ)?, r.word32(REPLY_SEQ)?);
    let (me, client) = (Side::at(&r, SERVER_SIDE), Side::at(&r, CLIENT_SIDE));
    let patience = (policy::SERVER_SPIN, policy::SERVER_YIELD);
    let mut buffer = Vec::with_capacity(size);
    // The region is fresh: the client's first request is 1.
    let mut last = 0;
    ready()?;
    loop {
        let seq = wait(requests, last, waiting, &me, &client, patience)?;
        if seq == STOP {
            return Ok(());
        }
        buffer.clear();
        r.append_to(DATA, size, &mut buffer)?;
        r.copy_in(DATA + area(size), &buffer)?;
        publish(replies, seq, waiting, &client)?;
        last = seq;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each floor echoes correctly between two threads, each with its own mapping of the memfd
    /// (as two processes would have), including after the server has gone to sleep.
    #[test]
    fn every_floor_echoes() {
        for waiting in [Waiting::Spin, Waiting::Futex, Waiting::Memlink] {
            let size = 100;
            let mut client = FloorClient::create(size, waiting).unwrap();
            let (inheritable, number) = client.region().inheritable().unwrap();
            let server = std::thread::spawn(move || {
                let _keep = inheritable;
                serve(number, size, waiting, || Ok(()))
            });
            let mut reply = Vec::new();
            for i in 0..200u32 {
                let request: Vec<u8> = (0..size).map(|b| (b as u32 * 7 + i) as u8).collect();
                if i % 50 == 0 && waiting != Waiting::Spin {
                    std::thread::sleep(Duration::from_millis(2));
                }
                client.round_trip(&request, &mut reply).unwrap();
                assert!(reply == request, "{waiting:?} call {i}");
            }
            assert!(client.round_trip(&[0; 10], &mut reply).is_err());
            drop(client);
            server.join().unwrap().unwrap();
        }
    }
}
