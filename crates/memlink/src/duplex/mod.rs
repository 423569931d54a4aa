//! The duplex channel: two processes open the same name; whichever comes first waits for the
//! other; then either side sends and receives at any time. Messages are queued in order, never
//! overwritten, never lost or duplicated.
//!
//! Owns the rendezvous on a name, the pairing rules (a third opener is [`Error::Busy`]) and the
//! message semantics (ids, fragments, reassembly, timeouts). The connection underneath (sealed
//! region, wake pipes, parking, hang-up detection) is `link`'s, the same as request/response's.
//! May use `link` (for everything about sockets, descriptors and wake-ups: this module touches
//! none itself), `memory` (rings) and `platform` (the process id); no `unsafe`.
//!
//! # Rendezvous
//!
//! An opener tries to bind the abstract `SOCK_SEQPACKET` socket `memlink.duplex.<name>`. Binding
//! is atomic, so of two openers exactly one succeeds: it is the *accepting* side, the other the
//! *connecting* side, whatever the order or timing: two simultaneous openers can never both wait
//! or both connect, and an opener never connects to itself (it holds the listener, not a
//! connection). The accepting side waits for the first connector whose credentials it admits
//! (`SO_PEERCRED`, checked before anything is read), builds the connection's sealed region and
//! wake pipes exactly like an rpc server's admission (`link::offer`), and passes them in
//! its welcome; the accepting side counts the pair formed when the connector acknowledges them (a
//! connector that gave up before reading the welcome leaves the accepting side waiting, not
//! paired with nobody), starts its busy responder, and confirms; the connector counts it formed
//! only on that confirmation (bounded like every handshake step; without it, it starts over from
//! the bind). Callers waiting to say hello are handled side by side, each with its own deadline,
//! so silent callers cannot keep the real peer out. The accepting side keeps the listener bound
//! while the pair lives and answers any further opener with a `Busy` welcome from a small thread
//! (`link::rendezvous::Responder`), so a third opener learns at once that the pair is complete. If bind fails with `EADDRINUSE` the opener connects instead, checks the accepting
//! side's user before sending anything, and validates the region it receives like an rpc client
//! (`link::offer` and `link::adopt`, shared with rpc); descriptors are refused on the socket except
//! for the welcome. If the accepting side vanished between our bind and our connect (it timed
//! out, or was killed), the connect is refused or hung up without a welcome, and we start over
//! from the bind. The kernel frees an abstract name the moment its socket closes, so nothing is
//! left behind, whoever is killed.
//!
//! Why a socket and not a file in `/dev/shm`: the socket's hang-up is how a peer's death wakes
//! the survivor (no polling), bind gives the atomic election for free, and the credentials come
//! from the kernel, not from shared memory.
//!
//! # Two rings, four wake pipes
//!
//! The region holds a ring per direction. A side may wait for data (in `recv`) and for room (in
//! `send`) at the same time, on two threads. Each of those waits has its own parked flag in the
//! region and its own wake pipe: the peer's send wakes only our receiving thread, the peer's
//! receive only our sending thread, so no wake-up can be consumed by the wrong thread and leave
//! the other asleep. Both sleepers also watch the socket, so a peer's death wakes both at once.
//! The send half and the receive half are locked independently, so `Duplex` is `Send + Sync`.
//! [`Duplex::split`] hands them out as [`DuplexSender`] and [`DuplexReceiver`] instead, owned by
//! whichever thread uses them: no lock at all then (an uncontended lock still costs two atomic
//! read-modify-writes, full barriers on x86, per message).
//!
//! # After the peer is gone
//!
//! Messages the peer published before it died are still received, in order; only then does
//! `recv` return [`Error::Disconnected`]. A `Duplex` whose peer is gone stays unusable: drop it,
//! and open the name again to pair with a new peer. While the accepting side of a broken pair
//! lives it still holds the name (new openers get `Busy`), so the survivor should drop its
//! `Duplex` promptly.

#[cfg(feature = "tokio")]
mod asynchronous;
#[cfg(feature = "tokio")]
pub use asynchronous::AsyncDuplex;

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::link::fragment::{Reassembly, fragment_at, fragment_lens};
use crate::link::protocol::{Admission, Goodbye, Hello, Purpose, Welcome};
use crate::link::rendezvous::{self, Caller, Gate, Responder};
use crate::link::wake::{self, CLIENT, CLIENT_ROOM, SERVER, SERVER_ROOM, Side};
use crate::link::{self, Keep, Offered, Parked};
use crate::memory::name::validate_name;
use crate::memory::ring::{Consumer, MAX_CAPACITY, MIN_CAPACITY, Producer, RingError, USER_FLAGS};
use crate::memory::segment::Permissions;
use crate::platform::mapping::Mapping;
#[cfg(feature = "fault-injection")]
use crate::platform::notify;
use crate::platform::process;

/// Prefix of every duplex channel's abstract socket name.
const SOCKET_PREFIX: &str = "memlink.duplex.";
/// Longest a handshake step may take once the other side is there.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// What the accepting side sends once the pair is complete on its side (its busy responder
/// runs): the connector reports the pair formed only after this.
const CONFIRMATION: Hello = Hello {
    purpose: Purpose::Paired,
    max_message: 0,
};
/// Test hook: the next accepting side fails as if its busy responder could not start.
#[cfg(feature = "fault-injection")]
static FAIL_NEXT_RESPONDER: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);
/// Most bytes reserved for an incoming message before they arrive.
const MAX_UPFRONT_RESERVE: usize = 16 << 20;

/// The accepting side's ends of a pair's wake pipes, in the order the welcome carries the others:
/// its receiver's and its sender's (read), the connector's receiver's and sender's (write).
const DUPLEX_PIPES: [Keep; 4] = [Keep::Read, Keep::Read, Keep::Write, Keep::Write];

