//! Streaming replies: one request answered by a stream of items, with backpressure and a clear end.
//!
//! # Where a stream handler runs, and why
//! A server worker drives many connections as non-blocking state machines; a stream handler is
//! user code that produces items at its own pace and must be able to *block* when the client
//! reads slowly (backpressure). It therefore cannot run on the worker. Each stream's handler runs
//! on a thread of its own (from a pool of handler threads: a thread whose stream ended waits a
//! while for the next stream, so a new thread is spawned only when none waits; at most
//! [`ServerOptions::max_streams`](super::ServerOptions::max_streams) at once and
//! [`max_streams_per_uid`](super::ServerOptions::max_streams_per_uid) per user, so that one
//! user's unread streams cannot take every slot; over a cap the client is told
//! [`Error::ServerFull`] and its connection stays usable).
//!
//! The handler hands items to the worker through a bounded queue per stream
//! ([`StreamState`], at most `stream_queue` items and `stream_queue_bytes` bytes, though an
//! empty queue always takes one item, however large). The handler copies an item into a buffer
//! with the queue's lock released (unless it is small: see [`COPY_UNDER_LOCK`]), and buffers are
//! freed with it released, so the worker never
//! waits on a handler's copy. The worker stays the only producer of the
//! connection's response ring: when it turns to a streaming connection it takes every queued
//! item at once, under one lock ([`StreamFeed`]), and copies them into the ring one by one in
//! fragments, under the same per-sweep budget as a reply; it takes the queue again once they
//! are all sent. So:
//! - (a) server memory per stream is bounded: the queue (a few MiB, or one larger item), what
//!   the worker took from it and has not sent yet (as much again), spare buffers for reuse
//!   (each at most 1 MiB, together at most the queue's byte budget), plus the ring, however
//!   long the stream is. When the client stops reading, the ring fills, the worker stops
//!   taking, the queue fills and the handler's `send` blocks ([`StreamSink::try_send`] returns
//!   [`Error::Full`]).
//! - (b) a slow reader blocks only its own handler thread; the worker never waits for it.
//! - (c) streams of different clients run on different threads and are interleaved by the worker
//!   sweep by sweep (16 KiB per connection per sweep), so none waits for another to finish.
//! - (d) plain calls take exactly the old path: a plain request's records carry no user flags, and
//!   the worker looks at the queue's lock only for connections in the streaming phase.
//!
//! The handler wakes a parked worker through the worker's doorbell, only if the worker said it
//! is parked (a flag set before its last look at the queues, Dekker-style through the queue's
//! lock). The worker wakes a handler blocked on a full queue through a condition variable, only
//! if the handler said it is waiting, when it takes the whole queue (so the handler refills it
//! in a batch while the worker sends the last one, rather than item by item).
//!
//! # Wire format
//! - The request is an ordinary request whose fragments all carry [`STREAM_REQUEST`].
//! - Each item is one message in the response ring, fragmented like a reply, every fragment
//!   carrying [`STREAM_ITEM`] and the call id.
//! - The end is an empty message with [`STREAM_END`]; a failure is an error report
//!   ([`ERROR_REPLY`]) instead, which also ends the stream.
//! - A client that drops the stream early writes an empty [`CANCEL`] message with the stream's
//!   call id into the request ring. The server discards what is queued and in flight (it may stop
//!   mid-item), the handler's next `send` reports [`Error::Cancelled`], and the connection takes
//!   the next request. The client skips whatever records of the cancelled call were already in
//!   its ring: records of a call id at or below the last cancelled one, and below the current
//!   call's, are skipped unread. Call ids increase, so no item of a cancelled or half-read stream
//!   can pass for another call's reply.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::handler::CallContext;
use super::protocol::{ERROR_REPLY, STREAM_END, STREAM_ITEM};
use crate::error::{Error, Result};
use crate::memory::ring::{FIRST, RecordHeader, USER_FLAGS};
use crate::platform::notify;

#[cfg(doc)]
use super::protocol::{CANCEL, STREAM_REQUEST};

