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
use memlink::{Client, ClientOptions, Error, Server, ServerCommand, StartLimit};

#[test]
fn child_main() {
    common::run_child(&[
        ("server", server_role),
        ("client", client_role),
        ("squatter", squatter_role),
        ("mute_server", mute_server_role),
        ("leaky_client", leaky_client_role),
        ("sigchld_client", sigchld_client_role),
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
    server_command_in_mode(name, dir, "now")
}

/// The test server binding when `mode` says (see [`server_role`]).
fn server_command_in_mode(name: &str, dir: &str, mode: &str) -> ServerCommand {
    let (exe, args, env) = common::role_invocation("server", &[name, dir, mode]);
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

/// Connects a `SOCK_SEQPACKET` socket to the abstract name `name`.
fn connect_to(name: &str) -> Result<rustix::fd::OwnedFd, rustix::io::Errno> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::connect(
        &socket,
        &SocketAddrUnix::new_abstract_name(name.as_bytes())?,
    )?;
    Ok(socket)
}

/// Connects to `name`, starting the test server if needed, and calls it once: `ok PID:hi` (the
/// serving process's pid), or `error VARIANT`.
fn connect_and_call(name: &str, dir: &str, pause_holding_lock_ms: u64) -> String {
    connect_and_call_with(name, dir, pause_holding_lock_ms, 0, "now")
}

/// [`connect_and_call`], pausing `pause_after_spawn_ms` after starting the server (if this
/// client starts it), a server that binds as `mode` says ([`server_role`]).
fn connect_and_call_with(
    name: &str,
    dir: &str,
    pause_holding_lock_ms: u64,
    pause_after_spawn_ms: u64,
    mode: &str,
) -> String {
    let mut options = ClientOptions::new()
        .start_server(server_command_in_mode(name, dir, mode))
        .start_timeout(Duration::from_secs(15));
    if pause_holding_lock_ms > 0 {
        options = options.__pause_holding_start_lock(Duration::from_millis(pause_holding_lock_ms));
    }
    if pause_after_spawn_ms > 0 {
        options = options.__pause_after_server_spawn(Duration::from_millis(pause_after_spawn_ms));
    }
    match options.connect(name).and_then(|client| client.call(b"hi")) {
        Ok(reply) => format!("ok {}", String::from_utf8_lossy(&reply)),
        Err(e) => format!("error {} {e}", variant(&e)),
    }
}

/// Lets the gated test servers of `dir` bind (see [`server_role`]).
fn open_gate(dir: &str) {
    std::fs::write(Path::new(dir).join("gate"), "").unwrap();
}

/// The descriptors `pid` has open: number and what it is.
fn open_descriptors(pid: u32) -> Vec<(u32, String)> {
    let mut fds: Vec<(u32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let number = entry.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            Some((number, target.display().to_string()))
        })
        .collect();
    fds.sort();
    fds
}

/// The value of `var` in the environment of process `pid`.
fn environment_of(pid: u32, var: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{var}=");
    environ
        .split(|&b| b == 0)
        .find_map(|v| v.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

// --- roles ---------------------------------------------------------------------------------------

/// The server a client starts: `server NAME DIR MODE`. Notes its pid in `DIR/spawns` (every
/// start is counted, also one that then fails to bind), binds NAME as MODE says (`now`;
/// `delay:MS`, after MS milliseconds; `gate`, once the file `DIR/gate` exists), then serves
/// NAME, answering `PID:` and the request. Exits after 20 idle seconds, should a test fail to
/// kill it.
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
    match args.get(2).map(String::as_str) {
        None | Some("now") => {}
        Some("gate") => {
            let gate = Path::new(dir).join("gate");
            let deadline = Instant::now() + WATCHDOG;
            while !gate.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Some(mode) => {
            let ms = mode.strip_prefix("delay:").unwrap().parse().unwrap();
            std::thread::sleep(Duration::from_millis(ms));
        }
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

/// `client NAME DIR THREADS PAUSE_MS [AFTER_SPAWN_MS MODE]`: says `ready`, waits for the
/// parent's word, then THREADS threads at once each connect (starting the server, binding as
/// MODE says, if needed; pausing PAUSE_MS holding the start lock if they take it, and
/// AFTER_SPAWN_MS after starting the server) and call; one report per thread.
fn client_role(args: &[String]) {
    let _watchdog = Watchdog::arm();
    let (name, dir) = (args[0].clone(), args[1].clone());
    let threads: usize = args[2].parse().unwrap();
    let pause: u64 = args[3].parse().unwrap();
    let after_spawn: u64 = args.get(4).map_or(0, |ms| ms.parse().unwrap());
    let mode = args.get(5).cloned().unwrap_or_else(|| "now".to_owned());
    report("ready");
    await_parent();
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (name, dir, start, mode) = (name.clone(), dir.clone(), start.clone(), mode.clone());
            std::thread::spawn(move || {
                start.wait();
                connect_and_call_with(&name, &dir, pause, after_spawn, &mode)
            })
        })
        .collect();
    for handle in handles {
        report(&handle.join().unwrap());
    }
}

/// `leaky_client NAME DIR`: holds a descriptor without close-on-exec (as a shell's `9>file`
/// gives one), reports its number, then connects (starting a gated server) and calls once.
fn leaky_client_role(args: &[String]) {
    let _watchdog = Watchdog::arm();
    let leaked = std::fs::File::open("/dev/null").unwrap();
    rustix::io::fcntl_setfd(&leaked, rustix::io::FdFlags::empty()).unwrap();
    report(&std::os::fd::AsRawFd::as_raw_fd(&leaked).to_string());
    report(&connect_and_call_with(&args[0], &args[1], 0, 0, "gate"));
    drop(leaked);
}

/// `sigchld_client NAME`, run with `SIGCHLD` ignored: starts a server that fails, and reports
/// what the connect says (`VARIANT TAIL`), or `SIGCHLD is not ignored`.
fn sigchld_client_role(args: &[String]) {
    let _watchdog = Watchdog::arm();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let ignored = status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc_sigchld() - 1)) != 0);
    if !ignored {
        report("SIGCHLD is not ignored");
        return;
    }
    let outcome = ClientOptions::new()
        .start_server(sh("echo 'cannot start' >&2; exit 3"))
        .start_timeout(Duration::from_millis(1000))
        .connect(&args[0]);
    match outcome {
        Err(Error::ServerExitUnobserved { stderr_tail, .. }) => {
            report(&format!("ServerExitUnobserved {stderr_tail}"))
        }
        Err(e) => report(&format!("{} {e}", variant(&e))),
        Ok(_) => report("connected"),
    }
}