/// Whether a message of `len` bytes can always be placed in a ring of `capacity` whole, wherever
/// its tail is: its records plus one fragment's worth of padding at the ring's end (the most a
/// message may need before it wraps) fit. Larger messages stream through as the peer receives.
fn fits_whole(len: usize, fragment: usize, capacity: usize) -> bool {
    use crate::memory::ring::record_size;
    let footprint: usize = fragment_lens(len, fragment).map(record_size).sum();
    footprint + record_size(fragment) <= capacity
}

/// Longest channel name: an abstract socket address holds 107 bytes, prefix included.
const MAX_NAME_LEN: usize = 92;
const _: () = assert!(SOCKET_PREFIX.len() + MAX_NAME_LEN == 107);

/// The general naming rule, and a length that fits in an abstract socket address.
fn validate_channel_name(name: &str) -> Result<()> {
    validate_name(name)?;
    if name.len() > MAX_NAME_LEN {
        return Err(Error::InvalidName {
            name: name.to_owned(),
            reason: "a duplex channel name must be at most 92 bytes long (it names an abstract socket)",
        });
    }
    Ok(())
}

fn socket_name(name: &str) -> String {
    format!("{SOCKET_PREFIX}{name}")
}

/// How to open a duplex channel. `DuplexOptions::new()` gives the defaults.
///
/// The ring capacity of a pair is the accepting side's (the one that opened first); the maximum
/// message size is the smaller of the two sides' and applies in both directions.
#[derive(Debug, Clone)]
pub struct DuplexOptions {
    ring_capacity: usize,
    max_message_size: usize,
    permissions: Permissions,
    trusted_peer_uid: Option<u32>,
}

impl Default for DuplexOptions {
    fn default() -> Self {
        DuplexOptions {
            ring_capacity: 256 << 10,
            max_message_size: 64 << 20,
            permissions: Permissions::OwnerOnly,
            trusted_peer_uid: None,
        }
    }
}

impl DuplexOptions {
    /// Defaults: 256 KiB per direction, messages up to 64 MiB, peers of our own user (or root).
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of ring per direction (rounded up to a power of two, 4 KiB to 1 GiB).
    pub fn ring_capacity(mut self, bytes: usize) -> Self {
        self.ring_capacity = bytes.clamp(MIN_CAPACITY, MAX_CAPACITY).next_power_of_two();
        self
    }

    /// Largest message either side may send (the smaller of the two sides' settings applies).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Which users may pair with us when we open first (by default only our own user and root).
    pub fn permissions(mut self, permissions: Permissions) -> Self {
        self.permissions = permissions;
        self
    }

    /// Also pair with a peer run by user `uid`, whichever side opens first (by default only our
    /// own user and root are trusted, so another user cannot take the name and pose as the peer).
    pub fn trust_peer_uid(mut self, uid: u32) -> Self {
        self.trusted_peer_uid = Some(uid);
        self
    }

    /// Opens channel `name`, waiting for the peer as long as it takes.
    ///
    /// # Errors
    /// As [`Duplex::open`].
    pub fn open(&self, name: &str) -> Result<Duplex> {
        Duplex::rendezvous(name, self, None)
    }

    /// Opens channel `name`, waiting up to `timeout` for the peer.
    ///
    /// # Errors
    /// As [`Duplex::open_timeout`].
    pub fn open_timeout(&self, name: &str, timeout: Duration) -> Result<Duplex> {
        Duplex::rendezvous(name, self, Instant::now().checked_add(timeout))
    }
}

/// Why [`Duplex::try_send`] did not send; the message comes back with it.
#[derive(Debug, thiserror::Error)]
pub enum TrySendError {
    /// The peer has not made room for the whole message yet; try again later. (A message that
    /// needs more than the ring's capacity never fits at once: send it with [`Duplex::send`].)
    #[error("the duplex ring is full; retry once the peer has received")]
    Full(Vec<u8>),
    /// The message can never be placed in the ring at once, however empty it is: its records
    /// (plus the padding the ring's end may need before it) exceed the ring's capacity. Nothing
    /// was sent and the channel is still usable; send it with [`Duplex::send`] or
    /// [`Duplex::send_timeout`], which stream it through as the peer receives.
    #[error(
        "the message is too large to be sent without waiting on this ring; send it with send or send_timeout"
    )]
    TooLargeForTrySend(Vec<u8>),
    /// The channel cannot send any more: the peer is gone, or something else failed (the error
    /// says what).
    #[error("{1}")]
    Failed(Vec<u8>, Error),
}

impl TrySendError {
    /// The message that was not sent.
    pub fn into_message(self) -> Vec<u8> {
        match self {
            TrySendError::Full(m)
            | TrySendError::TooLargeForTrySend(m)
            | TrySendError::Failed(m, _) => m,
        }
    }
}

/// One end of a duplex channel. `Send + Sync`: one thread may send while another receives.
///
/// # Examples
/// ```no_run
/// # fn main() -> memlink::Result<()> {
/// // In each of two processes (either may start first):
/// let chan = memlink::Duplex::open("chat")?;
/// chan.send(b"hello")?;
/// let reply = chan.recv()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Duplex {
    conn: Arc<Connection>,
    tx: Mutex<Outgoing>,
    rx: Mutex<Incoming>,
}

/// The sending half of a duplex channel, from [`Duplex::split`]. Its methods take `&mut self`:
/// no lock on the way, so a thread that only sends pays for nothing but the ring. Dropping both
/// halves closes the channel (the peer then sees it disconnected); dropping one leaves the other
/// working.
#[derive(Debug)]
pub struct DuplexSender {
    conn: Arc<Connection>,
    tx: Outgoing,
}

