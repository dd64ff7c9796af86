//! The tokenizer of the replication command language, mirroring PostgreSQL 15's
//! `repl_scanner.l` rule for rule, with flex's longest-match choice made explicit.
//!
//! - Keywords are all uppercase and matched exactly: `identify_system` is an identifier.
//! - Identifiers `[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*` fold ASCII letters to lowercase;
//!   `"double quoted"` ones keep their case. Both are cut to 63 bytes (`NAMEDATALEN - 1`) with
//!   a NOTICE, as `scansup.c:truncate_identifier` does. PostgreSQL 15 has **no** `""` escape
//!   inside a quoted identifier: `"a""b"` is the two identifiers `a` and `b` **\[obs\]**.
//! - `'strings'` use `''` for a quote. An unterminated string or quoted identifier is
//!   "unterminated quoted string" **\[obs\]** for both.
//! - `UCONST` (decimal digits) and `RECPTR` (`hex+/hex+`) keep their text here; the parser
//!   converts them when it uses them, so a first token that is neither (SQL) never fails.
//! - Whitespace is ` \t\n\r\f`; a vertical tab is not whitespace in PostgreSQL 15 **\[obs\]**.
//!   There are no comments: `--` and `/*` are one-character tokens.
//!
//! **\[obs\]** marks behaviour checked against a PostgreSQL 15.18 walsender.

use super::error::{Notice, ParseError};

/// The most bytes an identifier keeps (`NAMEDATALEN - 1`).
pub(super) const MAX_IDENTIFIER_LEN: usize = 63;

macro_rules! keywords {
    ($($variant:ident => $text:literal, $option:expr;)*) => {
        /// A reserved word of the replication grammar.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(super) enum Keyword {
            $($variant,)*
        }

        impl Keyword {
            /// The keyword spelled exactly as `text`, if any.
            pub(super) fn from_text(text: &str) -> Option<Keyword> {
                match text {
                    $($text => Some(Keyword::$variant),)*
                    _ => None,
                }
            }

            /// The option name this keyword stands for in a `( option … )` list
            /// (`repl_gram.y:ident_or_keyword`), `None` where the grammar refuses it.
            pub(super) fn option_name(self) -> Option<&'static str> {
                match self {
                    $(Keyword::$variant => $option,)*
                }
            }
        }
    };
}

keywords! {
    BaseBackup => "BASE_BACKUP", Some("base_backup");
    IdentifySystem => "IDENTIFY_SYSTEM", Some("identify_system");
    ReadReplicationSlot => "READ_REPLICATION_SLOT", None;
    Show => "SHOW", Some("show");
    Timeline => "TIMELINE", Some("timeline");
    StartReplication => "START_REPLICATION", Some("start_replication");
    CreateReplicationSlot => "CREATE_REPLICATION_SLOT", Some("create_replication_slot");
    DropReplicationSlot => "DROP_REPLICATION_SLOT", Some("drop_replication_slot");
    AlterReplicationSlot => "ALTER_REPLICATION_SLOT", Some("alter_replication_slot");
    TimelineHistory => "TIMELINE_HISTORY", Some("timeline_history");
    Physical => "PHYSICAL", Some("physical");
    ReserveWal => "RESERVE_WAL", Some("reserve_wal");
    Logical => "LOGICAL", Some("logical");
    Slot => "SLOT", Some("slot");
    Temporary => "TEMPORARY", Some("temporary");
    TwoPhase => "TWO_PHASE", Some("two_phase");
    ExportSnapshot => "EXPORT_SNAPSHOT", Some("export_snapshot");
    NoexportSnapshot => "NOEXPORT_SNAPSHOT", Some("noexport_snapshot");
    UseSnapshot => "USE_SNAPSHOT", Some("use_snapshot");
    Wait => "WAIT", Some("wait");
    UploadManifest => "UPLOAD_MANIFEST", Some("upload_manifest");
}

/// One token of a replication command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Token<'a> {
    /// A reserved word.
    Keyword(Keyword),
    /// An identifier, folded and truncated; `raw` is its source text (quotes included).
    Ident {
        /// The identifier's value.
        name: String,
        /// The text it was read from.
        raw: &'a str,
    },
    /// A `'quoted string'`, unescaped.
    Str(String),
    /// The digits of an unsigned decimal constant.
    UConst(&'a str),
    /// The text of a `hex/hex` location.
    RecPtr(&'a str),
    /// Any other character.
    Char(char),
    /// The end of the command.
    End,
}

/// Splits `s` after its longest prefix of characters matching `pred`.
fn split_run(s: &str, pred: impl Fn(char) -> bool) -> (&str, &str) {
    let tail = s.trim_start_matches(pred);
    s.split_at(s.len() - tail.len())
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c')
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || !c.is_ascii()
}

fn is_ident_cont(c: char) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == '$'
}

