//! What CREATE_REPLICATION_SLOT's options mean, checked as
//! `walsender.c:parseCreateReplSlotOptions` checks them once the command has parsed: in
//! order, the first fault wins; an option given twice or not valid for the slot's kind is
//! "conflicting or redundant options"; values go through `define.c:defGetBoolean` and
//! `defGetString`.
//!
//! `failover` is known as PostgreSQL 17 knows it (logical slots only); before 17 it is an
//! unrecognized option (XX000) **\[obs\]**. Either way a physical slot refuses it.

use super::error::ParseError;
use super::{GenericOption, OptionValue, SlotKind, SnapshotAction};

/// Which options have been seen, and what they say.
#[derive(Default)]
struct Seen {
    snapshot: Option<SnapshotAction>,
    reserve_wal: Option<bool>,
    two_phase: Option<bool>,
    failover: Option<bool>,
}

/// Turns the option list of a slot (logical when `plugin` is given) into its kind, as
/// PostgreSQL `major` does.
pub(super) fn slot_kind(
    plugin: Option<String>,
    options: &[GenericOption],
    major: u32,
) -> Result<SlotKind, ParseError> {
    let logical = plugin.is_some();
    let mut seen = Seen::default();
    for option in options {
        let name = option.name.as_str();
        let slot = match name {
            "snapshot" if logical && seen.snapshot.is_none() => {
                seen.snapshot = Some(snapshot_action(option)?);
                continue;
            }
            "reserve_wal" => (!logical).then_some(&mut seen.reserve_wal),
            "two_phase" => logical.then_some(&mut seen.two_phase),
            "failover" if major >= 17 => logical.then_some(&mut seen.failover),
            "snapshot" => None,
            _ => return Err(ParseError::UnrecognizedOption(option.name.clone())),
        };
        match slot {
            Some(flag @ None) => *flag = Some(boolean(option)?),
            _ => return Err(ParseError::ConflictingOptions),
        }
    }
    Ok(match plugin {
        None => SlotKind::Physical {
            reserve_wal: seen.reserve_wal.unwrap_or(false),
        },
        Some(plugin) => SlotKind::Logical {
            plugin,
            snapshot: seen.snapshot.unwrap_or(SnapshotAction::Export),
            two_phase: seen.two_phase.unwrap_or(false),
            failover: seen.failover.unwrap_or(false),
        },
    })
}

/// The options of `ALTER_REPLICATION_SLOT`, checked as PostgreSQL 18's
/// `ParseAlterReplSlotOptions` checks them: `failover` and `two_phase`, each once, each a
/// Boolean; anything else is an unrecognized option (XX000).
///
/// # Errors
/// The first fault, in order.
pub fn check_alter_options(options: &[GenericOption]) -> Result<(), ParseError> {
    let (mut failover, mut two_phase) = (false, false);
    for option in options {
        let given = match option.name.as_str() {
            "failover" => &mut failover,
            "two_phase" => &mut two_phase,
            _ => return Err(ParseError::UnrecognizedOption(option.name.clone())),
        };
        if std::mem::replace(given, true) {
            return Err(ParseError::ConflictingOptions);
        }
        boolean(option)?;
    }
    Ok(())
}

/// `defGetBoolean`: no value is true; 0 and 1; true/false/on/off in any case.
pub(super) fn boolean(option: &GenericOption) -> Result<bool, ParseError> {
    let text = match &option.value {
        None => return Ok(true),
        Some(OptionValue::Int(0)) => return Ok(false),
        Some(OptionValue::Int(1)) => return Ok(true),
        Some(OptionValue::Int(_)) => "",
        Some(OptionValue::Ident(s) | OptionValue::Str(s)) => s.as_str(),
    };
    let is = |word: &str| text.eq_ignore_ascii_case(word);
    if is("true") || is("on") {
        Ok(true)
    } else if is("false") || is("off") {
        Ok(false)
    } else {
        Err(ParseError::RequiresBoolean(option.name.clone()))
    }
}

