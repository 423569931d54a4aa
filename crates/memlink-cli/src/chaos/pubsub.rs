//! Publish/subscribe under attack: the publisher (killed every ~1.5 s and restarted) publishes
//! numbered samples, loaned or copied, writing each acknowledged count to its ledger;
//! subscribers (one killed every ~400 ms and replaced, some slow on purpose so that they lag,
//! all holding a few samples at times) check every sample's identity and bytes, that sequence
//! numbers follow each other except where `Lagged` said exactly how many were missed, and at
//! each `Disconnected` write down how far they got, so that the driver can compare it with what
//! the dead publisher acknowledged. At the end the last publisher waits for its slots to come
//! back from the subscribers (killed ones included).

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use memlink::{Error, Publisher, Sample, Subscriber};

use super::ledger::{BusyLog, Counter, Record, Stop, now_ns};
use super::wire::{self, Rng, SAMPLE_HEADER};
use super::{Common, code, enter, kind, other};

/// Largest sample.
const MAX_SAMPLE: usize = 64 << 10;
/// Samples the topic keeps, and gives a new subscriber from before it joined.
const CAPACITY: usize = 64;
/// How long a reliable publisher waits for a subscriber before it lets it lag.
const RELIABLE_WAIT: Duration = Duration::from_millis(20);

