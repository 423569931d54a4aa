//! memlink: fast, crash-safe inter-process communication through shared memory on Linux.
//!
//! Layers, each using only the ones below it:
//!
//! - `platform` (private): every syscall and raw pointer — tmpfs objects, mappings, futexes,
//!   process liveness. The only module allowed `unsafe`.
//! - [`memory`]: named [`Segment`]s with a validated header, and the cross-process [`Event`],
//!   [`Semaphore`] and robust [`Mutex`] that live in them; [`inventory`] lists and removes objects.
//! - `link` (private): one connection between two processes, whatever the pattern — handshake,
//!   sealed region, wake-ups, parking, hang-up detection.
//! - [`rpc`]: request/response between processes — a [`Server`] with worker threads answering many
//!   [`Client`]s, each over its own pair of shared-memory rings; a client can start its server
//!   when none runs ([`ClientOptions::start_server`], [`ServerCommand`]).
//! - [`duplex`]: two symmetric peers, either may start first; each sends and receives at any time.
//! - [`pubsub`]: one [`Publisher`] per topic, many [`Subscriber`]s, zero-copy samples.
//!
//! With the `tokio` feature, every waiting operation has an async twin that parks on the same
//! wake-ups (a tokio `AsyncFd` on the connection's wake pipe and socket) instead of a thread:
//! `AsyncClient` and `Server::serve_async`, `AsyncDuplex`, `AsyncSubscriber`, and
//! `wait_async`/`lock_async` on the primitives (those hand the futex sleep to tokio's blocking
//! pool).
//!
//! Shared memory is written by other processes and treated as untrusted input: every value read
//! from it is validated before use, and nothing here forms a slice over it, with one explicit
//! exception: a subscriber reads a sample in place, under the conditions `pubsub::sample`
//! states (the only module besides `platform` allowed `unsafe`).
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[path = "fuzz.rs"]
pub mod __fuzz;
#[doc(hidden)]
#[path = "wait_export.rs"]
pub mod __wait;
pub mod duplex;
pub mod error;
mod link;
pub mod memory;
mod platform;
pub mod pubsub;
pub mod rpc;

/// Fault injection for tests: from now on this process uses the wake pipe ends its peers pass
/// it as they are (made non-blocking), sharing their open file descriptions with the peer, as it
/// must where it cannot reopen them privately (a peer of another user); reads and writes of them
/// then pass `RWF_NOWAIT`. Process-wide. Exists only with the `fault-injection` feature; not part
/// of the API.
#[doc(hidden)]
#[cfg(feature = "fault-injection")]
pub fn __use_received_wake_ends() {
    platform::notify::USE_RECEIVED_ENDS.store(true, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(feature = "tokio")]
pub use duplex::AsyncDuplex;
pub use duplex::{Duplex, DuplexOptions, DuplexReceiver, DuplexSender, TrySendError};
pub use error::{Error, NotExecuted, Payload, Result, StartLimit};
pub use memory::header::ObjectKind;
pub use memory::inventory;
pub use memory::name::{MAX_NAME_LEN, validate_name};
pub use memory::segment::{Permissions, Segment, SegmentOptions};
pub use memory::sync::{Event, EventMode, Lock, Mutex, MutexGuard, OwnerDiedGuard, Semaphore};
#[cfg(feature = "tokio")]
pub use pubsub::{AsyncMessageHandler, AsyncSubscriber};
pub use pubsub::{
    Loan, MessageHandler, Publisher, PublisherOptions, Sample, Subscriber, SubscriberOptions,
};
#[cfg(feature = "tokio")]
pub use rpc::{AsyncClient, AsyncReplyStream};
pub use rpc::{
    CallContext, CallHandler, Client, ClientOptions, Handler, HandlerError, ReplyStream, Server,
    ServerCommand, ServerOptions, ShutdownHandle, StreamHandler, StreamSink,
};
