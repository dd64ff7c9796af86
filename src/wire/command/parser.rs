//! A recursive-descent rendering of PostgreSQL 15's `repl_gram.y`, plus the PostgreSQL 17
//! commands and, when parsing as 12–14, those majors' BASE_BACKUP keywords.
//!
//! Like bison, it reads one token of lookahead and only when the grammar needs it, so
//! `IDENTIFY_SYSTEM 'abc` is "unterminated quoted string" and `SHOW x 'abc` a "syntax error"
//! as PostgreSQL has them. Semantic checks that PostgreSQL makes in grammar actions
//! (`invalid timeline 0`) happen where it makes them; the checks walsender makes when a
//! command runs (CREATE_REPLICATION_SLOT's options) happen after the whole command parsed.

use super::error::ParseError;
use super::lexer::{Keyword, Lexer, Token};
use super::options::slot_kind;
use super::{GenericOption, OptionValue, Parsed, ReplicationCommand};
use crate::types::{Lsn, TimelineId};

/// The BASE_BACKUP keywords of PostgreSQL 11–14, the first major (of those the relay serves)
/// that knows each, and whether each takes a value. PostgreSQL 15 no longer accepts them
/// **\[obs\]**.
const LEGACY_BASE_BACKUP: [(&str, u32, LegacyValue); 10] = [
    ("LABEL", 12, LegacyValue::Str),
    ("PROGRESS", 12, LegacyValue::None),
    ("FAST", 12, LegacyValue::None),
    ("WAL", 12, LegacyValue::None),
    ("NOWAIT", 12, LegacyValue::None),
    ("MAX_RATE", 12, LegacyValue::Int),
    ("TABLESPACE_MAP", 12, LegacyValue::None),
    ("NOVERIFY_CHECKSUMS", 12, LegacyValue::None),
    ("MANIFEST", 13, LegacyValue::Str),
    ("MANIFEST_CHECKSUMS", 13, LegacyValue::Str),
];

/// The first major whose BASE_BACKUP takes a parenthesized option list, and no keywords.
const PARENTHESIZED_BASE_BACKUP: u32 = 15;

#[derive(Clone, Copy)]
enum LegacyValue {
    None,
    Str,
    Int,
}

/// The longest number an out-of-range error quotes in full.
const MAX_QUOTED_DIGITS: usize = 20;

/// Parses one command as a walsender of PostgreSQL `major` would; see
/// [`ReplicationCommand::parse_as`].
pub(super) fn parse(text: &str, major: u32) -> Parsed {
    let mut parser = Parser {
        lexer: Lexer::new(text),
        peeked: None,
        major,
    };
    let command = parser.command(text);
    Parsed {
        command,
        notices: parser.lexer.into_notices(),
    }
}

/// A command whose run-time checks are still to be made once it has fully parsed.
enum Body {
    Ready(ReplicationCommand),
    CreateSlot {
        name: String,
        temporary: bool,
        plugin: Option<String>,
        options: Vec<GenericOption>,
    },
}

struct Parser<'a> {
    lexer: Lexer<'a>,
    peeked: Option<Token<'a>>,
    /// The PostgreSQL major whose grammar applies.
    major: u32,
}

