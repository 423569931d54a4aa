//! The header at the start of every memlink object: the shared layout's ABI.
//!
//! Written once by the creator before the object is published under its name, read and validated
//! by everyone who opens it. Encoded explicitly as little-endian fields at fixed offsets (pinned by
//! a test) rather than by casting memory to a struct, so decoding untrusted bytes is plain safe
//! code that can be fuzzed.
//!
//! | offset | size | field                                   |
//! |--------|------|-----------------------------------------|
//! | 0      | 8    | magic `b"MEMLINK\0"`                    |
//! | 8      | 4    | layout version ([`LAYOUT_VERSION`])     |
//! | 12     | 4    | object kind ([`ObjectKind`])            |
//! | 16     | 8    | total size of the object in bytes       |
//! | 24     | 4    | payload offset (= [`HEADER_LEN`])       |
//! | 28     | 4    | creator process id                      |
//! | 32     | 4    | creator effective user id               |
//! | 36     | 4    | reserved, zero                          |
//! | 40     | 8    | creation time, ms since the Unix epoch  |
//! | 48     | 80   | reserved, zero                          |

use std::fmt;

/// Size of the header; payloads start here, 64-byte aligned.
pub const HEADER_LEN: usize = 128;
/// Identifies a memlink object.
pub const MAGIC: [u8; 8] = *b"MEMLINK\0";
/// Bumped whenever any shared layout changes incompatibly.
pub const LAYOUT_VERSION: u32 = 1;

/// What an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ObjectKind {
    /// A plain [`crate::Segment`] of user bytes.
    Segment,
    /// A named [`crate::Event`].
    Event,
    /// A named [`crate::Semaphore`].
    Semaphore,
    /// A named [`crate::Mutex`].
    Mutex,
}

impl ObjectKind {
    fn code(self) -> u32 {
        match self {
            ObjectKind::Segment => 1,
            ObjectKind::Event => 2,
            ObjectKind::Semaphore => 3,
            ObjectKind::Mutex => 4,
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => ObjectKind::Segment,
            2 => ObjectKind::Event,
            3 => ObjectKind::Semaphore,
            4 => ObjectKind::Mutex,
            _ => return None,
        })
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Segment => "segment",
            ObjectKind::Event => "event",
            ObjectKind::Semaphore => "semaphore",
            ObjectKind::Mutex => "mutex",
        })
    }
}

/// A decoded, validated header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectHeader {
    /// What the object is.
    pub kind: ObjectKind,
    /// Size of the whole object, header included.
    pub total_size: u64,
    /// Process id of the creator.
    pub creator_pid: u32,
    /// Effective user id of the creator.
    pub creator_uid: u32,
    /// Creation time in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
}

/// Why a header was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderProblem {
    /// Not a memlink object, or one from an incompatible version.
    Foreign(String),
    /// Claims to be a memlink object but a field is impossible.
    Invalid(String),
}

