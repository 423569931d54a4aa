//! The one error type of the crate.
//!
//! Every variant is something a caller can act on, and every message says what to do about it.
//! Conversions from raw OS errors happen in the layer that knows what was being attempted (a
//! `EACCES` while opening a segment is [`Error::PermissionDenied`], not an opaque I/O error).

use std::io;

/// Result alias used throughout memlink.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in memlink.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The name breaks the naming rule; `reason` states the rule.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// An object with this name exists and its creator is alive.
    #[error(
        "memlink object '{name}' already exists and its creator (pid {pid}) is alive; \
         open it instead, pick another name, or stop that process"
    )]
    AlreadyExists {
        /// The contested name.
        name: String,
        /// Process id recorded by the live creator (0 if it could not be read).
        pid: u32,
    },

    /// No object with this name exists.
    #[error(
        "no memlink object named '{name}'; create it first or check the name with `memlink ls`"
    )]
    NotFound {
        /// The name that was looked up.
        name: String,
    },

    /// The object belongs to another user (or its mode excludes us), or it is more open than we
    /// asked for, so it was not used: a user who can create files in the shared memory directory
    /// can put an object under any free name, and using it would read and write their memory.
    #[error("permission denied on memlink object '{name}': {}", permission_hint(.name, *.owner_uid))]
    PermissionDenied {
        /// The object that refused us.
        name: String,
        /// The user id owning the object, where known (for a server, the uid it runs as).
        owner_uid: Option<u32>,
    },

    /// The object exists but is not a memlink object of the expected kind or layout version.
    #[error("'{name}' is not a compatible memlink object: {reason}")]
    Incompatible {
        /// The object that was opened.
        name: String,
        /// What did not match (magic, layout version, kind, ...).
        reason: String,
    },

    /// Shared state written by another process is invalid. The object cannot be used safely; the
    /// process that shares it is misbehaving or crashed mid-initialisation.
    #[error("memlink object '{name}' is corrupted: {reason}; remove it with `memlink rm --force`")]
    Corrupted {
        /// The object whose shared state is invalid.
        name: String,
        /// What was found to be invalid.
        reason: String,
    },

    /// An access to a segment's bytes falls outside the segment.
    #[error("access of {len} bytes at offset {offset} is outside the {size}-byte segment")]
    OutOfBounds {
        /// Requested start, relative to the segment's payload.
        offset: usize,
        /// Requested length.
        len: usize,
        /// Payload size of the segment.
        size: usize,
    },

    /// An offset at which a sync primitive is placed is not aligned as the primitive requires.
    #[error(
        "offset {offset} is not a multiple of {align}; place the primitive at an aligned offset"
    )]
    Misaligned {
        /// The offending offset.
        offset: usize,
        /// Required alignment in bytes.
        align: usize,
    },

    /// A timed operation did not complete in time. For a call this means the server had taken
    /// the request, so its handler *may have run* (a call whose request the server provably
    /// never took fails with [`Error::NotExecuted`] instead).
    #[error(
        "timed out; retry (a call that timed out may have been executed), or check that the \
         other process is running"
    )]
    Timeout,

    /// The calling thread already holds this mutex; locking it again would never return.
    #[error("this thread (tid {tid}) already holds the mutex; locking it again would deadlock")]
    WouldDeadlock {
        /// The calling thread's id.
        tid: u32,
    },

    /// A semaphore post would push the count past its maximum.
    #[error("semaphore count would exceed its maximum of {max}; wait on it before posting more")]
    Overflow {
        /// The semaphore's maximum count.
        max: u32,
    },

    /// The object is in use by a live process, and removal was not forced.
    #[error(
        "memlink object '{name}' is in use by live process {pid}; stop it first, or force removal"
    )]
    InUse {
        /// The object.
        name: String,
        /// The live creator's process id.
        pid: u32,
    },

    /// No server (or, for a topic, no publisher) is running under this name.
    #[error(
        "nothing is serving memlink '{name}': no server or publisher runs under it; start one \
         (e.g. `memlink serve --name {name}`), wait for it (`Client::connect_timeout`, \
         `Subscriber::subscribe`), or have the client start it on demand \
         (`ClientOptions::start_server`)"
    )]
    NotRunning {
        /// The service name.
        name: String,
    },

    /// Another live server (or, for a topic, publisher) already serves this name.
    #[error(
        "a memlink server or publisher (pid {pid}) is already running under '{name}'; stop it or \
         pick another name"
    )]
    AlreadyRunning {
        /// The service name.
        name: String,
        /// The running server's process id (0 if it did not say).
        pid: u32,
    },

    /// The peer went away (crashed, was killed, shut down or closed its end): a server during a
    /// call, the other end of a duplex channel, or a topic's publisher. For a call this means
    /// the server had taken the request, so its handler *may have run* (a call whose request
    /// the server provably never took fails with [`Error::NotExecuted`] instead).
    #[error(
        "the other end of memlink '{name}' went away; a call in progress may have been \
         executed (the server had taken its request). A Client reconnects on its next call once a server is running again; drop a \
         Duplex and open the name again to pair with a new peer; a Subscriber waits for the next \
         publisher on its next receive"
    )]
    Disconnected {
        /// The service name.
        name: String,
    },

    /// A message is larger than the connection allows, so it was not sent (a call's request:
    /// the call did not run). The connection stays usable. A call's *reply* that is too large
    /// is [`Error::ReplyTooLarge`] instead.
    #[error(
        "message of {size} bytes exceeds the maximum of {max} bytes and was not sent; send less, \
         or raise the limit (the server's max_message_size; for try_call and try_send, which \
         send only what fits in the ring whole, its ring capacity; or use call and send)"
    )]
    MessageTooLarge {
        /// Size of the offending message.
        size: usize,
        /// The limit.
        max: usize,
    },

    /// The server already has as many connections as it admits.
    #[error(
        "the memlink server '{name}' is full ({max} connections); retry later or raise its max_clients"
    )]
    ServerFull {
        /// The service name.
        name: String,
        /// Its connection limit.
        max: u32,
    },

    /// A duplex name whose pair is complete: two peers are connected under it already.
    #[error(
        "the duplex channel '{name}' already has two peers connected; pick another name, or wait \
         until one of them closes it (the name is free again once both have)"
    )]
    Busy {
        /// The channel name.
        name: String,
    },

    /// A call failed before its request reached the server's handler: the handler did not run,
    /// and will never run for this call, so calling again is safe (at most once still holds).
    /// See the `rpc` module's "Did my call run?" for the exact rule, and for what it assumes of
    /// the server (one that keeps the protocol, run by a trusted user). The client stays usable
    /// (it connects again on its next call).
    #[error(
        "the call to memlink '{name}' was not executed ({reason}): the server never took its \
         request, so calling again is safe; check that the server runs and keeps up, or allow \
         the call more time"
    )]
    NotExecuted {
        /// The service name.
        name: String,
        /// Why the request never reached the handler.
        reason: NotExecuted,
    },

    /// The server's handler ran, but its reply was larger than the server allows
    /// (`ServerOptions::max_message_size`) or than this client accepts
    /// (`ClientOptions::max_reply_size`), so it was dropped. The call *was executed*. The client
    /// stays usable.
    #[error(
        "the memlink server '{name}' executed the call, but its reply of {size} bytes exceeds the \
         maximum of {max} bytes and was dropped; ask for less, or raise the limit \
         (ClientOptions::max_reply_size, the server's max_message_size)"
    )]
    ReplyTooLarge {
        /// The service name.
        name: String,
        /// Size of the reply.
        size: u64,
        /// The limit it exceeded.
        max: u64,
    },

    /// The server's handler refused the call ([`HandlerError::refused`](crate::rpc::HandlerError::refused)),
    /// typically because of who is calling. The connection stays usable.
    #[error("the memlink server '{name}' refused this call: {reason}")]
    CallRefused {
        /// The service name.
        name: String,
        /// What the handler said.
        reason: Box<str>,
    },

    /// A typed message (`Client::call_typed`, a typed handler; feature `serde`) did
    /// not decode as the type expected. The connection stays usable. For a request, the
    /// server's handler did not run.
    #[error(
        "the {what} of a typed call to memlink '{name}' does not decode as the expected type: \
         {reason}; make both sides use the same message types"
    )]
    Undecodable {
        /// The service name.
        name: String,
        /// Which message did not decode.
        what: Payload,
        /// What the decoder said.
        reason: Box<str>,
    },

    /// A typed request (`Client::call_typed`, feature `serde`) could not be encoded
    /// (postcard cannot represent some values, e.g. a sequence of unknown length). Nothing was
    /// sent: the call did not run.
    #[error(
        "the request of a typed call to memlink '{name}' cannot be encoded: {reason}; give the \
         type a representation postcard supports (known-length sequences, no untagged enums)"
    )]
    Unencodable {
        /// The service name.
        name: String,
        /// What the encoder said.
        reason: Box<str>,
    },

    /// The server's handler panicked while handling this request. The connection stays usable.
    #[error(
        "the memlink server '{name}' failed to handle this request (its handler panicked); see the server's log"
    )]
    HandlerPanicked {
        /// The service name.
        name: String,
    },

    /// The server's handler returned an error: a call's handler a
    /// [`HandlerError`](crate::rpc::HandlerError), or a stream's handler an error instead of
    /// ending the stream. The handler ran; what it did before failing is its own business. Not a
    /// transport failure: the connection stays usable.
    #[error("the memlink server '{name}' handler failed: {reason}")]
    HandlerFailed {
        /// The service name.
        name: String,
        /// What the handler reported.
        reason: String,
        /// Bytes the handler attached ([`HandlerError::with_data`](crate::rpc::HandlerError::with_data)),
        /// e.g. an application error code; empty if none.
        data: Box<[u8]>,
    },

    /// The server was not given a stream handler (`Server::serve_with`), so it serves plain
    /// calls only. The connection stays usable.
    #[error(
        "the memlink server '{name}' does not serve streams; use `call`, or serve with `Server::serve_with`"
    )]
    StreamsNotServed {
        /// The service name.
        name: String,
    },

    /// The calling thread holds open streams on every connection of this client, so a call
    /// through it (which needs a free connection) would wait for ever.
    #[error(
        "this thread holds {held} open streams of memlink '{name}', one on each of the client's \
         connections, so this call would wait for ever; read a stream to its end or drop it \
         first, make the call from another client, or raise ClientOptions::max_concurrent_calls"
    )]
    StreamsHeld {
        /// The service name.
        name: String,
        /// Open streams this thread holds (the client's `max_concurrent_calls`).
        held: usize,
    },

    /// The client dropped the stream this handler is sending: stop producing it and return.
    #[error("the client cancelled this stream; return from the stream handler")]
    Cancelled,

    /// A `try_` operation found no room and did not wait: `StreamSink::try_send` found the
    /// stream's queue full (the client reads slower than the handler produces), or
    /// `Client::try_call` found every connection busy or no room for the whole request in the
    /// request ring (the call was not sent and did not run). Retry later, or use the blocking
    /// form.
    #[error(
        "no room right now (a stream's queue, or a client's connections or request ring, is \
         full); nothing was sent: retry later, or use the blocking send or call"
    )]
    Full,

    /// A subscriber fell behind: `missed` samples were overwritten before it read them. Nothing
    /// else is lost: the next receive returns the oldest sample the publisher still keeps.
    #[error(
        "this subscriber of topic '{name}' fell behind and missed {missed} samples; it goes on from \
         the oldest one still kept (receive faster, or raise the publisher's capacity)"
    )]
    Lagged {
        /// The topic.
        name: String,
        /// How many samples were overwritten unread (exactly).
        missed: u64,
    },

    /// A subscriber already holds as many samples as the topic allows, so it may not take
    /// another (this bound is what keeps the publisher from ever running out of slots).
    #[error(
        "this subscriber of topic '{name}' already holds {limit} samples, the most the topic allows; \
         drop one before receiving another, or raise the publisher's max_held_per_subscriber"
    )]
    TooManyHeld {
        /// The topic.
        name: String,
        /// Samples one subscriber may hold at once.
        limit: u32,
    },

    /// The options asked for something memlink cannot build; `reason` says what to change.
    #[error("unusable options: {reason}")]
    InvalidOptions {
        /// What is wrong, and what to change.
        reason: String,
    },

    /// The command given to `ClientOptions::start_server` could not be run at all (no such
    /// program, not executable, out of processes).
    #[error(
        "could not run {program:?} to start the memlink server '{name}': {source}; check the \
         server command's program path and permissions"
    )]
    ServerSpawnFailed {
        /// The service name.
        name: String,
        /// The program that was to be run.
        program: String,
        /// Why it could not be run.
        #[source]
        source: io::Error,
    },

    /// The server started on demand exited with a failure before it served the name.
    #[error(
        "the memlink server '{name}' failed to start: {program:?} exited ({status}) before \
         serving the name; fix what it reports, or run it by hand to see why{}",
        tail_block(.stderr_tail)
    )]
    ServerFailedToStart {
        /// The service name.
        name: String,
        /// The program that was run.
        program: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// The end of what it wrote to its standard error (its last lines, at most 4 KiB).
        stderr_tail: String,
    },

    /// The server started on demand exited before it served the name, and its exit status
    /// could not be read: it was reaped by someone else, because this process ignores
    /// `SIGCHLD` (the kernel then discards every child's exit status at once) or another of
    /// its threads reaps every child (`waitpid(-1)`). It was waited for in case it had forked
    /// into the background, and did not serve the name in time either. Nothing was killed: a
    /// process that is no longer our child cannot be told from whoever has its pid now.
    #[error(
        "the memlink server '{name}' did not come up: {program:?} exited before serving the \
         name, within {limit}, and its exit status is unknown because this process ignores \
         SIGCHLD or another of its threads reaps every child; restore SIGCHLD's default \
         disposition to see how it failed, or run it by hand{}",
        tail_block(.stderr_tail)
    )]
    ServerExitUnobserved {
        /// The service name.
        name: String,
        /// The program that was run.
        program: String,
        /// How long the client waited for it to serve the name.
        limit: StartLimit,
        /// The end of what it wrote to its standard error (control characters removed).
        stderr_tail: String,
    },

    /// No server came up under the name in time: the one this client started ran without
    /// serving the name (it was then killed, with its process group), or another process was
    /// starting one that did not come up either.
    #[error(
        "no memlink server came up under '{name}' within {limit}; {}{}",
        match (.stderr_tail.is_some(), .starter_pid) {
            (true, _) => "the server this client started was killed, with its process group. \
                 Check that its command serves exactly this name, or allow it more time"
                .to_owned(),
            (false, Some(pid)) => format!(
                "process {pid}, which holds the name's start lock, was starting it and has not \
                 brought it up. Retry, or check the server command; if that process is stuck, \
                 stop it"
            ),
            (false, None) => "another process was starting it. Retry, or check the server \
                 command"
                .to_owned(),
        },
        tail_block(.stderr_tail.as_deref().unwrap_or_default())
    )]
    ServerStartTimedOut {
        /// The service name.
        name: String,
        /// The limit that ran out (how long the server was given, and this client waited).
        limit: StartLimit,
        /// If this client started the server: the end of what it wrote to its standard error
        /// (control characters removed).
        stderr_tail: Option<String>,
        /// If another process was starting it: that process (the start lock's holder), if it
        /// could be found (another user's processes are visible to root only).
        starter_pid: Option<u32>,
    },

    /// A process of a user we do not trust holds the lock that serialises starting this
    /// service on demand, so no server can be started for it (nor should one be used).
    #[error(
        "a process of uid {uid} ({}), a user this client does not trust, holds the start lock \
         of memlink '{name}' (the abstract socket @memlink.up.{name}), so no server can be \
         started on demand under that name; pick another name (e.g. one that includes your \
         uid), stop that process, or trust that user with ClientOptions::trust_server_uid",
        .pid.map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"))
    )]
    StartLockHeld {
        /// The service name.
        name: String,
        /// The holder's user id (the user that created the lock's socket).
        uid: u32,
        /// A process holding it, if one could be found (another user's processes are visible
        /// to root only).
        pid: Option<u32>,
    },

    /// The operating system refused an operation for a reason not covered above.
    #[error("{op} failed: {source}")]
    Os {
        /// What memlink was doing.
        op: &'static str,
        /// The underlying OS error.
        #[source]
        source: io::Error,
    },
}

