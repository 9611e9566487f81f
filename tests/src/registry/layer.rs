//! Image layers as the tests describe them: tar entries written header by header (names are
//! copied into the headers as bytes, so hostile names such as `../../etc/x` survive), compressed
//! as none, gzip or zstd.

use sha2::{Digest, Sha256};
use std::io::Write;
use tar::{EntryType, Header};

/// The mtime every entry gets unless told otherwise: fixed, so digests are reproducible.
pub const DEFAULT_MTIME: u64 = 1_700_000_000;

/// How a layer's tar is compressed, and so its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// `application/vnd.oci.image.layer.v1.tar`
    None,
    /// `application/vnd.oci.image.layer.v1.tar+gzip`
    Gzip,
    /// `application/vnd.oci.image.layer.v1.tar+zstd`
    Zstd,
}

impl Compression {
    /// The OCI media type of a layer compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::None => "application/vnd.oci.image.layer.v1.tar",
            Self::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Self::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// Compresses `tar`.
    pub fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Self::None => tar.to_vec(),
            Self::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(tar).expect("gzip");
                enc.finish().expect("gzip")
            }
            Self::Zstd => zstd::encode_all(tar, 3).expect("zstd"),
        }
    }
}

/// Owner, mode and mtime of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits (and setuid/setgid/sticky).
    pub mode: u32,
    /// Owner uid.
    pub uid: u64,
    /// Owner gid.
    pub gid: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
}

impl Meta {
    /// Root-owned, `mode`, at [`DEFAULT_MTIME`].
    pub fn mode(mode: u32) -> Self {
        Self {
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
        }
    }
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file with this content.
    File(Vec<u8>),
    /// A directory.
    Dir,
    /// A symbolic link to this target.
    Symlink(Vec<u8>),
    /// A hard link to this earlier entry's name.
    HardLink(Vec<u8>),
    /// A named pipe.
    Fifo,
    /// A character device (major, minor).
    CharDevice(u32, u32),
}

/// One tar entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The name, exactly as it goes into the tar.
    pub path: Vec<u8>,
    /// What it is.
    pub kind: Kind,
    /// Owner, mode, mtime.
    pub meta: Meta,
    /// Extended attributes, written as PAX `SCHILY.xattr.NAME` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// A layer: entries in order, and how to compress them.
#[derive(Clone, Debug)]
pub struct Layer {
    entries: Vec<Entry>,
    compression: Compression,
}

/// A layer's bytes and digests.
#[derive(Clone, Debug)]
pub struct LayerBlob {
    /// The uncompressed tar.
    pub tar: Vec<u8>,
    /// The blob as stored (compressed).
    pub blob: Vec<u8>,
    /// `sha256:` of the blob.
    pub digest: String,
    /// `sha256:` of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
    /// The layer's media type.
    pub media_type: &'static str,
}

/// `sha256:HEX` of `data`.
pub fn sha256(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    /// An empty, gzip-compressed layer.
    pub fn new() -> Self {
        Self {
            entries: Vec::new(),
            compression: Compression::Gzip,
        }
    }

    /// Sets the compression.
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// The entries so far.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Appends an entry.
    pub fn entry(mut self, entry: Entry) -> Self {
        self.entries.push(entry);
        self
    }

    fn push(self, path: impl AsRef<[u8]>, kind: Kind, mode: u32) -> Self {
        self.entry(Entry {
            path: path.as_ref().to_vec(),
            kind,
            meta: Meta::mode(mode),
            xattrs: Vec::new(),
        })
    }

    /// A regular file, mode 0644, root-owned.
    pub fn file(self, path: impl AsRef<[u8]>, content: impl Into<Vec<u8>>) -> Self {
        self.push(path, Kind::File(content.into()), 0o644)
    }

    /// A directory, mode 0755 (give the name with or without a trailing `/`).
    pub fn dir(self, path: impl AsRef<[u8]>) -> Self {
        self.push(path, Kind::Dir, 0o755)
    }

    /// A symbolic link `path -> target`.
    pub fn symlink(self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        self.push(path, Kind::Symlink(target.as_ref().to_vec()), 0o777)
    }

    /// A hard link `path` to the earlier entry `target`.
    pub fn hardlink(self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        self.push(path, Kind::HardLink(target.as_ref().to_vec()), 0o644)
    }

    /// A FIFO, mode 0644.
    pub fn fifo(self, path: impl AsRef<[u8]>) -> Self {
        self.push(path, Kind::Fifo, 0o644)
    }

    /// A character device, mode 0666.
    pub fn char_device(self, path: impl AsRef<[u8]>, major: u32, minor: u32) -> Self {
        self.push(path, Kind::CharDevice(major, minor), 0o666)
    }

    /// A whiteout of `dir/name`: the entry `dir/.wh.name` (`path` is `dir/name`).
    pub fn whiteout(self, path: &str) -> Self {
        let (dir, name) = path.rsplit_once('/').map_or(("", path), |(d, n)| (d, n));
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.push(wh, Kind::File(Vec::new()), 0o644)
    }

    /// An opaque-directory marker: `dir/.wh..wh..opq`.
    pub fn opaque(self, dir: &str) -> Self {
        let dir = dir.trim_end_matches('/');
        self.push(format!("{dir}/.wh..wh..opq"), Kind::File(Vec::new()), 0o644)
    }

    /// Sets the last entry's owner, mode and mtime.
    pub fn meta(mut self, meta: Meta) -> Self {
        self.last().meta = meta;
        self
    }

    /// Sets the last entry's mode.
    pub fn mode(mut self, mode: u32) -> Self {
        self.last().meta.mode = mode;
        self
    }

    /// Sets the last entry's owner.
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        let last = self.last();
        last.meta.uid = uid;
        last.meta.gid = gid;
        self
    }

    /// Adds an extended attribute (e.g. `user.moat`) to the last entry.
    pub fn xattr(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        let value = value.as_ref().to_vec();
        self.last().xattrs.push((name.to_string(), value));
        self
    }

    fn last(&mut self) -> &mut Entry {
        self.entries.last_mut().expect("add an entry first")
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for entry in &self.entries {
            append(&mut builder, entry);
        }
        builder.into_inner().expect("tar")
    }

    /// The tar, compressed, with its digests.
    pub fn blob(&self) -> LayerBlob {
        let tar = self.tar();
        let blob = self.compression.compress(&tar);
        LayerBlob {
            digest: sha256(&blob),
            diff_id: sha256(&tar),
            media_type: self.compression.media_type(),
            tar,
            blob,
        }
    }

    /// A layer with `../../etc/x`: a name that climbs out of the root.
    pub fn escape_dotdot() -> Self {
        Self::new().file("../../etc/x", "escaped\n")
    }

    /// A layer with `evil -> /etc` followed by `evil/passwd`: a write through a symlink.
    pub fn escape_symlink() -> Self {
        Self::new()
            .symlink("evil", "/etc")
            .file("evil/passwd", "root::0:0::/:/bin/sh\n")
    }

    /// The base the image tests run on: static busybox at `/bin/busybox` with the applet links
    /// the tests use, `/etc/passwd` and `/etc/group` (root, nobody, and `app` as 1000:1000),
    /// `/tmp` (1777).
    pub fn busybox() -> Self {
        let busybox = std::fs::read("/bin/busybox")
            .unwrap_or_else(|e| panic!("read /bin/busybox ({e}): install busybox-static"));
        let mut layer = Self::new()
            .dir("bin/")
            .file("bin/busybox", busybox)
            .mode(0o755);
        for applet in APPLETS {
            layer = layer.symlink(format!("bin/{applet}"), "busybox");
        }
        layer
            .dir("etc/")
            .file("etc/passwd", PASSWD)
            .file("etc/group", GROUP)
            .dir("tmp/")
            .mode(0o1777)
    }
}

