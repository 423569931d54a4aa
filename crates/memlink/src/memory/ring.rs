//! A single-producer single-consumer ring of variable-size records in shared memory.
//!
//! An SPSC byte ring in the FastFlow style: the producer's position (`tail`) and the consumer's
//! (`head`) are monotonically increasing byte counts (never wrapped; a 64-bit counter outlives the
//! machine), and a position in the data area is `index % capacity` (a mask: the capacity is a
//! power of two).
//!
//! A record is a 64-byte header line followed by its payload padded to a multiple of 64 bytes, so
//! every payload starts 64-byte aligned (glibc `memcpy` is several times slower for copies whose
//! source and destination disagree in their low address bits). A record never wraps around the end
//! of the data area: when it does not fit before the end, the producer first writes a *padding*
//! record that fills the rest.
//!
//! The producer publishes a record by writing its header's *stamp* last: the record's own stream
//! position plus one, mixed with the ring's key (see [`RingLayout::key`]). The consumer looks for
//! the stamp it expects at `head` instead of reading a separate tail index, so a message costs the
//! cache lines it occupies and nothing more (with a tail index, a 64-byte message crossed three
//! lines per direction instead of two). The bytes at `head` may be stale: an older header (whose
//! stamp names an older position), or the payload of an older, longer record, which can hold any
//! bytes a third party chose (a server echoing data another client stored, say). Without the key
//! such a payload could pass for the next record; with a random 64-bit key only the two peers
//! know, it passes with probability 2^-63. A producer writing garbage there only garbles its own
//! stream, which the consumer validates like any other input. The consumer
//! publishes `head` on its own 128-byte line (adjacent-line prefetch pairs 64-byte lines, hence
//! 128); the producer reads it only when its last look leaves too little room.
//!
//! Memory grows with need: the producer goes back to the start of the data area early (with a
//! padding record, as at the end) whenever it has passed the first [`HOT_WINDOW`] bytes and finds
//! the ring empty as it is about to enter another page (it looks at most once per page). A stream
//! of small messages therefore cycles through the same few pages, and an
//! unpopulated mapping (memfd pages are allocated on first touch) only ever holds the pages that
//! messages needed. Large or backed-up messages still use the whole ring.
//!
//! The consumer's line also holds one *spare word* the ring itself never touches, for the
//! protocol above to keep per-message state the consumer writes anyway when it takes a message
//! (rpc: the claim word that settles whether a call runs). On that line it costs the consumer no
//! extra cache line; the producer reads it only when it asks.
//!
//! Both sides keep their own index in a private field and never read it back from shared memory;
//! they only *read* the other side's index, and validate it (a peer can write anything there).
//! Every record header is validated before its payload is touched. Anything inconsistent is
//! [`RingError`], and the caller drops the connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::platform::mapping::{Mapping, RING_CONTROL_LEN, RingArea};

/// Records and payloads are aligned to this.
pub(crate) const RECORD_ALIGN: usize = 64;
/// Bytes of the header line in front of each payload.
pub(crate) const RECORD_HEADER_LEN: usize = 64;
/// Bytes of a ring's control block (a reserved line, then the `head` line).
pub(crate) const CONTROL_LEN: usize = RING_CONTROL_LEN;
/// The control block's word holding `head` (at byte 128: its own 128-byte line pair).
const HEAD_WORD: usize = 16;
/// The consumer's spare word, on its `head` line (see [`Consumer::spare_word`]).
const SPARE_WORD: usize = HEAD_WORD + 1;

/// Largest fragment of a message, whatever the ring's size (see [`RingLayout::max_fragment`]).
pub(crate) const MAX_FRAGMENT: usize = 16 << 10;

/// Bytes at the start of the data area that small messages cycle through (see the module doc).
pub(crate) const HOT_WINDOW: usize = 16 << 10;

/// The page size early wraps are decided at (see [`Producer::try_push`]).
const PAGE: usize = 4096;

/// Smallest and largest data-area sizes a ring accepts.
pub(crate) const MIN_CAPACITY: usize = 4096;
pub(crate) const MAX_CAPACITY: usize = 1 << 30;

/// First fragment of a message.
pub(crate) const FIRST: u32 = 1;
/// Last fragment of a message.
pub(crate) const LAST: u32 = 2;
/// Fills the end of the data area; carries nothing. Never seen by users of the ring.
const PADDING: u32 = 4;
/// Bits the ring leaves to the protocol above it.
pub(crate) const USER_FLAGS: u32 = 0xff00;

/// A ring was found in an impossible state: the peer is broken or hostile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RingError(pub(crate) Reason);

/// What a [`RingError`] says, boxed: a `Result` that may carry it stays small enough to come back
/// in registers, and the hot path that never fails does not pay for the rare one that does.
// A `Box<String>` is one word where a `String` is three and a `Box<str>` two: the point here.
#[allow(clippy::box_collection)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reason(Box<String>);

impl From<String> for Reason {
    fn from(message: String) -> Self {
        Reason(Box::new(message))
    }
}

impl From<&str> for Reason {
    fn from(message: &str) -> Self {
        Reason(Box::new(message.to_owned()))
    }
}

impl From<Reason> for String {
    fn from(reason: Reason) -> Self {
        *reason.0
    }
}

impl std::ops::Deref for Reason {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cold]
#[inline(never)]
fn corrupted<T>(what: impl Into<String>) -> Result<T, RingError> {
    Err(RingError(what.into().into()))
}

/// Where a record's stamp sits in its header line; the fields follow it.
const STAMP_AT: usize = 0;
const FIELDS_AT: usize = 8;

/// The stamp that publishes the record starting at stream position `position` in a ring with
/// `key`. Keys have their top bit set (see [`RingLayout::key`]) and positions stay far below
/// 2^63, so a stamp is never 0: a fresh (zeroed) ring holds no record.
pub(crate) fn stamp(position: u64, key: u64) -> u64 {
    position.wrapping_add(1) ^ key
}

