//! What a service built on request/response needs, across real processes (issue 11): whether a
//! failed call ran, handlers that fail or refuse, who is calling, deadlines and calls that do
//! not wait, typed messages, and the server's statistics and lifecycle traces.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{ChildProcess, WATCHDOG, await_parent, report, unique_name, variant};
use memlink::rpc::{CallContext, DecodeLimits, HandlerError, server_stats};
use memlink::{Client, ClientOptions, Error, NotExecuted, Server};

#[test]
fn child_main() {
    common::run_child(&[
        ("api_server", api_server),
        ("caller", caller),
        ("call_and_report", call_and_report),
        ("typed_server", typed_server),
        ("tree_server", tree_server),
        ("words_server", words_server),
        ("traced_server", traced_server),
        ("everyone_server", everyone_server),
        ("nobody_stats", nobody_stats),
    ]);
}

// --- the test service ----------------------------------------------------------------------------

/// Calls of `record` the handler ran.
static RECORDED: AtomicU64 = AtomicU64::new(0);

/// `whoami` (caller pid, uid, connection id, and whether a deadline came), `fail`, `sleep:MS`,
/// `record` / `count` (how many `record`s ran), `panic`, anything else echoed. Calls from
/// `refused_pid` are refused.
fn api_handler(
    refused_pid: u32,
) -> impl Fn(&CallContext, &[u8], &mut Vec<u8>) -> Result<(), HandlerError> + Send + Sync {
    move |call: &CallContext, request: &[u8], reply: &mut Vec<u8>| {
        if call.caller_pid() == refused_pid {
            return Err(HandlerError::refused(format!(
                "pid {} may not call",
                call.caller_pid()
            )));
        }
        if let Some(ms) = request.strip_prefix(b"sleep:") {
            let ms: u64 = std::str::from_utf8(ms).unwrap().parse().unwrap();
            std::thread::sleep(Duration::from_millis(ms));
            reply.extend_from_slice(b"slept");
            return Ok(());
        }
        match request {
            b"whoami" => {
                let left = call
                    .time_left()
                    .map_or("none".to_owned(), |left| left.as_millis().to_string());
                let text = format!(
                    "{} {} {} {} {}",
                    call.caller_pid(),
                    call.caller_uid(),
                    call.connection_id(),
                    left,
                    call.deadline().is_some()
                );
                reply.extend_from_slice(text.as_bytes());
            }
            b"fail" => {
                return Err(HandlerError::new("no such account").with_data(*b"E404"));
            }
            b"record" => {
                RECORDED.fetch_add(1, Ordering::SeqCst);
                reply.extend_from_slice(b"recorded");
            }
            b"record-then-sleep" => {
                RECORDED.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(300));
                reply.extend_from_slice(b"recorded");
            }
            b"count" => reply.extend_from_slice(&RECORDED.load(Ordering::SeqCst).to_le_bytes()),
            b"panic" => panic!("the test handler was asked to panic"),
            other => reply.extend_from_slice(other),
        }
        Ok(())
    }
}

// --- child roles -------------------------------------------------------------------------------

/// Serves until its stdin closes. Args: name, workers, pid to refuse (0: none).
fn api_server(args: &[String]) {
    let workers = args[1].parse().unwrap();
    let refused_pid = args[2].parse().unwrap();
    let server = Server::options().workers(workers).bind(&args[0]).unwrap();
    let stop = server.shutdown_handle();
    std::thread::spawn(move || {
        await_parent();
        stop.shutdown();
    });
    report("ready");
    // Streams answer with who asked for them.
    let streams = |_request: &[u8], sink: &mut memlink::StreamSink| {
        let who = *sink.context();
        let text = format!(
            "{} {} {}",
            who.caller_pid(),
            who.caller_uid(),
            who.connection_id()
        );
        sink.send(text.as_bytes())
    };
    server
        .serve_calls_with(api_handler(refused_pid), streams)
        .unwrap();
    report("stopped");
}

/// Makes one call and reports its outcome. Args: name, request.
fn caller(args: &[String]) {
    let client = Client::connect(&args[0]).unwrap();
    match client.call(args[1].as_bytes()) {
        Ok(reply) => report(&format!("ok {}", String::from_utf8_lossy(&reply))),
        Err(e) => report(&format!("error {}", variant(&e))),
    }
}

