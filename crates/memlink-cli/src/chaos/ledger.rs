//! Where the chaos processes write down what happened, so that it outlives a `SIGKILL`:
//!
//! - a *ledger* per process: an append-only file of fixed 32-byte records in the run's directory,
//!   each written with one `write` (so a killed writer leaves whole records; the reader ignores a
//!   torn tail). The driver reads them all after every process is gone.
//! - the *board*: one memlink [`Segment`] the driver creates, with the stop flags, live counters
//!   for the progress bar, and the kill log: before each `SIGKILL` the driver writes the victim's
//!   pid, what it was, and the instant (`CLOCK_MONOTONIC`, the same clock in every process), so
//!   that a survivor woken by the death can measure how long its wake-up took.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memlink::Segment;

/// Now on `CLOCK_MONOTONIC`, in nanoseconds (comparable between processes).
pub(crate) fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// What a reader (a duplex survivor, a subscriber) did with its time lately: the spans in which
/// it was busy with a message it had taken, rather than waiting in memlink for the next. A
/// victim's messages sent before its kill come first, at the reader's pace (a slow subscriber
/// may be thousands of samples behind), then its `Disconnected`: the wake-up after the kill is
/// measured without the time spent busy since, and only that (a message that reached the reader
/// late because its sender died before waking it still counts against memlink).
#[derive(Debug, Default)]
pub(crate) struct BusyLog {
    spans: std::collections::VecDeque<(u64, u64)>,
}

impl BusyLog {
    /// Spans kept: a reader busy with more messages than this since a kill has the older ones
    /// counted as waiting (overstating the wake-up, never hiding one).
    const KEEP: usize = 4096;

    /// The reader was busy from `from` to `to` (`CLOCK_MONOTONIC` ns).
    pub(crate) fn record(&mut self, from: u64, to: u64) {
        if self.spans.len() == Self::KEEP {
            self.spans.pop_front();
        }
        self.spans.push_back((from, to.max(from)));
    }

    /// Nanoseconds the reader was busy after `since`.
    pub(crate) fn busy_after(&self, since: u64) -> u64 {
        self.spans
            .iter()
            .map(|&(from, to)| to.saturating_sub(from.max(since)))
            .sum()
    }

    /// [`BusyLog::busy_after`] in microseconds, as the ledger records carry it.
    pub(crate) fn busy_us_after(&self, since: u64) -> u32 {
        u32::try_from(self.busy_after(since) / 1000).unwrap_or(u32::MAX)
    }
}

/// One ledger record: what happened (`kind`, with a small `aux` value) and three numbers whose
/// meaning depends on the kind (see `Kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) kind: u32,
    pub(crate) aux: u32,
    pub(crate) a: u64,
    pub(crate) b: u64,
    pub(crate) c: u64,
}

pub(crate) const RECORD: usize = 32;

impl Record {
    pub(crate) fn new(kind: u32, aux: u32, a: u64, b: u64, c: u64) -> Self {
        Record { kind, aux, a, b, c }
    }

    fn to_bytes(self) -> [u8; RECORD] {
        let mut out = [0u8; RECORD];
        out[0..4].copy_from_slice(&self.kind.to_le_bytes());
        out[4..8].copy_from_slice(&self.aux.to_le_bytes());
        out[8..16].copy_from_slice(&self.a.to_le_bytes());
        out[16..24].copy_from_slice(&self.b.to_le_bytes());
        out[24..32].copy_from_slice(&self.c.to_le_bytes());
        out
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let u32_at = |at: usize| {
            bytes
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
        };
        Some(Record {
            kind: u32_at(0)?,
            aux: u32_at(4)?,
            a: super::wire::word(bytes, 8)?,
            b: super::wire::word(bytes, 16)?,
            c: super::wire::word(bytes, 24)?,
        })
    }
}

/// The ledger of process `pid` in run directory `dir`.
pub(crate) fn ledger_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("{pid}.ledger"))
}

/// This process's ledger, open for appending.
#[derive(Debug)]
pub(crate) struct Ledger(File);

impl Ledger {
    pub(crate) fn create(dir: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(ledger_path(dir, std::process::id()))?;
        Ok(Ledger(file))
    }

    /// Appends one record with one `write` (shared by threads: `O_APPEND` keeps records whole).
    pub(crate) fn write(&self, record: Record) -> io::Result<()> {
        (&self.0).write_all(&record.to_bytes())
    }
}

/// Appends `record` to process `pid`'s ledger (for tests that stage a run's ledgers).
#[cfg(test)]
pub(crate) fn append(dir: &Path, pid: u32, record: Record) -> io::Result<()> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(ledger_path(dir, pid))?
        .write_all(&record.to_bytes())
}

