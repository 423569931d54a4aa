//! Fuzzing entry points (cargo feature `fuzzing`, off by default; not part of the API).
//!
//! Every decoder of bytes another process wrote gets a function here that takes arbitrary bytes,
//! drives the real code with them and checks what comes back: a value that satisfies the
//! decoder's promises, or an error, never a panic, a hang or a read outside the mapping. The
//! cargo-fuzz targets in `fuzz/fuzz_targets/` are one-line calls of these functions, and
//! `tests/fuzz_corpus.rs` replays the committed corpus (`fuzz/corpus/<target>/`) through the
//! same functions on stable Rust, so CI checks every seed and every past finding without
//! cargo-fuzz. [`seeds`] makes the valid encodings the corpus starts from.
//!
//! Where the real code reads a mapping, the bytes are put into a real memfd mapping and read
//! through the real accessors, which bounds-check every access. Assertions here are the
//! harness's oracle: a failed one is a finding, like a panic in the library.
//!
//! | target          | drives                                                                 |
//! |-----------------|------------------------------------------------------------------------|
//! | `record_header` | `memory::ring::RecordHeader::decode`                                   |
//! | `ring`          | a real `Producer` and `Consumer` over a memfd ring that a hostile peer |
//! |                 | fills or scribbles on between operations (records, stamps, indices)    |
//! | `region`        | `link::protocol::RegionLayout::read`, the rings and wake words built   |
//! |                 | on it (`link::wake`), rpc's claim word (`rpc::claim`)                  |
//! | `handshake`     | `Hello`, `Welcome`, `Goodbye` decode (`link::protocol`)                |
//! | `rpc_stats`     | `rpc::protocol::Stats::decode`                                         |
//! | `typed`         | `rpc::bounded::decode` (typed calls' requests and replies) of a        |
//! |                 | recursive type with elements that take no bytes, and of a flat type    |
//! |                 | (where it must agree with postcard's own decoder)                      |
//! | `topic_stats`   | `pubsub::TopicStats::decode`                                           |
//! | `object_header` | `memory::header::ObjectHeader::decode`, `memory::segment::read_header` |
//! | `broadcast`     | `memory::broadcast::{read_header, head, read_entry, still_describes}`  |
//! | `holds`         | `memory::broadcast::{Holds::add, held_count, cursor}`                  |
//! | `reassembly`    | `link::fragment::Reassembly` over decoded record headers               |
//! | `sync_state`    | `Event`, `Semaphore`, `Mutex` opened over a state block the input      |
//! |                 | wrote, and their non-blocking operations                               |

// A failed check here is a finding: the harness panics on purpose, so that the fuzzer stops.
#![allow(clippy::panic)]

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::link::fragment::Reassembly;
use crate::link::protocol::{Admission, Goodbye, Hello, Purpose, RegionLayout, Welcome};
use crate::link::wake;
use crate::memory::broadcast::{self, Entry, Geometry, Holds};
use crate::memory::header::{HEADER_LEN, ObjectHeader, ObjectKind};
use crate::memory::ring::{
    CONTROL_LEN, Consumer, FIRST, LAST, MIN_CAPACITY, Producer, RecordHeader, RingLayout,
    USER_FLAGS, record_size, stamp,
};
use crate::platform::mapping::{Mapping, ReadOnlyMapping};
use crate::platform::{memfd, notify};
use crate::pubsub::{SubscriberStats, TopicStats};
use crate::rpc::Stats;
use crate::rpc::claim::{self, Claim};
use crate::{Event, EventMode, Lock, Mutex, Segment, SegmentOptions, Semaphore};

/// A target's entry point: takes the fuzzer's bytes; panics on a finding.
pub type Target = fn(&[u8]);

/// Every target: its name (the cargo-fuzz target and corpus directory) and its function.
pub const TARGETS: &[(&str, Target)] = &[
    ("record_header", record_header),
    ("ring", ring),
    ("region", region),
    ("handshake", handshake),
    ("rpc_stats", rpc_stats),
    ("typed", typed),
    ("topic_stats", topic_stats),
    ("object_header", object_header),
    ("broadcast", broadcast),
    ("holds", holds),
    ("reassembly", reassembly),
    ("sync_state", sync_state),
];

