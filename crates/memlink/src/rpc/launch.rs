//! Starting a server on demand: [`ServerCommand`], and how a client that finds no server starts
//! exactly one, however many clients (threads or processes) find none at the same instant.
//!
//! The steps, and why each is there:
//!
//! 1. **One launcher.** A client that finds no server takes the name's *start lock*
//!    (`link::rendezvous::NameLock`: a socket bound, never listening, to the abstract name
//!    `memlink.up.<name>`; of two binders exactly one succeeds, and the kernel frees it with
//!    its last descriptor, so a launcher killed mid-start blocks nobody for longer than the
//!    server it started and leaves nothing on disk). The others wait for the server to appear,
//!    trying the lock again as they do: if the launcher and its server died, one of them
//!    becomes the next launcher. The prefix is no longer than the service socket's
//!    (`memlink.rpc.`), so every name that can be served can be started.
//! 2. **Look again under the lock.** The server may have bound between our first attempt and
//!    our taking the lock (its launcher released the lock the moment it saw it up): the lock
//!    holder connects once more before starting anything, which is what makes the server unique.
//! 3. **A lock held by a stranger** (another user's process bound the lock name, on purpose or
//!    not, listening or not) is found by asking the kernel's socket table who created it
//!    (sock_diag, `UDIAG_SHOW_UID`, Linux 5.3+), never by connecting to it: nobody can make a
//!    waiter's thread block by answering. If that user is not one we would trust as a server,
//!    connecting fails at once with [`Error::StartLockHeld`] rather than waiting for a server
//!    that will never come. Where the kernel will not say (before 5.3, or no netlink in a
//!    sandbox) the holder is unknown, and is waited for like another client starting the
//!    server: the connect ends with [`Error::ServerStartTimedOut`] (or `Timeout`) at its limit.
//!    The lock itself never listens, so nobody can connect to it and pass its holder anything.
//! 4. **Start it detached.** The server runs in a session of its own (a terminal's Ctrl-C or
//!    hang-up aimed at the client does not reach it), with `/` as its working directory unless
//!    told otherwise (it must not pin the first client's directory, and later clients may run
//!    elsewhere), standard input from `/dev/null`, standard output to `/dev/null` (a server
//!    holding the first client's stdout would keep that pipe open: `client | head` would never
//!    see its end), and standard error in an anonymous memfd (or a file of the caller's choice,
//!    [`ServerCommand::stderr_file`]). A memfd never blocks its writer and never raises
//!    `SIGPIPE`, whether or not the launcher still exists; it lives as long as the server, in
//!    memory, so a server that logs a lot should be given a file. No other descriptor of the
//!    client reaches it (all are made close-on-exec in the child, `close_range`), even ones the
//!    client inherited without close-on-exec, but one:
//! 5. **The server holds the lock too.** The launcher hands it a copy of the start lock: its
//!    descriptor number in `MEMLINK_START_LOCK_FD` (and the socket's inode in
//!    `MEMLINK_START_LOCK_INODE`, so that nothing else under that number is ever mistaken for
//!    it). [`Server::bind`](crate::Server::bind) closes it right after binding the service
//!    name, so waiters (who look for the server, not at the lock) connect as soon as it
//!    serves. A launcher killed after starting the server therefore does not free the lock:
//!    the next client waits for that server instead of starting a second one. A server should
//!    bind before it starts programs of its own, which would otherwise inherit the lock; one
//!    that never binds holds it until it exits (clients that time out waiting for it name it:
//!    [`Error::ServerStartTimedOut`]'s `starter_pid`).
//! 6. **Wait for it to serve.** The launcher connects with a short backoff until the server
//!    answers. A server that exits with a failure first is reported at once with its exit
//!    status and the tail of its standard error ([`Error::ServerFailedToStart`], control
//!    characters removed); one that exits successfully (it may have forked into the
//!    background) is waited for until the deadline. Its exit is noticed without reaping it
//!    (`waitid(.., WNOWAIT)`): as a zombie it keeps its pid, so its process group id cannot be
//!    reused by a stranger before a kill. In a process that ignores `SIGCHLD` the kernel reaps
//!    it at once and its status is lost: that is reported as such
//!    ([`Error::ServerExitUnobserved`]), and nothing is ever killed by a pid that may no longer
//!    be ours.
//! 7. **How long.** The server is given at least the start timeout
//!    ([`ClientOptions::start_timeout`](crate::ClientOptions::start_timeout)), or the caller's
//!    own timeout if that is longer. A caller whose own (shorter) timeout runs out gets
//!    [`Error::Timeout`] while a thread of its process (`memlink-launcher`) goes on watching
//!    the server, holding the lock, until it serves or its time is up; the next call finds it
//!    serving. (A caller with no time left at all starts nothing unless such a thread can be
//!    had.) One that does not serve the name in time (not bound, or bound but not answering) is
//!    killed, with its whole process group ([`Error::ServerStartTimedOut`]): left running it
//!    could bind later, alongside a second server started by the next client, which is exactly
//!    what the lock is there to prevent.
//! 8. **No zombie.** Once it serves, the server is no longer the launcher's business, but it is
//!    still its child: a thread (`memlink-reaper`, or the `memlink-launcher` thread) waits for
//!    its exit, so a long-lived client does not collect a zombie when the server stops. If the
//!    client exits first, the server is re-parented (to init or a subreaper) like any orphan.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Error, Result, StartLimit};
use crate::link::{self, rendezvous};
use crate::platform::spawn::{self, ChildState, LogFileError};

