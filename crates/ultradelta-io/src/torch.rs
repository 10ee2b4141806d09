//! PyTorch checkpoints: the files `torch.save` writes (`pytorch_model.bin`, `*.pt`, `*.pth`), read without running
//! anything. Two layouts: the zip of PyTorch 1.6 and later, and the legacy one before it (below).
//!
//! Such a file is a zip archive of stored (uncompressed) entries: `<prefix>/data.pkl`, a pickle of the saved object
//! whose tensors refer to storages by key, and one entry `<prefix>/data/<key>` per storage holding its raw
//! little-endian bytes. A pickle is a program for Python's unpickler, which can call any importable function; this
//! module does not unpickle. It interprets the opcodes a saved state dict uses as data: every `GLOBAL` becomes a
//! name, a call of a name becomes an opaque object, except for the few PyTorch functions that rebuild a tensor
//! from a storage (`torch._utils._rebuild_tensor_v2` and the parameter wrappers around it) and
//! `collections.OrderedDict`, whose arguments are checked and read as a tensor's storage key, offset, shape and
//! strides, or as a dict. Nothing is imported, called or executed.
//!
//! Every tensor then becomes a byte range inside its storage's zip entry, so a [`crate::Checkpoint`] maps a PyTorch
//! file as it maps a safetensors one and reads no tensor data at open (but for strided views, copied then). Checked, in
//! order: the zip's end record and central directory lie inside the file (zip64 included; one disk; at most
//! [`MAX_ZIP_ENTRIES`] entries, unique names); one `data.pkl` at most [`MAX_PICKLE_BYTES`], stored; `byteorder`, if
//! present, `little`; the pickle runs to its `STOP` within [`MAX_PICKLE_NODES`] values, references and marks, with
//! known opcodes only; its result is a dict holding a dict of tensors under `state_dict`, `model`, `module` or
//! `model_state_dict` (taken first), or a dict of tensors itself; every key is a string and every value a tensor of a
//! supported storage type whose elements (a row-major range, or a strided view's non-negative steps) lie inside its
//! storage, whose storage entry is stored, unencrypted and of the size its declared element count gives, and inside the
//! file. Tensors may share a storage (tied weights). A strided view is listed with its strides, and copied row-major
//! when the checkpoint opens (`Checkpoint::open`).
//!
//! The legacy layout (PyTorch before 1.6, or `_use_new_zipfile_serialization=False`) is five pickles in a row —
//! the magic number, the protocol version (1001), the system information (which must say little-endian), the
//! object, the list of storage keys — then each listed storage as its element count (int64) and its bytes. The
//! pickles are read as above (within the file's first [`MAX_PICKLE_BYTES`]); each storage's type comes from the
//! object's references to it, its place from the running sum of the sizes before it, checked against the file's end.

use std::collections::HashMap;
use std::path::Path;

use crate::header::{Entry, Header};
use crate::{DType, Error, Result, TensorInfo};

/// The first bytes of every zip file (a local file header).
pub(crate) const ZIP_MAGIC: [u8; 4] = *b"PK\x03\x04";

/// Largest `data.pkl` accepted: 64 MiB. A state dict pickles to ~125 bytes per tensor (SmolLM2's 272 tensors:
/// 34,090 bytes), so a LLaMA-70B's 723 tensors take ~90 KB.
pub const MAX_PICKLE_BYTES: u64 = 64 << 20;
/// Most values, references to them (on the stack, in containers, in the memo) and marks a pickle may create, all
/// counted together: bounds the reader's memory whatever the file declares (a state dict costs ~20 per tensor).
pub const MAX_PICKLE_NODES: usize = 1 << 22;
/// Most entries a zip's central directory may list.
pub const MAX_ZIP_ENTRIES: u64 = 1 << 20;

/// True when `buf` starts like a zip file (what `torch.save` writes since PyTorch 1.6).
pub(crate) fn is_zip(buf: &[u8]) -> bool {
    buf.starts_with(&ZIP_MAGIC)
}

/// True when `buf` starts with PyTorch's legacy magic number (a pickled `0x1950a86a20f9469cfc6c`, in any pickle
/// protocol from 2 on: `PROTO p`, a `FRAME` from protocol 4 on, then the number as `LONG1`): the format before
/// PyTorch 1.6, or `_use_new_zipfile_serialization=False`.
pub(crate) fn is_legacy(buf: &[u8]) -> bool {
    const MAGIC: [u8; 12] = [
        0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
    ];
    let rest = match buf {
        [0x80, 2..=5, 0x95, rest @ ..] => rest.get(8..).unwrap_or_default(),
        [0x80, 2..=5, rest @ ..] => rest,
        _ => return false,
    };
    rest.starts_with(&MAGIC)
}

