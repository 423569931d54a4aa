//! Hostile peers: clients that speak the wire protocol by hand and misbehave on purpose, while an
//! honest client is measured alongside. Each test is one attack from the hardening issue; each
//! failed against the code before the hardening (the raw client speaks whichever protocol version
//! the server accepts, and attacks whatever descriptors it is given).

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use common::{ChildProcess, Watchdog, drop_privileges_to_nobody, is_root, report, unique_name};
use memlink::rpc::server_stats;
use memlink::{Client, Server};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendFlags, SocketAddrUnix,
    SocketFlags, SocketType,
};

#[test]
fn child_main() {
    common::run_child(&[
        ("server", server_role),
        ("server_default_sigpipe", server_default_sigpipe),
        ("pipe_closer", pipe_closer),
        ("doorbell_blocker", doorbell_blocker),
        ("wake_thief", wake_thief),
        ("empty_fragments", empty_fragments),
        ("claim_scribbler", claim_scribbler),
        ("flood", flood),
        ("flood_as_nobody", flood_as_nobody),
        ("idle_clients", idle_clients),
        ("descriptor_passer", descriptor_passer),
        ("failing_server", failing_server),
        ("async_server", async_server),
        ("withdrawn_flood", withdrawn_flood),
        ("refuser", refuser),
    ]);
}

// --- the raw client ------------------------------------------------------------------------------

const REQUEST_TAIL: usize = 384;
const REQUEST_HEAD: usize = 384 + 128;
const CLIENT_PARKED: usize = 128;
const SERVER_PARKED: usize = 256;
const DATA: usize = 1024;
const FIRST: u32 = 1;
const LAST: u32 = 2;

/// A connection made by hand: the socket, the protocol version the server accepted, the
/// descriptors it passed, and the shared region mapped.
struct RawConnection {
    socket: OwnedFd,
    version: u32,
    capacity: usize,
    eventfds: Vec<OwnedFd>,
    /// Wake pipes (version 2): the write end to the server's, the read end of ours.
    pipes: Vec<OwnedFd>,
    region: *mut u8,
    region_len: usize,
    tail: u64,
}