/// Whatever answers stream requests. Implemented for every
/// `Fn(&[u8], &mut StreamSink) -> Result<()> + Send + Sync + 'static`.
///
/// The handler sends items with [`StreamSink::send`] and returns to end the stream. Returning
/// `Err(Error::Cancelled)` (what `send` reports once the client dropped the stream) ends it
/// quietly; any other error is reported to the client as [`Error::HandlerFailed`], and a panic as
/// [`Error::HandlerPanicked`], after the items already sent.
pub trait StreamHandler: Send + Sync + 'static {
    /// Produces the stream answering `request`.
    ///
    /// # Errors
    /// Whatever the handler wants the client to see as [`Error::HandlerFailed`].
    fn handle_stream(&self, request: &[u8], sink: &mut StreamSink) -> Result<()>;
}

impl<F> StreamHandler for F
where
    F: Fn(&[u8], &mut StreamSink) -> Result<()> + Send + Sync + 'static,
{
    fn handle_stream(&self, request: &[u8], sink: &mut StreamSink) -> Result<()> {
        self(request, sink)
    }
}

/// How a stream ended on the handler's side.
#[derive(Debug)]
pub(crate) enum End {
    Done,
    Panicked,
    Failed(String),
}

/// Emptied item buffers larger than this are freed rather than kept for reuse, so that a stream
/// that once sent a few huge items does not hold their memory for the rest of its life.
const MAX_SPARE: usize = 1 << 20;

/// Items at most this long are copied into the queue with its lock held (when a spare buffer
/// has room for them): a copy this short takes less time than locking again.
const COPY_UNDER_LOCK: usize = 1024;

/// What the worker takes next from a stream.
pub(crate) enum Next {
    /// An item (its bytes were swapped into the worker's buffer).
    Item,
    End(End),
    Nothing,
}

/// How a handler thread wakes the worker driving its connection.
#[derive(Debug, Clone)]
pub(crate) struct WorkerBell {
    pub(crate) doorbell: Arc<OwnedFd>,
    /// Set by the worker (SeqCst) before its last look at its connections when it parks.
    pub(crate) parked: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Vec<u8>>,
    /// Bytes of the items queued.
    bytes: usize,
    /// Emptied buffers the worker gives back, so a long stream allocates only a few.
    spare: Vec<Vec<u8>>,
    /// Capacity of the spare buffers, together at most the queue's byte budget.
    spare_bytes: usize,
    end: Option<End>,
    cancelled: bool,
    /// The handler is blocked waiting for room.
    waiting: bool,
}

/// One stream's queue between its handler thread and the worker.
#[derive(Debug)]
pub(crate) struct StreamState {
    queue: Mutex<Queue>,
    room: Condvar,
    bell: WorkerBell,
    capacity: usize,
    /// Most bytes queued, unless the queue holds a single item.
    max_bytes: usize,
    max_item: usize,
}

impl StreamState {
    pub(crate) fn new(
        bell: WorkerBell,
        capacity: usize,
        max_bytes: usize,
        max_item: usize,
    ) -> Self {
        StreamState {
            queue: Mutex::new(Queue::default()),
            room: Condvar::new(),
            bell,
            capacity: capacity.max(1),
            max_bytes,
            max_item,
        }
    }

