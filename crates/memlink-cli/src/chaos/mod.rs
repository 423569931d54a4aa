//! `memlink chaos`: attacks a live system and reports what survived.
//!
//! # What runs, and what is killed when
//! The driver (this process) starts, as child processes running `memlink __chaos ROLE`:
//! - an rpc **server** (1 to 3 workers, plain calls and streams), `SIGKILL`ed every ~2 s (±25%)
//!   and restarted at once (it binds the name as soon as the kernel has freed it);
//! - `--clients` rpc **client** processes, each with one or two threads calling one after
//!   another through one `Client` of one or eight connections (one thread with timeouts, one
//!   without): 90% plain calls of 0 B-1 MiB, skewed small; 10% streams of 1-64 items, 30% of
//!   them dropped part-way. Every ~50 ms (±50%) one of them is `SIGKILL`ed and replaced, except
//!   the first two, which live through the whole run (the survivors whose descriptors and
//!   memory are compared);
//! - a second rpc service whose clients (`--on-demand-clients`, 2) start its server themselves
//!   when none runs (`ClientOptions::start_server`; the server exits after a second without
//!   clients); every ~500 ms the driver kills that server or one of its clients, so a launcher
//!   may die and leave its server to the driver (the subreaper), which reaps it;
//! - duplex **pairs** exchanging numbered messages of up to 512 KiB both ways; ~300 ms after a
//!   pair forms, one side (chosen at random) is `SIGKILL`ed, and the survivor must drain and get
//!   `Disconnected`; 30% of pairs also lose a side within 40 ms of starting, before, during or
//!   just after the handshake. Then the next pair forms on the same name;
//! - a **publisher** of numbered samples (loaned or copied; every other one reliable),
//!   `SIGKILL`ed every ~1.5 s and restarted, and subscribers (half of them slow enough to lag,
//!   all holding up to three samples), one `SIGKILL`ed every ~400 ms and replaced, except the
//!   first.
//!
//! Every random choice (sizes, victims, intervals, items, cancellations) comes from `--seed`;
//! the timing of the processes does not, so two runs with one seed make the same choices but
//! not the same interleavings.
//!
//! # Acknowledged, lost, wrong
//! Each process writes what it did to its own append-only ledger (`ledger`, on tmpfs), which
//! outlives a `SIGKILL`; the driver reads them all at the end.
//! - **Request/response.** The server's handler writes `EXECUTED(client, call)` before its reply
//!   leaves. A call is *acknowledged* when its client got a reply that names this client and
//!   call id and carries this request's bytes transformed, and wrote it down. *Wrong*: any reply
//!   that fails that check. *Lost*: an acknowledged call missing from the ledger of the server
//!   incarnation its reply names; or a call a server executed while its client lived on, for
//!   which the client got neither a reply nor an error (or only a timeout, after 5 s: more than
//!   twice the server's lifetime). A call executed twice counts as well (the client only
//!   retries calls the server provably never read). A call still running after 5 s (10 s with
//!   a timeout) is *stuck*.
//! - **Streams.** Every item must be this call's, in order, intact. *Acknowledged*: the clean
//!   end; *lost*: a clean end before all requested items, or one the server's ledger does not
//!   show as completed (`STREAM_DONE` is written before the handler returns).
//! - **Duplex.** *Acknowledged*: `send` returned `Ok` (the sender writes the count after each).
//!   *Lost*: the survivor got `Disconnected` having received fewer messages than the victim's
//!   ledger acknowledged; *wrong*: a message out of order, damaged, or more messages than were
//!   sent (one more is allowed: the victim may die between `send` and its ledger write).
//! - **Publish/subscribe.** *Acknowledged*: `publish`/`send` returned. Every sample must follow
//!   the one before, or the gap must be exactly what `Lagged` reported. *Lost*: at `Disconnected`,
//!   the subscriber had received (or been told it missed) fewer samples than the dead publisher
//!   acknowledged. At the end, every slot held by a subscriber (killed ones included) must be
//!   back with the last publisher.
//!
//! # Wake-up after a death
//! Before each `SIGKILL` the driver writes the victim's pid and the instant (`CLOCK_MONOTONIC`) to
//! the board, a shared segment. A caller that was blocked when a server died (its call started
//! before the kill) and gets `Disconnected` measures now minus that instant. A duplex survivor
//! or a subscriber first takes what the victim sent, at its own pace (a slow subscriber may be
//! thousands of samples behind), so the time it spent busy with those messages since the kill
//! is not counted (`ledger::BusyLog`); its waits in memlink are. A killed process keeps its
//! sockets until the kernel has torn down its memory, which on a crowded machine can take
//! seconds (we saw a victim wait 13 s in `exit_mmap` for a mapping lock), so a thread of the
//! driver notes when each victim is dead (every thread of it gone, within a millisecond), and
//! each wake-up is also reported from that moment: the part memlink controls. A call whose server died before reading its request is
//! sent again to the next server; if that one dies too, the call is measured from the last
//! kill. The goal is 100 ms from the `SIGKILL`; the run fails if a peer was woken more than
//! [`WAKE_BOUND`] (1 s) after its victim was dead, a generous bound for a small shared machine
//! where a woken process may wait for a CPU.

mod duplex;
mod ledger;
mod pubsub;
mod report;
mod rpc;
mod wire;

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use memlink::Error;

use ledger::{Board, Counter, Ledger, MAX_PAIRS, Stop, Victim};
use wire::{Rng, derive};

/// The goal for the time from a death to a blocked peer's error.
pub(crate) const WAKE_GOAL: Duration = Duration::from_millis(100);
/// Past this the run fails: a wake-up this late means a waiter was not woken by the death.
pub(crate) const WAKE_BOUND: Duration = Duration::from_secs(1);
/// Mean life of a server started on demand (or of one of its clients: either is killed).
const ON_DEMAND_LIFE: Duration = Duration::from_millis(500);
/// Mean life of a publisher.
const PUBLISHER_LIFE: Duration = Duration::from_millis(1500);
/// Mean interval between subscriber kills.
const SUBSCRIBER_KILL: Duration = Duration::from_millis(400);
/// Mean life of a duplex pair once formed.
const PAIR_LIFE: Duration = Duration::from_millis(300);
/// How long a duplex survivor may take to get `Disconnected` and exit.
const SURVIVOR_LIMIT: Duration = Duration::from_secs(5);
/// How long a pair may take to form.
const PAIRING_LIMIT: Duration = Duration::from_secs(10);
/// The share of duplex pairs that lose a side while they form, in percent.
const EARLY_KILL_PERCENT: u64 = 30;
/// Client processes that are never killed.
const LONG_LIVED_CLIENTS: usize = 2;

