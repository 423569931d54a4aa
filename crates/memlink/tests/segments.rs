//! Named segments across real processes: the seed-002 hand-off, stale segments left by SIGKILLed
//! creators, permissions against another user, and objects full of garbage.

mod common;

use common::{
    ChildProcess, assert_no_leftovers, await_parent, drop_privileges_to_nobody, is_root,
    park_until_killed, report, unique_name, variant,
};
use memlink::inventory::{self, ObjectState};
use memlink::{Error, Permissions, Segment};

#[test]
fn child_main() {
    common::run_child(&[
        ("create_and_write", create_and_write),
        ("create_then_park", create_then_park),
        ("open_and_read", open_and_read),
        ("as_nobody", as_nobody),
    ]);
}

/// Writes a length-prefixed message at offset 0.
fn put_message(segment: &Segment, text: &str) {
    segment
        .write(0, &(text.len() as u32).to_le_bytes())
        .unwrap();
    segment.write(4, text.as_bytes()).unwrap();
}

/// Reads a length-prefixed message, validating the length read from shared memory.
fn get_message(segment: &Segment) -> Result<String, Error> {
    let mut len = [0u8; 4];
    segment.read(0, &mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    let mut text = vec![0u8; len.min(segment.len().saturating_sub(4))];
    segment.read(4, &mut text)?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

// --- child roles -------------------------------------------------------------------------------

fn create_and_write(args: &[String]) {
    let segment = Segment::create(&args[0], 4096).unwrap();
    put_message(&segment, &args[1]);
    report("ready");
    await_parent(); // keep the segment alive until the parent says so
}

fn create_then_park(args: &[String]) {
    let segment = Segment::create(&args[0], 4096).unwrap();
    put_message(&segment, &args[1]);
    report("ready");
    park_until_killed();
}

fn open_and_read(args: &[String]) {
    match Segment::open(&args[0]).and_then(|s| get_message(&s)) {
        Ok(text) => report(&format!("read {text}")),
        Err(e) => report(&format!("error {}", variant(&e))),
    }
}

fn as_nobody(args: &[String]) {
    drop_privileges_to_nobody();
    let name = &args[0];
    match Segment::open(name).and_then(|s| get_message(&s)) {
        Ok(text) => report(&format!("open ok {text}")),
        Err(e) => report(&format!("open error {}", variant(&e))),
    }
    match Segment::create(name, 64) {
        Ok(_) => report("create ok"),
        Err(e) => report(&format!("create error {}", variant(&e))),
    }
}

// --- tests -------------------------------------------------------------------------------------

#[test]
fn one_process_writes_another_reads_and_the_name_goes_with_the_creator() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("seed002");
    let mut writer = ChildProcess::spawn("create_and_write", &[&name, "welcome to IPC"]);
    writer.expect_line("ready");

    let mut reader = ChildProcess::spawn("open_and_read", &[&name]);
    reader.expect_line("read welcome to IPC");
    reader.wait_success();

    writer.tell("done");
    writer.wait_success();
    let mut late = ChildProcess::spawn("open_and_read", &[&name]);
    late.expect_line("error NotFound");
    late.wait_success();
    assert_no_leftovers(&name);
}

#[test]
fn stale_segment_of_a_killed_creator_is_listed_readable_and_reclaimed() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("stale");
    let mut creator = ChildProcess::spawn("create_then_park", &[&name, "last words"]);
    creator.expect_line("ready");
    let creator_pid = creator.pid();

    // While the creator lives: exclusive.
    match Segment::create(&name, 64) {
        Err(Error::AlreadyExists { pid, .. }) => assert_eq!(pid, creator_pid),
        other => panic!("create over a live segment: {other:?}"),
    }
    let listed = inventory::list()
        .unwrap()
        .into_iter()
        .find(|o| o.name == name)
        .expect("listed");
    assert_eq!(listed.state, ObjectState::Live);
    assert_eq!(listed.creator_pid, Some(creator_pid));

    creator.kill_and_reap();

    let listed = inventory::list()
        .unwrap()
        .into_iter()
        .find(|o| o.name == name)
        .expect("still listed");
    assert_eq!(listed.state, ObjectState::Stale);
    // What the dead creator wrote is still readable...
    assert_eq!(
        get_message(&Segment::open(&name).unwrap()).unwrap(),
        "last words"
    );
    // ...and create reclaims the name with a fresh, zeroed segment.
    let fresh = Segment::create(&name, 64).unwrap();
    assert!(fresh.is_creator());
    assert_eq!(fresh.creator_pid(), std::process::id());
    assert_eq!(get_message(&fresh).unwrap(), "");
    drop(fresh);
    assert_no_leftovers(&name);
}

#[test]
fn another_user_is_refused_an_owner_only_segment_but_admitted_when_shared() {
    let _watchdog = common::Watchdog::arm();
    if !is_root() {
        eprintln!("skipped: dropping to another uid needs root");
        return;
    }
    let private = unique_name("perm-private");
    let private_segment = Segment::create(&private, 64).unwrap();
    put_message(&private_segment, "secret");
    let mut intruder = ChildProcess::spawn("as_nobody", &[&private]);
    intruder.expect_line("open error PermissionDenied");
    intruder.expect_line("create error PermissionDenied");
    intruder.wait_success();

    let shared = unique_name("perm-shared");
    let shared_segment = Segment::options()
        .permissions(Permissions::Everyone)
        .create(&shared, 64)
        .unwrap();
    put_message(&shared_segment, "public");
    let mut guest = ChildProcess::spawn("as_nobody", &[&shared]);
    guest.expect_line("open ok public");
    guest.expect_line("create error AlreadyExists");
    guest.wait_success();
    drop(private_segment);
    drop(shared_segment);
    assert_no_leftovers(&private);
    assert_no_leftovers(&shared);
}

