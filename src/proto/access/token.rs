//! The lexical layer `pg_hba.conf` and `pg_ident.conf` share: lines, backslash continuations,
//! comments, double quotes, comma lists, and the `include` records.
//!
//! This mirrors PostgreSQL 15's `tokenize_auth_file`, `next_field_expand` and `next_token`
//! (`hba.c`), byte for byte: blanks are space, tab and carriage return; an unquoted `#` starts
//! a comment; `"…"` quotes, `""` inside quotes is one `"`; a token is *quoted* when it starts
//! with a quote, which makes a keyword (`all`, `replication`, …) a plain name; a comma ends a
//! token and continues the field, so `a, b` is one field of two tokens but `a ,b` two fields;
//! a line ending in a backslash continues on the next one (also inside quotes or a comment);
//! a NUL byte ends the line; a token longer than 255 bytes is an error, as in PostgreSQL 15.
//!
//! The `include FILE` and `include_if_exists FILE` records are PostgreSQL 16's
//! (`tokenize_include_file`, `open_auth_file`, `AbsoluteConfigLocation`): a relative path is
//! taken from the including file's directory, nesting deeper than [`MAX_INCLUDE_DEPTH`] is an
//! error (which also ends include cycles), and the included file's lines take the place of the
//! record. `include_dir` and PostgreSQL 15's `@file` lists are refused.

use super::HbaError;

/// How deep includes may nest (PostgreSQL's `CONF_FILE_MAX_DEPTH`): the given file is at depth
/// 0, a file it includes at depth 1, and opening a file at depth 11 is an error.
pub const MAX_INCLUDE_DEPTH: usize = 10;

/// The longest token PostgreSQL 15 accepts, in bytes (`MAX_TOKEN` less the NUL).
const MAX_TOKEN_LEN: usize = 255;

/// The text glibc's `strerror(ENOENT)` gives, for an `include` whose file is missing.
const NO_SUCH_FILE: &str = "No such file or directory";

/// The include callback: the text of the file at a path, `Err("")` when it does not exist,
/// or `Err(reason)` when it cannot be read.
pub(super) type IncludeFn<'a> = dyn FnMut(&str) -> Result<String, String> + 'a;

/// One token (`AuthToken`): its text without the quotes, and whether it started with a quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Token {
    pub(super) text: String,
    pub(super) quoted: bool,
}

impl Token {
    /// PostgreSQL's `token_is_keyword`: the unquoted word `keyword`.
    pub(super) fn is_keyword(&self, keyword: &str) -> bool {
        !self.quoted && self.text == keyword
    }
}

/// One non-empty line (`TokenizedAuthLine`): where it is, its text, its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Line {
    /// The file, as given to the parser or to the include callback.
    pub(super) file: String,
    /// The line number, counted from 1 (the first physical line of a continued line).
    pub(super) number: usize,
    /// The line's text, continuations joined, without the final newline.
    pub(super) raw: String,
    /// The fields, each a non-empty list of tokens.
    pub(super) fields: Vec<Vec<Token>>,
}

impl Line {
    /// An error on this line.
    pub(super) fn error(&self, message: impl Into<String>) -> HbaError {
        HbaError::new(&self.file, self.number, message)
    }

    /// The one token of a column that takes one, or `message` as this line's error.
    pub(super) fn single<'a>(
        &self,
        tokens: &'a [Token],
        message: &str,
    ) -> Result<&'a Token, HbaError> {
        match tokens {
            [token] => Ok(token),
            _ => Err(self.error(message)),
        }
    }
}

/// Every non-empty line of `text` and of the files it includes, in order.
pub(super) fn tokenize(
    text: &str,
    file: &str,
    include: &mut IncludeFn<'_>,
) -> Result<Vec<Line>, HbaError> {
    let mut out = Vec::new();
    tokenize_file(text, file, include, 0, &mut out)?;
    Ok(out)
}

