//! The shared layout of a publish/subscribe topic: the *broadcast region* one publisher writes and
//! every subscriber maps read-only, and the small *subscriber region* each subscriber writes and
//! the publisher reads (and distrusts).
//!
//! # Broadcast region (written by the publisher only; sealed against every other writer)
//!
//! | offset         | what                                                                  |
//! |----------------|-----------------------------------------------------------------------|
//! | 0              | header: `magic u32 | version u32 | entries u32 | slots u32 |            |
//! |                | max_sample u32 | history u32 | max_held u32 | flags u32 | pid u32`     |
//! | 64             | `head u64`: the sequence number the next sample will get              |
//! | 128            | `publisher_waiting u32`, `publisher_cpu u32`                          |
//! | 256            | the entry table: `entries` entries of 16 bytes                        |
//! | `slots_offset` | `slots` sample slots of `slot_stride` bytes (64-byte multiples)       |
//!
//! A sample lives in a *slot*; the entry table says which slot holds which sample. Entry
//! `seq % entries` describes sample `seq`: `stamp u64` (`seq + 1`; 0 = never written; [`BUSY`]
//! while being rewritten) and `slot u32 | len u32`. An entry is a seqlock: the publisher stores
//! `BUSY`, then (after a release fence) the slot word, then the stamp with release; a reader
//! loads the stamp with acquire, the slot word, and after an acquire fence the stamp again, and
//! believes the slot word only if both stamps are the one it expected (`crossbeam`'s `SeqLock`
//! pattern, with the writer's stamp doubling as the sample's sequence number). The last
//! `entries` samples are readable; an older one's entry now describes a newer sample, which is
//! how a reader learns it fell behind, and by exactly how much.
//!
//! # Why a slot cannot change under a reader
//!
//! The publisher chooses slots from a free list it keeps privately. A slot whose entry was
//! overwritten is not free yet: a subscriber may be about to read it. The subscriber *holds* a
//! slot by writing its index into one of its hold records (subscriber region), issuing a SeqCst
//! fence, and reading the entry's stamp again: only if the entry still describes that sample
//! does it read the slot. The publisher, before it reuses a slot whose entry it overwrote, issues
//! a SeqCst fence and reads every subscriber's hold records. Store → fence → load on both sides
//! (Dekker's pattern): either the subscriber sees the overwrite and lets go, or the publisher sees
//! the hold and keeps the slot until it is released. A released record is stored with release,
//! and read by the publisher with acquire, so a subscriber's reads of a slot happen before the
//! publisher's next write to it.
//!
//! # Subscriber region (one page; written by its subscriber, read by the publisher)
//!
//! | offset | what                                                               |
//! |--------|--------------------------------------------------------------------|
//! | 0      | `parked u32`, `cpu u32` (see `link::wake`)                         |
//! | 64     | `cursor u64`: the next sample the subscriber will take             |
//! | 128    | `max_held` hold records: `u32`, slot index + 1 (0 = empty)         |
//!
//! The cursor, written on every sample taken, has a line of its own, so the publisher's look at
//! the parked flag on every sample it publishes does not pull the line across every time.
//!
//! The publisher treats all of it as untrusted input: a hold record naming no slot, or a cursor
//! beyond what was published, gets the subscriber dropped as corrupted; a subscriber can pin at
//! most `max_held` slots (the publisher has that many spare per subscriber, so it never runs out);
//! a parked flag it fails to set only costs it its own wake-ups.
//!
//! May use `platform` (mappings); no `unsafe`.

use std::sync::atomic::{Ordering, fence};

use crate::platform::mapping::{Mapping, ReadOnlyMapping};

pub(crate) const MAGIC: u32 = u32::from_le_bytes(*b"MLPS");
/// Bumped whenever either region's layout changes incompatibly.
pub(crate) const VERSION: u32 = 1;

/// An entry's stamp while the publisher rewrites it.
pub(crate) const BUSY: u64 = u64::MAX;
/// `flags` bit: the publisher waits for subscribers that did not opt out (see `pubsub`).
pub(crate) const RELIABLE: u32 = 1;

const HEAD: usize = 64;
pub(crate) const PUBLISHER_WAITING: usize = 128;
pub(crate) const PUBLISHER_CPU: usize = 132;
const ENTRIES: usize = 256;
const ENTRY_LEN: usize = 16;
const PAGE: usize = 4096;

