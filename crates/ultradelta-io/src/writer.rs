//! Streaming, crash-safe checkpoint writer (single file or Hugging Face shards).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{ErrorKind, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use crate::checkpoint::{is_plain_file_name, INDEX_FILE_NAME, SINGLE_FILE_NAME};
use crate::{Error, Result, TensorInfo};

/// Largest header the writer produces: the `safetensors` crate refuses headers over 100,000,000 bytes.
const HEADER_WRITE_LIMIT: u64 = 100_000_000;

/// Staging buffer of each shard file (a multiple of [`DIRECT_IO_ALIGN`]).
const WRITE_BUFFER: usize = 8 << 20;

/// The alignment direct I/O writes need: of the staging buffer's address, and of every direct write's offset and
/// length (see [`CheckpointWriter::data_offset`]).
pub const DIRECT_IO_ALIGN: usize = 4096;

/// Distinguishes temp/aside names of writers in the same process.
static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// Options of [`CheckpointWriter`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterOptions {
    /// Largest shard, counted in tensor bytes (default 5,000,000,000, like Hugging Face's "5GB"). A single tensor
    /// larger than this gets a shard of its own.
    pub max_shard_bytes: u64,
    /// safetensors `__metadata__` written into every shard (e.g. `{"format": "pt"}`).
    pub metadata: BTreeMap<String, String>,
    /// Replace an existing output folder (only once the new one is complete).
    pub overwrite: bool,
    /// Write the shard files with direct I/O (`O_DIRECT`, Linux) where the filesystem accepts it: the bytes go to the
    /// disk from an aligned staging buffer, or from the caller's memory when it is aligned like the file (see
    /// [`CheckpointWriter::data_offset`]), without being copied into fresh page-cache pages, which saves most of the
    /// kernel time of writing a large checkpoint (the written files are then not in the page cache). Falls back to
    /// ordinary writes when the filesystem refuses; the bytes written are the same either way.
    pub direct_io: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            max_shard_bytes: 5_000_000_000,
            metadata: BTreeMap::new(),
            overwrite: false,
            direct_io: false,
        }
    }
}

struct Shard {
    file_name: String,
    tensors: Range<usize>,
    header: Vec<u8>,
}

struct OpenShard {
    index: usize,
    path: PathBuf,
    out: ShardOut,
}

/// A shard file written through a staging buffer of [`WRITE_BUFFER`] bytes whose address is aligned to
/// [`DIRECT_IO_ALIGN`], or straight from the caller's memory when it is aligned like the file (see
/// [`CheckpointWriter::data_offset`]): every write has an aligned address, offset and length, so the file may be
/// opened with `O_DIRECT`. The last block is padded to the alignment and the file cut back to its length. A direct
/// write the filesystem refuses (`EINVAL`) switches the file to ordinary writes for the rest.
struct ShardOut {
    path: PathBuf,
    /// The handle writes go to: opened with `O_DIRECT` while `direct`.
    file: File,
    direct: bool,
    /// `raw[start..start + WRITE_BUFFER]` is the aligned staging block.
    raw: Vec<u8>,
    start: usize,
    /// Bytes staged.
    fill: usize,
    /// File offset of the staging block (a multiple of [`DIRECT_IO_ALIGN`]): the file holds everything before it.
    pos: u64,
}

