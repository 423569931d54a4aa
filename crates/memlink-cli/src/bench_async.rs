//! `memlink bench rpc`'s async rows: what the tokio client costs against the blocking one, on the
//! same server (a child process, as every server of the bench), and how many calls per second
//! 1,000 concurrent async calls get from one thread.
//!
//! Kept apart from `bench` (which calls [`measure`] and prints what it returns) so that the two
//! can change independently. Latency is measured with this process pinned to the first allowed
//! CPU and the server to the second, as `bench`'s latency rows.

use std::io;
use std::time::{Duration, Instant};

use memlink::{Client, ClientOptions};
use serde_json::{Value, json};

use crate::bench::{BenchOptions, IDLE_GAP, Latency, allowed_cpus, new_histogram, unique, us};
use crate::peer::{self, PeerProcess};

/// Concurrent calls of the throughput row, and the connections they share.
const CONCURRENT: usize = 1000;
const CONNECTIONS: usize = 16;
const SIZE: usize = 64;

struct LatencyRow {
    label: &'static str,
    latency: Latency,
}

struct ThroughputRow {
    label: String,
    calls_per_second: f64,
}

/// The async rows, measured; [`AsyncRows::print`] or [`AsyncRows::json`] reports them.
pub(crate) struct AsyncRows {
    latency: Vec<LatencyRow>,
    throughput: Vec<ThroughputRow>,
}

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Measures the async rows.
pub(crate) fn measure(options: &BenchOptions) -> io::Result<AsyncRows> {
    let original = rustix::thread::sched_getaffinity(None).map_err(io::Error::from)?;
    let cpus = allowed_cpus()?;
    let server_cpu = cpus.get(1).copied();
    if let (Some(&client_cpu), Some(_)) = (cpus.first(), server_cpu) {
        peer::pin_to(&[client_cpu])?;
    }
    let rows = measure_on(options, server_cpu);
    rustix::thread::sched_setaffinity(None, &original).map_err(io::Error::from)?;
    rows
}

fn measure_on(options: &BenchOptions, server_cpu: Option<usize>) -> io::Result<AsyncRows> {
    let name = unique("async");
    let _server = PeerProcess::spawn_on(
        server_cpu,
        &["serve", "memlink", &name, "0", &options.workers.to_string()],
    )?;
    let n: u64 = if options.quick { 2_000 } else { 20_000 };
    let asleep_samples: u64 = if options.quick { 50 } else { 300 };
    let span = Duration::from_secs_f64(if options.quick { 0.3 } else { 1.0 });
    let request: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let other = |e: memlink::Error| io::Error::other(e);

    let client = Client::connect_timeout(&name, Duration::from_secs(10)).map_err(other)?;
    let mut reply = Vec::new();
    let blocking = time_calls(n, None, || client.call_into(&request, &mut reply))?;
    let blocking_rate = rate(span, || client.call_into(&request, &mut reply))?;
    drop(client);

    let rt = runtime()?;
    rt.block_on(async {
        let client = ClientOptions::new()
            .max_concurrent_calls(CONNECTIONS)
            .connect_async_timeout(&name, Duration::from_secs(10))
            .await
            .map_err(other)?;
        let mut reply = Vec::new();
        let mut awake = new_histogram()?;
        let mut asleep = new_histogram()?;
        for i in 0..(n + n / 10) {
            let started = Instant::now();
            client
                .call_into(&request, &mut reply)
                .await
                .map_err(other)?;
            if i >= n / 10 {
                awake.saturating_record(started.elapsed().as_nanos() as u64);
            }
        }
        for _ in 0..asleep_samples {
            tokio::time::sleep(IDLE_GAP).await;
            let started = Instant::now();
            client
                .call_into(&request, &mut reply)
                .await
                .map_err(other)?;
            asleep.saturating_record(started.elapsed().as_nanos() as u64);
        }
        if reply != request {
            return Err(io::Error::other("the async client got a wrong echo"));
        }
        let mut calls = 0u64;
        let end = Instant::now() + span;
        while Instant::now() < end {
            client
                .call_into(&request, &mut reply)
                .await
                .map_err(other)?;
            calls += 1;
        }
        let async_rate = calls as f64 / span.as_secs_f64();

        let started = Instant::now();
        let end = started + span;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..CONCURRENT {
            let (client, request) = (client.clone(), request.clone());
            tasks.spawn(async move {
                let mut reply = Vec::new();
                let mut calls = 0u64;
                while Instant::now() < end {
                    client.call_into(&request, &mut reply).await?;
                    if reply != request {
                        return Err(memlink::Error::Corrupted {
                            name: "bench".into(),
                            reason: "a wrong echo".into(),
                        });
                    }
                    calls += 1;
                }
                Ok(calls)
            });
        }
        let mut total = 0;
        while let Some(joined) = tasks.join_next().await {
            total += joined
                .map_err(io::Error::other)?
                .map_err(io::Error::other)?;
        }
        let concurrent_rate = total as f64 / started.elapsed().as_secs_f64();
        Ok(AsyncRows {
            latency: vec![
                LatencyRow {
                    label: "blocking (awake)",
                    latency: blocking,
                },
                LatencyRow {
                    label: "tokio (awake)",
                    latency: Latency::of(&awake),
                },
                LatencyRow {
                    label: "tokio (asleep)",
                    latency: Latency::of(&asleep),
                },
            ],
            throughput: vec![
                ThroughputRow {
                    label: "blocking, one call at a time".into(),
                    calls_per_second: blocking_rate,
                },
                ThroughputRow {
                    label: "tokio, one call at a time".into(),
                    calls_per_second: async_rate,
                },
                ThroughputRow {
                    label: format!("tokio, {CONCURRENT} concurrent ({CONNECTIONS} connections)"),
                    calls_per_second: concurrent_rate,
                },
            ],
        })
    })
}

