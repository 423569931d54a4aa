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

fn line_for<'a>(listing: &'a str, name: &str) -> Option<&'a str> {
    listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
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
    assert!(listing.lines().any(|l| l.starts_with("NAME")), "{listing}");
    let row =
        line_for(&listing, &live).unwrap_or_else(|| panic!("{live} missing from:\n{listing}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
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
    assert!(row.contains("semaphore") && row.ends_with("stale"), "{row}");

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
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], server.id().to_string(), "{row}");
    assert_eq!(cols[4], "2", "workers: {row}");

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
        String::from_utf8_lossy(&after.stderr).contains("no memlink server is running"),
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
        .find(|l| l.trim_start().starts_with("memlink ") && l.contains("4000"))
        .unwrap();
    assert!(row.split_whitespace().count() == 6, "{row}");
}

#[test]
fn bench_rpc_json_reports_every_transport_size_and_target() {
    let out = memlink(&["bench", "rpc", "--quick", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    let latency = report["latency"].as_array().unwrap();
    for transport in [
        "shm spin (floor)",
        "futex (floor)",
        "futex (floor, idle)",
        "memlink (awake)",
        "memlink (asleep)",
        "unix socket",
        "pipe",
        "tcp loopback",
    ] {
        for size in [64, 4096, 65536, 1 << 20] {
            let row = latency
                .iter()
                .find(|r| r["transport"] == transport && r["size"] == size);
            let row = row.unwrap_or_else(|| panic!("no {transport} {size}"));
            assert!(
                row["p50_ns"].as_u64().unwrap() > 0
                    && row["p999_ns"].as_u64() >= row["p50_ns"].as_u64()
            );
        }
    }
    assert_eq!(report["same_core"].as_array().unwrap().len(), 2);
    let throughput = report["throughput"].as_array().unwrap();
    for clients in [1, 4, 16, 64] {
        assert!(
            throughput
                .iter()
                .any(|t| t["transport"] == "memlink" && t["clients"] == clients)
        );
    }
    assert_eq!(report["targets"].as_array().unwrap().len(), 9);
}

/// `memlink bench duplex --quick --json` with a handful of messages per size: one JSON object with
/// a rate and a latency row for every transport and size, and the three targets. (Correctness of
/// the command, not speed: nothing here looks at the numbers beyond their being there.)
#[test]
fn bench_duplex_json_reports_every_transport_size_and_target() {
    let out = memlink(&["bench", "duplex", "--quick", "--json", "--count", "50"]);
    assert!(out.status.success(), "{out:?}");
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
