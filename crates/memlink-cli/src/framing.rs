//! The baselines' wire: length-prefixed messages over a byte stream (a Unix socket, a pair of
//! pipes, a TCP connection), shared by every benchmark that compares memlink with one (`bench
//! rpc`, `bench duplex`, `bench stream`, `demo`).
//!
//! Written as a good implementation would be, so that the comparison is fair:
//! - on raw descriptors (`File` over the descriptor: no `BufWriter`, no locked or line-buffered
//!   standard stream);
//! - each message leaves with **one** `writev` of its 4-byte length and its payload (or, when
//!   batching, messages are collected and written 64 KiB at a time);
//! - while messages are small the receiver reads up to 256 KiB at once and takes them out of that
//!   buffer (one `read` usually brings a whole message, header and payload); a message of 4 KiB or
//!   more has its header read alone and its payload read straight into the caller's buffer (no
//!   second copy);
//! - nothing is allocated per message once the caller's buffer has grown to the message size.
//!
//! Unix sockets get 4 MiB send and receive buffers and pipes 1 MiB (where the system allows), so
//! that a large message does not need a wake-up per 200 KiB; TCP keeps the kernel's autotuning and
//! gets `TCP_NODELAY`.

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{SocketAddr, UnixStream};

/// Socket buffer size asked for on both ends of a Unix socket (the default maximum that an
/// unprivileged process may set, `net.core.wmem_max`, is 4 MiB on most systems).
const SOCKET_BUFFER: usize = 4 << 20;
/// Pipe size asked for (the default maximum for an unprivileged process,
/// `/proc/sys/fs/pipe-max-size`).
const PIPE_BUFFER: usize = 1 << 20;
/// What the batched sender collects before it writes.
const BATCH: usize = 64 << 10;
/// What the receiver reads at most at once while messages are small.
const READ_AHEAD: usize = 256 << 10;
/// Messages at least this large are read straight into the caller's buffer.
const DIRECT: usize = 4 << 10;
/// Longest a message may be (lengths read from a peer are checked against it).
const MAX_MESSAGE: usize = 1 << 30;

/// One end of a length-prefixed message stream.
pub(crate) struct Framed {
    reader: File,
    writer: File,
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    /// Whether the last message received was small (the next read may then take many at once).
    small: bool,
    batch: Option<Vec<u8>>,
}

impl Framed {
    /// Messages read from `reader` and written to `writer` (the same stream, or two pipes).
    pub(crate) fn new(reader: OwnedFd, writer: OwnedFd, batched: bool) -> Self {
        Framed {
            reader: File::from(reader),
            writer: File::from(writer),
            buffer: vec![0; READ_AHEAD],
            start: 0,
            end: 0,
            small: true,
            batch: batched.then(|| Vec::with_capacity(BATCH + 64)),
        }
    }

    /// A connected Unix stream socket, with 4 MiB buffers.
    pub(crate) fn unix(stream: UnixStream, batched: bool) -> io::Result<Self> {
        rustix::net::sockopt::set_socket_send_buffer_size(&stream, SOCKET_BUFFER)?;
        rustix::net::sockopt::set_socket_recv_buffer_size(&stream, SOCKET_BUFFER)?;
        let writer = stream.as_fd().try_clone_to_owned()?;
        Ok(Self::new(stream.into(), writer, batched))
    }

