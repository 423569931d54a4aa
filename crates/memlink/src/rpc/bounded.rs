//! Decoding a peer's typed message (feature `serde`) under bounds: the one way `rpc` turns bytes
//! another process wrote into a value (a typed server's requests, a typed client's replies).
//!
//! postcard, like most serde formats without a schema, trusts the type to bound the work and the
//! memory: it has no recursion limit, and a sequence's length is just a varint. Bytes from a
//! peer are not so kind:
//!
//! - a recursive type (`enum Tree { Leaf, Node(Box<Tree>) }`) lets a few megabytes of nested
//!   tags recurse until the decoding thread's stack overflows, which aborts the whole process;
//! - a sequence of elements that take no bytes (`Vec<()>`, a `Vec` of empty structs) with a
//!   length of 2^64 keeps the decoder looping for ages without reading a byte;
//! - an element that takes one byte may take far more once decoded: a 64 MiB `Vec<String>` of
//!   empty strings is 1.5 GiB of `String`s, a `Vec<Option<[u8; 1024]>>` of `None`s 64 GiB, and
//!   a failed allocation aborts the process.
//!
//! So the postcard deserializer is wrapped in a serde adapter that forwards everything and
//! enforces the [`DecodeLimits`]:
//!
//! - **Nesting**: at most `max_depth` containers (sequences, tuples, structs, maps, enum
//!   variants, options, newtypes) inside one another, and at most `max_stack` bytes of stack
//!   used below the decoder's entry, measured at every container (the address of a local
//!   against the one taken on entry): whatever the frames of a type's deserializer cost, a deep
//!   message is refused before the thread's stack runs out.
//! - **Memory**: the elements of the message's sequences and maps, and values decoded into a
//!   `Box` (any value larger than the place it is decoded for lives elsewhere), at most
//!   `max_element_bytes` together, each counted at the `size_of` of its type, an element at
//!   least one byte. serde does name that type: it is the `Value` of the seed or visitor that
//!   decodes the element. Strings and byte buffers are not counted (they take no more than
//!   their bytes in the input), nor is the allocator's overhead per allocation.
//! - **Elements that take no bytes**: at most `max_empty_elements` elements of length-prefixed
//!   containers (sequences, and maps: an entry whose key and value together consumed no input)
//!   in the whole message. An element that consumes input is bounded by the input's length; the
//!   fields of a struct or tuple are not elements (the type fixes how many there are).
//!
//! Together they bound the work to about `max_depth` × the input's length plus
//! `max_empty_elements` visits, the stack to `max_stack` bytes (plus one level's frames), and
//! what the decoded value holds to about `max_element_bytes` plus the input's length, twice that
//! while a `Vec` grows. (Sequence length hints are also cut to the bytes left, so that no
//! preallocation exceeds what the input can fill.) A message beyond a limit is an error like
//! any malformed one.
//!
//! The input's position is what tells an element that consumed nothing: a postcard flavor over
//! the input slice ([`Counted`]) publishes the bytes left after every read.

use std::cell::Cell;
use std::mem::size_of;

