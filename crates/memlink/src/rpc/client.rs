//! The calling side: [`Client`] and its per-thread connections.
//!
//! A `Client` owns a small pool of *connections* to the server, each with its own shared region,
//! rings and wake pipes. A call borrows a free connection (one compare-and-swap, given back with
//! a plain store: `platform::exclusive`), so threads calling through one client at once never
//! share a ring and each gets its own reply. A connection that failed (server gone, timeout,
//! corruption) is dropped; the next call opens a fresh one, which is how a `Client`
//! transparently reconnects to a restarted server.
//! The connection machinery itself (region validation, parking, hang-ups) is `link`'s.

use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[cfg(feature = "tokio")]
mod asynchronous;
#[cfg(feature = "tokio")]
pub use asynchronous::{AsyncClient, AsyncReplyStream};

use super::claim;
use super::launch::{self, LaunchHooks, ServerCommand};
use super::protocol::{
    Admission, CANCEL, ERR_CALL_FAILED, ERR_DEADLINE_EXPIRED, ERR_HANDLER_FAILED,
    ERR_HANDLER_PANICKED, ERR_NO_STREAMS, ERR_REFUSED, ERR_REPLY_TOO_LARGE, ERR_TOO_MANY_STREAMS,
    ERR_UNDECODABLE, ERROR_REPLY, Hello, Purpose, STREAM_END, STREAM_ITEM, STREAM_REQUEST,
    report_text, socket_name,
};
use super::stream::{Verdict, judge};
use crate::error::{Error, NotExecuted, Payload, Result};
use crate::link::fragment::{Reassembly, fragment_at, fragment_lens};
use crate::link::wake::{self, Backoff, Patience, RPC_CLIENT, SERVER};
use crate::link::{self, Keep, Parked};
use crate::memory::name::validate_name;
use crate::memory::ring::{
    Consumer, FIRST, LAST, Producer, RECORD_HEADER_LEN, RecordHeader, RingError, USER_FLAGS, Whole,
};
use crate::platform::barrier;
use crate::platform::exclusive::{Exclusive, Held};
use crate::platform::mapping::Mapping;
#[cfg(feature = "fault-injection")]
use crate::platform::notify;
use crate::platform::{clock, process};

const DEFAULT_CONNECTIONS: usize = 8;
/// Most reply bytes reserved before they arrive.
const MAX_UPFRONT_RESERVE: usize = 16 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connect waits for a server it starts on demand, by default.
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Looks at the ring before a wait decides how to wait (see `Connection::wait`).
pub(crate) const FIRST_LOOKS: u32 = 32;
/// Longest a waiting call spins (when the server runs on another CPU).
pub(crate) const MAX_SPIN: Duration = Duration::from_micros(50);
/// Longest a waiting call stays runnable (spinning, then yielding) before it parks.
pub(crate) const MAX_PATIENCE: Duration = Duration::from_micros(150);
/// How long a waiter yields before parking while the server is crowded: about one turn of a
/// worker serving a hundred clients.
const CROWDED_PATIENCE: Duration = Duration::from_micros(500);
/// Waits averaging longer than this (a slow handler, an overloaded server) are not worth staying
/// runnable for: the waiter parks at once and leaves the CPU to the server.
const WORTH_STAYING_RUNNABLE: Duration = Duration::from_micros(500);
/// While parking at once, one wait in this many is patient anyway, to notice when waits are short
/// again.
const PROBE_EVERY: u32 = 16;

/// How to connect. `ClientOptions::new()` gives the defaults.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    connections: usize,
    trusted_server_uid: Option<u32>,
    max_reply_size: Option<usize>,
    /// How far typed replies are trusted.
    #[cfg(feature = "serde")]
    decode_limits: super::bounded::DecodeLimits,
    /// The timeout of calls that do not name one.
    call_timeout: Option<Duration>,
    /// What to run if no server runs under the name.
    start_server: Option<Arc<ServerCommand>>,
    start_timeout: Duration,
    launch_hooks: LaunchHooks,
    /// Fault injection: how long a call waits between sending its request and reading the reply.
    pause_before_receive: Duration,
    /// Fault injection: the deadline every call sends, from when it is sent, whatever it waits.
    sent_deadline: Option<Duration>,
    /// Fault injection: how long a call waits for its reply before it takes the connection for
    /// dead.
    presume_gone_after: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connections: DEFAULT_CONNECTIONS,
            trusted_server_uid: None,
            max_reply_size: None,
            #[cfg(feature = "serde")]
            decode_limits: super::bounded::DecodeLimits::new(),
            call_timeout: None,
            start_server: None,
            start_timeout: DEFAULT_START_TIMEOUT,
            launch_hooks: LaunchHooks::default(),
            pause_before_receive: Duration::ZERO,
            sent_deadline: None,
            presume_gone_after: None,
        }
    }
}

impl ClientOptions {
    /// Defaults: up to 8 concurrent calls, trust only servers run by our own user (or root).
    pub fn new() -> Self {
        Self::default()
    }

    /// How many calls may be in flight at once through one client (one connection each; further
    /// callers wait for a free one). At least 1.
    pub fn max_concurrent_calls(mut self, n: usize) -> Self {
        self.connections = n.max(1);
        self
    }

    /// Also accept a server run by user `uid` (by default only our own user and root are trusted,
    /// so another user cannot impersonate a service by binding its name first).
    pub fn trust_server_uid(mut self, uid: u32) -> Self {
        self.trusted_server_uid = Some(uid);
        self
    }

    /// Largest reply this client accepts, whatever the server allows (by default the server's
    /// maximum message size, 64 MiB unless configured). A larger reply fails its call with
    /// [`Error::ReplyTooLarge`] before more than a fragment of it is read; the call did run on
    /// the server, and the next call uses a fresh connection.
    pub fn max_reply_size(mut self, bytes: usize) -> Self {
        self.max_reply_size = Some(bytes);
        self
    }

    /// The bounds under which [`Client::call_typed`] decodes the server's replies (feature
    /// `serde`; by default [`DecodeLimits::new()`](crate::rpc::DecodeLimits::new)): a reply
    /// beyond them is [`Error::Undecodable`] (the handler ran). A typed reply can take far more
    /// memory decoded than sent; see [`typed`](crate::rpc::typed).
    #[cfg(feature = "serde")]
    pub fn decode_limits(mut self, limits: crate::rpc::DecodeLimits) -> Self {
        self.decode_limits = limits;
        self
    }

