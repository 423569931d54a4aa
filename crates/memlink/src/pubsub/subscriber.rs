//! The subscribing side of a topic: attaching to its publisher (and to the next one after it
//! goes), taking samples in order, lag, holds, and the callback form.

#[cfg(feature = "tokio")]
mod asynchronous;
#[cfg(feature = "tokio")]
pub use asynchronous::{AsyncMessageHandler, AsyncSubscriber};

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::publisher::SUBSCRIBER;
use super::sample::{HeldSlot, Sample};
use super::{HANDSHAKE_TIMEOUT, LOSSY, socket_name, validate_topic};
use crate::error::{Error, Result};
use crate::link::protocol::{Admission, Hello, Purpose};
use crate::link::wake::{Backoff, Patience};
use crate::link::{self, Keep, Parked};
use crate::memory::broadcast::{self, Entry, Geometry, SUBSCRIBER_REGION_LEN};
use crate::memory::ring::RingError;
use crate::platform::mapping::{Mapping, ReadOnlyMapping};
use crate::platform::{cpu, memfd, notify, process, shm};

const WAIT_YIELD: Duration = Duration::from_micros(100);
const WAIT_SPIN: Duration = Duration::from_micros(50);
/// Longest pause between two looks for a publisher that is not there.
const MAX_ATTACH_NAP: Duration = Duration::from_millis(20);

/// How to subscribe. `SubscriberOptions::new()` gives the defaults.
#[derive(Debug, Clone, Default)]
pub struct SubscriberOptions {
    trusted_publisher_uid: Option<u32>,
    lossy: bool,
    max_sample_size: Option<usize>,
}

impl SubscriberOptions {
    /// Defaults: trust only publishers run by our own user (or root); in a reliable topic, be
    /// waited for.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also accept a publisher run by user `uid`. Its samples are copied out as they are
    /// received instead of being read in place (see [`Sample::is_zero_copy`]).
    pub fn trust_publisher_uid(mut self, uid: u32) -> Self {
        self.trusted_publisher_uid = Some(uid);
        self
    }

    /// Refuse a topic whose samples may be larger than `bytes` ([`Error::MessageTooLarge`] from
    /// subscribing): a bound on what one receive may copy and allocate (samples of a publisher of
    /// another user are copied out) or read. By default any size the publisher allows.
    pub fn max_sample_size(mut self, bytes: usize) -> Self {
        self.max_sample_size = Some(bytes);
        self
    }

    /// In a reliable topic, do not hold the publisher up: fall behind and get
    /// [`Error::Lagged`] instead (a lossy topic never waits for anyone).
    pub fn lossy(mut self) -> Self {
        self.lossy = true;
        self
    }

    /// Subscribes to `topic`, waiting for its publisher as long as it takes.
    ///
    /// # Errors
    /// [`Error::PermissionDenied`] (the publisher does not admit us, or another user's process
    /// holds the name), [`Error::ServerFull`], [`Error::Corrupted`] or
    /// [`Error::Incompatible`] for a publisher that is not what it claims.
    pub fn subscribe(&self, topic: &str) -> Result<Subscriber> {
        self.subscribe_until(topic, None)
    }

    /// As [`SubscriberOptions::subscribe`], giving up with [`Error::Timeout`] after `timeout`.
    pub fn subscribe_timeout(&self, topic: &str, timeout: Duration) -> Result<Subscriber> {
        self.subscribe_until(topic, Instant::now().checked_add(timeout))
    }

    /// As [`SubscriberOptions::subscribe`], but [`Error::NotRunning`] at once without a
    /// publisher.
    pub fn try_subscribe(&self, topic: &str) -> Result<Subscriber> {
        validate_topic(topic)?;
        let (attachment, cursor) = attach(topic, self)?;
        Ok(Subscriber::new(topic, self.clone(), attachment, cursor))
    }

    fn subscribe_until(&self, topic: &str, deadline: Option<Instant>) -> Result<Subscriber> {
        validate_topic(topic)?;
        let (attachment, cursor) = attach_waiting(topic, self, deadline, None)?;
        Ok(Subscriber::new(topic, self.clone(), attachment, cursor))
    }
}