/// The `snapshot` option: `export`, `nothing` or `use`, matched exactly.
fn snapshot_action(option: &GenericOption) -> Result<SnapshotAction, ParseError> {
    let value = match &option.value {
        None => return Err(ParseError::RequiresParameter(option.name.clone())),
        Some(OptionValue::Int(n)) => n.to_string(),
        Some(OptionValue::Ident(s) | OptionValue::Str(s)) => s.clone(),
    };
    match value.as_str() {
        "export" => Ok(SnapshotAction::Export),
        "nothing" => Ok(SnapshotAction::Nothing),
        "use" => Ok(SnapshotAction::Use),
        _ => Err(ParseError::UnrecognizedValue {
            option: option.name.clone(),
            value,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(name: &str, value: Option<OptionValue>) -> GenericOption {
        GenericOption {
            name: name.into(),
            value,
        }
    }

    fn physical(options: &[GenericOption]) -> Result<SlotKind, ParseError> {
        slot_kind(None, options, 18)
    }

    #[test]
    fn alter_options_as_postgres_checks_them() {
        assert_eq!(check_alter_options(&[]), Ok(()));
        assert_eq!(
            check_alter_options(&[
                opt("failover", None),
                opt("two_phase", Some(OptionValue::Int(0)))
            ]),
            Ok(())
        );
        assert_eq!(
            check_alter_options(&[opt("failover", None), opt("failover", None)]),
            Err(ParseError::ConflictingOptions)
        );
        assert_eq!(
            check_alter_options(&[opt("reserve_wal", None)]),
            Err(ParseError::UnrecognizedOption("reserve_wal".into()))
        );
        assert_eq!(
            check_alter_options(&[opt("failover", Some(OptionValue::Int(2)))]),
            Err(ParseError::RequiresBoolean("failover".into()))
        );
    }

    #[test]
    fn booleans_as_def_get_boolean() {
        use OptionValue::{Ident, Int, Str};
        for (value, expected) in [
            (None, true),
            (Some(Int(0)), false),
            (Some(Int(1)), true),
            (Some(Ident("true".into())), true),
            (Some(Str("ON".into())), true),
            (Some(Str("Off".into())), false),
            (Some(Ident("false".into())), false),
        ] {
            let kind = physical(&[opt("reserve_wal", value)]).unwrap();
            assert_eq!(
                kind,
                SlotKind::Physical {
                    reserve_wal: expected
                }
            );
        }
        // [obs] PG 15.18: (RESERVE_WAL '1') and (RESERVE_WAL 2) give 42601
        // "reserve_wal requires a Boolean value".
        for value in [Int(2), Str("1".into()), Str("yes".into())] {
            assert_eq!(
                physical(&[opt("reserve_wal", Some(value))]),
                Err(ParseError::RequiresBoolean("reserve_wal".into()))
            );
        }
    }

    #[test]
    fn conflicts_and_unknown_options_in_order() {
        // [obs] PG 15.18: (FOO, RESERVE_WAL, RESERVE_WAL) gives XX000 "unrecognized option:
        // foo"; (RESERVE_WAL, RESERVE_WAL, FOO) gives 42601 "conflicting or redundant options".
        let foo = opt("foo", None);
        let rw = opt("reserve_wal", None);
        assert_eq!(
            physical(&[foo.clone(), rw.clone(), rw.clone()]),
            Err(ParseError::UnrecognizedOption("foo".into()))
        );
        assert_eq!(
            physical(&[rw.clone(), rw.clone(), foo]),
            Err(ParseError::ConflictingOptions)
        );
        for logical_only in ["two_phase", "snapshot", "failover"] {
            assert_eq!(
                physical(&[opt(logical_only, None)]),
                Err(ParseError::ConflictingOptions)
            );
        }
        assert_eq!(
            slot_kind(Some("pgoutput".into()), &[rw], 18),
            Err(ParseError::ConflictingOptions)
        );
    }

    #[test]
    fn logical_options() {
        let plugin = || Some("pgoutput".to_owned());
        assert_eq!(
            slot_kind(plugin(), &[], 18),
            Ok(SlotKind::Logical {
                plugin: "pgoutput".into(),
                snapshot: SnapshotAction::Export,
                two_phase: false,
                failover: false,
            })
        );
        let options = [
            opt("snapshot", Some(OptionValue::Str("use".into()))),
            opt("two_phase", None),
            opt("failover", Some(OptionValue::Int(1))),
        ];
        assert_eq!(
            slot_kind(plugin(), &options, 18),
            Ok(SlotKind::Logical {
                plugin: "pgoutput".into(),
                snapshot: SnapshotAction::Use,
                two_phase: true,
                failover: true,
            })
        );
        // [obs] PG 15.18: (SNAPSHOT) gives 42601 "snapshot requires a parameter",
        // (SNAPSHOT 'bogus') 22023 "unrecognized value for CREATE_REPLICATION_SLOT option
        // "snapshot": "bogus"", EXPORT_SNAPSHOT NOEXPORT_SNAPSHOT 42601 conflicting.
        assert_eq!(
            slot_kind(plugin(), &[opt("snapshot", None)], 18),
            Err(ParseError::RequiresParameter("snapshot".into()))
        );
        let bogus = opt("snapshot", Some(OptionValue::Str("bogus".into())));
        let err = slot_kind(plugin(), &[bogus], 18).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unrecognized value for CREATE_REPLICATION_SLOT option \"snapshot\": \"bogus\""
        );
        let export = opt("snapshot", Some(OptionValue::Str("export".into())));
        assert_eq!(
            slot_kind(plugin(), &[export.clone(), export], 18),
            Err(ParseError::ConflictingOptions)
        );
    }
}