/// Prefix of a service's start lock, an abstract socket name (see the module documentation).
const LOCK_PREFIX: &str = "memlink.up.";
/// The environment variable that tells a server started on demand which descriptor is the
/// start lock its launcher handed it (see the module documentation).
pub(crate) const LOCK_FD_VAR: &str = "MEMLINK_START_LOCK_FD";
/// The environment variable holding that socket's inode, which identifies it.
pub(crate) const LOCK_INODE_VAR: &str = "MEMLINK_START_LOCK_INODE";
/// Most of a failed server's standard error an error carries.
const TAIL_BYTES: usize = 4096;
const TAIL_LINES: usize = 20;
/// Longest pause between two looks for a server that another client is starting.
const MAX_WAIT_PAUSE: Duration = Duration::from_millis(50);
/// Longest pause between two looks for a server this client started.
const MAX_LAUNCH_PAUSE: Duration = Duration::from_millis(20);
/// How often a waiter asks the kernel who holds the start lock (a walk of the machine's Unix
/// socket table: cheap, but not free).
const ASK_HOLDER_EVERY: Duration = Duration::from_millis(250);

/// How to start a server that is not running: the program, its arguments and environment.
/// Given to [`ClientOptions::start_server`](crate::ClientOptions::start_server).
///
/// The server it starts must bind the very name the client connects to. It inherits the
/// client's environment (plus what [`ServerCommand::env`] adds) but nothing else: it runs in a
/// session of its own, in `/` unless [`ServerCommand::current_dir`] says otherwise, with no
/// standard input and output, and its standard error captured (see
/// [`ServerCommand::stderr_file`]). Paths it is given should therefore be absolute.
///
/// # Examples
/// ```no_run
/// # fn main() -> memlink::Result<()> {
/// use memlink::{ClientOptions, ServerCommand};
///
/// // This very program, in its serving role, if no server runs yet.
/// let command = ServerCommand::current_exe()?.arg("serve");
/// let client = ClientOptions::new().start_server(command).connect("files")?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ServerCommand {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    current_dir: Option<PathBuf>,
    stderr_file: Option<PathBuf>,
}

