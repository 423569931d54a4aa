//! Model checking of memlink's lock-free protocols with `loom` (issue 9, part 4): threads stand in
//! for the processes, and loom runs every interleaving of them (up to a preemption bound) under
//! the C++/Rust memory model, reporting a data race on the shared bytes, a failed assertion, or a
//! deadlock (all threads asleep: a lost wake-up).
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=5 \
//!     cargo test -p memlink --test loom --release -- --test-threads=1 --nocapture
//! ```
//!
//! prints, per model, the interleavings explored and the time taken (with a bound of 5, about
//! 150,000 for the holds model and 730,000 for the flow-control model: a minute in all).
//!
//! (Without `--cfg loom` this file is empty. `.ci/run` runs it, in a target directory of its own.)
//!
//! # Why models, and how to check them against the code
//!
//! The real code forms its atomics from raw pointers into `mmap`ed memory
//! (`platform::mapping::Mapping::atomic_u64` and friends), which loom cannot instrument. So each
//! protocol is written out again here with loom's atomics, one line per shared-memory access of
//! the real code, with the same orderings and fences, in the same order. Every model function
//! names the real function it mirrors (file and function); a change to an ordering or fence
//! there must be made here too. What the models leave out, and why it does not matter to the
//! property checked, is said where it is left out. Plain (non-atomic) bytes the real code copies
//! with `memcpy` (ring payloads, sample slots) are loom `UnsafeCell`s here, so that loom reports
//! any access to them not ordered by the protocol as a data race. A ring record's fields, which
//! the real code stores and loads as relaxed atomic words, share the payload's cell: a stricter
//! check (a relaxed atomic could not race), and the same ordering argument.
//!
//! # The models
//!
//! - [`ring_transfers_records_in_order`]: the ring's index/stamp protocol
//!   (`memory/ring.rs`): a producer publishes records by their stamps, the consumer finds them
//!   by the stamp it expects and releases their space through `head`; with two slots and three
//!   records every slot is reused, and stale stamps of the previous lap must not pass.
//! - [`parking_never_loses_a_wake_up`]: the park-flag / wake-up handshake (`link/wake.rs`,
//!   `link/mod.rs` `park_until_or_bell`) on top of the ring: a consumer that parks while the ring
//!   is empty, a producer that parks while it is full, each waking the other with `nudge`.
//!   Dekker's store → SeqCst fence → load on both sides; a lost wake-up is a deadlock. The real
//!   code's barriers are asymmetric (`platform/barrier.rs`): `nudge`'s is a compiler fence in a
//!   process registered for `membarrier`, `park_begin`'s a fence plus
//!   `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`, which executes a full barrier on every CPU
//!   running the waker before it returns. loom has no such barrier; the pair gives the same
//!   guarantee as a SeqCst fence on each side (the waker's load either follows the barrier the
//!   membarrier put on its CPU, or its earlier store was drained by it), so each is modelled as one.
//! - The same with the protocol broken on purpose, each a test that runs the broken model in a
//!   child process and passes only if loom fails it, showing the models catch the bugs: the SeqCst fence dropped from `park_begin`
//!   ([`lost_wake_up_without_the_fence_in_park_begin`]) or from `nudge`
//!   ([`lost_wake_up_without_the_fence_in_nudge`]), and the lost wake-up memlink really had
//!   (fixed in 43fb658): a producer waiting for "the consumer moved since my push failed" instead
//!   of "there is room" ([`lost_wake_up_when_waiting_for_the_consumer_to_move`]).
//! - [`a_held_slot_is_never_reused`]: publish/subscribe's hold protocol
//!   (`memory/broadcast.rs`, `pubsub/publisher.rs`, `pubsub/subscriber.rs`): a subscriber
//!   that confirmed a sample reads its slot while the publisher overwrites the entry and looks for
//!   a slot to reuse; the slot must not be written until the hold is released. Broken variants:
//!   no fence in `still_describes` or in `Holds::start_scan`
//!   ([`held_slot_reused_without_the_fence_in_still_describes`],
//!   [`held_slot_reused_without_the_fence_in_start_scan`]).
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

