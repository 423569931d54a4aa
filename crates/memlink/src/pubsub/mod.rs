//! Publish/subscribe: one [`Publisher`] per topic writes samples that any number of
//! [`Subscriber`]s read, each at its own pace, with zero-copy in both directions.
//!
//! Owns the topic's roles and semantics: slot allocation, who holds what, lag, reliability, the
//! subscriber's view of a sample. The shared layouts (broadcast region, subscriber region, the
//! seqlock entries and hold records) are `memory::broadcast`'s; admission, descriptors, wake
//! pipes and parking are `link`'s. May use `link`, `memory` and `platform`. Only `sample` has
//! `unsafe` (the two slices over shared memory that zero-copy means; its module docs say why
//! each is sound).
//!
//! # How a sample travels
//!
//! The publisher owns one *broadcast region*: a memfd holding a table of entries and a pool of
//! sample slots, mapped writable by the publisher only and then sealed
//! (`F_SEAL_FUTURE_WRITE`) so that nobody else, whoever holds the descriptor, can ever write
//! it; subscribers map it read-only. `loan(len)` hands out a free slot to fill in place (or
//! `publish(bytes)` copies into one); `send` writes the slot's entry and wakes subscribers that
//! said they were asleep. A subscriber reads the entry for the next sequence number, *holds* the
//! slot (a record in its own small region that the publisher reads), checks the entry still
//! describes that sample, and then reads the bytes where they lie. The publisher reuses a slot
//! only when no entry describes it and nobody holds it, so the bytes of a held sample never
//! change (the protocol, with its memory orderings, is in `memory::broadcast`).
//!
//! Each topic keeps the last `capacity` samples. A subscriber that falls further behind gets
//! [`Error::Lagged`] with exactly how many it missed, and goes on from the oldest sample still
//! kept. A subscriber holds at most `max_held_per_subscriber` samples at once (its next receive
//! says [`Error::TooManyHeld`]); the publisher has that many slots spare per subscriber, so no
//! subscriber, however slow or hostile, can make it run out. A *reliable* topic instead makes the
//! publisher wait (up to a timeout) for every subscriber that did not opt out, before it
//! overwrites a sample that subscriber has not read; one that has not moved on by then lags from
//! then on, like a lossy one.
//!
//! # Who is trusted with what
//!
//! The publisher trusts nothing a subscriber writes: hold records and cursors are validated, and
//! a subscriber that writes garbage is dropped with a `Corrupted` goodbye; the others never
//! notice. Subscribers cannot write the broadcast region at all (the seal). A subscriber reads a
//! sample in place only if the publisher runs as its own user or root, who could write its memory
//! directly anyway; from a publisher of another user (admitted with
//! [`SubscriberOptions::trust_publisher_uid`]) it copies each sample out, so that a byte changing
//! under it can only give it wrong data, never undefined behaviour (see `sample`).
//!
//! # Liveness
//!
//! As everywhere in memlink, the connection's socket carries nothing after the handshake but a
//! goodbye; its hang-up is the peer's death. A subscriber asleep on a topic wakes at once when
//! the publisher dies, takes what was published before, then gets [`Error::Disconnected`]; its
//! next receive waits for a new publisher under the same name and goes on from there. The
//! publisher's acceptor thread sees a subscriber's hang-up the moment it dies and forgets it, so
//! the slots it held come back at the publisher's next scan.

mod publisher;
mod sample;
mod subscriber;

pub use publisher::{Publisher, PublisherOptions};
pub use sample::{Loan, Sample};
#[cfg(feature = "tokio")]
pub use subscriber::{AsyncMessageHandler, AsyncSubscriber};
pub use subscriber::{MessageHandler, Subscriber, SubscriberOptions};

use std::time::Duration;

use crate::error::{Error, Result};
use crate::link::protocol::{self, Hello, Purpose, Welcome};
use crate::memory::name::validate_name;
use crate::platform::socket;

