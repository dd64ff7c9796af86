//! Startup, SSLRequest, GSSENCRequest and CancelRequest packets, whole and in chunks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrelay::wire::fuzzing::fuzz_startup(data));