/// Runs `model` under loom, bounding preemptions to `LOOM_MAX_PREEMPTIONS` (4 if unset: a few
/// seconds for all models; CI uses 5, about a minute; loom's own default is unbounded, which
/// these models do not finish), and reports how many interleavings it explored.
fn check(name: &str, model: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(4);
    }
    let bound = builder.preemption_bound;
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = runs.clone();
    let started = std::time::Instant::now();
    builder.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        model();
    });
    eprintln!(
        "loom: {name}: {} interleavings in {:.1?} (preemption bound {bound:?})",
        runs.load(std::sync::atomic::Ordering::Relaxed),
        started.elapsed()
    );
}

/// Set in the child process that runs a broken model (see [`fails_in_a_child`]).
const BROKEN_MODEL: &str = "MEMLINK_LOOM_BROKEN_MODEL";

/// For the broken models: runs test `name` of this binary again in a child process, in which the
/// test runs the model itself (`run_broken` is true there), and checks that the child failed
/// with `expected` in its output. A child because loom, having found a deadlock, panics from
/// inside its scheduler and then again in destructors while unwinding, which aborts the process:
/// `#[should_panic]` cannot catch that.
fn fails_in_a_child(name: &str, expected: &str) -> bool {
    if std::env::var_os(BROKEN_MODEL).is_some() {
        return true;
    }
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(BROKEN_MODEL, "1")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
    assert!(
        !child.status.success(),
        "the broken model {name} passed:\n{output}"
    );
    assert!(
        output.contains(expected),
        "the broken model {name} failed, but not with {expected:?}:\n{output}"
    );
    let found = output
        .lines()
        .find(|line| line.contains(expected))
        .unwrap_or_default();
    eprintln!("loom: {name}: caught as expected: {found}");
    false
}

// --- the ring: memory/ring.rs ------------------------------------------------------------------

/// A ring of `N` records of one slot each. The real ring holds variable-size records at byte
/// positions (`index % capacity`); here every record takes one slot and positions count records,
/// which keeps the orderings and changes only the arithmetic (the arithmetic is what the fuzzer
/// and the ring's property tests check). The stamp is `position + 1`: the real one is also XORed
/// with the ring's key (`ring::stamp`), which changes no ordering.
struct Ring<const N: usize> {
    /// `head`, the consumer's position, on its own line of the control block (`HEAD_AT`).
    head: AtomicU64,
    /// Each record's stamp word (`STAMP_AT`), written last, with Release.
    stamps: [AtomicU64; N],
    /// Each record's fields (relaxed atomic words in the real code) and payload (`memcpy`).
    bytes: [UnsafeCell<u64>; N],
}

impl<const N: usize> Ring<N> {
    fn new() -> Self {
        Ring {
            head: AtomicU64::new(0),
            stamps: std::array::from_fn(|_| AtomicU64::new(0)),
            bytes: std::array::from_fn(|_| UnsafeCell::new(0)),
        }
    }
}

/// Mirrors `ring::Producer` (`tail`, `head_seen`: private to the producer).
struct Producer<const N: usize> {
    ring: Arc<Ring<N>>,
    tail: u64,
    head_seen: u64,
}

impl<const N: usize> Producer<N> {
    /// `Producer::consumer_position`: the Acquire load of `head` (SYNC POINT with the Release
    /// store in `Consumer::advance`).
    fn consumer_position(&mut self) -> u64 {
        let head = self.ring.head.load(Ordering::Acquire);
        assert!(head <= self.tail && self.tail - head <= N as u64);
        self.head_seen = head;
        head
    }

    /// `Producer::has_room_for`: the last position seen first, the shared one only if that
    /// leaves too little room.
    fn has_room(&mut self) -> bool {
        let free = |head: u64, tail: u64| N as u64 - (tail - head);
        free(self.head_seen, self.tail) >= 1 || free(self.consumer_position(), self.tail) >= 1
    }

    /// `Producer::try_push` and `Producer::write_record`: room check, fields (relaxed stores)
    /// and payload (`copy_in`), then the stamp with Release (SYNC POINT with the Acquire stamp
    /// load in `Consumer::published`, `Consumer::peek` and `Consumer::look_take_whole`).
    fn try_push(&mut self, value: u64) -> bool {
        if !self.has_room() {
            return false;
        }
        let at = (self.tail % N as u64) as usize;
        // SAFETY: the model's own cell; loom reports any access that races this write.
        self.ring.bytes[at].with_mut(|bytes| unsafe { *bytes = value });
        self.ring.stamps[at].store(self.tail + 1, Ordering::Release);
        self.tail += 1;
        true
    }
}

