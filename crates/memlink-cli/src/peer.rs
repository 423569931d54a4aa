//! The transports `memlink bench rpc` and `memlink demo` compare, as echo *servers* that run in a
//! child process (`memlink __peer serve ...`), load-generating *clients* that run in child
//! processes (`memlink __peer client ...`), and in-process round-trippers for latency runs.
//!
//! Every transport does the same exchange: the client sends `size` bytes, the server copies them
//! out and sends the same bytes back, the client copies the reply out and checks it. The Unix
//! socket, pipe and TCP baselines share one wire ([`crate::framing`]); the shared-memory floors
//! are in [`crate::rpc_floor`].

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use hdrhistogram::Histogram;
use memlink::{Client, Server};

use crate::framing::{self, Framed};
use crate::rpc_floor::{self, FloorClient, Waiting};

/// Something that can do one echo round trip.
pub(crate) trait RoundTrip {
    fn round_trip(&mut self, request: &[u8], reply: &mut Vec<u8>) -> io::Result<()>;
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// The transports, by their command-line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Memlink,
    Spin,
    Futex,
    Sleeping,
    Uds,
    Pipe,
    Tcp,
}

impl Transport {
    pub(crate) fn key(self) -> &'static str {
        match self {
            Transport::Memlink => "memlink",
            Transport::Spin => "spin",
            Transport::Futex => "futex",
            Transport::Sleeping => "sleeping",
            Transport::Uds => "uds",
            Transport::Pipe => "pipe",
            Transport::Tcp => "tcp",
        }
    }

    pub(crate) fn parse(key: &str) -> Option<Self> {
        [
            Transport::Memlink,
            Transport::Spin,
            Transport::Futex,
            Transport::Sleeping,
            Transport::Uds,
            Transport::Pipe,
            Transport::Tcp,
        ]
        .into_iter()
        .find(|t| t.key() == key)
    }

    /// How a floor transport waits.
    fn waiting(self) -> Option<Waiting> {
        match self {
            Transport::Spin => Some(Waiting::Spin),
            Transport::Futex => Some(Waiting::Futex),
            Transport::Sleeping => Some(Waiting::Memlink),
            _ => None,
        }
    }
}

impl RoundTrip for Framed {
    fn round_trip(&mut self, request: &[u8], reply: &mut Vec<u8>) -> io::Result<()> {
        self.send(request)?;
        self.recv_into(reply)
    }
}

impl RoundTrip for FloorClient {
    fn round_trip(&mut self, request: &[u8], reply: &mut Vec<u8>) -> io::Result<()> {
        FloorClient::round_trip(self, request, reply)
    }
}

impl RoundTrip for Client {
    fn round_trip(&mut self, request: &[u8], reply: &mut Vec<u8>) -> io::Result<()> {
        self.call_into(request, reply).map_err(other)
    }
}

/// A floor of `size` bytes waiting as `transport` says, with its server running in a child
/// process on `cpu` (if given). The server is killed when the returned process is dropped.
pub(crate) fn spawn_floor(
    transport: Transport,
    size: usize,
    cpu: Option<usize>,
) -> io::Result<(FloorClient, PeerProcess)> {
    let waiting = transport
        .waiting()
        .ok_or_else(|| other(format!("{} is not a floor", transport.key())))?;
    let floor = FloorClient::create(size, waiting)?;
    let (inheritable, number) = floor.region().inheritable()?;
    let server = PeerProcess::spawn_on(
        cpu,
        &[
            "serve",
            transport.key(),
            &number.to_string(),
            &size.to_string(),
            "1",
        ],
    );
    // The child has its copy (or failed to start): ours must not leak into later children.
    drop(inheritable);
    Ok((floor, server?))
}

/// The request of call `seq`: `request` with the call's number in its first bytes (as many of
/// the 8 as fit), so that a reply to another call never passes for this one's.
pub(crate) fn number_request(request: &mut [u8], seq: u64) {
    let n = request.len().min(8);
    request[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
}

/// Checks that `reply` is the echo of `request` (length and every byte).
pub(crate) fn check_reply(what: &str, seq: u64, request: &[u8], reply: &[u8]) -> io::Result<()> {
    if reply == request {
        return Ok(());
    }
    let first_difference = request.iter().zip(reply).position(|(a, b)| a != b);
    Err(other(format!(
        "{what}: wrong reply to call {seq}: {} bytes for a {}-byte request{}",
        reply.len(),
        request.len(),
        first_difference.map_or_else(String::new, |at| format!(", first wrong byte at {at}")),
    )))
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process on this machine.
pub(crate) fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).wrapping_mul(1_000_000_000) + t.tv_nsec as u64
}

