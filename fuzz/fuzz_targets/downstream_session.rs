//! A client's bytes through a whole downstream session, its actions answered.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrelay::proto::downstream::fuzzing::fuzz_session(data));