fn descriptor_kind(fd: &OwnedFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl RawConnection {
    fn connect(name: &str) -> RawConnection {
        for version in [5u32, 4, 3, 2, 1] {
            if let Some(conn) = Self::try_version(name, version) {
                return conn;
            }
        }
        panic!("no protocol version was accepted");
    }

    fn try_version(name: &str, version: u32) -> Option<RawConnection> {
        let socket = raw_socket();
        let address =
            SocketAddrUnix::new_abstract_name(format!("memlink.rpc.{name}").as_bytes()).unwrap();
        rustix::net::connect(&socket, &address).unwrap();
        let mut hello = Vec::new();
        hello.extend_from_slice(b"MLNK");
        hello.extend_from_slice(&version.to_le_bytes());
        hello.extend_from_slice(&1u32.to_le_bytes());
        hello.extend_from_slice(&0u32.to_le_bytes());
        rustix::net::send(&socket, &hello, SendFlags::NOSIGNAL).ok()?;
        let mut buf = [0u8; 64];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &socket,
            &mut [std::io::IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .ok()?;
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = message {
                fds.extend(rights);
            }
        }
        if got.bytes != 32 || buf[8..12] != [0, 0, 0, 0] {
            return None;
        }
        let capacity = u32::from_le_bytes(buf[12..16].try_into().unwrap()) as usize;
        let (mut eventfds, mut pipes, mut region) = (Vec::new(), Vec::new(), None);
        for fd in fds {
            let kind = descriptor_kind(&fd);
            if kind.contains("eventfd") {
                eventfds.push(fd);
            } else if kind.starts_with("pipe:") {
                pipes.push(fd);
            } else {
                region = Some(fd);
            }
        }
        let region = region.expect("a region descriptor");
        let region_len = rustix::fs::fstat(&region).unwrap().st_size as usize;
        // The whole region file (fstat gave its size), never unmapped (the child exits).
        // SAFETY: a fresh mapping at an address the kernel picks replaces nothing of ours.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                region_len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &region,
                0,
            )
        }
        .unwrap();
        Some(RawConnection {
            socket,
            version,
            capacity,
            eventfds,
            pipes,
            region: ptr.cast(),
            region_len,
            tail: 0,
        })
    }

    fn word(&self, at: usize) -> &AtomicU32 {
        assert!(at + 4 <= self.region_len);
        let ptr = self.region.wrapping_add(at).cast();
        // The mapping lives as long as the process.
        // SAFETY: in bounds (checked) and 4-aligned (page-aligned base, aligned offsets).
        unsafe { AtomicU32::from_ptr(ptr) }
    }

    fn long(&self, at: usize) -> &AtomicU64 {
        assert!(at + 8 <= self.region_len);
        let ptr = self.region.wrapping_add(at).cast();
        // SAFETY: as in `word`, 8-aligned.
        unsafe { AtomicU64::from_ptr(ptr) }
    }

    /// Pushes one empty-payload record into the request ring, waiting for room; `false` once the
    /// server has hung up.
    fn push_empty(&mut self, flags: u32, call_id: u64, total: u64) -> bool {
        while self.tail + 64 - self.long(REQUEST_HEAD).load(Ordering::Acquire)
            > self.capacity as u64
        {
            if self.hung_up() {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let at = DATA + (self.tail % self.capacity as u64) as usize;
        if self.version >= 2 {
            // Fields after an 8-byte stamp; the stamp (position + 1, keyed) publishes the record.
            self.word(at + 8).store(0, Ordering::Relaxed);
            self.word(at + 12).store(flags, Ordering::Relaxed);
            self.long(at + 16).store(call_id, Ordering::Relaxed);
            self.long(at + 24).store(total, Ordering::Relaxed);
            if self.version >= 3 {
                // Version 3 added a word after `total` (a request's deadline; 0: none).
                self.long(at + 32).store(0, Ordering::Relaxed);
            }
            // The stamp is keyed with the request ring's key, which the server put at offset 0.
            let key = self.long(0).load(Ordering::Relaxed);
            self.long(at)
                .store((self.tail + 1) ^ key, Ordering::Release);
            self.tail += 64;
        } else {
            // Fields at the start of the line; a tail index publishes the record.
            self.word(at).store(0, Ordering::Relaxed);
            self.word(at + 4).store(flags, Ordering::Relaxed);
            self.long(at + 8).store(call_id, Ordering::Relaxed);
            self.long(at + 16).store(total, Ordering::Relaxed);
            self.tail += 64;
            self.long(REQUEST_TAIL).store(self.tail, Ordering::Release);
        }
        true
    }

    /// Wakes the server the way its protocol version expects.
    fn wake_server(&self) {
        if self.version >= 2 {
            if let Some(server_pipe) = self.pipes.first() {
                let _ = rustix::io::write(server_pipe, &[1]);
            }
        } else {
            // Version 1 passed [region, worker doorbell, client doorbell].
            if let Some(worker_bell) = self.eventfds.first() {
                let _ = rustix::io::write(worker_bell, &1u64.to_ne_bytes());
            }
        }
        self.word(SERVER_PARKED).store(0, Ordering::Relaxed);
    }

    fn hung_up(&self) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            &self.socket,
            rustix::event::PollFlags::RDHUP,
        )];
        let zero = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        rustix::event::poll(&mut fds, Some(&zero)).unwrap_or(0) > 0
    }
}

fn raw_socket() -> OwnedFd {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap()
}

// --- child roles -------------------------------------------------------------------------------

/// An echo server that stops gracefully when its stdin closes. Args: name.
fn server_role(args: &[String]) {
    let server = Server::bind(&args[0]).unwrap();
    let stop = server.shutdown_handle();
    std::thread::spawn(move || {
        common::await_parent();
        stop.shutdown();
    });
    report("ready");
    server
        .serve(|request: &[u8], reply: &mut Vec<u8>| reply.extend_from_slice(request))
        .unwrap();
    report("stopped");
}

/// The echo server in a process where `SIGPIPE` has its default action (kill), as in a C or
/// Python host; Rust's runtime ignores it otherwise. Args: name.
fn server_default_sigpipe(args: &[String]) {
    // Before any thread of ours runs library code.
    // SAFETY: restores the default disposition of one signal; no handler is involved.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    server_role(args);
}