/// Most entries a topic may have.
pub(crate) const MAX_ENTRIES: u32 = 1 << 16;
/// Most slots a topic may have.
pub(crate) const MAX_SLOTS: u32 = 1 << 20;
/// Largest sample a topic may allow.
pub(crate) const MAX_SAMPLE: u32 = 1 << 30;
/// Most hold records a subscriber has (also the width of its private free mask).
pub(crate) const MAX_HELD: u32 = 64;
/// Largest broadcast region a subscriber agrees to map.
const MAX_REGION: u64 = 1 << 40;

/// The subscriber region's size and offsets.
pub(crate) const SUBSCRIBER_REGION_LEN: usize = PAGE;
pub(crate) const SUBSCRIBER_PARKED: usize = 0;
pub(crate) const SUBSCRIBER_CPU: usize = 4;
pub(crate) const CURSOR: usize = 64;
pub(crate) const HOLDS: usize = 128;
const _: () = assert!(HOLDS + 4 * MAX_HELD as usize <= SUBSCRIBER_REGION_LEN);

/// A topic's fixed shape, written once into the header by the publisher. Subscribers read it
/// once, validate it, and never read the header again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Entries in the table (a power of two): how far a subscriber may fall behind.
    pub(crate) entries: u32,
    /// Sample slots.
    pub(crate) slots: u32,
    /// Largest sample.
    pub(crate) max_sample: u32,
    /// Samples a new subscriber is given from before it joined.
    pub(crate) history: u32,
    /// Hold records per subscriber.
    pub(crate) max_held: u32,
    pub(crate) flags: u32,
}

impl Geometry {
    /// Checks the bounds every reader relies on; the message says which one failed.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if !self.entries.is_power_of_two() || self.entries > MAX_ENTRIES {
            return Err(format!(
                "{} entries (a power of two up to {MAX_ENTRIES} expected)",
                self.entries
            ));
        }
        if self.slots <= self.entries || self.slots > MAX_SLOTS {
            return Err(format!(
                "{} slots for {} entries (more slots than entries, at most {MAX_SLOTS}, expected)",
                self.slots, self.entries
            ));
        }
        if self.max_sample > MAX_SAMPLE {
            return Err(format!("samples of up to {} bytes", self.max_sample));
        }
        if self.history > self.entries {
            return Err(format!(
                "a history of {} samples in {} entries",
                self.history, self.entries
            ));
        }
        if self.max_held == 0 || self.max_held > MAX_HELD {
            return Err(format!(
                "{} hold records (1 to {MAX_HELD} expected)",
                self.max_held
            ));
        }
        match self.region_len() {
            Some(len) if len <= MAX_REGION => Ok(()),
            _ => Err("a broadcast region larger than 1 TiB".into()),
        }
    }

    /// Distance between two slots: the largest sample rounded up to a cache line, so every slot
    /// starts 64-byte aligned (copies into a slot then run at full speed).
    pub(crate) fn slot_stride(&self) -> u64 {
        u64::from(self.max_sample.max(1)).next_multiple_of(64)
    }

    fn slots_offset(&self) -> u64 {
        (ENTRIES as u64 + u64::from(self.entries) * ENTRY_LEN as u64).next_multiple_of(PAGE as u64)
    }

    /// The region's length, or `None` if it would overflow.
    pub(crate) fn region_len(&self) -> Option<u64> {
        let slots = u64::from(self.slots).checked_mul(self.slot_stride())?;
        Some(
            self.slots_offset()
                .checked_add(slots)?
                .next_multiple_of(PAGE as u64),
        )
    }

    /// Where slot `slot` starts. The caller has checked `slot < slots`.
    pub(crate) fn slot_offset(&self, slot: u32) -> usize {
        (self.slots_offset() + u64::from(slot) * self.slot_stride()) as usize
    }

    fn entry_offset(&self, seq: u64) -> usize {
        ENTRIES + (seq & u64::from(self.entries - 1)) as usize * ENTRY_LEN
    }

    pub(crate) fn reliable(&self) -> bool {
        self.flags & RELIABLE != 0
    }
}

