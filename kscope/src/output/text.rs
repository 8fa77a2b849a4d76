//! Text from outside kscope, as a table cell or a JSON string, and the
//! base64 that keeps the bytes JSON cannot: the encoders behind
//! [`Row`](super::Row). They write into the caller's writer and allocate
//! nothing unless the bytes are not UTF-8.

use std::io::{self, Write};

/// Standard base64 (RFC 4648 §4) with padding, written in chunks of at most
/// 64 output bytes, without allocating.
pub(crate) fn write_base64(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(48) {
        let mut buf = [0u8; 64];
        let mut n = 0;
        for triple in chunk.chunks(3) {
            let b = [
                triple[0],
                triple.get(1).copied().unwrap_or(0),
                triple.get(2).copied().unwrap_or(0),
            ];
            let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for (k, slot) in buf[n..n + 4].iter_mut().enumerate() {
                *slot = if k <= triple.len() {
                    ALPHABET[((v >> (18 - 6 * k)) & 63) as usize]
                } else {
                    b'='
                };
            }
            n += 4;
        }
        w.write_all(&buf[..n])?;
    }
    Ok(())
}

/// Decodes standard padded base64 (what [`write_base64`] writes), for
/// consumers of `*_b64` members and for tests; None if `s` is not that.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let quads = bytes.len() / 4;
    for (qi, q) in bytes.chunks(4).enumerate() {
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && qi + 1 != quads) {
            return None;
        }
        let mut v = 0u32;
        for &c in &q[..4 - pad] {
            v = (v << 6) | val(c)?;
        }
        v <<= 6 * pad;
        out.extend_from_slice(&v.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

/// Writes `bytes` as a JSON string (quotes included). Invalid UTF-8 becomes
/// U+FFFD (allocating only then): [`Row::text`](super::Row::text) adds the
/// `_b64` member that keeps the bytes.
pub(crate) fn write_json_str(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let s = String::from_utf8_lossy(bytes);
    w.write_all(b"\"")?;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let esc: Option<&[u8]> = match c {
            '"' => Some(b"\\\""),
            '\\' => Some(b"\\\\"),
            '\n' => Some(b"\\n"),
            '\r' => Some(b"\\r"),
            '\t' => Some(b"\\t"),
            c if (c as u32) < 0x20 => None,
            _ => continue,
        };
        w.write_all(&s.as_bytes()[start..i])?;
        match esc {
            Some(e) => w.write_all(e)?,
            None => write!(w, "\\u{:04x}", c as u32)?,
        }
        start = i + c.len_utf8();
    }
    w.write_all(&s.as_bytes()[start..])?;
    w.write_all(b"\"")
}

/// Writes `bytes` for a table cell: invalid UTF-8 as U+FFFD, control
/// characters as `?`, so a hostile path cannot break the table.
pub(crate) fn write_text(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let s = String::from_utf8_lossy(bytes);
    if !s.chars().any(char::is_control) {
        return w.write_all(s.as_bytes());
    }
    for c in s.chars() {
        if c.is_control() {
            w.write_all(b"?")?;
        } else {
            write!(w, "{c}")?;
        }
    }
    Ok(())
}

/// Columns `bytes` takes in a table cell, as [`write_text`] writes them:
/// one per character, invalid UTF-8 counted as U+FFFD.
pub(crate) fn text_width(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.chars().count(),
        Err(_) => String::from_utf8_lossy(bytes).chars().count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_quotes_controls_and_bad_utf8() {
        let mut v = Vec::new();
        write_json_str(&mut v, b"a\"b\\c\nd\x01e\xffz").expect("write");
        let s = String::from_utf8(v).expect("utf8");
        assert_eq!(s, "\"a\\\"b\\\\c\\nd\\u0001e\u{fffd}z\"");
        let parsed: String = serde_json::from_str(&s).expect("valid JSON");
        assert_eq!(parsed, "a\"b\\c\nd\u{1}e\u{fffd}z");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        // RFC 4648 section 10.
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            let mut v = Vec::new();
            write_base64(&mut v, raw.as_bytes()).expect("write");
            assert_eq!(String::from_utf8(v).expect("ascii"), enc);
            assert_eq!(base64_decode(enc).as_deref(), Some(raw.as_bytes()));
        }
    }

    #[test]
    fn base64_decoding_refuses_what_is_not_padded_base64() {
        for bad in ["Zg", "Zg=", "Z===", "Zg==Zg==", "Zm9v!A==", "é"] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn text_cells_neutralize_control_characters() {
        let mut v = Vec::new();
        write_text(&mut v, b"/tmp/a\nb\tc").expect("write");
        assert_eq!(v, b"/tmp/a?b?c");
    }
}
