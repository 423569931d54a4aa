//! `memlink ls` and `memlink rm` against real objects.

use std::process::{Command, Output};

use memlink::{Segment, Semaphore};

fn memlink(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memlink"))
        .args(args)
        .output()
        .expect("run memlink")
}

fn unique(tag: &str) -> String {
    format!("cli-{tag}-{}", std::process::id())
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Removes an object when dropped, so a failing test leaves nothing behind in /dev/shm.
struct RemoveOnDrop(String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = memlink::inventory::remove(&self.0, true);
    }
}

/// The cells of a table row as `memlink` prints tables into a pipe (plain ASCII, Markdown).
fn cells(row: &str) -> Vec<&str> {
    row.trim()
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect()
}

fn line_for<'a>(listing: &'a str, name: &str) -> Option<&'a str> {
    listing.lines().find(|l| cells(l).first() == Some(&name))
}

#[test]
fn ls_shows_live_and_stale_objects_and_rm_removes_only_stale_ones_unless_forced() {
    let live = unique("live");
    let stale = unique("stale");
    let _cleanup = (RemoveOnDrop(live.clone()), RemoveOnDrop(stale.clone()));
    let segment = Segment::create(&live, 1000).unwrap();
    let sem = Segment::options().remove_on_drop(false);
    drop(Semaphore::create_with(&stale, 0, 5, &sem).unwrap()); // creator gone, object kept: stale

    let out = memlink(&["ls"]);
    assert!(out.status.success());
    let listing = stdout(&out);
    assert!(
        listing.lines().any(|l| cells(l).first() == Some(&"NAME")),
        "{listing}"
    );
    let row =
        line_for(&listing, &live).unwrap_or_else(|| panic!("{live} missing from:\n{listing}"));
    let cols = cells(row);
    assert_eq!(
        cols[1..],
        [
            "segment",
            "1128",
            "0600",
            &rustix_uid(),
            &std::process::id().to_string(),
            "live"
        ]
    );
    let row = line_for(&listing, &stale).unwrap();
    assert!(
        cells(row)[1] == "semaphore" && cells(row).last() == Some(&"stale"),
        "{row}"
    );

    let refused = memlink(&["rm", &live]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("in use by live process"),
        "{refused:?}"
    );
    assert!(Segment::open(&live).is_ok());

    assert!(memlink(&["rm", &stale]).status.success());
    assert!(memlink(&["rm", "--force", &live]).status.success());
    let listing = stdout(&memlink(&["ls"]));
    assert!(
        line_for(&listing, &live).is_none() && line_for(&listing, &stale).is_none(),
        "{listing}"
    );
    drop(segment);
}

