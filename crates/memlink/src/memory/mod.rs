//! Memory layer: named shared memory objects and what lives inside them.
//!
//! Owns the object naming rule ([`name`]), the on-disk/in-memory header ABI ([`header`]), named
//! segments ([`segment`]), cross-process sync primitives placed in segments ([`sync`]), the
//! machine-wide listing of objects ([`inventory`]), and the layouts other processes share with us:
//! SPSC record rings (`ring`) and a topic's broadcast region (`broadcast`). Uses only the platform layer below it; it has
//! no `unsafe` of its own.

pub(crate) mod broadcast;
pub mod header;
pub mod inventory;
pub mod name;
pub(crate) mod ring;
pub mod segment;
pub mod sync;