    /// Whether an item of `len` bytes fits: always into an empty queue (so an item larger than
    /// the byte budget still goes through, alone), else within both the item and byte budgets.
    fn has_room(&self, queue: &Queue, len: usize) -> bool {
        queue.items.is_empty()
            || (queue.items.len() < self.capacity
                && queue.bytes.saturating_add(len) <= self.max_bytes)
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ring_worker(&self) {
        // SYNC POINT: SeqCst, after the queue's lock was released; pairs with the worker's
        // SeqCst store before it takes the same lock to look at the queue (see the module doc).
        if self.bell.parked.load(Ordering::SeqCst) {
            let _ = notify::ring(&self.bell.doorbell);
        }
    }

    /// Worker side: moves every queued item into `taken` (which must be empty), or takes the
    /// end once every item is out; gives `emptied` buffers (each small enough to keep: see
    /// [`StreamFeed::next`]) back for reuse as it goes, within the spares' budget. One lock
    /// for the whole queue: the worker's lock waits for its own stores to the ring before it,
    /// which the client is reading, so a lock per item cost the worker a cache-line round trip
    /// per item. A buffer not kept is freed after the lock is released, so the handler never
    /// waits for a large `free`.
    fn take_all(&self, taken: &mut VecDeque<Vec<u8>>, emptied: &mut Vec<Vec<u8>>) -> Next {
        debug_assert!(taken.is_empty());
        let mut queue = self.lock();
        while let Some(buffer) = emptied.pop() {
            let bytes = queue.spare_bytes.saturating_add(buffer.capacity());
            if queue.spare.len() >= self.capacity || bytes > self.max_bytes {
                emptied.push(buffer);
                break;
            }
            queue.spare_bytes = bytes;
            queue.spare.push(buffer);
        }
        if queue.items.is_empty() {
            let next = match queue.end.take() {
                Some(end) => Next::End(end),
                None => Next::Nothing,
            };
            drop(queue);
            emptied.clear();
            return next;
        }
        // The deque's own allocation goes back to the queue in exchange.
        std::mem::swap(taken, &mut queue.items);
        queue.bytes = 0;
        // The queue is empty now: a handler waiting for room refills it in a batch while we
        // send this one.
        let wake = std::mem::take(&mut queue.waiting);
        drop(queue);
        // Notified with the lock released: a handler woken while we still held it would find it
        // taken, and on a shared CPU go back to sleep on it at once (two more thread switches).
        // Nothing is lost: it set `waiting` under the lock and was then already waiting.
        if wake {
            self.room.notify_one();
        }
        emptied.clear();
        Next::Item
    }

    /// Worker side: whether [`StreamState::take_all`] would return something.
    fn has_next(&self) -> bool {
        let queue = self.lock();
        !queue.items.is_empty() || queue.end.is_some()
    }

    /// Worker side: the client cancelled, or the connection is going away.
    pub(crate) fn cancel(&self) {
        let mut queue = self.lock();
        queue.cancelled = true;
        let items = std::mem::take(&mut queue.items);
        let spare = std::mem::take(&mut queue.spare);
        queue.spare_bytes = 0;
        queue.bytes = 0;
        queue.waiting = false;
        self.room.notify_all();
        drop(queue);
        // Freed with the lock released.
        drop((items, spare));
    }

    /// Handler side: the handler returned (or panicked).
    pub(crate) fn finish(&self, end: End) {
        let mut queue = self.lock();
        if !queue.cancelled {
            queue.end = Some(end);
        }
        drop(queue);
        self.ring_worker();
    }
}

/// The worker's end of a stream: its state, and the items the worker took from the queue in
/// one go (see [`StreamState::take_all`]) and has not sent yet.
#[derive(Debug)]
pub(crate) struct StreamFeed {
    state: Arc<StreamState>,
    taken: VecDeque<Vec<u8>>,
    /// Buffers of items sent, given back to the queue at the next take.
    emptied: Vec<Vec<u8>>,
}

impl StreamFeed {
    pub(crate) fn new(state: Arc<StreamState>) -> Self {
        StreamFeed {
            state,
            taken: VecDeque::new(),
            emptied: Vec::new(),
        }
    }

    /// Swaps the next item into `item` (whose old buffer is kept for reuse), or takes the end
    /// once every item is out.
    pub(crate) fn next(&mut self, item: &mut Vec<u8>) -> Next {
        if self.taken.is_empty() {
            match self.state.take_all(&mut self.taken, &mut self.emptied) {
                Next::Item => {}
                other => return other,
            }
        }
        let Some(mut next) = self.taken.pop_front() else {
            return Next::Nothing;
        };
        std::mem::swap(item, &mut next);
        next.clear();
        // A buffer too large to keep is freed now, not held until the next take.
        if next.capacity() <= MAX_SPARE.min(self.state.max_bytes) {
            self.emptied.push(next);
        }
        Next::Item
    }

