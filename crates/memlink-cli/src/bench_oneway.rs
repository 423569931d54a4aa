//! `memlink bench duplex` and `memlink bench stream`: one-way message rate and latency of memlink's
//! duplex channel, and the item rate of its streaming replies, against a Unix domain socket and
//! the shared-memory ring floor ([`crate::floor`]), all measured in one run on this machine.
//!
//! This process always receives; every sender is a child process. With two CPUs or more, this
//! process is pinned to the first allowed CPU and each child to the second (as `bench rpc` does),
//! so that the scheduler cannot put both on one CPU.

use std::io;
use std::path::Path;

use indicatif::ProgressBar;
use serde_json::{Value, json};

use crate::bench::{
    Latency, P999_SAMPLES, Target, allowed_cpus, human_size, new_histogram, note, targets_table, us,
};
use crate::oneway::{self, Kind, RING_CAPACITY, Role};
use crate::{chart, peer, ui};

const DUPLEX_SIZES: [usize; 4] = [64, 1 << 10, 64 << 10, 1 << 20];

const FLOOR: &str = "ring floor";
const DUPLEX: &str = "memlink duplex";
const SOCKET: &str = "unix socket";
const STREAM: &str = "memlink call_stream";
const SOCKET_BATCHED: &str = "unix socket (batched)";

const CLOCK: &str = "CLOCK_MONOTONIC, one clock read by both processes";

/// Command-line options of `memlink bench duplex` and `memlink bench stream`.
#[derive(Debug, Clone)]
pub(crate) struct OnewayOptions {
    pub(crate) json: bool,
    pub(crate) quick: bool,
    /// Messages (or items, or latency samples) per measurement instead of the defaults.
    pub(crate) count: Option<u64>,
}

impl OnewayOptions {
    fn scaled(&self, full: u64) -> u64 {
        match self.count {
            Some(n) => n.max(1),
            None if self.quick => (full / 10).max(1),
            None => full,
        }
    }
}

/// Each rate is measured this many times, the transports taking turns, and the median run is
/// reported: on a shared machine one run can lose a scheduler tick or two.
const RUNS: usize = 3;

/// One rate measurement: `count` messages of `size` bytes in `nanos`; `runs`: the per-second
/// rates of all the runs this one is the median of.
struct Rate {
    label: &'static str,
    size: usize,
    count: u64,
    nanos: u64,
    runs: Vec<f64>,
}

/// The run with the median rate of `runs` (all of one transport and size), knowing the others.
fn median(mut runs: Vec<Rate>) -> io::Result<Rate> {
    runs.sort_by(|a, b| a.per_second().total_cmp(&b.per_second()));
    let all: Vec<f64> = runs.iter().map(Rate::per_second).collect();
    let middle = runs.len() / 2;
    let mut chosen = runs
        .into_iter()
        .nth(middle)
        .ok_or_else(|| io::Error::other("no runs"))?;
    chosen.runs = all;
    Ok(chosen)
}

/// Measures each of `measure`'s transports `RUNS` times, taking turns, and keeps the medians;
/// moves `bar` on by one per measurement.
fn medians<K: Copy>(
    transports: &[K],
    bar: &ProgressBar,
    mut measure: impl FnMut(K) -> io::Result<Rate>,
) -> io::Result<Vec<Rate>> {
    let mut runs: Vec<Vec<Rate>> = transports.iter().map(|_| Vec::new()).collect();
    for _ in 0..RUNS {
        for (runs, &transport) in runs.iter_mut().zip(transports) {
            runs.push(measure(transport)?);
            bar.inc(1);
        }
    }
    runs.into_iter().map(median).collect()
}

impl Rate {
    fn seconds(&self) -> f64 {
        self.nanos.max(1) as f64 / 1e9
    }

    fn per_second(&self) -> f64 {
        self.count as f64 / self.seconds()
    }

    fn bytes_per_second(&self) -> f64 {
        (self.count as f64 * self.size as f64) / self.seconds()
    }

    fn json(&self, size_key: &str, count_key: &str, rate_key: &str) -> Value {
        json!({
            "transport": self.label,
            size_key: self.size,
            count_key: self.count,
            "seconds": self.seconds(),
            rate_key: self.per_second(),
            "runs_per_second": self.runs,
            "bytes_per_second": self.bytes_per_second(),
        })
    }
}

struct LatencyRow {
    label: &'static str,
    size: usize,
    latency: Latency,
}

