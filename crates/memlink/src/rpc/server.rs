//! The serving side: [`Server`], its acceptor and its workers.
//!
//! `serve` runs an *acceptor* on the calling thread and `workers` worker threads. The acceptor
//! answers handshakes on the abstract socket: it checks the peer's credentials against the
//! server's [`Permissions`], creates the connection's sealed region and doorbells, passes them to
//! the client and hands the connection to the least-loaded worker. Each worker drives all of its
//! connections as non-blocking state machines (receive fragments → run the handler → send
//! fragments), one request per connection per sweep so that no client can starve another, and
//! parks on one epoll set (its doorbell, the shutdown bell, every connection's socket) when idle.
//! A connection whose socket hangs up — the client exited or was killed — is freed at once; one
//! whose shared state breaks the protocol is told why and dropped; neither disturbs the others.

#[cfg(feature = "tokio")]
mod asynchronous;
#[cfg(feature = "tokio")]
pub use asynchronous::{AsyncCallHandler, AsyncHandler};

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustix::io::Errno;

use super::claim::{self, Claim};
use super::handler::{CallContext, CallHandler, HandlerError, Kind, Plain};
use super::histogram::{self, Histogram};
use super::protocol::{
    Admission, CANCEL, ERR_CALL_FAILED, ERR_DEADLINE_EXPIRED, ERR_HANDLER_FAILED,
    ERR_HANDLER_PANICKED, ERR_NO_STREAMS, ERR_REFUSED, ERR_REPLY_TOO_LARGE, ERR_TOO_MANY_STREAMS,
    ERR_UNDECODABLE, ERROR_REPLY, Goodbye, Hello, MAX_DEADLINE_NS, Purpose, RegionLayout,
    STREAM_END, STREAM_ITEM, STREAM_REQUEST, Stats, Welcome, error_text, socket_name,
};
use super::protocol::{ConnectionStats, HandlerLatency};
use super::stream::{End, Next, StreamFeed, StreamHandler, StreamSink, StreamState, WorkerBell};
use crate::error::{Error, Result};
use crate::link::admission::{self, Handshake, Handshakes, MAX_PENDING_HANDSHAKES};
use crate::link::fragment::{Reassembly, fragment_at};
use crate::link::wake::{self, Backoff, PARK_RECHECK, Patience, RPC_CLIENT, SERVER};
use crate::link::{self, Keep, Offered};
use crate::memory::name::validate_name;
use crate::memory::ring::{
    Consumer, FIRST, LAST, MAX_CAPACITY, MIN_CAPACITY, Producer, RingError, USER_FLAGS, Whole,
};
use crate::memory::segment::Permissions;
use crate::platform::mapping::Mapping;
use crate::platform::notify::{self, Poller, Ready};
use crate::platform::{clock, process, socket};

/// How long a connector may take to say hello before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// Most fragments and bytes a worker takes from (or gives to) one connection per sweep, so that
/// one connection's large message cannot hold the others up for its whole length.
const SWEEP_FRAGMENTS: usize = 16;
const SWEEP_BYTES: usize = 16 << 10;
/// Empty sweeps a worker makes before it starts its timed backoff.
pub(crate) const FIRST_LOOKS: u32 = 32;
/// A busy worker does its periodic chores (crowding, hang-ups, shutdown) once per this many sweeps.
const CHORE_EVERY: u32 = 32;
/// Most looks a sweep that answered the worker's only client makes for that client's next
/// request before it returns (see `Worker::sweep`), whether they find one or not: as many as
/// the first looks of an idle worker, so that lingering (each look serving at most a sweep's
/// budget) delays the chores, such as adopting new connections, by no more than about that.
const LINGER_LOOKS: u32 = FIRST_LOOKS;
const HANGUP_SWEEP: Duration = Duration::from_millis(50);
/// How often a worker recounts its active clients to decide whether it is crowded. Long enough
/// that a worker descheduled for a few scheduler ticks does not count its clients as gone (and
/// invite them all to spin at the worst moment); short enough to notice load changes quickly.
const CROWDING_PERIOD: Duration = Duration::from_millis(10);
pub(crate) const PATIENCE: Patience = Patience {
    spin: Duration::from_micros(50),
    yield_for: Duration::from_micros(100),
};
/// A worker times at most one call's handler per this period (see `Stats::handler_latency`):
/// two clock reads cost about a quarter of a small call, so a busy worker times a handful of
/// calls in a million, and one whose calls come further apart than this times each.
const TIME_ONE_CALL_PER: Duration = Duration::from_millis(1);
/// Buffers grown past this by a large message are released once it is answered.
const KEEP_BUFFER: usize = 8 << 20;

/// Whatever answers requests. Implemented for every `Fn(&[u8], &mut Vec<u8>) + Send + Sync`.
///
/// `reply` arrives empty; whatever the handler leaves in it is sent back. A handler that panics
/// fails only that call (the client gets [`Error::HandlerPanicked`]); the server keeps serving.
/// A handler that needs to know who calls, to fail with an error of its own or to refuse a
/// call is a [`CallHandler`], served by [`Server::serve_calls`].
pub trait Handler: Send + Sync {
    /// Answers one request.
    fn handle(&self, request: &[u8], reply: &mut Vec<u8>);
}

impl<F: Fn(&[u8], &mut Vec<u8>) + Send + Sync> Handler for F {
    fn handle(&self, request: &[u8], reply: &mut Vec<u8>) {
        self(request, reply)
    }
}

/// How to serve. `ServerOptions::new()` gives the defaults.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    max_clients: usize,
    max_clients_per_uid: usize,
    max_pending_per_uid: usize,
    max_message_size: usize,
    workers: usize,
    permissions: Permissions,
    ring_capacity: usize,
    shutdown_grace: Duration,
    max_streams: usize,
    max_streams_per_uid: usize,
    stream_queue: usize,
    stream_queue_bytes: usize,
    exit_when_idle: Option<Duration>,
    /// Fault injection: workers fail once the server has answered this many calls.
    fail_workers_after: Option<u64>,
    /// Longest a parked worker sleeps before looking again without a wake-up.
    park_recheck: Duration,
    /// Fault injection: how long a stream's handler thread waits between giving its slot back
    /// and ending the stream.
    stream_end_pause: Duration,
    /// Fault injection: workers go on streaming after a cancel (they never look at the request
    /// ring while a stream runs), as a hostile server may.
    ignore_stream_cancels: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_clients: 1024,
            max_clients_per_uid: 256,
            max_pending_per_uid: 64,
            max_message_size: 64 << 20,
            workers: 1,
            permissions: Permissions::OwnerOnly,
            ring_capacity: 256 << 10,
            shutdown_grace: Duration::from_secs(5),
            max_streams: 64,
            max_streams_per_uid: 16,
            stream_queue: 1024,
            stream_queue_bytes: 2 << 20,
            exit_when_idle: None,
            fail_workers_after: None,
            park_recheck: PARK_RECHECK,
            stream_end_pause: Duration::ZERO,
            ignore_stream_cancels: false,
        }
    }
}

impl ServerOptions {
    /// Defaults: 1,024 connections of which at most 256 per user, 64 handshakes in progress per
    /// user, 64 MiB messages, 1 worker, owner-only, 256 KiB rings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Most connections at once (each client thread with a call in flight uses one).
    pub fn max_clients(mut self, n: usize) -> Self {
        self.max_clients = n.clamp(1, u32::MAX as usize);
        self
    }

    /// Most connections one user (uid) may hold at once, so that one user cannot take every
    /// connection from the others. Default 256.
    pub fn max_clients_per_uid(mut self, n: usize) -> Self {
        self.max_clients_per_uid = n.clamp(1, u32::MAX as usize);
        self
    }

    /// Most handshakes one user may have in progress (connected, not yet said hello). A user
    /// over it loses its oldest half-open connection, so a flood of silent connections only
    /// ever pushes out the flooder's own. Default 64.
    pub fn max_pending_per_uid(mut self, n: usize) -> Self {
        self.max_pending_per_uid = n.max(1);
        self
    }

    /// Largest request or reply, in bytes. Independent of the ring size: larger messages are
    /// streamed through the ring in fragments.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Worker threads running the handler (at least 1).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Which users may connect: [`Permissions::OwnerOnly`] (default: our user and root),
    /// [`Permissions::Group`] (also our group), [`Permissions::Everyone`].
    pub fn permissions(mut self, permissions: Permissions) -> Self {
        self.permissions = permissions;
        self
    }

    /// Bytes of each ring (one per direction per connection); rounded up to a power of two
    /// between 4 KiB and 1 GiB.
    pub fn ring_capacity(mut self, bytes: usize) -> Self {
        self.ring_capacity = bytes.clamp(MIN_CAPACITY, MAX_CAPACITY).next_power_of_two();
        self
    }

    /// How long shutdown waits for calls in flight before dropping them. Streams are not waited
    /// for: they are cancelled at once (their handlers' `send` reports [`Error::Cancelled`]) and
    /// their readers get [`Error::Disconnected`] after the items already in their ring.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Most streams served at once (each runs its handler on a thread of its own). A stream
    /// request over it fails with [`Error::ServerFull`]. Default 64.
    pub fn max_streams(mut self, n: usize) -> Self {
        self.max_streams = n.max(1);
        self
    }

    /// Most streams one user (uid) may have served at once, so that one user's streams (read or
    /// not) cannot take every stream handler slot from the others. Default 16.
    pub fn max_streams_per_uid(mut self, n: usize) -> Self {
        self.max_streams_per_uid = n.max(1);
        self
    }

    /// Items a stream handler may have queued ahead of the connection's ring before its `send`
    /// blocks (at least 1, default 1,024). See also [`ServerOptions::stream_queue_bytes`], which
    /// bounds the queue's memory whatever the item count. The worker takes the whole queue at
    /// once and sends it while the handler refills it, so a handler and the worker hand over the
    /// CPU (or the queue's lock) about once per queue, and a short queue makes small items slow:
    /// with 8, a stream of 64-byte items ran at about 1 M items/s here, with 1,024 at 17 M.
    pub fn stream_queue(mut self, items: usize) -> Self {
        self.stream_queue = items.max(1);
        self
    }

    /// Bytes a stream handler may have queued ahead of the connection's ring before its `send`
    /// blocks (default 2 MiB). An item is always admitted into an empty queue, so items larger
    /// than this still go through, one at a time. The worker takes the whole queue at once, so
    /// a stream holds at most about twice this much in items (or two items, if larger: the
    /// queue and what the worker took from it and has not sent yet), spare buffers kept for
    /// reuse up to as much again, and its ring of server memory, however long it is.
    pub fn stream_queue_bytes(mut self, bytes: usize) -> Self {
        self.stream_queue_bytes = bytes;
        self
    }