    /// Whether [`StreamFeed::next`] would return something.
    pub(crate) fn has_next(&self) -> bool {
        !self.taken.is_empty() || self.state.has_next()
    }

    /// The client cancelled, or the connection is going away: the handler's next send reports
    /// `Cancelled`. What was taken and not sent is freed with the feed.
    pub(crate) fn cancel(self) {
        self.state.cancel();
    }
}

/// Where a stream handler sends its items. Each item arrives at the client as one message, in
/// order.
#[derive(Debug)]
pub struct StreamSink {
    state: Arc<StreamState>,
    context: CallContext,
}

impl StreamSink {
    pub(crate) fn new(state: Arc<StreamState>) -> Self {
        StreamSink {
            state,
            context: CallContext::default(),
        }
    }

    pub(crate) fn with_context(mut self, context: CallContext) -> Self {
        self.context = context;
        self
    }

    /// Who asked for this stream, on which connection (a stream request carries no deadline).
    pub fn context(&self) -> &CallContext {
        &self.context
    }

    /// Sends one item, waiting while the stream's queue is full (the client reads slower than we
    /// produce: backpressure).
    ///
    /// # Errors
    /// [`Error::Cancelled`] once the client dropped the stream or went away: return from the
    /// handler. [`Error::MessageTooLarge`] if the item exceeds the server's maximum message size
    /// (nothing was sent; the stream goes on).
    pub fn send(&mut self, item: &[u8]) -> Result<()> {
        self.push(item, true)
    }

    /// Sends one item if the stream's queue has room.
    ///
    /// # Errors
    /// [`Error::Full`] if it has none (nothing was sent); otherwise as [`StreamSink::send`].
    pub fn try_send(&mut self, item: &[u8]) -> Result<()> {
        self.push(item, false)
    }

    /// Whether the client has dropped the stream (or gone away).
    pub fn is_cancelled(&self) -> bool {
        self.state.lock().cancelled
    }

