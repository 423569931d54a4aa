//! The one-way transports `memlink bench duplex` and `memlink bench stream` compare: memlink's
//! [`Duplex`] and [`Client::call_stream`], a Unix domain socket, and the shared-memory ring floor
//! ([`crate::floor`]). The sender always runs in a child process (`memlink __peer oneway ...` or
//! `memlink __peer stream-serve ...`), the receiver in the benchmark's own process.
//!
//! Every message carries its sequence number in its first 8 bytes and, where the benchmark needs
//! one, the sender's `CLOCK_MONOTONIC` reading (ns) in the next 8: both processes read the same
//! clock, so the receiver can tell when a message left.

use std::io::{self, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use memlink::{Client, Duplex, DuplexReceiver, DuplexSender, ReplyStream, Server, StreamSink};

use crate::floor::{self, Consumer, Producer};
use crate::framing::{self, Framed};
use crate::peer::{self, PeerProcess};

pub(crate) use crate::peer::monotonic_ns;

/// Bytes of each ring (per direction) of memlink's duplex channel by default, and of the floor's.
pub(crate) const RING_CAPACITY: usize = 256 << 10;
/// The filler of every message byte that carries neither a sequence number nor a clock.
const FILL: u8 = 0xa5;
/// How long to wait for a peer to pair up or connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn word(message: &[u8], at: usize) -> u64 {
    message
        .get(at..at + 8)
        .and_then(|w| w.try_into().ok())
        .map_or(u64::MAX, u64::from_le_bytes)
}

/// Writes message `seq`'s number into its first 8 bytes and, from 24 bytes on, its last 8 (so a
/// message torn or framed wrong shows at either end).
fn number(message: &mut [u8], seq: u64) {
    message[..8].copy_from_slice(&seq.to_le_bytes());
    let len = message.len();
    if len >= 24 {
        message[len - 8..].copy_from_slice(&seq.to_le_bytes());
    }
}

/// Checks that `message` is message `seq` of `size` bytes: its length and the numbers at both
/// ends (the rate runs; a full comparison of every byte would add a pass over each message to
/// the very thing they measure).
fn check(message: &[u8], size: usize, seq: u64) -> io::Result<()> {
    let tail_ok = size < 24 || word(message, size - 8) == seq;
    if message.len() != size || word(message, 0) != seq || !tail_ok {
        return Err(other(format!(
            "expected message {seq} of {size} bytes, received message {} of {} bytes",
            word(message, 0),
            message.len()
        )));
    }
    Ok(())
}

/// As [`check`], and every other byte is the filler too (the latency runs: each answer is
/// checked whole).
fn check_whole(message: &[u8], size: usize, seq: u64) -> io::Result<()> {
    check(message, size, seq)?;
    let end = if size >= 24 { size - 8 } else { size };
    if message[16..end].iter().any(|&b| b != FILL) {
        return Err(other(format!("message {seq} arrived with wrong bytes")));
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

/// A duplex channel's two halves ([`Duplex::split`]): what a program that streams one way (or
/// answers from one thread) uses, since the halves need no lock.
struct DuplexChannel {
    tx: DuplexSender,
    rx: DuplexReceiver,
}

impl DuplexChannel {
    fn open(name: &str) -> io::Result<Self> {
        let (tx, rx) = Duplex::open_timeout(name, CONNECT_TIMEOUT)
            .map_err(other)?
            .split();
        Ok(DuplexChannel { tx, rx })
    }
}

impl Channel for DuplexChannel {
    fn send(&mut self, message: &[u8]) -> io::Result<()> {
        self.tx.send(message).map_err(other)
    }

    fn recv_into(&mut self, message: &mut Vec<u8>) -> io::Result<()> {
        self.rx.recv_into(message).map_err(other)
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

/// A Unix stream socket: the benchmarks' shared baseline wire ([`crate::framing`]), one
/// `writev` per message or batches of 64 KiB.
impl Channel for Framed {
    fn send(&mut self, message: &[u8]) -> io::Result<()> {
        Framed::send(self, message)
    }

    fn recv_into(&mut self, message: &mut Vec<u8>) -> io::Result<()> {
        Framed::recv_into(self, message)
    }

    fn flush(&mut self) -> io::Result<()> {
        Framed::flush(self)
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
            let duplex = DuplexChannel::open(&name)?;
            Ok(Connection {
                channel: Box::new(duplex),
                peer,
            })
        }
        Kind::Uds | Kind::UdsBatched => {
            let listener = UnixListener::bind_addr(&framing::uds_address(&name)?)?;
            // The child connects before it says it is ready, so the connection is waiting.
            let peer = spawn(&name)?;
            listener.set_nonblocking(true)?;
            let (stream, _) = listener.accept()?;
            stream.set_nonblocking(false)?;
            Ok(Connection {
                channel: Box::new(Framed::unix(stream, kind == Kind::UdsBatched)?),
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
        check_whole(&pong, size, seq)?;
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
            Box::new(DuplexChannel::open(address)?)
        }
        Kind::Uds | Kind::UdsBatched => {
            let stream = UnixStream::connect_addr(&framing::uds_address(address)?)?;
            let channel = Framed::unix(stream, kind == Kind::UdsBatched)?;
            peer::ready("")?;
            Box::new(channel)
        }
    };
    let mut message = vec![FILL; size];
    match role {
        "send" => {
            let mut go = String::new();
            if io::stdin().read_line(&mut go)? == 0 {
                return Ok(()); // the parent left before it said go
            }
            message[8..16].copy_from_slice(&monotonic_ns().to_le_bytes());
            for seq in 0..count {
                number(&mut message, seq);
                channel.send(&message)?;
                if seq == 0 {
                    message[8..16].fill(FILL);
                }
            }
            channel.flush()?;
        }
        "pong" => {
            let mut ping = Vec::with_capacity(16);
            for seq in 0..count {
                channel.recv_into(&mut ping)?;
                check(&ping, 16, seq)?;
                number(&mut message, seq);
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
        let mut item = vec![FILL; size];
        item[8..16].copy_from_slice(&monotonic_ns().to_le_bytes());
        for seq in 0..count {
            number(&mut item, seq);
            sink.send(&item)?;
            if seq == 0 {
                item[8..16].fill(FILL);
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

    /// A message numbered at both ends passes the checks; one torn (the wrong number at its end)
    /// or with a wrong byte fails them.
    #[test]
    fn checks_catch_torn_and_wrong_messages() {
        let mut m = vec![FILL; 100];
        number(&mut m, 7);
        check_whole(&m, 100, 7).unwrap();
        assert!(check(&m, 100, 8).is_err());
        assert!(check(&m[..99], 100, 7).is_err());
        let mut torn = m.clone();
        number(&mut torn[50..], 8);
        assert!(check(&torn, 100, 7).is_err());
        let mut wrong = m.clone();
        wrong[40] = 0;
        check(&wrong, 100, 7).unwrap();
        assert!(check_whole(&wrong, 100, 7).is_err());
    }
}