/// Connects, says so, and on the parent's word makes one call and reports its outcome (and
/// whether it says it did not run). Args: name, request.
fn call_and_report(args: &[String]) {
    let client = Client::connect(&args[0]).unwrap();
    report("connected");
    await_parent();
    match client.call(args[1].as_bytes()) {
        Ok(reply) => report(&format!("ok {}", String::from_utf8_lossy(&reply))),
        Err(Error::NotExecuted { reason, .. }) => report(&format!("not executed {reason:?}")),
        Err(e) => report(&format!("error {}", variant(&e))),
    }
}

/// `api_server` logging its connections' lifecycle to a file. Args: name, file, level.
fn traced_server(args: &[String]) {
    let file = std::fs::File::create(&args[1]).unwrap();
    let level = match args[2].as_str() {
        "trace" => tracing::Level::TRACE,
        _ => tracing::Level::DEBUG,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .init();
    api_server(&[args[0].clone(), "1".into(), "0".into()]);
}

/// Typed messages: adds an `Add`, fails on overflow. Args: name.
fn typed_server(args: &[String]) {
    let server = Server::bind(&args[0]).unwrap();
    let stop = server.shutdown_handle();
    std::thread::spawn(move || {
        await_parent();
        stop.shutdown();
    });
    report("ready");
    server
        .serve_calls(memlink::rpc::typed(|call: &CallContext, add: Add| {
            let sum = add
                .a
                .checked_add(add.b)
                .ok_or_else(|| HandlerError::new("overflow").with_data(*b"OVF"))?;
            Ok(Sum {
                sum,
                caller: call.caller_pid(),
                note: format!("{} + {}", add.a, add.b),
            })
        }))
        .unwrap();
    report("stopped");
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Sum {
    sum: i64,
    caller: u32,
    note: String,
}

/// A typed server of a recursive request type: answers a `Tree`'s depth. Args: name.
fn tree_server(args: &[String]) {
    let server = Server::bind(&args[0]).unwrap();
    let stop = server.shutdown_handle();
    std::thread::spawn(move || {
        await_parent();
        stop.shutdown();
    });
    report("ready");
    server
        .serve_calls(memlink::rpc::typed(|_call: &CallContext, tree: Tree| {
            let (mut depth, mut at) = (0u64, &tree);
            while let Tree::Node(child) = at {
                depth += 1;
                at = child;
            }
            Ok(depth)
        }))
        .unwrap();
    report("stopped");
}

/// A typed server of `Vec<String>`: answers how many words came. Args: name, and the most
/// bytes the decoded elements may take (`default`: the default limits).
fn words_server(args: &[String]) {
    let server = Server::bind(&args[0]).unwrap();
    let stop = server.shutdown_handle();
    std::thread::spawn(move || {
        await_parent();
        stop.shutdown();
    });
    let limits = match args[1].as_str() {
        "default" => DecodeLimits::new(),
        bytes => DecodeLimits::new().max_element_bytes(bytes.parse().unwrap()),
    };
    report("ready");
    server
        .serve_calls(memlink::rpc::typed_with_limits(
            |_call: &CallContext, words: Vec<String>| Ok(words.len() as u64),
            limits,
        ))
        .unwrap();
    report("stopped");
}

/// A recursive type, and one with elements that take no bytes: postcard alone decodes a hostile
/// `Tree` until the stack overflows, or loops for ages.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum Tree {
    Leaf,
    Node(Box<Tree>),
    Units(Vec<()>),
}

fn nested(levels: usize) -> Tree {
    (0..levels).fold(Tree::Leaf, |tree, _| Tree::Node(Box::new(tree)))
}

/// Bytes that postcard writes as they are (a tuple of `u8`s has no length prefix): lets a typed
/// call send anything.
struct Raw(Vec<u8>);

impl serde::Serialize for Raw {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut tuple = s.serialize_tuple(self.0.len())?;
        for byte in &self.0 {
            tuple.serialize_element(byte)?;
        }
        tuple.end()
    }
}

/// Millions of `Node` tags: a `Tree` nested far deeper than any stack holds.
fn deep_tree_bytes() -> Vec<u8> {
    let mut bytes = vec![1u8; 8 << 20];
    bytes.push(0);
    bytes
}

/// A `Vec<String>` of `count` empty strings: a byte each on the wire, 24 decoded.
fn empty_strings_bytes(count: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut n = count;
    while n >= 0x80 {
        bytes.push((n as u8) | 0x80);
        n >>= 7;
    }
    bytes.push(n as u8);
    bytes.resize(bytes.len() + count as usize, 0);
    bytes
}