impl ShardOut {
    fn create(path: &Path, direct_io: bool) -> std::io::Result<Self> {
        let plain = || {
            File::options()
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
        };
        let (file, direct) = match direct_io.then(|| open_direct(path)).flatten() {
            Some(Ok(f)) => (f, true),
            // the filesystem does not do direct I/O (tmpfs, some network filesystems): ordinary writes
            Some(Err(e)) if e.kind() == ErrorKind::InvalidInput => (plain()?, false),
            Some(Err(e)) => return Err(e),
            None => (plain()?, false),
        };
        let raw = vec![0u8; WRITE_BUFFER + DIRECT_IO_ALIGN];
        let start = raw.as_ptr().align_offset(DIRECT_IO_ALIGN);
        Ok(ShardOut {
            path: path.to_path_buf(),
            file,
            direct,
            raw,
            start,
            fill: 0,
            pos: 0,
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        // Bytes whose address is aligned like their file offset (see `CheckpointWriter::data_offset`) go to the
        // file straight from the caller's memory, except a head and a tail shorter than the alignment.
        let a = DIRECT_IO_ALIGN as u64;
        let head = ((a - (self.pos + self.fill as u64) % a) % a) as usize;
        if self.direct
            && bytes.len() >= head + DIRECT_IO_ALIGN
            && (bytes.as_ptr() as usize)
                .wrapping_add(head)
                .is_multiple_of(DIRECT_IO_ALIGN)
        {
            self.stage(&bytes[..head])?;
            // the staged bytes now end at an aligned offset
            if self.fill > 0 {
                self.write_block(self.fill)?;
                self.pos += self.fill as u64;
                self.fill = 0;
            }
            let body = (bytes.len() - head) / DIRECT_IO_ALIGN * DIRECT_IO_ALIGN;
            let data = &bytes[head..head + body];
            if let Err(e) = self.file.write_all(data) {
                self.fall_back(e)?;
                self.file.write_all(data)?;
            }
            self.pos += body as u64;
            return self.stage(&bytes[head + body..]);
        }
        self.stage(bytes)
    }

    /// Appends `bytes` to the staging block, writing it out whenever it is full.
    fn stage(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let take = (WRITE_BUFFER - self.fill).min(bytes.len());
            let at = self.start + self.fill;
            self.raw[at..at + take].copy_from_slice(&bytes[..take]);
            self.fill += take;
            bytes = &bytes[take..];
            if self.fill == WRITE_BUFFER {
                self.write_block(WRITE_BUFFER)?;
                self.pos += WRITE_BUFFER as u64;
                self.fill = 0;
            }
        }
        Ok(())
    }

    /// Writes the first `len` staged bytes at `pos`, where the file position is (`len` a multiple of
    /// [`DIRECT_IO_ALIGN`] when direct).
    fn write_block(&mut self, len: usize) -> std::io::Result<()> {
        if let Err(e) = self.file.write_all(&self.raw[self.start..self.start + len]) {
            self.fall_back(e)?;
            self.file
                .write_all(&self.raw[self.start..self.start + len])?;
        }
        Ok(())
    }

    /// After a failed write at `pos`: a direct write refused (`EINVAL`: an alignment the device does not accept,
    /// ...) switches to a handle without `O_DIRECT` positioned at `pos`, for the same bytes again and the rest of
    /// the file; any other error is returned.
    fn fall_back(&mut self, e: std::io::Error) -> std::io::Result<()> {
        if !(self.direct && e.kind() == ErrorKind::InvalidInput) {
            return Err(e);
        }
        self.file = File::options().write(true).open(&self.path)?;
        self.direct = false;
        self.file.seek(SeekFrom::Start(self.pos))?;
        Ok(())
    }

    /// Writes what is staged, cuts the file to its length and returns the handle (not yet synced).
    fn finish(mut self) -> std::io::Result<File> {
        if self.fill > 0 {
            let len = self.pos + self.fill as u64;
            if self.direct {
                let padded = self.fill.next_multiple_of(DIRECT_IO_ALIGN);
                let at = self.start + self.fill;
                self.raw[at..self.start + padded].fill(0);
                self.write_block(padded)?;
                if padded != self.fill {
                    self.file.set_len(len)?;
                }
            } else {
                self.write_block(self.fill)?;
            }
        }
        Ok(self.file)
    }
}

/// Opens `path` for writing with `O_DIRECT`; `None` where there is no such flag.
fn open_direct(path: &Path) -> Option<std::io::Result<File>> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        Some(
            File::options()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_DIRECT)
                .open(path),
        )
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        None
    }
}

