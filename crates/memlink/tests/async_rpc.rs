//! The async API (feature `tokio`) across real processes: a thousand concurrent calls from one
//! thread, async and blocking peers mixed, SIGKILL of the peer waking every pending future,
//! futures dropped at random points (every await point) without a reply ever reaching the wrong
//! call, streams, duplex channels and subscribers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{ChildProcess, WATCHDOG, Watchdog, await_parent, report, unique_name, variant};
use memlink::pubsub::AsyncSubscriber;
use memlink::rpc::AsyncClient;
use memlink::{
    AsyncDuplex, Client, ClientOptions, Duplex, Error, Event, EventMode, Lock, Mutex, NotExecuted,
    Publisher, Result, Segment, Semaphore, Server, StreamSink,
};

#[test]
fn child_main() {
    common::run_child(&[
        ("blocking_server", blocking_server),
        ("blocking_client", blocking_client),
        ("async_server", async_server),
        ("duplex_echo", duplex_echo),
        ("duplex_park", duplex_park),
        ("duplex_check", duplex_check),
        ("publisher", publisher),
        ("event_echo", event_echo),
        ("sem_poster", sem_poster),
        ("mutex_counter", mutex_counter),
        ("mutex_hold_and_park", mutex_hold_and_park),
        ("duplex_hostile", duplex_hostile),
        ("wake_writer_server", wake_writer_server),
        (
            "client_with_a_blocking_wake_pipe",
            client_with_a_blocking_wake_pipe,
        ),
        ("cancel_ignoring_server", cancel_ignoring_server),
    ]);
}

// --- the test service ----------------------------------------------------------------------------

fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |sum, &b| {
        (sum ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) ^ data.len() as u64
}

/// A request: `nonce (8 bytes) | delay in µs (4 bytes) | filler`. The reply echoes the whole
/// request and appends its checksum, so a reply carries the identity of the call it answers.
fn request(nonce: u64, delay_us: u32, len: usize) -> Vec<u8> {
    let len = len.max(12);
    let mut r = vec![0u8; len];
    r[..8].copy_from_slice(&nonce.to_le_bytes());
    r[8..12].copy_from_slice(&delay_us.to_le_bytes());
    for (i, b) in r[12..].iter_mut().enumerate() {
        *b = (nonce as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
    r
}

fn delay_of(request: &[u8]) -> Duration {
    let us = request
        .get(8..12)
        .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()));
    Duration::from_micros(u64::from(us))
}

fn answer(request: &[u8], reply: &mut Vec<u8>) {
    reply.extend_from_slice(request);
    reply.extend_from_slice(&checksum(request).to_le_bytes());
}

/// Fails the test unless `reply` answers `request` (and no other call).
fn check_reply(request: &[u8], reply: &[u8]) {
    assert_eq!(reply.len(), request.len() + 8, "reply length");
    assert!(
        reply[..8] == request[..8],
        "reply to call {} delivered to call {}",
        u64::from_le_bytes(reply[..8].try_into().unwrap()),
        u64::from_le_bytes(request[..8].try_into().unwrap()),
    );
    assert!(reply[..request.len()] == *request, "reply bytes");
    assert_eq!(reply[request.len()..], checksum(request).to_le_bytes());
}

fn blocking_service(request: &[u8], reply: &mut Vec<u8>) {
    let delay = delay_of(request);
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    answer(request, reply);
}

/// `count:N` streams the items `0`, `1`, ... `N-1` (decimal text), each padded to 64 bytes.
fn stream_service(request: &[u8], sink: &mut StreamSink) -> memlink::Result<()> {
    let n: u64 = std::str::from_utf8(request.strip_prefix(b"count:").unwrap_or(b"0"))
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    for i in 0..n {
        let mut item = i.to_string().into_bytes();
        item.resize(64, b' ');
        sink.send(&item)?;
    }
    Ok(())
}

fn item_number(item: &[u8]) -> u64 {
    std::str::from_utf8(item).unwrap().trim().parse().unwrap()
}

/// Polls `future` until it completes or has been left pending `pendings` times (it stopped at
/// that many await points), then drops it: a way to cut a call short at each of its await
/// points in turn, finer than tokio's millisecond timers.
async fn cut_after<F: std::future::Future>(pendings: u32, future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut left = pendings;
    std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
        std::task::Poll::Ready(output) => std::task::Poll::Ready(Some(output)),
        std::task::Poll::Pending if left == 0 => std::task::Poll::Ready(None),
        std::task::Poll::Pending => {
            left -= 1;
            std::task::Poll::Pending
        }
    })
    .await
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Deterministic pseudo-random numbers (xorshift), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// --- child roles -------------------------------------------------------------------------------

/// A blocking server until its stdin closes or it is killed. Args: name, workers.
fn blocking_server(args: &[String]) {
    let workers = args.get(1).and_then(|w| w.parse().ok()).unwrap_or(2);
    let server = Server::options().workers(workers).bind(&args[0]).unwrap();
    let stop = server.shutdown_handle();
    std::thread::spawn(move || {
        await_parent();
        stop.shutdown();
    });
    report("ready");
    server.serve_with(blocking_service, stream_service).unwrap();
}

/// An async server (`serve_async` on a current-thread runtime) until its stdin closes (then
/// it shuts down and says so) or it is killed. Args: name. A request `panic` panics the handler.
fn async_server(args: &[String]) {
    let server = Server::options()
        .shutdown_grace(Duration::from_secs(2))
        .bind(&args[0])
        .unwrap();
    let stop = server.shutdown_handle();
    std::thread::spawn(move || {
        await_parent();
        stop.shutdown();
    });
    report("ready");
    runtime()
        .block_on(server.serve_async(|request: Vec<u8>| async move {
            assert!(request != b"panic", "the test handler was asked to panic");
            let delay = delay_of(&request);
            if !delay.is_zero() {
                // Awaits: the runtime's one thread serves the other connections meanwhile.
                tokio::time::sleep(delay).await;
            }
            let mut reply = Vec::with_capacity(request.len() + 8);
            answer(&request, &mut reply);
            reply
        }))
        .unwrap();
    report("stopped");
}

fn start_async_server(name: &str) -> ChildProcess {
    let mut server = ChildProcess::spawn("async_server", &[name]);
    server.expect_line("ready");
    server
}

/// A blocking client making `calls` calls, checking each reply. Args: name, calls.
fn blocking_client(args: &[String]) {
    let client = Client::connect_timeout(&args[0], WATCHDOG).unwrap();
    let calls: u64 = args[1].parse().unwrap();
    let mut reply = Vec::new();
    for nonce in 0..calls {
        let request = request(nonce, 0, 16 + (nonce as usize % 300));
        client.call_into(&request, &mut reply).unwrap();
        check_reply(&request, &reply);
    }
    report("done");
}

/// A blocking duplex end that sends back every message it receives, until the peer is gone,
/// pausing a moment now and then (so that the peer's receives wait, whatever the scheduling).
/// Args: name.
fn duplex_echo(args: &[String]) {
    let chan = Duplex::open_timeout(&args[0], WATCHDOG).unwrap();
    report("paired");
    let mut message = Vec::new();
    let mut count = 0u64;
    while chan.recv_into(&mut message).is_ok() {
        count += 1;
        if count.is_multiple_of(16) {
            std::thread::sleep(Duration::from_millis(1));
        }
        if chan.send(&message).is_err() {
            break;
        }
    }
}

