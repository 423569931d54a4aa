//! `memlink::__fuzz::typed`: see the table in `crates/memlink/src/fuzz.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| memlink::__fuzz::typed(data));