/// Writes a checkpoint folder tensor by tensor, holding at most the one tensor's bytes the caller passes in.
///
/// Layout: `model.safetensors`, or `model-00001-of-0000N.safetensors` shards plus `model.safetensors.index.json`
/// (`{"metadata":{"total_size":N},"weight_map":{tensor: shard}}`) when the tensors do not fit one shard of
/// [`WriterOptions::max_shard_bytes`]. Shards are planned greedily in declared order. Each shard is a standard
/// safetensors file: u64 little-endian header length, JSON header (tensors in file order, `__metadata__` first if
/// any) padded with spaces to a multiple of 8 bytes, then the tensors' bytes in declared order.
///
/// Everything is written into a hidden sibling folder `.<name>.partial-<pid>-<n>`; [`finish`](Self::finish) fsyncs
/// and renames it into place. Dropping the writer without `finish` removes the temp folder.
pub struct CheckpointWriter {
    dir: PathBuf,
    temp: PathBuf,
    overwrite: bool,
    direct_io: bool,
    tensors: Vec<TensorInfo>,
    nbytes: Vec<usize>,
    /// Where each tensor's bytes start in its shard file.
    offsets: Vec<u64>,
    by_name: HashMap<String, usize>,
    shards: Vec<Shard>,
    shard_of: Vec<usize>,
    next: usize,
    /// Shards `0..opened` have been opened (and all but `current` closed).
    opened: usize,
    current: Option<OpenShard>,
    extra_files: BTreeSet<String>,
    done: bool,
}

impl std::fmt::Debug for CheckpointWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointWriter")
            .field("dir", &self.dir)
            .field("temp", &self.temp)
            .field("tensors", &self.tensors.len())
            .field("written", &self.next)
            .field("shards", &self.shards.len())
            .finish()
    }
}

/// Builds one shard's header: offsets from 0 in `tensors` order, padded with spaces to a multiple of 8.
fn build_header(metadata: &BTreeMap<String, String>, tensors: &[TensorInfo]) -> Vec<u8> {
    let mut s = String::from("{");
    let mut first = true;
    if !metadata.is_empty() {
        let m: serde_json::Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        s.push_str("\"__metadata__\":");
        s.push_str(&Value::Object(m).to_string());
        first = false;
    }
    let mut offset = 0u64;
    for t in tensors {
        if !first {
            s.push(',');
        }
        first = false;
        let end = offset + t.nbytes() as u64;
        s.push_str(&Value::String(t.name.clone()).to_string());
        s.push_str(":{\"dtype\":\"");
        s.push_str(t.dtype.name());
        s.push_str("\",\"shape\":[");
        let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        s.push_str(&dims.join(","));
        s.push_str(&format!("],\"data_offsets\":[{offset},{end}]}}"));
        offset = end;
    }
    s.push('}');
    let mut bytes = s.into_bytes();
    let padded = bytes.len().next_multiple_of(8);
    bytes.resize(padded, b' ');
    bytes
}

/// Greedy shard plan in declared order: a new shard starts when adding the next tensor would exceed `max`.
fn plan_shards(nbytes: &[usize], max: u64) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 0u64;
    for (i, &n) in nbytes.iter().enumerate() {
        let n = n as u64;
        if i > start && size.saturating_add(n) > max {
            out.push(start..i);
            start = i;
            size = 0;
        }
        size = size.saturating_add(n);
    }
    out.push(start..nbytes.len());
    out
}

