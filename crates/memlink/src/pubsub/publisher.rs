//! The publishing side of a topic: its options, the slot pool, the publishing path, and the
//! acceptor thread that admits subscribers and notices when they go.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::io::Errno;

use super::sample::Loan;
use super::{HANDSHAKE_TIMEOUT, LOSSY, SubscriberStats, TopicStats, socket_name, validate_topic};
use crate::error::{Error, Result};
use crate::link::admission::{self, Handshake, Handshakes};
use crate::link::protocol::{Admission, Goodbye, Hello, Purpose, Welcome};
use crate::link::rendezvous;
use crate::link::wake::{self, Backoff, Patience, Side};
use crate::link::{self, Keep, Parked};
use crate::memory::broadcast::{
    self, Geometry, Holds, MAX_ENTRIES, MAX_HELD, MAX_SAMPLE, PUBLISHER_CPU, PUBLISHER_WAITING,
    RELIABLE, SUBSCRIBER_CPU, SUBSCRIBER_PARKED, SUBSCRIBER_REGION_LEN,
};
use crate::memory::segment::Permissions;
use crate::platform::mapping::Mapping;
use crate::platform::notify::{self, Poller};
use crate::platform::socket::{self, PeerCredentials};
use crate::platform::{cpu, memfd, process};

/// The publisher, waiting in a reliable topic for a subscriber to move on (its flag and CPU word
/// are in the broadcast region, which every subscriber reads).
const PUBLISHER: Side = Side::at(PUBLISHER_WAITING, PUBLISHER_CPU);
/// A subscriber, asleep until the next sample (in its own region).
pub(super) const SUBSCRIBER: Side = Side::at(SUBSCRIBER_PARKED, SUBSCRIBER_CPU);
/// Slots beyond the worst case of entries, holds and the loan, so that the publisher looks at
/// every subscriber's hold records once per this many samples, not once per sample.
const SCAN_BATCH: u32 = 16;
/// Most subscribers a topic admits.
const MAX_SUBSCRIBERS: usize = 1024;
/// Longest a publisher's drop waits for its acceptor thread.
const ACCEPTOR_JOIN_WAIT: Duration = Duration::from_millis(100);
/// Samples after a wake-up found a subscriber's pipe full during which it is sent no more.
const FULL_PIPE_RESPITE: u64 = 1024;
/// Handshakes one user may have in progress at once.
const MAX_PENDING_PER_UID: usize = 64;
/// Acceptor tokens: the listener, the stop bell, handshakes from `Handshakes::FIRST_TOKEN` up,
/// and subscribers with this bit set.
const LISTENER: u64 = 0;
const STOP: u64 = 1;
const MEMBER: u64 = 1 << 63;
const WAIT_PATIENCE: Patience = Patience {
    spin: Duration::from_micros(50),
    yield_for: Duration::from_micros(100),
};

/// How to create a topic. `PublisherOptions::new()` gives the defaults.
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    capacity: usize,
    max_sample_size: usize,
    history: usize,
    max_subscribers: usize,
    max_subscribers_per_uid: usize,
    max_held: usize,
    permissions: Permissions,
    reliable: Option<Duration>,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        PublisherOptions {
            capacity: 64,
            max_sample_size: 64 << 10,
            history: 0,
            max_subscribers: 16,
            max_subscribers_per_uid: 16,
            max_held: 4,
            permissions: Permissions::OwnerOnly,
            reliable: None,
        }
    }
}

impl PublisherOptions {
    /// Defaults: the last 64 samples kept, samples of up to 64 KiB, no history for late joiners,
    /// up to 16 subscribers each holding up to 4 samples, owner-only, lossy (a slow subscriber
    /// lags; the publisher never waits).
    pub fn new() -> Self {
        Self::default()
    }

    /// How many of the latest samples the topic keeps (rounded up to a power of two, at most
    /// 65,536): how far a subscriber may fall behind before it lags.
    pub fn capacity(mut self, samples: usize) -> Self {
        self.capacity = samples.clamp(1, MAX_ENTRIES as usize);
        self
    }