/// The receiving half of a duplex channel, from [`Duplex::split`]. As [`DuplexSender`], for
/// receiving.
#[derive(Debug)]
pub struct DuplexReceiver {
    conn: Arc<Connection>,
    rx: Incoming,
}

/// What both halves of one end share: the connection itself.
#[derive(Debug)]
struct Connection {
    name: String,
    max_message: usize,
    peer_pid: u32,
    socket: OwnedFd,
    map: Arc<Mapping>,
    /// Set by whichever half first learns that the connection is over: the peer is gone, or one
    /// side corrupted it (with the reason). The send half's next call then fails at once instead
    /// of writing into a ring nobody reads; the receive half stops at once on corruption (and
    /// takes what a gone peer published first). Both report the same reason. One atomic load per
    /// call.
    gone: OnceLock<Failed>,
    /// Accepting side only: answers later openers with `Busy` while the pair lives (its thread
    /// is stopped and joined on drop, which frees the name).
    busy: OnceLock<Responder>,
    /// The write ends of the peer's two wake pipes, also held by the halves: closing one is how
    /// the peer learns that we are gone, so they close only with the last half (a dropped
    /// sender must not look like a hang-up to the peer's receiver while our receiver lives).
    _peer_pipes: [Arc<OwnedFd>; 2],
}
/// Why a half can no longer be used.
#[derive(Debug, Clone)]
enum Failed {
    Disconnected,
    Corrupted(String),
}

#[derive(Debug)]
struct Outgoing {
    ring: Producer,
    next_id: u64,
    /// Our parked flag while waiting for room, and the peer's while it waits for data.
    me: Side,
    peer: Side,
    /// Read end of the pipe the peer wakes our sender through; write end of its receiver's.
    wake_in: OwnedFd,
    wake_peer: Arc<OwnedFd>,
    failed: Option<Failed>,
}

#[derive(Debug)]
struct Incoming {
    ring: Consumer,
    next_id: u64,
    me: Side,
    peer: Side,
    wake_in: OwnedFd,
    wake_peer: Arc<OwnedFd>,
    /// A message received in part when a timed receive gave up, and where its reassembly is.
    partial: Vec<u8>,
    reassembly: Reassembly,
    failed: Option<Failed>,
}

impl Duplex {
    /// Opens channel `name` with default options, waiting for the peer as long as it takes.
    ///
    /// Whoever holds the name is checked as soon as a connection to it succeeds: another
    /// (untrusted) user's process gets nothing and we return [`Error::PermissionDenied`]. A
    /// process that binds the name and never accepts can, once its backlog is full, keep every
    /// connection from succeeding; we cannot learn who it is then and keep retrying (each
    /// attempt bounded), so without a timeout this waits until it goes away: use
    /// [`Duplex::open_timeout`] where the name may be squatted.
    ///
    /// # Errors
    /// [`Error::Busy`] if two peers are already paired under the name; [`Error::PermissionDenied`]
    /// if the side that opened first is another user's (or refuses ours); [`Error::InvalidName`]
    /// (also for a name longer than 92 bytes).
    pub fn open(name: &str) -> Result<Duplex> {
        DuplexOptions::new().open(name)
    }

    /// Like [`Duplex::open`], giving up after `timeout` without a peer. The name is free again
    /// when this returns. Every handshake step is bounded by the time left, so callers that stall
    /// cannot keep this past its deadline (nor keep the real peer out: they wait for their hello
    /// side by side).
    ///
    /// # Errors
    /// [`Error::Timeout`]; otherwise as [`Duplex::open`].
    pub fn open_timeout(name: &str, timeout: Duration) -> Result<Duplex> {
        DuplexOptions::new().open_timeout(name, timeout)
    }

    /// Options for opening with non-default settings.
    pub fn options() -> DuplexOptions {
        DuplexOptions::new()
    }

    /// The channel name.
    pub fn name(&self) -> &str {
        &self.conn.name
    }