/// A subscriber's connection to one publisher of its topic.
pub(super) struct Attachment {
    topic: String,
    socket: OwnedFd,
    data: ReadOnlyMapping,
    control: Mapping,
    /// The publisher wakes us through this.
    wake_in: OwnedFd,
    /// We wake the publisher through this (a reliable topic's publisher waiting for us).
    wake_out: OwnedFd,
    geometry: Geometry,
    /// Samples are read in place (see `sample`).
    zero_copy: bool,
    /// The publisher waits for us.
    reliable: bool,
    /// Our hold records, a bit set for each free one.
    free_records: AtomicU64,
    publisher_pid: u32,
}

impl Attachment {
    pub(super) fn data(&self) -> &ReadOnlyMapping {
        &self.data
    }

    fn take_record(&self) -> Option<u32> {
        let mut free = self.free_records.load(Ordering::Acquire);
        loop {
            if free == 0 {
                return None;
            }
            let record = free.trailing_zeros();
            match self.free_records.compare_exchange_weak(
                free,
                free & !(1 << record),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(record),
                Err(now) => free = now,
            }
        }
    }

    /// Gives hold record `record` back (the slot it named may be reused from now on).
    pub(super) fn release(&self, record: u32) {
        broadcast::release(&self.control, record);
        self.free_records.fetch_or(1 << record, Ordering::AcqRel);
    }

    fn corrupted(&self, reason: impl Into<String>) -> Error {
        Error::corrupted(&self.topic, reason)
    }
}

/// Connects to the publisher of `topic` and validates everything it hands us; returns the
/// attachment and the first sequence number to take.
fn attach(topic: &str, options: &SubscriberOptions) -> Result<(Arc<Attachment>, u64)> {
    let hello = Hello {
        purpose: Purpose::Subscribe,
        max_message: if options.lossy { LOSSY } else { 0 },
    };
    let answer = link::handshake(
        topic,
        &socket_name(topic),
        HANDSHAKE_TIMEOUT,
        options.trusted_publisher_uid,
        &hello,
    )?;
    match answer.welcome.admission {
        Admission::Accepted => {}
        Admission::PermissionDenied => {
            return Err(Error::PermissionDenied {
                name: topic.to_owned(),
                owner_uid: Some(answer.peer.uid),
            });
        }
        Admission::Full { max_clients } => {
            return Err(Error::ServerFull {
                name: topic.to_owned(),
                max: max_clients,
            });
        }
        // Going away: like no publisher at all (a waiting subscribe looks again).
        Admission::ShuttingDown => {
            return Err(Error::NotRunning {
                name: topic.to_owned(),
            });
        }
        Admission::Busy => {
            return Err(Error::incompatible(
                topic,
                "the name belongs to a duplex channel, not a topic".to_owned(),
            ));
        }
    }
    let corrupted = |reason: String| Error::corrupted(topic, reason);
    let ([data_fd, control_fd], [wake_in, wake_out]) =
        link::adopt_regions::<2, 2>(topic, answer.fds, [Keep::Write, Keep::Read])?;
    // The broadcast region: nobody but the publisher may be able to write it (that is what
    // makes reading in place sound), and nobody may resize it under our mapping.
    if !memfd::is_sealed_read_only(&data_fd) {
        return Err(corrupted(
            "the publisher's region is not sealed against writers and resizing".into(),
        ));
    }
    let data_len = shm::fstat(&data_fd)
        .map_err(|e| Error::os("inspecting a topic's region", e))?
        .size;
    let data = ReadOnlyMapping::map(
        &data_fd,
        usize::try_from(data_len).map_err(|_| corrupted("a region too large to map".into()))?,
    )
    .map_err(|e| Error::os("mapping a topic's region", e))?;
    let (geometry, _) = broadcast::read_header(&data, data_len).map_err(corrupted)?;
    if let Some(max) = options.max_sample_size
        && geometry.max_sample as usize > max
    {
        return Err(Error::MessageTooLarge {
            size: geometry.max_sample as usize,
            max,
        });
    }
    // Our own region: sealed against shrinking, exactly one page.
    if !memfd::is_sealed_against_shrinking(&control_fd)
        || shm::fstat(&control_fd).map(|s| s.size).ok() != Some(SUBSCRIBER_REGION_LEN as u64)
    {
        return Err(corrupted(
            "the subscriber region is not a sealed page".into(),
        ));
    }
    let control = Mapping::map_shared(&control_fd, SUBSCRIBER_REGION_LEN)
        .map_err(|e| Error::os("mapping a subscriber region", e))?;
    let head = broadcast::head(&data).map_err(corrupted)?;
    let start = broadcast::cursor(&control)
        .map_err(|_| corrupted("the subscriber region has no cursor".into()))?;
    if start > head {
        return Err(corrupted(format!(
            "we are to start at sample {start}, but only {head} were published"
        )));
    }
    let me = process::effective_uid();
    let max_held = geometry.max_held;
    let attachment = Arc::new(Attachment {
        topic: topic.to_owned(),
        socket: answer.socket,
        data,
        control,
        wake_in,
        wake_out,
        geometry,
        zero_copy: answer.peer.uid == me || answer.peer.uid == 0,
        reliable: geometry.reliable() && !options.lossy,
        free_records: AtomicU64::new(if max_held >= 64 {
            u64::MAX
        } else {
            (1u64 << max_held) - 1
        }),
        publisher_pid: answer.peer.pid,
    });
    Ok((attachment, start))
}

