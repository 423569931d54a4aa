//! `memlink bench rpc`: round-trip latency and throughput of memlink against its own floors and
//! the usual alternatives, all measured in one run on this machine.
//!
//! This process is always the client; every server runs in a child process. Latencies are
//! recorded per call in an HDR histogram (ns, 3 significant digits); every reply is checked
//! (length and every byte; each request carries its call's number), and a wrong one fails the
//! bench. The floors do the same echo with nothing but the copies and one sequence word per
//! direction ([`crate::rpc_floor`]): `shm spin` (both sides busy-wait: the hardware floor),
//! `futex ping-pong` (both sides sleep in the kernel every time) and the `sleeping floor`, which
//! waits exactly as memlink does (spin, yield, then sleep, woken only when asleep) and is what
//! memlink's "asleep" and "same core" rows are compared with. The Unix socket, pipe and TCP
//! baselines move each message with one `writev` and read it with one `read` while it is small
//! ([`crate::framing`]).
//!
//! Throughput with many clients counts the calls completed within one window common to all
//! client processes (they start together, after a warm-up). A p99.9 is reported only where at
//! least [`P999_SAMPLES`] samples back it; elsewhere the maximum stands in, and says so.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use memlink::Client;
use serde_json::{Value, json};

use crate::chart;
use crate::peer::{self, PeerProcess, RoundTrip, Transport, check_reply, number_request};
use crate::ui;

const SIZES: [usize; 4] = [64, 4096, 64 << 10, 1 << 20];
const THROUGHPUT_CLIENTS: [usize; 4] = [1, 4, 16, 64];
/// Pause before each "asleep" sample: far longer than any spin or yield budget, so the server
/// (or the floor's peer) has parked and its CPU has gone idle.
pub(crate) const IDLE_GAP: Duration = Duration::from_millis(2);
/// Fewest samples that back a p99.9 (below it the maximum is reported instead).
pub(crate) const P999_SAMPLES: u64 = 10_000;

const SPIN: &str = "shm spin (floor)";
const FUTEX: &str = "futex ping-pong (floor)";
const SLEEPING_ASLEEP: &str = "sleeping floor (asleep)";
const AWAKE: &str = "memlink (awake)";
const ASLEEP: &str = "memlink (asleep)";
const UDS: &str = "unix socket";
const PIPE: &str = "pipe";
const TCP: &str = "tcp loopback";
/// The rows of each size, in order.
const LATENCY_ROWS: [&str; 8] = [SPIN, FUTEX, SLEEPING_ASLEEP, AWAKE, ASLEEP, UDS, PIPE, TCP];
const SAME_CORE_FUTEX: &str = "futex ping-pong (floor)";
const SAME_CORE_SLEEPING: &str = "sleeping floor";
const SAME_CORE_MEMLINK: &str = "memlink";

/// What each row of the latency tables is (the sleeping floor's waiting from memlink's own
/// constants).
fn row_methods() -> Vec<(&'static str, String)> {
    use memlink::__wait as policy;
    vec![
        (
            SPIN,
            format!(
                "the echo's copies and one sequence word per direction, both processes \
                 busy-waiting; measured in {ROUNDS} rounds in turns with memlink (awake), a fresh \
                 floor process each round"
            ),
        ),
        (
            FUTEX,
            "the same, both sleeping in futex_wait at once; every message is followed by a \
             futex_wake"
                .into(),
        ),
        (
            "sleeping floor",
            format!(
                "the same, each side waiting as memlink does: {} looks, spin {} µs (not when the \
                 peer last ran on its CPU), yield {} µs, then sleep in futex_wait; woken only if \
                 it said it sleeps",
                policy::FIRST_LOOKS,
                policy::CLIENT_SPIN.as_micros(),
                policy::CLIENT_YIELD.as_micros()
            ),
        ),
        (
            "(asleep)",
            format!(
                "each call made after {} ms idle, so the server (or floor) has gone to sleep",
                IDLE_GAP.as_millis()
            ),
        ),
        (
            "unix socket, pipe, tcp",
            "one writev (4-byte length + payload) per message, one read while it is small \
             (header, then payload into a reused buffer from 4 KiB); TCP_NODELAY"
                .into(),
        ),
        (
            "tail",
            format!(
                "p99.9 where at least {} samples back it, else the maximum, marked (max)",
                thousands(P999_SAMPLES)
            ),
        ),
    ]
}

/// Command-line options of `memlink bench rpc`.
#[derive(Debug, Clone)]
pub(crate) struct BenchOptions {
    pub(crate) json: bool,
    pub(crate) quick: bool,
    pub(crate) workers: usize,
    pub(crate) svg: Option<PathBuf>,
}

