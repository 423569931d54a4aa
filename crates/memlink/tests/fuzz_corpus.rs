//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`: the seeds and every input the
//! fuzzer found worth keeping, crashes it found included once fixed) through the same
//! `memlink::__fuzz` functions the cargo-fuzz targets call, on stable Rust and without
//! cargo-fuzz: what CI runs of the fuzzing (`fuzz/run.sh` runs the fuzzer itself).
//!
//! `MEMLINK_WRITE_SEEDS=1 cargo test --test fuzz_corpus` (re)writes the seeds
//! (`memlink::__fuzz::seeds`) into the corpus; without it, a seed missing from the corpus, or
//! different from what the encoders make today, fails the test.

use std::path::{Path, PathBuf};

use memlink::__fuzz::{TARGETS, seeds};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("no corpus for {target} in {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&bytes));
        assert!(outcome.is_ok(), "{target}: {} fails", file.display());
    }
    files.len()
}

#[test]
fn every_target_has_a_corpus_and_survives_it() {
    let mut total = 0;
    for &(target, run) in TARGETS {
        let replayed = replay(target, run);
        assert!(replayed > 0, "{target} has an empty corpus");
        total += replayed;
    }
    eprintln!(
        "replayed {total} corpus files through {} targets",
        TARGETS.len()
    );
}

#[test]
fn seeds_are_committed() {
    let write = std::env::var_os("MEMLINK_WRITE_SEEDS").is_some();
    for (target, name, bytes) in seeds() {
        assert!(
            TARGETS.iter().any(|&(t, _)| t == target),
            "a seed for unknown target {target}"
        );
        let path = corpus_dir(target).join(&name);
        if write {
            std::fs::create_dir_all(corpus_dir(target)).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            continue;
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == bytes,
            "seed {} is missing or stale: run MEMLINK_WRITE_SEEDS=1 cargo test -p memlink --test fuzz_corpus",
            path.display()
        );
    }
}

/// The seeds are also run directly, so a seed that fails is reported by name.
#[test]
fn seeds_pass() {
    for (target, name, bytes) in seeds() {
        let run = TARGETS.iter().find(|&&(t, _)| t == target).unwrap().1;
        let outcome = std::panic::catch_unwind(|| run(&bytes));
        assert!(outcome.is_ok(), "seed {target}/{name} fails");
    }
}