/// [`attach`], looking again (with growing pauses, up to [`MAX_ATTACH_NAP`]) while there is no
/// publisher, until `deadline` or until `interrupt` stops it.
fn attach_waiting(
    topic: &str,
    options: &SubscriberOptions,
    deadline: Option<Instant>,
    interrupt: Option<&Interrupt>,
) -> Result<(Arc<Attachment>, u64)> {
    let mut nap = Duration::from_millis(1);
    loop {
        if interrupt.is_some_and(Interrupt::stopped) {
            return Err(Error::Cancelled);
        }
        match attach(topic, options) {
            // No publisher, or one going away or dropping handshakes: look again.
            Err(Error::NotRunning { .. } | Error::Disconnected { .. } | Error::Timeout) => {}
            other => return other,
        }
        let nap_now = match deadline {
            None => nap,
            Some(t) => match t.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => nap.min(left),
                _ => return Err(Error::Timeout),
            },
        };
        match interrupt {
            Some(interrupt) => interrupt.nap(nap_now),
            None => std::thread::sleep(nap_now),
        }
        nap = (nap * 2).min(MAX_ATTACH_NAP);
    }
}

/// A subscriber to a topic: receives every sample published from when it joined (or the
/// topic's history before that), in order, or is told exactly how many it missed.
///
/// If the publisher goes away, the samples it published are still received, then one receive
/// returns [`Error::Disconnected`]; the next waits for a new publisher under the same name and
/// goes on with its samples (their sequence numbers start again from 0).
///
/// # Examples
/// ```no_run
/// # fn main() -> memlink::Result<()> {
/// use memlink::{Error, Subscriber};
///
/// let mut subscriber = Subscriber::subscribe("prices")?;    // waits for the publisher
/// loop {
///     match subscriber.recv() {
///         Ok(sample) => println!("{} bytes: {:?}", sample.len(), &sample[..]), // read in place
///         Err(Error::Lagged { missed, .. }) => eprintln!("missed {missed}"), // and go on
///         Err(e) => return Err(e),
///     }
/// }
/// # }
/// ```
pub struct Subscriber {
    topic: String,
    options: SubscriberOptions,
    attachment: Option<Arc<Attachment>>,
    /// The next sample to take.
    cursor: u64,
    /// Set when a [`MessageHandler`] runs this subscriber.
    interrupt: Option<Arc<Interrupt>>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("topic", &self.topic)
            .field("next", &self.cursor)
            .field("publisher_pid", &self.publisher_pid())
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    fn new(
        topic: &str,
        options: SubscriberOptions,
        attachment: Arc<Attachment>,
        cursor: u64,
    ) -> Self {
        Subscriber {
            topic: topic.to_owned(),
            options,
            attachment: Some(attachment),
            cursor,
            interrupt: None,
        }
    }

    /// Subscribes to `topic` with the default options, waiting for its publisher.
    ///
    /// # Errors
    /// As [`SubscriberOptions::subscribe`].
    pub fn subscribe(topic: &str) -> Result<Subscriber> {
        SubscriberOptions::new().subscribe(topic)
    }

