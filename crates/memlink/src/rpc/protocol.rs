//! The request/response wire format on top of the shared handshake and region layout
//! (`link::protocol`): the service socket's name, error reports in the response ring, and the
//! statistics a server answers with.

pub(crate) use crate::link::protocol::{
    Admission, Goodbye, Hello, PROTOCOL_VERSION, Purpose, RegionLayout, Welcome,
};
use std::time::Duration;

use crate::link::protocol::{MAGIC, check_preamble, long, word};

/// Prefix of every server's abstract socket name.
pub(crate) const SOCKET_PREFIX: &str = "memlink.rpc.";

/// A response record flag: the payload is an error report, not a reply.
pub(crate) const ERROR_REPLY: u32 = 0x100;
/// Error report codes (first 4 payload bytes of an [`ERROR_REPLY`]).
pub(crate) const ERR_HANDLER_PANICKED: u32 = 1;
pub(crate) const ERR_REPLY_TOO_LARGE: u32 = 2;
/// The stream handler returned an error (its message follows the code).
pub(crate) const ERR_HANDLER_FAILED: u32 = 3;
/// The server serves no streams.
pub(crate) const ERR_NO_STREAMS: u32 = 4;
/// The server runs as many stream handlers as it allows (the cap follows, 8 bytes).
pub(crate) const ERR_TOO_MANY_STREAMS: u32 = 5;

/// A call's handler refused it (its reason follows the code, UTF-8).
pub(crate) const ERR_REFUSED: u32 = 6;
/// The request's deadline had passed when the server took it: the handler did not run.
pub(crate) const ERR_DEADLINE_EXPIRED: u32 = 7;
/// A typed handler could not decode the request (the decoder's message follows, UTF-8): the
/// handler did not run.
pub(crate) const ERR_UNDECODABLE: u32 = 8;
/// A call's handler returned an error: `code | message_len u32 | message (UTF-8) | data`.
pub(crate) const ERR_CALL_FAILED: u32 = 9;
/// Longest handler message or reason sent (longer ones are cut at a character boundary).
pub(crate) const MAX_ERROR_TEXT: usize = 4096;

/// The request records' `meta` word (see `RecordHeader::meta`): the call's deadline as absolute
/// `CLOCK_MONOTONIC` nanoseconds, the same on every fragment of a request; 0 for none (and for
/// stream requests, cancels and replies). A value above `i64::MAX` (no clock reads that) is a
/// broken protocol.
pub(crate) const MAX_DEADLINE_NS: u64 = i64::MAX as u64;

/// The text of an error report a server sent (`bytes`, meant to be UTF-8), as the client keeps
/// it: invalid sequences replaced, cut to at most [`MAX_ERROR_TEXT`] bytes like the server cuts
/// what it sends, so that a hostile server cannot hand its callers megabytes of "reason".
pub(crate) fn report_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_ERROR_TEXT)]);
    // A replacement character is longer than the byte it replaces: cut again.
    error_text(&text).to_owned()
}

