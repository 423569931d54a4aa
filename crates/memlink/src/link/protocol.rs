//! The wire format every connection shares, whatever the pattern: handshake messages on the
//! socket, and the layout of the shared region each connection gets.
//!
//! Handshake (one `SOCK_SEQPACKET` message each way, all integers little-endian). The side that
//! connects is the *client* here, the side that accepted and built the region the *server*, even
//! for a duplex pair, whose users see no roles:
//!
//! - client → server [`Hello`]: `magic u32 | version u32 | purpose u32 | max_message u32`
//!   (`max_message`: the largest message a duplex connector accepts, a subscriber's flags; 0 and
//!   ignored otherwise).
//! - server → client [`Welcome`]: `magic | version | status u32 | ring_capacity u32 |
//!   max_message u64 | server_pid u32 | extra u32`, plus, when accepted, the connection's sealed
//!   memfd and wake pipe ends: for request/response three (memfd, the write end of the pipe that
//!   wakes the server, the read end of the pipe that wakes the client), for a duplex pair five
//!   (memfd, the write ends of the accepter's "data" and "room" pipes, the read ends of the
//!   connector's), for a subscriber four (the topic's broadcast memfd, sealed read-only, the
//!   subscriber's own region, the read end of the pipe that wakes the subscriber, the write end
//!   of the one that wakes the publisher). A server may answer a refusal before reading the hello.
//! - server → client a pattern's own answer instead (rpc's statistics), when the hello asked.
//! - server → client [`Goodbye`] just before a side drops a connection it found corrupted or is
//!   shutting down: `magic | version | reason u32 | text`.
//! - client → server, duplex only: a second [`Hello`] with purpose "paired" once the connector has
//!   validated and mapped the region; only then does the accepting side count the pair as formed
//!   (a connector that gave up before reading its welcome leaves the accepter waiting, not paired
//!   with a ghost).
//! - after the handshake nothing but a goodbye travels on the socket; its hang-up is the peer's
//!   death. Wake-ups are single bytes on the pipes, written only when the receiver has said in the
//!   region that it is parked (see `link::wake`), never blocking.
//!
//! Every decoder takes arbitrary bytes and returns a value or an error; property tests pin that.
//! May use `memory` (ring layouts) and `platform` (mappings).

use std::sync::atomic::Ordering;

use crate::memory::ring::{CONTROL_LEN, RingError, RingLayout};
use crate::platform::mapping::Mapping;

/// Set in every ring key, so that no stamp is ever 0 (see `ring`).
const KEY_BIT: u64 = 1 << 63;

pub(crate) const MAGIC: u32 = u32::from_le_bytes(*b"MLNK");
/// Bumped whenever the handshake or region layout changes incompatibly. 3: record headers carry
/// a `meta` word (an rpc request's deadline), rpc error reports and statistics grew. 4: the
/// request ring's spare word is rpc's claim word (a server that does not claim would let its
/// clients take every call they give up on for not executed). 5: the wake-up barriers pair
/// differently (an rpc client parks with a plain fence and must be woken after one; a side that
/// parks rarely relies on its waker's light barrier and its own membarrier).
pub(crate) const PROTOCOL_VERSION: u32 = 5;

pub(crate) fn word(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub(crate) fn long(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

pub(crate) fn check_preamble(b: &[u8]) -> Result<(), String> {
    match (word(b, 0), word(b, 4)) {
        (Some(MAGIC), Some(PROTOCOL_VERSION)) => Ok(()),
        (Some(MAGIC), Some(v)) => Err(format!(
            "peer speaks memlink protocol version {v}, we speak {PROTOCOL_VERSION}; use the same memlink version on both sides"
        )),
        _ => Err("peer is not a memlink endpoint (bad magic)".into()),
    }
}

/// What a client wants from a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    Connect,
    Stats,
    /// A duplex peer asking to complete the pair.
    Duplex,
    /// A duplex connector saying it has adopted the region: the pair is complete.
    Paired,
    /// A subscriber asking to join a topic.
    Subscribe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) purpose: Purpose,
    /// Largest message a duplex connector accepts; a subscriber's flags; 0 for other purposes.
    pub(crate) max_message: u32,
}