    /// Largest message either side may send, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.conn.max_message
    }

    /// The peer's process id (as the kernel reported it when the pair formed).
    pub fn peer_pid(&self) -> u32 {
        self.conn.peer_pid
    }

    /// Splits this end into its sending and receiving halves, each usable from its own thread
    /// without a lock (their methods take `&mut self`). The fastest way to stream one way.
    pub fn split(self) -> (DuplexSender, DuplexReceiver) {
        let Duplex { conn, tx, rx } = self;
        let tx = tx.into_inner().unwrap_or_else(PoisonError::into_inner);
        let rx = rx.into_inner().unwrap_or_else(PoisonError::into_inner);
        (
            DuplexSender {
                conn: conn.clone(),
                tx,
            },
            DuplexReceiver { conn, rx },
        )
    }

    fn rendezvous(
        name: &str,
        options: &DuplexOptions,
        deadline: Option<Instant>,
    ) -> Result<Duplex> {
        validate_channel_name(name)?;
        let mut pause = Duration::from_micros(100);
        loop {
            if deadline.is_some_and(|t| Instant::now() >= t) {
                return Err(Error::Timeout);
            }
            if let Some(listener) = rendezvous::bind(&socket_name(name))? {
                return Self::accept_peer(name, options, listener, deadline);
            }
            match Self::connect_peer(name, options, deadline) {
                // The accepting side vanished between our bind and our connect, or dropped us
                // unanswered: start over (we may be the one to wait now).
                Err(Error::NotRunning { .. } | Error::Disconnected { .. }) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
                // The accepting side did not answer in time (busy with another connector's
                // handshake; each attempt waits at most `HANDSHAKE_TIMEOUT`): try again while
                // our own deadline (if any) has not passed.
                Err(Error::Timeout) if deadline.is_none_or(|t| Instant::now() < t) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }

    /// The accepting side: waits for an admissible connector and hands it the connection.
    fn accept_peer(
        name: &str,
        options: &DuplexOptions,
        listener: OwnedFd,
        deadline: Option<Instant>,
    ) -> Result<Duplex> {
        let answer = |admission| {
            Welcome {
                admission,
                ring_capacity: options.ring_capacity as u32,
                max_message: 0,
                server_pid: process::current_pid(),
            }
            .encode()
        };
        let gate = Gate {
            permissions: options.permissions,
            trusted_uid: options.trusted_peer_uid,
            refusal: answer(Admission::PermissionDenied),
        };
        loop {
            let Some(caller) =
                rendezvous::next_caller(&listener, deadline, &gate, HANDSHAKE_TIMEOUT)?
            else {
                return Err(Error::Timeout);
            };
            if let Some(duplex) = Self::admit(name, options, caller, deadline)? {
                #[cfg(feature = "fault-injection")]
                if FAIL_NEXT_RESPONDER.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    return Err(Error::os(
                        "starting the duplex busy responder",
                        rustix::io::Errno::NOMEM,
                    ));
                }
                let busy = Responder::start(listener, gate, answer(Admission::Busy))
                    .map_err(|e| Error::os("starting the duplex busy responder", e))?;
                // Only now is the pair complete on our side: tell the connector, which waits
                // for this before it reports the pair formed. (If it gave up meanwhile, our
                // first call finds it gone.)
                let _ = duplex.conn.busy.set(busy);
                let _ = rendezvous::send(&duplex.conn.socket, &CONFIRMATION.encode());
                return Ok(duplex);
            }
        }
    }

    /// Completes the pair with `caller`, or drops it (`Ok(None)`: keep waiting).
    fn admit(
        name: &str,
        options: &DuplexOptions,
        caller: Caller,
        deadline: Option<Instant>,
    ) -> Result<Option<Duplex>> {
        let Caller {
            socket: connection,
            peer,
            hello:
                Hello {
                    purpose: Purpose::Duplex,
                    max_message: theirs,
                },
        } = caller
        else {
            return Ok(None);
        };
        // The connector's acknowledgement may take `HANDSHAKE_TIMEOUT`, never past our deadline.
        let step = match deadline {
            None => HANDSHAKE_TIMEOUT,
            Some(t) => match t.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left.min(HANDSHAKE_TIMEOUT),
                _ => return Ok(None),
            },
        };
        if rendezvous::set_io_timeout(&connection, step).is_err() {
            return Ok(None);
        }
        let max_message = options.max_message_size.min(theirs as usize);
        // Four wake pipes: we keep the read ends of our receiver's and our sender's, and the
        // write ends of the peer's receiver's and sender's.
        let welcome = Welcome {
            admission: Admission::Accepted,
            ring_capacity: options.ring_capacity as u32,
            max_message: max_message as u64,
            server_pid: process::current_pid(),
        };
        let Ok(Offered {
            map,
            layout,
            ends: [data_in, room_in, wake_peer_data, wake_peer_room],
        }) = link::offer(
            &connection,
            &welcome.encode(),
            options.ring_capacity,
            DUPLEX_PIPES,
        )
        else {
            return Ok(None);
        };
        // The pair is formed only once the connector says it adopted the region: one that gave
        // up before reading its welcome must not leave us paired with nobody.
        let paired = rendezvous::read_hello(&connection)
            .is_some_and(|hello| hello.purpose == Purpose::Paired);
        if !paired {
            return Ok(None);
        }
        let ring = |e: RingError| Error::corrupted(name, e.0);
        // We produce the "responses" ring and consume the "requests" ring, as an rpc server.
        let tx = Producer::new(map.clone(), layout.responses()).map_err(ring)?;
        let rx = Consumer::new(map.clone(), layout.requests()).map_err(ring)?;
        Ok(Some(Duplex::assemble(
            name,
            max_message,
            peer.pid,
            connection,
            map,
            (tx, SERVER_ROOM, CLIENT, room_in, wake_peer_data),
            (rx, SERVER, CLIENT_ROOM, data_in, wake_peer_room),
        )))
    }

    /// The connecting side: shakes hands with the side that bound the name.
    fn connect_peer(
        name: &str,
        options: &DuplexOptions,
        deadline: Option<Instant>,
    ) -> Result<Duplex> {
        let patience = deadline.map_or(HANDSHAKE_TIMEOUT, |t| {
            t.saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), HANDSHAKE_TIMEOUT)
        });
        let hello = Hello {
            purpose: Purpose::Duplex,
            max_message: u32::try_from(options.max_message_size).unwrap_or(u32::MAX),
        };
        let link::Answer {
            socket: connection,
            peer,
            welcome,
            fds,
        } = link::handshake(
            name,
            &socket_name(name),
            patience,
            options.trusted_peer_uid,
            &hello,
        )?;
        match welcome.admission {
            Admission::Accepted => {}
            Admission::Busy => {
                return Err(Error::Busy {
                    name: name.to_owned(),
                });
            }
            Admission::PermissionDenied => {
                return Err(Error::PermissionDenied {
                    name: name.to_owned(),
                    owner_uid: None,
                });
            }
            Admission::Full { .. } | Admission::ShuttingDown => {
                return Err(Error::incompatible(
                    name,
                    "the peer answered like a request/response server",
                ));
            }
        }
        let (map, layout, [wake_peer_data, wake_peer_room, data_in, room_in]) =
            link::adopt(name, welcome.ring_capacity as usize, fds, DUPLEX_PIPES)?;
        let max_message = usize::try_from(welcome.max_message)
            .unwrap_or(usize::MAX)
            .min(options.max_message_size);
        let ring = |e: RingError| Error::corrupted(name, e.0);
        let tx = Producer::new(map.clone(), layout.requests()).map_err(ring)?;
        let rx = Consumer::new(map.clone(), layout.responses()).map_err(ring)?;
        let paired = Hello {
            purpose: Purpose::Paired,
            max_message: 0,
        };
        rendezvous::send(&connection, &paired.encode())
            .map_err(|e| link::connect_error(name, e))?;
        // The pair is formed once the accepting side confirms (its acknowledgement wait may
        // have run out, or it may have failed or died meanwhile); its socket's receive timeout
        // bounds the wait. Nothing confirmed: start over from the bind.
        let confirmed =
            rendezvous::read_hello(&connection).is_some_and(|hello| hello == CONFIRMATION);
        if !confirmed {
            return Err(if deadline.is_some_and(|t| Instant::now() >= t) {
                Error::Timeout
            } else {
                Error::Disconnected {
                    name: name.to_owned(),
                }
            });
        }
        Ok(Duplex::assemble(
            name,
            max_message,
            peer.pid,
            connection,
            map,
            (tx, CLIENT_ROOM, SERVER, room_in, wake_peer_data),
            (rx, CLIENT, SERVER_ROOM, data_in, wake_peer_room),
        ))
    }

    fn assemble(
        name: &str,
        max_message: usize,
        peer_pid: u32,
        socket: OwnedFd,
        map: Arc<Mapping>,
        (ring, me, peer, wake_in, wake_peer): (Producer, Side, Side, OwnedFd, OwnedFd),
        rx: (Consumer, Side, Side, OwnedFd, OwnedFd),
    ) -> Duplex {
        let wake_peer = Arc::new(wake_peer);
        let tx_peer_pipe = wake_peer.clone();
        let tx = Outgoing {
            ring,
            next_id: 1,
            me,
            peer,
            wake_in,
            wake_peer,
            failed: None,
        };
        let (ring, me, peer, wake_in, wake_peer) = rx;
        let wake_peer = Arc::new(wake_peer);
        let rx_peer_pipe = wake_peer.clone();
        let rx = Incoming {
            ring,
            next_id: 1,
            me,
            peer,
            wake_in,
            wake_peer,
            partial: Vec::new(),
            reassembly: Reassembly::default(),
            failed: None,
        };
        Duplex {
            conn: Arc::new(Connection {
                name: name.to_owned(),
                max_message,
                peer_pid,
                socket,
                map,
                gone: OnceLock::new(),
                busy: OnceLock::new(),
                _peer_pipes: [tx_peer_pipe, rx_peer_pipe],
            }),
            tx: Mutex::new(tx),
            rx: Mutex::new(rx),
        }
    }

    fn tx(&self) -> MutexGuard<'_, Outgoing> {
        self.tx.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn rx(&self) -> MutexGuard<'_, Incoming> {
        self.rx.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `message`, waiting for room as long as it takes.
    ///
    /// A send that finds room returns at once without asking whether the peer still lives (no
    /// syscall while both sides are awake); a peer's death is reported by the first send that has
    /// to wait for room, and by every call after a receive has seen it.
    ///
    /// # Errors
    /// [`Error::MessageTooLarge`] (nothing sent, channel still usable); [`Error::Disconnected`]
    /// if the peer is gone; [`Error::Corrupted`] if it broke the protocol.
    pub fn send(&self, message: &[u8]) -> Result<()> {
        self.tx().send_until(&self.conn, message, None)
    }

    /// Like [`Duplex::send`], giving up after `timeout`. A message that fits in the ring is sent
    /// whole or not at all. One larger than the ring streams through as the peer receives it; if
    /// the time runs out part-way the channel is closed (the peer would otherwise hold half a
    /// message) and later calls return [`Error::Disconnected`].
    ///
    /// # Errors
    /// [`Error::Timeout`]; otherwise as [`Duplex::send`].
    pub fn send_timeout(&self, message: &[u8], timeout: Duration) -> Result<()> {
        self.tx()
            .send_until(&self.conn, message, Instant::now().checked_add(timeout))
    }

    /// Sends `message` if the ring has room for all of it now; never waits. On
    /// [`TrySendError::Full`] the message comes back to the caller.
    ///
    /// # Errors
    /// [`TrySendError::Full`] (retry later); [`TrySendError::TooLargeForTrySend`] for a message
    /// that can never fit at once (its records plus one fragment's worth of end-of-ring padding
    /// exceed the ring's capacity: use [`Duplex::send`]); [`TrySendError::Failed`] with [`Error::MessageTooLarge`],
    /// [`Error::Disconnected`] or [`Error::Corrupted`].
    pub fn try_send(&self, message: Vec<u8>) -> Result<(), TrySendError> {
        self.tx().try_send(&self.conn, message)
    }

    /// Receives the next message, waiting as long as it takes.
    ///
    /// # Errors
    /// [`Error::Disconnected`] once the peer is gone and every message it sent has been
    /// received; [`Error::Corrupted`] if it broke the protocol (the channel is then closed).
    pub fn recv(&self) -> Result<Vec<u8>> {
        let mut message = Vec::new();
        self.rx().recv_until(&self.conn, &mut message, None, true)?;
        Ok(message)
    }

    /// Receives the next message into `message` (cleared first; its allocation is reused).
    ///
    /// # Errors
    /// As [`Duplex::recv`].
    pub fn recv_into(&self, message: &mut Vec<u8>) -> Result<()> {
        self.rx()
            .recv_until(&self.conn, message, None, true)
            .map(|_| ())
    }

    /// Like [`Duplex::recv`], giving up after `timeout`. A message received in part when the
    /// time runs out is kept, and the next receive continues it.
    ///
    /// # Errors
    /// [`Error::Timeout`]; otherwise as [`Duplex::recv`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Vec<u8>> {
        let mut message = Vec::new();
        self.rx().recv_until(
            &self.conn,
            &mut message,
            Instant::now().checked_add(timeout),
            true,
        )?;
        Ok(message)
    }

    /// Like [`Duplex::recv_into`], giving up after `timeout`.
    ///
    /// # Errors
    /// As [`Duplex::recv_timeout`].
    pub fn recv_into_timeout(&self, message: &mut Vec<u8>, timeout: Duration) -> Result<()> {
        self.rx()
            .recv_until(
                &self.conn,
                message,
                Instant::now().checked_add(timeout),
                true,
            )
            .map(|_| ())
    }

    /// Receives a message if one has arrived in full; never waits.
    ///
    /// # Errors
    /// [`Error::Disconnected`] if nothing is waiting and the peer is gone; [`Error::Corrupted`].
    pub fn try_recv(&self) -> Result<Option<Vec<u8>>> {
        let mut message = Vec::new();
        if self
            .rx()
            .recv_until(&self.conn, &mut message, None, false)?
        {
            Ok(Some(message))
        } else {
            Ok(None)
        }
    }

    /// Fault injection for tests: this process's next accepting side fails after the connector
    /// acknowledged its welcome, as if its busy responder could not start. Exists only with the
    /// `fault-injection` feature; not part of the API.
    #[doc(hidden)]
    #[cfg(feature = "fault-injection")]
    pub fn __fail_next_busy_responder() {
        FAIL_NEXT_RESPONDER.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Fault injection for tests: sends a message that is not a goodbye on the connection's
    /// socket, as a buggy or hostile peer could. Exists only with the `fault-injection` feature;
    /// not part of the API.
    #[doc(hidden)]
    #[cfg(feature = "fault-injection")]
    pub fn __send_stray_socket_message(&self) -> Result<()> {
        rendezvous::send(&self.conn.socket, b"stray")
            .map_err(|e| Error::os("sending a stray message", e))
    }

    /// Fault injection for tests: publishes an impossible consumer index for the ring the peer
    /// sends on, as a buggy or hostile peer could. Exists only with the `fault-injection`
    /// feature; not part of the API.
    #[doc(hidden)]
    #[cfg(feature = "fault-injection")]
    pub fn __corrupt_incoming_index(&self) -> Result<()> {
        self.rx()
            .ring
            .publish_impossible_head()
            .map_err(|e| Error::corrupted(&self.conn.name, e.0))
    }

    /// Fault injection for tests: publishes an impossible record in the ring we send on, as a
    /// buggy or hostile peer could. Exists only with the `fault-injection` feature, which
    /// memlink's own tests enable; not part of the API.
    #[doc(hidden)]
    #[cfg(feature = "fault-injection")]
    pub fn __corrupt_outgoing(&self) -> Result<()> {
        let tx = self.tx();
        tx.ring
            .publish_impossible_record()
            .map_err(|e| Error::corrupted(&self.conn.name, e.0))?;
        let _ = notify::wake(&tx.wake_peer);
        Ok(())
    }
}

