//! Starting a server on demand: [`ServerCommand`], and how a client that finds no server starts
//! exactly one, however many clients (threads or processes) find none at the same instant.
//!
//! The steps, and why each is there:
//!
//! 1. **One launcher.** A client that finds no server takes the name's *start lock*
//!    (`link::rendezvous::NameLock`: an abstract socket `memlink.up.<name>`; of two binders
//!    exactly one succeeds, and the kernel frees it the moment its holder dies, so a launcher
//!    killed mid-start blocks nobody and leaves nothing on disk). The others wait for the
//!    server to appear, trying the lock again as they do: if the launcher died, one of them
//!    becomes the next launcher. The prefix is no longer than the service socket's
//!    (`memlink.rpc.`), so every name that can be served can be started.
//! 2. **Look again under the lock.** The server may have bound between our first attempt and
//!    our taking the lock (its launcher released the lock the moment it saw it up): the lock
//!    holder connects once more before starting anything, which is what makes the server unique.
//! 3. **A lock held by a stranger** (another user's process bound the lock name, on purpose or
//!    not) is found by asking the kernel who listens on it (`SO_PEERCRED`); if that user is not
//!    one we would trust as a server, connecting fails at once with [`Error::StartLockHeld`]
//!    rather than waiting for a server that will never come.
//! 4. **Start it detached.** The server runs in a session of its own (a terminal's Ctrl-C or
//!    hang-up aimed at the client does not reach it), with `/` as its working directory unless
//!    told otherwise (it must not pin the first client's directory, and later clients may run
//!    elsewhere), standard input from `/dev/null`, standard output to `/dev/null` (a server
//!    holding the first client's stdout would keep that pipe open: `client | head` would never
//!    see its end), and standard error in an anonymous memfd (or a file of the caller's choice,
//!    [`ServerCommand::stderr_file`]). A memfd never blocks its writer and never raises
//!    `SIGPIPE`, whether or not the launcher still exists; it lives as long as the server, in
//!    memory, so a server that logs a lot should be given a file.
//! 5. **Wait for it to serve.** The launcher connects with a short backoff until the server
//!    answers. A server that exits with a failure first is reported at once with its exit
//!    status and the tail of its standard error ([`Error::ServerFailedToStart`]); one that exits
//!    successfully (it may have forked into the background) is waited for until the deadline.
//!    One that does not serve the name in time (not bound, or bound but not answering) is
//!    killed, with its whole process group ([`Error::ServerStartTimedOut`]): left running it
//!    could bind later, alongside a second server started by the next client, which is exactly
//!    what the lock is there to prevent.
//! 6. **No zombie.** Once it serves, the server is no longer the launcher's business, but it is
//!    still its child: a thread (`memlink-reaper`) waits for its exit, so a long-lived client
//!    does not collect a zombie when the server stops. If the client exits first, the server is
//!    re-parented (to init or a subreaper) like any orphan.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::link::{self, rendezvous};
use crate::platform::spawn;

/// Prefix of a service's start lock, an abstract socket name (see the module documentation).
const LOCK_PREFIX: &str = "memlink.up.";
/// Most of a failed server's standard error an error carries.
const TAIL_BYTES: usize = 4096;
const TAIL_LINES: usize = 20;
/// Longest pause between two looks for a server that another client is starting.
const MAX_WAIT_PAUSE: Duration = Duration::from_millis(50);
/// Longest pause between two looks for a server this client started.
const MAX_LAUNCH_PAUSE: Duration = Duration::from_millis(20);
/// How often a waiter asks who holds the start lock (each question leaves an unanswered
/// connection in the holder's backlog until it lets go).
const ASK_HOLDER_EVERY: Duration = Duration::from_secs(1);

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
            Some(path) => {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .append(true)
                    .read(true)
                    .create(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|source| Error::ServerSpawnFailed {
                        name: name.to_owned(),
                        program: command.program_name(),
                        source: std::io::Error::new(
                            source.kind(),
                            format!("opening its stderr file {}: {source}", path.display()),
                        ),
                    })?
                    .into()
            }
        };
        let since = spawn::file_size(&fd).unwrap_or(0);
        Ok(Capture { fd, since })
    }

    /// The last lines the server wrote (at most [`TAIL_LINES`] and [`TAIL_BYTES`]), as text.
    fn tail(&self) -> String {
        let bytes = spawn::read_tail(&self.fd, self.since, TAIL_BYTES).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.trim_end().lines().collect();
        lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
    }
}

/// A server process this client started. Dropped while it still runs (it serves), it is handed
/// to a reaper thread, so that its exit leaves no zombie in a long-lived client.
struct Started {
    /// `None` once reaped.
    child: Option<Child>,
    /// Its pid, which is also its process group's id (it leads a session of its own).
    pid: u32,
}

