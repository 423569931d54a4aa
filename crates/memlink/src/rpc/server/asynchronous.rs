//! Serving with async handlers (feature `tokio`): [`Server::serve_async`] and
//! [`Server::serve_calls_async`].
//!
//! The acceptor is the blocking server's own (credentials, admission, fairness per user,
//! statistics, idle exit), run on a thread of tokio's blocking pool. Instead of worker threads,
//! every admitted connection becomes a tokio task: it takes the request from the ring, awaits the
//! handler's future (so a handler that awaits holds no thread), and writes the reply, parking
//! between steps through `link::asynchronous` on the connection's wake pipe and socket, the
//! same wake-ups a blocking worker sleeps on. The runtime's threads are the workers
//! (`ServerOptions::workers` does not apply); a connection's requests are answered one at a time,
//! in order, as by a blocking worker, each taking a unit of the runtime's scheduling budget, so
//! that a client whose requests keep coming cannot hold a runtime thread from the other
//! connections. The parsing, the claim on each request before it runs
//! (`rpc::claim`: a call its caller withdrew never runs) and the error reports are the blocking
//! worker's (`Connection` of the parent module).
//!
//! Stream requests are answered with [`Error::StreamsNotServed`](crate::Error::StreamsNotServed):
//! an async server has no stream handler.
//!
//! Shutdown ([`ShutdownHandle::shutdown`](super::ShutdownHandle::shutdown)): the acceptor stops,
//! idle connections are told at once, calls in flight get the grace period
//! ([`ServerOptions::shutdown_grace`](crate::ServerOptions::shutdown_grace)) to finish, then their tasks are dropped.
//!
//! May use the parent module's internals, `link` and `tokio`; no `unsafe`.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::task::Poll;

use rustix::io::Errno;
use tokio::io::unix::AsyncFd;

use super::{
    Budget, CallContext, Connection, ERR_HANDLER_PANICKED, ERR_NO_STREAMS, ERR_REPLY_TOO_LARGE,
    ERROR_REPLY, Goodbye, HandlerError, Phase, RequestRecord, SWEEP_FRAGMENTS, Server, Shared,
    WholeRequest, WorkerHandle,
};
use crate::error::{Error, Result};
use crate::link::asynchronous::{AsyncPatience, AsyncWake};
use crate::link::wake::SERVER;
use crate::link::{self, Parked};
use crate::memory::ring::RingError;
use crate::platform::{clock, notify, socket};

/// Answers requests asynchronously: the twin of [`Handler`](super::Handler) for
/// [`Server::serve_async`]. Implemented for every `Fn(Vec<u8>) -> impl Future<Output = Vec<u8>>`
/// that is `Send + Sync + 'static` (with a `Send` future).
///
/// The request comes owned; the returned bytes are the reply. A handler that panics fails only
/// that call ([`Error::HandlerPanicked`](crate::Error::HandlerPanicked) for the client).
pub trait AsyncHandler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, request: Vec<u8>) -> impl Future<Output = Vec<u8>> + Send;
}

