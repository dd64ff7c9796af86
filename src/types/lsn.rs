//! Log sequence numbers (`XLogRecPtr`) with PostgreSQL's `X/X` text form.
//!
//! PostgreSQL prints an LSN as two uppercase hex halves without padding (`16/B374D848`); the
//! development branch after 18 pads the low half (`0/0000000A`). Both forms parse, like
//! `repl_scanner.l`'s `RECPTR` rule.

use std::fmt;
use std::str::FromStr;

/// A byte position in the write-ahead log. `Lsn::INVALID` (0) means "none".
///
/// ```
/// use walrelay::types::Lsn;
///
/// let lsn: Lsn = "16/B374D848".parse().unwrap();
/// assert_eq!(lsn, Lsn(0x16_B374_D848));
/// assert_eq!(lsn.to_string(), "16/B374D848");
/// // The padded form of newer servers parses too.
/// assert_eq!("0/0000000A".parse::<Lsn>().unwrap(), Lsn(10));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN \"{0}\"")]
pub struct ParseLsnError(pub String);

impl Lsn {
    /// `InvalidXLogRecPtr`.
    pub const INVALID: Lsn = Lsn(0);
    /// The largest LSN.
    pub const MAX: Lsn = Lsn(u64::MAX);

    /// Whether this is not `InvalidXLogRecPtr`.
    pub fn is_valid(self) -> bool {
        self.0 != 0
    }

    /// `self + n`, or `None` on overflow.
    pub fn checked_add(self, n: u64) -> Option<Lsn> {
        self.0.checked_add(n).map(Lsn)
    }

    /// `self - n`, or `None` below zero.
    pub fn checked_sub(self, n: u64) -> Option<Lsn> {
        self.0.checked_sub(n).map(Lsn)
    }

    /// Bytes from `earlier` to `self`, or 0 when `earlier` is ahead.
    pub fn saturating_distance(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// This LSN rounded down to a multiple of `align` (a power of two).
    pub fn align_down(self, align: u64) -> Lsn {
        Lsn(self.0 & !(align.wrapping_sub(1)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.chars().take(64).collect());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let half = |part: &str| {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            u32::from_str_radix(part, 16).map_err(|_| err())
        };
        Ok(Lsn((u64::from(half(hi)?) << 32) | u64::from(half(lo)?)))
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

impl From<Lsn> for u64 {
    fn from(v: Lsn) -> Self {
        v.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_postgres() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0x362_FB00).to_string(), "0/362FB00");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parses_both_forms() {
        assert_eq!("16/B374D848".parse::<Lsn>(), Ok(Lsn(0x16_B374_D848)));
        assert_eq!("0/0000000A".parse::<Lsn>(), Ok(Lsn(10)));
        assert_eq!("0/3000100".parse::<Lsn>(), Ok(Lsn(0x300_0100)));
        assert_eq!("ffffffff/ffffffff".parse::<Lsn>(), Ok(Lsn::MAX));
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "/",
            "0/",
            "/0",
            "G/0",
            "0/0/0",
            "123456789/0",
            "0 /0",
            "-1/0",
            "+1/0",
        ] {
            assert!(s.parse::<Lsn>().is_err(), "{s:?} parsed");
        }
    }

    #[test]
    fn round_trips() {
        for v in [
            0u64,
            1,
            0xFFFF_FFFF,
            0x1_0000_0000,
            u64::MAX,
            0x1234_5678_9ABC_DEF0,
        ] {
            assert_eq!(Lsn(v).to_string().parse::<Lsn>(), Ok(Lsn(v)));
        }
    }
}