    /// The timeout of every call that does not name one ([`Client::call`],
    /// [`Client::call_into`], [`Client::try_call`], `call_typed`, and the sending of
    /// [`Client::call_stream`]'s request); by default calls wait as long as it takes. The
    /// timeout travels with the request (as an absolute `CLOCK_MONOTONIC` deadline; not to a
    /// server in another time namespace, whose clock differs), so a server that takes the
    /// request only after the caller gave up skips it instead of running it for nobody, and the
    /// handler sees it ([`CallContext::deadline`](crate::rpc::CallContext::deadline)). A call
    /// that runs out of time fails with [`Error::NotExecuted`] if it could withdraw its request
    /// before the server claimed it (it never runs; see the `rpc` module's "Did my call
    /// run?"), else with [`Error::Timeout`] (the handler may have run).
    ///
    /// Costs one clock read per call (none without a timeout).
    ///
    /// # Examples
    /// ```no_run
    /// # fn main() -> memlink::Result<()> {
    /// use std::time::Duration;
    /// use memlink::{ClientOptions, Error, NotExecuted};
    ///
    /// let client = ClientOptions::new()
    ///     .call_timeout(Duration::from_millis(200))
    ///     .connect("pricer")?;
    /// match client.call(b"quote EURUSD") {
    ///     Ok(quote) => println!("{quote:?}"),
    ///     Err(Error::NotExecuted { reason: NotExecuted::TimedOut, .. }) => {
    ///         // The server never took it, and never will: safe to ask again elsewhere.
    ///     }
    ///     Err(Error::Timeout) => { /* it may have run: the quote may have been issued */ }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = Some(timeout);
        self
    }

    /// Starts the server with `command` whenever no server runs under the name: when
    /// connecting, and when a call reconnects after the server went away. However many clients
    /// (threads or processes) find no server at the same instant, exactly one of them runs
    /// `command`; the others wait for the server it starts. The client then connects as usual
    /// once the server serves the name.
    ///
    /// The server is given [`ClientOptions::start_timeout`] (10 s by default) to serve the
    /// name, or the timeout of the connect or call that starts it
    /// ([`ClientOptions::connect_timeout`], [`Client::call_timeout`]) if that is longer. A
    /// server that has not served the name by then is killed (with its process group), so
    /// that it cannot come up later beside the one the next client starts. A connect or call
    /// whose own timeout is shorter returns [`Error::Timeout`] when it runs out, while a
    /// thread of this process (`memlink-launcher`) goes on watching the server it started,
    /// holding the start lock, until it serves or its start timeout passes: a later call
    /// finds it serving. A connect or call that waits for a server another client is
    /// starting likewise returns [`Error::Timeout`] at its own deadline.
    ///
    /// The server outlives the client: it runs in a session of its own, in `/`, with no
    /// standard input or output, its standard error captured (see [`ServerCommand`] for why and
    /// where), and it should stop by itself when unused
    /// ([`ServerOptions::exit_when_idle`](crate::ServerOptions::exit_when_idle)). A client that
    /// started it reaps it when it exits, from a thread of its own.
    ///
    /// Starting is serialised by a lock named after the service, the abstract socket
    /// `@memlink.up.NAME`, which the server started inherits and closes once it has bound the
    /// name ([`Server::bind`](crate::Server::bind); see `rpc::launch`, and the variables
    /// `MEMLINK_START_LOCK_FD` and `MEMLINK_START_LOCK_INODE` it finds in its environment). A
    /// process of another user holding it (a user not trusted as a server, see
    /// [`ClientOptions::trust_server_uid`]; the kernel says who, Linux 5.3+) makes the connect
    /// fail with [`Error::StartLockHeld`] at once rather than wait. Service names are shared by every user of the
    /// machine, so a name for a per-user server started on demand should include the uid.
    ///
    /// # Errors
    /// Besides those of [`Client::connect`]: [`Error::ServerSpawnFailed`] (the command could
    /// not be run), [`Error::ServerFailedToStart`] (it exited with a failure before serving:
    /// its exit status and the end of its standard error), [`Error::ServerExitUnobserved`]
    /// (it exited, but this process ignores `SIGCHLD`), [`Error::ServerStartTimedOut`],
    /// [`Error::StartLockHeld`], [`Error::Timeout`] (the caller's own timeout ran out first),
    /// [`Error::InvalidOptions`] (a refused [`ServerCommand::stderr_file`]).
    ///
    /// # Examples
    /// ```no_run
    /// # fn main() -> memlink::Result<()> {
    /// use memlink::{ClientOptions, ServerCommand};
    ///
    /// let uid = std::fs::metadata("/proc/self")
    ///     .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
    ///     .unwrap_or(0);
    /// let name = format!("indexer.{uid}");
    /// let client = ClientOptions::new()
    ///     .start_server(ServerCommand::new("/usr/libexec/indexer").args(["--serve", &name]))
    ///     .connect(&name)?;
    /// let reply = client.call(b"status")?;
    /// # Ok(()) }
    /// ```
    pub fn start_server(mut self, command: ServerCommand) -> Self {
        self.start_server = Some(Arc::new(command));
        self
    }

    /// How long a server started on demand is given to serve the name (at least: a connect
    /// or call with a longer timeout of its own gives it that), and how long a connect (or a
    /// reconnect in a call without a timeout of its own) waits for it, whether this client or
    /// another one started it. Default 10 s. See [`ClientOptions::start_server`].
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Fault injection for tests: a client that takes the start lock to start a server on
    /// demand sleeps for `pause` before anything else (so that a test can kill it holding the
    /// lock). Exists only with the `fault-injection` feature.
    #[doc(hidden)]
    #[cfg(feature = "fault-injection")]
    pub fn __pause_holding_start_lock(mut self, pause: Duration) -> Self {
        self.launch_hooks.pause_holding_lock = pause;
        self
    }

    /// Fault injection for tests: a client that starts a server on demand sleeps for `pause`
    /// right after starting it (so that a test can kill it before the server serves). Exists
    /// only with the `fault-injection` feature.
    #[doc(hidden)]
    #[cfg(feature = "fault-injection")]
    pub fn __pause_after_server_spawn(mut self, pause: Duration) -> Self {
        self.launch_hooks.pause_after_spawn = pause;
        self
    }

    /// Fault injection for tests: a client that found no server runs `hook` once before it
    /// first tries to take the start lock (so that a test can have another client start the
    /// server in between). Exists only with the `fault-injection` feature.
    #[doc(hidden)]
    #[cfg(feature = "fault-injection")]
    pub fn __before_start_lock(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.launch_hooks.before_lock = Some(Arc::new(hook));
        self
    }

    /// Fault injection for tests: every call (and stream) sleeps for `pause` between sending its
    /// request and reading its reply, so that the server is surely waiting (parked) when the reading starts.
    /// Exists only with the `fault-injection` feature.
    #[doc(hidden)]
    #[cfg(feature = "fault-injection")]
    pub fn __pause_before_receive(mut self, pause: Duration) -> Self {
        self.pause_before_receive = pause;
        self
    }

    /// Fault injection for tests: every call tells the server it gives up `after` its request
    /// is sent, whatever it actually waits (so that a test sees the server skip an expired
    /// request and say so). Exists only with the `fault-injection` feature.
    #[doc(hidden)]
    #[cfg(feature = "fault-injection")]
    pub fn __sent_deadline(mut self, after: Duration) -> Self {
        self.sent_deadline = Some(after);
        self
    }

    /// Fault injection for tests: a call that has waited `after` for its reply takes its
    /// connection for dead, as if the socket had hung up, although the server lives (as a
    /// transient socket error once made a client believe). Exists only with the
    /// `fault-injection` feature.
    #[doc(hidden)]
    #[cfg(feature = "fault-injection")]
    pub fn __presume_gone_after(mut self, after: Duration) -> Self {
        self.presume_gone_after = Some(after);
        self
    }

    /// Connects to the server named `name`.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub fn connect(&self, name: &str) -> Result<Client> {
        Client::new(name, self.clone(), None)
    }

    /// Connects, waiting up to `timeout` for the server to appear.
    ///
    /// # Errors
    /// As [`Client::connect_timeout`].
    pub fn connect_timeout(&self, name: &str, timeout: Duration) -> Result<Client> {
        Client::new(name, self.clone(), Instant::now().checked_add(timeout))
    }
}

/// A connection to a memlink server. `Send + Sync`: share it (e.g. in an `Arc`) and call from
/// several threads at once; each call gets its own reply.
///
/// # Examples
/// ```no_run
/// # fn main() -> memlink::Result<()> {
/// let client = memlink::Client::connect("echo")?;
/// let reply = client.call(b"hello")?;
/// let mut buf = Vec::new();
/// client.call_into(b"again", &mut buf)?; // reuses `buf`: no allocation per call
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Client {
    /// Unique in this process: which client a thread's held streams belong to.
    id: u64,
    name: String,
    options: ClientOptions,
    connections: Box<[Exclusive<Option<Connection>>]>,
    /// Bumped by the first call that finds the server gone, so that idle connections to the dead
    /// server are dropped before use instead of each failing once.
    epoch: AtomicU64,
    max_message: AtomicU64,
    /// Callers sleeping until a connection frees up (more concurrent calls than connections).
    waiting: AtomicUsize,
    wait_lock: Mutex<()>,
    connection_freed: Condvar,
}

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Open streams this thread holds, per client id (a [`ReplyStream`] holds a connection slot,
    /// and is not `Send`, so it never leaves the thread that opened it). Few entries: a thread
    /// holds few streams.
    static HELD_STREAMS: std::cell::RefCell<Vec<(u64, usize)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Open streams of client `id` this thread holds.
fn held_streams(id: u64) -> usize {
    HELD_STREAMS.with(|held| {
        held.borrow()
            .iter()
            .find(|(client, _)| *client == id)
            .map_or(0, |(_, n)| *n)
    })
}

/// Counts one more (`up`) or one fewer open stream of client `id` held by this thread.
fn count_held_stream(id: u64, up: bool) {
    HELD_STREAMS.with(|held| {
        let mut held = held.borrow_mut();
        match held.iter().position(|(client, _)| *client == id) {
            Some(at) if up => held[at].1 += 1,
            Some(at) => {
                held[at].1 = held[at].1.saturating_sub(1);
                if held[at].1 == 0 {
                    held.swap_remove(at);
                }
            }
            None if up => held.push((id, 1)),
            None => {}
        }
    });
}

/// A connection slot held by one call. Fields drop in declaration order: the slot is given back
/// first, then `_wake` wakes a caller waiting for a connection, if there is one. Dropped by a
/// panic that began while it was held, it drops its connection first (the call left it in an
/// unknown state).
struct ConnectionGuard<'a> {
    slot: Held<'a, Option<Connection>>,
    _wake: WakeWaiter<'a>,
    /// Whether the thread was already unwinding when it took the slot (a call made from a
    /// destructor during a panic): only a panic that begins while the slot is held drops the
    /// connection.
    taken_while_panicking: bool,
    /// Not `Send`: a slot stays with the thread that took it, which `held_streams` counts on
    /// (a `ReplyStream` moved to another thread would leave its count behind).
    _thread_bound: PhantomData<std::sync::MutexGuard<'static, ()>>,
}

impl<'a> ConnectionGuard<'a> {
    fn new(client: &'a Client, slot: Held<'a, Option<Connection>>) -> Self {
        ConnectionGuard {
            slot,
            _wake: WakeWaiter(client),
            taken_while_panicking: std::thread::panicking(),
            _thread_bound: PhantomData,
        }
    }
}

impl Drop for ConnectionGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        if std::thread::panicking() && !self.taken_while_panicking {
            *self.slot = None;
        }
    }
}

impl std::ops::Deref for ConnectionGuard<'_> {
    type Target = Option<Connection>;
    fn deref(&self) -> &Option<Connection> {
        &self.slot
    }
}

impl std::ops::DerefMut for ConnectionGuard<'_> {
    fn deref_mut(&mut self) -> &mut Option<Connection> {
        &mut self.slot
    }
}

struct WakeWaiter<'a>(&'a Client);

impl Drop for WakeWaiter<'_> {
    #[inline]
    fn drop(&mut self) {
        let client = self.0;
        // SYNC POINT: after the light barrier of the slot's release (`platform::exclusive`),
        // pairs with the heavy barrier after the waiter's increment, before its last look at the
        // slots: either it saw our slot free, or we see it waiting and wake it.
        if client.waiting.load(Ordering::SeqCst) > 0 {
            client.wake_a_waiter();
        }
    }
}

impl Client {
    /// Connects to the server named `name`.
    ///
    /// # Errors
    /// [`Error::NotRunning`] at once if no server has the name; [`Error::PermissionDenied`] if the
    /// server refuses our user or is run by an untrusted user; [`Error::ServerFull`];
    /// [`Error::InvalidName`]. With [`ClientOptions::start_server`], also the errors of
    /// starting a server listed there.
    pub fn connect(name: &str) -> Result<Client> {
        ClientOptions::new().connect(name)
    }

    /// Like [`Client::connect`], but waits up to `timeout` for a server to appear, returning as
    /// soon as it does.
    ///
    /// # Errors
    /// [`Error::Timeout`] if no server appeared in time; otherwise as [`Client::connect`].
    pub fn connect_timeout(name: &str, timeout: Duration) -> Result<Client> {
        ClientOptions::new().connect_timeout(name, timeout)
    }

    /// Options for connecting with non-default settings.
    pub fn options() -> ClientOptions {
        ClientOptions::new()
    }