impl<F, Fut> AsyncHandler for F
where
    F: Fn(Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<u8>> + Send,
{
    fn handle(&self, request: Vec<u8>) -> impl Future<Output = Vec<u8>> + Send {
        self(request)
    }
}

/// Answers calls asynchronously, told who calls and until when, and able to fail or refuse: the
/// twin of [`CallHandler`](super::CallHandler) for [`Server::serve_calls_async`]. Implemented for
/// every `Fn(CallContext, Vec<u8>) -> impl Future<Output = Result<Vec<u8>, HandlerError>>` that
/// is `Send + Sync + 'static` (with a `Send` future).
pub trait AsyncCallHandler: Send + Sync + 'static {
    /// Answers one call: the reply, or an error the client gets as
    /// [`Error::HandlerFailed`](crate::Error::HandlerFailed) or
    /// [`Error::CallRefused`](crate::Error::CallRefused).
    fn handle_call(
        &self,
        call: CallContext,
        request: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, HandlerError>> + Send;
}

impl<F, Fut> AsyncCallHandler for F
where
    F: Fn(CallContext, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<u8>, HandlerError>> + Send,
{
    fn handle_call(
        &self,
        call: CallContext,
        request: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, HandlerError>> + Send {
        self(call, request)
    }
}

/// A plain [`AsyncHandler`] as a call handler that never fails.
struct PlainAsync<H>(H);

impl<H: AsyncHandler> AsyncCallHandler for PlainAsync<H> {
    async fn handle_call(
        &self,
        _call: CallContext,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, HandlerError> {
        Ok(self.0.handle(request).await)
    }
}

/// What every connection task shares.
struct Context<C> {
    handler: C,
    shared: Arc<Shared>,
    name: String,
    /// Becomes `true` when the server shuts down.
    stop: tokio::sync::watch::Receiver<bool>,
}

/// Gives a connection's place back however its task ends (finished, failed or dropped).
struct Served {
    shared: Arc<Shared>,
    load: Arc<AtomicUsize>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.load.fetch_sub(1, Ordering::Relaxed);
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Server {
    /// Serves requests with the async `handler` until shut down (or idle, with
    /// [`ServerOptions::exit_when_idle`](crate::ServerOptions::exit_when_idle)): the twin of [`Server::serve`] for tokio programs
    /// (feature `tokio`). Each connection is a task on the current runtime; a handler that awaits
    /// (I/O, timers, another memlink call) holds no thread meanwhile. See the
    /// `rpc::server::asynchronous` module documentation for how it runs.
    ///
    /// # Errors
    /// As [`Server::serve`]; [`Error::InvalidOptions`] outside a tokio runtime.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> memlink::Result<()> {
    /// let server = memlink::Server::bind("echo")?;
    /// server
    ///     .serve_async(|request: Vec<u8>| async move { request })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn serve_async<H: AsyncHandler>(self, handler: H) -> Result<()> {
        self.serve_calls_async(PlainAsync(handler)).await
    }

    /// Serves calls with the async [`AsyncCallHandler`] `handler` until shut down: the twin of
    /// [`Server::serve_calls`] (feature `tokio`). A call whose deadline has passed when the
    /// server takes it is not handed to the handler.
    ///
    /// # Errors
    /// As [`Server::serve_async`].
    pub async fn serve_calls_async<C: AsyncCallHandler>(mut self, handler: C) -> Result<()> {
        link::asynchronous::reactor_present()?;
        // A connection's task registers duplicates of its socket and wake pipe read end with
        // the reactor: five descriptors per connection, not three.
        super::raise_descriptor_limit(5, self.options.max_clients);
        let listener = self
            .listener
            .take()
            .ok_or_else(|| Error::os("serving a server twice", Errno::INVAL))?;
        let doorbell =
            Arc::new(notify::doorbell().map_err(|e| Error::os("creating an eventfd", e))?);
        let (inbox_tx, inbox) = channel();
        let load = Arc::new(AtomicUsize::new(0));
        let handle = WorkerHandle {
            doorbell: doorbell.clone(),
            inbox: inbox_tx,
            load: load.clone(),
            gone: AtomicBool::new(false),
        };
        let registered = |fd: &OwnedFd| {
            let own = fd.try_clone().map_err(|e| Error::Os {
                op: "duplicating a server's doorbell",
                source: e,
            })?;
            link::asynchronous::registered(own, "registering a server's doorbell with tokio")
        };
        let doorbell_ready = registered(&doorbell)?;
        let shutdown_ready = registered(&self.shared.shutdown_bell)?;
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let context = Arc::new(Context {
            handler,
            shared: self.shared.clone(),
            name: self.name.clone(),
            stop,
        });
        let grace = self.options.shutdown_grace;
        let server = Arc::new(self);
        let acceptor = {
            let server = server.clone();
            tokio::task::spawn_blocking(move || {
                let accepted = server.accept_loop(&listener, std::slice::from_ref(&handle));
                // As `serve`: refuse connectors and free the name at once, and stop the rest.
                let _ = socket::shut_down(&listener);
                drop(listener);
                server.shutdown_handle().shutdown();
                accepted
            })
        };
        let mut tasks = tokio::task::JoinSet::new();
        let dispatched = dispatch(
            &doorbell_ready,
            &shutdown_ready,
            &inbox,
            &context,
            &load,
            &mut tasks,
        )
        .await;
        // Shutting down (or the dispatcher failed): idle connections are told now, calls in
        // flight get the grace period.
        server.shutdown_handle().shutdown();
        let _ = stop_tx.send(true);
        while let Ok(connection) = inbox.try_recv() {
            refuse(connection, &context.shared, &load);
        }
        let finished =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if finished.is_err() {
            // Calls still in flight after the grace period: their clients see the server go.
            tasks.shutdown().await;
        }
        let accepted = acceptor.await.map_err(|e| Error::Os {
            op: "running a server's acceptor on tokio's blocking pool",
            source: std::io::Error::other(e.to_string()),
        })?;
        dispatched.and(accepted)
    }
}

/// A connection admitted while the server stops: told so and dropped.
fn refuse(connection: Connection, shared: &Arc<Shared>, load: &Arc<AtomicUsize>) {
    let _served = Served {
        shared: shared.clone(),
        load: load.clone(),
    };
    let _ = socket::send_message(&connection.socket, &Goodbye::ShuttingDown.encode(), &[]);
}

/// Hands every connection the acceptor admits to a task of its own, until shutdown.
async fn dispatch<C: AsyncCallHandler>(
    doorbell: &AsyncFd<OwnedFd>,
    shutdown: &AsyncFd<OwnedFd>,
    inbox: &Receiver<Connection>,
    context: &Arc<Context<C>>,
    load: &Arc<AtomicUsize>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<()> {
    let failed = |e| Error::Os {
        op: "waiting for new connections",
        source: e,
    };
    loop {
        while let Ok(connection) = inbox.try_recv() {
            let served = Served {
                shared: context.shared.clone(),
                load: load.clone(),
            };
            tasks.spawn(serve_connection(connection, context.clone(), served));
        }
        // Reap finished connection tasks as we go (they are few per wake-up).
        while tasks.try_join_next().is_some() {}
        if context.shared.shutting_down.load(Ordering::SeqCst) {
            return Ok(());
        }
        let woken = std::future::poll_fn(|cx| {
            if let Poll::Ready(guard) = shutdown.poll_read_ready(cx) {
                // Left ringing: everyone else watching it must see it too.
                return Poll::Ready(guard.map(|_| ()));
            }
            if let Poll::Ready(guard) = doorbell.poll_read_ready(cx) {
                return Poll::Ready(guard.map(|mut guard| {
                    notify::silence(guard.get_inner());
                    guard.clear_ready();
                }));
            }
            Poll::Pending
        })
        .await;
        woken.map_err(failed)?;
    }
}

/// How a connection's wait for the client ended.
enum Waited {
    Ready,
    /// The client went away (or the connection broke: `Some` says why).
    Gone(Option<Error>),
    /// The server is shutting down.
    Stopping,
}

/// Serves one connection until the client goes away, breaks the protocol, or the server stops.
async fn serve_connection<C: AsyncCallHandler>(
    mut conn: Connection,
    context: Arc<Context<C>>,
    _served: Served,
) {
    let mut wake = match AsyncWake::new(&conn.wake_in, &conn.socket) {
        Ok(wake) => wake,
        Err(e) => {
            conn.registration
                .span
                .in_scope(|| tracing::warn!(error = %e, "dropped: could not watch the connection"));
            return;
        }
    };
    let mut stop = context.stop.clone();
    let outcome = serve_calls(&mut conn, &mut wake, &context, &mut stop).await;
    let goodbye = match outcome {
        Ok(()) => Some(Goodbye::ShuttingDown),
        Err(Ended::Gone) => None,
        Err(Ended::Failed(e)) => {
            conn.registration
                .span
                .in_scope(|| tracing::debug!(error = %e, "dropped"));
            None
        }
        Err(Ended::Corrupted(e)) => {
            conn.registration.span.in_scope(|| {
                tracing::warn!(
                    server = %context.name,
                    client_pid = conn.client_pid,
                    reason = %e.0,
                    "corrupted: dropping a client that corrupted its connection"
                )
            });
            context
                .shared
                .corrupt_disconnects
                .fetch_add(1, Ordering::Relaxed);
            Some(Goodbye::Corrupted(e.0.into()))
        }
    };
    if let Some(goodbye) = goodbye {
        let _ = socket::send_message(&conn.socket, &goodbye.encode(), &[]);
    }
    // Dropping `conn` unmaps the region and closes the socket: the client sees the hang-up.
}

/// Why a connection's task ended (`Ok(())` from `serve_calls`: the server stops).
enum Ended {
    Gone,
    Failed(Error),
    Corrupted(RingError),
}

async fn serve_calls<C: AsyncCallHandler>(
    conn: &mut Connection,
    wake: &mut AsyncWake,
    context: &Context<C>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), Ended> {
    loop {
        // Between calls: shutdown ends the connection at once (the check below, for an empty
        // ring, is not reached while a client keeps its ring full), and one unit of the
        // runtime's budget per call keeps a client whose requests are answered as fast as they
        // come (or skipped: withdrawn, expired) from holding the runtime's thread, so that the
        // other connections' tasks run and the task can be aborted.
        if *stop.borrow() {
            return Ok(());
        }
        tokio::task::coop::consume_budget().await;
        // A whole request.
        let stream = loop {
            match conn
                .take_request(SWEEP_FRAGMENTS)
                .map_err(Ended::Corrupted)?
            {
                Some(stream) => break stream,
                None if conn.requests.has_data() => {
                    // A long request (or a flood of records): let the other tasks run.
                    tokio::task::yield_now().await;
                }
                None => {
                    if conn.phase == Phase::Idle && *stop.borrow() {
                        return Ok(());
                    }
                    match park(conn, wake, &context.name, stop).await {
                        Waited::Ready => {}
                        // Between calls, shutdown ends the connection at once.
                        Waited::Stopping if conn.phase == Phase::Idle => return Ok(()),
                        Waited::Stopping => {}
                        Waited::Gone(None) => return Err(Ended::Gone),
                        Waited::Gone(Some(e)) => return Err(Ended::Failed(e)),
                    }
                }
            }
        };
        if conn.expired() {
            // Its caller gave up before we took it: no need to claim it, nothing of it runs.
            conn.refuse_expired();
            context.shared.expired.fetch_add(1, Ordering::Relaxed);
        } else if !conn.claim().map_err(Ended::Corrupted)? {
            // Its caller withdrew it: nothing of it runs, nothing answers. A client that kept
            // the connection may be waiting for the room its request held: wake it.
            conn.phase = Phase::Idle;
            context.shared.expired.fetch_add(1, Ordering::Relaxed);
            conn.nudge_client().map_err(Ended::Corrupted)?;
            continue;
        } else {
            // Claimed (see `rpc::claim`): ours to run.
            context.shared.calls.count_async();
            conn.registration.entry.count_call();
            if stream {
                conn.answer_no_streams();
            } else {
                let call = CallContext {
                    pid: conn.client_pid,
                    uid: conn._slot.uid,
                    connection: conn.id,
                    deadline_ns: conn.deadline,
                };
                let request = std::mem::take(&mut conn.request);
                let started = clock::monotonic_ns();
                let outcome = run_handler(&context.handler, call, request).await;
                if let Some(times) = context.shared.handler_times.first() {
                    times.record(clock::monotonic_ns().saturating_sub(started));
                }
                if conn.answer(outcome) {
                    context.shared.failed.fetch_add(1, Ordering::Relaxed);
                }
                tracing::trace!(parent: &conn.registration.span, call = conn.call, "answered a call");
            }
        }
        // The reply, as the client makes room for it.
        loop {
            let mut budget = Budget::new();
            conn.push_reply(&mut budget).map_err(Ended::Corrupted)?;
            if conn.phase != Phase::Replying {
                break;
            }
            if conn.has_work().map_err(Ended::Corrupted)? {
                tokio::task::yield_now().await;
                continue;
            }
            match park(conn, wake, &context.name, stop).await {
                Waited::Ready | Waited::Stopping => {}
                Waited::Gone(None) => return Err(Ended::Gone),
                Waited::Gone(Some(e)) => return Err(Ended::Failed(e)),
            }
        }
    }
}

/// Runs the handler on one request, a panic caught as the blocking worker catches one.
async fn run_handler<C: AsyncCallHandler>(
    handler: &C,
    call: CallContext,
    request: Vec<u8>,
) -> Option<Result<Vec<u8>, HandlerError>> {
    let mut future = std::pin::pin!(handler.handle_call(call, request));
    std::future::poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(outcome)) => Poll::Ready(Some(outcome)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(None),
        },
    )
    .await
}

/// Parks as the server side of `conn` until it has work, the client goes away, or (while the
/// server runs) shutdown starts.
async fn park(
    conn: &mut Connection,
    wake: &mut AsyncWake,
    name: &str,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Waited {
    let stopping = *stop.borrow();
    let map = conn.map.clone();
    let waited = {
        let mut parked =
            std::pin::pin!(
                wake.wait(name, &map, SERVER, AsyncPatience::default(), None, || {
                    conn.has_work()
                })
            );
        let mut stopped = std::pin::pin!(stop.changed());
        std::future::poll_fn(|cx| {
            if let Poll::Ready(waited) = parked.as_mut().poll(cx) {
                return Poll::Ready(Some(waited));
            }
            if !stopping && stopped.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    };
    match waited {
        None => Waited::Stopping,
        Some(Ok(Parked::Ready | Parked::TimedOut)) => Waited::Ready,
        Some(Ok(Parked::HungUp)) => Waited::Gone(None),
        Some(Err(e)) => Waited::Gone(Some(e)),
    }
}

impl Connection {
    /// Takes up to `budget` records of the next request (the whole-record shortcut, else
    /// through `take_request_record`, as the blocking worker's `pump` does): `Some(stream)` once
    /// it is whole, `None` while more is to come.
    fn take_request(&mut self, budget: usize) -> Result<Option<bool>, RingError> {
        for _ in 0..budget {
            // The whole-record shortcut first, as the blocking worker's `pump` takes it.
            match self.take_whole_request()? {
                WholeRequest::Taken(_) => {
                    self.active = true;
                    return Ok(Some(false));
                }
                WholeRequest::Empty => return Ok(None),
                WholeRequest::Other => {}
            }
            let Some(header) = self.requests.peek()? else {
                return Ok(None);
            };
            match self.take_request_record(&header)? {
                RequestRecord::Cancel => continue,
                RequestRecord::Part => {
                    self.active = true;
                    // The client may be waiting for the room we just freed.
                    self.nudge_client()?;
                }
                RequestRecord::Whole => {
                    self.active = true;
                    return Ok(Some(self.stream_request));
                }
            }
        }
        Ok(None)
    }

    /// Answers a stream request: this server serves none.
    fn answer_no_streams(&mut self) {
        self.reply.clear();
        self.reply.extend_from_slice(&ERR_NO_STREAMS.to_le_bytes());
        self.reply_flags = ERROR_REPLY;
        self.reply_sent = 0;
        self.phase = Phase::Replying;
    }

    /// Puts the handler's outcome (`None`: it panicked) in `reply`, as `respond` does; whether
    /// the handler failed, refused or panicked.
    fn answer(&mut self, outcome: Option<Result<Vec<u8>, HandlerError>>) -> bool {
        self.reply_flags = 0;
        let failed = !matches!(outcome, Some(Ok(_)));
        match outcome {
            None => {
                self.reply.clear();
                self.reply
                    .extend_from_slice(&ERR_HANDLER_PANICKED.to_le_bytes());
                self.reply_flags = ERROR_REPLY;
            }
            Some(Err(error)) => self.report_failure(&error),
            Some(Ok(reply)) => self.reply = reply,
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
        self.phase = Phase::Replying;
        failed
    }
}