/// Options of `memlink chaos`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ChaosArgs {
    /// How long to attack, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Request/response client processes.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seed for every random choice (printed, so that a run's choices can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Mean time between client kills, in milliseconds.
    #[arg(long, default_value_t = 50)]
    client_kill_ms: u64,
    /// Mean time between server kills, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    server_kill_ms: u64,
    /// Duplex pairs.
    #[arg(long, default_value_t = 2)]
    duplex_pairs: usize,
    /// Subscriber processes.
    #[arg(long, default_value_t = 4)]
    subscribers: usize,
    /// Client processes of a second service whose server they start on demand.
    #[arg(long, default_value_t = 2)]
    on_demand_clients: usize,
    /// Keep the run's ledgers and standard errors even if every promise held.
    #[arg(long)]
    keep: bool,
}

/// What every chaos child is told.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Common {
    /// The run's directory (ledgers, standard errors).
    #[arg(long)]
    dir: PathBuf,
    /// The board segment's name.
    #[arg(long)]
    board: String,
    /// The run's seed (samples' contents derive from it).
    #[arg(long)]
    run_seed: u64,
    /// This process's own seed.
    #[arg(long)]
    seed: u64,
    /// The driver's pid: a child whose parent is gone exits (0: a server started on demand).
    #[arg(long)]
    parent: u32,
}

/// The chaos child processes (`memlink __chaos ROLE`).
#[derive(clap::Subcommand, Debug)]
pub(crate) enum Role {
    RpcServer {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        name: String,
        /// Exit once no client has been connected for this long (a server started on demand).
        #[arg(long)]
        idle_exit_ms: Option<u64>,
    },
    RpcClient {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        name: String,
        /// Start the server on demand whenever none runs.
        #[arg(long)]
        on_demand: bool,
    },
    DuplexPeer {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        name: String,
        #[arg(long)]
        pair: usize,
        #[arg(long)]
        side: u64,
        #[arg(long)]
        pair_seed: u64,
    },
    Publisher {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        topic: String,
    },
    Subscriber {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        slow: bool,
    },
}

/// Runs a chaos child's role.
pub(crate) fn run_role(role: Role) -> io::Result<()> {
    match role {
        Role::RpcServer {
            common,
            name,
            idle_exit_ms,
        } => rpc::server(&common, &name, idle_exit_ms.map(Duration::from_millis)),
        Role::RpcClient {
            common,
            name,
            on_demand,
        } => rpc::client(&common, &name, on_demand),
        Role::DuplexPeer {
            common,
            name,
            pair,
            side,
            pair_seed,
        } => duplex::peer(&common, &name, pair, side, pair_seed),
        Role::Publisher { common, topic } => pubsub::publisher(&common, &topic),
        Role::Subscriber {
            common,
            topic,
            slow,
        } => pubsub::subscriber(&common, &topic, slow),
    }
}

pub(crate) fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// A child's start: dies with the driver, opens the board and its ledger.
fn enter(common: &Common) -> io::Result<(Board, Ledger)> {
    use rustix::process::{Signal, getppid, set_parent_process_death_signal};
    // A server started on demand (parent 0) outlives its launcher, as such servers do, and
    // exits once idle.
    if common.parent != 0 {
        set_parent_process_death_signal(Some(Signal::KILL))?;
        // The driver may have died before the line above: then nobody would kill us.
        if getppid().map(|p| p.as_raw_pid()) != i32::try_from(common.parent).ok() {
            return Err(other("the chaos driver is gone"));
        }
    }
    let board = Board::open(&common.board).map_err(other)?;
    let ledger = Ledger::create(&common.dir)?;
    Ok((board, ledger))
}

/// Ledger record kinds (`Record::kind`), and what `aux`, `a`, `b`, `c` hold for each.
pub(crate) mod kind {
    /// Server: a plain call executed (a client, b call id).
    pub(crate) const EXECUTED: u32 = 1;
    /// Server: a stream handler started (a client, b call id).
    pub(crate) const STREAM_STARTED: u32 = 2;
    /// Server: a stream handler sent every item and returns (a client, b call id, c items).
    pub(crate) const STREAM_DONE: u32 = 3;
    /// Server: a request arrived damaged (aux 0 plain, 1 stream).
    pub(crate) const BAD_REQUEST: u32 = 4;
    /// Server: serving (a instant).
    pub(crate) const SERVER_UP: u32 = 5;

    /// Client: a correct reply (a call id, b server pid).
    pub(crate) const REPLY_OK: u32 = 10;
    /// Client: a call or stream ended with an error (aux error code, a call id, b pattern,
    /// c items received before it).
    pub(crate) const CALL_FAILED: u32 = 11;
    /// Any: a wrong reply, item, message or sample (aux pattern, a call id or sequence number).
    pub(crate) const WRONG: u32 = 12;
    /// Client: a stream ended cleanly with every item (a call id, b server pid, c items).
    pub(crate) const STREAM_OK: u32 = 13;
    /// Client: a stream ended cleanly too early (a call id, b items, c items wanted).
    pub(crate) const STREAM_SHORT: u32 = 14;
    /// Client: a stream dropped on purpose (a call id, b items read, c items wanted).
    pub(crate) const STREAM_CANCELLED: u32 = 15;
    /// Client: woken by a server's death while blocked (aux pattern, a nanoseconds since the
    /// kill, b the server's pid, c the servers killed during the call << 56 | the instant it
    /// ended).
    pub(crate) const WAKE: u32 = 17;
    /// Client: the first reply from a server (a server pid, b instant).
    pub(crate) const FIRST_REPLY: u32 = 18;
    /// Client: connecting failed (aux error code).
    pub(crate) const CONNECT_FAILED: u32 = 19;
    /// Client: a call has been running longer than the call timeout (a call id).
    pub(crate) const HUNG: u32 = 20;

    /// Duplex: paired (a peer pid).
    pub(crate) const PAIRED: u32 = 30;
    /// Duplex: `send` acknowledged this many messages (a count).
    pub(crate) const SENT: u32 = 31;
    /// Duplex: `Disconnected` after receiving a messages, from peer b; c nanoseconds since its
    /// kill (`u64::MAX` if it was not killed); aux: microseconds the survivor spent busy with
    /// messages it had taken since the kill (see `ledger::BusyLog`).
    pub(crate) const DISCONNECTED: u32 = 32;
    /// Duplex: an error (aux code; a 0 open, 1 send, 2 receive).
    pub(crate) const DUPLEX_ERROR: u32 = 33;
    /// Duplex: stopped at the end having received a messages.
    pub(crate) const RECEIVED_AT_STOP: u32 = 34;

