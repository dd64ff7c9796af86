//! Slot name rules, as `slot.c:ReplicationSlotValidateName` checks them.

use super::SlotError;

/// The longest slot name in bytes (`NAMEDATALEN - 1`).
pub const MAX_SLOT_NAME_LEN: usize = 63;

/// Checks that `name` is a valid slot name: 1 to 63 bytes of `[a-z0-9_]`.
///
/// The checks run in PostgreSQL's order, so a long name with bad characters is "too long".
///
/// # Errors
/// [`SlotError::NameTooShort`] (42602) for an empty name, [`SlotError::NameTooLong`] (42622)
/// for 64 bytes or more, [`SlotError::InvalidCharacter`] (42602, with a hint) otherwise.
pub fn validate_slot_name(name: &str) -> Result<(), SlotError> {
    if name.is_empty() {
        return Err(SlotError::NameTooShort);
    }
    if name.len() > MAX_SLOT_NAME_LEN {
        return Err(SlotError::NameTooLong(name.to_owned()));
    }
    let valid = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    if !name.bytes().all(valid) {
        return Err(SlotError::InvalidCharacter(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(name: &str) -> Option<&'static str> {
        validate_slot_name(name).err().map(|e| e.sqlstate())
    }

    #[test]
    fn accepts_postgres_names() {
        for name in ["d1", "pg_walreceiver_4242", "_", "0", &"a".repeat(63)] {
            assert_eq!(validate_slot_name(name).ok(), Some(()), "{name}");
        }
    }

    #[test]
    fn refuses_like_postgres() {
        for name in [
            "../../x", "a/b", "A", "Bad", "é", "a b", "a\0b", "a-b", "x.slot",
        ] {
            assert_eq!(code(name), Some("42602"), "{name:?}");
        }
        assert_eq!(code(""), Some("42602"));
        assert_eq!(code(&"a".repeat(64)), Some("42622"));
        // Bytes, not characters: 32 two-byte characters are 64 bytes.
        assert_eq!(code(&"é".repeat(32)), Some("42622"));
        assert_eq!(code(&"A".repeat(70)), Some("42622"));
    }

    #[test]
    fn messages_and_hints_are_postgres_texts() {
        let e = validate_slot_name("../../x").unwrap_err();
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
        let e = validate_slot_name("").unwrap_err();
        assert_eq!(e.to_string(), "replication slot name \"\" is too short");
        assert_eq!(e.hint(), None);
        let long = "b".repeat(64);
        let e = validate_slot_name(&long).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("replication slot name \"{long}\" is too long")
        );
    }
}