/// A `Tree::Units` of 2^64 - 1 elements (a 10-byte varint), none of which takes a byte.
fn endless_units_bytes() -> Vec<u8> {
    let mut bytes = vec![2u8];
    bytes.extend([0xff; 9]);
    bytes.push(0x01);
    bytes
}

// --- helpers -----------------------------------------------------------------------------------

fn start(name: &str, workers: usize, refused_pid: u32) -> ChildProcess {
    let mut server = ChildProcess::spawn(
        "api_server",
        &[name, &workers.to_string(), &refused_pid.to_string()],
    );
    server.expect_line("ready");
    server
}

fn stop(mut server: ChildProcess) {
    server.tell("stop");
    server.expect_line("stopped");
    server.wait_success();
}

fn count(client: &Client) -> u64 {
    u64::from_le_bytes(client.call(b"count").unwrap().try_into().unwrap())
}

fn whoami(client: &Client) -> Vec<String> {
    let reply = client.call(b"whoami").unwrap();
    String::from_utf8(reply)
        .unwrap()
        .split(' ')
        .map(str::to_owned)
        .collect()
}

fn our_uid() -> String {
    rustix::process::geteuid().as_raw().to_string()
}

// --- tests -------------------------------------------------------------------------------------

#[test]
fn a_handler_error_or_refusal_reaches_the_client_as_such_and_keeps_the_connection() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("handler-errors");
    // This process's calls are refused; a child's are not.
    let server = start(&name, 1, std::process::id());
    let mut other = ChildProcess::spawn("caller", &[&name, "fail"]);
    // The child's call fails with the handler's own error, not a transport error.
    assert_eq!(other.next_line(), "error HandlerFailed");
    other.wait_success();
    let mut other = ChildProcess::spawn("caller", &[&name, "hello"]);
    other.expect_line("ok hello");
    other.wait_success();

    let client = Client::connect(&name).unwrap();
    match client.call(b"hello") {
        Err(Error::CallRefused { reason, .. }) => {
            assert_eq!(&*reason, format!("pid {} may not call", std::process::id()))
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The refusal did not cost the connection: the same one answers again (a refusal again).
    assert!(matches!(
        client.call(b"again"),
        Err(Error::CallRefused { .. })
    ));
    stop(server);

    let name = unique_name("handler-fails");
    let server = start(&name, 1, 0);
    let client = Client::connect(&name).unwrap();
    let connection = whoami(&client)[2].clone();
    match client.call(b"fail") {
        Err(Error::HandlerFailed { reason, data, .. }) => {
            assert_eq!(reason, "no such account");
            assert_eq!(&*data, b"E404");
        }
        other => panic!("expected the handler's error, got {other:?}"),
    }
    assert!(matches!(
        client.call(b"panic"),
        Err(Error::HandlerPanicked { .. })
    ));
    // Same connection after both: errors of the handler are not transport failures.
    assert_eq!(whoami(&client)[2], connection);
    stop(server);
}

#[test]
fn the_handler_knows_who_calls_on_which_connection_and_until_when() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("context");
    let server = start(&name, 2, 0);
    let client = Client::connect(&name).unwrap();
    let me = whoami(&client);
    assert_eq!(me[0], std::process::id().to_string(), "caller pid");
    assert_eq!(me[1], our_uid(), "caller uid");
    assert_eq!((me[3].as_str(), me[4].as_str()), ("none", "false"));
    // Another client has another connection.
    let other = Client::connect(&name).unwrap();
    assert_ne!(whoami(&other)[2], me[2], "connection ids");
    // A timeout travels with the call.
    let reply = client.call_timeout(b"whoami", WATCHDOG).unwrap();
    let fields: Vec<String> = String::from_utf8(reply)
        .unwrap()
        .split(' ')
        .map(str::to_owned)
        .collect();
    let left: u64 = fields[3].parse().unwrap();
    assert!(
        left > 0 && left <= WATCHDOG.as_millis() as u64,
        "time left {left} ms"
    );
    assert_eq!(fields[4], "true");
    // A stream's handler knows who asked too.
    let item = client.call_stream(b"who").unwrap().next().unwrap().unwrap();
    let who = String::from_utf8(item).unwrap();
    assert!(
        who.starts_with(&format!("{} {} ", std::process::id(), our_uid())),
        "{who}"
    );
    // A client's default timeout travels too.
    let timed = ClientOptions::new()
        .call_timeout(Duration::from_secs(30))
        .connect(&name)
        .unwrap();
    let left: u64 = whoami(&timed)[3].parse().unwrap();
    assert!(left > 0 && left <= 30_000, "time left {left} ms");
    // A timeout beyond what the protocol carries is no deadline at all, not a broken call.
    let forever = Duration::from_secs(1_000 * 365 * 86_400);
    for _ in 0..3 {
        let reply = client.call_timeout(b"whoami", forever).unwrap();
        assert!(String::from_utf8(reply).unwrap().ends_with(" none false"));
    }
    stop(server);
}

