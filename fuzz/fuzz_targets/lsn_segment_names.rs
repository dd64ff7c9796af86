//! LSN, timeline and segment-name text forms and segment arithmetic.
#![no_main]

libfuzzer_sys::fuzz_target!(
    |data: &[u8]| walrelay::types::fuzzing::fuzz_lsn_and_segment_names(data)
);