/// A layout error: an offset outside the mapping (the caller's region is not what it claims).
#[derive(Debug)]
pub(crate) struct LayoutError;

/// Publisher: writes the header of a fresh region (before anyone else can map it).
pub(crate) fn write_header(
    map: &Mapping,
    geometry: &Geometry,
    pid: u32,
) -> Result<(), LayoutError> {
    let mut header = [0u8; 40];
    for (i, value) in [
        MAGIC,
        VERSION,
        geometry.entries,
        geometry.slots,
        geometry.max_sample,
        geometry.history,
        geometry.max_held,
        geometry.flags,
        pid,
    ]
    .into_iter()
    .enumerate()
    {
        header[4 * i..4 * i + 4].copy_from_slice(&value.to_le_bytes());
    }
    map.write_atomic(0, &header)
        .then_some(())
        .ok_or(LayoutError)
}

/// Subscriber: reads and validates the header of a region of `region_len` bytes, once.
pub(crate) fn read_header(
    map: &ReadOnlyMapping,
    region_len: u64,
) -> Result<(Geometry, u32), String> {
    let word = |at: usize| {
        map.load_u32(at, Ordering::Relaxed)
            .map(u32::from_le)
            .ok_or_else(|| "the broadcast region is too small for its header".to_owned())
    };
    match (word(0)?, word(4)?) {
        (MAGIC, VERSION) => {}
        (MAGIC, v) => {
            return Err(format!(
                "the publisher's region has layout version {v}, we read {VERSION}; use the same memlink version on both sides"
            ));
        }
        _ => return Err("the publisher's region is not a memlink broadcast region".into()),
    }
    let geometry = Geometry {
        entries: word(8)?,
        slots: word(12)?,
        max_sample: word(16)?,
        history: word(20)?,
        max_held: word(24)?,
        flags: word(28)?,
    };
    geometry.validate()?;
    if geometry.region_len() != Some(region_len) {
        return Err(format!(
            "the region is {region_len} bytes, its header describes {:?}",
            geometry.region_len()
        ));
    }
    Ok((geometry, word(32)?))
}

fn word(map: &Mapping, at: usize) -> Result<&std::sync::atomic::AtomicU64, LayoutError> {
    map.atomic_u64(at).ok_or(LayoutError)
}

/// Publisher: describes sample `seq` (in `slot`, `len` bytes) in its entry, as a seqlock write.
/// The slot's bytes must be written before: the stamp's release store publishes them.
pub(crate) fn write_entry(
    map: &Mapping,
    geometry: &Geometry,
    seq: u64,
    slot: u32,
    len: u32,
) -> Result<(), LayoutError> {
    let at = geometry.entry_offset(seq);
    let stamp = word(map, at)?;
    let location = word(map, at + 8)?;
    stamp.store(BUSY, Ordering::Relaxed);
    // SYNC POINT: pairs with the acquire fence in `read_entry`: a reader that sees our new
    // location word also sees `BUSY` (or the final stamp) on its second stamp load.
    fence(Ordering::Release);
    location.store(u64::from(slot) | (u64::from(len) << 32), Ordering::Relaxed);
    // SYNC POINT: pairs with the acquire load of the stamp in `read_entry`; publishes the slot's
    // bytes and the location word.
    stamp.store(seq + 1, Ordering::Release);
    Ok(())
}

/// Publisher: the next sequence number is `head` (for joining subscribers and inspection).
pub(crate) fn set_head(map: &Mapping, head: u64) -> Result<(), LayoutError> {
    word(map, HEAD)?.store(head, Ordering::Release);
    Ok(())
}

/// Publisher: the head it last set.
pub(crate) fn head_written(map: &Mapping) -> u64 {
    map.atomic_u64(HEAD)
        .map_or(0, |w| w.load(Ordering::Acquire))
}

/// Subscriber: the sequence number the next sample will get, as far as the publisher says.
pub(crate) fn head(map: &ReadOnlyMapping) -> Result<u64, String> {
    map.load_u64(HEAD, Ordering::Acquire)
        .ok_or_else(|| "the broadcast region has no head".to_owned())
}

