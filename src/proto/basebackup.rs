//! The answer to a relayed BASE_BACKUP, as bytes pass from the upstream to the client: where
//! its messages begin and end, so that the relay forwards exactly the answer (up to and
//! including its ReadyForQuery) and knows whether a connection lost mid-answer was lost at a
//! message boundary, after an ErrorResponse, or inside a message.
//!
//! The scanner holds at most a message header (5 bytes); payloads, CopyData of archives
//! above all, pass through without being kept. It accepts the message types a walsender
//! sends for BASE_BACKUP (`basebackup_copy.c` from 15, `basebackup.c` of 12–14: results `T`
//! `D` `C`, CopyOutResponse `H`, CopyData `d`, CopyDone `c`, and anywhere `N`, `S`, `E`),
//! then `Z`. Any other type, a length under 4, or a message other than CopyData longer than
//! [`MAX_SMALL_MESSAGE`] is a broken upstream. Which message may come in which phase is not
//! checked yet.

use crate::wire::WireError;

/// The longest message other than CopyData the scanner lets through.
pub const MAX_SMALL_MESSAGE: usize = 1 << 20;

/// The message types of a BASE_BACKUP answer.
const ANSWER_TYPES: &[u8] = b"TDCHdcNSEZ";

/// Where the scan is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Position {
    /// Reading a header; the bytes of it seen so far (at most 4).
    Header(Vec<u8>),
    /// Inside a payload of type `tag`, this many bytes still to come.
    Payload { tag: u8, left: usize },
    /// The `Z` has passed: the answer is complete.
    Done,
}

/// What [`AnswerScanner::scan`] found in a chunk of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    /// How many bytes of the chunk belong to the answer (all of them unless its `Z` ended
    /// inside the chunk).
    pub answer: usize,
    /// Whether the answer is complete.
    pub done: bool,
}

/// Follows the messages of one BASE_BACKUP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerScanner {
    position: Position,
    /// The type of the last complete message.
    last: Option<u8>,
    /// An ErrorResponse was among the messages.
    errors: bool,
}

impl Default for AnswerScanner {
    fn default() -> Self {
        AnswerScanner {
            position: Position::Header(Vec::new()),
            last: None,
            errors: false,
        }
    }
}

impl AnswerScanner {
    /// A scanner at the start of an answer.
    pub fn new() -> AnswerScanner {
        AnswerScanner::default()
    }

    /// Takes the next bytes from the upstream.
    ///
    /// # Errors
    /// A message type that has no place in the answer, or a length out of bounds.
    pub fn scan(&mut self, mut bytes: &[u8]) -> Result<Scanned, WireError> {
        let total = bytes.len();
        while let Some((&first, rest)) = bytes.split_first() {
            match &mut self.position {
                Position::Done => break,
                Position::Header(header) if header.len() < 4 => {
                    header.push(first);
                    bytes = rest;
                }
                Position::Header(header) => {
                    let mut all = [0u8; 5];
                    for (slot, b) in all.iter_mut().zip(header.iter().chain([&first])) {
                        *slot = *b;
                    }
                    bytes = rest;
                    self.position = header_to_payload(all)?;
                }
                Position::Payload { left, .. } => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = bytes.get(n..).unwrap_or_default();
                }
            }
            self.complete_message();
        }
        Ok(Scanned {
            answer: total - bytes.len(),
            done: self.position == Position::Done,
        })
    }

    /// Ends a payload that has no bytes left.
    fn complete_message(&mut self) {
        if let Position::Payload { tag, left: 0 } = self.position {
            self.last = Some(tag);
            self.errors |= tag == b'E';
            self.position = if tag == b'Z' {
                Position::Done
            } else {
                Position::Header(Vec::new())
            };
        }
    }

    /// Whether the bytes so far end exactly at a message boundary.
    pub fn at_boundary(&self) -> bool {
        matches!(&self.position, Position::Header(h) if h.is_empty())
            || self.position == Position::Done
    }

    /// Whether the last complete message was an ErrorResponse.
    pub fn after_error(&self) -> bool {
        self.last == Some(b'E')
    }

    /// Whether any complete message so far was an ErrorResponse: the backup failed.
    pub fn saw_error(&self) -> bool {
        self.errors
    }

    /// Whether the answer is complete.
    pub fn is_done(&self) -> bool {
        self.position == Position::Done
    }
}

/// The payload a complete header announces.
fn header_to_payload(header: [u8; 5]) -> Result<Position, WireError> {
    let [tag, len @ ..] = header;
    let announced = i32::from_be_bytes(len);
    if !ANSWER_TYPES.contains(&tag) {
        return Err(WireError::UnknownBackendTag(tag));
    }
    let max = if tag == b'd' {
        usize::MAX
    } else {
        MAX_SMALL_MESSAGE
    };
    match usize::try_from(announced) {
        Ok(len) if (4..=max).contains(&len) => Ok(Position::Payload { tag, left: len - 4 }),
        _ => Err(WireError::FrameLength {
            tag,
            len: announced,
            max,
        }),
    }
}