/// Sleeps until `CLOCK_MONOTONIC` reads `at` (ns).
fn sleep_until(at: u64) {
    let now = monotonic_ns();
    if at > now {
        std::thread::sleep(Duration::from_nanos(at - now));
    }
}

// --- the peer process ----------------------------------------------------------------------------

pub(crate) fn ready(detail: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "ready {detail}")?;
    out.flush()
}

/// Ends the process when the parent closes our stdin (or dies).
pub(crate) fn exit_when_parent_leaves() {
    std::thread::spawn(|| {
        let _ = io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
}

/// `memlink __peer serve <transport> <name> <size> <workers>`; for a floor, `name` is the number
/// of the inherited descriptor of its region.
pub(crate) fn serve(
    transport: Transport,
    name: &str,
    size: usize,
    workers: usize,
) -> io::Result<()> {
    match transport {
        Transport::Memlink => {
            // One user runs the whole benchmark, up to a thousand connections at once.
            let server = Server::options()
                .workers(workers)
                .max_clients(4096)
                .max_clients_per_uid(4096)
                .bind(name)
                .map_err(other)?;
            exit_when_parent_leaves();
            ready("")?;
            server
                .serve(|request: &[u8], reply: &mut Vec<u8>| reply.extend_from_slice(request))
                .map_err(other)
        }
        Transport::Spin | Transport::Futex | Transport::Sleeping => {
            exit_when_parent_leaves();
            let fd = name
                .parse()
                .map_err(|_| other(format!("bad floor descriptor {name}")))?;
            let waiting = transport.waiting().ok_or_else(|| other("not a floor"))?;
            rpc_floor::serve(fd, size, waiting, || ready(""))
        }
        Transport::Uds => {
            let listener = UnixListener::bind_addr(&framing::uds_address(name)?)?;
            exit_when_parent_leaves();
            ready("")?;
            for stream in listener.incoming() {
                let framed = Framed::unix(stream?, false)?;
                std::thread::spawn(move || framed.echo_until_closed());
            }
            Ok(())
        }
        Transport::Tcp => {
            let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
            exit_when_parent_leaves();
            ready(&listener.local_addr()?.port().to_string())?;
            for stream in listener.incoming() {
                let framed = Framed::tcp(stream?)?;
                std::thread::spawn(move || framed.echo_until_closed());
            }
            Ok(())
        }
        Transport::Pipe => {
            // Our own descriptors for standard input and output: no locked, line-buffered
            // `Stdout` between the echo and the pipe.
            let reader = io::stdin().as_fd().try_clone_to_owned()?;
            let writer = io::stdout().as_fd().try_clone_to_owned()?;
            ready("")?;
            Framed::pipes(reader, writer).echo_until_closed()
        }
    }
}

/// A child process of ours, killed and reaped when dropped.
pub(crate) struct PeerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    /// What the peer said after "ready" (e.g. its TCP port).
    pub(crate) detail: String,
}

/// Environment variable telling a peer process which CPU to pin itself to.
pub(crate) const PIN_VAR: &str = "MEMLINK_PEER_CPU";

/// Restricts the calling thread (and threads it starts later) to `cpus`.
pub(crate) fn pin_to(cpus: &[usize]) -> io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    for &cpu in cpus {
        set.set(cpu);
    }
    rustix::thread::sched_setaffinity(None, &set).map_err(io::Error::from)
}

/// Pins this process as its parent asked, if it did.
pub(crate) fn pin_as_asked() -> io::Result<()> {
    match std::env::var(PIN_VAR).ok().and_then(|v| v.parse().ok()) {
        Some(cpu) => pin_to(&[cpu]),
        None => Ok(()),
    }
}

impl PeerProcess {
    pub(crate) fn spawn(args: &[&str]) -> io::Result<Self> {
        Self::spawn_on(None, args)
    }

    /// Spawns a peer that pins itself to `cpu`, if given.
    pub(crate) fn spawn_on(cpu: Option<usize>, args: &[&str]) -> io::Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        match cpu {
            Some(cpu) => command.env(PIN_VAR, cpu.to_string()),
            None => command.env_remove(PIN_VAR),
        };
        let mut child = command
            .arg("__peer")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take();
        // Read the ready line byte by byte: for the pipe transport the same stdout then carries
        // data, which a buffered reader could swallow.
        let mut line = Vec::new();
        if let Some(out) = stdout.as_mut() {
            let mut byte = [0u8; 1];
            while out.read(&mut byte)? == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        let detail = line
            .strip_prefix("ready")
            .ok_or_else(|| other(format!("peer failed to start: {line:?}")))?;
        Ok(PeerProcess {
            child,
            stdin,
            stdout,
            detail: detail.trim().to_owned(),
        })
    }

