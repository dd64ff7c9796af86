//! `pg_hba.conf` and `pg_ident.conf` text through the parsers, and the rules matched.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrelay::proto::access::fuzzing::fuzz_access(data));
