//! Timeline history files and their names.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrelay::wal::fuzzing::fuzz_history(data));