fn tokenize_file(
    text: &str,
    file: &str,
    include: &mut IncludeFn<'_>,
    depth: usize,
    out: &mut Vec<Line>,
) -> Result<(), HbaError> {
    for (number, raw) in logical_lines(text) {
        let fields = split_fields(&raw).map_err(|message| HbaError::new(file, number, message))?;
        if fields.is_empty() {
            continue;
        }
        if let [first, second] = fields.as_slice()
            && let (Some(first), Some(second)) = (first.first(), second.first())
        {
            let missing_ok = match first.text.as_str() {
                "include" => Some(false),
                "include_if_exists" => Some(true),
                "include_dir" => {
                    return Err(HbaError::new(
                        file,
                        number,
                        format!(
                            "include_dir is not supported by walrelay: \"{}\"; include the files one by one",
                            second.text
                        ),
                    ));
                }
                _ => None,
            };
            if let Some(missing_ok) = missing_ok {
                let path = absolute_location(&second.text, file);
                let error = |why: &str| {
                    HbaError::new(
                        file,
                        number,
                        format!("could not open file \"{path}\": {why}"),
                    )
                };
                if depth >= MAX_INCLUDE_DEPTH {
                    return Err(error("maximum nesting depth exceeded"));
                }
                match include(&path) {
                    Ok(inner) => tokenize_file(&inner, &path, include, depth + 1, out)?,
                    Err(why) if why.is_empty() && missing_ok => {}
                    Err(why) if why.is_empty() => return Err(error(NO_SUCH_FILE)),
                    Err(why) => return Err(error(&why)),
                }
                continue;
            }
        }
        out.push(Line {
            file: file.to_owned(),
            number,
            raw,
            fields,
        });
    }
    Ok(())
}

/// The logical lines of `text` with their numbers: trailing CR and LF stripped, and a line
/// ending in a backslash joined with the next (the backslash dropped), as
/// `tokenize_auth_file` reads them.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut physical = text.split('\n');
    let mut number = 1;
    loop {
        let mut buf = String::new();
        let mut last_backslash = 0;
        let mut continuations = 0;
        let mut any = false;
        for piece in physical.by_ref() {
            any = true;
            buf.push_str(piece);
            let len = buf.trim_end_matches(['\r', '\n']).len();
            buf.truncate(len);
            if buf.len() > last_backslash && buf.ends_with('\\') {
                buf.pop();
                last_backslash = buf.len();
                continuations += 1;
                continue;
            }
            break;
        }
        if !any {
            return lines;
        }
        lines.push((number, buf));
        number += continuations + 1;
    }
}

/// The fields of one logical line (`next_field_expand` until the end of the line).
fn split_fields(line: &str) -> Result<Vec<Vec<Token>>, String> {
    let mut cursor = Cursor {
        bytes: line.as_bytes(),
        pos: 0,
    };
    let mut fields = Vec::new();
    while cursor.peek() != 0 {
        let mut field = Vec::new();
        while let Some((token, comma)) = cursor.next_token()? {
            if !token.quoted && token.text.len() > 1 && token.text.starts_with('@') {
                return Err(format!(
                    "file inclusion \"{}\" is not supported by walrelay; list the names on the line",
                    token.text
                ));
            }
            field.push(token);
            if !comma {
                break;
            }
        }
        if field.is_empty() {
            break;
        }
        fields.push(field);
    }
    Ok(fields)
}

/// A position in a line's bytes; past the end reads as NUL, as in C.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> u8 {
        self.bytes.get(self.pos).copied().unwrap_or(0)
    }

    /// `next_token`: the next token and whether a comma ended it, or `None` at the end of the
    /// line or at a comment.
    fn next_token(&mut self) -> Result<Option<(Token, bool)>, String> {
        while matches!(self.peek(), b' ' | b'\t' | b'\r' | b',') {
            self.pos += 1;
        }
        let mut out = Vec::new();
        let (mut in_quote, mut was_quote, mut saw_quote) = (false, false, false);
        let mut initial_quote = false;
        let mut comma = false;
        loop {
            let c = self.peek();
            if c == 0 || (matches!(c, b' ' | b'\t' | b'\r') && !in_quote) {
                break;
            }
            if c == b'#' && !in_quote {
                self.pos = self.bytes.len();
                break;
            }
            if out.len() >= MAX_TOKEN_LEN {
                return Err("authentication file token too long".to_owned());
            }
            if c == b',' && !in_quote {
                comma = true;
                break;
            }
            if c != b'"' || was_quote {
                out.push(c);
            }
            was_quote = in_quote && c == b'"' && !was_quote;
            if c == b'"' {
                in_quote = !in_quote;
                saw_quote = true;
                if out.is_empty() {
                    initial_quote = true;
                }
            }
            self.pos += 1;
        }
        if !saw_quote && out.is_empty() {
            return Ok(None);
        }
        let token = Token {
            text: String::from_utf8_lossy(&out).into_owned(),
            quoted: initial_quote,
        };
        Ok(Some((token, comma)))
    }
}