/// Mirrors `ring::Consumer` (`head`: private to the consumer, published after each record).
struct Consumer<const N: usize> {
    ring: Arc<Ring<N>>,
    head: u64,
}

impl<const N: usize> Consumer<N> {
    /// `Consumer::published` (and `has_data`): the Acquire load of the stamp at `head`, compared
    /// with the stamp expected there (a stale stamp of an earlier lap does not match).
    fn published(&self) -> bool {
        let at = (self.head % N as u64) as usize;
        self.ring.stamps[at].load(Ordering::Acquire) == self.head + 1
    }

    /// `Consumer::peek` + `Consumer::take` (or `Consumer::take_whole`) + `Consumer::advance`:
    /// the record's header words and bytes (one cell here), then `head` with Release (SYNC POINT
    /// with the Acquire load in `Producer::consumer_position`).
    fn take(&mut self) -> Option<u64> {
        if !self.published() {
            return None;
        }
        let at = (self.head % N as u64) as usize;
        // SAFETY: the model's own cell; loom reports any access that races this read.
        let value = self.ring.bytes[at].with(|bytes| unsafe { *bytes });
        self.head += 1;
        self.ring.head.store(self.head, Ordering::Release);
        Some(value)
    }
}

fn ring<const N: usize>() -> (Producer<N>, Consumer<N>) {
    let ring = Arc::new(Ring::new());
    (
        Producer {
            ring: ring.clone(),
            tail: 0,
            head_seen: 0,
        },
        Consumer { ring, head: 0 },
    )
}

/// The ring alone, both sides spinning (the spin and yield phases of `wake::Backoff`): three
/// records through two slots, so that both slots are reused and the consumer meets the stamps
/// of the previous lap. Every record arrives once, in order, with its bytes, and no slot is
/// read while it is written or written while it is read.
#[test]
fn ring_transfers_records_in_order() {
    check("ring_transfers_records_in_order", || {
        let (mut producer, mut consumer) = ring::<2>();
        let writer = thread::spawn(move || {
            for value in [10, 11, 12] {
                while !producer.try_push(value) {
                    thread::yield_now();
                }
            }
        });
        for expected in [10, 11, 12] {
            let value = loop {
                match consumer.take() {
                    Some(value) => break value,
                    None => thread::yield_now(),
                }
            };
            assert_eq!(value, expected);
        }
        writer.join().unwrap();
    });
}

// --- parking and wake-ups: link/wake.rs, link/mod.rs, platform/notify.rs ------------------------

/// A wake pipe (`platform::notify`): `wake` writes one byte without blocking, the parked side
/// sleeps in `poll` until a byte is there and later drains them all. The real `poll` also wakes
/// after `PARK_RECHECK` (100 ms) on its own, which bounds what a lost wake-up costs; the model
/// has no timeout, so that a lost wake-up is a deadlock loom reports instead of a delay.
struct Pipe {
    bytes: Mutex<usize>,
    readable: Condvar,
}

impl Pipe {
    fn new() -> Self {
        Pipe {
            bytes: Mutex::new(0),
            readable: Condvar::new(),
        }
    }

    /// `notify::wake`.
    fn wake(&self) {
        *self.bytes.lock().unwrap() += 1;
        self.readable.notify_one();
    }

    /// `notify::wait_wake_hangup_or_bell` without its timeout.
    fn wait(&self) {
        let mut bytes = self.bytes.lock().unwrap();
        while *bytes == 0 {
            bytes = self.readable.wait(bytes).unwrap();
        }
    }

    /// `notify::drain_wakes`.
    fn drain(&self) {
        *self.bytes.lock().unwrap() = 0;
    }
}

/// Which part of the protocol a model leaves out, to show that the model catches the bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    /// `park_begin` without its SeqCst fence.
    NoFenceInParkBegin,
    /// `nudge` without its SeqCst fence.
    NoFenceInNudge,
    /// The lost wake-up fixed in 43fb658: a producer that found no room waits for the consumer's
    /// position to differ from the one it read after the failure, not for room.
    WaitForMoveNotRoom,
    /// `broadcast::still_describes` without its SeqCst fence.
    NoFenceInStillDescribes,
    /// `broadcast::Holds::start_scan` without its SeqCst fence.
    NoFenceInStartScan,
}

