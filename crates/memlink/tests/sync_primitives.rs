//! Event, Semaphore and robust Mutex across real processes, including holders killed with SIGKILL
//! and peers that scribble over the shared state.

mod common;

use std::time::Duration;

use common::{
    ChildProcess, WATCHDOG, assert_no_leftovers, park_until_killed, report, unique_name,
    with_watchdog,
};
use memlink::{Error, Event, EventMode, Lock, Mutex, Segment, Semaphore};

#[test]
fn child_main() {
    common::run_child(&[
        ("event_echo", event_echo),
        ("event_waiter", event_waiter),
        ("sem_poster", sem_poster),
        ("mutex_hold_and_park", mutex_hold_and_park),
        ("mutex_counter", mutex_counter),
        ("scribble_u32", scribble_u32),
        ("event_set_in", event_set_in),
        ("sem_post_in", sem_post_in),
        ("mutex_probe", mutex_probe),
    ]);
}

// --- child roles -------------------------------------------------------------------------------

fn event_echo(args: &[String]) {
    let ping = Event::open(&args[0]).unwrap();
    let pong = Event::open(&args[1]).unwrap();
    let rounds: usize = args[2].parse().unwrap();
    for _ in 0..rounds {
        ping.wait_timeout(WATCHDOG).unwrap();
        pong.set().unwrap();
    }
    report("done");
}

fn event_waiter(args: &[String]) {
    let event = Event::open(&args[0]).unwrap();
    report("waiting");
    event.wait_timeout(WATCHDOG).unwrap();
    report("released");
}

fn sem_poster(args: &[String]) {
    let sem = Semaphore::open(&args[0]).unwrap();
    for _ in 0..args[1].parse::<usize>().unwrap() {
        sem.post().unwrap();
    }
    report("posted");
}

fn mutex_hold_and_park(args: &[String]) {
    let mutex = Mutex::open(&args[0]).unwrap();
    let Lock::Acquired(guard) = mutex.lock_timeout(WATCHDOG).unwrap() else {
        panic!("unexpected owner-died")
    };
    report(&format!("locked {}", guard.owner_token()));
    park_until_killed();
}

const COUNTER_AT: usize = 64;

fn read_counter(segment: &Segment) -> u64 {
    let mut b = [0u8; 8];
    segment.read(COUNTER_AT, &mut b).unwrap();
    u64::from_le_bytes(b)
}

/// A deliberately non-atomic read-modify-write: only mutual exclusion keeps the count exact.
fn increment_under_lock(segment: &Segment, mutex: &Mutex, i: usize) {
    let guard = match mutex.lock_timeout(WATCHDOG).unwrap() {
        Lock::Acquired(g) => g,
        Lock::OwnerDied(_) => panic!("nobody died"),
    };
    let value = read_counter(segment);
    if i.is_multiple_of(64) {
        std::thread::yield_now(); // widen the window a broken lock would lose updates in
    }
    segment
        .write(COUNTER_AT, &(value + 1).to_le_bytes())
        .unwrap();
    guard.unlock().unwrap();
}

fn mutex_counter(args: &[String]) {
    let segment = Segment::open(&args[0]).unwrap();
    let mutex = Mutex::open_in(&segment, 0).unwrap();
    for i in 0..args[1].parse::<usize>().unwrap() {
        increment_under_lock(&segment, &mutex, i);
    }
    report("done");
}

fn scribble_u32(args: &[String]) {
    let segment = Segment::open(&args[0]).unwrap();
    let offset: usize = args[1].parse().unwrap();
    let value = u32::from_str_radix(args[2].trim_start_matches("0x"), 16).unwrap();
    segment
        .atomic_u32(offset)
        .unwrap()
        .store(value, std::sync::atomic::Ordering::SeqCst);
    report("scribbled");
}

fn event_set_in(args: &[String]) {
    let segment = Segment::open(&args[0]).unwrap();
    Event::open_in(&segment, args[1].parse().unwrap())
        .unwrap()
        .set()
        .unwrap();
    report("set");
}

fn sem_post_in(args: &[String]) {
    let segment = Segment::open(&args[0]).unwrap();
    Semaphore::open_in(&segment, args[1].parse().unwrap())
        .unwrap()
        .post()
        .unwrap();
    report("posted");
}

fn lock_outcome(result: memlink::Result<Lock<'_>>) -> String {
    match result {
        Ok(Lock::Acquired(_)) => "acquired".into(),
        Ok(Lock::OwnerDied(_)) => "owner-died".into(),
        Err(e) => common::variant(&e),
    }
}

