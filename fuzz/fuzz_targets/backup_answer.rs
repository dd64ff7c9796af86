//! The scanner of a relayed BASE_BACKUP answer: no panic, never more bytes than given, and
//! the same outcome however the bytes are cut.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrelay::proto::basebackup::fuzz_answer_scanner(data));