/// `AbsoluteConfigLocation`: an absolute path as is, a relative one from the directory of the
/// including file, with `.`, `..` and repeated slashes resolved as `canonicalize_path` does.
fn absolute_location(location: &str, calling_file: &str) -> String {
    if location.starts_with('/') {
        return canonical(location);
    }
    match calling_file.rfind('/') {
        Some(slash) => canonical(&format!(
            "{}/{location}",
            calling_file.get(..slash).unwrap_or("")
        )),
        None => canonical(location),
    }
}

fn canonical(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|last| *last != "..") => {
                parts.pop();
            }
            ".." if absolute => {}
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(line: &str) -> Vec<Vec<(String, bool)>> {
        split_fields(line)
            .unwrap()
            .into_iter()
            .map(|f| f.into_iter().map(|t| (t.text, t.quoted)).collect())
            .collect()
    }

    fn plain(words: &[&[&str]]) -> Vec<Vec<(String, bool)>> {
        words
            .iter()
            .map(|f| f.iter().map(|w| ((*w).to_owned(), false)).collect())
            .collect()
    }

    fn no_files(_: &str) -> Result<String, String> {
        Err(String::new())
    }

    #[test]
    fn blanks_commas_and_comments() {
        assert_eq!(
            fields("host\treplication  a,b, c  10.0.0.0/8 trust # the rest"),
            plain(&[
                &["host"],
                &["replication"],
                &["a", "b", "c"],
                &["10.0.0.0/8"],
                &["trust"]
            ])
        );
        // A blank before the comma ends the field; the comma then only separates.
        assert_eq!(fields("a ,b"), plain(&[&["a"], &["b"]]));
        assert_eq!(fields("a,"), plain(&[&["a"]]));
        assert_eq!(fields(",,, a"), plain(&[&["a"]]));
        assert_eq!(fields("a#comment"), plain(&[&["a"]]));
        assert_eq!(fields("   # only a comment"), plain(&[]));
        assert_eq!(fields(""), plain(&[]));
        assert_eq!(fields("a\r"), plain(&[&["a"]]));
    }

    #[test]
    fn quotes() {
        let q = |s: &str| (s.to_owned(), true);
        assert_eq!(fields("\"all\""), vec![vec![q("all")]]);
        assert_eq!(
            fields("\"a b,#c\" d"),
            vec![vec![q("a b,#c")], vec![("d".into(), false)]]
        );
        assert_eq!(fields("\"say \"\"hi\"\"\""), vec![vec![q("say \"hi\"")]]);
        assert_eq!(fields("\"\""), vec![vec![q("")]]);
        // Only a quote before the first character makes the token quoted.
        assert_eq!(fields("al\"l\""), plain(&[&["all"]]));
        assert_eq!(fields("\"a\",\"b\""), vec![vec![q("a"), q("b")]]);
        // An unterminated quote runs to the end of the line.
        assert_eq!(fields("\"a b"), vec![vec![q("a b")]]);
        // A NUL byte ends the line.
        assert_eq!(fields("a\0b c"), plain(&[&["a"]]));
    }

    #[test]
    fn long_tokens_and_at_files() {
        let ok = "x".repeat(255);
        assert_eq!(fields(&ok), plain(&[&[ok.as_str()]]));
        let long = "x".repeat(256);
        assert_eq!(
            split_fields(&long).unwrap_err(),
            "authentication file token too long"
        );
        assert_eq!(
            split_fields("host @dbs all").unwrap_err(),
            "file inclusion \"@dbs\" is not supported by walrelay; list the names on the line"
        );
        // A lone @ and a quoted one are names.
        assert_eq!(fields("@ \"@x\"")[1], vec![("@x".to_owned(), true)]);
        assert_eq!(fields("@")[0], vec![("@".to_owned(), false)]);
    }

    #[test]
    fn continuations_and_line_numbers() {
        let lines = logical_lines("a \\\n  b\n\nc\\\r\n\\\nd\ne\\");
        let expected = [(1, "a   b"), (3, ""), (4, "cd"), (7, "e")];
        let expected: Vec<(usize, String)> = expected
            .iter()
            .map(|(n, l)| (*n, (*l).to_owned()))
            .collect();
        assert_eq!(lines, expected);
        // A backslash only continues a line at its very end.
        assert_eq!(logical_lines("a\\b"), vec![(1, "a\\b".to_owned())]);
    }

    #[test]
    fn includes_resolve_nest_and_stop() {
        let mut files = |path: &str| match path {
            "/etc/pg/sub/a.conf" => Ok("x1\ninclude ../b.conf\nx2".to_owned()),
            "/etc/pg/b.conf" => Ok("y".to_owned()),
            "/etc/pg/denied" => Err("Permission denied".to_owned()),
            _ => Err(String::new()),
        };
        let text = "top\ninclude sub/a.conf\ninclude_if_exists nothing\nend";
        let lines = tokenize(text, "/etc/pg/pg_hba.conf", &mut files).unwrap();
        let seen: Vec<(&str, usize, &str)> = lines
            .iter()
            .map(|l| (l.file.as_str(), l.number, l.raw.as_str()))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("/etc/pg/pg_hba.conf", 1, "top"),
                ("/etc/pg/sub/a.conf", 1, "x1"),
                ("/etc/pg/b.conf", 1, "y"),
                ("/etc/pg/sub/a.conf", 3, "x2"),
                ("/etc/pg/pg_hba.conf", 4, "end"),
            ]
        );
        let err = tokenize("a\ninclude nothing", "/etc/pg/pg_hba.conf", &mut files).unwrap_err();
        assert_eq!(
            err.to_string(),
            "could not open file \"/etc/pg/nothing\": No such file or directory \
             (line 2 of configuration file \"/etc/pg/pg_hba.conf\")"
        );
        let err = tokenize("include_if_exists denied", "/etc/pg/x", &mut files).unwrap_err();
        assert_eq!(
            err.message,
            "could not open file \"/etc/pg/denied\": Permission denied"
        );
        let err = tokenize("include_dir conf.d", "/etc/pg/x", &mut no_files).unwrap_err();
        assert_eq!(
            err.message,
            "include_dir is not supported by walrelay: \"conf.d\"; include the files one by one"
        );
        // Three fields are not an include record (parse_hba_line then refuses the type).
        let lines = tokenize("include a b", "x", &mut no_files).unwrap();
        assert_eq!(lines.len(), 1);
    }

    #[test]
    fn include_cycles_stop_at_the_depth_limit() {
        let mut opened = Vec::new();
        let mut files = |path: &str| {
            opened.push(path.to_owned());
            Ok("include self.conf".to_owned())
        };
        let err = tokenize("include self.conf", "/d/self.conf", &mut files).unwrap_err();
        assert_eq!(
            err,
            HbaError::new(
                "/d/self.conf",
                1,
                "could not open file \"/d/self.conf\": maximum nesting depth exceeded"
            )
        );
        assert_eq!(opened.len(), MAX_INCLUDE_DEPTH);
    }

    #[test]
    fn include_paths() {
        assert_eq!(absolute_location("/abs/f", "/etc/x"), "/abs/f");
        assert_eq!(absolute_location("f", "/etc/pg/hba"), "/etc/pg/f");
        assert_eq!(
            absolute_location("./a//b/../f", "/etc/pg/hba"),
            "/etc/pg/a/f"
        );
        assert_eq!(absolute_location("../../../f", "/etc/hba"), "/f");
        assert_eq!(absolute_location("f", "hba"), "f");
        assert_eq!(absolute_location("../f", "conf/hba"), "f");
        assert_eq!(absolute_location("../f", "hba"), "../f");
        assert_eq!(absolute_location("f", "/hba"), "/f");
    }
}
