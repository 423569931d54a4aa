//! The duplex channel for async code (feature `tokio`): [`AsyncDuplex`].
//!
//! Built from a [`Duplex`]'s halves (its rendezvous, rings, validation and failure handling are
//! used as they are) and waits through `link::asynchronous`: each half's wake pipe and the
//! connection's socket are registered with tokio's reactor, so a task waiting for a message or
//! for room holds no thread. Each half sits behind an async lock of its own (one task sends while
//! another receives, as with the blocking halves).
//!
//! Cancellation: a receive keeps what it took of a message in the channel (as a timed-out
//! blocking receive does), so a dropped `recv` loses nothing. A message that fits in the ring is
//! written only once there is room for all of it, so a dropped `send` either sent it whole or
//! not at all. Only a message larger than the ring, dropped after part of it went out, closes
//! the channel (the peer would otherwise read half a message), exactly as a blocking send that
//! times out part-way; later calls then return [`Error::Disconnected`].
//!
//! May use the parent module's internals, `link` and `tokio`; no `unsafe`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex as AsyncMutex;

use super::{
    Connection, Duplex, DuplexOptions, Failed, Incoming, Outgoing, TrySendError, fits_whole,
};
use crate::error::{Error, Result};
use crate::link::asynchronous::{AsyncPatience, AsyncWake};
use crate::link::fragment::{fragment_at, fragment_lens};
use crate::link::rendezvous;
use crate::link::wake;
use crate::link::{self, Parked};
use crate::memory::ring::{Producer, RingError};

/// One end of a duplex channel for async code: the twin of [`Duplex`], `send` and `recv` are
/// `async fn`s. `Send + Sync`: share it (in an `Arc`) between a sending and a receiving task.
///
/// # Examples
/// ```no_run
/// # async fn demo() -> memlink::Result<()> {
/// let chan = memlink::duplex::AsyncDuplex::open("chat").await?;
/// chan.send(b"hello").await?;
/// let reply = chan.recv().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AsyncDuplex {
    conn: Arc<Connection>,
    /// The send half and its registrations; the lock orders async senders.
    sending: AsyncMutex<(Outgoing, AsyncWake)>,
    /// The receive half and its registrations; the lock orders async receivers.
    receiving: AsyncMutex<(Incoming, AsyncWake)>,
}

impl DuplexOptions {
    /// Opens channel `name` as an [`AsyncDuplex`] (feature `tokio`), waiting for the peer as long
    /// as it takes. The rendezvous runs on tokio's blocking pool.
    ///
    /// # Errors
    /// As [`DuplexOptions::open`]; [`Error::InvalidOptions`] outside a tokio runtime.
    pub async fn open_async(&self, name: &str) -> Result<AsyncDuplex> {
        let (options, name) = (self.clone(), name.to_owned());
        AsyncDuplex::opened(move || options.open(&name), None).await
    }

    /// As [`DuplexOptions::open_async`], giving up after `timeout`.
    ///
    /// # Errors
    /// As [`DuplexOptions::open_timeout`].
    pub async fn open_async_timeout(&self, name: &str, timeout: Duration) -> Result<AsyncDuplex> {
        let (options, name) = (self.clone(), name.to_owned());
        // One deadline for the wait on the blocking pool and the rendezvous (which, started
        // late, gives up at once rather than pair with a peer nobody waits for any more).
        let deadline = Instant::now().checked_add(timeout);
        AsyncDuplex::opened(
            move || Duplex::rendezvous(&name, &options, deadline),
            deadline,
        )
        .await
    }
}

impl Duplex {
    /// Turns this end into an [`AsyncDuplex`] (feature `tokio`). Must be called inside a tokio
    /// runtime.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] outside a tokio runtime; [`Error::Os`] if its descriptors
    /// cannot be registered.
    pub fn into_async(self) -> Result<AsyncDuplex> {
        let (sender, receiver) = self.split();
        let sending = AsyncWake::new(&sender.tx.wake_in, &sender.conn.socket)?;
        let receiving = AsyncWake::new(&receiver.rx.wake_in, &receiver.conn.socket)?;
        Ok(AsyncDuplex {
            conn: receiver.conn,
            sending: AsyncMutex::new((sender.tx, sending)),
            receiving: AsyncMutex::new((receiver.rx, receiving)),
        })
    }
}

/// Closes the channel if a large message's send is dropped part-way (see the module
/// documentation), and restores the ring's early wrap however the send ends.
struct PartSent<'a> {
    tx: &'a mut Outgoing,
    conn: &'a Connection,
    sent: usize,
    done: bool,
}

impl Drop for PartSent<'_> {
    fn drop(&mut self) {
        self.tx.ring.set_early_wrap(true);
        if !self.done && self.sent > 0 && self.tx.failed.is_none() {
            // Part of the message is in the ring: the stream cannot go on.
            self.tx.failed = Some(Failed::Disconnected);
            rendezvous::hang_up(&self.conn.socket, None);
        }
    }
}