#[test]
fn a_call_that_times_out_before_the_server_takes_it_did_not_run_and_never_will() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("deadline");
    let server = start(&name, 1, 0);
    let client = Arc::new(Client::connect(&name).unwrap());
    // The only worker is busy for a while...
    let busy = {
        let client = client.clone();
        std::thread::spawn(move || client.call(b"sleep:400"))
    };
    std::thread::sleep(Duration::from_millis(50));
    // ...so a call that gives up meanwhile was never taken: not executed, and it never runs
    // (the worker skips it or finds its connection gone).
    let late = Client::connect(&name).unwrap();
    match late.call_timeout(b"record", Duration::from_millis(50)) {
        Err(Error::NotExecuted {
            reason: NotExecuted::TimedOut,
            ..
        }) => {}
        other => panic!("expected NotExecuted(TimedOut), got {other:?}"),
    }
    assert_eq!(busy.join().unwrap().unwrap(), b"slept");
    assert_eq!(count(&late), 0, "the abandoned call ran");

    // A call whose handler is already running when the timeout ends may have run: Timeout
    // (and here it did).
    match late.call_timeout(b"record-then-sleep", Duration::from_millis(50)) {
        Err(Error::Timeout) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
    common::with_watchdog("the call that timed out to have run", {
        let client = client.clone();
        move || {
            while count(&client) != 1 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    // The client goes on (on a fresh connection).
    assert_eq!(late.call(b"hi").unwrap(), b"hi");
    stop(server);
}

/// A server whose `CLOCK_MONOTONIC` is not ours (another time namespace, an hour ahead) would
/// misread a deadline: the call carries none. Whether a call that timed out ran does not rest on
/// the clock but on the claim word: a call withdrawn before the server took it is `NotExecuted`
/// and never runs; one the server took is `Timeout`, and runs.
#[test]
fn a_server_on_another_clock_gets_no_deadline_and_a_timed_out_call_is_still_settled_right() {
    if !common::is_root() {
        eprintln!("skipped: a time namespace needs root");
        return;
    }
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("timens");
    let mut server = ChildProcess::spawn_wrapped(
        &["unshare", "--time", "--monotonic", "3600", "--fork"],
        "api_server",
        &[&name, "1", "0"],
    );
    if server.try_next_line().as_deref() != Some("ready") {
        eprintln!("skipped: unshare --time is not available here");
        return;
    }
    let client = Arc::new(Client::connect(&name).unwrap());
    // The handler sees no deadline, whatever the client's timeout.
    let me = client.call_timeout(b"whoami", WATCHDOG).unwrap();
    assert!(String::from_utf8(me).unwrap().ends_with(" none false"));
    // The only worker is busy, so this call is not taken before it gives up...
    let busy = {
        let client = client.clone();
        std::thread::spawn(move || client.call(b"sleep:400"))
    };
    std::thread::sleep(Duration::from_millis(50));
    let late = Client::connect(&name).unwrap();
    match late.call_timeout(b"record", Duration::from_millis(50)) {
        Err(Error::NotExecuted {
            reason: NotExecuted::TimedOut,
            ..
        }) => {}
        other => panic!("expected NotExecuted(TimedOut), got {other:?}"),
    }
    assert_eq!(busy.join().unwrap().unwrap(), b"slept");
    // ...and it never runs, although the worker found its request after the busy call.
    assert_eq!(count(&client), 0, "a call reported not executed ran");
    // One the worker took before the timeout ended ran: Timeout.
    match late.call_timeout(b"record-then-sleep", Duration::from_millis(50)) {
        Err(Error::Timeout) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
    common::with_watchdog("the call that timed out to have run", {
        let client = client.clone();
        move || {
            while count(&client) != 1 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    stop(server);
}

#[test]
fn the_server_skips_a_request_whose_deadline_passed_before_it_took_it_and_says_so() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("expired");
    let server = start(&name, 1, 0);
    let client = Arc::new(Client::connect(&name).unwrap());
    let busy = {
        let client = client.clone();
        std::thread::spawn(move || client.call(b"sleep:300"))
    };
    std::thread::sleep(Duration::from_millis(50));
    // This client waits as long as it takes, but tells the server it gives up after 1 ms: the
    // worker, busy for longer, skips the request and answers that it did.
    let impatient = ClientOptions::new()
        .__sent_deadline(Duration::from_millis(1))
        .connect(&name)
        .unwrap();
    match impatient.call(b"record") {
        Err(Error::NotExecuted {
            reason: NotExecuted::TimedOut,
            ..
        }) => {}
        other => panic!("expected the server to skip the call, got {other:?}"),
    }
    busy.join().unwrap().unwrap();
    assert_eq!(count(&client), 0, "an expired request ran");
    let stats = server_stats(&name).unwrap();
    assert_eq!(stats.expired_calls, 1);
    // The connection stays usable.
    let patient = ClientOptions::new()
        .__sent_deadline(Duration::from_secs(60))
        .connect(&name)
        .unwrap();
    assert_eq!(patient.call(b"record").unwrap(), b"recorded");
    assert_eq!(count(&client), 1);
    stop(server);
}

/// A client that takes a live server's connection for dead (a transient socket error once read
/// as a hang-up did that) gives its call up, and resends it on a fresh connection, only if the
/// server provably never runs it on the old one: at most once, whatever the client believed.
#[test]
fn a_call_given_up_on_a_live_server_runs_at_most_once() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("presumed-gone");
    let server = start(&name, 1, 0);
    let client = Arc::new(Client::connect(&name).unwrap());
    let quitter = ClientOptions::new()
        .__presume_gone_after(Duration::from_millis(150))
        .connect(&name)
        .unwrap();
    // The quitter's connection is in the worker's hands (it answered a call on it)...
    assert_eq!(quitter.call(b"hi").unwrap(), b"hi");
    // ...and the only worker is busy while the quitter's next call waits in its ring.
    let busy = {
        let client = client.clone();
        std::thread::spawn(move || client.call(b"sleep:600"))
    };
    std::thread::sleep(Duration::from_millis(50));
    let outcome = quitter.call(b"record");
    assert_eq!(busy.join().unwrap().unwrap(), b"slept");
    // Once the worker has been through the quitter's connections (and dropped them), nothing of
    // them can run any more.
    drop(quitter);
    common::with_watchdog("the quitter's connections to be dropped", {
        let name = name.clone();
        move || {
            while server_stats(&name).unwrap().connection_list.len() != 1 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    let ran = count(&client);
    match outcome {
        Err(Error::NotExecuted {
            reason: NotExecuted::ServerGone,
            ..
        }) => assert_eq!(ran, 0, "a call reported not executed ran"),
        other => panic!("expected NotExecuted(ServerGone), got {other:?} (ran {ran} times)"),
    }
    stop(server);
}

#[test]
fn a_server_killed_before_taking_a_request_is_retried_once_and_reported_not_executed() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("killed-before");
    let mut server = start(&name, 1, 0);
    // One client keeps the only worker in its handler; another's request waits unread.
    let mut running = ChildProcess::spawn("call_and_report", &[&name, "sleep:30000"]);
    let mut waiting = ChildProcess::spawn("call_and_report", &[&name, "record"]);
    running.expect_line("connected");
    waiting.expect_line("connected");
    running.tell("go");
    std::thread::sleep(Duration::from_millis(100));
    waiting.tell("go");
    std::thread::sleep(Duration::from_millis(100));
    server.kill_and_reap();
    assert_eq!(waiting.next_line(), "not executed ServerGone");
    assert_eq!(running.next_line(), "error Disconnected");
    running.wait_success();
    waiting.wait_success();

    // The resend goes to a server that is back: the call runs once.
    let server = start(&name, 1, 0);
    let mut waiting = ChildProcess::spawn("call_and_report", &[&name, "record"]);
    waiting.expect_line("connected");
    let mut blocker = ChildProcess::spawn("call_and_report", &[&name, "sleep:30000"]);
    blocker.expect_line("connected");
    blocker.tell("go");
    std::thread::sleep(Duration::from_millis(100));
    drop(server); // SIGKILLed and reaped
    let server = start(&name, 1, 0);
    waiting.tell("go");
    assert_eq!(waiting.next_line(), "ok recorded");
    let client = Client::connect(&name).unwrap();
    assert_eq!(count(&client), 1);
    waiting.wait_success();
    blocker.kill_and_reap();
    stop(server);
}

#[test]
fn try_call_never_waits_for_a_connection_or_ring_space() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("try-call");
    let server = start(&name, 1, 0);
    let client = Arc::new(
        ClientOptions::new()
            .max_concurrent_calls(1)
            .connect(&name)
            .unwrap(),
    );
    assert_eq!(client.try_call(b"now").unwrap(), b"now");
    let busy = {
        let client = client.clone();
        std::thread::spawn(move || client.call(b"sleep:300"))
    };
    std::thread::sleep(Duration::from_millis(50));
    // The only connection is busy: Full at once, nothing sent.
    let started = std::time::Instant::now();
    assert!(matches!(client.try_call(b"record"), Err(Error::Full)));
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "try_call waited"
    );
    busy.join().unwrap().unwrap();
    assert_eq!(count(&client), 0, "a refused try_call ran");
    // A request that could never be sure to fit the ring whole (256 KiB by default) is refused.
    match client.try_call(&vec![1u8; 200 << 10]) {
        Err(Error::MessageTooLarge { max, .. }) => assert_eq!(max, 128 << 10),
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    let large = vec![7u8; 100 << 10];
    assert_eq!(client.try_call(&large).unwrap(), large);
    stop(server);
}

#[test]
fn typed_calls_round_trip_and_a_payload_that_does_not_decode_is_named_as_such() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("typed");
    let mut server = ChildProcess::spawn("typed_server", &[&name]);
    server.expect_line("ready");
    let client = Client::connect(&name).unwrap();
    let sum: Sum = client.call_typed(&Add { a: 2, b: 40 }).unwrap();
    assert_eq!(
        sum,
        Sum {
            sum: 42,
            caller: std::process::id(),
            note: "2 + 40".into()
        }
    );
    let again: Sum = client
        .call_typed_timeout(&Add { a: -5, b: 5 }, WATCHDOG)
        .unwrap();
    assert_eq!(again.sum, 0);
    // The handler's own error.
    match client.call_typed::<_, Sum>(&Add { a: i64::MAX, b: 1 }) {
        Err(Error::HandlerFailed { reason, data, .. }) => {
            assert_eq!((reason.as_str(), &*data), ("overflow", &b"OVF"[..]))
        }
        other => panic!("expected the handler's error, got {other:?}"),
    }
    // A request of another type: the server says it does not decode (its handler did not run).
    match client.call_typed::<_, Sum>(&"not an Add") {
        Err(Error::Undecodable {
            what: memlink::Payload::Request,
            ..
        }) => {}
        other => panic!("expected an undecodable request, got {other:?}"),
    }
    // An encoded Add (zigzag varints 2 and 40) with a byte too many is refused, not half-read.
    assert!(client.call(&[4, 80]).is_ok());
    assert!(matches!(
        client.call(&[4, 80, 0]),
        Err(Error::Undecodable {
            what: memlink::Payload::Request,
            ..
        })
    ));
    // A reply of another type: this side says so.
    match client.call_typed::<_, (u8, u8)>(&Add { a: 1, b: 1 }) {
        Err(Error::Undecodable {
            what: memlink::Payload::Reply,
            ..
        }) => {}
        other => panic!("expected an undecodable reply, got {other:?}"),
    }
    // The connection survived all of it.
    let sum: Sum = client.call_typed(&Add { a: 1, b: 2 }).unwrap();
    assert_eq!(sum.sum, 3);
    server.tell("stop");
    server.expect_line("stopped");
    server.wait_success();
}

#[test]
fn a_hostile_typed_request_or_reply_is_refused_and_the_other_side_keeps_serving() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("typed-hostile");
    let mut server = ChildProcess::spawn("tree_server", &[&name]);
    server.expect_line("ready");
    let honest = Client::connect(&name).unwrap();
    let hostile = Client::connect(&name).unwrap();
    for (what, bytes) in [
        ("deep", deep_tree_bytes()),
        ("endless", endless_units_bytes()),
    ] {
        match hostile.call(&bytes) {
            Err(Error::Undecodable {
                what: memlink::Payload::Request,
                ..
            }) => {}
            other => panic!("{what}: expected an undecodable request, got {other:?}"),
        }
        // The server is up, and its worker free: an honest call is answered at once.
        let depth: u64 = honest.call_typed(&nested(100)).unwrap();
        assert_eq!(depth, 100, "{what}");
    }
    server.tell("stop");
    server.expect_line("stopped");
    server.wait_success();

    // A hostile server: the echo server sends the same bytes back as a reply to a typed call.
    let name = unique_name("typed-hostile-reply");
    let server = start(&name, 1, 0);
    let client = Client::connect(&name).unwrap();
    for bytes in [deep_tree_bytes(), endless_units_bytes()] {
        match client.call_typed::<_, Tree>(&Raw(bytes)) {
            Err(Error::Undecodable {
                what: memlink::Payload::Reply,
                ..
            }) => {}
            other => panic!("expected an undecodable reply, got {other:?}"),
        }
    }
    let tree: Tree = client.call_typed(&nested(3)).unwrap();
    assert_eq!(tree, nested(3));
    stop(server);
}

/// A typed message can be far larger decoded than sent (10 MB of empty strings are 240 MB of
/// `String`s): the decoder bounds what the elements take, on either side, and each side's bound
/// is its own to set.
#[test]
fn a_typed_message_that_would_decode_to_too_much_memory_is_refused_on_either_side() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("typed-memory");
    let mut server = ChildProcess::spawn("words_server", &[&name, "default"]);
    server.expect_line("ready");
    let hostile = Client::connect(&name).unwrap();
    let honest = Client::connect(&name).unwrap();
    let flood = empty_strings_bytes(10_000_000);
    match hostile.call(&flood) {
        Err(Error::Undecodable {
            what: memlink::Payload::Request,
            reason,
            ..
        }) => assert!(reason.contains("bytes decoded"), "{reason}"),
        other => panic!("expected an undecodable request, got {other:?}"),
    }
    // The server is up and serving, the hostile client's connection too.
    let words: u64 = honest.call_typed(&vec!["a", "few", "words"]).unwrap();
    assert_eq!(words, 3);
    let words: u64 = hostile.call_typed(&vec![""; 1000]).unwrap();
    assert_eq!(words, 1000);
    server.tell("stop");
    server.expect_line("stopped");
    server.wait_success();

    // A server with a tighter bound refuses what the default lets through.
    let name = unique_name("typed-memory-tight");
    let mut server = ChildProcess::spawn("words_server", &[&name, "24000"]);
    server.expect_line("ready");
    let client = Client::connect(&name).unwrap();
    let words: u64 = client.call_typed(&vec!["word"; 1000]).unwrap();
    assert_eq!(words, 1000);
    assert!(matches!(
        client.call_typed::<_, u64>(&vec!["word"; 1001]),
        Err(Error::Undecodable {
            what: memlink::Payload::Request,
            ..
        })
    ));
    server.tell("stop");
    server.expect_line("stopped");
    server.wait_success();

    // A hostile server: the echo server sends the flood back as the reply to a typed call.
    let name = unique_name("typed-memory-reply");
    let server = start(&name, 1, 0);
    let client = Client::connect(&name).unwrap();
    match client.call_typed::<_, Vec<String>>(&Raw(flood)) {
        Err(Error::Undecodable {
            what: memlink::Payload::Reply,
            reason,
            ..
        }) => assert!(reason.contains("bytes decoded"), "{reason}"),
        other => panic!("expected an undecodable reply, got {other:?}"),
    }
    let echoed: Vec<String> = client.call_typed(&vec!["ok"; 3]).unwrap();
    assert_eq!(echoed, ["ok"; 3]);
    // The client's bound is its own.
    let tight = ClientOptions::new()
        .decode_limits(DecodeLimits::new().max_element_bytes(24 * 2))
        .connect(&name)
        .unwrap();
    let echoed: Vec<String> = tight.call_typed(&vec!["a", "b"]).unwrap();
    assert_eq!(echoed, ["a", "b"]);
    assert!(matches!(
        tight.call_typed::<_, Vec<String>>(&vec!["a", "b", "c"]),
        Err(Error::Undecodable {
            what: memlink::Payload::Reply,
            ..
        })
    ));
    stop(server);
}

#[test]
fn statistics_count_calls_per_connection_and_time_the_handler() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("stats");
    let server = start(&name, 1, 0);
    let first = Client::connect(&name).unwrap();
    // The worker's first call is always timed.
    assert_eq!(first.call(b"sleep:20").unwrap(), b"slept");
    for _ in 0..4 {
        first.call(b"x").unwrap();
    }
    let second = Client::connect(&name).unwrap();
    for _ in 0..3 {
        second.call(b"y").unwrap();
    }
    assert!(matches!(
        second.call(b"fail"),
        Err(Error::HandlerFailed { .. })
    ));
    let stats = server_stats(&name).unwrap();
    let listed: Vec<(u32, u32, u64)> = stats
        .connection_list
        .iter()
        .map(|c| (c.pid, c.uid, c.calls))
        .collect();
    let (pid, uid) = (std::process::id(), rustix::process::geteuid().as_raw());
    assert_eq!(listed, [(pid, uid, 5), (pid, uid, 4)], "{stats:?}");
    assert!(stats.connection_list[0].id < stats.connection_list[1].id);
    assert_eq!((stats.calls, stats.failed_calls), (9, 1));
    let latency = stats.handler_latency;
    assert!(latency.samples >= 1 && latency.samples <= 9, "{latency:?}");
    // The sampled 20 ms call is the slowest; percentiles never read below the truth.
    assert!(latency.max >= Duration::from_millis(20), "{latency:?}");
    assert!(latency.p50 <= latency.p90 && latency.p90 <= latency.p99 && latency.p99 <= latency.max);
    drop(second);
    common::with_watchdog("the dropped connection to leave the list", {
        let name = name.clone();
        move || {
            while server_stats(&name).unwrap().connection_list.len() != 1 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    stop(server);
}

fn traced_run(level: &str) -> String {
    let name = unique_name("traced");
    let log = std::env::temp_dir().join(format!("{name}.log"));
    let mut server = ChildProcess::spawn("traced_server", &[&name, log.to_str().unwrap(), level]);
    server.expect_line("ready");
    let client = Client::connect(&name).unwrap();
    assert_eq!(client.call(b"hello").unwrap(), b"hello");
    let corrupter = Client::connect(&name).unwrap();
    corrupter.__corrupt_next_request().unwrap();
    drop(client);
    common::with_watchdog("the server to see the client go", {
        let name = name.clone();
        move || {
            while !server_stats(&name).unwrap().connection_list.is_empty() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    stop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::remove_file(&log).unwrap();
    text
}

#[test]
fn connection_lifecycle_events_are_traced_and_calls_only_at_trace_level() {
    let _watchdog = common::Watchdog::arm();
    let text = traced_run("debug");
    let pid = format!("pid={}", std::process::id());
    for expected in [
        "accepted a connection",
        "admitted",
        "dropped",
        "the client went away",
        "corrupted: dropping a client",
        "memlink_connection",
        &pid,
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    assert!(
        !text.contains("answered a call"),
        "per-call events at debug level:\n{text}"
    );
    let text = traced_run("trace");
    assert!(
        text.contains("answered a call"),
        "no per-call event at trace level:\n{text}"
    );
}

/// An echo server everyone may call, until told to stop. Args: name.
fn everyone_server(args: &[String]) {
    let server = Server::options()
        .permissions(memlink::Permissions::Everyone)
        .bind(&args[0])
        .unwrap();
    let stop = server.shutdown_handle();
    std::thread::spawn(move || {
        await_parent();
        stop.shutdown();
    });
    report("ready");
    server
        .serve(|request: &[u8], reply: &mut Vec<u8>| reply.extend_from_slice(request))
        .unwrap();
}

/// As user nobody: calls, then reports the uids of the connections the statistics list.
fn nobody_stats(args: &[String]) {
    common::drop_privileges_to_nobody();
    let client = Client::connect(&args[0]).unwrap();
    assert_eq!(client.call(b"hi").unwrap(), b"hi");
    let uids: Vec<String> = server_stats(&args[0])
        .unwrap()
        .connection_list
        .iter()
        .map(|c| c.uid.to_string())
        .collect();
    report(&uids.join(","));
}

#[test]
fn another_user_sees_only_its_own_connections_in_the_statistics() {
    if !common::is_root() {
        eprintln!("skipped: needs root to run a client as another user");
        return;
    }
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("private-stats");
    let mut server = ChildProcess::spawn("everyone_server", &[&name]);
    server.expect_line("ready");
    let ours = Client::connect(&name).unwrap();
    assert_eq!(ours.call(b"hi").unwrap(), b"hi");
    let mut nobody = ChildProcess::spawn("nobody_stats", &[&name]);
    nobody.expect_line("65534");
    // We (the server's own user) see both.
    let uids: Vec<u32> = server_stats(&name)
        .unwrap()
        .connection_list
        .iter()
        .map(|c| c.uid)
        .collect();
    assert!(uids.contains(&0), "{uids:?}");
    nobody.wait_success();
    server.tell("stop");
    server.wait_success();
}