    /// A connected TCP socket, with `TCP_NODELAY`.
    pub(crate) fn tcp(stream: std::net::TcpStream) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        let writer = stream.as_fd().try_clone_to_owned()?;
        Ok(Self::new(stream.into(), writer, false))
    }

    /// The read end of one pipe and the write end of another, each pipe enlarged to 1 MiB where
    /// the system allows (a smaller pipe works as well, with more wake-ups per large message).
    pub(crate) fn pipes(reader: OwnedFd, writer: OwnedFd) -> Self {
        for end in [&reader, &writer] {
            let _ = rustix::pipe::fcntl_setpipe_size(end, PIPE_BUFFER);
        }
        Self::new(reader, writer, false)
    }

    /// Makes sure `need` bytes are buffered (`need` at most the buffer's size). `Ok(false)`: the
    /// stream ended before the first of them.
    fn fill(&mut self, need: usize) -> io::Result<bool> {
        if self.end - self.start >= need {
            return Ok(true);
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
            let n = self.reader.read(&mut self.buffer[self.end..limit])?;
            if n == 0 {
                return if self.end == self.start {
                    Ok(false)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
            self.end += n;
        }
        Ok(true)
    }

    /// Sends one message: one `writev` of its length and payload (more only if the kernel takes
    /// part of it), or into the batch.
    pub(crate) fn send(&mut self, message: &[u8]) -> io::Result<()> {
        let header = u32::try_from(message.len())
            .map_err(|_| io::Error::other("a message over 4 GiB"))?
            .to_le_bytes();
        if let Some(batch) = &mut self.batch {
            batch.extend_from_slice(&header);
            batch.extend_from_slice(message);
            if batch.len() >= BATCH {
                self.writer.write_all(batch)?;
                batch.clear();
            }
            return Ok(());
        }
        let mut slices = [IoSlice::new(&header), IoSlice::new(message)];
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            let n = match self.writer.write_vectored(slices) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut slices, n);
        }
        Ok(())
    }

    /// Writes out whatever the batching sender still holds.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if let Some(batch) = &mut self.batch {
            self.writer.write_all(batch)?;
            batch.clear();
        }
        Ok(())
    }

    /// Receives the next message into `message` (its old contents replaced); `Ok(false)` if the
    /// stream ended cleanly before it.
    pub(crate) fn recv(&mut self, message: &mut Vec<u8>) -> io::Result<bool> {
        if !self.fill(4)? {
            return Ok(false);
        }
        let mut header = [0u8; 4];
        header.copy_from_slice(&self.buffer[self.start..self.start + 4]);
        self.start += 4;
        let len = u32::from_le_bytes(header) as usize;
        if len > MAX_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a stream message of {len} bytes"),
            ));
        }
        self.small = len < DIRECT;
        if self.small {
            if !self.fill(len)? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            message.clear();
            message.extend_from_slice(&self.buffer[self.start..self.start + len]);
            self.start += len;
            return Ok(true);
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
        self.reader.read_exact(&mut message[buffered..])?;
        Ok(true)
    }

    /// Receives the next message; the stream ending first is an error.
    pub(crate) fn recv_into(&mut self, message: &mut Vec<u8>) -> io::Result<()> {
        if self.recv(message)? {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the stream",
            ))
        }
    }

    /// Echoes every message back until the peer closes the stream.
    pub(crate) fn echo_until_closed(mut self) -> io::Result<()> {
        let mut message = Vec::new();
        while self.recv(&mut message)? {
            self.send(&message)?;
        }
        Ok(())
    }
}

/// The abstract Unix socket address of the benchmark server `name`.
pub(crate) fn uds_address(name: &str) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(format!("memlink-bench.{name}").as_bytes())
}

/// Connects to the Unix socket benchmark server `name`.
pub(crate) fn connect_uds(name: &str) -> io::Result<Framed> {
    Framed::unix(UnixStream::connect_addr(&uds_address(name)?)?, false)
}

/// Connects to the TCP benchmark server on loopback port `port`.
pub(crate) fn connect_tcp(port: &str) -> io::Result<Framed> {
    let port = port
        .parse::<u16>()
        .map_err(|e| io::Error::other(format!("bad port {port}: {e}")))?;
    Framed::tcp(std::net::TcpStream::connect(("127.0.0.1", port))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Senders (one write per message, and batched) and the receiver agree on framing, for small
    /// and large messages, mixed; a clean close between messages ends the stream.
    #[test]
    fn framing_round_trips() {
        for batched in [false, true] {
            let (a, b) = UnixStream::pair().unwrap();
            let lens = [16usize, 0, 64, 5000, 1 << 20, 17, 64 << 10, 16];
            let writer = std::thread::spawn(move || {
                let mut tx = Framed::unix(a, batched).unwrap();
                for (seq, &len) in lens.iter().enumerate() {
                    tx.send(&vec![seq as u8; len]).unwrap();
                }
                tx.flush().unwrap();
            });
            let mut rx = Framed::unix(b, false).unwrap();
            let mut m = Vec::new();
            for (seq, &len) in lens.iter().enumerate() {
                rx.recv_into(&mut m).unwrap();
                assert_eq!(m.len(), len);
                assert!(m.iter().all(|&b| b == seq as u8));
            }
            writer.join().unwrap();
            assert!(!rx.recv(&mut m).unwrap());
        }
    }

    /// Over a pair of pipes, an echo server returns every message intact.
    #[test]
    fn pipes_echo() {
        let (up_read, up_write) = rustix::pipe::pipe().unwrap();
        let (down_read, down_write) = rustix::pipe::pipe().unwrap();
        let server = std::thread::spawn(move || {
            Framed::pipes(up_read, down_write)
                .echo_until_closed()
                .unwrap();
        });
        let mut client = Framed::pipes(down_read, up_write);
        let mut reply = Vec::new();
        for len in [0usize, 64, 4096, 70_000, 1 << 20] {
            let request: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            client.send(&request).unwrap();
            client.recv_into(&mut reply).unwrap();
            assert!(reply == request, "{len}");
        }
        drop(client);
        server.join().unwrap();
    }
}
