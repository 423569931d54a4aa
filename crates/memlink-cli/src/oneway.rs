//! The one-way transports `memlink bench duplex` and `memlink bench stream` compare: memlink's
//! [`Duplex`] and [`Client::call_stream`], a Unix domain socket, and the shared-memory ring floor
//! ([`crate::floor`]). The sender always runs in a child process (`memlink __peer oneway ...` or
//! `memlink __peer stream-serve ...`), the receiver in the benchmark's own process.
//!
//! Every message carries its sequence number in its first 8 bytes and, where the benchmark needs
//! one, the sender's `CLOCK_MONOTONIC` reading (ns) in the next 8: both processes read the same
//! clock, so the receiver can tell when a message left.

use std::io::{self, IoSlice, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use memlink::{Client, Duplex, ReplyStream, Server, StreamSink};

use crate::floor::{self, Consumer, Producer};
use crate::peer::{self, PeerProcess};

/// Bytes of each ring (per direction) of memlink's duplex channel by default, and of the floor's.
pub(crate) const RING_CAPACITY: usize = 256 << 10;
/// Socket buffer size asked for on both ends of the Unix socket (the default maximum that an
/// unprivileged process may set, `net.core.wmem_max`, is 4 MiB on most systems).
const SOCKET_BUFFER: usize = 4 << 20;
/// What the batched socket sender collects before it writes.
const SOCKET_BATCH: usize = 64 << 10;
/// What the socket receiver reads at most at once while messages are small.
const SOCKET_READ: usize = 256 << 10;
/// Messages at least this large are read from the socket straight into the caller's buffer.
const SOCKET_DIRECT: usize = 4 << 10;
/// Longest a message may be (lengths read from a peer are checked against it).
const MAX_MESSAGE: usize = 1 << 30;
/// How long to wait for a peer to pair up or connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process on this machine.
pub(crate) fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).wrapping_mul(1_000_000_000) + t.tv_nsec as u64
}

fn word(message: &[u8], at: usize) -> u64 {
    message
        .get(at..at + 8)
        .and_then(|w| w.try_into().ok())
        .map_or(u64::MAX, u64::from_le_bytes)
}

/// Checks that `message` is message `seq` of `size` bytes.
fn check(message: &[u8], size: usize, seq: u64) -> io::Result<()> {
    if message.len() != size || word(message, 0) != seq {
        return Err(other(format!(
            "expected message {seq} of {size} bytes, received message {} of {} bytes",
            word(message, 0),
            message.len()
        )));
    }
    Ok(())
}

/// The transports, by their command-line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Floor,
    Duplex,
    Uds,
    UdsBatched,
}

impl Kind {
    pub(crate) fn key(self) -> &'static str {
        match self {
            Kind::Floor => "floor",
            Kind::Duplex => "duplex",
            Kind::Uds => "uds",
            Kind::UdsBatched => "uds-batched",
        }
    }

    pub(crate) fn parse(key: &str) -> Option<Self> {
        [Kind::Floor, Kind::Duplex, Kind::Uds, Kind::UdsBatched]
            .into_iter()
            .find(|k| k.key() == key)
    }
}

/// Both directions of a connection between the benchmark and its child.
pub(crate) trait Channel {
    fn send(&mut self, message: &[u8]) -> io::Result<()>;
    /// Receives the next message into `message` (its old contents are replaced).
    fn recv_into(&mut self, message: &mut Vec<u8>) -> io::Result<()>;
    /// Writes out whatever a batching sender still holds.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Channel for Duplex {
    fn send(&mut self, message: &[u8]) -> io::Result<()> {
        Duplex::send(self, message).map_err(other)
    }

    fn recv_into(&mut self, message: &mut Vec<u8>) -> io::Result<()> {
        Duplex::recv_into(self, message).map_err(other)
    }
}

/// The floor: one ring per direction in one region.
struct FloorChannel {
    tx: Producer,
    rx: Consumer,
}

impl Channel for FloorChannel {
    fn send(&mut self, message: &[u8]) -> io::Result<()> {
        self.tx.send(message)
    }

    fn recv_into(&mut self, message: &mut Vec<u8>) -> io::Result<()> {
        self.rx.recv_into(message)
    }
}

/// A Unix stream socket carrying messages as a 4-byte length and the payload. The sender writes
/// each message with one `writev` of both (or, batching, collects them and writes 64 KiB at a
/// time); the receiver reads up to 256 KiB at once while messages are small and takes them out of
/// that buffer, and reads a large message's payload straight into the caller's buffer (a length
/// read alone, then the payload: no second copy).
struct UdsChannel {
    stream: UnixStream,
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    /// Whether the last message was small (the next read may then take many at once).
    small: bool,
    batch: Option<Vec<u8>>,
}