impl Connection {
    /// Marks a half failed if the other half found the peer gone.
    #[inline]
    fn notice_peer_gone(&self, failed: &mut Option<Failed>) {
        if failed.is_none() {
            if let Some(gone) = self.gone.get() {
                *failed = Some(gone.clone());
            }
        }
    }

    /// Marks the receive half failed if the connection was found corrupt (by either half).
    fn notice_corruption(&self, failed: &mut Option<Failed>) {
        if failed.is_none() {
            if let Some(corrupt @ Failed::Corrupted(_)) = self.gone.get() {
                *failed = Some(corrupt.clone());
            }
        }
    }

    /// Records that the connection is over (the first reason recorded is the one both halves
    /// report).
    fn mark_gone(&self, why: Failed) {
        let _ = self.gone.set(why);
    }

    fn failure(&self, failed: &Failed) -> Error {
        match failed {
            Failed::Disconnected => Error::Disconnected {
                name: self.name.clone(),
            },
            Failed::Corrupted(why) => Error::corrupted(&self.name, why.clone()),
        }
    }

    /// Ends the connection after finding the peer's ring corrupted: tells it why, and hangs up.
    /// Returns how the halves fail from now on.
    fn drop_corrupt_peer(&self, why: &str) -> Failed {
        rendezvous::hang_up(&self.socket, Some(&Goodbye::Corrupted(why.to_owned())));
        self.mark_gone(Failed::Corrupted(why.to_owned()));
        self.gone
            .get()
            .cloned()
            .unwrap_or_else(|| Failed::Corrupted(why.to_owned()))
    }
}