    /// The peer's stdin and stdout as a length-prefixed stream (pipe transport).
    pub(crate) fn pipe(&mut self) -> io::Result<Framed> {
        match (self.stdout.take(), self.stdin.take()) {
            (Some(reader), Some(writer)) => {
                Ok(Framed::pipes(OwnedFd::from(reader), OwnedFd::from(writer)))
            }
            _ => Err(other("pipe already taken")),
        }
    }

    pub(crate) fn say(&mut self, line: &str) -> io::Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| other("stdin taken"))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()
    }

    pub(crate) fn lines(&mut self) -> io::Result<io::Lines<BufReader<ChildStdout>>> {
        Ok(BufReader::new(self.stdout.take().ok_or_else(|| other("stdout taken"))?).lines())
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the peer exited, if it has.
    pub(crate) fn try_exit_status(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits for the peer to exit (closing its stdin first) and returns how it did.
    pub(crate) fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        self.stdin.take();
        self.child.wait()
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- load-generating clients ---------------------------------------------------------------------

/// When a load's clients start and which of their calls count (`CLOCK_MONOTONIC` ns): every
/// client starts at `start`, and the calls that complete within `[from, to]` (the same window for
/// all) are counted and timed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub(crate) start: u64,
    pub(crate) from: u64,
    pub(crate) to: u64,
}

/// `memlink __peer client <transport> <address> <size> <calls>`: connects, says ready, waits for
/// `go START FROM TO` (see [`Window`]), sleeps until START, then makes `calls` calls (or, if
/// `calls` is 0, calls until TO), each request numbered and each reply checked (length and every
/// byte: a wrong one ends the client with an error). Prints `progress N` every 1,000 calls (when
/// `calls` is given), the latency histogram of the calls completed within the window as `hist NS
/// COUNT` lines, and finally `done CALLS COUNTED LAST_NS` (all calls, those in the window, when
/// the last completed).
pub(crate) fn client(
    transport: Transport,
    address: &str,
    size: usize,
    calls: u64,
) -> io::Result<()> {
    let mut round_trip: Box<dyn RoundTrip> = match transport {
        Transport::Memlink => {
            Box::new(Client::connect_timeout(address, Duration::from_secs(10)).map_err(other)?)
        }
        Transport::Uds => Box::new(framing::connect_uds(address)?),
        Transport::Tcp => Box::new(framing::connect_tcp(address)?),
        other_transport => {
            return Err(other(format!(
                "{} has no load client",
                other_transport.key()
            )));
        }
    };
    ready("")?;
    let mut go = String::new();
    io::stdin().read_line(&mut go)?;
    let window = match go.split_whitespace().collect::<Vec<_>>()[..] {
        ["go", start, from, to] => Window {
            start: start.parse().map_err(other)?,
            from: from.parse().map_err(other)?,
            to: to.parse().map_err(other)?,
        },
        _ => return Err(other(format!("expected go START FROM TO, got {go:?}"))),
    };
    let mut request = vec![0xa5u8; size];
    let mut reply = Vec::with_capacity(size);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(other)?;
    let mut out = io::stdout().lock();
    let (mut done, mut counted, mut last) = (0u64, 0u64, window.start);
    let what = transport.key();
    sleep_until(window.start);
    loop {
        if if calls > 0 {
            done >= calls
        } else {
            last >= window.to
        } {
            break;
        }
        number_request(&mut request, done);
        let sent = monotonic_ns();
        round_trip.round_trip(&request, &mut reply)?;
        last = monotonic_ns();
        check_reply(what, done, &request, &reply)?;
        done += 1;
        if (window.from..=window.to).contains(&last) {
            counted += 1;
            histogram.saturating_record(last.saturating_sub(sent).max(1));
        }
        if calls > 0 && done.is_multiple_of(1000) {
            writeln!(out, "progress {done}")?;
            out.flush()?;
        }
    }
    for v in histogram.iter_recorded() {
        writeln!(out, "hist {} {}", v.value_iterated_to(), v.count_at_value())?;
    }
    writeln!(out, "done {done} {counted} {last}")?;
    out.flush()
}

/// What a load client reported.
pub(crate) struct ClientReport {
    /// Calls made.
    pub(crate) calls: u64,
    /// Calls completed within the window.
    pub(crate) counted: u64,
    /// When its last call completed (`CLOCK_MONOTONIC` ns).
    pub(crate) last: u64,
}

/// A load to generate: `clients` processes each doing `calls` round trips of `size` bytes (all
/// counted), or, if `calls` is 0, calling for `warmup` and then for `seconds`, only the calls
/// completed in those `seconds` (one window common to all clients) counted.
pub(crate) struct Load<'a> {
    pub(crate) transport: Transport,
    pub(crate) address: &'a str,
    pub(crate) clients: usize,
    pub(crate) size: usize,
    pub(crate) calls: u64,
    pub(crate) warmup: Duration,
    pub(crate) seconds: f64,
}

