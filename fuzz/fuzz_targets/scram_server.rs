//! The server side of SCRAM on cut client messages, and the input as secrets and an auth file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrelay::proto::auth::fuzzing::fuzz_scram_server(data));