/// Why a call was not executed ([`Error::NotExecuted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotExecuted {
    /// The server went away (killed, crashed, shut down, or it dropped the connection; or the
    /// connection only looked dead) before it took the request, and the request could not be
    /// sent to a server again: none runs now, or the one resend the client makes failed the
    /// same way. The client withdrew the request from the old connection, so even a server
    /// still alive behind it skips it.
    ServerGone,
    /// The call's timeout ran out before the server took the request (no free connection, the
    /// server slow to accept or to take requests), or the server took it only after its
    /// deadline and skipped it.
    TimedOut,
}

impl std::fmt::Display for NotExecuted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NotExecuted::ServerGone => "the server went away before it took the request",
            NotExecuted::TimedOut => {
                "the call's timeout ran out before the server took the request"
            }
        })
    }
}

/// Which message of a typed call did not decode ([`Error::Undecodable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// The request (the server could not decode it; its handler did not run).
    Request,
    /// The reply (the handler ran).
    Reply,
}

impl std::fmt::Display for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Payload::Request => "request",
            Payload::Reply => "reply",
        })
    }
}

/// Which limit ended a wait for a server started on demand (see
/// `ClientOptions::start_server`), and how long it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartLimit {
    /// The start timeout (`ClientOptions::start_timeout`).
    StartTimeout(std::time::Duration),
    /// The timeout of the connect or call that started the server (`connect_timeout`,
    /// `call_timeout`, ...), which was longer than the start timeout.
    CallerTimeout(std::time::Duration),
}

