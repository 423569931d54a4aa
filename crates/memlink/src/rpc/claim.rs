//! The claim word: who settles whether a call runs, the server's worker or a caller that gives
//! up on it.
//!
//! One word per connection, the request ring's spare word (on the worker's own line, beside the
//! consumer position it writes after taking each request, so claiming costs the worker no extra
//! cache line; see `memory::ring`). It holds the id of the last call the worker claimed (0 before
//! the first), or `id | WITHDRAWN` once the caller has withdrawn call `id`:
//!
//! - the worker, once it holds a whole request and before it runs anything of it (the handler,
//!   a stream's thread), swaps the word from what it last left there to the call's id
//!   ([`claim`]);
//! - a caller that gives up on a call (timeout, a connection it takes for dead, a broken ring)
//!   swaps the word from an earlier claim to `id | WITHDRAWN` ([`withdraw`]).
//!
//! Both are compare-and-swaps on one word, so exactly one succeeds. If the caller's does, the
//! worker's fails on the withdrawal and it skips the request: the call never runs, whatever the
//! clocks or the socket said (given a server that keeps the protocol: a hostile one can run a
//! call without claiming it; see the `rpc` module's *Trust*), so the caller may report it
//! [`NotExecuted`](crate::NotExecuted) and send it again elsewhere. If the worker's does, the
//! caller finds its call claimed: it may have run ([`Error::Timeout`](crate::Error::Timeout),
//! [`Error::Disconnected`](crate::Error::Disconnected)).
//!
//! A connection carries one call at a time (a caller holds the connection for the whole call),
//! and call ids increase (and stay below [`WITHDRAWN`]: the server refuses a request whose id
//! does not, [`is_call_id`]), so the two sides never disagree on which call the word is about.
//! Two refinements:
//! - a stream the caller dropped before the worker took its request leaves that request in the
//!   ring while the caller goes on to its next call; if that one is withdrawn, the worker meets
//!   the withdrawal of a *later* call when it claims the dropped stream's. It skips the earlier
//!   request as withdrawn too (what came before a withdrawal is given up with it), and the later
//!   one when it gets to it;
//! - an async call dropped after its request went out is withdrawn, and its connection serves
//!   the caller's next calls if the withdrawal won (and the request carried no deadline: a
//!   request whose deadline has passed is skipped unclaimed, so the worker would never meet the
//!   withdrawal). The worker meets it when it claims that request (which leaves the withdrawal
//!   as its last claim, and the next claim goes on from there); until then the caller may find
//!   its own earlier withdrawal in the word, which says that the worker has claimed nothing
//!   since, so it withdraws a later call from there too ([`withdraw`]'s `kept`).
//!
//! Either side can write anything into the word; each validates what it finds. A caller reads
//! anything but an earlier claim as "may have run" (a server that scribbles on the word makes its
//! callers cautious, nothing worse). A worker that finds anything but its own last claim or the
//! withdrawal of the call at hand or a later one drops the connection as corrupt: a client's word
//! is trusted for skipping that client's own calls and for nothing else.

use std::sync::atomic::{AtomicU64, Ordering};

/// Marks a withdrawn call's id in the word. Call ids never reach it.
const WITHDRAWN: u64 = 1 << 63;

/// Whether `id` may be a call's id: below [`WITHDRAWN`], so that the word can tell a claim from a
/// withdrawal. (A client starts at 1 and would need centuries of calls to get there; a request
/// with a larger id is a protocol violation.)
pub(crate) fn is_call_id(id: u64) -> bool {
    id < WITHDRAWN
}

/// What the worker's claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The call is the worker's: run it.
    Run,
    /// The caller withdrew it: skip it.
    Withdrawn,
    /// The word holds something the protocol never writes (the client broke it).
    Broken(u64),
}

