//! Not part of memlink's API (hidden, no stability promise): how memlink's calls and server
//! workers wait, for the sleeping floor of `memlink bench rpc`, which must wait exactly as
//! memlink does so that its rows compare like with like.
//!
//! A waiter looks [`FIRST_LOOKS`] times, then spins (unless its peer last ran on its own CPU),
//! then yields, then sleeps until woken (memlink: on a pipe, for at most [`PARK_RECHECK`] at a
//! time). A side that publishes wakes the other only if the other said it sleeps.

use std::time::Duration;

use crate::rpc::policy;

/// Looks at the ring a waiting call (and an idle server worker) takes before it reads the clock.
pub const FIRST_LOOKS: u32 = {
    assert!(policy::CLIENT_FIRST_LOOKS == policy::SERVER_FIRST_LOOKS);
    policy::CLIENT_FIRST_LOOKS
};

/// How long a waiting call spins when the server last ran on another CPU.
pub const CLIENT_SPIN: Duration = policy::CLIENT_SPIN;
/// How long a waiting call yields after it spun (or, beside the server on one CPU, at once).
pub const CLIENT_YIELD: Duration = policy::CLIENT_PATIENCE.saturating_sub(policy::CLIENT_SPIN);
/// How long an idle server worker spins when none of its clients last ran on its CPU.
pub const SERVER_SPIN: Duration = policy::SERVER_PATIENCE.spin;
/// How long an idle server worker yields after it spun.
pub const SERVER_YIELD: Duration = policy::SERVER_PATIENCE.yield_for;
/// Longest a parked side sleeps before it looks again on its own.
pub const PARK_RECHECK: Duration = crate::link::PARK_RECHECK;

/// memlink's spin → yield backoff: [`Backoff::pause`] spins (reading the clock once per 64
/// pauses), then yields, and returns `false` once it is time to park.
#[derive(Debug)]
pub struct Backoff(crate::link::Backoff);

impl Backoff {
    /// A backoff that spins for `spin`, then yields for `yield_for`.
    pub fn new(spin: Duration, yield_for: Duration) -> Self {
        Backoff(crate::link::Backoff::new(crate::link::Patience {
            spin,
            yield_for,
        }))
    }

    /// Waits a little; `false` once it is time to park.
    pub fn pause(&mut self) -> bool {
        self.0.pause()
    }
}

/// The CPU the calling thread runs on (from the rseq area, no syscall), or `u32::MAX`: what
/// memlink compares to decide whether spinning can pay off.
pub fn current_cpu() -> u32 {
    crate::platform::cpu::current_cpu()
}
