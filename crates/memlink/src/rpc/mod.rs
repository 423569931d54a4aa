//! Request/response: many client processes call one server process; each call gets its own answer.
//!
//! Owns the roles and semantics of a call: the [`Client`], the [`Server`], rpc's own wire details
//! (`protocol`: service socket name, error reports, statistics). The connection underneath
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

mod client;
mod handler;
mod histogram;
mod launch;
mod protocol;
mod server;
mod stream;

pub use client::{Client, ClientOptions, ReplyStream};
pub use handler::{CallContext, CallHandler, HandlerError};
#[cfg(feature = "serde")]
pub use handler::{Typed, typed};
pub use launch::ServerCommand;
pub use protocol::{ConnectionStats, HandlerLatency, Stats};
pub use server::{Handler, Server, ServerOptions, ShutdownHandle};
pub use stream::{StreamHandler, StreamSink};

use std::time::Duration;

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
