//! Servers started on demand, across real processes: many clients at once start exactly one
//! server; a server that fails, or never serves, is reported with its exit status and the end of
//! its standard error (and one that never serves is killed); a launcher killed holding the start
//! lock blocks nobody; a stranger holding the lock is refused at once; the server is detached
//! from its launcher and reaped by it. Also the server side: idle exit, and a server that stops
//! accepting frees its name at once.
//!
//! Servers started on demand are not children of the test's child processes for long: those
//! exit (or are killed), and the servers are re-parented. The test process makes itself a child
//! subreaper, so they come to it, and every test kills the servers it caused and reaps them.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::{
    ChildProcess, WATCHDOG, Watchdog, await_parent, report, unique_name, variant, with_watchdog,
};
use memlink::rpc::server_stats;
use memlink::{Client, ClientOptions, Error, Server, ServerCommand};

#[test]
fn child_main() {
    common::run_child(&[
        ("server", server_role),
        ("client", client_role),
        ("squatter", squatter_role),
        ("mute_server", mute_server_role),
    ]);
}

// --- helpers -------------------------------------------------------------------------------------

/// Makes this process the subreaper of its descendants, once.
fn adopt_orphans() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .expect("PR_SET_CHILD_SUBREAPER");
    });
}

/// A directory for one test's files, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(unique_name(tag));
        std::fs::create_dir(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The test server (the `server` role) as a command a client can start.
fn server_command(name: &str, dir: &str) -> ServerCommand {
    let (exe, args, env) = common::role_invocation("server", &[name, dir]);
    env.into_iter()
        .fold(ServerCommand::new(exe).args(args), |command, (k, v)| {
            command.env(k, v)
        })
}

fn sh(script: &str) -> ServerCommand {
    ServerCommand::new("/bin/sh").args(["-c", script])
}

/// The pids of the test servers started with `dir` so far, in order.
fn spawns(dir: &str) -> Vec<u32> {
    std::fs::read_to_string(Path::new(dir).join("spawns"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

/// Running test servers (the `server` role) of service `name`.
fn live_servers(name: &str) -> Vec<u32> {
    let role = b"MEMLINK_TEST_ROLE=server".as_slice();
    let args = format!("MEMLINK_TEST_ARGS={name}\u{1f}").into_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let vars: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
            vars.contains(&role) && vars.iter().any(|v| v.starts_with(&args))
        })
        .collect()
}

/// [`spawns`], once every test server of `name` still running has noted its pid (a server is
/// started before its launcher returns, but may take a moment to write).
fn settled_spawns(name: &str, dir: &str) -> Vec<u32> {
    wait_until("every test server to note its start", || {
        let noted = spawns(dir);
        live_servers(name).iter().all(|pid| noted.contains(pid))
    });
    spawns(dir)
}

fn pid_of(pid: u32) -> rustix::process::Pid {
    rustix::process::Pid::from_raw(pid as i32).unwrap()
}

/// Whether `pid` is a process (a zombie counts only if `zombies_count`).
fn exists(pid: u32, zombies_count: bool) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim().chars().next());
            zombies_count || state != Some('Z')
        }
    }
}