/// Tries a named mutex someone else holds: reports the try_lock and a 300 ms lock_timeout outcome.
fn mutex_probe(args: &[String]) {
    let mutex = Mutex::open(&args[0]).unwrap();
    let tried = match mutex.try_lock() {
        Ok(None) => "none".to_owned(),
        other => lock_outcome(other.map(|l| l.expect("Some"))),
    };
    let timed = lock_outcome(mutex.lock_timeout(Duration::from_millis(300)));
    report(&format!("try {tried} timed {timed}"));
}

// --- events ------------------------------------------------------------------------------------

#[test]
fn auto_reset_events_ping_pong_between_processes() {
    let _watchdog = common::Watchdog::arm();
    let (ping_name, pong_name) = (unique_name("ping"), unique_name("pong"));
    let ping = Event::create(&ping_name, EventMode::AutoReset).unwrap();
    let pong = Event::create(&pong_name, EventMode::AutoReset).unwrap();
    let mut child = ChildProcess::spawn("event_echo", &[&ping_name, &pong_name, "2000"]);
    for _ in 0..2000 {
        ping.set().unwrap();
        pong.wait_timeout(WATCHDOG).unwrap();
    }
    child.expect_line("done");
    child.wait_success();
    assert!(
        !ping.is_set().unwrap() && !pong.is_set().unwrap(),
        "every set was consumed exactly once"
    );
    drop((ping, pong));
    assert_no_leftovers(&ping_name);
    assert_no_leftovers(&pong_name);
}

#[test]
fn manual_reset_event_releases_waiters_in_every_process_until_reset() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("manual");
    let event = Event::create(&name, EventMode::ManualReset).unwrap();
    let mut waiters: Vec<_> = (0..3)
        .map(|_| ChildProcess::spawn("event_waiter", &[&name]))
        .collect();
    for w in &mut waiters {
        w.expect_line("waiting");
    }
    event.set().unwrap();
    for w in &mut waiters {
        w.expect_line("released");
        w.wait_success();
    }
    assert!(event.is_set().unwrap(), "manual-reset stays set");
    event.wait_timeout(Duration::from_millis(1)).unwrap();
    event.reset().unwrap();
    assert!(matches!(
        event.wait_timeout(Duration::from_millis(20)),
        Err(Error::Timeout)
    ));
}

#[test]
fn auto_reset_event_releases_one_waiter_per_set() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("auto");
    let event = Event::create(&name, EventMode::AutoReset).unwrap();
    let mut a = ChildProcess::spawn("event_waiter", &[&name]);
    let mut b = ChildProcess::spawn("event_waiter", &[&name]);
    a.expect_line("waiting");
    b.expect_line("waiting");
    event.set().unwrap();
    // Exactly one of them is released by one set...
    let (tx, rx) = std::sync::mpsc::channel();
    let threads: Vec<_> = [a, b]
        .into_iter()
        .map(|mut c| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let line = c.next_line();
                tx.send(line).unwrap();
                c.wait_success();
            })
        })
        .collect();
    assert_eq!(rx.recv_timeout(WATCHDOG).unwrap(), "released");
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "one set released two waiters"
    );
    // ...and the second set releases the other.
    event.set().unwrap();
    assert_eq!(rx.recv_timeout(WATCHDOG).unwrap(), "released");
    for t in threads {
        t.join().unwrap();
    }
    assert!(!event.is_set().unwrap());
}

// --- semaphores --------------------------------------------------------------------------------

#[test]
fn semaphore_counts_posts_from_several_processes() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("sem");
    let sem = Semaphore::create(&name, 0).unwrap();
    let mut posters: Vec<_> = (0..4)
        .map(|_| ChildProcess::spawn("sem_poster", &[&name, "500"]))
        .collect();
    for _ in 0..2000 {
        sem.wait_timeout(WATCHDOG).unwrap();
    }
    for p in &mut posters {
        p.expect_line("posted");
        p.wait_success();
    }
    assert!(!sem.try_wait().unwrap(), "more permits than posts");
    assert_eq!(sem.value().unwrap(), 0);
    assert!(matches!(
        sem.wait_timeout(Duration::from_millis(10)),
        Err(Error::Timeout)
    ));
}

#[test]
fn semaphore_respects_its_maximum() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("sem-max");
    let sem = Semaphore::create_with(&name, 1, 2, &memlink::SegmentOptions::new()).unwrap();
    sem.post().unwrap();
    assert!(matches!(sem.post(), Err(Error::Overflow { max: 2 })));
    assert_eq!(Semaphore::open(&name).unwrap().max(), 2);
    assert!(matches!(
        Semaphore::create(&unique_name("sem-bad"), u32::MAX),
        Err(Error::Overflow { .. })
    ));
}