    fn new(name: &str, options: ClientOptions, wait_until: Option<Instant>) -> Result<Client> {
        validate_name(name)?;
        let connections = (0..options.connections)
            .map(|_| Exclusive::new(None))
            .collect();
        let mut client = Client {
            id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.to_owned(),
            options,
            connections,
            epoch: AtomicU64::new(0),
            max_message: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            wait_lock: Mutex::new(()),
            connection_freed: Condvar::new(),
        };
        let first = loop {
            match open_connection(&client.name, &client.options, 0, wait_until) {
                Err(Error::NotRunning { .. }) if wait_until.is_some_and(|t| Instant::now() < t) => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(Error::NotRunning { .. }) if wait_until.is_some() => {
                    return Err(Error::Timeout);
                }
                other => break other?,
            }
        };
        client
            .max_message
            .store(first.max_message as u64, Ordering::Relaxed);
        if let Some(slot) = client.connections.first_mut() {
            *slot = Exclusive::new(Some(first));
        }
        Ok(client)
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Largest request (and reply) the server accepts, in bytes, as of the last connection.
    pub fn max_message_size(&self) -> usize {
        self.max_message.load(Ordering::Relaxed) as usize
    }

    /// Sends `request` and returns the server's reply, waiting at most the client's default
    /// timeout ([`ClientOptions::call_timeout`]) if it has one.
    ///
    /// # Errors
    /// Whether the handler ran is part of every error (see the `rpc` module's "Did my call
    /// run?"):
    /// - it did not run: [`Error::NotExecuted`] (the server went away, or the timeout ran out,
    ///   before it took the request; calling again is safe), [`Error::MessageTooLarge`] (the
    ///   request; nothing sent), [`Error::NotRunning`], [`Error::ServerFull`],
    ///   [`Error::PermissionDenied`] (reconnecting was refused);
    /// - it ran: [`Error::HandlerFailed`] and [`Error::CallRefused`] (the handler said so),
    ///   [`Error::HandlerPanicked`], [`Error::ReplyTooLarge`];
    /// - it may have run: [`Error::Disconnected`] (the server went away after taking the
    ///   request), [`Error::Timeout`], [`Error::Corrupted`] (the server broke the protocol).
    ///
    /// After any of them the client stays usable: a broken connection is replaced on the next
    /// call.
    pub fn call(&self, request: &[u8]) -> Result<Vec<u8>> {
        let mut reply = Vec::new();
        self.call_into(request, &mut reply)?;
        Ok(reply)
    }

    /// Like [`Client::call`], giving up after `timeout` (instead of the default timeout). The
    /// deadline travels with the request: a server that takes it only after the deadline skips
    /// it, and the handler sees it ([`CallContext::deadline`](crate::rpc::CallContext::deadline)).
    ///
    /// # Errors
    /// Out of time: [`Error::NotExecuted`] ([`NotExecuted::TimedOut`]) if the server had not
    /// taken the request (it never will), else [`Error::Timeout`] (the handler may have run).
    /// Otherwise as [`Client::call`].
    ///
    /// # Examples
    /// ```no_run
    /// # fn main() -> memlink::Result<()> {
    /// use std::time::Duration;
    ///
    /// let client = memlink::Client::connect("echo")?;
    /// let reply = client.call_timeout(b"hello", Duration::from_millis(100))?;
    /// # Ok(()) }
    /// ```
    pub fn call_timeout(&self, request: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let mut reply = Vec::new();
        self.call_into_timeout(request, &mut reply, timeout)?;
        Ok(reply)
    }

    /// Sends `request` and writes the reply into `reply` (cleared first). With a reused `reply`
    /// buffer the call allocates nothing.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn call_into(&self, request: &[u8], reply: &mut Vec<u8>) -> Result<()> {
        if self.options.call_timeout.is_none() {
            if let Some(slot) = self.try_take_connection() {
                return self.call_on(ConnectionGuard::new(self, slot), request, reply);
            }
        }
        self.call_until(request, reply, self.default_deadline(), Mode::Wait)
    }

    /// [`Client::call_into`] without a timeout on the connection `slot` holds: straight to
    /// [`Connection::quick_call`] when the connection is open and current and the request is
    /// one record (the common case, kept short: every instruction here is on the round trip),
    /// else as any call.
    #[inline]
    fn call_on(
        &self,
        mut slot: ConnectionGuard<'_>,
        request: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<()> {
        if let Some(connection) = slot.as_mut()
            && connection.epoch == self.epoch.load(Ordering::Acquire)
            && connection.quick_call_fits(request.len())
        {
            let call = connection.last_call + 1;
            let failure = match connection.quick_call(call, request, 0, reply, None) {
                Ok(()) => return Ok(()),
                Err(failure) => failure,
            };
            let mut retried = false;
            return match self.settle(&mut slot, failure, &mut retried) {
                Some(result) => result,
                None => self.keep_trying(&mut slot, retried, None, |connection| {
                    connection.call(request, reply, None, Mode::Wait)
                }),
            };
        }
        self.on_connection(&mut slot, request, None, |connection| {
            connection.call(request, reply, None, Mode::Wait)
        })
    }

    /// Like [`Client::call`], but never waits for a free connection or for room in the request
    /// ring: if every connection is busy with other calls, or the whole request does not fit in
    /// the ring right now (the server has not yet taken earlier requests), it fails at once with
    /// [`Error::Full`] and nothing is sent (the call did not run). Once the request is in the
    /// ring it waits for the reply like [`Client::call`] (up to the default timeout, if set). A
    /// client with no open connection (the first call after a failure) connects first.
    ///
    /// # Errors
    /// [`Error::Full`]; [`Error::MessageTooLarge`] for a request larger than half the
    /// server's ring capacity (`ServerOptions::ring_capacity`, 128 KiB by default), which could
    /// never be sure to fit: send it with [`Client::call`]; otherwise as [`Client::call`].
    ///
    /// # Examples
    /// ```no_run
    /// # fn main() -> memlink::Result<()> {
    /// let client = memlink::Client::connect("telemetry")?;
    /// match client.try_call(b"sample 17") {
    ///     Ok(ack) => {}
    ///     Err(memlink::Error::Full) => { /* the server is behind: drop this sample */ }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn try_call(&self, request: &[u8]) -> Result<Vec<u8>> {
        let mut reply = Vec::new();
        self.try_call_into(request, &mut reply)?;
        Ok(reply)
    }

    /// [`Client::try_call`] writing the reply into `reply` (cleared first); no allocation per
    /// call with a reused buffer.
    ///
    /// # Errors
    /// As [`Client::try_call`].
    pub fn try_call_into(&self, request: &[u8], reply: &mut Vec<u8>) -> Result<()> {
        let deadline = self.default_deadline();
        let Some(slot) = self.try_take_connection() else {
            return Err(Error::Full);
        };
        let mut slot = ConnectionGuard::new(self, slot);
        self.on_connection(&mut slot, request, deadline, |connection| {
            connection.call(request, reply, deadline, Mode::Try)
        })
    }

    /// Calls with a typed request and reply (feature `serde`), encoded with postcard: the server
    /// side is a [`typed`](crate::rpc::typed) handler. Waits up to the default timeout
    /// ([`ClientOptions::call_timeout`]), if set.
    ///
    /// # Errors
    /// [`Error::Unencodable`] (nothing sent), [`Error::Undecodable`] (the server could not
    /// decode the request, so its handler did not run; or the reply does not decode as a
    /// `Resp`, after the handler ran). Both sides decode under bounds, the
    /// [`DecodeLimits`](crate::rpc::DecodeLimits) that [`typed`](crate::rpc::typed) describes
    /// (here those of [`ClientOptions::decode_limits`]), so a hostile server's reply can
    /// neither overflow this thread's stack nor make it allocate without bound.
    /// Otherwise as [`Client::call`].
    ///
    /// # Examples
    /// ```no_run
    /// # fn main() -> memlink::Result<()> {
    /// let client = memlink::Client::connect("adder")?;
    /// let sum: i64 = client.call_typed(&(2i64, 40i64))?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "serde")]
    pub fn call_typed<Req, Resp>(&self, request: &Req) -> Result<Resp>
    where
        Req: serde::Serialize + ?Sized,
        Resp: serde::de::DeserializeOwned,
    {
        self.call_typed_until(request, self.default_deadline())
    }

    /// [`Client::call_typed`], giving up after `timeout`.
    ///
    /// # Errors
    /// As [`Client::call_typed`] and [`Client::call_timeout`].
    #[cfg(feature = "serde")]
    pub fn call_typed_timeout<Req, Resp>(&self, request: &Req, timeout: Duration) -> Result<Resp>
    where
        Req: serde::Serialize + ?Sized,
        Resp: serde::de::DeserializeOwned,
    {
        self.call_typed_until(request, Instant::now().checked_add(timeout))
    }

    #[cfg(feature = "serde")]
    fn call_typed_until<Req, Resp>(&self, request: &Req, deadline: Option<Instant>) -> Result<Resp>
    where
        Req: serde::Serialize + ?Sized,
        Resp: serde::de::DeserializeOwned,
    {
        let request = postcard::to_allocvec(request).map_err(|e| Error::Unencodable {
            name: self.name.clone(),
            reason: e.to_string().into(),
        })?;
        let mut reply = Vec::new();
        self.call_until(&request, &mut reply, deadline, Mode::Wait)?;
        // The reply is the server's bytes: decoded under bounds (see `bounded`).
        super::bounded::decode_with(&reply, &self.options.decode_limits).map_err(|reason| {
            Error::Undecodable {
                name: self.name.clone(),
                what: Payload::Reply,
                reason: reason.into(),
            }
        })
    }

    /// When a call started now that names no timeout gives up.
    fn default_deadline(&self) -> Option<Instant> {
        // No clock read unless a timeout is set.
        self.options
            .call_timeout
            .and_then(|timeout| Instant::now().checked_add(timeout))
    }

    /// `error` from before a call's request was sent, as the call reports it: a timeout or a
    /// lost server there means the call did not run.
    fn unsent(&self, error: Error) -> Error {
        match error {
            Error::Timeout => self.not_executed(NotExecuted::TimedOut),
            Error::Disconnected { .. } => self.not_executed(NotExecuted::ServerGone),
            error => error,
        }
    }

    fn not_executed(&self, reason: NotExecuted) -> Error {
        Error::NotExecuted {
            name: self.name.clone(),
            reason,
        }
    }

    /// Like [`Client::call_into`], giving up after `timeout` (see [`Client::call_timeout`]).
    ///
    /// # Errors
    /// As [`Client::call_timeout`].
    pub fn call_into_timeout(
        &self,
        request: &[u8],
        reply: &mut Vec<u8>,
        timeout: Duration,
    ) -> Result<()> {
        self.call_until(
            request,
            reply,
            Instant::now().checked_add(timeout),
            Mode::Wait,
        )
    }