/// Percentiles of one latency measurement, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Latency {
    pub(crate) p50: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) mean: f64,
    pub(crate) max: u64,
    pub(crate) samples: u64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        Latency {
            p50: h.value_at_quantile(0.50),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            mean: h.mean(),
            max: h.max(),
            samples: h.len(),
        }
    }

    /// Whether enough samples back a p99.9.
    pub(crate) fn has_p999(&self) -> bool {
        self.samples >= P999_SAMPLES
    }

    /// The p99.9 where enough samples back it, else the maximum.
    pub(crate) fn tail(&self) -> u64 {
        if self.has_p999() { self.p999 } else { self.max }
    }

    /// The tail in µs, marked "(max)" when it is the maximum.
    pub(crate) fn tail_us(&self) -> String {
        if self.has_p999() {
            us(self.p999)
        } else {
            format!("{} (max)", us(self.max))
        }
    }

    /// The JSON fields of a latency row: `p999_ns` is null below [`P999_SAMPLES`] samples.
    pub(crate) fn json_fields(&self) -> serde_json::Map<String, Value> {
        let mut fields = serde_json::Map::new();
        fields.insert("p50_ns".into(), self.p50.into());
        fields.insert("p99_ns".into(), self.p99.into());
        fields.insert(
            "p999_ns".into(),
            self.has_p999().then_some(self.p999).into(),
        );
        fields.insert("max_ns".into(), self.max.into());
        fields.insert("mean_ns".into(), self.mean.into());
        fields.insert("samples".into(), self.samples.into());
        fields
    }
}

pub(crate) fn new_histogram() -> io::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).map_err(io::Error::other)
}

struct Row {
    label: &'static str,
    size: usize,
    latency: Latency,
}

fn iterations(size: usize, quick: bool) -> u64 {
    let full = match size {
        0..=4096 => 20_000,
        4097..=65536 => 5_000,
        _ => 500,
    };
    if quick { full / 10 } else { full }
}