/// Closes its end of the pipe the server wakes it through, says it is parked and sends a request:
/// the server's wake-up for the reply then writes to a pipe nobody reads.
fn pipe_closer(args: &[String]) {
    let mut conn = RawConnection::connect(&args[0]);
    // Version 2 passes [region, write end of the server's pipe, read end of ours].
    conn.pipes.truncate(1);
    request_while_parked(conn)
}

/// Says it is parked, sends one request and wakes the server, then keeps saying it is parked
/// (the server clears the flag each time it wakes us): every reply the server makes is followed
/// by a wake-up write towards us.
fn request_while_parked(mut conn: RawConnection) -> ! {
    conn.word(CLIENT_PARKED).store(1, Ordering::SeqCst);
    assert!(conn.push_empty(FIRST | LAST, 1, 0));
    conn.wake_server();
    report("attacking");
    loop {
        conn.word(CLIENT_PARKED).store(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// The echo server as `serve_async` on a current-thread runtime: one thread for every
/// connection. Stops gracefully when its stdin closes. Args: name.
fn async_server(args: &[String]) {
    let server = Server::bind(&args[0]).unwrap();
    let stop = server.shutdown_handle();
    std::thread::spawn(move || {
        common::await_parent();
        stop.shutdown();
    });
    report("ready");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(server.serve_async(|request: Vec<u8>| async move { request }))
        .unwrap();
    report("stopped");
}

/// Floods the server with requests it must skip unanswered (each withdrawn through the claim
/// word before it is published), never letting the request ring run empty: nothing it does
/// waits for the server, and no reply ever fills its response ring.
fn withdrawn_flood(args: &[String]) {
    let mut conn = RawConnection::connect(&args[0]);
    assert!(conn.version >= 4, "no claim word before protocol version 4");
    report("attacking");
    let mut call = 1u64;
    loop {
        // Whatever room there is, filled at once: the server never finds the ring empty.
        let head = conn.long(REQUEST_HEAD).load(Ordering::Acquire);
        let room = (conn.capacity as u64 - (conn.tail - head)) / 64;
        if room == 0 {
            if conn.hung_up() {
                common::park_until_killed();
            }
            std::hint::spin_loop();
            continue;
        }
        // Withdrawn before they are published (a later call's withdrawal covers the earlier).
        conn.long(CLAIM_WORD)
            .store((call + room - 1) | WITHDRAWN, Ordering::Release);
        for _ in 0..room {
            assert!(conn.push_empty(FIRST | LAST, call, 0));
            call += 1;
        }
        if conn.word(SERVER_PARKED).load(Ordering::Relaxed) != 0 {
            conn.wake_server();
        }
    }
}

/// A server whose workers fail after `calls` answered calls; reports how `serve` ended.
/// Args: name, workers, calls.
fn failing_server(args: &[String]) {
    let server = Server::options()
        .workers(args[1].parse().unwrap())
        .__fail_workers_after(args[2].parse().unwrap())
        .bind(&args[0])
        .unwrap();
    report("ready");
    match server.serve(|request: &[u8], reply: &mut Vec<u8>| reply.extend_from_slice(request)) {
        Ok(()) => report("serve returned Ok"),
        Err(e) => report(&format!("serve failed: {e}")),
    }
}

/// Attack 1: makes every descriptor it was given blocking and full, says it is parked, and sends
/// a request, so that the server's wake-up for the reply is the write that blocks.
fn doorbell_blocker(args: &[String]) {
    let conn = RawConnection::connect(&args[0]);
    for fd in &conn.eventfds {
        rustix::fs::fcntl_setfl(fd, rustix::fs::OFlags::empty()).unwrap();
        rustix::io::write(fd, &(u64::MAX - 1).to_ne_bytes()).unwrap();
    }
    // Our own socket end: blocking, and never read. Our wake pipe is never read either, and the
    // server's is filled to the brim.
    rustix::fs::fcntl_setfl(&conn.socket, rustix::fs::OFlags::empty()).unwrap();
    if let Some(server_pipe) = conn.pipes.first() {
        while rustix::io::write(server_pipe, &[1; 512]).is_ok() {}
    }
    request_while_parked(conn)
}

/// Attack 2: reads every descriptor it was given in a loop, to swallow wake-ups meant for the
/// server's worker.
fn wake_thief(args: &[String]) {
    let conn = RawConnection::connect(&args[0]);
    // Non-blocking reads in a tight loop take a counter the moment it is written.
    let (running, started) = std::sync::mpsc::channel();
    for fd in conn.eventfds.iter().chain(&conn.pipes) {
        let fd = fd.try_clone().unwrap();
        let running = running.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8];
            let _ = running.send(());
            loop {
                let _ = rustix::io::read(&fd, &mut buf);
            }
        });
    }
    let socket = conn.socket.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let _ = running.send(());
        while rustix::net::recv(&socket, &mut buf, RecvFlags::empty()).is_ok_and(|(n, _)| n > 0) {}
    });
    for _ in 0..=conn.eventfds.len() + conn.pipes.len() {
        started.recv().unwrap();
    }
    // Let the server go to sleep first: only a parked worker depends on its wake-ups.
    std::thread::sleep(Duration::from_millis(20));
    report("attacking");
    common::park_until_killed();
}