    /// As [`Subscriber::subscribe`], giving up with [`Error::Timeout`] after `timeout`.
    pub fn subscribe_timeout(topic: &str, timeout: Duration) -> Result<Subscriber> {
        SubscriberOptions::new().subscribe_timeout(topic, timeout)
    }

    /// As [`Subscriber::subscribe`], but [`Error::NotRunning`] at once without a publisher.
    pub fn try_subscribe(topic: &str) -> Result<Subscriber> {
        SubscriberOptions::new().try_subscribe(topic)
    }

    /// Options to subscribe with.
    pub fn options() -> SubscriberOptions {
        SubscriberOptions::new()
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The process id of the publisher we are attached to (`None` between publishers).
    pub fn publisher_pid(&self) -> Option<u32> {
        self.attachment.as_ref().map(|a| a.publisher_pid)
    }

    /// The next sample, waiting for it as long as it takes.
    ///
    /// # Errors
    /// [`Error::Lagged`] (then go on: the next receive returns the oldest sample still kept),
    /// [`Error::TooManyHeld`] (drop a sample first), [`Error::Disconnected`] once after the
    /// publisher went away (the next receive waits for a new one), [`Error::Corrupted`] if the
    /// publisher broke the protocol or dropped us for breaking it.
    pub fn recv(&mut self) -> Result<Sample> {
        self.recv_until(None)
    }

    /// As [`Subscriber::recv`], giving up with [`Error::Timeout`] after `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Sample> {
        self.recv_until(Instant::now().checked_add(timeout))
    }

    /// The next sample if one is there, without waiting (`Ok(None)` otherwise, also while there
    /// is no publisher).
    ///
    /// # Errors
    /// As [`Subscriber::recv`].
    pub fn try_recv(&mut self) -> Result<Option<Sample>> {
        let attachment = match &self.attachment {
            Some(attachment) => Arc::clone(attachment),
            None => match attach(&self.topic, &self.options) {
                Ok((attachment, cursor)) => self.attached(attachment, cursor),
                Err(Error::NotRunning { .. } | Error::Timeout) => return Ok(None),
                Err(e) => return Err(e),
            },
        };
        if let Some(sample) = self.take(&attachment)? {
            return Ok(Some(sample));
        }
        if link::hung_up(&attachment.socket, &attachment.wake_in) {
            // Whatever was published before the hang-up is taken first.
            if let Some(sample) = self.take(&attachment)? {
                return Ok(Some(sample));
            }
            self.attachment = None;
            return Err(link::goodbye(&self.topic, &attachment.socket));
        }
        Ok(None)
    }

    /// Runs `handler` on a background thread for every sample (and every error: lag, a
    /// publisher going away, too many held) until the returned handle is dropped, which stops it
    /// promptly (a sleeping thread is woken, not polled; samples the handler kept stay valid).
    /// After a publisher goes away the thread waits for the next one; after any other error it
    /// pauses 10 ms before receiving again.
    ///
    /// # Errors
    /// [`Error::Os`] if the thread cannot be started.
    pub fn on_message<F>(mut self, mut handler: F) -> Result<MessageHandler>
    where
        F: FnMut(Result<Sample>) + Send + 'static,
    {
        let interrupt = Arc::new(Interrupt::new()?);
        self.interrupt = Some(Arc::clone(&interrupt));
        let thread = std::thread::Builder::new()
            .name("memlink-subscriber".into())
            .spawn(move || {
                loop {
                    let received = self.recv();
                    let Some(interrupt) = self.interrupt.clone() else {
                        return;
                    };
                    if interrupt.stopped() {
                        return;
                    }
                    // After a failure the next receive may fail the same way at once (a handler
                    // that keeps every sample is told TooManyHeld each time): pause before it.
                    let pause = matches!(
                        received,
                        Err(ref e) if !matches!(e, Error::Lagged { .. } | Error::Disconnected { .. })
                    );
                    handler(received);
                    if pause {
                        interrupt.nap(Duration::from_millis(10));
                    }
                }
            })
            .map_err(|e| Error::Os {
                op: "starting a subscriber's handler thread",
                source: e,
            })?;
        Ok(MessageHandler {
            interrupt,
            thread: Some(thread),
        })
    }