    /// Publisher: acknowledged this many samples (a count).
    pub(crate) const PUBLISHED: u32 = 40;
    /// Publisher, at the end: slots still held (a) with b subscribers connected.
    pub(crate) const HELD_AT_END: u32 = 41;
    /// Publisher: publishing failed (aux code).
    pub(crate) const PUBLISH_FAILED: u32 = 42;
    /// Subscriber: `Disconnected` from publisher a (low 32 bits; the high 32: microseconds the
    /// subscriber spent busy with samples it had taken since the kill), next sample due b
    /// (`u64::MAX`: none seen), c nanoseconds since its kill (`u64::MAX`: unknown); aux 1 if
    /// anything came from it.
    pub(crate) const SUB_DISCONNECTED: u32 = 43;
    /// Subscriber: `Lagged` (a missed).
    pub(crate) const LAGGED: u32 = 44;
    /// Subscriber: an error (aux code).
    pub(crate) const SUBSCRIBE_FAILED: u32 = 45;

    pub(crate) const PATTERN_RPC: u32 = 1;
    pub(crate) const PATTERN_STREAM: u32 = 2;
    pub(crate) const PATTERN_DUPLEX: u32 = 3;
    pub(crate) const PATTERN_PUBSUB: u32 = 4;
    /// Calls to a server started on demand.
    pub(crate) const PATTERN_ON_DEMAND: u32 = 5;
}

/// Names of the error codes [`code`] gives.
pub(crate) const ERROR_NAMES: [&str; 21] = [
    "other",
    "Disconnected",
    "NotRunning",
    "Timeout",
    "HandlerPanicked",
    "HandlerFailed",
    "Corrupted",
    "ServerFull",
    "MessageTooLarge",
    "Os",
    "PermissionDenied",
    "Busy",
    "TooManyHeld",
    "StreamsHeld",
    "AlreadyRunning",
    "Cancelled",
    "InvalidName",
    "ServerSpawnFailed",
    "ServerFailedToStart",
    "ServerStartTimedOut",
    "StartLockHeld",
];

/// The error's kind as a small number (an index into [`ERROR_NAMES`]).
pub(crate) fn code(e: &Error) -> u32 {
    match e {
        Error::Disconnected { .. } => 1,
        Error::NotRunning { .. } => 2,
        Error::Timeout => 3,
        Error::HandlerPanicked { .. } => 4,
        Error::HandlerFailed { .. } => 5,
        Error::Corrupted { .. } => 6,
        Error::ServerFull { .. } => 7,
        Error::MessageTooLarge { .. } => 8,
        Error::Os { .. } => 9,
        Error::PermissionDenied { .. } => 10,
        Error::Busy { .. } => 11,
        Error::TooManyHeld { .. } => 12,
        Error::StreamsHeld { .. } => 13,
        Error::AlreadyRunning { .. } => 14,
        Error::Cancelled => 15,
        Error::InvalidName { .. } => 16,
        Error::ServerSpawnFailed { .. } => 17,
        Error::ServerFailedToStart { .. } => 18,
        Error::ServerStartTimedOut { .. } => 19,
        Error::StartLockHeld { .. } => 20,
        _ => 0,
    }
}

pub(crate) const CODE_TIMEOUT: u32 = 3;
pub(crate) const CODE_DISCONNECTED: u32 = 1;

// --- the driver ----------------------------------------------------------------------------------

/// How long the wind-down waits for killed children to die.
const DEATH_LIMIT: Duration = Duration::from_secs(30);
/// A killed child not dead after this is looked at (what its threads are doing).
const SLOW_DEATH: Duration = Duration::from_millis(200);

/// A child process, killed and reaped when dropped.
struct Proc {
    child: Child,
    role: &'static str,
    pid: u32,
    err: PathBuf,
    status: Option<ExitStatus>,
    /// When the chaos killed it (`CLOCK_MONOTONIC` ns, as on the board).
    killed_ns: Option<u64>,
}

impl Proc {
    /// SIGKILLs and reaps it, waiting as long as that takes (for the end of the run).
    fn kill(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
        self.status
    }

    /// SIGKILLs it without waiting (the chaos): `poll` reaps it later.
    fn sigkill(&mut self, at: u64) {
        if self.status.is_none() && self.killed_ns.is_none() {
            let _ = self.child.kill();
            self.killed_ns = Some(at);
        }
    }