/// The processes that wrote a ledger in `dir`.
pub(crate) fn ledger_pids(dir: &Path) -> Vec<u32> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| {
                let name = e.ok()?.file_name();
                name.to_str()?.strip_suffix(".ledger")?.parse().ok()
            })
            .collect()
        })
        .unwrap_or_default()
}

/// Every whole record of process `pid`'s ledger (none if it never wrote one).
pub(crate) fn read_ledger(dir: &Path, pid: u32) -> io::Result<Vec<Record>> {
    let mut bytes = Vec::new();
    match File::open(ledger_path(dir, pid)) {
        Ok(mut file) => {
            file.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    Ok(bytes
        .chunks_exact(RECORD)
        .filter_map(Record::from_bytes)
        .collect())
}

// --- the board ------------------------------------------------------------------------------

/// Stop flags, one per group of processes, each on its own line.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stop {
    Clients = 0,
    Duplex = 1,
    Subscribers = 2,
    Publisher = 3,
}

/// Live counters for the progress bar (the ledgers hold the real accounting).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    Calls = 0,
    Replies = 1,
    Wrong = 2,
    Errors = 3,
    Streams = 4,
    DuplexMessages = 5,
    Samples = 6,
}

/// What was killed (the kill log's kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Victim {
    Server = 1,
    Client = 2,
    DuplexPeer = 3,
    Publisher = 4,
    Subscriber = 5,
    /// A server a client started on demand.
    OnDemandServer = 6,
}

const STOPS: usize = 0;
const COUNTERS: usize = 4096;
/// Per duplex pair slot and side: `pid << 32 | peer pid` once paired.
const PAIRS: usize = 6144;
pub(crate) const MAX_PAIRS: usize = 64;
const _: () = assert!(COUNTERS + 16 * 64 <= PAIRS && PAIRS + MAX_PAIRS * 2 * 8 <= KILLS);
const KILLS: usize = 8192;
const KILL_SLOTS: usize = 4096;
const BOARD_LEN: usize = KILLS + KILL_SLOTS * 16;

/// The run's shared board (a memlink segment).
#[derive(Debug)]
pub(crate) struct Board {
    segment: Segment,
    kills: u64,
}

impl Board {
    /// The driver's: creates the segment (removed when dropped).
    pub(crate) fn create(name: &str) -> memlink::Result<Self> {
        Ok(Board {
            segment: Segment::create(name, BOARD_LEN)?,
            kills: 0,
        })
    }

    /// A child's view.
    pub(crate) fn open(name: &str) -> memlink::Result<Self> {
        Ok(Board {
            segment: Segment::open(name)?,
            kills: 0,
        })
    }

    fn word(&self, offset: usize) -> Option<&AtomicU64> {
        self.segment.atomic_u64(offset).ok()
    }

    pub(crate) fn stop(&self, which: Stop) {
        if let Some(w) = self.word(STOPS + which as usize * 64) {
            w.store(1, Ordering::SeqCst);
        }
    }

    pub(crate) fn stopped(&self, which: Stop) -> bool {
        self.word(STOPS + which as usize * 64)
            .is_some_and(|w| w.load(Ordering::Relaxed) != 0)
    }

