//! The calling side for async code (feature `tokio`): [`AsyncClient`] and [`AsyncReplyStream`].
//!
//! Same wire protocol, same connections as the blocking [`Client`](crate::Client)(super::Client) (the
//! `Connection` of the parent module, whose validation, error reports and failure sorting are
//! reused as they are); only the waiting differs: a task parks through `link::asynchronous`, so
//! a thousand calls in flight need no thread each.
//!
//! # Concurrent calls
//!
//! A connection carries one call at a time (its replies are matched by call id, which only
//! increases). An `AsyncClient` keeps up to [`ClientOptions::max_concurrent_calls`] connections;
//! a call takes a permit from a tokio semaphore (fair: first come, first served), then an idle
//! connection (or opens one, on the blocking pool), and gives both back when done. Any number of
//! calls may wait for a permit; none waits on a thread.
//!
//! # Cancellation
//!
//! A call's future may be dropped at any await point. What it leaves behind is decided by how far
//! its request got (`Progress`):
//! - nothing written: the connection goes back to the pool untouched;
//! - written in part (it waited for room in the request ring): the connection is dropped, since
//!   the server would otherwise read the next request as the rest of this one. The server sees
//!   the hang-up and discards the fragment; the next call opens a fresh connection;
//! - written whole (it waited for the reply): the call is withdrawn through the claim word
//!   (`rpc::claim`). If the withdrawal wins, the server never runs it nor answers it, and the
//!   connection goes back to the pool (unless the request carried a deadline: see `abandon`). If
//!   the server had claimed it, its handler may take long: the connection goes back to the pool
//!   only if the whole reply has arrived already (it is skipped now), else it is dropped, so that
//!   no later call waits behind the abandoned one's handler. Either way the call is marked
//!   abandoned (`cancelled_through`, as for a cancelled stream), so whatever arrives of its reply
//!   is skipped: never is a reply delivered to the wrong call. A stream request written whole is
//!   cancelled on the server, as when a stream is dropped, and its connection goes back to the
//!   pool.
//!
//! A stream's `next` keeps what it received of an item in the stream, not in the future, so a
//! dropped `next` loses nothing; dropping the stream cancels it on the server, as in the blocking
//! API.
//!
//! May use everything of the parent module, `link` and `tokio`; no `unsafe`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

use super::{
    ClientOptions, Connection, ERROR_REPLY, Error, Failure, Mode, NotExecuted, ReplyStep,
    STREAM_END, STREAM_ITEM, STREAM_REQUEST, open_connection,
};
use crate::error::Result;
use crate::link::asynchronous::{AsyncPatience, AsyncWake, FIRST_LOOKS};
use crate::link::fragment::{Reassembly, fragment_at};
use crate::link::wake::{self, RPC_CLIENT, SERVER};
use crate::link::{self, Parked};
use crate::memory::name::validate_name;
use crate::memory::ring::{Consumer, LAST, Producer, RingError, USER_FLAGS};
use crate::rpc::stream::{Verdict, judge};

/// Longest an async call looks at its reply ring before it parks, when it is the only call of
/// its client in flight (it holds the executor's thread meanwhile).
const ASYNC_SPIN: Duration = Duration::from_micros(30);
/// Longest an async call yields to the other tasks, looking after each turn, before it parks,
/// when other calls of its client are in flight: while the server is awake, their replies come
/// back without a wake-up on either side.
const ASYNC_YIELD: Duration = Duration::from_micros(100);

/// A client for async code: the twin of [`Client`](crate::Client), every call an `async fn`. Cheap to clone
/// (clones share the connections) and `Send + Sync`; any number of tasks may call at once.
///
/// Needs a tokio runtime with IO and time enabled (`Builder::enable_all`); connections are
/// opened on tokio's blocking pool, calls never block a thread.
///
/// # Examples
/// ```no_run
/// # async fn demo() -> memlink::Result<()> {
/// let client = memlink::rpc::AsyncClient::connect("echo").await?;
/// let reply = client.call(b"hello").await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct AsyncClient {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    name: String,
    options: ClientOptions,
    /// Connections no call holds. Locked only to push or pop one, never across an await.
    idle: std::sync::Mutex<Vec<AsyncConnection>>,
    /// One permit per connection the client may hold.
    permits: Semaphore,
    /// Bumped by the first call that finds the server gone (see `Client::epoch`).
    epoch: AtomicU64,
    max_message: AtomicU64,
    /// Calls holding a connection right now (decides whether a waiting call may spin).
    in_flight: AtomicUsize,
}

