//! A bounds-checked big-endian reader over a message body, the counterpart of PostgreSQL's
//! `pqformat.c` (`pq_getmsgint`, `pq_getmsgbytes`, `pq_getmsgstring`, `pq_getmsgend`).
//!
//! Every read checks the remaining length first and fails with [`WireError::Short`] instead of
//! panicking; counts announced by a peer are checked against the bytes actually present before
//! anything is allocated for them.

use super::error::WireError;

/// A cursor over a borrowed message body. Reads are big-endian, like every integer on the wire.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    consumed: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, consumed: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes read so far, i.e. the offset of the next read in the original buffer.
    pub fn position(&self) -> usize {
        self.consumed
    }

    /// The next `n` bytes.
    ///
    /// # Errors
    /// [`WireError::Short`] if fewer than `n` bytes remain.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let (head, tail) = self.buf.split_at_checked(n).ok_or(WireError::Short {
            needed: n,
            remaining: self.buf.len(),
        })?;
        self.advance_to(tail, n);
        Ok(head)
    }

    /// The next `N` bytes as an array.
    ///
    /// # Errors
    /// [`WireError::Short`] if fewer than `N` bytes remain.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let (head, tail) = self.buf.split_first_chunk::<N>().ok_or(WireError::Short {
            needed: N,
            remaining: self.buf.len(),
        })?;
        self.advance_to(tail, N);
        Ok(*head)
    }

    fn advance_to(&mut self, tail: &'a [u8], n: usize) {
        self.buf = tail;
        self.consumed = self.consumed.saturating_add(n);
    }

    /// An Int8 / Byte1.
    ///
    /// # Errors
    /// [`WireError::Short`] at the end of the message.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        self.array::<1>().map(u8::from_be_bytes)
    }

    /// An Int16.
    ///
    /// # Errors
    /// [`WireError::Short`] if fewer than 2 bytes remain.
    pub fn i16(&mut self) -> Result<i16, WireError> {
        self.array().map(i16::from_be_bytes)
    }

    /// An unsigned 16-bit integer.
    ///
    /// # Errors
    /// [`WireError::Short`] if fewer than 2 bytes remain.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        self.array().map(u16::from_be_bytes)
    }

    /// An Int32.
    ///
    /// # Errors
    /// [`WireError::Short`] if fewer than 4 bytes remain.
    pub fn i32(&mut self) -> Result<i32, WireError> {
        self.array().map(i32::from_be_bytes)
    }

    /// An unsigned 32-bit integer (an OID or a transaction id).
    ///
    /// # Errors
    /// [`WireError::Short`] if fewer than 4 bytes remain.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_be_bytes)
    }

    /// An Int64.
    ///
    /// # Errors
    /// [`WireError::Short`] if fewer than 8 bytes remain.
    pub fn i64(&mut self) -> Result<i64, WireError> {
        self.array().map(i64::from_be_bytes)
    }

    /// An unsigned 64-bit integer (an LSN).
    ///
    /// # Errors
    /// [`WireError::Short`] if fewer than 8 bytes remain.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        self.array().map(u64::from_be_bytes)
    }

    /// A NUL-terminated string, without its terminator.
    ///
    /// # Errors
    /// [`WireError::UnterminatedString`] if no zero byte remains.
    pub fn cstr(&mut self) -> Result<&'a [u8], WireError> {
        let nul = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(WireError::UnterminatedString)?;
        let s = self.bytes(nul)?;
        self.u8()?;
        Ok(s)
    }

    /// A NUL-terminated UTF-8 string, without its terminator.
    ///
    /// # Errors
    /// [`WireError::UnterminatedString`] if no zero byte remains, [`WireError::InvalidUtf8`] if
    /// the bytes are not UTF-8.
    pub fn cstr_utf8(&mut self) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.cstr()?).map_err(|_| WireError::InvalidUtf8)
    }

    /// An Int32 length followed by that many bytes; length -1 is SQL NULL (`None`).
    ///
    /// # Errors
    /// [`WireError::InvalidValue`] for a length below -1, [`WireError::Short`] for a length
    /// beyond the end of the message.
    pub fn nullable_bytes(&mut self, field: &'static str) -> Result<Option<&'a [u8]>, WireError> {
        match self.i32()? {
            -1 => Ok(None),
            len => {
                let n = usize::try_from(len).map_err(|_| WireError::InvalidValue {
                    field,
                    value: i64::from(len),
                })?;
                self.bytes(n).map(Some)
            }
        }
    }

    /// An Int16 item count, checked so that `count * min_item_len` bytes are really present.
    /// The result is safe to pass to `Vec::with_capacity`.
    ///
    /// # Errors
    /// [`WireError::InvalidValue`] for a negative count, [`WireError::Short`] if the message is
    /// too small to hold that many items.
    pub fn count_i16(
        &mut self,
        field: &'static str,
        min_item_len: usize,
    ) -> Result<usize, WireError> {
        let n = self.i16()?;
        self.check_count(i64::from(n), field, min_item_len)
    }

    /// An Int32 item count, checked like [`Reader::count_i16`].
    ///
    /// # Errors
    /// As for [`Reader::count_i16`].
    pub fn count_i32(
        &mut self,
        field: &'static str,
        min_item_len: usize,
    ) -> Result<usize, WireError> {
        let n = self.i32()?;
        self.check_count(i64::from(n), field, min_item_len)
    }

    fn check_count(
        &self,
        n: i64,
        field: &'static str,
        min_item_len: usize,
    ) -> Result<usize, WireError> {
        let count = usize::try_from(n).map_err(|_| WireError::InvalidValue { field, value: n })?;
        let needed = count.saturating_mul(min_item_len);
        if needed > self.remaining() {
            return Err(WireError::Short {
                needed,
                remaining: self.remaining(),
            });
        }
        Ok(count)
    }

    /// Everything not yet read.
    pub fn rest(&mut self) -> &'a [u8] {
        let rest = self.buf;
        self.advance_to(&[], rest.len());
        rest
    }

    /// Ends the message: fails if bytes are left over (`pq_getmsgend`).
    ///
    /// # Errors
    /// [`WireError::Trailing`] if the message has unread bytes.
    pub fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing {
                extra: self.buf.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_big_endian() {
        let data = [
            0x01, 0xff, 0xfe, 0x12, 0x34, 0xff, 0xff, 0xff, 0xfe, 0x80, 0, 0, 1, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xfe, 0, 0, 0, 1, 0, 0, 0, 2,
        ];
        let mut r = Reader::new(&data);
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(r.i16().unwrap(), -2);
        assert_eq!(r.u16().unwrap(), 0x1234);
        assert_eq!(r.i32().unwrap(), -2);
        assert_eq!(r.u32().unwrap(), 0x8000_0001);
        assert_eq!(r.i64().unwrap(), -2);
        assert_eq!(r.position(), 21);
        assert_eq!(r.u64().unwrap(), (1 << 32) | 2);
        assert!(r.is_empty());
        r.finish().unwrap();
    }

    #[test]
    fn short_reads_fail_without_consuming() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(
            r.i32(),
            Err(WireError::Short {
                needed: 4,
                remaining: 3
            })
        );
        assert_eq!(r.remaining(), 3);
        assert!(r.bytes(4).is_err());
        assert_eq!(r.bytes(3).unwrap(), &[1, 2, 3]);
        assert_eq!(
            r.u8(),
            Err(WireError::Short {
                needed: 1,
                remaining: 0
            })
        );
    }

    #[test]
    fn cstrings() {
        let mut r = Reader::new(b"user\0\0bob");
        assert_eq!(r.cstr().unwrap(), b"user");
        assert_eq!(r.cstr_utf8().unwrap(), "");
        assert_eq!(r.cstr(), Err(WireError::UnterminatedString));
        assert_eq!(r.rest(), b"bob");
        assert_eq!(
            Reader::new(b"\xff\0").cstr_utf8(),
            Err(WireError::InvalidUtf8)
        );
    }

    #[test]
    fn finish_rejects_trailing_bytes() {
        let mut r = Reader::new(&[0, 0, 0, 1, 9]);
        r.i32().unwrap();
        assert_eq!(r.finish(), Err(WireError::Trailing { extra: 1 }));
    }

    #[test]
    fn nullable_bytes() {
        let mut r = Reader::new(&[
            0xff, 0xff, 0xff, 0xff, 0, 0, 0, 2, b'h', b'i', 0xff, 0xff, 0xff, 0xfe,
        ]);
        assert_eq!(r.nullable_bytes("len").unwrap(), None);
        assert_eq!(r.nullable_bytes("len").unwrap(), Some(&b"hi"[..]));
        assert_eq!(
            r.nullable_bytes("len"),
            Err(WireError::InvalidValue {
                field: "len",
                value: -2
            })
        );
        let mut huge = Reader::new(&[0x7f, 0xff, 0xff, 0xff, 1]);
        assert!(matches!(
            huge.nullable_bytes("len"),
            Err(WireError::Short { .. })
        ));
    }

    #[test]
    fn counts_are_checked_against_the_body() {
        assert_eq!(
            Reader::new(&[0, 2, 0, 0, 0, 0]).count_i16("n", 2).unwrap(),
            2
        );
        assert!(matches!(
            Reader::new(&[0x7f, 0xff, 0, 0]).count_i16("n", 4),
            Err(WireError::Short { .. })
        ));
        assert_eq!(
            Reader::new(&[0xff, 0xff]).count_i16("n", 4),
            Err(WireError::InvalidValue {
                field: "n",
                value: -1
            })
        );
        assert!(
            Reader::new(&[0x7f, 0xff, 0xff, 0xff])
                .count_i32("n", 1)
                .is_err()
        );
    }
}
