//! The subscribing side for async code (feature `tokio`): [`AsyncSubscriber`] and its callback
//! form, [`AsyncSubscriber::on_message`].
//!
//! Wraps a [`Subscriber`] (attaching, taking samples, lag and holds are used as they are) and
//! waits through `link::asynchronous`: the publisher's wake pipe and the connection's socket are
//! registered with tokio's reactor, once per attachment (a new publisher gets new registrations).
//! Attaching (a handshake) runs on tokio's blocking pool; looking for a publisher that is not
//! there yet sleeps on tokio timers.
//!
//! Cancel-safe: a sample is taken only by a non-blocking step between awaits, so a dropped `recv`
//! takes nothing and loses nothing.
//!
//! May use the parent module's internals, `link` and `tokio`; no `unsafe`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::sample::Sample;
use super::{Attachment, MAX_ATTACH_NAP, SUBSCRIBER, Subscriber, SubscriberOptions, attach};
use crate::error::{Error, Result};
use crate::link::asynchronous::{AsyncPatience, AsyncWake};
use crate::link::{self, Parked};
use crate::pubsub::validate_topic;

/// A subscriber for async code: the twin of [`Subscriber`], `recv` is an `async fn`.
///
/// # Examples
/// ```no_run
/// # async fn demo() -> memlink::Result<()> {
/// let mut prices = memlink::pubsub::AsyncSubscriber::subscribe("prices").await?;
/// let sample = prices.recv().await?;
/// println!("{} bytes", sample.len());
/// # Ok(()) }
/// ```
pub struct AsyncSubscriber {
    subscriber: Subscriber,
    /// The registrations of the attachment they were made for.
    wake: Option<(Arc<Attachment>, AsyncWake)>,
}

impl std::fmt::Debug for AsyncSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncSubscriber")
            .field("subscriber", &self.subscriber)
            .finish_non_exhaustive()
    }
}

impl SubscriberOptions {
    /// Subscribes to `topic` as an [`AsyncSubscriber`] (feature `tokio`), waiting for its
    /// publisher.
    ///
    /// # Errors
    /// As [`SubscriberOptions::subscribe`]; [`Error::InvalidOptions`] outside a tokio runtime.
    pub async fn subscribe_async(&self, topic: &str) -> Result<AsyncSubscriber> {
        self.subscribe_async_until(topic, None).await
    }

    /// As [`SubscriberOptions::subscribe_async`], giving up with [`Error::Timeout`] after
    /// `timeout`.
    ///
    /// # Errors
    /// As [`SubscriberOptions::subscribe_timeout`].
    pub async fn subscribe_async_timeout(
        &self,
        topic: &str,
        timeout: Duration,
    ) -> Result<AsyncSubscriber> {
        self.subscribe_async_until(topic, Instant::now().checked_add(timeout))
            .await
    }

    async fn subscribe_async_until(
        &self,
        topic: &str,
        deadline: Option<Instant>,
    ) -> Result<AsyncSubscriber> {
        validate_topic(topic)?;
        link::asynchronous::reactor_present()?;
        let (attachment, cursor) = attach_waiting(topic, self, deadline).await?;
        Ok(AsyncSubscriber {
            subscriber: Subscriber::new(topic, self.clone(), attachment, cursor),
            wake: None,
        })
    }
}

impl Subscriber {
    /// Turns this subscriber into an [`AsyncSubscriber`] (feature `tokio`); it goes on from the
    /// same sample.
    pub fn into_async(self) -> AsyncSubscriber {
        AsyncSubscriber {
            subscriber: self,
            wake: None,
        }
    }
}