    /// Largest sample (at most 1 GiB). Every slot has room for one, so the topic's memory is
    /// about `(capacity + max_subscribers * max_held + 17) * max_sample_size`, allocated as
    /// slots are first used.
    pub fn max_sample_size(mut self, bytes: usize) -> Self {
        self.max_sample_size = bytes.min(MAX_SAMPLE as usize);
        self
    }

    /// How many samples published before it joined a new subscriber is given (at most the
    /// capacity; default 0: only samples published from then on).
    pub fn history(mut self, samples: usize) -> Self {
        self.history = samples;
        self
    }

    /// Most subscribers at once (at most 1,024); further ones are refused with
    /// [`Error::ServerFull`].
    pub fn max_subscribers(mut self, n: usize) -> Self {
        self.max_subscribers = n.clamp(1, MAX_SUBSCRIBERS);
        self
    }

    /// Most subscribers of one user at once.
    pub fn max_subscribers_per_uid(mut self, n: usize) -> Self {
        self.max_subscribers_per_uid = n.max(1);
        self
    }

    /// Most samples one subscriber may hold at once (1 to 64); past that its next receive says
    /// [`Error::TooManyHeld`].
    pub fn max_held_per_subscriber(mut self, n: usize) -> Self {
        self.max_held = n.clamp(1, MAX_HELD as usize);
        self
    }

    /// Who may subscribe (default: our own user and root only).
    pub fn permissions(mut self, permissions: Permissions) -> Self {
        self.permissions = permissions;
        self
    }

    /// Makes the topic reliable: before overwriting a sample a subscriber has not read yet, the
    /// publisher waits for it, up to `timeout`. A subscriber that has not moved on by then is
    /// demoted: from then on it lags (and is told so) like a lossy one, and the publisher goes
    /// on, so a subscriber that stops reading costs the topic one timeout, once. Subscribers may
    /// opt out from the start ([`SubscriberOptions::lossy`](super::SubscriberOptions::lossy)).
    pub fn reliable(mut self, timeout: Duration) -> Self {
        self.reliable = Some(timeout);
        self
    }

    fn geometry(&self) -> Result<Geometry> {
        let entries = self.capacity.next_power_of_two() as u32;
        let spare = (self.max_subscribers * self.max_held) as u32;
        let geometry = Geometry {
            entries,
            slots: entries + spare + 1 + SCAN_BATCH,
            max_sample: self.max_sample_size as u32,
            history: (self.history as u32).min(entries),
            max_held: self.max_held as u32,
            flags: if self.reliable.is_some() { RELIABLE } else { 0 },
        };
        geometry.validate().map_err(|reason| Error::InvalidOptions {
            reason: format!(
                "these options make a topic with {reason}; lower max_sample_size, capacity or max_subscribers"
            ),
        })?;
        Ok(geometry)
    }

