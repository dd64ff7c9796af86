//! `walrelay.state`: the store's identity (system identifier and segment size), checksummed.
//!
//! Like PostgreSQL's `pg_control` it pins the directory to one cluster, so WAL of another system
//! or segment size is never mixed in; unlike it, the file is text so an operator can read it:
//!
//! ```text
//! walrelay storage state
//! version 1
//! system_identifier 7712484032370382654
//! wal_segment_size 16777216
//! crc32 b6e6c2c8
//! ```
//!
//! The CRC-32 (IEEE, `crc32fast`) covers every byte before the `crc32` line. The file is replaced
//! atomically (tmp, fsync, rename, fsync of the directory).

use std::io;
use std::path::Path;

use crate::statefile::{self, StateFormat};
use crate::types::{SystemId, WalSegmentSize};

use super::StoreIdentity;
use super::error::{StoreError, io_err};

/// The state file's name inside the data directory.
pub(crate) const STATE_FILE: &str = "walrelay.state";

/// Its layout: magic, version, size cap (nothing bigger is read).
const FORMAT: StateFormat = StateFormat {
    what: "walrelay state",
    magic: "walrelay storage state",
    version: "1",
    max_len: 4096,
};

/// Reads the identity recorded in `data_dir`, or `None` when there is no state file.
pub(crate) fn read(data_dir: &Path) -> Result<Option<StoreIdentity>, StoreError> {
    let path = data_dir.join(STATE_FILE);
    let bad = |reason: String| StoreError::BadStateFile {
        path: path.clone(),
        reason,
    };
    let text = match FORMAT.read(&path) {
        Ok(Some(text)) => text,
        Ok(None) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(bad(e.to_string())),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    parse(&text).map(Some).map_err(bad)
}

/// Records `id` in `data_dir` durably.
pub(crate) fn write(data_dir: &Path, id: StoreIdentity) -> Result<(), StoreError> {
    statefile::replace(data_dir, STATE_FILE, render(id).as_bytes())
        .map_err(io_err("write", data_dir))
}

/// The state file's text for `id`.
pub(crate) fn render(id: StoreIdentity) -> String {
    FORMAT.render(&format!(
        "system_identifier {}\nwal_segment_size {}\n",
        id.system_id.0,
        id.segment_size.bytes()
    ))
}

fn parse(text: &str) -> Result<StoreIdentity, String> {
    let mut fields = FORMAT.parse(text)?.lines();
    let system_id = value(fields.next(), "system_identifier")?
        .parse::<SystemId>()
        .map_err(|e| e.to_string())?;
    let segment_size = value(fields.next(), "wal_segment_size")?
        .parse::<u32>()
        .map_err(|e| format!("wal_segment_size: {e}"))
        .and_then(|n| WalSegmentSize::new(n).map_err(|e| e.to_string()))?;
    if fields.next().is_some() {
        return Err("unexpected extra lines".into());
    }
    Ok(StoreIdentity {
        system_id,
        segment_size,
    })
}

/// The value of a `key value` line.
fn value<'a>(line: Option<&'a str>, key: &str) -> Result<&'a str, String> {
    line.and_then(|l| l.strip_prefix(key))
        .and_then(|rest| rest.strip_prefix(' '))
        .ok_or_else(|| format!("missing \"{key}\" line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> StoreIdentity {
        StoreIdentity {
            system_id: SystemId(7_712_484_032_370_382_654),
            segment_size: WalSegmentSize::DEFAULT,
        }
    }

    #[test]
    fn round_trips() {
        let t = tempfile::TempDir::new().unwrap();
        assert_eq!(read(t.path()).unwrap(), None);
        write(t.path(), id()).unwrap();
        assert_eq!(read(t.path()).unwrap(), Some(id()));
        let text = std::fs::read_to_string(t.path().join(STATE_FILE)).unwrap();
        // The example in the module documentation.
        let documented = "walrelay storage state\nversion 1\nsystem_identifier \
                          7712484032370382654\nwal_segment_size 16777216\ncrc32 b6e6c2c8\n";
        assert_eq!(text, documented);
    }

    #[test]
    fn refuses_damage_and_foreign_files() {
        // What every state file refuses is tested in `statefile`; here, that a refusal names
        // the file, and what only an identity can get wrong.
        let good = render(id());
        let mut cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "not a walrelay state file"),
            (vec![b'x'; 5000], "larger than"),
            (
                good.replace("16777216", "16777217").into_bytes(),
                "checksum",
            ),
        ];
        for (from, to, why) in [
            ("16777216", "17000000", "invalid WAL segment size"),
            ("7712484032370382654", "-1", "invalid system identifier"),
        ] {
            let body = good.rsplit_once("crc32").unwrap().0.replace(from, to);
            cases.push((crate::statefile::seal(&body).into_bytes(), why));
        }
        for (bytes, why) in cases {
            let t = tempfile::TempDir::new().unwrap();
            std::fs::write(t.path().join(STATE_FILE), &bytes).unwrap();
            let err = read(t.path()).unwrap_err().to_string();
            assert!(err.contains(why), "{err} lacks {why}");
            assert!(err.contains(STATE_FILE), "{err}");
        }
    }
}
