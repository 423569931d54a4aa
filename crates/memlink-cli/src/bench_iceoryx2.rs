//! `memlink bench pubsub` built with the feature `iceoryx2`: the same measurement on iceoryx2's
//! publish/subscribe (the version pinned in the workspace's `Cargo.toml`), so that one run
//! compares memlink with the field's reference implementation.
//!
//! The method is memlink's (see [`crate::bench_pubsub`]): this process publishes, each
//! subscriber is a child process (`memlink __peer pubsub-sub iceoryx2-poll|iceoryx2-waitset
//! ...`), a sample is a zero-copy loan of a `[u8]` slice of the run's size in which the publisher
//! writes the sample's number, then `CLOCK_MONOTONIC` just before it sends, and the subscriber
//! reads the clock as `receive()` hands it the sample (it reads only the number and the stamp
//! in place, as memlink's loaned subscriber does).
//!
//! iceoryx2's subscriber has no blocking receive: it is polled. So there are two ways to wait:
//! - *poll*: the subscriber busy-polls `receive()` (its lowest-latency use; it burns its CPU);
//! - *WaitSet*: the publisher also notifies an event service (iceoryx2's `Notifier`) after each
//!   send, and the subscriber sleeps in a `WaitSet` on the matching `Listener`, then drains its
//!   subscriber (iceoryx2's documented way to wait for samples without spinning).
//!
//! The service mirrors memlink's topic of the same run: no history, a buffer of
//! [`CAPACITY`] samples per subscriber (memlink's `capacity`), exactly as many subscribers as the
//! run has (memlink's `max_subscribers`), a maximum slice length of the run's sample size.
//! Latency runs are lossy (safe overflow: a subscriber that falls behind loses the oldest
//! samples, which it counts from the gaps in the sample numbers), throughput runs reliable (no
//! overflow, the publisher retries until delivered, giving up after [`RELIABLE_TIMEOUT`] like
//! memlink's `reliable(10 s)`).
//!
//! The end of a run is one more sample numbered [`END`]. Every participant drops its iceoryx2
//! objects before it reports (subscribers) or after its subscribers have reported (the
//! publisher).
//!
//! Each run is an iceoryx2 domain of its own ([`Domain`]: its own root directory under `/tmp`
//! and its own prefix for the names in `/dev/shm`), with iceoryx2's default settings whatever
//! configuration file the machine has. iceoryx2 removes a service's files when its last
//! participant drops, but keeps a small per-domain segment (`<prefix>…node.<version>.global_mgmt`)
//! for good, and a participant killed on an error path leaves its files behind: the publisher
//! removes its domain's directory and every `/dev/shm` name of its prefix once the run is over,
//! which it can do because nothing else uses that domain.
//!
//! Its one `unsafe` block declares a loan initialized after writing only its first 16 bytes:
//! iceoryx2 loans uninitialized memory, and its only safe ways to send one write every byte,
//! which memlink's loaned publisher does not do.
#![allow(unsafe_code)]

use std::io;
use std::time::{Duration, Instant};

use iceoryx2::config::Config;
use iceoryx2::port::backpressure_strategy::BackpressureStrategy;
use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::port::{BackpressureAction, BackpressureInfo};
use iceoryx2::prelude::{
    CallbackProgression, FileName, Node, NodeBuilder, Path, SemanticString, ServiceName,
    SignalHandlingMode, WaitSetBuilder, ipc,
};
use iceoryx2::service::port_factory::{event, publish_subscribe};

/// The iceoryx2 version measured: the exact pin of the workspace's `Cargo.toml` (a test checks
/// that they agree).
pub(crate) const VERSION: &str = "0.10.0";
/// Samples a subscriber's buffer holds: memlink's `capacity` in the same runs.
pub(crate) const CAPACITY: usize = 256;
/// A reliable publisher gives up on a subscriber whose buffer stays full this long.
pub(crate) const RELIABLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The number of the sample that ends a run (not measured).
const END: u64 = u64::MAX;
/// A subscriber gives up after this long without a sample (memlink's subscriber's
/// `recv_timeout`).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The service's name within its run's domain.
const SERVICE: &str = "memlink-bench-pubsub";
/// Where the publisher sees the names of POSIX shared memory.
const SHM_DIR: &str = "/dev/shm";

