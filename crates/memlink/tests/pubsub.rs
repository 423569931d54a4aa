//! Publish/subscribe across real processes: fan-out to many subscribers with every sample
//! checked, exact lag accounting, publisher and subscriber SIGKILLs, restarts, history, holds,
//! hostile subscribers and a hostile publisher, and the seal that keeps subscribers from writing.

mod common;

use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use common::{
    ChildProcess, WATCHDOG, Watchdog, assert_no_leftovers, await_parent, drop_privileges_to_nobody,
    is_root, park_until_killed, report, unique_name, variant, with_watchdog,
};
use memlink::{Error, Permissions, Publisher, Subscriber};

#[test]
fn child_main() {
    common::run_child(&[
        ("verify_all", verify_all),
        ("publish_and_park", publish_and_park),
        ("hold_and_park", hold_and_park),
        ("scribbler", scribbler),
        ("second_publisher", second_publisher),
        ("late_joiner", late_joiner),
        ("hold_and_check", hold_and_check),
        ("try_to_write", try_to_write),
        ("nobody_publisher", nobody_publisher),
        ("corrupt_publisher", corrupt_publisher),
        ("subscribe_and_park", subscribe_and_park),
        ("poll_for", poll_for),
        ("handler_keeps_one", handler_keeps_one),
    ]);
}

// --- samples -----------------------------------------------------------------------------------

