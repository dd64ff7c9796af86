//! Replication slot names, as `slot.c:ReplicationSlotValidateName` accepts them.

use std::borrow::{Borrow, Cow};
use std::fmt;

use super::SqlState;

/// The longest slot name in bytes (`NAMEDATALEN - 1`).
pub const MAX_SLOT_NAME_LEN: usize = 63;

/// A valid replication slot name: 1 to 63 bytes of `[a-z0-9_]`. Such a name can never reach
/// outside a directory when used in a path.
///
/// ```
/// use walrelay::types::SlotName;
/// assert_eq!(SlotName::new("replica_1").unwrap().as_str(), "replica_1");
/// assert!(SlotName::new("../etc").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotName(Cow<'static, str>);

/// Why a name cannot name a replication slot; the text is PostgreSQL's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotNameError {
    /// The name is empty.
    #[error("replication slot name \"\" is too short")]
    TooShort,
    /// The name has 64 bytes or more.
    #[error("replication slot name \"{0}\" is too long")]
    TooLong(String),
    /// The name has a character outside `[a-z0-9_]`.
    #[error("replication slot name \"{0}\" contains invalid character")]
    InvalidCharacter(String),
}

impl SlotNameError {
    /// The SQLSTATE PostgreSQL answers with.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            SlotNameError::TooLong(_) => SqlState::NAME_TOO_LONG,
            SlotNameError::TooShort | SlotNameError::InvalidCharacter(_) => SqlState::INVALID_NAME,
        }
    }

    /// The HINT PostgreSQL adds, if any.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            SlotNameError::InvalidCharacter(_) => Some(
                "Replication slot names may only contain lower case letters, numbers, and the underscore character.",
            ),
            SlotNameError::TooShort | SlotNameError::TooLong(_) => None,
        }
    }
}

impl SlotName {
    /// Checks `name` in PostgreSQL's order: empty, then 64 bytes or more, then any character
    /// outside `[a-z0-9_]` (so a long name with bad characters is "too long").
    ///
    /// # Errors
    /// [`SlotNameError`], with PostgreSQL's text, SQLSTATE and hint.
    pub fn new(name: &str) -> Result<SlotName, SlotNameError> {
        if name.is_empty() {
            return Err(SlotNameError::TooShort);
        }
        if name.len() > MAX_SLOT_NAME_LEN {
            return Err(SlotNameError::TooLong(name.to_owned()));
        }
        let valid = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
        if !name.bytes().all(valid) {
            return Err(SlotNameError::InvalidCharacter(name.to_owned()));
        }
        Ok(SlotName(Cow::Owned(name.to_owned())))
    }

    /// `walrelay`: the name of the relay's own slot on its upstream unless configured.
    pub const WALRELAY: SlotName = SlotName(Cow::Borrowed("walrelay"));

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SlotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SlotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Borrow<str> for SlotName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for SlotName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for SlotName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl AsRef<str> for SlotName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(name: &str) -> Option<SqlState> {
        SlotName::new(name).err().map(|e| e.sqlstate())
    }

    #[test]
    fn accepts_postgres_names() {
        for name in ["d1", "pg_walreceiver_4242", "_", "0", &"a".repeat(63)] {
            assert_eq!(SlotName::new(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn refuses_like_postgres() {
        // [obs] PG 15.18: `CREATE_REPLICATION_SLOT "../../etc" PHYSICAL` and `"Bad"` give
        // 42602 "... contains invalid character" with the hint; `""` gives 42602 "... is too
        // short"; 64 bytes give 42622.
        for name in [
            "../../x", "a/b", "A", "Bad", "é", "a b", "a\0b", "a-b", "x.slot",
        ] {
            assert_eq!(code(name), Some(SqlState::INVALID_NAME), "{name:?}");
        }
        assert_eq!(code(""), Some(SqlState::INVALID_NAME));
        assert_eq!(code(&"a".repeat(64)), Some(SqlState::NAME_TOO_LONG));
        // Bytes, not characters: 32 two-byte characters are 64 bytes.
        assert_eq!(code(&"é".repeat(32)), Some(SqlState::NAME_TOO_LONG));
        assert_eq!(code(&"A".repeat(70)), Some(SqlState::NAME_TOO_LONG));
    }

    #[test]
    fn messages_and_hints_are_postgres_texts() {
        let e = SlotName::new("../../x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "replication slot name \"../../x\" contains invalid character"
        );
        assert_eq!(
            e.hint(),
            Some(
                "Replication slot names may only contain lower case letters, numbers, and the \
                 underscore character."
            )
        );
        let e = SlotName::new("").unwrap_err();
        assert_eq!(e.to_string(), "replication slot name \"\" is too short");
        assert_eq!(e.hint(), None);
        let long = "b".repeat(64);
        let e = SlotName::new(&long).unwrap_err();
        assert_eq!(e, SlotNameError::TooLong(long.clone()));
        assert_eq!(
            e.to_string(),
            format!("replication slot name \"{long}\" is too long")
        );
    }
}