/// A blocking duplex end that checks every message it receives is whole (`numbered`) and that
/// their numbers increase, slowly at first (so that the sender's ring fills), until an empty
/// message; then reports how many it received. Args: name.
fn duplex_check(args: &[String]) {
    let chan = Duplex::open_timeout(&args[0], WATCHDOG).unwrap();
    report("paired");
    let mut last = None;
    let mut count = 0u64;
    let mut message = Vec::new();
    loop {
        chan.recv_into(&mut message).unwrap();
        if message.is_empty() {
            break;
        }
        let seq = u64::from_le_bytes(message[..8].try_into().unwrap());
        assert_eq!(
            message,
            numbered(seq, message.len()),
            "message {seq} arrived torn"
        );
        assert!(last.is_none_or(|l| seq > l), "message {seq} after {last:?}");
        last = Some(seq);
        count += 1;
        if count.is_multiple_of(50) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    report(&format!("received {count}"));
}

/// A blocking duplex end that pairs and then neither sends nor receives. Args: name.
fn duplex_park(args: &[String]) {
    let _chan = Duplex::open_timeout(&args[0], WATCHDOG).unwrap();
    report("paired");
    common::park_until_killed();
}

/// A reliable publisher: once the parent says how many, publishes that many samples (each its
/// sequence number, padded to its own length), then parks. Args: topic.
fn publisher(args: &[String]) {
    let mut publisher = Publisher::options()
        .capacity(64)
        .reliable(WATCHDOG)
        .create(&args[0])
        .unwrap();
    report("created");
    let n: u64 = await_parent().parse().unwrap();
    for seq in 0..n {
        let mut sample = seq.to_le_bytes().to_vec();
        sample.resize(8 + (seq as usize % 200), seq as u8);
        publisher.publish(&sample).unwrap();
    }
    report("published");
    common::park_until_killed();
}

/// Answers each set of `ping` with a set of `pong`, `rounds` times. Args: ping, pong, rounds.
fn event_echo(args: &[String]) {
    let ping = Event::open(&args[0]).unwrap();
    let pong = Event::open(&args[1]).unwrap();
    for _ in 0..args[2].parse::<usize>().unwrap() {
        ping.wait_timeout(WATCHDOG).unwrap();
        pong.set().unwrap();
    }
    report("done");
}

/// Posts the semaphore once per line the parent writes (a number: that many posts).
/// Args: name.
fn sem_poster(args: &[String]) {
    let sem = Semaphore::open(&args[0]).unwrap();
    loop {
        let line = await_parent();
        let Ok(n) = line.parse::<usize>() else { return };
        for _ in 0..n {
            sem.post().unwrap();
        }
        report("posted");
    }
}

const COUNTER_AT: usize = 64;

fn read_counter(segment: &Segment) -> u64 {
    let mut b = [0u8; 8];
    segment.read(COUNTER_AT, &mut b).unwrap();
    u64::from_le_bytes(b)
}

/// Increments the counter in the segment `count` times under the blocking lock (a
/// deliberately non-atomic read-modify-write). Args: segment, count.
fn mutex_counter(args: &[String]) {
    let segment = Segment::open(&args[0]).unwrap();
    let mutex = Mutex::open_in(&segment, 0).unwrap();
    for i in 0..args[1].parse::<usize>().unwrap() {
        let Lock::Acquired(guard) = mutex.lock_timeout(WATCHDOG).unwrap() else {
            panic!("nobody died")
        };
        let value = read_counter(&segment);
        if i.is_multiple_of(16) {
            std::thread::yield_now();
        }
        segment
            .write(COUNTER_AT, &(value + 1).to_le_bytes())
            .unwrap();
        guard.unlock().unwrap();
    }
    report("done");
}

/// Locks the mutex and parks until killed. Args: name.
fn mutex_hold_and_park(args: &[String]) {
    let mutex = Mutex::open(&args[0]).unwrap();
    let Lock::Acquired(_guard) = mutex.lock_timeout(WATCHDOG).unwrap() else {
        panic!("unexpected owner-died")
    };
    report("locked");
    common::park_until_killed();
}

fn start_blocking_server(name: &str, workers: usize) -> ChildProcess {
    let mut server = ChildProcess::spawn("blocking_server", &[name, &workers.to_string()]);
    server.expect_line("ready");
    server
}

// --- rpc: async client ---------------------------------------------------------------------------

#[test]
fn a_thousand_concurrent_calls_from_one_thread() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("async-1000");
    let _server = start_blocking_server(&name, 2);
    runtime().block_on(async {
        let client = ClientOptions::new()
            .max_concurrent_calls(16)
            .connect_async_timeout(&name, WATCHDOG)
            .await
            .unwrap();
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for nonce in 0..1000u64 {
            let client = client.clone();
            tasks.spawn(async move {
                let request = request(nonce, 0, 16 + (nonce as usize * 7) % 2000);
                let reply = client.call(&request).await.unwrap();
                check_reply(&request, &reply);
            });
        }
        let mut done = 0;
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
            done += 1;
        }
        assert_eq!(done, 1000);
        eprintln!("1000 concurrent async calls in {:?}", started.elapsed());
    });
    common::assert_no_leftovers(&name);
}

#[test]
fn async_calls_see_the_same_errors_and_reuse_their_buffer() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("async-basic");
    let _server = start_blocking_server(&name, 1);
    runtime().block_on(async {
        let client = AsyncClient::connect_timeout(&name, WATCHDOG).await.unwrap();
        assert_eq!(client.name(), name);
        let mut reply = Vec::new();
        for nonce in 0..200 {
            // Up to 400 KB: larger than the ring, so requests and replies go in fragments.
            let request = request(nonce, 0, (nonce as usize * 2003) % 400_000);
            client.call_into(&request, &mut reply).await.unwrap();
            check_reply(&request, &reply);
        }
        let too_big = vec![0u8; client.max_message_size() + 1];
        assert!(matches!(
            client.call(&too_big).await,
            Err(Error::MessageTooLarge { .. })
        ));
        // A deadline that travels with the request: a slow handler makes it time out.
        let slow = request(7, 300_000, 16);
        let e = client
            .call_timeout(&slow, Duration::from_millis(30))
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::Timeout | Error::NotExecuted { .. }),
            "{e:?}"
        );
        // And the client goes on.
        let request = request(8, 0, 100);
        check_reply(&request, &client.call(&request).await.unwrap());
    });
}

#[test]
fn an_async_client_on_a_multi_thread_runtime() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("async-mt");
    let _server = start_blocking_server(&name, 2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = AsyncClient::connect_timeout(&name, WATCHDOG).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..8u64 {
            let client = client.clone();
            tasks.spawn(async move {
                for i in 0..100u64 {
                    let request = request(task << 32 | i, 0, 40 + i as usize);
                    check_reply(&request, &client.call(&request).await.unwrap());
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
    });
}

#[test]
fn a_blocking_client_and_an_async_client_share_a_server() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("async-mixed");
    let _server = start_blocking_server(&name, 2);
    let mut blocking = ChildProcess::spawn("blocking_client", &[&name, "2000"]);
    runtime().block_on(async {
        let client = AsyncClient::connect_timeout(&name, WATCHDOG).await.unwrap();
        for nonce in 0..2000 {
            let request = request(nonce, 0, 16 + (nonce as usize % 500));
            check_reply(&request, &client.call(&request).await.unwrap());
        }
    });
    blocking.expect_line("done");
    blocking.wait_success();
}

/// The calls in flight when the server is SIGKILLed all end within moments: those whose request
/// the server had taken with `Disconnected`, those it had not (waiting for a connection, or
/// behind a busy worker) with `NotExecuted { ServerGone }`, as in the blocking API.
#[test]
fn sigkill_of_the_server_wakes_every_pending_call() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("async-kill");
    let mut server = start_blocking_server(&name, 8);
    runtime().block_on(async {
        let client = ClientOptions::new()
            .max_concurrent_calls(8)
            .connect_async_timeout(&name, WATCHDOG)
            .await
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        let ended = Arc::new(std::sync::Mutex::new(Vec::new()));
        for nonce in 0..200u64 {
            let client = client.clone();
            let ended = ended.clone();
            tasks.spawn(async move {
                // A minute: only the kill ends these calls.
                let request = request(nonce, 60_000_000, 16);
                let result = client.call(&request).await;
                ended.lock().unwrap().push(Instant::now());
                result
            });
        }
        // Let every connection open and its call reach a worker.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(ended.lock().unwrap().is_empty(), "a call ended early");
        let killed = Instant::now();
        server.sigkill();
        let (mut disconnected, mut not_executed) = (0, 0);
        while let Some(joined) = tasks.join_next().await {
            match joined.unwrap() {
                Err(Error::Disconnected { .. }) => disconnected += 1,
                // Never sent: waiting for a connection, then finding no server.
                Err(
                    Error::NotExecuted {
                        reason: NotExecuted::ServerGone,
                        ..
                    }
                    | Error::NotRunning { .. },
                ) => not_executed += 1,
                other => panic!("a pending call ended with {other:?}"),
            }
        }
        let last = ended.lock().unwrap().iter().max().copied().unwrap();
        let took = last.duration_since(killed);
        eprintln!(
            "SIGKILL woke 200 pending calls in {took:?}: {disconnected} Disconnected, \
             {not_executed} NotExecuted(ServerGone) or NotRunning"
        );
        assert_eq!(
            disconnected, 8,
            "every call the server had taken is Disconnected"
        );
        assert!(took < Duration::from_secs(2), "took {took:?}");
    });
    server.kill_and_reap();
    common::assert_no_leftovers(&name);
}