impl Outgoing {
    fn try_send(&mut self, conn: &Connection, message: Vec<u8>) -> Result<(), TrySendError> {
        if message.len() > conn.max_message {
            let error = Error::MessageTooLarge {
                size: message.len(),
                max: conn.max_message,
            };
            return Err(TrySendError::Failed(message, error));
        }
        conn.notice_peer_gone(&mut self.failed);
        if let Some(failed) = &self.failed {
            let error = conn.failure(failed);
            return Err(TrySendError::Failed(message, error));
        }
        let fragment = self.ring.max_fragment();
        if !fits_whole(message.len(), fragment, self.ring.layout().capacity) {
            return Err(TrySendError::TooLargeForTrySend(message));
        }
        match self
            .ring
            .has_room_for_all(fragment_lens(message.len(), fragment))
        {
            Ok(true) => {}
            Ok(false) => {
                if link::hung_up(&conn.socket, &self.wake_in) {
                    self.failed = Some(Failed::Disconnected);
                    conn.mark_gone(Failed::Disconnected);
                    let error = Error::Disconnected {
                        name: conn.name.clone(),
                    };
                    return Err(TrySendError::Failed(message, error));
                }
                return Err(TrySendError::Full(message));
            }
            Err(e) => {
                self.failed = Some(conn.drop_corrupt_peer(&e.0));
                let error = Error::corrupted(&conn.name, e.0);
                return Err(TrySendError::Failed(message, error));
            }
        }
        match self.push_message(conn, &message, None) {
            Ok(()) => Ok(()),
            Err(error) => Err(TrySendError::Failed(message, error)),
        }
    }

