//! Server messages through the framer, whole and in chunks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrelay::wire::fuzzing::fuzz_backend_framer(data));