fn invalid(file: &Path, reason: impl Into<String>) -> Error {
    Error::InvalidTorch {
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

fn bad_tensor(file: &Path, tensor: &str, reason: impl Into<String>) -> Error {
    Error::InvalidTensorEntry {
        file: file.to_path_buf(),
        tensor: tensor.to_string(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The zip container

/// One central-directory entry, with its data located.
#[derive(Debug, Clone)]
struct ZipEntry {
    method: u16,
    flags: u16,
    compressed: u64,
    size: u64,
    /// Offset of the entry's data in the file (after its local header).
    data: u64,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

const EOCD_SIG: u32 = 0x0605_4b50;
const EOCD_LEN: usize = 22;
const LOCATOR_SIG: u32 = 0x0706_4b50;
const LOCATOR_LEN: usize = 20;
const EOCD64_SIG: u32 = 0x0606_4b50;
const EOCD64_LEN: usize = 56;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const CENTRAL_LEN: usize = 46;
const LOCAL_SIG: u32 = 0x0403_4b50;
const LOCAL_LEN: usize = 30;

/// The central directory of the zip held in `buf`: entry name -> entry.
/// Names are borrowed from the file: memory is the entry count's, at most [`MAX_ZIP_ENTRIES`], whatever the names'
/// lengths.
fn zip_directory<'a>(file: &Path, buf: &'a [u8]) -> Result<HashMap<&'a str, ZipEntry>> {
    let bad = |r: String| invalid(file, format!("zip container: {r}"));
    let len = buf.len();
    if len < EOCD_LEN {
        return Err(bad(format!(
            "{len} bytes, too short for a zip file (truncated?)"
        )));
    }
    // The end record sits in the last 22 + 65535 bytes (a comment of at most 65535 bytes follows it); take the
    // last candidate whose comment length reaches exactly the end of the file.
    let lowest = len.saturating_sub(EOCD_LEN + 0xFFFF);
    let eocd = (lowest..=len - EOCD_LEN)
        .rev()
        .find(|&p| le32(buf, p) == EOCD_SIG && p + EOCD_LEN + le16(buf, p + 20) as usize == len)
        .ok_or_else(|| bad("no end-of-central-directory record (truncated file?)".into()))?;
    let (disk, cd_disk) = (le16(buf, eocd + 4), le16(buf, eocd + 6));
    let mut count = u64::from(le16(buf, eocd + 10));
    let mut cd_size = u64::from(le32(buf, eocd + 12));
    let mut cd_offset = u64::from(le32(buf, eocd + 16));
    let mut cd_end_limit = eocd as u64;
    if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
        // zip64: a locator just before the end record points at the zip64 end record.
        let loc = eocd
            .checked_sub(LOCATOR_LEN)
            .filter(|&l| le32(buf, l) == LOCATOR_SIG)
            .ok_or_else(|| bad("zip64 end-of-central-directory locator missing".into()))?;
        let at = le64(buf, loc + 8);
        let at = usize::try_from(at)
            .ok()
            .filter(|&a| a.checked_add(EOCD64_LEN).is_some_and(|e| e <= loc))
            .ok_or_else(|| {
                bad(format!(
                    "zip64 end record at byte {at} lies outside the file"
                ))
            })?;
        if le32(buf, at) != EOCD64_SIG {
            return Err(bad(format!("no zip64 end record at byte {at}")));
        }
        if le32(buf, at + 16) != 0 || le32(buf, at + 20) != 0 {
            return Err(bad("a zip split over several disks".into()));
        }
        count = le64(buf, at + 32);
        cd_size = le64(buf, at + 40);
        cd_offset = le64(buf, at + 48);
        cd_end_limit = at as u64;
    } else if disk != 0 || cd_disk != 0 {
        return Err(bad("a zip split over several disks".into()));
    }
    if count > MAX_ZIP_ENTRIES {
        return Err(bad(format!(
            "{count} entries, over the limit of {MAX_ZIP_ENTRIES}"
        )));
    }
    let cd_end = cd_offset
        .checked_add(cd_size)
        .filter(|&e| e <= cd_end_limit)
        .ok_or_else(|| {
            bad(format!(
                "central directory (bytes {cd_offset}, {cd_size} long) runs past its end record"
            ))
        })?;
    let (mut p, cd_end) = (cd_offset as usize, cd_end as usize);
    let mut out: HashMap<&'a str, ZipEntry> = HashMap::new();
    for i in 0..count {
        if p + CENTRAL_LEN > cd_end || le32(buf, p) != CENTRAL_SIG {
            return Err(bad(format!(
                "central directory entry {i} of {count} is missing or damaged"
            )));
        }
        let flags = le16(buf, p + 8);
        let method = le16(buf, p + 10);
        let mut compressed = u64::from(le32(buf, p + 20));
        let mut size = u64::from(le32(buf, p + 24));
        let (nlen, elen, clen) = (
            le16(buf, p + 28) as usize,
            le16(buf, p + 30) as usize,
            le16(buf, p + 32) as usize,
        );
        let entry_disk = le16(buf, p + 34);
        let mut local = u64::from(le32(buf, p + 42));
        let next = p + CENTRAL_LEN + nlen + elen + clen;
        if next > cd_end {
            return Err(bad(format!(
                "central directory entry {i} runs past the directory"
            )));
        }
        let name = std::str::from_utf8(&buf[p + CENTRAL_LEN..p + CENTRAL_LEN + nlen])
            .map_err(|_| bad(format!("entry {i}'s name is not UTF-8")))?;
        // zip64 extra field: the 64-bit values of the fields set to all ones, in this order.
        let mut extra = &buf[p + CENTRAL_LEN + nlen..p + CENTRAL_LEN + nlen + elen];
        while extra.len() >= 4 {
            let (id, n) = (le16(extra, 0), le16(extra, 2) as usize);
            let Some(body) = extra.get(4..4 + n) else {
                return Err(bad(format!(
                    "entry {name:?}: extra field runs past its end"
                )));
            };
            if id == 1 {
                let mut at = 0;
                for field in [&mut size, &mut compressed, &mut local] {
                    if *field == 0xFFFF_FFFF {
                        if at + 8 > body.len() {
                            return Err(bad(format!("entry {name:?}: zip64 field too short")));
                        }
                        *field = le64(body, at);
                        at += 8;
                    }
                }
            }
            extra = &extra[4 + n..];
        }
        if entry_disk != 0 && entry_disk != 0xFFFF {
            return Err(bad(format!("entry {name:?} is on another disk")));
        }
        // The local header: its own name and extra lengths place the data.
        let data = usize::try_from(local)
            .ok()
            .filter(|&l| l.checked_add(LOCAL_LEN).is_some_and(|e| e <= len))
            .filter(|&l| le32(buf, l) == LOCAL_SIG)
            .map(|l| l + LOCAL_LEN + le16(buf, l + 26) as usize + le16(buf, l + 28) as usize)
            .ok_or_else(|| {
                bad(format!(
                    "entry {name:?}: no local header at byte {local} (truncated or damaged file)"
                ))
            })?;
        let entry = ZipEntry {
            method,
            flags,
            compressed,
            size,
            data: data as u64,
        };
        if out.insert(name, entry).is_some() {
            return Err(bad(format!("entry {name:?} appears twice")));
        }
        p = next;
    }
    Ok(out)
}

/// The bytes of a stored entry, checked to lie inside the file.
fn stored<'a>(file: &Path, buf: &'a [u8], name: &str, e: &ZipEntry) -> Result<&'a [u8]> {
    let bad = |r: String| invalid(file, format!("zip entry {name:?}: {r}"));
    if e.flags & 1 != 0 {
        return Err(bad("encrypted".into()));
    }
    if e.method != 0 || e.compressed != e.size {
        return Err(bad(format!(
            "compressed (method {}); torch.save stores its entries uncompressed (was the file re-zipped?)",
            e.method
        )));
    }
    let end = e
        .data
        .checked_add(e.size)
        .filter(|&end| end <= buf.len() as u64);
    let Some(end) = end else {
        return Err(bad(format!(
            "data (bytes {}, {} long) runs past the end of the {}-byte file (truncated file)",
            e.data,
            e.size,
            buf.len()
        )));
    };
    Ok(&buf[e.data as usize..end as usize])
}

// ---------------------------------------------------------------------------------------------------------------
// The pickle, interpreted as data

/// A value the pickle built, in an arena (containers hold indices: no recursion when building or dropping).
#[derive(Debug)]
enum Node {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too large for `i64`, or a float, bytes: never needed as a number here.
    Other(&'static str),
    Str(Box<str>),
    Tuple(Vec<usize>),
    List(Vec<usize>),
    Dict(Vec<(usize, usize)>),
    Global(Box<str>),
    /// A storage reference (`BINPERSID` of `('storage', type, key, location, numel)`).
    Storage {
        /// Storage type (`torch.FloatStorage`, ...).
        kind: Box<str>,
        key: Box<str>,
        numel: u64,
    },
    Tensor(Box<TensorRef>),
    /// The result of calling a name this reader does not interpret.
    Object(Box<str>),
}

#[derive(Debug)]
struct TensorRef {
    storage_kind: Box<str>,
    key: Box<str>,
    storage_numel: u64,
    offset: u64,
    shape: Vec<usize>,
    strides: Vec<i64>,
}

impl Node {
    fn describe(&self) -> String {
        match self {
            Node::None => "None".into(),
            Node::Bool(_) => "a bool".into(),
            Node::Int(_) => "an int".into(),
            Node::Other(k) => (*k).into(),
            Node::Str(_) => "a string".into(),
            Node::Tuple(v) => format!("a tuple of {}", v.len()),
            Node::List(v) => format!("a list of {}", v.len()),
            Node::Dict(v) => format!("a dict of {} entries", v.len()),
            Node::Global(g) => format!("the name {g}"),
            Node::Storage { kind, .. } => format!("a bare storage ({kind})"),
            Node::Tensor(_) => "a tensor".into(),
            Node::Object(g) => format!("an object built by {g}"),
        }
    }
}

/// The storage types a tensor may use, by their pickled names.
fn storage_dtype(kind: &str) -> Option<DType> {
    Some(match kind {
        "torch.FloatStorage" => DType::F32,
        "torch.DoubleStorage" => DType::F64,
        "torch.HalfStorage" => DType::F16,
        "torch.BFloat16Storage" => DType::BF16,
        "torch.LongStorage" => DType::I64,
        "torch.IntStorage" => DType::I32,
        "torch.ShortStorage" => DType::I16,
        "torch.CharStorage" => DType::I8,
        "torch.ByteStorage" => DType::U8,
        "torch.BoolStorage" => DType::Bool,
        _ => return None,
    })
}

struct Machine<'a> {
    file: &'a Path,
    pkl: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<usize>,
    marks: Vec<usize>,
    memo: HashMap<u64, usize>,
    /// Values, references and marks created so far (at most [`MAX_PICKLE_NODES`]).
    spent: usize,
}

impl<'a> Machine<'a> {
    /// Counts `n` more values, references or marks against [`MAX_PICKLE_NODES`].
    fn spend(&mut self, n: usize) -> Result<()> {
        self.spent = self.spent.saturating_add(n);
        if self.spent > MAX_PICKLE_NODES {
            return Err(self.err(format!(
                "more than {MAX_PICKLE_NODES} values, references and marks (not a state dict)"
            )));
        }
        Ok(())
    }

    fn err(&self, what: impl Into<String>) -> Error {
        invalid(
            self.file,
            format!("data.pkl, byte {}: {}", self.pos, what.into()),
        )
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let end = (self.pos as u64)
            .checked_add(n)
            .filter(|&e| e <= self.pkl.len() as u64);
        let Some(end) = end else {
            return Err(self.err(format!(
                "{n} bytes declared, past the end of the pickle (truncated?)"
            )));
        };
        let s = &self.pkl[self.pos..end as usize];
        self.pos = end as usize;
        Ok(s)
    }

    fn uint(&mut self, n: usize) -> Result<u64> {
        let b = self.take(n as u64)?;
        Ok(b.iter().rev().fold(0u64, |a, &x| (a << 8) | u64::from(x)))
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.pkl[self.pos..];
        let n = rest
            .iter()
            .take(1024)
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("a name without its end of line"))?;
        let s =
            std::str::from_utf8(&rest[..n]).map_err(|_| self.err("a name that is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn push_node(&mut self, n: Node) -> Result<usize> {
        self.spend(1)?;
        self.nodes.push(n);
        Ok(self.nodes.len() - 1)
    }

    fn push(&mut self, n: Node) -> Result<()> {
        let i = self.push_node(n)?;
        self.push_ref(i)
    }

    /// Pushes a reference to an existing value (`DUP`, `BINGET`, a call's result).
    fn push_ref(&mut self, i: usize) -> Result<()> {
        self.spend(1)?;
        self.stack.push(i);
        Ok(())
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<usize> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("pops an empty stack"));
        }
        Ok(self.stack.pop().unwrap_or_default())
    }

    fn pop_mark(&mut self) -> Result<Vec<usize>> {
        let Some(m) = self.marks.pop() else {
            return Err(self.err("no mark to pop to"));
        };
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }

    fn top(&self) -> Result<usize> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("works on an empty stack"));
        }
        Ok(self.stack[self.stack.len() - 1])
    }

    fn string(&mut self, n: u64) -> Result<()> {
        let b = self.take(n)?;
        let node = match std::str::from_utf8(b) {
            Ok(s) => Node::Str(s.into()),
            Err(_) => Node::Other("bytes"),
        };
        self.push(node)
    }

    fn str_of(&self, i: usize) -> Option<&str> {
        match &self.nodes[i] {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    fn int_of(&self, i: usize) -> Option<i64> {
        match self.nodes[i] {
            Node::Int(v) => Some(v),
            Node::Bool(b) => Some(i64::from(b)),
            _ => None,
        }
    }

    fn ints_of(&self, i: usize) -> Option<Vec<i64>> {
        match &self.nodes[i] {
            Node::Tuple(v) | Node::List(v) => v.iter().map(|&j| self.int_of(j)).collect(),
            _ => None,
        }
    }

    fn append(&mut self, target: usize, items: Vec<usize>) -> Result<()> {
        self.spend(items.len())?;
        match &mut self.nodes[target] {
            Node::List(v) => {
                v.extend(items);
                Ok(())
            }
            Node::Object(_) => Ok(()),
            other => {
                let d = other.describe();
                Err(self.err(format!("appends to {d}")))
            }
        }
    }

    fn set_items(&mut self, target: usize, items: Vec<usize>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("an odd number of values for a dict's keys and values"));
        }
        self.spend(items.len())?;
        match &mut self.nodes[target] {
            Node::Dict(v) => {
                v.extend(items.chunks(2).map(|kv| (kv[0], kv[1])));
                Ok(())
            }
            Node::Object(_) => Ok(()),
            other => {
                let d = other.describe();
                Err(self.err(format!("sets items of {d}")))
            }
        }
    }

    /// `BINPERSID`: PyTorch's storage reference.
    fn persistent(&mut self, pid: usize) -> Result<Node> {
        let Node::Tuple(t) = &self.nodes[pid] else {
            return Err(self.err(format!(
                "a persistent id that is {}, not a tuple",
                self.nodes[pid].describe()
            )));
        };
        let t = t.clone();
        // Legacy files add a sixth element, a view's metadata: None for a storage saved whole.
        let legacy_view = t.len() == 6 && !matches!(self.nodes[t[5]], Node::None);
        let storage = ((t.len() == 5 || t.len() == 6)
            && !legacy_view
            && self.str_of(t[0]) == Some("storage"))
        .then(|| {
            let kind = match &self.nodes[t[1]] {
                Node::Global(g) => Some(g.clone()),
                _ => None,
            };
            let key = self.str_of(t[2]).map(Box::<str>::from);
            let numel = self.int_of(t[4]).and_then(|n| u64::try_from(n).ok());
            (kind, key, numel)
        });
        match storage {
            Some((Some(kind), Some(key), Some(numel))) => Ok(Node::Storage { kind, key, numel }),
            _ => Err(self.err(
                "a persistent id that is not ('storage', type, key, location, element count)",
            )),
        }
    }

    /// `REDUCE`: a call, interpreted for the names that rebuild tensors and dicts, opaque otherwise.
    fn call(&mut self, callable: usize, args: usize, depth: u32) -> Result<usize> {
        let name = match &self.nodes[callable] {
            Node::Global(g) => g.clone(),
            other => {
                let d = other.describe();
                return Err(self.err(format!("calls {d}")));
            }
        };
        let argv = match &self.nodes[args] {
            Node::Tuple(v) => v.clone(),
            other => {
                let d = other.describe();
                return Err(self.err(format!("calls {name} with {d} as arguments")));
            }
        };
        let node = match &*name {
            "collections.OrderedDict" if argv.is_empty() => Node::Dict(Vec::new()),
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
                self.tensor(&name, &argv)?
            }
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state"
                if !argv.is_empty() && matches!(self.nodes[argv[0]], Node::Tensor(_)) =>
            {
                return Ok(argv[0]);
            }
            "torch._tensor._rebuild_from_type_v2" if argv.len() >= 3 && depth < 2 => {
                return self.call(argv[0], argv[2], depth + 1);
            }
            _ => Node::Object(name),
        };
        self.push_node(node)
    }

    fn tensor(&self, name: &str, argv: &[usize]) -> Result<Node> {
        let bad = |what: &str| self.err(format!("{name} with {what}"));
        if argv.len() < 4 {
            return Err(bad(&format!(
                "{} arguments, expected at least 4",
                argv.len()
            )));
        }
        let Node::Storage { kind, key, numel } = &self.nodes[argv[0]] else {
            return Err(bad(&format!(
                "{} in place of a storage",
                self.nodes[argv[0]].describe()
            )));
        };
        let offset = self
            .int_of(argv[1])
            .and_then(|o| u64::try_from(o).ok())
            .ok_or_else(|| bad("an offset that is not a non-negative int"))?;
        let shape = self
            .ints_of(argv[2])
            .and_then(|v| v.into_iter().map(|d| usize::try_from(d).ok()).collect())
            .ok_or_else(|| bad("a shape that is not a tuple of non-negative ints"))?;
        let strides = self
            .ints_of(argv[3])
            .ok_or_else(|| bad("strides that are not a tuple of ints"))?;
        Ok(Node::Tensor(Box::new(TensorRef {
            storage_kind: kind.clone(),
            key: key.clone(),
            storage_numel: *numel,
            offset,
            shape,
            strides,
        })))
    }

    fn run(&mut self) -> Result<usize> {
        loop {
            let Some(&op) = self.pkl.get(self.pos) else {
                return Err(self.err("the pickle ends before its STOP (truncated?)"));
            };
            self.pos += 1;
            match op {
                0x80 => {
                    let p = self.uint(1)?;
                    if p > 5 {
                        return Err(self.err(format!("pickle protocol {p}, expected at most 5")));
                    }
                }
                0x95 => {
                    self.uint(8)?;
                }
                b'.' => {
                    let r = self.pop()?;
                    return Ok(r);
                }
                b'(' => {
                    self.spend(1)?;
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    if self.stack.len() == self.floor() && !self.marks.is_empty() {
                        self.marks.pop();
                    } else {
                        self.pop()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.push_ref(t)?;
                }
                b'N' => self.push(Node::None)?,
                0x88 => self.push(Node::Bool(true))?,
                0x89 => self.push(Node::Bool(false))?,
                b'J' => {
                    let v = self.uint(4)? as u32 as i32;
                    self.push(Node::Int(i64::from(v)))?;
                }
                b'K' => {
                    let v = self.uint(1)?;
                    self.push(Node::Int(v as i64))?;
                }
                b'M' => {
                    let v = self.uint(2)?;
                    self.push(Node::Int(v as i64))?;
                }
                0x8a => {
                    let n = self.uint(1)?;
                    let b = self.take(n)?;
                    let node = if n == 0 {
                        Node::Int(0)
                    } else if n <= 8 {
                        let mut a = [if b[b.len() - 1] & 0x80 != 0 { 0xFF } else { 0 }; 8];
                        a[..b.len()].copy_from_slice(b);
                        Node::Int(i64::from_le_bytes(a))
                    } else {
                        Node::Other("a large int")
                    };
                    self.push(node)?;
                }
                0x8b => {
                    let n = self.uint(4)?;
                    self.take(n)?;
                    self.push(Node::Other("a large int"))?;
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Node::Other("a float"))?;
                }
                b'X' | b'T' => {
                    let n = self.uint(4)?;
                    self.string(n)?;
                }
                0x8c | b'U' => {
                    let n = self.uint(1)?;
                    self.string(n)?;
                }
                0x8d => {
                    let n = self.uint(8)?;
                    self.string(n)?;
                }
                b'B' | 0x8e | 0x96 | b'C' => {
                    let n = match op {
                        b'B' => self.uint(4)?,
                        b'C' => self.uint(1)?,
                        _ => self.uint(8)?,
                    };
                    self.take(n)?;
                    self.push(Node::Other("bytes"))?;
                }
                b')' => self.push(Node::Tuple(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < self.floor() + n {
                        return Err(self.err("builds a tuple from an empty stack"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Node::Tuple(items))?;
                }
                b']' | 0x8f => self.push(Node::List(Vec::new()))?,
                b'l' | 0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Node::List(items))?;
                }
                b'a' => {
                    let v = self.pop()?;
                    let t = self.top()?;
                    self.append(t, vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    let t = self.top()?;
                    self.append(t, items)?;
                }
                b'}' => self.push(Node::Dict(Vec::new()))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    let i = self.push_node(Node::Dict(Vec::new()))?;
                    self.set_items(i, items)?;
                    self.stack.push(i);
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let t = self.top()?;
                    self.set_items(t, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let t = self.top()?;
                    self.set_items(t, items)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Node::Global(format!("{module}.{name}").into()))?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(m), Some(n)) = (self.str_of(module), self.str_of(name)) else {
                        return Err(self.err("STACK_GLOBAL of values that are not strings"));
                    };
                    let g = format!("{m}.{n}");
                    self.push(Node::Global(g.into()))?;
                }
                b'q' | b'r' | 0x94 => {
                    let key = match op {
                        b'q' => self.uint(1)?,
                        b'r' => self.uint(4)?,
                        _ => self.memo.len() as u64,
                    };
                    let t = self.top()?;
                    self.spend(1)?;
                    self.memo.insert(key, t);
                }
                b'h' | b'j' => {
                    let key = if op == b'h' {
                        self.uint(1)?
                    } else {
                        self.uint(4)?
                    };
                    let Some(&i) = self.memo.get(&key) else {
                        return Err(self.err(format!("memo entry {key} used before it is set")));
                    };
                    self.push_ref(i)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let node = self.persistent(pid)?;
                    self.push(node)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let i = self.call(callable, args, 0)?;
                    self.stack.push(i);
                }
                0x81 | 0x92 => {
                    if op == 0x92 {
                        self.pop()?;
                    }
                    self.pop()?;
                    let cls = self.pop()?;
                    let what = match &self.nodes[cls] {
                        Node::Global(g) => g.clone(),
                        _ => "an unnamed class".into(),
                    };
                    self.push(Node::Object(what))?;
                }
                b'b' => {
                    // An object's state (an OrderedDict's `_metadata`, say): not needed.
                    self.pop()?;
                    self.top()?;
                }
                _ => {
                    return Err(self.err(format!(
                        "pickle opcode {op:#04x} ({:?}), which torch.save does not write",
                        op as char
                    )))
                }
            }
        }
    }
}