// --- robust mutex ------------------------------------------------------------------------------

#[test]
fn mutex_excludes_across_processes() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("mutex-count");
    let segment = Segment::create(&name, 128).unwrap();
    let mutex = Mutex::create_in(&segment, 0).unwrap();
    let mut workers: Vec<_> = (0..4)
        .map(|_| ChildProcess::spawn("mutex_counter", &[&name, "1000"]))
        .collect();
    for i in 0..1000 {
        increment_under_lock(&segment, &mutex, i);
    }
    for w in &mut workers {
        w.expect_line("done");
        w.wait_success();
    }
    assert_eq!(
        read_counter(&segment),
        5000,
        "lost updates: the mutex let two holders in"
    );
}

fn locked_token(line: &str) -> u32 {
    line.strip_prefix("locked ")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("bad report {line}"))
}

#[test]
fn holder_killed_while_holding_hands_the_lock_on_with_owner_died() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("mutex-died");
    let mutex = Mutex::create(&name).unwrap();
    let mut holder = ChildProcess::spawn("mutex_hold_and_park", &[&name]);
    let holder_token = locked_token(&holder.next_line());

    assert!(
        mutex.try_lock().unwrap().is_none(),
        "a live holder's lock was taken"
    );
    assert!(matches!(
        mutex.lock_timeout(Duration::from_millis(30)),
        Err(Error::Timeout)
    ));
    holder.kill_and_reap();

    match mutex.lock_timeout(WATCHDOG).unwrap() {
        Lock::OwnerDied(recovering) => {
            assert_eq!(recovering.previous_owner(), Some(holder_token));
            // Not acknowledged: the next locker must be told as well.
        }
        Lock::Acquired(_) => panic!("owner death went unreported"),
    }
    let Lock::OwnerDied(recovering) = mutex.lock_timeout(WATCHDOG).unwrap() else {
        panic!("unacknowledged owner death was forgotten")
    };
    let guard = recovering.make_consistent().unwrap();
    guard.unlock().unwrap();
    assert!(matches!(
        mutex.lock_timeout(WATCHDOG).unwrap(),
        Lock::Acquired(_)
    ));
}

#[test]
fn waiter_already_blocked_is_released_when_the_holder_is_killed() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("mutex-blocked");
    let mutex = Mutex::create(&name).unwrap();
    let mut holder = ChildProcess::spawn("mutex_hold_and_park", &[&name]);
    let holder_token = locked_token(&holder.next_line());

    let waiter_name = name.clone();
    let waiter = std::thread::spawn(move || {
        let mutex = Mutex::open(&waiter_name).unwrap();
        match mutex.lock_timeout(WATCHDOG).unwrap() {
            Lock::OwnerDied(g) => g.previous_owner(),
            Lock::Acquired(_) => None,
        }
    });
    std::thread::sleep(Duration::from_millis(100)); // let the waiter block
    holder.sigkill(); // not reaped yet: the holder lingers as a zombie, which must count as dead
    let previous = with_watchdog("blocked waiter", move || waiter.join().unwrap());
    assert_eq!(previous, Some(holder_token));
    holder.kill_and_reap();
    drop(mutex);
    assert_no_leftovers(&name);
}

#[test]
fn relocking_from_the_holding_thread_is_refused_not_deadlocked() {
    let _watchdog = common::Watchdog::arm();
    let mutex = Mutex::create(&unique_name("mutex-relock")).unwrap();
    let _held = mutex.lock().unwrap();
    assert!(matches!(mutex.lock(), Err(Error::WouldDeadlock { .. })));
    assert!(matches!(mutex.try_lock(), Err(Error::WouldDeadlock { .. })));
}

// --- hostile peers -----------------------------------------------------------------------------

fn scribble(segment_name: &str, offset: usize, value: u32) {
    let mut peer = ChildProcess::spawn(
        "scribble_u32",
        &[segment_name, &offset.to_string(), &format!("{value:x}")],
    );
    peer.expect_line("scribbled");
    peer.wait_success();
}

