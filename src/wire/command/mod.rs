//! The replication command language a walsender accepts in a simple Query, parsed the way
//! PostgreSQL 15's `repl_scanner.l` and `repl_gram.y` parse it, for the relay's downstream
//! side.
//!
//! [`ReplicationCommand::parse`] reads one Query string. A string whose first token is not a
//! command keyword is [`ReplicationCommand::Sql`], which a physical walsender answers with
//! 0A000 "cannot execute SQL commands in WAL sender for physical replication"
//! (`walsender.c:exec_replication_command`); that covers the empty string, lowercase
//! keywords and leading comments **\[obs\]**. Everything else either parses or fails with
//! PostgreSQL's message and SQLSTATE ([`ParseError`]). NOTICEs PostgreSQL sends while
//! parsing (identifiers cut to 63 bytes) come back as data ([`Parsed::notices`]) for the
//! server to send before its answer.
//!
//! [`ReplicationCommand::parse_as`] parses as an older major does, so that the relay answers
//! as its upstream would. Besides PostgreSQL 15's grammar, the parser accepts:
//! - `ALTER_REPLICATION_SLOT` and `UPLOAD_MANIFEST` (PostgreSQL 17), recognised so they can be
//!   refused cleanly;
//! - CREATE_REPLICATION_SLOT's bare option keywords of PostgreSQL 10–14, which 15 still takes;
//! - when parsing as 12–14 only, BASE_BACKUP's keyword options of those majors
//!   (`LABEL 'x' PROGRESS FAST …`, `MANIFEST*` from 13) instead of the parenthesized list,
//!   which they refuse as 15 refuses the keywords **\[obs\]**.
//!
//! What BASE_BACKUP's options mean is checked apart, by [`check_base_backup`], as the
//! walsender checks them when it runs the command.
//!
//! Where PostgreSQL silently wraps a number (`TIMELINE 4294967296` is timeline 0 there,
//! `99999999999` timeline 1215752191) or drops the high digits of a location half
//! (`123456789/0` is `23456789/0`) **\[obs\]**, the relay refuses the command.
//!
//! A physical walsender has no database, so it runs with `SQL_ASCII` and cuts a long
//! identifier at exactly 63 bytes, even inside a character **\[obs\]**; text here is UTF-8, so
//! the cut is at the last character boundary within 63 bytes (`pg_mbcliplen` for UTF-8).
//!
//! [`Display`](std::fmt::Display) prints a command's canonical text: parsing it gives the
//! same command back. Identifiers print quoted where needed; PostgreSQL 15 has no escape for
//! `"` inside a quoted identifier, so no parsed name contains one.
//!
//! **\[obs\]** marks behaviour checked against a PostgreSQL 15.18 walsender.

mod basebackup;
mod display;
mod error;
mod lexer;
mod options;
mod parser;
#[cfg(test)]
mod tests;

use std::str::FromStr;

pub use basebackup::{BackupRequest, Compression, check_base_backup};
pub use error::{Notice, ParseError};
pub use options::check_alter_options;

use crate::types::{Lsn, TimelineId};

/// One replication command, as a walsender understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationCommand {
    /// `IDENTIFY_SYSTEM`.
    IdentifySystem,
    /// `SHOW name`; a dotted name (`SHOW a.b`) is joined with `.`.
    Show(String),
    /// `TIMELINE_HISTORY n`.
    TimelineHistory(TimelineId),
    /// `READ_REPLICATION_SLOT name` (PostgreSQL 15+).
    ReadReplicationSlot(String),
    /// `CREATE_REPLICATION_SLOT name [TEMPORARY] PHYSICAL|LOGICAL plugin [options]`, with the
    /// options already checked as `walsender.c:parseCreateReplSlotOptions` checks them.
    CreateReplicationSlot {
        /// The slot name, not yet validated (see [`crate::types::SlotName`]).
        name: String,
        /// Whether the slot lives only as long as the connection.
        temporary: bool,
        /// Physical, or logical with its plugin and options.
        kind: SlotKind,
    },
    /// `DROP_REPLICATION_SLOT name [WAIT]`.
    DropReplicationSlot {
        /// The slot name.
        name: String,
        /// Whether to wait for the slot to become inactive instead of failing.
        wait: bool,
    },
    /// `START_REPLICATION [SLOT name] [PHYSICAL] X/X [TIMELINE n]`.
    StartReplication {
        /// The slot to stream from and advance, if any.
        slot: Option<String>,
        /// Where streaming starts, exactly.
        start: Lsn,
        /// The timeline asked for; `None` means the server's current one.
        timeline: Option<TimelineId>,
    },
    /// `START_REPLICATION SLOT name LOGICAL X/X [(option ['value'] [, …])]`.
    StartLogicalReplication {
        /// The logical slot.
        slot: String,
        /// Where decoding starts.
        start: Lsn,
        /// The output plugin's options, names and optional values.
        options: Vec<(String, Option<String>)>,
    },
    /// `BASE_BACKUP [(option [value] [, …])]` (PostgreSQL 15+), or the keyword form of
    /// PostgreSQL 11–14 (parsed as 12–14 only). The options are not checked here: see
    /// [`check_base_backup`].
    BaseBackup {
        /// The options in the order given. Legacy keywords become their lowercase names
        /// (`FAST` is `fast`, with no value).
        options: Vec<GenericOption>,
        /// Whether the options were written as PostgreSQL 11–14 keywords.
        legacy: bool,
    },
    /// `ALTER_REPLICATION_SLOT name (option [value] [, …])` (PostgreSQL 17+).
    AlterReplicationSlot {
        /// The slot name.
        name: String,
        /// The options, not interpreted.
        options: Vec<GenericOption>,
    },
    /// `UPLOAD_MANIFEST` (PostgreSQL 17+).
    UploadManifest,
    /// Anything whose first token is not a command keyword, verbatim.
    Sql(String),
}