/// The header of one record, as stored in its first line after the stamp (little-endian, 32
/// bytes: `len u32 | flags u32 | call_id u64 | total u64 | meta u64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    /// Payload bytes in this record.
    pub(crate) len: u32,
    /// [`FIRST`], [`LAST`] and protocol bits within [`USER_FLAGS`].
    pub(crate) flags: u32,
    /// Which call this fragment belongs to.
    pub(crate) call_id: u64,
    /// Length of the whole message this fragment belongs to.
    pub(crate) total: u64,
    /// A word the protocol above gives its own meaning (rpc: a request's deadline); 0 where it
    /// has none. Untrusted like every other field: the protocol that reads it validates it.
    pub(crate) meta: u64,
}

impl RecordHeader {
    pub(crate) const ENCODED_LEN: usize = 32;

    /// The header of a record carrying `payload` (at most a fragment: its length fits in 32 bits).
    #[inline(always)]
    fn of(payload: &[u8], flags: u32, call_id: u64, total: u64, meta: u64) -> Self {
        RecordHeader {
            len: payload.len() as u32,
            flags,
            call_id,
            total,
            meta,
        }
    }

    /// The header as the four 64-bit words the ring stores (atomically, one by one: the hot
    /// path neither copies the header through memory nor reassembles it from bytes).
    #[inline]
    fn to_words(self) -> [u64; 4] {
        [
            u64::from(self.len) | u64::from(self.flags) << 32,
            self.call_id,
            self.total,
            self.meta,
        ]
    }

    #[inline]
    fn from_words(words: [u64; 4]) -> Self {
        RecordHeader {
            len: words[0] as u32,
            flags: (words[0] >> 32) as u32,
            call_id: words[1],
            total: words[2],
            meta: words[3],
        }
    }

    /// The header's bytes as stored (each word little-endian).
    #[cfg_attr(not(any(test, feature = "fault-injection")), allow(dead_code))]
    pub(crate) fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        for (chunk, word) in b.chunks_exact_mut(8).zip(self.to_words()) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        b
    }

    /// The header stored as these bytes.
    #[cfg_attr(not(any(test, feature = "fault-injection")), allow(dead_code))]
    pub(crate) fn decode(b: &[u8; Self::ENCODED_LEN]) -> Self {
        let mut words = [0u64; 4];
        for (word, chunk) in words.iter_mut().zip(b.chunks_exact(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            *word = u64::from_le_bytes(bytes);
        }
        Self::from_words(words)
    }
}

/// Space a record with `len` payload bytes takes in the data area.
#[inline]
pub(crate) fn record_size(len: usize) -> usize {
    RECORD_HEADER_LEN + len.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// Where a ring's control block and data area are inside a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RingLayout {
    /// Offset of the control block (128-byte aligned).
    pub(crate) control: usize,
    /// Offset of the data area (64-byte aligned).
    pub(crate) data: usize,
    /// Data area size: a power of two between [`MIN_CAPACITY`] and [`MAX_CAPACITY`].
    pub(crate) capacity: usize,
    /// Mixed into every stamp; random, with the top bit set, known to the two ends only (each
    /// reads it once, when it sets up, and never again from shared memory).
    pub(crate) key: u64,
}

impl RingLayout {
    /// Largest payload one record may carry: a quarter of the ring, so that several fragments of a
    /// large message are in flight at once and both sides copy in parallel, and at most
    /// [`MAX_FRAGMENT`], so that the unit a server moves for one connection before it turns to
    /// the next stays short.
    #[inline]
    pub(crate) fn max_fragment(&self) -> usize {
        (self.capacity / 4).min(MAX_FRAGMENT)
    }

    fn check(&self, map: &Mapping) -> Result<(), RingError> {
        let fits = |at: usize, len: usize| at.checked_add(len).is_some_and(|end| end <= map.len());
        if !self.capacity.is_power_of_two()
            || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&self.capacity)
        {
            return corrupted(format!(
                "ring capacity {} is not a power of two in range",
                self.capacity
            ));
        }
        if !self.control.is_multiple_of(128) || !self.data.is_multiple_of(RECORD_ALIGN) {
            return corrupted("ring offsets are misaligned");
        }
        if !fits(self.control, CONTROL_LEN) || !fits(self.data, self.capacity) {
            return corrupted("ring does not fit in its mapping");
        }
        Ok(())
    }
}

/// The ring's memory as `layout` places it in `map` (which `layout.check` has accepted).
fn area_of(map: Arc<Mapping>, layout: &RingLayout) -> Result<RingArea, RingError> {
    match RingArea::new(map, layout.control, layout.data, layout.capacity) {
        Some(area) => Ok(area),
        None => corrupted("ring does not fit in its mapping"),
    }
}

/// The header line's words at data-area offset `at` (a record's start, so a multiple of
/// [`RECORD_ALIGN`]): the stamp, then the four field words.
#[inline(always)]
fn header_words(area: &RingArea, at: usize) -> (&AtomicU64, [&AtomicU64; 4]) {
    const _: () = assert!(STAMP_AT == 0 && FIELDS_AT == 8 && RecordHeader::ENCODED_LEN == 32);
    const _: () = assert!(RECORD_HEADER_LEN == 64 && RECORD_ALIGN == 64);
    let [stamp, a, b, c, d, ..] = area.line(at);
    (stamp, [a, b, c, d])
}

/// Offset in the data area of stream position `position` (the capacity is a power of two,
/// checked when the ring is set up: a mask, not a division).
#[inline]
fn offset_in(layout: &RingLayout, position: u64) -> usize {
    (position as usize) & (layout.capacity - 1)
}

/// The writing end of a ring.
#[derive(Debug)]
pub(crate) struct Producer {
    area: RingArea,
    layout: RingLayout,
    /// `layout.max_fragment()`, and the end of where the push fast path may write
    /// (`min(capacity, HOT_WINDOW)`): both asked for on every push.
    max_fragment: usize,
    fast_end: usize,
    tail: u64,
    head_seen: u64,
    /// Whether a record may go back to the front early (see the module doc).
    early_wrap: bool,
}

impl Producer {
    /// The producer of a fresh (all-zero) ring.
    pub(crate) fn new(map: Arc<Mapping>, layout: RingLayout) -> Result<Self, RingError> {
        layout.check(&map)?;
        Ok(Producer {
            area: area_of(map, &layout)?,
            max_fragment: layout.max_fragment(),
            fast_end: layout.capacity.min(HOT_WINDOW),
            layout,
            tail: 0,
            head_seen: 0,
            early_wrap: true,
        })
    }

    pub(crate) fn layout(&self) -> &RingLayout {
        &self.layout
    }

