//! `memlink bench pubsub`: publisher → subscriber latency and fan-out rate of memlink topics,
//! against a Unix socket carrying the same bytes to each subscriber and a one-way shared-memory
//! spin floor, all measured in one run on this machine.
//!
//! This process is the publisher; every subscriber is a child process (`memlink __peer
//! pubsub-sub`). Latency is one-way: the publisher writes `CLOCK_MONOTONIC` into the first 8
//! bytes of each sample just before it publishes (after filling a loan, before copying a
//! `publish`), and the subscriber reads the clock as the sample arrives (the clock is the same
//! for every process of the machine). A zero-copy subscriber does not read the rest of the
//! sample; a Unix socket subscriber has received all of it.
//!
//! Built with the feature `iceoryx2`, the same runs also go over iceoryx2's publish/subscribe
//! ([`crate::bench_iceoryx2`]), in the same tables.

use std::io::{self, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use memlink::{Error, Publisher, Segment, Subscriber};
use serde_json::{Value, json};

use crate::bench::{Latency, Target, human_size, new_histogram, targets_table, us};
use crate::framing::{self, Framed};
use crate::peer::{self, PeerProcess};
use crate::{chart, ui};

const SIZES: [usize; 5] = [64, 4 << 10, 64 << 10, 1 << 20, 4 << 20];
const FAN_OUT: [usize; 3] = [1, 4, 16];
/// Between two samples of an "awake" run: short enough that the subscriber is still spinning.
const AWAKE_GAP: Duration = Duration::from_micros(20);
/// Between two samples of an "asleep" run: long enough that the subscriber has parked.
const ASLEEP_GAP: Duration = Duration::from_millis(2);
/// Samples at the start of each run that are not recorded (page faults, first wake-ups).
const WARM_UP: u64 = 100;
/// The floor's segment layout: the sequence word, then the sample.
const FLOOR_SEQ: usize = 0;
const FLOOR_DATA: usize = 64;

/// Command-line options of `memlink bench pubsub`.
#[derive(Debug, Clone)]
pub(crate) struct PubsubBenchOptions {
    pub(crate) json: bool,
    pub(crate) quick: bool,
    pub(crate) svg: Option<std::path::PathBuf>,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn unique(tag: &str) -> String {
    format!("bench-{tag}-{}-{:x}", std::process::id(), now_ns())
}

/// How samples travel in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// memlink, the publisher fills a loan in place.
    Loaned,
    /// memlink, `publish` copies the sample in.
    Copied,
    /// A Unix stream socket per subscriber: one write of header + sample each.
    Uds,
    /// One shared sequence word and the sample in a segment; the subscriber busy-waits.
    Floor,
    /// iceoryx2, the publisher fills a loan in place; the subscriber busy-polls.
    #[cfg(feature = "iceoryx2")]
    Iceoryx2Poll,
    /// iceoryx2, the publisher fills a loan in place and notifies; the subscriber sleeps in a
    /// `WaitSet`.
    #[cfg(feature = "iceoryx2")]
    Iceoryx2WaitSet,
}

impl Way {
    fn key(self) -> &'static str {
        match self {
            Way::Loaned => "memlink-loan",
            Way::Copied => "memlink-copy",
            Way::Uds => "uds",
            Way::Floor => "shm-spin",
            #[cfg(feature = "iceoryx2")]
            Way::Iceoryx2Poll => "iceoryx2-poll",
            #[cfg(feature = "iceoryx2")]
            Way::Iceoryx2WaitSet => "iceoryx2-waitset",
        }
    }

    /// The way as the tables name it.
    fn label(self) -> String {
        match self {
            #[cfg(feature = "iceoryx2")]
            Way::Iceoryx2Poll => format!("iceoryx2 {} poll", crate::bench_iceoryx2::VERSION),
            #[cfg(feature = "iceoryx2")]
            Way::Iceoryx2WaitSet => {
                format!("iceoryx2 {} WaitSet", crate::bench_iceoryx2::VERSION)
            }
            _ => self.key().to_owned(),
        }
    }

    /// Whether the publisher fills a loan in place (so a sample costs it the same at any size).
    fn is_loan(self) -> bool {
        match self {
            Way::Loaned => true,
            #[cfg(feature = "iceoryx2")]
            Way::Iceoryx2Poll | Way::Iceoryx2WaitSet => true,
            _ => false,
        }
    }

    /// iceoryx2's way of waiting, for its ways.
    #[cfg(feature = "iceoryx2")]
    fn iceoryx2(self) -> Option<crate::bench_iceoryx2::Wait> {
        match self {
            Way::Iceoryx2Poll => Some(crate::bench_iceoryx2::Wait::Poll),
            Way::Iceoryx2WaitSet => Some(crate::bench_iceoryx2::Wait::WaitSet),
            _ => None,
        }
    }

    fn parse(key: &str) -> Option<Self> {
        [
            Way::Loaned,
            Way::Copied,
            Way::Uds,
            Way::Floor,
            #[cfg(feature = "iceoryx2")]
            Way::Iceoryx2Poll,
            #[cfg(feature = "iceoryx2")]
            Way::Iceoryx2WaitSet,
        ]
        .into_iter()
        .find(|w| w.key() == key)
    }
}

