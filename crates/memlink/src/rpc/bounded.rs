//! Decoding a peer's typed message (feature `serde`) under bounds: the one way `rpc` turns bytes
//! another process wrote into a value (a typed server's requests, a typed client's replies).
//!
//! postcard, like most serde formats without a schema, trusts the type to bound the work: it has
//! no recursion limit, and a sequence's length is just a varint. Bytes from a peer are not so
//! kind. A recursive type (`enum Tree { Leaf, Node(Box<Tree>) }`) lets a few megabytes of nested
//! tags recurse until the decoding thread's stack overflows, which aborts the whole process; a
//! sequence of elements that take no bytes (`Vec<()>`, a `Vec` of empty structs) with a length of
//! 2^64 keeps the decoder looping for ages without reading a byte. So the postcard deserializer is
//! wrapped in a serde adapter that forwards everything and enforces two limits:
//!
//! - **Nesting**: at most [`MAX_DEPTH`] containers (sequences, tuples, structs, maps, enum
//!   variants, options, newtypes) inside one another.
//! - **Elements that take no bytes**: at most [`MAX_EMPTY_ELEMENTS`] sequence elements, map
//!   keys or values whose decoding consumed no input, in the whole message. An element that
//!   consumes input is already bounded by the input's length.
//!
//! Together they bound the work to about `MAX_DEPTH` × the input's length plus
//! `MAX_EMPTY_ELEMENTS` visits, and the stack to `MAX_DEPTH` levels. (Sequence length hints are
//! also cut to the bytes left, so that no preallocation exceeds what the input can fill.) A
//! message beyond a limit is an error like any malformed one.
//!
//! The input's position is what tells an element that consumed nothing: a postcard flavor over
//! the input slice ([`Counted`]) publishes the bytes left after every read.

use std::cell::Cell;

use postcard::de_flavors::{Flavor, Slice};
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// Deepest nesting of containers a typed message may have.
pub(crate) const MAX_DEPTH: usize = 128;
/// Most elements taking no bytes (sequence elements, map keys and values) one typed message may
/// hold.
pub(crate) const MAX_EMPTY_ELEMENTS: u64 = 1 << 16;

/// Decodes a whole message as a `T`: bytes left over are an error too (they mean the two sides
/// disagree on the type), and so is a message beyond the limits (see the module doc).
pub(crate) fn decode<T: de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let remaining = Cell::new(bytes.len());
    let limits = Limits {
        remaining: &remaining,
        empty_left: Cell::new(MAX_EMPTY_ELEMENTS),
        exceeded: Cell::new(None),
    };
    let mut postcard = postcard::Deserializer::from_flavor(Counted {
        slice: Slice::new(bytes),
        remaining: &remaining,
    });
    let decoded = T::deserialize(Bounded {
        inner: &mut postcard,
        depth: 0,
        limits: &limits,
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
        Err(e) => Err(limits
            .exceeded
            .get()
            .map_or_else(|| e.to_string(), str::to_owned)),
    }
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

/// What every layer of the adapter shares.
struct Limits<'a> {
    /// Input bytes not yet read (see [`Counted`]).
    remaining: &'a Cell<usize>,
    /// Elements that take no bytes still allowed.
    empty_left: Cell<u64>,
    /// Which limit a decoding error came from, if one did.
    exceeded: Cell<Option<&'static str>>,
}

impl Limits<'_> {
    fn fail<E: de::Error>(&self, why: &'static str) -> E {
        self.exceeded.set(Some(why));
        E::custom(why)
    }

    /// The depth of a container opened at `depth`, if it may be.
    fn deeper<E: de::Error>(&self, depth: usize) -> Result<usize, E> {
        if depth >= MAX_DEPTH {
            return Err(self.fail("the message nests deeper than 128 levels"));
        }
        Ok(depth + 1)
    }

    /// Charges an element whose decoding started with `before` bytes left, if it consumed none.
    fn charge<E: de::Error>(&self, before: usize) -> Result<(), E> {
        if self.remaining.get() != before {
            return Ok(());
        }
        let left = self.empty_left.get();
        if left == 0 {
            return Err(self.fail("the message holds more than 65536 elements that take no bytes"));
        }
        self.empty_left.set(left - 1);
        Ok(())
    }
}