/// `text` cut to at most [`MAX_ERROR_TEXT`] bytes, at a character boundary.
pub(crate) fn error_text(text: &str) -> &str {
    if text.len() <= MAX_ERROR_TEXT {
        return text;
    }
    let mut end = MAX_ERROR_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A request record flag (on every fragment): the request asks for a stream of replies.
pub(crate) const STREAM_REQUEST: u32 = 0x200;
/// A request record flag: an empty message cancelling the stream of the same call id.
pub(crate) const CANCEL: u32 = 0x400;
/// A response record flag (on every fragment): the message is one item of a stream.
pub(crate) const STREAM_ITEM: u32 = 0x200;
/// A response record flag: an empty message ending the stream cleanly.
pub(crate) const STREAM_END: u32 = 0x400;

pub(crate) fn socket_name(service: &str) -> String {
    format!("{SOCKET_PREFIX}{service}")
}

/// A live server's statistics, as `memlink ls` shows them ([`server_stats`](super::server_stats)).
///
/// # Examples
/// ```no_run
/// # fn main() -> memlink::Result<()> {
/// let stats = memlink::rpc::server_stats("echo")?;
/// println!(
///     "{} calls, handler p50 {:?} p99 {:?} (from {} sampled calls)",
///     stats.calls,
///     stats.handler_latency.p50,
///     stats.handler_latency.p99,
///     stats.handler_latency.samples
/// );
/// for connection in &stats.connection_list {
///     println!("  connection {} of pid {}: {} calls", connection.id, connection.pid, connection.calls);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// The server's process id.
    pub pid: u32,
    /// Connections currently open (each client thread calling concurrently uses one).
    pub connections: u32,
    /// Worker threads.
    pub workers: u32,
    /// Most connections the server admits.
    pub max_connections: u32,
    /// Calls answered since the server started (whatever the handler's outcome; streams
    /// included).
    pub calls: u64,
    /// Connections dropped because the client corrupted its shared state.
    pub corrupt_disconnects: u64,
    /// Milliseconds since the server started serving.
    pub uptime_ms: u64,
    /// Largest request or reply the server accepts, in bytes.
    pub max_message: u64,
    /// Requests skipped without running the handler because their callers had given up when a
    /// worker took them: their deadline had passed, or the caller had withdrawn them.
    pub expired_calls: u64,
    /// Calls whose handler returned an error (including refusals) or panicked.
    pub failed_calls: u64,
    /// How long the call handler takes, from sampled calls.
    pub handler_latency: HandlerLatency,
    /// The open connections, by id (at most the first 2,048).
    pub connection_list: Vec<ConnectionStats>,
}

/// How long a server's call handler takes ([`Stats::handler_latency`]): percentiles over the
/// calls sampled since the server started. A worker times at most one call per millisecond
/// (its first, and then the first after each millisecond in which it read its clock anyway:
/// every call, when calls come further apart), so that timing (two clock reads) costs a busy
/// server nothing measurable; each figure is the upper bound of a logarithmic bucket, at most
/// 25% above the true value. All zero before the first sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandlerLatency {
    /// Calls timed.
    pub samples: u64,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest sampled call.
    pub max: Duration,
}

/// One open connection of a server ([`Stats::connection_list`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Its id ([`CallContext::connection_id`](super::CallContext::connection_id)).
    pub id: u64,
    /// The client's process id (0 if in a pid namespace the server cannot see).
    pub pid: u32,
    /// The client's user id.
    pub uid: u32,
    /// Calls answered on it.
    pub calls: u64,
}

impl Stats {
    /// Bytes before the connection list.
    const FIXED_LEN: usize = 120;
    const ENTRY_LEN: usize = 24;
    /// Most connections listed.
    pub(crate) const MAX_LISTED: usize = 2048;
    /// Largest encoded statistics.
    pub(crate) const MAX_LEN: usize = Self::FIXED_LEN + Self::MAX_LISTED * Self::ENTRY_LEN;