/// A fast checksum over 8-byte words (the fan-out test checks hundreds of megabytes).
fn checksum(data: &[u8]) -> u64 {
    let mut sum = 0x9e37_79b9_7f4a_7c15u64 ^ data.len() as u64;
    let mut words = data.chunks_exact(8);
    for word in &mut words {
        let w = u64::from_le_bytes(word.try_into().unwrap());
        sum = (sum ^ w).wrapping_mul(0x100_0000_01b3).rotate_left(23);
    }
    for &b in words.remainder() {
        sum = (sum ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    sum
}

/// Length of sample `seq`: mostly small, now and then up to 16 KiB (deterministic).
fn length(seq: u64) -> usize {
    let r = seq.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
    if seq.is_multiple_of(64) {
        (r % (16 << 10)) as usize
    } else {
        (r % 512) as usize
    }
}

/// Writes sample `seq` into `out` (its length is `out.len()`): `seq u64 | checksum u64 | pattern`
/// when there is room, else the first bytes of `seq`.
fn fill(seq: u64, out: &mut [u8]) {
    if out.len() < 16 {
        let n = out.len().min(8);
        out[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
        out[n..].fill(0xa5);
        return;
    }
    for (i, b) in out[16..].iter_mut().enumerate() {
        *b = (seq as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
    let sum = checksum(&out[16..]);
    out[..8].copy_from_slice(&seq.to_le_bytes());
    out[8..16].copy_from_slice(&sum.to_le_bytes());
}

/// Whether `sample` is sample `seq` as [`fill`] writes it.
fn is_sample(seq: u64, sample: &[u8]) -> bool {
    if sample.len() != length(seq) {
        return false;
    }
    if sample.len() < 16 {
        let mut expected = vec![0; sample.len()];
        fill(seq, &mut expected);
        return expected == sample;
    }
    sample[..8] == seq.to_le_bytes()
        && sample[8..16] == checksum(&sample[16..]).to_le_bytes()
        && sample[16..]
            .first()
            .is_none_or(|&b| b == (seq as usize).wrapping_mul(31) as u8)
}

fn publish_sample(publisher: &mut Publisher, seq: u64) {
    let len = length(seq);
    if seq.is_multiple_of(2) {
        let mut loan = publisher.loan(len).unwrap();
        fill(seq, &mut loan);
        assert_eq!(loan.send().unwrap(), seq);
    } else {
        let mut bytes = vec![0; len];
        fill(seq, &mut bytes);
        assert_eq!(publisher.publish(&bytes).unwrap(), seq);
    }
}

/// Waits (bounded) until the publisher has `n` subscribers.
fn await_subscribers(publisher: &Publisher, n: usize) {
    let deadline = Instant::now() + WATCHDOG;
    while publisher.subscriber_count() != n {
        assert!(Instant::now() < deadline, "subscribers did not all arrive");
        std::thread::sleep(Duration::from_millis(2));
    }
}

// --- fan-out -----------------------------------------------------------------------------------

/// Subscribes (before or after the publisher exists), reports, then takes samples until the
/// publisher goes: a fast one checks every sample in order, a slow one (args[1] == "slow", lossy)
/// sleeps now and then and reports what it received and what it was told it missed.
fn verify_all(args: &[String]) {
    let slow = args[1] == "slow";
    let options = if slow {
        Subscriber::options().lossy()
    } else {
        Subscriber::options()
    };
    let mut subscriber = options.subscribe(&args[0]).unwrap();
    report("subscribed");
    let (mut received, mut missed, mut next) = (0u64, 0u64, 0u64);
    loop {
        match subscriber.recv() {
            Ok(sample) => {
                assert_eq!(sample.sequence(), next, "out of order");
                assert!(sample.is_zero_copy());
                if !is_sample(next, &sample) {
                    report(&format!("bad sample {next}"));
                    return;
                }
                received += 1;
                next += 1;
                if slow && received % 5000 == 0 {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Err(Error::Lagged { missed: n, .. }) => {
                assert!(slow, "a reliable subscriber lagged");
                missed += n;
                next += n;
            }
            Err(Error::Disconnected { .. }) => break,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    report(&format!("received {received} missed {missed}"));
}

#[test]
fn eight_subscribers_check_every_sample_and_a_slow_one_counts_exactly_what_it_missed() {
    let _watchdog = Watchdog::arm();
    const SAMPLES: u64 = 1_000_000;
    let topic = unique_name("fanout");
    // Subscribers first: they wait for the publisher.
    let mut fast: Vec<ChildProcess> = (0..8)
        .map(|_| ChildProcess::spawn("verify_all", &[&topic, "fast"]))
        .collect();
    let mut slow = ChildProcess::spawn("verify_all", &[&topic, "slow"]);
    std::thread::sleep(Duration::from_millis(50));
    let mut publisher = Publisher::options()
        .capacity(256)
        .max_sample_size(16 << 10)
        .reliable(WATCHDOG)
        .create(&topic)
        .unwrap();
    for child in fast.iter_mut().chain([&mut slow]) {
        child.expect_line("subscribed");
    }
    await_subscribers(&publisher, 9);
    for seq in 0..SAMPLES {
        publish_sample(&mut publisher, seq);
    }
    drop(publisher);
    for child in &mut fast {
        child.expect_line(&format!("received {SAMPLES} missed 0"));
        child.wait_success();
    }
    let line = slow.next_line();
    let counts: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(counts.len(), 2, "{line}");
    assert_eq!(counts[0] + counts[1], SAMPLES, "{line}");
    assert!(counts[1] > 0, "the slow subscriber never lagged: {line}");
    slow.wait_success();
    assert_no_leftovers(&topic);
}

// --- publisher death and restart ---------------------------------------------------------------

/// Creates the topic, publishes args[1] samples (0, 1, ...), reports, and parks.
fn publish_and_park(args: &[String]) {
    let mut publisher = Publisher::create(&args[0]).unwrap();
    report("created");
    let n: u64 = args[1].parse().unwrap();
    if n > 0 {
        await_subscribers(&publisher, 1);
    }
    for seq in 0..n {
        publish_sample(&mut publisher, seq);
    }
    report("published");
    park_until_killed();
}

#[test]
fn a_killed_publisher_wakes_its_subscribers_after_its_samples_and_a_new_one_is_picked_up() {
    let _watchdog = Watchdog::arm();
    let topic = unique_name("restart");
    assert!(matches!(
        Subscriber::try_subscribe(&topic),
        Err(Error::NotRunning { .. })
    ));
    let mut first = ChildProcess::spawn("publish_and_park", &[&topic, "10"]);
    first.expect_line("created");
    let mut subscriber = Subscriber::subscribe(&topic).unwrap();
    assert_eq!(subscriber.publisher_pid(), Some(first.pid()));
    first.expect_line("published");
    first.kill_and_reap();
    // What it published is still received, then the hang-up.
    for seq in 0..10 {
        let sample = subscriber.recv_timeout(WATCHDOG).unwrap();
        assert_eq!(sample.sequence(), seq);
        assert!(is_sample(seq, &sample));
    }
    let gone = subscriber.recv_timeout(WATCHDOG);
    assert!(matches!(gone, Err(Error::Disconnected { .. })), "{gone:?}");

    // A blocked receive wakes when the publisher is killed.
    let mut second = ChildProcess::spawn("publish_and_park", &[&topic, "0"]);
    second.expect_line("created");
    let (tx, rx) = channel();
    let waiter = std::thread::spawn(move || {
        // Attaches to the new publisher, then blocks.
        let started = subscriber.recv_timeout(WATCHDOG);
        let _ = tx.send((started, Instant::now()));
        subscriber
    });
    let deadline = Instant::now() + WATCHDOG;
    while memlink::pubsub::topic_stats(&topic).map_or(true, |s| s.subscribers.is_empty()) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(50));
    let killed = Instant::now();
    second.kill_and_reap();
    let (woken, at) = rx.recv_timeout(WATCHDOG).unwrap();
    assert!(
        matches!(woken, Err(Error::Disconnected { .. })),
        "{woken:?}"
    );
    let latency = at.duration_since(killed);
    eprintln!("blocked subscriber woke {latency:?} after the publisher's SIGKILL");
    // The goal is 100 ms; a generous bound keeps a loaded machine from failing the test.
    assert!(latency < Duration::from_secs(2), "{latency:?}");
    let mut subscriber = waiter.join().unwrap();

    // The same subscriber picks up a third publisher, from its first sample.
    let mut third = ChildProcess::spawn("publish_and_park", &[&topic, "3"]);
    third.expect_line("created");
    for seq in 0..3 {
        let sample = subscriber.recv_timeout(WATCHDOG).unwrap();
        assert_eq!(sample.sequence(), seq);
        assert!(is_sample(seq, &sample));
    }
    assert_eq!(subscriber.publisher_pid(), Some(third.pid()));
    third.expect_line("published");
    drop(third);
    assert_no_leftovers(&topic);
}

// --- subscriber death while holding --------------------------------------------------------------

/// Subscribes, reports, receives args[1] samples and keeps them all, reports, parks.
fn hold_and_park(args: &[String]) {
    let mut subscriber = Subscriber::subscribe(&args[0]).unwrap();
    report("subscribed");
    let n: usize = args[1].parse().unwrap();
    let held: Vec<_> = (0..n)
        .map(|_| subscriber.recv_timeout(WATCHDOG).unwrap())
        .collect();
    report(&format!("holding {}", held.len()));
    park_until_killed();
}

#[test]
fn a_subscriber_killed_while_holding_samples_gives_its_slots_back() {
    let _watchdog = Watchdog::arm();
    let topic = unique_name("holder");
    let mut publisher = Publisher::options()
        .capacity(4)
        .max_subscribers(2)
        .max_held_per_subscriber(4)
        .create(&topic)
        .unwrap();
    let mut holder = ChildProcess::spawn("hold_and_park", &[&topic, "4"]);
    holder.expect_line("subscribed");
    for seq in 0..4 {
        publish_sample(&mut publisher, seq);
    }
    holder.expect_line("holding 4");
    // Many more samples than slots: the held four are never reused, nothing runs out.
    for seq in 4..1000 {
        publish_sample(&mut publisher, seq);
    }
    assert_eq!(publisher.held_slots(), 4);
    holder.kill_and_reap();
    let killed = Instant::now();
    while publisher.held_slots() != 0 {
        assert!(
            killed.elapsed() < WATCHDOG,
            "the held slots never came back"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    eprintln!("slots came back {:?} after the SIGKILL", killed.elapsed());
    assert!(killed.elapsed() < Duration::from_secs(2));
    assert_eq!(publisher.subscriber_count(), 0);
    assert_no_leftovers(&topic);
}

// --- hostile subscriber ------------------------------------------------------------------------

/// Subscribes, takes one sample, then (args[1]) either writes hold records naming no slot
/// ("garbage"), or pins as many valid slots as it has records ("pin"); reports what its next
/// receives say.
fn scribbler(args: &[String]) {
    let mut subscriber = Subscriber::subscribe(&args[0]).unwrap();
    report("subscribed");
    drop(subscriber.recv_timeout(WATCHDOG).unwrap());
    let value = if args[1] == "garbage" { 1_000_000 } else { 1 };
    subscriber.__scribble_hold_records(value).unwrap();
    report("scribbled");
    if args[1] == "pin" {
        // Keep the pins until the parent has looked.
        assert_eq!(await_parent(), "go");
    }
    loop {
        match subscriber.recv_timeout(WATCHDOG) {
            Ok(_) | Err(Error::Lagged { .. }) => {}
            Err(e) => {
                report(&variant(&e));
                return;
            }
        }
    }
}

#[test]
fn a_subscriber_writing_garbage_hold_records_is_dropped_and_nobody_else_notices() {
    let _watchdog = Watchdog::arm();
    let topic = unique_name("scribble");
    let mut publisher = Publisher::options()
        .capacity(256)
        .max_subscribers(3)
        .max_held_per_subscriber(2)
        .create(&topic)
        .unwrap();
    let mut garbage = ChildProcess::spawn("scribbler", &[&topic, "garbage"]);
    let mut pinner = ChildProcess::spawn("scribbler", &[&topic, "pin"]);
    let mut honest = ChildProcess::spawn("verify_all", &[&topic, "fast"]);
    for child in [&mut garbage, &mut pinner, &mut honest] {
        child.expect_line("subscribed");
    }
    await_subscribers(&publisher, 3);
    publish_sample(&mut publisher, 0);
    garbage.expect_line("scribbled");
    pinner.expect_line("scribbled");
    // Enough samples to make the publisher scan the hold records many times over.
    for seq in 1..2000 {
        publish_sample(&mut publisher, seq);
        if seq.is_multiple_of(64) {
            // Give the honest subscriber time to keep up (the topic is lossy, and it must not
            // lag: it verifies every sample).
            while memlink::pubsub::topic_stats(&topic)
                .unwrap()
                .subscribers
                .iter()
                .any(|s| s.pid == honest.pid() && s.lag > 0)
            {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
    garbage.expect_line("Corrupted");
    assert_eq!(publisher.subscriber_count(), 2);
    // The pinner's two records both name slot 0: pinned, and bounded by its share. (The honest
    // subscriber, caught up, holds nothing.)
    let deadline = Instant::now() + WATCHDOG;
    while memlink::pubsub::topic_stats(&topic)
        .unwrap()
        .subscribers
        .iter()
        .any(|s| s.pid == honest.pid() && (s.lag > 0 || s.held > 0))
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(publisher.held_slots(), 1);
    pinner.tell("go");
    drop(publisher);
    honest.expect_line("received 2000 missed 0");
    pinner.expect_line("Disconnected");
    for child in [&mut garbage, &mut pinner, &mut honest] {
        child.wait_success();
    }
}

// --- names, history, holds ----------------------------------------------------------------------

fn second_publisher(args: &[String]) {
    match Publisher::create(&args[0]) {
        Err(Error::AlreadyRunning { pid, .. }) => report(&format!("already running {pid}")),
        other => report(&format!("unexpected {other:?}")),
    }
}

#[test]
fn a_second_publisher_of_a_topic_gets_already_running() {
    let _watchdog = Watchdog::arm();
    let topic = unique_name("second");
    let publisher = Publisher::create(&topic).unwrap();
    let mut child = ChildProcess::spawn("second_publisher", &[&topic]);
    child.expect_line(&format!("already running {}", std::process::id()));
    child.wait_success();
    drop(publisher);
    // The name is free again at once.
    drop(Publisher::create(&topic).unwrap());
}

/// Subscribes after samples were published and reports the sequence numbers it gets first.
fn late_joiner(args: &[String]) {
    let mut subscriber = Subscriber::subscribe(&args[0]).unwrap();
    report("subscribed");
    let n: usize = args[1].parse().unwrap();
    let seqs: Vec<String> = (0..n)
        .map(|_| {
            let sample = subscriber.recv_timeout(WATCHDOG).unwrap();
            assert!(is_sample(sample.sequence(), &sample));
            sample.sequence().to_string()
        })
        .collect();
    report(&seqs.join(","));
}

#[test]
fn a_late_subscriber_gets_the_history_then_what_follows() {
    let _watchdog = Watchdog::arm();
    let topic = unique_name("history");
    let mut publisher = Publisher::options()
        .capacity(8)
        .history(3)
        .create(&topic)
        .unwrap();
    for seq in 0..10 {
        publish_sample(&mut publisher, seq);
    }
    let mut child = ChildProcess::spawn("late_joiner", &[&topic, "5"]);
    child.expect_line("subscribed");
    await_subscribers(&publisher, 1);
    publish_sample(&mut publisher, 10);
    publish_sample(&mut publisher, 11);
    child.expect_line("7,8,9,10,11");
    child.wait_success();
}

/// Holds sample 0 while the publisher moves far on, then checks it is unchanged; then holds as
/// many as it may and reports what one more receive says.
fn hold_and_check(args: &[String]) {
    let mut subscriber = Subscriber::subscribe(&args[0]).unwrap();
    report("subscribed");
    let first = subscriber.recv_timeout(WATCHDOG).unwrap();
    let before = first.to_vec();
    report("holding");
    assert_eq!(await_parent(), "check");
    let unchanged = first.as_ref() == before.as_slice() && is_sample(0, &first);
    report(if unchanged { "unchanged" } else { "changed" });
    // Samples 1.. were overwritten meanwhile: the next receive says how many were missed.
    let mut held = vec![first];
    let lagged = subscriber.recv_timeout(WATCHDOG);
    report(&variant(&lagged.unwrap_err()));
    while held.len() < 2 {
        held.push(subscriber.recv_timeout(WATCHDOG).unwrap());
    }
    report(&variant(&subscriber.recv_timeout(WATCHDOG).unwrap_err()));
    held.pop();
    // The publisher may have moved on again meanwhile.
    let next = loop {
        match subscriber.recv_timeout(WATCHDOG) {
            Err(Error::Lagged { .. }) => {}
            other => break other.unwrap(),
        }
    };
    report(&format!("then {}", is_sample(next.sequence(), &next)));
}

#[test]
fn a_held_sample_never_changes_and_a_subscriber_holds_at_most_its_share() {
    let _watchdog = Watchdog::arm();
    let topic = unique_name("hold");
    let mut publisher = Publisher::options()
        .capacity(4)
        .max_held_per_subscriber(2)
        .create(&topic)
        .unwrap();
    let mut child = ChildProcess::spawn("hold_and_check", &[&topic]);
    child.expect_line("subscribed");
    await_subscribers(&publisher, 1);
    publish_sample(&mut publisher, 0);
    child.expect_line("holding");
    for seq in 1..500 {
        publish_sample(&mut publisher, seq);
    }
    child.tell("check");
    child.expect_line("unchanged");
    child.expect_line("Lagged");
    child.expect_line("TooManyHeld");
    for seq in 500..510 {
        publish_sample(&mut publisher, seq);
    }
    child.expect_line("then true");
    child.wait_success();
}

// --- the seal -----------------------------------------------------------------------------------

/// Subscribes, then tries every way of writing the broadcast region it can think of, through the
/// mapping it was given and through a descriptor reopened from it; reports each result.
fn try_to_write(args: &[String]) {
    use std::os::fd::AsFd;
    let mut subscriber = Subscriber::subscribe(&args[0]).unwrap();
    let sample = subscriber.recv_timeout(WATCHDOG).unwrap();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps
        .lines()
        .find(|l| l.contains("memlink-topic"))
        .expect("the topic's region is mapped");
    let range = line.split_whitespace().next().unwrap();
    let (start, end) = range.split_once('-').unwrap();
    let start = usize::from_str_radix(start, 16).unwrap();
    let len = usize::from_str_radix(end, 16).unwrap() - start;
    let mut results = Vec::new();
    // SAFETY: changes only the protection of the region's own pages (expected to fail).
    let mprotect = unsafe {
        rustix::mm::mprotect(
            start as *mut _,
            len,
            rustix::mm::MprotectFlags::READ | rustix::mm::MprotectFlags::WRITE,
        )
    };
    results.push(format!(
        "mprotect {:?}",
        mprotect.err().map(|e| e.raw_os_error())
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/map_files/{range}"))
        .unwrap();
    // SAFETY: a fresh shared writable mapping (expected to fail); unmapped below if not.
    let mapped = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::SHARED,
            file.as_fd(),
            0,
        )
    };
    results.push(format!(
        "mmap {:?}",
        mapped.as_ref().err().map(|e| e.raw_os_error())
    ));
    if let Ok(ptr) = mapped {
        // SAFETY: the mapping just made, not used since.
        let _ = unsafe { rustix::mm::munmap(ptr, len) };
    }
    results.push(format!(
        "write {:?}",
        rustix::io::pwrite(&file, b"x", 0)
            .err()
            .map(|e| e.raw_os_error())
    ));
    results.push(format!(
        "punch {:?}",
        rustix::fs::fallocate(
            &file,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            0,
            4096,
        )
        .err()
        .map(|e| e.raw_os_error())
    ));
    results.push(format!(
        "truncate {:?}",
        rustix::fs::ftruncate(&file, 0)
            .err()
            .map(|e| e.raw_os_error())
    ));
    report(&results.join("; "));
    report(if is_sample(0, &sample) {
        "intact"
    } else {
        "changed"
    });
}

#[test]
fn a_subscriber_cannot_write_the_topic_in_any_way() {
    if !is_root() {
        eprintln!("skipped: /proc/PID/map_files needs root");
        return;
    }
    let _watchdog = Watchdog::arm();
    let topic = unique_name("seal");
    let mut publisher = Publisher::create(&topic).unwrap();
    let mut child = ChildProcess::spawn("try_to_write", &[&topic]);
    await_subscribers(&publisher, 1);
    publish_sample(&mut publisher, 0);
    // EACCES for the protection change, EPERM (the seals) for everything else.
    child.expect_line(
        "mprotect Some(13); mmap Some(1); write Some(1); punch Some(1); truncate Some(1)",
    );
    child.expect_line("intact");
    child.wait_success();
}

// --- trust -------------------------------------------------------------------------------------

/// As user nobody: creates a topic everyone may subscribe to, publishes args[1] samples once a
/// subscriber is there, parks.
fn nobody_publisher(args: &[String]) {
    drop_privileges_to_nobody();
    let mut publisher = Publisher::options()
        .permissions(Permissions::Everyone)
        .create(&args[0])
        .unwrap();
    report("created");
    await_subscribers(&publisher, 1);
    for seq in 0..args[1].parse().unwrap() {
        publish_sample(&mut publisher, seq);
    }
    report("published");
    park_until_killed();
}

#[test]
fn a_publisher_of_another_user_is_refused_unless_trusted_and_then_copied() {
    if !is_root() {
        eprintln!("skipped: needs root to run a publisher as another user");
        return;
    }
    let _watchdog = Watchdog::arm();
    let topic = unique_name("nobody");
    let mut child = ChildProcess::spawn("nobody_publisher", &[&topic, "20"]);
    child.expect_line("created");
    let refused = Subscriber::try_subscribe(&topic);
    assert!(
        matches!(refused, Err(Error::PermissionDenied { .. })),
        "{refused:?}"
    );
    let mut subscriber = Subscriber::options()
        .trust_publisher_uid(65534)
        .try_subscribe(&topic)
        .unwrap();
    for seq in 0..20 {
        let sample = subscriber.recv_timeout(WATCHDOG).unwrap();
        assert!(!sample.is_zero_copy());
        assert!(is_sample(seq, &sample));
    }
    child.expect_line("published");
}

// --- hostile publisher --------------------------------------------------------------------------

fn corrupt_publisher(args: &[String]) {
    let mut publisher = Publisher::create(&args[0]).unwrap();
    report("created");
    await_subscribers(&publisher, 1);
    publish_sample(&mut publisher, 0);
    publisher.__publish_corrupt_entry().unwrap();
    report("published");
    park_until_killed();
}

#[test]
fn a_publisher_describing_a_slot_outside_the_topic_gets_corrupted() {
    let _watchdog = Watchdog::arm();
    let topic = unique_name("badpub");
    let mut child = ChildProcess::spawn("corrupt_publisher", &[&topic]);
    child.expect_line("created");
    let mut subscriber = Subscriber::subscribe(&topic).unwrap();
    assert!(is_sample(0, &subscriber.recv_timeout(WATCHDOG).unwrap()));
    let bad = subscriber.recv_timeout(WATCHDOG);
    assert!(matches!(bad, Err(Error::Corrupted { .. })), "{bad:?}");
}

// --- reliability ------------------------------------------------------------------------------

/// Subscribes (args[1]: "lossy" or "reliable"), reports, never reads.
fn subscribe_and_park(args: &[String]) {
    let options = if args[1] == "lossy" {
        Subscriber::options().lossy()
    } else {
        Subscriber::options()
    };
    let _subscriber = options.subscribe(&args[0]).unwrap();
    report("subscribed");
    park_until_killed();
}

#[test]
fn a_reliable_publisher_waits_for_a_reader_that_stops_until_its_timeout_but_never_for_a_lossy_one()
{
    let _watchdog = Watchdog::arm();
    let topic = unique_name("reliable");
    let mut publisher = Publisher::options()
        .capacity(8)
        .reliable(Duration::from_millis(200))
        .create(&topic)
        .unwrap();
    let mut lossy = ChildProcess::spawn("subscribe_and_park", &[&topic, "lossy"]);
    lossy.expect_line("subscribed");
    await_subscribers(&publisher, 1);
    for seq in 0..100 {
        publish_sample(&mut publisher, seq);
    }
    let mut stuck = ChildProcess::spawn("subscribe_and_park", &[&topic, "reliable"]);
    stuck.expect_line("subscribed");
    await_subscribers(&publisher, 2);
    for seq in 100..108 {
        publish_sample(&mut publisher, seq);
    }
    // The stuck one is waited for, up to the timeout, then demoted: the sample goes out.
    let started = Instant::now();
    assert_eq!(publisher.publish(b"one too many").unwrap(), 108);
    assert!(started.elapsed() >= Duration::from_millis(200));
    let stats = memlink::pubsub::topic_stats(&topic).unwrap();
    let reliable: Vec<(u32, bool)> = stats
        .subscribers
        .iter()
        .map(|s| (s.pid, s.reliable))
        .collect();
    assert!(reliable.contains(&(stuck.pid(), false)), "{reliable:?}");
    assert!(reliable.contains(&(lossy.pid(), false)), "{reliable:?}");
    // From then on nobody is waited for.
    for seq in 109..1000 {
        publish_sample(&mut publisher, seq);
    }
    let stats = memlink::pubsub::topic_stats(&topic).unwrap();
    assert!(stats.subscribers.iter().all(|s| s.lag > 0), "{stats:?}");
}

// --- callbacks --------------------------------------------------------------------------------

#[test]
fn on_message_runs_on_its_thread_until_its_handle_is_dropped() {
    let _watchdog = Watchdog::arm();
    let topic = unique_name("callback");
    let mut child = ChildProcess::spawn("publish_and_park", &[&topic, "50"]);
    child.expect_line("created");
    let subscriber = Subscriber::subscribe(&topic).unwrap();
    let (tx, rx) = channel();
    let handler = subscriber
        .on_message(move |sample| {
            let _ = tx.send(sample.map(|s| (s.sequence(), is_sample(s.sequence(), &s))));
        })
        .unwrap();
    for seq in 0..50 {
        assert_eq!(rx.recv_timeout(WATCHDOG).unwrap().unwrap(), (seq, true));
    }
    child.expect_line("published");
    // The thread is asleep waiting for sample 50: dropping the handle wakes and stops it.
    std::thread::sleep(Duration::from_millis(50));
    let dropped = with_watchdog("dropping a handler", move || {
        let started = Instant::now();
        drop(handler);
        started.elapsed()
    });
    eprintln!("handler stopped in {dropped:?}");
    assert!(dropped < Duration::from_secs(1));
    assert!(rx.recv_timeout(Duration::from_millis(10)).is_err());

    // And one waiting for a publisher that is not there stops as promptly.
    child.kill_and_reap();
    let subscriber = Subscriber::subscribe_timeout(&unique_name("absent"), Duration::ZERO);
    assert!(matches!(subscriber, Err(Error::Timeout)));
    let mut second = ChildProcess::spawn("publish_and_park", &[&topic, "0"]);
    second.expect_line("created");
    let subscriber = Subscriber::subscribe(&topic).unwrap();
    let handler = subscriber.on_message(|_| {}).unwrap();
    second.kill_and_reap();
    std::thread::sleep(Duration::from_millis(50));
    let dropped = with_watchdog("dropping a handler", move || {
        let started = Instant::now();
        drop(handler);
        started.elapsed()
    });
    assert!(dropped < Duration::from_secs(1), "{dropped:?}");
}

// --- loans and non-blocking receives --------------------------------------------------------------

/// Subscribes, then polls with `try_recv` until args[1] samples arrived; checks each and drops
/// every other one on another thread (a `Sample` is `Send`).
fn poll_for(args: &[String]) {
    let mut subscriber = Subscriber::subscribe(&args[0]).unwrap();
    report("subscribed");
    let n: u64 = args[1].parse().unwrap();
    let (mut next, mut empty_polls) = (0, 0u64);
    let deadline = Instant::now() + WATCHDOG;
    while next < n {
        assert!(Instant::now() < deadline);
        match subscriber.try_recv().unwrap() {
            Some(sample) => {
                assert_eq!(sample.sequence(), next);
                assert!(is_sample(next, &sample));
                if next % 2 == 0 {
                    std::thread::spawn(move || drop(sample)).join().unwrap();
                }
                next += 1;
            }
            None => {
                empty_polls += 1;
                std::thread::yield_now();
            }
        }
    }
    eprintln!("try_recv found nothing {empty_polls} times");
    report(&format!("polled {n}"));
    assert!(matches!(subscriber.try_recv(), Ok(None)));
}

#[test]
fn unsent_loans_give_their_slots_back_and_try_recv_never_waits() {
    let _watchdog = Watchdog::arm();
    let topic = unique_name("loans");
    let mut publisher = Publisher::options()
        .capacity(4)
        .max_held_per_subscriber(1)
        .max_subscribers(1)
        .reliable(WATCHDOG)
        .create(&topic)
        .unwrap();
    let mut child = ChildProcess::spawn("poll_for", &[&topic, "100"]);
    child.expect_line("subscribed");
    await_subscribers(&publisher, 1);
    // Far more loans dropped unsent than the topic has slots: each one comes back, and none
    // takes a sequence number.
    for _ in 0..10_000 {
        let loan = publisher.loan(64).unwrap();
        assert_eq!(loan.len(), 64);
    }
    for seq in 0..100 {
        publish_sample(&mut publisher, seq);
    }
    child.expect_line("polled 100");
    assert!(matches!(
        publisher.loan(publisher.max_sample_size() + 1),
        Err(Error::MessageTooLarge { .. })
    ));
    child.wait_success();
}

/// Runs a handler that passes the first sample out (zero-copy, kept), drops the handler when
/// told, and then checks the kept sample is unchanged while the publisher has moved far on.
fn handler_keeps_one(args: &[String]) {
    let subscriber = Subscriber::subscribe(&args[0]).unwrap();
    report("subscribed");
    let (tx, rx) = channel();
    let handler = subscriber
        .on_message(move |sample| {
            let _ = tx.send(sample);
        })
        .unwrap();
    let kept = rx.recv_timeout(WATCHDOG).unwrap().unwrap();
    assert!(kept.is_zero_copy() && is_sample(0, &kept));
    let copy = kept.to_vec();
    report("holding");
    assert_eq!(await_parent(), "drop");
    drop(handler);
    report("dropped");
    assert_eq!(await_parent(), "check");
    report(if *kept == *copy && is_sample(0, &kept) {
        "unchanged"
    } else {
        "changed"
    });
}

#[test]
fn a_sample_kept_from_a_handler_stays_intact_after_the_handler_is_dropped() {
    let _watchdog = Watchdog::arm();
    let topic = unique_name("kept");
    let mut publisher = Publisher::options().capacity(4).create(&topic).unwrap();
    let mut child = ChildProcess::spawn("handler_keeps_one", &[&topic]);
    child.expect_line("subscribed");
    await_subscribers(&publisher, 1);
    publish_sample(&mut publisher, 0);
    child.expect_line("holding");
    child.tell("drop");
    child.expect_line("dropped");
    // The subscriber still holds sample 0's slot: the publisher must not reuse it.
    for seq in 1..2000 {
        publish_sample(&mut publisher, seq);
    }
    assert_eq!(publisher.held_slots(), 1);
    child.tell("check");
    child.expect_line("unchanged");
    child.wait_success();
}

#[test]
fn a_subscriber_can_refuse_a_topic_of_samples_larger_than_it_accepts() {
    let topic = unique_name("cap");
    let _publisher = Publisher::options()
        .max_sample_size(64 << 10)
        .create(&topic)
        .unwrap();
    let refused = Subscriber::options()
        .max_sample_size(1 << 10)
        .try_subscribe(&topic);
    assert!(
        matches!(refused, Err(Error::MessageTooLarge { size, max }) if size == 64 << 10 && max == 1 << 10),
        "{refused:?}"
    );
    assert!(
        Subscriber::options()
            .max_sample_size(64 << 10)
            .try_subscribe(&topic)
            .is_ok()
    );
}