/// A pull tokenizer: tokens are read one at a time, as the grammar asks for them, so errors
/// and notices come in the order PostgreSQL's parser would meet them.
pub(super) struct Lexer<'a> {
    rest: &'a str,
    notices: Vec<Notice>,
}

impl<'a> Lexer<'a> {
    pub(super) fn new(text: &'a str) -> Lexer<'a> {
        Lexer {
            rest: text,
            notices: Vec::new(),
        }
    }

    /// The notices emitted so far.
    pub(super) fn into_notices(self) -> Vec<Notice> {
        self.notices
    }

    /// Reads the next token.
    pub(super) fn next_token(&mut self) -> Result<Token<'a>, ParseError> {
        self.rest = self.rest.trim_start_matches(is_space);
        let Some(first) = self.rest.chars().next() else {
            return Ok(Token::End);
        };
        if let Some(recptr) = self.take_recptr() {
            return Ok(Token::RecPtr(recptr));
        }
        if first.is_ascii_digit() {
            return Ok(Token::UConst(self.take_run(|c| c.is_ascii_digit())));
        }
        if is_ident_start(first) {
            let raw = self.take_run(is_ident_cont);
            if let Some(keyword) = Keyword::from_text(raw) {
                return Ok(Token::Keyword(keyword));
            }
            let name = self.truncate(raw.to_ascii_lowercase());
            return Ok(Token::Ident { name, raw });
        }
        let after = self.rest.get(first.len_utf8()..).unwrap_or_default();
        match first {
            '\'' => self.quoted_string(after),
            '"' => self.quoted_identifier(after),
            _ => {
                self.rest = after;
                Ok(Token::Char(first))
            }
        }
    }

