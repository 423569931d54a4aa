//! What a server's call handler sees of a call and can answer besides a reply: the
//! [`CallContext`] (who calls, on which connection, until when), the [`CallHandler`] trait of
//! handlers that may fail or refuse ([`HandlerError`]), and the typed adapter ([`typed`],
//! [`typed_with_limits`], with the `serde` feature).
//!
//! The context is built on the worker's stack from what the connection already holds (the
//! caller's credentials, read from the kernel when the server accepted it, and the deadline
//! field of the request's record header): no allocation, no system call, no clock read.

use std::time::{Duration, Instant};

#[cfg(feature = "serde")]
use super::bounded::DecodeLimits;
use crate::platform::clock;

/// What a handler knows about the call it answers. Cheap to copy. (`CallContext::default()`,
/// pid and uid 0 and no deadline, is for testing handlers outside a server.)
///
/// # Examples
/// ```no_run
/// # fn main() -> memlink::Result<()> {
/// use memlink::rpc::{CallContext, HandlerError};
///
/// let admin_uid = 0;
/// memlink::Server::bind("accounts")?.serve_calls(
///     |call: &CallContext, request: &[u8], reply: &mut Vec<u8>| {
///         if request.starts_with(b"delete ") && call.caller_uid() != admin_uid {
///             return Err(HandlerError::refused("only an administrator may delete"));
///         }
///         if call.time_left().is_some_and(|left| left < std::time::Duration::from_millis(5)) {
///             return Err(HandlerError::new("not enough time left to do it properly"));
///         }
///         reply.extend_from_slice(b"done");
///         Ok(())
///     },
/// )?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallContext {
    pub(crate) pid: u32,
    pub(crate) uid: u32,
    pub(crate) connection: u64,
    /// Absolute `CLOCK_MONOTONIC` nanoseconds; 0: none.
    pub(crate) deadline_ns: u64,
}

impl CallContext {
    /// The calling process's id, as the kernel said when the server accepted its connection
    /// (`SO_PEERCRED`); 0 if the caller lives in a pid namespace the server cannot see. A pid
    /// identifies a process only while it lives: use it for logs, not for authorisation.
    pub fn caller_pid(&self) -> u32 {
        self.pid
    }

    /// The calling process's user id, as the kernel said when the server accepted its
    /// connection (`SO_PEERCRED`): what to base an authorisation on.
    pub fn caller_uid(&self) -> u32 {
        self.uid
    }

    /// The connection the call came on, unique within this server's run (a client opens one
    /// connection per concurrent call, and a new one after a failure). Also listed in the
    /// server's statistics ([`Stats::connection_list`](crate::rpc::Stats::connection_list)).
    pub fn connection_id(&self) -> u64 {
        self.connection
    }

    /// When the caller gives up on this call, if it set a timeout
    /// ([`Client::call_timeout`](crate::Client::call_timeout),
    /// [`ClientOptions::call_timeout`](crate::ClientOptions::call_timeout)). A reply after it is
    /// not read. Calls whose deadline had passed when the server took them are never handed to
    /// the handler.
    pub fn deadline(&self) -> Option<Instant> {
        if self.deadline_ns == 0 {
            None
        } else {
            // An Instant too far away to represent is as good as none.
            clock::ns_to_instant(self.deadline_ns)
        }
    }

    /// How long until [`CallContext::deadline`] (zero once it has passed); `None` without one.
    /// Reads the clock.
    pub fn time_left(&self) -> Option<Duration> {
        if self.deadline_ns == 0 {
            return None;
        }
        Some(Duration::from_nanos(
            self.deadline_ns.saturating_sub(clock::monotonic_ns()),
        ))
    }
}

/// An application error a handler returns instead of a reply: the client receives it as
/// [`Error::HandlerFailed`](crate::Error::HandlerFailed) (message and bytes) or, for a refusal,
/// [`Error::CallRefused`](crate::Error::CallRefused), never as a transport error, and the
/// connection stays usable. Messages longer than 4 KiB are cut (at a character boundary); the
/// message and data together must fit the server's maximum message size, or the client gets
/// [`Error::ReplyTooLarge`](crate::Error::ReplyTooLarge).
///
/// # Examples
/// ```
/// use memlink::rpc::HandlerError;
///
/// let not_found = HandlerError::new("no such account").with_data(404u32.to_le_bytes());
/// assert_eq!(not_found.message(), "no such account");
/// assert!(!not_found.is_refusal());
/// assert!(HandlerError::refused("members only").is_refusal());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    kind: Kind,
    message: String,
    data: Vec<u8>,
}

/// What a [`HandlerError`] tells the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Failed,
    Refused,
    /// A typed handler's request did not decode (the handler did not run).
    #[cfg_attr(not(feature = "serde"), allow(dead_code))]
    Undecodable,
}