/// Attack 3: a request made of empty non-final fragments, forever. Reports "dropped" when the
/// server hangs up on it.
fn empty_fragments(args: &[String]) {
    let mut conn = RawConnection::connect(&args[0]);
    let mut flags = FIRST;
    report("attacking");
    loop {
        if !conn.push_empty(flags, 1, 1 << 20) {
            break;
        }
        flags = 0;
        conn.wake_server();
        if conn.hung_up() {
            break;
        }
    }
    report("dropped");
    common::park_until_killed();
}

/// The request ring's claim word (rpc's, on the server's head line; see `rpc::claim`).
const CLAIM_WORD: usize = REQUEST_HEAD + 8;
const WITHDRAWN: u64 = 1 << 63;

/// Writes the claim word and sends requests as a hostile (or unlucky) client could: `garbage`
/// (a value the protocol never writes: the server must drop only this connection), `withdraw`
/// (the client's own withdrawal of call 1: the server skips the call and keeps serving),
/// `withdraw-later` (calls 1 and 2 in the ring, call 2 withdrawn: what an honest client leaves
/// when it dropped the stream of call 1 before the server took it and call 2 timed out; the
/// server skips both), or `huge-id` (a call whose id has the claim word's withdrawn bit: the
/// server must drop the connection). Args: name, what.
fn claim_scribbler(args: &[String]) {
    let mut conn = RawConnection::connect(&args[0]);
    assert!(conn.version >= 4, "the server speaks no claim word");
    let (word, calls): (u64, &[u64]) = match args[1].as_str() {
        "garbage" => (0xdead_beef, &[1]),
        "withdraw" => (1 | WITHDRAWN, &[1]),
        "withdraw-later" => (2 | WITHDRAWN, &[1, 2]),
        "huge-id" => (0, &[WITHDRAWN]),
        other => panic!("no such attack: {other}"),
    };
    conn.long(CLAIM_WORD).store(word, Ordering::Release);
    report("attacking");
    for &call in calls {
        assert!(conn.push_empty(FIRST | LAST, call, 0));
    }
    conn.wake_server();
    while !conn.hung_up() {
        std::thread::sleep(Duration::from_millis(1));
    }
    report("dropped");
    common::park_until_killed();
}

/// Attack 5: keeps `count` silent connections open, re-opening whatever the server closes.
/// Args: name, count.
fn flood(args: &[String]) {
    let address =
        SocketAddrUnix::new_abstract_name(format!("memlink.rpc.{}", args[0]).as_bytes()).unwrap();
    let count: usize = args[1].parse().unwrap();
    let mut open: Vec<OwnedFd> = Vec::new();
    let mut reported = false;
    loop {
        while open.len() < count {
            let socket = raw_socket();
            if rustix::net::connect(&socket, &address).is_ok() {
                open.push(socket);
            }
        }
        if !reported {
            report("flooding");
            reported = true;
        }
        // Drop what the server closed, then open replacements.
        open.retain(|socket| {
            let mut fds = [rustix::event::PollFd::new(
                socket,
                rustix::event::PollFlags::RDHUP | rustix::event::PollFlags::IN,
            )];
            let zero = rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            rustix::event::poll(&mut fds, Some(&zero)).unwrap_or(0) == 0
        });
    }
}

