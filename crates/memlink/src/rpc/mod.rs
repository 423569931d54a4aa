//! Request/response: many client processes call one server process; each call gets its own answer.
//!
//! Owns the roles and semantics of a call: the [`Client`], the [`Server`], what a handler sees
//! and may answer besides a reply (`handler`: [`CallContext`], [`CallHandler`],
//! [`HandlerError`], typed messages), whether a call that gave up runs (`claim`), decoding typed
//! messages under bounds (`bounded`), the handler latency histogram (`histogram`), rpc's own
//! wire details (`protocol`: service socket name, error reports, deadlines, statistics). The connection underneath
//! (handshake, sealed region, wake-ups, parking) is `link`'s, shared with the duplex channel.
//! Built on `link`, the memory layer's rings and the platform layer's sockets; no `unsafe` of
//! its own.
//!
//! How a call travels: a client connects to the server's abstract Unix socket; the server checks
//! its credentials and passes back a sealed memfd holding two SPSC rings (requests, responses) and
//! one end of each of two wake pipes. From then on the socket only signals liveness (and carries
//! a goodbye): a call copies the request into the request ring (in 16 KiB fragments if it is
//! larger), the server's worker copies it out, runs the handler and copies the reply into the
//! response ring. While both sides are awake nothing but shared memory is touched; a side about to
//! sleep says so in the region, and only then does the other spend a syscall on its wake pipe.
//! Sleepers poll their wake pipe together with the socket, so a peer's death wakes them at once.
//!
//! A request may also be answered by a *stream* of items ([`Client::call_stream`],
//! [`Server::serve_with`]); the design (handler threads, bounded queues, cancellation, the wire
//! flags) is in `stream`.
//!
//! A client may start its server when none runs ([`ClientOptions::start_server`]); how exactly
//! one server comes of many clients trying at once, and how it is detached from the client that
//! started it, is in `launch`.
//!
//! # Did my call run?
//!
//! Every failed call says whether the server's handler ran, so that a caller can retry what did
//! not run and check on what may have (at most once: the client itself resends a request only
//! when the server never took it). The answer is as trustworthy as the server: see *Trust*
//! below.
//!
//! | the call failed with | the handler |
//! |---|---|
//! | [`Error::NotExecuted`], and errors from before a request is sent: [`Error::NotRunning`], [`Error::ServerFull`], [`Error::PermissionDenied`], [`Error::MessageTooLarge`], [`Error::Full`] (`try_call`), [`Error::StreamsHeld`], [`Error::Unencodable`], start errors | did not run, and never will for this call |
//! | [`Error::HandlerFailed`], [`Error::CallRefused`] (the handler said so), [`Error::HandlerPanicked`], [`Error::ReplyTooLarge`], [`Error::Undecodable`] of the reply | ran (and returned, refused, panicked, or replied too much) |
//! | [`Error::Undecodable`] of the request | did not run (a typed handler could not decode the request, or it was beyond the decoder's bounds) |
//! | [`Error::Disconnected`], [`Error::Timeout`], [`Error::Corrupted`], [`Error::Os`] | may have run |
//!
//! The rule rests on one word per connection in the shared region, the *claim word* (`claim`):
//! a worker that holds a whole request swaps the word to the call's id before it runs anything
//! of it; a call that gives up (its timeout ran out, the connection looks dead, the ring broke)
//! swaps the word to "withdrawn" unless the worker has claimed the call. One compare-and-swap on
//! one word decides: if the call's wins, the worker finds the call withdrawn and skips it, so
//! the call is *not executed* and never will be, whatever the clocks or the socket said and
//! however the server failed (crashed, stalled, shut down); if the worker's wins, the call *may
//! have run*. A request not written whole is never
//! claimed (a server never runs a partial request). A worker that takes a request whose
//! deadline has passed also skips it, answering `ERR_DEADLINE_EXPIRED` (the call then reports
//! [`NotExecuted::TimedOut`] too). Withdrawing costs a failed call one atomic operation;
//! claiming costs a worker one per call, on the cache line it writes anyway when it takes the
//! request.
//!
//! **Trust.** At most once assumes an honest server: one that runs memlink's protocol, claiming
//! each request before it runs anything of it. The claim word lives in memory the server shares,
//! so a hostile server, or a process that bound the service's name first, can run a call, leave
//! the word untouched and hang up: the client then reports [`Error::NotExecuted`] (and resends
//! the request to the next server) for a call that ran. Nothing on the client's side can tell.
//! So the guarantee holds for servers run by a trusted user: a client connects only to a server
//! run by its own user or root, or by the one user it is told to trust
//! ([`ClientOptions::trust_server_uid`]); trust a user only if you would let it run your calls
//! as it likes. (A hostile *client*, on the other hand, can only skip its own calls.)
//!
//! A request not executed because the server went away (or the connection was taken for dead)
//! is sent once more on a fresh connection (a restarted server, or one started on demand, runs
//! it); if that fails the same way the call reports [`Error::NotExecuted`] with
//! [`NotExecuted::ServerGone`]. The withdrawal makes the resend safe even if the first server
//! lives on: it skips the withdrawn request. A stream's request ([`Client::call_stream`]) is
//! settled the same way when the server goes away before any item came: its reader gets
//! [`Error::NotExecuted`] instead of [`Error::Disconnected`] (the stream is not resent: its
//! items are the caller's to ask for again).
//!
//! # Deadlines
//!
//! A call with a timeout ([`Client::call_timeout`], [`ClientOptions::call_timeout`]) sends its
//! deadline in the `meta` word of each of its request's record headers: absolute
//! `CLOCK_MONOTONIC` nanoseconds (converted from the caller's `Instant` without a clock read,
//! never later than it), so that the server can skip a request whose caller already gave up
//! instead of running it for nobody. The server validates it (no clock reads a value above
//! `i64::MAX`; every fragment of a request carries the same one), reads its clock only for a
//! request that has one, skips the request if it has passed, and gives it to the handler
//! ([`CallContext::deadline`]). A server in another time namespace reads another
//! `CLOCK_MONOTONIC`: its calls carry no deadline (the client checks, once per connection). The
//! deadline only saves work: whether a call that timed out ran is the claim word's to say, on
//! any clock. A call without a timeout costs no clock read on either side.