    fn take_run(&mut self, pred: impl Fn(char) -> bool) -> &'a str {
        let (run, tail) = split_run(self.rest, pred);
        self.rest = tail;
        run
    }

    /// `{hexdigit}+\/{hexdigit}+`. When it matches it is the longest match: an identifier or
    /// a number starting here covers at most the hex digits before the slash.
    fn take_recptr(&mut self) -> Option<&'a str> {
        let (high, after) = split_run(self.rest, |c| c.is_ascii_hexdigit());
        let low_and_tail = after.strip_prefix('/')?;
        let (low, tail) = split_run(low_and_tail, |c| c.is_ascii_hexdigit());
        if high.is_empty() || low.is_empty() {
            return None;
        }
        let (recptr, _) = self.rest.split_at(high.len() + 1 + low.len());
        self.rest = tail;
        Some(recptr)
    }

    /// The rest of a `'…'` string after its opening quote, with `''` as a quote.
    fn quoted_string(&mut self, mut rest: &'a str) -> Result<Token<'a>, ParseError> {
        let mut value = String::new();
        loop {
            let (inside, tail) = rest.split_once('\'').ok_or(ParseError::UnterminatedQuote)?;
            value.push_str(inside);
            match tail.strip_prefix('\'') {
                Some(after_double) => {
                    value.push('\'');
                    rest = after_double;
                }
                None => {
                    self.rest = tail;
                    return Ok(Token::Str(value));
                }
            }
        }
    }

    /// The rest of a `"…"` identifier after its opening quote.
    fn quoted_identifier(&mut self, after: &'a str) -> Result<Token<'a>, ParseError> {
        let (inside, tail) = after.split_once('"').ok_or(ParseError::UnterminatedQuote)?;
        let (raw, _) = self.rest.split_at(inside.len() + 2);
        self.rest = tail;
        let name = self.truncate(inside.to_owned());
        Ok(Token::Ident { name, raw })
    }

    /// Cuts an identifier to 63 bytes on a character boundary, with PostgreSQL's NOTICE.
    fn truncate(&mut self, mut name: String) -> String {
        if name.len() > MAX_IDENTIFIER_LEN {
            let mut end = MAX_IDENTIFIER_LEN;
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            let identifier = name.clone();
            name.truncate(end);
            self.notices.push(Notice::IdentifierTruncated {
                identifier,
                truncated: name.clone(),
            });
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Vec<Token<'_>> {
        let mut lexer = Lexer::new(text);
        let mut out = Vec::new();
        loop {
            let token = lexer.next_token().unwrap();
            if token == Token::End {
                return out;
            }
            out.push(token);
        }
    }

    fn ident(name: &str, raw: &'static str) -> Token<'static> {
        Token::Ident {
            name: name.into(),
            raw,
        }
    }

    #[test]
    fn keywords_are_case_sensitive_and_whole_words() {
        assert_eq!(
            tokens("IDENTIFY_SYSTEM identify_system SHOWx SHOW$"),
            [
                Token::Keyword(Keyword::IdentifySystem),
                ident("identify_system", "identify_system"),
                ident("showx", "SHOWx"),
                ident("show$", "SHOW$"),
            ]
        );
    }

    #[test]
    fn longest_match_between_numbers_locations_and_identifiers() {
        assert_eq!(
            tokens("0/3000000TIMELINE 12ab/1 12ab 1_a G/0 0/0/0 0 /1"),
            [
                Token::RecPtr("0/3000000"),
                Token::Keyword(Keyword::Timeline),
                Token::RecPtr("12ab/1"),
                Token::UConst("12"),
                ident("ab", "ab"),
                Token::UConst("1"),
                ident("_a", "_a"),
                ident("g", "G"),
                Token::Char('/'),
                Token::UConst("0"),
                Token::RecPtr("0/0"),
                Token::Char('/'),
                Token::UConst("0"),
                Token::UConst("0"),
                Token::Char('/'),
                Token::UConst("1"),
            ]
        );
        assert_eq!(tokens("DEADBEEF/1"), [Token::RecPtr("DEADBEEF/1")]);
        assert_eq!(tokens("ABCG/1")[0], ident("abcg", "ABCG"));
    }

    #[test]
    fn strings_and_quoted_identifiers() {
        assert_eq!(
            tokens(r#"'it''s' '' "Ab c" "" "a""b""#),
            [
                Token::Str("it's".into()),
                Token::Str(String::new()),
                ident("Ab c", "\"Ab c\""),
                ident("", "\"\""),
                ident("a", "\"a\""),
                ident("b", "\"b\""),
            ]
        );
        for text in ["'abc", "\"abc", "'it''", "x 'a''"] {
            let mut lexer = Lexer::new(text);
            let err = std::iter::from_fn(|| Some(lexer.next_token()))
                .find_map(Result::err)
                .unwrap();
            assert_eq!(err, ParseError::UnterminatedQuote, "{text}");
        }
    }

    #[test]
    fn whitespace_and_other_characters() {
        assert_eq!(
            tokens(" \t\n\r\x0cSHOW\x0b-- /**/;é"),
            [
                Token::Keyword(Keyword::Show),
                Token::Char('\x0b'),
                Token::Char('-'),
                Token::Char('-'),
                Token::Char('/'),
                Token::Char('*'),
                Token::Char('*'),
                Token::Char('/'),
                Token::Char(';'),
                ident("é", "é"),
            ]
        );
    }

    #[test]
    fn identifiers_fold_ascii_only_and_truncate_on_a_char_boundary() {
        assert_eq!(tokens("ÉtéAB")[0], ident("Étéab", "ÉtéAB"));
        let long = format!("{}é", "A".repeat(62));
        let mut lexer = Lexer::new(&long);
        let Token::Ident { name, .. } = lexer.next_token().unwrap() else {
            unreachable!()
        };
        assert_eq!(name, "a".repeat(62));
        let notices = lexer.into_notices();
        assert_eq!(notices.len(), 1);
        assert_eq!(
            notices[0].to_string(),
            format!(
                "identifier \"{}é\" will be truncated to \"{}\"",
                "a".repeat(62),
                "a".repeat(62)
            )
        );
        let quoted = format!("\"{}\"", "B".repeat(64));
        let mut lexer = Lexer::new(&quoted);
        let Token::Ident { name, raw } = lexer.next_token().unwrap() else {
            unreachable!()
        };
        assert_eq!((name, raw), ("B".repeat(63), quoted.as_str()));
        let exact = "c".repeat(63);
        let mut lexer = Lexer::new(&exact);
        lexer.next_token().unwrap();
        assert!(lexer.into_notices().is_empty());
    }

    #[test]
    fn a_megabyte_is_linear() {
        let text = format!("'{}'", "''".repeat(500_000));
        assert_eq!(tokens(&text), [Token::Str("'".repeat(500_000))]);
        let spaces = format!("SHOW{}x", " ".repeat(1 << 20));
        assert_eq!(tokens(&spaces).len(), 2);
    }
}
