//! Formatting helpers shared by the tracers: errno and open-flag names,
//! JSON string escaping, clock conversion. They write into a caller's
//! buffer and allocate nothing per event.

use std::io::{self, Write};

/// Name of a positive errno value, for the ones tracers commonly see.
pub fn errno_name(errno: i64) -> Option<&'static str> {
    Some(match errno as i32 {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ETXTBSY => "ETXTBSY",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ELOOP => "ELOOP",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNRESET => "ECONNRESET",
        libc::EISCONN => "EISCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        _ => return None,
    })
}

/// A call's result as a word: `ok`, an errno name, the number when it has
/// no name, or `unknown` where the probe cannot see it.
pub fn result_label(ret: Option<i32>) -> std::borrow::Cow<'static, str> {
    match ret {
        None => "unknown".into(),
        Some(0) => "ok".into(),
        Some(r) => errno_name(-i64::from(r)).map_or_else(|| r.to_string().into(), Into::into),
    }
}

const OPEN_FLAGS: &[(i32, &str)] = &[
    (libc::O_CREAT, "O_CREAT"),
    (libc::O_EXCL, "O_EXCL"),
    (libc::O_NOCTTY, "O_NOCTTY"),
    (libc::O_TRUNC, "O_TRUNC"),
    (libc::O_APPEND, "O_APPEND"),
    (libc::O_NONBLOCK, "O_NONBLOCK"),
    (libc::O_DSYNC, "O_DSYNC"),
    (libc::O_DIRECT, "O_DIRECT"),
    (libc::O_LARGEFILE, "O_LARGEFILE"),
    (libc::O_DIRECTORY, "O_DIRECTORY"),
    (libc::O_NOFOLLOW, "O_NOFOLLOW"),
    (libc::O_NOATIME, "O_NOATIME"),
    (libc::O_CLOEXEC, "O_CLOEXEC"),
    (libc::O_PATH, "O_PATH"),
];

/// Writes open flags symbolically: the access mode, then each set flag,
/// joined by `|`; unknown bits as hex. O_TMPFILE includes O_DIRECTORY's bit
/// and O_SYNC includes O_DSYNC's, so both are matched as wholes first.
pub fn write_open_flags(w: &mut impl Write, flags: u32) -> io::Result<()> {
    let mut f = flags as i32;
    w.write_all(match f & libc::O_ACCMODE {
        libc::O_RDONLY => b"O_RDONLY",
        libc::O_WRONLY => b"O_WRONLY",
        libc::O_RDWR => b"O_RDWR",
        _ => b"O_ACCMODE",
    })?;
    f &= !libc::O_ACCMODE;
    for (whole, name) in [(libc::O_TMPFILE, "O_TMPFILE"), (libc::O_SYNC, "O_SYNC")] {
        if f & whole == whole {
            write!(w, "|{name}")?;
            f &= !whole;
        }
    }
    for &(bit, name) in OPEN_FLAGS {
        if f & bit != 0 {
            write!(w, "|{name}")?;
            f &= !bit;
        }
    }
    if f != 0 {
        write!(w, "|{f:#x}")?;
    }
    Ok(())
}

/// The bytes of a NUL-terminated buffer up to its first NUL.
pub fn cstr(buf: &[u8]) -> &[u8] {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    &buf[..end]
}

/// Writes the JSON member `"key":"…"` for bytes from the kernel (a path, a
/// comm, an argument), losslessly.
///
/// JSON strings are Unicode, and file names, comms and arguments are bytes.
/// Valid UTF-8 (nearly always) is written as is, escaped as JSON requires.
/// Otherwise the string holds a readable form, each invalid sequence
/// replaced by U+FFFD, and a second member `"key_b64"` follows with the
/// exact bytes in standard base64 (RFC 4648 §4, padded). `key_b64` is
/// present exactly when the bytes are not UTF-8, so a consumer that wants
/// the bytes reads `key_b64` when it is there and `key` otherwise. Unlike
/// escaping bad bytes as `\u00XX` (which collides with real U+00XX) or as
/// lone surrogates `\udcXX` (which strict parsers reject), every JSON
/// parser reads this and nothing is ambiguous.
pub fn write_json_bytes(w: &mut impl Write, key: &str, bytes: &[u8]) -> io::Result<()> {
    write!(w, "\"{key}\":")?;
    write_json_str(w, bytes)?;
    if std::str::from_utf8(bytes).is_err() {
        write!(w, ",\"{key}_b64\":\"")?;
        write_base64(w, bytes)?;
        w.write_all(b"\"")?;
    }
    Ok(())
}