    /// Creates the topic `topic` and starts accepting subscribers.
    ///
    /// # Errors
    /// [`Error::AlreadyRunning`] if a publisher of `topic` is alive, [`Error::InvalidName`],
    /// [`Error::InvalidOptions`], or [`Error::Os`] if the system is out of descriptors or memory.
    pub fn create(&self, topic: &str) -> Result<Publisher> {
        validate_topic(topic)?;
        // Our per-sample wake-up barrier is light only once registered (see `wake`).
        wake::prepare_barriers();
        let geometry = self.geometry()?;
        let Some(listener) = rendezvous::bind(&socket_name(topic))? else {
            return Err(Error::AlreadyRunning {
                name: topic.to_owned(),
                pid: super::topic_stats(topic).map_or(0, |s| s.publisher_pid),
            });
        };
        let len = geometry.region_len().unwrap_or(0);
        let os = |op| move |e| Error::os(op, e);
        let data_fd = memfd::create_for_one_writer("memlink-topic", len)
            .map_err(os("creating a topic's shared memory"))?;
        let data =
            Arc::new(Mapping::map_shared(&data_fd, len as usize).map_err(os("mapping a topic"))?);
        broadcast::write_header(&data, &geometry, process::current_pid()).map_err(|_| {
            Error::corrupted(topic, "the topic's region is smaller than its header")
        })?;
        // From here on nobody can write the region but through our mapping.
        memfd::seal_writes(&data_fd).map_err(os("sealing a topic's shared memory"))?;
        let stop_bell = notify::doorbell().map_err(os("creating an eventfd"))?;
        let shared = Arc::new(Topic {
            name: topic.to_owned(),
            geometry,
            options: self.clone(),
            data: Arc::clone(&data),
            data_fd,
            listener,
            stop_bell,
            stopping: AtomicBool::new(false),
            members: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
        });
        let (finished, acceptor_done) = std::sync::mpsc::channel::<()>();
        let acceptor = {
            let shared = Arc::clone(&shared);
            let poller = Poller::new().map_err(os("creating an epoll set"))?;
            poller
                .add(&shared.listener, LISTENER)
                .map_err(os("watching the topic's socket"))?;
            poller
                .add(&shared.stop_bell, STOP)
                .map_err(os("watching the topic's socket"))?;
            std::thread::Builder::new()
                .name("memlink-publisher".into())
                .spawn(move || {
                    let _finished = finished;
                    Acceptor::new(shared, poller).run();
                })
                .map_err(|e| Error::Os {
                    op: "starting the publisher's acceptor thread",
                    source: e,
                })?
        };
        let entries = geometry.entries as usize;
        Ok(Publisher {
            shared,
            acceptor: Some(acceptor),
            acceptor_done,
            geometry,
            data,
            next_seq: 0,
            // Popped from the end: the lowest slots are used first and reused most, so a topic
            // of small samples touches few pages.
            free: (0..geometry.slots).rev().collect(),
            limbo: Vec::with_capacity(geometry.slots as usize),
            entry_slots: vec![None; entries],
            holds: Holds::new(geometry.slots),
            members: Vec::new(),
            seen_generation: 0,
            reliable: self.reliable,
            cpu: 0,
        })
    }
}

/// What the publishing thread and the acceptor thread share.
struct Topic {
    name: String,
    geometry: Geometry,
    options: PublisherOptions,
    data: Arc<Mapping>,
    /// The broadcast region, sealed: handed to every subscriber.
    data_fd: OwnedFd,
    listener: OwnedFd,
    stop_bell: OwnedFd,
    stopping: AtomicBool,
    /// The subscribers admitted and not yet gone. Changed by the acceptor only, which bumps
    /// `generation` after each change.
    members: Mutex<Vec<Arc<Member>>>,
    /// See [`Publisher::refresh_members`].
    generation: AtomicU64,
}