    /// [`RingLayout::max_fragment`], kept at hand: every push asks for it.
    #[inline]
    pub(crate) fn max_fragment(&self) -> usize {
        self.max_fragment
    }

    /// Bytes written so far (our private `tail`).
    #[cfg(test)]
    pub(crate) fn position(&self) -> u64 {
        self.tail
    }

    /// The consumer's position, validated against ours.
    pub(crate) fn consumer_position(&mut self) -> Result<u64, RingError> {
        // SYNC POINT: Acquire, pairs with the Release `head` store in `Consumer::advance`: once we
        // see the consumer past a record, its copies out of that record are complete and we may
        // overwrite the space.
        let head = self
            .area
            .control_word::<HEAD_WORD>()
            .load(Ordering::Acquire);
        let capacity = self.layout.capacity as u64;
        if head > self.tail
            || self.tail - head > capacity
            || !head.is_multiple_of(RECORD_ALIGN as u64)
        {
            return corrupted(format!(
                "consumer index {head} is impossible (producer at {})",
                self.tail
            ));
        }
        self.head_seen = head;
        Ok(head)
    }

    /// The consumer's spare word (see [`Consumer::spare_word`]).
    #[inline]
    pub(crate) fn spare_word(&self) -> &AtomicU64 {
        self.area.control_word::<SPARE_WORD>()
    }

    /// Whether the consumer has taken everything written.
    #[cfg(test)]
    pub(crate) fn is_drained(&mut self) -> Result<bool, RingError> {
        Ok(self.consumer_position()? == self.tail)
    }

    /// Whether a record with `len` payload bytes fits now. Reads the consumer's position only when
    /// the last one seen leaves too little room. A waiting producer should sleep on exactly this
    /// condition: "the consumer moved since I failed" can be true already when it is read, and
    /// then nobody wakes the producer again.
    pub(crate) fn has_room_for(&mut self, len: usize) -> Result<bool, RingError> {
        let size = record_size(len);
        let to_end = self.layout.capacity - offset_in(&self.layout, self.tail);
        // A record that does not fit before the end needs padding to the end first.
        self.has_room(if to_end < size { to_end + size } else { size })
    }

    /// Whether `needed` bytes are free, reading the consumer's position only if the last one
    /// seen leaves too little.
    #[inline]
    fn has_room(&mut self, needed: usize) -> Result<bool, RingError> {
        let capacity = self.layout.capacity as u64;
        Ok(capacity - (self.tail - self.head_seen) >= needed as u64
            || capacity - (self.tail - self.consumer_position()?) >= needed as u64)
    }

    /// Allows or forbids going back to the front early. A producer about to write a message of
    /// several records it checked with [`Producer::has_room_for_all`] forbids it meanwhile, so
    /// that the check holds.
    pub(crate) fn set_early_wrap(&mut self, allowed: bool) {
        self.early_wrap = allowed;
    }

    /// Whether records with payloads of `lens` bytes, pushed one after another without early
    /// wraps, all fit now. Like [`Producer::has_room_for`], reads the consumer's position only
    /// when the last one seen leaves too little room (the consumer only ever frees space, so room
    /// found with an older position is still there): a producer that keeps ahead of a fast
    /// consumer does not pull the consumer's line over for every message.
    pub(crate) fn has_room_for_all(
        &mut self,
        lens: impl Iterator<Item = usize> + Clone,
    ) -> Result<bool, RingError> {
        if self.all_fit(self.head_seen, lens.clone()) {
            return Ok(true);
        }
        let head = self.consumer_position()?;
        Ok(self.all_fit(head, lens))
    }

    /// Whether records with payloads of `lens` bytes fit one after another, the consumer at `head`.
    fn all_fit(&self, head: u64, lens: impl Iterator<Item = usize>) -> bool {
        let capacity = self.layout.capacity as u64;
        let mut tail = self.tail;
        for len in lens {
            let size = record_size(len) as u64;
            let to_end = capacity - offset_in(&self.layout, tail) as u64;
            let needed = if to_end < size { to_end + size } else { size };
            if capacity - (tail - head) < needed {
                return false;
            }
            tail += needed;
        }
        true
    }

    /// Appends one record, unless there is not room for it right now (`Ok(false)`: retry after the
    /// consumer has advanced). `payload` must not exceed [`RingLayout::max_fragment`].
    #[inline]
    pub(crate) fn try_push(
        &mut self,
        flags: u32,
        call_id: u64,
        total: u64,
        payload: &[u8],
    ) -> Result<bool, RingError> {
        self.try_push_with_meta(flags, call_id, total, 0, payload)
    }

    /// [`Producer::try_push`] with the header's `meta` word (see [`RecordHeader::meta`]).
    #[inline(always)]
    pub(crate) fn try_push_with_meta(
        &mut self,
        flags: u32,
        call_id: u64,
        total: u64,
        meta: u64,
        payload: &[u8],
    ) -> Result<bool, RingError> {
        // The common case, decided without the consumer's position: a record of at most a
        // fragment that fits before both the end of the data area and the end of the hot
        // window, in room the last position seen already leaves. There the general path below
        // writes no padding and never wraps early, so this writes exactly what it would.
        let header = RecordHeader::of(payload, flags, call_id, total, meta);
        let size = record_size(payload.len());
        let position = offset_in(&self.layout, self.tail);
        if position + size <= self.fast_end
            && payload.len() <= self.max_fragment
            && flags & !(FIRST | LAST | USER_FLAGS) == 0
            && (self.layout.capacity as u64) - (self.tail - self.head_seen) >= size as u64
        {
            return self.write_record(position, self.tail, header, payload);
        }
        self.push_general(header, payload)
    }

