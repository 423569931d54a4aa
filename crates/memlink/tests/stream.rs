//! Streaming replies across real processes: long streams checked in order, backpressure from a
//! slow reader, cancellation by dropping the stream, a handler that panics or fails mid-stream, a
//! server killed mid-stream, streams of several client processes at once, and plain calls and
//! streams interleaved on one client.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    ChildProcess, WATCHDOG, Watchdog, await_parent, report, unique_name, variant, with_watchdog,
};
use memlink::{Client, Error, NotExecuted, Server, StreamSink};

#[test]
fn child_main() {
    common::run_child(&[("server", server_role), ("reader", reader_role)]);
}

// --- the test service ----------------------------------------------------------------------------

/// Item `i` of a `count:N:SIZE` stream: its index, then `SIZE - 16` bytes derived from it, then a
/// checksum of all that.
fn item(i: u64, size: usize) -> Vec<u8> {
    let mut item = i.to_le_bytes().to_vec();
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while item.len() + 8 < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        item.push(x as u8);
    }
    let sum = checksum(&item);
    item.extend_from_slice(&sum.to_le_bytes());
    item
}

fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Checks that `got` is item `i` of its stream, by its index and its own checksum.
fn check_item(i: u64, got: &[u8]) {
    assert!(got.len() >= 16, "item {i} is {} bytes", got.len());
    let (body, sum) = got.split_at(got.len() - 8);
    assert_eq!(
        u64::from_le_bytes(body[..8].try_into().unwrap()),
        i,
        "items out of order"
    );
    assert_eq!(
        sum,
        checksum(body).to_le_bytes(),
        "item {i}'s checksum is wrong"
    );
}

fn arg<T: std::str::FromStr>(parts: &[&str], at: usize) -> T {
    parts
        .get(at)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("bad request {parts:?}"))
}

