//! What BASE_BACKUP's options mean, checked as PostgreSQL's walsender checks them when it
//! runs the command (`basebackup.c:parse_basebackup_options`, then
//! `basebackup_target.c:BaseBackupGetTargetHandle` and `basebackup_server.c:bbsink_server_new`),
//! so that a relay refuses a bad command with PostgreSQL's own error before it opens anything
//! upstream.
//!
//! For majors 15 to [`NEWEST_MAJOR`](super::NEWEST_MAJOR) one loop goes over the options in
//! order and the first fault wins: a second `label`, `progress`, … is "duplicate option", but
//! `checkpoint`, `manifest`, `manifest_checksums`, `target_detail` and `compression` read
//! their value before that check, so `(CHECKPOINT 'fast', CHECKPOINT)` is "checkpoint requires
//! a parameter" **\[obs\]**. Then, in PostgreSQL's order: manifest checksums without a
//! manifest, the target and its detail, a compression detail without compression.
//!
//! What the relay cannot decide is left to the upstream, which answers it with its own
//! error: whether a compression specification (`level=236`) is valid for its build, and
//! whether `incremental` (17+) can run there. The relay refuses two targets itself:
//! `server`, as PostgreSQL refuses it to a role without the privileges of
//! `pg_write_server_files` (42501, in the wording of the upstream's major), and `blackhole`,
//! as a server that does not offer it (0A000 "unrecognized target"). Both would make the
//! primary do work for nothing the client receives. A refused `server` target is reported
//! after every other static check, where PostgreSQL reports it; an invalid compression
//! specification or `incremental` without WAL summarization then get the relay's 42501
//! where PostgreSQL would report those first.
//!
//! Before 15 there is no target and the keyword form's options are the upstream's business
//! (the grammar already limited them); for a major newer than the relay knows only the
//! target rule applies. In both cases the request is read leniently from what parses.
//!
//! **\[obs\]** marks answers of PostgreSQL 15.18 (16.14 and 17 for what differs there) to
//! the same text over a physical replication connection.

use std::collections::HashSet;

use super::error::{MAX_RATE, ParseError};
use super::options::boolean;
use super::{GenericOption, NEWEST_MAJOR, OptionValue};

#[cfg(test)]
mod tests;

/// The first major with the parenthesized options, targets and server-side compression.
const FIRST_CHECKED_MAJOR: u32 = 15;

/// The first major with the `incremental` option.
const INCREMENTAL_SINCE: u32 = 17;

/// What a BASE_BACKUP that passed [`check_base_backup`] asks the server for: the parts that
/// shape the answer on the wire. The options themselves go upstream as the client wrote them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupRequest {
    /// Written in the keyword form of PostgreSQL 11–14.
    pub legacy: bool,
    /// `PROGRESS`: the tablespace list carries sizes.
    pub progress: bool,
    /// `CHECKPOINT 'fast'` (`FAST`), else a spread checkpoint: the answer may start only
    /// after minutes.
    pub fast_checkpoint: bool,
    /// `WAL`: the WAL of the backup is appended to the main archive (`pg_basebackup -X
    /// fetch`).
    pub wal: bool,
    /// `MAX_RATE`, in kB/s.
    pub max_rate: Option<u32>,
    /// `MANIFEST` true or `force-encode`: a manifest follows the archives.
    pub manifest: bool,
    /// `COMPRESSION`: server-side compression of the archives.
    pub compression: Compression,
    /// `INCREMENTAL` (17+).
    pub incremental: bool,
}

/// A server-side compression algorithm (`common/compression.c:parse_compress_algorithm`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// `none`, or no `COMPRESSION`.
    #[default]
    None,
    /// `gzip`.
    Gzip,
    /// `lz4`.
    Lz4,
    /// `zstd`.
    Zstd,
}