    /// Makes [`Server::serve`] return `Ok(())` on its own once no client has been connected for
    /// `idle` (counting from the start of `serve`, and again from whenever the last client
    /// leaves), as after a shutdown. For servers started on demand
    /// ([`ClientOptions::start_server`]): the next client that finds no server starts a fresh
    /// one, so servers nobody uses do not pile up. Off by default.
    ///
    /// A [`Client`] counts as connected for as long as it exists (it keeps its connection
    /// between calls), so a server only goes once its clients are dropped or their processes
    /// exit. Statistics queries (`memlink ls`) do not keep it running. The name is freed the
    /// moment the server decides to go; a client connecting at that very moment gets
    /// [`Error::NotRunning`] (or, with `start_server`, starts the successor).
    ///
    /// [`ClientOptions::start_server`]: crate::ClientOptions::start_server
    /// [`Client`]: crate::Client
    ///
    /// # Examples
    /// ```no_run
    /// # fn main() -> memlink::Result<()> {
    /// use std::time::Duration;
    ///
    /// let server = memlink::Server::options()
    ///     .exit_when_idle(Duration::from_secs(30))
    ///     .bind("files.1000")?;
    /// // Returns once no client has been connected for 30 s (or on shutdown).
    /// server.serve(|request: &[u8], reply: &mut Vec<u8>| reply.extend_from_slice(request))?;
    /// # Ok(()) }
    /// ```
    pub fn exit_when_idle(mut self, idle: Duration) -> Self {
        self.exit_when_idle = Some(idle);
        self
    }

    /// Fault injection for tests: every worker fails (as if its epoll set broke) once the server
    /// has answered `calls` calls. Exists only with the `fault-injection` feature.
    #[doc(hidden)]
    #[cfg(feature = "fault-injection")]
    pub fn __fail_workers_after(mut self, calls: u64) -> Self {
        self.fail_workers_after = Some(calls);
        self
    }

    /// Fault injection for tests: a parked worker looks again on its own only after `recheck`
    /// (default 100 ms), so that a lost wake-up shows as a hang rather than a short delay.
    /// Exists only with the `fault-injection` feature.
    #[doc(hidden)]
    #[cfg(feature = "fault-injection")]
    pub fn __park_recheck(mut self, recheck: Duration) -> Self {
        self.park_recheck = recheck.max(Duration::from_millis(1));
        self
    }

    /// Fault injection for tests: a stream's handler thread waits `pause` between giving its
    /// stream slot back and ending the stream, to show that the slot is free before the client
    /// can see the end. Exists only with the `fault-injection` feature.
    #[doc(hidden)]
    #[cfg(feature = "fault-injection")]
    pub fn __stream_end_pause(mut self, pause: Duration) -> Self {
        self.stream_end_pause = pause;
        self
    }

    /// Fault injection for tests: workers go on streaming after a client cancelled the stream
    /// (they never look at its request ring while a stream runs), as a hostile server may: the
    /// client's next call finds endless records of a call it gave up. Exists only with the
    /// `fault-injection` feature.
    #[doc(hidden)]
    #[cfg(feature = "fault-injection")]
    pub fn __ignore_stream_cancels(mut self) -> Self {
        self.ignore_stream_cancels = true;
        self
    }

    /// Claims service `name`.
    ///
    /// # Errors
    /// As [`Server::bind`].
    pub fn bind(&self, name: &str) -> Result<Server> {
        validate_name(name)?;
        let bound = socket::listen(&socket_name(name));
        // Started on demand, we hold our launcher's start lock until now: waiters look for
        // the name, which is bound (or taken by another server) from here on.
        super::launch::release_inherited_lock(name);
        let (listener, refuses_descriptors) = bound.map_err(|e| match e {
            Errno::ADDRINUSE => Error::AlreadyRunning {
                name: name.to_owned(),
                pid: super::server_stats(name).map_or(0, |s| s.pid),
            },
            e => Error::os("binding the server socket", e),
        })?;
        if !refuses_descriptors {
            tracing::warn!(
                server = name,
                "this kernel cannot refuse descriptors passed by clients (SO_PASSRIGHTS, Linux 6.16+): a hostile client can delay this server's threads by passing one whose close blocks"
            );
        }
        // Each connection holds three descriptors (socket and two wake pipe ends), and admitting
        // one briefly five (`serve_async` raises it further: see there).
        raise_descriptor_limit(3, self.max_clients);
        let shutdown_bell = notify::doorbell().map_err(|e| Error::os("creating an eventfd", e))?;
        Ok(Server {
            name: name.to_owned(),
            options: self.clone(),
            listener: Some(listener),
            shared: Arc::new(Shared {
                shutting_down: AtomicBool::new(false),
                shutdown_bell,
                connections: AtomicUsize::new(0),
                calls: CallCounts::new(self.workers),
                expired: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                handler_times: (0..self.workers).map(|_| Histogram::default()).collect(),
                registry: std::sync::Mutex::new(HashMap::new()),
                corrupt_disconnects: AtomicU64::new(0),
                next_connection: AtomicU64::new(1),
                streams: AtomicUsize::new(0),
                streams_per_uid: std::sync::Mutex::new(HashMap::new()),
                stream_pool: Arc::new(StreamPool::default()),
                per_uid: std::sync::Mutex::new(HashMap::new()),
                worker_failure: std::sync::Mutex::new(None),
                started: Instant::now(),
                active_clients: (0..self.workers).map(|_| AtomicUsize::new(0)).collect(),
            }),
        })
    }
}

/// Raises this process's soft descriptor limit towards what `max_clients` connections of
/// `per_connection` descriptors each need, with handshakes in progress besides (as far as the
/// hard limit allows): the default soft limit (1,024) is below what the default options admit.
fn raise_descriptor_limit(per_connection: usize, max_clients: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let wanted = per_connection
        .saturating_mul(max_clients)
        .saturating_add(MAX_PENDING_HANDSHAKES + 64) as u64;
    if limit.current.is_some_and(|current| current < wanted) {
        limit.current = Some(limit.maximum.map_or(wanted, |max| max.min(wanted)));
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(error = %e, "could not raise the descriptor limit");
        }
    }
    let now = getrlimit(Resource::Nofile).current;
    if now.is_some_and(|n| n < wanted) {
        tracing::warn!(
            limit = now,
            wanted,
            per_connection,
            "the descriptor limit is below what max_clients needs (per_connection each): \
             connections beyond it will be refused; raise the hard limit (ulimit -Hn) or lower max_clients"
        );
    }
}

/// Calls run, counted per worker: each worker's count is on its own line and has one writer, so
/// counting a call is a plain load and store (no locked instruction on the round trip), and
/// nobody else's count shares its line. The last count is the async server's, whose tasks may
/// run on any thread (it adds atomically).
#[derive(Debug)]
struct CallCounts(Box<[WorkerCount]>);

/// One worker's count of calls (see [`CallCounts`]).
#[derive(Debug, Default)]
#[repr(align(128))]
struct WorkerCount(AtomicU64);

impl WorkerCount {
    /// Counts a call; only the worker that owns this count calls it.
    fn count(&self) {
        self.0
            .store(self.0.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}

impl CallCounts {
    fn new(workers: usize) -> Self {
        CallCounts((0..=workers).map(|_| WorkerCount::default()).collect())
    }

    /// Worker `index`'s count (`index` below the number of workers: the last count is the
    /// async server's, which has many writers).
    fn worker(&self, index: usize) -> &WorkerCount {
        let last = self.0.len() - 1;
        debug_assert!(index < last, "worker {index} of {last}");
        &self.0[index.min(last)]
    }

    /// Counts a call of the async server (from any thread).
    #[cfg(feature = "tokio")]
    fn count_async(&self) {
        if let Some(slot) = self.0.last() {
            slot.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn total(&self) -> u64 {
        self.0.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

#[derive(Debug)]
struct Shared {
    shutting_down: AtomicBool,
    shutdown_bell: OwnedFd,
    connections: AtomicUsize,
    calls: CallCounts,
    /// Requests skipped because their deadline had passed when a worker took them.
    expired: AtomicU64,
    /// Calls whose handler failed, refused or panicked.
    failed: AtomicU64,
    /// Per worker: how long its sampled calls' handlers took.
    handler_times: Box<[Histogram]>,
    /// Open connections by id (locked per connect and disconnect, and by a statistics request;
    /// never per call).
    registry: std::sync::Mutex<HashMap<u64, Arc<ConnectionEntry>>>,
    corrupt_disconnects: AtomicU64,
    /// The next connection's id.
    next_connection: AtomicU64,
    /// Stream handler threads running.
    streams: AtomicUsize,
    /// Of those, per uid (locked when a stream starts and ends, never per call or item).
    streams_per_uid: std::sync::Mutex<HashMap<u32, usize>>,
    /// The threads that run stream handlers.
    stream_pool: Arc<StreamPool>,
    /// Admitted connections per uid (locked per connect and disconnect, never per call).
    per_uid: std::sync::Mutex<HashMap<u32, usize>>,
    /// Why a worker stopped early, for `serve` to return.
    worker_failure: std::sync::Mutex<Option<String>>,
    started: Instant,
    /// Per worker: clients it found active in its last counting period.
    active_clients: Box<[AtomicUsize]>,
}

/// Stops a running [`Server`]: no new connections, calls in flight finish (within the grace
/// period), then `serve` returns. Cheap to clone, `Send + Sync`.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
}

impl Shared {
    /// Takes a stream handler slot for `uid` if both the server and the uid have room; else
    /// the cap that is full.
    fn claim_stream(&self, uid: u32, cap: usize, cap_per_uid: usize) -> Result<(), usize> {
        let mut per_uid = self
            .streams_per_uid
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.streams.load(Ordering::Acquire) >= cap {
            return Err(cap);
        }
        let mine = per_uid.entry(uid).or_insert(0);
        if *mine >= cap_per_uid {
            return Err(cap_per_uid);
        }
        *mine += 1;
        self.streams.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn release_stream(&self, uid: u32) {
        let mut per_uid = self
            .streams_per_uid
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = per_uid.get_mut(&uid) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_uid.remove(&uid);
            }
        }
        self.streams.fetch_sub(1, Ordering::AcqRel);
    }

    fn release_uid(&self, uid: u32) {
        let mut per_uid = self.per_uid.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = per_uid.get_mut(&uid) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_uid.remove(&uid);
            }
        }
    }
}

impl ShutdownHandle {
    /// Requests shutdown. Async-signal-safe: one atomic store and one `write(2)` to an eventfd, no
    /// allocation and no lock, so it may be called from a signal handler.
    pub fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let _ = notify::ring(&self.shared.shutdown_bell);
    }
}

/// A bound memlink server: owns its name until dropped, or until [`Server::serve`] stops accepting
/// (shut down, or idle: see [`ServerOptions::exit_when_idle`]).
///
/// # Examples
/// ```no_run
/// # fn main() -> memlink::Result<()> {
/// let server = memlink::Server::bind("echo")?;
/// let stop = server.shutdown_handle(); // e.g. for a signal handler
/// server.serve(|request: &[u8], reply: &mut Vec<u8>| reply.extend_from_slice(request))?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Server {
    name: String,
    options: ServerOptions,
    /// Taken by `serve`, which closes it the moment it stops accepting.
    listener: Option<OwnedFd>,
    shared: Arc<Shared>,
}

