//! `slots.state`: the persistent slots, one text file replaced atomically, checksummed.
//!
//! Like PostgreSQL's `pg_replslot/<name>/state` it has a magic, a version and a CRC; unlike it,
//! it holds every persistent slot and is text so an operator can read it:
//!
//! ```text
//! walrelay replication slots
//! version 1
//! slot d1 restart_lsn=0/3000000 invalidated_at=- xmin=748 catalog_xmin=-
//! slot w1 restart_lsn=- invalidated_at=0/1000000 xmin=- catalog_xmin=-
//! crc32 5f23d1e5
//! ```
//!
//! `-` is NULL; xids are 64-bit (`epoch << 32 | xid`). The CRC-32 (IEEE, `crc32fast`) covers
//! every byte before the `crc32` line. A write goes to `slots.state.tmp`, is fsynced, renamed
//! over `slots.state`, and the directory is fsynced; a leftover `.tmp` is removed on open.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use crate::statefile::{self, StateFormat};
use crate::types::{FullXid, Lsn, SlotName};

use super::SlotError;
use super::error::io_err;

/// The state file's name inside the data directory.
pub const STATE_FILE: &str = "slots.state";
/// Its layout: magic, version, size cap (a slot line is under 200 bytes; nothing bigger is
/// read).
const FORMAT: StateFormat = StateFormat {
    what: "walrelay slot state",
    magic: "walrelay replication slots",
    version: "1",
    max_len: 1 << 20,
};

/// What is persisted of one physical slot (`ReplicationSlotPersistentData`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct SlotData {
    /// The oldest WAL the slot needs; `None` reserves nothing.
    pub restart_lsn: Option<Lsn>,
    /// The `restart_lsn` the slot had when it was invalidated.
    pub invalidated_at: Option<Lsn>,
    /// The standby's xmin from hot-standby feedback.
    pub xmin: Option<FullXid>,
    /// The standby's catalog xmin from hot-standby feedback.
    pub catalog_xmin: Option<FullXid>,
}

/// Prepares `dir` (created 0700 if missing, a stale temporary file removed) and reads the slots
/// recorded there; none when there is no state file.
pub(super) fn open(dir: &Path) -> Result<BTreeMap<SlotName, SlotData>, SlotError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create directory", dir))?;
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io_err("remove file", &tmp)(e));
        }
        _ => {}
    }
    let path = dir.join(STATE_FILE);
    let bad = |reason: String| SlotError::BadStateFile {
        path: path.clone(),
        reason,
    };
    let text = match FORMAT.read(&path) {
        Ok(Some(text)) => text,
        Ok(None) => return Ok(BTreeMap::new()),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(bad(e.to_string())),
        Err(e) => return Err(io_err("read file", &path)(e)),
    };
    parse(&text).map_err(bad)
}

/// Replaces the state file in `dir` with `slots`, atomically and durably.
pub(super) fn write<'a>(
    dir: &Path,
    slots: impl Iterator<Item = (&'a SlotName, &'a SlotData)>,
) -> Result<(), SlotError> {
    statefile::replace(dir, STATE_FILE, render(slots).as_bytes())
        .map_err(io_err("write file", &dir.join(STATE_FILE)))
}

/// [`write`], into the blocks of `reserve`, a file already written out and at least as long
/// as the text: the write needs no new space, so it succeeds on a full disk, and no other
/// writer can take the space in between. The reserve then becomes the state file.
pub(super) fn write_over<'a>(
    dir: &Path,
    reserve: &Path,
    slots: impl Iterator<Item = (&'a SlotName, &'a SlotData)>,
) -> Result<(), SlotError> {
    let text = render(slots);
    let path = dir.join(STATE_FILE);
    let replaced = (|| {
        let file = std::fs::OpenOptions::new().write(true).open(reserve)?;
        if file.metadata()?.len() < text.len() as u64 {
            let short = "the reserve is shorter than the state";
            return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, short));
        }
        std::os::unix::fs::FileExt::write_all_at(&file, text.as_bytes(), 0)?;
        file.set_len(text.len() as u64)?;
        file.sync_all()?;
        std::fs::rename(reserve, &path)?;
        statefile::fsync_dir(dir)
    })();
    replaced.map_err(io_err("write file", &path))
}

/// The state file's text for `slots`.
fn render<'a>(slots: impl Iterator<Item = (&'a SlotName, &'a SlotData)>) -> String {
    fn or_null(v: Option<impl Display>) -> String {
        v.map_or_else(|| "-".to_owned(), |v| v.to_string())
    }
    let mut body = String::new();
    for (name, d) in slots {
        body.push_str(&format!(
            "slot {name} restart_lsn={} invalidated_at={} xmin={} catalog_xmin={}\n",
            or_null(d.restart_lsn),
            or_null(d.invalidated_at),
            or_null(d.xmin),
            or_null(d.catalog_xmin),
        ));
    }
    FORMAT.render(&body)
}

fn parse(text: &str) -> Result<BTreeMap<SlotName, SlotData>, String> {
    let mut slots = BTreeMap::new();
    for (i, line) in FORMAT.parse(text)?.lines().enumerate() {
        let (name, data) = parse_slot(line).map_err(|e| format!("line {}: {e}", i + 3))?;
        if slots.contains_key(&name) {
            return Err(format!("slot \"{name}\" recorded twice"));
        }
        slots.insert(name, data);
    }
    Ok(slots)
}