/// One side's parked flag (`wake::Side::parked`: `client_parked`, `server_room_parked`, ...).
struct Parked(AtomicU32);

/// `wake::park_begin`: the flag with Relaxed, then a SeqCst fence (SYNC POINT with the fence in
/// `nudge`, Dekker).
fn park_begin(me: &Parked, bug: Bug) {
    me.0.store(1, Ordering::Relaxed);
    if bug != Bug::NoFenceInParkBegin {
        fence(Ordering::SeqCst);
    }
}

/// `wake::park_end`.
fn park_end(me: &Parked) {
    me.0.store(0, Ordering::Relaxed);
}

/// `wake::nudge`: a SeqCst fence (SYNC POINT with the fence in `park_begin`), then
/// `nudge_fenced`.
fn nudge(peer: &Parked, pipe: &Pipe, bug: Bug) {
    if bug != Bug::NoFenceInNudge {
        fence(Ordering::SeqCst);
    }
    nudge_fenced(peer, pipe);
}

/// `wake::nudge_fenced`: reads the peer's flag (Relaxed), and only if it is set clears it (a
/// Relaxed read-modify-write) and writes a wake-up. (The real one also checks for a full,
/// enlarged pipe: error handling, no ordering.)
///
/// The real code clears the flag with `swap(0)`; the model uses `compare_exchange(1, 0)`, which
/// gives the same answer and leaves the same value for the flag values the model uses (0 and 1),
/// minus the swap's redundant store of 0 when its load saw a stale 1 and the parking side's
/// `park_end` has already cleared the flag. loom 0.7 does not put that redundant store right
/// after the value it read in the flag's modification order (an atomic read-modify-write must:
/// nothing may come between), so it may order the parking side's next `park_begin` store before
/// it and then let the waker's next load, after both SeqCst fences, read the swap's 0: a lost
/// wake-up that no C++/Rust execution has. (Seen with a preemption bound of 4: consumer
/// `park_end` stores 0; producer loads a stale 1 and swaps 0 over 0; consumer `park_begin`
/// stores 1, fences, finds no record, sleeps; producer publishes, fences, loads the swap's 0.
/// Since the swap read the `park_end` store, which precedes the `park_begin` store, the swap's
/// store precedes it too, and the fences oblige the load to see the 1.)
fn nudge_fenced(peer: &Parked, pipe: &Pipe) {
    let asleep = peer.0.load(Ordering::Relaxed) != 0
        && peer
            .0
            .compare_exchange(1, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
    if asleep {
        pipe.wake();
    }
}

/// `link::park_until_or_bell` (hang-ups, goodbyes, bells and deadlines left out: they add ways to
/// wake, never a way to sleep): park, look once more, sleep until woken, unpark, drain, look
/// again.
fn park_until(me: &Parked, pipe: &Pipe, bug: Bug, mut ready: impl FnMut() -> bool) {
    loop {
        park_begin(me, bug);
        if ready() {
            park_end(me);
            return;
        }
        pipe.wait();
        park_end(me);
        pipe.drain();
    }
}

/// Both directions of one connection's flow control: the region's two parked flags (the
/// consumer waits for records in `client_parked`, say; the producer for room in
/// `server_room_parked`) and the two wake pipes.
struct Connection {
    consumer_parked: Parked,
    producer_parked: Parked,
    wake_consumer: Pipe,
    wake_producer: Pipe,
}

/// A producer sends three records through a one-slot ring and a consumer takes them, each
/// parking when it cannot go on, as the rpc and duplex sides do (`rpc/client.rs` `send`/`wait`,
/// `rpc/server.rs` `park`, `duplex/mod.rs` `send_until`/`wait_for_room`/`recv_until`): after a
/// push the producer nudges the consumer, after a take the consumer nudges the producer (as the
/// rpc server does after taking a request fragment, and the duplex receiver after a take), a
/// waiting producer sleeps on
/// `Producer::has_room_for`, a waiting consumer on `Consumer::has_data`. Finishing is the
/// property: a lost wake-up leaves both asleep, which loom reports as a deadlock.
fn flow_control(name: &str, bug: Bug) {
    check(name, move || {
        let (mut producer, mut consumer) = ring::<1>();
        let connection = Arc::new(Connection {
            consumer_parked: Parked(AtomicU32::new(0)),
            producer_parked: Parked(AtomicU32::new(0)),
            wake_consumer: Pipe::new(),
            wake_producer: Pipe::new(),
        });
        let c = connection.clone();
        let writer = thread::spawn(move || {
            for value in [10, 11, 12] {
                while !producer.try_push(value) {
                    if bug == Bug::WaitForMoveNotRoom {
                        // Before 43fb658: `let head = consumer_position(); wait(|| consumer_position() != head)`.
                        let blocked_at = producer.consumer_position();
                        park_until(&c.producer_parked, &c.wake_producer, bug, || {
                            producer.consumer_position() != blocked_at
                        });
                    } else {
                        park_until(&c.producer_parked, &c.wake_producer, bug, || {
                            producer.has_room()
                        });
                    }
                }
                nudge(&c.consumer_parked, &c.wake_consumer, bug);
            }
        });
        for expected in [10, 11, 12] {
            let value = loop {
                if let Some(value) = consumer.take() {
                    break value;
                }
                park_until(
                    &connection.consumer_parked,
                    &connection.wake_consumer,
                    bug,
                    || consumer.published(),
                );
            };
            assert_eq!(value, expected);
            nudge(&connection.producer_parked, &connection.wake_producer, bug);
        }
        writer.join().unwrap();
    });
}

#[test]
fn parking_never_loses_a_wake_up() {
    flow_control("parking_never_loses_a_wake_up", Bug::None);
}

/// The demonstration: without the fence in `park_begin`, the parking side's last look may miss
/// the record while the producer's look misses the flag; both sleep.
#[test]
fn lost_wake_up_without_the_fence_in_park_begin() {
    let name = "lost_wake_up_without_the_fence_in_park_begin";
    if fails_in_a_child(name, "deadlock") {
        flow_control(name, Bug::NoFenceInParkBegin);
    }
}

/// As above, with the fence missing on the waking side.
#[test]
fn lost_wake_up_without_the_fence_in_nudge() {
    let name = "lost_wake_up_without_the_fence_in_nudge";
    if fails_in_a_child(name, "deadlock") {
        flow_control(name, Bug::NoFenceInNudge);
    }
}

/// The lost wake-up fixed in 43fb658: the consumer frees the slot (and finds the producer not
/// parked yet) between the producer's failed push and its read of the consumer's position; the
/// producer then waits for a move that already happened.
#[test]
fn lost_wake_up_when_waiting_for_the_consumer_to_move() {
    let name = "lost_wake_up_when_waiting_for_the_consumer_to_move";
    if fails_in_a_child(name, "deadlock") {
        flow_control(name, Bug::WaitForMoveNotRoom);
    }
}

// --- publish/subscribe holds: memory/broadcast.rs ----------------------------------------------

/// An entry's stamp while the publisher rewrites it (`broadcast::BUSY`).
const BUSY: u64 = u64::MAX;

/// The shared state of a topic with one entry, two slots and one subscriber with one hold record.
/// The entry's location word holds only the slot (the real one also the length).
struct Topic {
    /// Entry 0: `stamp` and `location` (`broadcast::write_entry`).
    stamp: AtomicU64,
    location: AtomicU64,
    /// The sample slots, written through a `Loan` and read through a `Sample` (slices over the
    /// mapping: `pubsub/sample.rs`).
    slots: [UnsafeCell<u64>; 2],
    /// The subscriber's hold record (subscriber region, `broadcast::HOLDS`): slot + 1, 0 = none.
    hold: AtomicU32,
}

/// What `broadcast::read_entry` found.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Ready { slot: u32 },
    Pending,
    Overwritten,
}