/// Reads little-endian values off the front of the fuzzer's bytes; `None` once they run out.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    /// Up to `n` bytes (fewer at the end of the input).
    fn take_some(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        self.take(n).unwrap_or_default()
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// A writable mapping of a fresh memfd of `len` bytes (`None` if the system refuses one).
fn scratch(len: usize) -> Option<(OwnedFd, Arc<Mapping>)> {
    let fd = memfd::create_for_one_writer("memlink-fuzz", len as u64).ok()?;
    let map = Mapping::map_shared(&fd, len).ok()?;
    Some((fd, Arc::new(map)))
}

/// Copies as much of `bytes` as fits into `map` at `at`.
fn fill(map: &Mapping, at: usize, bytes: &[u8]) {
    let n = bytes.len().min(map.len().saturating_sub(at));
    let copied = map.copy_in(at, &bytes[..n]);
    assert!(copied, "a clamped copy stays inside the mapping");
}

// --- ring records and indices ---------------------------------------------------------------

/// `RecordHeader::decode` of the first 24 bytes: any bytes decode, and encode back to themselves.
pub fn record_header(data: &[u8]) {
    let Some(raw) = data.get(..RecordHeader::ENCODED_LEN) else {
        return;
    };
    let mut b = [0u8; RecordHeader::ENCODED_LEN];
    b.copy_from_slice(raw);
    let header = RecordHeader::decode(&b);
    assert_eq!(header.encode(), b);
}

/// The key every fuzzed ring uses (a real key is random; seeds need to know it to forge stamps).
pub const RING_KEY: u64 = (1 << 63) | 0x00f0_22ed_0000_0001;

/// Operations of the [`ring`] target, one byte each (modulo their count), then their arguments.
pub mod ring_op {
    /// `len u16, flags u8, call_id u8`: the producer pushes a record.
    pub const PUSH: u8 = 0;
    /// `at u16, n u8, n bytes`: the peer writes bytes anywhere in the mapping.
    pub const SCRIBBLE: u8 = 1;
    /// `slot u16, position u32`: the peer writes a valid stamp for `position * 64` at a slot.
    pub const FORGE_STAMP: u8 = 2;
    /// The consumer peeks and takes a record.
    pub const TAKE: u8 = 3;
    /// The consumer peeks and skips a record.
    pub const SKIP: u8 = 4;
    /// The consumer asks whether a record is waiting.
    pub const HAS_DATA: u8 = 5;
    /// `n u8, n × len u16`: the producer asks whether records of these lengths all fit.
    pub const ROOM_FOR_ALL: u8 = 6;
    /// `allowed u8`: the producer allows or forbids early wraps.
    pub const EARLY_WRAP: u8 = 7;
    /// `n u16, n bytes`: the peer fills the data area with bytes from its start (repeated to
    /// its end, so that every record slot holds some of them).
    pub const FILL: u8 = 8;
    /// `id u8, flags u8, max u16`: the consumer takes the next record if it is a whole message
    /// with that id, those protocol flags and at most `max` bytes (`Consumer::take_whole`).
    pub const TAKE_WHOLE: u8 = 9;
    /// How many operations there are.
    pub const COUNT: u8 = 10;
}

fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A real producer and consumer over one memfd ring, driven by a list of operations, some of
/// which are a hostile peer writing the ring's bytes, stamps or indices.
///
/// First byte: the capacity (`MIN_CAPACITY << (b & 1)`). Then operations ([`ring_op`]). Until
/// the peer first scribbles, the ring must behave exactly like a queue: every push the room check
/// approved goes in, every record comes out once, in order, with its bytes, and nothing is an
/// error. After that, anything may be an error, but every record the consumer accepts has a
/// valid length and flags and its payload is read from inside the ring.
pub fn ring(data: &[u8]) {
    let mut input = Input(data);
    let Some(selector) = input.u8() else { return };
    let capacity = MIN_CAPACITY << (selector & 1);
    let Some((_fd, map)) = scratch(CONTROL_LEN + capacity) else {
        return;
    };
    let layout = RingLayout {
        control: 0,
        data: CONTROL_LEN,
        capacity,
        key: RING_KEY,
    };
    let (Ok(mut producer), Ok(mut consumer)) = (
        Producer::new(map.clone(), layout),
        Consumer::new(map.clone(), layout),
    ) else {
        panic!("a valid ring layout was refused");
    };
    let max_fragment = layout.max_fragment();
    let mut expected: VecDeque<(u64, u32, Vec<u8>)> = VecDeque::new();
    let mut tampered = false;
    let mut out = Vec::new();
    for _ in 0..512 {
        let Some(op) = input.u8() else { break };
        match op % ring_op::COUNT {
            ring_op::PUSH => {
                let (Some(len), Some(flags), Some(id)) = (input.u16(), input.u8(), input.u8())
                else {
                    break;
                };
                let len = usize::from(len) % (max_fragment + 1);
                let flags = FIRST | LAST | ((u32::from(flags) << 8) & USER_FLAGS);
                let bytes = payload(id, len);
                let room = producer.has_room_for(len);
                let pushed = producer.try_push(flags, u64::from(id), len as u64, &bytes);
                if !tampered {
                    assert_eq!(
                        room.as_ref().ok(),
                        pushed.as_ref().ok(),
                        "room check vs push"
                    );
                    match pushed {
                        Ok(true) => expected.push_back((u64::from(id), flags, bytes)),
                        Ok(false) => {}
                        Err(e) => panic!("an untouched ring failed a push: {}", e.0),
                    }
                }
            }
            ring_op::SCRIBBLE => {
                let (Some(at), Some(n)) = (input.u16(), input.u8()) else {
                    break;
                };
                let bytes = input.take_some(usize::from(n));
                fill(&map, usize::from(at) % map.len(), bytes);
                tampered = true;
            }
            ring_op::FORGE_STAMP => {
                let (Some(slot), Some(position)) = (input.u16(), input.u32()) else {
                    break;
                };
                let at = CONTROL_LEN + (usize::from(slot) % (capacity / 64)) * 64;
                if let Some(word) = map.atomic_u64(at) {
                    word.store(
                        stamp(u64::from(position) * 64, RING_KEY),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
                tampered = true;
            }
            op @ (ring_op::TAKE | ring_op::SKIP) => {
                let peeked = consumer.peek();
                if !tampered {
                    let Ok(peeked) = peeked else {
                        panic!("an untouched ring failed a peek");
                    };
                    assert_eq!(
                        peeked.map(|h| h.call_id),
                        expected.front().map(|(id, _, _)| *id),
                        "the next record is the next one pushed"
                    );
                }
                let Ok(Some(header)) = peeked else { continue };
                assert!(header.len as usize <= max_fragment, "{header:?}");
                assert_eq!(header.flags & !(FIRST | LAST | USER_FLAGS), 0, "{header:?}");
                if op == ring_op::TAKE {
                    out.clear();
                    let taken = consumer.take(&header, &mut out);
                    if taken.is_ok() {
                        assert_eq!(out.len(), header.len as usize);
                    }
                    if !tampered {
                        assert!(taken.is_ok(), "an untouched ring failed a take");
                        let front = expected.front().map(|(_, _, bytes)| bytes.as_slice());
                        assert_eq!(Some(out.as_slice()), front, "payload");
                    }
                } else {
                    let skipped = consumer.skip(&header);
                    assert!(
                        tampered || skipped.is_ok(),
                        "an untouched ring failed a skip"
                    );
                }
                if !tampered {
                    expected.pop_front();
                }
            }
            ring_op::HAS_DATA => {
                let waiting = consumer.has_data();
                if !tampered {
                    assert_eq!(waiting, !expected.is_empty(), "has_data");
                }
            }
            ring_op::ROOM_FOR_ALL => {
                let Some(n) = input.u8() else { break };
                let mut lens = Vec::new();
                for _ in 0..n % 8 {
                    let Some(len) = input.u16() else { break };
                    lens.push(usize::from(len) % (max_fragment + 1));
                }
                let room = producer.has_room_for_all(lens.iter().copied());
                assert!(
                    tampered || room.is_ok(),
                    "an untouched ring failed a room check"
                );
                if let Ok(true) = room {
                    let needed: usize = lens.iter().map(|&len| record_size(len)).sum();
                    assert!(needed <= capacity, "{needed} bytes approved in {capacity}");
                }
            }
            ring_op::EARLY_WRAP => {
                let Some(allowed) = input.u8() else { break };
                producer.set_early_wrap(allowed & 1 != 0);
            }
            ring_op::TAKE_WHOLE => {
                let (Some(id), Some(flags), Some(max)) = (input.u8(), input.u8(), input.u16())
                else {
                    break;
                };
                let user = (u32::from(flags) << 8) & USER_FLAGS;
                let before = out.len();
                let mut taken = consumer.take_whole(u64::from(id), user, u64::from(max), &mut out);
                if !tampered {
                    // Every record pushed is whole (first and last), its total its length: the
                    // shortcut takes the next one exactly when its id, flags and size are the
                    // ones asked for (once a padding in front of it is skipped), and nothing else.
                    let wanted = expected
                        .front()
                        .is_some_and(|(front_id, front_flags, bytes)| {
                            *front_id == u64::from(id)
                                && *front_flags == FIRST | LAST | user
                                && bytes.len() <= usize::from(max)
                        });
                    if wanted && matches!(taken, Ok(None)) {
                        // A padding first: the general path skips it, then the shortcut applies.
                        let peeked = consumer.peek();
                        assert!(
                            matches!(peeked, Ok(Some(h)) if h.call_id == u64::from(id)),
                            "the shortcut refused the next record: {peeked:?}"
                        );
                        taken = consumer.take_whole(u64::from(id), user, u64::from(max), &mut out);
                    }
                    let Ok(taken) = taken else {
                        panic!("an untouched ring failed a take_whole");
                    };
                    assert_eq!(
                        taken.is_some(),
                        wanted,
                        "take_whole disagrees with the queue"
                    );
                    if taken.is_some() {
                        let front = expected.pop_front().map(|(_, _, bytes)| bytes);
                        assert_eq!(Some(&out[before..]), front.as_deref(), "payload");
                    }
                } else if let Ok(Some(_)) = taken {
                    let len = out.len() - before;
                    assert!(
                        len <= usize::from(max) && len <= max_fragment,
                        "{len} bytes"
                    );
                }
            }
            _ => {
                let Some(n) = input.u16() else { break };
                let pattern = input.take_some(usize::from(n));
                if !pattern.is_empty() {
                    let tiled: Vec<u8> = pattern.iter().copied().cycle().take(capacity).collect();
                    fill(&map, CONTROL_LEN, &tiled);
                    tampered = true;
                }
            }
        }
    }
}

// --- the connection region -------------------------------------------------------------------

/// The wake pipe `region` nudges through (made once; drained after every input).
fn wake_pipe() -> Option<&'static (OwnedFd, OwnedFd)> {
    static PIPE: OnceLock<Option<(OwnedFd, OwnedFd)>> = OnceLock::new();
    PIPE.get_or_init(|| notify::wake_pipe().ok()).as_ref()
}

/// The connecting side's use of a region the accepting side wrote: `capacity u32` (as in the
/// welcome, at most 256 KiB here), then the bytes of the region from offset 0 (ring keys, the
/// parked and CPU lines, ring controls, records; the rest stays zero). Checks
/// `RegionLayout::read`, then builds both sides' rings on the layout and uses them, and reads
/// and writes the wake words.
pub fn region(data: &[u8]) {
    let mut input = Input(data);
    let Some(capacity) = input.u32() else { return };
    let capacity = (capacity & 0x3_ffff) as usize;
    let len = RegionLayout {
        capacity,
        request_key: 0,
        response_key: 0,
    }
    .len();
    let Some((_fd, map)) = scratch(len) else {
        return;
    };
    fill(&map, 0, input.rest());
    let Ok(layout) = RegionLayout::read(capacity, &map) else {
        return;
    };
    assert_eq!(layout.len(), len);
    assert!(layout.request_key >> 63 == 1 && layout.response_key >> 63 == 1);
    for (producing, consuming) in [
        (layout.requests(), layout.responses()),
        (layout.responses(), layout.requests()),
    ] {
        // Either both rings are valid or both are refused: they share the capacity.
        let (Ok(mut producer), Ok(mut consumer)) = (
            Producer::new(map.clone(), producing),
            Consumer::new(map.clone(), consuming),
        ) else {
            continue;
        };
        let mut out = Vec::new();
        for _ in 0..4 {
            match consumer.peek() {
                Ok(Some(header)) => {
                    assert!(header.len as usize <= consuming.max_fragment());
                    out.clear();
                    if consumer.take(&header, &mut out).is_err() {
                        break;
                    }
                    assert_eq!(out.len(), header.len as usize);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let _ = producer.has_room_for(64);
        let _ = producer.try_push(FIRST | LAST, 1, 3, b"abc");
    }
    // rpc's claim word, the request ring's spare word: whatever it holds, a caller's withdrawal
    // succeeds exactly when the worker's claim then finds the call withdrawn.
    let requests = Consumer::new(map.clone(), layout.requests());
    if let Ok(word) = requests.as_ref().map_err(drop).map(|c| c.spare_word()) {
        let seen = word.load(std::sync::atomic::Ordering::Relaxed);
        let call = (seen & 0xffff) + 1;
        let withdrawn = claim::withdraw(word, call, 0);
        let mut last = seen;
        let claimed = claim::claim(word, &mut last, call);
        assert_eq!(withdrawn, claimed == Claim::Withdrawn, "{seen:#x}");
    }
    let _ = wake::server_is_crowded(&map);
    let _ = wake::shares_cpu_with_peer(&map, wake::CLIENT, wake::SERVER);
    if let Some((read, write)) = wake_pipe() {
        for side in [
            wake::CLIENT,
            wake::SERVER,
            wake::CLIENT_ROOM,
            wake::SERVER_ROOM,
        ] {
            let _ = wake::nudge(&map, side, write);
        }
        notify::drain_wakes(read);
    }
    let parked =
        wake::park_begin(&map, wake::CLIENT).and_then(|()| wake::park_end(&map, wake::CLIENT));
    assert!(parked.is_ok(), "the parked flags are inside every region");
}

// --- typed messages ----------------------------------------------------------------------------

/// A recursive request type with elements that take no bytes: what lets plain postcard recurse
/// until the stack overflows, or loop for ages, on hostile bytes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum TypedTree {
    /// A leaf.
    Leaf,
    /// One level deeper.
    Node(Box<TypedTree>),
    /// Many subtrees.
    Branches(Vec<TypedTree>),
    /// Elements that take no bytes.
    Units(Vec<()>),
    /// Text and an optional subtree.
    Labelled(String, Option<Box<TypedTree>>),
    /// Map entries whose values take no bytes.
    Map(std::collections::BTreeMap<u16, ()>),
}

/// A type without recursion or elements that take no bytes: the bounds change nothing for it.
type Flat = (u8, Option<i32>, Vec<u16>, String, (bool, char, u64));

/// `rpc::bounded::decode` of any bytes: a `TypedTree` decodes or fails (the fuzzer's time and
/// stack limits catch a hang or a deep recursion), and what decodes encodes to bytes that decode
/// to the same value; a `Flat` decodes exactly when postcard's own decoder takes the whole input,
/// to the same value.
pub fn typed(data: &[u8]) {
    use crate::rpc::bounded::decode;
    if let Ok(tree) = decode::<TypedTree>(data) {
        let Ok(again) = postcard::to_allocvec(&tree) else {
            panic!("a decoded tree does not encode");
        };
        assert_eq!(decode::<TypedTree>(&again), Ok(tree));
    }
    let ours = decode::<Flat>(data).ok();
    let theirs = match postcard::take_from_bytes::<Flat>(data) {
        Ok((value, [])) => Some(value),
        _ => None,
    };
    assert_eq!(ours, theirs, "the bounded decoder disagrees with postcard");
}

// --- handshake messages and statistics -----------------------------------------------------

/// `Hello`, `Welcome` and `Goodbye` decode; whatever decodes encodes to something that decodes to
/// the same value.
pub fn handshake(data: &[u8]) {
    if let Ok(hello) = Hello::decode(data) {
        assert_eq!(Hello::decode(&hello.encode()), Ok(hello));
    }
    if let Ok(welcome) = Welcome::decode(data) {
        assert_eq!(Welcome::decode(&welcome.encode()), Ok(welcome));
    }
    if let Ok(goodbye) = Goodbye::decode(data) {
        let encoded = goodbye.encode();
        assert!(encoded.len() <= Goodbye::MAX_LEN);
        let again = Goodbye::decode(&encoded);
        match (&goodbye, &again) {
            (Goodbye::ShuttingDown, Ok(Goodbye::ShuttingDown)) => {}
            // The text may be cut to fit, on a character boundary.
            (Goodbye::Corrupted(why), Ok(Goodbye::Corrupted(cut))) => {
                assert!(why.starts_with(cut.as_str()));
            }
            _ => panic!("a goodbye did not survive encoding"),
        }
    }
}

/// `rpc::protocol::Stats::decode`; whatever decodes round-trips.
pub fn rpc_stats(data: &[u8]) {
    if let Ok(stats) = Stats::decode(data) {
        assert_eq!(Stats::decode(&stats.encode()), Ok(stats));
    }
}

/// `pubsub::TopicStats::decode`; whatever decodes round-trips.
pub fn topic_stats(data: &[u8]) {
    if let Ok(stats) = TopicStats::decode(data) {
        assert!(stats.subscribers.len() <= 64);
        assert_eq!(TopicStats::decode(&stats.encode()), Ok(stats));
    }
}

// --- object headers --------------------------------------------------------------------------

/// `ObjectHeader::decode` of the first 128 bytes (zero-padded), and `segment::read_header` of a
/// file holding exactly the input: both agree, and a decoded header is plausible and round-trips.
pub fn object_header(data: &[u8]) {
    let mut b = [0u8; HEADER_LEN];
    let n = data.len().min(HEADER_LEN);
    b[..n].copy_from_slice(&data[..n]);
    let decoded = ObjectHeader::decode(&b);
    if let Ok(header) = &decoded {
        assert!(header.total_size >= HEADER_LEN as u64 && header.total_size <= isize::MAX as u64);
        assert_eq!(ObjectHeader::decode(&header.encode()).as_ref(), Ok(header));
    }
    let Ok(fd) = memfd::create_for_one_writer("memlink-fuzz-header", data.len() as u64) else {
        return;
    };
    if !data.is_empty() {
        let Ok(map) = Mapping::map_shared(&fd, data.len()) else {
            return;
        };
        fill(&map, 0, data);
    }
    let read = crate::memory::segment::read_header(&fd);
    if data.len() >= HEADER_LEN {
        assert_eq!(read, decoded);
    } else {
        assert!(read.is_err(), "a header from {} bytes", data.len());
    }
}

// --- the broadcast region --------------------------------------------------------------------

/// A subscriber reading a broadcast region the publisher wrote: `pages u8` (the region is
/// `1 + pages % 32` pages), `n u8` and `n % 16` sequence numbers `u64` to read, then the region's
/// bytes from offset 0. Checks `read_header` against the region's real size, then reads the
/// entries as `Subscriber::take_from` does (`read_entry`, then `still_describes` for a ready
/// one) and copies the sample out of its slot.
pub fn broadcast(data: &[u8]) {
    let mut input = Input(data);
    let (Some(pages), Some(n)) = (input.u8(), input.u8()) else {
        return;
    };
    let len = (1 + usize::from(pages) % 32) * 4096;
    let mut seqs = Vec::new();
    for _ in 0..n % 16 {
        let Some(seq) = input.u64() else { return };
        seqs.push(seq);
    }
    let Some((fd, writer)) = scratch(len) else {
        return;
    };
    fill(&writer, 0, input.rest());
    let Ok(region) = ReadOnlyMapping::map(&fd, len) else {
        return;
    };
    let Ok((geometry, _pid)) = broadcast::read_header(&region, len as u64) else {
        return;
    };
    assert!(geometry.validate().is_ok());
    assert_eq!(geometry.region_len(), Some(len as u64));
    let Ok(head) = broadcast::head(&region) else {
        panic!("a region with a valid header has no head");
    };
    let entries = u64::from(geometry.entries);
    seqs.extend([head, head.wrapping_sub(1), head.saturating_sub(entries)]);
    let _ = broadcast::publisher_waiting(&region);
    let _ = broadcast::publisher_cpu(&region);
    for seq in seqs {
        match broadcast::read_entry(&region, &geometry, seq) {
            Ok(Entry::Ready { slot, len: sample }) => {
                assert!(slot < geometry.slots && sample <= geometry.max_sample);
                let end = geometry.slot_offset(slot) as u64 + u64::from(sample);
                assert!(
                    end <= len as u64,
                    "slot {slot} of {sample} bytes ends at {end}"
                );
                if broadcast::still_describes(&region, &geometry, seq) {
                    let mut bytes = Vec::new();
                    let copied = region.append_to_vec(
                        geometry.slot_offset(slot),
                        sample as usize,
                        &mut bytes,
                    );
                    assert!(copied && bytes.len() == sample as usize);
                }
            }
            Ok(Entry::Overwritten { newer }) => {
                assert!(
                    newer > seq && (newer - seq) % entries == 0,
                    "{newer} for {seq}"
                );
            }
            Ok(Entry::Pending) | Err(_) => {}
        }
    }
}

/// A publisher scanning a subscriber region the subscriber wrote: `slots u32` and `max_held u8`
/// (the topic's own, valid: `slots % (MAX_SLOTS + 1)`, `max_held % MAX_HELD + 1`), then the
/// region's bytes from offset 0 (cursor at 64, hold records at 128). `Holds::add` must accept
/// exactly the records that name a slot (or nothing), and then report them held.
pub fn holds(data: &[u8]) {
    let mut input = Input(data);
    let (Some(slots), Some(max_held)) = (input.u32(), input.u8()) else {
        return;
    };
    let slots = slots % (broadcast::MAX_SLOTS + 1);
    let max_held = u32::from(max_held) % broadcast::MAX_HELD + 1;
    let Some((_fd, control)) = scratch(broadcast::SUBSCRIBER_REGION_LEN) else {
        return;
    };
    // The page as the subscriber left it: the input, zero-padded (or cut) to the region's size.
    let mut page = vec![0u8; broadcast::SUBSCRIBER_REGION_LEN];
    let bytes = input.rest();
    let n = bytes.len().min(page.len());
    page[..n].copy_from_slice(&bytes[..n]);
    fill(&control, 0, &page);
    let record = |r: u32| {
        let at = broadcast::HOLDS + 4 * r as usize;
        u32::from_le_bytes([page[at], page[at + 1], page[at + 2], page[at + 3]])
    };
    let records: Vec<u32> = (0..max_held).map(record).collect();
    let mut holds = Holds::new(slots);
    holds.start_scan();
    let added = holds.add(&control, max_held);
    let valid = records.iter().all(|&r| r == 0 || r - 1 < slots);
    assert_eq!(added.is_ok(), valid, "{records:?} in {slots} slots");
    if valid {
        for &r in records.iter().filter(|&&r| r != 0) {
            assert!(holds.is_held(r - 1));
        }
        for probe in [0, slots / 2, slots.saturating_sub(1)] {
            assert_eq!(holds.is_held(probe), records.contains(&(probe + 1)));
        }
    }
    assert!(!holds.is_held(slots), "a slot past the end is never held");
    let held = broadcast::held_count(&control, max_held);
    assert_eq!(held as usize, records.iter().filter(|&&r| r != 0).count());
    let _ = broadcast::cursor(&control);
}

// --- fragment reassembly -----------------------------------------------------------------------

/// The receiving side of a message in fragments: `max u64` (the agreed maximum), then record
/// headers of 24 bytes each, decoded as the ring does, fed to `Reassembly` with message ids
/// expected in sequence from 1. After a refusal the connection would be dropped; here reassembly
/// starts over. Checks every completed message against a plain model.
pub fn reassembly(data: &[u8]) {
    let mut input = Input(data);
    let Some(max) = input.u64() else { return };
    let mut reassembly = Reassembly::default();
    let mut next_id = 1u64;
    // The model: (id, announced length, bytes taken) of the message in progress.
    let mut current: Option<(u64, u64, u64)> = None;
    while let Some(raw) = input.take(RecordHeader::ENCODED_LEN) {
        let mut b = [0u8; RecordHeader::ENCODED_LEN];
        b.copy_from_slice(raw);
        let header = RecordHeader::decode(&b);
        let Ok(started) = reassembly.accept(&header, |id| id == next_id, max) else {
            reassembly = Reassembly::default();
            current = None;
            continue;
        };
        match started {
            Some(total) => {
                assert!(current.is_none(), "a message started inside another");
                assert!(header.flags & FIRST != 0 && header.call_id == next_id);
                assert!(total == header.total && total <= max);
                current = Some((header.call_id, total, 0));
            }
            None => {
                let Some((id, total, _)) = current else {
                    panic!("a fragment was accepted outside a message");
                };
                assert!(header.flags & FIRST == 0 && header.call_id == id && header.total == total);
            }
        }
        let Some((id, total, taken)) = current.as_mut() else {
            return;
        };
        *taken += u64::from(header.len);
        assert!(
            *taken <= *total,
            "fragments beyond the announced length were accepted"
        );
        match reassembly.taken(&header) {
            Ok(Some(done)) => {
                assert_eq!(
                    (done, *taken),
                    (*id, *total),
                    "a message completed early or late"
                );
                next_id += 1;
                current = None;
            }
            Ok(None) => assert!(header.flags & LAST == 0),
            Err(_) => {
                assert!(header.flags & LAST != 0 && *taken != *total);
                reassembly = Reassembly::default();
                current = None;
            }
        }
        assert_eq!(reassembly.in_progress(), current.is_some());
    }
}

// --- sync-object state words -------------------------------------------------------------------

/// The segment the `sync_state` target places its state blocks in: made once, and unnamed at
/// once, so that nothing is left in `/dev/shm` however the fuzzing process ends.
fn sync_segment() -> Option<&'static Segment> {
    static SEGMENT: OnceLock<Option<Segment>> = OnceLock::new();
    SEGMENT
        .get_or_init(|| {
            let name = format!("fuzz-sync-{}", std::process::id());
            let segment = SegmentOptions::new().create(&name, 4096).ok()?;
            crate::inventory::remove(&name, true).ok()?;
            Some(segment)
        })
        .as_ref()
}

/// Operations of the [`sync_state`] target, one byte each (modulo their count).
pub mod sync_op {
    /// Event `is_set`; semaphore `value`; mutex `try_lock`, then unlock (or make consistent).
    pub const LOOK: u8 = 0;
    /// Event `set`; semaphore `post`; mutex `lock_timeout(0)`, then drop the guard.
    pub const RAISE: u8 = 1;
    /// Event `reset`; semaphore `try_wait`; mutex `try_lock`, keeping the owner-died mark.
    pub const LOWER: u8 = 2;
    /// Event and semaphore `wait_timeout(0)`; mutex `try_lock`, scribble, then unlock.
    pub const WAIT: u8 = 3;
    /// `value u32`: the peer writes the futex word.
    pub const SCRIBBLE: u8 = 4;
    /// How many operations there are.
    pub const COUNT: u8 = 5;
}

/// A primitive opened over a state block the input wrote, then used: `kind u8` (event,
/// semaphore, mutex), `offset u16` (where the block lies in a 4096-byte segment; may be
/// misaligned or out of bounds), the 16-byte block (tag, word, reserved, param), then
/// operations ([`sync_op`]). Everything must answer with a value or an error at once: all
/// waits here have a zero timeout.
pub fn sync_state(data: &[u8]) {
    let mut input = Input(data);
    let (Some(kind), Some(offset), Some(block)) = (input.u8(), input.u16(), input.take(16)) else {
        return;
    };
    let Some(segment) = sync_segment() else {
        return;
    };
    // One input at a time: the corpus replay runs targets on several test threads, and two
    // inputs writing the same segment would break each other's checks.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let offset = usize::from(offset) % (segment.len() + 8);
    if segment.write(0, &[0; 4096]).is_err() {
        return;
    }
    let _ = segment.write(offset, block);
    let ops = input.rest();
    let scribble = |at: usize, ops: &mut std::slice::Iter<'_, u8>| {
        let word: Vec<u8> = ops.by_ref().take(4).copied().collect();
        let _ = segment.write(at, &word);
    };
    let word_at = offset + 4;
    match kind % 3 {
        0 => {
            let Ok(event) = Event::open_in(segment, offset) else {
                return;
            };
            let mut ops = ops.iter();
            while let Some(op) = ops.next() {
                match op % sync_op::COUNT {
                    sync_op::LOOK => {
                        let _ = event.is_set();
                    }
                    sync_op::RAISE => {
                        if event.set().is_ok() {
                            assert_eq!(event.is_set().ok(), Some(true));
                        }
                    }
                    sync_op::LOWER => {
                        if event.reset().is_ok() {
                            assert_eq!(event.is_set().ok(), Some(false));
                        }
                    }
                    sync_op::WAIT => {
                        let set = event.is_set();
                        let waited = event.wait_timeout(Duration::ZERO);
                        if let Ok(false) = set {
                            assert!(waited.is_err(), "an unset event released a waiter");
                        }
                        if waited.is_ok() && event.mode() == EventMode::AutoReset {
                            assert_eq!(event.is_set().ok(), Some(false), "auto-reset");
                        }
                    }
                    _ => scribble(word_at, &mut ops),
                }
            }
        }
        1 => {
            let Ok(semaphore) = Semaphore::open_in(segment, offset) else {
                return;
            };
            let mut ops = ops.iter();
            while let Some(op) = ops.next() {
                let before = semaphore.value();
                if let Ok(count) = before {
                    assert!(count <= semaphore.max());
                }
                match op % sync_op::COUNT {
                    sync_op::LOOK => {}
                    sync_op::RAISE => {
                        if semaphore.post().is_ok() {
                            let after = semaphore.value().ok();
                            assert_eq!(after, before.ok().map(|c| c + 1));
                        }
                    }
                    sync_op::LOWER => {
                        if let Ok(taken) = semaphore.try_wait() {
                            assert_eq!(taken, before.ok() != Some(0));
                        }
                    }
                    sync_op::WAIT => {
                        let waited = semaphore.wait_timeout(Duration::ZERO);
                        if before.ok() == Some(0) {
                            assert!(waited.is_err(), "a wait on 0 went through");
                        }
                    }
                    _ => scribble(word_at, &mut ops),
                }
            }
        }
        _ => {
            let Ok(mutex) = Mutex::open_in(segment, offset) else {
                return;
            };
            let mut ops = ops.iter();
            while let Some(op) = ops.next() {
                match op % sync_op::COUNT {
                    sync_op::LOOK => match mutex.try_lock() {
                        Ok(Some(Lock::Acquired(guard))) => {
                            let _ = guard.unlock();
                        }
                        Ok(Some(Lock::OwnerDied(recovering))) => {
                            if let Ok(guard) = recovering.make_consistent() {
                                let _ = guard.unlock();
                            }
                        }
                        Ok(None) | Err(_) => {}
                    },
                    sync_op::RAISE => {
                        let _ = mutex.lock_timeout(Duration::ZERO);
                    }
                    sync_op::LOWER => {
                        let _ = mutex.try_lock();
                    }
                    sync_op::WAIT => {
                        let held = mutex.try_lock();
                        scribble(word_at, &mut ops);
                        if let Ok(Some(lock)) = held {
                            drop(lock);
                        }
                    }
                    _ => scribble(word_at, &mut ops),
                }
            }
        }
    }
}

// --- seeds -------------------------------------------------------------------------------------

/// Appends little-endian values, the inverse of [`Input`].
#[derive(Default)]
struct Bytes(Vec<u8>);

impl Bytes {
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    fn at(mut self, offset: usize, v: &[u8]) -> Self {
        if self.0.len() < offset + v.len() {
            self.0.resize(offset + v.len(), 0);
        }
        self.0[offset..offset + v.len()].copy_from_slice(v);
        self
    }
}

/// The seed corpus: for each target, valid encodings made by the real encoders (and a few edge
/// cases), as `(target, file name, bytes)`. `tests/fuzz_corpus.rs` checks that each is committed
/// under `fuzz/corpus/<target>/<name>` (and writes them there when asked to).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        seeds.push((target, format!("seed-{name}"), bytes));
    };

    let header = RecordHeader {
        len: 3,
        flags: FIRST | LAST,
        call_id: 7,
        total: 3,
        meta: 9,
    };
    add("record_header", "first-last", header.encode().to_vec());
    add("record_header", "zero", vec![0; RecordHeader::ENCODED_LEN]);
    add(
        "record_header",
        "ones",
        vec![0xff; RecordHeader::ENCODED_LEN],
    );

    use ring_op::*;
    let push = |b: Bytes, len: u16, id: u8| b.u8(PUSH).u16(len).u8(0).u8(id);
    let mut traffic = Bytes::default().u8(0);
    for round in 0..24u8 {
        traffic = push(traffic, u16::from(round) * 97 % 1024, round)
            .u8(HAS_DATA)
            .u8(if round % 3 == 0 { SKIP } else { TAKE });
    }
    add("ring", "traffic", traffic.0);
    let mut full = push(Bytes::default().u8(1), 2048, 1);
    for id in 2..6 {
        full = push(full, 1500, id);
    }
    full = full.u8(ROOM_FOR_ALL).u8(3).u16(100).u16(200).u16(300);
    full = full.u8(TAKE).u8(TAKE).u8(EARLY_WRAP).u8(0);
    for id in 6..12 {
        full = push(full, 700, id).u8(TAKE);
    }
    add("ring", "full-and-wrap", full.0);
    // A hostile peer: forged stamps at the consumer's position, garbage fields, a bad head.
    let hostile = push(Bytes::default().u8(0), 10, 1)
        .u8(TAKE)
        .u8(FORGE_STAMP)
        .u16(2)
        .u32(2)
        .u8(SCRIBBLE)
        .u16((CONTROL_LEN + 128 + 8) as u16)
        .u8(8)
        .bytes(&u32::MAX.to_le_bytes())
        .bytes(&(FIRST | LAST).to_le_bytes())
        .u8(TAKE)
        .u8(SCRIBBLE)
        .u16(128)
        .u8(8)
        .bytes(&(1u64 << 40).to_le_bytes())
        .u8(HAS_DATA);
    let hostile = push(hostile, 64, 2).u8(TAKE);
    add("ring", "hostile", hostile.0);
    // A forged padding record at the consumer's position.
    let padding = Bytes::default()
        .u8(0)
        .u8(FORGE_STAMP)
        .u16(0)
        .u32(0)
        .u8(SCRIBBLE)
        .u16((CONTROL_LEN + 8) as u16)
        .u8(8)
        .bytes(&0u32.to_le_bytes())
        .bytes(&4u32.to_le_bytes())
        .u8(TAKE)
        .u8(FORGE_STAMP)
        .u16(1)
        .u32(1)
        .u8(TAKE);
    add("ring", "padding", padding.0);
    // The whole-record shortcut: records with protocol flags, ids it is and is not asked for,
    // a maximum too small and then large enough, paddings in front after wraps.
    let flagged = |b: Bytes, len: u16, flags: u8, id: u8| b.u8(PUSH).u16(len).u8(flags).u8(id);
    let take_whole =
        |b: Bytes, id: u8, flags: u8, max: u16| b.u8(TAKE_WHOLE).u8(id).u8(flags).u16(max);
    let mut whole = Bytes::default().u8(0);
    for round in 0..24u8 {
        whole = flagged(whole, u16::from(round) * 211 % 1024, round % 3, round);
        whole = take_whole(whole, round + round % 2, round % 3, 1024).u8(HAS_DATA);
        if round % 2 == 1 {
            whole = whole.u8(TAKE); // the record the shortcut was not asked for
        }
    }
    whole = take_whole(flagged(whole, 500, 0, 30), 30, 0, 100);
    whole = take_whole(take_whole(whole, 30, 1, 500), 30, 0, 500).u8(HAS_DATA);
    add("ring", "take-whole", whole.0);
    // The data area full of one record header repeated, with a stamp for position 0.
    let mut line = stamp(0, RING_KEY).to_le_bytes().to_vec();
    line.extend_from_slice(&header.encode());
    line.resize(64, 0xa5);
    let filled = Bytes::default()
        .u8(0)
        .u8(FILL)
        .u16(64)
        .bytes(&line)
        .u8(HAS_DATA)
        .u8(TAKE)
        .u8(TAKE);
    add("ring", "filled", filled.0);

    let capacity = 4096u32;
    let keys = Bytes::default()
        .u64(RING_KEY)
        .u64(RING_KEY ^ 0x55)
        .at(128, &1u32.to_le_bytes())
        .at(264, &1u32.to_le_bytes());
    add(
        "region",
        "fresh",
        Bytes::default().u32(capacity).bytes(&keys.0).0,
    );
    // A region whose response ring already holds a record at position 0.
    let mut record = stamp(0, RING_KEY ^ 0x55).to_le_bytes().to_vec();
    record.extend_from_slice(&header.encode());
    let with_record = Bytes(keys.0.clone())
        .at(1024 + 4096, &record)
        .at(1024 + 4096 + 64, b"abc");
    add(
        "region",
        "response-waiting",
        Bytes::default().u32(capacity).bytes(&with_record.0).0,
    );
    add(
        "region",
        "keys-without-top-bit",
        Bytes::default().u32(capacity).u64(1).u64(2).0,
    );
    add(
        "region",
        "odd-capacity",
        Bytes::default().u32(5000).bytes(&keys.0).0,
    );

    for purpose in [
        Purpose::Connect,
        Purpose::Stats,
        Purpose::Duplex,
        Purpose::Paired,
        Purpose::Subscribe,
    ] {
        let hello = Hello {
            purpose,
            max_message: 1 << 20,
        };
        add(
            "handshake",
            &format!("hello-{purpose:?}"),
            hello.encode().to_vec(),
        );
    }
    for admission in [
        Admission::Accepted,
        Admission::PermissionDenied,
        Admission::Full { max_clients: 9 },
        Admission::ShuttingDown,
        Admission::Busy,
    ] {
        let welcome = Welcome {
            admission,
            ring_capacity: 1 << 18,
            max_message: 1 << 26,
            server_pid: 42,
        };
        let name = format!("{admission:?}").replace([' ', '{', '}', ':'], "");
        add(
            "handshake",
            &format!("welcome-{name}"),
            welcome.encode().to_vec(),
        );
    }
    add(
        "handshake",
        "goodbye-shutting-down",
        Goodbye::ShuttingDown.encode(),
    );
    add(
        "handshake",
        "goodbye-corrupted",
        Goodbye::Corrupted("ring index out of its mapping é".into()).encode(),
    );
    let mut bad_utf8 = Goodbye::Corrupted(String::new()).encode();
    bad_utf8.extend_from_slice(&[0xff, 0xc3, 0x28]);
    add("handshake", "goodbye-bad-utf8", bad_utf8);

    let stats = Stats {
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
        handler_latency: Default::default(),
        connection_list: Vec::new(),
    };
    add("rpc_stats", "stats", stats.encode().to_vec());

    let nested = |levels: usize| {
        (0..levels).fold(TypedTree::Leaf, |tree, _| TypedTree::Node(Box::new(tree)))
    };
    let trees = [
        ("leaf", TypedTree::Leaf),
        ("nested", nested(40)),
        (
            "mixed",
            TypedTree::Branches(vec![
                TypedTree::Units(vec![(); 300]),
                TypedTree::Labelled("é".into(), Some(Box::new(nested(3)))),
                TypedTree::Map((0..20).map(|k| (k * 1000, ())).collect()),
            ]),
        ),
    ];
    for (name, tree) in trees {
        if let Ok(bytes) = postcard::to_allocvec(&tree) {
            add("typed", name, bytes);
        }
    }
    // Beyond the bounds: nesting deeper than any stack holds, and 2^64 - 1 empty elements.
    let mut deep = vec![1u8; 100_000];
    deep.push(0);
    add("typed", "too-deep", deep);
    let mut endless = vec![3u8];
    endless.extend([0xff; 9]);
    endless.push(0x01);
    add("typed", "endless-units", endless);

    let subscriber = SubscriberStats {
        pid: 8,
        uid: 1000,
        lag: 3,
        held: 2,
        reliable: true,
    };
    for (name, count) in [("none", 0), ("one", 1), ("many", 64)] {
        let topic = TopicStats {
            publisher_pid: 7,
            published: 1 << 40,
            capacity: 64,
            reliable: count == 1,
            subscribers: vec![subscriber; count],
        };
        add("topic_stats", name, topic.encode());
    }

    for kind in [
        ObjectKind::Segment,
        ObjectKind::Event,
        ObjectKind::Semaphore,
        ObjectKind::Mutex,
    ] {
        let header = ObjectHeader {
            kind,
            total_size: 4096 + HEADER_LEN as u64,
            creator_pid: 4242,
            creator_uid: 1000,
            created_unix_ms: 1_800_000_000_123,
        };
        let mut object = header.encode().to_vec();
        object.extend_from_slice(&[0xab; 16]);
        add("object_header", &format!("{kind}"), object);
    }
    add("object_header", "short", b"MEMLINK\0".to_vec());

    let geometry = Geometry {
        entries: 8,
        slots: 20,
        max_sample: 100,
        history: 2,
        max_held: 4,
        flags: broadcast::RELIABLE,
    };
    if let Some(region) = broadcast_region(&geometry) {
        let pages = (region.len() / 4096 - 1) as u8;
        let b = Bytes::default()
            .u8(pages)
            .u8(4)
            .u64(0)
            .u64(3)
            .u64(9)
            .u64(u64::MAX);
        add("broadcast", "published", b.bytes(&region).0);
    }
    let big = Geometry {
        entries: 256,
        slots: 300,
        max_sample: 64,
        history: 0,
        max_held: 64,
        flags: 0,
    };
    if let Some(region) = broadcast_region(&big) {
        let pages = (region.len() / 4096 - 1) as u8;
        add(
            "broadcast",
            "big",
            Bytes::default().u8(pages).u8(1).u64(1).bytes(&region).0,
        );
    }

    let mut subscriber_region = vec![0u8; broadcast::SUBSCRIBER_REGION_LEN];
    subscriber_region[64..72].copy_from_slice(&5u64.to_le_bytes());
    for (record, slot) in [(0usize, 3u32), (2, 19), (3, 0)] {
        let at = broadcast::HOLDS + 4 * record;
        subscriber_region[at..at + 4].copy_from_slice(&(slot + 1).to_le_bytes());
    }
    add(
        "holds",
        "held",
        Bytes::default().u32(20).u8(3).bytes(&subscriber_region).0,
    );
    add(
        "holds",
        "out-of-range",
        Bytes::default().u32(19).u8(3).bytes(&subscriber_region).0,
    );
    add("holds", "empty", Bytes::default().u32(20).u8(63).0);

    let fragment = |len: u32, flags: u32, id: u64, total: u64| {
        RecordHeader {
            len,
            flags,
            call_id: id,
            total,
            meta: 0,
        }
        .encode()
    };
    let message = Bytes::default()
        .u64(100)
        .bytes(&fragment(0, FIRST | LAST, 1, 0))
        .bytes(&fragment(40, FIRST, 2, 90))
        .bytes(&fragment(40, 0, 2, 90))
        .bytes(&fragment(10, LAST, 2, 90))
        .bytes(&fragment(5, FIRST | LAST | 0x100, 3, 5));
    add("reassembly", "messages", message.0);
    let refused = Bytes::default()
        .u64(10)
        .bytes(&fragment(1, LAST, 1, 1))
        .bytes(&fragment(11, FIRST | LAST, 1, 11))
        .bytes(&fragment(0, FIRST, 1, 4))
        .bytes(&fragment(3, FIRST | LAST, 1, 4))
        .bytes(&fragment(4, FIRST | LAST, 1, 4));
    add("reassembly", "refused", refused.0);

    let block = |tag: &[u8; 4], word: u32, param: u32| {
        Bytes::default().bytes(tag).u32(word).u32(0).u32(param).0
    };
    use sync_op::{LOOK, LOWER, RAISE, SCRIBBLE as SYNC_SCRIBBLE, WAIT};
    let ops = [
        LOOK,
        RAISE,
        LOOK,
        WAIT,
        LOWER,
        WAIT,
        RAISE,
        RAISE,
        SYNC_SCRIBBLE,
    ];
    for (name, kind, tag, word, param) in [
        ("event-auto", 0u8, b"EVNT", 0u32, 1u32),
        ("event-manual", 0, b"EVNT", 1, 2),
        ("event-garbage", 0, b"EVNT", 7, 2),
        ("semaphore", 1, b"SEMA", 1, 2),
        ("semaphore-over", 1, b"SEMA", 9, 2),
        ("mutex-free", 2, b"MUTX", 0, 0),
        ("mutex-dead-owner", 2, b"MUTX", 0x8000_0005, 0),
        ("mutex-owner-died", 2, b"MUTX", 0x4000_0000, 0),
    ] {
        let b = Bytes::default()
            .u8(kind)
            .u16(64)
            .bytes(&block(tag, word, param))
            .bytes(&ops)
            .u32(2)
            .bytes(&[LOOK, LOWER, RAISE, WAIT, 1, 0, 0, 0, LOOK]);
        add("sync_state", name, b.0);
    }
    let misaligned = Bytes::default()
        .u8(1)
        .u16(66)
        .bytes(&block(b"SEMA", 0, 1))
        .u8(RAISE);
    add("sync_state", "misaligned", misaligned.0);
    let outside = Bytes::default()
        .u8(0)
        .u16(4090)
        .bytes(&block(b"EVNT", 0, 1))
        .u8(RAISE);
    add("sync_state", "outside", outside.0);
    seeds
}

/// The bytes of a broadcast region a publisher wrote for `geometry`, with a few samples
/// published (seed material for [`broadcast`]).
fn broadcast_region(geometry: &Geometry) -> Option<Vec<u8>> {
    let len = usize::try_from(geometry.region_len()?).ok()?;
    let (_fd, map) = scratch(len)?;
    broadcast::write_header(&map, geometry, 4242).ok()?;
    for seq in 0..10u64 {
        let slot = (seq % u64::from(geometry.slots)) as u32;
        let sample = (seq as u32 * 7) % (geometry.max_sample + 1);
        fill(
            &map,
            geometry.slot_offset(slot),
            &payload(seq as u8, sample as usize),
        );
        broadcast::write_entry(&map, geometry, seq, slot, sample).ok()?;
    }
    broadcast::set_head(&map, 10).ok()?;
    let mut bytes = vec![0u8; len];
    map.read_atomic(0, &mut bytes).then_some(bytes)
}
