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

fn line_for<'a>(listing: &'a str, name: &str) -> Option<&'a str> {
    listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn ls_shows_live_and_stale_objects_and_rm_removes_only_stale_ones_unless_forced() {
    let live = unique("live");
    let stale = unique("stale");
    let segment = Segment::create(&live, 1000).unwrap();
    let sem = Segment::options().remove_on_drop(false);
    drop(Semaphore::create_with(&stale, 0, 5, &sem).unwrap()); // creator gone, object kept: stale

    let out = memlink(&["ls"]);
    assert!(out.status.success());
    let listing = stdout(&out);
    assert!(listing.starts_with("NAME"), "{listing}");
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