/// What a subscriber found in the entry of the sample it wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// The sample is there, `len` bytes in `slot` (both validated).
    Ready { slot: u32, len: u32 },
    /// Not published yet (or being written right now).
    Pending,
    /// The entry now describes the later sample `newer`: ours was overwritten.
    Overwritten { newer: u64 },
}

/// Subscriber: reads the entry for sample `seq` (a seqlock read; see the module docs).
pub(crate) fn read_entry(
    map: &ReadOnlyMapping,
    geometry: &Geometry,
    seq: u64,
) -> Result<Entry, String> {
    let at = geometry.entry_offset(seq);
    let load = |at: usize, order| {
        map.load_u64(at, order)
            .ok_or_else(|| "an entry lies outside the broadcast region".to_owned())
    };
    // A writer rewrites an entry in a few stores; a reader that keeps losing the race is simply
    // told to look again later.
    for _ in 0..16 {
        // SYNC POINT: pairs with the release store of the stamp in `write_entry`.
        let first = load(at, Ordering::Acquire)?;
        if first == BUSY || first == 0 {
            return Ok(Entry::Pending);
        }
        let stamped = first - 1;
        if stamped & u64::from(geometry.entries - 1) != seq & u64::from(geometry.entries - 1) {
            return Err(format!(
                "the entry for sample {seq} is stamped with sample {stamped}, which belongs elsewhere"
            ));
        }
        if stamped < seq {
            return Ok(Entry::Pending);
        }
        if stamped > seq {
            return Ok(Entry::Overwritten { newer: stamped });
        }
        let location = load(at + 8, Ordering::Relaxed)?;
        // SYNC POINT: pairs with the release fence in `write_entry`.
        fence(Ordering::Acquire);
        if load(at, Ordering::Relaxed)? != first {
            continue;
        }
        let slot = location as u32;
        let len = (location >> 32) as u32;
        if slot >= geometry.slots || len > geometry.max_sample {
            return Err(format!(
                "sample {seq} is said to be {len} bytes in slot {slot} (the topic has {} slots of up to {} bytes)",
                geometry.slots, geometry.max_sample
            ));
        }
        return Ok(Entry::Ready { slot, len });
    }
    Ok(Entry::Pending)
}

/// Subscriber: after storing a hold record for sample `seq`, whether its entry still describes
/// it (if so, the slot is ours to read until the record is cleared; see the module docs).
pub(crate) fn still_describes(map: &ReadOnlyMapping, geometry: &Geometry, seq: u64) -> bool {
    // SYNC POINT: pairs with the fence in `Holds::scan` (Dekker): our hold store is ordered
    // before this load, the publisher's entry rewrite before its load of our hold.
    fence(Ordering::SeqCst);
    map.load_u64(geometry.entry_offset(seq), Ordering::Relaxed) == Some(seq + 1)
}

/// Subscriber: the publisher says it is parked waiting for subscribers to move on.
pub(crate) fn publisher_waiting(map: &ReadOnlyMapping) -> bool {
    map.load_u32(PUBLISHER_WAITING, Ordering::Relaxed)
        .is_some_and(|w| w != 0)
}

/// Subscriber: the CPU the publisher last published from, plus one (0: unknown).
pub(crate) fn publisher_cpu(map: &ReadOnlyMapping) -> u32 {
    map.load_u32(PUBLISHER_CPU, Ordering::Relaxed).unwrap_or(0)
}

/// Publisher: records the CPU it publishes from (only when it changed: the line stays shared).
pub(crate) fn set_publisher_cpu(map: &Mapping, cpu_plus_one: u32) {
    if let Some(word) = map.atomic_u32(PUBLISHER_CPU)
        && word.load(Ordering::Relaxed) != cpu_plus_one
    {
        word.store(cpu_plus_one, Ordering::Relaxed);
    }
}

/// Subscriber: takes hold record `record` for `slot` (follow with [`still_describes`]).
pub(crate) fn hold(control: &Mapping, record: u32, slot: u32) -> Result<(), LayoutError> {
    control
        .atomic_u32(HOLDS + 4 * record as usize)
        .ok_or(LayoutError)?
        // Release: the record may have been given back (with release) and taken again since the
        // publisher last looked; this store continues that release sequence.
        .store(slot + 1, Ordering::Release);
    Ok(())
}