fn flood_as_nobody(args: &[String]) {
    drop_privileges_to_nobody();
    flood(args);
}

/// A descriptor whose last close blocks for up to `SO_LINGER`'s time: a TCP connection to a
/// listener that never accepts or reads, with unsent data queued. Returns it and the listener
/// (which must stay open for the close to keep blocking).
fn lingering_socket() -> (OwnedFd, OwnedFd) {
    use rustix::net::{Ipv4Addr, SocketAddrV4};
    let listener = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    rustix::net::bind(&listener, &SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
    rustix::net::listen(&listener, 1).unwrap();
    let address = rustix::net::getsockname(&listener).unwrap();
    let stream = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    rustix::net::connect(&stream, &address).unwrap();
    rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::from_secs(30))).unwrap();
    rustix::fs::fcntl_setfl(&stream, rustix::fs::OFlags::NONBLOCK).unwrap();
    let chunk = vec![0u8; 1 << 16];
    while rustix::net::send(&stream, &chunk, SendFlags::NOSIGNAL).is_ok() {}
    (stream, listener)
}

/// Tries to hand the server a descriptor whose close blocks, before and after the handshake, and
/// says whether the kernel let it. Args: name.
fn descriptor_passer(args: &[String]) {
    let (stream, _listener) = lingering_socket();
    let mut conn = RawConnection::connect(&args[0]);
    let passed = memlink_send_with_fd(&conn.socket, &stream);
    // And a valid request, so a server that is still well gets to run (and close) things.
    assert!(conn.push_empty(FIRST | LAST, 1, 0));
    conn.wake_server();
    report(if passed { "passed" } else { "refused" });
    // Our own copy of `stream` stays open: closing it would block us, not the server. With the
    // descriptor passed, the server's copy is the last one once we are killed.
    common::park_until_killed();
}