impl Topic {
    fn members(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Member>>> {
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn changed(&self) {
        // SYNC POINT: pairs with the read-modify-write in `Publisher::refresh_members`.
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// One subscriber, as the publisher knows it.
struct Member {
    id: u64,
    socket: OwnedFd,
    /// The subscriber's region (untrusted).
    control: Mapping,
    /// Wakes the subscriber.
    wake_out: OwnedFd,
    /// Where the subscriber wakes us (a reliable topic's publisher waiting for it).
    wake_in: OwnedFd,
    peer: PeerCredentials,
    /// The publisher waits for it before overwriting what it has not read (until it once fails
    /// to move on within the topic's timeout: then it lags like a lossy one).
    reliable: AtomicBool,
    /// Dropped by the publishing thread (corrupted); the acceptor forgets it at the hang-up.
    dropped: AtomicBool,
    /// Publishing thread only: until when (in samples published) not to write wake-ups to it,
    /// because its wake pipe was full (it does not read it; a full pipe wakes it anyway).
    skip_wakes_until: AtomicU64,
}

impl Member {
    fn drop_corrupted(&self, topic: &str, reason: String) {
        if !self.dropped.swap(true, Ordering::Relaxed) {
            tracing::warn!(topic, pid = self.peer.pid, uid = self.peer.uid, %reason, "dropping a subscriber that corrupted its region");
            rendezvous::hang_up(&self.socket, Some(&Goodbye::Corrupted(reason)));
        }
    }
}

/// The publisher of a topic: creates it, admits subscribers, and publishes samples to them.
///
/// Dropping it closes the topic: subscribers take what was published, then get
/// [`Error::Disconnected`]; the name is free at once.
///
/// # Examples
/// ```no_run
/// # fn main() -> memlink::Result<()> {
/// use memlink::Publisher;
///
/// let mut publisher = Publisher::create("prices")?;
/// publisher.publish(b"EURUSD 1.0842")?;            // copies into a free slot
/// let mut sample = publisher.loan(8)?;             // or fill a slot in place: zero-copy
/// sample.copy_from_slice(&42u64.to_le_bytes());
/// sample.send()?;
/// # Ok(())
/// # }
/// ```
pub struct Publisher {
    shared: Arc<Topic>,
    acceptor: Option<JoinHandle<()>>,
    /// Disconnected when the acceptor thread ends.
    acceptor_done: std::sync::mpsc::Receiver<()>,
    geometry: Geometry,
    pub(super) data: Arc<Mapping>,
    next_seq: u64,
    /// Slots no entry describes and nobody holds.
    free: Vec<u32>,
    /// Slots whose entry was overwritten, perhaps still held by a subscriber.
    limbo: Vec<u32>,
    /// Which slot each entry describes (our own record, never read back from shared memory).
    entry_slots: Vec<Option<u32>>,
    holds: Holds,
    /// Our copy of the acceptor's member list, as of `seen_generation`.
    members: Vec<Arc<Member>>,
    seen_generation: u64,
    reliable: Option<Duration>,
    cpu: u32,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.shared.name)
            .field("published", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Creates `topic` with the default options (see [`PublisherOptions`]).
    ///
    /// # Errors
    /// As [`PublisherOptions::create`].
    pub fn create(topic: &str) -> Result<Publisher> {
        PublisherOptions::new().create(topic)
    }

    /// Options to create a topic with.
    pub fn options() -> PublisherOptions {
        PublisherOptions::new()
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.shared.name
    }

    /// The largest sample this topic takes.
    pub fn max_sample_size(&self) -> usize {
        self.geometry.max_sample as usize
    }

    /// Samples published so far (the next sample's sequence number).
    pub fn published(&self) -> u64 {
        self.next_seq
    }

    /// Subscribers connected now.
    pub fn subscriber_count(&self) -> usize {
        self.shared.members().len()
    }

    /// Slots some subscriber holds now (the slots a subscriber held when it died come back
    /// once it is noticed gone, which is at once).
    pub fn held_slots(&mut self) -> usize {
        self.refresh_members();
        self.scan_holds();
        (0..self.geometry.slots)
            .filter(|&s| self.holds.is_held(s))
            .count()
    }

    /// Publishes a copy of `sample`; returns its sequence number.
    ///
    /// In a reliable topic this may wait for a subscriber to move on (see
    /// [`PublisherOptions::reliable`]).
    ///
    /// # Errors
    /// [`Error::MessageTooLarge`].
    pub fn publish(&mut self, sample: &[u8]) -> Result<u64> {
        let slot = self.take_slot(sample.len())?;
        let offset = self.geometry.slot_offset(slot);
        if !self.data.copy_in(offset, sample) {
            self.free.push(slot);
            return Err(Error::corrupted(
                &self.shared.name,
                "a slot lies outside the topic's region",
            ));
        }
        self.commit(slot, sample.len())
    }

    /// A sample of `len` bytes to fill in place (it starts with whatever the slot held before);
    /// [`Loan::send`] publishes it, and dropping it unsent gives the slot back.
    ///
    /// # Errors
    /// [`Error::MessageTooLarge`].
    pub fn loan(&mut self, len: usize) -> Result<Loan<'_>> {
        let slot = self.take_slot(len)?;
        Ok(Loan::new(self, slot, len))
    }

    pub(super) fn slot_offset(&self, slot: u32) -> usize {
        self.geometry.slot_offset(slot)
    }

    pub(super) fn return_slot(&mut self, slot: u32) {
        self.free.push(slot);
    }

    /// A free slot for a sample of `len` bytes. The pool has, beyond the entries, room for every
    /// subscriber's holds plus a loan plus a batch, so a scan of the hold records always frees
    /// one (see `SCAN_BATCH`).
    fn take_slot(&mut self, len: usize) -> Result<u32> {
        if len > self.geometry.max_sample as usize {
            return Err(Error::MessageTooLarge {
                size: len,
                max: self.geometry.max_sample as usize,
            });
        }
        if let Some(slot) = self.free.pop() {
            return Ok(slot);
        }
        self.refresh_members();
        self.scan_holds();
        let holds = &self.holds;
        let free = &mut self.free;
        self.limbo.retain(|&slot| {
            let held = holds.is_held(slot);
            if !held {
                free.push(slot);
            }
            held
        });
        self.free.pop().ok_or_else(|| {
            Error::corrupted(
                &self.shared.name,
                "every slot of the topic is held; subscribers hold more than they may",
            )
        })
    }

    /// Rebuilds the set of held slots from every subscriber's hold records (dropping any that
    /// names no slot). The fence inside orders our earlier entry rewrites before these loads.
    fn scan_holds(&mut self) {
        self.holds.start_scan();
        for member in &self.members {
            if member.dropped.load(Ordering::Relaxed) {
                continue;
            }
            if let Err(reason) = self.holds.add(&member.control, self.geometry.max_held) {
                member.drop_corrupted(&self.shared.name, reason);
            }
        }
    }

    /// Takes up the acceptor's member list if it changed. A read-modify-write, not a load: if it
    /// comes first in the counter's order, the acceptor's next change reads from it, so
    /// everything we wrote before (entries, head) happens before the new subscriber's welcome;
    /// if it comes second, we see the new subscriber. Either way a subscriber that joins while we
    /// publish cannot miss a slot's reuse or a wake-up.
    fn refresh_members(&mut self) {
        // SYNC POINT: pairs with `Topic::changed`.
        let generation = self.shared.generation.fetch_add(0, Ordering::AcqRel);
        if generation != self.seen_generation {
            self.members = self.shared.members().clone();
            self.seen_generation = generation;
        }
    }

    /// Publishes the sample in `slot` (`len` bytes, already written).
    pub(super) fn commit(&mut self, slot: u32, len: usize) -> Result<u64> {
        let seq = self.next_seq;
        let entries = u64::from(self.geometry.entries);
        if let Some(timeout) = self.reliable
            && seq >= entries
        {
            // A timeout past what an Instant holds waits as long as a century does.
            let timeout = timeout.min(Duration::from_secs(100 * 365 * 24 * 3600));
            self.wait_for_readers(seq - entries, Instant::now() + timeout);
        }
        let corrupted = |_| {
            Error::corrupted(
                &self.shared.name,
                "an entry lies outside the topic's region",
            )
        };
        let index = (seq % entries) as usize;
        if let Some(previous) = self.entry_slots[index].replace(slot) {
            self.limbo.push(previous);
        }
        broadcast::write_entry(&self.data, &self.geometry, seq, slot, len as u32)
            .map_err(corrupted)?;
        broadcast::set_head(&self.data, seq + 1).map_err(corrupted)?;
        self.next_seq = seq + 1;
        let here = cpu::current_cpu().wrapping_add(1);
        if here != self.cpu {
            self.cpu = here;
            broadcast::set_publisher_cpu(&self.data, here);
        }
        self.refresh_members();
        // SYNC POINT: pairs with the barrier in each subscriber's `park_begin` (one for all).
        wake::barrier_before_nudging();
        for member in &self.members {
            if member.dropped.load(Ordering::Relaxed)
                || member.skip_wakes_until.load(Ordering::Relaxed) > seq
            {
                continue;
            }
            match wake::nudge_fenced(&member.control, SUBSCRIBER, &member.wake_out) {
                Ok(false) => {}
                Ok(true) => member
                    .skip_wakes_until
                    .store(seq + FULL_PIPE_RESPITE, Ordering::Relaxed),
                Err(e) => member.drop_corrupted(&self.shared.name, e.0.into()),
            }
        }
        Ok(seq)
    }

    /// Reliable topics: waits until every subscriber that did not opt out has moved past sample
    /// `oldest` (the one about to be overwritten). One that has not by `deadline` is demoted: it
    /// lags from then on like a lossy subscriber, and the topic goes on (a subscriber that stops
    /// reading costs the topic one timeout, not every publish from then on).
    fn wait_for_readers(&mut self, oldest: u64, deadline: Instant) {
        let mut backoff = Backoff::new(WAIT_PATIENCE);
        loop {
            self.refresh_members();
            let published = self.next_seq;
            let mut laggard = None;
            for member in &self.members {
                if !member.reliable.load(Ordering::Relaxed)
                    || member.dropped.load(Ordering::Relaxed)
                {
                    continue;
                }
                match broadcast::cursor(&member.control) {
                    Ok(cursor) if cursor > published => member.drop_corrupted(
                        &self.shared.name,
                        format!(
                            "its cursor says {cursor}, but only {published} samples were published"
                        ),
                    ),
                    Ok(cursor) if cursor <= oldest => {
                        laggard = Some(Arc::clone(member));
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        member.drop_corrupted(&self.shared.name, "its region is too small".into())
                    }
                }
            }
            let Some(laggard) = laggard else {
                return;
            };
            let demote = |laggard: &Member| {
                laggard.reliable.store(false, Ordering::Relaxed);
                tracing::warn!(topic = %self.shared.name, pid = laggard.peer.pid, "a reliable subscriber did not keep up within the timeout; it lags from now on");
            };
            let moved_on = || {
                laggard.dropped.load(Ordering::Relaxed)
                    || broadcast::cursor(&laggard.control).map_or(true, |c| c > oldest)
            };
            if backoff.pause() {
                if Instant::now() >= deadline {
                    demote(&laggard);
                }
                continue;
            }
            let parked = link::park_until(
                &self.shared.name,
                &self.data,
                PUBLISHER,
                &laggard.wake_in,
                &laggard.socket,
                Some(deadline),
                || Ok(moved_on()),
            );
            match parked {
                Ok(Parked::Ready) => {}
                Ok(Parked::TimedOut) => demote(&laggard),
                // Gone: the acceptor forgets it at the hang-up; it holds us up no more.
                Ok(Parked::HungUp) => laggard.dropped.store(true, Ordering::Relaxed),
                Err(e) => laggard.drop_corrupted(&self.shared.name, e.to_string()),
            }
        }
    }

    /// Fault injection: makes the next sample's entry name a slot outside the topic.
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn __publish_corrupt_entry(&mut self) -> Result<()> {
        let seq = self.next_seq;
        broadcast::write_entry(&self.data, &self.geometry, seq, self.geometry.slots, 0)
            .map_err(|_| Error::corrupted(&self.shared.name, "entry outside the region"))?;
        broadcast::set_head(&self.data, seq + 1)
            .map_err(|_| Error::corrupted(&self.shared.name, "head outside the region"))?;
        self.next_seq += 1;
        self.refresh_members();
        for member in &self.members {
            let _ = wake::nudge(&member.control, SUBSCRIBER, &member.wake_out);
        }
        Ok(())
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // The name is free at once, whatever the acceptor is doing.
        let _ = socket::shut_down(&self.shared.listener);
        let _ = notify::ring(&self.shared.stop_bell);
        if let Some(acceptor) = self.acceptor.take() {
            // Bounded: on a kernel that cannot refuse passed descriptors (before Linux 6.16) the
            // acceptor may be stuck closing one a caller passed; it is then left to finish.
            match self.acceptor_done.recv_timeout(ACCEPTOR_JOIN_WAIT) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    tracing::debug!(topic = %self.shared.name, "the acceptor thread is still closing a connection; leaving it");
                }
                _ => {
                    let _ = acceptor.join();
                }
            }
        }
        // Tell every subscriber.
        for member in self.shared.members().drain(..) {
            rendezvous::hang_up(&member.socket, Some(&Goodbye::ShuttingDown));
        }
    }
}

/// The acceptor thread: admits subscribers (credentials first, then per-user fairness) and
/// forgets each one the moment its socket hangs up.
struct Acceptor {
    topic: Arc<Topic>,
    poller: Poller,
    pending: Handshakes,
    sockets: HashMap<u64, Arc<Member>>,
    next_id: u64,
}

impl Acceptor {
    fn new(topic: Arc<Topic>, poller: Poller) -> Self {
        Acceptor {
            topic,
            poller,
            pending: Handshakes::new(HANDSHAKE_TIMEOUT),
            sockets: HashMap::new(),
            next_id: 0,
        }
    }