/// A deserializer whose containers are bounded, `depth` levels down.
struct Bounded<'a, 'l, D> {
    inner: D,
    depth: usize,
    limits: &'a Limits<'l>,
}

/// The visitor of a value `depth` levels down: wraps the accesses it is given.
struct Visit<'a, 'l, V> {
    inner: V,
    depth: usize,
    limits: &'a Limits<'l>,
}

/// A seed whose deserializer is bounded.
struct Seed<'a, 'l, S> {
    inner: S,
    depth: usize,
    limits: &'a Limits<'l>,
}

/// A sequence, map, enum or variant access whose parts are bounded.
struct Access<'a, 'l, A> {
    inner: A,
    depth: usize,
    limits: &'a Limits<'l>,
}

impl<'a, 'l> Limits<'l> {
    fn visit<V>(&'a self, inner: V, depth: usize) -> Visit<'a, 'l, V> {
        Visit {
            inner,
            depth,
            limits: self,
        }
    }
}

macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
                self.inner.$method($($arg,)* self.limits.visit(visitor, self.depth))
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Bounded<'_, '_, D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
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
        let depth = self.limits.deeper(self.depth)?;
        self.inner.visit_some(Bounded {
            inner: d,
            depth,
            limits: self.limits,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let depth = self.limits.deeper(self.depth)?;
        self.inner.visit_newtype_struct(Bounded {
            inner: d,
            depth,
            limits: self.limits,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let depth = self.limits.deeper(self.depth)?;
        self.inner.visit_seq(Access {
            inner: seq,
            depth,
            limits: self.limits,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let depth = self.limits.deeper(self.depth)?;
        self.inner.visit_map(Access {
            inner: map,
            depth,
            limits: self.limits,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        let depth = self.limits.deeper(self.depth)?;
        self.inner.visit_enum(Access {
            inner: data,
            depth,
            limits: self.limits,
        })
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, '_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Bounded {
            inner: d,
            depth: self.depth,
            limits: self.limits,
        })
    }
}

impl<'a, 'l, A> Access<'a, 'l, A> {
    fn seed<S>(&self, inner: S) -> Seed<'a, 'l, S> {
        Seed {
            inner,
            depth: self.depth,
            limits: self.limits,
        }
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Access<'_, '_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let before = self.limits.remaining.get();
        let element = self.inner.next_element_seed(self.seed(seed))?;
        // The end of the sequence is no element.
        if element.is_some() {
            self.limits.charge(before)?;
        }
        Ok(element)
    }

    fn size_hint(&self) -> Option<usize> {
        // Never more than the bytes left, so that no preallocation exceeds what they can fill.
        self.inner
            .size_hint()
            .map(|hint| hint.min(self.limits.remaining.get()))
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Access<'_, '_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let before = self.limits.remaining.get();
        let key = self.inner.next_key_seed(self.seed(seed))?;
        if key.is_some() {
            self.limits.charge(before)?;
        }
        Ok(key)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        let before = self.limits.remaining.get();
        let value = self.inner.next_value_seed(self.seed(seed))?;
        self.limits.charge(before)?;
        Ok(value)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner
            .size_hint()
            .map(|hint| hint.min(self.limits.remaining.get()))
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
        Ok((
            value,
            Access {
                inner: variant,
                depth: self.depth,
                limits: self.limits,
            },
        ))
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

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner
            .tuple_variant(len, self.limits.visit(visitor, self.depth))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.inner
            .struct_variant(fields, self.limits.visit(visitor, self.depth))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;

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