#[test]
fn state_scribbled_by_a_peer_gives_errors_not_hangs() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("hostile");
    let segment = Segment::create(&name, 256).unwrap();
    let event = Event::create_in(&segment, 0, EventMode::AutoReset).unwrap();
    let sem = Semaphore::create_in(&segment, 16, 0, 10).unwrap();
    let mutex = Mutex::create_in(&segment, 32).unwrap();

    scribble(&name, 4, 7); // event word: neither 0 nor 1
    for result in [
        event.wait_timeout(WATCHDOG),
        event.set(),
        event.is_set().map(drop),
    ] {
        assert!(matches!(result, Err(Error::Corrupted { .. })), "{result:?}");
    }
    scribble(&name, 16 + 4, 11); // semaphore count above its maximum
    assert!(matches!(
        sem.wait_timeout(WATCHDOG),
        Err(Error::Corrupted { .. })
    ));
    assert!(matches!(sem.post(), Err(Error::Corrupted { .. })));
    scribble(&name, 16 + 12, 0); // semaphore maximum of zero: refused on attach
    assert!(matches!(
        Semaphore::open_in(&segment, 16),
        Err(Error::Corrupted { .. })
    ));

    // A lock word naming a task that does not exist: taken over as owner-died, not waited on.
    scribble(&name, 32 + 4, 0x3fff_fff0);
    let lock = with_watchdog("lock over garbage", {
        let segment = segment.clone();
        move || {
            Mutex::open_in(&segment, 32)
                .unwrap()
                .lock()
                .unwrap()
                .owner_died()
        }
    });
    assert!(lock);
    // Our own lock overwritten while we hold it: unlock reports it instead of releasing blindly.
    let Lock::OwnerDied(g) = mutex.lock().unwrap() else {
        panic!()
    };
    let guard = g.make_consistent().unwrap();
    scribble(&name, 32 + 4, 12345);
    assert!(matches!(guard.unlock(), Err(Error::Corrupted { .. })));

    scribble(&name, 0, 0xdead_beef); // tag: no event there any more
    assert!(matches!(
        Event::open_in(&segment, 0),
        Err(Error::Incompatible { .. })
    ));
}

#[test]
fn placement_offsets_are_checked() {
    let _watchdog = common::Watchdog::arm();
    let segment = Segment::create(&unique_name("place"), 40).unwrap();
    assert!(matches!(
        Event::create_in(&segment, 2, EventMode::AutoReset),
        Err(Error::Misaligned { .. })
    ));
    assert!(matches!(
        Mutex::create_in(&segment, 28),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        Semaphore::create_in(&segment, usize::MAX - 3, 0, 1),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        Mutex::open_in(&segment, 24),
        Err(Error::Incompatible { .. })
    ));
    Mutex::create_in(&segment, 24).unwrap();
}

#[test]
fn named_primitives_check_kind_and_existence() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("kinds");
    assert!(matches!(Event::open(&name), Err(Error::NotFound { .. })));
    let _event = Event::create(&name, EventMode::ManualReset).unwrap();
    assert!(matches!(
        Mutex::open(&name),
        Err(Error::Incompatible { .. })
    ));
    assert!(matches!(
        Semaphore::open(&name),
        Err(Error::Incompatible { .. })
    ));
    assert!(matches!(
        Segment::open(&name),
        Err(Error::Incompatible { .. })
    ));
    assert_eq!(
        Event::create_or_open(&name, EventMode::AutoReset)
            .unwrap()
            .mode(),
        EventMode::ManualReset
    );
    let m = unique_name("kinds-m");
    let created = Mutex::create_or_open(&m).unwrap();
    let opened = Mutex::create_or_open(&m).unwrap();
    let guard = created.lock().unwrap();
    assert!(with_watchdog("try_lock from another thread", {
        let m = m.clone();
        move || Mutex::open(&m).unwrap().try_lock().unwrap().is_none()
    }));
    drop(guard);
    drop(opened);
}

// --- peers that hide waiters or skip wake-ups ---------------------------------------------------

/// Waits (bounded) until thread `tid` of this process is asleep, then a little longer, so that a
/// wait it started is in the kernel rather than about to begin.
fn until_asleep(tid: i32) {
    let deadline = std::time::Instant::now() + WATCHDOG;
    while std::time::Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.trim_start().chars().next());
        if state == Some('S') {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
}

/// Runs `wait` on a thread; returns its join handle once it sleeps.
fn sleeping_waiter(
    wait: impl FnOnce() -> memlink::Result<()> + Send + 'static,
) -> std::thread::JoinHandle<memlink::Result<()>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        tx.send(rustix::thread::gettid().as_raw_nonzero().get())
            .unwrap();
        wait()
    });
    until_asleep(rx.recv_timeout(WATCHDOG).unwrap());
    waiter
}

fn peer(role: &str, segment: &str, offset: usize, said: &str) {
    let mut child = ChildProcess::spawn(role, &[segment, &offset.to_string()]);
    child.expect_line(said);
    child.wait_success();
}