/// Keys under which a checkpoint wraps its state dict (`{"model": state_dict, "epoch": ..}`), tried in order.
const WRAPPER_KEYS: [&str; 4] = ["state_dict", "model", "module", "model_state_dict"];

/// Where a storage's bytes are in the file: (offset, length in bytes), or why they cannot be found.
type Resolve<'r> = dyn Fn(&str) -> std::result::Result<(u64, u64), String> + 'r;

impl<'a> Machine<'a> {
    fn new(file: &'a Path, pkl: &'a [u8], pos: usize) -> Machine<'a> {
        Machine {
            file,
            pkl,
            pos,
            nodes: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            spent: 0,
        }
    }
}

/// Parses the PyTorch checkpoint held in `buf` (the zip format, or the legacy one) into validated tensor entries
/// (absolute byte ranges in the file). `file` names the file in errors.
pub(crate) fn parse(file: &Path, buf: &[u8]) -> Result<Header> {
    if is_legacy(buf) {
        parse_legacy(file, buf)
    } else {
        parse_zip(file, buf)
    }
}

fn parse_zip(file: &Path, buf: &[u8]) -> Result<Header> {
    let dir = zip_directory(file, buf)?;
    let mut pickles: Vec<&str> = dir
        .keys()
        .copied()
        .filter(|n| {
            *n == "data.pkl"
                || n.strip_suffix("/data.pkl")
                    .is_some_and(|p| !p.contains('/'))
        })
        .collect();
    pickles.sort();
    let pkl_name = match pickles.as_slice() {
        [one] => *one,
        [] => {
            return Err(invalid(
                file,
                "a zip without data.pkl: not a checkpoint written by torch.save",
            ))
        }
        many => {
            return Err(invalid(
                file,
                format!("{} data.pkl entries, expected one", many.len()),
            ))
        }
    };
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    let pkl_entry = &dir[pkl_name];
    if pkl_entry.size > MAX_PICKLE_BYTES {
        return Err(invalid(
            file,
            format!(
                "data.pkl is {} bytes, over the limit of {MAX_PICKLE_BYTES}",
                pkl_entry.size
            ),
        ));
    }
    let pkl = stored(file, buf, pkl_name, pkl_entry)?;
    if let Some(e) = dir.get(format!("{prefix}byteorder").as_str()) {
        let order = stored(file, buf, "byteorder", e)?;
        if order != b"little" {
            return Err(invalid(
                file,
                format!(
                    "byte order {:?}: only little-endian checkpoints are read",
                    String::from_utf8_lossy(&order[..order.len().min(16)])
                ),
            ));
        }
    }
    let mut m = Machine::new(file, pkl, 0);
    let root = m.run()?;
    let resolve = |key: &str| {
        let name = format!("{prefix}data/{key}");
        let e = dir
            .get(name.as_str())
            .ok_or_else(|| format!("its storage {name:?} is not in the zip"))?;
        stored(file, buf, &name, e).map_err(|e| e.to_string())?;
        Ok((e.data, e.size))
    };
    state_dict(file, &m.nodes, root, &resolve)
}