/// `count:N:SIZE` sends N items; `flood` try_sends until the queue stays full and then sends
/// how many fitted; `forever[:SIZE]` sends until cancelled (and reports `cancelled`); `panic:K` and
/// `fail:K` send K items and then panic or return an error.
fn streams(request: &[u8], sink: &mut StreamSink) -> memlink::Result<()> {
    let request = std::str::from_utf8(request).unwrap();
    let parts: Vec<&str> = request.split(':').collect();
    match parts[0] {
        "count" => {
            let (n, size): (u64, usize) = (arg(&parts, 1), arg(&parts, 2));
            for i in 0..n {
                sink.send(&item(i, size))?;
            }
        }
        "flood" => {
            // Until the queue has stayed full for 50 ms: the client is not reading, so that is
            // once the ring and the queue are full.
            let mut fitted = 0u64;
            let mut full_for = 0;
            while full_for < 50 {
                match sink.try_send(&[7u8; 1024]) {
                    Ok(()) => {
                        fitted += 1;
                        full_for = 0;
                    }
                    Err(Error::Full) => {
                        full_for += 1;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => return Err(e),
                }
            }
            sink.send(format!("fitted:{fitted}").as_bytes())?;
        }
        "forever" => {
            let size = parts.get(1).map_or(256, |s| s.parse().unwrap());
            let mut i = 0;
            loop {
                match sink.send(&item(i, size)) {
                    Ok(()) => i += 1,
                    Err(Error::Cancelled) => {
                        report(&format!("cancelled after {i}"));
                        return Err(Error::Cancelled);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        "idle" => {
            // Sends one item, then waits (for up to a minute) without sending, as a handler
            // waiting for news would, until cancelled.
            sink.send(b"first")?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !sink.is_cancelled() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            return Err(Error::Cancelled);
        }
        "panic" | "fail" => {
            for i in 0..arg::<u64>(&parts, 1) {
                sink.send(&item(i, 64))?;
            }
            if parts[0] == "panic" {
                panic!("the test stream handler was asked to panic");
            }
            return Err(Error::Timeout);
        }
        other => panic!("unknown stream request {other}"),
    }
    Ok(())
}

fn echo(request: &[u8], reply: &mut Vec<u8>) {
    reply.extend_from_slice(request);
}

/// Args: name, workers, most streams at once and per user (both optional, `-` for the default),
/// then options: `lazy` (a parked worker looks again on its own only after an hour, so a lost
/// wake-up hangs instead of costing 100 ms), `slow-end` (a stream handler thread pauses between
/// giving its slot back and ending its stream), `long-grace` (shutdown waits up to an hour for calls
/// in flight).
fn server_role(args: &[String]) {
    let workers = args.get(1).and_then(|w| w.parse().ok()).unwrap_or(1);
    let mut options = Server::options().workers(workers);
    if let Some(cap) = args.get(2).and_then(|c| c.parse().ok()) {
        options = options.max_streams(cap);
    }
    if let Some(cap) = args.get(3).and_then(|c| c.parse().ok()) {
        options = options.max_streams_per_uid(cap);
    }
    if args.iter().skip(4).any(|a| a == "lazy") {
        options = options.__park_recheck(Duration::from_secs(3600));
    }
    if args.iter().skip(4).any(|a| a == "long-grace") {
        options = options.shutdown_grace(Duration::from_secs(3600));
    }
    if args.iter().skip(4).any(|a| a == "slow-end") {
        options = options.__stream_end_pause(Duration::from_millis(10));
    }
    let server = options.bind(&args[0]).unwrap();
    let stop = server.shutdown_handle();
    std::thread::spawn(move || {
        await_parent();
        stop.shutdown();
    });
    report("ready");
    server.serve_with(echo, streams).unwrap();
    report("stopped");
}

/// Args: name, items. Reads the first item, says so, waits for the parent's go, reads the rest.
fn reader_role(args: &[String]) {
    let client = Client::connect_timeout(&args[0], WATCHDOG).unwrap();
    let n: u64 = args[1].parse().unwrap();
    let mut stream = client
        .call_stream(format!("count:{n}:200").as_bytes())
        .unwrap();
    let mut buf = Vec::new();
    assert!(stream.next_into(&mut buf).unwrap());
    check_item(0, &buf);
    report("first");
    await_parent();
    let mut i = 1;
    while stream.next_into(&mut buf).unwrap() {
        check_item(i, &buf);
        i += 1;
    }
    assert_eq!(i, n);
    report(&format!("done {i}"));
}

struct TestServer {
    name: String,
    process: ChildProcess,
}

impl TestServer {
    fn start(tag: &str, workers: usize) -> Self {
        Self::start_with(tag, &[&workers.to_string()])
    }

    fn start_with(tag: &str, args: &[&str]) -> Self {
        let name = unique_name(tag);
        let mut all = vec![name.as_str()];
        all.extend_from_slice(args);
        let mut process = ChildProcess::spawn("server", &all);
        process.expect_line("ready");
        TestServer { name, process }
    }

    fn client(&self) -> Client {
        Client::connect_timeout(&self.name, WATCHDOG).unwrap()
    }

    fn stop(mut self) {
        self.process.tell("stop");
        self.process.expect_line("stopped");
        self.process.wait_success();
        common::assert_no_leftovers(&self.name);
    }
}

// --- tests ---------------------------------------------------------------------------------------

#[test]
fn a_long_stream_arrives_whole_and_in_order() {
    let _watchdog = Watchdog::arm();
    let server = TestServer::start("long", 1);
    let client = server.client();
    // 100,000 small items through the reusing reader...
    let mut stream = client.call_stream(b"count:100000:48").unwrap();
    let mut buf = Vec::new();
    let mut i = 0;
    while stream.next_into(&mut buf).unwrap() {
        check_item(i, &buf);
        i += 1;
    }
    assert_eq!(i, 100_000);
    assert!(
        !stream.next_into(&mut buf).unwrap(),
        "the end stays the end"
    );
    drop(stream);
    // ...items larger than a fragment through the iterator...
    let items: Vec<Vec<u8>> = client
        .call_stream(b"count:20:100000")
        .unwrap()
        .collect::<memlink::Result<_>>()
        .unwrap();
    assert_eq!(items.len(), 20);
    for (i, got) in items.iter().enumerate() {
        assert_eq!(got.len(), 100_000);
        check_item(i as u64, got);
    }
    // ...an empty stream, and the connection still serves plain calls.
    assert_eq!(client.call_stream(b"count:0:16").unwrap().count(), 0);
    assert_eq!(client.call(b"after").unwrap(), b"after");
    server.stop();
}

#[test]
fn a_slow_reader_holds_the_handler_back() {
    let _watchdog = Watchdog::arm();
    let server = TestServer::start("slow", 1);
    let client = server.client();
    let mut stream = client.call_stream(b"flood").unwrap();
    // Not reading: the handler fills the ring and the queue, then `try_send` says Full.
    std::thread::sleep(Duration::from_millis(300));
    let mut items = 0u64;
    let mut fitted = None;
    for got in &mut stream {
        let got = got.unwrap();
        match got.strip_prefix(b"fitted:") {
            Some(n) => fitted = Some(std::str::from_utf8(n).unwrap().parse::<u64>().unwrap()),
            None => items += 1,
        }
    }
    let fitted = fitted.expect("the handler reports how many items fitted");
    assert_eq!(items, fitted, "every item that fitted arrived");
    // A 256 KiB ring holds about 240 records of 1 KiB, the queue 1,024 more (the default), and
    // what the worker took from the queue and could not send as many again: a handler that was
    // not held back would have gone on for ever.
    println!("{fitted} items of 1 KiB fitted before the handler was held back");
    assert!(
        (1..=2400).contains(&fitted),
        "{fitted} items fitted: memory is not bounded by the ring and the queue"
    );
    server.stop();
}

/// The resident memory of process `pid`, in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn a_stalled_reader_blocks_the_handler_and_server_memory_stays_put() {
    let _watchdog = Watchdog::arm();
    let mut server = TestServer::start("rss", 1);
    let client = server.client();
    // 1 MiB items, as fast as the handler can make them, to a client that reads one and stops.
    let mut stream = client.call_stream(b"forever:1048576").unwrap();
    check_item(0, &stream.next().unwrap().unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let before = resident_bytes(server.process.pid());
    std::thread::sleep(Duration::from_millis(700));
    let after = resident_bytes(server.process.pid());
    println!(
        "server resident memory while the reader stalls: {} MiB, then {} MiB",
        before >> 20,
        after >> 20
    );
    // Unheld, the handler would have made hundreds of MiB by now; held, it waits in `send`
    // with at most its queue (4 MiB of items) and as many spare buffers: under 20 MiB in all.
    assert!(
        after < before + (48 << 20),
        "the server grew from {before} to {after} bytes while its reader stalled"
    );
    // The stream still works, in order, once the reader reads again.
    for i in 1..40 {
        check_item(i, &stream.next().unwrap().unwrap());
    }
    drop(stream);
    let line = server.process.next_line();
    assert!(line.starts_with("cancelled after"), "{line}");
    server.stop();
}

#[test]
fn dropping_a_stream_cancels_it_and_the_connection_goes_on() {
    let _watchdog = Watchdog::arm();
    let mut server = TestServer::start("cancel", 1);
    // One connection, so the next call is sure to use the cancelled stream's connection.
    let client = Client::options()
        .max_concurrent_calls(1)
        .connect_timeout(&server.name, WATCHDOG)
        .unwrap();
    for round in 0..3 {
        let mut stream = client.call_stream(b"forever").unwrap();
        let mut buf = Vec::new();
        for i in 0..(10 + round * 1000) {
            assert!(stream.next_into_timeout(&mut buf, WATCHDOG).unwrap());
            check_item(i, &buf);
        }
        drop(stream);
        let line = server.process.next_line();
        assert!(line.starts_with("cancelled after"), "{line}");
        // Items of the cancelled stream were still in the ring: the next call skips them.
        let request = format!("after {round}");
        assert_eq!(client.call(request.as_bytes()).unwrap(), request.as_bytes());
        let items: Vec<_> = client.call_stream(b"count:5:32").unwrap().collect();
        assert_eq!(items.len(), 5);
        for (i, got) in items.into_iter().enumerate() {
            check_item(i as u64, &got.unwrap());
        }
    }
    server.stop();
}

#[test]
fn a_failing_handler_ends_the_stream_with_its_error() {
    let _watchdog = Watchdog::arm();
    let server = TestServer::start("panic", 1);
    let client = Client::options()
        .max_concurrent_calls(1)
        .connect_timeout(&server.name, WATCHDOG)
        .unwrap();
    for (request, expected) in [("panic:7", "HandlerPanicked"), ("fail:3", "HandlerFailed")] {
        let mut stream = client.call_stream(request.as_bytes()).unwrap();
        let n: u64 = request[request.find(':').unwrap() + 1..].parse().unwrap();
        for i in 0..n {
            check_item(i, &stream.next().unwrap().unwrap());
        }
        let error = stream.next().unwrap().unwrap_err();
        assert_eq!(variant(&error), expected, "{error}");
        assert!(stream.next().is_none(), "nothing after the error");
        drop(stream);
        assert_eq!(client.call(b"still here").unwrap(), b"still here");
    }
    server.stop();
}

#[test]
fn streams_need_a_stream_handler() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("nostreams");
    let server = Server::bind(&name).unwrap();
    let stop = server.shutdown_handle();
    let serving = std::thread::spawn(move || server.serve(echo));
    let client = Client::connect_timeout(&name, WATCHDOG).unwrap();
    let mut stream = client.call_stream(b"count:3:16").unwrap();
    let error = stream.next().unwrap().unwrap_err();
    assert!(matches!(error, Error::StreamsNotServed { .. }), "{error}");
    drop(stream);
    // A stream that has nothing to say yet times out and goes on.
    let mut stream = client.call_stream(b"nothing yet").unwrap();
    let mut buf = Vec::new();
    let error = stream.next_into_timeout(&mut buf, Duration::ZERO);
    assert!(
        matches!(
            error,
            Err(Error::Timeout) | Err(Error::StreamsNotServed { .. })
        ),
        "{error:?}"
    );
    if error.is_err_and(|e| matches!(e, Error::Timeout)) {
        let error = stream.next_into_timeout(&mut buf, WATCHDOG).unwrap_err();
        assert!(matches!(error, Error::StreamsNotServed { .. }), "{error}");
    }
    drop(stream);
    assert_eq!(client.call(b"plain").unwrap(), b"plain");
    stop.shutdown();
    serving.join().unwrap().unwrap();
    common::assert_no_leftovers(&name);
}

#[test]
fn a_server_killed_mid_stream_is_reported_promptly() {
    let _watchdog = Watchdog::arm();
    let mut server = TestServer::start("killed", 1);
    let client = server.client();
    let mut stream = client.call_stream(b"forever").unwrap();
    for i in 0..1000 {
        check_item(i, &stream.next().unwrap().unwrap());
    }
    let killed = Instant::now();
    server.process.sigkill();
    let mut after = 0u64;
    let error = loop {
        match stream.next() {
            Some(Ok(got)) => {
                check_item(1000 + after, &got);
                after += 1;
            }
            Some(Err(e)) => break e,
            None => panic!("a killed server's stream ended cleanly"),
        }
    };
    let took = killed.elapsed();
    println!("Disconnected {took:?} after the SIGKILL ({after} items were still in the ring)");
    assert!(matches!(error, Error::Disconnected { .. }), "{error}");
    assert!(stream.next().is_none());
    drop(stream);
    server.process.kill_and_reap();
    common::assert_no_leftovers(&server.name);
}

/// Waits until every thread of process `pid` is stopped (state `T` in `/proc`).
fn wait_until_stopped(pid: u32) {
    let stopped = || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().all(|task| {
            std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                // The state follows the command name, which is in parentheses.
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
            })
        })
    };
    while !stopped() {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A stream whose server dies before taking its request did not run, and says so, as a call
/// does: the client withdraws the request when it finds the server gone.
#[test]
fn a_stream_whose_server_died_before_taking_its_request_was_not_executed() {
    let _watchdog = Watchdog::arm();
    let mut server = TestServer::start("stopped-before", 1);
    let client = server.client();
    assert_eq!(client.call(b"hello").unwrap(), b"hello");
    // Stopped, the server cannot take the request; killed, it never will.
    let pid = rustix::process::Pid::from_raw(server.process.pid() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    // The signal takes effect as each thread next enters the kernel or is interrupted: a worker
    // spinning on the other CPU could still take the request in between. Wait until every
    // thread says it is stopped.
    wait_until_stopped(server.process.pid());
    let mut stream = client.call_stream(b"count:10:100").unwrap();
    server.process.sigkill();
    match stream.next() {
        Some(Err(Error::NotExecuted {
            reason: NotExecuted::ServerGone,
            ..
        })) => {}
        other => panic!("expected NotExecuted(ServerGone), got {other:?}"),
    }
    assert!(stream.next().is_none());
    drop(stream);
    server.process.kill_and_reap();
    common::assert_no_leftovers(&server.name);
}

#[test]
fn streams_of_several_clients_progress_side_by_side() {
    let _watchdog = Watchdog::arm();
    let server = TestServer::start("side", 1);
    // Each reader takes one item and then waits for us: if one stream had to finish before the
    // next one started, the later readers would never get their first item.
    let mut readers: Vec<ChildProcess> = (0..4)
        .map(|_| ChildProcess::spawn("reader", &[&server.name, "30000"]))
        .collect();
    for reader in &mut readers {
        reader.expect_line("first");
    }
    for reader in &mut readers {
        reader.tell("go");
    }
    for reader in &mut readers {
        reader.expect_line("done 30000");
        reader.wait_success();
    }
    server.stop();
}

#[test]
fn plain_calls_and_streams_interleave_on_one_client() {
    let _watchdog = Watchdog::arm();
    let server = TestServer::start("mixed", 2);
    let client = Arc::new(server.client());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                for round in 0..60u64 {
                    let request = format!("thread {t} round {round}");
                    assert_eq!(client.call(request.as_bytes()).unwrap(), request.as_bytes());
                    let n = 1 + (round * 37 + t) % 300;
                    let mut stream = client
                        .call_stream(format!("count:{n}:40").as_bytes())
                        .unwrap();
                    // Every third stream is dropped half-read.
                    let read = if round % 3 == 0 { n / 2 } else { n };
                    for i in 0..read {
                        check_item(i, &stream.next().unwrap().unwrap());
                    }
                    if read == n {
                        assert!(stream.next().is_none());
                    }
                }
            })
        })
        .collect();
    with_watchdog("mixed calls and streams", move || {
        for thread in threads {
            thread.join().unwrap();
        }
    });
    server.stop();
}

