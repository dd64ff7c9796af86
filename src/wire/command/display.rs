//! The canonical text of a replication command: keywords uppercase, slot names
//! double-quoted as the PostgreSQL tools send them, option names uppercase where that reads
//! back as the same name, strings with `''`. Parsing the text gives the same command back.

use std::fmt::{self, Display, Formatter, Write};

use super::lexer::Keyword;
use super::{GenericOption, OptionValue, ReplicationCommand, SlotKind, SnapshotAction};

impl Display for ReplicationCommand {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        use ReplicationCommand as C;
        match self {
            C::IdentifySystem => f.write_str("IDENTIFY_SYSTEM"),
            C::Show(name) => write!(f, "SHOW {}", VarName(name)),
            C::TimelineHistory(tli) => write!(f, "TIMELINE_HISTORY {tli}"),
            C::ReadReplicationSlot(name) => write!(f, "READ_REPLICATION_SLOT {}", VarName(name)),
            C::CreateReplicationSlot {
                name,
                temporary,
                kind,
            } => {
                write!(f, "CREATE_REPLICATION_SLOT {}", Quoted(name))?;
                if *temporary {
                    f.write_str(" TEMPORARY")?;
                }
                write_slot_kind(f, kind)
            }
            C::DropReplicationSlot { name, wait } => {
                write!(f, "DROP_REPLICATION_SLOT {}", Quoted(name))?;
                if *wait { f.write_str(" WAIT") } else { Ok(()) }
            }
            C::StartReplication {
                slot,
                start,
                timeline,
            } => {
                f.write_str("START_REPLICATION")?;
                if let Some(slot) = slot {
                    write!(f, " SLOT {}", Quoted(slot))?;
                }
                write!(f, " {start}")?;
                match timeline {
                    Some(tli) => write!(f, " TIMELINE {tli}"),
                    None => Ok(()),
                }
            }
            C::StartLogicalReplication {
                slot,
                start,
                options,
            } => {
                write!(f, "START_REPLICATION SLOT {} LOGICAL {start}", Quoted(slot))?;
                write_list(f, options, |f, (name, value)| {
                    Ident(name).fmt(f)?;
                    match value {
                        Some(value) => write!(f, " {}", Str(value)),
                        None => Ok(()),
                    }
                })
            }
            C::BaseBackup { options, legacy } => {
                f.write_str("BASE_BACKUP")?;
                if *legacy {
                    options.iter().try_for_each(|o| write!(f, " {}", Legacy(o)))
                } else {
                    write_list(f, options, |f, o| o.fmt(f))
                }
            }
            C::AlterReplicationSlot { name, options } => {
                write!(f, "ALTER_REPLICATION_SLOT {}", Quoted(name))?;
                write_list(f, options, |f, o| o.fmt(f))
            }
            C::UploadManifest => f.write_str("UPLOAD_MANIFEST"),
            C::Sql(text) => f.write_str(text),
        }
    }
}

fn write_slot_kind(f: &mut Formatter<'_>, kind: &SlotKind) -> fmt::Result {
    match kind {
        SlotKind::Physical { reserve_wal } => {
            f.write_str(" PHYSICAL")?;
            if *reserve_wal {
                f.write_str(" (RESERVE_WAL)")?;
            }
            Ok(())
        }
        SlotKind::Logical {
            plugin,
            snapshot,
            two_phase,
            failover,
        } => {
            write!(f, " LOGICAL {}", Ident(plugin))?;
            let snapshot = match snapshot {
                SnapshotAction::Export => None,
                SnapshotAction::Nothing => Some("SNAPSHOT 'nothing'"),
                SnapshotAction::Use => Some("SNAPSHOT 'use'"),
            };
            let flags = [
                snapshot,
                two_phase.then_some("TWO_PHASE"),
                failover.then_some("FAILOVER"),
            ];
            let given: Vec<&str> = flags.into_iter().flatten().collect();
            write_list(f, &given, |f, o| f.write_str(o))
        }
    }
}

/// ` (a, b, …)`, or nothing for an empty list.
fn write_list<T>(
    f: &mut Formatter<'_>,
    items: &[T],
    mut item: impl FnMut(&mut Formatter<'_>, &T) -> fmt::Result,
) -> fmt::Result {
    let Some((first, rest)) = items.split_first() else {
        return Ok(());
    };
    f.write_str(" (")?;
    item(f, first)?;
    for next in rest {
        f.write_str(", ")?;
        item(f, next)?;
    }
    f.write_char(')')
}

impl Display for GenericOption {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        OptionName(&self.name).fmt(f)?;
        match &self.value {
            Some(value) => write!(f, " {value}"),
            None => Ok(()),
        }
    }
}