/// `memlink __chaos publisher`.
pub(crate) fn publisher(common: &Common, topic: &str) -> io::Result<()> {
    let (board, ledger) = enter(common)?;
    let pid = std::process::id();
    let started = Instant::now();
    let mut rng = Rng::new(common.seed);
    // 4, 16 or 64 samples kept (and given to a subscriber that joins).
    let capacity = CAPACITY >> (2 * rng.below(3));
    let mut options = Publisher::options()
        .capacity(capacity)
        .history(capacity)
        .max_sample_size(MAX_SAMPLE)
        .max_subscribers(64)
        .max_subscribers_per_uid(64);
    // Every other publisher (by the seed) is reliable: it waits a little for slow subscribers
    // (and for killed ones, until their death is noticed) before it overwrites their samples.
    if rng.percent(50) {
        options = options.reliable(RELIABLE_WAIT);
    }
    let mut publisher = loop {
        let created = options.create(topic);
        match created {
            Ok(publisher) => break publisher,
            // The previous publisher, just killed, holds the name until it is dead.
            Err(Error::AlreadyRunning { .. }) if started.elapsed() < super::rpc::NAME_WAIT => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(other(e)),
        }
    };
    let mut copy = Vec::new();
    let mut seq = 0;
    let mut burst = 0;
    while !board.stopped(Stop::Publisher) {
        let len = SAMPLE_HEADER + wire::skewed_size(&mut rng, MAX_SAMPLE - SAMPLE_HEADER);
        let published = if rng.percent(50) {
            publisher.loan(len).and_then(|mut loan| {
                wire::write_sample(common.run_seed, pid, seq, &mut loan[..]);
                loan.send()
            })
        } else {
            copy.resize(len, 0);
            wire::write_sample(common.run_seed, pid, seq, &mut copy);
            publisher.publish(&copy)
        };
        match published {
            Ok(number) if number == seq => {
                seq += 1;
                ledger.write(Record::new(kind::PUBLISHED, 0, seq, 0, 0))?;
            }
            Ok(number) => {
                eprintln!("chaos publisher: WRONG sequence number {number} for sample {seq}");
                board.add(Counter::Wrong, 1);
                ledger.write(Record::new(kind::WRONG, kind::PATTERN_PUBSUB, seq, 0, 0))?;
                seq = number + 1;
            }
            Err(e) => {
                ledger.write(Record::new(kind::PUBLISH_FAILED, code(&e), seq, 0, 0))?;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // Mostly a steady trickle; now and then a burst that slow subscribers cannot keep up with.
        if burst > 0 {
            burst -= 1;
        } else if rng.percent(1) {
            burst = 2 * CAPACITY;
        } else {
            std::thread::sleep(Duration::from_micros(rng.range(100, 600)));
        }
    }
    // The end: once the subscribers are gone, every slot they held must come back.
    let deadline = Instant::now() + Duration::from_secs(3);
    while publisher.subscriber_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut held = publisher.held_slots();
    while held > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        held = publisher.held_slots();
    }
    ledger.write(Record::new(
        kind::HELD_AT_END,
        0,
        held as u64,
        publisher.subscriber_count() as u64,
        0,
    ))
}

/// What a subscriber knows about the publisher it is attached to.
#[derive(Default)]
struct Following {
    publisher: Option<u32>,
    /// The sequence number the next sample must have (unknown until the first sample).
    expected: Option<u64>,
    /// Whether any sample (or lag report) came from this publisher.
    seen: bool,
    /// When we were busy with its samples (see `BusyLog`).
    busy: BusyLog,
}

/// `memlink __chaos subscriber`.
pub(crate) fn subscriber(common: &Common, topic: &str, slow: bool) -> io::Result<()> {
    let (board, ledger) = enter(common)?;
    let mut rng = Rng::new(common.seed);
    let wrong = |at: u64, why: String| -> io::Result<()> {
        eprintln!("chaos subscriber: WRONG: {why}");
        board.add(Counter::Wrong, 1);
        ledger.write(Record::new(kind::WRONG, kind::PATTERN_PUBSUB, at, 0, 0))
    };
    let mut subscriber = loop {
        if board.stopped(Stop::Subscribers) {
            return Ok(());
        }
        match Subscriber::subscribe_timeout(topic, Duration::from_millis(100)) {
            Ok(subscriber) => break subscriber,
            Err(Error::Timeout | Error::NotRunning { .. }) => {}
            Err(e) => {
                ledger.write(Record::new(kind::SUBSCRIBE_FAILED, code(&e), 0, 0, 0))?;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    // Samples kept for a while, so that kills find slots held.
    let keep = rng.below(4) as usize;
    let mut held: VecDeque<Sample> = VecDeque::new();
    let mut now = Following {
        publisher: subscriber.publisher_pid(),
        ..Following::default()
    };
    while !board.stopped(Stop::Subscribers) {
        let received = subscriber.recv_timeout(Duration::from_millis(100));
        let got = now_ns();
        match received {
            Ok(sample) => {
                let seq = sample.sequence();
                let Some(pid) = subscriber.publisher_pid() else {
                    wrong(seq, "a sample while attached to no publisher".into())?;
                    continue;
                };
                if now.publisher != Some(pid) {
                    if now.publisher.is_some() {
                        wrong(
                            seq,
                            format!(
                                "a sample of publisher {pid} without a Disconnected from {:?} first",
                                now.publisher
                            ),
                        )?;
                    }
                    now = Following {
                        publisher: Some(pid),
                        ..Following::default()
                    };
                }
                if let Some(expected) = now.expected {
                    if seq != expected {
                        wrong(seq, format!("sample {seq} where {expected} was due"))?;
                    }
                }
                if let Err(why) = wire::check_sample(common.run_seed, pid, seq, &sample[..]) {
                    wrong(seq, why)?;
                }
                now.expected = Some(seq + 1);
                now.seen = true;
                board.add(Counter::Samples, 1);
                if keep > 0 {
                    held.push_back(sample);
                    while held.len() > keep {
                        held.pop_front();
                    }
                }
                if slow && rng.percent(3) {
                    std::thread::sleep(Duration::from_millis(rng.range(2, 8)));
                }
                now.busy.record(got, now_ns());
            }
            Err(Error::Lagged { missed, .. }) => {
                now.seen = true;
                now.expected = now.expected.map(|e| e + missed);
                ledger.write(Record::new(kind::LAGGED, 0, missed, 0, 0))?;
            }
            Err(Error::Timeout) => {
                if now.publisher.is_none() {
                    now.publisher = subscriber.publisher_pid();
                }
            }
            Err(Error::Disconnected { .. }) => {
                let t1 = got;
                held.clear();
                let pid = now.publisher.unwrap_or(0);
                let killed = board.killed_at(pid);
                let woke = killed.map_or(u64::MAX, |killed| t1.saturating_sub(killed));
                let busy_us = killed.map_or(0, |killed| now.busy.busy_us_after(killed));
                ledger.write(Record::new(
                    kind::SUB_DISCONNECTED,
                    u32::from(now.seen),
                    u64::from(pid) | u64::from(busy_us) << 32,
                    now.expected.unwrap_or(u64::MAX),
                    woke,
                ))?;
                now = Following::default();
            }
            Err(e) => {
                if matches!(e, Error::TooManyHeld { .. }) {
                    held.clear();
                }
                ledger.write(Record::new(kind::SUBSCRIBE_FAILED, code(&e), 1, 0, 0))?;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Ok(())
}