#[test]
fn permissions_are_applied_exactly() {
    let _watchdog = common::Watchdog::arm();
    for (perm, mode) in [
        (Permissions::OwnerOnly, 0o600),
        (Permissions::Group, 0o660),
        (Permissions::Everyone, 0o666),
    ] {
        let name = unique_name("mode");
        let _s = Segment::options()
            .permissions(perm)
            .create(&name, 8)
            .unwrap();
        let info = inventory::list()
            .unwrap()
            .into_iter()
            .find(|o| o.name == name)
            .unwrap();
        assert_eq!(info.mode, mode, "{perm:?}");
        assert_eq!(info.owner_uid, rustix::process::geteuid().as_raw());
    }
}

/// Puts raw bytes under a memlink name, as a foreign or malicious program could.
fn plant(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = std::path::PathBuf::from(format!("/dev/shm/memlink.{name}"));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn header(kind: u32, total: u64) -> Vec<u8> {
    let mut b = vec![0u8; 128];
    b[0..8].copy_from_slice(b"MEMLINK\0");
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    b[12..16].copy_from_slice(&kind.to_le_bytes());
    b[16..24].copy_from_slice(&total.to_le_bytes());
    b[24..28].copy_from_slice(&128u32.to_le_bytes());
    b
}

#[test]
fn garbage_truncated_and_lying_objects_give_clear_errors() {
    let _watchdog = common::Watchdog::arm();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "Incompatible"),
        ("truncated", b"MEMLINK\0\x01".to_vec(), "Incompatible"),
        (
            "random",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
            "Incompatible",
        ),
        (
            "future-version",
            {
                let mut h = header(1, 256);
                h[8] = 9;
                h.resize(256, 0);
                h
            },
            "Incompatible",
        ),
        (
            "size-lie",
            {
                let mut h = header(1, 1 << 40);
                h.resize(256, 0);
                h
            },
            "Corrupted",
        ),
        (
            "size-short",
            {
                let mut h = header(1, 256);
                h.resize(200, 0);
                h
            },
            "Corrupted",
        ),
        (
            "bad-offset",
            {
                let mut h = header(1, 256);
                h[24] = 7;
                h.resize(256, 0);
                h
            },
            "Corrupted",
        ),
        (
            "wrong-kind",
            {
                let mut h = header(2, 144);
                h.resize(144, 0);
                h
            },
            "Incompatible",
        ),
    ];
    for (tag, bytes, expected) in cases {
        let name = unique_name(&format!("garbage-{tag}"));
        let path = plant(&name, &bytes);
        let err = Segment::open(&name).expect_err(tag);
        assert_eq!(variant(&err), expected, "{tag}: {err}");
        assert!(
            err.to_string().contains(&name),
            "{tag}: message should name the object: {err}"
        );
        // Listing copes with it, and (no live owner) create reclaims the name.
        let listed = inventory::list()
            .unwrap()
            .into_iter()
            .find(|o| o.name == name)
            .unwrap();
        assert_ne!(listed.state, ObjectState::Live, "{tag}");
        let fresh =
            Segment::create(&name, 32).unwrap_or_else(|e| panic!("{tag}: reclaim failed: {e}"));
        drop(fresh);
        assert!(!path.exists(), "{tag}");
    }
}

#[test]
fn names_are_validated_with_the_rule_in_the_message() {
    let _watchdog = common::Watchdog::arm();
    for bad in ["", "a/b", "../etc", ".x", "with space", &"n".repeat(201)] {
        let err = Segment::create(bad, 8).expect_err(bad);
        assert!(matches!(err, Error::InvalidName { .. }), "{bad:?}: {err:?}");
        assert!(err.to_string().contains("name"), "{err}");
        assert!(matches!(Segment::open(bad), Err(Error::InvalidName { .. })));
        assert!(matches!(
            inventory::remove(bad, true),
            Err(Error::InvalidName { .. })
        ));
    }
}

#[test]
fn persistent_segment_outlives_its_creator_until_removed() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("persist");
    let segment = Segment::options()
        .remove_on_drop(false)
        .create(&name, 64)
        .unwrap();
    put_message(&segment, "kept");
    drop(segment);
    let mut reader = ChildProcess::spawn("open_and_read", &[&name]);
    reader.expect_line("read kept");
    reader.wait_success();
    assert!(matches!(inventory::remove(&name, false), Ok(())));
    assert!(matches!(
        inventory::remove(&name, false),
        Err(Error::NotFound { .. })
    ));
    assert_no_leftovers(&name);
}

#[test]
fn removal_refuses_a_live_object_unless_forced() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("rm-live");
    let segment = Segment::create(&name, 64).unwrap();
    match inventory::remove(&name, false) {
        Err(Error::InUse { pid, .. }) => assert_eq!(pid, std::process::id()),
        other => panic!("removed a live object: {other:?}"),
    }
    inventory::remove(&name, true).unwrap();
    // The creator's mapping survives the removal; its drop does not remove a newcomer's object.
    segment.write(0, b"still mapped").unwrap();
    let newcomer = Segment::create(&name, 8).unwrap();
    drop(segment);
    assert!(
        Segment::open(&name).is_ok(),
        "creator's drop removed someone else's object"
    );
    drop(newcomer);
    assert_no_leftovers(&name);
}