impl Server {
    /// Claims service `name` with default options.
    ///
    /// A server started on demand by a client
    /// ([`ClientOptions::start_server`](crate::ClientOptions::start_server)) inherits the
    /// name's start lock from it (the descriptor named by `MEMLINK_START_LOCK_FD` and
    /// `MEMLINK_START_LOCK_INODE` in its environment), so that no second server is started
    /// while it comes up, even if the client that started it dies meanwhile. Binding (this
    /// method, or [`ServerOptions::bind`]) closes that descriptor right after claiming the name,
    /// whether or not the claim succeeded, once per process. A server should therefore bind
    /// before it starts other programs, which would otherwise inherit the lock.
    ///
    /// # Errors
    /// [`Error::AlreadyRunning`] if a live server has the name (a dead server's name is free the
    /// moment it dies); [`Error::InvalidName`].
    pub fn bind(name: &str) -> Result<Server> {
        ServerOptions::new().bind(name)
    }

    /// Options for serving with non-default settings.
    pub fn options() -> ServerOptions {
        ServerOptions::new()
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A handle that stops [`Server::serve`] from another thread or a signal handler.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serves requests with `handler` until shut down (or idle, with
    /// [`ServerOptions::exit_when_idle`]).
    ///
    /// # Errors
    /// [`Error::Os`] if the server's own descriptors fail, or a worker thread stopped (failed or
    /// panicked outside a handler): the server then shuts down as a whole, letting the other
    /// workers finish their calls, rather than run on half-dead. Misbehaving clients never end
    /// `serve`.
    pub fn serve<H: Handler>(self, handler: H) -> Result<()> {
        self.serve_both(&Plain(handler), None)
    }

    /// Serves requests with a [`CallHandler`] until shut down: a handler that is told who calls
    /// and until when ([`CallContext`]), and may fail ([`HandlerError::new`], which the client
    /// gets as [`Error::HandlerFailed`] with the message and bytes) or refuse the call
    /// ([`HandlerError::refused`]: [`Error::CallRefused`]). Either way the connection stays
    /// usable. A call whose deadline has passed when the server takes it is not handed to the
    /// handler.
    ///
    /// # Errors
    /// As [`Server::serve`].
    ///
    /// # Examples
    /// ```no_run
    /// # fn main() -> memlink::Result<()> {
    /// use memlink::rpc::{CallContext, HandlerError};
    ///
    /// let server = memlink::Server::bind("kv")?;
    /// server.serve_calls(|call: &CallContext, key: &[u8], reply: &mut Vec<u8>| {
    ///     if call.caller_uid() != 1000 {
    ///         return Err(HandlerError::refused("this store belongs to uid 1000"));
    ///     }
    ///     match key {
    ///         b"answer" => reply.extend_from_slice(b"42"),
    ///         _ => return Err(HandlerError::new("no such key").with_data(*b"ENOKEY")),
    ///     }
    ///     Ok(())
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn serve_calls<C: CallHandler>(self, handler: C) -> Result<()> {
        self.serve_both(&handler, None)
    }

    /// [`Server::serve_calls`] and [`Server::serve_with`] together: calls with a
    /// [`CallHandler`], stream requests with `streams`.
    ///
    /// # Errors
    /// As [`Server::serve`].
    pub fn serve_calls_with<C: CallHandler, S: StreamHandler>(
        self,
        handler: C,
        streams: S,
    ) -> Result<()> {
        self.serve_both(&handler, Some(Arc::new(streams)))
    }

    /// Serves plain calls with `handler` and stream requests ([`Client::call_stream`]) with
    /// `streams`, until shut down. Each stream's handler runs on a thread of its own (at most
    /// [`ServerOptions::max_streams`] at once); see [`StreamHandler`].
    ///
    /// [`Client::call_stream`]: crate::Client::call_stream
    ///
    /// # Errors
    /// As [`Server::serve`].
    ///
    /// # Examples
    /// ```no_run
    /// # fn main() -> memlink::Result<()> {
    /// let server = memlink::Server::bind("counter")?;
    /// server.serve_with(
    ///     |request: &[u8], reply: &mut Vec<u8>| reply.extend_from_slice(request),
    ///     |_request: &[u8], sink: &mut memlink::StreamSink| {
    ///         for i in 0u64..1000 {
    ///             sink.send(&i.to_le_bytes())?; // blocks while the client is behind
    ///         }
    ///         Ok(())
    ///     },
    /// )?;
    /// # Ok(()) }
    /// ```
    pub fn serve_with<H: Handler, S: StreamHandler>(self, handler: H, streams: S) -> Result<()> {
        self.serve_both(&Plain(handler), Some(Arc::new(streams)))
    }

    fn serve_both(
        mut self,
        handler: &dyn CallHandler,
        streams: Option<Arc<dyn StreamHandler>>,
    ) -> Result<()> {
        let listener = self
            .listener
            .take()
            .ok_or_else(|| Error::os("serving a server twice", Errno::INVAL))?;
        let workers = self.options.workers;
        let mut handles = Vec::with_capacity(workers);
        let mut bodies = Vec::with_capacity(workers);
        for _ in 0..workers {
            let doorbell =
                Arc::new(notify::doorbell().map_err(|e| Error::os("creating an eventfd", e))?);
            let (inbox_tx, inbox_rx) = channel();
            let load = Arc::new(AtomicUsize::new(0));
            handles.push(WorkerHandle {
                doorbell: doorbell.clone(),
                inbox: inbox_tx,
                load: load.clone(),
                gone: AtomicBool::new(false),
            });
            bodies.push((doorbell, inbox_rx, load));
        }
        let workers = bodies
            .into_iter()
            .enumerate()
            .map(|(index, (doorbell, inbox, load))| {
                Worker::new(
                    &self,
                    index,
                    doorbell,
                    inbox,
                    load,
                    handler,
                    streams.clone(),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        std::thread::scope(|scope| {
            let joins: Vec<_> = workers
                .into_iter()
                .map(|worker| {
                    let server = &self;
                    let shared = &self.shared;
                    let stop = self.shutdown_handle();
                    let index = worker.index;
                    scope.spawn(move || {
                        let outcome = catch_unwind(AssertUnwindSafe(|| worker.run()));
                        let failure = match &outcome {
                            Ok(Ok(())) => None,
                            Ok(Err(e)) => Some(e.to_string()),
                            Err(_) => Some("it panicked".to_owned()),
                        };
                        if let Some(why) = failure {
                            tracing::error!(server = %server.name, worker = index, %why, "a worker stopped; shutting the server down");
                            shared
                                .worker_failure
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .get_or_insert(format!("worker {index} stopped: {why}"));
                            stop.shutdown();
                        }
                        outcome.unwrap_or_else(|_| Err(Error::os("a server worker panicked", Errno::IO)))
                    })
                })
                .collect();
            let accepted = self.accept_loop(&listener, &handles);
            // Stop accepting now, not when `self` drops after the grace period: a connector must
            // be refused (`NotRunning`), not left waiting for a handshake nobody will answer. And
            // free the name now: a successor (a restart, or a server started on demand by the
            // next client) can bind it while this one finishes its calls in flight, instead of
            // failing with `AlreadyRunning` against a server that no longer accepts anyone.
            let _ = socket::shut_down(&listener);
            drop(listener);
            // Whatever ended the acceptor, the workers must stop too.
            self.shutdown_handle().shutdown();
            let mut result = accepted;
            for join in joins {
                let worker_result = join
                    .join()
                    .unwrap_or_else(|_| Err(Error::os("a server worker panicked", Errno::IO)));
                result = result.and(worker_result);
            }
            // Idle stream threads exit now rather than after their idle time.
            self.shared.stream_pool.close();
            // Every connection is gone, so every stream is cancelled: give the handler threads a
            // moment to notice, so that none outlives `serve` for long.
            let ends = Instant::now() + self.options.shutdown_grace.min(Duration::from_secs(1));
            while self.shared.streams.load(Ordering::Acquire) > 0 && Instant::now() < ends {
                std::thread::sleep(Duration::from_millis(1));
            }
            result
        })
    }

    /// The statistics as `asker` may see them: the server's own user and root see every
    /// connection; any other user only its own (who else uses a service, and how much, is not
    /// theirs to know).
    fn stats(&self, asker: u32) -> Stats {
        let shared = &self.shared;
        let sees_all = asker == process::effective_uid() || asker == 0;
        Stats {
            pid: process::current_pid(),
            connections: shared.connections.load(Ordering::Relaxed) as u32,
            workers: self.options.workers as u32,
            max_connections: self.options.max_clients as u32,
            calls: shared.calls.total(),
            corrupt_disconnects: shared.corrupt_disconnects.load(Ordering::Relaxed),
            uptime_ms: shared.started.elapsed().as_millis() as u64,
            max_message: self.options.max_message_size as u64,
            expired_calls: shared.expired.load(Ordering::Relaxed),
            failed_calls: shared.failed.load(Ordering::Relaxed),
            handler_latency: {
                let mut counts = [0; histogram::BUCKETS];
                for worker in shared.handler_times.iter() {
                    worker.merge_into(&mut counts);
                }
                let (samples, [p50, p90, p99, max]) = histogram::summarize(&counts);
                HandlerLatency {
                    samples,
                    p50: Duration::from_nanos(p50),
                    p90: Duration::from_nanos(p90),
                    p99: Duration::from_nanos(p99),
                    max: Duration::from_nanos(max),
                }
            },
            connection_list: {
                // The registry's lock (which every connect and disconnect takes) is held only to
                // copy the entries into room reserved before it; filtered, sorted and cut after.
                let mut list: Vec<ConnectionStats> =
                    Vec::with_capacity(shared.connections.load(Ordering::Relaxed) + 16);
                list.extend(
                    shared
                        .registry
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .values()
                        .map(|entry| entry.snapshot()),
                );
                list.retain(|c| sees_all || c.uid == asker);
                list.sort_unstable_by_key(|c| c.id);
                list.truncate(Stats::MAX_LISTED);
                list
            },
        }
    }

    /// Accepts connections and answers their hellos. Credentials are checked the moment a
    /// connection is accepted, so a user the server does not admit never holds a handshake slot.
    /// Handshakes in progress wait in an epoll set with a deadline each, at most
    /// `max_pending_per_uid` per user: a connector that never speaks holds up nobody but itself,
    /// and a flood of them only pushes out the flooder's own older ones.
    fn accept_loop(&self, listener: &OwnedFd, workers: &[WorkerHandle]) -> Result<()> {
        const LISTENER: u64 = 0;
        const STOP: u64 = 1;
        let poll_error = |e| Error::os("waiting for connections", e);
        let mut poller = Poller::new().map_err(|e| Error::os("creating an epoll set", e))?;
        poller.add(listener, LISTENER).map_err(poll_error)?;
        poller
            .add(&self.shared.shutdown_bell, STOP)
            .map_err(poll_error)?;
        let mut pending = Handshakes::new(HANDSHAKE_TIMEOUT);
        let mut ready = Vec::new();
        // Idle exit: a departing client wakes only its worker, so the acceptor looks at the
        // connection count every quarter of the idle time (nothing happens in between).
        let idle = self.options.exit_when_idle;
        let mut idle_since = Instant::now();
        let mut last_look = false;
        loop {
            let mut timeout = pending
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            if let Some(idle) = idle {
                let recheck = if last_look {
                    Duration::ZERO
                } else {
                    (idle / 4).clamp(Duration::from_millis(1), Duration::from_secs(1))
                };
                timeout = Some(timeout.map_or(recheck, |t| t.min(recheck)));
            }
            poller.wait(timeout, &mut ready).map_err(poll_error)?;
            if self.shared.shutting_down.load(Ordering::SeqCst) {
                return Ok(());
            }
            if last_look && ready.is_empty() {
                // Idle for long enough, and nobody knocked at the last look.
                tracing::debug!(server = %self.name, "idle; no longer serving");
                return Ok(());
            }
            last_look = false;
            for event in &ready {
                match event.token {
                    LISTENER => self.accept_batch(listener, &poller, &mut pending)?,
                    STOP => return Ok(()),
                    token => {
                        if let Some(handshake) = pending.take(token) {
                            let _ = poller.remove(&handshake.socket);
                            // Its hello has arrived (or it hung up): answering does not block.
                            // A misbehaving connector only loses its own connection.
                            if let Err(e) = self.admit(handshake, workers) {
                                tracing::debug!(server = %self.name, error = %e, "handshake failed");
                            }
                        }
                    }
                }
            }
            for expired in pending.expire(Instant::now()) {
                let _ = poller.remove(&expired.socket);
            }
            if let Some(idle) = idle {
                // Handshakes in progress (a client, or a statistics query) only postpone the
                // exit; only connected clients start the idle time again.
                if self.shared.connections.load(Ordering::Relaxed) > 0 {
                    idle_since = Instant::now();
                } else if pending.is_empty() && idle_since.elapsed() >= idle {
                    last_look = true;
                }
            }
        }
    }

    fn accept_batch(
        &self,
        listener: &OwnedFd,
        poller: &Poller,
        pending: &mut Handshakes,
    ) -> Result<()> {
        admission::accept_batch(
            listener,
            poller,
            pending,
            self.options.max_pending_per_uid,
            |connection, peer| self.allowed(connection, peer),
            &self.refusal(Admission::PermissionDenied).encode(),
            &self.name,
        )
    }

    fn allowed(&self, connection: &OwnedFd, peer: socket::PeerCredentials) -> bool {
        let allowed = link::admits(self.options.permissions, None, connection, peer);
        tracing::debug!(
            server = %self.name,
            pid = peer.pid,
            uid = peer.uid,
            allowed,
            "accepted a connection"
        );
        allowed
    }

    fn refusal(&self, admission: Admission) -> Welcome {
        Welcome {
            admission,
            ring_capacity: self.options.ring_capacity as u32,
            max_message: self.options.max_message_size as u64,
            server_pid: process::current_pid(),
        }
    }

    /// Takes a uid's slot for one more connection, if both the server and the uid have room.
    fn claim_slot(&self, uid: u32) -> Result<(), Admission> {
        let mut per_uid = self
            .shared
            .per_uid
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let total: usize = per_uid.values().sum();
        if total >= self.options.max_clients {
            return Err(Admission::Full {
                max_clients: self.options.max_clients as u32,
            });
        }
        let mine = per_uid.entry(uid).or_insert(0);
        if *mine >= self.options.max_clients_per_uid {
            return Err(Admission::Full {
                max_clients: self.options.max_clients_per_uid as u32,
            });
        }
        *mine += 1;
        Ok(())
    }

    fn admit(&self, handshake: Handshake, workers: &[WorkerHandle]) -> Result<(), Errno> {
        let Handshake {
            socket: connection,
            peer,
            ..
        } = handshake;
        let mut buf = [0u8; Hello::LEN + 8];
        let (len, _) = socket::receive_message(&connection, &mut buf, false)?;
        let hello = Hello::decode(&buf[..len]).map_err(|_| Errno::PROTO)?;
        let refuse = |admission: Admission| {
            tracing::debug!(
                server = %self.name,
                pid = peer.pid,
                uid = peer.uid,
                ?admission,
                "refused a connection"
            );
            socket::send_message(&connection, &self.refusal(admission).encode(), &[])
        };
        if hello.purpose == Purpose::Stats {
            return socket::send_message(&connection, &self.stats(peer.uid).encode(), &[]);
        }
        if hello.purpose != Purpose::Connect {
            return Err(Errno::PROTO);
        }
        if self.shared.shutting_down.load(Ordering::SeqCst) {
            return refuse(Admission::ShuttingDown);
        }
        let Some(worker) = workers
            .iter()
            .filter(|w| !w.gone.load(Ordering::Relaxed))
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
        else {
            return refuse(Admission::ShuttingDown);
        };
        if let Err(full) = self.claim_slot(peer.uid) {
            return refuse(full);
        }
        let slot = UidSlot {
            shared: self.shared.clone(),
            uid: peer.uid,
        };
        // One wake pipe per direction; each side keeps the end it uses (see `link::wake`).
        let welcome = self.refusal(Admission::Accepted);
        let Offered {
            map,
            layout,
            ends: [wake_in, wake_out],
        } = link::offer(
            &connection,
            &welcome.encode(),
            self.options.ring_capacity,
            [Keep::Read, Keep::Write],
        )?;
        let id = self.shared.next_connection.fetch_add(1, Ordering::Relaxed);
        let span = tracing::debug_span!(
            "memlink_connection",
            server = %self.name,
            id,
            pid = peer.pid,
            uid = peer.uid
        );
        let registration = Registration::new(
            &self.shared,
            ConnectionEntry {
                id,
                pid: peer.pid,
                uid: peer.uid,
                calls: AtomicU64::new(0),
            },
            span,
        );
        let conn = Connection::new(
            Endpoints {
                socket: connection,
                wake_in,
                wake_out,
            },
            map,
            layout,
            self.options.max_message_size,
            peer,
            slot,
            registration,
        )
        .map_err(|_| Errno::INVAL)?;
        conn.registration
            .span
            .in_scope(|| tracing::debug!("admitted"));
        self.shared.connections.fetch_add(1, Ordering::Relaxed);
        worker.load.fetch_add(1, Ordering::Relaxed);
        if let Err(returned) = worker.inbox.send(conn) {
            // The worker has exited (it failed; the server is shutting down). The connection is
            // dropped here, and the client sees it.
            worker.gone.store(true, Ordering::Relaxed);
            self.shared.connections.fetch_sub(1, Ordering::Relaxed);
            worker.load.fetch_sub(1, Ordering::Relaxed);
            drop(returned);
            return Err(Errno::IO);
        }
        notify::ring(&*worker.doorbell)
    }
}

/// An open connection as the statistics list it.
#[derive(Debug)]
struct ConnectionEntry {
    id: u64,
    pid: u32,
    uid: u32,
    /// Written by the connection's worker only.
    calls: AtomicU64,
}

impl ConnectionEntry {
    fn snapshot(&self) -> ConnectionStats {
        ConnectionStats {
            id: self.id,
            pid: self.pid,
            uid: self.uid,
            calls: self.calls.load(Ordering::Relaxed),
        }
    }

    /// Counts one call. Only the connection's worker counts: a relaxed load and store, no
    /// locked instruction.
    fn count_call(&self) {
        self.calls
            .store(self.calls.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}

/// A connection's entry in the server's registry, removed when the connection is dropped, and
/// the span its lifecycle events (admitted, dropped, corrupted) and, at trace level, its calls
/// are traced in.
struct Registration {
    shared: Arc<Shared>,
    entry: Arc<ConnectionEntry>,
    span: tracing::Span,
}

impl Registration {
    fn new(shared: &Arc<Shared>, entry: ConnectionEntry, span: tracing::Span) -> Self {
        let entry = Arc::new(entry);
        shared
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(entry.id, entry.clone());
        Registration {
            shared: shared.clone(),
            entry,
            span,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.entry.id);
    }
}

/// A connection's place in its uid's count, given back when the connection is dropped.
struct UidSlot {
    shared: Arc<Shared>,
    uid: u32,
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        self.shared.release_uid(self.uid);
    }
}

/// Held by a stream's handler thread. When dropped (the handler returned or panicked, or the
/// thread never started) it gives the stream handler slot back and then ends the stream, with
/// `end` or else as panicked. In that order, so that a client that has seen the end can start
/// its next stream at once without being refused for want of a slot.
struct StreamEnding {
    state: Arc<StreamState>,
    shared: Arc<Shared>,
    uid: u32,
    end: Option<End>,
    /// See `ServerOptions::__stream_end_pause`.
    pause: Duration,
}

impl Drop for StreamEnding {
    fn drop(&mut self) {
        self.shared.release_stream(self.uid);
        if !self.pause.is_zero() {
            std::thread::sleep(self.pause);
        }
        self.state.finish(self.end.take().unwrap_or(End::Panicked));
    }
}

/// A stream to run on a pool thread: runs the handler and returns the stream's ending, for the
/// thread to drop once it has counted itself idle.
type StreamJob = Box<dyn FnOnce() -> StreamEnding + Send>;

/// How long a stream thread with nothing to do waits for the next stream before it exits.
const IDLE_STREAM_THREAD: Duration = Duration::from_secs(10);

/// The threads that run stream handlers. A thread whose stream has ended waits (a while) for the
/// next one, so that starting a stream usually hands it to a waiting thread instead of spawning
/// one on the worker: a client that starts and cancels streams in a loop would otherwise make the
/// worker spawn a thread per stream. At most one thread per stream slot
/// ([`ServerOptions::max_streams`]): a thread counts itself idle before it gives its slot back,
/// so whoever claims the slot next finds the thread.
#[derive(Default)]
struct StreamPool {
    state: Mutex<PoolState>,
    job_ready: Condvar,
}

#[derive(Default)]
struct PoolState {
    jobs: VecDeque<StreamJob>,
    /// Threads waiting for a job (each queued job is promised to one of them).
    idle: usize,
    /// The server has stopped: idle threads exit.
    closed: bool,
}

impl std::fmt::Debug for StreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamPool").finish_non_exhaustive()
    }
}

impl StreamPool {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands `job` to an idle thread, or starts a thread for it. If that fails, the job is
    /// dropped, which ends its stream (as panicked) and gives its slot back.
    fn run(self: &Arc<Self>, job: StreamJob) -> std::io::Result<()> {
        let mut state = self.lock();
        if state.idle > state.jobs.len() {
            state.jobs.push_back(job);
            drop(state);
            self.job_ready.notify_one();
            return Ok(());
        }
        drop(state);
        let pool = self.clone();
        std::thread::Builder::new()
            .name("memlink-stream".into())
            .spawn(move || pool.serve(job))
            .map(drop)
    }

    /// A pool thread: runs `job`, then the jobs handed to it, until idle for long or closed.
    fn serve(&self, mut job: StreamJob) {
        loop {
            let ending = job();
            self.lock().idle += 1;
            drop(ending);
            let idle_since = Instant::now();
            let mut state = self.lock();
            job = loop {
                if let Some(next) = state.jobs.pop_front() {
                    state.idle -= 1;
                    break next;
                }
                let waited = idle_since.elapsed();
                if state.closed || waited >= IDLE_STREAM_THREAD {
                    state.idle -= 1;
                    return;
                }
                state = self
                    .job_ready
                    .wait_timeout(state, IDLE_STREAM_THREAD - waited)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            };
        }
    }

    /// Tells idle threads to exit (the server has stopped).
    fn close(&self) {
        self.lock().closed = true;
        self.job_ready.notify_all();
    }
}

/// What the acceptor holds of each worker.
struct WorkerHandle {
    doorbell: Arc<OwnedFd>,
    inbox: Sender<Connection>,
    load: Arc<AtomicUsize>,
    /// Its inbox was found closed: the worker has exited.
    gone: AtomicBool,
}

/// What [`Connection::take_whole_request`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WholeRequest {
    /// A whole request of this many bytes, taken.
    Taken(usize),
    /// Nothing published.
    Empty,
    /// Something for the general path ([`Connection::take_request_record`]).
    Other,
}

/// What one request record was ([`Connection::take_request_record`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestRecord {
    /// A stream's cancel that crossed its end (nothing of a request).
    Cancel,
    /// A fragment of a request not yet whole.
    Part,
    /// The last fragment: the request is whole.
    Whole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Receiving,
    Replying,
    /// Sending a stream's items as its handler produces them.
    Streaming,
}

/// The descriptors of the server's end of one connection.
struct Endpoints {
    /// Liveness (the client's death hangs it up) and goodbyes.
    socket: OwnedFd,
    /// Read end of the pipe the client wakes us through.
    wake_in: OwnedFd,
    /// Write end of the pipe we wake the client through.
    wake_out: OwnedFd,
}

/// The server's end of one connection.
struct Connection {
    socket: OwnedFd,
    wake_in: OwnedFd,
    wake_out: OwnedFd,
    map: Arc<Mapping>,
    requests: Consumer,
    responses: Producer,
    phase: Phase,
    call: u64,
    /// Where the request in progress is (its id, length, fragments so far).
    reassembly: Reassembly,
    request: Vec<u8>,
    reply: Vec<u8>,
    reply_flags: u32,
    reply_sent: usize,
    /// The request in progress asks for a stream.
    stream_request: bool,
    /// The stream being sent (in the streaming phase).
    stream: Option<StreamFeed>,
    /// The stream message in `reply` has been sent whole (or there is none).
    item_done: bool,
    /// The stream's end has been sent whole.
    stream_over: bool,
    max_message: usize,
    client_pid: u32,
    /// This connection's id within the server's run (see `CallContext::connection_id`).
    id: u64,
    /// Its entry in the statistics (call count) and its tracing span.
    registration: Registration,
    /// The deadline of the request in progress (`CLOCK_MONOTONIC` ns; 0: none).
    deadline: u64,
    /// What we last left in the claim word (see `claim`).
    claimed: u64,
    /// Made progress since the worker last counted its active clients.
    active: bool,
    /// The call in progress (or the last one) moves a request or a reply of more than one
    /// fragment: a blocking client yields rather than spins while it waits on such a call, so
    /// it is not counted as a busy client (see `Worker::update_crowding`). (An async client
    /// yields to its runtime's other tasks, not to other processes: it is counted too little.)
    /// A stream clears it: its client waits for items as for a small call.
    bulk: bool,
    /// Declared last: gives the uid's connection slot back once everything else is released.
    _slot: UidSlot,
}

impl Connection {
    fn new(
        endpoints: Endpoints,
        map: Arc<Mapping>,
        layout: RegionLayout,
        max_message: usize,
        peer: socket::PeerCredentials,
        slot: UidSlot,
        registration: Registration,
    ) -> Result<Self, RingError> {
        let id = registration.entry.id;
        Ok(Connection {
            requests: Consumer::new(map.clone(), layout.requests())?,
            responses: Producer::new(map.clone(), layout.responses())?,
            socket: endpoints.socket,
            wake_in: endpoints.wake_in,
            wake_out: endpoints.wake_out,
            map,
            phase: Phase::Idle,
            call: 0,
            reassembly: Reassembly::default(),
            request: Vec::new(),
            reply: Vec::new(),
            reply_flags: 0,
            reply_sent: 0,
            stream_request: false,
            stream: None,
            item_done: true,
            stream_over: false,
            max_message,
            client_pid: peer.pid,
            id,
            registration,
            deadline: 0,
            claimed: 0,
            active: false,
            bulk: false,
            _slot: slot,
        })
    }

    fn nudge_client(&self) -> Result<(), RingError> {
        wake::nudge(&self.map, RPC_CLIENT, &self.wake_out)
    }

    /// Whether `pump` could make progress now.
    fn has_work(&mut self) -> Result<bool, RingError> {
        match self.phase {
            Phase::Replying => {
                let next = (self.reply.len() - self.reply_sent).min(self.responses.max_fragment());
                self.responses.has_room_for(next)
            }
            Phase::Streaming if !self.item_done => {
                let next = (self.reply.len() - self.reply_sent).min(self.responses.max_fragment());
                Ok(self.responses.has_room_for(next)? || self.requests.has_data())
            }
            Phase::Streaming => {
                Ok(self.stream.as_ref().is_some_and(|s| s.has_next()) || self.requests.has_data())
            }
            Phase::Idle | Phase::Receiving => Ok(self.requests.has_data()),
        }
    }

    /// Moves this connection forward as far as it can without waiting, handling at most one
    /// request. Returns whether anything happened.
    fn pump(&mut self, worker: &WorkerContext<'_>) -> Result<bool, RingError> {
        let mut progressed = false;
        let mut budget = Budget::new();
        if self.phase == Phase::Replying {
            progressed |= self.push_reply(&mut budget)?;
            if self.phase == Phase::Replying {
                return Ok(progressed);
            }
        }
        if self.phase == Phase::Streaming {
            progressed |= self.pump_stream(&mut budget, worker.ignore_stream_cancels)?;
            if self.phase == Phase::Streaming {
                return Ok(progressed);
            }
        }
        while !budget.spent() {
            let (record, len) = match self.take_whole_request()? {
                WholeRequest::Taken(len) => (RequestRecord::Whole, len),
                WholeRequest::Empty => break,
                WholeRequest::Other => {
                    let Some(header) = self.requests.peek()? else {
                        break;
                    };
                    if self.phase == Phase::Replying {
                        break;
                    }
                    (self.take_request_record(&header)?, header.len as usize)
                }
            };
            progressed = true;
            if record == RequestRecord::Cancel {
                // Charged like a fragment, so a flood of them cannot hold the worker here.
                budget.charge(0);
                continue;
            }
            budget.charge(len);
            if record == RequestRecord::Part {
                // The client may be waiting for the room we just freed to send the next fragment.
                // After the last one it is not: it waits for the reply, which wakes it anyway.
                self.nudge_client()?;
            } else if self.expired() {
                // Its caller gave up before we took it: no need to claim it, nothing of it runs.
                self.refuse_expired();
                worker.shared.expired.fetch_add(1, Ordering::Relaxed);
                self.push_reply(&mut budget)?;
                break;
            } else if !self.claim()? {
                // Its caller withdrew it: nothing of it runs, nothing answers. A client that
                // kept the connection may be waiting for the room its request held: wake it.
                self.phase = Phase::Idle;
                worker.shared.expired.fetch_add(1, Ordering::Relaxed);
                self.nudge_client()?;
                break;
            } else if self.stream_request {
                worker.calls.count();
                self.registration.entry.count_call();
                self.start_stream(worker);
                if self.phase == Phase::Streaming {
                    self.pump_stream(&mut budget, worker.ignore_stream_cancels)?;
                } else {
                    self.push_reply(&mut budget)?;
                }
                break;
            } else {
                // Few calls are timed (see `TIME_ONE_CALL_PER`).
                let started = worker.time_this_call().then(clock::monotonic_ns);
                let failed = self.respond(worker.handler);
                if let Some(started) = started {
                    worker
                        .handler_times
                        .record(clock::monotonic_ns().saturating_sub(started));
                }
                // Counted before the reply goes out: a client that has its reply finds its
                // call in the server's statistics.
                worker.calls.count();
                self.registration.entry.count_call();
                if failed {
                    worker.shared.failed.fetch_add(1, Ordering::Relaxed);
                }
                let pushed = self.push_reply(&mut budget);
                tracing::trace!(parent: &self.registration.span, call = self.call, failed, "answered a call");
                pushed?;
                break;
            }
        }
        Ok(progressed)
    }

    /// Takes the request record `header` (just peeked) after validating it against the request
    /// it belongs to: flags, call id (increasing, below the claim word's withdrawn bit, see
    /// `claim`), deadline, and agreement between the fragments of one request. An empty fragment
    /// that is not the last is refused (a client could otherwise keep a worker busy forever with
    /// fragments that move nothing). The blocking worker and the async server both take
    /// requests through this (both first try the whole-record shortcut, `take_whole_request`,
    /// which accepts a subset of what this does); they differ only in how they charge, wake and
    /// run what it gives.
    pub(super) fn take_request_record(
        &mut self,
        header: &crate::memory::ring::RecordHeader,
    ) -> Result<RequestRecord, RingError> {
        let bad = |why: String| RingError(format!("client broke the protocol: {why}").into());
        let user = header.flags & USER_FLAGS;
        if user != 0 && user != STREAM_REQUEST {
            if user == CANCEL && !self.reassembly.in_progress() {
                // A cancel that crossed the stream's end: nothing left to stop.
                self.take_cancel(header)?;
                return Ok(RequestRecord::Cancel);
            }
            return Err(bad(format!("request flags {:#x}", header.flags)));
        }
        let last_call = self.call;
        let started = self
            .reassembly
            .accept(
                header,
                |id| id > last_call && claim::is_call_id(id),
                self.max_message as u64,
            )
            .map_err(bad)?;
        if started.is_some() {
            // A deadline is a time some clock can read; a stream request carries none.
            if header.meta > MAX_DEADLINE_NS || (user == STREAM_REQUEST && header.meta != 0) {
                return Err(bad(format!("a request deadline of {}", header.meta)));
            }
            self.call = header.call_id;
            self.deadline = header.meta;
            self.request.clear();
            self.phase = Phase::Receiving;
            self.stream_request = user == STREAM_REQUEST;
            self.bulk = header.total > self.responses.max_fragment() as u64;
        } else if self.stream_request != (user == STREAM_REQUEST) {
            return Err(bad(
                "fragments of one request disagree on their flags".into()
            ));
        } else if header.meta != self.deadline {
            return Err(bad(
                "fragments of one request disagree on their deadline".into()
            ));
        }
        self.requests.take(header, &mut self.request)?;
        Ok(if self.reassembly.taken(header).map_err(bad)?.is_none() {
            RequestRecord::Part
        } else {
            RequestRecord::Whole
        })
    }

    /// The common case of [`Connection::take_request_record`] in one step: if the next record
    /// is a whole ordinary request by itself with the next call id, takes it as that function
    /// would (same checks); else takes nothing, and says whether the ring was empty (nothing
    /// for the general path either).
    #[inline(always)]
    fn take_whole_request(&mut self) -> Result<WholeRequest, RingError> {
        let next = self.call + 1;
        if self.phase != Phase::Idle || self.reassembly.in_progress() || !claim::is_call_id(next) {
            return Ok(WholeRequest::Other);
        }
        self.request.clear();
        let deadline =
            match self
                .requests
                .look_take_whole(next, 0, self.max_message as u64, &mut self.request)
            {
                Whole::Taken(deadline) => deadline,
                Whole::Empty => return Ok(WholeRequest::Empty),
                Whole::Other => return Ok(WholeRequest::Other),
            };
        if deadline > MAX_DEADLINE_NS {
            return Err(RingError(
                format!("client broke the protocol: a request deadline of {deadline}").into(),
            ));
        }
        self.call = next;
        self.deadline = deadline;
        self.phase = Phase::Receiving;
        self.stream_request = false;
        self.bulk = false;
        Ok(WholeRequest::Taken(self.request.len()))
    }

    /// Whether the complete request's deadline has passed. Reads the clock only for a request
    /// that carries one.
    fn expired(&self) -> bool {
        self.deadline != 0 && clock::monotonic_ns() >= self.deadline
    }

    /// Claims the complete request before anything of it runs (see `claim`): `true` if it is
    /// ours to run, `false` if its caller withdrew it first.
    #[inline(always)]
    fn claim(&mut self) -> Result<bool, RingError> {
        match claim::claim(self.requests.spare_word(), &mut self.claimed, self.call) {
            Claim::Run => Ok(true),
            Claim::Withdrawn => {
                tracing::debug!(
                    client_pid = self.client_pid,
                    connection = self.id,
                    call = self.call,
                    "skipped a request its caller withdrew"
                );
                Ok(false)
            }
            Claim::Broken(found) => Err(RingError(
                format!(
                    "client broke the protocol: the claim word holds {found:#x} at call {}",
                    self.call
                )
                .into(),
            )),
        }
    }

    /// Answers a request whose caller already gave up with a report saying it was skipped.
    fn refuse_expired(&mut self) {
        tracing::debug!(
            client_pid = self.client_pid,
            connection = self.id,
            call = self.call,
            "skipped a request whose deadline had passed"
        );
        self.reply.clear();
        self.reply
            .extend_from_slice(&ERR_DEADLINE_EXPIRED.to_le_bytes());
        self.reply_flags = ERROR_REPLY;
        self.reply_sent = 0;
        self.phase = Phase::Replying;
    }

    /// Runs the handler on the complete request and puts its reply (or error report) in
    /// `reply`; whether the handler failed, refused or panicked.
    #[inline(always)]
    fn respond(&mut self, handler: &dyn CallHandler) -> bool {
        self.reply.clear();
        // Built from what the connection holds: no allocation, no system call.
        let context = CallContext {
            pid: self.client_pid,
            uid: self._slot.uid,
            connection: self.id,
            deadline_ns: self.deadline,
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            handler.handle_call(&context, &self.request, &mut self.reply)
        }));
        self.reply_flags = 0;
        let failed = !matches!(outcome, Ok(Ok(())));
        match outcome {
            Err(_) => {
                self.reply.clear();
                self.reply
                    .extend_from_slice(&ERR_HANDLER_PANICKED.to_le_bytes());
                self.reply_flags = ERROR_REPLY;
            }
            Ok(Err(error)) => self.report_failure(&error),
            Ok(Ok(())) => {}
        }
        if self.reply.len() > self.max_message {
            let size = self.reply.len() as u64;
            self.reply.clear();
            self.reply
                .extend_from_slice(&ERR_REPLY_TOO_LARGE.to_le_bytes());
            self.reply.extend_from_slice(&size.to_le_bytes());
            self.reply
                .extend_from_slice(&(self.max_message as u64).to_le_bytes());
            self.reply_flags = ERROR_REPLY;
        }
        self.reply_sent = 0;
        self.bulk |= self.reply.len() > self.responses.max_fragment();
        self.phase = Phase::Replying;
        failed
    }