impl Hello {
    pub(crate) const LEN: usize = 16;

    pub(crate) fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        let purpose: u32 = match self.purpose {
            Purpose::Connect => 1,
            Purpose::Stats => 2,
            Purpose::Duplex => 3,
            Purpose::Paired => 4,
            Purpose::Subscribe => 5,
        };
        b[8..12].copy_from_slice(&purpose.to_le_bytes());
        b[12..16].copy_from_slice(&self.max_message.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() != Self::LEN {
            return Err(format!(
                "hello of {} bytes, expected {}",
                b.len(),
                Self::LEN
            ));
        }
        check_preamble(b)?;
        let purpose = match word(b, 8) {
            Some(1) => Purpose::Connect,
            Some(2) => Purpose::Stats,
            Some(3) => Purpose::Duplex,
            Some(4) => Purpose::Paired,
            Some(5) => Purpose::Subscribe,
            other => return Err(format!("unknown hello purpose {other:?}")),
        };
        let max_message = match purpose {
            Purpose::Duplex | Purpose::Subscribe => word(b, 12).unwrap_or(0),
            _ => 0,
        };
        Ok(Hello {
            purpose,
            max_message,
        })
    }
}

/// The server's answer to a connect hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Accepted,
    PermissionDenied,
    Full {
        max_clients: u32,
    },
    ShuttingDown,
    /// A duplex name whose pair is complete.
    Busy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Welcome {
    pub(crate) admission: Admission,
    pub(crate) ring_capacity: u32,
    pub(crate) max_message: u64,
    pub(crate) server_pid: u32,
}

impl Welcome {
    pub(crate) const LEN: usize = 32;

    pub(crate) fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        let (status, extra): (u32, u32) = match self.admission {
            Admission::Accepted => (0, 0),
            Admission::PermissionDenied => (1, 0),
            Admission::Full { max_clients } => (2, max_clients),
            Admission::ShuttingDown => (3, 0),
            Admission::Busy => (4, 0),
        };
        b[8..12].copy_from_slice(&status.to_le_bytes());
        b[12..16].copy_from_slice(&self.ring_capacity.to_le_bytes());
        b[16..24].copy_from_slice(&self.max_message.to_le_bytes());
        b[24..28].copy_from_slice(&self.server_pid.to_le_bytes());
        b[28..32].copy_from_slice(&extra.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() != Self::LEN {
            return Err(format!(
                "welcome of {} bytes, expected {}",
                b.len(),
                Self::LEN
            ));
        }
        check_preamble(b)?;
        let extra = word(b, 28).unwrap_or(0);
        let admission = match word(b, 8) {
            Some(0) => Admission::Accepted,
            Some(1) => Admission::PermissionDenied,
            Some(2) => Admission::Full { max_clients: extra },
            Some(3) => Admission::ShuttingDown,
            Some(4) => Admission::Busy,
            other => return Err(format!("unknown admission status {other:?}")),
        };
        Ok(Welcome {
            admission,
            ring_capacity: word(b, 12).unwrap_or(0),
            max_message: long(b, 16).unwrap_or(0),
            server_pid: word(b, 24).unwrap_or(0),
        })
    }
}

/// Why a server dropped a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Goodbye {
    Corrupted(String),
    ShuttingDown,
}

impl Goodbye {
    pub(crate) const MAX_LEN: usize = 512;

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::MAX_LEN);
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        match self {
            Goodbye::Corrupted(why) => {
                b.extend_from_slice(&1u32.to_le_bytes());
                let mut end = why.len().min(Self::MAX_LEN - 12);
                while !why.is_char_boundary(end) {
                    end -= 1;
                }
                b.extend_from_slice(&why.as_bytes()[..end]);
            }
            Goodbye::ShuttingDown => b.extend_from_slice(&2u32.to_le_bytes()),
        }
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, String> {
        check_preamble(b)?;
        match word(b, 8) {
            Some(1) => Ok(Goodbye::Corrupted(
                String::from_utf8_lossy(b.get(12..).unwrap_or_default()).into_owned(),
            )),
            Some(2) => Ok(Goodbye::ShuttingDown),
            other => Err(format!("unknown goodbye reason {other:?}")),
        }
    }
}