    fn attached(&mut self, attachment: Arc<Attachment>, cursor: u64) -> Arc<Attachment> {
        self.cursor = cursor;
        self.attachment = Some(Arc::clone(&attachment));
        attachment
    }

    fn recv_until(&mut self, deadline: Option<Instant>) -> Result<Sample> {
        loop {
            if self.interrupt.as_deref().is_some_and(Interrupt::stopped) {
                return Err(Error::Cancelled);
            }
            let attachment = match &self.attachment {
                Some(attachment) => Arc::clone(attachment),
                None => {
                    let (attachment, cursor) = attach_waiting(
                        &self.topic,
                        &self.options,
                        deadline,
                        self.interrupt.as_deref(),
                    )?;
                    self.attached(attachment, cursor)
                }
            };
            if let Some(sample) = self.take(&attachment)? {
                return Ok(sample);
            }
            if self.interrupt.as_deref().is_some_and(Interrupt::stopped) {
                return Err(Error::Cancelled);
            }
            match self.wait(&attachment, deadline)? {
                Parked::Ready => {}
                Parked::TimedOut => return Err(Error::Timeout),
                Parked::HungUp => {
                    self.attachment = None;
                    return Err(link::goodbye(&self.topic, &attachment.socket));
                }
            }
        }
    }

    /// Whether the next sample's entry says anything but "not yet".
    fn something_there(&self, attachment: &Attachment) -> Result<bool, RingError> {
        if self.interrupt.as_deref().is_some_and(Interrupt::stopped) {
            return Ok(true);
        }
        broadcast::read_entry(&attachment.data, &attachment.geometry, self.cursor)
            .map(|entry| entry != Entry::Pending)
            .map_err(|e| RingError(e.into()))
    }

    /// Spins (unless the publisher last ran on our CPU), yields, then parks until the next
    /// sample's entry changes, the deadline passes, or the publisher hangs up.
    fn wait(&self, attachment: &Attachment, deadline: Option<Instant>) -> Result<Parked> {
        let here = cpu::current_cpu().wrapping_add(1);
        let spin = if broadcast::publisher_cpu(&attachment.data) == here {
            Duration::ZERO
        } else {
            WAIT_SPIN
        };
        let mut backoff = Backoff::new(Patience {
            spin,
            yield_for: WAIT_YIELD,
        });
        let corrupted = |e: RingError| attachment.corrupted(e.0);
        loop {
            if self.something_there(attachment).map_err(corrupted)? {
                return Ok(Parked::Ready);
            }
            if !backoff.pause() {
                break;
            }
            if deadline.is_some_and(|t| backoff.last_clock_read() >= t) {
                return Ok(Parked::TimedOut);
            }
        }
        link::park_until_or_bell(
            &self.topic,
            &attachment.control,
            SUBSCRIBER,
            &attachment.wake_in,
            &attachment.socket,
            self.interrupt.as_deref().map(|i| &i.bell),
            deadline,
            || self.something_there(attachment),
        )
    }

    /// Takes the next sample if it is there: `Ok(None)` if not yet, `Lagged` if it was
    /// overwritten (the cursor then moves to the oldest sample still kept).
    fn take(&mut self, attachment: &Arc<Attachment>) -> Result<Option<Sample>> {
        let taken = self.take_from(attachment);
        if let Err(Error::Corrupted { .. }) = taken {
            // The publisher broke the protocol: let go of it; the next receive attaches again
            // (to it, or to the next publisher under the name).
            self.attachment = None;
        }
        taken
    }