    pub(crate) fn encode(&self) -> Vec<u8> {
        let listed = &self.connection_list[..self.connection_list.len().min(Self::MAX_LISTED)];
        let mut b = Vec::with_capacity(Self::FIXED_LEN + listed.len() * Self::ENTRY_LEN);
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        for w in [
            self.pid,
            self.connections,
            self.workers,
            self.max_connections,
        ] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let latency = &self.handler_latency;
        for l in [
            self.calls,
            self.corrupt_disconnects,
            self.uptime_ms,
            self.max_message,
            self.expired_calls,
            self.failed_calls,
            latency.samples,
            ns(latency.p50),
            ns(latency.p90),
            ns(latency.p99),
            ns(latency.max),
        ] {
            b.extend_from_slice(&l.to_le_bytes());
        }
        b.extend_from_slice(&(listed.len() as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for c in listed {
            b.extend_from_slice(&c.id.to_le_bytes());
            b.extend_from_slice(&c.pid.to_le_bytes());
            b.extend_from_slice(&c.uid.to_le_bytes());
            b.extend_from_slice(&c.calls.to_le_bytes());
        }
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() < Self::FIXED_LEN || b.len() > Self::MAX_LEN {
            return Err(format!(
                "stats of {} bytes, expected {} to {}",
                b.len(),
                Self::FIXED_LEN,
                Self::MAX_LEN
            ));
        }
        check_preamble(b)?;
        let w = |at| word(b, at).unwrap_or(0);
        let l = |at| long(b, at).unwrap_or(0);
        let listed = w(112) as usize;
        // Checked: on a 32-bit target a hostile count would overflow the product.
        let expected = listed
            .checked_mul(Self::ENTRY_LEN)
            .and_then(|entries| entries.checked_add(Self::FIXED_LEN));
        if expected != Some(b.len()) {
            return Err(format!(
                "stats listing {listed} connections in {} bytes",
                b.len()
            ));
        }
        let connection_list = (0..listed)
            .map(|i| {
                let at = Self::FIXED_LEN + i * Self::ENTRY_LEN;
                ConnectionStats {
                    id: l(at),
                    pid: w(at + 8),
                    uid: w(at + 12),
                    calls: l(at + 16),
                }
            })
            .collect();
        Ok(Stats {
            pid: w(8),
            connections: w(12),
            workers: w(16),
            max_connections: w(20),
            calls: l(24),
            corrupt_disconnects: l(32),
            uptime_ms: l(40),
            max_message: l(48),
            expired_calls: l(56),
            failed_calls: l(64),
            handler_latency: HandlerLatency {
                samples: l(72),
                p50: Duration::from_nanos(l(80)),
                p90: Duration::from_nanos(l(88)),
                p99: Duration::from_nanos(l(96)),
                max: Duration::from_nanos(l(104)),
            },
            connection_list,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stats_round_trip() {
        let s = Stats {
            pid: 1,
            connections: 2,
            workers: 3,
            max_connections: 4,
            calls: 5,
            corrupt_disconnects: 6,
            uptime_ms: 7,
            max_message: 8,
            expired_calls: 9,
            failed_calls: 10,
            handler_latency: HandlerLatency {
                samples: 11,
                p50: Duration::from_nanos(12),
                p90: Duration::from_nanos(13),
                p99: Duration::from_nanos(14),
                max: Duration::from_nanos(15),
            },
            connection_list: vec![
                ConnectionStats {
                    id: 16,
                    pid: 17,
                    uid: 18,
                    calls: 19,
                },
                ConnectionStats {
                    id: u64::MAX,
                    pid: u32::MAX,
                    uid: 0,
                    calls: 0,
                },
            ],
        };
        assert_eq!(Stats::decode(&s.encode()), Ok(s.clone()));
        let mut empty = s;
        empty.connection_list.clear();
        let encoded = empty.encode();
        assert_eq!(encoded.len(), Stats::FIXED_LEN);
        assert_eq!(Stats::decode(&encoded), Ok(empty));
    }

    #[test]
    fn report_texts_are_cut_like_the_server_cuts_them() {
        assert_eq!(report_text(b"no such key"), "no such key");
        assert_eq!(report_text(&[b'x'; 100_000]).len(), MAX_ERROR_TEXT);
        let invalid = report_text(&[0xff; 10_000]);
        assert!(invalid.len() <= MAX_ERROR_TEXT && invalid.starts_with('\u{fffd}'));
        let long = "é".repeat(MAX_ERROR_TEXT);
        let cut = report_text(long.as_bytes());
        assert!(cut.len() <= MAX_ERROR_TEXT && long.starts_with(&cut));
    }

    #[test]
    fn a_connection_count_that_overflows_is_refused() {
        let mut b = Stats {
            pid: 1,
            connections: 0,
            workers: 1,
            max_connections: 1,
            calls: 0,
            corrupt_disconnects: 0,
            uptime_ms: 0,
            max_message: 0,
            expired_calls: 0,
            failed_calls: 0,
            handler_latency: HandlerLatency::default(),
            connection_list: Vec::new(),
        }
        .encode();
        b[112..116].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Stats::decode(&b).is_err());
    }

    proptest! {
        #[test]
        fn stats_decoder_accepts_any_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            with_preamble in any::<bool>(),
        ) {
            let mut bytes = bytes;
            if with_preamble && bytes.len() >= 8 {
                bytes[..4].copy_from_slice(&MAGIC.to_le_bytes());
                bytes[4..8].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
            }
            if let Ok(stats) = Stats::decode(&bytes) {
                prop_assert_eq!(stats.encode(), bytes);
            }
        }
    }
}