/// `broadcast::write_entry`: a seqlock write. `BUSY` (Relaxed), a Release fence (SYNC POINT
/// with the Acquire fence in `read_entry`), the location (Relaxed), the stamp with Release (SYNC
/// POINT with the Acquire stamp load in `read_entry`; publishes the slot's bytes).
fn write_entry(topic: &Topic, seq: u64, slot: u32) {
    topic.stamp.store(BUSY, Ordering::Relaxed);
    fence(Ordering::Release);
    topic.location.store(u64::from(slot), Ordering::Relaxed);
    topic.stamp.store(seq + 1, Ordering::Release);
}

/// `broadcast::read_entry`: the stamp (Acquire), the location (Relaxed), an Acquire fence, the
/// stamp again (Relaxed), at most 16 times (the real one also validates the slot and length).
fn read_entry(topic: &Topic, seq: u64) -> Entry {
    for _ in 0..16 {
        let first = topic.stamp.load(Ordering::Acquire);
        if first == BUSY || first == 0 {
            return Entry::Pending;
        }
        let stamped = first - 1;
        if stamped < seq {
            return Entry::Pending;
        }
        if stamped > seq {
            return Entry::Overwritten;
        }
        let location = topic.location.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if topic.stamp.load(Ordering::Relaxed) != first {
            continue;
        }
        return Entry::Ready {
            slot: location as u32,
        };
    }
    Entry::Pending
}

