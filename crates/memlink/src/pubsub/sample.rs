//! The two places where memlink hands out a slice over shared memory: a subscriber's [`Sample`],
//! read where the publisher wrote it, and a publisher's [`Loan`], filled in place.
//!
//! Everywhere else memlink copies bytes out of shared memory before looking at them, because a
//! slice over bytes another process may change is undefined behaviour in Rust (the compiler may
//! read a byte twice and act on two different values). Zero-copy is the point of
//! publish/subscribe, so here the line is drawn explicitly:
//!
//! - **A sample is read in place only if nobody can change it while it is held.** Nobody but
//!   the publisher can write the broadcast region: it is a memfd sealed with
//!   `F_SEAL_FUTURE_WRITE` after the publisher mapped it (checked by the subscriber before
//!   mapping it, read-only), so neither another subscriber nor anyone given the descriptor can
//!   map it writable, `write` it or punch holes in it. The publisher itself never writes a slot
//!   while a subscriber's hold record names it (the protocol in `memory::broadcast`; the hold is
//!   confirmed before a `Sample` is made, and given back only when it is dropped). That leaves a
//!   publisher that breaks the protocol on purpose: the subscriber views samples in place only
//!   when the publisher runs as the subscriber's own user or as root, who can already write the
//!   subscriber's memory through `ptrace` or `/proc/PID/mem`, so the view gives them nothing new.
//! - **A publisher of another user gets a copying receive.** Its samples are copied out of the
//!   region into a `Vec` as they are received; a byte changed under the copy gives wrong data,
//!   never undefined behaviour.
//! - **A loan is written in place by the one process that may write the region.** The publisher
//!   hands a free slot (no entry describes it, nobody holds it) to one loan at a time, and the
//!   loan borrows the publisher mutably, so nothing else in the process touches the slot until
//!   the loan is sent or dropped. Subscribers may read a slot they do not hold (a hostile one
//!   can read the whole region), which changes nothing for us.
#![allow(unsafe_code)]

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use super::publisher::Publisher;
use super::subscriber::Attachment;
use crate::error::Result;

/// A sample received from a topic. It dereferences to the sample's bytes, which (from a
/// publisher of our own user, or root) are read where the publisher wrote them: holding it
/// keeps its slot from being reused, so hold few, briefly (a subscriber may hold at most the
/// topic's `max_held_per_subscriber` at once; see [`Error::TooManyHeld`](crate::Error::TooManyHeld)).
/// It may be sent to another thread and dropped there.
pub struct Sample {
    sequence: u64,
    body: Body,
}

enum Body {
    /// Read in place; see the module docs.
    InPlace(HeldSlot),
    /// Copied out (a publisher of another user).
    Copied(Vec<u8>),
}

/// A confirmed hold on a slot: until dropped, the publisher does not write the slot.
pub(super) struct HeldSlot {
    attachment: Arc<Attachment>,
    record: u32,
    offset: usize,
    len: usize,
}

impl HeldSlot {
    /// `record` is one of `attachment`'s hold records, naming the slot at `offset` (`len` bytes
    /// in the broadcast region), and the subscriber has confirmed the hold (the entry still
    /// described the sample after the record was stored). `attachment` reads in place only from
    /// a publisher of our own user or root, from a region sealed against other writers. These
    /// are the conditions under which [`Sample`]'s `Deref` is sound; the subscriber constructs a
    /// `HeldSlot` only when they hold.
    pub(super) fn confirmed(
        attachment: Arc<Attachment>,
        record: u32,
        offset: usize,
        len: usize,
    ) -> Self {
        HeldSlot {
            attachment,
            record,
            offset,
            len,
        }
    }
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        self.attachment.release(self.record);
    }
}

impl Sample {
    pub(super) fn in_place(sequence: u64, held: HeldSlot) -> Self {
        Sample {
            sequence,
            body: Body::InPlace(held),
        }
    }

    pub(super) fn copied(sequence: u64, bytes: Vec<u8>) -> Self {
        Sample {
            sequence,
            body: Body::Copied(bytes),
        }
    }

    /// The sample's sequence number: 0 for the publisher's first, one more for each after.
    /// (A restarted publisher counts from 0 again.)
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Whether the bytes are read where the publisher wrote them (a publisher of our own user
    /// or root) rather than copied out (a publisher of another user).
    pub fn is_zero_copy(&self) -> bool {
        matches!(self.body, Body::InPlace(_))
    }
}

impl Deref for Sample {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.body {
            Body::Copied(bytes) => bytes,
            Body::InPlace(held) => {
                // Nothing writes the slot while `held` lives: the region is sealed against every
                // writer but the publisher, the publisher is of our user or root, and its
                // protocol does not write a held slot (see the module docs). The range was
                // validated against the region.
                // SAFETY: `HeldSlot::confirmed`'s conditions hold for `held`.
                unsafe { held.attachment.data().view(held.offset, held.len) }.unwrap_or_default()
            }
        }
    }
}

impl AsRef<[u8]> for Sample {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sample")
            .field("sequence", &self.sequence)
            .field("len", &self.len())
            .field("zero_copy", &self.is_zero_copy())
            .finish()
    }
}

/// A slot of the topic lent to the publisher to fill in place: it dereferences to the sample's
/// bytes (starting with whatever the slot held before). [`Loan::send`] publishes it; dropping it
/// unsent gives the slot back.
pub struct Loan<'p> {
    publisher: &'p mut Publisher,
    slot: u32,
    len: usize,
    sent: bool,
}

impl<'p> Loan<'p> {
    pub(super) fn new(publisher: &'p mut Publisher, slot: u32, len: usize) -> Self {
        Loan {
            publisher,
            slot,
            len,
            sent: false,
        }
    }

    /// Shortens the sample to `len` bytes (loan the most you may need, fill, then cut): no
    /// effect if `len` is not shorter.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Publishes the sample; returns its sequence number. In a reliable topic this may wait for
    /// a subscriber to move on (see
    /// [`PublisherOptions::reliable`](super::PublisherOptions::reliable)).
    ///
    /// # Errors
    /// [`Error::Corrupted`](crate::Error::Corrupted) only if the topic's own region is broken.
    pub fn send(mut self) -> Result<u64> {
        self.sent = true;
        self.publisher.commit(self.slot, self.len)
    }
}

impl Deref for Loan<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let offset = self.publisher.slot_offset(self.slot);
        // The slot is lent to this loan alone (free: no entry describes it, nobody holds it;
        // taken from the free list once), only this process can write the region, and the loan
        // borrows the publisher mutably.
        // SAFETY: so nothing writes the slot while the returned slice lives.
        unsafe { self.publisher.data.view(offset, self.len) }.unwrap_or_default()
    }
}

impl DerefMut for Loan<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        let offset = self.publisher.slot_offset(self.slot);
        // As for `deref`; other processes can only read the region.
        // SAFETY: `&mut self` excludes every other access to the slot in this process.
        unsafe { self.publisher.data.view_mut(offset, self.len) }.unwrap_or_default()
    }
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        if !self.sent {
            self.publisher.return_slot(self.slot);
        }
    }
}

impl fmt::Debug for Loan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loan")
            .field("slot", &self.slot)
            .field("len", &self.len)
            .finish()
    }
}