/// The request of `size` bytes the latency runs send (numbered per call).
fn pattern(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

/// Times `iterations` echo round trips of `size` bytes over `what` (after a warm-up), sleeping
/// `gap` before each when given, and checks every reply.
pub(crate) fn measure(
    what: &str,
    rt: &mut dyn RoundTrip,
    size: usize,
    iterations: u64,
    gap: Option<Duration>,
) -> io::Result<Latency> {
    Ok(Latency::of(&measure_histogram(
        what, rt, size, iterations, gap,
    )?))
}

/// [`measure`], keeping every sample.
fn measure_histogram(
    what: &str,
    rt: &mut dyn RoundTrip,
    size: usize,
    iterations: u64,
    gap: Option<Duration>,
) -> io::Result<Histogram<u64>> {
    let mut request = pattern(size);
    let mut reply = Vec::with_capacity(size);
    let warmup = if gap.is_some() {
        10
    } else {
        (iterations / 10).clamp(10, 1000)
    };
    let mut histogram = new_histogram()?;
    for seq in 0..warmup + iterations {
        if let Some(gap) = gap {
            std::thread::sleep(gap);
        }
        number_request(&mut request, seq);
        let started = Instant::now();
        rt.round_trip(&request, &mut reply)?;
        let elapsed = started.elapsed();
        check_reply(what, seq, &request, &reply)?;
        if seq >= warmup {
            histogram.saturating_record(elapsed.as_nanos() as u64);
        }
    }
    Ok(histogram)
}

/// Rounds in which the spin floor and memlink (awake) take turns (see [`interleaved`]).
const ROUNDS: u64 = 4;

/// Each round's spin floor p50 and memlink (awake) p50, in nanoseconds.
type Rounds = Vec<(u64, u64)>;

/// The spin floor and memlink's awake round trip measured in [`ROUNDS`] alternating rounds of
/// `iterations / ROUNDS` each (a fresh floor process per round: its server spins, and must not
/// take the CPU from memlink's): this VM moves its vCPUs between a near and a far placement
/// every few minutes, which changes both figures several times over, so a ratio means something
/// only between rounds measured side by side. Returns both rows (every round's samples) and each
/// round's two p50s.
fn interleaved(
    client: &mut Client,
    size: usize,
    iterations: u64,
    server_cpu: Option<usize>,
) -> io::Result<(Latency, Latency, Rounds)> {
    let (mut floor_all, mut memlink_all) = (new_histogram()?, new_histogram()?);
    let mut rounds = Vec::new();
    let per_round = (iterations / ROUNDS).max(1);
    for _ in 0..ROUNDS {
        let floor_round = {
            let (mut floor, _server) = peer::spawn_floor(Transport::Spin, size, server_cpu)?;
            measure_histogram(SPIN, &mut floor, size, per_round, None)?
        };
        let memlink_round = measure_histogram(AWAKE, client, size, per_round, None)?;
        rounds.push((
            Latency::of(&floor_round).p50,
            Latency::of(&memlink_round).p50,
        ));
        floor_all.add(&floor_round).map_err(io::Error::other)?;
        memlink_all.add(&memlink_round).map_err(io::Error::other)?;
    }
    Ok((Latency::of(&floor_all), Latency::of(&memlink_all), rounds))
}

/// The median of each round's memlink p50 over its floor p50.
fn median_round_ratio(rounds: &[(u64, u64)]) -> f64 {
    let mut ratios: Vec<f64> = rounds
        .iter()
        .map(|&(floor, memlink)| memlink as f64 / floor.max(1) as f64)
        .collect();
    ratios.sort_by(f64::total_cmp);
    match ratios.len() {
        0 => 0.0,
        n if n % 2 == 1 => ratios[n / 2],
        n => (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0,
    }
}

/// Times back-to-back echo round trips of `size` bytes for `span`, checking every reply.
fn measure_for(
    what: &str,
    rt: &mut dyn RoundTrip,
    size: usize,
    span: Duration,
) -> io::Result<Latency> {
    let mut request = pattern(size);
    let mut reply = Vec::with_capacity(size);
    let mut histogram = new_histogram()?;
    let end = Instant::now() + span;
    for seq in 0.. {
        let started = Instant::now();
        if started >= end {
            break;
        }
        number_request(&mut request, seq);
        rt.round_trip(&request, &mut reply)?;
        histogram.saturating_record(started.elapsed().as_nanos() as u64);
        check_reply(what, seq, &request, &reply)?;
    }
    Ok(Latency::of(&histogram))
}

fn memcpy_bandwidth() -> f64 {
    let source = vec![1u8; 1 << 20];
    let mut destination = vec![0u8; 1 << 20];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        for _ in 0..200 {
            destination.copy_from_slice(std::hint::black_box(&source));
            std::hint::black_box(&mut destination);
        }
        best = best.min(started.elapsed().as_secs_f64());
    }
    200.0 * (1 << 20) as f64 / best
}

pub(crate) fn unique(tag: &str) -> String {
    format!("bench-{tag}-{}", std::process::id())
}

/// A line about the run: on stdout, or on stderr when stdout carries JSON.
pub(crate) fn note(json: bool, message: &str) {
    if json {
        eprintln!("{message}");
    } else {
        println!("{message}");
    }
}

/// The CPUs this process may run on, in order.
pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set = rustix::thread::sched_getaffinity(None).map_err(io::Error::from)?;
    Ok((0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&cpu| set.is_set(cpu))
        .collect())
}

/// Latency of every transport at every size, this process (the client) pinned to the first
/// allowed CPU and every server to the second, when there are two: the scheduler then cannot
/// move the two onto one CPU (as wake-affine placement likes to), which would make the numbers
/// depend on luck.
/// The latency rows, and the 64 B rounds of [`interleaved`].
type LatencyRows = (Vec<Row>, Rounds);

fn latency_rows(options: &BenchOptions, bar: &ProgressBar) -> io::Result<LatencyRows> {
    let original = rustix::thread::sched_getaffinity(None).map_err(io::Error::from)?;
    let cpus = allowed_cpus()?;
    let server_cpu = cpus.get(1).copied();
    if let (Some(&client_cpu), Some(_)) = (cpus.first(), server_cpu) {
        peer::pin_to(&[client_cpu])?;
    }
    let rows = latency_rows_on(options, server_cpu, bar);
    rustix::thread::sched_setaffinity(None, &original).map_err(io::Error::from)?;
    rows
}

