//! The transports `memlink bench` and `memlink demo` compare, as echo *servers* that run in a
//! child process (`memlink __peer serve ...`), load-generating *clients* that run in child
//! processes (`memlink __peer client ...`), and in-process round-trippers for latency runs.
//!
//! Every transport does the same exchange: the client sends `size` bytes, the server copies them
//! out and sends the same bytes back, the client copies the reply out. The raw shared-memory floors
//! (spin and futex) do exactly those copies with nothing else, so they bound what any shared-memory
//! design can reach on this machine.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use memlink::{Client, Segment, Server};

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
            Transport::Uds,
            Transport::Pipe,
            Transport::Tcp,
        ]
        .into_iter()
        .find(|t| t.key() == key)
    }
}

// --- raw shared-memory floors ------------------------------------------------------------------

const REQ_SEQ: usize = 0;
const RESP_SEQ: usize = 128;
const STOP: usize = 256;
const DATA: usize = 4096;

fn floor_capacity(size: usize) -> usize {
    size.div_ceil(4096).max(1) * 4096
}

fn floor_segment_size(size: usize) -> usize {
    DATA + 2 * floor_capacity(size)
}

/// Waits for `word` to differ from `old`, by spinning (`sleep == false`) or by futex (`true`).
fn await_change(word: &AtomicU32, old: u32, sleep: bool, stop: &AtomicU32) -> Option<u32> {
    loop {
        let now = word.load(Ordering::Acquire);
        if now != old {
            return Some(now);
        }
        if stop.load(Ordering::Relaxed) != 0 {
            return None;
        }
        if sleep {
            let timeout = rustix::thread::futex::Timespec {
                tv_sec: 0,
                tv_nsec: 100_000_000,
            };
            let _ = rustix::thread::futex::wait(
                word,
                rustix::thread::futex::Flags::empty(),
                old,
                Some(&timeout),
            );
        } else {
            std::hint::spin_loop();
        }
    }
}

fn publish(word: &AtomicU32, value: u32, sleepers: bool) {
    word.store(value, Ordering::Release);
    if sleepers {
        let _ = rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), 1);
    }
}

/// Client end of a raw floor: copies in, flips a sequence word, waits for the echo, copies out.
pub(crate) struct Floor {
    segment: Segment,
    sleep: bool,
    seq: u32,
}

impl Floor {
    pub(crate) fn create(name: &str, size: usize, sleep: bool) -> memlink::Result<Self> {
        Ok(Floor {
            segment: Segment::create(name, floor_segment_size(size))?,
            sleep,
            seq: 0,
        })
    }

    pub(crate) fn stop(&self) {
        if let Ok(stop) = self.segment.atomic_u32(STOP) {
            publish(stop, 1, false);
        }
    }
}

impl RoundTrip for Floor {
    fn round_trip(&mut self, request: &[u8], reply: &mut Vec<u8>) -> io::Result<()> {
        let s = &self.segment;
        let (req, resp, stop) = (
            s.atomic_u32(REQ_SEQ).map_err(other)?,
            s.atomic_u32(RESP_SEQ).map_err(other)?,
            s.atomic_u32(STOP).map_err(other)?,
        );
        s.write(DATA, request).map_err(other)?;
        self.seq = self.seq.wrapping_add(1);
        publish(req, self.seq, self.sleep);
        let mut seen = resp.load(Ordering::Acquire);
        while seen != self.seq {
            seen = await_change(resp, seen, self.sleep, stop).ok_or_else(|| other("stopped"))?;
        }
        reply.resize(request.len(), 0);
        s.read(DATA + floor_capacity(request.len()), reply)
            .map_err(other)
    }
}