/// Times `n` calls (after a tenth as many to warm up).
fn time_calls(
    n: u64,
    gap: Option<Duration>,
    mut call: impl FnMut() -> memlink::Result<()>,
) -> io::Result<Latency> {
    for _ in 0..n / 10 {
        call().map_err(io::Error::other)?;
    }
    let mut histogram = new_histogram()?;
    for _ in 0..n {
        if let Some(gap) = gap {
            std::thread::sleep(gap);
        }
        let started = Instant::now();
        call().map_err(io::Error::other)?;
        histogram.saturating_record(started.elapsed().as_nanos() as u64);
    }
    Ok(Latency::of(&histogram))
}

/// Calls per second, back to back, for `span`.
fn rate(span: Duration, mut call: impl FnMut() -> memlink::Result<()>) -> io::Result<f64> {
    let end = Instant::now() + span;
    let mut calls = 0u64;
    while Instant::now() < end {
        call().map_err(io::Error::other)?;
        calls += 1;
    }
    Ok(calls as f64 / span.as_secs_f64())
}

impl AsyncRows {
    /// The rows as a table.
    pub(crate) fn print(&self) {
        println!("64 B round trip, async against blocking (µs)       p50       p99     p99.9");
        for row in &self.latency {
            println!(
                "  {:<47} {:>9} {:>9} {:>9}",
                row.label,
                us(row.latency.p50),
                us(row.latency.p99),
                us(row.latency.p999)
            );
        }
        println!();
        println!("throughput, 64 B calls from one thread                 calls/s");
        for row in &self.throughput {
            println!("  {:<50} {:>11.0}", row.label, row.calls_per_second);
        }
    }

    /// The rows as JSON.
    pub(crate) fn json(&self) -> Value {
        json!({
            "latency": self.latency.iter().map(|r| json!({"client": r.label, "size": SIZE,
                "p50_ns": r.latency.p50, "p99_ns": r.latency.p99, "p999_ns": r.latency.p999,
                "mean_ns": r.latency.mean, "samples": r.latency.samples})).collect::<Vec<_>>(),
            "throughput": self.throughput.iter().map(|r| json!({"client": r.label,
                "calls_per_second": r.calls_per_second})).collect::<Vec<_>>(),
        })
    }
}