/// Subscriber: gives hold record `record` back, after its last read of the slot.
pub(crate) fn release(control: &Mapping, record: u32) {
    if let Some(word) = control.atomic_u32(HOLDS + 4 * record as usize) {
        // SYNC POINT: pairs with the acquire load in `Holds::scan`: our reads of the slot happen
        // before the publisher's next write to it.
        word.store(0, Ordering::Release);
    }
}

/// Subscriber: every sample before `cursor` has been taken (or skipped).
pub(crate) fn set_cursor(control: &Mapping, cursor: u64) {
    if let Some(word) = control.atomic_u64(CURSOR) {
        word.store(cursor, Ordering::Release);
    }
}

/// Publisher: a subscriber's cursor (untrusted: the caller checks it against what it published).
pub(crate) fn cursor(control: &Mapping) -> Result<u64, LayoutError> {
    Ok(control
        .atomic_u64(CURSOR)
        .ok_or(LayoutError)?
        .load(Ordering::Acquire))
}

/// Publisher: how many of a subscriber's hold records name a slot (for statistics: untrusted,
/// unchecked beyond the record count).
pub(crate) fn held_count(control: &Mapping, max_held: u32) -> u32 {
    (0..max_held)
        .filter(|record| {
            control
                .atomic_u32(HOLDS + 4 * *record as usize)
                .is_some_and(|w| w.load(Ordering::Relaxed) != 0)
        })
        .count() as u32
}

/// Publisher: the set of slots some subscriber holds, rebuilt by [`Holds::scan`].
#[derive(Debug)]
pub(crate) struct Holds {
    bits: Vec<u64>,
    slots: u32,
}

impl Holds {
    pub(crate) fn new(slots: u32) -> Self {
        Holds {
            bits: vec![0; (slots as usize).div_ceil(64)],
            slots,
        }
    }

    /// Forgets every hold and issues the fence that orders the publisher's entry rewrites before
    /// the hold loads that follow (see the module docs). Call before [`Holds::add`]ing each
    /// subscriber.
    pub(crate) fn start_scan(&mut self) {
        self.bits.fill(0);
        // SYNC POINT: pairs with the fence in `still_describes`.
        fence(Ordering::SeqCst);
    }

    /// Adds one subscriber's `max_held` hold records. An error names the first record that names
    /// no slot (the subscriber is then to be dropped; records added so far stay).
    pub(crate) fn add(&mut self, control: &Mapping, max_held: u32) -> Result<(), String> {
        for record in 0..max_held {
            let value = control
                .atomic_u32(HOLDS + 4 * record as usize)
                .ok_or_else(|| "a hold record lies outside the subscriber region".to_owned())?
                // SYNC POINT: pairs with the release store in `release`.
                .load(Ordering::Acquire);
            if value == 0 {
                continue;
            }
            let slot = value - 1;
            if slot >= self.slots {
                return Err(format!(
                    "hold record {record} names slot {slot}, but the topic has {} slots",
                    self.slots
                ));
            }
            self.bits[slot as usize / 64] |= 1 << (slot % 64);
        }
        Ok(())
    }