use postcard::de_flavors::{Flavor, Slice};
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// How far [`typed`](crate::rpc::typed) handlers and [`Client::call_typed`](crate::Client::call_typed)
/// trust a peer's typed message (feature `serde`): a message beyond any of these limits does
/// not decode ([`Error::Undecodable`](crate::Error::Undecodable)), whatever its type. Set them
/// with [`typed_with_limits`](crate::rpc::typed_with_limits) on a server and
/// [`ClientOptions::decode_limits`](crate::ClientOptions::decode_limits) on a client.
///
/// The defaults (`DecodeLimits::new()`) suit messages of up to a few million elements on a
/// thread with Rust's default 2 MiB stack:
///
/// | limit | default | bounds |
/// |---|---|---|
/// | [`max_depth`](DecodeLimits::max_depth) | 128 levels | containers inside one another (an `Option<Box<Node>>` link costs two: the option and the struct) |
/// | [`max_stack`](DecodeLimits::max_stack) | 512 KiB | stack the decoder uses, whatever the depth |
/// | [`max_element_bytes`](DecodeLimits::max_element_bytes) | 64 MiB | the decoded value's elements and boxes, each at its type's `size_of` |
/// | [`max_empty_elements`](DecodeLimits::max_empty_elements) | 65,536 | elements of sequences and maps that take no input bytes (`()`, empty structs) |
///
/// A typed message can take far more memory decoded than on the wire (a `Vec<String>` of empty
/// strings 24 times its length, a `Vec<Option<[u8; 1024]>>` of `None`s a thousand times):
/// `max_element_bytes` is what bounds it, and a service that expects small messages is best
/// served by a smaller one (and a smaller [`ServerOptions::max_message_size`](crate::ServerOptions::max_message_size)
/// or [`ClientOptions::max_reply_size`](crate::ClientOptions::max_reply_size)), since each
/// worker may hold a decoded request at once.
///
/// # Examples
/// ```
/// use memlink::rpc::DecodeLimits;
///
/// // Long linked lists (two levels a node), small messages.
/// let limits = DecodeLimits::new().max_depth(4096).max_stack(1 << 20).max_element_bytes(1 << 20);
/// # let _ = limits;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    max_depth: usize,
    max_stack: usize,
    max_element_bytes: usize,
    max_empty_elements: u64,
}

impl DecodeLimits {
    /// The defaults (see the table above).
    pub const fn new() -> Self {
        DecodeLimits {
            max_depth: 128,
            max_stack: 512 << 10,
            max_element_bytes: 64 << 20,
            max_empty_elements: 1 << 16,
        }
    }

    /// Deepest nesting of containers (sequences, tuples, structs, maps, enum variants, options,
    /// newtypes) a message may have. Default 128.
    pub fn max_depth(mut self, levels: usize) -> Self {
        self.max_depth = levels;
        self
    }

    /// Most bytes of stack the decoder may use below where it started, checked at every
    /// container, so that a deep message of a type with large deserializer frames cannot
    /// overflow the thread's stack whatever `max_depth` allows. Default 512 KiB: half of what
    /// Rust's default 2 MiB thread stack (a server's workers', unless `RUST_MIN_STACK` says
    /// otherwise) leaves after its caller's frames; 128 levels of a simple recursive enum take
    /// about 50 KiB optimised and 220 KiB unoptimised. Lower it to decode on a thread with a
    /// smaller stack; raise it only with a larger one.
    pub fn max_stack(mut self, bytes: usize) -> Self {
        self.max_stack = bytes;
        self
    }

    /// Most bytes the decoded message's sequence and map elements and boxed values may take
    /// together, each counted at its type's `size_of` (at least one byte an element). Default
    /// 64 MiB.
    pub fn max_element_bytes(mut self, bytes: usize) -> Self {
        self.max_element_bytes = bytes;
        self
    }

    /// Most elements of sequences and maps that consume no input (such as `()` or empty
    /// structs) one message may hold: each costs the decoder a visit for no byte. Default
    /// 65,536.
    pub fn max_empty_elements(mut self, elements: u64) -> Self {
        self.max_empty_elements = elements;
        self
    }
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self::new()
    }
}

/// Decodes a whole message as a `T` under the default limits.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn decode<T: de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    decode_with(bytes, &DecodeLimits::new())
}