    fn send_until(
        &mut self,
        conn: &Connection,
        message: &[u8],
        deadline: Option<Instant>,
    ) -> Result<()> {
        if message.len() > conn.max_message {
            return Err(Error::MessageTooLarge {
                size: message.len(),
                max: conn.max_message,
            });
        }
        conn.notice_peer_gone(&mut self.failed);
        if let Some(failed) = &self.failed {
            return Err(conn.failure(failed));
        }
        let fragment = self.ring.max_fragment();
        // A message that fits in the ring goes in whole once there is room for all of it, so
        // a timeout never cuts one short. (One record goes in whole anyway: `push_message`
        // waits for room for it before it writes anything.)
        if message.len() > fragment
            && fits_whole(message.len(), fragment, self.ring.layout().capacity)
        {
            self.wait_for_room(conn, deadline, |ring| {
                ring.has_room_for_all(fragment_lens(message.len(), fragment))
            })?;
        }
        self.push_message(conn, message, deadline)
    }

    /// Waits on the send half until `ready` holds for our ring.
    fn wait_for_room(
        &mut self,
        conn: &Connection,
        deadline: Option<Instant>,
        mut ready: impl FnMut(&mut Producer) -> Result<bool, RingError>,
    ) -> Result<()> {
        let Outgoing {
            ring,
            me,
            peer,
            wake_in,
            ..
        } = self;
        let waited = link::wait(
            &conn.name,
            &conn.map,
            *me,
            *peer,
            wake_in,
            &conn.socket,
            deadline,
            || ready(ring),
        );
        match waited {
            Ok(Parked::Ready) => Ok(()),
            Ok(Parked::TimedOut) => Err(Error::Timeout),
            Ok(Parked::HungUp) => {
                self.failed = Some(Failed::Disconnected);
                conn.mark_gone(Failed::Disconnected);
                Err(link::goodbye(&conn.name, &conn.socket))
            }
            Err(e) => {
                if let Error::Corrupted { reason, .. } = &e {
                    self.failed = Some(conn.drop_corrupt_peer(reason));
                }
                Err(e)
            }
        }
    }