/// The fuzz property of the scanner: any bytes scan or fail without panicking, never more
/// bytes are taken than given, and the same bytes cut in two scan to the same outcome.
#[cfg(any(fuzzing, test))]
pub fn fuzz_answer_scanner(data: &[u8]) {
    let whole = AnswerScanner::new().scan(data);
    if let Ok(scanned) = &whole {
        assert!(scanned.answer <= data.len());
    }
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let (head, tail) = data.split_at(cut);
    let mut split = AnswerScanner::new();
    let outcome = split.scan(head).and_then(|first| {
        if first.done {
            return Ok(first);
        }
        split.scan(tail).map(|second| Scanned {
            answer: first.answer + second.answer,
            done: second.done,
        })
    });
    assert_eq!(whole.is_ok(), outcome.is_ok());
    if let (Ok(a), Ok(b)) = (whole, outcome) {
        assert_eq!(a, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fuzz_property_holds_on_answers_and_noise() {
        let mut bytes = answer();
        fuzz_answer_scanner(&bytes);
        for cut in [0, 1, 5, 17, 40] {
            bytes.insert(0, cut);
            fuzz_answer_scanner(&bytes);
        }
        fuzz_answer_scanner(b"");
        fuzz_answer_scanner(&[7, b'W', 0, 0, 0, 4]);
    }

    fn message(tag: u8, payload: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&u32::try_from(payload.len() + 4).unwrap().to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    /// A PG15-shaped answer: start position, tablespaces, one archive, end, `Z`.
    fn answer() -> Vec<u8> {
        let mut a = Vec::new();
        for m in [
            message(b'T', b"start"),
            message(b'D', b"0/2000028"),
            message(b'C', b"SELECT\0"),
            message(b'H', &[0, 0, 0]),
            message(b'd', b"nbase.tar\0\0"),
            message(b'd', &[b'd'; 40_000]),
            message(b'N', b"notice"),
            message(b'd', b"p\0\0\0\0\0\0\0\x01"),
            message(b'c', b""),
            message(b'T', b"end"),
            message(b'C', b"BASE_BACKUP\0"),
            message(b'Z', b"I"),
        ] {
            a.extend_from_slice(&m);
        }
        a
    }

    #[test]
    fn an_answer_ends_at_its_ready_for_query() {
        let mut bytes = answer();
        let len = bytes.len();
        bytes.extend_from_slice(&message(b'Z', b"I"));
        let mut s = AnswerScanner::new();
        assert_eq!(
            s.scan(&bytes),
            Ok(Scanned {
                answer: len,
                done: true
            })
        );
        assert!(s.is_done() && s.at_boundary());
        // Nothing after the end belongs to the answer.
        assert_eq!(
            s.scan(b"more"),
            Ok(Scanned {
                answer: 0,
                done: true
            })
        );
    }

    #[test]
    fn byte_by_byte_is_the_same() {
        let bytes = answer();
        let mut s = AnswerScanner::new();
        for (i, b) in bytes.iter().enumerate() {
            let scanned = s.scan(std::slice::from_ref(b)).unwrap();
            assert_eq!(scanned.answer, 1);
            assert_eq!(scanned.done, i + 1 == bytes.len(), "at {i}");
        }
        // Cut inside a header, inside a payload, and at a boundary.
        let mut s = AnswerScanner::new();
        s.scan(bytes.get(..3).unwrap()).unwrap();
        assert!(!s.at_boundary());
        let mut s = AnswerScanner::new();
        s.scan(bytes.get(..8).unwrap()).unwrap();
        assert!(!s.at_boundary());
        let mut s = AnswerScanner::new();
        s.scan(&message(b'T', b"start")).unwrap();
        assert!(s.at_boundary() && !s.after_error() && !s.saw_error());
    }

    #[test]
    fn an_error_then_ready_for_query() {
        let mut s = AnswerScanner::new();
        s.scan(&message(b'E', b"SERROR\0")).unwrap();
        assert!(s.at_boundary() && s.after_error() && s.saw_error());
        let done = s.scan(&message(b'Z', b"I")).unwrap();
        assert!(done.done);
        assert!(!s.after_error() && s.saw_error());
    }

    #[test]
    fn what_has_no_place_in_the_answer_is_refused() {
        for bad in [
            message(b'W', b""),
            message(b'G', b""),
            message(b'R', b""),
            vec![b'T', 0, 0, 0, 3],
            vec![b'C', 0, 0x20, 0, 0],
        ] {
            assert!(AnswerScanner::new().scan(&bad).is_err(), "{bad:?}");
        }
        // CopyData may be long: its payload is never kept.
        let mut s = AnswerScanner::new();
        let scanned = s.scan(&[b'd', 0x7f, 0xff, 0xff, 0xff, 1, 2, 3]).unwrap();
        assert_eq!(scanned.answer, 8);
        assert!(!s.at_boundary());
    }
}