impl std::fmt::Display for StartLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartLimit::StartTimeout(limit) => {
                write!(
                    f,
                    "the start timeout of {limit:.1?} (ClientOptions::start_timeout)"
                )
            }
            StartLimit::CallerTimeout(limit) => write!(
                f,
                "the {limit:.1?} timeout of this connect or call (longer than the start timeout)"
            ),
        }
    }
}

/// The tail of a server's standard error, to end a message with.
fn tail_block(tail: &str) -> String {
    let tail = tail.trim_end();
    if tail.is_empty() {
        String::new()
    } else {
        format!(". Its standard error ended with:\n{tail}")
    }
}

fn permission_hint(name: &str, owner_uid: Option<u32>) -> String {
    match owner_uid {
        None => {
            "it belongs to another user or its mode excludes you; run as its owner, or have it \
                 created with group/everyone permissions"
                .to_owned()
        }
        Some(uid) => format!(
            "it is owned, or run, by uid {uid}. A segment or sync object: memlink opens only \
             objects owned by its own user or by a user it is told to trust, with a mode no wider \
             than the permissions asked for; if uid {uid} should not own '{name}', another user \
             is squatting the name: remove it with `memlink rm {name}` (as root or uid {uid}); if \
             it is shared on purpose, open it with `SegmentOptions::trust_owner_uid({uid})` and \
             the permissions it was created with (e.g. `Permissions::Everyone`). A server, \
             publisher or duplex peer: memlink talks only to its own user, root, or a user it is \
             told to trust; if uid {uid} serves '{name}' on purpose, trust it \
             (`ClientOptions::trust_server_uid({uid})`, `SubscriberOptions::trust_publisher_uid`, \
             `DuplexOptions::trust_peer_uid`), otherwise another user holds the name (only they \
             or root can free it): pick another name"
        ),
    }
}

impl Error {
    pub(crate) fn os(op: &'static str, errno: rustix::io::Errno) -> Self {
        Error::Os {
            op,
            source: errno.into(),
        }
    }

    pub(crate) fn corrupted(name: &str, reason: impl Into<String>) -> Self {
        Error::Corrupted {
            name: name.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn incompatible(name: &str, reason: impl Into<String>) -> Self {
        Error::Incompatible {
            name: name.to_owned(),
            reason: reason.into(),
        }
    }
}
