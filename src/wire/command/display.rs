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
                let temporary = if *temporary { " TEMPORARY" } else { "" };
                write!(f, "CREATE_REPLICATION_SLOT {}{temporary}", Quoted(name))?;
                write_slot_kind(f, kind)
            }
            C::DropReplicationSlot { name, wait } => {
                let wait = if *wait { " WAIT" } else { "" };
                write!(f, "DROP_REPLICATION_SLOT {}{wait}", Quoted(name))
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
                timeline.map_or(Ok(()), |tli| write!(f, " TIMELINE {tli}"))
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
            let options = if *reserve_wal { " (RESERVE_WAL)" } else { "" };
            write!(f, " PHYSICAL{options}")
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
    use crate::wire::command::fuzz_command;

    use ReplicationCommand as C;

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

    /// A small deterministic generator, so the property test needs no dependency.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    const NAMES: [&str; 12] = [
        "sb1",
        "",
        "Ab",
        "a b",
        "wait",
        "read_replication_slot",
        "é$",
        "_x$1",
        "1abc",
        "a'b",
        "SLOT",
        "x.y",
    ];

    fn random_options(rng: &mut Rng, max: usize) -> Vec<GenericOption> {
        (0..rng.below(max) + 1)
            .map(|_| {
                let value = match rng.below(4) {
                    0 => None,
                    1 => Some(OptionValue::Ident(rng.pick(&NAMES).into())),
                    2 => Some(OptionValue::Str(rng.pick(&NAMES).into())),
                    _ => Some(OptionValue::Int(rng.below(5) as u32 * 1_000_000_000)),
                };
                GenericOption {
                    name: rng.pick(&NAMES).into(),
                    value,
                }
            })
            .collect()
    }

    fn random_command(rng: &mut Rng) -> ReplicationCommand {
        let name = rng.pick(&NAMES).to_owned();
        let lsn = Lsn((rng.below(1 << 20) as u64) << rng.below(44));
        let timeline = TimelineId::new(rng.below(3) as u32 * 2_000_000_000);
        match rng.below(11) {
            0 => C::IdentifySystem,
            1 => C::Show(name),
            2 => C::TimelineHistory(timeline.unwrap_or(TimelineId::ONE)),
            3 => C::ReadReplicationSlot(name),
            4 => C::CreateReplicationSlot {
                name,
                temporary: rng.below(2) == 0,
                kind: SlotKind::Physical {
                    reserve_wal: rng.below(2) == 0,
                },
            },
            5 => C::CreateReplicationSlot {
                name,
                temporary: false,
                kind: SlotKind::Logical {
                    plugin: rng.pick(&NAMES).into(),
                    snapshot: [
                        SnapshotAction::Export,
                        SnapshotAction::Nothing,
                        SnapshotAction::Use,
                    ][rng.below(3)],
                    two_phase: rng.below(2) == 0,
                    failover: rng.below(2) == 0,
                },
            },
            6 => C::DropReplicationSlot {
                name,
                wait: rng.below(2) == 0,
            },
            7 => C::StartReplication {
                slot: (rng.below(2) == 0).then_some(name),
                start: lsn,
                timeline,
            },
            8 => C::StartLogicalReplication {
                slot: name,
                start: lsn,
                options: (0..rng.below(3))
                    .map(|_| {
                        let value = (rng.below(2) == 0).then(|| rng.pick(&NAMES).to_owned());
                        (rng.pick(&NAMES).to_owned(), value)
                    })
                    .collect(),
            },
            9 => C::BaseBackup {
                options: if rng.below(4) == 0 {
                    vec![]
                } else {
                    random_options(rng, 4)
                },
                legacy: false,
            },
            _ => C::AlterReplicationSlot {
                name,
                options: random_options(rng, 3),
            },
        }
    }

    #[test]
    fn printed_commands_parse_back_to_themselves() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let command = random_command(&mut rng);
            let printed = command.to_string();
            let parsed = ReplicationCommand::parse(&printed);
            assert_eq!(parsed.command, Ok(command), "{printed}");
            assert!(parsed.notices.is_empty(), "{printed}");
        }
    }

    #[test]
    fn token_soup_keeps_the_fuzz_property() {
        const WORDS: [&str; 24] = [
            "IDENTIFY_SYSTEM",
            "SHOW",
            "START_REPLICATION",
            "CREATE_REPLICATION_SLOT",
            "BASE_BACKUP",
            "TIMELINE",
            "SLOT",
            "PHYSICAL",
            "LOGICAL",
            "RESERVE_WAL",
            "(",
            ")",
            ",",
            ";",
            ".",
            "'it''s'",
            "\"Q\"",
            "x",
            "0/1",
            "7",
            "0",
            "LABEL",
            "TEMPORARY",
            "WAIT",
        ];
        let mut rng = Rng(42);
        let mut parsed = 0;
        for _ in 0..50_000 {
            let mut text = rng.pick(&WORDS[..5]).to_owned();
            for _ in 0..rng.below(8) {
                text.push_str(["", " "][rng.below(2)]);
                text.push_str(rng.pick(&WORDS));
            }
            fuzz_command(text.as_bytes());
            parsed += usize::from(!matches!(text.parse(), Err(_) | Ok(C::Sql(_))));
        }
        assert!(parsed > 1000, "only {parsed} commands parsed");
    }
}