fn latency_rows_on(
    options: &BenchOptions,
    server_cpu: Option<usize>,
    bar: &ProgressBar,
) -> io::Result<LatencyRows> {
    let spawn = |args: &[&str]| PeerProcess::spawn_on(server_cpu, args);
    let mut rows = Vec::new();
    let mut rounds_64 = Vec::new();
    let memlink_name = unique("rpc");
    let _memlink_server = spawn(&[
        "serve",
        "memlink",
        &memlink_name,
        "0",
        &options.workers.to_string(),
    ])?;
    let mut client = Client::connect_timeout(&memlink_name, Duration::from_secs(10))
        .map_err(io::Error::other)?;
    let uds_name = unique("uds");
    let _uds_server = spawn(&["serve", "uds", &uds_name, "0", "1"])?;
    let mut uds = crate::framing::connect_uds(&uds_name)?;
    let mut pipe_server = spawn(&["serve", "pipe", "-", "0", "1"])?;
    let mut pipe = pipe_server.pipe()?;
    let tcp_server = spawn(&["serve", "tcp", "-", "0", "1"])?;
    let mut tcp = crate::framing::connect_tcp(&tcp_server.detail)?;
    let asleep_samples = if options.quick { 50 } else { 300 };

    for size in SIZES {
        let n = iterations(size, options.quick);
        bar.set_message(format!(
            "{}: {SPIN} and {AWAKE}, in turns",
            human_size(size)
        ));
        let (spin, awake, rounds) = interleaved(&mut client, size, n, server_cpu)?;
        if size == 64 {
            rounds_64 = rounds;
        }
        let mut push = |label: &'static str, latency: Latency| {
            rows.push(Row {
                label,
                size,
                latency,
            });
            bar.inc(1);
        };
        push(SPIN, spin);
        for (label, transport, gap) in [
            (FUTEX, Transport::Futex, None),
            (SLEEPING_ASLEEP, Transport::Sleeping, Some(IDLE_GAP)),
        ] {
            bar.set_message(format!("{}: {label}", human_size(size)));
            let (mut floor, _server) = peer::spawn_floor(transport, size, server_cpu)?;
            let samples = if gap.is_some() { asleep_samples } else { n };
            push(label, measure(label, &mut floor, size, samples, gap)?);
        }
        push(AWAKE, awake);
        let mut row = |label: &'static str,
                       rt: &mut dyn RoundTrip,
                       samples: u64,
                       gap: Option<Duration>|
         -> io::Result<()> {
            bar.set_message(format!("{}: {label}", human_size(size)));
            push(label, measure(label, rt, size, samples, gap)?);
            Ok(())
        };
        row(ASLEEP, &mut client, asleep_samples, Some(IDLE_GAP))?;
        row(UDS, &mut uds, n, None)?;
        row(PIPE, &mut pipe, n, None)?;
        row(TCP, &mut tcp, n, None)?;
    }
    Ok((rows, rounds_64))
}

/// 64-byte latency with this process and the server pinned to the same CPU (the first allowed).
fn same_core_rows(options: &BenchOptions, bar: &ProgressBar) -> io::Result<Vec<Row>> {
    let original = rustix::thread::sched_getaffinity(None).map_err(io::Error::from)?;
    let first = allowed_cpus()?.first().copied().unwrap_or(0);
    peer::pin_to(&[first])?;
    let result = (|| {
        let n = iterations(64, options.quick);
        let mut rows = Vec::new();
        for (label, transport) in [
            (SAME_CORE_FUTEX, Transport::Futex),
            (SAME_CORE_SLEEPING, Transport::Sleeping),
        ] {
            bar.set_message(format!("same core: {label}"));
            let (mut floor, _server) = peer::spawn_floor(transport, 64, None)?;
            rows.push(Row {
                label,
                size: 64,
                latency: measure(label, &mut floor, 64, n, None)?,
            });
            bar.inc(1);
        }
        bar.set_message(format!("same core: {SAME_CORE_MEMLINK}"));
        let name = unique("samecore-rpc");
        let _server = PeerProcess::spawn(&["serve", "memlink", &name, "0", "1"])?;
        let mut client =
            Client::connect_timeout(&name, Duration::from_secs(10)).map_err(io::Error::other)?;
        rows.push(Row {
            label: SAME_CORE_MEMLINK,
            size: 64,
            latency: measure(SAME_CORE_MEMLINK, &mut client, 64, n, None)?,
        });
        bar.inc(1);
        Ok(rows)
    })();
    rustix::thread::sched_setaffinity(None, &original).map_err(io::Error::from)?;
    result
}

struct Throughput {
    label: &'static str,
    clients: usize,
    calls_per_second: f64,
    /// Calls completed in the common window, all clients together.
    counted: u64,
    window_seconds: f64,
    slowest: u64,
    fastest: u64,
    latency: Latency,
}