/// What a load's clients did together.
pub(crate) struct LoadOutcome {
    pub(crate) reports: Vec<ClientReport>,
    pub(crate) window: Window,
}

impl LoadOutcome {
    /// Calls counted over all clients.
    pub(crate) fn counted(&self) -> u64 {
        self.reports.iter().map(|r| r.counted).sum()
    }

    /// The common window's length: `[from, to]` for a timed load; for a load of a number of
    /// calls, from the common start to the last client's last call.
    pub(crate) fn seconds(&self) -> f64 {
        let end = if self.window.to == u64::MAX {
            self.reports.iter().map(|r| r.last).max().unwrap_or(0)
        } else {
            self.window.to
        };
        end.saturating_sub(self.window.from) as f64 / 1e9
    }

    /// Calls per second over the common window, all clients together.
    pub(crate) fn calls_per_second(&self) -> f64 {
        self.counted() as f64 / self.seconds().max(1e-9)
    }

    /// The fewest and the most calls one client had counted.
    pub(crate) fn slowest_fastest(&self) -> (u64, u64) {
        let counts = self.reports.iter().map(|r| r.counted);
        (counts.clone().min().unwrap_or(0), counts.max().unwrap_or(0))
    }
}

/// Runs a load's client processes, all started at one instant, and merges their histograms into
/// `histogram`. `on_progress` sees the total calls done so far. A client that fails (a wrong reply
/// included) fails the load.
pub(crate) fn run_clients(
    load: &Load<'_>,
    histogram: &mut Histogram<u64>,
    mut on_progress: impl FnMut(u64),
) -> io::Result<LoadOutcome> {
    let clients = load.clients;
    let args = [
        "client".to_owned(),
        load.transport.key().to_owned(),
        load.address.to_owned(),
        load.size.to_string(),
        load.calls.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut peers = (0..clients)
        .map(|_| PeerProcess::spawn(&args))
        .collect::<io::Result<Vec<_>>>()?;
    // Every client is connected and waiting: give them a start far enough ahead that each has
    // read its "go" and gone to sleep until then.
    let start = monotonic_ns() + 20_000_000 + 1_000_000 * clients as u64;
    let window = if load.calls > 0 {
        Window {
            start,
            from: start,
            to: u64::MAX,
        }
    } else {
        let from = start + load.warmup.as_nanos() as u64;
        Window {
            start,
            from,
            to: from + (load.seconds * 1e9) as u64,
        }
    };
    for p in &mut peers {
        p.say(&format!(
            "go {} {} {}",
            window.start, window.from, window.to
        ))?;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let mut readers = Vec::new();
    for (index, peer) in peers.iter_mut().enumerate() {
        let lines = peer.lines()?;
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if tx.send((index, line)).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    let mut progress = vec![0u64; clients];
    let mut reports: Vec<Option<ClientReport>> = (0..clients).map(|_| None).collect();
    let number = |field: Option<&str>| -> io::Result<u64> {
        field
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| other("a load client reported a malformed line"))
    };
    for (index, line) in rx {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("progress") => {
                progress[index] = number(fields.next())?;
                on_progress(progress.iter().sum());
            }
            Some("hist") => {
                let (value, count) = (number(fields.next())?, number(fields.next())?);
                histogram.saturating_record_n(value, count);
            }
            Some("done") => {
                let report = ClientReport {
                    calls: number(fields.next())?,
                    counted: number(fields.next())?,
                    last: number(fields.next())?,
                };
                progress[index] = report.calls;
                on_progress(progress.iter().sum());
                reports[index] = Some(report);
            }
            _ => return Err(other(format!("a load client said {line:?}"))),
        }
    }
    for r in readers {
        let _ = r.join();
    }
    let mut complete = Vec::with_capacity(clients);
    for (report, peer) in reports.into_iter().zip(&mut peers) {
        match report {
            Some(report) => complete.push(report),
            None => {
                return Err(other(format!(
                    "a {} load client failed ({}); its error is above",
                    load.transport.key(),
                    peer.wait()?
                )));
            }
        }
    }
    Ok(LoadOutcome {
        reports: complete,
        window,
    })
}