/// Runs `body` with this process pinned to the first allowed CPU, passing it the CPU for the
/// children (the second allowed one), if there are two; restores our affinity afterwards.
fn pinned<T>(body: impl FnOnce(Option<usize>) -> io::Result<T>) -> io::Result<T> {
    let original = rustix::thread::sched_getaffinity(None).map_err(io::Error::from)?;
    let cpus = allowed_cpus()?;
    let child_cpu = cpus.get(1).copied();
    if let (Some(&ours), Some(_)) = (cpus.first(), child_cpu) {
        peer::pin_to(&[ours])?;
    }
    let result = body(child_cpu);
    rustix::thread::sched_setaffinity(None, &original).map_err(io::Error::from)?;
    result
}

fn cpu_count() -> u32 {
    rustix::thread::sched_getaffinity(None).map_or(1, |s| s.count())
}

fn placement(child_cpu: Option<usize>) -> String {
    match child_cpu {
        Some(cpu) => format!(
            "this process (the receiver) on one CPU, each sender (a child process) on CPU {cpu}"
        ),
        None => "receiver and senders unpinned (one CPU)".to_owned(),
    }
}

/// Times `count` messages of `size` bytes sent back to back over `kind`.
fn rate(
    kind: Kind,
    label: &'static str,
    size: usize,
    count: u64,
    cpu: Option<usize>,
) -> io::Result<Rate> {
    let mut connection = oneway::connect(kind, Role::Send, size, count, cpu)?;
    connection.peer.say("go")?;
    let nanos = oneway::receive_all(&mut *connection.channel, size, count)?;
    Ok(Rate {
        label,
        size,
        count,
        nanos,
        runs: Vec::new(),
    })
}

fn latency(
    kind: Kind,
    label: &'static str,
    size: usize,
    samples: u64,
    cpu: Option<usize>,
) -> io::Result<LatencyRow> {
    let warmup = (samples / 10).clamp(10, 1000);
    let mut connection = oneway::connect(kind, Role::Pong, size, warmup + samples, cpu)?;
    let mut histogram = new_histogram()?;
    oneway::ping_pong(
        &mut *connection.channel,
        size,
        warmup,
        samples,
        &mut histogram,
    )?;
    Ok(LatencyRow {
        label,
        size,
        latency: Latency::of(&histogram),
    })
}

fn rate_count(size: usize, options: &OnewayOptions) -> u64 {
    options.scaled(match size {
        0..=64 => 2_000_000,
        65..=1024 => 1_000_000,
        1025..=65536 => 40_000,
        _ => 4_000,
    })
}

fn latency_samples(size: usize, options: &OnewayOptions) -> u64 {
    options.scaled(if size <= 1024 { 20_000 } else { 10_000 })
}

/// "12.3 M" / "456.7 k" / "89".
fn count_per_second(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn find<'a>(rows: &'a [Rate], label: &str, size: usize) -> io::Result<&'a Rate> {
    rows.iter()
        .find(|r| r.label == label && r.size == size)
        .ok_or_else(|| io::Error::other(format!("no {label} row for {size} bytes")))
}

/// Prints rate rows of one size with their ratios to the floor's and the socket's rate.
fn print_rates(heading: &str, rows: &[&Rate], floor: f64, socket: f64) {
    println!("{heading}");
    let mut table = ui::table(
        &[
            "transport",
            "count",
            "per second",
            "MB/s",
            "x floor",
            "x socket",
        ],
        1,
    );
    for r in rows {
        table.add_row([
            r.label.to_owned(),
            r.count.to_string(),
            count_per_second(r.per_second()),
            format!("{:.1}", r.bytes_per_second() / 1e6),
            format!("{:.2}", r.per_second() / floor),
            format!("{:.2}", r.per_second() / socket),
        ]);
    }
    println!("{table}");
}