    fn call_until(
        &self,
        request: &[u8],
        reply: &mut Vec<u8>,
        deadline: Option<Instant>,
        mode: Mode,
    ) -> Result<()> {
        let mut slot = self.free_connection(deadline).map_err(|e| self.unsent(e))?;
        self.on_connection(&mut slot, request, deadline, |connection| {
            connection.call(request, reply, deadline, mode)
        })
    }

    /// Runs `op` (which sends `request`) on the connection in `slot`, opening one if needed,
    /// dropping it if `op` breaks it, and running `op` once more on a fresh connection if the
    /// server went away without having taken the request (see [`Failure::Broken`]). Failures
    /// of calls the server never took are [`Error::NotExecuted`].
    fn on_connection(
        &self,
        slot: &mut ConnectionGuard<'_>,
        request: &[u8],
        deadline: Option<Instant>,
        op: impl FnMut(&mut Connection) -> Result<(), Failure>,
    ) -> Result<()> {
        let max = self.max_message_size();
        if request.len() > max {
            return Err(Error::MessageTooLarge {
                size: request.len(),
                max,
            });
        }
        self.keep_trying(slot, false, deadline, op)
    }

    /// The loop of [`Client::on_connection`]; `retried` says whether the call was already sent
    /// once on a connection that went away without taking it.
    fn keep_trying(
        &self,
        slot: &mut ConnectionGuard<'_>,
        mut retried: bool,
        deadline: Option<Instant>,
        mut op: impl FnMut(&mut Connection) -> Result<(), Failure>,
    ) -> Result<()> {
        loop {
            let epoch = self.epoch.load(Ordering::Acquire);
            if slot.as_ref().is_some_and(|c| c.epoch != epoch) {
                **slot = None;
            }
            let connection = match slot.as_mut() {
                Some(connection) => connection,
                None => match open_connection(&self.name, &self.options, epoch, deadline) {
                    Ok(connection) => {
                        self.max_message
                            .store(connection.max_message as u64, Ordering::Relaxed);
                        slot.insert(connection)
                    }
                    // A retry of a provably unsent call found no server: report the original loss.
                    Err(Error::NotRunning { .. }) if retried => {
                        return Err(self.not_executed(NotExecuted::ServerGone));
                    }
                    Err(e) => return Err(self.unsent(e)),
                },
            };
            match op(connection) {
                Ok(()) => return Ok(()),
                Err(failure) => {
                    if let Some(result) = self.settle(slot, failure, &mut retried) {
                        return result;
                    }
                }
            }
        }
    }

    /// What a call's `failure` on the connection in `slot` comes to: its result, or `None` if
    /// the call is to be sent again on a fresh connection (the connection went away without
    /// taking it, and it was not `retried` already: now it is).
    #[cold]
    fn settle(
        &self,
        slot: &mut ConnectionGuard<'_>,
        failure: Failure,
        retried: &mut bool,
    ) -> Option<Result<()>> {
        match failure {
            Failure::Kept(e) => Some(Err(e)),
            Failure::Broken { error, taken } => {
                if let Some(connection) = slot.take() {
                    if let Error::Disconnected { .. } = error {
                        self.note_disconnected(connection.epoch);
                    }
                }
                if taken {
                    return Some(Err(error));
                }
                match error {
                    // The server never took this request, and the connection it was written
                    // to is gone, so sending it again on a fresh connection cannot execute
                    // it twice. Once: a server that keeps vanishing is reported.
                    Error::Disconnected { .. } if !*retried => {
                        *retried = true;
                        None
                    }
                    error => Some(Err(self.unsent(error))),
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

    /// Sends `request` as a stream request and returns the stream of items the server's stream
    /// handler answers with. The stream holds one of the client's connections until it ends or
    /// is dropped; dropping it early cancels the stream on the server (the connection is then
    /// used for later calls, which never see the cancelled stream's items). A thread holding a
    /// stream that makes other calls through the same client uses another connection; a thread
    /// whose open streams hold every connection (as many as
    /// [`ClientOptions::max_concurrent_calls`]) gets [`Error::StreamsHeld`] from its next call
    /// instead of waiting for ever.
    ///
    /// # Errors
    /// As [`Client::call`]; the stream's items report [`Error::HandlerPanicked`],
    /// [`Error::HandlerFailed`], [`Error::StreamsNotServed`], [`Error::ServerFull`] (too many
    /// streams at once) or [`Error::Disconnected`].
    ///
    /// # Examples
    /// ```no_run
    /// # fn main() -> memlink::Result<()> {
    /// let client = memlink::Client::connect("files")?;
    /// for item in client.call_stream(b"*.rs")? {
    ///     println!("{} bytes", item?.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn call_stream(&self, request: &[u8]) -> Result<ReplyStream<'_>> {
        self.call_stream_until(request, self.default_deadline())
    }

    /// Like [`Client::call_stream`], giving up if the request could not be sent within
    /// `timeout` (all connections busy, or the server not taking requests). Each item then has a
    /// timeout of its own: [`ReplyStream::next_into_timeout`].
    ///
    /// # Errors
    /// [`Error::Timeout`]; otherwise as [`Client::call_stream`].
    pub fn call_stream_timeout(
        &self,
        request: &[u8],
        timeout: Duration,
    ) -> Result<ReplyStream<'_>> {
        self.call_stream_until(request, Instant::now().checked_add(timeout))
    }

    fn call_stream_until(
        &self,
        request: &[u8],
        deadline: Option<Instant>,
    ) -> Result<ReplyStream<'_>> {
        let mut slot = self.free_connection(deadline).map_err(|e| self.unsent(e))?;
        let mut call = 0;
        self.on_connection(&mut slot, request, deadline, |connection| {
            call = connection.start_stream(request, deadline)?;
            Ok(())
        })?;
        count_held_stream(self.id, true);
        Ok(ReplyStream {
            client: self,
            slot,
            call,
            done: false,
        })
    }

    /// A connection slot no other thread is using: the first free one (one compare-and-swap),
    /// else sleep until a call releases one.
    #[inline]
    fn free_connection(&self, deadline: Option<Instant>) -> Result<ConnectionGuard<'_>> {
        match self.try_take_connection() {
            Some(slot) => Ok(ConnectionGuard::new(self, slot)),
            None => self.wait_for_connection(deadline),
        }
    }

    /// [`Client::free_connection`] once every slot was found taken.
    #[cold]
    fn wait_for_connection(&self, deadline: Option<Instant>) -> Result<ConnectionGuard<'_>> {
        loop {
            if let Some(slot) = self.try_take_connection() {
                return Ok(ConnectionGuard::new(self, slot));
            }
            // Every connection is held by this very thread's streams: nobody would free one.
            let held = held_streams(self.id);
            if held >= self.connections.len() {
                return Err(Error::StreamsHeld {
                    name: self.name.clone(),
                    held,
                });
            }
            // SYNC POINT: the increment, then a heavy barrier, then the last look: pairs with the
            // light barrier between a slot's release and the load in `WakeWaiter::drop`. Both
            // before the lock, so that a giver that sees us waiting never waits on our syscall.
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let paired = barrier::heavy();
            let lock = self
                .wait_lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // A giver that saw us waiting notifies under the lock: either before we took it (and
            // then this look sees its slot), or while we wait.
            let taken = self.try_take_connection();
            if taken.is_none() {
                // Bounded anyway. Without the kernel's barrier (see `barrier::heavy`), a giver's
                // look at the count may miss us: then nap briefly, not a whole 100 ms.
                let longest = if paired {
                    Duration::from_millis(100)
                } else {
                    Duration::from_millis(1)
                };
                let nap = deadline.map_or(longest, |t| {
                    t.saturating_duration_since(Instant::now()).min(longest)
                });
                drop(self.connection_freed.wait_timeout(lock, nap));
            } else {
                drop(lock);
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            if let Some(slot) = taken {
                return Ok(ConnectionGuard::new(self, slot));
            }
            if deadline.is_some_and(|t| Instant::now() >= t) {
                return Err(Error::Timeout);
            }
        }
    }

    /// Fault injection for tests: publishes an empty request record with the given flags and call
    /// id (as a hostile client could: a cancel for a call that never was, unknown flags...) and
    /// returns once the server has dropped the connection. Exists only with the `fault-injection`
    /// feature; not part of the API.
    #[doc(hidden)]
    #[cfg(feature = "fault-injection")]
    pub fn __push_raw_request(&self, flags: u32, call_id: u64) -> Result<()> {
        let mut slot = self.free_connection(None)?;
        if slot.is_none() {
            *slot = Some(Connection::open(
                &self.name,
                &self.options,
                self.epoch.load(Ordering::Acquire),
                Instant::now() + HANDSHAKE_TIMEOUT,
            )?);
        }
        let connection = slot.as_mut().ok_or(Error::Timeout)?;
        let result = connection.push_raw_request(flags, call_id);
        *slot = None;
        result
    }

    /// Wakes one caller sleeping until a connection is given back (see `WakeWaiter`): one slot
    /// came free. (Should it find the slot taken again, it sleeps again, and whoever took the
    /// slot wakes the next one when it gives it back.)
    #[cold]
    fn wake_a_waiter(&self) {
        let _lock = self
            .wait_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.connection_freed.notify_one();
    }

    #[inline]
    fn try_take_connection(&self) -> Option<Held<'_, Option<Connection>>> {
        self.connections.iter().find_map(Exclusive::try_take)
    }

    /// Fault injection for tests: corrupts this client's request ring in shared memory, as a buggy
    /// or hostile client would, and returns once the server has dropped the connection (the next
    /// call then reports why). Exists only with the `fault-injection` feature, which memlink's own
    /// tests enable; not part of the API.
    #[doc(hidden)]
    #[cfg(feature = "fault-injection")]
    pub fn __corrupt_next_request(&self) -> Result<()> {
        let mut slot = self.free_connection(None)?;
        if slot.is_none() {
            *slot = Some(Connection::open(
                &self.name,
                &self.options,
                self.epoch.load(Ordering::Acquire),
                Instant::now() + HANDSHAKE_TIMEOUT,
            )?);
        }
        let connection = slot.as_mut().ok_or(Error::Timeout)?;
        connection.corrupt_requests()
    }
}