#[test]
fn a_client_breaking_the_stream_protocol_loses_only_its_connection() {
    let _watchdog = Watchdog::arm();
    let server = TestServer::start("hostile", 1);
    let client = Client::options()
        .max_concurrent_calls(1)
        .connect_timeout(&server.name, WATCHDOG)
        .unwrap();
    const STREAM_REQUEST: u32 = 0x200;
    const CANCEL: u32 = 0x400;
    for (flags, call_id, what) in [
        (CANCEL, 99, "a cancel for a call never made"),
        (
            CANCEL | STREAM_REQUEST,
            1,
            "a cancel that is also a request",
        ),
        (0x800, 1, "an unknown flag"),
        (0x8000 | CANCEL, 1, "a cancel with an unknown flag"),
    ] {
        // A stream first, so that the connection has a current call (its id is 1).
        assert_eq!(
            client.call_stream(b"count:2:16").unwrap().count(),
            2,
            "{what}"
        );
        client
            .__push_raw_request(flags, call_id)
            .unwrap_or_else(|e| panic!("the server kept a connection sending {what}: {e}"));
        // The server still serves, this client on a fresh connection included.
        assert_eq!(client.call(b"next").unwrap(), b"next", "{what}");
    }
    // A cancel that crosses the end of its stream is harmless.
    let mut stream = client.call_stream(b"count:3:16").unwrap();
    for i in 0..3 {
        check_item(i, &stream.next().unwrap().unwrap());
    }
    drop(stream); // the end was in the ring but not read: a cancel goes out
    assert_eq!(client.call(b"after").unwrap(), b"after");
    server.stop();
}