    /// [`Producer::try_push_with_meta`] in every case, for a record with `header` carrying
    /// `payload`. Inlined like its caller: out of line, the call cost a duplex stream of 64 B
    /// messages a tenth of its rate (its records mostly lie past the hot window).
    #[inline]
    fn push_general(&mut self, header: RecordHeader, payload: &[u8]) -> Result<bool, RingError> {
        let capacity = self.layout.capacity;
        if payload.len() > self.max_fragment || header.flags & !(FIRST | LAST | USER_FLAGS) != 0 {
            return corrupted("record too large or with reserved flags (memlink bug)");
        }
        let size = record_size(payload.len());
        let position = offset_in(&self.layout, self.tail);
        let to_end = capacity - position;
        // A record that does not fit before the end needs padding to the end first.
        if !self.has_room(if to_end < size { to_end + size } else { size })? {
            return Ok(false);
        }
        let mut at = position;
        let mut tail = self.tail;
        // Past the hot window with nothing unread (the consumer's position equals ours): start
        // over at the front instead of touching fresh pages. (Only if the record fits before
        // where we are: padding plus record must fit in an empty ring.) The consumer's position
        // is read for this only where the record would reach into a page the records before it
        // did not touch, so at most once per page: a producer that stays ahead of its consumer
        // past the window would otherwise pull the consumer's line over for every record.
        let enters_page = position.is_multiple_of(PAGE) || position % PAGE + size > PAGE;
        let wrap_early = self.early_wrap
            && position >= HOT_WINDOW
            && size <= position
            && (self.head_seen == self.tail
                || (enters_page && self.consumer_position()? == self.tail));
        if to_end < size || wrap_early {
            self.write_record_header(
                at,
                tail,
                RecordHeader {
                    len: 0,
                    flags: PADDING,
                    call_id: 0,
                    total: 0,
                    meta: 0,
                },
            )?;
            tail += to_end as u64;
            at = 0;
        }
        self.write_record(at, tail, header, payload)
    }

    /// Writes a record at data offset `at` (stream position `position`): its header's fields,
    /// then its payload, then its stamp; our position moves past it.
    #[inline(always)]
    fn write_record(
        &mut self,
        at: usize,
        position: u64,
        header: RecordHeader,
        payload: &[u8],
    ) -> Result<bool, RingError> {
        debug_assert_eq!(
            header.len as usize,
            payload.len(),
            "a header for another payload"
        );
        // The fields go first, while the consumer has no reason to look at their line yet; the
        // stamp, alone, last (measured 3-4 ns shorter a round trip than payload first).
        self.store_fields(at, header);
        if !self.area.copy_in(at + RECORD_HEADER_LEN, payload) {
            return corrupted("record outside the ring");
        }
        self.publish(at, position);
        self.tail = position + record_size(payload.len()) as u64;
        Ok(true)
    }

    /// Stores the fields of `header` in the header line at data offset `at` (not yet published).
    #[inline(always)]
    fn store_fields(&self, at: usize, header: RecordHeader) {
        let (_, fields) = header_words(&self.area, at);
        for (word, value) in fields.into_iter().zip(header.to_words()) {
            word.store(value.to_le(), Ordering::Relaxed);
        }
    }

    /// Publishes the record at data offset `at` (stream position `position`) by writing its
    /// stamp.
    #[inline(always)]
    fn publish(&self, at: usize, position: u64) {
        let (stamp_word, _) = header_words(&self.area, at);
        // SYNC POINT: Release, pairs with the Acquire stamp loads in `Consumer::peek`,
        // `Consumer::look_take_whole` and `Consumer::published`: the fields and payload written
        // before are visible to a consumer that sees the stamp.
        stamp_word.store(stamp(position, self.layout.key), Ordering::Release);
    }

    /// Fault injection: publishes a record no consumer can accept (longer than a fragment may
    /// be), leaving our private position untouched.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn publish_impossible_record(&self) -> Result<(), RingError> {
        let at = offset_in(&self.layout, self.tail);
        let header = RecordHeader {
            len: u32::MAX,
            flags: FIRST | LAST,
            call_id: u64::MAX,
            total: 0,
            meta: 0,
        };
        self.write_record_header(at, self.tail, header)
    }

    /// Writes the header of the record at data offset `at` (stream position `position`), then
    /// its stamp, which publishes it.
    #[inline]
    fn write_record_header(
        &self,
        at: usize,
        position: u64,
        header: RecordHeader,
    ) -> Result<(), RingError> {
        self.store_fields(at, header);
        self.publish(at, position);
        Ok(())
    }
}

/// What [`Consumer::look_take_whole`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Whole {
    /// The message was taken; its `meta` word (unvalidated: the protocol's).
    Taken(u64),
    /// Nothing published yet.
    Empty,
    /// A record that is not the whole message asked for (a padding, a fragment, another id,
    /// something invalid): taken by the general path, which validates it.
    Other,
}

/// The reading end of a ring.
#[derive(Debug)]
pub(crate) struct Consumer {
    area: RingArea,
    layout: RingLayout,
    /// `layout.max_fragment()`, asked for on every take.
    max_fragment: usize,
    head: u64,
}

impl Consumer {
    /// The consumer of a fresh (all-zero) ring.
    pub(crate) fn new(map: Arc<Mapping>, layout: RingLayout) -> Result<Self, RingError> {
        layout.check(&map)?;
        Ok(Consumer {
            area: area_of(map, &layout)?,
            max_fragment: layout.max_fragment(),
            layout,
            head: 0,
        })
    }

    /// Whether the record at `head` has been published: its stamp is the one we expect.
    #[inline(always)]
    fn published(&self) -> bool {
        let position = offset_in(&self.layout, self.head);
        // SYNC POINT: Acquire, pairs with the Release stamp store in `Producer::publish`: once we
        // see the stamp, the record is complete.
        let (stamp_word, _) = header_words(&self.area, position);
        stamp_word.load(Ordering::Acquire) == stamp(self.head, self.layout.key)
    }

    /// A word on our own line, beside `head`, that the ring never reads or writes: the protocol
    /// above's (see the module doc). Zero in a fresh ring; either side can write it, so whoever
    /// reads it validates what it finds.
    #[inline]
    pub(crate) fn spare_word(&self) -> &AtomicU64 {
        self.area.control_word::<SPARE_WORD>()
    }

    /// Whether a record is waiting (cheap: one shared load). Takes `&mut self` although it only
    /// reads: an async waiter holds the consumer across an await by `&mut`, which keeps its
    /// future `Send` (a ring area is `Send` but not `Sync`).
    #[inline]
    pub(crate) fn has_data(&mut self) -> bool {
        self.published()
    }