impl HandlerError {
    /// The call failed: the client gets [`Error::HandlerFailed`](crate::Error::HandlerFailed)
    /// with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        HandlerError {
            kind: Kind::Failed,
            message: message.into(),
            data: Vec::new(),
        }
    }

    /// The call is refused (e.g. this caller may not make it): the client gets
    /// [`Error::CallRefused`](crate::Error::CallRefused) with `reason`. Data attached to a
    /// refusal is not sent.
    pub fn refused(reason: impl Into<String>) -> Self {
        HandlerError {
            kind: Kind::Refused,
            message: reason.into(),
            data: Vec::new(),
        }
    }

    /// The request did not decode as the typed handler's request type.
    #[cfg(feature = "serde")]
    pub(crate) fn undecodable(reason: impl Into<String>) -> Self {
        HandlerError {
            kind: Kind::Undecodable,
            message: reason.into(),
            data: Vec::new(),
        }
    }

    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// Attaches bytes for the client (an error code, an encoded error value), delivered in
    /// [`Error::HandlerFailed`](crate::Error::HandlerFailed)'s `data`.
    pub fn with_data(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.data = data.into();
        self
    }

    /// The message (or the refusal's reason).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The attached bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Whether this is a refusal ([`HandlerError::refused`]).
    pub fn is_refusal(&self) -> bool {
        self.kind == Kind::Refused
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            Kind::Refused => write!(f, "refused: {}", self.message),
            Kind::Undecodable => write!(f, "the request does not decode: {}", self.message),
            Kind::Failed => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for HandlerError {}

impl From<crate::Error> for HandlerError {
    /// A memlink error met while handling (say, calling another service) fails the call with
    /// its message.
    fn from(error: crate::Error) -> Self {
        HandlerError::new(error.to_string())
    }
}

impl From<&str> for HandlerError {
    fn from(message: &str) -> Self {
        HandlerError::new(message)
    }
}

impl From<String> for HandlerError {
    fn from(message: String) -> Self {
        HandlerError::new(message)
    }
}

/// A call handler that sees the call's context and may fail or refuse: what
/// [`Server::serve_calls`](crate::Server::serve_calls) runs. Implemented for every
/// `Fn(&CallContext, &[u8], &mut Vec<u8>) -> Result<(), HandlerError> + Send + Sync`.
///
/// `reply` arrives empty; on `Ok` whatever the handler left in it is sent back, on `Err` it is
/// discarded and the client gets the error. A handler that panics fails only that call
/// ([`Error::HandlerPanicked`](crate::Error::HandlerPanicked)). The plain
/// [`Handler`](crate::Handler) form (`Fn(&[u8], &mut Vec<u8>)`, served by
/// [`Server::serve`](crate::Server::serve)) is the same without context and failure.
pub trait CallHandler: Send + Sync {
    /// Answers one call.
    ///
    /// # Errors
    /// Whatever the client should get as [`Error::HandlerFailed`](crate::Error::HandlerFailed)
    /// or [`Error::CallRefused`](crate::Error::CallRefused).
    fn handle_call(
        &self,
        call: &CallContext,
        request: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<(), HandlerError>;
}

impl<F> CallHandler for F
where
    F: Fn(&CallContext, &[u8], &mut Vec<u8>) -> Result<(), HandlerError> + Send + Sync,
{
    fn handle_call(
        &self,
        call: &CallContext,
        request: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<(), HandlerError> {
        self(call, request, reply)
    }
}

/// A plain [`Handler`](crate::Handler) served as a [`CallHandler`] that never fails.
pub(crate) struct Plain<H>(pub(crate) H);

impl<H: super::Handler> CallHandler for Plain<H> {
    #[inline]
    fn handle_call(
        &self,
        _call: &CallContext,
        request: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<(), HandlerError> {
        self.0.handle(request, reply);
        Ok(())
    }
}

/// A handler of typed calls, made by [`typed`].
#[cfg(feature = "serde")]
pub struct Typed<Req, Resp, F> {
    handler: F,
    limits: DecodeLimits,
    // fn(Req) -> Resp: Send and Sync whatever Req and Resp are; only F is stored.
    _types: std::marker::PhantomData<fn(Req) -> Resp>,
}

#[cfg(feature = "serde")]
impl<Req, Resp, F> std::fmt::Debug for Typed<Req, Resp, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Typed")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Makes a [`CallHandler`] of a handler of typed messages (feature `serde`): each request is
/// decoded as a `Req`, the handler's `Resp` encoded as the reply, with
/// [postcard](https://docs.rs/postcard) (its stable 1.x wire format: compact, varint
/// integers, no schema). Pair it with [`Client::call_typed`](crate::Client::call_typed) on
/// the other side. A request that does not decode as a `Req` (a client using other types) is
/// answered with [`Error::Undecodable`](crate::Error::Undecodable) without running the handler,
/// and so is one beyond the decoder's bounds, the default [`DecodeLimits`] (or those given to
/// [`typed_with_limits`]). They keep a hostile client from overflowing the worker's stack with
/// a deeply nested request of a recursive type (at most 128 levels of nesting, and 512 KiB of
/// stack), keeping it busy with a huge `Vec<()>` (at most 65,536 elements that take no bytes),
/// or making it allocate without bound: the elements of the request's sequences and maps (and
/// its boxed values) may take at most 64 MiB decoded, each counted at its type's `size_of`.
///
/// That last bound matters because a typed message can be much larger decoded than sent: each
/// empty `String` of a `Vec<String>` is one byte on the wire and 24 decoded, each `None` of a
/// `Vec<Option<[u8; 1024]>>` one byte and 1,025 decoded. Every worker may hold a decoded request
/// at once, so for a typed service that expects small messages, set a smaller
/// [`ServerOptions::max_message_size`](crate::ServerOptions::max_message_size) and a smaller
/// [`DecodeLimits::max_element_bytes`] (and, on its clients,
/// [`ClientOptions::max_reply_size`](crate::ClientOptions::max_reply_size) and
/// [`ClientOptions::decode_limits`](crate::ClientOptions::decode_limits)). Replies are decoded
/// under the client's limits; the handler's own errors reach the client as with any
/// [`CallHandler`]. Bytes stay the primary API: this is a thin layer over
/// [`Server::serve_calls`](crate::Server::serve_calls).
///
/// # Examples
/// ```no_run
/// # fn main() -> memlink::Result<()> {
/// use memlink::rpc::{CallContext, HandlerError, typed};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Add { a: i64, b: i64 }
///
/// // The server
/// memlink::Server::bind("adder")?.serve_calls(typed(|_call: &CallContext, add: Add| {
///     add.a.checked_add(add.b).ok_or_else(|| HandlerError::new("overflow"))
/// }))?;
///
/// // A client
/// let client = memlink::Client::connect("adder")?;
/// let sum: i64 = client.call_typed(&Add { a: 2, b: 40 })?;
/// # Ok(()) }
/// ```
#[cfg(feature = "serde")]
pub fn typed<Req, Resp, F>(handler: F) -> Typed<Req, Resp, F>
where
    Req: serde::de::DeserializeOwned,
    Resp: serde::Serialize,
    F: Fn(&CallContext, Req) -> Result<Resp, HandlerError> + Send + Sync,
{
    typed_with_limits(handler, DecodeLimits::new())
}

/// [`typed`], decoding requests under `limits` instead of the defaults.
///
/// # Examples
/// ```no_run
/// # fn main() -> memlink::Result<()> {
/// use memlink::rpc::{CallContext, DecodeLimits, typed_with_limits};
///
/// // Small requests: a 64 KiB message decodes to at most 1 MiB of elements.
/// let limits = DecodeLimits::new().max_element_bytes(1 << 20);
/// memlink::ServerOptions::new()
///     .max_message_size(64 << 10)
///     .bind("lengths")?
///     .serve_calls(typed_with_limits(
///         |_call: &CallContext, words: Vec<String>| Ok(words.iter().map(String::len).sum::<usize>()),
///         limits,
///     ))?;
/// # Ok(()) }
/// ```
#[cfg(feature = "serde")]
pub fn typed_with_limits<Req, Resp, F>(handler: F, limits: DecodeLimits) -> Typed<Req, Resp, F>
where
    Req: serde::de::DeserializeOwned,
    Resp: serde::Serialize,
    F: Fn(&CallContext, Req) -> Result<Resp, HandlerError> + Send + Sync,
{
    Typed {
        handler,
        limits,
        _types: std::marker::PhantomData,
    }
}

#[cfg(feature = "serde")]
impl<Req, Resp, F> CallHandler for Typed<Req, Resp, F>
where
    Req: serde::de::DeserializeOwned,
    Resp: serde::Serialize,
    F: Fn(&CallContext, Req) -> Result<Resp, HandlerError> + Send + Sync,
{
    fn handle_call(
        &self,
        call: &CallContext,
        request: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<(), HandlerError> {
        // The request is the client's bytes: decoded under bounds (see `bounded`).
        let request: Req = super::bounded::decode_with(request, &self.limits)
            .map_err(HandlerError::undecodable)?;
        let response = (self.handler)(call, request)?;
        // Encoded into the worker's reply buffer, reusing its capacity.
        *reply = postcard::to_extend(&response, std::mem::take(reply)).map_err(|e| {
            HandlerError::new(format!("the typed handler's reply cannot be encoded: {e}"))
        })?;
        Ok(())
    }
}