/// Writes the JSON member `"key":[…]` for a list of byte strings (exec's
/// arguments), losslessly as [`write_json_bytes`] does: when any item is
/// not UTF-8, `"key_b64":[…]` follows, holding the base64 of each such item
/// and `null` for the others, in the same order.
pub fn write_json_bytes_list<'a>(
    w: &mut impl Write,
    key: &str,
    items: impl Iterator<Item = &'a [u8]> + Clone,
) -> io::Result<()> {
    write!(w, "\"{key}\":[")?;
    let mut any_bad = false;
    for (i, a) in items.clone().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        write_json_str(w, a)?;
        any_bad |= std::str::from_utf8(a).is_err();
    }
    w.write_all(b"]")?;
    if any_bad {
        write!(w, ",\"{key}_b64\":[")?;
        for (i, a) in items.enumerate() {
            if i > 0 {
                w.write_all(b",")?;
            }
            if std::str::from_utf8(a).is_ok() {
                w.write_all(b"null")?;
            } else {
                w.write_all(b"\"")?;
                write_base64(w, a)?;
                w.write_all(b"\"")?;
            }
        }
        w.write_all(b"]")?;
    }
    Ok(())
}

/// Standard base64 (RFC 4648 §4) with padding, written in chunks of at most
/// 64 output bytes, without allocating.
pub fn write_base64(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
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
/// U+FFFD (allocating only then): use [`write_json_bytes`] for a member
/// that must keep the bytes.
pub fn write_json_str(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
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
pub fn write_text(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
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
pub fn text_width(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.chars().count(),
        Err(_) => String::from_utf8_lossy(bytes).chars().count(),
    }
}

/// Converts CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) to Unix
/// nanoseconds, with the offset between the clocks taken once at start.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    offset_ns: i128,
    pub start_mono_ns: u64,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    // SAFETY: timespec is plain old data; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(id, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clock {
    pub fn now() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self {
            offset_ns: real - mono,
            start_mono_ns: u64::try_from(mono).unwrap_or(0),
        }
    }

    /// Unix nanoseconds of a monotonic timestamp.
    pub fn unix_ns(&self, mono_ns: u64) -> u64 {
        u64::try_from(i128::from(mono_ns) + self.offset_ns).unwrap_or(0)
    }

    /// Seconds since the tracer started (for `-T`).
    pub fn since_start(&self, mono_ns: u64) -> f64 {
        mono_ns.saturating_sub(self.start_mono_ns) as f64 / 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(f: i32) -> String {
        let mut v = Vec::new();
        write_open_flags(&mut v, f as u32).expect("write");
        String::from_utf8(v).expect("utf8")
    }

    #[test]
    fn open_flags_are_named() {
        assert_eq!(flags(libc::O_RDONLY), "O_RDONLY");
        assert_eq!(
            flags(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC),
            "O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC"
        );
        assert_eq!(flags(libc::O_RDWR | libc::O_TMPFILE), "O_RDWR|O_TMPFILE");
        assert_eq!(
            flags(libc::O_RDONLY | libc::O_DIRECTORY),
            "O_RDONLY|O_DIRECTORY"
        );
        assert_eq!(flags(libc::O_WRONLY | libc::O_SYNC), "O_WRONLY|O_SYNC");
        assert_eq!(flags(libc::O_WRONLY | libc::O_DSYNC), "O_WRONLY|O_DSYNC");
        // An undefined bit shows as hex rather than vanishing.
        assert_eq!(flags(1 << 30), "O_RDONLY|0x40000000");
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(2), Some("ENOENT"));
        assert_eq!(errno_name(111), Some("ECONNREFUSED"));
        assert_eq!(errno_name(4095), None);
    }

    #[test]
    fn json_strings_escape_quotes_controls_and_bad_utf8() {
        let mut v = Vec::new();
        write_json_str(&mut v, b"a\"b\\c\nd\x01e\xffz").expect("write");
        let s = String::from_utf8(v).expect("utf8");
        assert_eq!(s, "\"a\\\"b\\\\c\\nd\\u0001e\u{fffd}z\"");
        let parsed: String = serde_json::from_str(&s).expect("valid JSON");
        assert_eq!(parsed, "a\"b\\c\nd\u{1}e\u{fffd}z");
    }

    fn unbase64(s: &str) -> Vec<u8> {
        base64_decode(s).unwrap_or_else(|| panic!("not padded base64: {s}"))
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
    fn json_bytes_keep_every_byte_sequence() {
        // Lengths around the 48-byte chunk, every byte value, and strings
        // that are and are not UTF-8.
        let mut cases: Vec<Vec<u8>> = vec![
            b"/tmp/plain".to_vec(),
            "/tmp/\u{e9}t\u{e9}".as_bytes().to_vec(),
            b"/tmp/\xff\xfe".to_vec(),
            b"\xc3".to_vec(),
            (0..=255u8).collect(),
        ];
        cases.extend((45..=100).map(|n| (0..n).map(|i| (i * 37 % 256) as u8).collect()));
        for bytes in cases {
            let mut v = b"{".to_vec();
            write_json_bytes(&mut v, "path", &bytes).expect("write");
            v.push(b'}');
            let obj: serde_json::Value = serde_json::from_slice(&v).expect("valid JSON");
            let back = match obj.get("path_b64") {
                Some(b) => unbase64(b.as_str().expect("string")),
                None => obj["path"].as_str().expect("string").as_bytes().to_vec(),
            };
            assert_eq!(back, bytes, "{}", String::from_utf8_lossy(&v));
            assert_eq!(
                obj.get("path_b64").is_some(),
                std::str::from_utf8(&bytes).is_err(),
                "path_b64 exactly when not UTF-8"
            );
        }
    }

    #[test]
    fn json_byte_lists_mark_only_the_items_that_are_not_utf8() {
        let items: [&[u8]; 3] = [b"sh", b"\xffx", b"\xe2\x82\xac"];
        let mut v = b"{".to_vec();
        write_json_bytes_list(&mut v, "args", items.iter().copied()).expect("write");
        v.push(b'}');
        let obj: serde_json::Value = serde_json::from_slice(&v).expect("valid JSON");
        assert_eq!(
            obj["args"],
            serde_json::json!(["sh", "\u{fffd}x", "\u{20ac}"])
        );
        let b64 = obj["args_b64"].as_array().expect("array");
        assert_eq!(b64.len(), 3);
        assert!(b64[0].is_null() && b64[2].is_null());
        assert_eq!(unbase64(b64[1].as_str().expect("string")), b"\xffx");
        let mut v = b"{".to_vec();
        write_json_bytes_list(&mut v, "args", [&b"a"[..]].into_iter()).expect("write");
        assert_eq!(v, b"{\"args\":[\"a\"]");
    }

    #[test]
    fn text_cells_neutralize_control_characters() {
        let mut v = Vec::new();
        write_text(&mut v, b"/tmp/a\nb\tc").expect("write");
        assert_eq!(v, b"/tmp/a?b?c");
    }

    #[test]
    fn cstr_stops_at_nul() {
        assert_eq!(cstr(b"abc\0def"), b"abc");
        assert_eq!(cstr(b"abc"), b"abc");
    }

    #[test]
    fn clock_converts_monotonic_to_unix_time() {
        let c = Clock::now();
        let now_unix = crate::sys::unix_now_ns();
        let converted = c.unix_ns(c.start_mono_ns);
        assert!(
            converted.abs_diff(now_unix) < 1_000_000_000,
            "{converted} vs {now_unix}"
        );
        assert_eq!(c.since_start(c.start_mono_ns + 1_500_000_000), 1.5);
    }
}