/// Decodes a whole message as a `T`: bytes left over are an error too (they mean the two sides
/// disagree on the type), and so is a message beyond `limits` (see the module doc).
pub(crate) fn decode_with<T: de::DeserializeOwned>(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<T, String> {
    let remaining = Cell::new(bytes.len());
    let budget = Budget {
        limits: *limits,
        remaining: &remaining,
        bytes_left: Cell::new(limits.max_element_bytes),
        empty_left: Cell::new(limits.max_empty_elements),
        stack_base: stack_address(),
        exceeded: Cell::new(None),
    };
    let mut postcard = postcard::Deserializer::from_flavor(Counted {
        slice: Slice::new(bytes),
        remaining: &remaining,
    });
    let decoded = T::deserialize(Bounded {
        inner: &mut postcard,
        depth: 0,
        // The value itself is the caller's (on its stack): only what it holds elsewhere counts.
        room: size_of::<T>(),
        budget: &budget,
    });
    match decoded {
        Ok(value) => match postcard.finalize() {
            Ok([]) => Ok(value),
            Ok(rest) => Err(format!(
                "{} bytes left over after the value (the other side sent another type)",
                rest.len()
            )),
            Err(e) => Err(e.to_string()),
        },
        // postcard drops the text of a custom error: say which limit it was.
        Err(e) => Err(budget.exceeded.take().unwrap_or_else(|| e.to_string())),
    }
}

/// Where this thread's stack is now: the address of a local of a frame just below the
/// caller's. Two of them on one thread tell how much stack lies between (the stack grows down
/// on every Linux target; the distance is taken either way).
#[inline(never)]
fn stack_address() -> usize {
    let marker = 0u8;
    std::hint::black_box(std::ptr::from_ref(&marker)).addr()
}

/// The input slice, publishing the bytes left after every read.
struct Counted<'de> {
    slice: Slice<'de>,
    remaining: &'de Cell<usize>,
}

impl Counted<'_> {
    fn publish(&self) {
        if let Some(left) = self.slice.size_hint() {
            self.remaining.set(left);
        }
    }
}

impl<'de> Flavor<'de> for Counted<'de> {
    type Remainder = &'de [u8];
    type Source = &'de [u8];

    fn pop(&mut self) -> postcard::Result<u8> {
        let byte = self.slice.pop();
        self.publish();
        byte
    }

    fn size_hint(&self) -> Option<usize> {
        self.slice.size_hint()
    }

    fn try_take_n(&mut self, ct: usize) -> postcard::Result<&'de [u8]> {
        let taken = self.slice.try_take_n(ct);
        self.publish();
        taken
    }

    fn finalize(self) -> postcard::Result<&'de [u8]> {
        self.slice.finalize()
    }
}

/// What every layer of the adapter shares: the limits and what is left of them.
struct Budget<'a> {
    limits: DecodeLimits,
    /// Input bytes not yet read (see [`Counted`]).
    remaining: &'a Cell<usize>,
    /// Bytes of elements and boxed values still allowed.
    bytes_left: Cell<usize>,
    /// Elements that take no bytes still allowed.
    empty_left: Cell<u64>,
    /// [`stack_address`] where decoding started.
    stack_base: usize,
    /// Which limit a decoding error came from, if one did.
    exceeded: Cell<Option<String>>,
}

impl Budget<'_> {
    fn fail<E: de::Error>(&self, why: String) -> E {
        let error = E::custom(&why);
        self.exceeded.set(Some(why));
        error
    }

    /// The depth of a container opened at `depth`, if it may be: within `max_depth`, and with
    /// the stack used so far within `max_stack`.
    fn deeper<E: de::Error>(&self, depth: usize) -> Result<usize, E> {
        if depth >= self.limits.max_depth {
            return Err(self.fail(format!(
                "the message nests deeper than {} levels",
                self.limits.max_depth
            )));
        }
        if self.stack_base.abs_diff(stack_address()) > self.limits.max_stack {
            return Err(self.fail(format!(
                "decoding the message would use more than {} bytes of stack",
                self.limits.max_stack
            )));
        }
        Ok(depth + 1)
    }

    /// Charges `bytes` of decoded elements or boxed values.
    fn charge_bytes<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        let left = self.bytes_left.get();
        if bytes > left {
            return Err(self.fail(format!(
                "the message's elements would take more than {} bytes decoded",
                self.limits.max_element_bytes
            )));
        }
        self.bytes_left.set(left - bytes);
        Ok(())
    }

    /// Charges an element whose decoding started with `before` bytes left, if it consumed none.
    fn charge_empty<E: de::Error>(&self, before: usize) -> Result<(), E> {
        if self.remaining.get() != before {
            return Ok(());
        }
        let left = self.empty_left.get();
        if left == 0 {
            return Err(self.fail(format!(
                "the message holds more than {} elements that take no bytes",
                self.limits.max_empty_elements
            )));
        }
        self.empty_left.set(left - 1);
        Ok(())
    }

    /// The visitor of a value `depth` levels down, decoded into a place of `room` bytes: a value
    /// larger than its place lives elsewhere (a `Box`'s contents) and is charged.
    fn enter<'de, E: de::Error, V: Visitor<'de>>(
        &self,
        inner: V,
        depth: usize,
        room: usize,
        counted: bool,
    ) -> Result<Visit<'_, '_, V>, E> {
        let size = size_of::<V::Value>();
        if size > room {
            self.charge_bytes(size)?;
        }
        Ok(Visit {
            inner,
            depth,
            room: size,
            counted,
            budget: self,
        })
    }
}