    /// Puts the error report for a handler's error in `reply`: a refusal (`code | reason`) or
    /// a failure (`code | message_len u32 | message | data`).
    fn report_failure(&mut self, error: &HandlerError) {
        self.reply.clear();
        self.reply_flags = ERROR_REPLY;
        let text = error_text(error.message()).as_bytes();
        match error.kind() {
            Kind::Refused | Kind::Undecodable => {
                let code = if error.kind() == Kind::Refused {
                    ERR_REFUSED
                } else {
                    ERR_UNDECODABLE
                };
                self.reply.extend_from_slice(&code.to_le_bytes());
                self.reply.extend_from_slice(text);
            }
            Kind::Failed => {
                self.reply.extend_from_slice(&ERR_CALL_FAILED.to_le_bytes());
                self.reply
                    .extend_from_slice(&(text.len() as u32).to_le_bytes());
                self.reply.extend_from_slice(text);
                self.reply.extend_from_slice(error.data());
            }
        }
    }

    /// Takes a cancel record, which must name the current call: the client cancels only the
    /// stream it is reading, and only after having sent its request.
    fn take_cancel(&mut self, header: &crate::memory::ring::RecordHeader) -> Result<(), RingError> {
        if header.flags != FIRST | LAST | CANCEL
            || header.len != 0
            || header.total != 0
            || header.meta != 0
            || header.call_id != self.call
        {
            return Err(RingError(format!(
                "client broke the protocol: a cancel record with flags {:#x} for call {} (current call {})",
                header.flags, header.call_id, self.call
            ).into()));
        }
        self.requests.skip(header)?;
        // The client may be waiting for the room the cancel record held.
        self.nudge_client()
    }