/// PyTorch's format before 1.6: five pickles (magic number, protocol version, system info, the object, the storage
/// keys), then each storage in the keys' order as its element count (int64) and its bytes, to the end of the file.
fn parse_legacy(file: &Path, buf: &[u8]) -> Result<Header> {
    // The pickles lie before the storages; each is read from where the previous one stopped.
    let pkl = &buf[..buf.len().min(MAX_PICKLE_BYTES as usize)];
    let mut pos = 0;
    let mut next = || -> Result<(Vec<Node>, usize, usize)> {
        let mut m = Machine::new(file, pkl, pos);
        let root = m.run()?;
        pos = m.pos;
        Ok((m.nodes, root, pos))
    };
    let _magic = next()?;
    let (nodes, root, _) = next()?;
    if !matches!(nodes[root], Node::Int(1001)) {
        return Err(invalid(
            file,
            format!(
                "legacy format: protocol version {}, expected 1001",
                nodes[root].describe()
            ),
        ));
    }
    let (nodes, root, _) = next()?;
    let little = match &nodes[root] {
        Node::Dict(kv) => kv.iter().any(|&(k, v)| {
            matches!(&nodes[k], Node::Str(s) if &**s == "little_endian")
                && matches!(nodes[v], Node::Bool(true))
        }),
        _ => false,
    };
    if !little {
        return Err(invalid(
            file,
            "legacy format: the system information does not say little-endian: only little-endian checkpoints are read",
        ));
    }
    let (obj_nodes, obj_root, _) = next()?;
    let (nodes, root, mut at) = next()?;
    let keys: Vec<&str> = match &nodes[root] {
        Node::List(v) => v
            .iter()
            .map(|&i| match &nodes[i] {
                Node::Str(s) => Some(&**s),
                _ => None,
            })
            .collect::<Option<_>>(),
        _ => None,
    }
    .ok_or_else(|| {
        invalid(
            file,
            "legacy format: the storage keys are not a list of strings",
        )
    })?;
    // Each storage's type (hence element size), from the object's storage references.
    let mut kinds: HashMap<&str, &str> = HashMap::new();
    for n in &obj_nodes {
        if let Node::Storage { kind, key, .. } = n {
            if kinds.insert(key, kind).is_some_and(|k| k != &**kind) {
                return Err(invalid(
                    file,
                    format!("legacy format: storage {key:?} declared with two types"),
                ));
            }
        }
    }
    let mut places: HashMap<&str, (u64, u64)> = HashMap::new();
    for key in keys {
        let bad = |r: String| invalid(file, format!("legacy format: storage {key:?}: {r}"));
        let kind = kinds
            .get(key)
            .ok_or_else(|| bad("listed but never referenced".into()))?;
        let es = storage_dtype(kind)
            .ok_or_else(|| {
                bad(format!(
                    "storage type {kind} is not supported (expected a float, integer or bool storage)"
                ))
            })?
            .size() as u64;
        let Some(count) = buf.get(at..at + 8) else {
            return Err(bad(
                "its element count lies past the end of the file (truncated file)".into(),
            ));
        };
        let numel = u64::from_le_bytes(count.try_into().unwrap_or_default());
        let len = numel.checked_mul(es);
        let end = len.and_then(|l| (at as u64 + 8).checked_add(l));
        let Some(end) = end.filter(|&e| e <= buf.len() as u64) else {
            return Err(bad(format!(
                "{numel} elements run past the end of the {}-byte file (truncated file)",
                buf.len()
            )));
        };
        if places
            .insert(key, (at as u64 + 8, end - at as u64 - 8))
            .is_some()
        {
            return Err(bad("listed twice".into()));
        }
        at = end as usize;
    }
    let resolve = |key: &str| {
        places
            .get(key)
            .copied()
            .ok_or_else(|| format!("its storage {key:?} is not in the file's list of storages"))
    };
    state_dict(file, &obj_nodes, obj_root, &resolve)
}

