//! A reader between a layer's uncompressed stream and the tar parser that follows the tar's
//! 512-byte header blocks as they pass and refuses, before the parser buffers them, extension
//! headers (GNU long names and links, PAX records) over [`MAX_EXTENSION`] bytes, and GNU sparse
//! entries (whose holes the parser would expand into written zeros, unbounded). It tracks the
//! data lengths exactly as the parser does: the header's size, or a PAX `size` record's.

use std::io::{self, Read};

/// The largest extension header moat reads (a long name is at most 4 KiB; PAX records with
/// xattrs stay well under this).
pub const MAX_EXTENSION: u64 = 1 << 20;

const BLOCK: usize = 512;

enum State {
    /// Collecting a header block (`filled` bytes of it so far).
    Header,
    /// Passing `left` bytes of an entry's data (padded to a block); `pax` collects an extended
    /// header's records.
    Data { left: u64, pax: Option<Vec<u8>> },
    /// After the end-of-archive block: whatever follows is padding.
    Ended,
}

/// See the module documentation.
pub(crate) struct HeaderGuard<R> {
    inner: R,
    state: State,
    header: [u8; BLOCK],
    filled: usize,
    /// The size a PAX record gave the next entry.
    next_size: Option<u64>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// A header's size field: octal, or base-256 when the high bit of its first byte is set.
fn size_field(field: &[u8]) -> io::Result<u64> {
    if field[0] & 0x80 != 0 {
        let (high, low) = field[1..].split_at(field.len() - 9);
        if field[0] != 0x80 || high.iter().any(|&b| b != 0) {
            return Err(invalid("a tar size field over 2^64".into()));
        }
        return Ok(u64::from_be_bytes(low.try_into().expect("8 bytes")));
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .filter(|&b| b != 0 && b != b' ')
        .collect();
    if text.is_empty() {
        return Ok(0);
    }
    let text = std::str::from_utf8(&text).map_err(|_| invalid("a bad tar size field".into()))?;
    u64::from_str_radix(text, 8).map_err(|_| invalid(format!("a bad tar size field {text:?}")))
}

/// The `size` record of PAX extended-header data, if it has one.
fn pax_size(mut data: &[u8]) -> io::Result<Option<u64>> {
    let bad = || invalid("malformed PAX records".into());
    let mut size = None;
    while !data.is_empty() && data[0] != 0 {
        let space = data.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|t| t.parse().ok())
            .filter(|&len| len > space && len <= data.len())
            .ok_or_else(bad)?;
        let record = &data[space + 1..len];
        if let Some(value) = record.strip_prefix(b"size=") {
            let value = value.strip_suffix(b"\n").unwrap_or(value);
            let text = std::str::from_utf8(value).map_err(|_| bad())?;
            size = Some(text.parse().map_err(|_| bad())?);
        }
        data = &data[len..];
    }
    Ok(size)
}

impl<R: Read> HeaderGuard<R> {
    pub(crate) fn new(inner: R) -> Self {
        HeaderGuard {
            inner,
            state: State::Header,
            header: [0; BLOCK],
            filled: 0,
            next_size: None,
        }
    }

    /// The reader it wraps.
    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    fn header_done(&mut self) -> io::Result<()> {
        let h = &self.header;
        if h.iter().all(|&b| b == 0) {
            self.state = State::Ended;
            return Ok(());
        }
        let kind = h[156];
        let size = match self.next_size.take() {
            Some(size) if !matches!(kind, b'x' | b'g' | b'L' | b'K') => size,
            _ => size_field(&h[124..136])?,
        };
        let extension = matches!(kind, b'x' | b'g' | b'L' | b'K');
        if extension && size > MAX_EXTENSION {
            return Err(invalid(format!(
                "a tar extension header of {size} bytes (over {MAX_EXTENSION})"
            )));
        }
        if kind == b'S' {
            return Err(invalid("GNU sparse entries are not supported".into()));
        }
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        let pax = (kind == b'x').then(Vec::new);
        self.state = match padded {
            0 => State::Header,
            left => State::Data { left, pax },
        };
        Ok(())
    }

    fn observe(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Ended => return Ok(()),
                State::Header => {
                    let take = (BLOCK - self.filled).min(bytes.len());
                    self.header[self.filled..self.filled + take].copy_from_slice(&bytes[..take]);
                    self.filled += take;
                    bytes = &bytes[take..];
                    if self.filled == BLOCK {
                        self.filled = 0;
                        self.header_done()?;
                    }
                }
                State::Data { left, pax } => {
                    let take = (*left).min(bytes.len() as u64) as usize;
                    if let Some(pax) = pax {
                        pax.extend_from_slice(&bytes[..take]);
                    }
                    *left -= take as u64;
                    bytes = &bytes[take..];
                    if *left == 0 {
                        if let Some(pax) = pax.take() {
                            self.next_size = pax_size(&pax)?;
                        }
                        self.state = State::Header;
                    }
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, kind: u8, size: u64) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[156] = kind;
        h
    }

    fn padded(mut data: Vec<u8>) -> Vec<u8> {
        data.resize(data.len().div_ceil(BLOCK) * BLOCK, 0);
        data
    }

    fn read_all(tar: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        // Small reads: headers and data arrive split across calls.
        let mut guard = HeaderGuard::new(io::Cursor::new(tar.to_vec()));
        let mut buf = [0u8; 100];
        loop {
            match guard.read(&mut buf)? {
                0 => return Ok(out),
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    #[test]
    fn passes_a_tar_and_follows_pax_sizes() {
        let pax = b"13 size=1000\n".to_vec();
        let mut tar = header("././@PaxHeader", b'x', pax.len() as u64);
        tar.extend(padded(pax));
        // The header says 0 bytes, the PAX record 1000: the data is 1000 bytes.
        tar.extend(header("big", b'0', 0));
        tar.extend(padded(vec![b'L'; 1000]));
        tar.extend(header("next", b'0', 3));
        tar.extend(padded(b"abc".to_vec()));
        tar.extend(vec![0u8; 2 * BLOCK]);
        assert_eq!(read_all(&tar).unwrap(), tar);
    }

    #[test]
    fn refuses_huge_extensions_and_sparse_entries() {
        let tar = header("././@LongLink", b'L', MAX_EXTENSION + 1);
        let err = read_all(&tar).unwrap_err().to_string();
        assert!(err.contains("extension header"), "{err}");
        let tar = header("holes", b'S', 10);
        let err = read_all(&tar).unwrap_err().to_string();
        assert!(err.contains("sparse"), "{err}");
    }

    #[test]
    fn size_fields_in_both_encodings() {
        let mut field = [0u8; 12];
        field[0] = 0x80;
        field[11] = 5;
        assert_eq!(size_field(&field).unwrap(), 5);
        assert_eq!(size_field(b"00000000017\0").unwrap(), 15);
        assert!(size_field(b"0000000009z\0").is_err());
    }
}