fn sync_dir(dir: &Path) -> Result<()> {
    // Directories can be fsynced on Unix (makes renames and new entries durable); elsewhere this is a no-op.
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, "fsync", e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Checks the name of a companion file as [`CheckpointWriter::add_file`] takes it: a relative path of at most
/// 4096 bytes and 9 components (the file in at most [`MAX_COMPANION_DEPTH`](crate::MAX_COMPANION_DEPTH)
/// subfolders) joined by `/`, each component a plain non-empty name of at most 255 bytes that is not `.` or `..`,
/// does not start with `.` (hidden) and holds no `\` or NUL, the last one not a weight or weight-index name. So a
/// name from an untrusted archive cannot leave the output folder (`../x`, `/etc/x`, `a/../../x`) nor write weights.
///
/// # Errors
/// Why the name is refused, for [`Error::InvalidFileName`].
pub fn check_companion_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("the name is empty");
    }
    if name.len() > 4096 {
        return Err("longer than 4096 bytes");
    }
    if name.starts_with('/') {
        return Err("an absolute path (expected a path relative to the model folder)");
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() > crate::MAX_COMPANION_DEPTH + 1 {
        return Err("too many folders");
    }
    for part in &parts {
        if part.is_empty() {
            return Err("an empty path component (`//` or a trailing `/`)");
        }
        if *part == "." || *part == ".." {
            return Err("a `.` or `..` path component");
        }
        if part.starts_with('.') {
            return Err("hidden names are not allowed");
        }
        if part.len() > 255 || !is_plain_file_name(part) {
            return Err("a path component that is not a plain file name");
        }
    }
    if crate::checkpoint::is_weight_file_name(parts[parts.len() - 1]) {
        return Err("the name is reserved for weights");
    }
    Ok(())
}

fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| Error::io(path, "create", e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io(path, "write", e))?;
    f.sync_all().map_err(|e| Error::io(path, "fsync", e))
}

impl CheckpointWriter {
    /// Starts writing the checkpoint folder `dir`. `tensors` lists every tensor in the order it will be written.
    ///
    /// Fails with [`Error::OutputExists`] if `dir` exists and `opts.overwrite` is false, with
    /// [`Error::InvalidDeclaration`] for an empty, reserved (`__metadata__`) or repeated name or a size that
    /// overflows, and with [`Error::HeaderTooLargeToWrite`] if a shard header would exceed what readers accept.
    /// Creates `dir`'s parent folders if needed.
    pub fn create(
        dir: impl AsRef<Path>,
        tensors: Vec<TensorInfo>,
        opts: WriterOptions,
    ) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        // A killed earlier run on this output: its temp folder removed, its moved-aside old output put back.
        recover_leftovers(&dir);
        check_target(&dir, opts.overwrite)?;
        let Some(dir_name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            return Err(Error::InvalidFileName {
                dir: dir.clone(),
                name: dir.display().to_string(),
                reason: "the output path must end in a UTF-8 folder name".into(),
            });
        };