impl ObjectHeader {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.kind.code().to_le_bytes());
        b[16..24].copy_from_slice(&self.total_size.to_le_bytes());
        b[24..28].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[28..32].copy_from_slice(&self.creator_pid.to_le_bytes());
        b[32..36].copy_from_slice(&self.creator_uid.to_le_bytes());
        b[40..48].copy_from_slice(&self.created_unix_ms.to_le_bytes());
        b
    }

    /// Decodes and validates bytes copied out of an object. Any input gives a value, never a panic.
    pub(crate) fn decode(b: &[u8; HEADER_LEN]) -> Result<Self, HeaderProblem> {
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| u64::from(u32_at(at)) | (u64::from(u32_at(at + 4)) << 32);
        if b[0..8] != MAGIC {
            return Err(HeaderProblem::Foreign(
                "no memlink magic number at its start".into(),
            ));
        }
        let version = u32_at(8);
        if version != LAYOUT_VERSION {
            return Err(HeaderProblem::Foreign(format!(
                "layout version {version}, this build of memlink speaks version {LAYOUT_VERSION}; \
                 use the same memlink version on both sides"
            )));
        }
        let code = u32_at(12);
        let kind = ObjectKind::from_code(code)
            .ok_or_else(|| HeaderProblem::Foreign(format!("unknown object kind {code}")))?;
        let payload_offset = u32_at(24);
        if payload_offset as usize != HEADER_LEN {
            return Err(HeaderProblem::Invalid(format!(
                "payload offset {payload_offset}, expected {HEADER_LEN}"
            )));
        }
        let total_size = u64_at(16);
        if total_size < HEADER_LEN as u64 || total_size > isize::MAX as u64 {
            return Err(HeaderProblem::Invalid(format!(
                "impossible total size {total_size}"
            )));
        }
        Ok(ObjectHeader {
            kind,
            total_size,
            creator_pid: u32_at(28),
            creator_uid: u32_at(32),
            created_unix_ms: u64_at(40),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> ObjectHeader {
        ObjectHeader {
            kind: ObjectKind::Mutex,
            total_size: 0x1_0000_0080,
            creator_pid: 4242,
            creator_uid: 1000,
            created_unix_ms: 1_800_000_000_123,
        }
    }

    #[test]
    fn layout_is_pinned() {
        let b = sample().encode();
        assert_eq!(&b[0..8], b"MEMLINK\0");
        assert_eq!(&b[8..12], &[1, 0, 0, 0]);
        assert_eq!(&b[12..16], &[4, 0, 0, 0]);
        assert_eq!(&b[16..24], &[0x80, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&b[24..28], &[128, 0, 0, 0]);
        assert_eq!(&b[28..32], &4242u32.to_le_bytes());
        assert_eq!(&b[32..36], &1000u32.to_le_bytes());
        assert_eq!(&b[36..40], &[0; 4]);
        assert_eq!(&b[40..48], &1_800_000_000_123u64.to_le_bytes());
        assert!(b[48..].iter().all(|&x| x == 0));
    }

    #[test]
    fn rejects_each_bad_field() {
        let good = sample().encode();
        let mut b = good;
        b[0] = b'X';
        assert!(matches!(
            ObjectHeader::decode(&b),
            Err(HeaderProblem::Foreign(_))
        ));
        let mut b = good;
        b[8] = 2;
        assert!(
            matches!(ObjectHeader::decode(&b), Err(HeaderProblem::Foreign(r)) if r.contains("version 2"))
        );
        let mut b = good;
        b[12] = 99;
        assert!(matches!(
            ObjectHeader::decode(&b),
            Err(HeaderProblem::Foreign(_))
        ));
        let mut b = good;
        b[24] = 0;
        assert!(matches!(
            ObjectHeader::decode(&b),
            Err(HeaderProblem::Invalid(_))
        ));
        let mut b = good;
        b[16..24].copy_from_slice(&5u64.to_le_bytes());
        assert!(matches!(
            ObjectHeader::decode(&b),
            Err(HeaderProblem::Invalid(_))
        ));
        let mut b = good;
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            ObjectHeader::decode(&b),
            Err(HeaderProblem::Invalid(_))
        ));
    }

    fn any_kind() -> impl Strategy<Value = ObjectKind> {
        prop_oneof![
            Just(ObjectKind::Segment),
            Just(ObjectKind::Event),
            Just(ObjectKind::Semaphore),
            Just(ObjectKind::Mutex)
        ]
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(kind in any_kind(), total in (HEADER_LEN as u64)..=(isize::MAX as u64),
                                     pid: u32, uid: u32, ms: u64) {
            let h = ObjectHeader { kind, total_size: total, creator_pid: pid, creator_uid: uid, created_unix_ms: ms };
            prop_assert_eq!(ObjectHeader::decode(&h.encode()), Ok(h));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), HEADER_LEN)) {
            let mut b = [0u8; HEADER_LEN];
            b.copy_from_slice(&bytes);
            let _ = ObjectHeader::decode(&b);
        }

        #[test]
        fn single_field_corruption_of_a_valid_header_is_caught_or_harmless(at in 0usize..HEADER_LEN, val: u8) {
            let mut b = sample().encode();
            b[at] = val;
            if let Ok(h) = ObjectHeader::decode(&b) {
                prop_assert!(h.total_size >= HEADER_LEN as u64);
                prop_assert!(h.total_size <= isize::MAX as u64);
            }
        }
    }
}