/// The worker's claim on call `call`, whose request it holds whole; `last` is what it last left
/// in the word (updated).
pub(crate) fn claim(word: &AtomicU64, last: &mut u64, call: u64) -> Claim {
    // SYNC POINT: AcqRel on success, pairs with the caller's compare-and-swap in `withdraw`: one
    // total order on the word decides which of the two happened first.
    match word.compare_exchange(*last, call, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            *last = call;
            Claim::Run
        }
        Err(found) if found == call | WITHDRAWN => {
            *last = found;
            Claim::Withdrawn
        }
        // A later call's withdrawal (after a stream dropped before we took its request): the
        // caller has left the connection. `last` stays, so that the later call's claim finds
        // its own withdrawal.
        Err(found) if found & WITHDRAWN != 0 && found & !WITHDRAWN > call => Claim::Withdrawn,
        Err(found) => Claim::Broken(found),
    }
}

/// How often a caller retries its withdrawal when the word changes under it (the worker claims
/// at most once meanwhile: more changes are a server scribbling on the word).
const WITHDRAW_TRIES: usize = 3;

/// The caller's withdrawal of call `call`: `true` if it succeeded (the call never runs), `false`
/// if the worker had claimed it or the word holds anything else (it may have run). `kept`: an
/// earlier call this caller withdrew while keeping the connection (0 for none), whose
/// withdrawal the word may still hold.
pub(crate) fn withdraw(word: &AtomicU64, call: u64, kept: u64) -> bool {
    let mut seen = word.load(Ordering::Acquire);
    for _ in 0..WITHDRAW_TRIES {
        // An earlier claim (or none), or our own earlier withdrawal: the call is not the
        // worker's yet. Anything else (this call's claim, a later id, a withdrawal we did not
        // make) leaves it to the worker.
        let ours = kept != 0 && kept < call && seen == kept | WITHDRAWN;
        if seen >= call && !ours {
            return false;
        }
        // SYNC POINT: AcqRel, pairs with the worker's compare-and-swap in `claim`.
        match word.compare_exchange(seen, call | WITHDRAWN, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(now) => seen = now,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn whoever_swaps_first_settles_the_call() {
        let word = AtomicU64::new(0);
        let mut last = 0;
        assert_eq!(claim(&word, &mut last, 1), Claim::Run);
        assert_eq!(claim(&word, &mut last, 2), Claim::Run);
        // The caller gives up on call 2 after the worker claimed it: it may have run.
        assert!(!withdraw(&word, 2, 0));
        // It gives up on call 3 before: withdrawn, and the worker skips it.
        assert!(withdraw(&word, 3, 0));
        assert_eq!(claim(&word, &mut last, 3), Claim::Withdrawn);
        // A withdrawn word is settled: withdrawing again does not pretend to succeed.
        assert!(!withdraw(&word, 3, 0));
        assert!(!withdraw(&word, 3, 3));
    }

    #[test]
    fn a_client_scribbling_on_the_word_only_breaks_its_own_connection() {
        // A later claim, an earlier call's withdrawal (the worker claimed past it), a withdrawal
        // of call 0 (no call has that id).
        for scribbled in [5, 2 | WITHDRAWN, 1 | WITHDRAWN, WITHDRAWN] {
            let mut last = 2;
            let word = AtomicU64::new(scribbled);
            assert_eq!(claim(&word, &mut last, 3), Claim::Broken(scribbled));
            assert_eq!(last, 2);
        }
    }

    /// A stream dropped before the worker took its request (call 3) leaves it in the ring; the
    /// next call (4) times out and is withdrawn. The worker claiming 3 meets 4's withdrawal: the
    /// caller left, both are skipped, and the connection is not taken for corrupt.
    #[test]
    fn a_later_calls_withdrawal_skips_the_earlier_request_too() {
        let word = AtomicU64::new(0);
        let mut last = 0;
        for call in 1..=2 {
            assert_eq!(claim(&word, &mut last, call), Claim::Run);
        }
        assert!(withdraw(&word, 4, 0));
        assert_eq!(claim(&word, &mut last, 3), Claim::Withdrawn);
        assert_eq!(last, 2, "the later call's withdrawal is still to be met");
        assert_eq!(claim(&word, &mut last, 4), Claim::Withdrawn);
        // Withdrawals as far ahead as ids go are still withdrawals.
        let word = AtomicU64::new(u64::MAX);
        assert_eq!(claim(&word, &mut 0, 1), Claim::Withdrawn);
    }

    /// A connection kept after the withdrawal of call 3 (which carried no deadline): the caller
    /// may withdraw call 4 before or after the worker met the first withdrawal; either way the
    /// worker skips both and claims call 5.
    #[test]
    fn a_connection_kept_after_a_withdrawal_goes_on() {
        for met_first in [false, true] {
            let word = AtomicU64::new(0);
            let mut last = 0;
            for call in 1..=2 {
                assert_eq!(claim(&word, &mut last, call), Claim::Run);
            }
            assert!(withdraw(&word, 3, 0));
            if met_first {
                assert_eq!(claim(&word, &mut last, 3), Claim::Withdrawn);
            }
            assert!(withdraw(&word, 4, 3), "met first: {met_first}");
            if !met_first {
                assert_eq!(claim(&word, &mut last, 3), Claim::Withdrawn);
            }
            assert_eq!(claim(&word, &mut last, 4), Claim::Withdrawn);
            assert_eq!(claim(&word, &mut last, 5), Claim::Run);
            // Claimed: neither the kept withdrawal nor any other makes call 5 withdrawable.
            assert!(!withdraw(&word, 5, 4));
        }
    }

    #[test]
    fn call_ids_stay_below_the_withdrawn_bit() {
        assert!(is_call_id(1) && is_call_id(WITHDRAWN - 1));
        assert!(!is_call_id(WITHDRAWN) && !is_call_id(u64::MAX));
    }

    #[test]
    fn racing_threads_never_both_win() {
        for call in 1..2000u64 {
            let word = AtomicU64::new(call - 1);
            let barrier = std::sync::Barrier::new(2);
            let (claimed, withdrawn) = std::thread::scope(|s| {
                let worker = s.spawn(|| {
                    barrier.wait();
                    claim(&word, &mut (call - 1), call)
                });
                barrier.wait();
                let withdrawn = withdraw(&word, call, 0);
                (worker.join().unwrap(), withdrawn)
            });
            assert_eq!(claimed == Claim::Run, !withdrawn, "call {call}");
        }
    }

    #[test]
    fn a_server_scribbling_on_the_word_makes_its_callers_cautious() {
        for scribbled in [7, 8, 7 | WITHDRAWN, u64::MAX] {
            assert!(
                !withdraw(&AtomicU64::new(scribbled), 7, 0),
                "{scribbled:#x}"
            );
            // Nor does a withdrawal we did not make pass for ours.
            assert!(
                !withdraw(&AtomicU64::new(scribbled), 7, 6),
                "{scribbled:#x}"
            );
        }
    }

    proptest! {
        /// Whatever the interleaving of one claim and one withdrawal of the same call, exactly
        /// one of them wins, and the worker never runs a call whose withdrawal succeeded.
        #[test]
        fn exactly_one_side_wins(call in 1u64..1 << 40, earlier in 0u64..1 << 40, claim_first: bool) {
            let earlier = earlier % call;
            let word = AtomicU64::new(earlier);
            let mut last = earlier;
            let (claimed, withdrawn) = if claim_first {
                let c = claim(&word, &mut last, call);
                (c, withdraw(&word, call, 0))
            } else {
                let w = withdraw(&word, call, 0);
                (claim(&word, &mut last, call), w)
            };
            prop_assert_eq!(claimed == Claim::Run, !withdrawn);
            prop_assert_eq!(claimed == Claim::Withdrawn, withdrawn);
        }
    }
}