    /// Its exit status, if it has exited (it is then reaped).
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.status = Some(status);
            }
        }
        self.status
    }

    fn terminate(&self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }

    /// What it said on its standard error, last lines.
    fn stderr_tail(&self) -> String {
        report::tail(&self.err)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Killed children not yet dead: a thread per child waits for its death and notes the instant
/// (within a millisecond), so that the driver's loop never waits for a slow death and the
/// moment each victim was gone is known precisely.
struct Dying {
    count: usize,
    tx: std::sync::mpsc::Sender<Death>,
    rx: std::sync::mpsc::Receiver<Death>,
}

struct Death {
    pid: u32,
    killed: u64,
    dead: u64,
    /// What its threads were doing if it was not dead after [`SLOW_DEATH`].
    slow: Option<String>,
}

impl Dying {
    fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        Dying { count: 0, tx, rx }
    }

    /// Waits (on a thread of its own) for `proc`, already sent `SIGKILL`, to die.
    fn watch(&mut self, mut proc: Proc) {
        let tx = self.tx.clone();
        self.count += 1;
        let spawned = std::thread::Builder::new()
            .name("chaos-reaper".into())
            .spawn(move || {
                let started = Instant::now();
                let killed = proc.killed_ns.unwrap_or_else(ledger::now_ns);
                let mut slow = None;
                while proc.poll().is_none() {
                    if started.elapsed() > SLOW_DEATH {
                        slow = Some(format!(
                            "{} {} not dead {SLOW_DEATH:?} after SIGKILL; its threads: {}",
                            proc.role,
                            proc.pid,
                            ledger::thread_states(proc.pid)
                        ));
                        proc.kill(); // waits
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                let _ = tx.send(Death {
                    pid: proc.pid,
                    killed,
                    dead: ledger::now_ns(),
                    slow,
                });
            });
        if spawned.is_err() {
            // No thread to spare: the process is reaped when its `Proc` drops, here.
            self.count -= 1;
        }
    }

    /// Waits (on a thread of its own) for `pid`, not a child of ours, killed at `killed`, to be
    /// dead: a zombie (its sockets closed, waiting for its parent) or gone.
    fn watch_pid(&mut self, pid: u32, killed: u64) {
        let tx = self.tx.clone();
        self.count += 1;
        let spawned = std::thread::Builder::new()
            .name("chaos-reaper".into())
            .spawn(move || {
                let started = Instant::now();
                let mut slow = None;
                while !ledger::is_dead(pid) && started.elapsed() < DEATH_LIMIT {
                    if slow.is_none() && started.elapsed() > SLOW_DEATH {
                        slow = Some(format!(
                            "server started on demand {pid} not dead {SLOW_DEATH:?} after SIGKILL; its threads: {}",
                            ledger::thread_states(pid)
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                let _ = tx.send(Death {
                    pid,
                    killed,
                    dead: ledger::now_ns(),
                    slow,
                });
            });
        if spawned.is_err() {
            self.count -= 1;
        }
    }

    /// Notes the deaths reported since the last look.
    fn collect(&mut self, facts: &mut report::Facts) {
        while let Ok(death) = self.rx.try_recv() {
            self.count -= 1;
            facts.deaths.insert(death.pid, (death.killed, death.dead));
            if let Some(slow) = death.slow {
                if facts.slow_deaths.len() < 8 {
                    facts.slow_deaths.push(slow);
                }
            }
        }
    }
}

enum PairState {
    /// Waiting for the two sides to pair; `early_kill`: when to kill one of them first, and
    /// `early_victim`: the side killed so (whose peer, if it had paired with it, exits).
    Starting {
        since: Instant,
        early_kill: Option<Instant>,
        early_victim: Option<u32>,
    },
    Running {
        kill_at: Instant,
    },
    Draining {
        survivor: usize,
        victim: u32,
        since: Instant,
    },
    /// Over, during the wind-down (no new pair forms).
    Done,
}

/// A duplex pair slot: its current two sides.
struct Pair {
    slot: usize,
    name: String,
    pair_seed: u64,
    sides: Vec<Proc>,
    state: PairState,
}

struct Driver {
    args: ChaosArgs,
    exe: PathBuf,
    dir: PathBuf,
    board: Board,
    board_name: String,
    seed: u64,
    rng: Rng,
    spawned: u64,
    me: u32,
    server_name: String,
    /// The service whose server clients start on demand.
    on_demand_name: String,
    topic: String,
    server: Option<Proc>,
    clients: Vec<Proc>,
    on_demand_clients: Vec<Proc>,
    /// Every process the driver spawned (others that come to it are orphans to reap).
    ours: std::collections::HashSet<u32>,
    next_orphan_look: Instant,
    long_lived: usize,
    pairs: Vec<Pair>,
    publisher: Option<Proc>,
    subscribers: Vec<Proc>,
    facts: report::Facts,
    /// Children killed and not yet dead.
    dying: Dying,
    /// Once winding down, no new pair forms.
    winding_down: bool,
}

/// A run's directory, removed when dropped unless kept.
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Where a run keeps its ledgers: in memory (tmpfs: `$XDG_RUNTIME_DIR`, else `/dev/shm`), not
/// on a disk. A process killed while a disk write of its is throttled behind other I/O dies only
/// once that write is done, seconds later on a busy machine: its peers would then seem slow to
/// notice its death, and the driver would wait to reap it.
fn run_root() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/dev/shm")])
        .find(|dir| dir.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

/// `memlink chaos`.
pub(crate) fn run(args: &ChaosArgs) -> Result<(), Box<dyn std::error::Error>> {
    let me = std::process::id();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| derive(d.as_nanos() as u64, u64::from(me)))
    });
    let tag = format!("chaos-{me}-");
    let mut dir = RunDir {
        path: run_root().join(format!("memlink-{tag}{seed:x}")),
        keep: false,
    };
    std::fs::create_dir_all(&dir.path)?;
    // Servers that clients start on demand outlive a killed launcher: they come to us.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = interrupted.clone();
        if let Err(e) = ctrlc::set_handler(move || interrupted.store(true, Ordering::SeqCst)) {
            eprintln!("memlink chaos: cannot catch Ctrl-C ({e}); it will leave the run unreported");
        }
    }
    if !args.json {
        println!(
            "memlink chaos: {} s, {} client processes, seed {seed} (repeat with --seed {seed})",
            args.seconds, args.clients
        );
    }
    let board_name = format!("{tag}board");
    let mut driver = Driver {
        args: args.clone(),
        exe: std::env::current_exe()?,
        dir: dir.path.clone(),
        board: Board::create(&board_name)?,
        board_name,
        seed,
        rng: Rng::new(derive(seed, 0)),
        spawned: 0,
        me,
        server_name: format!("{tag}rpc"),
        on_demand_name: format!("{tag}od"),
        topic: format!("{tag}topic"),
        server: None,
        clients: Vec::new(),
        on_demand_clients: Vec::new(),
        ours: std::collections::HashSet::new(),
        next_orphan_look: Instant::now(),
        long_lived: LONG_LIVED_CLIENTS.min(args.clients.max(1)),
        pairs: Vec::new(),
        publisher: None,
        subscribers: Vec::new(),
        facts: report::Facts::default(),
        dying: Dying::new(),
        winding_down: false,
    };
    driver.facts.seed = seed;
    driver.facts.seconds = args.seconds;
    driver.facts.client_processes = args.clients;
    let attacked = driver.start().and_then(|()| driver.attack(&interrupted));
    driver.wind_down();
    attacked?;
    driver.facts.interrupted = interrupted.load(Ordering::SeqCst);
    if args.keep {
        // For a post-mortem: every kill (what, pid, when) and when the victim was dead.
        let mut kills: Vec<String> = driver
            .board
            .kills()
            .map(|(victim, pid, at)| {
                let dead = driver.facts.deaths.get(&pid).map_or(0, |d| d.1);
                format!("{victim:?}\t{pid}\t{at}\t{dead}")
            })
            .collect();
        kills.sort_by_key(|line| line.split('\t').nth(2).map(str::to_owned));
        std::fs::write(driver.dir.join("kills.tsv"), kills.join("\n"))?;
    }
    let totals = report::Totals::of(&driver.board);
    let mut report = report::analyse(&driver.dir, &driver.facts, &totals)?;
    let Driver { board, .. } = driver;
    drop(board);
    // Everything is reaped and the board is gone: now nothing of the run may remain.
    report.cleanup(me, &tag);
    dir.keep = args.keep || (!report.passed() && !report.interrupted());
    if args.json {
        println!("{}", report.to_json());
    } else {
        report.print();
    }
    if dir.keep {
        eprintln!(
            "memlink chaos: the run's ledgers and its processes' standard errors are kept in {}",
            dir.path.display()
        );
    }
    if report.passed() {
        Ok(())
    } else {
        Err(format!("chaos: promises broken: {}", report.failures().join("; ")).into())
    }
}

impl Driver {
    fn spawn(&mut self, role: &'static str, extra: &[String]) -> io::Result<Proc> {
        self.spawned += 1;
        let err = self.dir.join(format!("{:05}-{role}.err", self.spawned));
        let mut command = Command::new(&self.exe);
        command
            .arg("__chaos")
            .arg(role)
            .arg("--dir")
            .arg(&self.dir)
            .args(["--board", &self.board_name])
            .args(["--run-seed", &self.seed.to_string()])
            .args(["--seed", &derive(self.seed, self.spawned).to_string()])
            .args(["--parent", &self.me.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&err)?)
            // Its own process group: a Ctrl-C at the terminal reaches the driver only, which
            // then stops everything in order.
            .process_group(0);
        let started = Instant::now();
        let child = command.spawn()?;
        self.facts.slowest_spawn = self.facts.slowest_spawn.max(started.elapsed());
        let pid = child.id();
        self.ours.insert(pid);
        Ok(Proc {
            child,
            role,
            pid,
            err,
            status: None,
            killed_ns: None,
        })
    }

    fn spawn_server(&mut self) -> io::Result<()> {
        let args = ["--name".to_owned(), self.server_name.clone()];
        let server = self.spawn("rpc-server", &args)?;
        self.facts.servers.push(report::Life::new(server.pid));
        self.server = Some(server);
        Ok(())
    }

    fn spawn_client(&mut self) -> io::Result<Proc> {
        let args = ["--name".to_owned(), self.server_name.clone()];
        let client = self.spawn("rpc-client", &args)?;
        self.facts.clients.push(report::Life::new(client.pid));
        Ok(client)
    }

    fn spawn_on_demand_client(&mut self) -> io::Result<Proc> {
        let args = [
            "--name".to_owned(),
            self.on_demand_name.clone(),
            "--on-demand".to_owned(),
        ];
        let client = self.spawn("rpc-client", &args)?;
        self.facts.clients.push(report::Life::new(client.pid));
        Ok(client)
    }

    fn spawn_publisher(&mut self) -> io::Result<()> {
        let args = ["--topic".to_owned(), self.topic.clone()];
        let publisher = self.spawn("publisher", &args)?;
        self.facts.publishers.push(report::Life::new(publisher.pid));
        self.publisher = Some(publisher);
        Ok(())
    }

    fn spawn_subscriber(&mut self, slot: usize) -> io::Result<Proc> {
        let mut args = vec!["--topic".to_owned(), self.topic.clone()];
        if slot % 2 == 1 {
            args.push("--slow".to_owned());
        }
        let subscriber = self.spawn("subscriber", &args)?;
        self.facts
            .subscribers
            .push(report::Life::new(subscriber.pid));
        Ok(subscriber)
    }

    fn spawn_side(
        &mut self,
        slot: usize,
        name: &str,
        side: u64,
        pair_seed: u64,
    ) -> io::Result<Proc> {
        let args = [
            "--name".to_owned(),
            name.to_owned(),
            "--pair".to_owned(),
            slot.to_string(),
            "--side".to_owned(),
            side.to_string(),
            "--pair-seed".to_owned(),
            pair_seed.to_string(),
        ];
        let peer = self.spawn("duplex-peer", &args)?;
        self.facts.duplex_peers.push(peer.pid);
        Ok(peer)
    }

    fn spawn_pair(&mut self, slot: usize, name: String) -> io::Result<Pair> {
        let pair_seed = self.rng.next_u64();
        let sides = vec![
            self.spawn_side(slot, &name, 0, pair_seed)?,
            self.spawn_side(slot, &name, 1, pair_seed)?,
        ];
        // Some pairs lose a side while they form: before it opens the name, mid-handshake, or
        // just after pairing, depending on how fast it started.
        let early_kill = self
            .rng
            .percent(EARLY_KILL_PERCENT)
            .then(|| Instant::now() + Duration::from_millis(self.rng.below(40)));
        Ok(Pair {
            slot,
            name,
            pair_seed,
            sides,
            state: PairState::Starting {
                since: Instant::now(),
                early_kill,
                early_victim: None,
            },
        })
    }

    /// Starts the server, waits until it serves, then starts everything else.
    fn start(&mut self) -> io::Result<()> {
        self.spawn_server()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while memlink::rpc::server_stats(&self.server_name).is_err() {
            if Instant::now() > deadline {
                let tail = self
                    .server
                    .as_ref()
                    .map(Proc::stderr_tail)
                    .unwrap_or_default();
                return Err(other(format!("the first rpc server never came up: {tail}")));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.note_idle_server("first, before any client");
        for _ in 0..self.args.clients.max(1) {
            let client = self.spawn_client()?;
            self.clients.push(client);
        }
        for _ in 0..self.args.on_demand_clients {
            let client = self.spawn_on_demand_client()?;
            self.on_demand_clients.push(client);
        }
        self.spawn_publisher()?;
        for slot in 0..self.args.subscribers {
            let subscriber = self.spawn_subscriber(slot)?;
            self.subscribers.push(subscriber);
        }
        for slot in 0..self.args.duplex_pairs.min(MAX_PAIRS) {
            let name = format!("{}dx{slot}", self.board_name.trim_end_matches("board"));
            let pair = self.spawn_pair(slot, name)?;
            self.pairs.push(pair);
        }
        Ok(())
    }

    fn attack(&mut self, interrupted: &AtomicBool) -> io::Result<()> {
        let seconds = self.args.seconds;
        let bar = if self.args.json {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(seconds * 10)
        };
        if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:30}] {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        let client_every = Duration::from_millis(self.args.client_kill_ms.max(1));
        let server_every = Duration::from_millis(self.args.server_kill_ms.max(1));
        let start = Instant::now();
        let end = start + Duration::from_secs(seconds);
        let mut next_client_kill = start + self.rng.jitter(client_every, 50);
        let mut next_server_kill = start + self.rng.jitter(server_every, 25);
        let mut next_publisher_kill = start + self.rng.jitter(PUBLISHER_LIFE, 25);
        let mut next_subscriber_kill = start + self.rng.jitter(SUBSCRIBER_KILL, 50);
        let mut next_on_demand_kill = start + self.rng.jitter(ON_DEMAND_LIFE, 25);
        let warm_up = start + Duration::from_secs(1).min(Duration::from_secs(seconds) / 3);
        let mut sampled = false;
        let mut next_draw = start;
        let mut last_turn = start;
        loop {
            let now = Instant::now();
            self.facts.longest_turn = self.facts.longest_turn.max(now - last_turn);
            last_turn = now;
            if interrupted.load(Ordering::SeqCst) || now >= end {
                break;
            }
            if !sampled && now >= warm_up {
                sampled = true;
                self.facts.usage = self.survivors();
            }
            if now >= next_client_kill {
                next_client_kill = now + self.rng.jitter(client_every, 50);
                self.kill_client()?;
            }
            if now >= next_server_kill {
                next_server_kill = now + self.rng.jitter(server_every, 25);
                self.kill_server()?;
            }
            if now >= next_publisher_kill {
                next_publisher_kill = now + self.rng.jitter(PUBLISHER_LIFE, 25);
                self.kill_publisher()?;
            }
            if now >= next_subscriber_kill {
                next_subscriber_kill = now + self.rng.jitter(SUBSCRIBER_KILL, 50);
                self.kill_subscriber()?;
            }
            if now >= next_on_demand_kill {
                next_on_demand_kill = now + self.rng.jitter(ON_DEMAND_LIFE, 25);
                self.kill_on_demand()?;
            }
            self.watch()?;
            if now >= next_draw {
                next_draw = now + Duration::from_millis(100);
                bar.set_position(now.duration_since(start).as_millis() as u64 / 100);
                bar.set_message(self.progress_line());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if !interrupted.load(Ordering::SeqCst) {
            self.kill_each_once()?;
        }
        let end_usage = self.survivors();
        for (row, end) in self.facts.usage.iter_mut().zip(end_usage) {
            if row.pid == end.pid {
                row.fds_end = end.fds_start;
                row.rss_kib_end = end.rss_kib_start;
            }
        }
        bar.finish_and_clear();
        Ok(())
    }

    fn progress_line(&self) -> String {
        let b = &self.board;
        format!(
            "{} calls, {} wrong | kills: server {}, clients {}, duplex {}, publisher {}, subscribers {} | duplex {} msgs, pubsub {} samples",
            b.get(Counter::Calls),
            b.get(Counter::Wrong),
            self.facts.kills.server,
            self.facts.kills.client,
            self.facts.kills.duplex,
            self.facts.kills.publisher,
            self.facts.kills.subscriber,
            b.get(Counter::DuplexMessages),
            b.get(Counter::Samples),
        )
    }

    /// Descriptors and memory of the processes that live through the run.
    fn survivors(&self) -> Vec<report::Usage> {
        let mut rows = vec![("driver", self.me)];
        for client in self.clients.iter().take(self.long_lived) {
            rows.push(("rpc client (never killed)", client.pid));
        }
        if let Some(subscriber) = self.subscribers.first() {
            rows.push(("subscriber (never killed)", subscriber.pid));
        }
        rows.into_iter()
            .map(|(role, pid)| report::Usage {
                role,
                pid,
                fds_start: ledger::descriptors(pid),
                fds_end: None,
                rss_kib_start: ledger::rss_kib(pid),
                rss_kib_end: None,
            })
            .collect()
    }

    fn kill_client(&mut self) -> io::Result<()> {
        let killable = self.clients.len().saturating_sub(self.long_lived);
        if killable == 0 {
            return Ok(());
        }
        let slot = self.long_lived + self.rng.below(killable as u64) as usize;
        let replacement = self.spawn_client()?;
        let victim = std::mem::replace(&mut self.clients[slot], replacement);
        self.execute(Victim::Client, victim);
        self.facts.kills.client += 1;
        Ok(())
    }

    fn kill_server(&mut self) -> io::Result<()> {
        if let Some(server) = self.server.take() {
            self.execute(Victim::Server, server);
            self.facts.kills.server += 1;
        }
        // It binds the name as soon as the kernel has freed it (once the victim is dead).
        self.spawn_server()
    }

    fn kill_publisher(&mut self) -> io::Result<()> {
        if let Some(publisher) = self.publisher.take() {
            self.execute(Victim::Publisher, publisher);
            self.facts.kills.publisher += 1;
        }
        self.spawn_publisher()
    }

    fn kill_subscriber(&mut self) -> io::Result<()> {
        // The first subscriber lives through the run.
        let killable = self.subscribers.len().saturating_sub(1);
        if killable == 0 {
            return Ok(());
        }
        let slot = 1 + self.rng.below(killable as u64) as usize;
        let replacement = self.spawn_subscriber(slot)?;
        let victim = std::mem::replace(&mut self.subscribers[slot], replacement);
        self.execute(Victim::Subscriber, victim);
        self.facts.kills.subscriber += 1;
        Ok(())
    }

    /// Kills `proc` (a `victim`): notes the instant on the board, sends `SIGKILL`, and leaves
    /// it to die; returns the instant.
    fn execute(&mut self, victim: Victim, mut proc: Proc) -> u64 {
        let at = self.board.note_kill(victim, proc.pid);
        proc.sigkill(at);
        self.facts.killed(proc.pid, Some(at));
        self.dying.watch(proc);
        at
    }

    /// Kills `proc` outside the chaos (a stuck or leftover process) without waiting for it.
    fn bury(&mut self, mut proc: Proc) {
        proc.sigkill(ledger::now_ns());
        self.dying.watch(proc);
    }

    /// However short the run (or slow the machine), every kind of process is killed at least
    /// once: what was not killed yet is killed now, at the end.
    fn kill_each_once(&mut self) -> io::Result<()> {
        if self.facts.kills.server == 0 {
            self.kill_server()?;
        }
        if self.facts.kills.publisher == 0 {
            self.kill_publisher()?;
        }
        if self.facts.kills.on_demand_server == 0 && !self.on_demand_clients.is_empty() {
            self.kill_on_demand_server();
        }
        if self.facts.kills.duplex == 0 {
            let now = Instant::now();
            for index in 0..self.pairs.len() {
                if let PairState::Running { kill_at } = &mut self.pairs[index].state {
                    *kill_at = now;
                    self.step_pair(index)?;
                }
            }
        }
        Ok(())
    }

    /// Kills a client of the on-demand service (maybe the one that started its server, which
    /// then comes to the driver when it exits) and starts another.
    fn kill_on_demand_client(&mut self) -> io::Result<()> {
        if self.on_demand_clients.is_empty() {
            return Ok(());
        }
        let slot = self.rng.below(self.on_demand_clients.len() as u64) as usize;
        let replacement = self.spawn_on_demand_client()?;
        let victim = std::mem::replace(&mut self.on_demand_clients[slot], replacement);
        self.execute(Victim::Client, victim);
        self.facts.kills.client += 1;
        Ok(())
    }

    /// Kills the server its clients started on demand (not the driver's child: it learns the
    /// pid from the server itself); the next call of a client starts another.
    fn kill_on_demand(&mut self) -> io::Result<()> {
        if self.rng.percent(50) {
            return self.kill_on_demand_client();
        }
        self.kill_on_demand_server();
        Ok(())
    }

    /// Kills the server started on demand, if one runs.
    fn kill_on_demand_server(&mut self) {
        let Ok(stats) = memlink::rpc::server_stats(&self.on_demand_name) else {
            return;
        };
        if let Some(pid) = rustix::process::Pid::from_raw(stats.pid as i32) {
            let at = self.board.note_kill(Victim::OnDemandServer, stats.pid);
            if rustix::process::kill_process(pid, rustix::process::Signal::KILL).is_ok() {
                self.facts.kills.on_demand_server += 1;
                self.dying.watch_pid(stats.pid, at);
            }
        }
    }

    /// Processes that came to the driver as orphans (servers started on demand whose launcher
    /// died): its children that it did not spawn.
    fn orphans(&self) -> Vec<u32> {
        ledger::children_of(self.me)
            .into_iter()
            .filter(|pid| !self.ours.contains(pid))
            .collect()
    }

    /// Reaps the orphans that have exited.
    fn reap_orphans(&mut self) {
        for raw in self.orphans() {
            let Some(pid) = rustix::process::Pid::from_raw(raw as i32) else {
                continue;
            };
            if let Ok(Some(_)) =
                rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG)
            {
                self.facts.orphans_reaped += 1;
            }
        }
    }

    /// Notes the deaths of killed children that have died since the last look.
    fn reap_dying(&mut self) {
        self.dying.collect(&mut self.facts);
    }

    /// Notes a child that exited by itself (none should) and replaces it.
    fn unexpected(&mut self, proc: &Proc, status: ExitStatus) {
        self.facts.unexpected.push(report::Unexpected {
            role: proc.role,
            pid: proc.pid,
            status: status.to_string(),
            stderr: proc.stderr_tail(),
        });
    }

    /// Replaces children that exited by themselves, and moves the duplex pairs along.
    fn watch(&mut self) -> io::Result<()> {
        self.reap_dying();
        if Instant::now() >= self.next_orphan_look {
            self.next_orphan_look = Instant::now() + Duration::from_millis(50);
            self.reap_orphans();
        }
        if let Some(status) = self.server.as_mut().and_then(Proc::poll) {
            if let Some(server) = self.server.take() {
                self.unexpected(&server, status);
            }
            self.spawn_server()?;
        }
        for slot in 0..self.clients.len() {
            if let Some(status) = self.clients[slot].poll() {
                let replacement = self.spawn_client()?;
                let gone = std::mem::replace(&mut self.clients[slot], replacement);
                self.unexpected(&gone, status);
            }
        }
        for slot in 0..self.on_demand_clients.len() {
            if let Some(status) = self.on_demand_clients[slot].poll() {
                let replacement = self.spawn_on_demand_client()?;
                let gone = std::mem::replace(&mut self.on_demand_clients[slot], replacement);
                self.unexpected(&gone, status);
            }
        }
        if let Some(status) = self.publisher.as_mut().and_then(Proc::poll) {
            if let Some(publisher) = self.publisher.take() {
                self.unexpected(&publisher, status);
            }
            self.spawn_publisher()?;
        }
        for slot in 0..self.subscribers.len() {
            if let Some(status) = self.subscribers[slot].poll() {
                let replacement = self.spawn_subscriber(slot)?;
                let gone = std::mem::replace(&mut self.subscribers[slot], replacement);
                self.unexpected(&gone, status);
            }
        }
        for index in 0..self.pairs.len() {
            self.step_pair(index)?;
        }
        Ok(())
    }

    fn step_pair(&mut self, index: usize) -> io::Result<()> {
        let now = Instant::now();
        let pair = &mut self.pairs[index];
        let mut finished = false;
        match pair.state {
            PairState::Starting {
                since,
                early_kill,
                early_victim,
            } => {
                if early_kill.is_some_and(|at| now >= at) {
                    let side = self.rng.below(2);
                    let (slot, name, seed) = (pair.slot, pair.name.clone(), pair.pair_seed);
                    let replacement = self.spawn_side(slot, &name, side, seed)?;
                    let pair = &mut self.pairs[index];
                    let victim = std::mem::replace(&mut pair.sides[side as usize], replacement);
                    let pid = victim.pid;
                    pair.state = PairState::Starting {
                        since,
                        early_kill: None,
                        early_victim: Some(pid),
                    };
                    self.execute(Victim::DuplexPeer, victim);
                    self.facts.kills.duplex_early += 1;
                    return Ok(());
                }
                for side in 0..2 {
                    let Some(status) = self.pairs[index].sides[side].poll() else {
                        continue;
                    };
                    match early_victim {
                        // It had paired with the side killed early, and saw it die: it must
                        // have drained what the victim sent, like any survivor.
                        Some(victim) if status.success() => {
                            let gone = &self.pairs[index].sides[side];
                            self.facts.pairs.push(report::PairEnd {
                                victim,
                                survivor: gone.pid,
                                hung: false,
                                clean_exit: true,
                                stderr: gone.stderr_tail(),
                            });
                            let (slot, name, seed) = {
                                let pair = &self.pairs[index];
                                (pair.slot, pair.name.clone(), pair.pair_seed)
                            };
                            let replacement = self.spawn_side(slot, &name, side as u64, seed)?;
                            self.pairs[index].sides[side] = replacement;
                        }
                        _ => {
                            let gone = &self.pairs[index].sides[side];
                            self.facts.unexpected.push(report::Unexpected {
                                role: gone.role,
                                pid: gone.pid,
                                status: status.to_string(),
                                stderr: gone.stderr_tail(),
                            });
                            finished = true;
                        }
                    }
                }
                let pair = &mut self.pairs[index];
                let (a, b) = (pair.sides[0].pid, pair.sides[1].pid);
                if !finished && early_kill.is_none() && self.board.paired(pair.slot, a, b) {
                    pair.state = PairState::Running {
                        kill_at: now + self.rng.jitter(PAIR_LIFE, 50),
                    };
                } else if !finished && now.duration_since(since) > PAIRING_LIMIT {
                    self.facts.pairing_failures += 1;
                    self.facts.stuck.push(format!(
                        "duplex pair {a} and {b} did not form within {PAIRING_LIMIT:?}: {} / {}",
                        pair.sides[0].stderr_tail(),
                        pair.sides[1].stderr_tail()
                    ));
                    finished = true;
                }
            }
            PairState::Running { kill_at } if now >= kill_at => {
                let side = self.rng.below(2) as usize;
                let victim = pair.sides.remove(side);
                pair.state = PairState::Draining {
                    survivor: 0,
                    victim: victim.pid,
                    since: now,
                };
                self.execute(Victim::DuplexPeer, victim);
                self.facts.kills.duplex += 1;
            }
            PairState::Running { .. } | PairState::Done => {}
            PairState::Draining {
                survivor,
                victim,
                since,
            } => {
                let exited = pair.sides[survivor].poll();
                let hung = exited.is_none() && now.duration_since(since) > SURVIVOR_LIMIT;
                if exited.is_some() || hung {
                    self.facts.pairs.push(report::PairEnd {
                        victim,
                        survivor: pair.sides[survivor].pid,
                        hung,
                        clean_exit: exited.is_some_and(|s| s.success()),
                        stderr: pair.sides[survivor].stderr_tail(),
                    });
                    finished = true;
                }
            }
        }
        // A side that exits by itself while the pair runs is a failure.
        if matches!(self.pairs[index].state, PairState::Running { .. }) && !finished {
            for side in 0..2 {
                if let Some(status) = self.pairs[index].sides[side].poll() {
                    let pair = &self.pairs[index];
                    self.facts.unexpected.push(report::Unexpected {
                        role: pair.sides[side].role,
                        pid: pair.sides[side].pid,
                        status: status.to_string(),
                        stderr: pair.sides[side].stderr_tail(),
                    });
                    finished = true;
                }
            }
        }
        if finished {
            // Whatever is left of the old pair goes (a new pair may have to wait for the name
            // until it is dead).
            for side in std::mem::take(&mut self.pairs[index].sides) {
                self.bury(side);
            }
            if self.winding_down {
                self.pairs[index].state = PairState::Done;
            } else {
                let (slot, name) = (self.pairs[index].slot, self.pairs[index].name.clone());
                let new = self.spawn_pair(slot, name)?;
                self.pairs[index] = new;
            }
        }
        Ok(())
    }

    /// Stops everything in order, each step bounded: pairs that are draining finish; clients,
    /// duplex peers and subscribers stop; then the publisher (which waits for its slots to come
    /// back) and the server (`SIGTERM`: a graceful stop).
    fn wind_down(&mut self) {
        self.winding_down = true;
        let deadline = Instant::now() + SURVIVOR_LIMIT + Duration::from_secs(1);
        while Instant::now() < deadline
            && self
                .pairs
                .iter()
                .any(|p| matches!(p.state, PairState::Draining { .. }))
        {
            self.reap_dying();
            for index in 0..self.pairs.len() {
                if matches!(self.pairs[index].state, PairState::Draining { .. }) {
                    let _ = self.step_pair(index);
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.board.stop(Stop::Clients);
        self.board.stop(Stop::Duplex);
        self.board.stop(Stop::Subscribers);
        let mut stopping: Vec<Proc> = std::mem::take(&mut self.clients);
        stopping.extend(std::mem::take(&mut self.on_demand_clients));
        stopping.extend(std::mem::take(&mut self.subscribers));
        for pair in std::mem::take(&mut self.pairs) {
            stopping.extend(pair.sides);
        }
        self.await_exit(stopping, rpc::CALL_TIMEOUT + Duration::from_secs(5));
        self.note_idle_server("last, after its clients left");
        self.board.stop(Stop::Publisher);
        if let Some(publisher) = self.publisher.take() {
            self.await_exit(vec![publisher], Duration::from_secs(8));
        }
        if let Some(server) = self.server.take() {
            server.terminate();
            self.await_exit(vec![server], Duration::from_secs(5));
        }
        // The server started on demand exits a second after its last client left; if its
        // launcher is gone it comes to the driver (the subreaper) to be reaped.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.reap_orphans();
            let serving = memlink::rpc::server_stats(&self.on_demand_name).ok();
            if serving.is_none() && self.orphans().is_empty() {
                break;
            }
            if Instant::now() > deadline {
                self.facts.stuck.push(format!(
                    "the server started on demand ({:?}) did not exit when idle",
                    serving.map(|s| s.pid)
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // The killed ones that are not dead yet.
        let deadline = Instant::now() + DEATH_LIMIT;
        while self.dying.count > 0 && Instant::now() < deadline {
            self.reap_dying();
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.dying.count > 0 {
            self.facts.stuck.push(format!(
                "{} killed processes not dead {DEATH_LIMIT:?} after SIGKILL",
                self.dying.count
            ));
        }
    }

    /// Notes the server's descriptors once it has no connection (waiting up to 3 s for that):
    /// compared between the first server and the last one, they show whether killed clients'
    /// connections leak.
    fn note_idle_server(&mut self, when: &'static str) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while let Ok(stats) = memlink::rpc::server_stats(&self.server_name) {
            if stats.connections == 0 {
                // Let the statistics connection go too.
                std::thread::sleep(Duration::from_millis(50));
                let fds = ledger::descriptors(stats.pid);
                self.facts.idle_servers.push(report::IdleServer {
                    when,
                    pid: stats.pid,
                    workers: stats.workers,
                    fds,
                });
                return;
            }
            if Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for `procs` to exit by themselves; those that do not in `limit` are stuck.
    fn await_exit(&mut self, procs: Vec<Proc>, limit: Duration) {
        // Those the driver killed are reaped already.
        let mut procs: Vec<Proc> = procs.into_iter().filter(|p| p.status.is_none()).collect();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline && procs.iter_mut().any(|p| p.poll().is_none()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        for mut proc in procs {
            match proc.poll() {
                Some(status) if status.success() => {}
                Some(status) => self.unexpected(&proc, status),
                None => {
                    proc.kill();
                    self.facts.stuck.push(format!(
                        "{} {} did not stop within {limit:?}",
                        proc.role, proc.pid
                    ));
                }
            }
        }
    }
}
