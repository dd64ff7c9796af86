//! Storage recovery over arbitrary directory contents.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrelay::storage::fuzzing::fuzz_recovery(data));