/// Opens a connection, retrying transient failures until `deadline` (or for
/// [`HANDSHAKE_TIMEOUT`] without one); with [`ClientOptions::start_server`], starts the server
/// first if none runs, waiting for it until `deadline` (or for the start timeout; a server
/// started for a caller whose deadline comes first goes on starting in the background).
fn open_connection(
    name: &str,
    options: &ClientOptions,
    epoch: u64,
    deadline: Option<Instant>,
) -> Result<Connection> {
    let transient_until = deadline.unwrap_or_else(|| Instant::now() + HANDSHAKE_TIMEOUT);
    let first = Connection::open_retrying(name, options, epoch, transient_until);
    match (&options.start_server, first) {
        (Some(command), Err(Error::NotRunning { .. })) => {
            let times = launch::StartTimes {
                deadline,
                start_timeout: options.start_timeout,
            };
            // `open` may outlive this call (see `launch::connect_or_start`): it owns its copies.
            let (owned_name, owned_options) = (name.to_owned(), options.clone());
            launch::connect_or_start(
                name,
                command,
                options.trusted_server_uid,
                times,
                &options.launch_hooks,
                move |until| Connection::open_retrying(&owned_name, &owned_options, epoch, until),
            )
        }
        (_, first) => first,
    }
}

/// How a call failed, and whether its connection survives.
enum Failure {
    /// The connection is still in step with the server.
    Kept(Error),
    /// The connection must be dropped. `taken`: the server claimed the request (see `claim`),
    /// so its handler may have run. `false` proves it never will: the call withdrew it first,
    /// and the server skips a withdrawn request (or never gets it whole, or is gone).
    Broken { error: Error, taken: bool },
}

/// Whether a call may wait for ring space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Wait for room as needed.
    Wait,
    /// Send only if the whole request fits now; else `Full`.
    Try,
}

/// What one [`Connection::reply_step`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyStep {
    /// Nothing in the response ring: wait for the server.
    Empty,
    /// A record was taken or skipped; the reply is not whole yet.
    More,
    /// The reply is whole.
    Done,
}

/// The longest reply counted for in a cancelled call's stale-record allowance
/// ([`Connection::cancel_through`]), whatever the server announced.
const MAX_STALE_MESSAGE: usize = 4 << 30;

/// One connection: a region with a request ring we produce and a response ring we consume.
#[derive(Debug)]
struct Connection {
    name: String,
    socket: OwnedFd,
    map: Arc<Mapping>,
    requests: Producer,
    responses: Consumer,
    /// Read end of the pipe the server wakes us through.
    wake_in: OwnedFd,
    /// Write end of the pipe we wake the server through.
    wake_out: OwnedFd,
    last_call: u64,
    max_message: usize,
    /// Largest reply we accept: the server's maximum, or less if the options say so.
    max_reply: usize,
    /// A reply was abandoned part-way (too large for us): the rings are out of step.
    abandoned: bool,
    /// The call in progress sent a request of more than one fragment: the server counts it as
    /// bulk (not a busy client), so all its waits are polite ([`Connection::wait_as`]).
    bulk_call: bool,
    /// Streams up to this call id were cancelled: their records still in the ring are skipped.
    cancelled_through: u64,
    /// How many more records of cancelled calls we skip before taking the server for broken:
    /// each cancellation adds what an honest server can still send of the call then
    /// ([`Connection::cancel_through`]), so that a hostile one cannot keep a call skipping
    /// forever.
    stale_allowance: u64,
    /// The last call withdrawn while the connection stayed in use (an async call dropped after
    /// its request went out; see `claim`), 0 for none: the claim word may still hold its
    /// withdrawal.
    kept_withdrawal: u64,
    epoch: u64,
    /// Moving average of how long waits for a reply took, in nanoseconds (1/8 weight to the
    /// newest).
    recent_wait_ns: u64,
    waits: u32,
    /// See `ClientOptions::__pause_before_receive`.
    pause_before_receive: Duration,
    /// See `ClientOptions::__sent_deadline`.
    sent_deadline: Option<Duration>,
    /// See `ClientOptions::__presume_gone_after`.
    presume_gone_after: Option<Duration>,
    /// No test hook changes how calls are made ([`Connection::quick_call`] may be used).
    quick_call_allowed: bool,
    /// The server provably reads our `CLOCK_MONOTONIC` (same time namespace). Only then does a
    /// call carry its deadline: a server on another clock would skip live requests or keep
    /// expired ones (and its handler would see a wrong deadline). Whether a call that gave up
    /// ran is the claim word's to say, on any clock.
    same_clock: bool,
}

