//! Request/response: many client processes call one server process; each call gets its own answer.
//!
//! Owns the roles and semantics of a call: the [`Client`], the [`Server`], what a handler sees
//! and may answer besides a reply (`handler`: [`CallContext`], [`CallHandler`],
//! [`HandlerError`], typed messages), the handler latency histogram (`histogram`), rpc's own
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
//! Every failed call says whether the server's handler ran, so that a caller can retry what
//! provably did not run and check on what may have (at most once: the client itself resends a
//! request only when it provably never reached the server).
//!
//! | the call failed with | the handler |
//! |---|---|
//! | [`Error::NotExecuted`], and errors from before a request is sent: [`Error::NotRunning`], [`Error::ServerFull`], [`Error::PermissionDenied`], [`Error::MessageTooLarge`], [`Error::Full`] (`try_call`), [`Error::StreamsHeld`], [`Error::Unencodable`], start errors | did not run, and never will for this call |
//! | [`Error::HandlerFailed`], [`Error::CallRefused`] (the handler said so), [`Error::HandlerPanicked`], [`Error::ReplyTooLarge`], [`Error::Undecodable`] of the reply | ran (and returned, refused, panicked, or replied too much) |
//! | [`Error::Undecodable`] of the request | did not run (a typed handler could not decode the request) |
//! | [`Error::Disconnected`], [`Error::Timeout`], [`Error::Corrupted`], [`Error::Os`] | may have run |
//!
//! The rule: a request is *not executed* if it was not written whole into the request ring
//! (the connection is then dropped, so its rest never comes, and a server never runs a partial
//! request), or if, when the call gave up, the server's consumer position in the ring (which
//! it advances after taking a record) had not passed the request's first record, *and* it never
//! will take it: the connection is gone (the server hung up, died or said goodbye: nothing takes
//! anything from a dropped connection), or the call's deadline had passed (the request carries
//! it, and a worker that takes a request whose deadline has passed skips it, answering
//! `ERR_DEADLINE_EXPIRED`, without running the handler). The last case is a race between the
//! client's clock read and the server's take, closed by a `SeqCst` fence on each side: the
//! client reads its clock, fences, reads the consumer position; the worker stores the consumer
//! position, fences, reads the clock. If the client saw the request untaken, the worker's clock
//! read comes after the client's, past the deadline. Anything else (the server had taken the
//! request, or its position could not be read) *may have run*.
//!
//! A request not executed because the server went away is sent once more on a fresh connection
//! (a restarted server, or one started on demand, runs it); if that fails the same way the call
//! reports [`Error::NotExecuted`] with [`NotExecuted::ServerGone`].
//!
//! # Deadlines
//!
//! A call with a timeout ([`Client::call_timeout`], [`ClientOptions::call_timeout`]) sends its
//! deadline in the `meta` word of each of its request's record headers: absolute
//! `CLOCK_MONOTONIC` nanoseconds, which every process of the machine reads alike (converted from
//! the caller's `Instant` without a clock read, never later than it). The server validates it
//! (no clock reads a value above `i64::MAX`; every fragment of a request carries the same one),
//! reads its clock only for a request that has one, skips the request if it has passed, and
//! gives it to the handler ([`CallContext::deadline`]). A call without a timeout costs no clock
//! read on either side.

mod client;
mod handler;
mod histogram;
mod launch;
mod protocol;
mod server;
mod stream;

#[cfg(feature = "tokio")]
pub use client::{AsyncClient, AsyncReplyStream};
pub use client::{Client, ClientOptions, ReplyStream};
pub use handler::{CallContext, CallHandler, HandlerError};
#[cfg(feature = "serde")]
pub use handler::{Typed, typed};
pub use launch::ServerCommand;
pub use protocol::{ConnectionStats, HandlerLatency, Stats};
#[cfg(feature = "tokio")]
pub use server::{AsyncCallHandler, AsyncHandler};
pub use server::{Handler, Server, ServerOptions, ShutdownHandle};
pub use stream::{StreamHandler, StreamSink};

use std::time::Duration;

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
/// [`Error::Timeout`] if it does not answer within a second.
pub fn server_stats(name: &str) -> Result<Stats> {
    validate_name(name)?;
    let fail = |e: rustix::io::Errno| match e {
        rustix::io::Errno::CONNREFUSED | rustix::io::Errno::NOENT => Error::NotRunning {
            name: name.to_owned(),
        },
        rustix::io::Errno::AGAIN => Error::Timeout,
        e => Error::os("querying a server", e),
    };
    // Statistics carry no descriptors: the socket refuses them throughout.
    let connection = socket::connect(&socket_name(name), Duration::from_secs(1)).map_err(fail)?;
    socket::send_message(
        &connection,
        &Hello {
            purpose: Purpose::Stats,
            max_message: 0,
        }
        .encode(),
        &[],
    )
    .map_err(fail)?;
    let mut buf = vec![0u8; Stats::MAX_LEN + 8];
    let (len, _) = socket::receive_message(&connection, &mut buf, true).map_err(fail)?;
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