fn serve_floor(name: &str, size: usize, sleep: bool) -> io::Result<()> {
    let s = Segment::open(name).map_err(other)?;
    let (req, resp, stop) = (
        s.atomic_u32(REQ_SEQ).map_err(other)?,
        s.atomic_u32(RESP_SEQ).map_err(other)?,
        s.atomic_u32(STOP).map_err(other)?,
    );
    let mut buf = vec![0u8; size];
    let mut last = req.load(Ordering::Acquire);
    ready("")?;
    while let Some(seq) = await_change(req, last, sleep, stop) {
        s.read(DATA, &mut buf).map_err(other)?;
        s.write(DATA + floor_capacity(size), &buf).map_err(other)?;
        publish(resp, seq, sleep);
        last = seq;
    }
    Ok(())
}

// --- stream transports (length-prefixed echo) --------------------------------------------------

fn echo_stream(mut input: impl Read, mut output: impl Write) -> io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 4];
        if input.read_exact(&mut len).is_err() {
            return Ok(()); // peer closed
        }
        buf.resize(u32::from_le_bytes(len) as usize, 0);
        input.read_exact(&mut buf)?;
        output.write_all(&len)?;
        output.write_all(&buf)?;
        output.flush()?;
    }
}

/// Client end of a length-prefixed stream echo.
pub(crate) struct Stream<R, W> {
    reader: R,
    writer: W,
}

impl<R: Read, W: Write> RoundTrip for Stream<R, W> {
    fn round_trip(&mut self, request: &[u8], reply: &mut Vec<u8>) -> io::Result<()> {
        self.writer
            .write_all(&(request.len() as u32).to_le_bytes())?;
        self.writer.write_all(request)?;
        self.writer.flush()?;
        let mut len = [0u8; 4];
        self.reader.read_exact(&mut len)?;
        reply.resize(u32::from_le_bytes(len) as usize, 0);
        self.reader.read_exact(reply)
    }
}

pub(crate) fn uds_address(name: &str) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(format!("memlink-bench.{name}").as_bytes())
}

pub(crate) fn connect_uds(name: &str) -> io::Result<Stream<UnixStream, UnixStream>> {
    let stream = UnixStream::connect_addr(&uds_address(name)?)?;
    Ok(Stream {
        reader: stream.try_clone()?,
        writer: stream,
    })
}

pub(crate) fn connect_tcp(
    port: &str,
) -> io::Result<Stream<std::net::TcpStream, std::net::TcpStream>> {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().map_err(other)?))?;
    stream.set_nodelay(true)?;
    Ok(Stream {
        reader: stream.try_clone()?,
        writer: stream,
    })
}