    /// The next record's header, validated; `None` if the ring is empty.
    #[inline]
    pub(crate) fn peek(&mut self) -> Result<Option<RecordHeader>, RingError> {
        // A producer pads at most once before a record, so a peek skips at most one padding: a
        // producer that keeps stamping paddings cannot keep us here.
        for _ in 0..2 {
            let capacity = self.layout.capacity;
            let position = offset_in(&self.layout, self.head);
            let (stamp_word, fields) = header_words(&self.area, position);
            // SYNC POINT: Acquire, pairs with the Release stamp store in `Producer::publish`: once
            // we see the stamp, the record is complete.
            if stamp_word.load(Ordering::Acquire) != stamp(self.head, self.layout.key) {
                return Ok(None);
            }
            let load = |word: &AtomicU64| u64::from_le(word.load(Ordering::Relaxed));
            let header = RecordHeader::from_words([
                load(fields[0]),
                load(fields[1]),
                load(fields[2]),
                load(fields[3]),
            ]);
            if header.flags == PADDING {
                if header.len != 0 || position == 0 {
                    return corrupted("malformed padding record");
                }
                self.advance(capacity - position);
                continue;
            }
            if header.flags & !(FIRST | LAST | USER_FLAGS) != 0 {
                return corrupted(format!("record flags {:#x} are invalid", header.flags));
            }
            let len = header.len as usize;
            if len > self.max_fragment {
                return corrupted(format!(
                    "record of {len} bytes exceeds the {}-byte fragment limit",
                    self.max_fragment
                ));
            }
            if position + record_size(len) > capacity {
                return corrupted("record runs past the end of the ring");
            }
            return Ok(Some(header));
        }
        corrupted("padding follows padding")
    }

    /// The common case of [`Consumer::peek`] then [`Consumer::take`] in one step, with nothing
    /// built in memory between them: if the next record is a whole message by itself (flags
    /// exactly `FIRST | LAST | user_flags`) with id `id`, whose length is its total and at most
    /// `max_len`,
    /// appends its payload to `out`, releases it and returns its `meta` word (unvalidated: the
    /// protocol's). Returns `None`, taking nothing, if the ring is empty or the next record is
    /// anything else (a padding, a fragment, something invalid): [`Consumer::peek`] then takes
    /// the general path, and validates.
    #[inline]
    pub(crate) fn take_whole(
        &mut self,
        id: u64,
        user_flags: u32,
        max_len: u64,
        out: &mut Vec<u8>,
    ) -> Result<Option<u64>, RingError> {
        Ok(match self.look_take_whole(id, user_flags, max_len, out) {
            Whole::Taken(meta) => Some(meta),
            Whole::Empty | Whole::Other => None,
        })
    }

    /// [`Consumer::take_whole`], also saying whether the ring was empty or held something else
    /// (so that a waiter can look for its message with one load and still learn, at no extra
    /// cost, when the general path must take over). Never fails: whatever it does not take
    /// whole is [`Whole::Other`], for the general path to validate and refuse.
    #[inline]
    pub(crate) fn look_take_whole(
        &mut self,
        id: u64,
        user_flags: u32,
        max_len: u64,
        out: &mut Vec<u8>,
    ) -> Whole {
        let position = offset_in(&self.layout, self.head);
        let (stamp_word, fields) = header_words(&self.area, position);
        // SYNC POINT: Acquire, pairs with the Release stamp store in `Producer::publish`: once we
        // see the stamp, the record is complete.
        if stamp_word.load(Ordering::Acquire) != stamp(self.head, self.layout.key) {
            return Whole::Empty;
        }
        let load = |word: &AtomicU64| u64::from_le(word.load(Ordering::Relaxed));
        let len_and_flags = load(fields[0]);
        let len = u64::from(len_and_flags as u32);
        if len_and_flags >> 32 != u64::from(FIRST | LAST | (user_flags & USER_FLAGS))
            || load(fields[1]) != id
            || load(fields[2]) != len
            || len > max_len
            || len > self.max_fragment as u64
            || !self
                .area
                .append_to_vec(position + RECORD_HEADER_LEN, len as usize, out)
        {
            return Whole::Other;
        }
        let meta = load(fields[3]);
        self.advance(record_size(len as usize));
        Whole::Taken(meta)
    }

    /// Appends the payload of the record `peek` returned to `out`, and releases the record.
    #[inline]
    pub(crate) fn take(
        &mut self,
        header: &RecordHeader,
        out: &mut Vec<u8>,
    ) -> Result<(), RingError> {
        let position = offset_in(&self.layout, self.head);
        if !self
            .area
            .append_to_vec(position + RECORD_HEADER_LEN, header.len as usize, out)
        {
            return corrupted("record payload outside the ring");
        }
        self.advance(record_size(header.len as usize));
        Ok(())
    }

    /// Releases the record `peek` returned without reading it.
    pub(crate) fn skip(&mut self, header: &RecordHeader) -> Result<(), RingError> {
        self.advance(record_size(header.len as usize));
        Ok(())
    }