/// A connection with its registrations in tokio's reactor.
#[derive(Debug)]
struct AsyncConnection {
    wake: AsyncWake,
    conn: Connection,
}

/// How far a call holding a connection got, for its lease to decide what a dropped future leaves
/// behind (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// The connection is in step: nothing of ours is in flight.
    Idle,
    /// Part of a request is in the ring: the connection cannot be used again.
    Writing,
    /// Call `call` was sent whole (carrying a deadline, or not); its reply (or what is left of
    /// it) may still come.
    Written { call: u64, deadline_sent: bool },
    /// Stream request `.0` was sent whole: the server streams until told to stop.
    StreamWritten(u64),
}

/// A permit and the connection (if one is open) of one call or stream; gives them back on drop.
struct Lease<'a> {
    shared: &'a Shared,
    slot: Option<AsyncConnection>,
    progress: Progress,
    _permit: SemaphorePermit<'a>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        let Some(mut connection) = self.slot.take() else {
            return;
        };
        let orphan = match self.progress {
            Progress::Idle => false,
            // Dropped: the server sees the hang-up and discards the half-received request.
            Progress::Writing => return,
            Progress::Written {
                call,
                deadline_sent,
            } => {
                if !abandon(&mut connection.conn, call, deadline_sent) {
                    // Out of step until the call's handler has answered: not for another call.
                    return;
                }
                false
            }
            Progress::StreamWritten(call) => {
                // The server must be told to stop (it takes nothing else while it streams);
                // what it sent meanwhile is skipped as for a dropped `AsyncReplyStream`.
                if connection.conn.cancel(call).is_err() {
                    return;
                }
                true
            }
        };
        if connection.conn.abandoned
            || connection.conn.epoch != self.shared.epoch.load(Ordering::Acquire)
        {
            return;
        }
        let mut idle = self
            .shared
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if orphan {
            // Taken last: its next call may first wait for the cancelled stream's end.
            idle.insert(0, connection);
        } else {
            idle.push(connection);
        }
    }
}

/// Settles call `call` of `conn`, whose future was dropped after its request went out: whether
/// the connection may serve the next call (`true`), or must be dropped.
///
/// The call is withdrawn (see `claim`). If that wins, the server skips the request and answers
/// nothing (whatever it sends of it all the same is skipped): the connection is in step, unless
/// the request carried a deadline, which could let the server skip it unclaimed (expired), never
/// meeting the withdrawal, and take the withdrawal of a call it never claimed for corruption. If
/// the server had claimed it, its reply comes once the handler is done, which may be long (a
/// stuck handler would hold up every later call on the connection): the connection is kept only
/// if the whole reply is in the ring already, and skipped now.
fn abandon(conn: &mut Connection, call: u64, deadline_sent: bool) -> bool {
    conn.cancel_through(call);
    if conn.withdraw(call) {
        conn.kept_withdrawal = call;
        return !deadline_sent;
    }
    skip_abandoned_reply(conn, call)
}

/// Skips what of abandoned call `call`'s reply is in the response ring: `true` once its last
/// record is skipped, `false` if more is to come or the ring holds anything else.
fn skip_abandoned_reply(conn: &mut Connection, call: u64) -> bool {
    loop {
        let Ok(Some(header)) = conn.responses.peek() else {
            return false;
        };
        if header.call_id > call || conn.skip_stale(&header).is_err() {
            return false;
        }
        if header.call_id == call && header.flags & LAST != 0 {
            return true;
        }
    }
}

impl ClientOptions {
    /// Connects an [`AsyncClient`] to the server named `name` (feature `tokio`).
    ///
    /// # Errors
    /// As [`Client::connect`](crate::Client::connect).
    pub async fn connect_async(&self, name: &str) -> Result<AsyncClient> {
        AsyncClient::new(name, self.clone(), None).await
    }

    /// Connects an [`AsyncClient`], waiting up to `timeout` for the server to appear.
    ///
    /// # Errors
    /// As [`Client::connect_timeout`](crate::Client::connect_timeout).
    pub async fn connect_async_timeout(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<AsyncClient> {
        AsyncClient::new(name, self.clone(), Instant::now().checked_add(timeout)).await
    }
}

impl AsyncClient {
    /// Connects to the server named `name` with default options.
    ///
    /// # Errors
    /// As [`Client::connect`](crate::Client::connect); [`Error::InvalidOptions`] outside a tokio runtime.
    pub async fn connect(name: &str) -> Result<AsyncClient> {
        ClientOptions::new().connect_async(name).await
    }