/// Futures dropped at random points (waiting for a connection, writing a request larger than
/// the ring, waiting for the reply, reading a reply in fragments): the next call always gets its
/// own reply.
#[test]
fn calls_dropped_at_random_points_never_get_a_wrong_reply() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("async-cancel");
    let _server = start_blocking_server(&name, 2);
    runtime().block_on(async {
        let client = ClientOptions::new()
            .max_concurrent_calls(4)
            .connect_async_timeout(&name, WATCHDOG)
            .await
            .unwrap();
        let mut rng = Rng(0x5eed_0001);
        let (mut dropped, mut completed) = (0, 0);
        let started = Instant::now();
        let mut nonce = 0u64;
        for round in 0..600u64 {
            // One call cut short, sometimes with others running beside it.
            let len = match rng.below(4) {
                0 => 300_000, // more than the 128 KiB ring: written and read in parts
                1 => 40_000,
                _ => 16 + rng.below(200) as usize,
            };
            let delay = if rng.below(3) == 0 {
                rng.below(300) as u32
            } else {
                0
            };
            let cut = Duration::from_micros(rng.below(400));
            nonce += 1;
            let doomed = request(nonce, delay, len);
            let beside = rng.below(4) == 0;
            let others: Vec<_> = (0..if beside { 6 } else { 0 })
                .map(|_| {
                    nonce += 1;
                    let client = client.clone();
                    let request = request(nonce, 0, 16 + rng.below(3000) as usize);
                    tokio::spawn(async move {
                        let reply = client.call(&request).await.unwrap();
                        check_reply(&request, &reply);
                    })
                })
                .collect();
            // Cut short by a timer, or after a number of await points.
            let outcome = if round % 2 == 0 {
                tokio::time::timeout(cut, client.call(&doomed)).await.ok()
            } else {
                cut_after(rng.below(12) as u32, client.call(&doomed)).await
            };
            match outcome {
                Some(reply) => {
                    check_reply(&doomed, &reply.unwrap());
                    completed += 1;
                }
                None => dropped += 1,
            }
            for other in others {
                other.await.unwrap();
            }
            // The next call on the (possibly reused) connection gets its own reply.
            nonce += 1;
            let next = request(nonce, 0, 16 + (round as usize % 700));
            let reply = client.call(&next).await.unwrap();
            check_reply(&next, &reply);
        }
        eprintln!(
            "{dropped} calls dropped part-way and {completed} completed in {:?}",
            started.elapsed()
        );
        assert!(dropped > 20, "too few calls were cut short ({dropped})");
    });
}

/// Many concurrent calls, each under a random timeout, all at once: every call that completes
/// has its own reply.
#[test]
fn concurrent_calls_under_random_timeouts() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("async-cancel-many");
    let _server = start_blocking_server(&name, 2);
    runtime().block_on(async {
        let client = ClientOptions::new()
            .max_concurrent_calls(8)
            .connect_async_timeout(&name, WATCHDOG)
            .await
            .unwrap();
        let completed = Arc::new(AtomicUsize::new(0));
        for wave in 0..10u64 {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..200u64 {
                let client = client.clone();
                let completed = completed.clone();
                let mut rng = Rng(wave << 32 | i | 1);
                tasks.spawn(async move {
                    let len = if rng.below(8) == 0 {
                        200_000
                    } else {
                        16 + rng.below(900) as usize
                    };
                    let request = request(wave << 32 | i, rng.below(100) as u32, len);
                    let cut = Duration::from_micros(rng.below(20_000));
                    if let Ok(reply) = tokio::time::timeout(cut, client.call(&request)).await {
                        check_reply(&request, &reply.unwrap());
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            while let Some(joined) = tasks.join_next().await {
                joined.unwrap();
            }
            let request = request(u64::MAX - wave, 0, 64);
            check_reply(&request, &client.call(&request).await.unwrap());
        }
        eprintln!(
            "{} of 2000 calls under random timeouts completed",
            completed.load(Ordering::Relaxed)
        );
    });
}

/// A client of `name` with one connection (calls and streams one at a time).
async fn single_connection_client(name: &str) -> AsyncClient {
    ClientOptions::new()
        .max_concurrent_calls(1)
        .connect_async_timeout(name, WATCHDOG)
        .await
        .unwrap()
}

/// A task reading a stream whose items are all there already (the server filled the ring while
/// the reader slept) never waits, yet the runtime's other tasks still run between its items.
#[test]
fn an_async_stream_with_every_item_there_lets_other_tasks_run() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("async-coop");
    let _server = start_blocking_server(&name, 1);
    runtime().block_on(async {
        let client = single_connection_client(&name).await;
        let mut stream = client.call_stream(b"count:1000").await.unwrap();
        // The default ring holds about 2,000 records of 64-byte items: all 1,000 arrive meanwhile.
        std::thread::sleep(Duration::from_millis(300));
        let items = Arc::new(AtomicU64::new(0));
        let ran_at = Arc::new(AtomicU64::new(u64::MAX));
        let other = tokio::spawn({
            let (items, ran_at) = (items.clone(), ran_at.clone());
            async move { ran_at.store(items.load(Ordering::Relaxed), Ordering::Relaxed) }
        });
        let mut item = Vec::new();
        while stream.next_into(&mut item).await.unwrap() {
            assert_eq!(item_number(&item), items.load(Ordering::Relaxed));
            items.fetch_add(1, Ordering::Relaxed);
        }
        assert_eq!(items.load(Ordering::Relaxed), 1000);
        other.await.unwrap();
        let ran_at = ran_at.load(Ordering::Relaxed);
        assert!(
            ran_at < 1000,
            "the other task ran only after the stream ({ran_at})"
        );
    });
}

#[test]
fn async_streams_survive_dropped_nexts_and_cancel_when_dropped() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("async-stream");
    let _server = start_blocking_server(&name, 1);
    runtime().block_on(async {
        let client = single_connection_client(&name).await;
        // Whole streams, each `next` cut short now and then: nothing is lost or repeated.
        let mut rng = Rng(42);
        for _ in 0..20 {
            let mut stream = client.call_stream(b"count:500").await.unwrap();
            let mut expected = 0;
            let mut item = Vec::new();
            loop {
                let cut = Duration::from_micros(rng.below(50));
                match tokio::time::timeout(cut, stream.next_into(&mut item)).await {
                    Err(_) => continue,
                    Ok(Ok(true)) => {
                        assert_eq!(item_number(&item), expected);
                        expected += 1;
                    }
                    Ok(Ok(false)) => break,
                    Ok(Err(e)) => panic!("stream failed: {e:?}"),
                }
            }
            assert_eq!(expected, 500);
        }
        // Stream requests dropped after they were sent, before the stream was returned (a pause
        // after sending makes that likely): cancelled on the server too.
        let pausing = ClientOptions::new()
            .max_concurrent_calls(1)
            .__pause_before_receive(Duration::from_millis(5))
            .connect_async_timeout(&name, WATCHDOG)
            .await
            .unwrap();
        let mut dropped = 0;
        for round in 0..100u64 {
            // tokio's timers tick in milliseconds: most of these end during the pause.
            let cut = Duration::from_micros(rng.below(7000));
            if tokio::time::timeout(cut, pausing.call_stream(b"count:100000"))
                .await
                .is_err()
            {
                dropped += 1;
            }
            let request = request(round, 0, 32 + round as usize);
            check_reply(&request, &pausing.call(&request).await.unwrap());
        }
        assert!(dropped > 20, "only {dropped} stream requests were dropped");
        // Streams dropped part-way (the only connection goes on serving calls).
        for round in 0..50u64 {
            let mut stream = client.call_stream(b"count:100000").await.unwrap();
            for expected in 0..(round % 7) {
                let item = stream.next().await.unwrap().unwrap();
                assert_eq!(item_number(&item), expected);
            }
            drop(stream);
            let request = request(round, 0, 32);
            check_reply(&request, &client.call(&request).await.unwrap());
        }
    });
}

#[test]
fn async_client_outside_a_runtime_is_an_error() {
    // Polled by a runtime without tokio's context: memlink says so instead of panicking.
    let name = unique_name("async-nort");
    let result = std::thread::spawn(move || {
        use std::future::Future;
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut future = std::pin::pin!(AsyncClient::connect(&name));
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(result) => result.map(drop),
            std::task::Poll::Pending => Ok(()),
        }
    })
    .join()
    .unwrap();
    assert!(
        matches!(result, Err(Error::InvalidOptions { .. })),
        "{}",
        result.map_or_else(|e| variant(&e), |()| "Ok".into())
    );
}