/// The state dict the pickle's result holds (itself, or under one of [`WRAPPER_KEYS`]), as tensor entries whose
/// storages `resolve` places in the file.
fn state_dict(file: &Path, nodes: &[Node], root: usize, resolve: &Resolve<'_>) -> Result<Header> {
    let is_tensor_dict = |i: usize| match &nodes[i] {
        Node::Dict(kv) => kv.iter().any(|&(_, v)| matches!(nodes[v], Node::Tensor(_))),
        _ => false,
    };
    let key_str = |i: usize| match &nodes[i] {
        Node::Str(s) => Some(&**s),
        _ => None,
    };
    // A state dict under a wrapper key first: a wrapper may hold a bare tensor beside it (`"best": tensor(..)`),
    // while a state dict's values are tensors, never dicts.
    let wrapped = match &nodes[root] {
        Node::Dict(kv) => WRAPPER_KEYS.iter().find_map(|w| {
            kv.iter()
                .find(|&&(k, v)| key_str(k) == Some(*w) && is_tensor_dict(v))
                .map(|&(_, v)| v)
        }),
        _ => None,
    };
    let state = if let Some(state) = wrapped {
        state
    } else if is_tensor_dict(root) {
        root
    } else if let Node::Dict(kv) = &nodes[root] {
        let keys: Vec<String> = kv
            .iter()
            .take(8)
            .map(|&(k, _)| key_str(k).map_or_else(|| "?".into(), |s| format!("{s:?}")))
            .collect();
        return Err(invalid(
            file,
            format!(
                "holds a dict of {} entries ({}{}) with no tensors, and no state dict under {}",
                kv.len(),
                keys.join(", "),
                if kv.len() > 8 { ", ..." } else { "" },
                WRAPPER_KEYS.join(", ")
            ),
        ));
    } else {
        // A whole model pickled (`torch.save(model)`) is an object of its class: its state dict is what to save.
        let hint = if matches!(nodes[root], Node::Object(_)) {
            "; a whole model saved with torch.save(model)? save model.state_dict() instead"
        } else {
            ""
        };
        return Err(invalid(
            file,
            format!(
                "holds {}, not a state dict (a dict of tensors){hint}",
                nodes[root].describe()
            ),
        ));
    };
    let Node::Dict(kv) = &nodes[state] else {
        unreachable!("checked to be a dict")
    };
    let mut seen = std::collections::HashSet::new();
    let mut entries = Vec::with_capacity(kv.len());
    for &(k, v) in kv {
        let Some(name) = key_str(k) else {
            return Err(invalid(
                file,
                format!(
                    "a state dict key that is {}, not a string",
                    nodes[k].describe()
                ),
            ));
        };
        if name.is_empty() || name == "__metadata__" {
            return Err(bad_tensor(file, name, "a reserved or empty tensor name"));
        }
        if !seen.insert(name) {
            return Err(bad_tensor(file, name, "appears twice in the state dict"));
        }
        let Node::Tensor(t) = &nodes[v] else {
            return Err(bad_tensor(
                file,
                name,
                format!(
                    "is {}, not a tensor (only tensors can be read from a state dict)",
                    nodes[v].describe()
                ),
            ));
        };
        entries.push(tensor_entry(file, name, t, resolve)?);
    }
    // What transformers writes in the safetensors files it saves: a checkpoint rebuilt from this one then carries it.
    let metadata = [("format".to_string(), "pt".to_string())].into();
    Ok(Header { entries, metadata })
}