    /// Fault injection: publishes a consumer index no producer can accept (past everything
    /// written), leaving our private position untouched.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn publish_impossible_head(&self) -> Result<(), RingError> {
        self.area
            .control_word::<HEAD_WORD>()
            .store(u64::MAX / 2, Ordering::Release);
        Ok(())
    }

    #[inline(always)]
    fn advance(&mut self, size: usize) {
        self.head += size as u64;
        // SYNC POINT: Release, pairs with the Acquire `head` load in `Producer::consumer_position`:
        // our copies out of the released space happen-before the producer reuses it.
        self.area
            .control_word::<HEAD_WORD>()
            .store(self.head, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TEST_KEY: u64 = (1 << 63) | 0x005e_ed0f_ba5e;

    fn ring(capacity: usize) -> (Producer, Consumer, Arc<Mapping>) {
        let len = CONTROL_LEN + capacity;
        let fd = crate::platform::memfd::create_sealed("ring-test", len as u64).unwrap();
        let map = Arc::new(Mapping::map_shared(&fd, len).unwrap());
        let layout = RingLayout {
            control: 0,
            data: CONTROL_LEN,
            capacity,
            key: TEST_KEY,
        };
        (
            Producer::new(map.clone(), layout).unwrap(),
            Consumer::new(map.clone(), layout).unwrap(),
            map,
        )
    }

    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8)
            .collect()
    }

    #[test]
    fn layout_checks_reject_bad_geometry() {
        let (_, _, map) = ring(MIN_CAPACITY);
        for layout in [
            RingLayout {
                control: 0,
                data: CONTROL_LEN,
                capacity: 5000,
                key: TEST_KEY,
            },
            RingLayout {
                control: 64,
                data: CONTROL_LEN,
                capacity: MIN_CAPACITY,
                key: TEST_KEY,
            },
            RingLayout {
                control: 0,
                data: CONTROL_LEN,
                capacity: MIN_CAPACITY * 2,
                key: TEST_KEY,
            },
        ] {
            assert!(Producer::new(map.clone(), layout).is_err(), "{layout:?}");
        }
    }

    /// Stale payload bytes at the consumer's position can hold anything a third party chose, the
    /// stamp the next record would carry without a key included: that must not pass for a record.
    #[test]
    fn stale_bytes_that_guess_an_unkeyed_stamp_are_no_record() {
        let (mut p, mut c, map) = ring(MIN_CAPACITY);
        assert!(p.try_push(FIRST | LAST, 1, 3, b"abc").unwrap());
        let h = c.peek().unwrap().unwrap();
        c.skip(&h).unwrap();
        let next = p.position();
        // What an unkeyed ring would take for the next record: its position plus one, then
        // plausible fields.
        let forged = CONTROL_LEN + (next as usize % MIN_CAPACITY);
        map.atomic_u64(forged)
            .unwrap()
            .store(next + 1, Ordering::Relaxed);
        assert!(
            map.copy_in(
                forged + FIELDS_AT,
                &RecordHeader {
                    len: 0,
                    flags: FIRST | LAST,
                    call_id: 2,
                    total: 0,
                    meta: 0,
                }
                .encode()
            )
        );
        assert!(!c.has_data());
        assert_eq!(c.peek().unwrap(), None);
        // The real record, when it comes, is read as usual.
        assert!(p.try_push(FIRST | LAST, 2, 2, b"ok").unwrap());
        assert_eq!(c.peek().unwrap().map(|h| h.call_id), Some(2));
    }

    /// `take_whole` takes exactly the records the general path would accept as a whole message
    /// with the expected id, and leaves everything else, untouched, to `peek`.
    #[test]
    fn take_whole_takes_only_whole_messages_it_expects() {
        let (mut p, mut c, _map) = ring(MIN_CAPACITY);
        let mut out = Vec::new();
        assert_eq!(
            c.take_whole(1, 0, 100, &mut out).unwrap(),
            None,
            "empty ring"
        );
        for (flags, id, total, payload, max) in [
            (FIRST, 1, 3, &b"abc"[..], 100),           // a first fragment only
            (FIRST | LAST, 2, 3, b"abc", 100),         // another id
            (FIRST | LAST, 1, 4, b"abc", 100),         // length disagrees with the total
            (FIRST | LAST, 1, 3, b"abc", 2),           // over the caller's maximum
            (FIRST | LAST | 0x100, 1, 3, b"abc", 100), // protocol flags
        ] {
            assert!(p.try_push(flags, id, total, payload).unwrap());
            let taken = c.take_whole(1, 0, max, &mut out).unwrap();
            assert_eq!(taken, None, "{flags:#x} {id} {total}");
            assert!(out.is_empty());
            let h = c.peek().unwrap().unwrap();
            assert_eq!((h.flags, h.call_id, h.total), (flags, id, total));
            c.skip(&h).unwrap();
        }
        assert!(
            p.try_push_with_meta(FIRST | LAST, 1, 3, 99, b"abc")
                .unwrap()
        );
        assert_eq!(c.take_whole(1, 0, 3, &mut out).unwrap(), Some(99));
        assert_eq!(out, b"abc");
        // Protocol flags, when the caller expects them.
        assert!(p.try_push(FIRST | LAST | 0x200, 2, 1, b"d").unwrap());
        assert_eq!(c.take_whole(2, 0x100, 3, &mut out).unwrap(), None);
        assert_eq!(c.take_whole(2, 0x200, 3, &mut out).unwrap(), Some(0));
        assert_eq!(out, b"abcd");
        assert!(p.is_drained().unwrap());
        // A record behind a padding: the general path skips the padding first.
        while p.try_push(FIRST | LAST, 1, 1000, &[5; 1000]).unwrap() {
            let h = c.peek().unwrap().unwrap();
            c.skip(&h).unwrap();
            if p.position() as usize % MIN_CAPACITY > MIN_CAPACITY - 1000 {
                break;
            }
        }
        assert!(p.try_push(FIRST | LAST, 7, 1000, &[6; 1000]).unwrap());
        out.clear();
        assert_eq!(
            c.take_whole(7, 0, 1000, &mut out).unwrap(),
            None,
            "a padding comes first"
        );
        let h = c.peek().unwrap().unwrap();
        assert_eq!(h.call_id, 7);
        assert_eq!(c.take_whole(7, 0, 1000, &mut out).unwrap(), Some(0));
        assert_eq!(out, [6; 1000]);
    }

    #[test]
    fn the_meta_word_travels_with_every_record() {
        let (mut p, mut c, _map) = ring(MIN_CAPACITY);
        assert!(
            p.try_push_with_meta(FIRST | LAST, 1, 3, u64::MAX - 7, b"abc")
                .unwrap()
        );
        assert!(p.try_push(FIRST | LAST, 2, 0, b"").unwrap());
        let h = c.peek().unwrap().unwrap();
        assert_eq!((h.call_id, h.meta), (1, u64::MAX - 7));
        c.skip(&h).unwrap();
        assert_eq!(c.peek().unwrap().map(|h| (h.call_id, h.meta)), Some((2, 0)));
    }

    #[test]
    fn wraps_with_padding_and_keeps_payloads_aligned() {
        let (mut p, mut c, _map) = ring(MIN_CAPACITY);
        let mut out = Vec::new();
        for round in 0..200u64 {
            let len = (round as usize * 97) % 1000;
            let data = pattern(round, len);
            assert!(p.try_push(FIRST | LAST, round, len as u64, &data).unwrap());
            let h = c.peek().unwrap().unwrap();
            assert_eq!((h.call_id, h.len as usize), (round, len));
            out.clear();
            c.take(&h, &mut out).unwrap();
            assert_eq!(out, data);
            assert!(c.peek().unwrap().is_none());
        }
        assert!(p.is_drained().unwrap());
    }

    /// The producer reads the consumer's index only when the last one it saw leaves too little
    /// room: an impossible index goes unread while there is room, and is refused once read.
    #[test]
    fn room_checks_read_the_consumer_index_only_when_short_of_room() {
        let (mut p, _c, map) = ring(MIN_CAPACITY);
        map.atomic_u64(HEAD_WORD * 8)
            .unwrap()
            .store(u64::MAX / 2, Ordering::Relaxed);
        for i in 0..3 {
            assert!(p.has_room_for_all(std::iter::once(1000)).unwrap());
            assert!(p.try_push(FIRST | LAST, i, 1000, &[1; 1000]).unwrap());
        }
        // 3 records of 1,088 bytes: too little room left by the last index seen (0).
        assert!(p.has_room_for_all(std::iter::once(1000)).is_err());
        assert!(p.has_room_for(1000).is_err());
    }

    #[test]
    fn full_ring_refuses_until_consumed() {
        let (mut p, mut c, _map) = ring(MIN_CAPACITY);
        let chunk = vec![1u8; MIN_CAPACITY / 4];
        let mut pushed = 0;
        while p.try_push(FIRST | LAST, pushed, 0, &chunk).unwrap() {
            pushed += 1;
        }
        assert_eq!(pushed, 3, "three quarter-ring records (plus headers) fit");
        let h = c.peek().unwrap().unwrap();
        c.skip(&h).unwrap();
        assert!(p.try_push(FIRST | LAST, 99, 0, &chunk).unwrap());
        assert!(
            p.try_push(FIRST | LAST, 99, 0, &vec![0; MIN_CAPACITY / 4 + 1])
                .is_err(),
            "oversized fragment"
        );
    }

    #[test]
    fn threads_stream_many_records_in_order() {
        let (mut p, mut c, _map) = ring(64 * 1024);
        let writer = std::thread::spawn(move || {
            for i in 0..20_000u64 {
                let data = pattern(i, (i as usize * 13) % 4000);
                while !p
                    .try_push(FIRST | LAST, i, data.len() as u64, &data)
                    .unwrap()
                {
                    std::hint::spin_loop();
                }
            }
        });
        let mut out = Vec::new();
        for i in 0..20_000u64 {
            let h = loop {
                if let Some(h) = c.peek().unwrap() {
                    break h;
                }
                std::hint::spin_loop();
            };
            assert_eq!(h.call_id, i);
            out.clear();
            c.take(&h, &mut out).unwrap();
            assert_eq!(out, pattern(i, (i as usize * 13) % 4000));
        }
        writer.join().unwrap();
    }

    proptest! {
        /// `has_room_for_all` is exact for a producer that does not wrap early: whatever was
        /// pushed and taken before, records it approves all go in, and when it refuses, one of
        /// them does not (checked by pushing them anyway).
        #[test]
        fn room_for_all_is_exact(
            before in proptest::collection::vec((0usize..=1024, any::<bool>()), 0..40),
            lens in proptest::collection::vec(0usize..=1024, 1..8),
        ) {
            let (mut producer, mut consumer, _map) = ring(MIN_CAPACITY);
            for (len, take) in before {
                if producer.try_push(FIRST | LAST, 1, len as u64, &pattern(1, len)).unwrap() && take {
                    while let Some(header) = consumer.peek().unwrap() {
                        consumer.skip(&header).unwrap();
                    }
                }
            }
            let approved = producer.has_room_for_all(lens.iter().copied()).unwrap();
            producer.set_early_wrap(false);
            let all_went_in = lens
                .iter()
                .all(|&len| producer.try_push(FIRST | LAST, 2, len as u64, &pattern(2, len)).unwrap());
            prop_assert_eq!(approved, all_went_in);
        }

        /// `take_whole` agrees with the general path on any header a peer can write: it takes
        /// a record exactly when `peek` accepts it and it is a whole message (first and last,
        /// its total its length) with the id and protocol flags asked for, within the maximum.
        #[test]
        fn take_whole_agrees_with_peek_on_any_header(
            len in 0u32..1100,
            flags in prop_oneof![any::<u32>(), (0u32..16).prop_map(|f| f | 0x300)],
            id in 0u64..3,
            total in prop_oneof![Just(None), (0u64..1100).prop_map(Some)],
            want_id in 0u64..3,
            user in prop::sample::select(vec![0u32, 0x100, 0x200]),
            max in 0u64..1100,
        ) {
            let (_p, mut c, map) = ring(MIN_CAPACITY);
            let header = RecordHeader { len, flags, call_id: id, total: total.unwrap_or(u64::from(len)), meta: 5 };
            let word = |i: usize| map.atomic_u64(CONTROL_LEN + 8 * i).unwrap();
            for (i, value) in header.to_words().into_iter().enumerate() {
                word(i + 1).store(value.to_le(), Ordering::Relaxed);
            }
            word(0).store(stamp(0, TEST_KEY), Ordering::Relaxed);
            let general = matches!(c.peek(), Ok(Some(h))
                if h.flags == FIRST | LAST | user
                    && h.call_id == want_id
                    && h.total == u64::from(h.len)
                    && h.total <= max);
            let mut out = Vec::new();
            let taken = c.take_whole(want_id, user, max, &mut out).unwrap();
            prop_assert_eq!(taken.is_some(), general);
            if taken.is_some() {
                prop_assert_eq!(taken, Some(5));
                prop_assert_eq!(out.len(), len as usize);
            }
        }

        /// The push fast path writes exactly what the general path writes, in rings larger and
        /// smaller than the hot window, as records cross its end, the ring's end and the room
        /// the last consumer position seen leaves.
        #[test]
        fn the_push_fast_path_writes_what_the_general_path_does(
            capacity in prop::sample::select(vec![MIN_CAPACITY, HOT_WINDOW, 4 * HOT_WINDOW]),
            ops in proptest::collection::vec((0usize..5000, 0u8..3), 1..300),
        ) {
            let (mut fast, mut fast_reader, fast_map) = ring(capacity);
            let (mut general, mut general_reader, general_map) = ring(capacity);
            let bytes = |map: &Mapping| {
                let mut all = vec![0u8; map.len()];
                assert!(map.read_atomic(0, &mut all));
                all
            };
            let mut out = Vec::new();
            for (i, (len, consume)) in ops.into_iter().enumerate() {
                let len = len.min(fast.max_fragment());
                let data = pattern(i as u64, len);
                let a = fast.try_push_with_meta(FIRST | LAST, i as u64, len as u64, 9, &data).unwrap();
                let header = RecordHeader::of(&data, FIRST | LAST, i as u64, len as u64, 9);
                let b = general.push_general(header, &data).unwrap();
                prop_assert_eq!(a, b);
                prop_assert_eq!(fast.tail, general.tail);
                for _ in 0..consume {
                    for reader in [&mut fast_reader, &mut general_reader] {
                        if let Some(h) = reader.peek().unwrap() {
                            out.clear();
                            reader.take(&h, &mut out).unwrap();
                        }
                    }
                }
                prop_assert!(bytes(&fast_map) == bytes(&general_map), "rings differ after op {}", i);
            }
        }

        /// `look_take_whole` tells an empty ring from one holding something else.
        #[test]
        fn look_take_whole_tells_empty_from_other(len in 0usize..200, id in 1u64..3, flags in prop::sample::select(vec![FIRST | LAST, FIRST, LAST])) {
            let (mut p, mut c, _map) = ring(MIN_CAPACITY);
            let mut out = Vec::new();
            prop_assert_eq!(c.look_take_whole(1, 0, 1000, &mut out), Whole::Empty);
            prop_assert!(p.try_push(flags, id, len as u64, &pattern(id, len)).unwrap());
            let found = c.look_take_whole(1, 0, 1000, &mut out);
            if id == 1 && flags == FIRST | LAST {
                prop_assert_eq!(found, Whole::Taken(0));
                prop_assert_eq!(out, pattern(1, len));
                prop_assert_eq!(c.look_take_whole(1, 0, 1000, &mut Vec::new()), Whole::Empty);
            } else {
                prop_assert_eq!(found, Whole::Other);
                prop_assert!(out.is_empty());
                prop_assert!(c.peek().unwrap().is_some());
            }
        }

        #[test]
        fn any_interleaving_round_trips(ops in proptest::collection::vec((0usize..3000, any::<bool>()), 1..200)) {
            let (mut p, mut c, _map) = ring(MIN_CAPACITY * 2);
            let mut expected = std::collections::VecDeque::new();
            let mut seq = 0u64;
            let mut out = Vec::new();
            for (len, consume) in ops {
                let len = len.min(p.max_fragment());
                let data = pattern(seq, len);
                if p.try_push(FIRST | LAST, seq, len as u64, &data).unwrap() {
                    expected.push_back((seq, data));
                    seq += 1;
                }
                if consume {
                    if let Some(h) = c.peek().unwrap() {
                        let (id, data) = expected.pop_front().unwrap();
                        prop_assert_eq!(h.call_id, id);
                        out.clear();
                        c.take(&h, &mut out).unwrap();
                        prop_assert_eq!(&out, &data);
                    }
                }
            }
            while let Some(h) = c.peek().unwrap() {
                let (id, data) = expected.pop_front().unwrap();
                prop_assert_eq!(h.call_id, id);
                out.clear();
                c.take(&h, &mut out).unwrap();
                prop_assert_eq!(&out, &data);
            }
            prop_assert!(expected.is_empty());
        }

        /// A hostile producer controls every byte of the data area, stamps included: the consumer
        /// must answer with data or an error, never panic or read outside the ring.
        #[test]
        fn consumer_survives_arbitrary_shared_state(
            stamps in proptest::collection::vec((0usize..MIN_CAPACITY / 64, 0u64..MIN_CAPACITY as u64 * 2), 0..16),
            garbage in proptest::collection::vec(any::<u8>(), 0..512),
            at in 0usize..MIN_CAPACITY,
        ) {
            let (_p, mut c, map) = ring(MIN_CAPACITY);
            prop_assert!(map.copy_in(CONTROL_LEN + at.min(MIN_CAPACITY - garbage.len().min(MIN_CAPACITY)), &garbage));
            // Plausible stamps (positions the consumer will look for) at arbitrary header slots.
            for (slot, position) in stamps {
                map.atomic_u64(CONTROL_LEN + slot * 64).unwrap().store(stamp(position / 64 * 64, TEST_KEY), Ordering::Relaxed);
            }
            let mut out = Vec::new();
            for round in 0..8 {
                if round % 2 == 0 {
                    match c.take_whole(round, (round as u32) << 8, MIN_CAPACITY as u64, &mut out) {
                        Ok(Some(_)) => continue,
                        Ok(None) => {}
                        Err(_) => break,
                    }
                }
                match c.peek() {
                    Ok(Some(h)) => {
                        prop_assert!(h.len as usize <= MIN_CAPACITY / 4);
                        if c.take(&h, &mut out).is_err() { break; }
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            prop_assert!(out.len() <= MIN_CAPACITY);
        }

                /// Producers sleep on `has_room_for`; it must say "room" exactly when a push would succeed,
        /// or a sleeper could miss its wake-up (false "no room") or spin on a push that fails.
        #[test]
        fn room_check_agrees_with_push(ops in proptest::collection::vec((0usize..=MIN_CAPACITY / 4, 0usize..4), 1..300)) {
            let (mut p, mut c, _map) = ring(MIN_CAPACITY);
            let payload = vec![9u8; MIN_CAPACITY / 4];
            for (len, consume) in ops {
                let room = p.has_room_for(len).unwrap();
                prop_assert_eq!(room, p.try_push(FIRST | LAST, 1, len as u64, &payload[..len]).unwrap());
                for _ in 0..consume {
                    match c.peek().unwrap() {
                        Some(h) => c.skip(&h).unwrap(),
                        None => break,
                    }
                }
            }
        }

        #[test]
        fn producer_rejects_impossible_consumer_indices(head in any::<u64>()) {
            let (mut p, _c, map) = ring(MIN_CAPACITY);
            prop_assert!(p.try_push(FIRST | LAST, 1, 100, &[7; 100]).unwrap());
            map.atomic_u64(HEAD_WORD * 8).unwrap().store(head, Ordering::Relaxed);
            let valid = head <= p.position() && head % 64 == 0;
            prop_assert_eq!(p.consumer_position().is_ok(), valid);
        }
    }
}