#[test]
fn rm_explains_missing_objects_and_bad_names() {
    let missing = memlink(&["rm", &unique("never-created")]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no memlink object named"));
    let bad = memlink(&["rm", "../etc/passwd"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid name"));
}

fn rustix_uid() -> String {
    // The owner uid shown by `ls` is the effective uid of this process.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m).to_string())
        .unwrap_or_default()
}

fn call(name: &str, text: &str) -> Output {
    memlink(&["call", "--name", name, text])
}

#[test]
fn serve_answers_call_shows_in_ls_and_stops_on_ctrl_c() {
    serve_answers_call_shows_in_ls_and_stops_on("serve-int", rustix::process::Signal::INT);
}

#[test]
fn serve_stops_gracefully_on_sigterm() {
    serve_answers_call_shows_in_ls_and_stops_on("serve-term", rustix::process::Signal::TERM);
}

fn serve_answers_call_shows_in_ls_and_stops_on(tag: &str, signal: rustix::process::Signal) {
    let name = unique(tag);
    let mut server = Command::new(env!("CARGO_BIN_EXE_memlink"))
        .args(["serve", "--name", &name, "--workers", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let reply = loop {
        let out = call(&name, "hello over shared memory");
        if out.status.success() {
            break stdout(&out);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server never answered: {out:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(reply.trim_end(), "hello over shared memory");

    let listing = stdout(&memlink(&["ls"]));
    let row =
        line_for(&listing, &name).unwrap_or_else(|| panic!("server missing from:\n{listing}"));
    let cols = cells(row);
    assert_eq!(cols[1], server.id().to_string(), "{row}");
    assert_eq!(cols[4], "2", "workers: {row}");
    // No failed or expired calls; the one call's handler was timed (the first always is).
    assert_eq!(cols[6], "0/0", "failed/expired: {row}");
    assert_eq!(cols[7].split('/').count(), 3, "handler p50/p99/max: {row}");
    assert!(listing.contains("HANDLER p50/p99/max"), "{listing}");

    let pid = rustix::process::Pid::from_raw(server.id() as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
    let status = server.wait().unwrap();
    assert!(
        status.success(),
        "serve did not stop cleanly on {signal:?}: {status:?}"
    );
    let after = call(&name, "anyone?");
    assert!(!after.status.success());
    assert!(
        String::from_utf8_lossy(&after.stderr).contains("nothing is serving memlink"),
        "{after:?}"
    );
}

#[test]
fn demo_runs_clients_and_compares_with_a_unix_socket() {
    let out = memlink(&["demo", "--clients", "2", "--calls", "2000", "--size", "256"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    for needle in [
        "memlink demo: 2 client processes",
        "transport",
        "memlink",
        "unix socket",
        "p99.9",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let row = text
        .lines()
        .find(|l| cells(l).first() == Some(&"memlink"))
        .unwrap_or_else(|| panic!("no memlink row in:\n{text}"));
    assert_eq!(cells(row).len(), 6, "{row}");
    assert_eq!(cells(row)[1], "4000", "every call counted: {row}");
    // 4,000 calls are too few for a p99.9: the maximum stands in, and says so.
    assert!(cells(row)[5].ends_with("(max)"), "{row}");
}

/// `memlink bench rpc --quick --json`: one JSON object with a latency row per transport and size
/// (the tail a p99.9 only where 10,000 samples back it), the same-core rows, throughput over one
/// common window per load, and the targets; `--svg` writes a chart naming every transport and
/// size. (Correctness of the command, not speed: nothing here looks at the numbers beyond their
/// being there.)
#[test]
fn bench_rpc_json_reports_every_transport_size_and_target() {
    let dir = std::env::temp_dir().join(unique("bench-rpc-svg"));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("rpc.svg");
    let out = memlink(&[
        "bench",
        "rpc",
        "--quick",
        "--json",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    let latency = report["latency"].as_array().unwrap();
    let transports = [
        "shm spin (floor)",
        "futex ping-pong (floor)",
        "sleeping floor (asleep)",
        "memlink (awake)",
        "memlink (asleep)",
        "unix socket",
        "pipe",
        "tcp loopback",
    ];
    for transport in transports {
        for size in [64, 4096, 65536, 1 << 20] {
            let row = latency
                .iter()
                .find(|r| r["transport"] == transport && r["size"] == size);
            let row = row.unwrap_or_else(|| panic!("no {transport} {size}"));
            let samples = row["samples"].as_u64().unwrap();
            assert!(row["p50_ns"].as_u64().unwrap() > 0);
            assert!(row["max_ns"].as_u64() >= row["p99_ns"].as_u64());
            // --quick takes at most 2,000 samples: too few for a p99.9.
            assert!(samples < 10_000 && row["p999_ns"].is_null(), "{row}");
        }
    }
    assert_eq!(latency.len(), 32);
    let same_core: Vec<&str> = report["same_core"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["transport"].as_str().unwrap())
        .collect();
    assert_eq!(
        same_core,
        ["futex ping-pong (floor)", "sleeping floor", "memlink"]
    );
    let throughput = report["throughput"].as_array().unwrap();
    for transport in ["memlink", "unix socket"] {
        for clients in [1, 4, 16, 64] {
            let row = throughput
                .iter()
                .find(|t| t["transport"] == transport && t["clients"] == clients)
                .unwrap_or_else(|| panic!("no {transport} x {clients}"));
            // The rate is the calls of all clients in one common window.
            let (calls, seconds) = (
                row["calls_in_window"].as_f64().unwrap(),
                row["window_seconds"].as_f64().unwrap(),
            );
            assert!(calls > 0.0 && seconds > 0.0, "{row}");
            let rate = row["calls_per_second"].as_f64().unwrap();
            assert!((rate - calls / seconds).abs() <= 1e-6 * rate, "{row}");
            assert!(row["slowest_client_calls"].as_u64() <= row["fastest_client_calls"].as_u64());
        }
    }
    assert_eq!(report["targets"].as_array().unwrap().len(), 10);

    let chart = std::fs::read_to_string(&svg).expect("the --svg file");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_svg(&chart);
    for needle in transports
        .into_iter()
        .chain(["64 B", "4 KiB", "64 KiB", "1 MiB", "p50", "p99"])
    {
        assert!(chart.contains(needle), "{needle} missing from the chart");
    }
}

/// Runs `memlink __peer client TRANSPORT ADDRESS 64 20` (the load client of `bench rpc` and
/// `demo`) until it exits, and returns its output.
fn load_client(transport: &str, address: &str) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut client = Command::new(env!("CARGO_BIN_EXE_memlink"))
        .args(["__peer", "client", transport, address, "64", "20"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Start now, count every call.
    writeln!(client.stdin.take().unwrap(), "go 0 0 {}", u64::MAX).unwrap();
    client.wait_with_output().unwrap()
}

/// A load client checks every reply, not only the last: a server that answers the fifth call
/// wrongly (one byte changed, the length right) fails it with a non-zero exit, over memlink and
/// over a Unix socket alike.
#[test]
fn a_load_client_fails_on_any_wrong_reply() {
    use std::io::{Read, Write};
    use std::os::linux::net::SocketAddrExt;
    // memlink: a server whose handler spoils its fifth reply.
    let name = unique("wrong-reply");
    let server = memlink::Server::bind(&name).unwrap();
    let stop = server.shutdown_handle();
    let calls = std::sync::atomic::AtomicU32::new(0);
    let serving = std::thread::spawn(move || {
        server.serve(move |request: &[u8], reply: &mut Vec<u8>| {
            reply.extend_from_slice(request);
            if calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 4 {
                reply[30] ^= 1;
            }
        })
    });
    let out = load_client("memlink", &name);
    stop.shutdown();
    serving.join().unwrap().unwrap();
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wrong reply to call 4"), "{stderr}");

    // A Unix socket: the same, framed as the baselines are (4-byte length, then the payload).
    let socket = unique("wrong-reply-uds");
    let address = std::os::unix::net::SocketAddr::from_abstract_name(
        format!("memlink-bench.{socket}").as_bytes(),
    )
    .unwrap();
    let listener = std::os::unix::net::UnixListener::bind_addr(&address).unwrap();
    let echo = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut message = [0u8; 4 + 64];
        for call in 0.. {
            if stream.read_exact(&mut message).is_err() {
                return call;
            }
            if call == 4 {
                message[4 + 30] ^= 1;
            }
            stream.write_all(&message).unwrap();
        }
        unreachable!()
    });
    let out = load_client("uds", &socket);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wrong reply to call 4"), "{stderr}");
    assert_eq!(
        echo.join().unwrap(),
        5,
        "the client stopped at the wrong reply"
    );
}

/// `chart` is one SVG document whose elements open and close in order (a well-formedness check
/// for the subset plotters writes: no comments, no CDATA, `<` only in tags).
fn assert_svg(chart: &str) {
    let chart = chart.trim();
    assert!(
        chart.starts_with("<svg") || chart.starts_with("<?xml"),
        "{chart:.200}"
    );
    let mut open: Vec<&str> = Vec::new();
    let mut rest = chart;
    while let Some(at) = rest.find('<') {
        let end = rest[at..].find('>').expect("an unclosed tag") + at;
        let tag = &rest[at + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('?') {
            continue;
        }
        let name = tag
            .trim_start_matches('/')
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap();
        assert!(!name.is_empty(), "a stray '<' in the chart");
        if let Some(closing) = tag.strip_prefix('/') {
            assert_eq!(open.pop(), Some(closing.trim()), "misnested </{closing}>");
        } else if !tag.ends_with('/') {
            open.push(name);
        }
    }
    assert!(open.is_empty(), "unclosed elements: {open:?}");
    assert!(chart.ends_with("</svg>"));
}

/// `memlink bench duplex --quick --json` with a handful of messages per size: one JSON object with
/// a rate and a latency row for every transport and size, and the three targets. (Correctness of
/// the command, not speed: nothing here looks at the numbers beyond their being there.)
#[test]
fn bench_duplex_json_reports_every_transport_size_and_target() {
    let dir = std::env::temp_dir().join(unique("bench-duplex-svg"));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("duplex.svg");
    let out = memlink(&[
        "bench",
        "duplex",
        "--quick",
        "--json",
        "--count",
        "50",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let chart = std::fs::read_to_string(&svg).expect("the --svg file");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_svg(&chart);
    assert!(chart.contains("memlink duplex") && chart.contains("ring floor"));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    let (rate, latency) = (
        report["rate"].as_array().unwrap(),
        report["latency"].as_array().unwrap(),
    );
    for transport in ["ring floor", "memlink duplex", "unix socket"] {
        for size in [64, 1024, 65536, 1 << 20] {
            let row = rate
                .iter()
                .find(|r| r["transport"] == transport && r["size"] == size)
                .unwrap_or_else(|| panic!("no {transport} {size} rate row"));
            assert_eq!(row["messages"], 50);
            assert!(row["messages_per_second"].as_f64().unwrap() > 0.0);
            assert!(row["bytes_per_second"].as_f64().unwrap() > 0.0);
            let row = latency
                .iter()
                .find(|r| r["transport"] == transport && r["size"] == size)
                .unwrap_or_else(|| panic!("no {transport} {size} latency row"));
            assert_eq!(row["samples"], 50);
            // Too few samples for a p99.9: the maximum stands in.
            assert!(row["p999_ns"].is_null(), "{row}");
            assert!(row["max_ns"].as_u64() >= row["p50_ns"].as_u64());
        }
    }
    assert_eq!(rate.len(), 12);
    assert_eq!(latency.len(), 12);
    let targets = report["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 3);
    assert!(targets.iter().all(|t| t["met"].is_boolean()));
}

/// `memlink bench stream --quick --json` with a handful of items: a row per transport and item
/// size, and the ratios.
#[test]
fn bench_stream_json_reports_every_transport_and_ratio() {
    let out = memlink(&["bench", "stream", "--quick", "--json", "--count", "100"]);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    let rows = report["rows"].as_array().unwrap();
    for (transport, size) in [
        ("ring floor", 64),
        ("memlink call_stream", 64),
        ("unix socket", 64),
        ("unix socket (batched)", 64),
        ("ring floor", 65536),
        ("memlink call_stream", 65536),
        ("unix socket", 65536),
    ] {
        let row = rows
            .iter()
            .find(|r| r["transport"] == transport && r["item_size"] == size)
            .unwrap_or_else(|| panic!("no {transport} {size} row"));
        assert_eq!(row["items"], 100);
        assert!(row["items_per_second"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(rows.len(), 7);
    assert_eq!(report["ratios"].as_array().unwrap().len(), 5);
}

/// Two `memlink chat` processes paired through a name, talking through pipes: each prints the
/// other's lines, and both exit once both inputs have ended.
#[test]
fn chat_pairs_two_processes_and_each_prints_the_others_lines() {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let name = unique("chat");
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_memlink"))
            .args(["chat", &name, "--timeout-ms", "20000"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run memlink chat")
    };
    let mut a = spawn();
    let mut b = spawn();
    a.stdin
        .take()
        .unwrap()
        .write_all(b"hello from a\nsecond line from a\n")
        .unwrap();
    b.stdin
        .take()
        .unwrap()
        .write_all(b"hello from b\n")
        .unwrap();
    // Both inputs are closed now (the handles were dropped): both chats end once paired.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for child in [&mut a, &mut b] {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "{status:?}");
                break;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("memlink chat did not exit");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let out = |child: &mut std::process::Child| {
        let mut s = String::new();
        child.stdout.take().unwrap().read_to_string(&mut s).unwrap();
        s
    };
    assert_eq!(out(&mut a), "hello from b\n");
    assert_eq!(out(&mut b), "hello from a\nsecond line from a\n");
}

#[test]
fn pub_and_sub_carry_lines_and_ls_shows_the_topic() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let topic = unique("topic");
    // The subscriber first: it waits for the publisher.
    let mut sub = Command::new(env!("CARGO_BIN_EXE_memlink"))
        .args(["sub", "--topic", &topic, "--count", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run memlink sub");
    let mut publisher = Command::new(env!("CARGO_BIN_EXE_memlink"))
        .args(["pub", "--topic", &topic, "--history", "3"])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run memlink pub");
    let mut input = publisher.stdin.take().unwrap();
    input.write_all(b"one\ntwo\nthree\n").unwrap();
    input.flush().unwrap();
    // Whenever the subscriber attached, it gets all three: live, or from the history.
    let (tx, rx) = std::sync::mpsc::channel();
    let output = sub.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let lines: Vec<String> = (0..3)
        .map(|_| {
            rx.recv_timeout(std::time::Duration::from_secs(20))
                .expect("a line from sub")
        })
        .collect();
    assert_eq!(lines, ["one", "two", "three"]);
    let listing = stdout(&memlink(&["ls"]));
    let row = line_for(&listing, &topic).unwrap_or_else(|| panic!("{topic} missing:\n{listing}"));
    assert!(
        row.contains(&publisher.id().to_string()) && row.contains("lossy"),
        "{row}"
    );
    assert!(sub.wait().unwrap().success());
    drop(input);
    assert!(publisher.wait().unwrap().success());
}

#[test]
fn bench_pubsub_json_reports_every_way_size_fan_out_and_target() {
    let out = memlink(&["bench", "pubsub", "--quick", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    let latency = report["latency"].as_array().unwrap();
    for way in ["memlink-loan", "memlink-copy", "uds"] {
        for size in [64, 4 << 10, 64 << 10, 1 << 20, 4 << 20] {
            let row = latency
                .iter()
                .find(|r| r["way"] == way && r["size"] == size && r["state"] == "awake")
                .unwrap_or_else(|| panic!("no {way} {size}"));
            assert!(row["p50_ns"].as_u64().unwrap() > 0);
            assert!(row["max_ns"].as_u64() >= row["p99_ns"].as_u64());
        }
    }
    assert!(latency.iter().any(|r| r["way"] == "shm-spin"));
    assert_eq!(latency.iter().filter(|r| r["state"] == "asleep").count(), 2);
    let fan_out = report["fan_out"].as_array().unwrap();
    for way in ["memlink-loan", "uds"] {
        for subscribers in [1, 4, 16] {
            let row = fan_out
                .iter()
                .find(|r| r["way"] == way && r["subscribers"] == subscribers)
                .unwrap_or_else(|| panic!("no {way} to {subscribers}"));
            // Every subscriber got every sample.
            assert_eq!(row["received"], 20_000 * subscribers, "{row}");
            assert_eq!(row["missed"], 0);
        }
    }
    assert_eq!(report["targets"].as_array().unwrap().len(), 3);
}

// --- memlink find: a file search server started on demand -----------------------------------------

/// Makes this test process the subreaper of its descendants, once: a server that a
/// `memlink find` starts outlives it and comes to us when it exits, to be killed and reaped.
fn adopt_orphans() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .expect("PR_SET_CHILD_SUBREAPER");
    });
}

/// Kills every `memlink __find-server NAME` and reaps it when dropped, so that a test leaves
/// no process behind, whether it passes or fails.
struct KillFindServers(String);

impl Drop for KillFindServers {
    fn drop(&mut self) {
        use rustix::process::{Pid, Signal, WaitOptions, kill_process, waitpid};
        for raw in find_servers(&self.0) {
            let Some(pid) = Pid::from_raw(raw as i32) else {
                continue;
            };
            let _ = kill_process(pid, Signal::KILL);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while std::time::Instant::now() < deadline {
                match waitpid(Some(pid), WaitOptions::NOHANG) {
                    Ok(Some(_)) => break,
                    // Not our child (any more): gone, or someone else reaps it.
                    Err(_) if !std::path::Path::new(&format!("/proc/{raw}")).exists() => break,
                    _ => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        }
    }
}

/// A directory tree for one test, removed when dropped.
struct TempTree(std::path::PathBuf);

impl TempTree {
    fn new(tag: &str, files: &[(&str, &str)]) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let root = std::env::temp_dir().join(format!("{}-{nanos:x}", unique(tag)));
        std::fs::create_dir(&root).unwrap();
        let root = TempTree(std::fs::canonicalize(&root).unwrap());
        for (path, contents) in files {
            let path = root.0.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
        root
    }

    fn path(&self, relative: &str) -> String {
        self.0.join(relative).display().to_string()
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn memlink_in(dir: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memlink"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run memlink")
}

/// `memlink find`'s matches: path -> (size, modification time), checking each line's shape.
fn matches(out: &Output) -> std::collections::BTreeMap<String, (u64, String)> {
    stdout(out)
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields.len(), 4, "{line:?}");
            let when = format!("{} {}", fields[1], fields[2]);
            let shape: String = when
                .chars()
                .map(|c| if c.is_ascii_digit() { '9' } else { c })
                .collect();
            assert_eq!(shape, "9999-99-99 99:99:99", "{line:?}");
            (fields[3].to_owned(), (fields[0].parse().unwrap(), when))
        })
        .collect()
}

/// Running `memlink __find-server ... -- NAME` processes.
fn find_servers(name: &str) -> Vec<u32> {
    let wanted = format!("\0--\0{name}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains(&wanted))
        })
        .collect()
}

#[test]
fn find_starts_its_server_on_demand_and_the_next_find_reuses_it() {
    adopt_orphans();
    let tree = TempTree::new(
        "find",
        &[
            ("a/notes.txt", "hello"),
            ("a/b/more-notes.md", "twelve bytes"),
            ("a/b/c/d/deep-notes", ""),
            ("c/other.txt", "not a match"),
            (
                "notes-dir/inside.txt",
                "a matching directory is searched, not listed",
            ),
        ],
    );
    std::os::unix::fs::symlink("/nonexistent", tree.0.join("notes-link")).unwrap();
    let server = unique("find");
    let _cleanup = KillFindServers(server.clone());
    let root = tree.path("");
    let find = |dir: &str, path: &str| {
        memlink_in(
            dir,
            &[
                "find",
                path,
                "notes",
                "--server",
                &server,
                "--server-idle-secs",
                "20",
            ],
        )
    };
    let first = find("/", &root);
    let started = find_servers(&server);
    assert!(first.status.success(), "{first:?}");
    assert_eq!(started.len(), 1, "{started:?}");
    let found = matches(&first);
    let paths: Vec<&str> = found.keys().map(String::as_str).collect();
    let expected = [
        tree.path("a/b/c/d/deep-notes"),
        tree.path("a/b/more-notes.md"),
        tree.path("a/notes.txt"),
        tree.path("notes-link"),
    ];
    assert_eq!(paths, expected, "{first:?}");
    assert_eq!(found[&tree.path("a/notes.txt")].0, 5);
    assert_eq!(found[&tree.path("a/b/more-notes.md")].0, 12);
    assert!(String::from_utf8_lossy(&first.stderr).contains("4 matches"));
    // The server outlived the find that started it.
    let pid = memlink::rpc::server_stats(&server).unwrap().pid;
    assert_eq!(started, [pid]);

    // A second find, from another directory with a relative path: the same server answers.
    let second = find(&tree.path("a"), "b");
    assert!(second.status.success(), "{second:?}");
    let paths: Vec<String> = matches(&second).into_keys().collect();
    assert_eq!(
        paths,
        [
            tree.path("a/b/c/d/deep-notes"),
            tree.path("a/b/more-notes.md")
        ]
    );
    assert_eq!(find_servers(&server), [pid]);
    assert_eq!(memlink::rpc::server_stats(&server).unwrap().pid, pid);
}

#[test]
fn find_refuses_a_missing_directory_or_a_file_before_it_starts_a_server() {
    adopt_orphans();
    let server = unique("find-missing");
    // Should a regression start the server before looking at the path, it is found, and killed.
    let _cleanup = KillFindServers(server.clone());
    let tree = TempTree::new("find-missing", &[("file.txt", "not a directory")]);
    for (path, complaint) in [
        ("/nonexistent/memlink-test".to_owned(), "No such file"),
        (tree.path("file.txt"), "not a directory"),
    ] {
        let out = memlink(&["find", &path, "x", "--server", &server]);
        assert!(!out.status.success(), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("{path}: {complaint}")), "{out:?}");
        assert!(
            find_servers(&server).is_empty(),
            "{path}: a server was started"
        );
        assert!(matches!(
            memlink::rpc::server_stats(&server),
            Err(memlink::Error::NotRunning { .. })
        ));
    }
}

#[test]
fn find_reports_a_failed_write_but_not_a_closed_pipe() {
    adopt_orphans();
    let server = unique("find-write");
    let _cleanup = KillFindServers(server.clone());
    let tree = TempTree::new("find-write", &[("a/match-1", ""), ("b/match-2", "")]);
    let find = |stdout: std::process::Stdio| {
        Command::new(env!("CARGO_BIN_EXE_memlink"))
            .args([
                "find",
                &tree.path(""),
                "match",
                "--server",
                &server,
                "--server-idle-secs",
                "20",
            ])
            .stdout(stdout)
            .output()
            .expect("run memlink")
    };
    // A full disk truncates the output: that is an error.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = find(full.into());
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("writing the matches") && stderr.contains("No space left"),
        "{out:?}"
    );
    // A reader that went away (`memlink find ... | head -0`) is not.
    let (reader, writer) = rustix::pipe::pipe().unwrap();
    drop(reader);
    let out = find(std::process::Stdio::from(writer));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(find_servers(&server).len(), 1);
}

#[test]
fn find_serves_a_server_name_that_starts_with_a_dash() {
    adopt_orphans();
    let server = format!("-{}", unique("find-dash"));
    let _cleanup = KillFindServers(server.clone());
    let tree = TempTree::new("find-dash", &[("dashed.txt", "x")]);
    let out = memlink(&[
        "find",
        &tree.path(""),
        "dashed",
        &format!("--server={server}"),
        "--server-idle-secs",
        "20",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        matches(&out).into_keys().collect::<Vec<_>>(),
        [tree.path("dashed.txt")]
    );
    assert_eq!(find_servers(&server).len(), 1);
}