/// Prefix of every topic's abstract socket name.
const SOCKET_PREFIX: &str = "memlink.topic.";
/// Longest topic name: an abstract socket address holds 107 bytes, prefix included.
const MAX_TOPIC_LEN: usize = 93;
const _: () = assert!(SOCKET_PREFIX.len() + MAX_TOPIC_LEN == 107);
/// Longest a handshake step may take once the other side is there.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// Hello flag: this subscriber opts out of a reliable topic's waiting (it gets `Lagged`).
const LOSSY: u32 = 1;

fn socket_name(topic: &str) -> String {
    format!("{SOCKET_PREFIX}{topic}")
}

/// The general naming rule, and a length that fits in an abstract socket address.
fn validate_topic(topic: &str) -> Result<()> {
    validate_name(topic)?;
    if topic.len() > MAX_TOPIC_LEN {
        return Err(Error::InvalidName {
            name: topic.to_owned(),
            reason: "a topic name must be at most 93 bytes long (it names an abstract socket)",
        });
    }
    Ok(())
}

/// What a publisher says about its topic (`memlink ls`, [`topic_stats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicStats {
    /// The publisher's process id.
    pub publisher_pid: u32,
    /// Samples published so far (the next sample's sequence number).
    pub published: u64,
    /// Samples the topic keeps for subscribers that fall behind.
    pub capacity: u32,
    /// Whether the publisher waits for subscribers (that did not opt out) instead of letting
    /// them lag.
    pub reliable: bool,
    /// The subscribers connected now (at most the first 64).
    pub subscribers: Vec<SubscriberStats>,
}

/// One subscriber, as its publisher sees it (what the subscriber wrote in its region: a
/// misbehaving one can make these figures say anything, but nothing else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriberStats {
    /// Its process id.
    pub pid: u32,
    /// Its user id.
    pub uid: u32,
    /// Samples published that it has not taken yet.
    pub lag: u64,
    /// Samples it holds.
    pub held: u32,
    /// Whether the publisher waits for it (a reliable topic, and it did not opt out).
    pub reliable: bool,
}

const STATS_KIND: u32 = u32::from_le_bytes(*b"TSTS");
const STATS_HEADER: usize = 32;
const STATS_PER_SUBSCRIBER: usize = 24;
const MAX_STATS_SUBSCRIBERS: usize = 64;

impl TopicStats {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(STATS_HEADER + STATS_PER_SUBSCRIBER * 8);
        b.extend_from_slice(&protocol::MAGIC.to_le_bytes());
        b.extend_from_slice(&protocol::PROTOCOL_VERSION.to_le_bytes());
        b.extend_from_slice(&STATS_KIND.to_le_bytes());
        b.extend_from_slice(&self.publisher_pid.to_le_bytes());
        b.extend_from_slice(&self.published.to_le_bytes());
        b.extend_from_slice(&self.capacity.to_le_bytes());
        let listed = self.subscribers.len().min(MAX_STATS_SUBSCRIBERS);
        let flags = u32::from(self.reliable) | ((listed as u32) << 8);
        b.extend_from_slice(&flags.to_le_bytes());
        for s in &self.subscribers[..listed] {
            b.extend_from_slice(&s.pid.to_le_bytes());
            b.extend_from_slice(&s.uid.to_le_bytes());
            b.extend_from_slice(&s.lag.to_le_bytes());
            b.extend_from_slice(&s.held.to_le_bytes());
            b.extend_from_slice(&u32::from(s.reliable).to_le_bytes());
        }
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, String> {
        protocol::check_preamble(b)?;
        let word = |at| protocol::word(b, at).ok_or("topic statistics cut short");
        let long = |at| protocol::long(b, at).ok_or("topic statistics cut short");
        if word(8)? != STATS_KIND {
            return Err("not topic statistics".into());
        }
        let flags = word(28)?;
        let listed = (flags >> 8) as usize;
        if listed > MAX_STATS_SUBSCRIBERS || b.len() != STATS_HEADER + listed * STATS_PER_SUBSCRIBER
        {
            return Err(format!(
                "topic statistics of {} bytes for {listed} subscribers",
                b.len()
            ));
        }
        let subscribers = (0..listed)
            .map(|i| {
                let at = STATS_HEADER + i * STATS_PER_SUBSCRIBER;
                Ok(SubscriberStats {
                    pid: word(at)?,
                    uid: word(at + 4)?,
                    lag: long(at + 8)?,
                    held: word(at + 16)?,
                    reliable: word(at + 20)? & 1 != 0,
                })
            })
            .collect::<Result<Vec<_>, &str>>()?;
        Ok(TopicStats {
            publisher_pid: word(12)?,
            published: long(16)?,
            capacity: word(24)?,
            reliable: flags & 1 != 0,
            subscribers,
        })
    }
}

