//! Small text files the relay defines for itself: the store's identity and the slots.
//!
//! Each is a magic line, a `version N` line, the body, and a `crc32 XXXXXXXX` line whose
//! CRC-32 (IEEE, `crc32fast`: never the WAL's CRC-32C) covers every byte before it. A file is
//! read with a size cap and replaced atomically and durably, as PostgreSQL's `durable_rename`
//! does: a `NAME.tmp` file with mode 0600, fsync, rename, fsync of the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The layout of one kind of state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateFormat {
    /// What the file is, for errors ("walrelay state").
    pub what: &'static str,
    /// The first line.
    pub magic: &'static str,
    /// The version on the second line.
    pub version: &'static str,
    /// Larger files are not read.
    pub max_len: u64,
}

impl StateFormat {
    /// The whole file for `body` (lines, each ending in `\n`).
    pub fn render(&self, body: &str) -> String {
        let text = format!("{}\nversion {}\n{body}", self.magic, self.version);
        let crc = crc32fast::hash(text.as_bytes());
        format!("{text}crc32 {crc:08x}\n")
    }

    /// The body of a file: its magic, version and checksum checked.
    ///
    /// # Errors
    /// A text saying what is wrong.
    pub fn parse<'a>(&self, text: &'a str) -> Result<&'a str, String> {
        let rest = text
            .strip_prefix(self.magic)
            .and_then(|r| r.strip_prefix('\n'))
            .ok_or_else(|| format!("not a {} file", self.what))?;
        let (covered, crc_line) = text
            .strip_suffix('\n')
            .and_then(|t| t.rsplit_once('\n'))
            .ok_or("truncated")?;
        let stored = crc_line
            .strip_prefix("crc32 ")
            .ok_or("missing \"crc32\" line")?;
        let actual = format!("{:08x}", crc32fast::hash(format!("{covered}\n").as_bytes()));
        if stored != actual {
            return Err(format!(
                "checksum mismatch (stored {stored}, computed {actual})"
            ));
        }
        let (version_line, body_and_crc) = rest.split_once('\n').ok_or("truncated")?;
        let version = version_line
            .strip_prefix("version ")
            .ok_or("missing \"version\" line")?;
        if version != self.version {
            return Err(format!("unsupported format version \"{version}\""));
        }
        let body_len = body_and_crc.len().saturating_sub(crc_line.len() + 1);
        Ok(body_and_crc.get(..body_len).unwrap_or_default())
    }

    /// Reads a file; `None` when it does not exist.
    ///
    /// # Errors
    /// An I/O error, or `InvalidData` for a file over the cap or not UTF-8.
    pub fn read(&self, path: &Path) -> io::Result<Option<String>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut bytes = Vec::new();
        file.take(self.max_len + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > self.max_len {
            let text = format!("larger than {} bytes", self.max_len);
            return Err(io::Error::new(io::ErrorKind::InvalidData, text));
        }
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not text"))
    }
}

/// Replaces `dir/name` with `contents` atomically and durably. A failed write removes the
/// temporary file again; a leftover from a crash is `NAME.tmp`.
///
/// # Errors
/// The I/O error, with the step that failed in its text.
pub fn replace(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let written = write_new(&tmp, contents);
    if written.is_err() {
        // Best effort: the error being reported matters more than the leftover, which the
        // next open removes anyway.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    fs::rename(&tmp, dir.join(name)).map_err(|e| step("rename", &tmp, e))?;
    fsync_dir(dir)
}

/// fsyncs a directory, making renames, creations and removals in it durable.
///
/// # Errors
/// The I/O error.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| step("fsync directory", dir, e))
}

/// Writes a fresh file with mode 0600 and fsyncs it.
fn write_new(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| step("create", path, e))?;
    f.write_all(contents).map_err(|e| step("write", path, e))?;
    f.sync_all().map_err(|e| step("fsync", path, e))
}

fn step(op: &str, path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{op} \"{}\": {e}", path.display()))
}

/// A file's text for `covered` (everything before the `crc32` line) with a correct checksum
/// line: how tests make files that are damaged only where they choose.
#[cfg(test)]
pub(crate) fn seal(covered: &str) -> String {
    format!(
        "{covered}crc32 {:08x}\n",
        crc32fast::hash(covered.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const F: StateFormat = StateFormat {
        what: "walrelay test",
        magic: "walrelay test",
        version: "1",
        max_len: 100,
    };

    #[test]
    fn render_and_parse_round_trip() {
        let text = F.render("a 1\nb 2\n");
        assert!(text.starts_with("walrelay test\nversion 1\na 1\nb 2\ncrc32 "));
        assert_eq!(F.parse(&text), Ok("a 1\nb 2\n"));
        assert_eq!(F.parse(&F.render("")), Ok(""));
    }

    #[test]
    fn damaged_and_foreign_files_are_refused_as_every_state_file_refuses_them() {
        let good = F.render("a 1\n");
        let body = good.rsplit_once("crc32").unwrap().0;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "not a walrelay test file"),
            (b"PG_VERSION 15\n".to_vec(), "not a walrelay test file"),
            (vec![0xFF; 40], "not text"),
            (vec![b'x'; (F.max_len + 1) as usize], "larger than"),
            (good.replace("a 1", "a 2").into_bytes(), "checksum"),
            (good.replace("crc32 ", "crc33 ").into_bytes(), "crc32"),
            (good.trim_end().as_bytes().to_vec(), "truncated"),
            (format!("{}\n", F.magic).into_bytes(), "truncated"),
            (
                seal(&body.replace("version 1", "version 2")).into_bytes(),
                "unsupported format version",
            ),
        ];
        for (bytes, why) in cases {
            let t = tempfile::TempDir::new().unwrap();
            let path = t.path().join("s");
            fs::write(&path, &bytes).unwrap();
            let text = match F.read(&path) {
                Err(e) => e.to_string(),
                Ok(text) => F.parse(&text.unwrap()).unwrap_err(),
            };
            assert!(text.contains(why), "{text} lacks {why}");
        }
    }

    #[test]
    fn damage_is_refused() {
        let text = F.render("a 1\n");
        assert!(
            F.parse(&text.replace("a 1", "a 2"))
                .unwrap_err()
                .contains("checksum")
        );
        assert!(F.parse(&text.replace("walrelay test", "other")).is_err());
        assert!(F.parse(&text[..text.len() - 3]).is_err());
        let v2 = StateFormat { version: "2", ..F }.render("a 1\n");
        assert!(F.parse(&v2).unwrap_err().contains("version"));
    }

    #[test]
    fn replace_is_private_and_capped_reads_refuse_big_files() {
        let t = tempfile::TempDir::new().unwrap();
        replace(t.path(), "s", b"one").unwrap();
        replace(t.path(), "s", b"two").unwrap();
        assert_eq!(F.read(&t.path().join("s")).unwrap().as_deref(), Some("two"));
        assert_eq!(
            fs::metadata(t.path().join("s"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert!(!t.path().join("s.tmp").exists());
        assert_eq!(F.read(&t.path().join("missing")).unwrap(), None);
        fs::write(t.path().join("big"), vec![b'x'; 101]).unwrap();
        assert!(F.read(&t.path().join("big")).is_err());
    }
}