fn tensor_entry(file: &Path, name: &str, t: &TensorRef, resolve: &Resolve<'_>) -> Result<Entry> {
    let bad = |r: String| bad_tensor(file, name, r);
    let dtype = storage_dtype(&t.storage_kind).ok_or_else(|| {
        bad(format!(
            "storage type {} is not supported (expected a float, integer or bool storage)",
            t.storage_kind
        ))
    })?;
    let info = TensorInfo::new(name, dtype, t.shape.clone());
    // the byte size must fit: every range below is computed from it
    info.checked_nbytes()
        .ok_or_else(|| bad(format!("shape {:?} overflows", t.shape)))?;
    let numel = info.numel();
    if t.strides.len() != t.shape.len() {
        return Err(bad(format!(
            "{} strides for shape {:?}",
            t.strides.len(),
            t.shape
        )));
    }
    // Row-major strides (any stride for a dimension of size 1; anything for an empty tensor).
    let mut expect = 1i64;
    let mut contiguous = true;
    for (&d, &s) in t.shape.iter().zip(&t.strides).rev() {
        if d != 1 && s != expect {
            contiguous = false;
        }
        expect = expect.saturating_mul(d as i64);
    }
    let contiguous = numel == 0 || contiguous;
    // Elements the tensor spans in its storage, from its first: the last one's index plus one. A view's are
    // `1 + Σ (d − 1)·stride`, a row-major tensor's its element count.
    let span = if contiguous {
        Some(numel as u64)
    } else {
        t.shape
            .iter()
            .zip(&t.strides)
            .try_fold(1u64, |acc, (&d, &s)| {
                if d == 1 {
                    return Some(acc); // any stride: never stepped
                }
                let s = u64::try_from(s).ok()?;
                acc.checked_add((d as u64 - 1).checked_mul(s)?)
            })
    };
    let Some(span) = span else {
        return Err(bad(format!(
            "a view of shape {:?} with strides {:?}: expected non-negative strides whose extent fits",
            t.shape, t.strides
        )));
    };
    let es = dtype.size() as u64;
    let (data, size) = resolve(&t.key).map_err(bad)?;
    if t.storage_numel.checked_mul(es) != Some(size) {
        return Err(bad(format!(
            "storage {:?} holds {size} bytes, but {} elements of {} are declared",
            t.key, t.storage_numel, t.storage_kind
        )));
    }
    let fits = t
        .offset
        .checked_add(span)
        .is_some_and(|e| e <= t.storage_numel);
    if !fits {
        return Err(bad(format!(
            "elements {}..{} lie outside its storage of {} elements",
            t.offset,
            t.offset.saturating_add(span),
            t.storage_numel
        )));
    }
    // Inside the file: the storage was checked to be, and the tensor to lie inside the storage.
    let start = (data + t.offset * es) as usize;
    // A row-major tensor spans its bytes; a view (a transposed weight, a slice of a fused one) spans its elements and
    // keeps its strides: they are gathered row-major when the checkpoint opens (`Checkpoint::open`), within a budget
    // of the checkpoint's size.
    let strides = (!contiguous).then(|| t.strides.iter().map(|&s| s.max(0) as usize).collect());
    Ok(Entry {
        info,
        start,
        end: start + (span * es) as usize,
        strides,
    })
}

#[cfg(test)]
#[path = "torch_tests.rs"]
mod tests;