/// How an iceoryx2 subscriber waits for samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Busy-polling `receive()`.
    Poll,
    /// Sleeping in a `WaitSet` on a `Listener`, woken by the publisher's `Notifier`.
    WaitSet,
}

/// Maps an iceoryx2 result's error into the CLI's `io::Error`, naming what failed.
trait Iox<T> {
    fn iox(self, what: &str) -> io::Result<T>;
}

impl<T, E: std::fmt::Display> Iox<T> for Result<T, E> {
    fn iox(self, what: &str) -> io::Result<T> {
        self.map_err(|e| io::Error::other(format!("iceoryx2: {what}: {e}")))
    }
}

/// The iceoryx2 domain of one run, named by a token that the publisher makes up and passes to
/// its subscribers: the root directory `/tmp/memlink-iceoryx2.TOKEN/` and the prefix `mlTOKEN_`
/// (short: iceoryx2's event sockets live under the root, and a socket's path has at most 107
/// bytes).
struct Domain {
    token: String,
    root: String,
    prefix: String,
}

impl Domain {
    fn new(token: &str) -> io::Result<Domain> {
        if token.is_empty()
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(io::Error::other(format!("bad iceoryx2 domain {token:?}")));
        }
        Ok(Domain {
            token: token.to_owned(),
            root: format!("/tmp/memlink-iceoryx2.{token}/"),
            prefix: format!("ml{token}_"),
        })
    }

    /// A new domain for a run of this process.
    fn unique() -> io::Result<Domain> {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let ns = t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64;
        Domain::new(&format!("{}-{ns:x}", std::process::id()))
    }

    /// iceoryx2's defaults (not the machine's configuration file, if any), in this domain.
    fn config(&self) -> io::Result<Config> {
        let mut config = Config::default();
        config
            .global
            .set_root_path(&Path::new(self.root.as_bytes()).iox("root path")?);
        config.global.prefix = FileName::new(self.prefix.as_bytes()).iox("prefix")?;
        Ok(config)
    }

    fn node(&self) -> io::Result<Node<ipc::Service>> {
        // No signal handlers: the bench's processes end on SIGINT as they otherwise would.
        NodeBuilder::new()
            .config(&self.config()?)
            .signal_handling_mode(SignalHandlingMode::Disabled)
            .create::<ipc::Service>()
            .iox("create node")
    }

    /// Removes everything of the domain (once nothing uses it).
    fn remove(&self) -> io::Result<()> {
        match std::fs::remove_dir_all(&self.root) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for entry in std::fs::read_dir(SHM_DIR)? {
            let entry = entry?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&self.prefix)
            {
                match std::fs::remove_file(entry.path()) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// A domain that its owner (the publisher) removes when it drops this, after every participant.
struct OwnedDomain(Domain);

impl Drop for OwnedDomain {
    fn drop(&mut self) {
        if let Err(e) = self.0.remove() {
            eprintln!(
                "memlink: could not remove iceoryx2 files of {}: {e}",
                self.0.root
            );
        }
    }
}

fn service_name() -> io::Result<ServiceName> {
    ServiceName::new(SERVICE).iox("service name")
}

/// The publisher's side of one run. Fields drop in order: ports, then services, then the node,
/// then the domain's files.
pub(crate) struct Topic {
    publisher: Publisher<ipc::Service, [u8], ()>,
    notifier: Option<Notifier<ipc::Service>>,
    _events: Option<event::PortFactory<ipc::Service>>,
    _service: publish_subscribe::PortFactory<ipc::Service, [u8], ()>,
    _node: Node<ipc::Service>,
    domain: OwnedDomain,
    size: usize,
}

impl Topic {
    /// Creates a service, in a domain of its own, for `subscribers` subscribers of `size`-byte
    /// samples, reliable or lossy, with an event service beside it if its subscribers wait in a
    /// `WaitSet`.
    pub(crate) fn create(
        size: usize,
        subscribers: usize,
        reliable: bool,
        wait: Wait,
    ) -> io::Result<Topic> {
        if size < 16 {
            return Err(io::Error::other("iceoryx2 samples need at least 16 bytes"));
        }
        let domain = OwnedDomain(Domain::unique()?);
        let node = domain.0.node()?;
        let service_name = service_name()?;
        let service = node
            .service_builder(&service_name)
            .publish_subscribe::<[u8]>()
            .history_size(0)
            .subscriber_max_buffer_size(CAPACITY)
            // The bench's subscriber holds one sample at a time (2 is iceoryx2's default).
            .subscriber_max_borrowed_samples(2)
            .max_subscribers(subscribers)
            .max_publishers(1)
            .max_nodes(subscribers + 1)
            .enable_safe_overflow(!reliable)
            .create()
            .iox("create publish-subscribe service")?;
        let mut builder = service
            .publisher_builder()
            .initial_max_slice_len(size)
            .max_loaned_samples(1);
        if reliable {
            builder = builder
                .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
                .set_backpressure_handler(|info: &BackpressureInfo| {
                    if info.elapsed_time > RELIABLE_TIMEOUT {
                        BackpressureAction::DiscardDataAndFail
                    } else {
                        BackpressureAction::Retry
                    }
                });
        }
        let publisher = builder.create().iox("create publisher")?;
        let (events, notifier) = match wait {
            Wait::Poll => (None, None),
            Wait::WaitSet => {
                let events = node
                    .service_builder(&service_name)
                    .event()
                    .max_listeners(subscribers)
                    .max_notifiers(1)
                    .max_nodes(subscribers + 1)
                    .create()
                    .iox("create event service")?;
                let notifier = events.notifier_builder().create().iox("create notifier")?;
                (Some(events), Some(notifier))
            }
        };
        Ok(Topic {
            publisher,
            notifier,
            _events: events,
            _service: service,
            _node: node,
            domain,
            size,
        })
    }

    /// What the subscribers are to be given (`receive`'s `address`).
    pub(crate) fn address(&self) -> &str {
        &self.domain.0.token
    }

    /// Publishes sample number `seq`: a loan of the run's size in which only the number and,
    /// last, the stamp are written (memlink's loaned publisher does the same), then `send()`
    /// (and `notify()` for subscribers in a `WaitSet`).
    pub(crate) fn send(&self, seq: u64, now_ns: impl FnOnce() -> u64) -> io::Result<()> {
        let mut loan = self
            .publisher
            .loan_slice_uninit(self.size)
            .iox("loan a sample")?;
        let head = loan
            .payload_mut()
            .get_mut(..16)
            .ok_or_else(|| io::Error::other("iceoryx2 loaned a sample shorter than asked"))?;
        for (byte, value) in head[8..].iter_mut().zip(seq.to_le_bytes()) {
            byte.write(value);
        }
        for (byte, value) in head[..8].iter_mut().zip(now_ns().to_le_bytes()) {
            byte.write(value);
        }
        // The loan is `size` bytes of the publisher's data segment: a shared-memory mapping that
        // the kernel zero-filled when it was created and that holds nothing but the bytes of
        // earlier `[u8]` samples (no padding, no uninitialized writes); the first 16 were just
        // written, and `u8` has no invalid values.
        // SAFETY: every byte of the loan is an initialized `u8` (above), as `assume_init` requires.
        let sample = unsafe { loan.assume_init() };
        sample.send().iox("send a sample")?;
        if let Some(notifier) = &self.notifier {
            notifier.notify().iox("notify")?;
        }
        Ok(())
    }

    /// Publishes the sample that ends the run.
    pub(crate) fn finish(&self) -> io::Result<()> {
        self.send(END, || 0)
    }
}

/// A subscriber's side of one run: receives the samples of the run's service (`address`, from
/// [`Topic::address`]) until the publisher ends the run, handing each sample's bytes to
/// `on_sample`; says ready (via `ready`) once subscribed. Every iceoryx2 object is dropped when
/// this returns.
pub(crate) fn receive(
    address: &str,
    wait: Wait,
    ready: impl FnOnce() -> io::Result<()>,
    mut on_sample: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    // The publisher removes the domain's files; this side only leaves it.
    let node = Domain::new(address)?.node()?;
    let service_name = service_name()?;
    let service = node
        .service_builder(&service_name)
        .publish_subscribe::<[u8]>()
        .open()
        .iox("open publish-subscribe service")?;
    let subscriber = service
        .subscriber_builder()
        .buffer_size(CAPACITY)
        .create()
        .iox("create subscriber")?;
    let is_end = |bytes: &[u8]| {
        bytes
            .get(8..16)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            == Some(END)
    };
    // Receives every sample there is: how many, or `None` once the run has ended.
    let mut drain = |subscriber: &Subscriber<ipc::Service, [u8], ()>| -> io::Result<Option<u64>> {
        let mut received = 0;
        while let Some(sample) = subscriber.receive().iox("receive")? {
            if is_end(sample.payload()) {
                return Ok(None);
            }
            on_sample(sample.payload())?;
            received += 1;
        }
        Ok(Some(received))
    };
    match wait {
        Wait::Poll => {
            ready()?;
            let mut idle_since = Instant::now();
            let mut idle = 0u32;
            loop {
                match drain(&subscriber)? {
                    None => break,
                    Some(0) => {
                        // The clock only now and then, so that polling stays tight.
                        idle = idle.wrapping_add(1);
                        if idle == 1 {
                            idle_since = Instant::now();
                        } else if idle.is_multiple_of(4096) && idle_since.elapsed() > IDLE_TIMEOUT {
                            return Err(io::Error::other("iceoryx2: no sample for 30 s"));
                        }
                        std::hint::spin_loop();
                    }
                    Some(_) => idle = 0,
                }
            }
        }
        Wait::WaitSet => {
            let events = node
                .service_builder(&service_name)
                .event()
                .open()
                .iox("open event service")?;
            let listener: Listener<ipc::Service> =
                events.listener_builder().create().iox("create listener")?;
            let waitset = WaitSetBuilder::new()
                .signal_handling_mode(SignalHandlingMode::Disabled)
                .create::<ipc::Service>()
                .iox("create WaitSet")?;
            let guard = waitset
                .attach_notification(&listener)
                .iox("attach the listener to the WaitSet")?;
            ready()?;
            let mut last = Instant::now();
            loop {
                let mut woken = false;
                waitset
                    .wait_and_process_once_with_timeout(
                        |id| {
                            woken |= id.has_event_from(&guard);
                            CallbackProgression::Continue
                        },
                        IDLE_TIMEOUT,
                    )
                    .iox("wait in the WaitSet")?;
                if woken {
                    // Take the notifications first, then the samples: a notification that
                    // comes after the drain stays for the next wait.
                    listener.try_wait(|_| {}).iox("take notifications")?;
                    if drain(&subscriber)?.is_none() {
                        break;
                    }
                    last = Instant::now();
                } else if last.elapsed() > IDLE_TIMEOUT {
                    return Err(io::Error::other("iceoryx2: no notification for 30 s"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_is_the_workspace_pin() {
        let manifest = include_str!("../../../Cargo.toml");
        let pin = format!("iceoryx2 = {{ version = \"={}\"", super::VERSION);
        assert!(manifest.contains(&pin), "Cargo.toml does not pin {pin}");
    }
}
