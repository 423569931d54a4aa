//! Cutting a message into fragments for a ring, and putting it back together from the fragments
//! a peer wrote, validating every id, flag and length on the way (the peer may write anything
//! there). Used by every pattern's sending and receiving sides: the rpc server (requests in,
//! replies out), the rpc client and the duplex channel. Pattern-specific flags (rpc's error
//! replies) are the caller's to add and check.

use std::ops::Range;

use crate::memory::ring::{FIRST, LAST, RecordHeader};

/// The fragment of a `len`-byte message that starts at byte `at`, for records of at most
/// `fragment` bytes: its flags ([`FIRST`], [`LAST`]) and its bytes. An empty message is one
/// empty fragment, both first and last.
pub(crate) fn fragment_at(at: usize, len: usize, fragment: usize) -> (u32, Range<usize>) {
    let end = at.saturating_add(fragment).min(len);
    let flags = if at == 0 { FIRST } else { 0 } | if end == len { LAST } else { 0 };
    (flags, at..end)
}

/// Payload lengths of all the fragments of a `len`-byte message.
pub(crate) fn fragment_lens(len: usize, fragment: usize) -> impl Iterator<Item = usize> + Clone {
    let mut at = Some(0);
    std::iter::from_fn(move || {
        let start = at?;
        let (flags, range) = fragment_at(start, len, fragment);
        at = (flags & LAST == 0).then_some(range.end);
        Some(range.len())
    })
}

/// The message being reassembled, if one has started.
#[derive(Debug, Default)]
pub(crate) struct Reassembly {
    /// Id and announced length of the message in progress.
    current: Option<(u64, u64)>,
    /// Payload bytes taken so far.
    received: u64,
}

impl Reassembly {
    /// Whether part of a message has been taken.
    pub(crate) fn in_progress(&self) -> bool {
        self.current.is_some()
    }

    /// Checks `header` as the next fragment, before its payload is taken. A message must start
    /// with a first fragment whose id `id_ok` accepts and whose announced length is at most
    /// `max`; the rest must carry the same id and length, add up to no more than it, and be
    /// non-empty unless last (an empty fragment would move nothing closer to its end). Returns
    /// the announced length when `header` starts a message (to reserve room for it).
    pub(crate) fn accept(
        &mut self,
        header: &RecordHeader,
        id_ok: impl FnOnce(u64) -> bool,
        max: u64,
    ) -> Result<Option<u64>, String> {
        let started = match self.current {
            None => {
                if header.flags & FIRST == 0 {
                    return Err("a message does not start with a first fragment".into());
                }
                if !id_ok(header.call_id) {
                    return Err(format!("message id {} is out of sequence", header.call_id));
                }
                if header.total > max {
                    return Err(format!(
                        "message of {} bytes exceeds the agreed {max}-byte maximum",
                        header.total
                    ));
                }
                self.current = Some((header.call_id, header.total));
                self.received = 0;
                Some(header.total)
            }
            Some((id, total)) => {
                if header.flags & FIRST != 0 || header.call_id != id || header.total != total {
                    return Err("fragments of one message disagree".into());
                }
                None
            }
        };
        let total = self.current.map_or(0, |(_, total)| total);
        if self.received + u64::from(header.len) > total {
            return Err("fragments exceed the announced length".into());
        }
        if header.len == 0 && header.flags & LAST == 0 {
            return Err("an empty fragment that is not the last".into());
        }
        Ok(started)
    }

