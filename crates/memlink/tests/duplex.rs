//! The duplex channel across real processes: both directions at once, start-order races, a peer
//! SIGKILLed mid-transfer, a third opener, timeouts, a hostile peer.

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{
    ChildProcess, WATCHDOG, Watchdog, assert_no_leftovers, await_parent, drop_privileges_to_nobody,
    is_root, park_until_killed, report, unique_name, variant, with_watchdog,
};
use memlink::{Duplex, Error, TrySendError};

#[test]
fn child_main() {
    common::run_child(&[
        ("stream", stream_role),
        ("race", race_role),
        ("send_then_park", send_then_park),
        ("send_forever", send_forever),
        ("open_and_report", open_and_report),
        ("corrupter", corrupter),
        ("nobody_open", nobody_open),
        ("index_corrupter", index_corrupter),
        ("busy_out_of_descriptors", busy_out_of_descriptors),
        ("flood", flood),
        ("stray_writer", stray_writer),
        ("responder_fails", responder_fails),
    ]);
}

// --- messages ----------------------------------------------------------------------------------

fn checksum(data: &[u8]) -> u64 {
    let mut sum = 0xcbf2_9ce4_8422_2325u64 ^ data.len() as u64;
    for &b in data {
        sum = (sum ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    sum
}

/// Deterministic pseudo-random numbers (xorshift), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Length of message `seq` of a stream: the first `small` are 0..64 bytes, the rest 0..64 KiB.
fn length(rng: &mut Rng, seq: u64, small: u64) -> usize {
    let r = rng.next() as usize;
    if seq < small { r % 64 } else { r % (64 << 10) }
}

/// Message `seq` of `len` bytes: `seq u64 | checksum u64 | pattern` when there is room for the
/// header, else the first `len` bytes of `seq`.
fn message(seq: u64, len: usize, out: &mut Vec<u8>) {
    out.clear();
    if len < 16 {
        out.extend_from_slice(&seq.to_le_bytes()[..len.min(8)]);
        out.resize(len, 0xa5);
        return;
    }
    out.resize(len, 0);
    for (i, b) in out[16..].iter_mut().enumerate() {
        *b = (seq as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
    let sum = checksum(&out[16..]);
    out[..8].copy_from_slice(&seq.to_le_bytes());
    out[8..16].copy_from_slice(&sum.to_le_bytes());
}

fn check(seq: u64, expected_len: usize, got: &[u8]) {
    assert_eq!(got.len(), expected_len, "message {seq}: length");
    if got.len() < 16 {
        let mut want = Vec::new();
        message(seq, expected_len, &mut want);
        assert_eq!(got, want, "message {seq}: bytes");
        return;
    }
    let found = u64::from_le_bytes(got[..8].try_into().unwrap());
    assert_eq!(found, seq, "message out of order");
    let sum = u64::from_le_bytes(got[8..16].try_into().unwrap());
    assert_eq!(sum, checksum(&got[16..]), "message {seq}: checksum");
}

/// Sends `small + big` messages of the stream seeded `seed`.
fn send_stream(chan: &Duplex, seed: u64, small: u64, big: u64) {
    send_stream_with(|m| chan.send(m), seed, small, big);
}

/// As [`send_stream`], through any send function (a whole `Duplex` or a split-off sender).
fn send_stream_with(
    mut send: impl FnMut(&[u8]) -> memlink::Result<()>,
    seed: u64,
    small: u64,
    big: u64,
) {
    let mut rng = Rng::new(seed);
    let mut buf = Vec::new();
    for seq in 0..small + big {
        let len = length(&mut rng, seq, small);
        message(seq, len, &mut buf);
        send(&buf).unwrap();
    }
}

/// Receives and checks the stream seeded `seed`.
fn receive_stream(chan: &Duplex, seed: u64, small: u64, big: u64) {
    receive_stream_with(|m| chan.recv_into(m), seed, small, big);
}

/// As [`receive_stream`], through any receive function.
fn receive_stream_with(
    mut recv_into: impl FnMut(&mut Vec<u8>) -> memlink::Result<()>,
    seed: u64,
    small: u64,
    big: u64,
) {
    let mut rng = Rng::new(seed);
    let mut buf = Vec::new();
    for seq in 0..small + big {
        let len = length(&mut rng, seq, small);
        recv_into(&mut buf).unwrap();
        check(seq, len, &buf);
    }
}

// --- child roles -------------------------------------------------------------------------------

/// Sends its stream on one thread while receiving the peer's on another.
/// Args: name, my seed, peer seed, small count, big count, and optionally `split` (use
/// [`Duplex::split`]'s halves instead of one shared `Duplex`).
fn stream_role(args: &[String]) {
    let n = |i: usize| args[i].parse::<u64>().unwrap();
    let (mine, theirs, small, big) = (n(1), n(2), n(3), n(4));
    let duplex = Duplex::open_timeout(&args[0], WATCHDOG).unwrap();
    report("paired");
    let started = Instant::now();
    if args.get(5).is_some_and(|a| a == "split") {
        let (mut tx, mut rx) = duplex.split();
        let sender = std::thread::spawn(move || send_stream_with(|m| tx.send(m), mine, small, big));
        receive_stream_with(|m| rx.recv_into(m), theirs, small, big);
        sender.join().unwrap();
    } else {
        let chan = Arc::new(duplex);
        let sender = {
            let chan = chan.clone();
            std::thread::spawn(move || send_stream(&chan, mine, small, big))
        };
        receive_stream(&chan, theirs, small, big);
        sender.join().unwrap();
    }
    report(&format!("done {}", started.elapsed().as_millis()));
    // Stay until the parent has heard from both sides, so neither sees the other hang up early.
    await_parent();
}

/// Waits for "go", opens `name`, exchanges tokens with the peer. Args: names..., then our tag.
/// One thread per name, all released at once.
fn race_role(args: &[String]) {
    let (names, tag) = args.split_at(args.len() - 1);
    let tag = tag[0].clone();
    let barrier = Arc::new(Barrier::new(names.len()));
    report("ready");
    assert_eq!(await_parent(), "go");
    let threads: Vec<_> = names
        .iter()
        .cloned()
        .map(|name| {
            let (barrier, tag) = (barrier.clone(), tag.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let chan = Duplex::open_timeout(&name, WATCHDOG).unwrap();
                chan.send(format!("{tag}:{name}").as_bytes()).unwrap();
                let got = String::from_utf8(chan.recv().unwrap()).unwrap();
                // Wait for the peer's "bye" so that neither side drops before the other read.
                chan.send(b"bye").unwrap();
                assert_eq!(chan.recv().unwrap(), b"bye");
                got
            })
        })
        .collect();
    let got: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    report(&got.join(" "));
}

/// Opens, sends `count` stream messages, reports, and waits to be killed. Args: name, count, seed.
fn send_then_park(args: &[String]) {
    let chan = Duplex::open_timeout(&args[0], WATCHDOG).unwrap();
    let count: u64 = args[1].parse().unwrap();
    send_stream(&chan, args[2].parse().unwrap(), 0, count);
    report("sent");
    park_until_killed();
}

/// Opens and sends stream messages until killed. Args: name, seed.
fn send_forever(args: &[String]) {
    let chan = Duplex::open_timeout(&args[0], WATCHDOG).unwrap();
    report("paired");
    send_stream(&chan, args[1].parse().unwrap(), 0, u64::MAX / 2);
}

/// Opens `name` and reports the outcome (a third opener's `Busy` comes at once). Paired, it then receives one message
/// (args: name, "read") or reads nothing until the parent says so (args: name, "idle"; with
/// "idle-stay" it then waits for the parent once more before closing).
/// An optional third argument is the ring capacity (the pair's is the first opener's, so both
/// sides of a test that depends on it ask for the same).
fn open_and_report(args: &[String]) {
    let mut options = Duplex::options();
    if let Some(capacity) = args.get(2) {
        options = options.ring_capacity(capacity.parse().unwrap());
    }
    match options.open_timeout(&args[0], WATCHDOG) {
        Ok(chan) => {
            report("paired");
            let mode = args.get(1).map(String::as_str);
            if matches!(mode, Some("idle" | "idle-stay")) {
                // Reads nothing until told, then counts what is there.
                await_parent();
                let mut count = 0;
                while chan.recv_timeout(Duration::from_millis(300)).is_ok() {
                    count += 1;
                }
                report(&format!("received {count}"));
                if mode == Some("idle-stay") {
                    await_parent();
                }
            } else {
                let _ = chan.recv_timeout(WATCHDOG);
            }
        }
        Err(e) => report(&variant(&e)),
    }
}

/// Opens, sends a message, writes an impossible consumer index for the ring its peer sends on,
/// reports, and waits to be killed.
fn index_corrupter(args: &[String]) {
    let chan = Duplex::open_timeout(&args[0], WATCHDOG).unwrap();
    chan.send(b"sent before the lie").unwrap();
    chan.__corrupt_incoming_index().unwrap();
    report("corrupted");
    park_until_killed();
}

/// CPU time this process has used, in clock ticks (user + system), read from its open
/// `/proc/self/stat`.
fn cpu_ticks(file: &std::fs::File) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 4096];
    let len = file.read_at(&mut buf, 0).unwrap();
    let stat = String::from_utf8_lossy(&buf[..len]);
    // Fields after the command name (which ends with the last ')'): utime is the 12th, stime 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Opens first (the parent connects), then uses up every descriptor it may have, tells the
/// parent, and once the parent has queued a caller for the busy responder reports how many
/// clock ticks of CPU it used over the next second. Args: name.
fn busy_out_of_descriptors(args: &[String]) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let chan = Duplex::open_timeout(&args[0], WATCHDOG).unwrap();
    report("paired");
    let stat = std::fs::File::open("/proc/self/stat").unwrap();
    let highest = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap();
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = Some(highest + 1);
    setrlimit(Resource::Nofile, limit).unwrap();
    // Fill any holes below the limit.
    let mut held = Vec::new();
    while let Ok(fd) = std::fs::File::open("/dev/null") {
        held.push(fd);
    }
    report("full");
    await_parent();
    let before = cpu_ticks(&stat);
    std::thread::sleep(Duration::from_secs(1));
    report(&format!("ticks {}", cpu_ticks(&stat) - before));
    drop(chan);
}

/// Keeps `count` silent connections open to duplex channel `name`, re-opening whatever the other
/// side closes (or could not be opened: nobody listens yet). Args: name, count.
fn flood(args: &[String]) {
    use rustix::event::{PollFd, PollFlags, poll};
    let address = rustix::net::SocketAddrUnix::new_abstract_name(
        format!("memlink.duplex.{}", args[0]).as_bytes(),
    )
    .unwrap();
    let count: usize = args[1].parse().unwrap();
    let mut open = Vec::new();
    let mut reported = false;
    loop {
        while open.len() < count {
            let socket = rustix::net::socket_with(
                rustix::net::AddressFamily::UNIX,
                rustix::net::SocketType::SEQPACKET,
                rustix::net::SocketFlags::CLOEXEC,
                None,
            )
            .unwrap();
            if rustix::net::connect(&socket, &address).is_ok() {
                open.push(socket);
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if !reported {
            report("flooding");
            reported = true;
        }
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        open.retain(|socket| {
            let mut fds = [PollFd::new(socket, PollFlags::RDHUP | PollFlags::IN)];
            poll(&mut fds, Some(&zero)).unwrap_or(0) == 0
        });
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// As user nobody: says so, then opens `name` and reports the outcome.
fn nobody_open(args: &[String]) {
    drop_privileges_to_nobody();
    report("opening");
    match Duplex::open_timeout(&args[0], WATCHDOG) {
        Ok(chan) => {
            report("paired");
            let _ = chan.recv_timeout(WATCHDOG);
        }
        Err(e) => report(&variant(&e)),
    }
}

/// Opens, writes an impossible record into its outgoing ring, and waits to be killed.
fn corrupter(args: &[String]) {
    let chan = Duplex::open_timeout(&args[0], WATCHDOG).unwrap();
    chan.send(b"a fine message first").unwrap();
    chan.__corrupt_outgoing().unwrap();
    report("corrupted");
    // The victim drops us with a goodbye that says why.
    match chan.recv_timeout(WATCHDOG) {
        Ok(_) => report("received something"),
        Err(e) => report(&format!("{} {e}", variant(&e))),
    }
    park_until_killed();
}

// --- tests -------------------------------------------------------------------------------------

/// Both directions at once between two child processes, each side sending on one thread while it
/// receives on another: the 1,000,000 small messages (0-63 bytes) plus 20,000 of random
/// size up to 64 KiB, each way, every one checked by sequence number and checksum. Measured at
/// 1.7 s on the 2-core development machine, so the full count stays in the suite. The counts can
/// be changed with `MEMLINK_DUPLEX_SMALL` and `MEMLINK_DUPLEX_BIG`.
#[test]
fn both_directions_at_once_in_order_none_lost() {
    let _watchdog = Watchdog::arm();
    let env = |var: &str, default: u64| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (small, big) = (
        env("MEMLINK_DUPLEX_SMALL", 1_000_000).to_string(),
        env("MEMLINK_DUPLEX_BIG", 20_000).to_string(),
    );
    let name = unique_name("duplex-both");
    let mut a = ChildProcess::spawn("stream", &[&name, "1", "2", &small, &big]);
    let mut b = ChildProcess::spawn("stream", &[&name, "2", "1", &small, &big]);
    a.expect_line("paired");
    b.expect_line("paired");
    let (da, db) = (a.next_line(), b.next_line());
    assert!(
        da.starts_with("done ") && db.starts_with("done "),
        "{da} / {db}"
    );
    println!("{small} small + {big} big messages each way: {da} ms / {db} ms");
    a.tell("exit");
    b.tell("exit");
    a.wait_success();
    b.wait_success();
    assert_no_leftovers(&name);
}

/// The same with one side using [`Duplex::split`]'s lock-free halves and the other one shared
/// `Duplex`: the halves interoperate with the whole, in order, none lost.
#[test]
fn split_halves_in_both_directions_at_once_none_lost() {
    let _watchdog = Watchdog::arm();
    let (small, big) = ("200000", "2000");
    let name = unique_name("duplex-split");
    let mut a = ChildProcess::spawn("stream", &[&name, "1", "2", small, big, "split"]);
    let mut b = ChildProcess::spawn("stream", &[&name, "2", "1", small, big]);
    a.expect_line("paired");
    b.expect_line("paired");
    let (da, db) = (a.next_line(), b.next_line());
    assert!(
        da.starts_with("done ") && db.starts_with("done "),
        "{da} / {db}"
    );
    a.tell("exit");
    b.tell("exit");
    a.wait_success();
    b.wait_success();
    assert_no_leftovers(&name);
}

/// Dropping one half leaves the other working (the peer sees nothing amiss: its receiver keeps
/// waiting, our receiver keeps receiving); dropping both closes the channel for the peer.
#[test]
fn a_half_works_alone_and_dropping_both_disconnects_the_peer() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("duplex-halves");
    let other = {
        let name = name.clone();
        std::thread::spawn(move || Duplex::open_timeout(&name, WATCHDOG).unwrap())
    };
    let (tx, mut rx) = Duplex::open_timeout(&name, WATCHDOG).unwrap().split();
    let peer = other.join().unwrap();
    assert_eq!(tx.name(), name);
    assert_eq!(rx.peer_pid(), std::process::id());
    drop(tx);
    // The peer's receiver parks (long enough to have seen a closed wake pipe) and must find no
    // hang-up: our receiving half still lives.
    assert!(matches!(
        peer.recv_timeout(Duration::from_millis(300)),
        Err(memlink::Error::Timeout)
    ));
    peer.send(b"to the receiver").unwrap();
    assert_eq!(rx.recv().unwrap(), b"to the receiver");
    drop(rx);
    assert!(matches!(
        peer.recv_timeout(WATCHDOG),
        Err(memlink::Error::Disconnected { .. })
    ));
    // Once a receive has seen the peer gone, sends say so too.
    assert!(matches!(
        peer.send(b"x"),
        Err(memlink::Error::Disconnected { .. })
    ));
}

/// The receiving half alone: the peer still receives what our sending half sends.
#[test]
fn a_sending_half_works_after_the_receiving_half_is_dropped() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("duplex-sender-alone");
    let other = {
        let name = name.clone();
        std::thread::spawn(move || Duplex::open_timeout(&name, WATCHDOG).unwrap())
    };
    let (mut tx, rx) = Duplex::open_timeout(&name, WATCHDOG).unwrap().split();
    let peer = other.join().unwrap();
    drop(rx);
    std::thread::sleep(Duration::from_millis(50));
    tx.send(b"after the receiver left").unwrap();
    assert_eq!(peer.recv().unwrap(), b"after the receiver left");
}

/// 100 pairs opened at the same instant: every opener ends up connected to the other process's
/// opener of the same name, none to itself, none left waiting.
#[test]
fn simultaneous_openers_always_pair_with_each_other() {
    let _watchdog = Watchdog::arm();
    let names: Vec<String> = (0..100).map(|i| unique_name(&format!("race{i}"))).collect();
    let mut args: Vec<&str> = names.iter().map(String::as_str).collect();
    args.push("A");
    let mut a = ChildProcess::spawn("race", &args);
    *args.last_mut().unwrap() = "B";
    let mut b = ChildProcess::spawn("race", &args);
    a.expect_line("ready");
    b.expect_line("ready");
    a.tell("go");
    b.tell("go");
    let got_a: Vec<String> = a.next_line().split(' ').map(String::from).collect();
    let got_b: Vec<String> = b.next_line().split(' ').map(String::from).collect();
    for (i, name) in names.iter().enumerate() {
        assert_eq!(got_a[i], format!("B:{name}"), "A's opener of {name}");
        assert_eq!(got_b[i], format!("A:{name}"), "B's opener of {name}");
    }
    a.wait_success();
    b.wait_success();
}

/// A peer killed after sending: everything it sent is received first, then `Disconnected`.
#[test]
fn messages_sent_before_the_peer_died_are_received_first() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("duplex-dead");
    let mut child = ChildProcess::spawn("send_then_park", &[&name, "8", "7"]);
    let chan = Duplex::open_timeout(&name, WATCHDOG).unwrap();
    child.expect_line("sent");
    child.kill_and_reap();
    receive_stream(&chan, 7, 0, 8);
    let started = Instant::now();
    match chan.recv() {
        Err(Error::Disconnected { .. }) => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    // And it stays so, without waiting.
    assert!(matches!(chan.try_recv(), Err(Error::Disconnected { .. })));
    assert!(matches!(chan.send(b"x"), Err(Error::Disconnected { .. })));
}

/// Whether someone has bound duplex channel `name` (it waits for its peer, or holds a pair).
fn bound(name: &str) -> bool {
    let wanted = format!("@memlink.duplex.{name}");
    std::fs::read_to_string("/proc/net/unix").is_ok_and(|table| {
        table
            .lines()
            .any(|l| l.split_whitespace().last() == Some(&wanted))
    })
}

fn wait_until_bound(name: &str) {
    let deadline = Instant::now() + WATCHDOG;
    while !bound(name) {
        assert!(Instant::now() < deadline, "{name} never got bound");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The survivor's blocked `recv` is woken by the peer's death (SIGKILL mid-transfer, with a
/// message possibly half-written), after taking every whole message; never `Corrupted`, never a
/// hang. Run with each side opening first (the one that opens first accepts, the other
/// connects), which `/proc/net/unix` makes certain.
#[test]
fn blocked_recv_returns_disconnected_when_the_peer_is_killed_mid_transfer() {
    let _watchdog = Watchdog::arm();
    for child_first in [false, true] {
        let name = unique_name("duplex-kill");
        let (mut child, chan) = if child_first {
            let child = ChildProcess::spawn("send_forever", &[&name, "11"]);
            wait_until_bound(&name);
            (child, Duplex::open_timeout(&name, WATCHDOG).unwrap())
        } else {
            let opening = {
                let name = name.clone();
                std::thread::spawn(move || Duplex::open_timeout(&name, WATCHDOG).unwrap())
            };
            wait_until_bound(&name);
            let child = ChildProcess::spawn("send_forever", &[&name, "11"]);
            (child, opening.join().unwrap())
        };
        let chan = Arc::new(chan);
        child.expect_line("paired");
        let reader = {
            let chan = chan.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(11);
                let mut buf = Vec::new();
                let mut seq = 0;
                loop {
                    let len = length(&mut rng, seq, 0);
                    match chan.recv_into(&mut buf) {
                        Ok(()) => check(seq, len, &buf),
                        Err(e) => return (seq, e, Instant::now()),
                    }
                    seq += 1;
                }
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        let killed = Instant::now();
        child.kill_and_reap();
        let (received, error, returned) =
            with_watchdog("the blocked recv", move || reader.join().unwrap());
        let after = returned.saturating_duration_since(killed);
        println!(
            "child_first={child_first}: {received} messages, then {error:?} {after:?} after the kill"
        );
        assert!(matches!(error, Error::Disconnected { .. }), "{error:?}");
        assert!(received > 0, "nothing was transferred before the kill");
        assert!(after < Duration::from_secs(2), "woken only after {after:?}");
    }
}

/// The survivor's `send`, blocked on a full ring, is woken by the peer's death.
#[test]
fn blocked_send_returns_disconnected_when_the_peer_is_killed() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("duplex-full");
    let mut child = ChildProcess::spawn("open_and_report", &[&name, "idle", "65536"]);
    let chan = Arc::new(
        Duplex::options()
            .ring_capacity(64 << 10)
            .open_timeout(&name, WATCHDOG)
            .unwrap(),
    );
    child.expect_line("paired");
    // The child never reads: fill its ring.
    let mut sent = 0;
    loop {
        match chan.try_send(vec![sent as u8; 1000]) {
            Ok(()) => sent += 1,
            Err(TrySendError::Full(back)) => {
                assert_eq!(back, vec![sent as u8; 1000], "Full gives the message back");
                break;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(sent < 1000, "a 64 KiB ring took {sent} KB");
    }
    let sender = {
        let chan = chan.clone();
        std::thread::spawn(move || {
            let result = chan.send(&[1; 1000]);
            (result, Instant::now())
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(!sender.is_finished(), "send did not wait for room");
    let killed = Instant::now();
    child.kill_and_reap();
    let (result, returned) = with_watchdog("the blocked send", move || sender.join().unwrap());
    println!(
        "blocked send woken {:?} after the kill",
        returned.saturating_duration_since(killed)
    );
    assert!(
        matches!(result, Err(Error::Disconnected { .. })),
        "{result:?}"
    );
    assert!(returned.saturating_duration_since(killed) < Duration::from_secs(2));
}

/// A third opener of a complete pair gets `Busy`; once both ends are dropped the name pairs again.
#[test]
fn a_third_opener_is_busy_and_the_name_pairs_again_later() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("duplex-busy");
    for round in 0..2 {
        let mut peer = ChildProcess::spawn("open_and_report", &[&name, "read"]);
        let chan = Duplex::open_timeout(&name, WATCHDOG).unwrap();
        peer.expect_line("paired");
        let mut third = ChildProcess::spawn("open_and_report", &[&name]);
        third.expect_line("Busy");
        third.wait_success();
        // The in-process way too, with a message that says what to do.
        // (A generous timeout: `Busy` comes at once, but a loaded machine can be slow to run us.)
        let busy = Duplex::open_timeout(&name, WATCHDOG).unwrap_err();
        assert!(
            matches!(busy, Error::Busy { .. }),
            "round {round}: {busy:?}"
        );
        assert!(busy.to_string().contains("pick another name"), "{busy}");
        chan.send(b"bye").unwrap();
        drop(chan);
        peer.wait_success();
    }
    assert_no_leftovers(&name);
}

/// The busy responder of a process out of descriptors does not spin on a caller it cannot
/// accept: it pauses between tries (a busy loop would use the whole second of CPU).
#[test]
fn the_busy_responder_does_not_spin_when_out_of_descriptors() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("duplex-emfile");
    let mut first = ChildProcess::spawn("busy_out_of_descriptors", &[&name]);
    wait_until_bound(&name);
    let chan = Duplex::open_timeout(&name, WATCHDOG).unwrap();
    first.expect_line("paired");
    first.expect_line("full");
    // A caller the responder cannot accept: it stays queued, the listener stays readable.
    let socket = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let address =
        rustix::net::SocketAddrUnix::new_abstract_name(format!("memlink.duplex.{name}").as_bytes())
            .unwrap();
    rustix::net::connect(&socket, &address).unwrap();
    first.tell("go");
    let line = first.next_line();
    let ticks: u64 = line.strip_prefix("ticks ").unwrap().parse().unwrap();
    // 100 ticks a second: a spinning thread uses ~100; a pausing one next to none.
    assert!(
        ticks < 30,
        "the responder used {ticks} ticks of CPU in a second"
    );
    first.wait_success();
    drop(chan);
    drop(socket);
    assert_no_leftovers(&name);
}

/// One process, both ends: a send and a receive run at the same time on two threads of each end.
#[test]
fn send_and_recv_on_two_threads_at_once() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("duplex-threads");
    let other = {
        let name = name.clone();
        std::thread::spawn(move || Duplex::open_timeout(&name, WATCHDOG).unwrap())
    };
    let a = Arc::new(
        Duplex::options()
            .ring_capacity(16 << 10)
            .open_timeout(&name, WATCHDOG)
            .unwrap(),
    );
    let b = Arc::new(other.join().unwrap());
    let (small, big) = (20_000, 500);
    let threads = [
        (a.clone(), 1, true),
        (a.clone(), 2, false),
        (b.clone(), 2, true),
        (b.clone(), 1, false),
    ]
    .map(|(chan, seed, send)| {
        std::thread::spawn(move || {
            if send {
                send_stream(&chan, seed, small, big);
            } else {
                receive_stream(&chan, seed, small, big);
            }
        })
    });
    with_watchdog("four threads", move || {
        for t in threads {
            t.join().unwrap();
        }
    });
}

/// Timeouts and the non-blocking calls.
#[test]
fn timeouts_and_non_blocking_calls() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("duplex-timeouts");
    // No peer: Timeout, and the name is free again at once.
    let started = Instant::now();
    let lonely = Duplex::open_timeout(&name, Duration::from_millis(200));
    assert!(matches!(lonely, Err(Error::Timeout)), "{lonely:?}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    let mut peer = ChildProcess::spawn("open_and_report", &[&name, "idle", "4096"]);
    let chan = Duplex::options()
        .ring_capacity(4096)
        .max_message_size(100_000)
        .open_timeout(&name, WATCHDOG)
        .unwrap();
    peer.expect_line("paired");
    assert_eq!(chan.max_message_size(), 100_000);
    assert_eq!(chan.peer_pid(), peer.pid());
    // Nothing to receive.
    assert!(chan.try_recv().unwrap().is_none());
    let started = Instant::now();
    assert!(matches!(
        chan.recv_timeout(Duration::from_millis(100)),
        Err(Error::Timeout)
    ));
    assert!(started.elapsed() >= Duration::from_millis(100));
    // Too large: refused, nothing sent, still usable.
    assert!(matches!(
        chan.send(&[0; 100_001]),
        Err(Error::MessageTooLarge { .. })
    ));
    match chan.try_send(vec![0; 100_001]) {
        Err(TrySendError::Failed(back, Error::MessageTooLarge { .. })) => {
            assert_eq!(back.len(), 100_001)
        }
        other => panic!("{other:?}"),
    }
    // The peer does not read: a 4 KiB ring fills, try_send hands the message back, a timed send
    // times out.
    let mut sent = 0;
    while chan.try_send(vec![7; 500]).is_ok() {
        sent += 1;
        assert!(sent < 100);
    }
    assert!(sent > 0);
    assert!(matches!(
        chan.send_timeout(&[7; 500], Duration::from_millis(100)),
        Err(Error::Timeout)
    ));
    // The timed-out send left nothing behind: the peer gets exactly the messages sent.
    peer.tell("read");
    assert_eq!(peer.next_line(), format!("received {sent}"));
    drop(chan);
    peer.wait_success();
    assert_no_leftovers(&name);
}

/// A message that needs the whole ring plus end-of-ring padding never fits at once, so
/// `try_send` says so instead of `Full` forever on an empty ring: with a 4 KiB ring whose tail
/// is at 3072 (three 960-byte messages sent and received), a 3000-byte message (three
/// fragments, 3200 bytes of records) would need 1024 bytes of padding first.
#[test]
fn try_send_of_a_message_that_can_never_fit_at_once_says_so() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("duplex-never-fits");
    let mut peer = ChildProcess::spawn("open_and_report", &[&name, "idle-stay", "4096"]);
    let chan = Duplex::options()
        .ring_capacity(4096)
        .open_timeout(&name, WATCHDOG)
        .unwrap();
    peer.expect_line("paired");
    for _ in 0..3 {
        chan.try_send(vec![1; 960]).unwrap();
    }
    peer.tell("read");
    peer.expect_line("received 3");
    // The ring is empty now; `Full` would be a lie that no wait ever resolves.
    match chan.try_send(vec![2; 3000]) {
        Err(TrySendError::TooLargeForTrySend(back)) => assert_eq!(back, [2; 3000]),
        other => panic!("{:?}", other.map_err(|e| e.to_string())),
    }
    // Nothing was sent and the channel is still usable.
    chan.try_send(vec![3; 100]).unwrap();
    peer.tell("done");
    peer.wait_success();
    drop(chan);
    assert_no_leftovers(&name);
}

/// A stream of silent callers (our own user's, so the gate admits them) cannot keep the
/// accepting side past its deadline, nor keep the real peer out: callers wait for their hello
/// side by side, each with a deadline, and the opener's deadline is checked after every step.
#[test]
fn silent_callers_neither_overrun_the_deadline_nor_keep_the_peer_out() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("duplex-silent");
    // Pairing beside the flood.
    let opener = {
        let name = name.clone();
        std::thread::spawn(move || Duplex::open_timeout(&name, WATCHDOG))
    };
    wait_until_bound(&name);
    let mut flood = ChildProcess::spawn("flood", &[&name, "100"]);
    flood.expect_line("flooding");
    let mut peer = ChildProcess::spawn("open_and_report", &[&name, "read"]);
    peer.expect_line("paired");
    let chan = opener.join().unwrap().unwrap();
    chan.send(b"bye").unwrap();
    peer.wait_success();
    drop(chan);
    // No peer at all, only the flood (which connects as soon as we bind): Timeout, on time.
    let timeout = Duration::from_millis(1500);
    let started = Instant::now();
    let lonely = Duplex::open_timeout(&name, timeout);
    let took = started.elapsed();
    assert!(matches!(lonely, Err(Error::Timeout)), "{lonely:?}");
    assert!(
        took < timeout + Duration::from_secs(1),
        "open_timeout({timeout:?}) returned after {took:?}"
    );
    flood.kill_and_reap();
    assert_no_leftovers(&name);
}

/// Binds the abstract socket of duplex channel `name` and listens, accepting nobody.
fn squat(name: &str) -> std::os::fd::OwnedFd {
    let socket = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let address =
        rustix::net::SocketAddrUnix::new_abstract_name(format!("memlink.duplex.{name}").as_bytes())
            .unwrap();
    rustix::net::bind(&socket, &address).unwrap();
    rustix::net::listen(&socket, 16).unwrap();
    socket
}

/// A connecting side whose handshake step times out (the side holding the name never answers,
/// each attempt waits at most five seconds) keeps trying until its own deadline, never giving
/// up before it.
#[test]
fn the_connecting_side_waits_out_its_whole_deadline() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("duplex-patience");
    let squatter = squat(&name);
    let timeout = Duration::from_secs(6);
    let started = Instant::now();
    let result = Duplex::open_timeout(&name, timeout);
    let took = started.elapsed();
    assert!(matches!(result, Err(Error::Timeout)), "{result:?}");
    assert!(took >= timeout, "gave up after {took:?} of {timeout:?}");
    drop(squatter);
    assert_no_leftovers(&name);
}

/// A timed send of a message larger than the ring, cut short because the peer does not read,
/// closes the channel rather than leave half a message: later sends say `Disconnected`.
#[test]
fn a_send_timeout_cutting_a_message_short_closes_the_channel() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("duplex-cut");
    let mut peer = ChildProcess::spawn("open_and_report", &[&name, "idle", "4096"]);
    let chan = Duplex::options()
        .ring_capacity(4096)
        .open_timeout(&name, WATCHDOG)
        .unwrap();
    peer.expect_line("paired");
    let cut = chan.send_timeout(&[3; 100_000], Duration::from_millis(100));
    assert!(matches!(cut, Err(Error::Timeout)), "{cut:?}");
    let after = chan.send(b"x");
    assert!(
        matches!(after, Err(Error::Disconnected { .. })),
        "{after:?}"
    );
    peer.tell("read");
    assert_eq!(
        peer.next_line(),
        "received 0",
        "the peer got half a message"
    );
    peer.wait_success();
}

/// A receive that times out part-way through a message keeps what it has; the next receive
/// continues it, and the message arrives whole.
#[test]
fn recv_timeout_part_way_through_a_message_loses_nothing() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("duplex-partial");
    let other = {
        let name = name.clone();
        std::thread::spawn(move || {
            Duplex::options()
                .ring_capacity(4096)
                .open_timeout(&name, WATCHDOG)
                .unwrap()
        })
    };
    let a = Arc::new(
        Duplex::options()
            .ring_capacity(4096)
            .open_timeout(&name, WATCHDOG)
            .unwrap(),
    );
    let b = other.join().unwrap();
    let mut messages = Vec::new();
    for seq in 0..20u64 {
        let mut m = Vec::new();
        message(seq, 50_000 + seq as usize * 1000, &mut m);
        messages.push(m);
    }
    let sender = {
        let (a, messages) = (a.clone(), messages.clone());
        std::thread::spawn(move || {
            for m in &messages {
                a.send(m).unwrap();
                // Pauses mid-stream make the receiver's short timeouts expire part-way.
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let mut timeouts = 0;
    let mut buf = Vec::new();
    for (seq, m) in messages.iter().enumerate() {
        loop {
            match b.recv_into_timeout(&mut buf, Duration::from_micros(200)) {
                Ok(()) => break,
                Err(Error::Timeout) => timeouts += 1,
                Err(e) => panic!("{e}"),
            }
            assert!(timeouts < 1_000_000);
        }
        assert!(buf == *m, "message {seq} arrived damaged");
    }
    sender.join().unwrap();
    println!("{timeouts} timeouts along the way");
    assert!(
        timeouts > 0,
        "no receive timed out: the test proved nothing"
    );
}

/// A user the side that opened first does not admit is refused (and does not take the pair's
/// place); a side that opened first as another user is refused unless trusted.
#[test]
fn other_users_are_refused_unless_trusted() {
    if !is_root() {
        eprintln!("skipped: needs root to run a child as another user");
        return;
    }
    let _watchdog = Watchdog::arm();
    // We open first: nobody is refused, our own user then pairs.
    let name = unique_name("duplex-users");
    let waiting = {
        let name = name.clone();
        std::thread::spawn(move || Duplex::open_timeout(&name, WATCHDOG))
    };
    std::thread::sleep(Duration::from_millis(100));
    let mut intruder = ChildProcess::spawn("nobody_open", &[&name]);
    intruder.expect_line("opening");
    intruder.expect_line("PermissionDenied");
    intruder.wait_success();
    let mut friend = ChildProcess::spawn("open_and_report", &[&name, "read"]);
    friend.expect_line("paired");
    let chan = waiting.join().unwrap().unwrap();
    chan.send(b"bye").unwrap();
    friend.wait_success();
    drop(chan);
    // Nobody opens first: we refuse it, unless we trust its uid.
    let name = unique_name("duplex-trust");
    let mut other = ChildProcess::spawn("nobody_open", &[&name]);
    other.expect_line("opening");
    std::thread::sleep(Duration::from_millis(200));
    let refused = Duplex::open_timeout(&name, Duration::from_secs(2));
    assert!(
        matches!(refused, Err(Error::PermissionDenied { .. })),
        "{refused:?}"
    );
    let chan = Duplex::options()
        .trust_peer_uid(65534)
        .open_timeout(&name, WATCHDOG)
        .unwrap();
    other.expect_line("paired");
    chan.send(b"bye").unwrap();
    other.wait_success();
}

/// A process squatting the name with a socket that answers garbage, or a welcome without the
/// region: `open` fails with a clear error, never panics or hangs.
#[test]
fn a_squatter_answering_garbage_is_refused_cleanly() {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let _watchdog = Watchdog::arm();
    for answer in [
        b"not a memlink welcome at all".to_vec(),
        // magic, version 3, status 0 (accepted), capacity, max, pid, extra: but no descriptors.
        [
            &b"MLNK"[..],
            &3u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            &4096u32.to_le_bytes(),
            &1024u64.to_le_bytes(),
            &1u32.to_le_bytes(),
            &0u32.to_le_bytes(),
        ]
        .concat(),
    ] {
        let name = unique_name("duplex-squat");
        let listener = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let address =
            SocketAddrUnix::new_abstract_name(format!("memlink.duplex.{name}").as_bytes()).unwrap();
        rustix::net::bind(&listener, &address).unwrap();
        rustix::net::listen(&listener, 8).unwrap();
        let squatter = std::thread::spawn(move || {
            let connection = rustix::net::accept(&listener).unwrap();
            rustix::net::send(&connection, &answer, rustix::net::SendFlags::empty()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        });
        let error = with_watchdog("opening against a squatter", move || {
            Duplex::open_timeout(&name, Duration::from_secs(5)).unwrap_err()
        });
        assert!(
            matches!(error, Error::Incompatible { .. } | Error::Corrupted { .. }),
            "{error:?}"
        );
        squatter.join().unwrap();
    }
}

/// A peer that writes an impossible record into its ring: our receive says `Corrupted` (after
/// the whole message before it), never panics or hangs.
#[test]
fn a_corrupting_peer_gets_corrupted_not_a_panic_or_hang() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("duplex-hostile");
    let mut child = ChildProcess::spawn("corrupter", &[&name]);
    let chan = Duplex::open_timeout(&name, WATCHDOG).unwrap();
    child.expect_line("corrupted");
    assert_eq!(chan.recv().unwrap(), b"a fine message first");
    let error = with_watchdog("recv from a corrupter", move || {
        let error = chan.recv().unwrap_err();
        // It stays broken, and sending fails too.
        assert!(matches!(chan.try_recv(), Err(Error::Corrupted { .. })));
        assert!(chan.send(b"x").is_err());
        error
    });
    assert!(matches!(error, Error::Corrupted { .. }), "{error:?}");
    let told = child.next_line();
    assert!(
        told.starts_with("Corrupted ") && told.contains("dropped this connection"),
        "{told}"
    );
}

/// A peer that writes an impossible consumer index into the ring we send on: the first send that
/// looks at it says `Corrupted`, and none writes outside the ring, panics or hangs. A sender reads
/// the consumer's index only when the last one it saw leaves too little room, so at the latest
/// once the ring (which this peer never reads) looks full.
#[test]
fn a_peer_lying_about_what_it_read_gets_corrupted() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("duplex-index");
    let mut child = ChildProcess::spawn("index_corrupter", &[&name]);
    let chan = Duplex::open_timeout(&name, WATCHDOG).unwrap();
    child.expect_line("corrupted");
    let error = with_watchdog("send to an index corrupter", move || {
        // 1,000-byte messages fill the default 256 KiB ring within 256 sends.
        let mut sent = 0;
        let error = loop {
            match chan.send(&[1; 1000]) {
                Ok(()) => sent += 1,
                Err(error) => break error,
            }
            assert!(sent <= 256, "the impossible index was never looked at");
        };
        match chan.try_send(vec![2; 10]) {
            Err(TrySendError::Failed(back, _)) => assert_eq!(back, [2; 10]),
            other => panic!("{other:?}"),
        }
        // The connection is over for the receive half too, for the same reason: nothing more
        // is taken from a peer found corrupt.
        let received = chan.try_recv();
        match (&received, &error) {
            (Err(Error::Corrupted { reason: got, .. }), Error::Corrupted { reason: sent, .. }) => {
                assert_eq!(got, sent)
            }
            _ => panic!("{received:?} after {error:?}"),
        }
        error
    });
    assert!(matches!(error, Error::Corrupted { .. }), "{error:?}");
}

/// Opens first, with its busy responder made to fail after the connector's acknowledgement;
/// reports the outcome. Args: name.
fn responder_fails(args: &[String]) {
    Duplex::__fail_next_busy_responder();
    match Duplex::open_timeout(&args[0], WATCHDOG) {
        Ok(_) => report("paired"),
        Err(e) => report(&variant(&e)),
    }
}

/// The connecting side reports a pair only once the accepting side confirms it: when the
/// accepting side fails after our acknowledgement, we start over (here, alone: `Timeout`)
/// instead of holding a pair that never formed.
#[test]
fn a_pair_the_accepting_side_never_completed_is_not_reported() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("duplex-unconfirmed");
    let mut first = ChildProcess::spawn("responder_fails", &[&name]);
    wait_until_bound(&name);
    let result = Duplex::open_timeout(&name, Duration::from_millis(1500));
    assert!(matches!(result, Err(Error::Timeout)), "{result:?}");
    assert_eq!(first.next_line(), "Os");
    first.wait_success();
    assert_no_leftovers(&name);
}

/// A name too long for an abstract socket address is an invalid name that says the limit, not
/// an OS error; the longest allowed works.
#[test]
fn a_name_too_long_for_a_socket_is_invalid() {
    let _watchdog = Watchdog::arm();
    let base = unique_name("duplex-long");
    let longest = format!("{base}{}", "x".repeat(92 - base.len()));
    let too_long = format!("{longest}x");
    match Duplex::open_timeout(&too_long, Duration::from_millis(10)) {
        Err(Error::InvalidName { reason, .. }) => assert!(reason.contains("92"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let lonely = Duplex::open_timeout(&longest, Duration::from_millis(10));
    assert!(matches!(lonely, Err(Error::Timeout)), "{lonely:?}");
    assert_no_leftovers(&longest);
}

/// Sends a stray message on the connection's socket (as a buggy peer could), reports, and says
/// what the peer then told it. Args: name.
fn stray_writer(args: &[String]) {
    let chan = Duplex::open_timeout(&args[0], WATCHDOG).unwrap();
    chan.__send_stray_socket_message().unwrap();
    report("sent");
    match chan.recv_timeout(Duration::from_secs(5)) {
        Ok(_) => report("received something"),
        Err(e) => report(&format!("{} {e}", variant(&e))),
    }
    park_until_killed();
}

/// A peer that writes something other than a goodbye on the connection's socket broke the
/// protocol: we report `Corrupted` (not `Disconnected`: it is alive), on both halves alike, and
/// hang up with a goodbye that tells it why.
#[test]
fn a_stray_socket_message_is_corrupted_and_the_peer_is_told() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("duplex-stray");
    let mut child = ChildProcess::spawn("stray_writer", &[&name]);
    let chan = Duplex::open_timeout(&name, WATCHDOG).unwrap();
    child.expect_line("sent");
    let (received, sent) = with_watchdog("recv after a stray message", move || {
        (chan.recv().unwrap_err(), chan.send(b"x").unwrap_err())
    });
    match (&received, &sent) {
        (Error::Corrupted { reason: a, .. }, Error::Corrupted { reason: b, .. }) => {
            assert_eq!(a, b);
            assert!(a.contains("unexpected message"), "{a}");
        }
        _ => panic!("{received:?} / {sent:?}"),
    }
    let told = child.next_line();
    assert!(
        told.starts_with("Corrupted ") && told.contains("dropped this connection"),
        "{told}"
    );
    child.kill_and_reap();
}
