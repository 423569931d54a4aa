//! `memlink bench rpc`: round-trip latency and throughput of memlink against its own floors and
//! the usual alternatives, all measured in one run on this machine.
//!
//! This process is always the client; every server runs in a child process. Latencies are
//! recorded per call in an HDR histogram (ns, 3 significant digits). The floors are the same echo
//! done with nothing but the copies and one shared sequence word per direction: `shm spin` (both
//! sides busy-wait — the hardware floor) and `futex` (both sides sleep in the kernel every time —
//! the floor for a sleeping peer).

use std::io;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use memlink::Client;
use serde_json::{Value, json};

use crate::peer::{self, Floor, PeerProcess, RoundTrip, Transport};

const SIZES: [usize; 4] = [64, 4096, 64 << 10, 1 << 20];
const THROUGHPUT_CLIENTS: [usize; 4] = [1, 4, 16, 64];
/// Pause before each "asleep" sample: far longer than any spin or yield budget, so the server
/// (or the floor's peer) has parked and its CPU has gone idle.
pub(crate) const IDLE_GAP: Duration = Duration::from_millis(2);

/// Command-line options of `memlink bench rpc`.
#[derive(Debug, Clone)]
pub(crate) struct BenchOptions {
    pub(crate) json: bool,
    pub(crate) quick: bool,
    pub(crate) workers: usize,
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

/// Times `iterations` echo round trips of `size` bytes (after a warm-up), sleeping `gap` before
/// each when given, and checks the last reply.
pub(crate) fn measure(
    rt: &mut dyn RoundTrip,
    size: usize,
    iterations: u64,
    gap: Option<Duration>,
) -> io::Result<Latency> {
    let request: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut reply = Vec::with_capacity(size);
    let warmup = if gap.is_some() {
        10
    } else {
        (iterations / 10).clamp(10, 1000)
    };
    for _ in 0..warmup {
        rt.round_trip(&request, &mut reply)?;
    }
    let mut histogram = new_histogram()?;
    for _ in 0..iterations {
        if let Some(gap) = gap {
            std::thread::sleep(gap);
        }
        let started = Instant::now();
        rt.round_trip(&request, &mut reply)?;
        histogram.saturating_record(started.elapsed().as_nanos() as u64);
    }
    if reply != request {
        return Err(io::Error::other("a transport returned a wrong echo"));
    }
    Ok(Latency::of(&histogram))
}

/// Times back-to-back echo round trips of `size` bytes for `span`, checking every reply.
fn measure_for(rt: &mut dyn RoundTrip, size: usize, span: Duration) -> io::Result<Latency> {
    let request: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut reply = Vec::with_capacity(size);
    let mut histogram = new_histogram()?;
    let end = Instant::now() + span;
    loop {
        let started = Instant::now();
        if started >= end {
            break;
        }
        rt.round_trip(&request, &mut reply)?;
        histogram.saturating_record(started.elapsed().as_nanos() as u64);
        if reply != request {
            return Err(io::Error::other("a transport returned a wrong echo"));
        }
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
fn latency_rows(options: &BenchOptions) -> io::Result<Vec<Row>> {
    let original = rustix::thread::sched_getaffinity(None).map_err(io::Error::from)?;
    let cpus = allowed_cpus()?;
    let server_cpu = cpus.get(1).copied();
    if let (Some(&client_cpu), Some(_)) = (cpus.first(), server_cpu) {
        peer::pin_to(&[client_cpu])?;
    }
    let rows = latency_rows_on(options, server_cpu);
    rustix::thread::sched_setaffinity(None, &original).map_err(io::Error::from)?;
    rows
}

fn latency_rows_on(options: &BenchOptions, server_cpu: Option<usize>) -> io::Result<Vec<Row>> {
    let spawn = |args: &[&str]| PeerProcess::spawn_on(server_cpu, args);
    let mut rows = Vec::new();
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
    let mut uds = peer::connect_uds(&uds_name)?;
    let mut pipe_server = spawn(&["serve", "pipe", "-", "0", "1"])?;
    let mut pipe = pipe_server.pipe()?;
    let tcp_server = spawn(&["serve", "tcp", "-", "0", "1"])?;
    let mut tcp = peer::connect_tcp(&tcp_server.detail)?;
    let asleep_samples = if options.quick { 50 } else { 300 };

    for size in SIZES {
        let n = iterations(size, options.quick);
        note(
            options.json,
            &format!("  measuring {} ...", human_size(size)),
        );
        for (label, sleep, gap) in [
            ("shm spin (floor)", false, None),
            ("futex (floor)", true, None),
            ("futex (floor, idle)", true, Some(IDLE_GAP)),
        ] {
            let name = unique(&format!("floor-{size}-{sleep}"));
            let mut floor = Floor::create(&name, size, sleep).map_err(io::Error::other)?;
            let transport = if sleep { "futex" } else { "spin" };
            let server = spawn(&["serve", transport, &name, &size.to_string(), "1"])?;
            let samples = if gap.is_some() { asleep_samples } else { n };
            let latency = measure(&mut floor, size, samples, gap)?;
            floor.stop();
            drop(server);
            rows.push(Row {
                label,
                size,
                latency,
            });
        }
        rows.push(Row {
            label: "memlink (awake)",
            size,
            latency: measure(&mut client, size, n, None)?,
        });
        let asleep = measure(&mut client, size, asleep_samples, Some(IDLE_GAP))?;
        rows.push(Row {
            label: "memlink (asleep)",
            size,
            latency: asleep,
        });
        rows.push(Row {
            label: "unix socket",
            size,
            latency: measure(&mut uds, size, n, None)?,
        });
        rows.push(Row {
            label: "pipe",
            size,
            latency: measure(&mut pipe, size, n, None)?,
        });
        rows.push(Row {
            label: "tcp loopback",
            size,
            latency: measure(&mut tcp, size, n, None)?,
        });
    }
    Ok(rows)
}

/// 64-byte latency with this process and the server pinned to the same CPU (the first allowed).
fn same_core_rows(options: &BenchOptions) -> io::Result<Vec<Row>> {
    let original = rustix::thread::sched_getaffinity(None).map_err(io::Error::from)?;
    let first = allowed_cpus()?.first().copied().unwrap_or(0);
    peer::pin_to(&[first])?;
    let result = (|| {
        let n = iterations(64, options.quick);
        let mut rows = Vec::new();
        let name = unique("samecore-futex");
        let mut floor = Floor::create(&name, 64, true).map_err(io::Error::other)?;
        let server = PeerProcess::spawn(&["serve", "futex", &name, "64", "1"])?;
        rows.push(Row {
            label: "futex (floor)",
            size: 64,
            latency: measure(&mut floor, 64, n, None)?,
        });
        floor.stop();
        drop(server);
        let name = unique("samecore-rpc");
        let _server = PeerProcess::spawn(&["serve", "memlink", &name, "0", "1"])?;
        let mut client =
            Client::connect_timeout(&name, Duration::from_secs(10)).map_err(io::Error::other)?;
        rows.push(Row {
            label: "memlink",
            size: 64,
            latency: measure(&mut client, 64, n, None)?,
        });
        Ok(rows)
    })();
    rustix::thread::sched_setaffinity(None, &original).map_err(io::Error::from)?;
    result
}

struct Throughput {
    label: &'static str,
    clients: usize,
    calls_per_second: f64,
    slowest: u64,
    fastest: u64,
}

fn throughput_rows(options: &BenchOptions) -> io::Result<Vec<Throughput>> {
    let seconds = if options.quick { 0.3 } else { 1.0 };
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
        ("unix socket", Transport::Uds, &uds_name),
    ] {
        for clients in THROUGHPUT_CLIENTS {
            note(
                options.json,
                &format!("  {label}: {clients} client processes ..."),
            );
            let mut histogram = new_histogram()?;
            let load = peer::Load {
                transport,
                address,
                clients,
                size: 64,
                calls: 0,
                seconds,
            };
            let reports = peer::run_clients(&load, &mut histogram, |_| {})?;
            let calls_per_second = reports
                .iter()
                .map(|r| r.calls as f64 / r.elapsed.as_secs_f64().max(1e-9))
                .sum();
            let slowest = reports.iter().map(|r| r.calls).min().unwrap_or(0);
            let fastest = reports.iter().map(|r| r.calls).max().unwrap_or(0);
            rows.push(Throughput {
                label,
                clients,
                calls_per_second,
                slowest,
                fastest,
            });
        }
    }
    Ok(rows)
}

/// Small calls measured alone, then beside another client process that streams 64 MiB requests
/// to the same server (one connection's big message must not hold the others up for its length).
/// Nothing is pinned: the streamer is a third busy process on a machine of maybe two CPUs.
fn isolation_rows(options: &BenchOptions) -> io::Result<(Vec<Row>, f64)> {
    let name = unique("isolation");
    let _server =
        PeerProcess::spawn(&["serve", "memlink", &name, "0", &options.workers.to_string()])?;
    let mut client =
        Client::connect_timeout(&name, Duration::from_secs(10)).map_err(io::Error::other)?;
    // Long enough to span many of the streamer's requests (each takes milliseconds).
    let span = Duration::from_secs_f64(if options.quick { 0.5 } else { 3.0 });
    let alone = measure_for(&mut client, 64, span)?;
    // Streams for a little longer than we measure, then reports what it moved.
    let streaming = span + Duration::from_millis(300);
    let mut streamer = PeerProcess::spawn(&[
        "client",
        "memlink",
        &name,
        &(64usize << 20).to_string(),
        "0",
        &streaming.as_secs_f64().to_string(),
    ])?;
    streamer.say("go")?;
    // Let the first 64 MiB request get under way.
    std::thread::sleep(Duration::from_millis(100));
    let beside = measure_for(&mut client, 64, span)?;
    // The streamer must still be streaming: a failed one would make the comparison meaningless.
    if let Some(status) = streamer.try_exit_status()? {
        return Err(io::Error::other(format!(
            "the 64 MiB streamer stopped early: {status}"
        )));
    }
    let mut streamed = 0.0;
    for line in streamer.lines()? {
        let line = line?;
        if let Some(done) = line.strip_prefix("done ") {
            let mut fields = done
                .split_whitespace()
                .map(|f| f.parse::<f64>().unwrap_or(0.0));
            let (calls, nanos) = (fields.next().unwrap_or(0.0), fields.next().unwrap_or(1.0));
            // Each call moves the request there and the reply back.
            streamed = calls * 2.0 * (64 << 20) as f64 / (nanos / 1e9);
            break;
        }
    }
    drop(streamer);
    Ok((
        vec![
            Row {
                label: "64 B calls alone",
                size: 64,
                latency: alone,
            },
            Row {
                label: "64 B calls beside a 64 MiB streamer",
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
}

/// Prints `rows` under `heading` as label, p50, p99 and p99.9 columns.
fn print_percentiles(heading: &str, rows: &[Row], label_width: usize) {
    println!(
        "{heading:<width$} {:>9} {:>9} {:>9}",
        "p50",
        "p99",
        "p99.9",
        width = label_width + 2
    );
    for row in rows {
        println!(
            "  {:<label_width$} {:>9} {:>9} {:>9}",
            row.label,
            us(row.latency.p50),
            us(row.latency.p99),
            us(row.latency.p999)
        );
    }
}

/// Runs the whole benchmark and prints it (as a table, or one JSON object).
pub(crate) fn run(options: &BenchOptions) -> io::Result<()> {
    let cpus = rustix::thread::sched_getaffinity(None)
        .map(|s| s.count())
        .unwrap_or(1);
    note(
        options.json,
        &format!(
            "memlink bench rpc: {cpus} CPUs, server workers {}",
            options.workers
        ),
    );
    let memcpy = memcpy_bandwidth();
    note(
        options.json,
        "latency (this process is the client on one CPU, each server a child process on another):",
    );
    let latency = latency_rows(options)?;
    note(options.json, "same core (both pinned to one CPU):");
    let same_core = same_core_rows(options)?;
    note(options.json, "throughput (64 B calls, N client processes):");
    let throughput = throughput_rows(options)?;
    note(
        options.json,
        "isolation (64 B calls beside a client streaming 64 MiB requests):",
    );
    let (isolation, streamed) = isolation_rows(options)?;
    const IDLE_CONNECTIONS: usize = 1000;
    note(options.json, "memory of 1,000 idle connections:");
    let idle_memory = idle_connection_memory(IDLE_CONNECTIONS)?;
    note(
        options.json,
        "async (a tokio client against the same server):",
    );
    let async_rows = crate::bench_async::measure(options)?;

    let find = |label: &str, size: usize| {
        latency
            .iter()
            .find(|r| r.label == label && r.size == size)
            .map(|r| r.latency)
    };
    let get = |label: &str, size: usize| {
        find(label, size).ok_or_else(|| io::Error::other(format!("no {label} row")))
    };
    let (spin, futex, awake, asleep, uds) = (
        get("shm spin (floor)", 64)?,
        get("futex (floor, idle)", 64)?,
        get("memlink (awake)", 64)?,
        get("memlink (asleep)", 64)?,
        get("unix socket", 64)?,
    );
    let same = |label: &str| {
        same_core
            .iter()
            .find(|r| r.label == label)
            .map(|r| r.latency)
    };
    let (same_futex, same_memlink) = (
        same("futex (floor)").ok_or_else(|| io::Error::other("no row"))?,
        same("memlink").ok_or_else(|| io::Error::other("no row"))?,
    );
    let mib = (1 << 20) as f64;
    let echo_rate = |l: Latency| mib / (l.mean / 1e9);
    let (memlink_mib, uds_mib) = (
        echo_rate(get("memlink (awake)", 1 << 20)?),
        echo_rate(get("unix socket", 1 << 20)?),
    );
    let tp = |label: &str, clients: usize| {
        throughput
            .iter()
            .find(|t| t.label == label && t.clients == clients)
    };
    let (one, many) = (tp("memlink", 1), tp("memlink", 64));
    let targets = vec![
        Target::at_most(
            "64 B awake p50 / spin floor p50",
            awake.p50 as f64 / spin.p50 as f64,
            1.5,
        ),
        Target::at_most(
            "64 B awake p99.9 / spin floor p99.9",
            awake.p999 as f64 / spin.p999 as f64,
            3.0,
        ),
        Target::at_least(
            "64 B unix socket p50 / memlink p50",
            uds.p50 as f64 / awake.p50 as f64,
            50.0,
        ),
        Target::at_most(
            "64 B asleep p50 / idle futex floor p50",
            asleep.p50 as f64 / futex.p50 as f64,
            1.2,
        ),
        Target::at_most(
            "same core p50 / same-core futex p50",
            same_memlink.p50 as f64 / same_futex.p50 as f64,
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
                (Some(o), Some(m)) => m.calls_per_second / o.calls_per_second,
                _ => 0.0,
            },
            0.8,
        ),
        Target::at_least(
            "64 clients: slowest / fastest client",
            many.map_or(0.0, |m| m.slowest as f64 / m.fastest.max(1) as f64),
            2.0 / 3.0,
        ),
    ];

    if options.json {
        let latency_json = |rows: &[Row]| -> Vec<Value> {
            rows.iter()
                .map(|r| json!({"transport": r.label, "size": r.size, "p50_ns": r.latency.p50, "p99_ns": r.latency.p99,
                                "p999_ns": r.latency.p999, "mean_ns": r.latency.mean, "samples": r.latency.samples}))
                .collect()
        };
        let report = json!({
            "cpus": cpus,
            "server_workers": options.workers,
            "memcpy_bytes_per_second": memcpy,
            "latency": latency_json(&latency),
            "same_core": latency_json(&same_core),
            "throughput": throughput.iter().map(|t| json!({"transport": t.label, "clients": t.clients,
                "calls_per_second": t.calls_per_second, "slowest_client_calls": t.slowest, "fastest_client_calls": t.fastest})).collect::<Vec<_>>(),
            "echo_1mib_bytes_per_second": {"memlink": memlink_mib, "unix socket": uds_mib},
            "isolation": latency_json(&isolation),
            "isolation_streamer_bytes_per_second": streamed,
            "idle_connections": {"count": IDLE_CONNECTIONS, "shared_memory_bytes": idle_memory},
            "async": async_rows.json(),
            "targets": targets.iter().map(|t| json!({"target": t.what, "measured": t.measured, "goal": t.goal,
                "higher_is_better": t.higher_is_better, "met": t.met()})).collect::<Vec<_>>(),
        });
        println!("{report}");
        return Ok(());
    }

    println!();
    for size in SIZES {
        let memlink_p50 = find("memlink (awake)", size).map_or(1, |l| l.p50.max(1)) as f64;
        let floor_p50 = find("shm spin (floor)", size).map_or(1, |l| l.p50.max(1)) as f64;
        println!(
            "{} round trip (µs)       p50       p99     p99.9   x memlink   x floor",
            human_size(size)
        );
        for row in latency.iter().filter(|r| r.size == size) {
            let l = row.latency;
            println!(
                "  {:<18} {:>9} {:>9} {:>9} {:>10.2} {:>9.2}",
                row.label,
                us(l.p50),
                us(l.p99),
                us(l.p999),
                l.p50 as f64 / memlink_p50,
                l.p50 as f64 / floor_p50
            );
        }
        println!();
    }
    print_percentiles(
        "64 B round trip, client and server on the same CPU (µs)",
        &same_core,
        55,
    );
    println!();
    println!("throughput, 64 B calls       clients     calls/s   slowest/fastest client");
    for t in &throughput {
        println!(
            "  {:<26} {:>7} {:>11.0}   {:.2}",
            t.label,
            t.clients,
            t.calls_per_second,
            t.slowest as f64 / t.fastest.max(1) as f64
        );
    }
    println!();
    print_percentiles("isolation, one server (µs)", &isolation, 45);
    println!(
        "  (the streamer moved {:.2} GB/s meanwhile, requests and echoes)",
        streamed / 1e9
    );
    println!();
    println!(
        "{IDLE_CONNECTIONS} idle connections hold {:.1} MiB of shared memory ({:.1} KiB each)",
        idle_memory / (1 << 20) as f64,
        idle_memory / 1024.0 / IDLE_CONNECTIONS as f64
    );
    println!();
    println!(
        "1 MiB echo: memlink {:.2} GB/s, unix socket {:.2} GB/s, single-thread memcpy {:.2} GB/s",
        memlink_mib / 1e9,
        uds_mib / 1e9,
        memcpy / 1e9
    );
    println!();
    async_rows.print();
    println!();
    println!("targets                                    measured     goal   met");
    for t in &targets {
        let relation = if t.higher_is_better { ">=" } else { "<=" };
        println!(
            "  {:<40} {:>8.2}  {} {:<5.2} {}",
            t.what,
            t.measured,
            relation,
            t.goal,
            if t.met() { "yes" } else { "NO" }
        );
    }
    Ok(())
}