impl UdsChannel {
    fn new(stream: UnixStream, batched: bool) -> io::Result<Self> {
        rustix::net::sockopt::set_socket_send_buffer_size(&stream, SOCKET_BUFFER)?;
        rustix::net::sockopt::set_socket_recv_buffer_size(&stream, SOCKET_BUFFER)?;
        Ok(UdsChannel {
            stream,
            buffer: vec![0; SOCKET_READ],
            start: 0,
            end: 0,
            small: true,
            batch: batched.then(|| Vec::with_capacity(SOCKET_BATCH + 64)),
        })
    }

    /// Makes sure `need` bytes are buffered (`need` at most the buffer's size).
    fn fill(&mut self, need: usize) -> io::Result<()> {
        if self.end - self.start >= need {
            return Ok(());
        }
        if self.start + need > self.buffer.len() || self.start == self.end {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // While messages are large, read only what is needed: their payloads go straight to
        // the caller.
        let limit = if self.small {
            self.buffer.len()
        } else {
            self.start + need
        };
        while self.end - self.start < need {
            let n = self.stream.read(&mut self.buffer[self.end..limit])?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.end += n;
        }
        Ok(())
    }
}

impl Channel for UdsChannel {
    fn send(&mut self, message: &[u8]) -> io::Result<()> {
        let header = u32::try_from(message.len()).map_err(other)?.to_le_bytes();
        if let Some(batch) = &mut self.batch {
            batch.extend_from_slice(&header);
            batch.extend_from_slice(message);
            if batch.len() >= SOCKET_BATCH {
                self.stream.write_all(batch)?;
                batch.clear();
            }
            return Ok(());
        }
        let mut slices = [IoSlice::new(&header), IoSlice::new(message)];
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            let n = self.stream.write_vectored(slices)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut slices, n);
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(batch) = &mut self.batch {
            self.stream.write_all(batch)?;
            batch.clear();
        }
        Ok(())
    }

    fn recv_into(&mut self, message: &mut Vec<u8>) -> io::Result<()> {
        self.fill(4)?;
        let mut header = [0u8; 4];
        header.copy_from_slice(&self.buffer[self.start..self.start + 4]);
        self.start += 4;
        let len = u32::from_le_bytes(header) as usize;
        if len > MAX_MESSAGE {
            return Err(other(format!("a socket message of {len} bytes")));
        }
        self.small = len < SOCKET_DIRECT;
        if self.small {
            self.fill(len)?;
            message.clear();
            message.extend_from_slice(&self.buffer[self.start..self.start + len]);
            self.start += len;
            return Ok(());
        }
        // Sized without zeroing when the buffer is reused for messages of one size.
        if message.len() > len {
            message.truncate(len);
        } else {
            message.resize(len, 0);
        }
        let buffered = (self.end - self.start).min(len);
        message[..buffered].copy_from_slice(&self.buffer[self.start..self.start + buffered]);
        self.start += buffered;
        self.stream.read_exact(&mut message[buffered..])
    }
}

/// Items of a memlink stream, received through the channel interface.
pub(crate) struct StreamChannel<'a, 'c>(pub(crate) &'a mut ReplyStream<'c>);

impl Channel for StreamChannel<'_, '_> {
    fn send(&mut self, _message: &[u8]) -> io::Result<()> {
        Err(other("a reply stream only receives"))
    }

    fn recv_into(&mut self, message: &mut Vec<u8>) -> io::Result<()> {
        if self.0.next_into(message).map_err(other)? {
            Ok(())
        } else {
            Err(other("the stream ended early"))
        }
    }
}

// --- the benchmark's side ------------------------------------------------------------------------

/// What the benchmark asks its child to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Send `count` messages as fast as it can, once told "go".
    Send,
    /// Answer each of `count` 16-byte pings with a `size`-byte message stamped as it leaves.
    Pong,
}

impl Role {
    fn key(self) -> &'static str {
        match self {
            Role::Send => "send",
            Role::Pong => "pong",
        }
    }
}

/// A channel to a child process, which is killed and reaped when this is dropped (after the
/// channel is closed).
pub(crate) struct Connection {
    pub(crate) channel: Box<dyn Channel>,
    pub(crate) peer: PeerProcess,
}