/// The busybox applets [`Layer::busybox`] links in `/bin`.
pub const APPLETS: &[&str] = &[
    "sh", "ls", "stat", "cat", "id", "echo", "env", "pwd", "sleep", "true", "false", "test",
    "readlink", "mkdir", "touch", "rm", "kill", "wc", "head",
];

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
    app:x:1000:1000:app:/home/app:/bin/sh\n\
    nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n";

/// Writes one entry: a PAX header first when it has xattrs or a name too long for ustar.
fn append(builder: &mut tar::Builder<Vec<u8>>, entry: &Entry) {
    let (kind, size, link, data): (EntryType, usize, &[u8], &[u8]) = match &entry.kind {
        Kind::File(content) => (EntryType::Regular, content.len(), b"", content),
        Kind::Dir => (EntryType::Directory, 0, b"", b""),
        Kind::Symlink(target) => (EntryType::Symlink, 0, target, b""),
        Kind::HardLink(target) => (EntryType::Link, 0, target, b""),
        Kind::Fifo => (EntryType::Fifo, 0, b"", b""),
        Kind::CharDevice(..) => (EntryType::Char, 0, b"", b""),
    };
    let mut records = Vec::new();
    for (name, value) in &entry.xattrs {
        records.extend(pax_record(&format!("SCHILY.xattr.{name}"), value));
    }
    if entry.path.len() > 100 {
        records.extend(pax_record("path", &entry.path));
    }
    if link.len() > 100 {
        records.extend(pax_record("linkpath", link));
    }
    if !records.is_empty() {
        let mut pax = raw_header(EntryType::XHeader, b"PaxHeader", b"", Meta::mode(0o644));
        pax.set_size(records.len() as u64);
        pax.set_cksum();
        builder.append(&pax, &records[..]).expect("tar pax");
    }
    let mut header = raw_header(kind, &entry.path, link, entry.meta);
    header.set_size(size as u64);
    if let Kind::CharDevice(major, minor) = entry.kind {
        header.set_device_major(major).expect("major");
        header.set_device_minor(minor).expect("minor");
    }
    header.set_cksum();
    builder.append(&header, data).expect("tar entry");
}

/// A ustar header whose name and link name are copied in as bytes (cut at 100: a longer one
/// goes into a PAX record too), without the path checks of `Header::set_path`.
fn raw_header(kind: EntryType, path: &[u8], link: &[u8], meta: Meta) -> Header {
    let mut header = Header::new_ustar();
    header.set_entry_type(kind);
    let old = header.as_old_mut();
    let n = path.len().min(old.name.len());
    old.name[..n].copy_from_slice(&path[..n]);
    let n = link.len().min(old.linkname.len());
    old.linkname[..n].copy_from_slice(&link[..n]);
    header.set_mode(meta.mode);
    header.set_uid(meta.uid);
    header.set_gid(meta.gid);
    header.set_mtime(meta.mtime);
    header
}

/// One PAX record: `LEN KEY=VALUE\n`, where LEN counts the whole record, itself included.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}