    /// Starts the stream the request in `request` asks for: on a handler thread of its own, or
    /// answers with an error report if there is no stream handler or too many streams run.
    fn start_stream(&mut self, worker: &WorkerContext<'_>) {
        self.bulk = false;
        self.reply.clear();
        self.reply_sent = 0;
        self.reply_flags = ERROR_REPLY;
        self.phase = Phase::Replying;
        let Some(streams) = worker.streams else {
            self.reply.extend_from_slice(&ERR_NO_STREAMS.to_le_bytes());
            return;
        };
        let shared = worker.shared;
        let uid = self._slot.uid;
        let too_many = |reply: &mut Vec<u8>, cap: usize| {
            reply.extend_from_slice(&ERR_TOO_MANY_STREAMS.to_le_bytes());
            reply.extend_from_slice(&(cap as u64).to_le_bytes());
        };
        // Claimed before the thread starts, given back by the thread when the handler is done.
        if let Err(cap) = shared.claim_stream(uid, worker.max_streams, worker.max_streams_per_uid) {
            too_many(&mut self.reply, cap);
            return;
        }
        let state = Arc::new(StreamState::new(
            worker.bell.clone(),
            worker.stream_queue,
            worker.stream_queue_bytes,
            self.max_message,
        ));
        let request = std::mem::take(&mut self.request);
        let context = CallContext {
            pid: self.client_pid,
            uid,
            connection: self.id,
            deadline_ns: 0,
        };
        // Moved into the thread's closure: the slot is given back and the stream ended however
        // the thread ends, and also if it never starts (a failed spawn drops the closure).
        let mut ending = StreamEnding {
            state: state.clone(),
            shared: shared.clone(),
            uid,
            end: None,
            pause: worker.stream_end_pause,
        };
        let handler = streams.clone();
        let job: StreamJob = Box::new(move || {
            let mut sink = StreamSink::new(ending.state.clone()).with_context(context);
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                handler.handle_stream(&request, &mut sink)
            }));
            ending.end = Some(match outcome {
                Ok(Ok(())) | Ok(Err(Error::Cancelled)) => End::Done,
                Ok(Err(e)) => End::Failed(e.to_string()),
                Err(_) => End::Panicked,
            });
            drop(sink);
            ending
        });
        if let Err(e) = shared.stream_pool.run(job) {
            tracing::warn!(error = %e, "could not start a stream handler thread");
            too_many(&mut self.reply, worker.max_streams);
            return;
        }
        self.stream = Some(StreamFeed::new(state));
        self.item_done = true;
        self.stream_over = false;
        self.phase = Phase::Streaming;
    }

    /// Moves the stream forward: a cancel from the client, then items (and the end) from the
    /// handler's queue into the response ring, within `budget`.
    /// (`ignore_cancels`: see `ServerOptions::__ignore_stream_cancels`.)
    fn pump_stream(
        &mut self,
        budget: &mut Budget,
        ignore_cancels: bool,
    ) -> Result<bool, RingError> {
        let mut pushed = false;
        let progressed = self.move_stream(budget, ignore_cancels, &mut pushed);
        // One wake-up check for everything this sweep pushed: its barrier waits until our stores
        // to the ring, which the client is reading, have left, so one per item cost a cache-line
        // round trip per item (a fifth of the worker's time with 64-byte items).
        if pushed {
            self.nudge_client()?;
        }
        progressed
    }

    /// [`Connection::pump_stream`] without the wake-up: `pushed` says whether anything went
    /// into the ring.
    fn move_stream(
        &mut self,
        budget: &mut Budget,
        ignore_cancels: bool,
        pushed: &mut bool,
    ) -> Result<bool, RingError> {
        let mut progressed = false;
        if let Some(header) = self.requests.peek()?.filter(|_| !ignore_cancels) {
            // Nothing but a cancel of this very stream may come while it runs.
            self.take_cancel(&header)?;
            if let Some(stream) = self.stream.take() {
                stream.cancel();
            }
            self.end_stream();
            return Ok(true);
        }
        loop {
            if budget.spent() {
                return Ok(progressed);
            }
            if self.item_done {
                let Some(stream) = self.stream.as_mut() else {
                    self.end_stream();
                    return Ok(progressed);
                };
                self.reply_sent = 0;
                match stream.next(&mut self.reply) {
                    Next::Item => self.reply_flags = STREAM_ITEM,
                    Next::End(end) => {
                        self.reply.clear();
                        self.reply_flags = match end {
                            End::Done => STREAM_END,
                            End::Panicked => {
                                self.reply
                                    .extend_from_slice(&ERR_HANDLER_PANICKED.to_le_bytes());
                                ERROR_REPLY
                            }
                            End::Failed(why) => {
                                self.reply
                                    .extend_from_slice(&ERR_HANDLER_FAILED.to_le_bytes());
                                let why = why.as_bytes();
                                self.reply.extend_from_slice(&why[..why.len().min(1024)]);
                                ERROR_REPLY
                            }
                        };
                        self.stream_over = true;
                    }
                    Next::Nothing => return Ok(progressed),
                }
                self.item_done = false;
            }
            let (moved, complete) = self.push_out(budget)?;
            progressed |= moved;
            *pushed |= moved;
            if !complete {
                return Ok(progressed);
            }
            self.item_done = true;
            if self.stream_over {
                self.stream = None;
                self.end_stream();
                return Ok(progressed);
            }
        }
    }

    fn end_stream(&mut self) {
        self.stream = None;
        self.item_done = true;
        self.stream_over = false;
        self.reply.clear();
        self.reply_sent = 0;
        self.phase = Phase::Idle;
        if self.reply.capacity() > KEEP_BUFFER {
            self.reply = Vec::new();
        }
    }

    /// Pushes what is left of the message in `reply` (flags `reply_flags`) within `budget`,
    /// without waking the client (the caller does, once for all it pushed). Returns whether
    /// anything moved and whether the message is now sent whole.
    fn push_out(&mut self, budget: &mut Budget) -> Result<(bool, bool), RingError> {
        let fragment = self.responses.max_fragment();
        let total = self.reply.len();
        let mut progressed = false;
        loop {
            if budget.spent() {
                return Ok((progressed, false));
            }
            let (flags, piece) = fragment_at(self.reply_sent, total, fragment);
            let end = piece.end;
            if !self.responses.try_push(
                flags | self.reply_flags,
                self.call,
                total as u64,
                &self.reply[piece],
            )? {
                return Ok((progressed, false));
            }
            progressed = true;
            budget.charge(end - self.reply_sent);
            self.reply_sent = end;
            if end == total {
                return Ok((progressed, true));
            }
        }
    }

    #[inline(always)]
    fn push_reply(&mut self, budget: &mut Budget) -> Result<bool, RingError> {
        let fragment = self.responses.max_fragment();
        let total = self.reply.len();
        let mut progressed = false;
        loop {
            if budget.spent() {
                return Ok(progressed);
            }
            let (flags, piece) = fragment_at(self.reply_sent, total, fragment);
            let end = piece.end;
            if !self.responses.try_push(
                flags | self.reply_flags,
                self.call,
                total as u64,
                &self.reply[piece],
            )? {
                return Ok(progressed);
            }
            progressed = true;
            budget.charge(end - self.reply_sent);
            self.nudge_client()?;
            self.reply_sent = end;
            if end == total {
                self.phase = Phase::Idle;
                if self.request.capacity() > KEEP_BUFFER {
                    self.request = Vec::new();
                }
                if self.reply.capacity() > KEEP_BUFFER {
                    self.reply = Vec::new();
                }
                return Ok(progressed);
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The client went away, broke the protocol, or the server is stopping: the handler's
        // next send reports Cancelled.
        if let Some(stream) = self.stream.take() {
            stream.cancel();
        }
    }
}

/// How much one connection may move in one sweep: at least one fragment, then up to
/// [`SWEEP_FRAGMENTS`] fragments or [`SWEEP_BYTES`] bytes, whichever comes first.
struct Budget {
    fragments: usize,
    bytes: usize,
}

impl Budget {
    fn new() -> Self {
        Budget {
            fragments: 0,
            bytes: 0,
        }
    }

    fn charge(&mut self, bytes: usize) {
        self.fragments += 1;
        self.bytes += bytes;
    }

    fn spent(&self) -> bool {
        self.fragments >= SWEEP_FRAGMENTS || self.bytes >= SWEEP_BYTES
    }
}

impl WorkerContext<'_> {
    /// Whether to time the call about to run (see [`TIME_ONE_CALL_PER`]).
    fn time_this_call(&self) -> bool {
        self.time_next.replace(false)
    }
}