impl Compression {
    /// The algorithm of a `COMPRESSION` value, matched exactly as PostgreSQL matches it.
    pub fn parse(name: &str) -> Option<Compression> {
        match name {
            "none" => Some(Compression::None),
            "gzip" => Some(Compression::Gzip),
            "lz4" => Some(Compression::Lz4),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// Checks the options of a parsed BASE_BACKUP (see
/// [`ReplicationCommand::BaseBackup`](super::ReplicationCommand::BaseBackup)) as a walsender
/// of PostgreSQL `major` checks them, and refuses the `server` and `blackhole` targets; see
/// the module docs for what is left to the upstream.
///
/// # Errors
/// PostgreSQL's error for the first fault, in PostgreSQL's order; a syntax error when the
/// form (`legacy`) is not the one `major` takes.
pub fn check_base_backup(
    options: &[GenericOption],
    legacy: bool,
    major: u32,
) -> Result<BackupRequest, ParseError> {
    let checked = major >= FIRST_CHECKED_MAJOR;
    if legacy == checked && (legacy || !options.is_empty()) {
        return Err(ParseError::Syntax);
    }
    if !checked {
        return Ok(lenient(options, legacy));
    }
    if major > NEWEST_MAJOR {
        target_rule(options, major)?;
        return Ok(lenient(options, legacy));
    }
    let mut state = State::default();
    for option in options {
        state.apply(option, major)?;
    }
    state.finish(major)
}

/// What the loop has seen so far.
#[derive(Default)]
struct State<'a> {
    seen: HashSet<&'a str>,
    request: BackupRequest,
    manifest_checksums: bool,
    target: Option<String>,
    target_detail: bool,
    compression: Option<Compression>,
    compression_detail: bool,
}

impl<'a> State<'a> {
    /// The "duplicate option" check.
    fn once(&mut self, name: &'a str) -> Result<(), ParseError> {
        if self.seen.insert(name) {
            Ok(())
        } else {
            Err(ParseError::DuplicateOption(name.to_owned()))
        }
    }

    /// One turn of `parse_basebackup_options`' loop.
    fn apply(&mut self, option: &'a GenericOption, major: u32) -> Result<(), ParseError> {
        let name = option.name.as_str();
        match name {
            "label" => {
                self.once(name)?;
                string(option)?;
            }
            "progress" => {
                self.once(name)?;
                self.request.progress = boolean(option)?;
            }
            "checkpoint" => {
                let value = string(option)?;
                self.once(name)?;
                self.request.fast_checkpoint = checkpoint(&value)?;
            }
            "wait" | "tablespace_map" | "verify_checksums" => {
                self.once(name)?;
                boolean(option)?;
            }
            "wal" => {
                self.once(name)?;
                self.request.wal = boolean(option)?;
            }
            "max_rate" => {
                self.once(name)?;
                self.request.max_rate = Some(max_rate(option)?);
            }
            "manifest" => {
                let value = string(option)?;
                self.once(name)?;
                self.request.manifest = manifest(&value)?;
            }
            "manifest_checksums" => {
                let value = string(option)?;
                self.once(name)?;
                checksum(&value)?;
                self.manifest_checksums = true;
            }
            _ => return self.apply_late(option, major),
        }
        Ok(())
    }

    /// The options that came with PostgreSQL 15 and 17.
    fn apply_late(&mut self, option: &'a GenericOption, major: u32) -> Result<(), ParseError> {
        let name = option.name.as_str();
        match name {
            "target" => {
                self.once(name)?;
                self.target = Some(string(option)?);
            }
            "target_detail" => {
                string(option)?;
                self.once(name)?;
                self.target_detail = true;
            }
            "compression" => {
                let value = string(option)?;
                self.once(name)?;
                let algorithm =
                    Compression::parse(&value).ok_or(ParseError::UnrecognizedCompression(value))?;
                self.compression = Some(algorithm);
            }
            "compression_detail" => {
                self.once(name)?;
                string(option)?;
                self.compression_detail = true;
            }
            "incremental" if major >= INCREMENTAL_SINCE => {
                self.once(name)?;
                self.request.incremental = boolean(option)?;
            }
            _ => return Err(ParseError::UnrecognizedBackupOption(option.name.clone())),
        }
        Ok(())
    }

    /// The checks after the loop, then the relay's refusal of the `server` target.
    fn finish(self, major: u32) -> Result<BackupRequest, ParseError> {
        if self.manifest_checksums && !self.request.manifest {
            return Err(ParseError::ManifestChecksumsWithoutManifest);
        }
        let server = match (self.target, self.target_detail) {
            (None, true) => return Err(ParseError::TargetDetailWithoutTarget),
            (None, false) => false,
            (Some(target), detail) => match target.as_str() {
                "client" if detail => return Err(ParseError::TargetRejectsDetail(target)),
                "client" => false,
                "server" if !detail => return Err(ParseError::TargetRequiresDetail(target)),
                "server" => true,
                _ => return Err(ParseError::UnrecognizedTarget(target)),
            },
        };
        if self.compression_detail && self.compression.is_none() {
            return Err(ParseError::CompressionDetailWithoutCompression);
        }
        if server {
            return Err(ParseError::ServerTargetDenied { major });
        }
        Ok(BackupRequest {
            compression: self.compression.unwrap_or_default(),
            ..self.request
        })
    }
}

/// For a major newer than the relay knows: refuse the targets the relay never serves,
/// leave everything else to the upstream.
fn target_rule(options: &[GenericOption], major: u32) -> Result<(), ParseError> {
    for option in options.iter().filter(|o| o.name == "target") {
        match string(option) {
            Ok(target) if target == "server" => {
                return Err(ParseError::ServerTargetDenied { major });
            }
            Ok(target) if target != "client" => return Err(ParseError::UnrecognizedTarget(target)),
            _ => {}
        }
    }
    Ok(())
}

/// The request as far as the options parse, faults ignored: for the forms whose faults the
/// upstream reports. Keywords of the old form are their lowercase names (`fast`).
fn lenient(options: &[GenericOption], legacy: bool) -> BackupRequest {
    let mut request = BackupRequest {
        legacy,
        ..BackupRequest::default()
    };
    let text = |option| string(option).ok();
    for option in options {
        match option.name.as_str() {
            "progress" => request.progress = boolean(option).unwrap_or(false),
            "fast" => request.fast_checkpoint = true,
            "checkpoint" => {
                request.fast_checkpoint = text(option).is_some_and(|v| checkpoint(&v) == Ok(true));
            }
            "wal" => request.wal = boolean(option).unwrap_or(false),
            "max_rate" => request.max_rate = max_rate(option).ok(),
            "manifest" => request.manifest = text(option).is_some_and(|v| manifest(&v) == Ok(true)),
            "compression" => {
                request.compression = text(option)
                    .and_then(|v| Compression::parse(&v))
                    .unwrap_or_default();
            }
            "incremental" => request.incremental = boolean(option).unwrap_or(false),
            _ => {}
        }
    }
    request
}

/// `define.c:defGetString`: no value is an error; a number prints as PostgreSQL's `(int)` of
/// it.
fn string(option: &GenericOption) -> Result<String, ParseError> {
    match &option.value {
        None => Err(ParseError::RequiresParameter(option.name.clone())),
        Some(OptionValue::Int(n)) => Ok(as_int(*n).to_string()),
        Some(OptionValue::Ident(s) | OptionValue::Str(s)) => Ok(s.clone()),
    }
}

/// The grammar's `makeInteger((int) strtoul(…))`: a `UCONST` of 2^31 or more wraps negative.
fn as_int(n: u32) -> i32 {
    i32::from_ne_bytes(n.to_ne_bytes())
}

/// `fast` or `spread`, any case: whether the checkpoint is fast.
fn checkpoint(value: &str) -> Result<bool, ParseError> {
    if value.eq_ignore_ascii_case("fast") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("spread") {
        Ok(false)
    } else {
        Err(ParseError::UnrecognizedCheckpoint(value.to_owned()))
    }
}

/// `defGetInt64` of an integer value, within `MAX_RATE_LOWER..=MAX_RATE_UPPER`.
fn max_rate(option: &GenericOption) -> Result<u32, ParseError> {
    let Some(OptionValue::Int(n)) = option.value else {
        return Err(ParseError::RequiresNumeric(option.name.clone()));
    };
    let rate = as_int(n);
    if MAX_RATE.contains(&rate) {
        Ok(rate.unsigned_abs())
    } else {
        Err(ParseError::MaxRateOutOfRange(rate))
    }
}

/// `MANIFEST`: a Boolean as `parse_bool` reads it, or `force-encode` in any case; whether a
/// manifest is sent.
fn manifest(value: &str) -> Result<bool, ParseError> {
    match parse_bool(value) {
        Some(yes) => Ok(yes),
        None if value.eq_ignore_ascii_case("force-encode") => Ok(true),
        None => Err(ParseError::UnrecognizedManifest(value.to_owned())),
    }
}

/// `bool.c:parse_bool`: a nonempty prefix of `true`, `false`, `yes`, `no` in any case, of
/// `on` or `off` of two letters or more, or exactly `1` or `0`.
fn parse_bool(value: &str) -> Option<bool> {
    let lower = value.to_ascii_lowercase();
    let prefix_of = |word: &str| word.starts_with(lower.as_str());
    match lower.as_bytes().first()? {
        b't' => prefix_of("true").then_some(true),
        b'f' => prefix_of("false").then_some(false),
        b'y' => prefix_of("yes").then_some(true),
        b'n' => prefix_of("no").then_some(false),
        b'o' if lower.len() >= 2 => {
            if prefix_of("on") {
                Some(true)
            } else {
                prefix_of("off").then_some(false)
            }
        }
        _ if lower == "1" => Some(true),
        _ if lower == "0" => Some(false),
        _ => None,
    }
}

/// `MANIFEST_CHECKSUMS`: one of PostgreSQL's checksum types, any case
/// (`pg_checksum_parse_type`).
fn checksum(value: &str) -> Result<(), ParseError> {
    const TYPES: [&str; 6] = ["NONE", "CRC32C", "SHA224", "SHA256", "SHA384", "SHA512"];
    if TYPES.iter().any(|t| value.eq_ignore_ascii_case(t)) {
        Ok(())
    } else {
        Err(ParseError::UnrecognizedChecksum(value.to_owned()))
    }
}