/// `broadcast::hold`: the hold record with Release.
fn hold(topic: &Topic, slot: u32) {
    topic.hold.store(slot + 1, Ordering::Release);
}

/// `broadcast::still_describes`: a SeqCst fence (SYNC POINT with the fence in
/// `Holds::start_scan`, Dekker), then the stamp (Relaxed).
fn still_describes(topic: &Topic, seq: u64, bug: Bug) -> bool {
    if bug != Bug::NoFenceInStillDescribes {
        fence(Ordering::SeqCst);
    }
    topic.stamp.load(Ordering::Relaxed) == seq + 1
}

/// `broadcast::release`: the hold record cleared with Release (SYNC POINT with the Acquire load
/// in `Holds::add`: our reads of the slot happen before the publisher's next write to it).
fn release(topic: &Topic) {
    topic.hold.store(0, Ordering::Release);
}

/// `Holds::start_scan` (a SeqCst fence) and `Holds::add` (each hold record with Acquire):
/// whether `slot` is held.
fn scan_holds(topic: &Topic, slot: u32, bug: Bug) -> bool {
    if bug != Bug::NoFenceInStartScan {
        fence(Ordering::SeqCst);
    }
    topic.hold.load(Ordering::Acquire) == slot + 1
}

/// The publisher (`Publisher::take_slot`, `Publisher::commit`) publishes sample 0 in slot 0, then
/// sample 1 in slot 1 (the entry now describes sample 1, slot 0 goes to limbo), then wants a slot
/// for sample 2: it scans the holds and reuses slot 0 unless it is held (then, in the model, it
/// stops: the real pool has spare slots for every subscriber's holds). The subscriber
/// (`Subscriber::take_from`, `Sample`'s drop) reads entry 0; if it is ready it holds the slot,
/// checks the entry still describes sample 0, reads the slot and releases it, or lets go and
/// reads the entry again. A slot it confirmed must still hold sample 0's bytes when it reads it
/// (and loom reports any write to it that is not ordered after the read as a data race). Left
/// out: the `head` word (`broadcast::set_head`, read by a subscriber only to count what it
/// missed), wake-ups and the free list's bookkeeping, which touch no shared slot or entry.
fn holds_model(name: &str, bug: Bug) {
    check(name, move || {
        let topic = Arc::new(Topic {
            stamp: AtomicU64::new(0),
            location: AtomicU64::new(0),
            slots: [UnsafeCell::new(0), UnsafeCell::new(0)],
            hold: AtomicU32::new(0),
        });
        let t = topic.clone();
        let publisher = thread::spawn(move || {
            // SAFETY: the model's own cells; loom reports any access that races this one.
            let fill = |slot: usize, value: u64| t.slots[slot].with_mut(|s| unsafe { *s = value });
            fill(0, 100);
            write_entry(&t, 0, 0);
            fill(1, 101);
            write_entry(&t, 1, 1);
            if !scan_holds(&t, 0, bug) {
                fill(0, 102);
                write_entry(&t, 2, 0);
            }
        });
        loop {
            match read_entry(&topic, 0) {
                Entry::Pending => thread::yield_now(),
                Entry::Overwritten => break,
                Entry::Ready { slot } => {
                    hold(&topic, slot);
                    if !still_describes(&topic, 0, bug) {
                        release(&topic);
                        continue;
                    }
                    // SAFETY: the model's own cells; loom reports any access that races this one.
                    let value = topic.slots[slot as usize].with(|s| unsafe { *s });
                    assert_eq!(value, 100, "a confirmed sample changed under its reader");
                    release(&topic);
                    break;
                }
            }
        }
        publisher.join().unwrap();
    });
}