const DOORBELL: u64 = 0;
const SHUTDOWN: u64 = 1;
const FIRST_CONNECTION: u64 = 2;

/// What a sweep did.
struct Sweep {
    /// Whether any connection made progress.
    progressed: bool,
    /// Looks made while lingering on the only connection (each about a sweep's work).
    lingering_looks: u32,
    /// Looks at an idle connection the sweep made after its last progress (counted against
    /// the looks a worker makes before its timed backoff).
    idle_looks: u32,
}

/// What a connection needs of its worker to serve a call.
struct WorkerContext<'a> {
    handler: &'a dyn CallHandler,
    streams: Option<&'a Arc<dyn StreamHandler>>,
    shared: &'a Arc<Shared>,
    calls: &'a WorkerCount,
    /// This worker's handler times, and whether to time the next call.
    handler_times: &'a Histogram,
    time_next: &'a std::cell::Cell<bool>,
    bell: &'a WorkerBell,
    max_streams: usize,
    max_streams_per_uid: usize,
    stream_queue: usize,
    stream_queue_bytes: usize,
    stream_end_pause: Duration,
    ignore_stream_cancels: bool,
}

struct Worker<'a> {
    server: &'a Server,
    index: usize,
    handler: &'a dyn CallHandler,
    streams: Option<Arc<dyn StreamHandler>>,
    bell: WorkerBell,
    poller: Poller,
    doorbell: Arc<OwnedFd>,
    inbox: Receiver<Connection>,
    load: Arc<AtomicUsize>,
    connections: Vec<Option<Connection>>,
    ready: Vec<Ready>,
    cpus: usize,
    crowded: bool,
    sweep_start: usize,
    /// Whether to time the next call's handler (set by the chores, see [`TIME_ONE_CALL_PER`]).
    time_next: std::cell::Cell<bool>,
}