fn throughput_rows(options: &BenchOptions, bar: &ProgressBar) -> io::Result<Vec<Throughput>> {
    let (warmup, seconds) = if options.quick {
        (Duration::from_millis(50), 0.3)
    } else {
        (Duration::from_millis(200), 1.0)
    };
    let mut rows = Vec::new();
    let memlink_name = unique("load");
    let _memlink = PeerProcess::spawn(&[
        "serve",
        "memlink",
        &memlink_name,
        "0",
        &options.workers.to_string(),
    ])?;
    let uds_name = unique("load-uds");
    let _uds = PeerProcess::spawn(&["serve", "uds", &uds_name, "0", "1"])?;
    for (label, transport, address) in [
        ("memlink", Transport::Memlink, &memlink_name),
        (UDS, Transport::Uds, &uds_name),
    ] {
        for clients in THROUGHPUT_CLIENTS {
            bar.set_message(format!("throughput: {label}, {clients} client processes"));
            let mut histogram = new_histogram()?;
            let load = peer::Load {
                transport,
                address,
                clients,
                size: 64,
                calls: 0,
                warmup,
                seconds,
            };
            let outcome = peer::run_clients(&load, &mut histogram, |_| {})?;
            let (slowest, fastest) = outcome.slowest_fastest();
            rows.push(Throughput {
                label,
                clients,
                calls_per_second: outcome.calls_per_second(),
                counted: outcome.counted(),
                window_seconds: outcome.seconds(),
                slowest,
                fastest,
                latency: Latency::of(&histogram),
            });
            bar.inc(1);
        }
    }
    Ok(rows)
}

/// Small calls measured alone, then beside another client process that streams 64 MiB requests
/// to the same server (one connection's big message must not hold the others up for its length).
/// Nothing is pinned: the streamer is a third busy process on a machine of maybe two CPUs.
fn isolation_rows(options: &BenchOptions, bar: &ProgressBar) -> io::Result<(Vec<Row>, f64)> {
    const ALONE: &str = "64 B calls alone";
    const BESIDE: &str = "64 B calls beside a 64 MiB streamer";
    const STREAMED: u64 = 64 << 20;
    let name = unique("isolation");
    let _server =
        PeerProcess::spawn(&["serve", "memlink", &name, "0", &options.workers.to_string()])?;
    let mut client =
        Client::connect_timeout(&name, Duration::from_secs(10)).map_err(io::Error::other)?;
    // Long enough to span many of the streamer's requests (each takes milliseconds).
    let span = Duration::from_secs_f64(if options.quick { 0.5 } else { 3.0 });
    bar.set_message(format!("isolation: {ALONE}"));
    let alone = measure_for(ALONE, &mut client, 64, span)?;
    bar.inc(1);
    bar.set_message(format!("isolation: {BESIDE}"));
    // Streams for a little longer than we measure (every request checked), then reports what it
    // moved in its window.
    let mut streamer =
        PeerProcess::spawn(&["client", "memlink", &name, &STREAMED.to_string(), "0"])?;
    let start = peer::monotonic_ns() + 20_000_000;
    let to = start + (span + Duration::from_millis(400)).as_nanos() as u64;
    streamer.say(&format!("go {start} {start} {to}"))?;
    // Let the first 64 MiB request get under way.
    std::thread::sleep(Duration::from_millis(120));
    let beside = measure_for(BESIDE, &mut client, 64, span)?;
    // The streamer must still be streaming: a failed one would make the comparison meaningless.
    if let Some(status) = streamer.try_exit_status()? {
        return Err(io::Error::other(format!(
            "the 64 MiB streamer stopped early: {status}"
        )));
    }
    let mut streamed = None;
    for line in streamer.lines()? {
        let line = line?;
        if let Some(done) = line.strip_prefix("done ") {
            let counted = done
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok());
            // Each call moves the request there and the reply back.
            streamed = counted.map(|c| (c * 2 * STREAMED) as f64 / ((to - start) as f64 / 1e9));
            break;
        }
    }
    let streamed = match streamed {
        Some(s) => s,
        None => {
            return Err(io::Error::other(format!(
                "the 64 MiB streamer failed ({}); its error is above",
                streamer.wait()?
            )));
        }
    };
    bar.inc(1);
    Ok((
        vec![
            Row {
                label: ALONE,
                size: 64,
                latency: alone,
            },
            Row {
                label: BESIDE,
                size: 64,
                latency: beside,
            },
        ],
        streamed,
    ))
}

