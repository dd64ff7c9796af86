//! Synchronous standbys behind the relay, decided as PostgreSQL decides them (`syncrep.c`,
//! `syncrep_gram.y`, `syncrep_scanner.l`), without I/O.
//!
//! `--synchronous-standby-names` takes PostgreSQL's syntax: `FIRST k (a, b, c)` (priority),
//! `ANY k (a, b, c)` (quorum), `k (a, b)` and a bare list `a, b` (priority, the latter with
//! k = 1), `*` matching any name, names matched without regard to case, double quotes for
//! names that are not identifiers. Over the relay's streaming downstreams (`catchup` ones
//! and ones that have not reported a flush position do not count, as in
//! `SyncRepGetCandidateStandbys`):
//! - priority: the k standbys whose names come first in the list (ties by connection order)
//!   are synchronous, and each position is the oldest among them
//!   (`SyncRepGetOldestSyncRecPtr`);
//! - quorum: each position is the k-th newest among all listed standbys
//!   (`SyncRepGetNthLatestSyncRecPtr`).
//!
//! With fewer than k such standbys nothing is acknowledged, and commits on the upstream wait,
//! as they wait on PostgreSQL. What the relay acknowledges never passes its own write and
//! durable ends, and never moves back while a connection lasts.

use std::fmt;

use crate::types::Lsn;

/// How the synchronous standbys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMethod {
    /// `FIRST k (…)`: the first k by list order.
    Priority,
    /// `ANY k (…)`: any k.
    Quorum,
}

/// A parsed `synchronous_standby_names`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStandbyNames {
    method: SyncMethod,
    num_sync: usize,
    names: Vec<String>,
}

/// Why a `synchronous_standby_names` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for parameter \"synchronous_standby_names\": \"{value}\": {reason}")]
pub struct SyncNamesError {
    value: String,
    reason: String,
}

/// One downstream stream as the decision sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standby<'a> {
    /// Its `application_name`.
    pub application_name: &'a str,
    /// Whether it is `streaming` (not `catchup`).
    pub streaming: bool,
    /// The positions it last reported.
    pub positions: AckPositions,
}

/// Write, flush and apply positions, as a standby status update carries them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AckPositions {
    /// Written.
    pub write: Lsn,
    /// Flushed.
    pub flush: Lsn,
    /// Applied.
    pub apply: Lsn,
}

impl AckPositions {
    /// Each position no further than `write` and `durable`: the relay's own ends.
    pub fn capped(self, write: Lsn, durable: Lsn) -> AckPositions {
        AckPositions {
            write: self.write.min(write),
            flush: self.flush.min(durable),
            apply: self.apply.min(durable),
        }
    }

    /// Each position the later of the two: what was acknowledged never moves back.
    pub fn max(self, other: AckPositions) -> AckPositions {
        AckPositions {
            write: self.write.max(other.write),
            flush: self.flush.max(other.flush),
            apply: self.apply.max(other.apply),
        }
    }
}

/// What the synchronous standbys allow the relay to acknowledge now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyncAck {
    /// No synchronous standbys are configured: the relay acknowledges what it wrote and made
    /// durable itself.
    #[default]
    Off,
    /// Fewer standbys qualify than are required: nothing more is acknowledged.
    Short {
        /// How many are required.
        required: usize,
        /// How many qualify now.
        available: usize,
    },
    /// The positions the synchronous standbys hold.
    Held(AckPositions),
}

impl SyncStandbyNames {
    /// How the standbys are chosen.
    pub fn method(&self) -> SyncMethod {
        self.method
    }

    /// How many must hold WAL before it is acknowledged.
    pub fn num_sync(&self) -> usize {
        self.num_sync
    }

    /// The names, as listed.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// `SyncRepGetStandbyPriority`: 1 for the first listed name `application_name` matches
    /// (or `*`), 2 for the second, …; every match is 1 in a quorum; `None` for no match.
    pub fn priority(&self, application_name: &str) -> Option<usize> {
        let i = self
            .names
            .iter()
            .position(|n| n == "*" || n.eq_ignore_ascii_case(application_name))?;
        Some(match self.method {
            SyncMethod::Priority => i + 1,
            SyncMethod::Quorum => 1,
        })
    }

    /// What `standbys` (in connection order) allow to acknowledge.
    pub fn decide(&self, standbys: &[Standby<'_>]) -> SyncAck {
        let mut candidates: Vec<(usize, AckPositions)> = standbys
            .iter()
            .filter(|s| s.streaming && s.positions.flush != Lsn::INVALID)
            .filter_map(|s| Some((self.priority(s.application_name)?, s.positions)))
            .collect();
        if candidates.len() < self.num_sync {
            return SyncAck::Short {
                required: self.num_sync,
                available: candidates.len(),
            };
        }
        let k = self.num_sync;
        match self.method {
            SyncMethod::Priority => {
                // A stable sort keeps connection order among equal priorities.
                candidates.sort_by_key(|(priority, _)| *priority);
                let chosen = candidates.iter().take(k).map(|(_, p)| *p);
                let oldest = chosen.reduce(|a, b| AckPositions {
                    write: a.write.min(b.write),
                    flush: a.flush.min(b.flush),
                    apply: a.apply.min(b.apply),
                });
                oldest.map_or(
                    SyncAck::Short {
                        required: k,
                        available: 0,
                    },
                    SyncAck::Held,
                )
            }
            SyncMethod::Quorum => {
                let nth = |pick: fn(&AckPositions) -> Lsn| {
                    let mut all: Vec<Lsn> = candidates.iter().map(|(_, p)| pick(p)).collect();
                    all.sort_unstable_by(|a, b| b.cmp(a));
                    all.get(k.saturating_sub(1))
                        .copied()
                        .unwrap_or(Lsn::INVALID)
                };
                SyncAck::Held(AckPositions {
                    write: nth(|p| p.write),
                    flush: nth(|p| p.flush),
                    apply: nth(|p| p.apply),
                })
            }
        }
    }
}

impl std::str::FromStr for SyncStandbyNames {
    type Err = SyncNamesError;

