//! The replication command lexer and parser: no panic, and whatever parses prints as text
//! that parses to the same command.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrelay::wire::command::fuzz_command(data));