/// What kind of slot CREATE_REPLICATION_SLOT makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotKind {
    /// A physical slot.
    Physical {
        /// `RESERVE_WAL`: reserve WAL from now on rather than from the first status update.
        reserve_wal: bool,
    },
    /// A logical slot, which a physical walsender refuses.
    Logical {
        /// The output plugin.
        plugin: String,
        /// What to do with the snapshot the slot is created at (default: export it).
        snapshot: SnapshotAction,
        /// `TWO_PHASE`.
        two_phase: bool,
        /// `FAILOVER` (PostgreSQL 17+).
        failover: bool,
    },
}

/// The `SNAPSHOT` option of a logical slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotAction {
    /// `'export'` (`EXPORT_SNAPSHOT`), the default.
    Export,
    /// `'nothing'` (`NOEXPORT_SNAPSHOT`).
    Nothing,
    /// `'use'` (`USE_SNAPSHOT`).
    Use,
}

/// One `name [value]` of a parenthesized option list (`repl_gram.y:generic_option`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenericOption {
    /// The option name: lowercase unless it was double-quoted.
    pub name: String,
    /// The value, if one was given.
    pub value: Option<OptionValue>,
}

/// The value of a [`GenericOption`], as the lexer read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionValue {
    /// An identifier (`CHECKPOINT fast`, `RESERVE_WAL true`), folded unless quoted.
    Ident(String),
    /// A `'quoted string'`.
    Str(String),
    /// An unsigned decimal integer.
    Int(u32),
}

/// The outcome of parsing one Query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The command, or PostgreSQL's error for it.
    pub command: Result<ReplicationCommand, ParseError>,
    /// NOTICEs to send before the command's answer, whether it parsed or not.
    pub notices: Vec<Notice>,
}

/// The newest PostgreSQL major whose commands the parser knows.
pub const NEWEST_MAJOR: u32 = 18;

impl ReplicationCommand {
    /// Parses one Query string with the newest grammar ([`NEWEST_MAJOR`]).
    ///
    /// Errors are in [`Parsed::command`], beside the notices the parse emitted before them.
    pub fn parse(text: &str) -> Parsed {
        parser::parse(text, NEWEST_MAJOR)
    }

    /// Parses one Query string as a walsender of PostgreSQL `major` (12 or later) parses it:
    /// a command word that major does not know (`READ_REPLICATION_SLOT` before 15,
    /// `ALTER_REPLICATION_SLOT` and `UPLOAD_MANIFEST` before 17) makes the text SQL, which a
    /// physical walsender refuses; `CREATE_REPLICATION_SLOT`'s parenthesized options are a
    /// syntax error before 15, and so is its `TWO_PHASE` keyword; and its `failover` option is
    /// unrecognized before 17 **\[obs\]** (12 to 18). BASE_BACKUP takes the keyword form
    /// before 15 and the parenthesized one from 15, each a syntax error in the other's majors.
    pub fn parse_as(text: &str, major: u32) -> Parsed {
        parser::parse(text, major)
    }
}

impl FromStr for ReplicationCommand {
    type Err = ParseError;

    /// Parses one Query string, dropping its notices.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ReplicationCommand::parse(text).command
    }
}

/// The fuzz property of the command parser: any input parses or fails without panicking, and
/// whatever parses prints as text that parses to the same command, without notices.
#[cfg(any(fuzzing, test))]
pub fn fuzz_command(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(command) = ReplicationCommand::parse(&text).command else {
        return;
    };
    let printed = command.to_string();
    let again = ReplicationCommand::parse(&printed);
    assert_eq!(
        again.command.as_ref(),
        Ok(&command),
        "printed as {printed:?}"
    );
    if !matches!(command, ReplicationCommand::Sql(_)) {
        assert!(again.notices.is_empty(), "printed as {printed:?}");
    }
    // Checking a BASE_BACKUP's options never panics, as any major.
    for major in 12..=NEWEST_MAJOR + 1 {
        if let Ok(ReplicationCommand::BaseBackup { options, legacy }) =
            ReplicationCommand::parse_as(&text, major).command
        {
            let _ = check_base_backup(&options, legacy, major);
        }
    }
}
