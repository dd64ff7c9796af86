//! The streaming WAL validator on raw and generated WAL, whole and in chunks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrelay::wal::fuzzing::fuzz_validator(data));