fn kernel_can_refuse_descriptors() -> bool {
    let socket = raw_socket();
    let off: libc::c_int = 0;
    // SAFETY: `socket` is open; the pointer and length describe `off`, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            83, // SO_PASSRIGHTS
            (&raw const off).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

fn memlink_send_with_fd(socket: &OwnedFd, fd: &OwnedFd) -> bool {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [std::os::fd::AsFd::as_fd(fd)];
    assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    rustix::net::sendmsg(
        socket,
        &[std::io::IoSlice::new(&[0x57])],
        &mut control,
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    )
    .is_ok()
}

/// Opens `count` clients and keeps them, idle. Args: name, count.
fn idle_clients(args: &[String]) {
    let count: usize = args[1].parse().unwrap();
    let clients: Vec<Client> = (0..count)
        .map(|_| Client::connect(&args[0]).unwrap())
        .collect();
    report(&format!("connected {}", clients.len()));
    common::park_until_killed();
}

// --- helpers -----------------------------------------------------------------------------------

fn start_server(name: &str) -> ChildProcess {
    let mut server = ChildProcess::spawn("server", &[name]);
    server.expect_line("ready");
    server
}

/// Stops the server gracefully; a stuck worker shows as a watchdog failure here.
fn stop_server(mut server: ChildProcess) {
    server.tell("stop");
    server.expect_line("stopped");
    server.wait_success();
}

/// `calls` calls from an honest client, each after a pause long enough for the server to park,
/// each of which must be answered within a second.
fn honest_calls(name: &str, calls: usize) {
    let client = Client::connect(name).unwrap();
    for i in 0..calls {
        std::thread::sleep(Duration::from_millis(3));
        let request = format!("honest call {i}");
        match client.call_timeout(request.as_bytes(), Duration::from_secs(1)) {
            Ok(reply) => assert_eq!(reply, request.as_bytes()),
            Err(e) => panic!("honest call {i} of {calls} failed: {e}"),
        }
    }
}

/// Memory allocated to the server's connection regions (their memfds' blocks), in KiB, and how
/// many regions it found: what the connections cost the machine, whether or not any process has
/// touched the pages. The server keeps only the mappings, so the files are reached through
/// `/proc/PID/map_files` (which needs root).
fn connection_memory_kib(pid: u32) -> (usize, u64) {
    use std::os::unix::fs::MetadataExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .filter(|line| line.contains("memlink-connection"))
        .filter_map(|line| {
            let range = line.split_whitespace().next()?;
            let file = format!("/proc/{pid}/map_files/{range}");
            Some(std::fs::metadata(file).ok()?.blocks() * 512 / 1024)
        })
        .fold((0, 0), |(n, kib), k| (n + 1, kib + k))
}

// --- the attacks -------------------------------------------------------------------------------

/// Starts a server and the attacker `role`, waits until it says it is attacking, then makes
/// `calls` honest calls beside it and stops the server gracefully (a stuck worker would keep it
/// from stopping).
fn honest_calls_beside_attacker(tag: &str, role: &str, calls: usize) {
    honest_calls_beside_attacker_of("server", tag, role, calls);
}

/// [`honest_calls_beside_attacker`] with the server run as `server_role`.
fn honest_calls_beside_attacker_of(server_role: &str, tag: &str, role: &str, calls: usize) {
    let _watchdog = Watchdog::arm();
    let name = unique_name(tag);
    let mut server = ChildProcess::spawn(server_role, &[&name]);
    server.expect_line("ready");
    let mut attacker = ChildProcess::spawn(role, &[&name]);
    attacker.expect_line("attacking");
    honest_calls(&name, calls);
    stop_server(server);
    attacker.kill_and_reap();
}

/// H3 of the async review: an async server runs each connection as a task; one whose client
/// keeps its request ring full (of requests to skip, so that nothing ever waits) must still let
/// the other connections' tasks (and the dispatcher) run on a current-thread runtime, and stop
/// when the server shuts down.
#[test]
fn a_client_flooding_an_async_server_cannot_starve_its_other_connections() {
    honest_calls_beside_attacker_of("async_server", "hostile-async-flood", "withdrawn_flood", 20);
}

#[test]
fn attack_1_a_client_cannot_block_a_worker_through_its_wake_ups() {
    honest_calls_beside_attacker("hostile-block", "doorbell_blocker", 20);
}

#[test]
fn attack_2_a_client_cannot_swallow_other_clients_wake_ups() {
    // The theft is a race the thief wins some of the time: enough calls that it would win one.
    honest_calls_beside_attacker("hostile-thief", "wake_thief", 40);
}

#[test]
fn a_client_that_closes_its_wake_pipe_cannot_kill_the_server_with_sigpipe() {
    honest_calls_beside_attacker_of(
        "server_default_sigpipe",
        "hostile-sigpipe",
        "pipe_closer",
        10,
    );
}

#[test]
fn attack_3_a_request_of_endless_empty_fragments_is_dropped_as_corrupt() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("hostile-frag");
    let server = start_server(&name);
    let mut attacker = ChildProcess::spawn("empty_fragments", &[&name]);
    attacker.expect_line("attacking");
    attacker.expect_line("dropped");
    honest_calls(&name, 10);
    assert_eq!(server_stats(&name).unwrap().corrupt_disconnects, 1);
    stop_server(server);
    attacker.kill_and_reap();
}

