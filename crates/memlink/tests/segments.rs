//! Named segments across real processes: the seed-002 hand-off, stale segments left by SIGKILLed
//! creators, permissions against another user, objects another user squats under our names, FIFOs
//! and symlinks planted under memlink names, and objects full of garbage.

mod common;

use std::path::{Path, PathBuf};

use common::{
    ChildProcess, assert_no_leftovers, await_parent, drop_privileges_to_nobody, is_root,
    park_until_killed, report, unique_name, variant, with_watchdog,
};
use memlink::inventory::{self, ObjectState};
use memlink::{Error, Event, EventMode, Permissions, Segment};

const NOBODY: u32 = 65534;

#[test]
fn child_main() {
    common::run_child(&[
        ("create_and_write", create_and_write),
        ("create_then_park", create_then_park),
        ("open_and_read", open_and_read),
        ("as_nobody", as_nobody),
        ("squat_as_nobody", squat_as_nobody),
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

/// As uid 65534: opens and creates `args[0]`; with `args[1] == "trust-root"`, first reports what
/// a default open does, then uses options that trust root's world-shared objects.
fn as_nobody(args: &[String]) {
    drop_privileges_to_nobody();
    let name = &args[0];
    let mut options = Segment::options();
    if args.get(1).map(String::as_str) == Some("trust-root") {
        match Segment::open(name) {
            Ok(_) => report("untrusted open ok"),
            Err(e) => report(&format!("untrusted open error {}", variant(&e))),
        }
        options = options
            .trust_owner_uid(0)
            .permissions(Permissions::Everyone);
    }
    match options.open(name).and_then(|s| get_message(&s)) {
        Ok(text) => report(&format!("open ok {text}")),
        Err(e) => report(&format!("open error {}", variant(&e))),
    }
    match options.create(name, 64) {
        Ok(_) => report("create ok"),
        Err(e) => report(&format!("create error {}", variant(&e))),
    }
}

/// As uid 65534: puts a world-writable object under `args[0]` and keeps it open, as an attacker
/// squatting a name root will use.
fn squat_as_nobody(args: &[String]) {
    drop_privileges_to_nobody();
    let segment = Segment::options()
        .permissions(Permissions::Everyone)
        .create(&args[0], 64)
        .unwrap();
    put_message(&segment, "squatted");
    report("ready");
    park_until_killed();
}

// --- tests -------------------------------------------------------------------------------------

/// Removes a path planted in /dev/shm when dropped, even if the test failed.
struct Planted(PathBuf);

impl Planted {
    fn at(name: &str) -> Self {
        Planted(PathBuf::from(format!("/dev/shm/memlink.{name}")))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The owner a `PermissionDenied` names; panics on any other outcome.
fn denied_owner<T: std::fmt::Debug>(what: &str, result: Result<T, Error>) -> Option<u32> {
    match result {
        Err(Error::PermissionDenied { owner_uid, .. }) => owner_uid,
        other => panic!("{what}: expected PermissionDenied, got {other:?}"),
    }
}

fn listed(name: &str) -> Option<inventory::ObjectInfo> {
    inventory::list()
        .unwrap()
        .into_iter()
        .find(|o| o.name == name)
}

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
    let mut guest = ChildProcess::spawn("as_nobody", &[&shared, "trust-root"]);
    guest.expect_line("untrusted open error PermissionDenied");
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

/// Puts raw bytes under a memlink name, as a foreign or malicious program of our own user could
/// (owner-only, like a memlink object, so that its content is what gets judged).
fn plant(name: &str, bytes: &[u8]) -> Planted {
    let planted = Planted::at(name);
    std::fs::write(planted.path(), bytes).unwrap();
    chmod(planted.path(), 0o600);
    planted
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
        let planted = plant(&name, &bytes);
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
        assert!(!planted.path().exists(), "{tag}");
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

#[test]
fn root_refuses_an_object_another_user_squats_under_its_name() {
    let _watchdog = common::Watchdog::arm();
    if !is_root() {
        eprintln!("skipped: squatting as another uid needs root");
        return;
    }
    let name = unique_name("squat");
    let planted = Planted::at(&name);
    let mut squatter = ChildProcess::spawn("squat_as_nobody", &[&name]);
    squatter.expect_line("ready");

    let err = Segment::open(&name).unwrap_err();
    assert!(
        matches!(
            err,
            Error::PermissionDenied {
                owner_uid: Some(NOBODY),
                ..
            }
        ),
        "open: {err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("uid 65534") && message.contains(&format!("memlink rm {name}")),
        "the message should name the owner and the way out: {message}"
    );
    assert_eq!(
        denied_owner("create_or_open", Segment::create_or_open(&name, 64)),
        Some(NOBODY)
    );
    assert_eq!(
        denied_owner("create", Segment::create(&name, 64)),
        Some(NOBODY)
    );
    // The sync primitives get their segments the same way.
    assert_eq!(
        denied_owner("Event::open", Event::open(&name)),
        Some(NOBODY)
    );
    assert_eq!(
        denied_owner(
            "Event::create_or_open",
            Event::create_or_open(&name, EventMode::ManualReset)
        ),
        Some(NOBODY)
    );
    // Trusting the owner is not enough while we ask for owner-only permissions...
    let trusting = Segment::options().trust_owner_uid(NOBODY);
    assert_eq!(
        denied_owner("trusted owner-only open", trusting.open(&name)),
        Some(NOBODY)
    );
    // ...trusting it and accepting what it shared is.
    let shared = trusting
        .permissions(Permissions::Everyone)
        .open(&name)
        .unwrap();
    assert_eq!(get_message(&shared).unwrap(), "squatted");
    drop(shared);

    // Once the squatter is dead its object is stale, and still not ours to reclaim.
    squatter.kill_and_reap();
    assert_eq!(listed(&name).map(|o| o.owner_uid), Some(NOBODY));
    assert_eq!(
        denied_owner("create over stale", Segment::create(&name, 64)),
        Some(NOBODY)
    );
    assert_eq!(
        denied_owner(
            "trusted create over stale",
            Segment::options()
                .trust_owner_uid(NOBODY)
                .permissions(Permissions::Everyone)
                .create(&name, 64)
        ),
        Some(NOBODY)
    );
    assert!(
        planted.path().exists(),
        "another user's object was reclaimed"
    );
    drop(planted);
    assert_no_leftovers(&name);
}

#[test]
fn an_object_more_open_than_asked_for_is_refused() {
    let _watchdog = common::Watchdog::arm();
    let me = rustix::process::geteuid().as_raw();
    let name = unique_name("too-open");
    let segment = Segment::create(&name, 64).unwrap();
    put_message(&segment, "mine");
    let path = Planted::at(&name);
    for (mode, widest_accepted) in [
        (0o666, Some(Permissions::Everyone)),
        (0o644, Some(Permissions::Everyone)),
        (0o660, Some(Permissions::Group)),
        (0o640, Some(Permissions::Group)),
        (0o700, None),
        (0o4600, None),
        (0o2600, None),
        (0o1600, None),
    ] {
        chmod(path.path(), mode);
        assert_eq!(
            denied_owner(&format!("default open of {mode:o}"), Segment::open(&name)),
            Some(me)
        );
        assert_eq!(
            denied_owner(
                &format!("default create_or_open of {mode:o}"),
                Segment::create_or_open(&name, 64)
            ),
            Some(me)
        );
        let everyone = Segment::options().permissions(Permissions::Everyone);
        match widest_accepted {
            Some(permissions) => {
                let opened = Segment::options()
                    .permissions(permissions)
                    .open(&name)
                    .unwrap_or_else(|e| panic!("{mode:o} with {permissions:?}: {e}"));
                assert_eq!(get_message(&opened).unwrap(), "mine");
                assert!(everyone.open(&name).is_ok(), "{mode:o}");
            }
            None => {
                denied_owner(&format!("open of {mode:o}"), everyone.open(&name));
            }
        }
    }
    chmod(path.path(), 0o600);
    assert!(Segment::open(&name).is_ok());
    drop(segment);

    // Named sync primitives obtain their segment the same way.
    let event_name = unique_name("too-open-event");
    let event = Event::create(&event_name, EventMode::ManualReset).unwrap();
    let event_path = Planted::at(&event_name);
    chmod(event_path.path(), 0o666);
    assert_eq!(
        denied_owner("Event::open", Event::open(&event_name)),
        Some(me)
    );
    let everyone = Segment::options().permissions(Permissions::Everyone);
    let opened = Event::open_with(&event_name, &everyone).unwrap();
    event.set().unwrap();
    assert!(opened.is_set().unwrap());
    drop((event, opened));
    drop((path, event_path));
    assert_no_leftovers(&name);
    assert_no_leftovers(&event_name);
}

#[test]
fn a_fifo_under_a_memlink_name_is_listed_refused_and_removed_without_blocking() {
    let _watchdog = common::Watchdog::arm();
    let name = unique_name("fifo");
    let planted = Planted::at(&name);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        planted.path(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();

    let n = name.clone();
    let info = with_watchdog("listing with a FIFO present", move || listed(&n)).expect("listed");
    match &info.state {
        ObjectState::Unknown(why) => assert!(why.contains("not a regular file: fifo"), "{why}"),
        other => panic!("a FIFO listed as {other:?}"),
    }
    assert_eq!(info.owner_uid, rustix::process::geteuid().as_raw());

    for (what, op) in [
        ("open", 0),
        ("create", 1),
        ("create_or_open", 2),
        ("Event::open", 3),
    ] {
        let n = name.clone();
        let err = with_watchdog(what, move || match op {
            0 => Segment::open(&n).map(drop),
            1 => Segment::create(&n, 64).map(drop),
            2 => Segment::create_or_open(&n, 64).map(drop),
            _ => Event::open(&n).map(drop),
        })
        .unwrap_err();
        assert!(
            matches!(err, Error::Incompatible { ref reason, .. } if reason.contains("fifo")),
            "{what}: {err:?}"
        );
    }
    assert!(planted.path().exists());

    let n = name.clone();
    with_watchdog("removing a FIFO", move || inventory::remove(&n, false)).unwrap();
    assert!(std::fs::symlink_metadata(planted.path()).is_err());
    drop(planted);
    assert_no_leftovers(&name);
}

#[test]
fn a_symlink_under_a_memlink_name_is_never_followed() {
    let _watchdog = common::Watchdog::arm();
    let target = unique_name("link-target");
    let target_segment = Segment::options()
        .remove_on_drop(false)
        .create(&target, 64)
        .unwrap();
    put_message(&target_segment, "target");
    drop(target_segment);
    let target_path = Planted::at(&target);
    let name = unique_name("link");
    let planted = Planted::at(&name);
    std::os::unix::fs::symlink(target_path.path(), planted.path()).unwrap();

    let n = name.clone();
    let info = with_watchdog("listing with a symlink present", move || listed(&n)).expect("listed");
    match &info.state {
        ObjectState::Unknown(why) => {
            assert!(why.contains("not a regular file: symlink"), "{why}")
        }
        other => panic!("a symlink listed as {other:?}"),
    }
    assert_eq!(info.kind, None, "the symlink's target was read");
    for (what, result) in [
        ("open", Segment::open(&name).map(drop)),
        ("create", Segment::create(&name, 64).map(drop)),
        (
            "create_or_open",
            Segment::create_or_open(&name, 64).map(drop),
        ),
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(err, Error::Incompatible { ref reason, .. } if reason.contains("symlink")),
            "{what}: {err:?}"
        );
    }
    let n = name.clone();
    with_watchdog("removing a symlink", move || inventory::remove(&n, false)).unwrap();
    assert!(std::fs::symlink_metadata(planted.path()).is_err());
    // Only the link went; its target is intact.
    assert_eq!(
        get_message(&Segment::open(&target).unwrap()).unwrap(),
        "target"
    );
    drop((planted, target_path));
    assert_no_leftovers(&name);
    assert_no_leftovers(&target);
}