/// Waits until `pid` is dead and reaped (by us, as its parent or subreaper, or by whoever else
/// is its parent), failing the test after [`WATCHDOG`].
fn reap(pid: u32) {
    let deadline = Instant::now() + WATCHDOG;
    loop {
        match rustix::process::waitpid(Some(pid_of(pid)), rustix::process::WaitOptions::NOHANG) {
            Ok(Some(_)) => return,
            // Not ours: someone else reaps it (a library reaper thread, or init).
            Err(_) if !exists(pid, false) => return,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} still running after {WATCHDOG:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn kill_and_reap(pid: u32) {
    let _ = rustix::process::kill_process(pid_of(pid), rustix::process::Signal::KILL);
    reap(pid);
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WATCHDOG;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {WATCHDOG:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether some process holds the start lock of service `name`.
fn start_lock_held(name: &str) -> bool {
    let lock = format!("@memlink.up.{name}");
    std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .any(|line| line.split_whitespace().nth(7) == Some(lock.as_str()))
}

/// Connects to `name`, starting the test server if needed, and calls it once: `ok PID:hi` (the
/// serving process's pid), or `error VARIANT`.
fn connect_and_call(name: &str, dir: &str, pause_holding_lock_ms: u64) -> String {
    let mut options = ClientOptions::new()
        .start_server(server_command(name, dir))
        .start_timeout(Duration::from_secs(15));
    if pause_holding_lock_ms > 0 {
        options = options.__pause_holding_start_lock(Duration::from_millis(pause_holding_lock_ms));
    }
    match options.connect(name).and_then(|client| client.call(b"hi")) {
        Ok(reply) => format!("ok {}", String::from_utf8_lossy(&reply)),
        Err(e) => format!("error {} {e}", variant(&e)),
    }
}

// --- roles ---------------------------------------------------------------------------------------

/// The server a client starts: notes its pid in `DIR/spawns` (every start is counted, also one
/// that then fails to bind), then serves NAME, answering `PID:` and the request. Exits after 20
/// idle seconds, should a test fail to kill it.
fn server_role(args: &[String]) {
    // It must outlive the client that started it: no death signal from the harness.
    let _ = rustix::process::set_parent_process_death_signal(None);
    let (name, dir) = (&args[0], &args[1]);
    let pid = std::process::id();
    {
        use std::io::Write;
        let mut spawns = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(Path::new(dir).join("spawns"))
            .unwrap();
        writeln!(spawns, "{pid}").unwrap();
    }
    let server = match Server::options()
        .exit_when_idle(Duration::from_secs(20))
        .bind(name)
    {
        Ok(server) => server,
        Err(e) => {
            eprintln!("test server {pid}: {e}");
            std::process::exit(4);
        }
    };
    server
        .serve(move |request: &[u8], reply: &mut Vec<u8>| {
            reply.extend_from_slice(format!("{pid}:").as_bytes());
            reply.extend_from_slice(request);
        })
        .unwrap();
}

/// `client NAME DIR THREADS PAUSE_MS`: says `ready`, waits for the parent's word, then THREADS
/// threads at once each connect (starting the server if needed, pausing PAUSE_MS holding the
/// start lock if they take it) and call; one report per thread.
fn client_role(args: &[String]) {
    let _watchdog = Watchdog::arm();
    let (name, dir) = (args[0].clone(), args[1].clone());
    let threads: usize = args[2].parse().unwrap();
    let pause: u64 = args[3].parse().unwrap();
    report("ready");
    await_parent();
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (name, dir, start) = (name.clone(), dir.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                connect_and_call(&name, &dir, pause)
            })
        })
        .collect();
    for handle in handles {
        report(&handle.join().unwrap());
    }
}

/// `mute_server NAME DIR`: notes its pid in `DIR/spawns`, binds NAME's service socket as a
/// server would, and never answers anyone.
fn mute_server_role(args: &[String]) {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let _ = rustix::process::set_parent_process_death_signal(None);
    std::fs::write(
        Path::new(&args[1]).join("spawns"),
        format!("{}\n", std::process::id()),
    )
    .unwrap();
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let address = format!("memlink.rpc.{}", args[0]);
    rustix::net::bind(
        &socket,
        &SocketAddrUnix::new_abstract_name(address.as_bytes()).unwrap(),
    )
    .unwrap();
    rustix::net::listen(&socket, 16).unwrap();
    eprintln!("bound, and not answering");
    common::park_until_killed();
}

/// `squatter LOCK`: as user nobody, holds the abstract socket LOCK (as another user's process
/// could), until killed.
fn squatter_role(args: &[String]) {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    common::drop_privileges_to_nobody();
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::net::bind(
        &socket,
        &SocketAddrUnix::new_abstract_name(args[0].as_bytes()).unwrap(),
    )
    .unwrap();
    rustix::net::listen(&socket, 16).unwrap();
    report("held");
    common::park_until_killed();
}

// --- the client side -----------------------------------------------------------------------------

#[test]
fn many_clients_at_once_start_exactly_one_server_that_outlives_them() {
    let _watchdog = Watchdog::arm();
    adopt_orphans();
    let name = unique_name("once");
    let dir = TempDir::new("once");
    const PROCESSES: usize = 8;
    const THREADS_EACH: usize = 2;
    const OUR_THREADS: usize = 4;
    let mut children: Vec<_> = (0..PROCESSES)
        .map(|_| ChildProcess::spawn("client", &[&name, dir.path(), "2", "0"]))
        .collect();
    for child in &mut children {
        child.expect_line("ready");
    }
    let start = Arc::new(Barrier::new(OUR_THREADS + 1));
    let ours: Vec<_> = (0..OUR_THREADS)
        .map(|_| {
            let (name, dir, start) = (name.clone(), dir.path().to_owned(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                connect_and_call(&name, &dir, 0)
            })
        })
        .collect();
    for child in &mut children {
        child.tell("go");
    }
    start.wait();
    let mut replies = Vec::new();
    for child in &mut children {
        for _ in 0..THREADS_EACH {
            replies.push(child.next_line());
        }
        child.wait_success();
    }
    for thread in ours {
        replies.push(thread.join().unwrap());
    }
    let started = settled_spawns(&name, dir.path());
    // Every client process has exited; the server they started still serves.
    let serving = server_stats(&name).map(|stats| stats.pid);
    for &pid in &started {
        kill_and_reap(pid);
    }
    assert_eq!(
        started.len(),
        1,
        "servers started: {started:?}; replies: {replies:?}"
    );
    let pid = started[0];
    let expected = format!("ok {pid}:hi");
    assert!(
        replies.iter().all(|r| *r == expected),
        "expected {expected:?} from every client: {replies:?}"
    );
    assert_eq!(replies.len(), PROCESSES * THREADS_EACH + OUR_THREADS);
    assert_eq!(serving.unwrap(), pid);
}

#[test]
fn a_client_that_takes_the_lock_after_the_server_came_up_starts_none() {
    let _watchdog = Watchdog::arm();
    adopt_orphans();
    let name = unique_name("late");
    let dir = TempDir::new("late");
    // The late client finds no server, then stalls before taking the start lock...
    let (stalled_tx, stalled) = mpsc::channel::<()>();
    let (resume, resumed) = mpsc::channel::<()>();
    let (stalled_tx, resumed) = (Mutex::new(stalled_tx), Mutex::new(resumed));
    let late = {
        let (name, dir) = (name.clone(), dir.path().to_owned());
        std::thread::spawn(move || {
            ClientOptions::new()
                .start_server(server_command(&name, &dir))
                .__before_start_lock(move || {
                    let _ = stalled_tx.lock().unwrap().send(());
                    let _ = resumed.lock().unwrap().recv_timeout(WATCHDOG);
                })
                .connect(&name)
                .and_then(|client| client.call(b"late"))
        })
    };
    stalled.recv_timeout(WATCHDOG).unwrap();
    // ...while another starts the server and lets go of the lock.
    let first = connect_and_call(&name, dir.path(), 0);
    resume.send(()).unwrap();
    let late = late.join().unwrap();
    let started = settled_spawns(&name, dir.path());
    for &pid in &started {
        kill_and_reap(pid);
    }
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(first, format!("ok {}:hi", started[0]));
    assert_eq!(late.unwrap(), format!("{}:late", started[0]).into_bytes());
}

#[test]
fn a_server_that_fails_to_start_is_reported_with_its_exit_status_and_stderr() {
    let _watchdog = Watchdog::arm();
    adopt_orphans();
    let name = unique_name("fails");
    let failing =
        sh("echo 'starting up' >&2; echo 'fatal: cannot open the frobnicator' >&2; exit 3");
    match ClientOptions::new().start_server(failing).connect(&name) {
        Err(e @ Error::ServerFailedToStart { .. }) => {
            let message = e.to_string();
            let Error::ServerFailedToStart {
                status,
                stderr_tail,
                program,
                ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!(status.code(), Some(3));
            assert_eq!(
                stderr_tail,
                "starting up\nfatal: cannot open the frobnicator"
            );
            assert_eq!(program, "/bin/sh");
            assert!(
                message.contains("exit status: 3")
                    && message.ends_with("fatal: cannot open the frobnicator"),
                "{message}"
            );
        }
        other => panic!("expected ServerFailedToStart, got {other:?}"),
    }
    // Only the end of a long complaint is kept.
    let chatty = sh("i=1; while [ $i -le 100 ]; do echo \"line $i\" >&2; i=$((i+1)); done; exit 7");
    match ClientOptions::new().start_server(chatty).connect(&name) {
        Err(Error::ServerFailedToStart {
            status,
            stderr_tail,
            ..
        }) => {
            assert_eq!(status.code(), Some(7));
            let lines: Vec<&str> = stderr_tail.lines().collect();
            assert_eq!(lines.len(), 20, "{stderr_tail}");
            assert_eq!((lines[0], lines[19]), ("line 81", "line 100"));
        }
        other => panic!("expected ServerFailedToStart, got {other:?}"),
    }
    match ClientOptions::new()
        .start_server(ServerCommand::new("/nonexistent/memlink-test-server"))
        .connect(&name)
    {
        Err(Error::ServerSpawnFailed { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound)
        }
        other => panic!("expected ServerSpawnFailed, got {other:?}"),
    }
    // The failures left no lock behind: a working command starts the server at once.
    let dir = TempDir::new("fails");
    assert!(!start_lock_held(&name));
    let reply = connect_and_call(&name, dir.path(), 0);
    let started = settled_spawns(&name, dir.path());
    assert_eq!(reply, format!("ok {}:hi", started[0]));
    kill_and_reap(started[0]);
}

#[test]
fn a_server_that_never_serves_is_killed_with_its_group_at_the_timeout() {
    let _watchdog = Watchdog::arm();
    adopt_orphans();
    let name = unique_name("never");
    let dir = TempDir::new("never");
    let pids = Path::new(dir.path()).join("pids");
    // A shell (the process the client starts) and a child of it, neither of which serves.
    let script = format!(
        "echo $$ > {p}; sleep 60 & echo $! >> {p}; echo 'warming up for ever' >&2; wait",
        p = pids.display()
    );
    let timeout = Duration::from_millis(1500);
    let began = Instant::now();
    let outcome = ClientOptions::new()
        .start_server(sh(&script))
        .start_timeout(timeout)
        .connect(&name);
    let waited = began.elapsed();
    let started: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(started.len(), 2, "the script did not run as expected");
    let (shell, sleeper) = (started[0], started[1]);
    // The client reaped the process it started before returning; the shell's child died with
    // its process group and came to us (the subreaper) to be reaped.
    let shell_left = exists(shell, true);
    reap(sleeper);
    match outcome {
        Err(Error::ServerStartTimedOut {
            stderr_tail: Some(tail),
            waited: reported,
            ..
        }) => {
            assert_eq!(tail, "warming up for ever");
            assert!(reported >= timeout && waited >= timeout, "{reported:?}");
        }
        other => panic!("expected ServerStartTimedOut, got {other:?}"),
    }
    assert!(!shell_left, "the server started on demand is still there");
    assert!(!start_lock_held(&name));
}

#[test]
fn a_server_that_binds_but_never_answers_is_killed_at_the_timeout() {
    let _watchdog = Watchdog::arm();
    adopt_orphans();
    let name = unique_name("mute");
    let dir = TempDir::new("mute");
    let (exe, args, env) = common::role_invocation("mute_server", &[&name, dir.path()]);
    let command = env
        .into_iter()
        .fold(ServerCommand::new(exe).args(args), |command, (k, v)| {
            command.env(k, v)
        });
    let timeout = Duration::from_millis(1500);
    let outcome = ClientOptions::new()
        .start_server(command)
        .start_timeout(timeout)
        .connect(&name);
    let started = spawns(dir.path());
    let left = started.iter().any(|&pid| exists(pid, true));
    for &pid in &started {
        kill_and_reap(pid);
    }
    match outcome {
        Err(Error::ServerStartTimedOut {
            stderr_tail: Some(tail),
            waited,
            ..
        }) => {
            assert_eq!(tail, "bound, and not answering");
            assert!(waited >= timeout, "{waited:?}");
        }
        other => panic!("expected ServerStartTimedOut, got {other:?}"),
    }
    assert_eq!(started.len(), 1, "{started:?}");
    assert!(!left, "the mute server was left running");
}

#[test]
fn a_launcher_killed_holding_the_start_lock_blocks_nobody() {
    let _watchdog = Watchdog::arm();
    adopt_orphans();
    let name = unique_name("orphaned-lock");
    let dir = TempDir::new("orphaned-lock");
    // A takes the start lock and sits on it.
    let mut a = ChildProcess::spawn("client", &[&name, dir.path(), "1", "60000"]);
    a.expect_line("ready");
    a.tell("go");
    wait_until("A to take the start lock", || start_lock_held(&name));
    // B finds no server and the lock held: it waits, and starts nothing.
    let mut b = ChildProcess::spawn("client", &[&name, dir.path(), "1", "0"]);
    b.expect_line("ready");
    b.tell("go");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        settled_spawns(&name, dir.path()).is_empty(),
        "B started a server while A held the start lock"
    );
    // A dies holding the lock; the kernel frees it, and B starts the server.
    a.kill_and_reap();
    let reply = b.next_line();
    b.wait_success();
    let started = settled_spawns(&name, dir.path());
    for &pid in &started {
        kill_and_reap(pid);
    }
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(reply, format!("ok {}:hi", started[0]));
}

#[test]
fn a_start_lock_held_by_another_user_fails_the_connect_at_once() {
    if !common::is_root() {
        eprintln!("skipped: needs root to run a process as another user");
        return;
    }
    let _watchdog = Watchdog::arm();
    let name = unique_name("squatted");
    let mut squatter = ChildProcess::spawn("squatter", &[&format!("memlink.up.{name}")]);
    squatter.expect_line("held");
    let outcome = ClientOptions::new()
        .start_server(sh("exit 0"))
        .start_timeout(Duration::from_secs(10))
        .connect(&name);
    match outcome {
        Err(Error::StartLockHeld { uid, pid, .. }) => {
            assert_eq!((uid, pid), (65534, squatter.pid()));
        }
        other => panic!("expected StartLockHeld, got {other:?}"),
    }
    // Unless the client trusts that user.
    let outcome = ClientOptions::new()
        .start_server(sh("exit 0"))
        .trust_server_uid(65534)
        .start_timeout(Duration::from_millis(300))
        .connect(&name);
    assert!(
        matches!(
            outcome,
            Err(Error::ServerStartTimedOut {
                stderr_tail: None,
                ..
            })
        ),
        "{outcome:?}"
    );
    squatter.kill_and_reap();
}

#[test]
fn the_server_is_detached_from_its_launcher_which_reaps_it() {
    let _watchdog = Watchdog::arm();
    adopt_orphans();
    let name = unique_name("detached");
    let dir = TempDir::new("detached");
    let reply = connect_and_call(&name, dir.path(), 0);
    let started = settled_spawns(&name, dir.path());
    assert_eq!(reply, format!("ok {}:hi", started[0]));
    let pid = started[0];
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // State, parent, process group, session.
    let (parent, group, session) = (fields[1], fields[2], fields[3]);
    let link = |what: &str| {
        std::fs::read_link(format!("/proc/{pid}/{what}"))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let (stdin, stdout, stderr, cwd) = (link("fd/0"), link("fd/1"), link("fd/2"), link("cwd"));
    // Killed without our reaping it: the client's reaper thread must.
    let _ = rustix::process::kill_process(pid_of(pid), rustix::process::Signal::KILL);
    wait_until("the reaper to reap the server", || !exists(pid, true));
    assert_eq!(parent, std::process::id().to_string());
    assert_eq!((group, session), (&*pid.to_string(), &*pid.to_string()));
    assert_eq!((&*stdin, &*stdout, &*cwd), ("/dev/null", "/dev/null", "/"));
    assert!(
        stderr.starts_with("/memfd:memlink-server-stderr"),
        "{stderr}"
    );
}

#[test]
fn a_server_file_receives_the_servers_stderr_when_asked() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("stderr-file");
    let dir = TempDir::new("stderr-file");
    let log = Path::new(dir.path()).join("server.log");
    std::fs::write(&log, "an earlier run's complaint\n").unwrap();
    let failing = sh("echo 'this run failed' >&2; exit 5").stderr_file(&log);
    match ClientOptions::new().start_server(failing).connect(&name) {
        Err(Error::ServerFailedToStart { stderr_tail, .. }) => {
            // Only what this server wrote.
            assert_eq!(stderr_tail, "this run failed");
        }
        other => panic!("expected ServerFailedToStart, got {other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "an earlier run's complaint\nthis run failed\n"
    );
}

// --- the server side -----------------------------------------------------------------------------

#[test]
fn an_idle_server_exits_once_its_last_client_has_gone() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("idle");
    let idle = Duration::from_millis(200);
    let server = Server::options().exit_when_idle(idle).bind(&name).unwrap();
    let serving = std::thread::spawn(move || {
        server.serve(|request: &[u8], reply: &mut Vec<u8>| reply.extend_from_slice(request))
    });
    let client = Client::connect(&name).unwrap();
    assert_eq!(client.call(b"one").unwrap(), b"one");
    // A connected client keeps it, however long it stays quiet.
    std::thread::sleep(idle * 4);
    assert!(!serving.is_finished(), "exited with a client connected");
    assert_eq!(client.call(b"two").unwrap(), b"two");
    drop(client);
    // Statistics queries do not keep it running.
    wait_until("the idle server to stop serving", || {
        matches!(server_stats(&name), Err(Error::NotRunning { .. }))
    });
    with_watchdog("serve to return", move || serving.join().unwrap()).unwrap();
    assert!(matches!(
        Client::connect(&name),
        Err(Error::NotRunning { .. })
    ));
}

#[test]
fn a_server_that_stops_accepting_frees_its_name_while_it_finishes_its_calls() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("successor");
    let (entered_tx, entered) = mpsc::channel::<()>();
    let (release, released) = mpsc::channel::<()>();
    let (entered_tx, released) = (Mutex::new(entered_tx), Mutex::new(released));
    let server = Server::bind(&name).unwrap();
    let stop = server.shutdown_handle();
    let serving = std::thread::spawn(move || {
        server.serve(move |_request: &[u8], reply: &mut Vec<u8>| {
            let _ = entered_tx.lock().unwrap().send(());
            let _ = released.lock().unwrap().recv();
            reply.extend_from_slice(b"done");
        })
    });
    let client = Client::connect(&name).unwrap();
    let in_flight = std::thread::spawn(move || client.call(b"slow"));
    entered.recv_timeout(WATCHDOG).unwrap();
    stop.shutdown();
    wait_until("the acceptor to stop", || {
        matches!(server_stats(&name), Err(Error::NotRunning { .. }))
    });
    // The call is still in its handler, and a successor can take the name.
    let successor = Server::bind(&name);
    release.send(()).unwrap();
    assert!(successor.is_ok(), "{successor:?}");
    drop(successor);
    assert_eq!(
        with_watchdog("the call in flight", move || in_flight.join().unwrap()).unwrap(),
        b"done"
    );
    with_watchdog("serve to return", move || serving.join().unwrap()).unwrap();
}