/// Where everything lives in a connection's shared region.
///
/// | offset          | what                                                          |
/// |-----------------|---------------------------------------------------------------|
/// | 0               | ring keys: `request_key u64`, `response_key u64` (see below)  |
/// | 128             | client line: `client_parked u32`, `client_cpu u32`,           |
/// |                 | `client_room_parked u32` (duplex only)                        |
/// | 256             | server line: `server_parked`, `server_cpu`, `crowded`,        |
/// |                 | `server_room_parked` (u32s; the last duplex only)             |
/// | 384             | request ring control (reserved line, head line: the consumer  |
/// |                 | position and its spare word, rpc's claim word)                |
/// | 640             | response ring control                                         |
/// | 1024            | request ring data (`capacity` bytes)                          |
/// | 1024 + capacity | response ring data (`capacity` bytes)                         |
///
/// `*_parked` says "asleep until a record arrives"; a duplex side can also wait for *room* in the
/// ring it produces (on another thread at the same time), which it says in `*_room_parked`, so
/// that waking one waiter can never leave the other asleep (see `duplex`). Request/response
/// leaves those words zero. Each side writes only its own line and its own ring index, so no cache line is written by both.
/// The server writes the ring keys (random, top bit set; see [`RingLayout::key`]) before it hands
/// the region over; the client reads them once, then neither side reads them again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RegionLayout {
    pub(crate) capacity: usize,
    pub(crate) request_key: u64,
    pub(crate) response_key: u64,
}

impl RegionLayout {
    const REQUEST_KEY: usize = 0;
    const RESPONSE_KEY: usize = 8;
    pub(crate) const CLIENT_PARKED: usize = 128;
    pub(crate) const CLIENT_CPU: usize = 132;
    pub(crate) const CLIENT_ROOM_PARKED: usize = 136;
    pub(crate) const SERVER_PARKED: usize = 256;
    pub(crate) const SERVER_CPU: usize = 260;
    pub(crate) const SERVER_CROWDED: usize = 264;
    pub(crate) const SERVER_ROOM_PARKED: usize = 268;
    const REQUEST_CONTROL: usize = 384;
    const RESPONSE_CONTROL: usize = Self::REQUEST_CONTROL + CONTROL_LEN;
    const DATA: usize = 1024;

    /// A new layout with fresh random ring keys (server side).
    pub(crate) fn fresh(capacity: usize) -> Self {
        let key = || crate::platform::random::random_u64() | KEY_BIT;
        RegionLayout {
            capacity,
            request_key: key(),
            response_key: key(),
        }
    }

    /// Writes the ring keys into a fresh region (server side, before the client sees it).
    pub(crate) fn write_keys(&self, map: &Mapping) -> Result<(), RingError> {
        let slot = |at| {
            map.atomic_u64(at)
                .ok_or_else(|| RingError("region too small for its keys".into()))
        };
        slot(Self::REQUEST_KEY)?.store(self.request_key, Ordering::Relaxed);
        slot(Self::RESPONSE_KEY)?.store(self.response_key, Ordering::Relaxed);
        Ok(())
    }

    /// The layout of a region the server set up, its keys read once (client side).
    pub(crate) fn read(capacity: usize, map: &Mapping) -> Result<Self, RingError> {
        let key = |at| {
            let key = map
                .atomic_u64(at)
                .ok_or_else(|| RingError("region too small for its keys".into()))?
                .load(Ordering::Relaxed);
            if key & KEY_BIT == 0 {
                return Err(RingError(
                    format!("ring key {key:#x} lacks its top bit").into(),
                ));
            }
            Ok(key)
        };
        Ok(RegionLayout {
            capacity,
            request_key: key(Self::REQUEST_KEY)?,
            response_key: key(Self::RESPONSE_KEY)?,
        })
    }