    /// Records that the payload of the fragment [`Reassembly::accept`] passed was taken;
    /// `Ok(Some(id))` when it completed message `id`.
    pub(crate) fn taken(&mut self, header: &RecordHeader) -> Result<Option<u64>, String> {
        self.received += u64::from(header.len);
        if header.flags & LAST == 0 {
            return Ok(None);
        }
        let Some((id, total)) = self.current.take() else {
            return Err("a fragment was taken outside a message (memlink bug)".into());
        };
        if self.received != total {
            return Err("message shorter than announced".into());
        }
        Ok(Some(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(len: u32, flags: u32, call_id: u64, total: u64) -> RecordHeader {
        RecordHeader {
            len,
            flags,
            call_id,
            total,
            meta: 0,
        }
    }

    #[test]
    fn fragments_cover_the_message() {
        assert_eq!(fragment_lens(0, 16).collect::<Vec<_>>(), [0]);
        assert_eq!(fragment_lens(16, 16).collect::<Vec<_>>(), [16]);
        assert_eq!(fragment_lens(33, 16).collect::<Vec<_>>(), [16, 16, 1]);
        assert_eq!(fragment_at(0, 33, 16), (FIRST, 0..16));
        assert_eq!(fragment_at(16, 33, 16), (0, 16..32));
        assert_eq!(fragment_at(32, 33, 16), (LAST, 32..33));
        assert_eq!(fragment_at(0, 0, 16), (FIRST | LAST, 0..0));
    }

    #[test]
    fn a_well_formed_message_completes() {
        let mut r = Reassembly::default();
        let first = header(4, FIRST, 7, 6);
        assert_eq!(r.accept(&first, |id| id == 7, 10), Ok(Some(6)));
        assert_eq!(r.taken(&first), Ok(None));
        let last = header(2, LAST, 7, 6);
        assert_eq!(r.accept(&last, |_| false, 10), Ok(None));
        assert_eq!(r.taken(&last), Ok(Some(7)));
        assert!(!r.in_progress());
        let empty = header(0, FIRST | LAST, 8, 0);
        assert_eq!(r.accept(&empty, |_| true, 10), Ok(Some(0)));
        assert_eq!(r.taken(&empty), Ok(Some(8)));
    }

    #[test]
    fn malformed_fragments_are_refused() {
        let refused = |headers: &[RecordHeader]| {
            let mut r = Reassembly::default();
            headers
                .iter()
                .any(|h| r.accept(h, |id| id == 1, 100).is_err() || r.taken(h).is_err())
        };
        assert!(refused(&[header(1, LAST, 1, 1)]), "no first fragment");
        assert!(refused(&[header(1, FIRST | LAST, 2, 1)]), "wrong id");
        assert!(refused(&[header(1, FIRST | LAST, 1, 101)]), "too large");
        assert!(
            refused(&[header(2, FIRST | LAST, 1, 1)]),
            "longer than announced"
        );
        assert!(
            refused(&[header(1, FIRST | LAST, 1, 2)]),
            "shorter than announced"
        );
        assert!(
            refused(&[header(0, FIRST, 1, 2)]),
            "empty non-last fragment"
        );
        assert!(
            refused(&[header(1, FIRST, 1, 2), header(1, FIRST | LAST, 1, 2)]),
            "restart"
        );
        assert!(
            refused(&[header(1, FIRST, 1, 2), header(1, LAST, 3, 2)]),
            "other id"
        );
        assert!(
            refused(&[header(1, FIRST, 1, 2), header(1, LAST, 1, 3)]),
            "other total"
        );
    }

    proptest! {
        #[test]
        fn any_headers_are_refused_or_add_up(
            headers in proptest::collection::vec((0u32..40, 0u32..4, 0u64..3, 0u64..80), 0..12)
        ) {
            let mut r = Reassembly::default();
            let mut taken = 0u64;
            for (len, flags, id, total) in headers {
                let h = header(len, flags, id, total);
                if r.accept(&h, |id| id == 1, 64).is_err() {
                    break;
                }
                taken += u64::from(len);
                match r.taken(&h) {
                    Ok(Some(_)) => {
                        prop_assert_eq!(taken, total);
                        prop_assert!(total <= 64);
                        taken = 0;
                    }
                    Ok(None) => prop_assert!(taken <= total),
                    Err(_) => break,
                }
            }
        }
    }
}