#[cfg(feature = "serde")]
pub(crate) mod bounded;
pub(crate) mod claim;
mod client;
mod handler;
mod histogram;
mod launch;
mod protocol;
mod server;
mod stream;

#[cfg(feature = "serde")]
pub use bounded::DecodeLimits;
#[cfg(feature = "tokio")]
pub use client::{AsyncClient, AsyncReplyStream};
pub use client::{Client, ClientOptions, ReplyStream};
pub use handler::{CallContext, CallHandler, HandlerError};
#[cfg(feature = "serde")]
pub use handler::{Typed, typed, typed_with_limits};
pub use launch::ServerCommand;
pub use protocol::{ConnectionStats, HandlerLatency, Stats};
#[cfg(feature = "tokio")]
pub use server::{AsyncCallHandler, AsyncHandler};
pub use server::{Handler, Server, ServerOptions, ShutdownHandle};
pub use stream::{StreamHandler, StreamSink};

use std::time::Duration;

/// memlink's way of waiting, for the hidden `crate::__wait` (the benchmark's sleeping floor).
pub(crate) mod policy {
    pub(crate) use super::client::{
        FIRST_LOOKS as CLIENT_FIRST_LOOKS, MAX_PATIENCE as CLIENT_PATIENCE, MAX_SPIN as CLIENT_SPIN,
    };
    pub(crate) use super::server::{
        FIRST_LOOKS as SERVER_FIRST_LOOKS, PATIENCE as SERVER_PATIENCE,
    };
}

#[cfg(doc)]
use crate::error::NotExecuted;
use crate::error::{Error, Result};
use crate::memory::name::validate_name;
use crate::platform::socket;
use protocol::{Hello, Purpose, SOCKET_PREFIX, socket_name};

/// Asks the live server `name` for its statistics.
///
/// # Errors
/// [`Error::NotRunning`], [`Error::PermissionDenied`] (the server admits only other users),
/// [`Error::Timeout`] if it does not answer within a second, [`Error::Disconnected`] if it hangs
/// up without answering (it is shutting down).
pub fn server_stats(name: &str) -> Result<Stats> {
    validate_name(name)?;
    let fail = |e: rustix::io::Errno| match e {
        rustix::io::Errno::CONNREFUSED | rustix::io::Errno::NOENT => Error::NotRunning {
            name: name.to_owned(),
        },
        rustix::io::Errno::AGAIN => Error::Timeout,
        rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET => Error::Disconnected {
            name: name.to_owned(),
        },
        e => Error::os("querying a server", e),
    };
    // Statistics carry no descriptors: the socket refuses them throughout.
    let connection = socket::connect(&socket_name(name), Duration::from_secs(1)).map_err(fail)?;
    let sent = socket::send_message(
        &connection,
        &Hello {
            purpose: Purpose::Stats,
            max_message: 0,
        }
        .encode(),
        &[],
    );
    let mut buf = vec![0u8; Stats::MAX_LEN + 8];
    let (len, _) = crate::link::receive_answer(&connection, &mut buf, sent).map_err(fail)?;
    if len == 0 {
        // Closed without an answer (shutting down, or shedding connections).
        return Err(Error::Disconnected {
            name: name.to_owned(),
        });
    }
    if len == protocol::Welcome::LEN {
        // A refusal instead of statistics.
        return Err(Error::PermissionDenied {
            name: name.to_owned(),
            owner_uid: None,
        });
    }
    Stats::decode(&buf[..len]).map_err(|r| Error::incompatible(name, r))
}

/// A server found on this machine.
#[derive(Debug)]
pub struct ServerInfo {
    /// Its service name.
    pub name: String,
    /// Its statistics, or why they could not be had.
    pub stats: Result<Stats>,
}

/// Every memlink server running on this machine (in this network namespace), with its statistics.
pub fn list_servers() -> Vec<ServerInfo> {
    socket::bound_abstract_names(SOCKET_PREFIX)
        .into_iter()
        .filter_map(|socket_name| {
            let name = socket_name.strip_prefix(SOCKET_PREFIX)?.to_owned();
            validate_name(&name).ok()?;
            let stats = server_stats(&name);
            Some(ServerInfo { name, stats })
        })
        .collect()
}