#[test]
fn event_waiter_hidden_by_a_zeroed_waiter_count_is_still_woken() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("hide-event");
    let segment = Segment::create(&name, 64).unwrap();
    let event = Event::create_in(&segment, 0, EventMode::AutoReset).unwrap();
    let waiter = sleeping_waiter(move || event.wait());
    scribble(&name, 8, 0); // the (old) waiter count: nobody sleeps here, says the peer
    peer("event_set_in", &name, 0, "set");
    with_watchdog("event waiter after set", move || waiter.join().unwrap()).unwrap();
}

#[test]
fn event_set_by_a_peer_without_a_wake_still_releases_a_plain_wait() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("nowake-event");
    let segment = Segment::create(&name, 64).unwrap();
    let event = Event::create_in(&segment, 0, EventMode::ManualReset).unwrap();
    let waiter = sleeping_waiter({
        let event = event.clone();
        move || event.wait()
    });
    scribble(&name, 4, 1); // "set", written straight into the word: no futex wake
    with_watchdog("event waiter after silent set", move || {
        waiter.join().unwrap()
    })
    .unwrap();
    assert!(event.is_set().unwrap());
}

#[test]
fn semaphore_waiter_hidden_by_a_zeroed_waiter_count_is_still_woken() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("hide-sem");
    let segment = Segment::create(&name, 64).unwrap();
    let sem = Semaphore::create_in(&segment, 0, 0, 10).unwrap();
    let waiter = sleeping_waiter(move || sem.wait());
    scribble(&name, 8, 0);
    peer("sem_post_in", &name, 0, "posted");
    with_watchdog("semaphore waiter after post", move || {
        waiter.join().unwrap()
    })
    .unwrap();
}

#[test]
fn semaphore_posted_by_a_peer_without_a_wake_still_releases_a_plain_wait() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("nowake-sem");
    let segment = Segment::create(&name, 64).unwrap();
    let sem = Semaphore::create_in(&segment, 0, 0, 10).unwrap();
    let waiter = sleeping_waiter({
        let sem = sem.clone();
        move || sem.wait()
    });
    scribble(&name, 4, 1); // count 1, written straight into the word: no futex wake
    with_watchdog("semaphore waiter after silent post", move || {
        waiter.join().unwrap()
    })
    .unwrap();
    assert_eq!(sem.value().unwrap(), 0, "the waiter took the permit");
}

// --- mutex across pid namespaces ---------------------------------------------------------------

/// Runs the test binary as pid 1 of a new pid namespace with its own /proc; when we kill it,
/// everything in the namespace dies with it, and `unshare` reaps it (and may then print a harmless
/// "sigprocmask unblock failed" while re-raising the child's signal).
const NEW_PID_NAMESPACE: &[&str] = &["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"];

#[test]
fn holder_in_another_pid_namespace_is_alive_until_killed() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("mutex-pidns");
    let mutex = Mutex::create(&name).unwrap();
    let mut holder =
        ChildProcess::spawn_wrapped(NEW_PID_NAMESPACE, "mutex_hold_and_park", &[&name]);
    let Some(line) = holder.try_next_line() else {
        eprintln!("skipped: could not start a process in a new pid namespace (needs root/unshare)");
        return;
    };
    assert!(line.starts_with("locked "), "{line}");

    // The holder's tid means nothing here (or names someone else): it must still count as alive.
    assert!(
        mutex.try_lock().unwrap().is_none(),
        "a live holder in another pid namespace lost its lock"
    );
    assert!(matches!(
        mutex.lock_timeout(Duration::from_millis(300)),
        Err(Error::Timeout)
    ));

    holder.kill_and_reap();
    let lock = with_watchdog("lock after the holder's namespace died", move || {
        mutex.lock_timeout(WATCHDOG).map(|l| l.owner_died())
    });
    assert!(
        lock.unwrap(),
        "owner death across namespaces went unreported"
    );
    assert_no_leftovers(&name);
}

#[test]
fn waiter_in_another_pid_namespace_does_not_take_a_live_holders_lock() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("mutex-pidns-rev");
    let mutex = Mutex::create(&name).unwrap();
    let guard = mutex.lock().unwrap();
    let mut prober = ChildProcess::spawn_wrapped(NEW_PID_NAMESPACE, "mutex_probe", &[&name]);
    let Some(line) = prober.try_next_line() else {
        eprintln!("skipped: could not start a process in a new pid namespace (needs root/unshare)");
        return;
    };
    assert_eq!(line, "try none timed Timeout", "our lock was taken from us");
    prober.wait_success();
    drop(guard);
}