        let bad = |t: &TensorInfo, reason: &str| Error::InvalidDeclaration {
            dir: dir.clone(),
            tensor: t.name.clone(),
            reason: reason.to_string(),
        };
        let mut by_name = HashMap::with_capacity(tensors.len());
        let mut nbytes = Vec::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if t.name.is_empty() {
                return Err(bad(t, "empty tensor name"));
            }
            if t.name == "__metadata__" {
                return Err(bad(
                    t,
                    "\"__metadata__\" is reserved by the safetensors format",
                ));
            }
            if by_name.insert(t.name.clone(), i).is_some() {
                return Err(bad(t, "declared twice"));
            }
            let Some(n) = t.checked_nbytes() else {
                return Err(bad(t, "byte size overflows"));
            };
            nbytes.push(n);
        }

        let plan = plan_shards(&nbytes, opts.max_shard_bytes);
        let mut offsets = vec![0u64; tensors.len()];
        let count = plan.len();
        let mut shard_of = vec![0; tensors.len()];
        let mut shards = Vec::with_capacity(count);
        for (s, range) in plan.into_iter().enumerate() {
            for i in range.clone() {
                shard_of[i] = s;
            }
            let file_name = if count == 1 {
                SINGLE_FILE_NAME.to_string()
            } else {
                format!("model-{:05}-of-{count:05}.safetensors", s + 1)
            };
            let header = build_header(&opts.metadata, &tensors[range.clone()]);
            if header.len() as u64 > HEADER_WRITE_LIMIT {
                return Err(Error::HeaderTooLargeToWrite {
                    file: dir.join(&file_name),
                    len: header.len() as u64,
                    limit: HEADER_WRITE_LIMIT,
                });
            }
            let mut at = 8 + header.len() as u64;
            for i in range.clone() {
                offsets[i] = at;
                at += nbytes[i] as u64;
            }
            shards.push(Shard {
                file_name,
                tensors: range,
                header,
            });
        }

        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, "create folder", e))?;
        let temp = create_unique_dir(&parent, &dir_name)?;

        Ok(CheckpointWriter {
            dir,
            temp,
            overwrite: opts.overwrite,
            direct_io: opts.direct_io,
            tensors,
            nbytes,
            offsets,
            by_name,
            shards,
            shard_of,
            next: 0,
            opened: 0,
            current: None,
            extra_files: BTreeSet::new(),
            done: false,
        })
    }

    /// The output folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The shard file names planned (one name, `model.safetensors`, when not sharded).
    pub fn shard_file_names(&self) -> Vec<&str> {
        self.shards.iter().map(|s| s.file_name.as_str()).collect()
    }

    /// Where tensor `name`'s bytes start in its shard file (`None` for an undeclared name). With
    /// [`WriterOptions::direct_io`], bytes passed to [`write_tensor`](Self::write_tensor) at an address congruent
    /// to this offset modulo [`DIRECT_IO_ALIGN`] are written to the file straight from the caller's memory (the
    /// others through a staging copy).
    pub fn data_offset(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).map(|&i| self.offsets[i])
    }

    /// The name of the next tensor to write, if any remain.
    pub fn next_tensor(&self) -> Option<&TensorInfo> {
        self.tensors.get(self.next)
    }

    /// Writes the next tensor's little-endian bytes. `name` must be the next declared tensor and `bytes.len()` its
    /// `nbytes`, else [`Error::UnknownTensor`], [`Error::OutOfOrder`] or [`Error::ByteLengthMismatch`].
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let Some(&idx) = self.by_name.get(name) else {
            return Err(Error::UnknownTensor {
                dir: self.dir.clone(),
                tensor: name.to_string(),
            });
        };
        if idx != self.next {
            return Err(Error::OutOfOrder {
                dir: self.dir.clone(),
                tensor: name.to_string(),
                expected: match self.tensors.get(self.next) {
                    Some(t) => format!("{:?}", t.name),
                    None => "no more tensors".into(),
                },
            });
        }
        if bytes.len() != self.nbytes[idx] {
            let t = &self.tensors[idx];
            return Err(Error::ByteLengthMismatch {
                dir: self.dir.clone(),
                tensor: name.to_string(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                expected: self.nbytes[idx],
                found: bytes.len(),
            });
        }
        self.open_through(self.shard_of[idx])?;
        let cur = self
            .current
            .as_mut()
            .expect("open_through leaves the tensor's shard open");
        cur.out
            .write_all(bytes)
            .map_err(|e| Error::io(&cur.path, "write", e))?;
        self.next += 1;
        Ok(())
    }

    /// Closes the open shard (flush + fsync) and opens shards up to and including `shard`, writing their headers.
    fn open_through(&mut self, shard: usize) -> Result<()> {
        if self.current.as_ref().is_some_and(|c| c.index == shard) {
            return Ok(());
        }
        while self.opened <= shard {
            self.close_current()?;
            let s = &self.shards[self.opened];
            let path = self.temp.join(&s.file_name);
            let mut out = ShardOut::create(&path, self.direct_io)
                .map_err(|e| Error::io(&path, "create", e))?;
            out.write_all(&(s.header.len() as u64).to_le_bytes())
                .and_then(|()| out.write_all(&s.header))
                .map_err(|e| Error::io(&path, "write", e))?;
            self.current = Some(OpenShard {
                index: self.opened,
                path,
                out,
            });
            self.opened += 1;
        }
        Ok(())
    }

    fn close_current(&mut self) -> Result<()> {
        if let Some(cur) = self.current.take() {
            let file = cur
                .out
                .finish()
                .map_err(|e| Error::io(&cur.path, "write", e))?;
            file.sync_all()
                .map_err(|e| Error::io(&cur.path, "fsync", e))?;
        }
        Ok(())
    }

    /// Adds a companion file (`config.json`, tokenizer files, ...) to the folder. `file_name` is its path relative
    /// to the folder, components joined by `/` (`1_Pooling/config.json`); it must pass [`check_companion_name`],
    /// must not be a shard's or the index's name, nor a folder of (or a file in) another companion's path, and must
    /// not have been added before. Subfolders are created inside the folder being written, never outside it.
    pub fn add_file(&mut self, file_name: &str, bytes: &[u8]) -> Result<()> {
        let reject = |reason: &str| Error::InvalidFileName {
            dir: self.dir.clone(),
            name: file_name.to_string(),
            reason: reason.to_string(),
        };
        if let Err(reason) = check_companion_name(file_name) {
            return Err(reject(reason));
        }
        if file_name == INDEX_FILE_NAME || self.shards.iter().any(|s| s.file_name == file_name) {
            return Err(reject("the name is reserved for weights"));
        }
        // "a" and "a/b" cannot both exist: one would have to be a file and a folder.
        let clash = self.extra_files.iter().any(|f| {
            let (short, long) = if f.len() < file_name.len() {
                (f.as_str(), file_name)
            } else {
                (file_name, f.as_str())
            };
            long.strip_prefix(short)
                .is_some_and(|rest| rest.starts_with('/'))
        });
        if clash {
            return Err(reject(
                "another companion file's path uses it as a folder, or it as a file",
            ));
        }
        if !self.extra_files.insert(file_name.to_string()) {
            return Err(reject("added twice"));
        }
        let mut path = self.temp.clone();
        for part in file_name.split('/') {
            path.push(part);
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, "create folder", e))?;
        }
        write_file_synced(&path, bytes)
    }

    /// Checks every declared tensor was written, closes and fsyncs the files, writes the index (when sharded), and
    /// renames the folder into place. With `overwrite`, an existing folder is moved aside, the new one renamed in,
    /// then the old one deleted. Returns the output folder.
    pub fn finish(mut self) -> Result<PathBuf> {
        if self.next < self.tensors.len() {
            return Err(Error::MissingTensors {
                dir: self.dir.clone(),
                missing: self.tensors.len() - self.next,
                first: self.tensors[self.next].name.clone(),
            });
        }
        // opens any shard not opened yet (only a checkpoint without tensors has one)
        self.open_through(self.shards.len() - 1)?;
        self.close_current()?;
        if self.shards.len() > 1 {
            let mut weight_map = serde_json::Map::new();
            for s in &self.shards {
                for t in &self.tensors[s.tensors.clone()] {
                    weight_map.insert(t.name.clone(), Value::String(s.file_name.clone()));
                }
            }
            let total: u64 = self.nbytes.iter().map(|&n| n as u64).sum();
            let index = serde_json::json!({
                "metadata": { "total_size": total },
                "weight_map": weight_map,
            });
            let mut text =
                serde_json::to_string_pretty(&index).map_err(|e| Error::InvalidIndex {
                    file: self.temp.join(INDEX_FILE_NAME),
                    reason: e.to_string(),
                })?;
            text.push('\n');
            write_file_synced(&self.temp.join(INDEX_FILE_NAME), text.as_bytes())?;
        }
        sync_dir(&self.temp)?;
        self.install()?;
        self.done = true;
        Ok(self.dir.clone())
    }

    /// Renames the finished temp folder into place. An existing output (with `overwrite`) is replaced by an atomic
    /// exchange where the system has one (Linux `renameat2`), so the final path always holds a complete folder;
    /// otherwise the old folder is moved aside to `.<name>.old-<pid>-<n>` just before the new one is renamed in,
    /// and a run killed between the two renames is recovered by the next run on the same output
    /// ([`recover_leftovers`]).
    fn install(&self) -> Result<()> {
        let parent = self.temp.parent().unwrap_or(Path::new(".")).to_path_buf();
        check_target(&self.dir, self.overwrite)?;
        if std::fs::symlink_metadata(&self.dir).is_ok() {
            match crate::exchange::exchange(&self.temp, &self.dir) {
                Ok(true) => {
                    // The temp name now holds the old folder.
                    sync_dir(&parent)?;
                    std::fs::remove_dir_all(&self.temp)
                        .map_err(|e| Error::io(&self.temp, "remove old output", e))?;
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) => return Err(Error::io(&self.dir, "exchange into place", e)),
            }
            // No exchange: move the old folder aside, put the new one in, then delete the old one.
            let name = self
                .dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("output");
            let aside = parent.join(format!(
                ".{name}.old-{}-{}",
                std::process::id(),
                UNIQUE.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::rename(&self.dir, &aside)
                .map_err(|e| Error::io(&self.dir, "move aside", e))?;
            if let Err(e) = std::fs::rename(&self.temp, &self.dir) {
                // put the old folder back; the new one stays in the temp folder until Drop removes it
                let _ = std::fs::rename(&aside, &self.dir);
                return Err(Error::io(&self.dir, "rename into place", e));
            }
            sync_dir(&parent)?;
            std::fs::remove_dir_all(&aside)
                .map_err(|e| Error::io(&aside, "remove old output", e))?;
        } else {
            std::fs::rename(&self.temp, &self.dir)
                .map_err(|e| Error::io(&self.dir, "rename into place", e))?;
            sync_dir(&parent)?;
        }
        Ok(())
    }
}

/// Whether process `pid` is running (Linux: `/proc/<pid>` exists). Elsewhere every process counts as running,
/// so nothing of another process is touched.
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// The pid in a leftover name `.<name>.<tag>-<pid>-<n>`, if `file` is one for output `name`.
fn leftover_pid(file: &str, name: &str, tag: &str) -> Option<u32> {
    let rest = file.strip_prefix(&format!(".{name}.{tag}-"))?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Cleans what killed runs left beside output folder `dir` (in `parent`): temp folders `.<name>.partial-<pid>-<n>`
/// and moved-aside old outputs `.<name>.old-<pid>-<n>` of processes no longer running. An old output is put back
/// at `dir` when nothing is there (the run was killed between its two renames), and removed otherwise.
/// Returns what it removed or restored. Best effort: errors leave the entry for a later run.
pub fn recover_leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut done = Vec::new();
    let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
        return done;
    };
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Ok(rd) = std::fs::read_dir(&parent) else {
        return done;
    };
    let mut olds = Vec::new();
    for entry in rd.flatten() {
        let Some(file) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let path = entry.path();
        if let Some(pid) = leftover_pid(&file, name, "partial") {
            if !process_alive(pid) && std::fs::remove_dir_all(&path).is_ok() {
                done.push(path);
            }
        } else if let Some(pid) = leftover_pid(&file, name, "old") {
            if !process_alive(pid) {
                olds.push(path);
            }
        }
    }
    olds.sort();
    for old in olds {
        if std::fs::symlink_metadata(dir).is_err() {
            if std::fs::rename(&old, dir).is_ok() {
                done.push(old);
            }
        } else if std::fs::remove_dir_all(&old).is_ok() {
            done.push(old);
        }
    }
    done
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        if !self.done {
            // close the file handle first, then remove everything half-written
            drop(self.current.take());
            let _ = std::fs::remove_dir_all(&self.temp);
        }
    }
}