    fn push(&mut self, item: &[u8], block: bool) -> Result<()> {
        let state = &*self.state;
        if item.len() > state.max_item {
            return Err(Error::MessageTooLarge {
                size: item.len(),
                max: state.max_item,
            });
        }
        let mut queue = state.lock();
        loop {
            if queue.cancelled {
                return Err(Error::Cancelled);
            }
            if state.has_room(&queue, item.len()) {
                let mut buffer = queue.spare.pop().unwrap_or_default();
                queue.spare_bytes = queue.spare_bytes.saturating_sub(buffer.capacity());
                if item.len() <= COPY_UNDER_LOCK && buffer.capacity() >= item.len() {
                    // Small, and no allocation needed: copied with the lock held, which is
                    // quicker than taking the lock a second time.
                    buffer.clear();
                    buffer.extend_from_slice(item);
                    queue.bytes += buffer.len();
                    queue.items.push_back(buffer);
                    drop(queue);
                    state.ring_worker();
                    return Ok(());
                }
                // Copied with the lock released, so the worker never waits for our copy: this
                // sink is the queue's only producer, and the worker only takes items out, so the
                // room found now is still there when we come back (unless the stream is
                // cancelled meanwhile).
                drop(queue);
                buffer.clear();
                buffer.extend_from_slice(item);
                let mut queue = state.lock();
                if queue.cancelled {
                    drop(queue);
                    drop(buffer);
                    return Err(Error::Cancelled);
                }
                queue.bytes += buffer.len();
                queue.items.push_back(buffer);
                drop(queue);
                state.ring_worker();
                return Ok(());
            }
            if !block {
                return Err(Error::Full);
            }
            queue.waiting = true;
            // Bounded, so that a lost notification costs a moment, not the stream.
            queue = state
                .room
                .wait_timeout(queue, Duration::from_millis(100))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// What a response record means to a client reading the stream of call `call`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A record of a cancelled earlier call: skip it unread.
    Stale,
    /// A fragment of this stream's next message; its kind is the message's user flags.
    Ours(u32),
}

/// Client side: judges a response record's header before anything of it is taken, for a reader
/// expecting call `call` (`stream`: as a stream, else as a plain reply), where calls up to
/// `cancelled_through` were cancelled, `in_progress` the user flags of the message being
/// reassembled, if any. Refuses unknown flags, other call ids, an end that is not empty, stream
/// records for a plain call and plain replies for a stream.
pub(crate) fn judge(
    header: &RecordHeader,
    call: u64,
    cancelled_through: u64,
    in_progress: Option<u32>,
    stream: bool,
) -> Result<Verdict, String> {
    let user = header.flags & USER_FLAGS;
    if in_progress.is_none() && header.call_id < call && header.call_id <= cancelled_through {
        return Ok(Verdict::Stale);
    }
    if header.call_id != call {
        return Err(format!(
            "a record of call {} where call {call} was expected",
            header.call_id
        ));
    }
    if let Some(kind) = in_progress {
        if user != kind {
            return Err("fragments of one message disagree on their flags".into());
        }
        return Ok(Verdict::Ours(user));
    }
    let known = match user {
        0 => !stream,
        ERROR_REPLY => true,
        STREAM_ITEM => stream,
        STREAM_END => stream && header.total == 0,
        _ => false,
    };
    if !known {
        return Err(format!(
            "response flags {:#x} (total {}) are not valid for a {}",
            header.flags,
            header.total,
            if stream { "stream" } else { "plain call" }
        ));
    }
    if header.flags & FIRST == 0 {
        return Err("a message does not start with a first fragment".into());
    }
    Ok(Verdict::Ours(user))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::ring::LAST;
    use proptest::prelude::*;

    fn h(flags: u32, call_id: u64, total: u64) -> RecordHeader {
        RecordHeader {
            len: total.min(16) as u32,
            flags,
            call_id,
            total,
            meta: 0,
        }
    }

    #[test]
    fn stream_records_are_judged() {
        let one = FIRST | LAST;
        assert_eq!(
            judge(&h(one | STREAM_ITEM, 5, 3), 5, 0, None, true),
            Ok(Verdict::Ours(STREAM_ITEM))
        );
        assert_eq!(
            judge(&h(one | STREAM_END, 5, 0), 5, 0, None, true),
            Ok(Verdict::Ours(STREAM_END))
        );
        assert!(
            judge(&h(one | STREAM_END, 5, 1), 5, 0, None, true).is_err(),
            "non-empty end"
        );
        assert!(
            judge(&h(one | STREAM_ITEM, 5, 3), 5, 0, None, false).is_err(),
            "item for a plain call"
        );
        assert!(
            judge(&h(one, 5, 3), 5, 0, None, true).is_err(),
            "plain reply for a stream"
        );
        assert!(
            judge(&h(one | STREAM_ITEM, 6, 3), 5, 0, None, true).is_err(),
            "another call's item"
        );
        assert!(
            judge(&h(one | STREAM_ITEM, 4, 3), 5, 3, None, true).is_err(),
            "an older call that was not cancelled"
        );
        assert_eq!(
            judge(&h(STREAM_ITEM, 4, 3), 5, 4, None, true),
            Ok(Verdict::Stale)
        );
        assert!(
            judge(&h(one | 0x800, 5, 0), 5, 0, None, true).is_err(),
            "unknown flag"
        );
        assert!(
            judge(&h(one | STREAM_ITEM | STREAM_END, 5, 0), 5, 0, None, true).is_err(),
            "item and end at once"
        );
        assert!(
            judge(&h(LAST | ERROR_REPLY, 5, 0), 5, 0, Some(STREAM_ITEM), true).is_err(),
            "flags change mid-message"
        );
        assert!(
            judge(&h(LAST | STREAM_ITEM, 5, 3), 5, 0, None, true).is_err(),
            "no first fragment"
        );
    }

    fn state_with(capacity: usize, max_bytes: usize, max_item: usize) -> Arc<StreamState> {
        let bell = WorkerBell {
            doorbell: Arc::new(notify::doorbell().expect("an eventfd")),
            parked: Arc::new(AtomicBool::new(true)),
        };
        Arc::new(StreamState::new(bell, capacity, max_bytes, max_item))
    }

    fn state(capacity: usize) -> Arc<StreamState> {
        state_with(capacity, usize::MAX, 100)
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_but_takes_one_large_item() {
        let state = state_with(8, 100, 1000);
        let mut feed = StreamFeed::new(state.clone());
        let mut sink = StreamSink::new(state.clone());
        sink.try_send(&[1; 60]).unwrap();
        sink.try_send(&[2; 40]).unwrap();
        assert!(
            matches!(sink.try_send(&[3; 1]), Err(Error::Full)),
            "over the byte budget though under the item count"
        );
        let mut item = Vec::new();
        // The worker takes the whole queue at once: room for a whole budget again, while what
        // it took is still to be sent.
        assert!(matches!(feed.next(&mut item), Next::Item));
        assert_eq!(item, [1; 60]);
        sink.try_send(&[4; 101]).unwrap();
        assert!(matches!(sink.try_send(&[5; 1]), Err(Error::Full)));
        assert!(matches!(feed.next(&mut item), Next::Item));
        assert_eq!(item, [2; 40]);
        assert!(matches!(feed.next(&mut item), Next::Item));
        assert_eq!(
            item.len(),
            101,
            "an empty queue takes one item larger than the budget"
        );
        sink.try_send(&[6; 60]).unwrap();
        sink.try_send(&[7; 40]).unwrap();
        assert!(matches!(sink.try_send(&[8; 1]), Err(Error::Full)));
        state.cancel();
        assert!(matches!(sink.try_send(&[9; 1]), Err(Error::Cancelled)));
        assert!(
            matches!(feed.next(&mut item), Next::Nothing),
            "a cancel empties the queue"
        );
    }

    #[test]
    fn the_queue_is_bounded_ordered_and_cancellable() {
        let state = state(2);
        let mut feed = StreamFeed::new(state.clone());
        let mut sink = StreamSink::new(state.clone());
        sink.send(b"one").unwrap();
        sink.try_send(b"two").unwrap();
        assert!(matches!(sink.try_send(b"three"), Err(Error::Full)));
        assert!(matches!(
            sink.send(&[0; 101]),
            Err(Error::MessageTooLarge {
                size: 101,
                max: 100
            })
        ));
        let mut item = Vec::new();
        assert!(matches!(feed.next(&mut item), Next::Item));
        assert_eq!(item, b"one");
        sink.send(b"three").unwrap();
        sink.send(b"four").unwrap();
        assert!(matches!(sink.try_send(b"five"), Err(Error::Full)));
        assert!(matches!(feed.next(&mut item), Next::Item));
        assert_eq!(item, b"two");
        assert!(feed.has_next());
        assert!(matches!(feed.next(&mut item), Next::Item));
        assert_eq!(item, b"three");
        assert!(
            feed.has_next(),
            "an item the worker took counts, though the queue is empty"
        );
        assert!(matches!(feed.next(&mut item), Next::Item));
        assert_eq!(item, b"four");
        assert!(matches!(feed.next(&mut item), Next::Nothing));
        assert!(!feed.has_next());
        state.finish(End::Done);
        assert!(feed.has_next());
        assert!(matches!(feed.next(&mut item), Next::End(End::Done)));
    }

    #[test]
    fn emptied_buffers_go_back_to_the_handler() {
        let state = state(4);
        let mut feed = StreamFeed::new(state.clone());
        let mut sink = StreamSink::new(state.clone());
        let mut item = Vec::new();
        for round in 0..3u8 {
            for n in 0..4 {
                sink.try_send(&[round * 4 + n; 10]).unwrap();
            }
            for n in 0..4 {
                assert!(matches!(feed.next(&mut item), Next::Item));
                assert_eq!(item, [round * 4 + n; 10]);
            }
        }
        // The next take gives the emptied buffers back (at most `capacity` of them).
        assert!(matches!(feed.next(&mut item), Next::Nothing));
        assert_eq!(state.lock().spare.len(), 4);
    }

    #[test]
    fn buffers_kept_for_reuse_stay_within_the_byte_budget() {
        let state = state_with(8, 100, 1000);
        let mut feed = StreamFeed::new(state.clone());
        let mut sink = StreamSink::new(state.clone());
        let mut item = Vec::new();
        sink.try_send(&[1; 500]).unwrap();
        assert!(matches!(feed.next(&mut item), Next::Item));
        for n in 2..6u8 {
            sink.try_send(&[n; 60]).unwrap();
            assert!(matches!(feed.next(&mut item), Next::Item));
            assert_eq!(item, [n; 60]);
            assert!(
                feed.emptied.iter().all(|b| b.capacity() <= 100),
                "a buffer larger than the budget is freed once sent, not held"
            );
        }
        // The next take gives the emptied buffers back, within the byte budget.
        assert!(matches!(feed.next(&mut item), Next::Nothing));
        let queue = state.lock();
        assert!(!queue.spare.is_empty());
        assert_eq!(
            queue.spare_bytes,
            queue.spare.iter().map(Vec::capacity).sum::<usize>()
        );
        assert!(queue.spare_bytes <= 100, "{} bytes kept", queue.spare_bytes);
    }

    #[test]
    fn a_blocked_send_is_released_by_room_or_by_cancel() {
        let state = state(1);
        let mut feed = StreamFeed::new(state.clone());
        let mut sink = StreamSink::new(state.clone());
        sink.send(b"a").unwrap();
        let blocked = std::thread::spawn(move || {
            let first = sink.send(b"b");
            let second = sink.send(b"c");
            // The queue holds "c" and nobody takes it: this one blocks until the cancel.
            let third = sink.send(b"d");
            (first, second, third, sink.is_cancelled())
        });
        let mut item = Vec::new();
        // Wait (bounded) for the first item to leave and the second to take its place.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut taken = Vec::new();
        while taken.len() < 2 && std::time::Instant::now() < deadline {
            if let Next::Item = feed.next(&mut item) {
                taken.push(item.clone());
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert_eq!(taken, [b"a".to_vec(), b"b".to_vec()]);
        std::thread::sleep(Duration::from_millis(20));
        feed.cancel();
        // What the worker sees of the stream afterwards.
        let mut feed = StreamFeed::new(state.clone());
        let (first, second, third, cancelled) = blocked.join().unwrap();
        assert!(first.is_ok() && second.is_ok());
        assert!(matches!(third, Err(Error::Cancelled)), "{third:?}");
        assert!(cancelled);
        assert!(matches!(feed.next(&mut item), Next::Nothing));
        state.finish(End::Done);
        assert!(
            matches!(feed.next(&mut item), Next::Nothing),
            "no end after a cancel"
        );
    }

    proptest! {
        #[test]
        fn judging_any_header_is_safe_and_strict(
            flags in any::<u32>(), id in 0u64..8, total in 0u64..64,
            call in 1u64..8, cancelled in 0u64..8, stream in any::<bool>(),
            progress in proptest::option::of(prop_oneof![Just(0u32), Just(STREAM_ITEM), Just(ERROR_REPLY)]),
        ) {
            let header = h(flags, id, total);
            match judge(&header, call, cancelled, progress, stream) {
                Ok(Verdict::Stale) => prop_assert!(id < call && id <= cancelled && progress.is_none()),
                Ok(Verdict::Ours(kind)) => {
                    prop_assert_eq!(id, call);
                    prop_assert_eq!(kind, flags & USER_FLAGS);
                    if progress.is_none() {
                        prop_assert!(flags & FIRST != 0);
                        prop_assert!(kind != STREAM_END || total == 0);
                        prop_assert!(stream || kind == 0 || kind == ERROR_REPLY);
                    }
                }
                Err(_) => {}
            }
        }
    }
}