impl<'a> Worker<'a> {
    fn new(
        server: &'a Server,
        index: usize,
        doorbell: Arc<OwnedFd>,
        inbox: Receiver<Connection>,
        load: Arc<AtomicUsize>,
        handler: &'a dyn CallHandler,
        streams: Option<Arc<dyn StreamHandler>>,
    ) -> Result<Self> {
        let poller = Poller::new().map_err(|e| Error::os("creating an epoll set", e))?;
        poller
            .add(&*doorbell, DOORBELL)
            .map_err(|e| Error::os("watching a doorbell", e))?;
        poller
            .add(&server.shared.shutdown_bell, SHUTDOWN)
            .map_err(|e| Error::os("watching the shutdown bell", e))?;
        Ok(Worker {
            server,
            index,
            handler,
            streams,
            bell: WorkerBell {
                doorbell: doorbell.clone(),
                parked: Arc::new(AtomicBool::new(false)),
            },
            poller,
            doorbell,
            inbox,
            load,
            connections: Vec::new(),
            ready: Vec::new(),
            // Judged against the CPUs our cgroup may use, not our own affinity: a server pinned
            // to one CPU still has clients running on the others. (A CPU quota below the cpuset
            // is not taken into account.)
            cpus: crate::platform::cpu::usable_cpus(),
            crowded: false,
            sweep_start: 0,
            time_next: std::cell::Cell::new(true),
        })
    }

    fn shared(&self) -> &Shared {
        &self.server.shared
    }

    fn adopt_new_connections(&mut self) {
        while let Ok(conn) = self.inbox.try_recv() {
            let slot = match self.connections.iter().position(Option::is_none) {
                Some(free) => free,
                None => {
                    self.connections.push(None);
                    self.connections.len() - 1
                }
            };
            // Both under one token: a wake-up on the pipe, or the client gone (its socket hangs
            // up, or every writer of its pipe is closed). Bytes a client writes to its socket are
            // never read, so they cannot make us spin.
            let token = FIRST_CONNECTION + slot as u64;
            if self.poller.add(&conn.wake_in, token).is_err()
                || self.poller.add_hangup(&conn.socket, token).is_err()
            {
                conn.registration
                    .span
                    .in_scope(|| tracing::warn!("dropped: could not watch the connection"));
                self.release(conn);
                continue;
            }
            self.connections[slot] = Some(conn);
        }
    }

    fn release(&self, conn: Connection) {
        let _ = self.poller.remove(&conn.wake_in);
        let _ = self.poller.remove(&conn.socket);
        self.load.fetch_sub(1, Ordering::Relaxed);
        self.shared().connections.fetch_sub(1, Ordering::Relaxed);
        drop(conn); // unmaps the region and closes the socket: the client sees the hang-up
    }

    fn drop_connection(&mut self, slot: usize, goodbye: Option<Goodbye>) {
        if let Some(conn) = self.connections.get_mut(slot).and_then(Option::take) {
            let reason = match goodbye {
                None => "the client went away",
                Some(Goodbye::Corrupted(_)) => "the client corrupted it",
                Some(_) => "the server is shutting down",
            };
            conn.registration.span.in_scope(|| {
                tracing::debug!(
                    reason,
                    calls = conn.registration.entry.calls.load(Ordering::Relaxed),
                    "dropped"
                )
            });
            if let Some(goodbye) = goodbye {
                let _ = socket::send_message(&conn.socket, &goodbye.encode(), &[]);
            }
            self.release(conn);
        }
    }

    fn corrupted(&mut self, slot: usize, error: RingError) {
        if let Some(conn) = self.connections.get(slot).and_then(Option::as_ref) {
            conn.registration.span.in_scope(|| {
                tracing::warn!(
                    server = %self.server.name,
                    client_pid = conn.client_pid,
                    reason = %error.0,
                    "corrupted: dropping a client that corrupted its connection"
                )
            });
        }
        self.shared()
            .corrupt_disconnects
            .fetch_add(1, Ordering::Relaxed);
        self.drop_connection(slot, Some(Goodbye::Corrupted(error.0.into())));
    }