/// Starts a child on `cpu` (if given) doing `role` over `kind` with messages of `size` bytes,
/// and connects to it.
pub(crate) fn connect(
    kind: Kind,
    role: Role,
    size: usize,
    count: u64,
    cpu: Option<usize>,
) -> io::Result<Connection> {
    let tag = format!("{}-{}-{size}", kind.key(), role.key());
    let name = crate::bench::unique(&tag);
    let (size, count) = (size.to_string(), count.to_string());
    let spawn = |address: &str| {
        PeerProcess::spawn_on(
            cpu,
            &["oneway", role.key(), kind.key(), address, &size, &count],
        )
    };
    match kind {
        Kind::Floor => {
            let region = floor::create(RING_CAPACITY)?;
            let (inheritable, number) = region.inheritable()?;
            let peer = spawn(&format!("{number}/{RING_CAPACITY}"));
            drop(inheritable);
            let peer = peer?;
            let region = Rc::new(region);
            let channel = FloorChannel {
                tx: Producer::new(region.clone(), 0, RING_CAPACITY)?,
                rx: Consumer::new(region, 1, RING_CAPACITY)?,
            };
            Ok(Connection {
                channel: Box::new(channel),
                peer,
            })
        }
        Kind::Duplex => {
            // The child says it is ready before it opens: each open waits for the other.
            let peer = spawn(&name)?;
            let duplex = Duplex::open_timeout(&name, CONNECT_TIMEOUT).map_err(other)?;
            Ok(Connection {
                channel: Box::new(duplex),
                peer,
            })
        }
        Kind::Uds | Kind::UdsBatched => {
            let listener = UnixListener::bind_addr(&peer::uds_address(&name)?)?;
            // The child connects before it says it is ready, so the connection is waiting.
            let peer = spawn(&name)?;
            listener.set_nonblocking(true)?;
            let (stream, _) = listener.accept()?;
            stream.set_nonblocking(false)?;
            Ok(Connection {
                channel: Box::new(UdsChannel::new(stream, kind == Kind::UdsBatched)?),
                peer,
            })
        }
    }
}

/// Receives `count` messages of `size` bytes numbered from 0, checking each; returns the
/// nanoseconds from the sender's clock reading just before its first send (stamped in message 0)
/// to ours just after the last message was checked.
pub(crate) fn receive_all(channel: &mut dyn Channel, size: usize, count: u64) -> io::Result<u64> {
    let mut message = Vec::with_capacity(size);
    let mut started = 0;
    for seq in 0..count {
        channel.recv_into(&mut message)?;
        check(&message, size, seq)?;
        if seq == 0 {
            started = word(&message, 8);
        }
    }
    Ok(monotonic_ns().saturating_sub(started))
}

/// Sends `warmup + samples` pings and records, for each answer after the warm-up, the ns from
/// the child's clock reading just before it sent the answer to ours just after we received and
/// checked it.
pub(crate) fn ping_pong(
    channel: &mut dyn Channel,
    size: usize,
    warmup: u64,
    samples: u64,
    histogram: &mut Histogram<u64>,
) -> io::Result<()> {
    let mut ping = [0u8; 16];
    let mut pong = Vec::with_capacity(size);
    for seq in 0..warmup + samples {
        ping[..8].copy_from_slice(&seq.to_le_bytes());
        channel.send(&ping)?;
        channel.flush()?;
        channel.recv_into(&mut pong)?;
        let arrived = monotonic_ns();
        check(&pong, size, seq)?;
        if seq >= warmup {
            histogram.saturating_record(arrived.saturating_sub(word(&pong, 8)).max(1));
        }
    }
    Ok(())
}

// --- the child's side ----------------------------------------------------------------------------

/// Blocks until the parent closes our stdin (it is done with us), then returns.
fn until_parent_leaves() -> io::Result<()> {
    io::stdin().read_to_end(&mut Vec::new()).map(|_| ())
}

/// `memlink __peer oneway <role> <transport> <address> <size> <count>`.
pub(crate) fn child(
    role: &str,
    kind: &str,
    address: &str,
    size: usize,
    count: u64,
) -> io::Result<()> {
    let kind = Kind::parse(kind).ok_or_else(|| other(format!("unknown transport {kind}")))?;
    if size < 16 {
        return Err(other("messages must be at least 16 bytes"));
    }
    let mut channel: Box<dyn Channel> = match kind {
        Kind::Floor => {
            let (fd, capacity) = address
                .split_once('/')
                .and_then(|(fd, c)| Some((fd.parse().ok()?, c.parse().ok()?)))
                .ok_or_else(|| other(format!("bad floor address {address}")))?;
            let region = Rc::new(floor::open(fd, capacity)?);
            let channel = FloorChannel {
                tx: Producer::new(region.clone(), 1, capacity)?,
                rx: Consumer::new(region, 0, capacity)?,
            };
            peer::ready("")?;
            Box::new(channel)
        }
        Kind::Duplex => {
            peer::ready("")?;
            Box::new(Duplex::open_timeout(address, CONNECT_TIMEOUT).map_err(other)?)
        }
        Kind::Uds | Kind::UdsBatched => {
            let stream = UnixStream::connect_addr(&peer::uds_address(address)?)?;
            let channel = UdsChannel::new(stream, kind == Kind::UdsBatched)?;
            peer::ready("")?;
            Box::new(channel)
        }
    };
    let mut message = vec![0xa5u8; size];
    match role {
        "send" => {
            let mut go = String::new();
            if io::stdin().read_line(&mut go)? == 0 {
                return Ok(()); // the parent left before it said go
            }
            message[8..16].copy_from_slice(&monotonic_ns().to_le_bytes());
            for seq in 0..count {
                message[..8].copy_from_slice(&seq.to_le_bytes());
                channel.send(&message)?;
                if seq == 0 {
                    message[8..16].fill(0);
                }
            }
            channel.flush()?;
        }
        "pong" => {
            let mut ping = Vec::with_capacity(16);
            for seq in 0..count {
                channel.recv_into(&mut ping)?;
                check(&ping, 16, seq)?;
                message[..8].copy_from_slice(&seq.to_le_bytes());
                message[8..16].copy_from_slice(&monotonic_ns().to_le_bytes());
                channel.send(&message)?;
                channel.flush()?;
            }
        }
        other_role => return Err(other(format!("unknown role {other_role}"))),
    }
    until_parent_leaves()
}

