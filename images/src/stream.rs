//! A layer blob's uncompressed stream: the compression found from its magic bytes, and a reader
//! that hashes what it reads (the layer's diff ID).

use std::io::{self, Read};

use sha2::{Digest, Sha256};

/// How a layer's blob is compressed (found from its first bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

/// The uncompressed stream of `blob`, by its magic bytes.
pub(crate) fn decompress<'a>(
    blob: &'a mut dyn Read,
) -> io::Result<(Box<dyn Read + 'a>, Compression)> {
    let mut magic = [0u8; 4];
    let mut len = 0;
    while len < magic.len() {
        match blob.read(&mut magic[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = &magic[..len];
    let whole = io::Cursor::new(head.to_vec()).chain(blob);
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        (
            Box::new(flate2::read::MultiGzDecoder::new(whole)),
            Compression::Gzip,
        )
    } else if head == [0x28, 0xb5, 0x2f, 0xfd] {
        (
            Box::new(zstd::stream::read::Decoder::new(whole)?),
            Compression::Zstd,
        )
    } else {
        (Box::new(whole), Compression::None)
    })
}

/// A reader that hashes (SHA-256) and counts what passes through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
}

impl<R> HashingReader<R> {
    /// Bytes read so far.
    pub(crate) fn read_bytes(&self) -> u64 {
        self.bytes
    }

    /// `sha256:` and the hex SHA-256 of what was read.
    pub(crate) fn digest(self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}