/// Shared memory that `count` idle connections hold (the whole machine's `Shmem` grows by it;
/// other processes making shared memory meanwhile would show up too), in bytes.
fn idle_connection_memory(count: usize) -> io::Result<f64> {
    fn shmem_bytes() -> io::Result<u64> {
        let meminfo = std::fs::read_to_string("/proc/meminfo")?;
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix("Shmem:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .ok_or_else(|| io::Error::other("no Shmem line in /proc/meminfo"))
    }
    let name = unique("idle");
    let _server = PeerProcess::spawn(&["serve", "memlink", &name, "0", "1"])?;
    let first =
        Client::connect_timeout(&name, Duration::from_secs(10)).map_err(io::Error::other)?;
    let before = shmem_bytes()?;
    let clients: Vec<Client> = (1..count)
        .map(|_| Client::connect(&name))
        .collect::<memlink::Result<_>>()
        .map_err(io::Error::other)?;
    // Let the server adopt and park on the last ones.
    std::thread::sleep(Duration::from_millis(100));
    let after = shmem_bytes()?;
    drop((first, clients));
    Ok(after.saturating_sub(before) as f64 * count as f64 / (count - 1) as f64)
}

pub(crate) fn human_size(size: usize) -> String {
    match size {
        s if s >= 1 << 20 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

/// `n` with its digits grouped by threes: "10,000".
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut grouped = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

pub(crate) fn us(ns: u64) -> String {
    format!("{:.2}", ns as f64 / 1000.0)
}

pub(crate) struct Target {
    pub(crate) what: &'static str,
    pub(crate) measured: f64,
    pub(crate) goal: f64,
    pub(crate) higher_is_better: bool,
}

impl Target {
    fn at_most(what: &'static str, measured: f64, goal: f64) -> Self {
        Target {
            what,
            measured,
            goal,
            higher_is_better: false,
        }
    }

    pub(crate) fn at_least(what: &'static str, measured: f64, goal: f64) -> Self {
        Target {
            what,
            measured,
            goal,
            higher_is_better: true,
        }
    }

    pub(crate) fn met(&self) -> bool {
        if self.higher_is_better {
            self.measured >= self.goal
        } else {
            self.measured <= self.goal
        }
    }

    pub(crate) fn json(&self) -> Value {
        json!({"target": self.what, "measured": self.measured, "goal": self.goal,
               "higher_is_better": self.higher_is_better, "met": self.met()})
    }
}

/// The targets as a table: what, measured, goal, met.
pub(crate) fn targets_table(targets: &[Target]) -> comfy_table::Table {
    let mut table = ui::table(&["target", "measured", "goal", "met"], 1);
    for t in targets {
        let relation = if t.higher_is_better { ">=" } else { "<=" };
        table.add_row([
            t.what.to_owned(),
            format!("{:.2}", t.measured),
            format!("{relation} {:.2}", t.goal),
            if t.met() { "yes" } else { "NO" }.to_owned(),
        ]);
    }
    table
}

/// Rows as a table of label, samples, p50, p99 and tail columns.
fn percentiles_table(rows: &[Row]) -> comfy_table::Table {
    let mut table = ui::table(&["", "samples", "p50", "p99", "p99.9"], 1);
    for row in rows {
        let l = row.latency;
        table.add_row([
            row.label.to_owned(),
            l.samples.to_string(),
            us(l.p50),
            us(l.p99),
            l.tail_us(),
        ]);
    }
    table
}

/// Runs the whole benchmark and prints it (as tables, or one JSON object).
pub(crate) fn run(options: &BenchOptions) -> io::Result<()> {
    let cpus = rustix::thread::sched_getaffinity(None)
        .map(|s| s.count())
        .unwrap_or(1);
    note(
        options.json,
        &format!(
            "memlink bench rpc: {cpus} CPUs, server workers {}{}",
            options.workers,
            if options.quick {
                " (--quick: few samples, for a look, not for quoting)"
            } else {
                ""
            }
        ),
    );
    let steps = SIZES.len() * LATENCY_ROWS.len() + 3 + 2 * THROUGHPUT_CLIENTS.len() + 2 + 1;
    let bar = ui::progress(steps as u64);
    bar.set_message("memcpy bandwidth");
    let memcpy = memcpy_bandwidth();
    let (latency, rounds_64) = latency_rows(options, &bar)?;
    let same_core = same_core_rows(options, &bar)?;
    let throughput = throughput_rows(options, &bar)?;
    let (isolation, streamed) = isolation_rows(options, &bar)?;
    const IDLE_CONNECTIONS: usize = 1000;
    bar.set_message("memory of 1,000 idle connections");
    let idle_memory = idle_connection_memory(IDLE_CONNECTIONS)?;
    bar.set_message("async: a tokio client against the same server");
    let async_rows = crate::bench_async::measure(options)?;
    bar.finish_and_clear();

    let find = |label: &str, size: usize| {
        latency
            .iter()
            .find(|r| r.label == label && r.size == size)
            .map(|r| r.latency)
    };
    let get = |label: &str, size: usize| {
        find(label, size).ok_or_else(|| io::Error::other(format!("no {label} row")))
    };
    let (spin, sleeping, awake, asleep, uds) = (
        get(SPIN, 64)?,
        get(SLEEPING_ASLEEP, 64)?,
        get(AWAKE, 64)?,
        get(ASLEEP, 64)?,
        get(UDS, 64)?,
    );
    let same = |label: &str| {
        same_core
            .iter()
            .find(|r| r.label == label)
            .map(|r| r.latency)
            .ok_or_else(|| io::Error::other(format!("no same-core {label} row")))
    };
    let (same_sleeping, same_memlink) = (same(SAME_CORE_SLEEPING)?, same(SAME_CORE_MEMLINK)?);
    let mib = (1 << 20) as f64;
    let echo_rate = |l: Latency| mib / (l.mean / 1e9);
    let (memlink_mib, uds_mib) = (
        echo_rate(get(AWAKE, 1 << 20)?),
        echo_rate(get(UDS, 1 << 20)?),
    );
    let tp = |label: &str, clients: usize| {
        throughput
            .iter()
            .find(|t| t.label == label && t.clients == clients)
    };
    let (one, sixteen, many) = (tp("memlink", 1), tp("memlink", 16), tp("memlink", 64));
    let targets = vec![
        Target::at_most(
            "64 B awake p50 / spin floor p50 (median of rounds in turns)",
            median_round_ratio(&rounds_64),
            1.5,
        ),
        Target::at_most(
            if awake.has_p999() && spin.has_p999() {
                "64 B awake p99.9 / spin floor p99.9"
            } else {
                "64 B awake max / spin floor max (too few samples for p99.9)"
            },
            awake.tail() as f64 / spin.tail().max(1) as f64,
            3.0,
        ),
        Target::at_least(
            "64 B unix socket p50 / memlink p50",
            uds.p50 as f64 / awake.p50.max(1) as f64,
            50.0,
        ),
        Target::at_most(
            "64 B asleep p50 / sleeping floor (asleep) p50",
            asleep.p50 as f64 / sleeping.p50.max(1) as f64,
            1.2,
        ),
        Target::at_most(
            "same core p50 / same-core sleeping floor p50",
            same_memlink.p50 as f64 / same_sleeping.p50.max(1) as f64,
            1.5,
        ),
        Target::at_least(
            "1 MiB echo bytes/s / memcpy bytes/s",
            memlink_mib / memcpy,
            0.6,
        ),
        Target::at_least(
            "1 MiB echo bytes/s / unix socket",
            memlink_mib / uds_mib,
            1.6,
        ),
        Target::at_least(
            "64 clients calls/s / 1 client calls/s",
            match (one, many) {
                (Some(o), Some(m)) => m.calls_per_second / o.calls_per_second.max(1e-9),
                _ => 0.0,
            },
            0.8,
        ),
        Target::at_least(
            "16 clients: slowest / fastest client",
            sixteen.map_or(0.0, |m| m.slowest as f64 / m.fastest.max(1) as f64),
            2.0 / 3.0,
        ),
        Target::at_least(
            "64 clients: slowest / fastest client",
            many.map_or(0.0, |m| m.slowest as f64 / m.fastest.max(1) as f64),
            2.0 / 3.0,
        ),
    ];

    if let Some(path) = &options.svg {
        let series: Vec<chart::Series> = LATENCY_ROWS
            .iter()
            .map(|&label| chart::Series {
                label: label.to_owned(),
                points: latency
                    .iter()
                    .filter(|r| r.label == label)
                    .map(|r| (r.size, r.latency))
                    .collect(),
            })
            .collect();
        chart::write_svg(
            path,
            &format!("memlink bench rpc: echo round trip, {cpus} CPUs"),
            "round trip",
            &series,
        )?;
    }
    let chart_written = || {
        if let Some(path) = &options.svg {
            note(
                options.json,
                &format!("latency chart written to {}", path.display()),
            );
        }
    };

    if options.json {
        let latency_json = |rows: &[Row]| -> Vec<Value> {
            rows.iter()
                .map(|r| {
                    let mut row = r.latency.json_fields();
                    row.insert("transport".into(), r.label.into());
                    row.insert("size".into(), r.size.into());
                    Value::Object(row)
                })
                .collect()
        };
        let report = json!({
            "cpus": cpus,
            "server_workers": options.workers,
            "memcpy_bytes_per_second": memcpy,
            "methods": row_methods().iter().map(|(row, method)| json!({"row": row, "method": method})).collect::<Vec<_>>(),
            "latency": latency_json(&latency),
            "same_core": latency_json(&same_core),
            "throughput": throughput.iter().map(|t| {
                let mut row = t.latency.json_fields();
                row.insert("transport".into(), t.label.into());
                row.insert("clients".into(), t.clients.into());
                row.insert("calls_per_second".into(), t.calls_per_second.into());
                row.insert("calls_in_window".into(), t.counted.into());
                row.insert("window_seconds".into(), t.window_seconds.into());
                row.insert("slowest_client_calls".into(), t.slowest.into());
                row.insert("fastest_client_calls".into(), t.fastest.into());
                Value::Object(row)
            }).collect::<Vec<_>>(),
            "echo_1mib_bytes_per_second": {"memlink": memlink_mib, "unix socket": uds_mib},
            "isolation": latency_json(&isolation),
            "isolation_streamer_bytes_per_second": streamed,
            "idle_connections": {"count": IDLE_CONNECTIONS, "shared_memory_bytes": idle_memory},
            "async": async_rows.json(),
            "targets": targets.iter().map(Target::json).collect::<Vec<_>>(),
            "awake_and_spin_floor_rounds_64b": rounds_64.iter().map(|&(floor, memlink)| {
                serde_json::json!({"spin_floor_p50_ns": floor, "memlink_awake_p50_ns": memlink})
            }).collect::<Vec<_>>(),
        });
        println!("{report}");
        chart_written();
        return Ok(());
    }

    println!(
        "latency: this process is the client on one CPU, each server a child process on another; \
         every reply checked (length and bytes)."
    );
    for (row, method) in row_methods() {
        println!("  {row}: {method}");
    }
    println!();
    for size in SIZES {
        let memlink_p50 = find(AWAKE, size).map_or(1, |l| l.p50.max(1)) as f64;
        let floor_p50 = find(SPIN, size).map_or(1, |l| l.p50.max(1)) as f64;
        println!("{} round trip (µs)", human_size(size));
        let mut table = ui::table(
            &[
                "transport",
                "samples",
                "p50",
                "p99",
                "p99.9",
                "x memlink",
                "x floor",
            ],
            1,
        );
        for row in latency.iter().filter(|r| r.size == size) {
            let l = row.latency;
            table.add_row([
                row.label.to_owned(),
                l.samples.to_string(),
                us(l.p50),
                us(l.p99),
                l.tail_us(),
                format!("{:.2}", l.p50 as f64 / memlink_p50),
                format!("{:.2}", l.p50 as f64 / floor_p50),
            ]);
        }
        println!("{table}");
        println!();
    }
    println!("64 B round trip, client and server on the same CPU (µs)");
    println!("{}", percentiles_table(&same_core));
    println!();
    println!(
        "throughput, 64 B calls: every client process starts at once and the calls completed in \
         one common window ({:.2} s, after a warm-up) are counted",
        throughput.first().map_or(0.0, |t| t.window_seconds)
    );
    let mut table = ui::table(
        &[
            "transport",
            "clients",
            "calls/s",
            "p50 µs",
            "p99 µs",
            "slowest/fastest client",
        ],
        1,
    );
    for t in &throughput {
        table.add_row([
            t.label.to_owned(),
            t.clients.to_string(),
            format!("{:.0}", t.calls_per_second),
            us(t.latency.p50),
            us(t.latency.p99),
            format!("{:.2}", t.slowest as f64 / t.fastest.max(1) as f64),
        ]);
    }
    println!("{table}");
    println!();
    println!("isolation, one server (µs)");
    println!("{}", percentiles_table(&isolation));
    println!(
        "(the streamer moved {:.2} GB/s meanwhile, requests and echoes)",
        streamed / 1e9
    );
    println!();
    println!(
        "{IDLE_CONNECTIONS} idle connections hold {:.1} MiB of shared memory ({:.1} KiB each)",
        idle_memory / (1 << 20) as f64,
        idle_memory / 1024.0 / IDLE_CONNECTIONS as f64
    );
    println!(
        "1 MiB echo: memlink {:.2} GB/s, unix socket {:.2} GB/s, single-thread memcpy {:.2} GB/s",
        memlink_mib / 1e9,
        uds_mib / 1e9,
        memcpy / 1e9
    );
    println!();
    async_rows.print();
    println!();
    println!(
        "64 B, the spin floor and memlink (awake) in {ROUNDS} rounds in turns, p50 each (µs): {}",
        rounds_64
            .iter()
            .map(|&(floor, memlink)| format!(
                "{} / {} ({:.2} x)",
                us(floor),
                us(memlink),
                memlink as f64 / floor.max(1) as f64
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("{}", targets_table(&targets));
    chart_written();
    Ok(())
}