    fn take_from(&mut self, attachment: &Arc<Attachment>) -> Result<Option<Sample>> {
        let geometry = &attachment.geometry;
        loop {
            let entry = broadcast::read_entry(&attachment.data, geometry, self.cursor)
                .map_err(|reason| attachment.corrupted(reason))?;
            match entry {
                Entry::Pending => return Ok(None),
                Entry::Overwritten { newer } => {
                    // Every sample before `newer + 1 - entries` (and before `head - entries`)
                    // has been overwritten: that many were missed, exactly.
                    let entries = u64::from(geometry.entries);
                    let head = broadcast::head(&attachment.data)
                        .map_err(|reason| attachment.corrupted(reason))?;
                    let oldest = (newer + 1)
                        .saturating_sub(entries)
                        .max(head.saturating_sub(entries))
                        .max(self.cursor + 1);
                    let missed = oldest - self.cursor;
                    self.advance(attachment, oldest);
                    return Err(Error::Lagged {
                        name: self.topic.clone(),
                        missed,
                    });
                }
                Entry::Ready { slot, len } => {
                    let Some(record) = attachment.take_record() else {
                        return Err(Error::TooManyHeld {
                            name: self.topic.clone(),
                            limit: geometry.max_held,
                        });
                    };
                    broadcast::hold(&attachment.control, record, slot).map_err(|_| {
                        attachment.corrupted("a hold record lies outside our region")
                    })?;
                    if !broadcast::still_describes(&attachment.data, geometry, self.cursor) {
                        // Overwritten between our two looks: let go, and look again.
                        attachment.release(record);
                        continue;
                    }
                    let seq = self.cursor;
                    let offset = geometry.slot_offset(slot);
                    let len = len as usize;
                    let sample = if attachment.zero_copy {
                        Sample::in_place(
                            seq,
                            HeldSlot::confirmed(Arc::clone(attachment), record, offset, len),
                        )
                    } else {
                        let mut bytes = Vec::new();
                        let copied = attachment.data.append_to_vec(offset, len, &mut bytes);
                        attachment.release(record);
                        if !copied {
                            return Err(attachment.corrupted("a slot lies outside the region"));
                        }
                        Sample::copied(seq, bytes)
                    };
                    self.advance(attachment, seq + 1);
                    return Ok(Some(sample));
                }
            }
        }
    }

    /// Moves our cursor to `cursor` and, if the publisher is waiting for us, wakes it.
    fn advance(&mut self, attachment: &Attachment, cursor: u64) {
        self.cursor = cursor;
        broadcast::set_cursor(&attachment.control, cursor);
        if attachment.reliable {
            // SYNC POINT: pairs with the barrier in the publisher's `park_begin` (Dekker): our
            // cursor store is ordered before our look at its flag, and its flag store before its
            // look at our cursor.
            crate::link::wake::barrier_before_nudging();
            if broadcast::publisher_waiting(&attachment.data) {
                let _ = notify::wake(&attachment.wake_out);
            }
        }
    }

    /// Fault injection: writes `value` into every one of our hold records, as a subscriber that
    /// scribbles on its region would.
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn __scribble_hold_records(&self, value: u32) -> Result<()> {
        let attachment = self.attachment.as_ref().ok_or(Error::NotRunning {
            name: self.topic.clone(),
        })?;
        for record in 0..attachment.geometry.max_held {
            broadcast::release(&attachment.control, record);
            if value != 0 {
                broadcast::hold(&attachment.control, record, value - 1)
                    .map_err(|_| attachment.corrupted("hold record outside the region"))?;
            }
        }
        Ok(())
    }
}

/// How a [`MessageHandler`] stops its thread: a flag, a doorbell that a parked thread also
/// sleeps on, and a condition variable for a thread waiting for a publisher. (Not the connection's
/// socket: shutting that down would tell the publisher we are gone while samples the handler
/// passed on may still be held, and it would reuse their slots.)
struct Interrupt {
    stop: AtomicBool,
    bell: OwnedFd,
    lock: Mutex<()>,
    napping: Condvar,
}

impl Interrupt {
    fn new() -> Result<Self> {
        Ok(Interrupt {
            stop: AtomicBool::new(false),
            bell: notify::doorbell().map_err(|e| Error::os("creating an eventfd", e))?,
            lock: Mutex::new(()),
            napping: Condvar::new(),
        })
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn nap(&self, duration: Duration) {
        let guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.stopped() {
            let _ = self.napping.wait_timeout(guard, duration);
        }
    }

    fn stop(&self) {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.stop.store(true, Ordering::Release);
        // Left ringing: a parked thread wakes, sees the flag, and returns.
        let _ = notify::ring(&self.bell);
        self.napping.notify_all();
    }
}

/// Runs a subscriber's handler on a background thread (see [`Subscriber::on_message`]);
/// dropping it stops the thread and waits for the handler's current call to return.
pub struct MessageHandler {
    interrupt: Arc<Interrupt>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MessageHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageHandler").finish_non_exhaustive()
    }
}

impl Drop for MessageHandler {
    fn drop(&mut self) {
        self.interrupt.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