/// What one run's subscribers measured, together.
struct Outcome {
    latency: Latency,
    /// Samples received, over all subscribers.
    received: u64,
    /// Samples reported missed (memlink lossy topics only).
    missed: u64,
    /// From the first publish to the last subscriber's last sample.
    window: Duration,
}

/// A run: `subscribers` child processes receive `samples` samples of `size` bytes sent `way`,
/// one every `gap` (as fast as possible if zero).
struct Run {
    way: Way,
    size: usize,
    samples: u64,
    subscribers: usize,
    gap: Duration,
}

impl Run {
    fn go(&self, cpus: &[usize]) -> io::Result<Outcome> {
        let name = unique("pubsub");
        // The publisher on the first CPU; a single subscriber pinned to the second, several
        // left to the scheduler.
        let sub_cpu = if self.subscribers == 1 {
            cpus.get(1).copied()
        } else {
            None
        };
        let spawn = |address: &str| {
            PeerProcess::spawn_on(
                sub_cpu,
                &[
                    "pubsub-sub",
                    self.way.key(),
                    address,
                    &self.size.to_string(),
                    &self.samples.to_string(),
                ],
            )
        };
        let mut peers = Vec::new();
        let started;
        match self.way {
            Way::Loaned | Way::Copied => {
                // Throughput runs (no gap) are reliable, so every subscriber gets every sample;
                // latency runs are lossy, so that a subscriber never slows the publisher.
                let mut options = Publisher::options()
                    .capacity(256)
                    .max_sample_size(self.size)
                    .max_subscribers(self.subscribers);
                if self.gap.is_zero() {
                    options = options.reliable(Duration::from_secs(10));
                }
                let mut publisher = options.create(&name).map_err(other)?;
                for _ in 0..self.subscribers {
                    peers.push(spawn(&name)?);
                }
                let deadline = Instant::now() + Duration::from_secs(10);
                while publisher.subscriber_count() < self.subscribers {
                    if Instant::now() > deadline {
                        return Err(other("subscribers did not arrive"));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                let mut copy = vec![0x5au8; self.size];
                started = Instant::now();
                let mut next = Instant::now();
                for seq in 0..self.samples {
                    pace(&mut next, self.gap);
                    if self.way == Way::Loaned {
                        let mut loan = publisher.loan(self.size).map_err(other)?;
                        loan[8..16].copy_from_slice(&seq.to_le_bytes());
                        loan[..8].copy_from_slice(&now_ns().to_le_bytes());
                        loan.send().map_err(other)?;
                    } else {
                        copy[8..16].copy_from_slice(&seq.to_le_bytes());
                        copy[..8].copy_from_slice(&now_ns().to_le_bytes());
                        publisher.publish(&copy).map_err(other)?;
                    }
                }
                // Dropping the publisher ends every subscriber after its last sample.
                drop(publisher);
            }
            Way::Uds => {
                let listener = UnixListener::bind_addr(&framing::uds_address(&name)?)?;
                for _ in 0..self.subscribers {
                    peers.push(spawn(&name)?);
                }
                let mut streams = Vec::new();
                for _ in 0..self.subscribers {
                    streams.push(Framed::unix(listener.accept()?.0, false)?);
                }
                let mut sample = vec![0x5au8; self.size];
                started = Instant::now();
                let mut next = Instant::now();
                for seq in 0..self.samples {
                    pace(&mut next, self.gap);
                    sample[8..16].copy_from_slice(&seq.to_le_bytes());
                    sample[..8].copy_from_slice(&now_ns().to_le_bytes());
                    // One writev of header and sample per subscriber.
                    for stream in &mut streams {
                        stream.send(&sample)?;
                    }
                }
                drop(streams);
            }
            Way::Floor => {
                let segment = Segment::create(&name, FLOOR_DATA + self.size).map_err(other)?;
                peers.push(spawn(&name)?);
                let seq_word = segment.atomic_u32(FLOOR_SEQ).map_err(other)?;
                let mut sample = vec![0x5au8; self.size];
                started = Instant::now();
                let mut next = Instant::now();
                for seq in 0..self.samples {
                    pace(&mut next, self.gap);
                    sample[8..16].copy_from_slice(&seq.to_le_bytes());
                    sample[..8].copy_from_slice(&now_ns().to_le_bytes());
                    segment.write(FLOOR_DATA, &sample).map_err(other)?;
                    seq_word.store(seq as u32 + 1, Ordering::Release);
                }
                // u32::MAX says "done". The segment is removed when dropped.
                std::thread::sleep(Duration::from_millis(1));
                seq_word.store(u32::MAX, Ordering::Release);
                return collect(peers, started);
            }
            #[cfg(feature = "iceoryx2")]
            Way::Iceoryx2Poll | Way::Iceoryx2WaitSet => {
                let wait = self
                    .way
                    .iceoryx2()
                    .ok_or_else(|| other("not an iceoryx2 way"))?;
                // Lossy for latency runs, reliable for throughput runs, as memlink's topic.
                let topic = crate::bench_iceoryx2::Topic::create(
                    self.size,
                    self.subscribers,
                    self.gap.is_zero(),
                    wait,
                )?;
                // Declared after the topic, so dropped (killed) first on an error path: the
                // topic then removes what the killed subscribers leave.
                let mut peers = Vec::new();
                for _ in 0..self.subscribers {
                    peers.push(spawn(topic.address())?);
                }
                let started = Instant::now();
                let mut next = Instant::now();
                for seq in 0..self.samples {
                    pace(&mut next, self.gap);
                    topic.send(seq, now_ns)?;
                }
                topic.finish()?;
                // The topic outlives its subscribers, which drop their ports before reporting.
                let outcome = collect(peers, started);
                drop(topic);
                return outcome;
            }
        }
        collect(peers, started)
    }
}

/// Waits until `next`, then moves it on by `gap` (spinning for short gaps, sleeping for long).
fn pace(next: &mut Instant, gap: Duration) {
    if gap.is_zero() {
        return;
    }
    if gap >= Duration::from_millis(1) {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    } else {
        while Instant::now() < *next {
            std::hint::spin_loop();
        }
    }
    *next = Instant::now() + gap;
}

/// Reads each subscriber's report (`hist NS COUNT` lines, then `done RECEIVED MISSED LAST_NS`)
/// and merges them.
fn collect(peers: Vec<PeerProcess>, started: Instant) -> io::Result<Outcome> {
    let started_ns = now_ns() - started.elapsed().as_nanos() as u64;
    let mut histogram = new_histogram()?;
    let (mut received, mut missed, mut last) = (0u64, 0u64, started_ns);
    for mut peer in peers {
        let mut done = false;
        for line in peer.lines()? {
            let line = line?;
            let words: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|w| w.parse().ok())
                .collect();
            match (line.split_whitespace().next(), words.as_slice()) {
                (Some("hist"), [value, count]) => {
                    histogram.record_n(*value, *count).map_err(other)?;
                }
                (Some("done"), [r, m, at]) => {
                    received += r;
                    missed += m;
                    last = last.max(*at);
                    done = true;
                    break;
                }
                _ => return Err(other(format!("unexpected subscriber output {line:?}"))),
            }
        }
        if !done {
            return Err(other("a subscriber ended without reporting"));
        }
    }
    Ok(Outcome {
        latency: Latency::of(&histogram),
        received,
        missed,
        window: Duration::from_nanos(last.saturating_sub(started_ns)),
    })
}

/// `memlink __peer pubsub-sub WAY ADDRESS SIZE SAMPLES`: receives until the publisher is gone
/// (or SAMPLES arrived), recording one-way latencies after the warm-up; reports as `collect`
/// reads.
pub(crate) fn subscriber(way: &str, address: &str, size: usize, samples: u64) -> io::Result<()> {
    let way = Way::parse(way).ok_or_else(|| other(format!("unknown way {way}")))?;
    let mut histogram = new_histogram()?;
    let (mut received, mut missed, mut last) = (0u64, 0u64, 0u64);
    let record = |stamp: u64, histogram: &mut Histogram<u64>, received: &mut u64| {
        let now = now_ns();
        if *received >= WARM_UP {
            let _ = histogram.record(now.saturating_sub(stamp).max(1));
        }
        *received += 1;
        now
    };
    let word_at = |bytes: &[u8], at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    // Every sample is checked: its length, and its number (after the stamp), which must grow (by
    // exactly one where nothing may be skipped: a socket).
    let mut next = 0u64;
    // Returns the sample's stamp and how many samples were skipped before it.
    let mut check = |bytes: &[u8]| -> io::Result<(u64, u64)> {
        let seq = word_at(bytes, 8);
        if bytes.len() != size || seq < next || (way == Way::Uds && seq != next) {
            return Err(other(format!(
                "expected sample {next} of {size} bytes, received sample {seq} of {} bytes",
                bytes.len()
            )));
        }
        let skipped = seq - next;
        next = seq + 1;
        Ok((word_at(bytes, 0), skipped))
    };
    match way {
        Way::Loaned | Way::Copied => {
            let mut subscriber = Subscriber::options()
                .subscribe_timeout(address, Duration::from_secs(10))
                .map_err(other)?;
            ready()?;
            loop {
                match subscriber.recv_timeout(Duration::from_secs(30)) {
                    Ok(sample) => {
                        let (stamp, _) = check(&sample)?;
                        last = record(stamp, &mut histogram, &mut received);
                    }
                    Err(Error::Lagged { missed: n, .. }) => missed += n,
                    Err(Error::Disconnected { .. }) => break,
                    Err(e) => return Err(other(e)),
                }
            }
        }
        Way::Uds => {
            let stream = UnixStream::connect_addr(&framing::uds_address(address)?)?;
            let mut framed = Framed::unix(stream, false)?;
            ready()?;
            let mut sample = Vec::with_capacity(size);
            while framed.recv(&mut sample)? {
                let (stamp, _) = check(&sample)?;
                last = record(stamp, &mut histogram, &mut received);
            }
        }
        Way::Floor => {
            let segment = Segment::open(address).map_err(other)?;
            let seq_word = segment.atomic_u32(FLOOR_SEQ).map_err(other)?;
            let mut sample = vec![0u8; size];
            ready()?;
            let mut seen = 0;
            let mut last_taken = None;
            while received < samples {
                let now = seq_word.load(Ordering::Acquire);
                if now == seen {
                    std::hint::spin_loop();
                    continue;
                }
                if now == u32::MAX {
                    break;
                }
                segment.read(FLOOR_DATA, &mut sample).map_err(other)?;
                // The floor has no protocol against overwriting: the publisher may have written
                // the next sample before its sequence word moved, so the one read last time may
                // be read again now. It was counted then; it is not a new one.
                let number = word_at(&sample, 8);
                if last_taken == Some(number) {
                    seen = now;
                    continue;
                }
                last_taken = Some(number);
                // Missed samples are counted by number: a sample read early was not missed.
                let (stamp, skipped) = check(&sample)?;
                last = record(stamp, &mut histogram, &mut received);
                missed += skipped;
                seen = now;
            }
        }
        #[cfg(feature = "iceoryx2")]
        Way::Iceoryx2Poll | Way::Iceoryx2WaitSet => {
            let wait = way.iceoryx2().ok_or_else(|| other("not an iceoryx2 way"))?;
            // iceoryx2 does not report what a lossy subscriber missed: the gaps in the sample
            // numbers say it. Every iceoryx2 object is gone when `receive` returns, before the
            // report, after which the publisher may kill this process.
            crate::bench_iceoryx2::receive(address, wait, ready, |bytes| {
                let (stamp, skipped) = check(bytes)?;
                missed += skipped;
                last = record(stamp, &mut histogram, &mut received);
                Ok(())
            })?;
        }
    }
    let mut out = io::stdout().lock();
    for value in histogram.iter_recorded() {
        writeln!(
            out,
            "hist {} {}",
            value.value_iterated_to(),
            value.count_at_value()
        )?;
    }
    writeln!(out, "done {received} {missed} {last}")?;
    out.flush()
}

fn ready() -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()
}