    pub(crate) fn len(&self) -> usize {
        Self::DATA + 2 * self.capacity
    }

    pub(crate) fn requests(&self) -> RingLayout {
        RingLayout {
            control: Self::REQUEST_CONTROL,
            data: Self::DATA,
            capacity: self.capacity,
            key: self.request_key,
        }
    }

    pub(crate) fn responses(&self) -> RingLayout {
        RingLayout {
            control: Self::RESPONSE_CONTROL,
            data: Self::DATA + self.capacity,
            capacity: self.capacity,
            key: self.response_key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn messages_round_trip() {
        for purpose in [Purpose::Connect, Purpose::Stats, Purpose::Paired] {
            let hello = Hello {
                purpose,
                max_message: 0,
            };
            assert_eq!(Hello::decode(&hello.encode()), Ok(hello));
        }
        let duplex = Hello {
            purpose: Purpose::Duplex,
            max_message: 1 << 26,
        };
        assert_eq!(Hello::decode(&duplex.encode()), Ok(duplex));
        for admission in [
            Admission::Accepted,
            Admission::PermissionDenied,
            Admission::Full { max_clients: 9 },
            Admission::ShuttingDown,
            Admission::Busy,
        ] {
            let w = Welcome {
                admission,
                ring_capacity: 1 << 18,
                max_message: 1 << 26,
                server_pid: 42,
            };
            assert_eq!(Welcome::decode(&w.encode()), Ok(w));
        }
        for g in [Goodbye::ShuttingDown, Goodbye::Corrupted("bad tail".into())] {
            assert_eq!(Goodbye::decode(&g.encode()), Ok(g));
        }
        let long = Goodbye::Corrupted("é".repeat(600)).encode();
        assert!(long.len() <= Goodbye::MAX_LEN && Goodbye::decode(&long).is_ok());
    }

    #[test]
    fn version_mismatch_says_what_to_do() {
        let mut b = Hello {
            purpose: Purpose::Connect,
            max_message: 0,
        }
        .encode();
        b[4] = 9;
        assert!(
            Hello::decode(&b)
                .unwrap_err()
                .contains("same memlink version")
        );
    }

    #[test]
    fn region_layout_keeps_rings_apart_and_aligned() {
        let layout = RegionLayout::fresh(1 << 16);
        let (req, resp) = (layout.requests(), layout.responses());
        assert!(
            req.control + CONTROL_LEN <= resp.control && resp.control + CONTROL_LEN <= req.data
        );
        assert_eq!(req.data + req.capacity, resp.data);
        assert_eq!(resp.data + resp.capacity, layout.len());
        assert!(
            req.data % 64 == 0
                && resp.data % 64 == 0
                && req.control % 128 == 0
                && resp.control % 128 == 0
        );
    }

    proptest! {
        #[test]
        fn decoders_accept_any_bytes_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = Hello::decode(&bytes);
            let _ = Welcome::decode(&bytes);
            let _ = Goodbye::decode(&bytes);
        }

        #[test]
        fn flipping_the_magic_is_always_rejected(byte in 0usize..4, value: u8) {
            let mut b = Welcome { admission: Admission::Accepted, ring_capacity: 4096, max_message: 1, server_pid: 1 }.encode();
            prop_assume!(b[byte] != value);
            b[byte] = value;
            prop_assert!(Welcome::decode(&b).is_err());
        }

        #[test]
        fn unknown_admission_statuses_are_rejected(status in 5u32..) {
            let mut b = Welcome { admission: Admission::Busy, ring_capacity: 4096, max_message: 1, server_pid: 1 }.encode();
            b[8..12].copy_from_slice(&status.to_le_bytes());
            prop_assert!(Welcome::decode(&b).is_err());
        }
    }
}