#[test]
fn streams_over_the_cap_are_refused_and_the_connection_goes_on() {
    let _watchdog = Watchdog::arm();
    // The server's cap, then the per-user cap.
    streams_over_a_cap(&["1", "1"]);
    streams_over_a_cap(&["1", "8", "1"]);
}

#[test]
fn a_stream_that_ended_gives_its_place_back_before_its_end_arrives() {
    let _watchdog = Watchdog::arm();
    // One stream at a time: each stream starts right after the previous one's end was read,
    // with no retry, so a slot given back after the end would show as ServerFull (surely so,
    // with the handler thread pausing between the two).
    let server = TestServer::start_with("end-slot", &["1", "1", "-", "slow-end"]);
    let client = server.client();
    for round in 0..20 {
        match client
            .call_stream(b"count:2:16")
            .unwrap()
            .collect::<memlink::Result<Vec<_>>>()
        {
            Ok(items) => assert_eq!(items.len(), 2),
            Err(e) => panic!("round {round}: {e}"),
        }
    }
    server.stop();
}

fn streams_over_a_cap(server_args: &[&str]) {
    let mut server = TestServer::start_with("cap", server_args);
    let client = server.client();
    let mut first = client.call_stream(b"forever").unwrap();
    check_item(0, &first.next().unwrap().unwrap());
    let mut second = client.call_stream(b"count:3:16").unwrap();
    let error = second.next().unwrap().unwrap_err();
    assert!(matches!(error, Error::ServerFull { max: 1, .. }), "{error}");
    drop(second);
    assert_eq!(
        client.call(b"plain calls go on").unwrap(),
        b"plain calls go on"
    );
    drop(first);
    let line = server.process.next_line();
    assert!(line.starts_with("cancelled after"), "{line}");
    // The cancelled handler gives its place back once it has returned, which is after its report:
    // hence the retry. (A stream that ended gives its place back before the client can see the
    // end, with no retry needed: see `a_stream_that_ended_gives_its_place_back_...`.)
    let deadline = Instant::now() + WATCHDOG;
    loop {
        match client
            .call_stream(b"count:3:16")
            .unwrap()
            .collect::<memlink::Result<Vec<_>>>()
        {
            Ok(items) => {
                assert_eq!(items.len(), 3);
                break;
            }
            Err(Error::ServerFull { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("{e}"),
        }
    }
    server.stop();
}

#[test]
fn skipping_a_cancelled_streams_records_wakes_a_waiting_server() {
    let _watchdog = Watchdog::arm();
    // The worker does not look again on its own: if skipping the cancelled stream's records did
    // not wake it, the call after the cancel would wait for ever (for 100 ms in production).
    let mut server = TestServer::start_with("stale-wake", &["1", "-", "-", "lazy"]);
    // Each call reads its reply only once the worker has surely parked waiting for room.
    let client = Client::options()
        .max_concurrent_calls(1)
        .__pause_before_receive(Duration::from_millis(50))
        .connect_timeout(&server.name, WATCHDOG)
        .unwrap();
    let request = b"after the cancel".to_vec();
    for round in 0..6 {
        let mut stream = client.call_stream(b"forever:16").unwrap();
        check_item(0, &stream.next().unwrap().unwrap());
        // Let the handler fill the ring and its queue behind us (the test holds either way).
        std::thread::sleep(Duration::from_millis(20));
        drop(stream);
        let line = server.process.next_line();
        assert!(line.starts_with("cancelled after"), "{line}");
        if round % 2 == 0 {
            // A plain call's reply behind the stale records.
            match client.call_timeout(&request, Duration::from_secs(5)) {
                Ok(reply) => assert!(reply == request, "round {round}: wrong reply"),
                Err(e) => panic!("round {round}: the call after a cancel stalled: {e}"),
            }
        } else {
            // A stream's first item behind them.
            let mut next = client.call_stream(b"count:2:32").unwrap();
            let mut item = Vec::new();
            for i in 0..2 {
                match next.next_into_timeout(&mut item, Duration::from_secs(5)) {
                    Ok(true) => check_item(i, &item),
                    other => panic!("round {round}: the stream after a cancel stalled: {other:?}"),
                }
            }
            assert!(!next.next_into_timeout(&mut item, WATCHDOG).unwrap());
        }
    }
    server.stop();
}

#[test]
fn shutdown_cancels_an_idle_stream_at_once() {
    let _watchdog = Watchdog::arm();
    // An hour of grace: were the stream waited for, the server would not stop before the
    // watchdog fires.
    let mut server = TestServer::start_with("stop-stream", &["1", "-", "-", "long-grace"]);
    let client = server.client();
    let mut stream = client.call_stream(b"idle").unwrap();
    assert_eq!(stream.next().unwrap().unwrap(), b"first");
    server.process.tell("stop");
    server.process.expect_line("stopped");
    server.process.wait_success();
    let error = stream
        .next_into_timeout(&mut Vec::new(), WATCHDOG)
        .unwrap_err();
    assert!(matches!(error, Error::Disconnected { .. }), "{error}");
    drop(stream);
    common::assert_no_leftovers(&server.name);
}

#[test]
fn a_thread_whose_streams_hold_every_connection_is_told_instead_of_waiting() {
    let _watchdog = Watchdog::arm();
    let mut server = TestServer::start("held", 1);
    let client = Client::options()
        .max_concurrent_calls(2)
        .connect_timeout(&server.name, WATCHDOG)
        .unwrap();
    let mut first = client.call_stream(b"forever").unwrap();
    let mut second = client.call_stream(b"forever").unwrap();
    check_item(0, &first.next().unwrap().unwrap());
    check_item(0, &second.next().unwrap().unwrap());
    let error = client.call(b"a call").unwrap_err();
    assert!(
        matches!(error, Error::StreamsHeld { held: 2, .. }),
        "{error}"
    );
    let error = client.call_stream(b"count:1:16").unwrap_err();
    assert!(
        matches!(error, Error::StreamsHeld { held: 2, .. }),
        "{error}"
    );
    drop(second);
    let line = server.process.next_line();
    assert!(line.starts_with("cancelled after"), "{line}");
    // One connection is free again: calls go through while the first stream stays open.
    assert_eq!(client.call(b"a call").unwrap(), b"a call");
    check_item(1, &first.next().unwrap().unwrap());
    drop(first);
    let line = server.process.next_line();
    assert!(line.starts_with("cancelled after"), "{line}");
    server.stop();
}

#[test]
fn call_stream_timeout_gives_up_when_no_connection_frees() {
    let _watchdog = Watchdog::arm();
    let mut server = TestServer::start("stream-timeout", 1);
    let client = Client::options()
        .max_concurrent_calls(1)
        .connect_timeout(&server.name, WATCHDOG)
        .unwrap();
    let (opened, wait_opened) = std::sync::mpsc::channel();
    let (release, wait_release) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        // Another thread holds the only connection with a stream (so this is no deadlock of
        // ours: StreamsHeld does not apply, and only the timeout ends the wait).
        let client = &client;
        let holder = scope.spawn(move || {
            let mut stream = client.call_stream(b"forever").unwrap();
            check_item(0, &stream.next().unwrap().unwrap());
            opened.send(()).unwrap();
            let _ = wait_release.recv_timeout(WATCHDOG);
        });
        wait_opened.recv_timeout(WATCHDOG).unwrap();
        let error = client
            .call_stream_timeout(b"count:1:16", Duration::from_millis(50))
            .unwrap_err();
        // Its request never left: not executed.
        assert!(
            matches!(
                error,
                Error::NotExecuted {
                    reason: memlink::NotExecuted::TimedOut,
                    ..
                }
            ),
            "{error}"
        );
        release.send(()).unwrap();
        holder.join().unwrap();
    });
    let line = server.process.next_line();
    assert!(line.starts_with("cancelled after"), "{line}");
    let items: Vec<_> = client
        .call_stream_timeout(b"count:3:16", WATCHDOG)
        .unwrap()
        .collect();
    assert_eq!(items.len(), 3);
    server.stop();
}