impl Connection {
    /// [`Connection::open`], retried until `until` while the server drops our handshake without an
    /// answer (it is shedding half-open connections under a flood, or restarting).
    fn open_retrying(
        name: &str,
        options: &ClientOptions,
        epoch: u64,
        until: Instant,
    ) -> Result<Connection> {
        let mut pause = Duration::from_micros(200);
        loop {
            match Connection::open(name, options, epoch, until) {
                Err(Error::Disconnected { .. }) if Instant::now() + pause < until => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// Connects and shakes hands, waiting for the server no later than `until` (and no longer
    /// than [`HANDSHAKE_TIMEOUT`]).
    fn open(name: &str, options: &ClientOptions, epoch: u64, until: Instant) -> Result<Connection> {
        let patience = until
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), HANDSHAKE_TIMEOUT);
        let hello = Hello {
            purpose: Purpose::Connect,
            max_message: 0,
        };
        let link::Answer {
            socket,
            welcome,
            fds,
            peer,
        } = link::handshake(
            name,
            &socket_name(name),
            patience,
            options.trusted_server_uid,
            &hello,
        )?;

        match welcome.admission {
            Admission::Accepted => {}
            Admission::PermissionDenied => {
                return Err(Error::PermissionDenied {
                    name: name.to_owned(),
                    owner_uid: None,
                });
            }
            Admission::Full { max_clients } => {
                return Err(Error::ServerFull {
                    name: name.to_owned(),
                    max: max_clients,
                });
            }
            Admission::ShuttingDown => {
                return Err(Error::NotRunning {
                    name: name.to_owned(),
                });
            }
            Admission::Busy => {
                return Err(Error::Busy {
                    name: name.to_owned(),
                });
            }
        }
        // The server keeps the read end of the pipe that wakes it and the write end of ours.
        let (map, layout, [wake_out, wake_in]) = link::adopt(
            name,
            welcome.ring_capacity as usize,
            fds,
            [Keep::Read, Keep::Write],
        )?;
        let ring = |e: RingError| Error::corrupted(name, e.0);
        let requests = Producer::new(map.clone(), layout.requests()).map_err(ring)?;
        let responses = Consumer::new(map.clone(), layout.responses()).map_err(ring)?;
        let max_message = usize::try_from(welcome.max_message).unwrap_or(usize::MAX);
        Ok(Connection {
            name: name.to_owned(),
            socket,
            map,
            requests,
            responses,
            wake_in,
            wake_out,
            last_call: 0,
            max_message,
            max_reply: options
                .max_reply_size
                .map_or(max_message, |m| m.min(max_message)),
            abandoned: false,
            bulk_call: false,
            cancelled_through: 0,
            stale_allowance: 0,
            kept_withdrawal: 0,
            epoch,
            recent_wait_ns: 0,
            waits: 0,
            pause_before_receive: options.pause_before_receive,
            sent_deadline: options.sent_deadline,
            presume_gone_after: options.presume_gone_after,
            quick_call_allowed: options.pause_before_receive.is_zero()
                && options.presume_gone_after.is_none()
                && options.sent_deadline.is_none(),
            same_clock: process::shares_monotonic_clock_with(peer.pid),
        })
    }

    /// The request record's `meta` word for `deadline`: CLOCK_MONOTONIC nanoseconds, converted
    /// without a clock read, never later than ours (0 means none, and no clock reads 0), and
    /// only to a server on our clock. One beyond what the protocol carries (centuries away)
    /// travels as none: the server would refuse it.
    pub(super) fn deadline_word(&self, deadline: Option<Instant>) -> u64 {
        if let Some(after) = self.sent_deadline {
            return clock::monotonic_ns().saturating_add(after.as_nanos() as u64);
        }
        deadline
            .filter(|_| self.same_clock)
            .map_or(0, |t| match clock::instant_to_ns(t).max(1) {
                ns if ns > super::protocol::MAX_DEADLINE_NS => 0,
                ns => ns,
            })
    }

    #[inline]
    fn call(
        &mut self,
        request: &[u8],
        reply: &mut Vec<u8>,
        deadline: Option<Instant>,
        mode: Mode,
    ) -> Result<(), Failure> {
        if request.len() > self.max_message {
            return Err(Failure::Kept(Error::MessageTooLarge {
                size: request.len(),
                max: self.max_message,
            }));
        }
        let meta = self.deadline_word(deadline);
        let call = self.last_call + 1;
        if mode == Mode::Wait && self.quick_call_fits(request.len()) {
            return self.quick_call(call, request, meta, reply, deadline);
        }
        self.bulk_call = request.len() > self.requests.max_fragment();
        let sent = match mode {
            Mode::Wait => {
                self.last_call = call;
                self.send_flagged(call, request, 0, meta, deadline)
            }
            Mode::Try => match self.try_send(call, request, meta) {
                Ok(true) => {
                    self.last_call = call;
                    Ok(())
                }
                // Nothing written, the connection as it was.
                Ok(false) => return Err(Failure::Kept(Error::Full)),
                Err(Failure::Kept(e)) => return Err(Failure::Kept(e)),
                Err(Failure::Broken { error, .. }) => Err(error),
            },
        };
        let result = sent.and_then(|()| {
            if !self.pause_before_receive.is_zero() {
                std::thread::sleep(self.pause_before_receive);
            }
            self.receive_or_presume_gone(call, reply, deadline)
        });
        result.map_err(|error| self.failure(error, call))
    }

    /// [`Connection::call`] for the common case, a request of one record (`Mode::Wait`, no
    /// test hooks): written with one push, then the reply looked for where it will be, with
    /// nothing between finding it and taking it. Everything else (no room for the request, a
    /// reply that is not one whole record, a wait longer than the first looks) goes on as
    /// [`Connection::call`] would, from where this left off, with the same error handling.
    /// Inlined into the caller; what is not the common case is not.
    #[inline(always)]
    fn quick_call(
        &mut self,
        call: u64,
        request: &[u8],
        meta: u64,
        reply: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(), Failure> {
        self.bulk_call = false;
        let pushed = self.requests.try_push_with_meta(
            FIRST | LAST,
            call,
            request.len() as u64,
            meta,
            request,
        );
        let result = match pushed {
            Ok(true) => {
                self.last_call = call;
                match wake::nudge(&self.map, SERVER, &self.wake_out) {
                    Ok(()) => self.quick_receive(call, reply, deadline),
                    Err(e) => Err(Error::corrupted(&self.name, e.0)),
                }
            }
            Ok(false) => return self.quick_call_without_room(call, request, meta, reply, deadline),
            // Nothing was published (the push checks before it writes the stamp): the call did
            // not go out, and there is nothing to withdraw through the claim word.
            Err(e) => {
                return Err(Failure::Broken {
                    error: Error::corrupted(&self.name, e.0),
                    taken: false,
                });
            }
        };
        result.map_err(|error| self.failure(error, call))
    }

    /// [`Connection::quick_call`] when the request found no room (the server has not taken
    /// earlier records): it waits for room as any call, then for the reply as `quick_call`.
    #[inline(never)]
    fn quick_call_without_room(
        &mut self,
        call: u64,
        request: &[u8],
        meta: u64,
        reply: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(), Failure> {
        self.last_call = call;
        let result = self
            .send_flagged(call, request, 0, meta, deadline)
            .and_then(|()| self.quick_receive(call, reply, deadline));
        result.map_err(|error| self.failure(error, call))
    }

    /// The reply to the quick call `call`, sent: looked for where it will be for the first
    /// looks, then waited for by the general receive.
    #[inline(always)]
    fn quick_receive(
        &mut self,
        call: u64,
        reply: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<()> {
        reply.clear();
        // Spent looks make the general receive's first wait go straight to its timed backoff;
        // crowded, it makes none either.
        let mut looked = true;
        if !wake::server_is_crowded(&self.map) {
            for _ in 0..FIRST_LOOKS {
                match self
                    .responses
                    .look_take_whole(call, 0, self.max_reply as u64, reply)
                {
                    Whole::Taken(_) => {
                        self.record_no_wait();
                        return Ok(());
                    }
                    Whole::Empty => std::hint::spin_loop(),
                    // Not a whole reply (a padding, a fragment, an error report): the general
                    // receive takes it from here, with its own looks.
                    Whole::Other => {
                        looked = false;
                        break;
                    }
                }
            }
        }
        self.receive_after(call, reply, deadline, looked)
    }

    /// Whether a request of `len` bytes may take [`Connection::quick_call`]: one record, within
    /// the server's limit, and no test hook in the way.
    #[inline]
    fn quick_call_fits(&self, len: usize) -> bool {
        self.quick_call_allowed && len <= self.max_message && len <= self.requests.max_fragment()
    }

    /// Sorts a call's failure: errors reported by the server over a connection still in step
    /// are kept; any other breaks the connection, and whether the server may have taken the
    /// request is settled here (see [`Failure::Broken`]).
    fn failure(&mut self, error: Error, call: u64) -> Failure {
        match error {
            Error::HandlerPanicked { .. }
            | Error::HandlerFailed { .. }
            | Error::CallRefused { .. }
            | Error::ReplyTooLarge { .. }
            | Error::Undecodable { .. }
            | Error::NotExecuted { .. }
                if !self.abandoned =>
            {
                Failure::Kept(error)
            }
            error => Failure::Broken {
                taken: !self.withdraw(call),
                error,
            },
        }
    }

    /// Withdraws call `call` through the claim word (see `claim`): `true` if the server had not
    /// claimed it, which it then never does.
    fn withdraw(&self, call: u64) -> bool {
        claim::withdraw(self.requests.spare_word(), call, self.kept_withdrawal)
    }

    /// Writes the whole of `request` into the request ring if it fits now (`Ok(false)`, nothing
    /// written, if not), never waiting.
    fn try_send(&mut self, call: u64, request: &[u8], meta: u64) -> Result<bool, Failure> {
        let ring = |name: &str, e: RingError| Error::corrupted(name, e.0);
        let layout = *self.requests.layout();
        let fragment = layout.max_fragment();
        // Half the ring fits whole once the server has taken what is before it; more may never.
        let max = layout.capacity / 2;
        if request.len() > max {
            return Err(Failure::Kept(Error::MessageTooLarge {
                size: request.len(),
                max,
            }));
        }
        let fits = self
            .requests
            .has_room_for_all(fragment_lens(request.len(), fragment))
            .map_err(|e| Failure::Broken {
                error: ring(&self.name, e),
                taken: false,
            })?;
        if !fits {
            return Ok(false);
        }
        // Going back to the front early would spend room the check above counted on.
        self.requests.set_early_wrap(false);
        let total = request.len() as u64;
        let mut sent = 0;
        let pushed = loop {
            let (flags, piece) = fragment_at(sent, request.len(), fragment);
            let end = piece.end;
            match self
                .requests
                .try_push_with_meta(flags, call, total, meta, &request[piece])
            {
                Ok(true) => {}
                // The consumer only ever frees room: the check above holds.
                Ok(false) => {
                    break Err(Error::corrupted(
                        &self.name,
                        "the request ring lost room it had (memlink bug)",
                    ));
                }
                Err(e) => break Err(ring(&self.name, e)),
            }
            sent = end;
            if sent == request.len() {
                break Ok(());
            }
        };
        self.requests.set_early_wrap(true);
        pushed
            .and_then(|()| {
                wake::nudge(&self.map, SERVER, &self.wake_out).map_err(|e| ring(&self.name, e))
            })
            .map_err(|error| Failure::Broken {
                error,
                taken: false,
            })?;
        Ok(true)
    }

    /// Sends `request` as stream request; returns its call id.
    fn start_stream(&mut self, request: &[u8], deadline: Option<Instant>) -> Result<u64, Failure> {
        if request.len() > self.max_message {
            return Err(Failure::Kept(Error::MessageTooLarge {
                size: request.len(),
                max: self.max_message,
            }));
        }
        self.last_call += 1;
        let call = self.last_call;
        // A stream request carries no deadline: the timeout covers only its sending.
        self.send_flagged(call, request, STREAM_REQUEST, 0, deadline)
            .map_err(|error| Failure::Broken {
                taken: !self.withdraw(call),
                error,
            })?;
        if !self.pause_before_receive.is_zero() {
            std::thread::sleep(self.pause_before_receive);
        }
        Ok(call)
    }

    /// Receives the next message of stream `call` into `item` (cleared first): `Ok(true)` for an
    /// item, `Ok(false)` for the clean end. A timeout after part of the message was taken
    /// leaves the connection out of step: `torn` says so.
    fn next_item(
        &mut self,
        call: u64,
        item: &mut Vec<u8>,
        deadline: Option<Instant>,
        torn: &mut bool,
    ) -> Result<bool> {
        item.clear();
        let mut reassembly = Reassembly::default();
        let mut kind = None;
        loop {
            let ring = |name: &str, e: RingError| Error::corrupted(name, e.0);
            // The common case first: a whole item in one record.
            if kind.is_none()
                && self
                    .responses
                    .take_whole(call, STREAM_ITEM, self.max_reply as u64, item)
                    .map_err(|e| ring(&self.name, e))?
                    .is_some()
            {
                // The server may be waiting for the room we just freed.
                wake::nudge(&self.map, SERVER, &self.wake_out).map_err(|e| ring(&self.name, e))?;
                return Ok(true);
            }
            let Some(header) = self.responses.peek().map_err(|e| ring(&self.name, e))? else {
                *torn = reassembly.in_progress();
                self.wait(deadline, |_, responses| Ok(responses.has_data()))?;
                continue;
            };
            let bad = |why: &str| {
                Error::corrupted(&self.name, format!("server broke the protocol: {why}"))
            };
            match judge(&header, call, self.cancelled_through, kind, true).map_err(|w| bad(&w))? {
                Verdict::Stale => {
                    self.skip_stale(&header)?;
                    continue;
                }
                Verdict::Ours(user) => kind = Some(user),
            }
            let complete = self.take_fragment(&header, &mut reassembly, call, item)?;
            // The server may be waiting for the room we just freed.
            wake::nudge(&self.map, SERVER, &self.wake_out).map_err(|e| ring(&self.name, e))?;
            if complete {
                return match header.flags & USER_FLAGS {
                    ERROR_REPLY => Err(self.remote_error(item)),
                    STREAM_END => Ok(false),
                    _ => Ok(true),
                };
            }
        }
    }

    /// Tells the server to stop stream `call`; later reads skip what of it is in our ring.
    fn cancel(&mut self, call: u64) -> Result<()> {
        let ring = |name: &str, e: RingError| Error::corrupted(name, e.0);
        if !self
            .requests
            .try_push(FIRST | LAST | CANCEL, call, 0, &[])
            .map_err(|e| ring(&self.name, e))?
        {
            return Err(Error::Timeout);
        }
        self.cancel_through(call);
        wake::nudge(&self.map, SERVER, &self.wake_out).map_err(|e| ring(&self.name, e))
    }

    /// Gives up on calls up to `call` (a stream cancelled, or a call abandoned): what of them is
    /// still to come is skipped unread ([`Connection::skip_stale`]).
    pub(super) fn cancel_through(&mut self, call: u64) {
        self.cancelled_through = self.cancelled_through.max(call);
        // What an honest server can still send of it: a ring full of the smallest records
        // (twice: what is in it, and what it writes as we skip, before it sees the cancel), and
        // a whole message in fragments.
        // The response ring is laid out as the request ring (one capacity for both).
        let layout = self.requests.layout();
        let ring = (layout.capacity / RECORD_HEADER_LEN) as u64;
        // The reply's limit is the server's word (unless the caller set one): capped, so that a
        // server announcing an absurd maximum cannot buy itself an endless allowance.
        let longest = self.max_reply.min(MAX_STALE_MESSAGE);
        let message = longest.div_ceil(layout.max_fragment().max(1)) as u64;
        let allowance = 2 * ring + message + 64;
        self.stale_allowance = self.stale_allowance.saturating_add(allowance);
    }

    /// Skips a record of a cancelled call (see [`Connection::cancel_through`]); `Corrupted` once
    /// the server has sent more of them than it honestly could.
    pub(super) fn skip_stale(&mut self, header: &RecordHeader) -> Result<()> {
        let ring = |name: &str, e: RingError| Error::corrupted(name, e.0);
        let Some(left) = self.stale_allowance.checked_sub(1) else {
            return Err(Error::corrupted(
                &self.name,
                "server broke the protocol: it goes on sending records of calls we gave up",
            ));
        };
        self.stale_allowance = left;
        self.responses
            .skip(header)
            .map_err(|e| ring(&self.name, e))?;
        // The server may be waiting for the room we just freed, as after a take.
        wake::nudge(&self.map, SERVER, &self.wake_out).map_err(|e| ring(&self.name, e))
    }

    /// Writes `request` into the request ring, each record with `user_flags` and `meta`,
    /// waiting for room as needed (until `deadline`).
    #[inline]
    fn send_flagged(
        &mut self,
        call: u64,
        request: &[u8],
        user_flags: u32,
        meta: u64,
        deadline: Option<Instant>,
    ) -> Result<()> {
        let fragment = self.requests.max_fragment();
        let total = request.len() as u64;
        let mut sent = 0;
        loop {
            let (flags, piece) = fragment_at(sent, request.len(), fragment);
            let end = piece.end;
            let ring = |e: RingError| Error::corrupted(&self.name, e.0);
            if self
                .requests
                .try_push_with_meta(flags | user_flags, call, total, meta, &request[piece])
                .map_err(ring)?
            {
                wake::nudge(&self.map, SERVER, &self.wake_out)
                    .map_err(|e| Error::corrupted(&self.name, e.0))?;
                sent = end;
                if sent == request.len() {
                    return Ok(());
                }
            } else {
                let len = end - sent;
                self.wait_as(deadline, true, false, |requests, _| {
                    requests.has_room_for(len)
                })?;
            }
        }
    }

    /// [`Connection::receive`], or, with `ClientOptions::__presume_gone_after`, `Disconnected`
    /// once that has passed first.
    #[inline]
    fn receive_or_presume_gone(
        &mut self,
        call: u64,
        reply: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<()> {
        let Some(gone) = self
            .presume_gone_after
            .and_then(|after| Instant::now().checked_add(after))
            .filter(|gone| deadline.is_none_or(|d| *gone < d))
        else {
            return self.receive_after(call, reply, deadline, false);
        };
        match self.receive_after(call, reply, Some(gone), false) {
            Err(Error::Timeout) => Err(Error::Disconnected {
                name: self.name.clone(),
            }),
            other => other,
        }
    }

    /// Receives call `call`'s reply into `reply`; `looked` if the first looks of its first wait
    /// were already made ([`Connection::quick_call`]).
    #[inline]
    fn receive_after(
        &mut self,
        call: u64,
        reply: &mut Vec<u8>,
        deadline: Option<Instant>,
        mut looked: bool,
    ) -> Result<()> {
        reply.clear();
        let mut reassembly = Reassembly::default();
        loop {
            match self.reply_step(call, &mut reassembly, reply)? {
                ReplyStep::Empty => {
                    let bulk = self.bulk_call || reassembly.in_progress();
                    let looked = std::mem::take(&mut looked);
                    self.wait_as(deadline, bulk, looked, |_, responses| {
                        Ok(responses.has_data())
                    })?;
                }
                // A reply in many fragments, or records of a call given up: the deadline holds
                // all the same (a wait that finds the next record at once does not look at it).
                ReplyStep::More if deadline.is_some_and(|t| Instant::now() >= t) => {
                    return Err(Error::Timeout);
                }
                ReplyStep::More => {}
                ReplyStep::Done => return Ok(()),
            }
        }
    }

    /// One step of receiving call `call`'s reply into `reply`: takes (or skips) the next record
    /// of the response ring, validated. The blocking and the async receive loops differ only
    /// in how they wait on [`ReplyStep::Empty`].
    #[inline]
    pub(super) fn reply_step(
        &mut self,
        call: u64,
        reassembly: &mut Reassembly,
        reply: &mut Vec<u8>,
    ) -> Result<ReplyStep> {
        let ring = |name: &str, e: RingError| Error::corrupted(name, e.0);
        // The common case first: a whole successful reply in one record.
        if !reassembly.in_progress()
            && self
                .responses
                .take_whole(call, 0, self.max_reply as u64, reply)
                .map_err(|e| ring(&self.name, e))?
                .is_some()
        {
            return Ok(ReplyStep::Done);
        }
        let Some(header) = self.responses.peek().map_err(|e| ring(&self.name, e))? else {
            return Ok(ReplyStep::Empty);
        };
        if header.call_id < call
            && header.call_id <= self.cancelled_through
            && !reassembly.in_progress()
        {
            // What was in flight of an abandoned call or a cancelled stream. The server may be
            // waiting for the room this frees (our reply did not fit behind it): it is woken.
            self.skip_stale(&header)?;
            return Ok(ReplyStep::More);
        }
        if !self.take_fragment(&header, reassembly, call, reply)? {
            // The server may be waiting for the room we just freed. After the last fragment
            // it is not: the whole reply is in the ring.
            wake::nudge(&self.map, SERVER, &self.wake_out).map_err(|e| ring(&self.name, e))?;
            return Ok(ReplyStep::More);
        }
        if header.flags & USER_FLAGS == ERROR_REPLY {
            return Err(self.remote_error(reply));
        }
        if header.flags & USER_FLAGS != 0 {
            return Err(Error::corrupted(
                &self.name,
                "server broke the protocol: unknown reply flags",
            ));
        }
        Ok(ReplyStep::Done)
    }

    /// Takes one validated fragment of call `call`'s reply (or stream item) into `out`; `true`
    /// once the message is complete. A message larger than we accept ends the connection with
    /// `MessageTooLarge` before more than a fragment of it is read.
    fn take_fragment(
        &mut self,
        header: &RecordHeader,
        reassembly: &mut Reassembly,
        call: u64,
        out: &mut Vec<u8>,
    ) -> Result<bool> {
        let bad =
            |why: &str| Error::corrupted(&self.name, format!("server broke the protocol: {why}"));
        let started = reassembly
            .accept(header, |id| id == call, self.max_message as u64)
            .map_err(|why| bad(&why))?;
        if let Some(total) = started {
            if total > self.max_reply as u64 {
                // Ours to refuse, not a broken server: leave the rest unread and let this
                // connection go.
                self.abandoned = true;
                return Err(Error::ReplyTooLarge {
                    name: self.name.clone(),
                    size: total,
                    max: self.max_reply as u64,
                });
            }
            // The announced length is the server's word: reserve at most a bounded amount up
            // front and let the buffer grow as fragments actually arrive.
            out.reserve((total as usize).min(MAX_UPFRONT_RESERVE));
        }
        self.responses
            .take(header, out)
            .map_err(|e| Error::corrupted(&self.name, e.0))?;
        Ok(reassembly.taken(header).map_err(|why| bad(&why))?.is_some())
    }

    fn remote_error(&self, report: &[u8]) -> Error {
        let word = |at: usize| {
            report
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        };
        match report
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
        {
            Some(ERR_HANDLER_PANICKED) => Error::HandlerPanicked {
                name: self.name.clone(),
            },
            Some(ERR_HANDLER_FAILED) => Error::HandlerFailed {
                name: self.name.clone(),
                reason: report_text(report.get(4..).unwrap_or_default()),
                data: Box::default(),
            },
            Some(ERR_CALL_FAILED) => {
                // code | message_len u32 | message | data, the length checked against the report.
                let split = report
                    .get(4..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_le_bytes)
                    .and_then(|len| 8usize.checked_add(len as usize))
                    .filter(|&end| end <= report.len());
                match split {
                    Some(end) => Error::HandlerFailed {
                        name: self.name.clone(),
                        reason: report_text(&report[8..end]),
                        data: report[end..].into(),
                    },
                    None => {
                        Error::corrupted(&self.name, "the server sent a malformed error report")
                    }
                }
            }
            Some(ERR_REFUSED) => Error::CallRefused {
                name: self.name.clone(),
                reason: report_text(report.get(4..).unwrap_or_default()).into(),
            },
            Some(ERR_DEADLINE_EXPIRED) => Error::NotExecuted {
                name: self.name.clone(),
                reason: NotExecuted::TimedOut,
            },
            Some(ERR_UNDECODABLE) => Error::Undecodable {
                name: self.name.clone(),
                what: Payload::Request,
                reason: report_text(report.get(4..).unwrap_or_default()).into(),
            },
            Some(ERR_NO_STREAMS) => Error::StreamsNotServed {
                name: self.name.clone(),
            },
            Some(ERR_TOO_MANY_STREAMS) => Error::ServerFull {
                name: self.name.clone(),
                max: word(4).map_or(0, |m| u32::try_from(m).unwrap_or(u32::MAX)),
            },
            Some(ERR_REPLY_TOO_LARGE) => Error::ReplyTooLarge {
                name: self.name.clone(),
                size: word(4).unwrap_or(0),
                max: word(12).unwrap_or(self.max_message as u64),
            },
            _ => Error::corrupted(&self.name, "the server sent an unknown error report"),
        }
    }

    /// Waits until `ready` holds: spins (unless the server shares our CPU), yields, then parks on
    /// our doorbell and the socket. Adapts the spin budget to how long waits actually take.
    fn wait(
        &mut self,
        deadline: Option<Instant>,
        ready: impl FnMut(&mut Producer, &mut Consumer) -> Result<bool, RingError>,
    ) -> Result<()> {
        self.wait_as(deadline, false, false, ready)
    }

    /// [`Connection::wait`], or with `bulk` a wait in a bulk transfer: for room in the request
    /// ring (which only a large request, or records of a call given up, fill), for the reply to
    /// a request of more than one fragment, or for the next fragment of a reply already begun.
    /// The next fragment comes within one of the worker's sweeps, and meanwhile the CPU may be
    /// what another client's small call is waiting for: such a wait looks a few times, then
    /// yields instead of spinning. The server does not count a connection moving bulk as a busy
    /// client either (see the server's `update_crowding`), so that a bulk transfer beside small
    /// calls does not make every caller park. `looked`: the first looks were already made.
    fn wait_as(
        &mut self,
        deadline: Option<Instant>,
        bulk: bool,
        looked: bool,
        mut ready: impl FnMut(&mut Producer, &mut Consumer) -> Result<bool, RingError>,
    ) -> Result<()> {
        let corrupted = |c: &Self, e: RingError| Error::corrupted(&c.name, e.0);
        // While the server is awake the answer comes within a few hundred nanoseconds: look for
        // it before paying for the clock and CPU reads that deciding how to wait takes. Not when
        // the server is crowded: then every waiter yields at once, so the CPU goes to whoever
        // can use it.
        let first_looks = if looked || wake::server_is_crowded(&self.map) {
            0
        } else {
            FIRST_LOOKS
        };
        for _ in 0..first_looks {
            if ready(&mut self.requests, &mut self.responses).map_err(|e| corrupted(self, e))? {
                self.record_no_wait();
                return Ok(());
            }
            std::hint::spin_loop();
        }
        let mut backoff = Backoff::new(self.patience(bulk));
        loop {
            if ready(&mut self.requests, &mut self.responses).map_err(|e| corrupted(self, e))? {
                self.record_wait(backoff.elapsed());
                return Ok(());
            }
            if !backoff.pause() {
                break;
            }
            if deadline.is_some_and(|t| backoff.last_clock_read() >= t) {
                return Err(Error::Timeout);
            }
        }
        let Connection {
            name,
            map,
            wake_in,
            socket,
            requests,
            responses,
            ..
        } = self;
        match link::park_until(name, map, RPC_CLIENT, wake_in, socket, deadline, || {
            ready(requests, responses)
        })? {
            Parked::Ready => {
                self.record_wait(backoff.elapsed());
                Ok(())
            }
            Parked::TimedOut => Err(Error::Timeout),
            Parked::HungUp => Err(link::goodbye(&self.name, &self.socket)),
        }
    }

    /// How the next wait behaves before it parks.
    ///
    /// - The server says it is crowded (more active clients than spare CPUs): do not spin — a
    ///   spinning waiter takes CPU from the server and is served ahead of parked clients, starving
    ///   them — but yield for a while: the CPU goes to whoever needs it, every waiter is treated
    ///   alike, and a reply that comes within a worker's turn is caught without a wake-up.
    /// - Waits have been long although the server is not crowded (a slow handler): park at once,
    ///   so the server keeps the CPU; one wait in [`PROBE_EVERY`] is patient anyway, to notice
    ///   when waits are short again.
    /// - A wait in a bulk transfer (`bulk`, see [`Connection::wait_as`]): yield from the start.
    /// - Otherwise spin (unless the server runs on our CPU: it could not run while we spin),
    ///   then yield.
    fn patience(&mut self, bulk: bool) -> Patience {
        // Crowding first: under load every waiter must wait alike. A waiter that parked at once
        // because its own recent waits were long would keep waiting long (a wake-up on a busy
        // machine is slow) while the others kept being served: a starvation trap.
        if wake::server_is_crowded(&self.map) {
            return Patience {
                spin: Duration::ZERO,
                yield_for: CROWDED_PATIENCE,
            };
        }
        // A bulk transfer yields from the start (see `wait_as`): it never parks at once either,
        // since the next fragment is at most a sweep away.
        if bulk {
            return Patience {
                spin: Duration::ZERO,
                yield_for: MAX_PATIENCE,
            };
        }
        self.waits = self.waits.wrapping_add(1);
        if self.recent_wait_ns > WORTH_STAYING_RUNNABLE.as_nanos() as u64
            && !self.waits.is_multiple_of(PROBE_EVERY)
        {
            return Patience {
                spin: Duration::ZERO,
                yield_for: Duration::ZERO,
            };
        }
        let spin = if wake::shares_cpu_with_peer(&self.map, RPC_CLIENT, SERVER) {
            Duration::ZERO
        } else {
            MAX_SPIN
        };
        Patience {
            spin,
            yield_for: MAX_PATIENCE - spin,
        }
    }

    /// Folds a wait into the running average of recent ones (weight 1/8; capped at a second,
    /// which already means "parks").
    fn record_wait(&mut self, waited: Duration) {
        let waited = waited.min(Duration::from_secs(1)).as_nanos() as u64;
        self.recent_wait_ns = (self.recent_wait_ns * 7 + waited) / 8;
    }

    /// [`Connection::record_wait`] for a reply that was there at once.
    #[inline(always)]
    fn record_no_wait(&mut self) {
        self.recent_wait_ns = self.recent_wait_ns * 7 / 8;
    }

    /// Fault injection: publishes an impossible request record, as a buggy or hostile client
    /// could, then waits (up to a few seconds) until the server has dropped the connection.
    #[cfg(feature = "fault-injection")]
    fn corrupt_requests(&mut self) -> Result<()> {
        let broken = |e: RingError| Error::corrupted(&self.name, e.0);
        self.requests.publish_impossible_record().map_err(broken)?;
        self.await_hang_up()
    }

    /// Fault injection: publishes an empty request record with `flags` (besides first and last)
    /// and `call_id`, as a hostile client could, then waits (up to a few seconds) until the
    /// server has dropped the connection.
    #[cfg(feature = "fault-injection")]
    fn push_raw_request(&mut self, flags: u32, call_id: u64) -> Result<()> {
        let broken = |e: RingError| Error::corrupted(&self.name, e.0);
        if !self
            .requests
            .try_push(FIRST | LAST | flags, call_id, 0, &[])
            .map_err(broken)?
        {
            return Err(Error::Timeout);
        }
        self.await_hang_up()
    }

    #[cfg(feature = "fault-injection")]
    fn await_hang_up(&mut self) -> Result<()> {
        let _ = notify::wake(&self.wake_out);
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let woken = notify::wait_wake_or_hangup(&self.wake_in, &self.socket, Some(left))
                .map_err(|e| Error::os("waiting for the server", e))?;
            if woken.wake {
                notify::drain_wakes(&self.wake_in);
            }
            if woken.hung_up {
                return Ok(());
            }
        }
        Err(Error::Timeout)
    }
}

/// The items a server streams in answer to [`Client::call_stream`]: each `Ok(item)` in order, then
/// `None` after a clean end, or one `Err` (after the items already sent) if the handler failed
/// ([`Error::HandlerPanicked`], [`Error::HandlerFailed`]) or the server went away
/// ([`Error::Disconnected`]: the stream's handler may have run; [`Error::NotExecuted`] if the
/// server went away before it took the request, which is then withdrawn as a call's is, so the
/// handler never ran and never will). Dropping it before the end cancels the stream on the
/// server.
/// Holds one of the client's connections, so it stays on the thread that made the call: it is not
/// `Send`.
///
/// ```compile_fail
/// fn send<T: Send>(_: T) {}
/// fn stream_elsewhere(client: &memlink::Client) -> memlink::Result<()> {
///     send(client.call_stream(b"items")?);
///     Ok(())
/// }
/// ```
pub struct ReplyStream<'a> {
    client: &'a Client,
    slot: ConnectionGuard<'a>,
    call: u64,
    done: bool,
}

impl std::fmt::Debug for ReplyStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyStream")
            .field("call", &self.call)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl ReplyStream<'_> {
    /// Receives the next item into `item` (cleared first; reusing it allocates nothing per item):
    /// `Ok(true)` for an item, `Ok(false)` once the stream has ended (and from then on).
    ///
    /// # Errors
    /// As the iterator's items; after an error the stream is over.
    pub fn next_into(&mut self, item: &mut Vec<u8>) -> Result<bool> {
        self.next_until(item, None)
    }

    /// Like [`ReplyStream::next_into`], giving up after `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`]: if no part of the next item had arrived, the stream goes on (call
    /// again); if part of it had, the stream is over (its connection is dropped). Otherwise as
    /// [`ReplyStream::next_into`].
    pub fn next_into_timeout(&mut self, item: &mut Vec<u8>, timeout: Duration) -> Result<bool> {
        self.next_until(item, Instant::now().checked_add(timeout))
    }

    fn next_until(&mut self, item: &mut Vec<u8>, deadline: Option<Instant>) -> Result<bool> {
        if self.done {
            return Ok(false);
        }
        let Some(connection) = self.slot.as_mut() else {
            self.done = true;
            return Err(Error::Disconnected {
                name: self.client.name.clone(),
            });
        };
        let mut torn = false;
        match connection.next_item(self.call, item, deadline, &mut torn) {
            Ok(true) => Ok(true),
            Ok(false) => {
                self.done = true;
                Ok(false)
            }
            Err(Error::Timeout) if !torn => Err(Error::Timeout),
            Err(error) => {
                self.done = true;
                let kept = matches!(
                    error,
                    Error::HandlerPanicked { .. }
                        | Error::HandlerFailed { .. }
                        | Error::StreamsNotServed { .. }
                        | Error::ServerFull { .. }
                ) && !connection.abandoned;
                if kept {
                    return Err(error);
                }
                // As a call does: if the server had not claimed the stream's request yet, the
                // withdrawal makes sure it never does (no item came, nothing of it ran).
                let withdrawn = connection.withdraw(self.call);
                let epoch = connection.epoch;
                *self.slot = None;
                if let Error::Disconnected { .. } = error {
                    self.client.note_disconnected(epoch);
                    if withdrawn {
                        return Err(self.client.not_executed(NotExecuted::ServerGone));
                    }
                }
                Err(error)
            }
        }
    }
}

impl Iterator for ReplyStream<'_> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Result<Vec<u8>>> {
        let mut item = Vec::new();
        match self.next_into(&mut item) {
            Ok(true) => Some(Ok(item)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

impl Drop for ReplyStream<'_> {
    fn drop(&mut self) {
        count_held_stream(self.client.id, false);
        if self.done {
            return;
        }
        if let Some(connection) = self.slot.as_mut() {
            if connection.cancel(self.call).is_err() {
                // Could not tell the server: this connection is out of step; drop it.
                *self.slot = None;
            }
        }
    }
}