/// Attaches on tokio's blocking pool, looking again (with growing pauses on tokio's timer) while
/// there is no publisher, until `deadline`: the async twin of `attach_waiting`.
async fn attach_waiting(
    topic: &str,
    options: &SubscriberOptions,
    deadline: Option<Instant>,
) -> Result<(Arc<Attachment>, u64)> {
    let mut nap = Duration::from_millis(1);
    loop {
        let (topic_owned, options_owned) = (topic.to_owned(), options.clone());
        let attaching = tokio::task::spawn_blocking(move || {
            // Started after its caller gave up (the pool was busy): nothing to attach.
            if deadline.is_some_and(|t| Instant::now() >= t) {
                return Err(Error::Timeout);
            }
            attach(&topic_owned, &options_owned)
        });
        // Bounded by the deadline even while the pool is too busy to start the attempt.
        let attached = match deadline {
            None => attaching.await,
            Some(t) => tokio::time::timeout_at(t.into(), attaching)
                .await
                .map_err(|_| Error::Timeout)?,
        }
        .map_err(|e| Error::Os {
            op: "attaching to a publisher on tokio's blocking pool",
            source: std::io::Error::other(e.to_string()),
        })?;
        match attached {
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
        tokio::time::sleep(nap_now).await;
        nap = (nap * 2).min(MAX_ATTACH_NAP);
    }
}

impl AsyncSubscriber {
    /// Subscribes to `topic` with the default options, waiting for its publisher.
    ///
    /// # Errors
    /// As [`Subscriber::subscribe`].
    pub async fn subscribe(topic: &str) -> Result<AsyncSubscriber> {
        SubscriberOptions::new().subscribe_async(topic).await
    }

    /// As [`AsyncSubscriber::subscribe`], giving up with [`Error::Timeout`] after `timeout`.
    ///
    /// # Errors
    /// As [`Subscriber::subscribe_timeout`].
    pub async fn subscribe_timeout(topic: &str, timeout: Duration) -> Result<AsyncSubscriber> {
        SubscriberOptions::new()
            .subscribe_async_timeout(topic, timeout)
            .await
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        self.subscriber.topic()
    }

    /// The process id of the publisher we are attached to (`None` between publishers).
    pub fn publisher_pid(&self) -> Option<u32> {
        self.subscriber.publisher_pid()
    }

    /// The next sample, waiting for it as long as it takes (the twin of [`Subscriber::recv`]).
    ///
    /// # Errors
    /// As [`Subscriber::recv`].
    pub async fn recv(&mut self) -> Result<Sample> {
        self.recv_until(None).await
    }

    /// As [`AsyncSubscriber::recv`], giving up with [`Error::Timeout`] after `timeout`.
    ///
    /// # Errors
    /// As [`Subscriber::recv_timeout`].
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Sample> {
        self.recv_until(Instant::now().checked_add(timeout)).await
    }

    /// The next sample if one is there, without waiting (as [`Subscriber::try_recv`]).
    ///
    /// # Errors
    /// As [`Subscriber::try_recv`].
    pub fn try_recv(&mut self) -> Result<Option<Sample>> {
        self.subscriber.try_recv()
    }

    /// Runs `handler` in a tokio task for every sample (and every error: lag, a publisher going
    /// away, too many held) until the returned handle is dropped, which stops it at its next
    /// await (samples the handler kept stay valid). The async twin of
    /// [`Subscriber::on_message`]: after a publisher goes away the task waits for the next one;
    /// after any other error it pauses 10 ms before receiving again. Must be called inside a
    /// tokio runtime.
    pub fn on_message<F, Fut>(mut self, mut handler: F) -> AsyncMessageHandler
    where
        F: FnMut(Result<Sample>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let task = tokio::spawn(async move {
            loop {
                let received = self.recv().await;
                let pause = matches!(
                    received,
                    Err(ref e) if !matches!(e, Error::Lagged { .. } | Error::Disconnected { .. })
                );
                handler(received).await;
                if pause {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        AsyncMessageHandler { task }
    }

    async fn recv_until(&mut self, deadline: Option<Instant>) -> Result<Sample> {
        loop {
            // A unit of the runtime's budget per sample (and per wait): a subscriber whose
            // samples are all there already still lets the other tasks run.
            tokio::task::coop::consume_budget().await;
            let attachment = match &self.subscriber.attachment {
                Some(attachment) => Arc::clone(attachment),
                None => {
                    let subscriber = &self.subscriber;
                    let (attachment, cursor) =
                        attach_waiting(&subscriber.topic, &subscriber.options, deadline).await?;
                    self.subscriber.attached(attachment, cursor)
                }
            };
            if let Some(sample) = self.subscriber.take(&attachment)? {
                return Ok(sample);
            }
            let wake = match &mut self.wake {
                Some((registered, wake)) if Arc::ptr_eq(registered, &attachment) => wake,
                slot => {
                    let wake = AsyncWake::new(&attachment.wake_in, &attachment.socket)?;
                    &mut slot.insert((Arc::clone(&attachment), wake)).1
                }
            };
            let subscriber = &self.subscriber;
            let parked = wake
                .wait(
                    &subscriber.topic,
                    &attachment.control,
                    SUBSCRIBER,
                    AsyncPatience::default(),
                    deadline,
                    || subscriber.something_there(&attachment),
                )
                .await?;
            match parked {
                Parked::Ready => {}
                Parked::TimedOut => return Err(Error::Timeout),
                Parked::HungUp => {
                    self.subscriber.attachment = None;
                    self.wake = None;
                    return Err(link::goodbye(&self.subscriber.topic, &attachment.socket));
                }
            }
        }
    }
}

/// Runs an [`AsyncSubscriber`]'s handler in a tokio task (see [`AsyncSubscriber::on_message`]);
/// dropping it aborts the task.
#[derive(Debug)]
pub struct AsyncMessageHandler {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AsyncMessageHandler {
    fn drop(&mut self) {
        self.task.abort();
    }
}