/// Thread ids of the process's stream handler threads.
fn stream_threads(pid: u32) -> Vec<u64> {
    let mut tids = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == "memlink-stream" {
            tids.extend(
                task.file_name()
                    .to_str()
                    .and_then(|t| t.parse::<u64>().ok()),
            );
        }
    }
    tids
}

#[test]
fn streams_started_and_cancelled_in_a_loop_reuse_one_handler_thread() {
    let _watchdog = Watchdog::arm();
    // One stream slot: a stream can start only once the previous one's thread gave it back, and
    // by then that thread waits for the next stream.
    let mut server = TestServer::start_with("reuse", &["1", "1"]);
    let client = server.client();
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..20 {
        let deadline = Instant::now() + WATCHDOG;
        let mut stream = loop {
            let mut stream = client.call_stream(b"forever").unwrap();
            match stream.next().unwrap() {
                Ok(first) => {
                    check_item(0, &first);
                    break stream;
                }
                // The cancelled handler has not returned yet.
                Err(Error::ServerFull { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("round {round}: {e}"),
            }
        };
        // The handler is running (it sends for ever): its thread is there.
        seen.extend(stream_threads(server.process.pid()));
        check_item(1, &stream.next().unwrap().unwrap());
        drop(stream);
        let line = server.process.next_line();
        assert!(line.starts_with("cancelled after"), "{line}");
    }
    assert_eq!(seen.len(), 1, "stream handler threads seen: {seen:?}");
    server.stop();
}