    pub(crate) fn is_held(&self, slot: u32) -> bool {
        self.bits
            .get(slot as usize / 64)
            .is_some_and(|w| w & (1 << (slot % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::memfd;
    use proptest::prelude::*;

    fn geometry() -> Geometry {
        Geometry {
            entries: 8,
            slots: 20,
            max_sample: 100,
            history: 2,
            max_held: 4,
            flags: 0,
        }
    }

    fn region(geometry: &Geometry) -> (Mapping, ReadOnlyMapping) {
        let len = geometry.region_len().unwrap();
        let fd = memfd::create_for_one_writer("memlink-unit-broadcast", len).unwrap();
        let writer = Mapping::map_shared(&fd, len as usize).unwrap();
        memfd::seal_writes(&fd).unwrap();
        assert!(memfd::is_sealed_read_only(&fd));
        let reader = ReadOnlyMapping::map(&fd, len as usize).unwrap();
        (writer, reader)
    }

    #[test]
    fn layout_is_pinned() {
        let g = geometry();
        assert_eq!(g.slot_stride(), 128);
        assert_eq!(g.slots_offset(), 4096);
        assert_eq!(g.slot_offset(3), 4096 + 3 * 128);
        assert_eq!(g.region_len(), Some(8192));
        assert_eq!(g.entry_offset(9), ENTRIES + ENTRY_LEN);
    }

    #[test]
    fn header_round_trips_and_a_wrong_size_is_refused() {
        let g = geometry();
        let (writer, reader) = region(&g);
        write_header(&writer, &g, 42).unwrap();
        assert_eq!(read_header(&reader, 8192), Ok((g, 42)));
        assert!(read_header(&reader, 4096).is_err());
    }

    #[test]
    fn entries_tell_ready_pending_and_overwritten() {
        let g = geometry();
        let (writer, reader) = region(&g);
        assert_eq!(read_entry(&reader, &g, 0), Ok(Entry::Pending));
        write_entry(&writer, &g, 0, 5, 10).unwrap();
        assert_eq!(
            read_entry(&reader, &g, 0),
            Ok(Entry::Ready { slot: 5, len: 10 })
        );
        assert!(still_describes(&reader, &g, 0));
        assert_eq!(read_entry(&reader, &g, 8), Ok(Entry::Pending));
        write_entry(&writer, &g, 8, 6, 0).unwrap();
        assert_eq!(
            read_entry(&reader, &g, 0),
            Ok(Entry::Overwritten { newer: 8 })
        );
        assert!(!still_describes(&reader, &g, 0));
        // A slot or length outside the topic, or a stamp in the wrong entry, is an error.
        write_entry(&writer, &g, 1, 20, 0).unwrap();
        assert!(read_entry(&reader, &g, 1).is_err());
        write_entry(&writer, &g, 2, 0, 101).unwrap();
        assert!(read_entry(&reader, &g, 2).is_err());
        writer
            .atomic_u64(ENTRIES + 3 * ENTRY_LEN)
            .unwrap()
            .store(5, Ordering::Relaxed);
        assert!(read_entry(&reader, &g, 3).is_err());
    }

    #[test]
    fn holds_are_seen_and_garbage_is_refused() {
        let fd = memfd::create_sealed("memlink-unit-holds", SUBSCRIBER_REGION_LEN as u64).unwrap();
        let control = Mapping::map_shared(&fd, SUBSCRIBER_REGION_LEN).unwrap();
        let mut holds = Holds::new(20);
        hold(&control, 3, 19).unwrap();
        holds.start_scan();
        holds.add(&control, 4).unwrap();
        assert!(holds.is_held(19) && !holds.is_held(0));
        release(&control, 3);
        holds.start_scan();
        holds.add(&control, 4).unwrap();
        assert!(!holds.is_held(19));
        hold(&control, 0, 20).unwrap();
        assert!(holds.add(&control, 4).is_err());
    }

    proptest! {
        /// Whatever a header says, a geometry either validates with every offset in the region,
        /// or is refused; never a panic or an overflow.
        #[test]
        fn any_geometry_is_validated_or_refused(
            entries in any::<u32>(), slots in any::<u32>(), max_sample in any::<u32>(),
            history in any::<u32>(), max_held in any::<u32>(),
        ) {
            let g = Geometry { entries, slots, max_sample, history, max_held, flags: 0 };
            if g.validate().is_ok() {
                let len = g.region_len().unwrap();
                let last = g.slot_offset(slots - 1) as u64 + u64::from(max_sample);
                prop_assert!(last <= len);
                prop_assert!(g.entry_offset(u64::MAX) as u64 + 16 <= g.slots_offset());
            }
        }

        /// Whatever bytes an entry holds, reading it gives a validated answer or an error.
        #[test]
        fn any_entry_is_read_safely(stamp in any::<u64>(), location in any::<u64>(), seq in any::<u64>()) {
            let g = geometry();
            let (writer, reader) = region(&g);
            let at = g.entry_offset(seq);
            writer.atomic_u64(at).unwrap().store(stamp, Ordering::Relaxed);
            writer.atomic_u64(at + 8).unwrap().store(location, Ordering::Relaxed);
            if let Ok(Entry::Ready { slot, len }) = read_entry(&reader, &g, seq) {
                prop_assert!(slot < g.slots && len <= g.max_sample);
                prop_assert_eq!(stamp, seq.wrapping_add(1));
            }
        }
    }
}
