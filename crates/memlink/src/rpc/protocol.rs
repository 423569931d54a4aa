//! The request/response wire format on top of the shared handshake and region layout
//! (`link::protocol`): the service socket's name, error reports in the response ring, and the
//! statistics a server answers with.

pub(crate) use crate::link::protocol::{
    Admission, Goodbye, Hello, PROTOCOL_VERSION, Purpose, RegionLayout, Welcome,
};
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

/// A live server's statistics, as `memlink ls` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// The server's process id.
    pub pid: u32,
    /// Connections currently open (each client thread calling concurrently uses one).
    pub connections: u32,
    /// Worker threads.
    pub workers: u32,
    /// Most connections the server admits.
    pub max_connections: u32,
    /// Calls answered since the server started.
    pub calls: u64,
    /// Connections dropped because the client corrupted its shared state.
    pub corrupt_disconnects: u64,
    /// Milliseconds since the server started serving.
    pub uptime_ms: u64,
    /// Largest request or reply the server accepts, in bytes.
    pub max_message: u64,
    /// Requests skipped without running the handler because their deadline had passed when a
    /// worker took them (their callers had given up).
    pub expired_calls: u64,
}

impl Stats {
    pub(crate) const LEN: usize = 64;

    pub(crate) fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&self.pid.to_le_bytes());
        b[12..16].copy_from_slice(&self.connections.to_le_bytes());
        b[16..20].copy_from_slice(&self.workers.to_le_bytes());
        b[20..24].copy_from_slice(&self.max_connections.to_le_bytes());
        b[24..32].copy_from_slice(&self.calls.to_le_bytes());
        b[32..40].copy_from_slice(&self.corrupt_disconnects.to_le_bytes());
        b[40..48].copy_from_slice(&self.uptime_ms.to_le_bytes());
        b[48..56].copy_from_slice(&self.max_message.to_le_bytes());
        b[56..64].copy_from_slice(&self.expired_calls.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() != Self::LEN {
            return Err(format!(
                "stats of {} bytes, expected {}",
                b.len(),
                Self::LEN
            ));
        }
        check_preamble(b)?;
        let w = |at| word(b, at).unwrap_or(0);
        let l = |at| long(b, at).unwrap_or(0);
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
        };
        assert_eq!(Stats::decode(&s.encode()), Ok(s));
    }

    proptest! {
        #[test]
        fn stats_decoder_accepts_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = Stats::decode(&bytes);
        }
    }
}