/// `memlink __peer stream-serve <name>`: a memlink server whose stream handler answers a request
/// `SIZE COUNT` with `COUNT` items of `SIZE` bytes, numbered from 0, item 0 stamped with the clock
/// just before it is sent.
pub(crate) fn stream_server(name: &str) -> io::Result<()> {
    let server = Server::bind(name).map_err(other)?;
    peer::exit_when_parent_leaves();
    peer::ready("")?;
    let streams = |request: &[u8], sink: &mut StreamSink| -> memlink::Result<()> {
        let bad = || memlink::Error::HandlerFailed {
            name: String::new(),
            reason: "the request is not SIZE COUNT (SIZE at least 16)".into(),
            data: Box::default(),
        };
        let request = std::str::from_utf8(request).map_err(|_| bad())?;
        let (size, count) = request
            .split_once(' ')
            .and_then(|(s, c)| Some((s.parse::<usize>().ok()?, c.parse::<u64>().ok()?)))
            .filter(|&(size, _)| size >= 16)
            .ok_or_else(bad)?;
        let mut item = vec![0xa5u8; size];
        item[8..16].copy_from_slice(&monotonic_ns().to_le_bytes());
        for seq in 0..count {
            item[..8].copy_from_slice(&seq.to_le_bytes());
            sink.send(&item)?;
            if seq == 0 {
                item[8..16].fill(0);
            }
        }
        Ok(())
    };
    server
        .serve_with(
            |request: &[u8], reply: &mut Vec<u8>| reply.extend_from_slice(request),
            streams,
        )
        .map_err(other)
}

/// Receives a memlink stream of `count` items of `size` bytes from a `stream-serve` child on
/// `cpu` (if given), checking each item and the clean end; returns the ns as
/// [`receive_all`] does (from the handler's clock reading before its first item).
pub(crate) fn receive_stream(size: usize, count: u64, cpu: Option<usize>) -> io::Result<u64> {
    let name = crate::bench::unique(&format!("stream-{size}"));
    let _server = PeerProcess::spawn_on(cpu, &["stream-serve", &name])?;
    let client = Client::connect_timeout(&name, CONNECT_TIMEOUT).map_err(other)?;
    let mut stream = client
        .call_stream(format!("{size} {count}").as_bytes())
        .map_err(other)?;
    let nanos = receive_all(&mut StreamChannel(&mut stream), size, count)?;
    let mut extra = Vec::new();
    if stream.next_into(&mut extra).map_err(other)? {
        return Err(other("the stream sent more items than asked for"));
    }
    Ok(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both socket senders and the receiver agree on framing, for small and large messages,
    /// mixed.
    #[test]
    fn socket_framing_round_trips() {
        for batched in [false, true] {
            let (a, b) = UnixStream::pair().unwrap();
            let lens = [16usize, 64, 5000, 1 << 20, 17, 64 << 10, 16];
            let writer = std::thread::spawn(move || {
                let mut tx = UdsChannel::new(a, batched).unwrap();
                for (seq, &len) in lens.iter().enumerate() {
                    let mut m = vec![7u8; len];
                    m[..8].copy_from_slice(&(seq as u64).to_le_bytes());
                    tx.send(&m).unwrap();
                }
                tx.flush().unwrap();
            });
            let mut rx = UdsChannel::new(b, false).unwrap();
            let mut m = Vec::new();
            for (seq, &len) in lens.iter().enumerate() {
                rx.recv_into(&mut m).unwrap();
                check(&m, len, seq as u64).unwrap();
                assert!(m[8..].iter().all(|&b| b == 7));
            }
            writer.join().unwrap();
        }
    }
}