impl ServerCommand {
    /// Runs `program` (found in `PATH` if it has no `/`; a relative path with a `/` is taken
    /// relative to the client's working directory when the server is started).
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        ServerCommand {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            current_dir: None,
            stderr_file: None,
        }
    }

    /// Runs the program of the calling process again (`/proc/self/exe`, as
    /// [`std::env::current_exe`] finds it): for a program that is both the client and, given
    /// some argument, the server.
    ///
    /// # Errors
    /// [`Error::Os`] if the path of the running program cannot be found.
    pub fn current_exe() -> Result<Self> {
        let exe = std::env::current_exe().map_err(|source| Error::Os {
            op: "finding the running program",
            source,
        })?;
        Ok(Self::new(exe))
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the server (on top of the client's environment).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The server's working directory (default `/`, so that a long-lived server does not keep
    /// the first client's directory busy).
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.current_dir = Some(dir.as_ref().to_owned());
        self
    }

    /// Appends the server's standard error to the file `path` (created with mode 0600 if
    /// missing) instead of an anonymous in-memory file. Either way the client reads what the
    /// server wrote there while it started when reporting a failed start; with a file, what the
    /// server writes later (a panic message, say) is kept too, and a server that logs a lot
    /// fills a file rather than memory.
    ///
    /// The file must be a regular file of the client's own (effective) user that no other
    /// user may write, and `path` must not be a symbolic link (it is opened with
    /// `O_NOFOLLOW`): a file that someone else controls could be swapped, truncated or read
    /// behind the server's back, and a FIFO or device could block it. Anything else fails
    /// the start with [`Error::InvalidOptions`] saying why.
    pub fn stderr_file(mut self, path: impl AsRef<Path>) -> Self {
        self.stderr_file = Some(path.as_ref().to_owned());
        self
    }

    /// The program, for messages.
    fn program_name(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }
}

/// Where the server's standard error goes, and how to read back what it wrote while starting.
struct Capture {
    /// Our own descriptor of it, read with `pread` (the server's copy shares the file).
    fd: OwnedFd,
    /// Its size when the server was started: what an earlier server wrote is not this one's.
    since: u64,
}

impl Capture {
    fn new(command: &ServerCommand, name: &str) -> Result<Capture> {
        let fd = match &command.stderr_file {
            None => spawn::capture_file("memlink-server-stderr")
                .map_err(|e| Error::os("creating the server's stderr capture", e))?,
            Some(path) => spawn::open_log_file(path).map_err(|e| match e {
                LogFileError::Refused(why) => Error::InvalidOptions {
                    reason: format!(
                        "the server's stderr file {} (ServerCommand::stderr_file) is refused: \
                         {why}",
                        path.display()
                    ),
                },
                LogFileError::Os(rustix::io::Errno::LOOP) => Error::InvalidOptions {
                    reason: format!(
                        "the server's stderr file {} (ServerCommand::stderr_file) is a symbolic \
                         link, which memlink does not follow there; give the file's own path",
                        path.display()
                    ),
                },
                LogFileError::Os(e) => {
                    let source = std::io::Error::from(e);
                    Error::ServerSpawnFailed {
                        name: name.to_owned(),
                        program: command.program_name(),
                        source: std::io::Error::new(
                            source.kind(),
                            format!("opening its stderr file {}: {source}", path.display()),
                        ),
                    }
                }
            })?,
        };
        let since = spawn::file_size(&fd).unwrap_or(0);
        Ok(Capture { fd, since })
    }

    /// The last lines the server wrote (at most [`TAIL_LINES`] and [`TAIL_BYTES`]), as text,
    /// without control characters (see [`printable`]).
    fn tail(&self) -> String {
        let bytes = spawn::read_tail(&self.fd, self.since, TAIL_BYTES).unwrap_or_default();
        let text = printable(&String::from_utf8_lossy(&bytes));
        let lines: Vec<&str> = text.trim_end().lines().collect();
        lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
    }
}

/// `text` without control characters but newlines and tabs: what a server wrote goes into an
/// error message that may be printed on a terminal, where an escape sequence could rewrite the
/// screen or a carriage return hide a line. Unicode direction overrides go too (they reorder
/// what a reader sees).
fn printable(text: &str) -> String {
    text.chars()
        .filter(|&c| {
            c == '\n'
                || c == '\t'
                || !(c.is_control()
                    || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'))
        })
        .collect()
}

/// A server process this client started: its pid, which is also its process group's id (it
/// leads a session of its own). Its exit is noticed without reaping it (see
/// [`spawn::exit_status`]), so its pid stays reserved while we may still kill its group.
/// Dropped while it still runs (it serves), it is handed to a reaper thread, so that its exit
/// leaves no zombie in a long-lived client.
struct Started {
    pid: u32,
    /// How it exited, once it has (it is a zombie until reaped).
    exited: Option<ExitStatus>,
    /// No longer our child to wait for: reaped by us, or by someone else (`ECHILD`).
    gone: bool,
    /// Reaped by someone else before we saw its exit: its status is lost, and its pid may
    /// belong to another process now.
    lost: bool,
}

impl Started {
    fn new(pid: u32) -> Self {
        Started {
            pid,
            exited: None,
            gone: false,
            lost: false,
        }
    }

    /// Looks (without reaping) whether it has exited.
    fn look(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() && !self.gone {
            match spawn::exit_status(self.pid) {
                Ok(ChildState::Exited(status)) => self.exited = Some(status),
                Ok(ChildState::Gone) => {
                    self.gone = true;
                    self.lost = true;
                }
                Ok(ChildState::Running) | Err(_) => {}
            }
        }
        self.exited
    }

    /// Kills it and everything in its process group, then reaps it: while it is not reaped
    /// (a zombie at worst), its pid and group id cannot name anyone else. Never once it is
    /// gone.
    fn kill(&mut self) {
        if self.gone {
            return;
        }
        let _ = spawn::kill_group(self.pid);
        let _ = spawn::kill(self.pid);
        spawn::reap(self.pid);
        self.gone = true;
    }

    /// Waits for it to exit and reaps it, on this thread.
    fn wait_here(&mut self) {
        if !self.gone {
            spawn::reap(self.pid);
            self.gone = true;
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if self.gone {
            return;
        }
        if self.look().is_some() || self.gone {
            // A zombie already: reap it now (it is ours: `look` found it unreaped).
            self.wait_here();
            return;
        }
        let pid = self.pid;
        let reaper = std::thread::Builder::new()
            .name("memlink-reaper".into())
            .spawn(move || spawn::reap(pid));
        if let Err(e) = reaper {
            // It will be a zombie from its exit until ours: harmless, and nothing better to do.
            tracing::debug!(error = %e, "no thread to reap a server started on demand");
        }
    }
}

/// Hooks for tests, set through `ClientOptions` with the `fault-injection` feature.
#[derive(Clone, Default)]
pub(crate) struct LaunchHooks {
    /// How long a launcher sleeps right after taking the start lock.
    pub(crate) pause_holding_lock: Duration,
    /// How long a launcher sleeps right after starting the server.
    pub(crate) pause_after_spawn: Duration,
    /// Runs once, after a client found no server and before it first tries the start lock.
    pub(crate) before_lock: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for LaunchHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchHooks")
            .field("pause_holding_lock", &self.pause_holding_lock)
            .field("pause_after_spawn", &self.pause_after_spawn)
            .field("before_lock", &self.before_lock.is_some())
            .finish()
    }
}

/// How long a start may take: see the module documentation, step 7.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StartTimes {
    /// The caller's own deadline (of its connect or call), if it has one.
    pub(crate) deadline: Option<Instant>,
    /// `ClientOptions::start_timeout`.
    pub(crate) start_timeout: Duration,
}

/// Connects to `name` with `open` (which connects, giving up at the instant it is given, and
/// returns `NotRunning` if no server runs), starting the server with `command` first if none
/// runs. `trusted_uid` is the server uid the client trusts besides its own and root (for the
/// start lock's holder too). `open` must be `Send + 'static`: if the caller's deadline passes
/// while the server it started is still within its start timeout, a thread takes `open` over
/// to go on watching the server.
///
/// Errors: those of `open`; `Timeout` when the caller's own deadline passes first;
/// `ServerSpawnFailed`, `ServerFailedToStart`, `ServerExitUnobserved`, `ServerStartTimedOut`,
/// `StartLockHeld`, `InvalidOptions` (a refused stderr file).
pub(crate) fn connect_or_start<C, F>(
    name: &str,
    command: &Arc<ServerCommand>,
    trusted_uid: Option<u32>,
    times: StartTimes,
    hooks: &LaunchHooks,
    mut open: F,
) -> Result<C>
where
    F: FnMut(Instant) -> Result<C> + Send + 'static,
{
    if let Some(hook) = &hooks.before_lock {
        hook();
    }
    let began = Instant::now();
    let start_until = began + times.start_timeout;
    let caller_until = times.deadline.unwrap_or(start_until);
    let (kill_at, limit) = if caller_until > start_until {
        (
            caller_until,
            StartLimit::CallerTimeout(caller_until - began),
        )
    } else {
        (start_until, StartLimit::StartTimeout(times.start_timeout))
    };
    let lock_name = format!("{LOCK_PREFIX}{name}");
    let mut pause = Duration::from_millis(1);
    let mut ask_holder_at = began;
    loop {
        let ask_holder = Instant::now() >= ask_holder_at;
        match rendezvous::try_lock(&lock_name, ask_holder)? {
            rendezvous::LockAttempt::Taken(lock) => {
                if !hooks.pause_holding_lock.is_zero() {
                    std::thread::sleep(hooks.pause_holding_lock);
                }
                // Under the lock, look once more: it may have come up since our last look.
                match open(caller_until) {
                    Err(Error::NotRunning { .. }) => {}
                    other => return other,
                }
                let plan = Plan {
                    name: name.to_owned(),
                    command: Arc::clone(command),
                    lock,
                    kill_at,
                    limit,
                    pause_after_spawn: hooks.pause_after_spawn,
                };
                return plan.carry_out(caller_until, open);
            }
            rendezvous::LockAttempt::Held(holder) => {
                if ask_holder {
                    ask_holder_at = Instant::now() + ASK_HOLDER_EVERY;
                }
                // An unknown uid (an old kernel, no netlink) is waited for like a client.
                if let Some(holder) = holder {
                    if let Some(uid) = holder.uid.filter(|&uid| !link::trusts(uid, trusted_uid)) {
                        return Err(Error::StartLockHeld {
                            name: name.to_owned(),
                            uid,
                            pid: holder.pid(),
                        });
                    }
                }
            }
        }
        // Another client is starting it: wait for it to serve, or for the lock to be free.
        let now = Instant::now();
        if now >= caller_until {
            if times.deadline.is_some() {
                return Err(Error::Timeout);
            }
            return Err(Error::ServerStartTimedOut {
                name: name.to_owned(),
                limit,
                stderr_tail: None,
                starter_pid: rendezvous::holder(&lock_name).and_then(|h| h.pid()),
            });
        }
        std::thread::sleep(pause.min(caller_until - now));
        pause = (pause * 2).min(MAX_WAIT_PAUSE);
        match open(caller_until) {
            // Bound but not answering yet (it may still be setting up): not up, either.
            Err(Error::NotRunning { .. } | Error::Timeout) => {}
            other => return other,
        }
    }
}

/// A server about to be started (the start lock is held).
struct Plan {
    name: String,
    command: Arc<ServerCommand>,
    lock: rendezvous::NameLock,
    kill_at: Instant,
    limit: StartLimit,
    pause_after_spawn: Duration,
}

impl Plan {
    /// Starts the server and connects once it serves; or, when the caller's deadline passes
    /// first, leaves the rest to a `memlink-launcher` thread and says `Timeout`.
    fn carry_out<C, F>(self, caller_until: Instant, mut open: F) -> Result<C>
    where
        F: FnMut(Instant) -> Result<C> + Send + 'static,
    {
        if Instant::now() >= caller_until {
            // No time left for the caller: start it only if a thread can watch it (if none can
            // be had, the plan drops here and nothing was started).
            let watcher = std::thread::Builder::new()
                .name("memlink-launcher".into())
                .spawn(move || match self.start() {
                    Ok(launch) => launch.finish_in_background(&mut open),
                    Err(e) => tracing::warn!(error = %e, "could not start a server on demand"),
                });
            if let Err(e) = watcher {
                tracing::debug!(error = %e, "no thread to start a server on demand; started none");
            }
            return Err(Error::Timeout);
        }
        let mut launch = self.start()?;
        match launch.watch(caller_until, &mut open) {
            Some(result) => result,
            None => {
                // The caller's time is up, the server's is not: a thread watches it on, holding
                // the lock. If none can be had, `launch` drops, which kills the server.
                let watcher = std::thread::Builder::new()
                    .name("memlink-launcher".into())
                    .spawn(move || launch.finish_in_background(&mut open));
                if let Err(e) = watcher {
                    tracing::debug!(error = %e, "no thread to watch a server started on demand; killed it");
                }
                Err(Error::Timeout)
            }
        }
    }

    /// Runs the server command, handing it the start lock.
    fn start(self) -> Result<Launch> {
        let Plan {
            name,
            command,
            lock,
            kill_at,
            limit,
            pause_after_spawn,
        } = self;
        let capture = Capture::new(&command, &name)?;
        let spawn_failed = |source| Error::ServerSpawnFailed {
            name: name.clone(),
            program: command.program_name(),
            source,
        };
        let stderr = capture.fd.try_clone().map_err(|source| Error::Os {
            op: "handing the server its stderr",
            source,
        })?;
        let (lock_copy, lock_inode) = lock
            .share()
            .map_err(|e| Error::os("handing the server its start lock", e))?;
        let mut std_command = Command::new(resolve(&command.program));
        std_command
            .args(&command.args)
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .env(LOCK_FD_VAR, lock_copy.as_raw_fd().to_string())
            .env(LOCK_INODE_VAR, lock_inode.to_string())
            .current_dir(command.current_dir.as_deref().unwrap_or(Path::new("/")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        // Consumes `std_command`, closing our copy of the server's stderr descriptor.
        let child = spawn::spawn_in_new_session(std_command, Some(lock_copy.as_fd()))
            .map_err(spawn_failed)?;
        drop(lock_copy);
        // From here on the child is known by its pid only (dropping std's handle neither waits
        // for it nor kills it): std's `try_wait` would reap it, freeing its pid for reuse.
        let started = Started::new(child.id());
        drop(child);
        tracing::debug!(
            server = name,
            pid = started.pid,
            "started a server on demand"
        );
        if !pause_after_spawn.is_zero() {
            std::thread::sleep(pause_after_spawn);
        }
        Ok(Launch {
            name,
            program: command.program_name(),
            started,
            capture,
            lock: Some(lock),
            kill_at,
            limit,
            settled: false,
        })
    }
}

/// A server this client started and is waiting for, holding the start lock. Dropped before
/// it is settled (it served, or failed and was dealt with), it kills the server: one that
/// nobody watches any more must not come up later beside the next client's.
struct Launch {
    name: String,
    program: String,
    started: Started,
    capture: Capture,
    /// Released once settled (or when dropped).
    lock: Option<rendezvous::NameLock>,
    /// When it is killed if it does not serve by then.
    kill_at: Instant,
    limit: StartLimit,
    settled: bool,
}

impl Launch {
    /// Watches the server until it serves (then returns what `open` returns), fails, or
    /// `until` passes: `None` then if that is before [`Launch::kill_at`] (the server has time
    /// left), otherwise it is killed and the result says it timed out.
    fn watch<C>(
        &mut self,
        until: Instant,
        open: &mut impl FnMut(Instant) -> Result<C>,
    ) -> Option<Result<C>> {
        let mut pause = Duration::from_millis(1);
        loop {
            match open(until) {
                // Not bound yet, or bound but not answering yet: until the deadline, it may still.
                Err(Error::NotRunning { .. } | Error::Timeout) => {}
                // Serving (or refusing us, which is not a start failure): `started` goes to the
                // reaper as it drops.
                other => {
                    self.settled = true;
                    return Some(other);
                }
            }
            // A server that exits with success may have forked into the background: wait on
            // (its zombie keeps its group id ours until the end).
            if let Some(status) = self.started.look().filter(|status| !status.success()) {
                self.settled = true;
                // It may have failed because a server started by other means took the name
                // meanwhile: if so, that one serves.
                if let Ok(connection) = open(until) {
                    return Some(Ok(connection));
                }
                return Some(Err(Error::ServerFailedToStart {
                    name: self.name.clone(),
                    program: self.program.clone(),
                    status,
                    stderr_tail: self.capture.tail(),
                }));
            }
            let now = Instant::now();
            if now >= until {
                if until < self.kill_at {
                    return None;
                }
                self.settled = true;
                return Some(Err(self.time_out()));
            }
            std::thread::sleep(pause.min(until - now));
            pause = (pause * 2).min(MAX_LAUNCH_PAUSE);
        }
    }

    /// Its time is up: kill it (if it is still ours to kill) and say so.
    fn time_out(&mut self) -> Error {
        if self.started.lost {
            return Error::ServerExitUnobserved {
                name: self.name.clone(),
                program: self.program.clone(),
                limit: self.limit,
                stderr_tail: self.capture.tail(),
            };
        }
        self.started.kill();
        Error::ServerStartTimedOut {
            name: self.name.clone(),
            limit: self.limit,
            stderr_tail: Some(self.capture.tail()),
            starter_pid: None,
        }
    }

    /// On a `memlink-launcher` thread, after the caller's deadline: watches the server until
    /// it serves or its time is up, then (if it serves) lets go of the lock and reaps it when
    /// it exits.
    fn finish_in_background<C>(mut self, open: &mut impl FnMut(Instant) -> Result<C>) {
        match self.watch(self.kill_at, open) {
            Some(Ok(connection)) => {
                drop(connection);
                self.lock = None;
                self.started.wait_here();
            }
            Some(Err(e)) => tracing::warn!(
                server = self.name,
                error = %e,
                "a server started on demand for a caller that stopped waiting did not come up"
            ),
            // Not with `kill_at` as the limit; were it so, dropping `self` kills it.
            None => {}
        }
    }
}

impl Drop for Launch {
    fn drop(&mut self) {
        if !self.settled {
            self.started.kill();
        }
    }
}

/// Closes the start lock a launcher handed this process (see the module documentation, step
/// 5), if it started this process to serve `name`: called by `Server::bind` right after it
/// binds `name` (or fails to). The descriptor is taken only if it is the very socket the
/// launcher named (its inode) bound to `name`'s lock, and at most once per process.
pub(crate) fn release_inherited_lock(name: &str) {
    static TAKEN: Mutex<bool> = Mutex::new(false);
    let number = |var| std::env::var(var).ok()?.parse::<u64>().ok();
    let (Some(fd), Some(inode)) = (number(LOCK_FD_VAR), number(LOCK_INODE_VAR)) else {
        return;
    };
    let Ok(fd) = i32::try_from(fd) else {
        return;
    };
    let mut taken = TAKEN.lock().unwrap_or_else(PoisonError::into_inner);
    if *taken {
        return;
    }
    let lock_name = format!("{LOCK_PREFIX}{name}");
    if let Some(lock) = rendezvous::NameLock::inherited(fd, inode, &lock_name) {
        *taken = true;
        drop(lock);
        tracing::debug!(
            server = name,
            "released the start lock inherited from the launcher"
        );
    }
}

/// `program` made absolute if it is a relative path (it has a `/`): the server runs in another
/// working directory, where the relative path would mean something else.
fn resolve(program: &OsStr) -> PathBuf {
    let path = Path::new(program);
    let has_slash = program.as_encoded_bytes().contains(&b'/');
    match std::env::current_dir() {
        Ok(here) if has_slash && path.is_relative() => here.join(path),
        _ => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_programs_with_a_slash_are_made_absolute_and_bare_names_left_to_path() {
        let here = std::env::current_dir().unwrap();
        assert_eq!(resolve(OsStr::new("./srv")), here.join("./srv"));
        assert_eq!(resolve(OsStr::new("bin/srv")), here.join("bin/srv"));
        assert_eq!(
            resolve(OsStr::new("/usr/bin/srv")),
            PathBuf::from("/usr/bin/srv")
        );
        assert_eq!(resolve(OsStr::new("srv")), PathBuf::from("srv"));
    }

    #[test]
    fn the_lock_prefix_is_no_longer_than_the_service_prefix() {
        assert!(LOCK_PREFIX.len() <= super::super::protocol::SOCKET_PREFIX.len());
    }

    #[test]
    fn control_characters_but_newlines_and_tabs_are_removed_from_what_a_server_wrote() {
        assert_eq!(
            printable("red\u{1b}[31m alert\u{7}\r\n\tindented\u{9b}2J\u{202e}txt.exe\u{0}"),
            "red[31m alert\n\tindented2Jtxt.exe"
        );
    }
}