impl Started {
    /// Its exit status, if it has exited (then it is reaped).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            _ => None,
        }
    }

    /// Kills it and everything in its process group, and reaps it.
    fn kill(&mut self) {
        let _ = spawn::kill_group(self.pid);
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let reaper = std::thread::Builder::new()
            .name("memlink-reaper".into())
            .spawn(move || {
                let _ = child.wait();
            });
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
    /// Runs once, after a client found no server and before it first tries the start lock.
    pub(crate) before_lock: Option<std::sync::Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for LaunchHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchHooks")
            .field("pause_holding_lock", &self.pause_holding_lock)
            .field("before_lock", &self.before_lock.is_some())
            .finish()
    }
}

/// Connects to `name` with `open` (which returns `NotRunning` if no server runs), starting the
/// server with `command` first if none runs; gives up at `until`. `trusted_uid` is the server
/// uid the client trusts besides its own and root (for the start lock's holder too).
pub(crate) fn connect_or_start<C>(
    name: &str,
    command: &ServerCommand,
    trusted_uid: Option<u32>,
    until: Instant,
    hooks: &LaunchHooks,
    mut open: impl FnMut() -> Result<C>,
) -> Result<C> {
    if let Some(hook) = &hooks.before_lock {
        hook();
    }
    let began = Instant::now();
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
                match open() {
                    Err(Error::NotRunning { .. }) => {}
                    other => return other,
                }
                let result = launch(name, command, until, began, &mut open);
                drop(lock);
                return result;
            }
            rendezvous::LockAttempt::Held(holder) => {
                if ask_holder {
                    ask_holder_at = Instant::now() + ASK_HOLDER_EVERY;
                }
                if let Some(holder) = holder.filter(|h| !link::trusts(h.uid, trusted_uid)) {
                    return Err(Error::StartLockHeld {
                        name: name.to_owned(),
                        uid: holder.uid,
                        pid: holder.pid,
                    });
                }
            }
        }
        // Another client is starting it: wait for it to serve, or for the lock to be free.
        let now = Instant::now();
        if now >= until {
            return Err(Error::ServerStartTimedOut {
                name: name.to_owned(),
                waited: now - began,
                stderr_tail: None,
            });
        }
        std::thread::sleep(pause.min(until - now));
        pause = (pause * 2).min(MAX_WAIT_PAUSE);
        match open() {
            // Bound but not answering yet (it may still be setting up): not up, either.
            Err(Error::NotRunning { .. } | Error::Timeout) => {}
            other => return other,
        }
    }
}

/// Starts the server (the caller holds the start lock) and connects once it serves.
fn launch<C>(
    name: &str,
    command: &ServerCommand,
    until: Instant,
    began: Instant,
    open: &mut impl FnMut() -> Result<C>,
) -> Result<C> {
    let capture = Capture::new(command, name)?;
    let spawn_failed = |source| Error::ServerSpawnFailed {
        name: name.to_owned(),
        program: command.program_name(),
        source,
    };
    let stderr = capture.fd.try_clone().map_err(|source| Error::Os {
        op: "handing the server its stderr",
        source,
    })?;
    let mut std_command = Command::new(resolve(&command.program));
    std_command
        .args(&command.args)
        .envs(command.env.iter().map(|(k, v)| (k, v)))
        .current_dir(command.current_dir.as_deref().unwrap_or(Path::new("/")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr));
    let child = spawn::spawn_in_new_session(&mut std_command).map_err(spawn_failed)?;
    // Dropping `std_command` closes our copy of the server's stderr descriptor.
    drop(std_command);
    let mut started = Started {
        pid: child.id(),
        child: Some(child),
    };
    tracing::debug!(
        server = name,
        pid = started.pid,
        "started a server on demand"
    );
    let mut pause = Duration::from_millis(1);
    loop {
        match open() {
            // Not bound yet, or bound but not answering yet: until the deadline, it may still.
            Err(Error::NotRunning { .. } | Error::Timeout) => {}
            // Serving (or refusing us, which is not a start failure): `started` goes to the
            // reaper as it drops.
            other => return other,
        }
        // A server that exits with success may have forked into the background: wait on.
        if let Some(status) = started.exited().filter(|status| !status.success()) {
            // It may have failed because a server started by other means took the name
            // meanwhile: if so, that one serves.
            if let Ok(connection) = open() {
                return Ok(connection);
            }
            return Err(Error::ServerFailedToStart {
                name: name.to_owned(),
                program: command.program_name(),
                status,
                stderr_tail: capture.tail(),
            });
        }
        let now = Instant::now();
        if now >= until {
            started.kill();
            return Err(Error::ServerStartTimedOut {
                name: name.to_owned(),
                waited: now - began,
                stderr_tail: Some(capture.tail()),
            });
        }
        std::thread::sleep(pause.min(until - now));
        pause = (pause * 2).min(MAX_LAUNCH_PAUSE);
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
}