    /// Like [`AsyncClient::connect`], waiting up to `timeout` for a server to appear.
    ///
    /// # Errors
    /// As [`Client::connect_timeout`](crate::Client::connect_timeout).
    pub async fn connect_timeout(name: &str, timeout: Duration) -> Result<AsyncClient> {
        ClientOptions::new()
            .connect_async_timeout(name, timeout)
            .await
    }

    async fn new(
        name: &str,
        options: ClientOptions,
        wait_until: Option<Instant>,
    ) -> Result<AsyncClient> {
        validate_name(name)?;
        link::asynchronous::reactor_present()?;
        let connections = options.connections;
        let client = AsyncClient {
            shared: Arc::new(Shared {
                name: name.to_owned(),
                options,
                idle: std::sync::Mutex::new(Vec::with_capacity(connections)),
                permits: Semaphore::new(connections),
                epoch: AtomicU64::new(0),
                max_message: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
            }),
        };
        let first = loop {
            match client.shared.open(0, wait_until).await {
                Err(Error::NotRunning { .. }) if wait_until.is_some_and(|t| Instant::now() < t) => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(Error::NotRunning { .. }) if wait_until.is_some() => {
                    return Err(Error::Timeout);
                }
                other => break other?,
            }
        };
        client
            .shared
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(first);
        Ok(client)
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Largest request (and reply) the server accepts, in bytes, as of the last connection.
    pub fn max_message_size(&self) -> usize {
        self.shared.max_message.load(Ordering::Relaxed) as usize
    }

    /// Sends `request` and returns the server's reply (the twin of [`Client::call`](crate::Client::call)), waiting at
    /// most the default timeout ([`ClientOptions::call_timeout`]) if there is one.
    ///
    /// Dropping the future (e.g. in `tokio::time::timeout` or `select!`) abandons the call: its
    /// reply, if it comes, is discarded, and the client stays usable (see the module
    /// documentation). The handler may or may not have run: not if the server had not taken the
    /// request yet (the call is withdrawn then, and never runs).
    ///
    /// # Errors
    /// As [`Client::call`](crate::Client::call).
    pub async fn call(&self, request: &[u8]) -> Result<Vec<u8>> {
        let mut reply = Vec::new();
        self.call_into(request, &mut reply).await?;
        Ok(reply)
    }

    /// Like [`AsyncClient::call`], giving up after `timeout`: the deadline travels with the
    /// request, as for [`Client::call_timeout`](crate::Client::call_timeout), so a call the server never took fails with
    /// [`Error::NotExecuted`] rather than [`Error::Timeout`].
    ///
    /// # Errors
    /// As [`Client::call_timeout`](crate::Client::call_timeout).
    pub async fn call_timeout(&self, request: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let mut reply = Vec::new();
        self.call_until(
            request,
            &mut reply,
            Instant::now().checked_add(timeout),
            Mode::Wait,
        )
        .await?;
        Ok(reply)
    }

    /// Sends `request` and writes the reply into `reply` (cleared first); with a reused buffer
    /// the call allocates nothing.
    ///
    /// # Errors
    /// As [`Client::call`](crate::Client::call).
    pub async fn call_into(&self, request: &[u8], reply: &mut Vec<u8>) -> Result<()> {
        self.call_until(request, reply, self.default_deadline(), Mode::Wait)
            .await
    }

    /// Like [`Client::try_call`](crate::Client::try_call): fails at once with [`Error::Full`] if every connection is busy
    /// or the request does not fit in the ring now; else waits for the reply.
    ///
    /// # Errors
    /// As [`Client::try_call`](crate::Client::try_call).
    pub async fn try_call(&self, request: &[u8]) -> Result<Vec<u8>> {
        let mut reply = Vec::new();
        self.call_until(request, &mut reply, self.default_deadline(), Mode::Try)
            .await?;
        Ok(reply)
    }

    /// Calls with a typed request and reply (features `serde` and `tokio`), as
    /// [`Client::call_typed`](crate::Client::call_typed).
    ///
    /// # Errors
    /// As [`Client::call_typed`](crate::Client::call_typed).
    #[cfg(feature = "serde")]
    pub async fn call_typed<Req, Resp>(&self, request: &Req) -> Result<Resp>
    where
        Req: serde::Serialize + ?Sized,
        Resp: serde::de::DeserializeOwned,
    {
        let request = postcard::to_allocvec(request).map_err(|e| Error::Unencodable {
            name: self.shared.name.clone(),
            reason: e.to_string().into(),
        })?;
        let mut reply = Vec::new();
        self.call_until(&request, &mut reply, self.default_deadline(), Mode::Wait)
            .await?;
        // Bounded like the blocking client's (see `ClientOptions::decode_limits`): a hostile
        // server's reply cannot blow up our memory, time or stack.
        super::super::bounded::decode_with(&reply, &self.shared.options.decode_limits).map_err(
            |reason| Error::Undecodable {
                name: self.shared.name.clone(),
                what: crate::error::Payload::Reply,
                reason: reason.into(),
            },
        )
    }

    /// Sends `request` as a stream request (the twin of [`Client::call_stream`](crate::Client::call_stream)) and returns the
    /// stream of items the server answers with. The stream holds one of the client's connections
    /// until it ends or is dropped; dropping it early cancels the stream on the server.
    ///
    /// # Errors
    /// As [`Client::call_stream`](crate::Client::call_stream).
    pub async fn call_stream(&self, request: &[u8]) -> Result<AsyncReplyStream<'_>> {
        let deadline = self.default_deadline();
        let shared = &*self.shared;
        shared.check_size(request)?;
        let mut lease = shared.lease(deadline, Mode::Wait).await?;
        let mut retried = false;
        loop {
            shared
                .ready_connection(&mut lease, retried, deadline)
                .await?;
            let Lease { slot, progress, .. } = &mut lease;
            let Some(connection) = slot.as_mut() else {
                continue;
            };
            let result = connection.start_stream(request, deadline, progress).await;
            match result {
                Ok(call) => {
                    lease.progress = Progress::Idle;
                    return Ok(AsyncReplyStream {
                        lease,
                        call,
                        done: false,
                        reassembly: Reassembly::default(),
                        kind: None,
                        partial: Vec::new(),
                    });
                }
                Err(failure) => {
                    lease.progress = Progress::Idle;
                    if !shared.after_failure(&mut lease, failure, &mut retried)? {
                        continue;
                    }
                }
            }
        }
    }