/// Asks the live publisher of `topic` about it.
///
/// # Errors
/// [`Error::NotRunning`] without a publisher, [`Error::PermissionDenied`] if it does not admit
/// us, [`Error::Timeout`] if it does not answer within a second, [`Error::Disconnected`] if it
/// hangs up without answering (it is going away).
pub fn topic_stats(topic: &str) -> Result<TopicStats> {
    validate_topic(topic)?;
    let fail = |e| crate::link::connect_error(topic, e);
    // Statistics carry no descriptors: the socket refuses them throughout.
    let connection = socket::connect(&socket_name(topic), Duration::from_secs(1)).map_err(fail)?;
    let hello = Hello {
        purpose: Purpose::Stats,
        max_message: 0,
    };
    let sent = socket::send_message(&connection, &hello.encode(), &[]);
    socket::set_io_timeout(&connection, Duration::from_secs(1)).map_err(fail)?;
    let mut buf = vec![0u8; STATS_HEADER + MAX_STATS_SUBSCRIBERS * STATS_PER_SUBSCRIBER + 8];
    let (len, _) = crate::link::receive_answer(&connection, &mut buf, sent).map_err(fail)?;
    if len == 0 {
        // Closed without an answer (the publisher is going away).
        return Err(Error::Disconnected {
            name: topic.to_owned(),
        });
    }
    if Welcome::decode(&buf[..len]).is_ok() {
        // A refusal instead of statistics.
        return Err(Error::PermissionDenied {
            name: topic.to_owned(),
            owner_uid: None,
        });
    }
    let mut stats = TopicStats::decode(&buf[..len]).map_err(|r| Error::incompatible(topic, r))?;
    // Who holds the name, as the kernel says, not as the holder says.
    stats.publisher_pid = socket::peer_credentials(&connection)
        .map_err(|e| Error::os("reading a publisher's credentials", e))?
        .pid;
    Ok(stats)
}

/// A topic found on this machine.
#[derive(Debug)]
pub struct TopicInfo {
    /// The topic's name.
    pub name: String,
    /// What its publisher says, or why it could not be asked.
    pub stats: Result<TopicStats>,
}

/// Every topic with a live publisher on this machine (in this network namespace).
pub fn list_topics() -> Vec<TopicInfo> {
    socket::bound_abstract_names(SOCKET_PREFIX)
        .into_iter()
        .filter_map(|socket_name| {
            let name = socket_name.strip_prefix(SOCKET_PREFIX)?.to_owned();
            validate_topic(&name).ok()?;
            let stats = topic_stats(&name);
            Some(TopicInfo { name, stats })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stats_round_trip() {
        let stats = TopicStats {
            publisher_pid: 7,
            published: 1 << 40,
            capacity: 64,
            reliable: true,
            subscribers: vec![SubscriberStats {
                pid: 8,
                uid: 1000,
                lag: 3,
                held: 2,
                reliable: false,
            }],
        };
        assert_eq!(TopicStats::decode(&stats.encode()), Ok(stats));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = TopicStats::decode(&bytes);
        }
    }
}
