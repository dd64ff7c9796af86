//! CopyData payloads of both directions (w, k, r, h).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrelay::wire::fuzzing::fuzz_replication_payloads(data));