impl RoundTrip for Client {
    fn round_trip(&mut self, request: &[u8], reply: &mut Vec<u8>) -> io::Result<()> {
        self.call_into(request, reply).map_err(other)
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

/// `memlink __peer serve <transport> <name> <size> <workers>`.
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
        Transport::Spin | Transport::Futex => {
            exit_when_parent_leaves();
            serve_floor(name, size, transport == Transport::Futex)
        }
        Transport::Uds => {
            let listener = UnixListener::bind_addr(&uds_address(name)?)?;
            exit_when_parent_leaves();
            ready("")?;
            for stream in listener.incoming() {
                let stream = stream?;
                std::thread::spawn(move || stream.try_clone().map(|r| echo_stream(r, stream)));
            }
            Ok(())
        }
        Transport::Tcp => {
            let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
            exit_when_parent_leaves();
            ready(&listener.local_addr()?.port().to_string())?;
            for stream in listener.incoming() {
                let stream = stream?;
                stream.set_nodelay(true)?;
                std::thread::spawn(move || stream.try_clone().map(|r| echo_stream(r, stream)));
            }
            Ok(())
        }
        Transport::Pipe => {
            ready("")?;
            echo_stream(io::stdin().lock(), io::stdout().lock())
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
    pub(crate) fn pipe(&mut self) -> io::Result<Stream<ChildStdout, ChildStdin>> {
        match (self.stdout.take(), self.stdin.take()) {
            (Some(reader), Some(writer)) => Ok(Stream { reader, writer }),
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
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- load-generating clients ---------------------------------------------------------------------

/// `memlink __peer client <transport> <address> <size> <calls> <seconds>`: connects, says ready,
/// waits for "go", then runs `calls` round trips (or as many as fit in `seconds` when `calls` is
/// 0), printing `progress N` every 1,000 calls, its latency histogram as `hist NS COUNT` lines, and
/// finally `done CALLS ELAPSED_NS`.
pub(crate) fn client(
    transport: Transport,
    address: &str,
    size: usize,
    calls: u64,
    seconds: f64,
) -> io::Result<()> {
    let mut round_trip: Box<dyn RoundTrip> = match transport {
        Transport::Memlink => {
            Box::new(Client::connect_timeout(address, Duration::from_secs(10)).map_err(other)?)
        }
        Transport::Uds => Box::new(connect_uds(address)?),
        Transport::Tcp => Box::new(connect_tcp(address)?),
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
    let request = vec![0xa5u8; size];
    let mut reply = Vec::with_capacity(size);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(other)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut out = io::stdout().lock();
    let mut done = 0u64;
    while if calls > 0 {
        done < calls
    } else {
        Instant::now() < deadline
    } {
        let t = Instant::now();
        round_trip.round_trip(&request, &mut reply)?;
        histogram.saturating_record(t.elapsed().as_nanos() as u64);
        done += 1;
        if calls > 0 && done.is_multiple_of(1000) {
            writeln!(out, "progress {done}")?;
            out.flush()?;
        }
    }
    let elapsed = started.elapsed().as_nanos();
    for v in histogram.iter_recorded() {
        writeln!(out, "hist {} {}", v.value_iterated_to(), v.count_at_value())?;
    }
    writeln!(out, "done {done} {elapsed}")?;
    out.flush()
}

/// What a load client reported.
pub(crate) struct ClientReport {
    pub(crate) calls: u64,
    pub(crate) elapsed: Duration,
}

/// A load to generate: `clients` processes each doing `calls` round trips of `size` bytes (or, if
/// `calls` is 0, as many as fit in `seconds`).
pub(crate) struct Load<'a> {
    pub(crate) transport: Transport,
    pub(crate) address: &'a str,
    pub(crate) clients: usize,
    pub(crate) size: usize,
    pub(crate) calls: u64,
    pub(crate) seconds: f64,
}

/// Runs a load's client processes at once and merges their histograms into `histogram`.
/// `on_progress` sees the total calls done so far.
pub(crate) fn run_clients(
    load: &Load<'_>,
    histogram: &mut Histogram<u64>,
    mut on_progress: impl FnMut(u64),
) -> io::Result<Vec<ClientReport>> {
    let clients = load.clients;
    let args = [
        "client".to_owned(),
        load.transport.key().to_owned(),
        load.address.to_owned(),
        load.size.to_string(),
        load.calls.to_string(),
        load.seconds.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut peers = (0..clients)
        .map(|_| PeerProcess::spawn(&args))
        .collect::<io::Result<Vec<_>>>()?;
    for p in &mut peers {
        p.say("go")?;
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
    for (index, line) in rx {
        let mut fields = line.split_whitespace();
        match (fields.next(), fields.next(), fields.next()) {
            (Some("progress"), Some(n), _) => {
                progress[index] = n.parse().unwrap_or(0);
                on_progress(progress.iter().sum());
            }
            (Some("hist"), Some(value), Some(count)) => {
                let (value, count) = (value.parse().unwrap_or(0), count.parse().unwrap_or(0));
                histogram.saturating_record_n(value, count);
            }
            (Some("done"), Some(n), Some(ns)) => {
                let calls = n.parse().unwrap_or(0);
                progress[index] = calls;
                on_progress(progress.iter().sum());
                reports[index] = Some(ClientReport {
                    calls,
                    elapsed: Duration::from_nanos(ns.parse().unwrap_or(0)),
                });
            }
            _ => {}
        }
    }
    for r in readers {
        let _ = r.join();
    }
    reports
        .into_iter()
        .map(|r| r.ok_or_else(|| other("a load client died before reporting")))
        .collect()
}