/// `SIGCHLD`'s number (17 on every Linux architecture memlink supports).
fn libc_sigchld() -> u32 {
    rustix::process::Signal::CHILD.as_raw() as u32
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

/// `squatter LOCK HOW`: as user nobody, holds the abstract socket LOCK (as another user's
/// process could), listening on it (HOW `listen`) or only bound to it (`bind`), until killed.
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
    if args[1] == "listen" {
        rustix::net::listen(&socket, 16).unwrap();
    }
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
            limit,
            ..
        }) => {
            assert_eq!(tail, "warming up for ever");
            assert_eq!(limit, StartLimit::StartTimeout(timeout));
            assert!(waited >= timeout, "{waited:?}");
        }
        other => panic!("expected ServerStartTimedOut, got {other:?}"),
    }
    assert!(!shell_left, "the server started on demand is still there");
    assert!(!start_lock_held(&name));
}

#[test]
fn a_server_that_exits_successfully_is_kept_unreaped_until_its_group_is_killed() {
    let _watchdog = Watchdog::arm();
    adopt_orphans();
    let name = unique_name("forked");
    let dir = TempDir::new("forked");
    let pids = Path::new(dir.path()).join("pids");
    // As a server that forks into the background would: exit 0, leaving a child in its group
    // (which, here, never serves).
    let script = format!(
        "echo $$ > {p}; sleep 60 & echo $! >> {p}; exit 0",
        p = pids.display()
    );
    let connecting = {
        let name = name.clone();
        std::thread::spawn(move || {
            ClientOptions::new()
                .start_server(sh(&script))
                .start_timeout(Duration::from_millis(1500))
                .connect(&name)
        })
    };
    wait_until("the script to start its child", || {
        std::fs::read_to_string(&pids).is_ok_and(|p| p.lines().count() == 2)
    });
    let started: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let (shell, sleeper) = (started[0], started[1]);
    // The shell has exited; while the client waits on, it stays a zombie: its pid (its group's
    // id) cannot be reused before the group is killed.
    wait_until("the shell to exit", || {
        std::fs::read_to_string(format!("/proc/{shell}/stat"))
            .map_or(true, |stat| stat.contains(") Z "))
    });
    let kept = exists(shell, true);
    let outcome = with_watchdog("the connect", move || connecting.join().unwrap());
    // The group was killed (the sleeper came to us, the subreaper), the shell reaped.
    reap(sleeper);
    assert!(
        kept,
        "the exited server was reaped while its group could still be killed"
    );
    assert!(!exists(shell, true), "the exited server was never reaped");
    assert!(
        matches!(outcome, Err(Error::ServerStartTimedOut { .. })),
        "{outcome:?}"
    );
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
    let began = Instant::now();
    let outcome = ClientOptions::new()
        .start_server(command)
        .start_timeout(timeout)
        .connect(&name);
    let waited = began.elapsed();
    let started = spawns(dir.path());
    let left = started.iter().any(|&pid| exists(pid, true));
    for &pid in &started {
        kill_and_reap(pid);
    }
    match outcome {
        Err(Error::ServerStartTimedOut {
            stderr_tail: Some(tail),
            limit,
            ..
        }) => {
            assert_eq!(tail, "bound, and not answering");
            assert_eq!(limit, StartLimit::StartTimeout(timeout));
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
    // Nobody can connect to the lock (so nobody can hand its holder a descriptor to close).
    assert_eq!(
        connect_to(&format!("memlink.up.{name}")).err(),
        Some(rustix::io::Errno::CONNREFUSED)
    );
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
fn a_launcher_killed_after_starting_the_server_leaves_it_the_lock() {
    let _watchdog = Watchdog::arm();
    adopt_orphans();
    let name = unique_name("handed-lock");
    let dir = TempDir::new("handed-lock");
    // A starts a server that binds only once the gate opens, and is killed right after.
    let mut a = ChildProcess::spawn("client", &[&name, dir.path(), "1", "0", "60000", "gate"]);
    a.expect_line("ready");
    a.tell("go");
    wait_until("A to start the server", || spawns(dir.path()).len() == 1);
    a.kill_and_reap();
    // The server, not yet serving, holds the start lock A handed it.
    assert!(start_lock_held(&name), "A's death freed the start lock");
    // B finds no server: it waits for the one starting, and starts none of its own.
    let mut b = ChildProcess::spawn("client", &[&name, dir.path(), "1", "0", "0", "gate"]);
    b.expect_line("ready");
    b.tell("go");
    std::thread::sleep(Duration::from_millis(300));
    open_gate(dir.path());
    let reply = b.next_line();
    b.wait_success();
    let started = settled_spawns(&name, dir.path());
    // Bound, the server let go of the lock (and B, a waiter, never had it).
    let lock_left = start_lock_held(&name);
    for &pid in &started {
        kill_and_reap(pid);
    }
    assert_eq!(started.len(), 1, "servers started: {started:?}; B: {reply}");
    assert_eq!(reply, format!("ok {}:hi", started[0]));
    assert!(!lock_left, "the server kept the start lock after binding");
}

#[test]
fn the_started_server_inherits_no_descriptor_but_the_start_lock() {
    let _watchdog = Watchdog::arm();
    adopt_orphans();
    let name = unique_name("no-leak");
    let dir = TempDir::new("no-leak");
    let mut client = ChildProcess::spawn("leaky_client", &[&name, dir.path()]);
    let leaked: u32 = client.next_line().parse().unwrap();
    wait_until("the server to start", || spawns(dir.path()).len() == 1);
    let pid = spawns(dir.path())[0];
    // Before it binds: its standard streams, and the start lock under the number it was told.
    let before = open_descriptors(pid);
    let lock_fd: Option<u32> =
        environment_of(pid, "MEMLINK_START_LOCK_FD").and_then(|fd| fd.parse().ok());
    open_gate(dir.path());
    let reply = client.next_line();
    client.wait_success();
    kill_and_reap(pid);
    assert_eq!(reply, format!("ok {pid}:hi"));
    let numbers: Vec<u32> = before.iter().map(|(fd, _)| *fd).collect();
    assert!(
        !numbers.contains(&leaked) || Some(leaked) == lock_fd,
        "the client's descriptor {leaked} leaked into the server: {before:?}"
    );
    let lock_fd = lock_fd.expect("no MEMLINK_START_LOCK_FD in the server's environment");
    assert_eq!(numbers, [0, 1, 2, lock_fd], "{before:?}");
    assert!(before[3].1.starts_with("socket:["), "{before:?}");
}

#[test]
fn a_call_whose_timeout_is_shorter_than_the_start_leaves_the_server_starting() {
    let _watchdog = Watchdog::arm();
    adopt_orphans();
    let name = unique_name("short-call");
    let dir = TempDir::new("short-call");
    // A client connected to a server that then stops...
    let first = Server::bind(&name).unwrap();
    let stop = first.shutdown_handle();
    let serving = std::thread::spawn(move || {
        first.serve(|request: &[u8], reply: &mut Vec<u8>| reply.extend_from_slice(request))
    });
    let client = ClientOptions::new()
        .start_server(server_command_in_mode(&name, dir.path(), "delay:300"))
        .start_timeout(WATCHDOG)
        .connect(&name)
        .unwrap();
    assert_eq!(client.call(b"first").unwrap(), b"first");
    stop.shutdown();
    with_watchdog("serve to return", move || serving.join().unwrap()).unwrap();
    // ...calls with a timeout shorter than the server takes to come up: the call times out
    // (never having reached a server: not executed), and the server it started comes up all
    // the same.
    let outcome = client.call_timeout(b"hi", Duration::from_millis(50));
    assert!(
        matches!(
            outcome,
            Err(Error::NotExecuted {
                reason: memlink::NotExecuted::TimedOut,
                ..
            })
        ),
        "{outcome:?}"
    );
    wait_until("the server started on demand to serve", || {
        server_stats(&name).is_ok()
    });
    let reply = client.call_timeout(b"hi", WATCHDOG);
    // A connect with no time at all starts it too (a thread of ours watches it come up).
    let other = unique_name("no-time");
    let outcome = ClientOptions::new()
        .start_server(server_command_in_mode(&other, dir.path(), "delay:300"))
        .start_timeout(WATCHDOG)
        .connect_timeout(&other, Duration::ZERO);
    let other_timed_out = matches!(outcome, Err(Error::Timeout));
    wait_until("the other server to serve", || server_stats(&other).is_ok());
    let other_reply = ClientOptions::new()
        .connect(&other)
        .and_then(|c| c.call(b"there"));
    let started = settled_spawns(&name, dir.path());
    for &pid in &started {
        kill_and_reap(pid);
    }
    assert_eq!(started.len(), 2, "servers started: {started:?}");
    let pid = server_pid_of(&started, &reply);
    assert_eq!(reply.unwrap(), format!("{pid}:hi").into_bytes());
    assert!(other_timed_out, "{outcome:?}");
    let other_pid = started.iter().find(|&&p| p != pid).unwrap();
    assert_eq!(
        other_reply.unwrap(),
        format!("{other_pid}:there").into_bytes()
    );
}

/// Which of `started` answered `reply` (`PID:...`).
fn server_pid_of(started: &[u32], reply: &Result<Vec<u8>, Error>) -> u32 {
    let text = String::from_utf8_lossy(reply.as_ref().expect("the call failed")).into_owned();
    let pid = text.split(':').next().unwrap().parse().unwrap();
    assert!(started.contains(&pid), "{text} from none of {started:?}");
    pid
}

#[test]
fn a_client_that_ignores_sigchld_says_the_exit_status_was_lost() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("sigchld");
    let mut client =
        ChildProcess::spawn_wrapped(&["env", "--ignore-signal=CHLD"], "sigchld_client", &[&name]);
    let line = client
        .try_next_line()
        .expect("`env --ignore-signal=CHLD` (GNU coreutils 8.31+) could not run the client");
    client.wait_success();
    assert_eq!(line, "ServerExitUnobserved cannot start");
}

#[test]
fn a_start_lock_held_by_another_user_fails_the_connect_at_once() {
    if !common::is_root() {
        eprintln!("skipped: needs root to run a process as another user");
        return;
    }
    let _watchdog = Watchdog::arm();
    // Listening on the lock (the holder could be asked), or only bound to it (nobody can
    // connect to ask; the kernel's socket table still says who).
    for how in ["listen", "bind"] {
        let name = unique_name("squatted");
        let mut squatter = ChildProcess::spawn("squatter", &[&format!("memlink.up.{name}"), how]);
        squatter.expect_line("held");
        let outcome = ClientOptions::new()
            .start_server(sh("exit 0"))
            .start_timeout(Duration::from_secs(10))
            .connect(&name);
        match outcome {
            Err(Error::StartLockHeld { uid, pid, .. }) => {
                assert_eq!((uid, pid), (65534, Some(squatter.pid())), "{how}");
            }
            other => panic!("{how}: expected StartLockHeld, got {other:?}"),
        }
        // Unless the client trusts that user.
        let outcome = ClientOptions::new()
            .start_server(sh("exit 0"))
            .trust_server_uid(65534)
            .start_timeout(Duration::from_millis(300))
            .connect(&name);
        match outcome {
            Err(Error::ServerStartTimedOut {
                stderr_tail: None,
                starter_pid,
                ..
            }) => assert_eq!(starter_pid, Some(squatter.pid()), "{how}"),
            other => panic!("{how}: expected ServerStartTimedOut, got {other:?}"),
        }
        squatter.kill_and_reap();
    }
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

#[test]
fn a_stderr_file_must_be_a_private_regular_file_of_ours_and_the_tail_is_made_printable() {
    use std::os::unix::fs::PermissionsExt;
    let _watchdog = Watchdog::arm();
    let name = unique_name("stderr-checks");
    let dir = TempDir::new("stderr-checks");
    let at = |file: &str| Path::new(dir.path()).join(file);
    let failing = |log: &Path| sh("echo 'ran' >&2; exit 5").stderr_file(log);
    let refusal = |log: &Path| match ClientOptions::new()
        .start_server(failing(log))
        .connect(&name)
    {
        Err(Error::InvalidOptions { reason }) => reason,
        other => panic!("{}: expected InvalidOptions, got {other:?}", log.display()),
    };
    std::fs::write(at("real.log"), "").unwrap();
    std::os::unix::fs::symlink(at("real.log"), at("link.log")).unwrap();
    assert!(refusal(&at("link.log")).contains("symbolic link"));
    let fifo = at("fifo.log");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    assert!(refusal(&fifo).contains("FIFO"));
    std::fs::set_permissions(at("real.log"), std::fs::Permissions::from_mode(0o622)).unwrap();
    assert!(refusal(&at("real.log")).contains("other users write"));
    std::fs::set_permissions(at("real.log"), std::fs::Permissions::from_mode(0o600)).unwrap();
    if common::is_root() {
        std::fs::write(at("theirs.log"), "").unwrap();
        std::os::unix::fs::chown(at("theirs.log"), Some(65534), Some(65534)).unwrap();
        assert!(refusal(&at("theirs.log")).contains("uid 65534"));
    } else {
        eprintln!("part skipped: needs root to give a file to another user");
    }
    // Nothing was started for a refused file; our own private file is used.
    assert_eq!(std::fs::read_to_string(at("real.log")).unwrap(), "");
    match ClientOptions::new()
        .start_server(failing(&at("real.log")))
        .connect(&name)
    {
        Err(Error::ServerFailedToStart { stderr_tail, .. }) => assert_eq!(stderr_tail, "ran"),
        other => panic!("expected ServerFailedToStart, got {other:?}"),
    }
    // What a server wrote reaches an error message without its control characters.
    let garbling = sh(r"printf 'bad\033[2Jnews\r\a\n\tindented\n' >&2; exit 6");
    match ClientOptions::new().start_server(garbling).connect(&name) {
        Err(e @ Error::ServerFailedToStart { .. }) => {
            let message = e.to_string();
            let Error::ServerFailedToStart { stderr_tail, .. } = e else {
                unreachable!()
            };
            assert_eq!(stderr_tail, "bad[2Jnews\n\tindented");
            assert!(
                !message
                    .chars()
                    .any(|c| c.is_control() && c != '\n' && c != '\t'),
                "{message:?}"
            );
        }
        other => panic!("expected ServerFailedToStart, got {other:?}"),
    }
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