/// One `slot NAME key=value …` line.
fn parse_slot(line: &str) -> Result<(SlotName, SlotData), String> {
    let mut words = line.split(' ');
    let name = words
        .next()
        .filter(|w| *w == "slot")
        .and(words.next())
        .ok_or("not a slot line")?;
    let name = SlotName::new(name).map_err(|e| e.to_string())?;
    let mut field = |key: &str| {
        words
            .next()
            .and_then(|w| w.strip_prefix(key))
            .and_then(|w| w.strip_prefix('='))
            .map(|v| (v != "-").then_some(v))
            .ok_or_else(|| format!("missing \"{key}\""))
    };
    let lsn = |v: Option<&str>| {
        v.map(|v| v.parse::<Lsn>().map_err(|e| e.to_string()))
            .transpose()
            .map(|l| l.filter(|l| l.is_valid()))
    };
    let xid = |v: Option<&str>| {
        v.map(|v| {
            v.parse::<u64>()
                .ok()
                .and_then(FullXid::from_u64)
                .ok_or_else(|| format!("invalid transaction id \"{v}\""))
        })
        .transpose()
    };
    let data = SlotData {
        restart_lsn: lsn(field("restart_lsn")?)?,
        invalidated_at: lsn(field("invalidated_at")?)?,
        xmin: xid(field("xmin")?)?,
        catalog_xmin: xid(field("catalog_xmin")?)?,
    };
    if words.next().is_some() {
        return Err("unexpected words after \"catalog_xmin\"".into());
    }
    Ok((name, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statefile::seal;
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> BTreeMap<SlotName, SlotData> {
        let d1 = SlotData {
            restart_lsn: Some(Lsn(0x300_0000)),
            xmin: FullXid::new(0, 748),
            ..SlotData::default()
        };
        let w1 = SlotData {
            invalidated_at: Some(Lsn(0x100_0000)),
            ..SlotData::default()
        };
        let name = |n| SlotName::new(n).unwrap();
        BTreeMap::from([(name("d1"), d1), (name("w1"), w1)])
    }

    fn save(dir: &Path, slots: &BTreeMap<SlotName, SlotData>) {
        write(dir, slots.iter()).unwrap();
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn round_trips_privately() {
        let t = tempfile::TempDir::new().unwrap();
        let dir = t.path().join("data");
        assert!(open(&dir).unwrap().is_empty());
        assert_eq!(mode(&dir), 0o700);
        save(&dir, &sample());
        assert_eq!(open(&dir).unwrap(), sample());
        let path = dir.join(STATE_FILE);
        assert_eq!(mode(&path), 0o600);
        assert!(!dir.join("slots.state.tmp").exists());
        // The example in the module documentation.
        let documented = "walrelay replication slots\nversion 1\n\
            slot d1 restart_lsn=0/3000000 invalidated_at=- xmin=748 catalog_xmin=-\n\
            slot w1 restart_lsn=- invalidated_at=0/1000000 xmin=- catalog_xmin=-\n\
            crc32 5f23d1e5\n";
        assert_eq!(fs::read_to_string(&path).unwrap(), documented);
        save(&dir, &BTreeMap::new());
        assert!(open(&dir).unwrap().is_empty());
    }

    #[test]
    fn removes_a_stale_tmp_file() {
        let t = tempfile::TempDir::new().unwrap();
        save(t.path(), &sample());
        // A crash between writing the temporary file and the rename.
        fs::write(
            t.path().join("slots.state.tmp"),
            b"walrelay replication slots\nversion 1\n",
        )
        .unwrap();
        assert_eq!(open(t.path()).unwrap(), sample());
        assert!(!t.path().join("slots.state.tmp").exists());
    }

    #[test]
    fn refuses_damage_and_foreign_files() {
        // What every state file refuses is tested in `statefile`; here, that a refusal names
        // the file and is XX001, and what only a slot line can get wrong.
        let good = render(sample().iter());
        let body = good.rsplit_once("crc32").unwrap().0;
        let mut cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "not a walrelay slot state file"),
            (vec![b'x'; (FORMAT.max_len + 1) as usize], "larger than"),
            (
                good.replace("0/3000000", "0/3000001").into_bytes(),
                "checksum",
            ),
        ];
        for (from, to, why) in [
            ("slot d1", "slot ../d1", "contains invalid character"),
            ("slot d1", "slot D1", "contains invalid character"),
            ("slot w1", "slot d1", "recorded twice"),
            ("slot d1", "slots d1", "not a slot line"),
            ("=0/3000000", "=3000000", "invalid LSN"),
            ("xmin=748", "xmin=2", "invalid transaction id"),
            ("xmin=748", "xmin=x", "invalid transaction id"),
            ("xmin=748 ", "", "missing \"xmin\""),
            (
                "catalog_xmin=-\nslot w1",
                "catalog_xmin=- x\nslot w1",
                "unexpected words",
            ),
        ] {
            cases.push((seal(&body.replacen(from, to, 1)).into_bytes(), why));
        }
        for (bytes, why) in cases {
            let t = tempfile::TempDir::new().unwrap();
            fs::write(t.path().join(STATE_FILE), &bytes).unwrap();
            let err = open(t.path()).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(why), "{text} lacks {why}");
            assert!(text.contains(STATE_FILE), "{text}");
            assert_eq!(err.sqlstate(), "XX001");
        }
    }
}