/// Fails if `dir` exists and may not be replaced.
fn check_target(dir: &Path, overwrite: bool) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(_) if !overwrite => Err(Error::OutputExists {
            path: dir.to_path_buf(),
        }),
        Ok(m) if !m.is_dir() => Err(Error::OutputNotADirectory {
            path: dir.to_path_buf(),
        }),
        _ => Ok(()),
    }
}

/// Creates a fresh hidden sibling folder `.<name>.partial-<pid>-<n>` in `parent`.
fn create_unique_dir(parent: &Path, name: &str) -> Result<PathBuf> {
    let pid = std::process::id();
    loop {
        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        let temp = parent.join(format!(".{name}.partial-{pid}-{n}"));
        match std::fs::create_dir(&temp) {
            Ok(()) => return Ok(temp),
            // a leftover of a crashed process with the same pid: pick the next number
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1_000_000 => continue,
            Err(e) => return Err(Error::io(&temp, "create folder", e)),
        }
    }
}

/// One-shot: writes a checkpoint folder from in-memory tensors (in the given order) and returns its path.
pub fn write_checkpoint(
    dir: impl AsRef<Path>,
    tensors: &[(TensorInfo, Vec<u8>)],
    opts: WriterOptions,
) -> Result<PathBuf> {
    let infos = tensors.iter().map(|(t, _)| t.clone()).collect();
    let mut w = CheckpointWriter::create(dir, infos, opts)?;
    for (t, bytes) in tensors {
        w.write_tensor(&t.name, bytes)?;
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn a_refused_direct_write_falls_back_to_ordinary_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut out = ShardOut::create(&path, true).unwrap();
        let data: Vec<u8> = (0..WRITE_BUFFER + 5000)
            .map(|i| (i * 7 + 3) as u8)
            .collect();
        out.write_all(&data).unwrap();
        // A length direct I/O refuses (when the filesystem does direct I/O at all): the rest goes through the page
        // cache, at the right offset.
        let at = out.start + out.fill;
        out.raw[at..at + 100].copy_from_slice(&[9u8; 100]);
        out.write_block(out.fill + 100).unwrap();
        out.fill = 0;
        out.pos = (data.len() + 100) as u64;
        out.write_all(b"end").unwrap();
        out.finish().unwrap().sync_all().unwrap();
        let mut want = data;
        want.extend_from_slice(&[9u8; 100]);
        want.extend_from_slice(b"end");
        assert!(std::fs::read(&path).unwrap() == want);
    }

    #[test]
    fn plan_is_greedy_in_order() {
        assert_eq!(plan_shards(&[4, 4, 4], 8), vec![0..2, 2..3]);
        assert_eq!(plan_shards(&[4, 4, 4], 12), vec![0..3]);
        // an oversized tensor gets its own shard
        assert_eq!(plan_shards(&[2, 20, 2, 2], 5), vec![0..1, 1..2, 2..4]);
        assert_eq!(plan_shards(&[], 5), vec![0..0]);
        assert_eq!(plan_shards(&[1, 1], 0), vec![0..1, 1..2]);
        // zero-sized tensors never force a new shard
        assert_eq!(plan_shards(&[5, 0, 0], 5), vec![0..3]);
    }

    #[test]
    fn header_is_padded_json() {
        let mut md = BTreeMap::new();
        md.insert("format".to_string(), "pt".to_string());
        let h = build_header(
            &md,
            &[
                TensorInfo::new("a\"b", DType::F16, vec![2, 3]),
                TensorInfo::new("s", DType::F32, vec![]),
            ],
        );
        assert_eq!(h.len() % 8, 0);
        let v: Value = serde_json::from_slice(&h).unwrap();
        assert_eq!(v["__metadata__"]["format"], "pt");
        assert_eq!(v["a\"b"]["data_offsets"], serde_json::json!([0, 12]));
        assert_eq!(v["s"]["data_offsets"], serde_json::json!([12, 16]));
        assert_eq!(v["s"]["shape"], serde_json::json!([]));
    }
}