/// A deserializer whose containers are bounded, `depth` levels down, decoding a value into a
/// place of `room` bytes.
struct Bounded<'a, 'l, D> {
    inner: D,
    depth: usize,
    room: usize,
    budget: &'a Budget<'l>,
}

/// The visitor of a value `depth` levels down, of `room` bytes: wraps the accesses it is given.
/// `counted`: its sequence or map is length-prefixed (`deserialize_seq`, `deserialize_map`),
/// so its elements count against the budgets; a tuple's, struct's or variant's fields do not.
struct Visit<'a, 'l, V> {
    inner: V,
    depth: usize,
    room: usize,
    counted: bool,
    budget: &'a Budget<'l>,
}

/// A seed whose deserializer is bounded; the seed's value is the place its value is decoded
/// for.
struct Seed<'a, 'l, S> {
    inner: S,
    depth: usize,
    budget: &'a Budget<'l>,
}

/// A sequence, map, enum or variant access whose parts are bounded. For a map, where the entry
/// being decoded started and the size of its key.
struct Access<'a, 'l, A> {
    inner: A,
    depth: usize,
    counted: bool,
    budget: &'a Budget<'l>,
    entry_start: usize,
    key_size: usize,
}

impl<'a, 'l> Budget<'l> {
    fn access<A>(&'a self, inner: A, depth: usize, counted: bool) -> Access<'a, 'l, A> {
        Access {
            inner,
            depth,
            counted,
            budget: self,
            entry_start: self.remaining.get(),
            key_size: 0,
        }
    }
}

macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*) $counted:literal;)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
                let visitor = self.budget.enter(visitor, self.depth, self.room, $counted)?;
                self.inner.$method($($arg,)* visitor)
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Bounded<'_, '_, D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any() false;
        deserialize_bool() false;
        deserialize_i8() false;
        deserialize_i16() false;
        deserialize_i32() false;
        deserialize_i64() false;
        deserialize_i128() false;
        deserialize_u8() false;
        deserialize_u16() false;
        deserialize_u32() false;
        deserialize_u64() false;
        deserialize_u128() false;
        deserialize_f32() false;
        deserialize_f64() false;
        deserialize_char() false;
        deserialize_str() false;
        deserialize_string() false;
        deserialize_bytes() false;
        deserialize_byte_buf() false;
        deserialize_option() false;
        deserialize_unit() false;
        deserialize_unit_struct(name: &'static str) false;
        deserialize_newtype_struct(name: &'static str) false;
        // Length-prefixed: the message, not the type, says how many elements.
        deserialize_seq() true;
        deserialize_tuple(len: usize) false;
        deserialize_tuple_struct(name: &'static str, len: usize) false;
        deserialize_map() true;
        deserialize_struct(name: &'static str, fields: &'static [&'static str]) false;
        deserialize_enum(name: &'static str, variants: &'static [&'static str]) false;
        deserialize_identifier() false;
        deserialize_ignored_any() false;
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                self.inner.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Visit<'_, '_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let depth = self.budget.deeper(self.depth)?;
        self.inner.visit_some(Bounded {
            inner: d,
            depth,
            room: self.room,
            budget: self.budget,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let depth = self.budget.deeper(self.depth)?;
        self.inner.visit_newtype_struct(Bounded {
            inner: d,
            depth,
            room: self.room,
            budget: self.budget,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let depth = self.budget.deeper(self.depth)?;
        self.inner
            .visit_seq(self.budget.access(seq, depth, self.counted))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let depth = self.budget.deeper(self.depth)?;
        self.inner
            .visit_map(self.budget.access(map, depth, self.counted))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        let depth = self.budget.deeper(self.depth)?;
        self.inner
            .visit_enum(self.budget.access(data, depth, false))
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, '_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Bounded {
            inner: d,
            depth: self.depth,
            room: size_of::<S::Value>(),
            budget: self.budget,
        })
    }
}

impl<'a, 'l, A> Access<'a, 'l, A> {
    fn seed<S>(&self, inner: S) -> Seed<'a, 'l, S> {
        Seed {
            inner,
            depth: self.depth,
            budget: self.budget,
        }
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Access<'_, '_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let before = self.budget.remaining.get();
        let element = self.inner.next_element_seed(self.seed(seed))?;
        // The end of the sequence is no element, nor is a field of a tuple or struct.
        if self.counted && element.is_some() {
            self.budget.charge_bytes(size_of::<T::Value>().max(1))?;
            self.budget.charge_empty(before)?;
        }
        Ok(element)
    }

    fn size_hint(&self) -> Option<usize> {
        // Never more than the bytes left, so that no preallocation exceeds what they can fill.
        self.inner
            .size_hint()
            .map(|hint| hint.min(self.budget.remaining.get()))
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Access<'_, '_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.entry_start = self.budget.remaining.get();
        self.key_size = size_of::<K::Value>();
        self.inner.next_key_seed(self.seed(seed))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        let value = self.inner.next_value_seed(self.seed(seed))?;
        // An entry is one element, charged once its value is in.
        if self.counted {
            let entry = self.key_size.saturating_add(size_of::<V::Value>());
            self.budget.charge_bytes(entry.max(1))?;
            self.budget.charge_empty(self.entry_start)?;
        }
        Ok(value)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner
            .size_hint()
            .map(|hint| hint.min(self.budget.remaining.get()))
    }
}

impl<'a, 'l, 'de, A: EnumAccess<'de>> EnumAccess<'de> for Access<'a, 'l, A> {
    type Error = A::Error;
    type Variant = Access<'a, 'l, A::Variant>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), A::Error> {
        let seed = self.seed(seed);
        let (value, variant) = self.inner.variant_seed(seed)?;
        Ok((value, self.budget.access(variant, self.depth, false)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Access<'_, '_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        let seed = self.seed(seed);
        self.inner.newtype_variant_seed(seed)
    }

    // The variant's value is the enum, charged (if at all) where the enum was entered.
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let visitor = self.budget.enter(visitor, self.depth, usize::MAX, false)?;
        self.inner.tuple_variant(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let visitor = self.budget.enter(visitor, self.depth, usize::MAX, false)?;
        self.inner.struct_variant(fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};
    use std::collections::{BTreeMap, HashMap};
    use std::marker::PhantomData;

    const MAX_DEPTH: usize = DecodeLimits::new().max_depth;
    const MAX_EMPTY_ELEMENTS: u64 = DecodeLimits::new().max_empty_elements;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Tree {
        Leaf,
        Node(Box<Tree>),
        Branches(Vec<Tree>),
        Units(Vec<()>),
        Empties(Vec<Empty>),
        Labelled {
            label: String,
            child: Option<Box<Tree>>,
        },
        Map(BTreeMap<u8, ()>),
    }

    #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
    struct Empty {}

    /// Tags of `Tree`'s variants, as postcard writes them (a varint, one byte here).
    const NODE: u8 = 1;
    const BRANCHES: u8 = 2;
    const UNITS: u8 = 3;
    const EMPTIES: u8 = 4;
    const MAP: u8 = 6;

    fn varint(mut n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    fn nested(levels: usize) -> Tree {
        (0..levels).fold(Tree::Leaf, |tree, _| Tree::Node(Box::new(tree)))
    }

    #[test]
    fn nesting_up_to_the_limit_decodes_and_beyond_it_is_refused_without_recursing() {
        // Each Node is one enum level, each Box adds none: 127 Nodes and the Leaf are 128 levels.
        let deepest = nested(MAX_DEPTH - 1);
        let bytes = postcard::to_allocvec(&deepest).unwrap();
        assert_eq!(decode::<Tree>(&bytes), Ok(deepest));
        let too_deep = postcard::to_allocvec(&nested(MAX_DEPTH)).unwrap();
        let refused = decode::<Tree>(&too_deep).unwrap_err();
        assert!(refused.contains("deeper than 128"), "{refused}");
        // Millions of levels (plain postcard overflows the stack on these) fail just as fast.
        let mut hostile = vec![NODE; 8 << 20];
        hostile.push(0);
        let refused = decode::<Tree>(&hostile).unwrap_err();
        assert!(refused.contains("deeper than 128"), "{refused}");
        let mut branches = [BRANCHES, 1].repeat(1 << 20);
        branches.push(0);
        assert!(decode::<Tree>(&branches).is_err());
    }

    #[test]
    fn elements_that_take_no_bytes_are_counted_and_a_huge_count_is_refused_at_once() {
        for (tag, limit_ok) in [(UNITS, true), (EMPTIES, true), (UNITS, false)] {
            let n = if limit_ok {
                MAX_EMPTY_ELEMENTS
            } else {
                MAX_EMPTY_ELEMENTS + 1
            };
            let mut bytes = vec![tag];
            bytes.extend(varint(n));
            let decoded = decode::<Tree>(&bytes);
            assert_eq!(decoded.is_ok(), limit_ok, "{n} elements: {decoded:?}");
        }
        for tag in [UNITS, EMPTIES] {
            let mut bytes = vec![tag];
            bytes.extend(varint(u64::MAX));
            let started = std::time::Instant::now();
            let refused = decode::<Tree>(&bytes).unwrap_err();
            assert!(refused.contains("take no bytes"), "{refused}");
            // A watchdog, not a timing claim: without the limit this takes centuries.
            assert!(started.elapsed() < std::time::Duration::from_secs(10));
        }
        // Map entries whose values take no bytes: the keys do (one byte each).
        let map = Tree::Map((0..=255).map(|k| (k, ())).collect());
        let bytes = postcard::to_allocvec(&map).unwrap();
        assert_eq!(decode::<Tree>(&bytes), Ok(map));
        let mut bytes = vec![MAP];
        bytes.extend(varint(u64::MAX));
        bytes.extend([7; 64]);
        assert!(decode::<Tree>(&bytes).is_err());
        // The budget is per message: many small lists of them within it are fine.
        let lists = Tree::Branches(vec![Tree::Units(vec![(); 1000]); 60]);
        let bytes = postcard::to_allocvec(&lists).unwrap();
        assert_eq!(decode::<Tree>(&bytes), Ok(lists));
    }

    /// An id typed by what it names: a field that takes no bytes beside one that does.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Id<T> {
        raw: u64,
        _t: PhantomData<T>,
    }

    /// Struct and tuple fields that take no bytes are not elements, and neither is a map value
    /// whose key took some: only elements of length-prefixed containers that consume nothing
    /// count against the budget of empty elements.
    #[test]
    fn fields_and_map_values_that_take_no_bytes_are_not_empty_elements() {
        let n = 100_000;
        let ids: Vec<Id<String>> = (0..n)
            .map(|raw| Id {
                raw,
                _t: PhantomData,
            })
            .collect();
        let bytes = postcard::to_allocvec(&ids).unwrap();
        assert_eq!(decode::<Vec<Id<String>>>(&bytes), Ok(ids));
        let set: HashMap<String, ()> = (0..n).map(|k| (k.to_string(), ())).collect();
        let bytes = postcard::to_allocvec(&set).unwrap();
        assert_eq!(decode::<HashMap<String, ()>>(&bytes), Ok(set));
        let pairs: Vec<(u32, ())> = (0..n as u32).map(|k| (k, ())).collect();
        let bytes = postcard::to_allocvec(&pairs).unwrap();
        assert_eq!(decode::<Vec<(u32, ())>>(&bytes), Ok(pairs));
        // An element made of fields that all take no bytes is still an empty element.
        for (count, ok) in [(MAX_EMPTY_ELEMENTS, true), (MAX_EMPTY_ELEMENTS + 1, false)] {
            let bytes = varint(count);
            let decoded = decode::<Vec<((), Empty)>>(&bytes);
            assert_eq!(decoded.is_ok(), ok, "{count}: {decoded:?}");
        }
        // Map entries whose key and value both take none are (one each).
        let bytes = [varint(1), varint(u64::MAX)].concat();
        let refused = decode::<Vec<BTreeMap<(), ()>>>(&bytes).unwrap_err();
        assert!(refused.contains("take no bytes"), "{refused}");
    }

    /// What a message decodes to is bounded, not only the work: elements that take a byte on
    /// the wire and many more decoded are charged at their type's size.
    #[test]
    fn decoded_memory_is_bounded_whatever_the_elements_cost_on_the_wire() {
        let many_none = |count: u64| {
            let mut bytes = varint(count);
            bytes.resize(bytes.len() + count as usize, 0);
            bytes
        };
        // 10 MB of empty strings: 240 MB of `String`s.
        let refused = decode::<Vec<String>>(&many_none(10_000_000)).unwrap_err();
        assert!(refused.contains("bytes decoded"), "{refused}");
        // A byte each, a KiB each decoded: refused after 64 MiB worth, not after 1 GiB.
        type Kib = [[u8; 32]; 32];
        let refused = decode::<Vec<Option<Kib>>>(&many_none(1 << 20)).unwrap_err();
        assert!(refused.contains("bytes decoded"), "{refused}");
        // Decoded into a box each: the boxes' contents count too.
        let refused = decode::<Vec<Box<Option<[Kib; 4]>>>>(&many_none(1 << 20)).unwrap_err();
        assert!(refused.contains("bytes decoded"), "{refused}");
        let tight = DecodeLimits::new().max_element_bytes(1023);
        assert!(decode_with::<Box<Kib>>(&[0; 1024], &tight).is_err());
        let limits = tight.max_element_bytes(1024);
        assert_eq!(
            decode_with::<Box<Kib>>(&[0; 1024], &limits),
            Ok(Box::new([[0; 32]; 32]))
        );
        // The limit is the caller's: exactly 8,000 bytes of u64s.
        let values: Vec<u64> = (0..1000).collect();
        let bytes = postcard::to_allocvec(&values).unwrap();
        let limits = DecodeLimits::new().max_element_bytes(8000);
        assert_eq!(decode_with::<Vec<u64>>(&bytes, &limits), Ok(values));
        let limits = limits.max_element_bytes(7999);
        assert!(decode_with::<Vec<u64>>(&bytes, &limits).is_err());
        // A larger one lets a large honest message through.
        let strings = vec![String::new(); 3_000_000];
        let bytes = postcard::to_allocvec(&strings).unwrap();
        assert!(decode::<Vec<String>>(&bytes).is_err());
        let limits = DecodeLimits::new().max_element_bytes(100 << 20);
        assert_eq!(decode_with::<Vec<String>>(&bytes, &limits), Ok(strings));
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Link {
        value: u32,
        next: Option<Box<Link>>,
    }

    fn list(nodes: u32) -> Link {
        (1..nodes).fold(
            Link {
                value: 0,
                next: None,
            },
            |next, value| Link {
                value,
                next: Some(Box::new(next)),
            },
        )
    }

    /// The depth limit is the caller's, and the stack guard holds whatever it allows.
    #[test]
    fn depth_is_configurable_and_the_stack_is_guarded_whatever_the_depth() {
        // Two levels a node (the option and the struct): 100 nodes are beyond the default.
        let long = list(100);
        let bytes = postcard::to_allocvec(&long).unwrap();
        assert!(
            decode::<Link>(&bytes)
                .unwrap_err()
                .contains("deeper than 128")
        );
        let limits = DecodeLimits::new().max_depth(1000);
        assert_eq!(decode_with::<Link>(&bytes, &limits), Ok(long));
        // No depth limit at all: millions of levels are refused by the stack guard, long before
        // the thread's stack runs out (which would abort the test process).
        let unlimited = DecodeLimits::new().max_depth(usize::MAX);
        let mut hostile = vec![NODE; 8 << 20];
        hostile.push(0);
        let refused = decode_with::<Tree>(&hostile, &unlimited).unwrap_err();
        assert!(refused.contains("bytes of stack"), "{refused}");
        let refused = decode_with::<Link>(&[1; 8 << 20], &unlimited).unwrap_err();
        assert!(refused.contains("bytes of stack"), "{refused}");
        // A tight stack budget refuses what the depth allows.
        let tight = DecodeLimits::new().max_stack(512);
        let bytes = postcard::to_allocvec(&nested(100)).unwrap();
        assert!(
            decode_with::<Tree>(&bytes, &tight)
                .unwrap_err()
                .contains("bytes of stack")
        );
    }

    #[test]
    fn leftover_bytes_and_truncation_are_errors() {
        let bytes = postcard::to_allocvec(&(2i64, 40i64)).unwrap();
        assert_eq!(decode::<(i64, i64)>(&bytes), Ok((2, 40)));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(
            decode::<(i64, i64)>(&longer)
                .unwrap_err()
                .contains("left over")
        );
        assert!(decode::<(i64, i64)>(&bytes[..1]).is_err());
    }

    fn tree() -> impl Strategy<Value = Tree> {
        let leaf = prop_oneof![
            Just(Tree::Leaf),
            (0usize..50).prop_map(|n| Tree::Units(vec![(); n])),
            (0usize..50).prop_map(|n| Tree::Empties(vec![Empty {}; n])),
            proptest::collection::btree_map(any::<u8>(), Just(()), 0..10).prop_map(Tree::Map),
        ];
        leaf.prop_recursive(8, 64, 6, |inner| {
            prop_oneof![
                inner.clone().prop_map(|t| Tree::Node(Box::new(t))),
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Tree::Branches),
                (".{0,12}", proptest::option::of(inner)).prop_map(|(label, child)| {
                    Tree::Labelled {
                        label,
                        child: child.map(Box::new),
                    }
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn whatever_postcard_encodes_within_the_limits_decodes_back(tree in tree()) {
            let bytes = postcard::to_allocvec(&tree).unwrap();
            prop_assert_eq!(decode::<Tree>(&bytes), Ok(tree));
        }

        /// For a type without recursion or empty elements the adapter changes nothing: it
        /// accepts exactly what postcard accepts, with the same value.
        #[test]
        fn on_bounded_types_it_agrees_with_postcard(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            type Flat = (u8, Option<i32>, Vec<u16>, String, BTreeMap<u8, bool>, (bool, char));
            let ours = decode::<Flat>(&bytes).ok();
            let theirs = match postcard::take_from_bytes::<Flat>(&bytes) {
                Ok((value, [])) => Some(value),
                _ => None,
            };
            prop_assert_eq!(ours, theirs);
        }

        #[test]
        fn any_bytes_decode_or_fail_within_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(tree) = decode::<Tree>(&bytes) {
                let again = postcard::to_allocvec(&tree).unwrap();
                prop_assert_eq!(decode::<Tree>(&again), Ok(tree));
            }
        }
    }
}