    fn default_deadline(&self) -> Option<Instant> {
        self.shared
            .options
            .call_timeout
            .and_then(|timeout| Instant::now().checked_add(timeout))
    }

    async fn call_until(
        &self,
        request: &[u8],
        reply: &mut Vec<u8>,
        deadline: Option<Instant>,
        mode: Mode,
    ) -> Result<()> {
        let shared = &*self.shared;
        shared.check_size(request)?;
        // One unit of the runtime's budget per call: a task calling back to back, every call
        // answered at once, still lets the others run.
        tokio::task::coop::consume_budget().await;
        let mut lease = shared.lease(deadline, mode).await?;
        let mut retried = false;
        loop {
            let alone = shared.in_flight.load(Ordering::Relaxed) <= 1;
            shared
                .ready_connection(&mut lease, retried, deadline)
                .await?;
            let Lease { slot, progress, .. } = &mut lease;
            let Some(connection) = slot.as_mut() else {
                continue;
            };
            let result = connection
                .call(request, reply, deadline, mode, alone, progress)
                .await;
            // The reply (or the report of a failure) was read whole, or the connection is
            // dropped below: nothing of this call is left in flight.
            lease.progress = Progress::Idle;
            match result {
                Ok(()) => return Ok(()),
                Err(failure) => {
                    if !shared.after_failure(&mut lease, failure, &mut retried)? {
                        continue;
                    }
                }
            }
        }
    }
}

impl Shared {
    fn not_executed(&self, reason: NotExecuted) -> Error {
        Error::NotExecuted {
            name: self.name.clone(),
            reason,
        }
    }

    /// As `Client::unsent`.
    fn unsent(&self, error: Error) -> Error {
        match error {
            Error::Timeout => self.not_executed(NotExecuted::TimedOut),
            Error::Disconnected { .. } => self.not_executed(NotExecuted::ServerGone),
            error => error,
        }
    }

    fn check_size(&self, request: &[u8]) -> Result<()> {
        let max = self.max_message.load(Ordering::Relaxed) as usize;
        if request.len() > max {
            return Err(Error::MessageTooLarge {
                size: request.len(),
                max,
            });
        }
        Ok(())
    }

