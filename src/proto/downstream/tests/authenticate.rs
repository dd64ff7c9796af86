//! §2.2 and the access rules: who is let in, how, and with which refusal.
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.

use super::*;
