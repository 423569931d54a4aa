//! The duplex channel for async code (feature `tokio`): [`AsyncDuplex`].
//!
//! Wraps a [`Duplex`] (its rendezvous, rings, validation and failure handling are used as they
//! are) and waits through `link::asynchronous`: each half's wake pipe and the connection's socket
//! are registered with tokio's reactor, so a task waiting for a message or for room holds no
//! thread. Each half has an async lock of its own (one task sends while another receives, as
//! with the blocking halves); the halves' own locks are taken only between awaits, for the
//! non-blocking steps.
//!
//! Cancellation: a receive keeps what it took of a message in the channel (as a timed-out
//! blocking receive does), so a dropped `recv` loses nothing. A message that fits in the ring is
//! written only once there is room for all of it, so a dropped `send` either sent it whole or
//! not at all. Only a message larger than the ring, dropped after part of it went out, closes
//! the channel (the peer would otherwise read half a message), exactly as a blocking send that
//! times out part-way; later calls then return [`Error::Disconnected`].
//!
//! May use the parent module's internals, `link` and `tokio`; no `unsafe`.

use std::time::{Duration, Instant};

use tokio::sync::Mutex as AsyncMutex;

use super::{Duplex, DuplexOptions, Failed, Outgoing, TrySendError, fits_whole};
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
    duplex: Duplex,
    /// The send half's registrations; its lock orders async senders.
    sending: AsyncMutex<AsyncWake>,
    /// The receive half's registrations; its lock orders async receivers.
    receiving: AsyncMutex<AsyncWake>,
}

impl DuplexOptions {
    /// Opens channel `name` as an [`AsyncDuplex`] (feature `tokio`), waiting for the peer as long
    /// as it takes. The rendezvous runs on tokio's blocking pool.
    ///
    /// # Errors
    /// As [`DuplexOptions::open`]; [`Error::InvalidOptions`] outside a tokio runtime.
    pub async fn open_async(&self, name: &str) -> Result<AsyncDuplex> {
        let (options, name) = (self.clone(), name.to_owned());
        AsyncDuplex::opened(move || options.open(&name)).await
    }

    /// As [`DuplexOptions::open_async`], giving up after `timeout`.
    ///
    /// # Errors
    /// As [`DuplexOptions::open_timeout`].
    pub async fn open_async_timeout(&self, name: &str, timeout: Duration) -> Result<AsyncDuplex> {
        let (options, name) = (self.clone(), name.to_owned());
        AsyncDuplex::opened(move || options.open_timeout(&name, timeout)).await
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
        let sending = AsyncWake::new(&self.tx().wake_in, &self.socket)?;
        let receiving = AsyncWake::new(&self.rx().wake_in, &self.socket)?;
        Ok(AsyncDuplex {
            duplex: self,
            sending: AsyncMutex::new(sending),
            receiving: AsyncMutex::new(receiving),
        })
    }
}

/// Closes the channel if a large message's send is dropped part-way (see the module
/// documentation), and restores the ring's early wrap however the send ends.
struct PartSent<'a> {
    duplex: &'a Duplex,
    sent: usize,
    done: bool,
}