    fn sweep(&mut self) -> Sweep {
        let mut progressed = false;
        // Each sweep starts one slot further on, so that no connection is always served last:
        // with a fixed order the same clients waited longest every round, and under load the
        // bench's 4-client fairness often fell to 0.14-0.48 (0.79-0.90 over 4 runs with it).
        let count = self.connections.len();
        self.sweep_start = if self.sweep_start + 1 >= count {
            0
        } else {
            self.sweep_start + 1
        };
        let context = WorkerContext {
            handler: self.handler,
            streams: self.streams.as_ref(),
            shared: &self.server.shared,
            calls: self.server.shared.calls.worker(self.index),
            handler_times: &self.server.shared.handler_times[self.index],
            time_next: &self.time_next,
            bell: &self.bell,
            max_streams: self.server.options.max_streams,
            max_streams_per_uid: self.server.options.max_streams_per_uid,
            stream_queue: self.server.options.stream_queue,
            stream_queue_bytes: self.server.options.stream_queue_bytes,
            stream_end_pause: self.server.options.stream_end_pause,
            ignore_stream_cancels: self.server.options.ignore_stream_cancels,
        };
        // Connections that broke the protocol (rare: no allocation unless one did).
        let mut broken = Vec::new();
        let mut open = 0;
        for slot in (self.sweep_start..count).chain(0..self.sweep_start) {
            let Some(conn) = self.connections[slot].as_mut() else {
                continue;
            };
            open += 1;
            match conn.pump(&context) {
                Ok(p) => {
                    conn.active |= p;
                    progressed |= p;
                }
                Err(e) => broken.push((slot, e)),
            }
        }
        // A worker with one client that it just answered: that client's next call usually
        // follows within a few hundred nanoseconds. Look for it here, where taking it costs
        // least, before going round the whole loop (on a round trip this short, the loop was a
        // tenth of it). These are the looks `Worker::run` would make before its timed backoff,
        // made early; with more than one connection every sweep serves them all in turn
        // instead, and a crowded worker does not spin at all (see `Worker::run`).
        let (mut looks, mut idle_looks) = (0, 0);
        let only = if open == 1 {
            self.connections.iter().position(Option::is_some)
        } else {
            None
        };
        if let Some(slot) = only.filter(|_| progressed && broken.is_empty() && !self.crowded)
            && let Some(conn) = self.connections[slot].as_mut()
        {
            // Bounded however fast the client calls; each look counts as a sweep towards the
            // chores (see `Worker::run`), so that they come round as often as without lingering.
            while looks < LINGER_LOOKS {
                if idle_looks == FIRST_LOOKS || conn.phase != Phase::Idle {
                    break;
                }
                looks += 1;
                // A look that finds nothing costs one load, not a pump: on a CPU shared with
                // the client (SMT), every instruction spent looking is one the client waits for.
                let pumped = if conn.requests.has_data() {
                    conn.pump(&context)
                } else {
                    Ok(false)
                };
                match pumped {
                    Ok(true) => idle_looks = 0,
                    Ok(false) => {
                        idle_looks += 1;
                        std::hint::spin_loop();
                    }
                    Err(e) => {
                        broken.push((slot, e));
                        break;
                    }
                }
            }
        }
        for (slot, e) in broken {
            self.corrupted(slot, e);
        }
        Sweep {
            progressed,
            lingering_looks: looks,
            idle_looks,
        }
    }

    /// Counts the clients active since the last count and tells every client whether the server
    /// is crowded: more active clients, plus the busy workers serving them, than CPUs. A client
    /// moving bulk is not counted (it yields while it waits), the worker serving it is.
    fn update_crowding(&mut self) {
        let mut active = 0;
        let mut worker_busy = false;
        for conn in self.connections.iter_mut().flatten() {
            // Active: served a call this period, or has one waiting right now.
            // (A stream waiting for its handler or its reader costs the worker nothing.)
            let waiting = matches!(conn.phase, Phase::Receiving | Phase::Replying)
                || conn.requests.has_data();
            // A blocking client moving bulk waits politely (it yields instead of spinning):
            // counting it would make every small caller park beside it. The worker serving it
            // is busy all the same.
            let busy = std::mem::take(&mut conn.active) || waiting;
            active += usize::from(busy && !conn.bulk);
            worker_busy |= busy;
        }
        // Per worker: its busy clients, times two, plus one if it served anything at all.
        let counts = &self.shared().active_clients;
        if let Some(mine) = counts.get(self.index) {
            mine.store(active * 2 + usize::from(worker_busy), Ordering::Relaxed);
        }
        let (clients, busy_workers) = counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .fold((0, 0), |(c, w), a| (c + a / 2, w + a % 2));
        self.crowded = clients + busy_workers > self.cpus;
        for slot in 0..self.connections.len() {
            let Some(conn) = self.connections[slot].as_ref() else {
                continue;
            };
            if let Err(e) = wake::set_crowded(&conn.map, self.crowded) {
                self.corrupted(slot, e);
            }
        }
    }

    /// How long to spin and yield before parking: no spinning while any of our clients runs on
    /// our CPU (it could not run while we spin), nor while we stream (the stream's handler thread
    /// may be waiting for our CPU to produce the next item: yielding hands it over at once,
    /// where spinning would keep it off the CPU for the whole spin).
    fn patience(&self) -> Patience {
        let yield_at_once = self.connections.iter().flatten().any(|c| {
            c.phase == Phase::Streaming || wake::shares_cpu_with_peer(&c.map, SERVER, RPC_CLIENT)
        });
        if yield_at_once {
            Patience {
                spin: Duration::ZERO,
                ..PATIENCE
            }
        } else {
            PATIENCE
        }
    }

    fn run(mut self) -> Result<()> {
        // Started on the first sweep that finds nothing to do, so a busy worker never pays for it.
        let mut backoff: Option<Backoff> = None;
        let mut last_hangup_sweep = Instant::now();
        let mut last_crowding_update = Instant::now();
        let mut last_timed_call = Instant::now();
        let mut grace_ends: Option<Instant> = None;
        let mut sweeps_to_chores = CHORE_EVERY;
        let mut idle_sweeps = 0u32;
        self.adopt_new_connections();
        loop {
            let mut parked = false;
            let sweep = self.sweep();
            if sweep.progressed {
                backoff = None;
                idle_sweeps = sweep.idle_looks;
                if self.crowded {
                    // Crowded clients park, and our wake-ups often put them on our own CPU
                    // (the scheduler places a woken task near its waker). A worker that stays
                    // busy is preempted only at the next tick, so those clients waited 3-4 ms
                    // per call while the others ran: with 16 client processes on 2 CPUs, half of
                    // them made 1 call in 100 in a third of the bench's runs. Yielding after
                    // every sweep that served something lets them run at once.
                    std::thread::yield_now();
                }
            } else if !self.crowded && idle_sweeps < FIRST_LOOKS {
                // The next request usually follows within a few hundred nanoseconds: look again
                // before paying for the clock and CPU reads that deciding how to wait takes.
                // Not when crowded: there the timed backoff's yields are what lets the clients
                // that were asleep get a CPU (without them, a few clients got 1 call in 30).
                idle_sweeps += 1;
                std::hint::spin_loop();
            } else if !backoff
                .get_or_insert_with(|| Backoff::new(self.patience()))
                .pause()
            {
                self.park(grace_ends)?;
                backoff = None;
                idle_sweeps = 0;
                parked = true;
            }
            // The periodic chores need the clock, which costs as much as a whole small call:
            // look at it every few sweeps (a lingering sweep counts as the looks it made), and
            // after every sleep.
            sweeps_to_chores = sweeps_to_chores.saturating_sub(1 + sweep.lingering_looks);
            if !parked && sweeps_to_chores > 0 {
                if self.shared().shutting_down.load(Ordering::Relaxed) {
                    sweeps_to_chores = 0; // go straight to the shutdown handling below
                }
                if sweeps_to_chores != 0 {
                    continue;
                }
            }
            sweeps_to_chores = CHORE_EVERY;
            // New connections too: the acceptor rings our doorbell for each, which ends a park.
            self.adopt_new_connections();
            if self
                .server
                .options
                .fail_workers_after
                .is_some_and(|n| self.shared().calls.total() >= n)
            {
                return Err(Error::os("a worker's injected failure", Errno::IO));
            }
            let now = Instant::now();
            if now.duration_since(last_timed_call) >= TIME_ONE_CALL_PER {
                // The clock was read anyway: time the next call.
                last_timed_call = now;
                self.time_next.set(true);
            }
            if now.duration_since(last_crowding_update) >= CROWDING_PERIOD {
                last_crowding_update = now;
                self.update_crowding();
            }
            if now.duration_since(last_hangup_sweep) >= HANGUP_SWEEP {
                // Busy workers rarely park; collect hang-ups anyway so dead clients are freed.
                last_hangup_sweep = now;
                self.wait_events(Some(Duration::ZERO))?;
            }
            if self.shared().shutting_down.load(Ordering::SeqCst) {
                let ends = *grace_ends.get_or_insert_with(|| {
                    let now = Instant::now();
                    now.checked_add(self.server.options.shutdown_grace)
                        .unwrap_or(now + Duration::from_secs(365 * 24 * 3600))
                });
                for slot in 0..self.connections.len() {
                    // Streams may run for ever, or wait idle for their next item: they are
                    // cancelled at once (dropping the connection cancels its stream), and their
                    // clients see the server go away.
                    let idle = self.connections[slot]
                        .as_ref()
                        .is_some_and(|c| matches!(c.phase, Phase::Idle | Phase::Streaming));
                    if idle || Instant::now() >= ends {
                        self.drop_connection(slot, Some(Goodbye::ShuttingDown));
                    }
                }
                if self.connections.iter().all(Option::is_none) {
                    return Ok(());
                }
            }
        }
    }

    fn park(&mut self, grace_ends: Option<Instant>) -> Result<()> {
        // SYNC POINT: SeqCst, before the last look at the streams' queues; pairs with a stream
        // handler's SeqCst load after it queued an item (see `stream`).
        self.bell.parked.store(true, Ordering::SeqCst);
        // Every flag up, one barrier, then every last look (see `wake::raise_parked`).
        let mut all_up = true;
        for slot in 0..self.connections.len() {
            let Some(conn) = self.connections[slot].as_mut() else {
                continue;
            };
            match wake::raise_parked(&conn.map, SERVER) {
                Ok(up) => all_up &= up,
                Err(e) => self.corrupted(slot, e),
            }
        }
        if !all_up {
            wake::park_barrier();
        }
        let mut work = false;
        for slot in 0..self.connections.len() {
            let Some(conn) = self.connections[slot].as_mut() else {
                continue;
            };
            match conn.has_work() {
                Ok(w) => work |= w,
                Err(e) => self.corrupted(slot, e),
            }
        }
        if !work {
            // Bounded: a wake-up that a failed send lost (the kernel out of buffers) costs a
            // moment, not a connection.
            let recheck = self.server.options.park_recheck;
            let timeout = grace_ends.map_or(recheck, |t| {
                t.saturating_duration_since(Instant::now())
                    .clamp(Duration::from_millis(1), recheck)
            });
            if !self.wait_events(Some(timeout))? {
                // A nap nobody ended: the flags stay up, and the next park needs no barrier
                // (see `wake::park_begin`).
                self.bell.parked.store(false, Ordering::Relaxed);
                return Ok(());
            }
        }
        for conn in self.connections.iter().flatten() {
            let _ = wake::park_end(&conn.map, SERVER);
        }
        self.bell.parked.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Waits for wake-ups, hang-ups, the doorbell or shutdown; whether anything happened (not
    /// only `timeout` passing).
    fn wait_events(&mut self, timeout: Option<Duration>) -> Result<bool> {
        let mut ready = std::mem::take(&mut self.ready);
        self.poller
            .wait(timeout, &mut ready)
            .map_err(|e| Error::os("waiting for work", e))?;
        let woken = !ready.is_empty();
        for event in &ready {
            match event.token {
                DOORBELL => notify::silence(&*self.doorbell),
                SHUTDOWN => {}
                token => {
                    // A wake-up (the sweep that follows serves it), or the client is gone.
                    let slot = (token - FIRST_CONNECTION) as usize;
                    let Some(conn) = self.connections.get(slot).and_then(Option::as_ref) else {
                        continue;
                    };
                    if event.hung_up || notify::drain_wakes(&conn.wake_in) {
                        self.drop_connection(slot, None);
                    }
                }
            }
        }
        self.ready = ready;
        Ok(woken)
    }
}