impl AsyncDuplex {
    /// Opens channel `name` with default options, waiting for the peer as long as it takes.
    ///
    /// # Errors
    /// As [`Duplex::open`].
    pub async fn open(name: &str) -> Result<AsyncDuplex> {
        DuplexOptions::new().open_async(name).await
    }

    /// As [`AsyncDuplex::open`], giving up after `timeout`.
    ///
    /// # Errors
    /// As [`Duplex::open_timeout`].
    pub async fn open_timeout(name: &str, timeout: Duration) -> Result<AsyncDuplex> {
        DuplexOptions::new().open_async_timeout(name, timeout).await
    }

    /// Runs `open` on tokio's blocking pool, giving up at `deadline` (`Timeout`) even while the
    /// pool is too busy to start it.
    async fn opened(
        open: impl FnOnce() -> Result<Duplex> + Send + 'static,
        deadline: Option<Instant>,
    ) -> Result<AsyncDuplex> {
        link::asynchronous::reactor_present()?;
        let opening = tokio::task::spawn_blocking(open);
        match deadline {
            None => opening.await,
            Some(t) => tokio::time::timeout_at(t.into(), opening)
                .await
                .map_err(|_| Error::Timeout)?,
        }
        .map_err(|e| Error::Os {
            op: "opening a duplex channel on tokio's blocking pool",
            source: std::io::Error::other(e.to_string()),
        })??
        .into_async()
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.conn.name
    }

    /// Largest message either side may send, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.conn.max_message
    }

    /// The peer's process id.
    pub fn peer_pid(&self) -> u32 {
        self.conn.peer_pid
    }

    /// Sends `message`, waiting for room as long as it takes (the twin of [`Duplex::send`]).
    ///
    /// # Errors
    /// As [`Duplex::send`].
    pub async fn send(&self, message: &[u8]) -> Result<()> {
        self.send_until(message, None).await
    }

    /// Like [`AsyncDuplex::send`], giving up after `timeout` (as [`Duplex::send_timeout`]).
    ///
    /// # Errors
    /// [`Error::Timeout`]; otherwise as [`Duplex::send`].
    pub async fn send_timeout(&self, message: &[u8], timeout: Duration) -> Result<()> {
        self.send_until(message, Instant::now().checked_add(timeout))
            .await
    }

    /// Sends `message` if the ring has room for all of it now; never waits (as
    /// [`Duplex::try_send`]). While another task's `send` is under way this is
    /// [`TrySendError::Full`]: messages never interleave.
    ///
    /// # Errors
    /// As [`Duplex::try_send`].
    pub fn try_send(&self, message: Vec<u8>) -> Result<(), TrySendError> {
        match self.sending.try_lock() {
            Ok(mut sending) => sending.0.try_send(&self.conn, message),
            Err(_) => Err(TrySendError::Full(message)),
        }
    }

    /// Receives the next message, waiting as long as it takes (the twin of [`Duplex::recv`]).
    /// Cancel-safe: a dropped `recv` loses nothing.
    ///
    /// # Errors
    /// As [`Duplex::recv`].
    pub async fn recv(&self) -> Result<Vec<u8>> {
        let mut message = Vec::new();
        self.recv_until(&mut message, None).await?;
        Ok(message)
    }

    /// Receives the next message into `message` (cleared first; its allocation is reused).
    ///
    /// # Errors
    /// As [`Duplex::recv`].
    pub async fn recv_into(&self, message: &mut Vec<u8>) -> Result<()> {
        self.recv_until(message, None).await
    }

    /// Like [`AsyncDuplex::recv`], giving up after `timeout` with [`Error::Timeout`] (a message
    /// received in part is kept, and the next receive continues it).
    ///
    /// # Errors
    /// [`Error::Timeout`]; otherwise as [`Duplex::recv`].
    pub async fn recv_timeout(&self, timeout: Duration) -> Result<Vec<u8>> {
        let mut message = Vec::new();
        self.recv_until(&mut message, Instant::now().checked_add(timeout))
            .await?;
        Ok(message)
    }

    /// Receives a message if one has arrived in full; never waits (as [`Duplex::try_recv`]).
    /// While another task's `recv` is under way this finds nothing.
    ///
    /// # Errors
    /// As [`Duplex::try_recv`].
    pub fn try_recv(&self) -> Result<Option<Vec<u8>>> {
        let Ok(mut receiving) = self.receiving.try_lock() else {
            return Ok(None);
        };
        let mut message = Vec::new();
        if receiving
            .0
            .recv_until(&self.conn, &mut message, None, false)?
        {
            Ok(Some(message))
        } else {
            Ok(None)
        }
    }

    async fn recv_until(&self, message: &mut Vec<u8>, deadline: Option<Instant>) -> Result<()> {
        let conn = &*self.conn;
        // A unit of the runtime's budget per message (and per wait below): a receiver whose
        // messages are all there already still lets the other tasks run.
        tokio::task::coop::consume_budget().await;
        let mut receiving = self.receiving.lock().await;
        let (rx, wake) = &mut *receiving;
        loop {
            // Takes what is there without waiting; part of a message stays in the half.
            if rx.recv_until(conn, message, None, false)? {
                return Ok(());
            }
            let me = rx.me;
            let Incoming { ring, .. } = &mut *rx;
            let parked = wake
                .wait(
                    &conn.name,
                    &conn.map,
                    me,
                    AsyncPatience::default(),
                    deadline,
                    || Ok(ring.has_data()),
                )
                .await;
            let error = match parked {
                Ok(Parked::Ready) => {
                    tokio::task::coop::consume_budget().await;
                    continue;
                }
                Ok(Parked::TimedOut) => return Err(Error::Timeout),
                // Final, as for a blocking receive: the wait looked at the ring once more
                // before saying so, and found nothing. (The pipe's end of file, or the socket's
                // hang-up, stays readable: looking again would only find it again, at once.)
                Ok(Parked::HungUp) => link::goodbye(&conn.name, &conn.socket),
                Err(e) => e,
            };
            rx.failed = Some(match &error {
                Error::Corrupted { reason, .. } => conn.drop_corrupt_peer(reason),
                _ => {
                    conn.mark_gone(Failed::Disconnected);
                    Failed::Disconnected
                }
            });
            message.clear();
            return Err(error);
        }
    }

    async fn send_until(&self, message: &[u8], deadline: Option<Instant>) -> Result<()> {
        let conn = &*self.conn;
        if message.len() > conn.max_message {
            return Err(Error::MessageTooLarge {
                size: message.len(),
                max: conn.max_message,
            });
        }
        // A unit of the runtime's budget per message (as for a receive).
        tokio::task::coop::consume_budget().await;
        let mut sending = self.sending.lock().await;
        let (tx, wake) = &mut *sending;
        conn.notice_peer_gone(&mut tx.failed);
        if let Some(failed) = &tx.failed {
            return Err(conn.failure(failed));
        }
        let layout = tx.ring.layout();
        let (fragment, capacity) = (layout.max_fragment(), layout.capacity);
        if fits_whole(message.len(), fragment, capacity) {
            // Whole or not at all: wait for room for every fragment, then write them at once.
            wait_for_room(conn, tx, wake, deadline, |ring| {
                ring.has_room_for_all(fragment_lens(message.len(), fragment))
            })
            .await?;
            return tx.push_message(conn, message, None);
        }
        stream_message(conn, tx, wake, message, deadline).await
    }
}

