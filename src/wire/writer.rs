//! Helpers that write length-prefixed messages, the counterpart of PostgreSQL's
//! `pq_beginmessage` / `pq_endmessage`: the Int32 length (which counts itself) is patched in
//! once the body is written, and a failed body leaves the output buffer as it was.

use bytes::{BufMut, BytesMut};

use super::error::WireError;

/// Writes `tag` (if any), a length placeholder and the body, then patches the length.
/// On error the buffer is truncated back to where it was.
pub(crate) fn write_message<F>(
    out: &mut BytesMut,
    tag: Option<u8>,
    body: F,
) -> Result<(), WireError>
where
    F: FnOnce(&mut BytesMut) -> Result<(), WireError>,
{
    let start = out.len();
    if let Some(tag) = tag {
        out.put_u8(tag);
    }
    let len_at = out.len();
    out.put_i32(0);
    let result = body(out).and_then(|()| {
        let len = out.len().saturating_sub(len_at);
        let len = i32::try_from(len).map_err(|_| WireError::TooLong { len })?;
        if let Some(slot) = out.get_mut(len_at..len_at.saturating_add(4)) {
            slot.copy_from_slice(&len.to_be_bytes());
        }
        Ok(())
    });
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Writes `s` and a terminating zero byte; `s` itself must not contain one.
pub(crate) fn put_cstr(out: &mut BytesMut, s: &[u8], field: &'static str) -> Result<(), WireError> {
    if s.contains(&0) {
        return Err(WireError::EmbeddedNul { field });
    }
    out.put_slice(s);
    out.put_u8(0);
    Ok(())
}

/// Writes an Int16 item count.
pub(crate) fn put_count_i16(out: &mut BytesMut, n: usize) -> Result<(), WireError> {
    let n = i16::try_from(n).map_err(|_| WireError::TooLong { len: n })?;
    out.put_i16(n);
    Ok(())
}

/// Writes an Int32 length and the bytes, or -1 for SQL NULL.
pub(crate) fn put_nullable_bytes(
    out: &mut BytesMut,
    value: Option<&[u8]>,
) -> Result<(), WireError> {
    match value {
        None => out.put_i32(-1),
        Some(v) => {
            let len = i32::try_from(v.len()).map_err(|_| WireError::TooLong { len: v.len() })?;
            out.put_i32(len);
            out.put_slice(v);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_counts_itself_but_not_the_tag() {
        let mut out = BytesMut::new();
        write_message(&mut out, Some(b'Q'), |out| {
            put_cstr(out, b"IDENTIFY_SYSTEM", "query")
        })
        .unwrap();
        assert_eq!(&out[..], b"Q\0\0\0\x14IDENTIFY_SYSTEM\0");
        out.clear();
        write_message(&mut out, None, |out| {
            out.put_i32(80_877_103);
            Ok(())
        })
        .unwrap();
        assert_eq!(&out[..], &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
    }

    #[test]
    fn failed_body_leaves_buffer_unchanged() {
        let mut out = BytesMut::from(&b"keep"[..]);
        let err = write_message(&mut out, Some(b'Q'), |out| put_cstr(out, b"a\0b", "query"));
        assert_eq!(err, Err(WireError::EmbeddedNul { field: "query" }));
        assert_eq!(&out[..], b"keep");
    }

    #[test]
    fn counts_and_nullable_values() {
        let mut out = BytesMut::new();
        assert!(put_count_i16(&mut out, 40_000).is_err());
        put_count_i16(&mut out, 2).unwrap();
        put_nullable_bytes(&mut out, None).unwrap();
        put_nullable_bytes(&mut out, Some(b"1")).unwrap();
        assert_eq!(&out[..], &[0, 2, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, b'1']);
    }
}