    /// Writes `message` fragment by fragment, waking the peer's receiver after each, waiting for
    /// room only where the caller did not already see room for all of it (no early wrap of the
    /// ring may spoil that check meanwhile).
    fn push_message(
        &mut self,
        conn: &Connection,
        message: &[u8],
        deadline: Option<Instant>,
    ) -> Result<()> {
        let fragment = self.ring.max_fragment();
        let id = self.next_id;
        let total = message.len() as u64;
        let mut sent = 0;
        let multi = message.len() > fragment;
        if multi {
            self.ring.set_early_wrap(false);
        }
        let result = loop {
            let (flags, piece) = fragment_at(sent, message.len(), fragment);
            let end = piece.end;
            match self.ring.try_push(flags, id, total, &message[piece]) {
                Ok(true) => {
                    if let Err(e) = wake::nudge(&conn.map, self.peer, &self.wake_peer) {
                        break Err(e);
                    }
                    sent = end;
                    if sent == message.len() {
                        break Ok(());
                    }
                }
                Ok(false) => {
                    let len = end - sent;
                    if let Err(e) =
                        self.wait_for_room(conn, deadline, |ring| ring.has_room_for(len))
                    {
                        if sent > 0 && matches!(e, Error::Timeout) {
                            // Part of the message is in the ring: the stream cannot go on.
                            self.failed = Some(Failed::Disconnected);
                            rendezvous::hang_up(&conn.socket, None);
                        }
                        self.ring.set_early_wrap(true);
                        return Err(e);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        self.ring.set_early_wrap(true);
        match result {
            Ok(()) => {
                self.next_id += 1;
                Ok(())
            }
            Err(e) => {
                self.failed = Some(conn.drop_corrupt_peer(&e.0));
                Err(Error::corrupted(&conn.name, e.0))
            }
        }
    }
}

impl Incoming {
    /// Receives into `message`; `Ok(false)` if `wait` is off and no whole message is there.
    fn recv_until(
        &mut self,
        conn: &Connection,
        message: &mut Vec<u8>,
        deadline: Option<Instant>,
        wait: bool,
    ) -> Result<bool> {
        conn.notice_corruption(&mut self.failed);
        if let Some(failed) = &self.failed {
            return Err(conn.failure(failed));
        }
        message.clear();
        if self.reassembly.in_progress() {
            std::mem::swap(message, &mut self.partial);
        }
        let result = self.reassemble(conn, message, deadline, wait);
        match result {
            Ok(true) => Ok(true),
            Ok(false) => {
                self.keep_partial(message);
                Ok(false)
            }
            Err(Error::Timeout) => {
                self.keep_partial(message);
                Err(Error::Timeout)
            }
            Err(e) => {
                self.failed = Some(match &e {
                    Error::Corrupted { reason, .. } => conn.drop_corrupt_peer(reason),
                    _ => {
                        conn.mark_gone(Failed::Disconnected);
                        Failed::Disconnected
                    }
                });
                message.clear();
                Err(e)
            }
        }
    }

    fn keep_partial(&mut self, message: &mut Vec<u8>) {
        if self.reassembly.in_progress() {
            std::mem::swap(message, &mut self.partial);
        }
        message.clear();
    }

    /// Takes fragments into `message` until a whole message is there (`Ok(true)`), validating
    /// every header the peer wrote.
    fn reassemble(
        &mut self,
        conn: &Connection,
        message: &mut Vec<u8>,
        deadline: Option<Instant>,
        wait: bool,
    ) -> Result<bool> {
        let bad =
            |why: &str| Error::corrupted(&conn.name, format!("the peer broke the protocol: {why}"));
        let ring_error = |e: RingError| Error::corrupted(&conn.name, e.0);
        loop {
            // The common case first: a whole message in one record.
            if !self.reassembly.in_progress()
                && self
                    .ring
                    .take_whole(self.next_id, 0, conn.max_message as u64, message)
                    .map_err(ring_error)?
                    .is_some()
            {
                // The peer's sender may be waiting for the room we just freed.
                wake::nudge(&conn.map, self.peer, &self.wake_peer).map_err(ring_error)?;
                self.next_id += 1;
                return Ok(true);
            }
            let Some(header) = self.ring.peek().map_err(ring_error)? else {
                if !wait {
                    if link::hung_up(&conn.socket, &self.wake_in) && !self.ring.has_data() {
                        return Err(link::goodbye(&conn.name, &conn.socket));
                    }
                    return Ok(false);
                }
                let Incoming {
                    ring,
                    me,
                    peer,
                    wake_in,
                    ..
                } = &mut *self;
                match link::wait(
                    &conn.name,
                    &conn.map,
                    *me,
                    *peer,
                    wake_in,
                    &conn.socket,
                    deadline,
                    || Ok(ring.has_data()),
                )? {
                    Parked::Ready => continue,
                    Parked::TimedOut => return Err(Error::Timeout),
                    Parked::HungUp => return Err(link::goodbye(&conn.name, &conn.socket)),
                }
            };
            if header.flags & USER_FLAGS != 0 {
                return Err(bad("unknown message flags"));
            }
            let next_id = self.next_id;
            let started = self
                .reassembly
                .accept(&header, |id| id == next_id, conn.max_message as u64)
                .map_err(|why| bad(&why))?;
            if let Some(total) = started {
                // The announced length is the peer's word: reserve a bounded amount up front
                // and let the buffer grow as fragments actually arrive.
                message.reserve((total as usize).min(MAX_UPFRONT_RESERVE));
            }
            self.ring.take(&header, message).map_err(ring_error)?;
            // The peer's sender may be waiting for the room we just freed.
            wake::nudge(&conn.map, self.peer, &self.wake_peer).map_err(ring_error)?;
            if self
                .reassembly
                .taken(&header)
                .map_err(|why| bad(&why))?
                .is_some()
            {
                self.next_id += 1;
                return Ok(true);
            }
        }
    }
}

impl DuplexSender {
    /// As [`Duplex::send`].
    ///
    /// # Errors
    /// As [`Duplex::send`].
    pub fn send(&mut self, message: &[u8]) -> Result<()> {
        self.tx.send_until(&self.conn, message, None)
    }

    /// As [`Duplex::send_timeout`].
    ///
    /// # Errors
    /// As [`Duplex::send_timeout`].
    pub fn send_timeout(&mut self, message: &[u8], timeout: Duration) -> Result<()> {
        self.tx
            .send_until(&self.conn, message, Instant::now().checked_add(timeout))
    }

    /// As [`Duplex::try_send`].
    ///
    /// # Errors
    /// As [`Duplex::try_send`].
    pub fn try_send(&mut self, message: Vec<u8>) -> Result<(), TrySendError> {
        self.tx.try_send(&self.conn, message)
    }

    /// The channel name.
    pub fn name(&self) -> &str {
        &self.conn.name
    }

    /// Largest message either side may send, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.conn.max_message
    }

    /// The peer's process id (as the kernel reported it when the pair formed).
    pub fn peer_pid(&self) -> u32 {
        self.conn.peer_pid
    }
}

impl DuplexReceiver {
    /// As [`Duplex::recv`].
    ///
    /// # Errors
    /// As [`Duplex::recv`].
    pub fn recv(&mut self) -> Result<Vec<u8>> {
        let mut message = Vec::new();
        self.rx.recv_until(&self.conn, &mut message, None, true)?;
        Ok(message)
    }

    /// As [`Duplex::recv_into`].
    ///
    /// # Errors
    /// As [`Duplex::recv`].
    pub fn recv_into(&mut self, message: &mut Vec<u8>) -> Result<()> {
        self.rx
            .recv_until(&self.conn, message, None, true)
            .map(|_| ())
    }

    /// As [`Duplex::recv_timeout`].
    ///
    /// # Errors
    /// As [`Duplex::recv_timeout`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Vec<u8>> {
        let mut message = Vec::new();
        self.rx.recv_until(
            &self.conn,
            &mut message,
            Instant::now().checked_add(timeout),
            true,
        )?;
        Ok(message)
    }

    /// As [`Duplex::recv_into_timeout`].
    ///
    /// # Errors
    /// As [`Duplex::recv_timeout`].
    pub fn recv_into_timeout(&mut self, message: &mut Vec<u8>, timeout: Duration) -> Result<()> {
        self.rx
            .recv_until(
                &self.conn,
                message,
                Instant::now().checked_add(timeout),
                true,
            )
            .map(|_| ())
    }

    /// As [`Duplex::try_recv`].
    ///
    /// # Errors
    /// As [`Duplex::try_recv`].
    pub fn try_recv(&mut self) -> Result<Option<Vec<u8>>> {
        let mut message = Vec::new();
        if self.rx.recv_until(&self.conn, &mut message, None, false)? {
            Ok(Some(message))
        } else {
            Ok(None)
        }
    }

    /// The channel name.
    pub fn name(&self) -> &str {
        &self.conn.name
    }

    /// Largest message either side may send, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.conn.max_message
    }

    /// The peer's process id (as the kernel reported it when the pair formed).
    pub fn peer_pid(&self) -> u32 {
        self.conn.peer_pid
    }
}