fn samples_for(size: usize, quick: bool) -> u64 {
    let n = match size {
        s if s <= 4 << 10 => 20_000,
        s if s <= 64 << 10 => 5_000,
        _ => 1_000,
    };
    if quick {
        (n / 10).max(WARM_UP + 100)
    } else {
        n
    }
}

fn note(json: bool, message: &str) {
    if json {
        eprintln!("{message}");
    } else {
        println!("{message}");
    }
}

/// One latency row of the report.
struct LatencyRow {
    label: String,
    way: Way,
    size: usize,
    state: &'static str,
    latency: Latency,
    missed: u64,
}

/// Runs the whole benchmark and prints it (as tables, or one JSON object).
pub(crate) fn run(options: &PubsubBenchOptions) -> io::Result<()> {
    let cpus: Vec<usize> = {
        let set = rustix::thread::sched_getaffinity(None).map_err(io::Error::from)?;
        (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect()
    };
    if let Some(&first) = cpus.first() {
        peer::pin_to(&[first])?;
    }
    let json = options.json;
    note(
        json,
        &format!(
            "memlink bench pubsub: {} CPUs; this process publishes (pinned to one CPU), each \
             subscriber is a child process and checks every sample's length and number; one-way \
             latency in µs",
            cpus.len()
        ),
    );
    // Awake at every size, asleep at 64 B, fan-out: memlink, then iceoryx2 where built in, then
    // the socket.
    let awake_ways = [
        Way::Loaned,
        #[cfg(feature = "iceoryx2")]
        Way::Iceoryx2Poll,
        Way::Copied,
        Way::Uds,
    ];
    let asleep_ways = [
        Way::Loaned,
        #[cfg(feature = "iceoryx2")]
        Way::Iceoryx2WaitSet,
        Way::Uds,
    ];
    let fan_ways = [
        Way::Loaned,
        #[cfg(feature = "iceoryx2")]
        Way::Iceoryx2Poll,
        #[cfg(feature = "iceoryx2")]
        Way::Iceoryx2WaitSet,
        Way::Uds,
    ];
    #[cfg(feature = "iceoryx2")]
    note(
        json,
        &format!(
            "iceoryx2 {v}: the same processes and samples, a zero-copy loan of a [u8] slice \
             per sample (service: history 0, {c} samples buffered per subscriber, as many \
             subscribers as the run has, lossy for latency and reliable for fan-out like \
             memlink's topic); \"poll\" subscribers busy-poll receive(), \"WaitSet\" ones \
             sleep in a WaitSet on a Listener that the publisher notifies after each send",
            v = crate::bench_iceoryx2::VERSION,
            c = crate::bench_iceoryx2::CAPACITY,
        ),
    );
    let bar = ui::progress(
        (1 + awake_ways.len() * SIZES.len() + asleep_ways.len() + fan_ways.len() * FAN_OUT.len())
            as u64,
    );
    let mut latency_rows: Vec<LatencyRow> = Vec::new();
    let mut measure = |label: String, run: Run, state: &'static str| -> io::Result<Latency> {
        bar.set_message(label.clone());
        let outcome = run.go(&cpus)?;
        bar.inc(1);
        latency_rows.push(LatencyRow {
            label,
            way: run.way,
            size: run.size,
            state,
            latency: outcome.latency,
            missed: outcome.missed,
        });
        Ok(outcome.latency)
    };
    let floor = measure(
        "shm spin floor, 64 B (awake)".into(),
        Run {
            way: Way::Floor,
            size: 64,
            samples: samples_for(64, options.quick),
            subscribers: 1,
            gap: AWAKE_GAP,
        },
        "awake",
    )?;
    let mut loaned_awake = Vec::new();
    for &way in &awake_ways {
        for size in SIZES {
            let latency = measure(
                format!("{} {} (awake)", way.label(), human_size(size)),
                Run {
                    way,
                    size,
                    samples: samples_for(size, options.quick),
                    subscribers: 1,
                    // A loan costs the same at any size, so its subscriber stays awake at the
                    // same pace; a copy (and a socket) first needs the time to move the bytes.
                    gap: if way.is_loan() {
                        AWAKE_GAP
                    } else {
                        AWAKE_GAP.max(Duration::from_nanos(size as u64 / 2))
                    },
                },
                "awake",
            )?;
            if way == Way::Loaned {
                loaned_awake.push((size, latency));
            }
        }
    }
    for &way in &asleep_ways {
        measure(
            format!("{} 64 B (asleep: 2 ms apart)", way.label()),
            Run {
                way,
                size: 64,
                samples: if options.quick { 200 } else { 1_000 } + WARM_UP,
                subscribers: 1,
                gap: ASLEEP_GAP,
            },
            "asleep",
        )?;
    }

    struct FanRow {
        way: Way,
        subscribers: usize,
        rate: f64,
        outcome: Outcome,
    }
    let mut fan_rows = Vec::new();
    for &way in &fan_ways {
        for subscribers in FAN_OUT {
            bar.set_message(format!("fan-out: {} to {subscribers}", way.label()));
            let samples = if options.quick { 20_000 } else { 200_000 };
            let outcome = Run {
                way,
                size: 64,
                samples,
                subscribers,
                gap: Duration::ZERO,
            }
            .go(&cpus)?;
            bar.inc(1);
            let rate = outcome.received as f64 / outcome.window.as_secs_f64().max(1e-9);
            fan_rows.push(FanRow {
                way,
                subscribers,
                rate,
                outcome,
            });
        }
    }
    bar.finish_and_clear();

    let rate = |subscribers: usize| {
        fan_rows
            .iter()
            .find(|r| r.way == Way::Loaned && r.subscribers == subscribers)
            .map_or(0.0, |r| r.rate)
    };
    let small = loaned_awake.first().map(|(_, l)| l.p50).unwrap_or(1).max(1);
    let large = loaned_awake.last().map(|(_, l)| l.p50).unwrap_or(0);
    let targets = [
        Target {
            what: "loaned 4 MiB awake p50 / loaned 64 B awake p50",
            measured: large as f64 / small as f64,
            goal: 2.0,
            higher_is_better: false,
        },
        Target {
            what: "loaned 64 B awake p50 / shm spin floor p50",
            measured: small as f64 / floor.p50.max(1) as f64,
            goal: 1.5,
            higher_is_better: false,
        },
        Target::at_least(
            "delivered/s to 16 subscribers / to 1",
            rate(16) / rate(1).max(1.0),
            0.5,
        ),
    ];

    if let Some(path) = &options.svg {
        let series: Vec<chart::Series> = awake_ways
            .iter()
            .map(|&way| chart::Series {
                label: format!("{} (awake)", way.label()),
                points: latency_rows
                    .iter()
                    .filter(|r| r.way == way && r.state == "awake")
                    .map(|r| (r.size, r.latency))
                    .collect(),
            })
            .collect();
        chart::write_svg(
            path,
            &format!(
                "memlink bench pubsub: one-way latency, 1 subscriber, {} CPUs",
                cpus.len()
            ),
            "one-way",
            &series,
        )?;
    }
    let chart_written = || {
        if let Some(path) = &options.svg {
            note(
                json,
                &format!("latency chart written to {}", path.display()),
            );
        }
    };

    if json {
        #[cfg_attr(not(feature = "iceoryx2"), allow(unused_mut))]
        let mut out = json!({
            "bench": "pubsub",
            "cpus": cpus.len(),
            "latency": latency_rows.iter().map(|r| {
                let mut row = r.latency.json_fields();
                row.insert("way".into(), r.way.key().into());
                row.insert("size".into(), r.size.into());
                row.insert("state".into(), r.state.into());
                row.insert("subscribers".into(), 1.into());
                row.insert("missed".into(), r.missed.into());
                Value::Object(row)
            }).collect::<Vec<_>>(),
            "fan_out": fan_rows.iter().map(|r| json!({
                "way": r.way.key(),
                "subscribers": r.subscribers,
                "delivered_per_s": r.rate,
                "received": r.outcome.received,
                "missed": r.outcome.missed,
                "p50_ns": r.outcome.latency.p50,
                "p99_ns": r.outcome.latency.p99,
            })).collect::<Vec<_>>(),
            "targets": targets.iter().map(Target::json).collect::<Vec<_>>(),
        });
        #[cfg(feature = "iceoryx2")]
        if let Some(object) = out.as_object_mut() {
            object.insert("iceoryx2".into(), crate::bench_iceoryx2::VERSION.into());
        }
        println!("{out}");
        chart_written();
        return Ok(());
    }

    println!("latency, 1 subscriber (µs; p99.9 where at least 10,000 samples back it, else (max))");
    let mut table = ui::table(&["", "samples", "p50", "p99", "p99.9", "missed"], 1);
    for r in &latency_rows {
        table.add_row([
            r.label.clone(),
            r.latency.samples.to_string(),
            us(r.latency.p50),
            us(r.latency.p99),
            r.latency.tail_us(),
            r.missed.to_string(),
        ]);
    }
    println!("{table}");
    println!();
    println!("fan-out, 64 B (every subscriber gets all)");
    let mut table = ui::table(&["", "delivered/s", "p50 µs", "p99 µs"], 1);
    for r in &fan_rows {
        table.add_row([
            format!("{} to {}", r.way.label(), r.subscribers),
            format!("{:.0}", r.rate),
            us(r.outcome.latency.p50),
            us(r.outcome.latency.p99),
        ]);
    }
    println!("{table}");
    println!();
    println!("{}", targets_table(&targets));
    chart_written();
    Ok(())
}