    fn run(mut self) {
        let mut ready = Vec::new();
        loop {
            let timeout = self
                .pending
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poller.wait(timeout, &mut ready) {
                tracing::debug!(topic = %self.topic.name, error = %e, "the publisher's acceptor could not wait");
                std::thread::sleep(Duration::from_millis(10));
            }
            if self.topic.stopping.load(Ordering::SeqCst) {
                break;
            }
            for event in &ready {
                match event.token {
                    LISTENER => {
                        let topic = &self.topic;
                        let refusal = refusal(topic, Admission::PermissionDenied);
                        let accepted = admission::accept_batch(
                            &topic.listener,
                            &self.poller,
                            &mut self.pending,
                            MAX_PENDING_PER_UID,
                            |connection, peer| {
                                link::admits(topic.options.permissions, None, connection, peer)
                            },
                            &refusal.encode(),
                            &topic.name,
                        );
                        if let Err(e) = accepted {
                            tracing::warn!(topic = %topic.name, error = %e, "the publisher stops admitting subscribers");
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    STOP => {}
                    token if token & MEMBER != 0 => self.forget(token),
                    token => {
                        if let Some(handshake) = self.pending.take(token) {
                            let _ = self.poller.remove(&handshake.socket);
                            if let Err(e) = self.admit(handshake) {
                                tracing::debug!(topic = %self.topic.name, error = %e, "a subscriber's handshake failed");
                            }
                        }
                    }
                }
            }
            for expired in self.pending.expire(Instant::now()) {
                let _ = self.poller.remove(&expired.socket);
            }
        }
        // Free the name at once; subscribers are told by the publisher's drop.
        let _ = socket::shut_down(&self.topic.listener);
    }

    /// A subscriber's socket hung up (it died or closed), or it wrote to it (which breaks the
    /// protocol): forget it, so that the slots it held come back.
    fn forget(&mut self, token: u64) {
        let Some(member) = self.sockets.remove(&token) else {
            return;
        };
        let _ = self.poller.remove(&member.socket);
        self.topic.members().retain(|m| m.id != member.id);
        self.topic.changed();
        if !member.dropped.swap(true, Ordering::Relaxed) {
            rendezvous::hang_up(&member.socket, None);
        }
    }

    fn admit(&mut self, handshake: Handshake) -> Result<(), Errno> {
        let Handshake {
            socket: connection,
            peer,
            ..
        } = handshake;
        let topic = Arc::clone(&self.topic);
        let mut buf = [0u8; Hello::LEN + 8];
        let (len, _) = socket::receive_message(&connection, &mut buf, false)?;
        let hello = Hello::decode(&buf[..len]).map_err(|_| Errno::PROTO)?;
        let refuse = |admission| {
            socket::send_message(&connection, &refusal(&topic, admission).encode(), &[])
        };
        match hello.purpose {
            Purpose::Stats => {
                return socket::send_message(&connection, &stats(&topic).encode(), &[]);
            }
            Purpose::Subscribe => {}
            _ => return Err(Errno::PROTO),
        }
        if topic.stopping.load(Ordering::SeqCst) {
            return refuse(Admission::ShuttingDown);
        }
        {
            let members = topic.members();
            let options = &topic.options;
            if members.len() >= options.max_subscribers {
                return refuse(Admission::Full {
                    max_clients: options.max_subscribers as u32,
                });
            }
            if members.iter().filter(|m| m.peer.uid == peer.uid).count()
                >= options.max_subscribers_per_uid
            {
                return refuse(Admission::Full {
                    max_clients: options.max_subscribers_per_uid as u32,
                });
            }
        }
        let control_fd = memfd::create_sealed("memlink-subscriber", SUBSCRIBER_REGION_LEN as u64)?;
        let control = Mapping::map_shared(&control_fd, SUBSCRIBER_REGION_LEN)?;
        // Ours: the write end of the pipe that wakes the subscriber, the read end of the one
        // that wakes us.
        let ([wake_out, wake_in], theirs) = link::wake_pipes([Keep::Write, Keep::Read])?;
        let id = self.next_id;
        self.next_id += 1;
        let member = Arc::new(Member {
            id,
            socket: connection,
            control,
            wake_out,
            wake_in,
            peer,
            reliable: AtomicBool::new(topic.geometry.reliable() && hello.max_message & LOSSY == 0),
            dropped: AtomicBool::new(false),
            skip_wakes_until: AtomicU64::new(0),
        });
        // Watched before the welcome leaves, so that a subscriber told it is in is never one we
        // could not watch.
        let token = MEMBER | id;
        self.poller.add_hangup(&member.socket, token)?;
        // Listed before its cursor is set and before the welcome leaves (see
        // `Publisher::refresh_members`): a reliable publisher that sees its cursor still at 0
        // waits the moment it takes us to set it.
        topic.members().push(Arc::clone(&member));
        topic.changed();
        // It starts with the history the topic keeps (its cursor is ours to set until the
        // welcome leaves).
        let head = broadcast::head_written(&topic.data);
        broadcast::set_cursor(
            &member.control,
            head.saturating_sub(u64::from(topic.geometry.history)),
        );
        let welcome = refusal(&topic, Admission::Accepted);
        let sent = link::send_welcome(
            &member.socket,
            &welcome.encode(),
            &[topic.data_fd.as_fd(), control_fd.as_fd()],
            &theirs,
        );
        if let Err(e) = sent {
            let _ = self.poller.remove(&member.socket);
            topic.members().retain(|m| m.id != id);
            topic.changed();
            member.dropped.store(true, Ordering::Relaxed);
            return Err(e);
        }
        self.sockets.insert(token, member);
        Ok(())
    }
}

fn refusal(topic: &Topic, admission: Admission) -> Welcome {
    Welcome {
        admission,
        ring_capacity: topic.geometry.entries,
        max_message: u64::from(topic.geometry.max_sample),
        server_pid: process::current_pid(),
    }
}

fn stats(topic: &Topic) -> TopicStats {
    let published = broadcast::head_written(&topic.data);
    // Read outside the lock: the publishing thread may need it.
    let members = topic.members().clone();
    let subscribers = members
        .iter()
        .map(|m| {
            let cursor = broadcast::cursor(&m.control).unwrap_or(0).min(published);
            SubscriberStats {
                pid: m.peer.pid,
                uid: m.peer.uid,
                lag: published - cursor,
                held: broadcast::held_count(&m.control, topic.geometry.max_held),
                reliable: m.reliable.load(Ordering::Relaxed),
            }
        })
        .collect();
    TopicStats {
        publisher_pid: process::current_pid(),
        published,
        capacity: topic.geometry.entries,
        reliable: topic.geometry.reliable(),
        subscribers,
    }
}