    pub(crate) fn add(&self, counter: Counter, n: u64) {
        if let Some(w) = self.word(COUNTERS + counter as usize * 64) {
            w.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn get(&self, counter: Counter) -> u64 {
        self.word(COUNTERS + counter as usize * 64)
            .map_or(0, |w| w.load(Ordering::Relaxed))
    }

    /// Side `side` of pair slot `pair` (process `me`) has paired with `peer`.
    pub(crate) fn set_paired(&self, pair: usize, side: u64, me: u32, peer: u32) {
        if let Some(w) = self.word(PAIRS + (pair * 2 + side as usize % 2) * 8) {
            w.store((u64::from(me) << 32) | u64::from(peer), Ordering::Relaxed);
        }
    }

    /// Whether processes `a` (side 0) and `b` (side 1) of pair slot `pair` have paired with
    /// each other.
    pub(crate) fn paired(&self, pair: usize, a: u32, b: u32) -> bool {
        let word = |side: usize| {
            self.word(PAIRS + (pair * 2 + side) * 8)
                .map_or(0, |w| w.load(Ordering::Relaxed))
        };
        word(0) == (u64::from(a) << 32 | u64::from(b))
            && word(1) == (u64::from(b) << 32 | u64::from(a))
    }

    /// Writes down that `pid` (a `victim`) is about to be killed now; returns the instant.
    pub(crate) fn note_kill(&mut self, victim: Victim, pid: u32) -> u64 {
        let at = KILLS + (self.kills as usize % KILL_SLOTS) * 16;
        self.kills += 1;
        let now = now_ns();
        if let (Some(who), Some(when)) = (self.word(at), self.word(at + 8)) {
            // The instant first, then who (Release): a reader that finds the pid (Acquire)
            // reads this instant. SYNC POINT with the Acquire load in `killed_at`/`kill_between`.
            when.store(now, Ordering::Relaxed);
            who.store(((victim as u64) << 32) | u64::from(pid), Ordering::Release);
        }
        now
    }

    pub(crate) fn kills(&self) -> impl Iterator<Item = (Victim, u32, u64)> + '_ {
        (0..KILL_SLOTS).filter_map(move |slot| {
            let at = KILLS + slot * 16;
            let who = self.word(at)?.load(Ordering::Acquire);
            let when = self.word(at + 8)?.load(Ordering::Relaxed);
            let victim = match who >> 32 {
                1 => Victim::Server,
                2 => Victim::Client,
                3 => Victim::DuplexPeer,
                4 => Victim::Publisher,
                5 => Victim::Subscriber,
                6 => Victim::OnDemandServer,
                _ => return None,
            };
            Some((victim, who as u32, when))
        })
    }

    /// How many kills of a `victim` happened after `from` and no later than `to`.
    pub(crate) fn kills_between(&self, victim: Victim, from: u64, to: u64) -> u64 {
        self.kills()
            .filter(|&(v, _, when)| v == victim && when > from && when <= to)
            .count() as u64
    }

    /// When `pid` was killed, if the driver killed it.
    pub(crate) fn killed_at(&self, pid: u32) -> Option<u64> {
        self.kills()
            .find(|&(_, who, _)| who == pid)
            .map(|(_, _, when)| when)
    }

    /// The last kill of a `victim` after `from` and no later than `to`: when, and whom. (A call
    /// whose server died before reading its request is sent again to the next server, so a
    /// call can outlive two servers; its error then answers the last one's death.)
    pub(crate) fn kill_between(&self, victim: Victim, from: u64, to: u64) -> Option<(u64, u32)> {
        self.kills()
            .filter(|&(v, _, when)| v == victim && when > from && when <= to)
            .map(|(_, pid, when)| (when, pid))
            .max()
    }
}

// --- processes as /proc shows them ----------------------------------------------------------

/// Open descriptors of `pid`.
pub(crate) fn descriptors(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Resident memory of `pid` in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Each thread of `pid`: its name, state, kernel wait channel and kernel stack (root only).
pub(crate) fn thread_states(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "gone".to_owned();
    };
    tasks
        .filter_map(|t| t.ok())
        .map(|t| {
            let path = t.path();
            let read = |f: &str| std::fs::read_to_string(path.join(f)).unwrap_or_default();
            let stat = read("stat");
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("?")
                .to_owned();
            let stack: Vec<String> = read("stack")
                .lines()
                .take(6)
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
                .collect();
            format!(
                "[{} {} {state} wchan={} stack={}]",
                t.file_name().to_string_lossy(),
                read("comm").trim(),
                read("wchan").trim(),
                stack.join("<")
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether process `pid` has finished dying: every thread a zombie, or gone. (The leader
/// turns zombie as soon as it exits, while the other threads may still be tearing down the
/// memory and holding the descriptors.)
pub(crate) fn is_dead(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.filter_map(Result::ok).all(|task| {
        std::fs::read_to_string(task.path().join("stat")).map_or(true, |stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| matches!(state, "Z" | "X"))
        })
    })
}

/// Processes whose parent is `parent` (zombies included).
pub(crate) fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

/// memlink objects in /dev/shm whose name contains `tag`.
pub(crate) fn shm_leftovers(tag: &str) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|f| f.starts_with("memlink.") && f.contains(tag))
                .collect()
        })
        .unwrap_or_default()
}

/// Bound abstract sockets (`@memlink....`) whose name contains `tag`.
pub(crate) fn socket_leftovers(tag: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/net/unix")
        .map(|table| {
            table
                .lines()
                .filter_map(|l| l.split_whitespace().nth(7))
                .filter(|path| path.starts_with("@memlink.") && path.contains(tag))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_log_counts_only_what_follows_the_instant_asked_about() {
        let mut log = BusyLog::default();
        log.record(100, 200);
        log.record(300, 350);
        log.record(400, 390);
        assert_eq!(log.busy_after(0), 150);
        assert_eq!(log.busy_after(150), 100);
        assert_eq!(log.busy_after(320), 30);
        assert_eq!(log.busy_after(1000), 0);
        for n in 0..5000u64 {
            log.record(10_000 + n * 10, 10_000 + n * 10 + 5);
        }
        assert_eq!(
            log.busy_after(0),
            4096 * 5,
            "only the latest spans are kept"
        );
    }
}