/// Writes a message larger than the ring fragment by fragment as the peer makes room.
async fn stream_message(
    conn: &Connection,
    tx: &mut Outgoing,
    wake: &mut AsyncWake,
    message: &[u8],
    deadline: Option<Instant>,
) -> Result<()> {
    let fragment = tx.ring.max_fragment();
    let id = tx.next_id;
    tx.ring.set_early_wrap(false);
    let mut part = PartSent {
        tx,
        conn,
        sent: 0,
        done: false,
    };
    let total = message.len() as u64;
    loop {
        let (flags, piece) = fragment_at(part.sent, message.len(), fragment);
        let end = piece.end;
        let tx = &mut *part.tx;
        let pushed = tx
            .ring
            .try_push(flags, id, total, &message[piece])
            .and_then(|pushed| {
                if pushed {
                    wake::nudge(&conn.map, tx.peer, &tx.wake_peer)?;
                }
                Ok(pushed)
            });
        match pushed {
            Ok(true) => {
                part.sent = end;
                if end == message.len() {
                    part.done = true;
                    part.tx.next_id += 1;
                    return Ok(());
                }
                // Dropped here, `part` closes the channel (as at any other await).
                tokio::task::coop::consume_budget().await;
            }
            Ok(false) => {
                let len = end - part.sent;
                // On failure `part` closes the channel if part of the message went out.
                wait_for_room(conn, part.tx, wake, deadline, |ring| ring.has_room_for(len)).await?;
            }
            Err(e) => {
                part.done = true;
                part.tx.failed = Some(conn.drop_corrupt_peer(&e.0));
                return Err(Error::corrupted(&conn.name, e.0));
            }
        }
    }
}

/// Waits on the send half until `ready` holds for its ring; records a hang-up or corruption in
/// the half as the blocking send does.
async fn wait_for_room(
    conn: &Connection,
    tx: &mut Outgoing,
    wake: &mut AsyncWake,
    deadline: Option<Instant>,
    mut ready: impl FnMut(&mut Producer) -> Result<bool, RingError>,
) -> Result<()> {
    let me = tx.me;
    let Outgoing { ring, .. } = &mut *tx;
    let waited = wake
        .wait(
            &conn.name,
            &conn.map,
            me,
            AsyncPatience::default(),
            deadline,
            || ready(ring),
        )
        .await;
    match waited {
        Ok(Parked::Ready) => Ok(()),
        Ok(Parked::TimedOut) => Err(Error::Timeout),
        Ok(Parked::HungUp) => {
            tx.failed = Some(Failed::Disconnected);
            conn.mark_gone(Failed::Disconnected);
            Err(link::goodbye(&conn.name, &conn.socket))
        }
        Err(e) => {
            if let Error::Corrupted { reason, .. } = &e {
                tx.failed = Some(conn.drop_corrupt_peer(reason));
            }
            Err(e)
        }
    }
}