    /// A permit (waiting for one until `deadline`, or not at all in `Try` mode) and an idle
    /// connection, if there is one.
    async fn lease(&self, deadline: Option<Instant>, mode: Mode) -> Result<Lease<'_>> {
        let permit = match mode {
            Mode::Try => self.permits.try_acquire().map_err(|_| Error::Full)?,
            Mode::Wait => {
                let acquired = match deadline {
                    None => self.permits.acquire().await,
                    Some(t) => tokio::time::timeout_at(t.into(), self.permits.acquire())
                        .await
                        .map_err(|_| self.not_executed(NotExecuted::TimedOut))?,
                };
                // Never closed: a closed semaphore would mean a memlink bug.
                acquired.map_err(|_| self.not_executed(NotExecuted::ServerGone))?
            }
        };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let slot = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        Ok(Lease {
            shared: self,
            slot,
            progress: Progress::Idle,
            _permit: permit,
        })
    }

    /// The lease's connection, opened now if it has none (or one to a server found gone).
    async fn ready_connection(
        &self,
        lease: &mut Lease<'_>,
        retried: bool,
        deadline: Option<Instant>,
    ) -> Result<()> {
        let epoch = self.epoch.load(Ordering::Acquire);
        if lease.slot.as_ref().is_some_and(|c| c.conn.epoch != epoch) {
            lease.slot = None;
        }
        if lease.slot.is_none() {
            match self.open(epoch, deadline).await {
                Ok(connection) => lease.slot = Some(connection),
                // A retry of a provably unsent call found no server: report the original loss.
                Err(Error::NotRunning { .. }) if retried => {
                    return Err(self.not_executed(NotExecuted::ServerGone));
                }
                Err(e) => return Err(self.unsent(e)),
            }
        }
        Ok(())
    }

    /// Sorts a failed attempt as `Client::on_connection` does: `Ok(false)` to try once more on
    /// a fresh connection (the server went away without having taken the request), else the
    /// error to report.
    fn after_failure(
        &self,
        lease: &mut Lease<'_>,
        failure: Failure,
        retried: &mut bool,
    ) -> Result<bool> {
        match failure {
            Failure::Kept(e) => Err(e),
            Failure::Broken { error, taken } => {
                let dead_epoch = lease.slot.as_ref().map_or(0, |c| c.conn.epoch);
                lease.slot = None;
                if let Error::Disconnected { .. } = error {
                    self.note_disconnected(dead_epoch);
                }
                if taken {
                    return Err(error);
                }
                match error {
                    Error::Disconnected { .. } if !*retried => {
                        *retried = true;
                        Ok(false)
                    }
                    error => Err(self.unsent(error)),
                }
            }
        }
    }