#[test]
fn a_held_slot_is_never_reused() {
    holds_model("a_held_slot_is_never_reused", Bug::None);
}

#[test]
fn held_slot_reused_without_the_fence_in_still_describes() {
    let name = "held_slot_reused_without_the_fence_in_still_describes";
    if fails_in_a_child(name, "Causality violation") {
        holds_model(name, Bug::NoFenceInStillDescribes);
    }
}

#[test]
fn held_slot_reused_without_the_fence_in_start_scan() {
    let name = "held_slot_reused_without_the_fence_in_start_scan";
    if fails_in_a_child(name, "Causality violation") {
        holds_model(name, Bug::NoFenceInStartScan);
    }
}

// --- the rpc client's connection slots: platform/exclusive.rs, rpc/client.rs --------------------

/// One connection slot (an `Exclusive<Option<Connection>>`) and the client's sleepers.
struct Slot {
    held: AtomicBool,
    /// The connection the holder uses: two holders at once are a data race on it.
    connection: UnsafeCell<u64>,
    /// `Client::waiting`, `wait_lock` and `connection_freed`.
    waiting: AtomicUsize,
    wait_lock: Mutex<()>,
    freed: Condvar,
}

/// `Exclusive::try_take`.
fn try_take(slot: &Slot) -> bool {
    slot.held
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
}

/// `Client::free_connection` with one slot, without its bounded nap (so that a lost wake-up is
/// a deadlock here).
fn take_slot(slot: &Slot) {
    loop {
        if try_take(slot) {
            return;
        }
        slot.waiting.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst); // barrier::heavy
        let lock = slot.wait_lock.lock().unwrap();
        let taken = try_take(slot);
        if !taken {
            drop(slot.freed.wait(lock).unwrap());
        } else {
            drop(lock);
        }
        slot.waiting.fetch_sub(1, Ordering::SeqCst);
        if taken {
            return;
        }
    }
}

/// `Held::drop`, then `WakeWaiter::drop`.
fn give_back(slot: &Slot, barrier: bool) {
    slot.held.store(false, Ordering::Release);
    if barrier {
        fence(Ordering::SeqCst); // barrier::light
    }
    if slot.waiting.load(Ordering::SeqCst) > 0 {
        let _lock = slot.wait_lock.lock().unwrap();
        slot.freed.notify_one();
    }
}

/// Three callers of a client with one connection, each making one call: two may sleep at once,
/// and each give-back wakes one of them.
fn slot_model(name: &str, barrier: bool) {
    check(name, move || {
        let slot = Arc::new(Slot {
            held: AtomicBool::new(false),
            connection: UnsafeCell::new(0),
            waiting: AtomicUsize::new(0),
            wait_lock: Mutex::new(()),
            freed: Condvar::new(),
        });
        let call = move |slot: &Slot| {
            take_slot(slot);
            // SAFETY: the model's own cell; loom reports any access that races this one.
            slot.connection.with_mut(|c| unsafe { *c += 1 });
            give_back(slot, barrier);
        };
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let other = slot.clone();
                thread::spawn(move || call(&other))
            })
            .collect();
        call(&slot);
        for caller in callers {
            caller.join().unwrap();
        }
        // SAFETY: the model's own cell, after every caller is done.
        assert_eq!(slot.connection.with(|c| unsafe { *c }), 3);
    });
}

#[test]
fn a_connection_slot_has_one_holder_and_no_lost_wake_up() {
    slot_model("a_connection_slot_has_one_holder_and_no_lost_wake_up", true);
}

/// Without the barrier between giving the slot back and looking at the sleepers, the giver's
/// look may miss a sleeper whose last look missed the slot given back: both miss, one sleeps
/// for ever.
#[test]
fn lost_slot_wake_up_without_the_barrier_after_giving_back() {
    let name = "lost_slot_wake_up_without_the_barrier_after_giving_back";
    if fails_in_a_child(name, "deadlock") {
        slot_model(name, false);
    }
}