impl<'a> Parser<'a> {
    fn next(&mut self) -> Result<Token<'a>, ParseError> {
        match self.peeked.take() {
            Some(token) => Ok(token),
            None => self.lexer.next_token(),
        }
    }

    /// Consumes the next token when `f` turns it into a value, else leaves it for later.
    fn take<T>(
        &mut self,
        f: impl FnOnce(Token<'a>) -> Result<T, Token<'a>>,
    ) -> Result<Option<T>, ParseError> {
        match f(self.next()?) {
            Ok(value) => Ok(Some(value)),
            Err(token) => {
                self.peeked = Some(token);
                Ok(None)
            }
        }
    }

    /// Consumes the next token if it is `want`.
    fn eat(&mut self, want: Token<'static>) -> Result<bool, ParseError> {
        let hit = self.take(|t| if t == want { Ok(()) } else { Err(t) })?;
        Ok(hit.is_some())
    }

    fn eat_keyword(&mut self, keyword: Keyword) -> Result<bool, ParseError> {
        self.eat(Token::Keyword(keyword))
    }

    fn eat_char(&mut self, c: char) -> Result<bool, ParseError> {
        self.eat(Token::Char(c))
    }

    fn expect_char(&mut self, c: char) -> Result<(), ParseError> {
        expect(self.eat_char(c)?)
    }

    fn ident(&mut self) -> Result<String, ParseError> {
        match self.next()? {
            Token::Ident { name, .. } => Ok(name),
            _ => Err(ParseError::Syntax),
        }
    }

    fn command(&mut self, text: &str) -> Result<ReplicationCommand, ParseError> {
        let Token::Keyword(keyword) = self.next()? else {
            return Ok(ReplicationCommand::Sql(text.to_owned()));
        };
        let Some(body) = self.body(keyword)? else {
            return Ok(ReplicationCommand::Sql(text.to_owned()));
        };
        self.eat_char(';')?;
        expect(self.next()? == Token::End)?;
        match body {
            Body::Ready(command) => Ok(command),
            Body::CreateSlot {
                name,
                temporary,
                plugin,
                options,
            } => Ok(ReplicationCommand::CreateReplicationSlot {
                name,
                temporary,
                kind: slot_kind(plugin, &options, self.major)?,
            }),
        }
    }

    /// The command a first keyword starts, or `None` when that keyword starts none
    /// (`replication_scanner_is_replication_command`), as in a major before the command's.
    fn body(&mut self, keyword: Keyword) -> Result<Option<Body>, ParseError> {
        use ReplicationCommand as C;
        let since = match keyword {
            Keyword::ReadReplicationSlot => 15,
            Keyword::AlterReplicationSlot | Keyword::UploadManifest => 17,
            _ => 0,
        };
        if self.major < since {
            return Ok(None);
        }
        let command = match keyword {
            Keyword::IdentifySystem => C::IdentifySystem,
            Keyword::Show => C::Show(self.var_name()?),
            Keyword::ReadReplicationSlot => C::ReadReplicationSlot(self.var_name()?),
            Keyword::TimelineHistory => C::TimelineHistory(self.timeline()?),
            Keyword::CreateReplicationSlot => return self.create_slot().map(Some),
            Keyword::DropReplicationSlot => C::DropReplicationSlot {
                name: self.ident()?,
                wait: self.eat_keyword(Keyword::Wait)?,
            },
            Keyword::AlterReplicationSlot => C::AlterReplicationSlot {
                name: self.ident()?,
                options: self.parenthesized_options()?,
            },
            Keyword::StartReplication => self.start_replication()?,
            Keyword::BaseBackup => self.base_backup()?,
            Keyword::UploadManifest => C::UploadManifest,
            _ => return Ok(None),
        };
        Ok(Some(Body::Ready(command)))
    }

    /// `var_name: IDENT | var_name '.' IDENT`.
    fn var_name(&mut self) -> Result<String, ParseError> {
        let mut name = self.ident()?;
        while self.eat_char('.')? {
            name.push('.');
            name.push_str(&self.ident()?);
        }
        Ok(name)
    }

    fn uconst(&mut self) -> Result<u32, ParseError> {
        match self.next()? {
            Token::UConst(digits) => uint(digits),
            _ => Err(ParseError::Syntax),
        }
    }

    /// A `UCONST` that must not be 0 (`if ($2 <= 0) … "invalid timeline %u"`).
    fn timeline(&mut self) -> Result<TimelineId, ParseError> {
        TimelineId::new(self.uconst()?).ok_or(ParseError::InvalidTimeline)
    }

    fn recptr(&mut self) -> Result<Lsn, ParseError> {
        match self.next()? {
            Token::RecPtr(text) => text.parse().map_err(|_| ParseError::InvalidStartLocation),
            _ => Err(ParseError::Syntax),
        }
    }

    /// `IDENT [TEMPORARY] PHYSICAL opts | IDENT [TEMPORARY] LOGICAL IDENT opts`.
    fn create_slot(&mut self) -> Result<Body, ParseError> {
        let name = self.ident()?;
        let temporary = self.eat_keyword(Keyword::Temporary)?;
        let plugin = match self.next()? {
            Token::Keyword(Keyword::Physical) => None,
            Token::Keyword(Keyword::Logical) => Some(self.ident()?),
            _ => return Err(ParseError::Syntax),
        };
        let options = if self.eat_char('(')? {
            // The parenthesized options came with 15.
            expect(self.major >= 15)?;
            self.option_list()?
        } else {
            self.legacy_slot_options()?
        };
        Ok(Body::CreateSlot {
            name,
            temporary,
            plugin,
            options,
        })
    }

    /// `create_slot_legacy_opt_list`: the bare keywords of PostgreSQL 10–14, in any order.
    fn legacy_slot_options(&mut self) -> Result<Vec<GenericOption>, ParseError> {
        let mut options = Vec::new();
        let two_phase = self.major >= 15;
        while let Some((name, value)) = self.take(|t| match t {
            Token::Keyword(Keyword::ExportSnapshot) => Ok(("snapshot", Some("export"))),
            Token::Keyword(Keyword::NoexportSnapshot) => Ok(("snapshot", Some("nothing"))),
            Token::Keyword(Keyword::UseSnapshot) => Ok(("snapshot", Some("use"))),
            Token::Keyword(Keyword::ReserveWal) => Ok(("reserve_wal", None)),
            Token::Keyword(Keyword::TwoPhase) if two_phase => Ok(("two_phase", None)),
            other => Err(other),
        })? {
            options.push(GenericOption {
                name: name.to_owned(),
                value: value.map(|v| OptionValue::Str(v.to_owned())),
            });
        }
        Ok(options)
    }

    /// `START_REPLICATION [SLOT IDENT] [PHYSICAL] RECPTR [TIMELINE UCONST]`, or
    /// `START_REPLICATION SLOT IDENT LOGICAL RECPTR [( plugin options )]`.
    fn start_replication(&mut self) -> Result<ReplicationCommand, ParseError> {
        let slot = if self.eat_keyword(Keyword::Slot)? {
            Some(self.ident()?)
        } else {
            None
        };
        if let Some(slot) = &slot
            && self.eat_keyword(Keyword::Logical)?
        {
            return Ok(ReplicationCommand::StartLogicalReplication {
                slot: slot.clone(),
                start: self.recptr()?,
                options: self.plugin_options()?,
            });
        }
        self.eat_keyword(Keyword::Physical)?;
        let start = self.recptr()?;
        let timeline = if self.eat_keyword(Keyword::Timeline)? {
            Some(self.timeline()?)
        } else {
            None
        };
        Ok(ReplicationCommand::StartReplication {
            slot,
            start,
            timeline,
        })
    }

    /// `plugin_options: '(' IDENT [SCONST] [, …] ')' | empty`.
    fn plugin_options(&mut self) -> Result<Vec<(String, Option<String>)>, ParseError> {
        let mut options = Vec::new();
        if !self.eat_char('(')? {
            return Ok(options);
        }
        loop {
            let name = self.ident()?;
            let value = self.take(|t| match t {
                Token::Str(value) => Ok(value),
                other => Err(other),
            })?;
            options.push((name, value));
            if !self.eat_char(',')? {
                self.expect_char(')')?;
                return Ok(options);
            }
        }
    }

    /// `BASE_BACKUP [( options )]` from PostgreSQL 15, or the keyword list of PostgreSQL
    /// 11–14 (`MANIFEST*` from 13) before it: each major accepts only its own form
    /// **\[obs\]** (12.22, 14.23, 15.18, 16.14, 17).
    fn base_backup(&mut self) -> Result<ReplicationCommand, ParseError> {
        if self.major >= PARENTHESIZED_BASE_BACKUP {
            let options = if self.eat_char('(')? {
                self.option_list()?
            } else {
                Vec::new()
            };
            return Ok(ReplicationCommand::BaseBackup {
                options,
                legacy: false,
            });
        }
        let major = self.major;
        let mut options = Vec::new();
        while let Some((name, kind)) = self.take(|t| {
            let found = match &t {
                Token::Ident { raw, .. } => LEGACY_BASE_BACKUP
                    .iter()
                    .find(|(word, since, _)| word == raw && *since <= major),
                _ => None,
            };
            found.map(|&(word, _, kind)| (word, kind)).ok_or(t)
        })? {
            let value = match kind {
                LegacyValue::None => None,
                LegacyValue::Int => Some(OptionValue::Int(self.uconst()?)),
                LegacyValue::Str => match self.next()? {
                    Token::Str(s) => Some(OptionValue::Str(s)),
                    _ => return Err(ParseError::Syntax),
                },
            };
            options.push(GenericOption {
                name: name.to_ascii_lowercase(),
                value,
            });
        }
        let legacy = !options.is_empty();
        Ok(ReplicationCommand::BaseBackup { options, legacy })
    }

    /// `'(' generic_option_list ')'` after the parenthesis: at least one option.
    fn option_list(&mut self) -> Result<Vec<GenericOption>, ParseError> {
        let mut options = Vec::new();
        loop {
            options.push(self.generic_option()?);
            if !self.eat_char(',')? {
                self.expect_char(')')?;
                return Ok(options);
            }
        }
    }

    fn parenthesized_options(&mut self) -> Result<Vec<GenericOption>, ParseError> {
        self.expect_char('(')?;
        self.option_list()
    }

    /// `generic_option: ident_or_keyword [IDENT | SCONST | UCONST]`.
    fn generic_option(&mut self) -> Result<GenericOption, ParseError> {
        let name = match self.next()? {
            Token::Ident { name, .. } => name,
            Token::Keyword(keyword) => keyword.option_name().ok_or(ParseError::Syntax)?.to_owned(),
            _ => return Err(ParseError::Syntax),
        };
        let value = self.take(|t| match t {
            Token::Ident { name, .. } => Ok(Ok(OptionValue::Ident(name))),
            Token::Str(s) => Ok(Ok(OptionValue::Str(s))),
            Token::UConst(digits) => Ok(uint(digits).map(OptionValue::Int)),
            other => Err(other),
        })?;
        Ok(GenericOption {
            name,
            value: value.transpose()?,
        })
    }
}

fn expect(ok: bool) -> Result<(), ParseError> {
    if ok { Ok(()) } else { Err(ParseError::Syntax) }
}

/// A `UCONST` as a `u32`; PostgreSQL's `strtoul` wraps what the relay refuses.
fn uint(digits: &str) -> Result<u32, ParseError> {
    digits.parse().map_err(|_| {
        let mut quoted: String = digits.chars().take(MAX_QUOTED_DIGITS).collect();
        if digits.len() > MAX_QUOTED_DIGITS {
            quoted.push_str("...");
        }
        ParseError::OutOfRange(quoted)
    })
}