    fn note_disconnected(&self, dead_epoch: u64) {
        let _ = self.epoch.compare_exchange(
            dead_epoch,
            dead_epoch + 1,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// Opens a connection on tokio's blocking pool (a handshake, or starting a server on demand,
    /// may wait) and registers it with the reactor, by `deadline` (`Timeout` then, even while
    /// the pool is too busy to start the opening). A dropped future drops the connection.
    async fn open(&self, epoch: u64, deadline: Option<Instant>) -> Result<AsyncConnection> {
        let (name, options) = (self.name.clone(), self.options.clone());
        let opening = tokio::task::spawn_blocking(move || {
            // Started after its caller gave up (the pool was busy): nothing to open.
            if deadline.is_some_and(|t| Instant::now() >= t) {
                return Err(Error::Timeout);
            }
            open_connection(&name, &options, epoch, deadline)
        });
        let opened = match deadline {
            None => opening.await,
            Some(t) => tokio::time::timeout_at(t.into(), opening)
                .await
                .map_err(|_| Error::Timeout)?,
        }
        .map_err(|e| Error::Os {
            op: "opening a connection on tokio's blocking pool",
            source: std::io::Error::other(e.to_string()),
        })??;
        self.max_message
            .store(opened.max_message as u64, Ordering::Relaxed);
        let wake = AsyncWake::new(&opened.wake_in, &opened.socket)?;
        Ok(AsyncConnection { wake, conn: opened })
    }
}

impl AsyncConnection {
    /// The async twin of `Connection::call`; records in `progress` how far the request got.
    async fn call(
        &mut self,
        request: &[u8],
        reply: &mut Vec<u8>,
        deadline: Option<Instant>,
        mode: Mode,
        alone: bool,
        progress: &mut Progress,
    ) -> Result<(), Failure> {
        let conn = &mut self.conn;
        if request.len() > conn.max_message {
            return Err(Failure::Kept(Error::MessageTooLarge {
                size: request.len(),
                max: conn.max_message,
            }));
        }
        let meta = conn.deadline_word(deadline);
        let call = conn.last_call + 1;
        let sent = match mode {
            Mode::Wait => {
                conn.last_call = call;
                *progress = Progress::Writing;
                self.send(call, request, 0, meta, deadline, alone).await
            }
            Mode::Try => match conn.try_send(call, request, meta) {
                Ok(true) => {
                    conn.last_call = call;
                    Ok(())
                }
                Ok(false) => return Err(Failure::Kept(Error::Full)),
                Err(Failure::Kept(e)) => return Err(Failure::Kept(e)),
                Err(Failure::Broken { error, .. }) => Err(error),
            },
        };
        let result = match sent {
            Ok(()) => {
                *progress = Progress::Written {
                    call,
                    deadline_sent: meta != 0,
                };
                if !self.conn.pause_before_receive.is_zero() {
                    tokio::time::sleep(self.conn.pause_before_receive).await;
                }
                self.receive(call, reply, deadline, alone).await
            }
            Err(e) => Err(e),
        };
        // As in `Connection::call`: a failure that breaks the connection withdraws the call
        // through the claim word, which settles whether it may have run.
        result.map_err(|error| self.conn.failure(error, call))
    }

    /// The async twin of `Connection::start_stream`; returns the stream's call id.
    async fn start_stream(
        &mut self,
        request: &[u8],
        deadline: Option<Instant>,
        progress: &mut Progress,
    ) -> Result<u64, Failure> {
        if request.len() > self.conn.max_message {
            return Err(Failure::Kept(Error::MessageTooLarge {
                size: request.len(),
                max: self.conn.max_message,
            }));
        }
        self.conn.last_call += 1;
        let call = self.conn.last_call;
        *progress = Progress::Writing;
        // Carries no deadline (see `Connection::start_stream`); not written whole, it cannot run.
        self.send(call, request, STREAM_REQUEST, 0, deadline, false)
            .await
            .map_err(|error| Failure::Broken {
                error,
                taken: false,
            })?;
        *progress = Progress::StreamWritten(call);
        if !self.conn.pause_before_receive.is_zero() {
            tokio::time::sleep(self.conn.pause_before_receive).await;
        }
        Ok(call)
    }

    /// The async twin of `Connection::send_flagged`.
    async fn send(
        &mut self,
        call: u64,
        request: &[u8],
        user_flags: u32,
        meta: u64,
        deadline: Option<Instant>,
        alone: bool,
    ) -> Result<()> {
        let fragment = self.conn.requests.max_fragment();
        let total = request.len() as u64;
        let mut sent = 0;
        loop {
            let (flags, piece) = fragment_at(sent, request.len(), fragment);
            let end = piece.end;
            let conn = &mut self.conn;
            let ring = |e: RingError| Error::corrupted(&conn.name, e.0);
            let pushed = conn
                .requests
                .try_push_with_meta(flags | user_flags, call, total, meta, &request[piece])
                .map_err(ring)?;
            if pushed {
                wake::nudge(&conn.map, SERVER, &conn.wake_out)
                    .map_err(|e| Error::corrupted(&conn.name, e.0))?;
                sent = end;
                if sent == request.len() {
                    return Ok(());
                }
            } else {
                let len = end - sent;
                self.wait(deadline, alone, |requests, _| requests.has_room_for(len))
                    .await?;
            }
        }
    }

    /// The async twin of `Connection::receive`.
    async fn receive(
        &mut self,
        call: u64,
        reply: &mut Vec<u8>,
        deadline: Option<Instant>,
        alone: bool,
    ) -> Result<()> {
        reply.clear();
        let mut reassembly = Reassembly::default();
        loop {
            match self.conn.reply_step(call, &mut reassembly, reply)? {
                ReplyStep::Empty => {
                    self.wait(deadline, alone, |_, responses| Ok(responses.has_data()))
                        .await?;
                }
                ReplyStep::More => {
                    // A reply in many fragments, or records of a call given up (which a hostile
                    // server may send without end): the deadline holds all the same (a wait
                    // that finds the next record at once does not look at it), and the other
                    // tasks get their turn.
                    if deadline.is_some_and(|t| Instant::now() >= t) {
                        return Err(Error::Timeout);
                    }
                    tokio::task::coop::consume_budget().await;
                }
                ReplyStep::Done => return Ok(()),
            }
        }
    }

    /// Waits until `ready` holds: a few looks, a short spin if this is the only call of its
    /// client in flight (and the connection's adaptive patience allows one), then parks.
    async fn wait(
        &mut self,
        deadline: Option<Instant>,
        alone: bool,
        mut ready: impl FnMut(&mut Producer, &mut Consumer) -> Result<bool, RingError>,
    ) -> Result<()> {
        let AsyncConnection { wake, conn } = self;
        // While the server is awake the answer comes within a few hundred nanoseconds: look
        // before paying for the clock reads that deciding how to wait takes.
        for _ in 0..FIRST_LOOKS {
            if ready(&mut conn.requests, &mut conn.responses)
                .map_err(|e| Error::corrupted(&conn.name, e.0))?
            {
                conn.record_wait(Duration::ZERO);
                return Ok(());
            }
            std::hint::spin_loop();
        }
        let started = Instant::now();
        // The blocking client's adaptive patience (crowded server, slow handlers), bounded: a
        // call alone may spin a little; calls side by side yield to each other instead.
        let patience = conn.patience(false);
        let patience = if alone {
            AsyncPatience {
                spin: patience.spin.min(ASYNC_SPIN),
                yield_for: Duration::ZERO,
            }
        } else {
            AsyncPatience {
                spin: Duration::ZERO,
                yield_for: (patience.spin + patience.yield_for).min(ASYNC_YIELD),
            }
        };
        let Connection {
            name,
            map,
            requests,
            responses,
            ..
        } = &mut *conn;
        let parked = wake
            .wait(name, map, RPC_CLIENT, patience, deadline, || {
                ready(requests, responses)
            })
            .await?;
        if parked == Parked::Ready {
            conn.record_wait(started.elapsed());
        }
        let Connection { name, socket, .. } = &*conn;
        match parked {
            Parked::Ready => Ok(()),
            Parked::TimedOut => Err(Error::Timeout),
            Parked::HungUp => Err(link::goodbye(name, socket)),
        }
    }
}

/// The items a server streams in answer to [`AsyncClient::call_stream`], received with
/// [`AsyncReplyStream::next`]: each `Some(Ok(item))` in order, then `None` after a clean end, or
/// one `Some(Err(..))`, as [`ReplyStream`](super::ReplyStream).
///
/// Cancel-safe: a `next` future dropped part-way loses nothing (what it took of an item is kept
/// here, and the next `next` goes on with it). Dropping the stream before its end cancels it on
/// the server; its connection then serves later calls, which skip what is left of the stream.
pub struct AsyncReplyStream<'a> {
    lease: Lease<'a>,
    call: u64,
    done: bool,
    reassembly: Reassembly,
    /// User flags of the message in progress.
    kind: Option<u32>,
    /// What has arrived of the item in progress.
    partial: Vec<u8>,
}

impl std::fmt::Debug for AsyncReplyStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncReplyStream")
            .field("call", &self.call)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl AsyncReplyStream<'_> {
    /// The next item: `Some(Ok(item))`, `None` once the stream has ended, or `Some(Err(..))`
    /// (after which the stream is over).
    pub async fn next(&mut self) -> Option<Result<Vec<u8>>> {
        let mut item = Vec::new();
        match self.next_into(&mut item).await {
            Ok(true) => Some(Ok(item)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Receives the next item into `item` (cleared first; reusing it allocates nothing per
    /// item): `Ok(true)` for an item, `Ok(false)` once the stream has ended (and from then on).
    ///
    /// # Errors
    /// As [`ReplyStream::next_into`](super::ReplyStream::next_into).
    pub async fn next_into(&mut self, item: &mut Vec<u8>) -> Result<bool> {
        self.next_until(item, None).await
    }

    /// Like [`AsyncReplyStream::next_into`], giving up after `timeout` with [`Error::Timeout`];
    /// the stream goes on (call again), whatever had arrived of the item.
    ///
    /// # Errors
    /// As [`AsyncReplyStream::next_into`].
    pub async fn next_into_timeout(
        &mut self,
        item: &mut Vec<u8>,
        timeout: Duration,
    ) -> Result<bool> {
        self.next_until(item, Instant::now().checked_add(timeout))
            .await
    }

    async fn next_until(&mut self, item: &mut Vec<u8>, deadline: Option<Instant>) -> Result<bool> {
        item.clear();
        if self.done {
            return Ok(false);
        }
        let result = self.receive_item(deadline).await;
        match result {
            Ok(Some(user)) => {
                std::mem::swap(item, &mut self.partial);
                self.partial.clear();
                match user {
                    STREAM_END => {
                        self.done = true;
                        Ok(false)
                    }
                    _ => Ok(true),
                }
            }
            Ok(None) => {
                self.done = true;
                Err(Error::Disconnected {
                    name: self.lease.shared.name.clone(),
                })
            }
            // Whatever had arrived stays in `partial`: the stream goes on.
            Err(Error::Timeout) => Err(Error::Timeout),
            Err(error) => {
                self.done = true;
                let kept = matches!(
                    error,
                    Error::HandlerPanicked { .. }
                        | Error::HandlerFailed { .. }
                        | Error::StreamsNotServed { .. }
                        | Error::ServerFull { .. }
                ) && self.lease.slot.as_ref().is_some_and(|c| !c.conn.abandoned);
                if !kept {
                    let epoch = self.lease.slot.as_ref().map_or(0, |c| c.conn.epoch);
                    self.lease.slot = None;
                    if let Error::Disconnected { .. } = error {
                        self.lease.shared.note_disconnected(epoch);
                    }
                }
                Err(error)
            }
        }
    }

    /// Takes fragments into `partial` until a message is whole: `Some(user flags)` (an error
    /// report is returned as the error), `None` if the stream has no connection.
    async fn receive_item(&mut self, deadline: Option<Instant>) -> Result<Option<u32>> {
        let call = self.call;
        let Some(connection) = self.lease.slot.as_mut() else {
            return Ok(None);
        };
        let mut first = true;
        loop {
            // A unit of the runtime's budget per record, the first included: a stream whose
            // items are all there already (a fast server, a reader that fell behind) still lets
            // the other tasks run. Nothing is taken before it, and what was taken is kept here.
            tokio::task::coop::consume_budget().await;
            if !std::mem::take(&mut first) && deadline.is_some_and(|t| Instant::now() >= t) {
                // Between records (see `AsyncConnection::receive`).
                return Err(Error::Timeout);
            }
            let conn = &mut connection.conn;
            let ring = |name: &str, e: RingError| Error::corrupted(name, e.0);
            // The common case first, as the blocking stream does: a whole item in one record
            // (between messages `partial` is empty: `next_until` takes each one out of it).
            if self.kind.is_none()
                && conn
                    .responses
                    .take_whole(call, STREAM_ITEM, conn.max_reply as u64, &mut self.partial)
                    .map_err(|e| ring(&conn.name, e))?
                    .is_some()
            {
                // The server may be waiting for the room we just freed.
                wake::nudge(&conn.map, SERVER, &conn.wake_out).map_err(|e| ring(&conn.name, e))?;
                return Ok(Some(STREAM_ITEM));
            }
            let Some(header) = conn.responses.peek().map_err(|e| ring(&conn.name, e))? else {
                connection
                    .wait(deadline, false, |_, responses| Ok(responses.has_data()))
                    .await?;
                continue;
            };
            let bad = |why: &str| {
                Error::corrupted(&conn.name, format!("server broke the protocol: {why}"))
            };
            match judge(&header, call, conn.cancelled_through, self.kind, true)
                .map_err(|w| bad(&w))?
            {
                Verdict::Stale => {
                    conn.skip_stale(&header)?;
                    continue;
                }
                Verdict::Ours(user) => self.kind = Some(user),
            }
            let complete =
                conn.take_fragment(&header, &mut self.reassembly, call, &mut self.partial)?;
            wake::nudge(&conn.map, SERVER, &conn.wake_out).map_err(|e| ring(&conn.name, e))?;
            if complete {
                self.kind = None;
                let user = header.flags & USER_FLAGS;
                if user == ERROR_REPLY {
                    let error = conn.remote_error(&self.partial);
                    self.partial.clear();
                    return Err(error);
                }
                return Ok(Some(user));
            }
        }
    }
}

impl Drop for AsyncReplyStream<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(connection) = self.lease.slot.as_mut() {
            if connection.conn.cancel(self.call).is_err() {
                // Could not tell the server: this connection is out of step; drop it.
                self.lease.slot = None;
            }
        }
    }
}
