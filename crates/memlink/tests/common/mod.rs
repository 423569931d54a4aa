//! Multi-process test harness.
//!
//! A test spawns children by re-executing its own test binary with `--exact child_main` and an
//! environment variable naming the *role* to play; the `child_main` test of each test file hands
//! control to [`run_child`], which runs the role and exits the process. Children report to the
//! parent with `@@ `-prefixed lines on stdout (other lines are libtest's and are ignored). Every
//! child is SIGKILLed and reaped when its [`ChildProcess`] drops, and every wait has a watchdog, so
//! a broken test fails instead of hanging or leaking processes.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

const ROLE_VAR: &str = "MEMLINK_TEST_ROLE";
const ARGS_VAR: &str = "MEMLINK_TEST_ARGS";
const SEP: char = '\u{1f}';

/// Generous bound for anything a child should do promptly; only reached when a test is broken.
pub const WATCHDOG: Duration = Duration::from_secs(20);

/// A name no other test (in this or any parallel process) uses.
pub fn unique_name(tag: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "t-{tag}-{}-{}-{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Files memlink keeps in /dev/shm for `name`, or for any name starting with `name` + '-'.
pub fn leftovers(name: &str) -> Vec<String> {
    let exact = format!("memlink.{name}");
    let family = format!("{exact}-");
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|f| *f == exact || f.starts_with(&family))
                .collect()
        })
        .unwrap_or_default()
}

pub fn assert_no_leftovers(name: &str) {
    let left = leftovers(name);
    assert!(left.is_empty(), "left behind in /dev/shm: {left:?}");
}

/// Runs the child role named in the environment, if any, and exits with its status. Each test file
/// calls this from a `#[test] fn child_main()`; in a normal test run the variable is unset and it
/// returns at once.
/// A child role: runs in the child process with the arguments the parent passed.
pub type Role = fn(&[String]);

pub fn run_child(roles: &[(&str, Role)]) {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    // Whatever ends the parent (a failed test, the watchdog's exit), no child outlives it.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let args: Vec<String> = std::env::var(ARGS_VAR)
        .unwrap_or_default()
        .split(SEP)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let table: HashMap<&str, Role> = roles.iter().copied().collect();
    match table.get(role.as_str()) {
        Some(run) => {
            run(&args);
            std::process::exit(0);
        }
        None => {
            eprintln!("unknown child role {role}");
            std::process::exit(101);
        }
    }
}

/// What runs `role` with `args` in a new process: the program, its arguments and the variables
/// to add to its environment, for children started by other means than [`ChildProcess`] (a
/// server that a client starts on demand, say).
pub fn role_invocation(role: &str, args: &[&str]) -> (PathBuf, Vec<String>, Vec<(String, String)>) {
    let exe = std::env::current_exe().expect("test binary path");
    let argv = ["--exact", "child_main", "--nocapture", "--test-threads=1"]
        .map(String::from)
        .to_vec();
    let env = vec![
        (ROLE_VAR.to_owned(), role.to_owned()),
        (ARGS_VAR.to_owned(), args.join(&SEP.to_string())),
    ];
    (exe, argv, env)
}

/// Tells the parent something (one line).
pub fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\n@@ {line}");
    let _ = out.flush();
}

/// Blocks until the parent writes a line to our stdin (or closes it).
pub fn await_parent() -> String {
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    line.trim().to_owned()
}

/// Sleeps until killed (bounded, so an orphan cannot live forever).
pub fn park_until_killed() -> ! {
    std::thread::sleep(Duration::from_secs(120));
    std::process::exit(3);
}

pub struct ChildProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    role: String,
    /// Spawned through a wrapper (e.g. `unshare --fork`) whose own child runs the role.
    wrapped: bool,
}

impl ChildProcess {
    pub fn spawn(role: &str, args: &[&str]) -> Self {
        Self::spawn_wrapped(&[], role, args)
    }