/// `memlink bench duplex`; the latency chart to `svg`, if given.
pub(crate) fn run_duplex(
    options: &OnewayOptions,
    sizes: &[usize],
    svg: Option<&Path>,
) -> io::Result<()> {
    let cpus = cpu_count();
    let sizes: Vec<usize> = if sizes.is_empty() {
        DUPLEX_SIZES.to_vec()
    } else {
        sizes.iter().map(|&s| s.max(16)).collect()
    };
    let transports = [
        (Kind::Floor, FLOOR),
        (Kind::Duplex, DUPLEX),
        (Kind::Uds, SOCKET),
    ];
    let (rates, latencies, child_cpu) = pinned(|cpu| {
        note(
            options.json,
            &format!(
                "memlink bench duplex: {cpus} CPUs, {}; rings of {} per direction (memlink's default, and the floor's)",
                placement(cpu),
                human_size(RING_CAPACITY)
            ),
        );
        let bar = ui::progress((sizes.len() * transports.len() * (RUNS + 1)) as u64);
        let mut rates = Vec::new();
        for &size in &sizes {
            let count = rate_count(size, options);
            bar.set_message(format!("rate, {} x {count}", human_size(size)));
            rates.extend(medians(&transports, &bar, |(kind, label)| {
                rate(kind, label, size, count, cpu)
            })?);
        }
        let mut latencies = Vec::new();
        for &size in &sizes {
            let samples = latency_samples(size, options);
            bar.set_message(format!("latency, {} x {samples}", human_size(size)));
            for (kind, label) in transports {
                latencies.push(latency(kind, label, size, samples, cpu)?);
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        Ok((rates, latencies, cpu))
    })?;

    let small = |label| find(&rates, label, 64).map(Rate::per_second);
    let large = |label| find(&rates, label, 1 << 20).map(Rate::bytes_per_second);
    let mut targets = Vec::new();
    if sizes.contains(&64) {
        targets.push(Target::at_least(
            "64 B msgs/s: memlink duplex / ring floor",
            small(DUPLEX)? / small(FLOOR)?,
            0.5,
        ));
        targets.push(Target::at_least(
            "64 B msgs/s: memlink duplex / unix socket",
            small(DUPLEX)? / small(SOCKET)?,
            20.0,
        ));
    }
    if sizes.contains(&(1 << 20)) {
        targets.push(Target::at_least(
            "1 MiB bytes/s: memlink duplex / ring floor",
            large(DUPLEX)? / large(FLOOR)?,
            0.8,
        ));
    }
    let rate_method = "the sender sends COUNT messages back to back, the receiver checks each (length, and its sequence number at both ends); timed from the sender's clock reading just before its first send to the receiver's just after its last check; the median of 3 runs, the transports taking turns";
    let latency_method = "one-way: ping-pong (a 16-byte ping, then a SIZE-byte answer), the answer's sender reads the clock just before it sends, the receiver just after it has received it (then checks every byte)";

    if let Some(path) = svg {
        let series: Vec<chart::Series> = transports
            .iter()
            .map(|&(_, label)| chart::Series {
                label: label.to_owned(),
                points: latencies
                    .iter()
                    .filter(|r| r.label == label)
                    .map(|r| (r.size, r.latency))
                    .collect(),
            })
            .collect();
        chart::write_svg(
            path,
            &format!("memlink bench duplex: one-way latency, {cpus} CPUs"),
            "one-way",
            &series,
        )?;
    }
    let chart_written = || {
        if let Some(path) = svg {
            note(
                options.json,
                &format!("latency chart written to {}", path.display()),
            );
        }
    };

    if options.json {
        let latency_json: Vec<Value> = latencies
            .iter()
            .map(|r| {
                let mut row = r.latency.json_fields();
                row.insert("transport".into(), r.label.into());
                row.insert("size".into(), r.size.into());
                Value::Object(row)
            })
            .collect();
        let report = json!({
            "cpus": cpus,
            "child_cpu": child_cpu,
            "ring_capacity_bytes": RING_CAPACITY,
            "clock": CLOCK,
            "rate_method": rate_method,
            "rate": rates.iter().map(|r| r.json("size", "messages", "messages_per_second")).collect::<Vec<_>>(),
            "latency_method": latency_method,
            "latency": latency_json,
            "targets": targets.iter().map(Target::json).collect::<Vec<_>>(),
        });
        println!("{report}");
        chart_written();
        return Ok(());
    }

    println!();
    println!("one-way rate: {rate_method} ({CLOCK}).");
    println!();
    for &size in &sizes {
        let of_size: Vec<&Rate> = rates.iter().filter(|r| r.size == size).collect();
        let floor = find(&rates, FLOOR, size)?.per_second();
        let socket = find(&rates, SOCKET, size)?.per_second();
        print_rates(
            &format!("{} messages", human_size(size)),
            &of_size,
            floor,
            socket,
        );
        println!();
    }
    println!("one-way latency (µs), {latency_method} ({CLOCK}).");
    println!(
        "The last column is the p99.9 where at least {P999_SAMPLES} samples back it, else the maximum."
    );
    println!();
    for &size in &sizes {
        println!("{} one-way (µs)", human_size(size));
        let mut table = ui::table(&["transport", "samples", "p50", "p99", "p99.9"], 1);
        for r in latencies.iter().filter(|r| r.size == size) {
            let l = r.latency;
            table.add_row([
                r.label.to_owned(),
                l.samples.to_string(),
                us(l.p50),
                us(l.p99),
                l.tail_us(),
            ]);
        }
        println!("{table}");
        println!();
    }
    println!("{}", targets_table(&targets));
    chart_written();
    Ok(())
}

/// `memlink bench stream`.
pub(crate) fn run_stream(options: &OnewayOptions) -> io::Result<()> {
    let cpus = cpu_count();
    let small = options.scaled(1_000_000);
    let large = options.scaled(20_000);
    let (rows, child_cpu) = pinned(|cpu| {
        note(
            options.json,
            &format!(
                "memlink bench stream: {cpus} CPUs, {}; the memlink server's stream handler and worker threads both run on the child's CPU",
                placement(cpu)
            ),
        );
        let bar = ui::progress((7 * RUNS) as u64);
        let mut rows = Vec::new();
        for (size, count) in [(64, small), (64 << 10, large)] {
            bar.set_message(format!("{} items x {count}", human_size(size)));
            let mut transports = vec![
                (Some(Kind::Floor), FLOOR),
                (None, STREAM),
                (Some(Kind::Uds), SOCKET),
            ];
            if size < 64 << 10 {
                transports.push((Some(Kind::UdsBatched), SOCKET_BATCHED));
            }
            rows.extend(medians(&transports, &bar, |(kind, label)| match kind {
                Some(kind) => rate(kind, label, size, count, cpu),
                None => Ok(Rate {
                    label,
                    size,
                    count,
                    nanos: oneway::receive_stream(size, count, cpu)?,
                    runs: Vec::new(),
                }),
            })?);
        }
        bar.finish_and_clear();
        Ok((rows, cpu))
    })?;

    let items = |label, size| find(&rows, label, size).map(Rate::per_second);
    let ratios = vec![
        (
            "64 B items/s: memlink / ring floor",
            items(STREAM, 64)? / items(FLOOR, 64)?,
        ),
        (
            "64 B items/s: memlink / unix socket, write per item",
            items(STREAM, 64)? / items(SOCKET, 64)?,
        ),
        (
            "64 B items/s: memlink / unix socket, batched",
            items(STREAM, 64)? / items(SOCKET_BATCHED, 64)?,
        ),
        (
            "64 KiB items/s: memlink / ring floor",
            items(STREAM, 64 << 10)? / items(FLOOR, 64 << 10)?,
        ),
        (
            "64 KiB items/s: memlink / unix socket",
            items(STREAM, 64 << 10)? / items(SOCKET, 64 << 10)?,
        ),
    ];
    let method = "the server sends COUNT items as fast as it can, the client checks each (length, and its sequence number at both ends); timed from the sender's clock reading just before its first item to the receiver's just after its last check; the median of 3 runs, the transports taking turns";
    let socket_method = "unix socket: one writev (4-byte length + item) per item; batched: items collected and written 64 KiB at a time (not run for 64 KiB items, which are a batch each already); the receiver reads up to 256 KiB at once while items are small, a large item's payload straight into its buffer";

    if options.json {
        let report = json!({
            "cpus": cpus,
            "child_cpu": child_cpu,
            "clock": CLOCK,
            "method": method,
            "socket_method": socket_method,
            "rows": rows.iter().map(|r| r.json("item_size", "items", "items_per_second")).collect::<Vec<_>>(),
            "ratios": ratios.iter().map(|(what, measured)| json!({"ratio": what, "measured": measured})).collect::<Vec<_>>(),
        });
        println!("{report}");
        return Ok(());
    }

    println!();
    println!("stream: {method} ({CLOCK}).");
    println!("{socket_method}.");
    println!();
    for size in [64, 64 << 10] {
        let of_size: Vec<&Rate> = rows.iter().filter(|r| r.size == size).collect();
        print_rates(
            &format!("{} items", human_size(size)),
            &of_size,
            items(FLOOR, size)?,
            items(SOCKET, size)?,
        );
        println!();
    }
    let mut table = ui::table(&["ratio (no target is set for streams)", "measured"], 1);
    for (what, measured) in &ratios {
        table.add_row([what.to_string(), format!("{measured:.2}")]);
    }
    println!("{table}");
    Ok(())
}
