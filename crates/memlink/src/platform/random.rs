//! Unpredictable numbers from the kernel (`getrandom`), for values a third party must not guess.

use std::hash::{BuildHasher, Hasher};

/// 64 random bits from `getrandom(2)`. Where the kernel cannot provide them (a pre-3.17 kernel,
/// a seccomp filter), std's per-process random hashing keys, which come from the same source
/// when it works, stand in.
pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    match rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()) {
        Ok(8) => u64::from_ne_bytes(bytes),
        _ => {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            hasher.finish()
        }
    }
}