    /// Like [`ChildProcess::spawn`], but runs the test binary through `wrapper` (a command and its
    /// options, e.g. `["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]`). The wrapper
    /// must fork the role's process and wait for it; killing the child then kills the wrapper's
    /// children first, so the wrapper reaps them and we reap the wrapper.
    pub fn spawn_wrapped(wrapper: &[&str], role: &str, args: &[&str]) -> Self {
        let exe = std::env::current_exe().expect("test binary path");
        let mut cmd = match wrapper.split_first() {
            Some((program, options)) => {
                let mut cmd = Command::new(program);
                cmd.args(options).arg(exe);
                cmd
            }
            None => Command::new(exe),
        };
        cmd.args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
            .env(ROLE_VAR, role)
            .env(ARGS_VAR, args.join(&SEP.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may have printed "test child_main ... " on the same line first.
                if let Some((_, msg)) = line.split_once("@@ ") {
                    if tx.send(msg.to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        ChildProcess {
            child,
            stdin,
            lines,
            role: role.to_owned(),
            wrapped: !wrapper.is_empty(),
        }
    }

    /// The child's next report, or `None` if it exited without reporting (a wrapper that could not
    /// set up, say); a test failure after [`WATCHDOG`].
    pub fn try_next_line(&mut self) -> Option<String> {
        match self.lines.recv_timeout(WATCHDOG) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Timeout) => {
                panic!("child {} sent nothing for {WATCHDOG:?}", self.role)
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.kill_and_reap();
                None
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's next report, or a test failure after [`WATCHDOG`].
    pub fn next_line(&mut self) -> String {
        match self.lines.recv_timeout(WATCHDOG) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!("child {} sent nothing for {WATCHDOG:?}", self.role)
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait();
                panic!("child {} exited before reporting: {status:?}", self.role)
            }
        }
    }

    pub fn expect_line(&mut self, expected: &str) {
        let got = self.next_line();
        assert_eq!(got, expected, "child {} said something else", self.role);
    }

    pub fn tell(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("child stdin");
        writeln!(stdin, "{line}").expect("write to child");
        stdin.flush().expect("flush to child");
    }

    /// SIGKILLs the child; for a wrapped child, the wrapper's children (the role's process, which
    /// for `unshare --pid` is the namespace's init, so everything in the namespace dies with it).
    pub fn sigkill(&mut self) {
        if self.wrapped {
            for pid in children_of(self.child.id()) {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        } else {
            let _ = self.child.kill();
        }
    }

    /// Kills the child and reaps it, so it is gone (not a zombie) when this returns. A wrapper
    /// reaps its own children once they die, then exits; it is killed only if it does not.
    pub fn kill_and_reap(&mut self) {
        self.sigkill();
        if self.wrapped {
            let deadline = Instant::now() + WATCHDOG;
            while Instant::now() < deadline {
                if let Ok(Some(_)) | Err(_) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (bounded) for the child to exit on its own.
    pub fn wait(&mut self) -> ExitStatus {
        self.stdin.take();
        let deadline = Instant::now() + WATCHDOG;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                self.kill_and_reap();
                panic!("child {} did not exit within {WATCHDOG:?}", self.role);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn wait_success(&mut self) {
        let status = self.wait();
        assert!(status.success(), "child {} failed: {status:?}", self.role);
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill_and_reap();
        }
        let _ = self.child.wait();
    }
}

/// Process ids whose parent is `parent` (from `/proc/<pid>/stat`, field 4, after the last ')').
fn children_of(parent: u32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

/// Longest any one multi-process test may take before [`Watchdog`] ends the test binary.
pub const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Fails the whole test binary, loudly, if the test that armed it is still running after
/// [`TEST_LIMIT`]: a deadlock (in memlink or in a test) must fail CI, not hang it.
pub struct Watchdog {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Watchdog {
    /// Arms the watchdog for the calling test (libtest names each test's thread after it).
    pub fn arm() -> Self {
        let test = std::thread::current()
            .name()
            .unwrap_or("<unnamed test>")
            .to_owned();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + TEST_LIMIT;
            while Instant::now() < deadline {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!(
                "WATCHDOG: test {test} still running after {TEST_LIMIT:?}: deadlock; aborting"
            );
            std::process::exit(124);
        });
        Watchdog { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// Runs `f` on a thread and fails the test if it does not finish within [`WATCHDOG`].
pub fn with_watchdog<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(WATCHDOG)
        .unwrap_or_else(|_| panic!("{what} did not finish within {WATCHDOG:?}"))
}

/// Makes this (child) process run as user and group `nobody` (65534), for permission tests.
pub fn drop_privileges_to_nobody() {
    drop_privileges_to_nobody_in(&[]);
}

/// Like [`drop_privileges_to_nobody`], keeping `groups` as supplementary groups.
pub fn drop_privileges_to_nobody_in(groups: &[libc::gid_t]) {
    const NOBODY: u32 = 65534;
    // SAFETY (all three): plain libc calls with valid arguments (`groups` is a live slice of
    // `groups.len()` gids); glibc applies set*id to every thread of the process. Results are
    // checked below.
    let rc = [
        // SAFETY: see above.
        unsafe { libc::setgroups(groups.len(), groups.as_ptr()) },
        // SAFETY: see above.
        unsafe { libc::setgid(NOBODY) },
        // SAFETY: see above.
        unsafe { libc::setuid(NOBODY) },
    ];
    assert_eq!(rc, [0, 0, 0], "dropping privileges failed");
    assert_eq!(rustix::process::geteuid().as_raw(), NOBODY);
}

/// The name of an error's variant (`NotFound`, `Corrupted`, ...), for children to report.
pub fn variant(e: &memlink::Error) -> String {
    format!("{e:?}")
        .split([' ', '{', '('])
        .next()
        .unwrap_or_default()
        .to_owned()
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