// --- rpc: async server ------------------------------------------------------------------------

/// Blocking clients against a server whose handler awaits: 40 calls that each wait 300 ms are
/// answered side by side by one thread, not one after the other.
#[test]
fn blocking_clients_against_an_async_server_whose_handlers_await() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("async-server");
    let mut server = start_async_server(&name);
    let client = Arc::new(
        ClientOptions::new()
            .max_concurrent_calls(40)
            .connect_timeout(&name, WATCHDOG)
            .unwrap(),
    );
    // Quick calls of every size first (fragments both ways).
    let mut reply = Vec::new();
    for nonce in 0..300 {
        let request = request(nonce, 0, (nonce as usize * 1499) % 300_000);
        client.call_into(&request, &mut reply).unwrap();
        check_reply(&request, &reply);
    }
    assert!(matches!(
        client.call(b"panic"),
        Err(Error::HandlerPanicked { .. })
    ));
    let started = Instant::now();
    let threads: Vec<_> = (0..40u64)
        .map(|i| {
            let client = client.clone();
            std::thread::spawn(move || {
                let request = request(1000 + i, 300_000, 64);
                check_reply(&request, &client.call(&request).unwrap());
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let took = started.elapsed();
    eprintln!("40 calls whose handlers each await 300 ms took {took:?} on one server thread");
    assert!(
        took < Duration::from_secs(4),
        "handlers ran one after the other: {took:?}"
    );
    // Shutdown: the server stops, its name is free.
    drop(client);
    server.tell("stop");
    server.expect_line("stopped");
    server.wait_success();
    assert!(matches!(
        Client::connect(&name),
        Err(Error::NotRunning { .. })
    ));
    common::assert_no_leftovers(&name);
}

#[test]
fn async_client_against_async_server_a_thousand_at_once_and_sigkill() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("async-async");
    let mut server = start_async_server(&name);
    runtime().block_on(async {
        let client = ClientOptions::new()
            .max_concurrent_calls(64)
            .connect_async_timeout(&name, WATCHDOG)
            .await
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for nonce in 0..1000u64 {
            let client = client.clone();
            tasks.spawn(async move {
                let request = request(nonce, (nonce % 10) as u32 * 100, 16 + nonce as usize % 900);
                check_reply(&request, &client.call(&request).await.unwrap());
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
        // 64 calls the server has all taken (its handlers await), then SIGKILL.
        let mut tasks = tokio::task::JoinSet::new();
        for nonce in 0..64u64 {
            let client = client.clone();
            tasks.spawn(async move {
                let result = client.call(&request(nonce, 60_000_000, 16)).await;
                (result, Instant::now())
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed = Instant::now();
        server.sigkill();
        let mut last = killed;
        while let Some(joined) = tasks.join_next().await {
            let (result, at) = joined.unwrap();
            assert!(
                matches!(result, Err(Error::Disconnected { .. })),
                "{result:?}"
            );
            last = last.max(at);
        }
        let took = last.duration_since(killed);
        eprintln!("SIGKILL of an async server woke 64 pending calls with Disconnected in {took:?}");
        assert!(took < Duration::from_secs(2), "took {took:?}");
    });
    server.kill_and_reap();
    common::assert_no_leftovers(&name);
}

// --- duplex ----------------------------------------------------------------------------------------

/// A message of its own: `seq | filler`, `len` bytes (at least 8).
fn numbered(seq: u64, len: usize) -> Vec<u8> {
    let mut m = vec![0u8; len.max(8)];
    m[..8].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in m[8..].iter_mut().enumerate() {
        *b = (seq as usize ^ i) as u8;
    }
    m
}

#[test]
fn an_async_duplex_talks_to_a_blocking_one_with_cancelled_receives() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("async-duplex");
    let mut peer = ChildProcess::spawn("duplex_echo", &[&name]);
    let rt = runtime();
    rt.block_on(async {
        let chan = Arc::new(AsyncDuplex::open_timeout(&name, WATCHDOG).await.unwrap());
        peer.expect_line("paired");
        const COUNT: u64 = 600;
        let sizes = |seq: u64| match seq % 5 {
            0 => 300_000, // larger than the ring: streams through in parts
            1 => 20_000,
            _ => 8 + (seq as usize * 13) % 900,
        };
        let sender = {
            let chan = chan.clone();
            tokio::spawn(async move {
                for seq in 0..COUNT {
                    chan.send(&numbered(seq, sizes(seq))).await.unwrap();
                }
            })
        };
        // Receives cut short at random moments lose nothing: every message comes back whole
        // and in order.
        let mut rng = Rng(7);
        let mut message = Vec::new();
        let mut expected = 0;
        let mut cut_short = 0;
        while expected < COUNT {
            let cut = Duration::from_micros(rng.below(300));
            match tokio::time::timeout(cut, chan.recv_into(&mut message)).await {
                Err(_) => cut_short += 1,
                Ok(received) => {
                    received.unwrap();
                    assert_eq!(
                        message,
                        numbered(expected, sizes(expected)),
                        "message {expected}"
                    );
                    expected += 1;
                }
            }
        }
        sender.await.unwrap();
        // However fast the run was, one receive is cut short while it waits (parked, nothing
        // on its way), and the channel still works after it.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), chan.recv_into(&mut message))
                .await
                .is_err()
        );
        cut_short += 1;
        chan.send(&numbered(COUNT, 100)).await.unwrap();
        chan.recv_into(&mut message).await.unwrap();
        assert_eq!(message, numbered(COUNT, 100), "after a receive cut short");
        eprintln!("{COUNT} messages echoed, {cut_short} receives cut short");
    });
    drop(rt);
    peer.wait_success();
    common::assert_no_leftovers(&name);
}

#[test]
fn sigkill_of_the_duplex_peer_wakes_a_pending_send_and_recv() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("async-duplex-kill");
    let mut peer = ChildProcess::spawn("duplex_park", &[&name]);
    runtime().block_on(async {
        let chan = Arc::new(AsyncDuplex::open_timeout(&name, WATCHDOG).await.unwrap());
        peer.expect_line("paired");
        // Fill the ring: the peer reads nothing, so the next send waits for room.
        let mut filled = 0;
        while chan.try_send(vec![1u8; 1000]).is_ok() {
            filled += 1;
        }
        assert!(filled > 0);
        let receiving = {
            let chan = chan.clone();
            tokio::spawn(async move { (chan.recv().await, Instant::now()) })
        };
        let sending = {
            let chan = chan.clone();
            tokio::spawn(async move { (chan.send(&[2u8; 1000]).await, Instant::now()) })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!receiving.is_finished() && !sending.is_finished());
        let killed = Instant::now();
        peer.sigkill();
        let (received, received_at) = receiving.await.unwrap();
        let (sent, sent_at) = sending.await.unwrap();
        assert!(
            matches!(received, Err(Error::Disconnected { .. })),
            "{received:?}"
        );
        assert!(matches!(sent, Err(Error::Disconnected { .. })), "{sent:?}");
        let took = received_at.max(sent_at).duration_since(killed);
        eprintln!("SIGKILL woke the pending send and recv in {took:?}");
        assert!(took < Duration::from_secs(2), "took {took:?}");
        // And the channel stays closed.
        assert!(matches!(
            chan.send(b"x").await,
            Err(Error::Disconnected { .. })
        ));
    });
    peer.kill_and_reap();
}

// --- publish/subscribe ----------------------------------------------------------------------------

#[test]
fn an_async_subscriber_receives_every_sample_and_sees_the_publisher_die() {
    let _watchdog = Watchdog::arm();
    let topic = unique_name("async-sub");
    let mut publisher = ChildProcess::spawn("publisher", &[&topic]);
    publisher.expect_line("created");
    runtime().block_on(async {
        let mut subscriber = AsyncSubscriber::subscribe_timeout(&topic, WATCHDOG)
            .await
            .unwrap();
        assert_eq!(subscriber.publisher_pid(), Some(publisher.pid()));
        const COUNT: u64 = 5000;
        publisher.tell(&COUNT.to_string());
        let mut rng = Rng(99);
        let mut expected = 0;
        while expected < COUNT {
            // Receives cut short take nothing: no sample is skipped.
            let cut = Duration::from_micros(rng.below(100));
            let Ok(sample) = tokio::time::timeout(cut, subscriber.recv()).await else {
                continue;
            };
            let sample = sample.unwrap();
            assert_eq!(sample[..8], expected.to_le_bytes(), "sample {expected}");
            assert_eq!(sample.len(), 8 + (expected as usize % 200));
            expected += 1;
        }
        publisher.expect_line("published");
        let pending =
            tokio::spawn(async move { (subscriber.recv().await.map(drop), Instant::now()) });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let killed = Instant::now();
        publisher.sigkill();
        let (result, at) = pending.await.unwrap();
        assert!(
            matches!(result, Err(Error::Disconnected { .. })),
            "{result:?}"
        );
        let took = at.duration_since(killed);
        eprintln!("SIGKILL of the publisher woke the subscriber in {took:?}");
        assert!(took < Duration::from_secs(2));
    });
    publisher.kill_and_reap();
    common::assert_no_leftovers(&topic);
}

#[test]
fn the_async_callback_form_runs_for_every_sample() {
    let _watchdog = Watchdog::arm();
    let topic = unique_name("async-sub-cb");
    let mut publisher = ChildProcess::spawn("publisher", &[&topic]);
    publisher.expect_line("created");
    runtime().block_on(async {
        let subscriber = AsyncSubscriber::subscribe_timeout(&topic, WATCHDOG)
            .await
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let handler = subscriber.on_message(move |sample| {
            let tx = tx.clone();
            async move {
                let seq = sample.map(|s| u64::from_le_bytes(s[..8].try_into().unwrap()));
                let _ = tx.send(seq);
            }
        });
        publisher.tell("300");
        for expected in 0..300u64 {
            let got = tokio::time::timeout(WATCHDOG, rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.unwrap(), expected);
        }
        drop(handler);
    });
    publisher.kill_and_reap();
}

// --- synchronisation primitives -------------------------------------------------------------------

#[test]
fn async_event_waits_ping_pong_with_a_blocking_process() {
    let _watchdog = Watchdog::arm();
    let (ping_name, pong_name) = (unique_name("aping"), unique_name("apong"));
    let ping = Event::create(&ping_name, EventMode::AutoReset).unwrap();
    let pong = Event::create(&pong_name, EventMode::AutoReset).unwrap();
    let mut child = ChildProcess::spawn("event_echo", &[&ping_name, &pong_name, "300"]);
    runtime().block_on(async {
        for _ in 0..300 {
            ping.set().unwrap();
            pong.wait_async_timeout(WATCHDOG).await.unwrap();
        }
        // A wait dropped part-way consumes nothing.
        for _ in 0..50 {
            let _ = tokio::time::timeout(Duration::from_micros(300), pong.wait_async()).await;
        }
        pong.set().unwrap();
        pong.wait_async_timeout(Duration::from_secs(1))
            .await
            .unwrap();
        assert!(matches!(
            pong.wait_async_timeout(Duration::from_millis(20)).await,
            Err(Error::Timeout)
        ));
    });
    child.expect_line("done");
    child.wait_success();
    drop((ping, pong));
    common::assert_no_leftovers(&ping_name);
    common::assert_no_leftovers(&pong_name);
}

/// Waits dropped at random moments, some while units arrive, never take a unit they do not
/// return: every posted unit is acquired exactly once.
#[test]
fn dropped_async_semaphore_waits_take_nothing() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("asem");
    let sem = Arc::new(Semaphore::create(&name, 0).unwrap());
    let mut poster = ChildProcess::spawn("sem_poster", &[&name]);
    runtime().block_on(async {
        // Nothing posted: waits cut short leave the count alone.
        for i in 0..100u64 {
            let cut = Duration::from_micros(i * 37 % 2000);
            assert!(tokio::time::timeout(cut, sem.wait_async()).await.is_err());
        }
        assert_eq!(sem.value().unwrap(), 0);
        // 16 tasks wait with random timeouts while the child posts 400 units in bursts.
        let acquired = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..16u64 {
            let (sem, acquired) = (sem.clone(), acquired.clone());
            tasks.spawn(async move {
                let mut rng = Rng(t + 11);
                while acquired.load(Ordering::SeqCst) < 400 {
                    let cut = Duration::from_micros(rng.below(3000));
                    if let Ok(waited) = tokio::time::timeout(cut, sem.wait_async()).await {
                        waited.unwrap();
                        acquired.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
        for _ in 0..8 {
            poster.tell("50");
            poster.expect_line("posted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
        assert_eq!(acquired.load(Ordering::SeqCst), 400, "units acquired");
        assert_eq!(sem.value().unwrap(), 0, "units left");
    });
    poster.tell("stop");
    poster.wait_success();
    drop(sem);
    common::assert_no_leftovers(&name);
}

#[test]
fn async_lock_excludes_a_blocking_process_and_survives_dropped_waits() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("amutex");
    let segment = Segment::create(&name, 128).unwrap();
    let mutex = Mutex::create_in(&segment, 0).unwrap();
    let mut worker = ChildProcess::spawn("mutex_counter", &[&name, "2000"]);
    runtime().block_on(async {
        let mut rng = Rng(5);
        let mut done = 0;
        while done < 2000 {
            // Some lock attempts are cut short: none may leave the lock held.
            let cut = Duration::from_micros(rng.below(200));
            let Ok(lock) = tokio::time::timeout(cut, mutex.lock_async()).await else {
                continue;
            };
            let Lock::Acquired(guard) = lock.unwrap() else {
                panic!("nobody died")
            };
            let value = read_counter(&segment);
            segment
                .write(COUNTER_AT, &(value + 1).to_le_bytes())
                .unwrap();
            guard.unlock().unwrap();
            done += 1;
        }
    });
    worker.expect_line("done");
    worker.wait_success();
    assert_eq!(read_counter(&segment), 4000, "lost updates");
    assert!(
        mutex.try_lock().unwrap().is_some(),
        "the lock was left held"
    );
}

#[test]
fn async_lock_gets_owner_died_when_the_holder_is_killed() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("amutex-died");
    let mutex = Mutex::create(&name).unwrap();
    let mut holder = ChildProcess::spawn("mutex_hold_and_park", &[&name]);
    holder.expect_line("locked");
    runtime().block_on(async {
        assert!(matches!(
            mutex.lock_async_timeout(Duration::from_millis(30)).await,
            Err(Error::Timeout)
        ));
        for i in 0..20u64 {
            let cut = Duration::from_micros(i * 500);
            assert!(tokio::time::timeout(cut, mutex.lock_async()).await.is_err());
        }
        let killed = Instant::now();
        holder.sigkill();
        let lock = mutex.lock_async_timeout(WATCHDOG).await.unwrap();
        eprintln!(
            "the async lock was handed on {:?} after the holder's SIGKILL",
            killed.elapsed()
        );
        let Lock::OwnerDied(recovering) = lock else {
            panic!("owner death went unreported")
        };
        recovering.make_consistent().unwrap().unlock().unwrap();
    });
    holder.kill_and_reap();
    assert!(matches!(mutex.try_lock().unwrap(), Some(Lock::Acquired(_))));
    drop(mutex);
    common::assert_no_leftovers(&name);
}

#[test]
fn async_waits_are_send() {
    fn send<T: Send>(_: &T) {}
    let name = unique_name("asend");
    let sem = Semaphore::create(&name, 1).unwrap();
    let event = Event::create(&unique_name("asend-ev"), EventMode::AutoReset).unwrap();
    let mutex = Mutex::create(&unique_name("asend-mx")).unwrap();
    send(&sem.wait_async());
    send(&event.wait_async());
    send(&mutex.lock_async());
}

/// Sends cut short at random moments: a message that fits in the ring is sent whole or not at
/// all (the peer counts exactly the sends that completed, none torn); one larger than the ring
/// cut short part-way closes the channel.
#[test]
fn async_duplex_sends_cut_short_are_whole_or_nothing() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("async-duplex-send");
    let mut peer = ChildProcess::spawn("duplex_check", &[&name]);
    runtime().block_on(async {
        let chan = AsyncDuplex::open_timeout(&name, WATCHDOG).await.unwrap();
        peer.expect_line("paired");
        let mut rng = Rng(3);
        let (mut sent, mut cut_short) = (0u64, 0u64);
        for seq in 0..3000u64 {
            let message = numbered(seq, 8 + rng.below(20_000) as usize);
            let cut = Duration::from_micros(rng.below(100));
            match tokio::time::timeout(cut, chan.send(&message)).await {
                Ok(result) => {
                    result.unwrap();
                    sent += 1;
                }
                Err(_) => cut_short += 1,
            }
        }
        chan.send(b"").await.unwrap();
        peer.expect_line(&format!("received {sent}"));
        eprintln!("{sent} sends completed, {cut_short} cut short");
        assert!(cut_short > 0 && sent > 0);
    });
    peer.wait_success();

    // A message larger than the ring, cut short once part of it is out: the channel closes.
    let name = unique_name("async-duplex-torn");
    let mut peer = ChildProcess::spawn("duplex_park", &[&name]);
    runtime().block_on(async {
        let chan = AsyncDuplex::open_timeout(&name, WATCHDOG).await.unwrap();
        peer.expect_line("paired");
        let big = numbered(1, 1 << 20);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), chan.send(&big))
                .await
                .is_err()
        );
        assert!(matches!(
            chan.send(b"next").await,
            Err(Error::Disconnected { .. })
        ));
    });
    peer.kill_and_reap();
    common::assert_no_leftovers(&name);
}

// --- hostile peers and a fair share of the runtime ---------------------------------------------

/// This process's open pipe ends: `(descriptor, whether it is a write end)`.
fn pipe_ends() -> Vec<(i32, bool)> {
    let mut ends = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let is_pipe = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("pipe:"));
        let flags = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
            .ok()
            .and_then(|info| {
                let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
                u32::from_str_radix(flags.trim(), 8).ok()
            });
        if let (true, Some(flags)) = (is_pipe, flags) {
            ends.push((fd, flags & 3 == 1));
        }
    }
    ends
}

/// The pipe ends (write ends if `write`, else read ends) opened since `before` was taken: those
/// of the memlink connections made since.
fn new_pipe_ends(before: &[(i32, bool)], write: bool) -> Vec<i32> {
    pipe_ends()
        .into_iter()
        .filter(|end| !before.contains(end) && end.1 == write)
        .map(|end| end.0)
        .collect()
}

/// A descriptor a memlink object of this (child) process owns, borrowed for an attack on it.
fn borrow_fd(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    // The descriptor belongs to a memlink connection this child keeps open until it exits.
    // SAFETY: it stays open while borrowed (the child parks until it is killed).
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A duplex end that pairs, then does to its wake pipes' write ends (the ones that wake us) what
/// the parent says: `close` (replaced by /dev/null, so the pipes see their writer gone while
/// the connection's socket stays open), or `flood SIZE` (grown to SIZE bytes, then written as
/// fast as it can, forever). Args: name.
fn duplex_hostile(args: &[String]) {
    let before = pipe_ends();
    let _chan = Duplex::open_timeout(&args[0], WATCHDOG).unwrap();
    let ends = new_pipe_ends(&before, true);
    assert!(!ends.is_empty(), "no wake pipe write ends found");
    report("paired");
    let order = await_parent();
    if order == "close" {
        let null = std::fs::File::open("/dev/null").unwrap();
        for fd in ends {
            use std::os::fd::AsRawFd;
            // Its owner closes /dev/null instead of the pipe end later.
            // SAFETY: `dup2` onto a descriptor this process holds open only replaces what it names.
            let rc = unsafe { libc::dup2(null.as_raw_fd(), fd) };
            assert_eq!(rc, fd);
        }
        report("closed");
    } else if let Some(size) = order.strip_prefix("flood ") {
        let size: usize = size.parse().unwrap();
        for &fd in &ends {
            rustix::pipe::fcntl_setpipe_size(borrow_fd(fd), size).unwrap();
        }
        report("flooding");
        let chunk = vec![1u8; 64 << 10];
        loop {
            for &fd in &ends {
                let _ = rustix::io::write(borrow_fd(fd), &chunk);
            }
        }
    }
    common::park_until_killed();
}

/// H1: a peer that closes the write end of our wake pipe (but keeps the connection) ends an
/// async receive with `Disconnected`, as a blocking receive: the end of file on the pipe stays
/// readable, so taking it for "look again" would spin.
#[test]
fn an_async_receive_ends_when_the_peer_closes_its_wake_pipe() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("async-duplex-nowake");
    let mut peer = ChildProcess::spawn("duplex_hostile", &[&name]);
    let (tx, rx) = std::sync::mpsc::channel();
    let opened = name.clone();
    std::thread::spawn(move || {
        runtime().block_on(async {
            let chan = AsyncDuplex::open_timeout(&opened, WATCHDOG).await.unwrap();
            let _ = tx.send(None);
            let cpu = thread_cpu_time();
            let received = chan.recv().await.map(drop);
            let _ = tx.send(Some((received, thread_cpu_time() - cpu)));
        });
    });
    peer.expect_line("paired");
    assert!(rx.recv_timeout(WATCHDOG).unwrap().is_none());
    std::thread::sleep(Duration::from_millis(100));
    peer.tell("close");
    peer.expect_line("closed");
    let (received, cpu) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the receive did not end")
        .unwrap();
    assert!(
        matches!(received, Err(Error::Disconnected { .. })),
        "{received:?}"
    );
    eprintln!("the receive ended with Disconnected after {cpu:?} of CPU time");
    assert!(cpu < Duration::from_secs(1), "the receive spun: {cpu:?}");
    peer.kill_and_reap();
}

/// Pairs an `AsyncDuplex` with a `duplex_hostile` peer flooding its wake pipes grown to `size`
/// bytes, and waits `timeout` for a message on a current-thread runtime while a timer ticks
/// beside it. Returns how the receive ended, how long it took and the longest gap between ticks.
fn receive_beside_a_flood(size: usize, timeout: Duration) -> (Result<()>, Duration, Duration) {
    let name = unique_name("async-duplex-flood");
    let mut peer = ChildProcess::spawn("duplex_hostile", &[&name]);
    let (tx, rx) = std::sync::mpsc::channel();
    let (flooding, flood_started) = tokio::sync::oneshot::channel::<()>();
    let opened = name.clone();
    std::thread::spawn(move || {
        runtime().block_on(async {
            let chan = AsyncDuplex::open_timeout(&opened, WATCHDOG).await.unwrap();
            let _ = tx.send(None);
            flood_started.await.unwrap();
            let longest = Arc::new(AtomicUsize::new(0));
            let ticker = tokio::spawn({
                let longest = longest.clone();
                async move {
                    let mut interval = tokio::time::interval(Duration::from_millis(10));
                    let mut last = Instant::now();
                    loop {
                        interval.tick().await;
                        longest.fetch_max(last.elapsed().as_millis() as usize, Ordering::Relaxed);
                        last = Instant::now();
                    }
                }
            });
            let started = Instant::now();
            let received = chan.recv_timeout(timeout).await.map(drop);
            let took = started.elapsed();
            ticker.abort();
            let gap = Duration::from_millis(longest.load(Ordering::Relaxed) as u64);
            let _ = tx.send(Some((received, took, gap)));
        });
    });
    peer.expect_line("paired");
    assert!(rx.recv_timeout(WATCHDOG).unwrap().is_none());
    peer.tell(&format!("flood {size}"));
    peer.expect_line("flooding");
    flooding.send(()).unwrap();
    let outcome = rx
        .recv_timeout(timeout + Duration::from_secs(10))
        .expect("the receive did not end: the flood holds the runtime's thread")
        .unwrap();
    peer.kill_and_reap();
    outcome
}

/// H2: a peer writing to our wake pipe faster than we read it cannot hold the runtime's thread:
/// every turn reads a bounded amount and lets the other tasks run; a pipe grown beyond what
/// memlink allows is refused as corrupt.
#[test]
fn a_peer_flooding_the_wake_pipe_cannot_hold_the_runtime() {
    let _watchdog = Watchdog::arm();
    // As large as memlink lets a peer make it: the receive times out, the timer ticks on.
    let (received, took, gap) = receive_beside_a_flood(64 << 10, Duration::from_secs(1));
    eprintln!("beside a flood: the receive ended after {took:?}, the timer's longest gap {gap:?}");
    assert!(matches!(received, Err(Error::Timeout)), "{received:?}");
    assert!(gap < Duration::from_millis(500), "the timer waited {gap:?}");
    // Larger: refused.
    let (received, took, _) = receive_beside_a_flood(1 << 20, Duration::from_secs(5));
    assert!(
        matches!(&received, Err(Error::Corrupted { reason, .. }) if reason.contains("wake pipe")),
        "{received:?}"
    );
    assert!(took < Duration::from_secs(3), "refused after {took:?}");
}

/// A blocking server whose parent can make it write to its wake pipes' write ends (those that
/// wake its clients): `write N` writes N bytes to each in one `write`. Args: name.
fn wake_writer_server(args: &[String]) {
    let before = pipe_ends();
    let server = Server::options().workers(1).bind(&args[0]).unwrap();
    let stop = server.shutdown_handle();
    std::thread::spawn(move || {
        loop {
            let line = await_parent();
            let Some(n) = line.strip_prefix("write ") else {
                stop.shutdown();
                return;
            };
            let bytes = vec![7u8; n.parse().unwrap()];
            for fd in new_pipe_ends(&before, true) {
                let mut tries = 0;
                while rustix::io::write(borrow_fd(fd), &bytes) != Ok(bytes.len()) {
                    tries += 1;
                    assert!(
                        tries < 1000,
                        "could not write {} bytes at once",
                        bytes.len()
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            report("written");
        }
    });
    report("ready");
    server.serve_with(blocking_service, stream_service).unwrap();
}

/// An async client whose wake pipe read end is made blocking, as a peer sharing its open file
/// description can (one of another user: the received end cannot be reopened privately then,
/// which `__use_received_wake_ends` makes so here).
/// It makes one call the server takes 3 s to answer while a timer ticks on the same
/// current-thread runtime, and reports the timer's longest gap. Args: name.
fn client_with_a_blocking_wake_pipe(args: &[String]) {
    // As where the received ends cannot be reopened privately: the peer shares them.
    memlink::__use_received_wake_ends();
    let before = pipe_ends();
    runtime().block_on(async {
        let client = AsyncClient::connect_timeout(&args[0], WATCHDOG)
            .await
            .unwrap();
        for fd in new_pipe_ends(&before, false) {
            let flags = rustix::fs::fcntl_getfl(borrow_fd(fd)).unwrap();
            rustix::fs::fcntl_setfl(borrow_fd(fd), flags - rustix::fs::OFlags::NONBLOCK).unwrap();
        }
        let request = request(1, 3_000_000, 16);
        let call = {
            let request = request.clone();
            tokio::spawn(async move { client.call(&request).await })
        };
        let mut interval = tokio::time::interval(Duration::from_millis(10));
        let (started, mut last, mut longest) = (Instant::now(), Instant::now(), Duration::ZERO);
        let mut said = false;
        while !call.is_finished() {
            interval.tick().await;
            longest = longest.max(last.elapsed());
            last = Instant::now();
            if !said && started.elapsed() > Duration::from_millis(300) {
                report("waiting");
                said = true;
            }
        }
        check_reply(&request, &call.await.unwrap().unwrap());
        report(&format!("longest gap {}", longest.as_millis()));
    });
}

/// M3: a wake pipe read end whose open file description the peer shares and made blocking:
/// the peer fills it with exactly what our reads take (so that a read comes back full and the
/// next finds it empty), and still no read of ours blocks the runtime's thread.
#[test]
fn a_wake_pipe_made_blocking_by_the_peer_never_blocks_the_runtime() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("async-blocking-wake");
    let mut server = ChildProcess::spawn("wake_writer_server", &[&name]);
    server.expect_line("ready");
    let mut client = ChildProcess::spawn("client_with_a_blocking_wake_pipe", &[&name]);
    client.expect_line("waiting");
    server.tell("write 4096");
    server.expect_line("written");
    let gap: u64 = client
        .next_line()
        .strip_prefix("longest gap ")
        .unwrap()
        .parse()
        .unwrap();
    eprintln!("the client's timer's longest gap: {gap} ms");
    assert!(gap < 1000, "the client's runtime was blocked for {gap} ms");
    client.wait_success();
    server.tell("stop");
    server.wait_success();
}

/// A blocking server whose workers go on streaming after the client cancelled (as a hostile
/// server may): they never look at the request ring while a stream runs. Args: name.
fn cancel_ignoring_server(args: &[String]) {
    let server = Server::options()
        .__ignore_stream_cancels()
        .bind(&args[0])
        .unwrap();
    report("ready");
    server.serve_with(blocking_service, stream_service).unwrap();
}

/// On a client of `cancel_ignoring_server` `name`: drops a stream after its first item, then
/// makes a call (with `timeout`, if any) behind the stream's endless records; how it ended and
/// how long it took.
fn call_behind_a_cancelled_stream(name: &str, timeout: Option<Duration>) -> (Result<()>, Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let name = name.to_owned();
    std::thread::spawn(move || {
        runtime().block_on(async {
            let client = single_connection_client(&name).await;
            let mut stream = client.call_stream(b"count:1000000000").await.unwrap();
            assert_eq!(item_number(&stream.next().await.unwrap().unwrap()), 0);
            drop(stream);
            let started = Instant::now();
            let request = request(1, 0, 16);
            let result = match timeout {
                Some(timeout) => client.call_timeout(&request, timeout).await,
                None => client.call(&request).await,
            };
            let _ = tx.send((result.map(drop), started.elapsed()));
        });
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the call did not end: the stale records hold it")
}

/// H3: a server that sends endless records of a call the client cancelled (which the client
/// skips unread) cannot keep an async call going: it is taken for broken once it sent more than
/// it honestly could, and a call's timeout holds meanwhile.
#[test]
fn endless_records_of_a_cancelled_call_cannot_hold_an_async_call() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("async-stale-flood");
    let mut server = ChildProcess::spawn("cancel_ignoring_server", &[&name]);
    server.expect_line("ready");
    let (result, took) = call_behind_a_cancelled_stream(&name, None);
    eprintln!("a call behind endless stale records ended after {took:?}: {result:?}");
    assert!(
        matches!(&result, Err(Error::Corrupted { reason, .. }) if reason.contains("gave up")),
        "{result:?}"
    );
    let (result, took) = call_behind_a_cancelled_stream(&name, Some(Duration::from_millis(300)));
    eprintln!("with a timeout of 300 ms: ended after {took:?}: {result:?}");
    assert!(result.is_err(), "{result:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    server.kill_and_reap();
}

/// M4: calls dropped after their request went out, while the server's only worker is busy:
/// each is withdrawn (it never runs) and its connection serves the next call at once, instead
/// of queueing it behind the dropped call's handler.
#[test]
fn dropped_calls_that_were_withdrawn_never_run_and_hold_nothing_up() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("async-drop-withdrawn");
    let mut server = start_blocking_server(&name, 1);
    runtime().block_on(async {
        let client = ClientOptions::new()
            .max_concurrent_calls(4)
            .connect_async_timeout(&name, WATCHDOG)
            .await
            .unwrap();
        // Every connection opened first (four calls at once, each held 20 ms by the handler): a
        // doomed call below that had to open one (on tokio's blocking pool) could be cut before
        // its request left, on a loaded machine all twenty were.
        let warm: Vec<_> = (0..4u64)
            .map(|nonce| {
                let client = client.clone();
                tokio::spawn(async move { client.call(&request(200 + nonce, 20_000, 16)).await })
            })
            .collect();
        for call in warm {
            call.await.unwrap().unwrap();
        }
        // Holds the only worker for 2 s.
        let busy = {
            let client = client.clone();
            tokio::spawn(async move { client.call(&request(0, 2_000_000, 16)).await })
        };
        // Time for the worker to take that call first (the statistics count a call only once
        // answered, so there is nothing to wait for; on a loaded machine 100 ms was not always
        // enough, and a doomed call taken first runs).
        tokio::time::sleep(Duration::from_millis(500)).await;
        // 20 calls whose handler would block 2 s each, dropped while the worker is busy.
        for nonce in 1..=20 {
            let doomed = request(nonce, 2_000_000, 16);
            let cut = Duration::from_millis(20);
            assert!(
                tokio::time::timeout(cut, client.call(&doomed))
                    .await
                    .is_err()
            );
        }
        busy.await.unwrap().unwrap();
        let started = Instant::now();
        for nonce in 100..110 {
            let request = request(nonce, 0, 32);
            check_reply(&request, &client.call(&request).await.unwrap());
        }
        let took = started.elapsed();
        eprintln!("10 calls after 20 dropped ones took {took:?}");
        assert!(took < Duration::from_secs(1), "took {took:?}");
    });
    // The worker skips one withdrawn request per sweep of its connection, and the ten calls
    // above can be answered before it got to all twenty (it did, with a CPU-bound process
    // beside the test): wait for the count, bounded.
    let waited = Instant::now();
    let mut stats = memlink::rpc::server_stats(&name).unwrap();
    while stats.expired_calls < 20 && waited.elapsed() < WATCHDOG / 2 {
        std::thread::sleep(Duration::from_millis(10));
        stats = memlink::rpc::server_stats(&name).unwrap();
    }
    assert_eq!(stats.calls, 4 + 1 + 10, "the dropped calls' handlers ran");
    assert_eq!(
        stats.expired_calls, 20,
        "not every dropped call was skipped"
    );
    server.tell("stop");
    server.wait_success();
}

/// M4: calls dropped after the server claimed them (their handlers await 2 s): their
/// connections are not handed to later calls while those handlers run.
#[test]
fn dropped_calls_the_server_took_do_not_hold_up_later_calls() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("async-drop-claimed");
    let mut server = start_async_server(&name);
    runtime().block_on(async {
        let client = ClientOptions::new()
            .max_concurrent_calls(4)
            .connect_async_timeout(&name, WATCHDOG)
            .await
            .unwrap();
        for nonce in 0..20 {
            let doomed = request(nonce, 2_000_000, 16);
            let cut = Duration::from_millis(50);
            assert!(
                tokio::time::timeout(cut, client.call(&doomed))
                    .await
                    .is_err()
            );
        }
        let started = Instant::now();
        for nonce in 100..110 {
            let request = request(nonce, 0, 32);
            check_reply(&request, &client.call(&request).await.unwrap());
        }
        let took = started.elapsed();
        eprintln!("10 calls after 20 dropped ones took {took:?}");
        assert!(took < Duration::from_secs(1), "took {took:?}");
    });
    server.tell("stop");
    server.expect_line("stopped");
    server.wait_success();
}

/// A runtime whose one blocking-pool thread is busy for 3 s.
fn runtime_with_a_busy_blocking_pool() -> tokio::runtime::Runtime {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .build()
        .unwrap();
    rt.spawn_blocking(|| std::thread::sleep(Duration::from_secs(3)));
    rt
}

/// Low (a): opening a connection on tokio's blocking pool is bounded by the caller's timeout,
/// even while the pool is busy.
#[test]
fn async_opens_keep_their_timeout_while_the_blocking_pool_is_busy() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("async-open-busy");
    let limit = Duration::from_millis(200);
    let rt = runtime_with_a_busy_blocking_pool();
    rt.block_on(async {
        let started = Instant::now();
        let connected = AsyncClient::connect_timeout(&name, limit).await.map(drop);
        assert!(matches!(connected, Err(Error::Timeout)), "{connected:?}");
        let opened = AsyncDuplex::open_timeout(&name, limit).await.map(drop);
        assert!(matches!(opened, Err(Error::Timeout)), "{opened:?}");
        let subscribed = AsyncSubscriber::subscribe_timeout(&name, limit)
            .await
            .map(drop);
        assert!(matches!(subscribed, Err(Error::Timeout)), "{subscribed:?}");
        let took = started.elapsed();
        assert!(took < Duration::from_millis(2000), "took {took:?}");
    });
    rt.shutdown_background();
}

/// Low (b): a runtime without IO or without timers is an error, not a panic.
#[test]
fn async_apis_on_a_runtime_without_io_or_timers_are_an_error() {
    let name = unique_name("async-no-drivers");
    for io in [false, true] {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        if io {
            builder.enable_io();
        } else {
            builder.enable_time();
        }
        let rt = builder.build().unwrap();
        rt.block_on(async {
            let connected = AsyncClient::connect(&name).await.map(drop);
            assert!(
                matches!(&connected, Err(Error::InvalidOptions { .. })),
                "{connected:?}"
            );
            let opened = AsyncDuplex::open(&name).await.map(drop);
            assert!(
                matches!(&opened, Err(Error::InvalidOptions { .. })),
                "{opened:?}"
            );
            let subscribed = AsyncSubscriber::subscribe(&name).await.map(drop);
            assert!(
                matches!(&subscribed, Err(Error::InvalidOptions { .. })),
                "{subscribed:?}"
            );
            let served = Server::bind(&name)
                .unwrap()
                .serve_async(|request: Vec<u8>| async move { request })
                .await;
            assert!(
                matches!(&served, Err(Error::InvalidOptions { .. })),
                "{served:?}"
            );
        });
    }
}