/// The claim word is the client's to write too: garbage in it loses the client its own
/// connection (and nobody else anything); a withdrawal only skips the client's own call.
#[test]
fn a_client_scribbling_on_the_claim_word_only_loses_its_own_connection_or_call() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("hostile-claim");
    let server = start_server(&name);
    let mut attacker = ChildProcess::spawn("claim_scribbler", &[&name, "garbage"]);
    attacker.expect_line("attacking");
    attacker.expect_line("dropped");
    honest_calls(&name, 10);
    let stats = server_stats(&name).unwrap();
    assert_eq!((stats.corrupt_disconnects, stats.expired_calls), (1, 0));
    attacker.kill_and_reap();

    let mut withdrawer = ChildProcess::spawn("claim_scribbler", &[&name, "withdraw"]);
    withdrawer.expect_line("attacking");
    common::with_watchdog("the withdrawn call to be skipped", {
        let name = name.clone();
        move || {
            while server_stats(&name).unwrap().expired_calls != 1 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
    honest_calls(&name, 10);
    let stats = server_stats(&name).unwrap();
    assert_eq!(
        (stats.corrupt_disconnects, stats.calls),
        (1, 20),
        "{stats:?}"
    );
    withdrawer.kill_and_reap();

    // The withdrawal of a later call skips the earlier one too (its caller has left): not
    // taken for corruption.
    let mut withdrawer = ChildProcess::spawn("claim_scribbler", &[&name, "withdraw-later"]);
    withdrawer.expect_line("attacking");
    common::with_watchdog("both withdrawn calls to be skipped", {
        let name = name.clone();
        move || loop {
            let stats = server_stats(&name).unwrap();
            assert_eq!(stats.corrupt_disconnects, 1, "{stats:?}");
            if stats.expired_calls == 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    honest_calls(&name, 10);
    let stats = server_stats(&name).unwrap();
    assert_eq!(
        (stats.corrupt_disconnects, stats.calls),
        (1, 30),
        "{stats:?}"
    );
    withdrawer.kill_and_reap();
    stop_server(server);
}

/// Call ids stay below the claim word's withdrawn bit: a request with a larger one loses the
/// client its connection (and nobody else anything).
#[test]
fn a_call_id_with_the_withdrawn_bit_is_a_protocol_violation() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("hostile-id");
    let server = start_server(&name);
    let mut attacker = ChildProcess::spawn("claim_scribbler", &[&name, "huge-id"]);
    attacker.expect_line("attacking");
    attacker.expect_line("dropped");
    honest_calls(&name, 10);
    let stats = server_stats(&name).unwrap();
    assert_eq!(
        (stats.corrupt_disconnects, stats.calls),
        (1, 10),
        "{stats:?}"
    );
    attacker.kill_and_reap();
    stop_server(server);
}

#[test]
fn a_client_cannot_stall_a_worker_by_passing_a_descriptor_whose_close_blocks() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("hostile-fd");
    let mut server = start_server(&name);
    let mut attacker = ChildProcess::spawn("descriptor_passer", &[&name]);
    match attacker.next_line().as_str() {
        "refused" => {}
        "passed" => {
            // Only a kernel without SO_PASSRIGHTS (Linux < 6.16) may let the descriptor through;
            // then nothing in user space can keep the close from blocking a thread.
            assert!(
                !kernel_can_refuse_descriptors(),
                "the kernel can refuse passed descriptors, but the server accepted one"
            );
            eprintln!("skipped: this kernel cannot refuse passed descriptors (SO_PASSRIGHTS)");
            attacker.kill_and_reap();
            server.kill_and_reap();
            return;
        }
        other => panic!("unexpected report {other}"),
    }
    honest_calls(&name, 10);
    stop_server(server);
    attacker.kill_and_reap();
}

#[test]
fn a_failed_worker_takes_the_server_down_with_an_error_instead_of_leaving_it_half_dead() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("worker-fails");
    let mut server = ChildProcess::spawn("failing_server", &[&name, "2", "3"]);
    server.expect_line("ready");
    let client = Client::connect(&name).unwrap();
    for _ in 0..3 {
        assert_eq!(client.call(b"x").unwrap(), b"x");
    }
    let line = server.next_line();
    assert!(
        line.starts_with("serve failed:") && line.contains("injected failure"),
        "{line}"
    );
    server.wait_success();
    // Nobody is left serving the name (the call never reached a server).
    assert!(matches!(
        client.call(b"after"),
        Err(memlink::Error::NotExecuted { .. } | memlink::Error::NotRunning { .. })
    ));
}

/// Runs the flood `role` (2,000 silent connections, re-opened as the server drops them) against
/// a fresh server; meanwhile every one of 20 honest first connects must succeed.
fn connects_beside_flood(tag: &str, role: &str) {
    let _watchdog = Watchdog::arm();
    let name = unique_name(tag);
    let server = start_server(&name);
    let mut flood = ChildProcess::spawn(role, &[&name, "2000"]);
    flood.expect_line("flooding");
    for _ in 0..20 {
        let client = Client::connect(&name).unwrap();
        assert_eq!(client.call(b"hi").unwrap(), b"hi");
    }
    flood.kill_and_reap();
    stop_server(server);
}

#[test]
fn attack_5_a_flood_of_silent_connections_by_another_user_holds_no_handshake_slot() {
    if !is_root() {
        eprintln!("skipped: needs root to run the flood as another user");
        return;
    }
    connects_beside_flood("hostile-flood-other", "flood_as_nobody");
}

#[test]
fn attack_5_a_flood_of_silent_connections_by_our_own_user_only_evicts_its_own() {
    connects_beside_flood("hostile-flood-same", "flood");
}

#[test]
fn attack_5_idle_connections_do_not_pin_their_rings() {
    if !is_root() {
        eprintln!("skipped: reading another process's map_files needs root");
        return;
    }
    let _watchdog = Watchdog::arm();
    let name = unique_name("hostile-idle");
    let server = start_server(&name);
    let mut idle = ChildProcess::spawn("idle_clients", &[&name, "200"]);
    idle.expect_line("connected 200");
    // Each client's handshake is complete once `connect` returns; give the worker a moment to
    // adopt the last ones and park (touching each region's control page).
    std::thread::sleep(Duration::from_millis(50));
    let (regions, used) = connection_memory_kib(server.pid());
    eprintln!("200 idle connections: {used} KiB of shared memory in {regions} regions");
    assert_eq!(regions, 200);
    assert!(
        used <= 200 * 16,
        "200 idle connections hold {used} KiB of shared memory"
    );
    idle.kill_and_reap();
    stop_server(server);
}

/// A server that refuses its first caller as a real one does, but only once the caller's hello
/// has arrived, and closes without reading it. The kernel then reports the reset to the caller
/// ahead of the refusal queued for it. Args: name.
fn refuser(args: &[String]) {
    let address =
        SocketAddrUnix::new_abstract_name(format!("memlink.rpc.{}", args[0]).as_bytes()).unwrap();
    let listener = raw_socket();
    rustix::net::bind(&listener, &address).unwrap();
    rustix::net::listen(&listener, 8).unwrap();
    report("ready");
    let connection = rustix::net::accept(&listener).unwrap();
    let mut fds = [rustix::event::PollFd::new(
        &connection,
        rustix::event::PollFlags::IN,
    )];
    rustix::event::poll(&mut fds, None).unwrap();
    // Peeked, not read: the hello stays queued, as an unread one does on a busy server.
    let mut hello = [0u8; 16];
    let peeked = rustix::net::recv(&connection, &mut hello, RecvFlags::PEEK).unwrap();
    assert!(peeked.0 >= 8, "a hello of {} bytes", peeked.0);
    let mut refusal = Vec::new();
    refusal.extend_from_slice(b"MLNK");
    refusal.extend_from_slice(&hello[4..8]); // the caller's protocol version
    refusal.extend_from_slice(&1u32.to_le_bytes()); // permission denied
    refusal.extend_from_slice(&(256u32 << 10).to_le_bytes());
    refusal.extend_from_slice(&(64u64 << 20).to_le_bytes());
    refusal.extend_from_slice(&std::process::id().to_le_bytes());
    refusal.extend_from_slice(&0u32.to_le_bytes());
    rustix::net::send(&connection, &refusal, SendFlags::NOSIGNAL).unwrap();
    drop(connection);
    report("refused");
    common::park_until_killed();
}

/// A server that refused us and closed before reading our hello: the caller reports the refusal
/// (the kernel puts the reset ahead of it), not `Disconnected` after retrying until its patience
/// ran out, as callers did on a loaded machine.
#[test]
fn a_refusal_closed_before_our_hello_was_read_is_still_a_refusal() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("refuser");
    let mut refuser = ChildProcess::spawn("refuser", &[&name]);
    refuser.expect_line("ready");
    let result = Client::connect(&name);
    refuser.expect_line("refused");
    match result {
        Err(memlink::Error::PermissionDenied { .. }) => {}
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
}
