//! `memlink chaos`: a short run attacks every pattern and every promise holds; an interrupted
//! run stops everything it started and leaves nothing behind.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("{v} is not a count"))
}

fn assert_nothing_left(report: &Value) {
    for what in ["shm", "sockets", "children"] {
        assert_eq!(
            report["leftovers"][what].as_array().map(Vec::len),
            Some(0),
            "{what} left: {report:#}"
        );
    }
}

#[test]
fn a_short_chaos_run_attacks_every_pattern_and_every_promise_holds() {
    let out = Command::new(env!("CARGO_BIN_EXE_memlink"))
        .args(["chaos", "--seconds", "3", "--clients", "4", "--json"])
        .output()
        .expect("run memlink chaos");
    let report = report(&out);
    let failure = format!(
        "{report:#}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{failure}");
    assert_eq!(report["passed"], true, "{failure}");

    let rpc = &report["rpc"];
    assert!(count(&rpc["calls"]) > 0, "{failure}");
    assert!(count(&rpc["replies_correct"]) > 0, "{failure}");
    assert!(count(&rpc["server_restarts"]) >= 1, "{failure}");
    assert!(
        count(&rpc["on_demand"]["servers_started"]) >= 1,
        "{failure}"
    );
    assert!(count(&report["kills"]["client"]) >= 1, "{failure}");
    for pattern in ["rpc", "streams", "duplex", "pubsub"] {
        assert_eq!(count(&report[pattern]["wrong"]), 0, "{pattern}: {failure}");
        assert_eq!(count(&report[pattern]["lost"]), 0, "{pattern}: {failure}");
    }
    assert_eq!(count(&rpc["executed_twice"]), 0, "{failure}");

    let streams = &report["streams"];
    assert!(count(&streams["completed"]) > 0, "{failure}");
    assert!(count(&streams["items_checked"]) > 0, "{failure}");

    let duplex = &report["duplex"];
    assert!(count(&duplex["pairs_killed"]) >= 1, "{failure}");
    assert!(count(&duplex["messages_checked"]) > 0, "{failure}");
    assert_eq!(
        count(&duplex["survivors_without_disconnect"]),
        0,
        "{failure}"
    );

    let pubsub = &report["pubsub"];
    assert!(count(&pubsub["publisher_restarts"]) >= 1, "{failure}");
    assert!(count(&pubsub["received"]) > 0, "{failure}");
    assert_eq!(count(&pubsub["held_slots_at_end"]), 0, "{failure}");

    assert_nothing_left(&report);
    assert_eq!(report["unexpected_exits"].as_array().map(Vec::len), Some(0));
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains(needle))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_interrupted_chaos_run_stops_and_reaps_everything_and_says_so() {
    let child = Command::new(env!("CARGO_BIN_EXE_memlink"))
        .args(["chaos", "--seconds", "60", "--clients", "2", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run memlink chaos");
    let tag = format!("chaos-{}-", child.id());
    // Interrupt it once its children run (and the attack has had a moment).
    let deadline = Instant::now() + Duration::from_secs(20);
    while processes_mentioning(&tag).len() < 3 {
        assert!(Instant::now() < deadline, "no chaos children running");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(800));
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("SIGINT");
    let started = Instant::now();
    let out = child.wait_with_output().expect("wait for memlink chaos");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!out.status.success(), "an interrupted run must not pass");
    let report = report(&out);
    assert_eq!(report["interrupted"], true, "{report:#}");
    assert_nothing_left(&report);
    assert_eq!(processes_mentioning(&tag), Vec::<u32>::new());
    let shm: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|f| f.contains(&tag))
                .collect()
        })
        .unwrap_or_default();
    assert!(shm.is_empty(), "{shm:?}");
}