    /// Parses a non-empty value (an empty one means no synchronous standbys: the caller
    /// keeps `None`).
    fn from_str(value: &str) -> Result<Self, SyncNamesError> {
        let err = |reason: String| SyncNamesError {
            value: value.to_owned(),
            reason,
        };
        let tokens = scan(value).map_err(err)?;
        parse(&tokens).map_err(err)
    }
}

impl fmt::Display for SyncStandbyNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let method = match self.method {
            SyncMethod::Priority => "FIRST",
            SyncMethod::Quorum => "ANY",
        };
        let names: Vec<String> = self
            .names
            .iter()
            .map(|n| {
                if n == "*" || is_identifier(n) {
                    n.clone()
                } else {
                    format!("\"{}\"", n.replace('"', "\"\""))
                }
            })
            .collect();
        write!(f, "{method} {} ({})", self.num_sync, names.join(", "))
    }
}

/// A token of `syncrep_scanner.l`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Name(String),
    Num(String),
    Any,
    First,
    Open,
    Close,
    Comma,
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || !c.is_ascii())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$' || !c.is_ascii())
        && !s.eq_ignore_ascii_case("any")
        && !s.eq_ignore_ascii_case("first")
}

fn scan(value: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = value.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' | '\t' | '\n' | '\r' | '\x0c' => {
                chars.next();
            }
            '(' | ')' | ',' | '*' => {
                chars.next();
                tokens.push(match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    ',' => Token::Comma,
                    _ => Token::Name("*".into()),
                });
            }
            '"' => {
                chars.next();
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            name.push('"');
                        }
                        Some('"') => break,
                        Some(c) => name.push(c),
                        None => return Err("unterminated quoted identifier".into()),
                    }
                }
                tokens.push(Token::Name(name));
            }
            c if c.is_ascii_digit() => {
                let mut num = String::new();
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    num.push(d);
                    chars.next();
                }
                tokens.push(Token::Num(num));
            }
            c if c.is_ascii_alphabetic() || c == '_' || !c.is_ascii() => {
                let mut word = String::new();
                while let Some(w) = chars.peek().copied().filter(|w| {
                    w.is_ascii_alphanumeric() || *w == '_' || *w == '$' || !w.is_ascii()
                }) {
                    word.push(w);
                    chars.next();
                }
                tokens.push(if word.eq_ignore_ascii_case("any") {
                    Token::Any
                } else if word.eq_ignore_ascii_case("first") {
                    Token::First
                } else {
                    Token::Name(word)
                });
            }
            other => return Err(format!("syntax error at or near \"{other}\"")),
        }
    }
    Ok(tokens)
}

fn parse(tokens: &[Token]) -> Result<SyncStandbyNames, String> {
    let (method, rest) = match tokens.first() {
        Some(Token::Any) => (
            Some(SyncMethod::Quorum),
            tokens.get(1..).unwrap_or_default(),
        ),
        Some(Token::First) => (
            Some(SyncMethod::Priority),
            tokens.get(1..).unwrap_or_default(),
        ),
        Some(_) => (None, tokens),
        None => return Err("syntax error at end of input".into()),
    };
    let counted = matches!(
        (rest.first(), rest.get(1)),
        (Some(Token::Num(_)), Some(Token::Open))
    );
    if method.is_some() && !counted {
        return Err(near(rest.get(1).or(rest.first())));
    }
    if !counted {
        let names = name_list(rest)?;
        return Ok(SyncStandbyNames {
            method: SyncMethod::Priority,
            num_sync: 1,
            names,
        });
    }
    let Some(Token::Num(num)) = rest.first() else {
        return Err(near(rest.first()));
    };
    let Some(Token::Close) = rest.last() else {
        return Err(near(None));
    };
    let inner = rest
        .get(2..rest.len().saturating_sub(1))
        .unwrap_or_default();
    let names = name_list(inner)?;
    let num_sync: usize = num
        .parse()
        .map_err(|_| format!("number of synchronous standbys ({num}) is out of range"))?;
    if num_sync == 0 {
        return Err(format!(
            "number of synchronous standbys ({num_sync}) must be greater than zero"
        ));
    }
    Ok(SyncStandbyNames {
        method: method.unwrap_or(SyncMethod::Priority),
        num_sync,
        names,
    })
}

/// `name [, name …]`, where a number is a name too.
fn name_list(tokens: &[Token]) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut expect_name = true;
    for t in tokens {
        match (expect_name, t) {
            (true, Token::Name(n) | Token::Num(n)) => names.push(n.clone()),
            (false, Token::Comma) => {}
            _ => return Err(near(Some(t))),
        }
        expect_name = !expect_name;
    }
    if expect_name {
        return Err(near(None));
    }
    Ok(names)
}

fn near(t: Option<&Token>) -> String {
    let text = match t {
        None => return "syntax error at end of input".into(),
        Some(Token::Name(n) | Token::Num(n)) => n.as_str(),
        Some(Token::Any) => "ANY",
        Some(Token::First) => "FIRST",
        Some(Token::Open) => "(",
        Some(Token::Close) => ")",
        Some(Token::Comma) => ",",
    };
    format!("syntax error at or near \"{text}\"")
}

#[cfg(test)]
mod tests;
