//! Admitting connectors fairly: credentials are checked the moment a connection is accepted (a
//! user who may not connect never holds anything), and handshakes in progress wait in a table with
//! a deadline each and a cap per user, so that a connector that never speaks holds up nobody but
//! itself and a flood of them only pushes out the flooder's own older ones.
//!
//! Shared by every accepting side that serves many connectors (an rpc server, a publisher). May
//! use `platform` (sockets, epoll); no `unsafe`.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::platform::notify::Poller;
use crate::platform::socket::{self, PeerCredentials};

/// Handshakes in progress at once, over all users. When full, the user with the most pending
/// handshakes loses its oldest one.
pub(crate) const MAX_PENDING_HANDSHAKES: usize = 1024;
/// Connections accepted per wake-up of the acceptor before it looks at pending hellos again.
const ACCEPT_BATCH: usize = 64;

/// Accepts up to a batch of connections from `listener`. Each is checked with `admits` at once:
/// one refused gets `refusal` (without anything being read from it), one admitted joins
/// `pending` (at most `per_uid_cap` per user; see [`Handshakes::insert`]) and `poller` under its
/// token, to be answered when its hello arrives. `what` names the accepting side in logs.
pub(crate) fn accept_batch(
    listener: &OwnedFd,
    poller: &Poller,
    pending: &mut Handshakes,
    per_uid_cap: usize,
    admits: impl Fn(&OwnedFd, PeerCredentials) -> bool,
    refusal: &[u8],
    what: &str,
) -> Result<()> {
    for _ in 0..ACCEPT_BATCH {
        let connection = match socket::accept(listener) {
            Ok(connection) => connection,
            Err(Errno::INTR | Errno::CONNABORTED | Errno::PROTO) => continue,
            Err(Errno::AGAIN) => return Ok(()),
            Err(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM) => {
                tracing::warn!(
                    name = what,
                    "out of descriptors or memory; refusing connections for a moment"
                );
                std::thread::sleep(Duration::from_millis(10));
                return Ok(());
            }
            Err(e @ (Errno::BADF | Errno::INVAL | Errno::NOTSOCK | Errno::OPNOTSUPP)) => {
                return Err(Error::os("accepting a connection", e));
            }
            Err(e) => {
                // Anything else concerns that one connection (e.g. a security module's veto).
                tracing::debug!(name = what, error = %e, "a connection could not be accepted");
                continue;
            }
        };
        let Ok(peer) = socket::peer_credentials(&connection) else {
            continue;
        };
        if !admits(&connection, peer) {
            // Answered at once, without reading anything from it.
            let _ = socket::send_message(&connection, refusal, &[]);
            continue;
        }
        let (token, socket) = pending.insert(connection, peer, per_uid_cap, |evicted| {
            let _ = poller.remove(&evicted.socket);
            tracing::debug!(
                name = what,
                uid = evicted.peer.uid,
                "dropped a half-open connection to make room"
            );
        });
        if poller.add(socket, token).is_err() {
            pending.take(token);
        }
    }
    Ok(())
}

/// A connection that has not said hello yet.
pub(crate) struct Handshake {
    pub(crate) socket: OwnedFd,
    pub(crate) peer: PeerCredentials,
    deadline: Instant,
    /// Order of arrival, to find a user's oldest.
    seq: u64,
}

/// The handshakes in progress, indexed by epoll token, with a count per uid. A token is a slot
/// index and the slot's generation, so an event that was already queued for a handshake since
/// evicted can never be mistaken for the newer one in its slot.
pub(crate) struct Handshakes {
    /// How long a connector may take to say hello before it is dropped.
    timeout: Duration,
    slots: Vec<Option<Handshake>>,
    generations: Vec<u32>,
    per_uid: HashMap<u32, usize>,
    count: usize,
    next_seq: u64,
}

impl Handshakes {
    /// Tokens below this are the acceptor's own (listener, stop bell).
    pub(crate) const FIRST_TOKEN: u64 = 2;

    /// An empty table whose connectors have `timeout` to say hello.
    pub(crate) fn new(timeout: Duration) -> Self {
        Handshakes {
            timeout,
            slots: Vec::new(),
            generations: Vec::new(),
            per_uid: HashMap::new(),
            count: 0,
            next_seq: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.slots.iter().flatten().map(|h| h.deadline).min()
    }

    fn token(&self, index: usize) -> u64 {
        (u64::from(self.generations[index]) << 32) | (index as u64 + Self::FIRST_TOKEN)
    }

    pub(crate) fn take(&mut self, token: u64) -> Option<Handshake> {
        let index = usize::try_from((token & 0xffff_ffff).checked_sub(Self::FIRST_TOKEN)?).ok()?;
        if self.generations.get(index).copied() != u32::try_from(token >> 32).ok() {
            return None;
        }
        let handshake = self.slots.get_mut(index)?.take()?;
        self.count -= 1;
        if let Some(n) = self.per_uid.get_mut(&handshake.peer.uid) {
            *n -= 1;
            if *n == 0 {
                self.per_uid.remove(&handshake.peer.uid);
            }
        }
        Some(handshake)
    }

    /// The token of `uid`'s oldest handshake.
    fn oldest_of(&self, uid: u32) -> Option<u64> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.as_ref().filter(|h| h.peer.uid == uid).map(|h| (h.seq, i)))
            .min()
            .map(|(_, i)| self.token(i))
    }

    /// Adds a handshake, first evicting (through `evict`) the user's oldest one if the user is at
    /// `per_uid_cap`, or the oldest one of the user with the most if the table is full. Returns the
    /// new entry's token and socket.
    pub(crate) fn insert(
        &mut self,
        socket: OwnedFd,
        peer: PeerCredentials,
        per_uid_cap: usize,
        mut evict: impl FnMut(Handshake),
    ) -> (u64, &OwnedFd) {
        let victim_uid = if self.per_uid.get(&peer.uid).copied().unwrap_or(0) >= per_uid_cap {
            Some(peer.uid)
        } else if self.count >= MAX_PENDING_HANDSHAKES {
            self.per_uid
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(uid, _)| *uid)
        } else {
            None
        };
        if let Some(victim) = victim_uid
            .and_then(|uid| self.oldest_of(uid))
            .and_then(|t| self.take(t))
        {
            evict(victim);
        }
        let index = match self.slots.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                self.slots.push(None);
                self.generations.push(0);
                self.slots.len() - 1
            }
        };
        self.generations[index] = self.generations[index].wrapping_add(1);
        let token = self.token(index);
        self.next_seq += 1;
        *self.per_uid.entry(peer.uid).or_insert(0) += 1;
        self.count += 1;
        let handshake = self.slots[index].insert(Handshake {
            socket,
            peer,
            deadline: Instant::now() + self.timeout,
            seq: self.next_seq,
        });
        (token, &handshake.socket)
    }

    /// Removes and returns every handshake whose deadline has passed.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Handshake> {
        let expired: Vec<u64> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, h)| h.as_ref().is_some_and(|h| h.deadline <= now))
            .map(|(i, _)| self.token(i))
            .collect();
        expired.into_iter().filter_map(|t| self.take(t)).collect()
    }
}
