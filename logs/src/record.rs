//! One json-file record, `{"log":"hi\n","stream":"stdout","time":"2026-12-02T17:04:05.1Z"}`
//! and its newline, encoded byte for byte as docker's `jsonlog.JSONLogs.MarshalJSONBuf` does and
//! decoded leniently.

use std::time::SystemTime;

use serde::Deserialize;

use crate::time::{format_rfc3339_nano, parse_rfc3339};
use crate::Stream;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A record read back from a log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub stream: Stream,
    pub time: SystemTime,
    /// The bytes the container wrote, newline included when it was written.
    pub log: String,
}

/// The record line (newline included) docker's json-file driver writes for `log` (non-empty).
pub fn encode(stream: Stream, log: &[u8], time: SystemTime) -> Vec<u8> {
    let mut buf = Vec::with_capacity(log.len() + 80);
    buf.extend_from_slice(b"{\"log\":");
    write_json_string(&mut buf, log);
    buf.extend_from_slice(b",\"stream\":\"");
    buf.extend_from_slice(stream.name().as_bytes());
    buf.extend_from_slice(b"\",\"time\":\"");
    buf.extend_from_slice(format_rfc3339_nano(time).as_bytes());
    buf.extend_from_slice(b"\"}\n");
    buf
}

/// Docker's `ffjsonWriteJSONBytesAsString`: `"`, `\`, `\n`, `\r` escaped by a backslash, other
/// control characters and `<`, `>`, `&` as `\u00XX`, U+2028 and U+2029 as `\u2028`/`\u2029`,
/// and every byte that does not start a valid UTF-8 sequence as `\ufffd` (one per byte, as Go's
/// `utf8.DecodeRune` steps).
fn write_json_string(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.push(b'"');
    let mut rest = bytes;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(text) => {
                write_valid(buf, text);
                rest = &[];
            }
            Err(e) => {
                let (valid, invalid) = rest.split_at(e.valid_up_to());
                // The prefix was just checked to be UTF-8.
                write_valid(buf, std::str::from_utf8(valid).unwrap_or_default());
                buf.extend_from_slice(b"\\ufffd");
                rest = &invalid[1..];
            }
        }
    }
    buf.push(b'"');
}

fn write_valid(buf: &mut Vec<u8>, text: &str) {
    for c in text.chars() {
        match c {
            '"' | '\\' => buf.extend_from_slice(&[b'\\', c as u8]),
            '\n' => buf.extend_from_slice(b"\\n"),
            '\r' => buf.extend_from_slice(b"\\r"),
            '\u{2028}' => buf.extend_from_slice(b"\\u2028"),
            '\u{2029}' => buf.extend_from_slice(b"\\u2029"),
            '<' | '>' | '&' => escape_u00(buf, c as u8),
            c if (c as u32) < 0x20 => escape_u00(buf, c as u8),
            c => {
                let mut utf8 = [0; 4];
                buf.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
}

fn escape_u00(buf: &mut Vec<u8>, b: u8) {
    buf.extend_from_slice(b"\\u00");
    buf.push(HEX[usize::from(b >> 4)]);
    buf.push(HEX[usize::from(b & 0xf)]);
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    log: String,
    #[serde(default)]
    stream: String,
    time: String,
}

/// The record of one line (without its newline); `None` for a line that is not a json-file
/// record (a corrupted file): no `time`, a time that is not RFC 3339, an unknown stream.
/// A record without `stream` is taken as stdout.
pub fn decode(line: &[u8]) -> Option<Record> {
    let raw: Raw = serde_json::from_slice(line).ok()?;
    let stream = match raw.stream.as_str() {
        "stdout" | "" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        _ => return None,
    };
    let time = parse_rfc3339(&raw.time)?;
    Some(Record {
        stream,
        time,
        log: raw.log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn t() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_796_231_045, 123_456_789)
    }

    fn encoded(log: &[u8]) -> String {
        String::from_utf8(encode(Stream::Stdout, log, t())).unwrap()
    }

    #[test]
    fn matches_a_docker_line() {
        let line = encode(Stream::Stdout, b"Log line is here\n", t());
        let docker = "{\"log\":\"Log line is here\\n\",\"stream\":\"stdout\",\"time\":\"2026-12-02T17:04:05.123456789Z\"}\n";
        assert_eq!(String::from_utf8(line).unwrap(), docker);
        let line = encode(
            Stream::Stderr,
            b"oops",
            UNIX_EPOCH + Duration::new(1_796_231_045, 0),
        );
        let docker = "{\"log\":\"oops\",\"stream\":\"stderr\",\"time\":\"2026-12-02T17:04:05Z\"}\n";
        assert_eq!(String::from_utf8(line).unwrap(), docker);
    }

    #[test]
    fn escapes_like_docker() {
        let got = encoded(b"a\"b\\c\td\re<f>&g\x01\x7f\n");
        assert!(
            got.starts_with(r#"{"log":"a\"b\\c\u0009d\re\u003cf\u003e\u0026g\u0001"#),
            "{got}"
        );
        assert!(got.contains("g\\u0001\x7f\\n\""), "{got}");
        let got = encoded("é€😀\u{2028}\u{2029}\u{fffd}".as_bytes());
        assert!(
            got.starts_with("{\"log\":\"é€😀\\u2028\\u2029\u{fffd}\""),
            "{got}"
        );
    }

    #[test]
    fn invalid_utf8_becomes_replacement_per_byte() {
        // A lone continuation byte, a truncated 3-byte sequence, a surrogate, an overlong.
        let got = encoded(b"a\x80b\xe2\x82c\xed\xa0\x80d\xc0\xafe\xff");
        let want = r#"{"log":"a\ufffdb\ufffd\ufffdc\ufffd\ufffd\ufffdd\ufffd\ufffde\ufffd","#;
        assert!(got.starts_with(want), "{got}");
        let record = decode(got.trim_end().as_bytes()).unwrap();
        assert_eq!(
            record.log,
            "a\u{fffd}b\u{fffd}\u{fffd}c\u{fffd}\u{fffd}\u{fffd}d\u{fffd}\u{fffd}e\u{fffd}"
        );
    }

    #[test]
    fn decodes_what_it_encodes() {
        let line = encode(Stream::Stderr, b"x<y>\t\n", t());
        let record = decode(&line[..line.len() - 1]).unwrap();
        let want = Record {
            stream: Stream::Stderr,
            time: t(),
            log: "x<y>\t\n".into(),
        };
        assert_eq!(record, want);
    }

    #[test]
    fn decode_refuses_what_is_not_a_record() {
        for bad in [
            &b""[..],
            b"{",
            b"null",
            b"{\"log\":\"x\"}",
            b"{\"log\":\"x\",\"stream\":\"stdout\",\"time\":\"yesterday\"}",
            b"{\"log\":\"x\",\"stream\":\"stdin\",\"time\":\"2026-12-02T17:04:05Z\"}",
            b"{\"log\":1,\"stream\":\"stdout\",\"time\":\"2026-12-02T17:04:05Z\"}",
            b"\xff\xfe",
        ] {
            assert_eq!(decode(bad), None);
        }
        let ok = decode(b"{\"log\":\"x\",\"time\":\"2026-12-02T17:04:05Z\",\"attrs\":{}}").unwrap();
        assert_eq!(ok.stream, Stream::Stdout);
    }
}
