//! Asymmetric memory barriers between processes: a nearly free *light* barrier for the side that
//! runs for every message, paid for by a *heavy* barrier on the side that runs rarely.
//!
//! memlink's wake-up protocols are Dekker's pattern: each side stores, issues a full barrier,
//! then loads what the other side stored (the waker: "data published" then "is the peer
//! parked?"; the parker: "I am parked" then "is there data?"). On x86 the full barrier drains the
//! store buffer, which after writing a message means waiting for the cache lines it wrote to be
//! owned: it was the largest single cost per message. But the two sides are not symmetric: a
//! waker runs once per message, a parker only before it goes to sleep, which costs a syscall and
//! a wake-up of several microseconds anyway.
//!
//! `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)` makes every running thread of every process that
//! registered for it execute a full barrier (by IPI) before the call returns; threads not running
//! pass one when they are next scheduled. So a registered process may use a compiler-only fence
//! on its frequent side ([`light`]), and the rare side's [`heavy`] barrier (a real fence, then the
//! membarrier) supplies the missing hardware barrier on the other process's CPU at the moment it
//! matters: either the light side's load comes after that barrier, and sees the heavy side's
//! store (made before it), or it came before, and then the light side's earlier store is drained
//! and visible by the time `membarrier` returns, so the heavy side's following load sees it.
//! (The same argument as folly's `asymmetricLightBarrier`/`asymmetricHeavyBarrier` and liburcu's
//! membarrier flavour; the loom models in `tests/loom.rs` model both as SeqCst fences.)
//!
//! [`light`] is a compiler fence only if this process registered successfully, else a real fence.
//! [`heavy`] issues the membarrier whenever the kernel offers it. A process that cannot (an old
//! kernel, a seccomp filter) never registers either, so it uses real fences on its light side; its
//! heavy side then has only a fence, and a registered peer's light wake-up may go unseen: the
//! park is bounded (`link::PARK_RECHECK`), so that costs a moment, never a message.
//!
//! Costs and limits: a registered process is interrupted (briefly) whenever any process on the
//! machine issues the global expedited barrier, so any local user can make it take IPIs, as it
//! could by other means; `MEMLINK_MEMBARRIER=off` in the environment keeps a process from
//! registering (it then uses fences per message, and still issues the barrier when it parks).
//! The kernel serialises expedited barriers on one lock, so a flood of them delays our parks,
//! never a message. The IPIs reach every CPU of this kernel, whatever the pid namespace; a peer
//! behind another kernel sharing the memory (a sandbox such as gVisor, a VM) is not reached, and
//! there only the bounded re-check of a park covers a lost wake-up.
//!
//! Registration belongs to the address space, and a forked child has a new one that is not
//! registered: a `pthread_atfork` child handler forgets our registration, and the child registers
//! again when it first needs a barrier.

use std::sync::atomic::{AtomicU8, Ordering, compiler_fence, fence};

use rustix::thread::{MembarrierCommand, membarrier, membarrier_query};

/// Not yet asked.
const UNKNOWN: u8 = 0;
/// The kernel offers the global expedited barrier and we registered: light barriers are
/// compiler fences.
const REGISTERED: u8 = 1;
/// The kernel offers the global expedited barrier, but registering failed: light barriers are
/// real fences, heavy ones still issue it.
const HEAVY_ONLY: u8 = 2;
/// No global expedited barrier: both are real fences.
const UNAVAILABLE: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Runs in a forked child (async-signal-safe: one atomic store): its address space is not
/// registered.
extern "C" fn forget_registration() {
    STATE.store(UNKNOWN, Ordering::Relaxed);
}

#[cold]
fn discover() -> u8 {
    let query = membarrier_query();
    let state = if !query.contains_command(MembarrierCommand::GlobalExpedited) {
        UNAVAILABLE
    } else if opted_out() {
        HEAVY_ONLY
    } else if query.contains_command(MembarrierCommand::RegisterGlobalExpedited)
        && membarrier(MembarrierCommand::RegisterGlobalExpedited).is_ok()
    {
        REGISTERED
    } else {
        HEAVY_ONLY
    };
    if state == REGISTERED {
        static AT_FORK: std::sync::Once = std::sync::Once::new();
        AT_FORK.call_once(|| {
            // A failure (ENOMEM) leaves no handler: then a forked child that never execs keeps
            // our state and uses compiler fences unregistered, which costs it bounded parks.
            // `pthread_atfork` only records the handler; `forget_registration` is an `extern "C"`
            // function with no arguments doing one atomic store.
            // SAFETY: the handler is a valid `extern "C" fn()` and async-signal-safe (see above).
            let _ = unsafe { libc::pthread_atfork(None, None, Some(forget_registration)) };
        });
    }
    STATE.store(state, Ordering::Relaxed);
    state
}

/// Whether the environment asks this process not to register (`MEMLINK_MEMBARRIER=off`): a
/// registered process takes an inter-processor interrupt whenever any process on the machine
/// issues the global expedited barrier, which a latency-critical program pinned to an isolated
/// CPU may not want. It then pays real fences per message instead, and still issues the barrier
/// when it parks, so its peers lose nothing.
fn opted_out() -> bool {
    std::env::var_os("MEMLINK_MEMBARRIER").is_some_and(|v| v == "off")
}

fn state() -> u8 {
    match STATE.load(Ordering::Relaxed) {
        UNKNOWN => discover(),
        known => known,
    }
}

/// Registers this process for the asymmetric barriers, if it has not yet. Call before publishing
/// anything a peer parks on (connecting, accepting), so the first message already gets the light
/// barrier. Cheap after the first call.
pub(crate) fn prepare() {
    let _ = state();
}

/// The barrier on the side that runs for every message. Pairs with [`heavy`] on the other side.
#[inline]
pub(crate) fn light() {
    if STATE.load(Ordering::Relaxed) == REGISTERED {
        compiler_fence(Ordering::SeqCst);
    } else {
        // Not registered (or not yet asked: asking here would put a syscall on the hot path of
        // whoever forgot `prepare`; a real fence is always correct).
        fence(Ordering::SeqCst);
    }
}

/// The barrier on the side that runs rarely (before sleeping, before reusing memory others may
/// hold). Pairs with [`light`] on the other side, and with another `heavy`. Returns whether it
/// pairs with this process's own [`light`] (the other threads'): `false` only if this process
/// registered (so its light barrier is a compiler fence) and the membarrier then failed (a
/// seccomp filter installed since, the kernel out of memory). A waiter told `false` must not
/// sleep long on a wake-up from this process.
pub(crate) fn heavy() -> bool {
    fence(Ordering::SeqCst);
    let state = state();
    if matches!(state, REGISTERED | HEAVY_ONLY) {
        // An error leaves only the fence: see the module doc for what that costs.
        return membarrier(MembarrierCommand::GlobalExpedited).is_ok() || state != REGISTERED;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barriers_run_and_registration_is_remembered() {
        prepare();
        let first = STATE.load(Ordering::Relaxed);
        assert_ne!(first, UNKNOWN);
        light();
        assert!(heavy(), "a barrier that just worked pairs");
        assert_eq!(STATE.load(Ordering::Relaxed), first);
    }
}