impl Display for OptionValue {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            OptionValue::Ident(name) => Ident(name).fmt(f),
            OptionValue::Str(s) => Str(s).fmt(f),
            OptionValue::Int(n) => n.fmt(f),
        }
    }
}

/// Whether `name` reads back as itself without quotes: `[a-z_][a-z0-9_$]*`.
fn is_plain(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
}

/// A name in double quotes.
struct Quoted<'a>(&'a str);

impl Display for Quoted<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0)
    }
}

/// An identifier, quoted unless it is plain.
struct Ident<'a>(&'a str);

impl Display for Ident<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if is_plain(self.0) {
            f.write_str(self.0)
        } else {
            Quoted(self.0).fmt(f)
        }
    }
}

/// A dotted name, each part an identifier.
struct VarName<'a>(&'a str);

impl Display for VarName<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let mut parts = self.0.split('.');
        if let Some(first) = parts.next() {
            Ident(first).fmt(f)?;
        }
        parts.try_for_each(|part| write!(f, ".{}", Ident(part)))
    }
}

/// An option name: uppercase when that spells an identifier or a keyword standing for the
/// same name, as the tools write them; otherwise an identifier.
struct OptionName<'a>(&'a str);

impl Display for OptionName<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let upper = self.0.to_ascii_uppercase();
        let same = Keyword::from_text(&upper).is_none_or(|k| k.option_name() == Some(self.0));
        if is_plain(self.0) && same {
            f.write_str(&upper)
        } else {
            Ident(self.0).fmt(f)
        }
    }
}

/// A legacy BASE_BACKUP option: its keyword, then its value.
struct Legacy<'a>(&'a GenericOption);

impl Display for Legacy<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.name.to_ascii_uppercase())?;
        match &self.0.value {
            Some(value) => write!(f, " {value}"),
            None => Ok(()),
        }
    }
}

/// A `'string'` with `''` for each quote.
struct Str<'a>(&'a str);

impl Display for Str<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_char('\'')?;
        for (i, part) in self.0.split('\'').enumerate() {
            if i > 0 {
                f.write_str("''")?;
            }
            f.write_str(part)?;
        }
        f.write_char('\'')
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Lsn, TimelineId};

    #[test]
    fn canonical_texts() {
        let create = ReplicationCommand::CreateReplicationSlot {
            name: "pg_walreceiver_123".into(),
            temporary: true,
            kind: SlotKind::Physical { reserve_wal: true },
        };
        assert_eq!(
            create.to_string(),
            "CREATE_REPLICATION_SLOT \"pg_walreceiver_123\" TEMPORARY PHYSICAL (RESERVE_WAL)"
        );
        let start = ReplicationCommand::StartReplication {
            slot: Some("sb1".into()),
            start: Lsn(0x300_0000),
            timeline: TimelineId::new(1),
        };
        assert_eq!(
            start.to_string(),
            "START_REPLICATION SLOT \"sb1\" 0/3000000 TIMELINE 1"
        );
        let backup = ReplicationCommand::BaseBackup {
            options: vec![
                GenericOption {
                    name: "label".into(),
                    value: Some(OptionValue::Str("it's".into())),
                },
                GenericOption {
                    name: "read_replication_slot".into(),
                    value: Some(OptionValue::Ident("Fast".into())),
                },
                GenericOption {
                    name: "wait".into(),
                    value: Some(OptionValue::Int(0)),
                },
            ],
            legacy: false,
        };
        assert_eq!(
            backup.to_string(),
            "BASE_BACKUP (LABEL 'it''s', read_replication_slot \"Fast\", WAIT 0)"
        );
        let logical = ReplicationCommand::CreateReplicationSlot {
            name: "s".into(),
            temporary: false,
            kind: SlotKind::Logical {
                plugin: "pgoutput".into(),
                snapshot: SnapshotAction::Use,
                two_phase: true,
                failover: false,
            },
        };
        assert_eq!(
            logical.to_string(),
            "CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput (SNAPSHOT 'use', TWO_PHASE)"
        );
        assert_eq!(
            ReplicationCommand::Show("a b.c".into()).to_string(),
            "SHOW \"a b\".c"
        );
    }
}