impl Drop for PartSent<'_> {
    fn drop(&mut self) {
        let mut tx = self.duplex.tx();
        tx.ring.set_early_wrap(true);
        if !self.done && self.sent > 0 && tx.failed.is_none() {
            // Part of the message is in the ring: the stream cannot go on.
            tx.failed = Some(Failed::Disconnected);
            rendezvous::hang_up(&self.duplex.socket, None);
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

    async fn opened(open: impl FnOnce() -> Result<Duplex> + Send + 'static) -> Result<AsyncDuplex> {
        link::asynchronous::runtime_present()?;
        tokio::task::spawn_blocking(open)
            .await
            .map_err(|e| Error::Os {
                op: "opening a duplex channel on tokio's blocking pool",
                source: std::io::Error::other(e.to_string()),
            })??
            .into_async()
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        self.duplex.name()
    }

    /// Largest message either side may send, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.duplex.max_message_size()
    }

    /// The peer's process id.
    pub fn peer_pid(&self) -> u32 {
        self.duplex.peer_pid()
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
            Ok(_sending) => self.duplex.try_send(message),
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
    ///
    /// # Errors
    /// As [`Duplex::try_recv`].
    pub fn try_recv(&self) -> Result<Option<Vec<u8>>> {
        self.duplex.try_recv()
    }

    async fn recv_until(&self, message: &mut Vec<u8>, deadline: Option<Instant>) -> Result<()> {
        let duplex = &self.duplex;
        let mut wake = self.receiving.lock().await;
        loop {
            // Takes what is there without waiting; part of a message stays in the channel.
            if duplex.recv_until(message, None, false)? {
                return Ok(());
            }
            let me = duplex.rx().me;
            let parked = wake
                .wait(
                    &duplex.name,
                    &duplex.map,
                    me,
                    AsyncPatience::default(),
                    deadline,
                    || duplex.rx().ring.has_data(),
                )
                .await;
            match parked {
                // Data, or the peer hung up: the next look takes it or reports why.
                Ok(Parked::Ready | Parked::HungUp) => {}
                Ok(Parked::TimedOut) => return Err(Error::Timeout),
                Err(e) => {
                    let mut rx = duplex.rx();
                    rx.failed = Some(match &e {
                        Error::Corrupted { reason, .. } => duplex.drop_corrupt_peer(reason),
                        _ => {
                            duplex.mark_gone(Failed::Disconnected);
                            Failed::Disconnected
                        }
                    });
                    message.clear();
                    return Err(e);
                }
            }
        }
    }

    async fn send_until(&self, message: &[u8], deadline: Option<Instant>) -> Result<()> {
        let duplex = &self.duplex;
        if message.len() > duplex.max_message {
            return Err(Error::MessageTooLarge {
                size: message.len(),
                max: duplex.max_message,
            });
        }
        let mut wake = self.sending.lock().await;
        let (fragment, capacity) = {
            let mut tx = duplex.tx();
            duplex.notice_peer_gone(&mut tx.failed);
            if let Some(failed) = &tx.failed {
                return Err(duplex.failure(failed));
            }
            let layout = tx.ring.layout();
            (layout.max_fragment(), layout.capacity)
        };
        if fits_whole(message.len(), fragment, capacity) {
            // Whole or not at all: wait for room for every fragment, then write them at once.
            self.wait_for_room(&mut wake, deadline, |ring| {
                ring.has_room_for_all(fragment_lens(message.len(), fragment))
            })
            .await?;
            let mut tx = duplex.tx();
            return duplex.push_message(&mut tx, message, None);
        }
        self.stream_message(&mut wake, message, deadline).await
    }

    /// Writes a message larger than the ring fragment by fragment as the peer makes room.
    async fn stream_message(
        &self,
        wake: &mut AsyncWake,
        message: &[u8],
        deadline: Option<Instant>,
    ) -> Result<()> {
        let duplex = &self.duplex;
        let mut guard = PartSent {
            duplex,
            sent: 0,
            done: false,
        };
        let (id, fragment) = {
            let mut tx = duplex.tx();
            tx.ring.set_early_wrap(false);
            (tx.next_id, tx.ring.layout().max_fragment())
        };
        let total = message.len() as u64;
        loop {
            let (flags, piece) = fragment_at(guard.sent, message.len(), fragment);
            let end = piece.end;
            let pushed = {
                let mut tx = duplex.tx();
                let tx = &mut *tx;
                tx.ring
                    .try_push(flags, id, total, &message[piece])
                    .and_then(|pushed| {
                        if pushed {
                            wake::nudge(&duplex.map, tx.peer, &tx.wake_peer)?;
                        }
                        Ok(pushed)
                    })
            };
            match pushed {
                Ok(true) => {
                    guard.sent = end;
                    if end == message.len() {
                        guard.done = true;
                        duplex.tx().next_id += 1;
                        return Ok(());
                    }
                }
                Ok(false) => {
                    let len = end - guard.sent;
                    // On failure the guard closes the channel if part of the message went out.
                    self.wait_for_room(wake, deadline, |ring| ring.has_room_for(len))
                        .await?;
                }
                Err(e) => {
                    guard.done = true;
                    let mut tx = duplex.tx();
                    tx.failed = Some(duplex.drop_corrupt_peer(&e.0));
                    return Err(Error::corrupted(&duplex.name, e.0));
                }
            }
        }
    }

    /// Waits on the send half until `ready` holds for our ring; records a hang-up or corruption
    /// in the half as the blocking send does.
    async fn wait_for_room(
        &self,
        wake: &mut AsyncWake,
        deadline: Option<Instant>,
        mut ready: impl FnMut(&mut Producer) -> Result<bool, RingError>,
    ) -> Result<()> {
        let duplex = &self.duplex;
        let me = duplex.tx().me;
        let waited = wake
            .wait(
                &duplex.name,
                &duplex.map,
                me,
                AsyncPatience::default(),
                deadline,
                || ready(&mut duplex.tx().ring),
            )
            .await;
        let mut tx = duplex.tx();
        room_wait_outcome(duplex, &mut tx, waited)
    }
}

/// The send half's view of how a wait for room ended.
fn room_wait_outcome(duplex: &Duplex, tx: &mut Outgoing, waited: Result<Parked>) -> Result<()> {
    match waited {
        Ok(Parked::Ready) => Ok(()),
        Ok(Parked::TimedOut) => Err(Error::Timeout),
        Ok(Parked::HungUp) => {
            tx.failed = Some(Failed::Disconnected);
            duplex.mark_gone(Failed::Disconnected);
            Err(link::goodbye(&duplex.name, &duplex.socket))
        }
        Err(e) => {
            if let Error::Corrupted { reason, .. } = &e {
                tx.failed = Some(duplex.drop_corrupt_peer(reason));
            }
            Err(e)
        }
    }
}
