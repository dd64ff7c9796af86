//! The walrelay binary.
fn main() {}
