//! Read-only, memory-mapped checkpoints: single file, folder, or sharded folder.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use serde::Deserialize;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::convert::decode_into;
use crate::header::{self, UniqueMap, MAX_HEADER_BYTES};
use crate::{Error, Result, TensorInfo};

/// Name of the single-file weights in a Hugging Face folder.
pub const SINGLE_FILE_NAME: &str = "model.safetensors";
/// Name of the sharded-checkpoint index in a Hugging Face folder.
pub const INDEX_FILE_NAME: &str = "model.safetensors.index.json";
/// The weight file of a Hugging Face checkpoint saved by PyTorch (`save_pretrained(.., safe_serialization=False)`).
pub const TORCH_FILE_NAME: &str = "pytorch_model.bin";
/// The index of a sharded Hugging Face checkpoint saved by PyTorch.
pub const TORCH_INDEX_FILE_NAME: &str = "pytorch_model.bin.index.json";
/// Companion files larger than this are not reported by [`Checkpoint::companion_files`] (64 MiB).
pub const MAX_COMPANION_BYTES: u64 = 64 * 1024 * 1024;

/// Subfolder levels below the model folder that [`Checkpoint::companion_files`] walks (`1_Pooling/` is one).
pub const MAX_COMPANION_DEPTH: usize = 8;
/// Companion files [`Checkpoint::companion_files`] lists at most.
pub const MAX_COMPANION_COUNT: usize = 4096;

/// File extensions that hold weights (never companion files).
const WEIGHT_EXTENSIONS: [&str; 9] = [
    "safetensors",
    "bin",
    "pt",
    "pth",
    "ckpt",
    "h5",
    "msgpack",
    "onnx",
    "gguf",
];

/// Number of sampled windows per tensor in [`Checkpoint::fingerprint`].
const FP_WINDOWS: usize = 64;
/// Bytes per sampled window in [`Checkpoint::fingerprint`].
const FP_WINDOW: usize = 64;

/// Read-ahead hint for the memory maps.
#[derive(Clone, Copy)]
enum AccessPattern {
    Random,
    Sequential,
}

/// Where a tensor's bytes live: a range of `maps[map]`, for the weight file `files[file]` (the same index, except for
/// a strided view gathered into the temporary map, see `Checkpoint::gather_views`).
#[derive(Debug, Clone, Copy)]
struct Loc {
    file: usize,
    map: usize,
    start: usize,
    end: usize,
}

/// A tensor as a header lists it, before [`Checkpoint::assemble`]: its strides if it is a strided view.
type Listed = (TensorInfo, Loc, Option<Vec<usize>>);

/// A checkpoint parsed, before its strided views (the strides of tensor `i` in `views[i]`, if it is one) are copied.
struct Parsed {
    checkpoint: Checkpoint,
    views: Vec<Option<Vec<usize>>>,
}

/// A read-only, memory-mapped checkpoint: safetensors or PyTorch (`torch.save`), one file or several shards.
/// `Send + Sync`.
///
/// Opening parses and validates every header (see [`open`](Self::open) for the order of checks) but reads no
/// tensor data, except a PyTorch file's strided views, copied row-major then; [`view`](Self::view) borrows bytes
/// straight from the map.
pub struct Checkpoint {
    path: PathBuf,
    dir: PathBuf,
    files: Vec<PathBuf>,
    index: Option<PathBuf>,
    maps: Vec<Mapped>,
    /// Sorted by name.
    tensors: Vec<TensorInfo>,
    /// Parallel to `tensors`.
    locs: Vec<Loc>,
    metadata: BTreeMap<String, String>,
    size_on_disk: u64,
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("weight_files", &self.files)
            .field("tensors", &self.tensors.len())
            .field("size_on_disk", &self.size_on_disk)
            .finish()
    }
}

#[derive(Deserialize)]
struct IndexJson {
    weight_map: UniqueMap<String>,
}

/// Memory-maps `path` after checking it can hold a safetensors prefix.
/// A weight file's memory map and its open handle (for positioned reads that touch no page of the map).
struct Mapped {
    map: Mmap,
    file: File,
}

impl Mapped {
    /// Drops this process's mapping of the pages of `start..end` (a hint: failures are ignored; see
    /// [`Checkpoint::release`]).
    fn unmap_pages(&self, start: usize, end: usize) {
        #[cfg(unix)]
        if end > start {
            // SAFETY: the map is a read-only shared file mapping. MADV_DONTNEED on it only removes this process's
            // page-table entries; the next access refaults the same bytes from the page cache or the file, so every
            // `&[u8]` view stays valid and unchanged (the file is immutable, see `map_file`).
            #[allow(unsafe_code)]
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    end - start,
                )
            };
        }
        #[cfg(not(unix))]
        let _ = (start, end);
    }
}

impl std::ops::Deref for Mapped {
    type Target = Mmap;
    fn deref(&self) -> &Mmap {
        &self.map
    }
}

fn map_file(path: &Path) -> Result<Mapped> {
    // Before opening: opening a FIFO for reading blocks until a writer appears.
    crate::error::check_regular_file(path)?;
    let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, "stat", e))?;
    if let Some(kind) = crate::error::non_regular_kind(&meta) {
        // replaced between the check and the open
        return Err(Error::NotARegularFile {
            path: path.to_path_buf(),
            kind,
        });
    }
    let len = meta.len();
    if len < header::PREFIX_LEN as u64 {
        // also avoids mapping an empty file, which fails on some platforms
        return Err(Error::HeaderTooSmall {
            file: path.to_path_buf(),
            len,
        });
    }
    // SAFETY: a memory map is only sound while no one modifies or truncates the file underneath it (that would be
    // undefined behaviour for the `&[u8]` views we hand out). Checkpoints are treated as immutable inputs: callers
    // must not modify a weight file while a `Checkpoint` built from it is alive. The `CheckpointWriter` of this crate
    // never writes into existing files: it writes a new folder and renames it into place, which leaves the mapped
    // inode intact.
    #[allow(unsafe_code)]
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, "memory-map", e))?;
    // Tensors are processed front to back; this is only a hint, so its failure is not an error.
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(Mapped { map, file })
}

/// Bytes `Checkpoint::gather_views` buffers before each write: 8 MiB.
pub(crate) const GATHER_CHUNK: usize = 8 << 20;

impl Checkpoint {
    /// Copies every strided view (`views[i]`, the strides of tensor `i` if it is one) row-major into one unnamed
    /// temporary file, maps it and points the views' locations there; nothing if there is none. Such tensors come
    /// from PyTorch files saved without `.contiguous()`: transformers' conversions from TensorFlow left every kernel
    /// transposed in place, and a trainer can save a slice of a fused weight. Everything downstream then reads them
    /// as any other tensor, and their copy lives in the page cache, not in this process's memory. The file is made
    /// in [`std::env::temp_dir`] (`TMPDIR`) and vanishes with the checkpoint, or with the process. Views may overlap
    /// (a stride may be 0), so their total is bounded: at most the checkpoint's size on disk, whatever the file
    /// declares. `copied(done, total)` after each view, in elements; `false` from it stops with
    /// [`Error::Cancelled`].
    fn gather_views(
        &mut self,
        views: &[Option<Vec<usize>>],
        copied: &mut dyn FnMut(u64, u64) -> bool,
    ) -> Result<()> {
        use std::io::Write;
        let listed: Vec<usize> = (0..views.len()).filter(|&i| views[i].is_some()).collect();
        let Some(&first) = listed.first() else {
            return Ok(());
        };
        let budget = self.size_on_disk;
        let (mut total, mut elements) = (0u64, 0u64);
        for &i in &listed {
            let info = &self.tensors[i];
            total = total.saturating_add(info.nbytes() as u64);
            elements += info.numel() as u64;
            if total > budget {
                return Err(Error::InvalidTensorEntry {
                    file: self.files[self.locs[i].file].clone(),
                    tensor: info.name.clone(),
                    reason: format!(
                        "the strided views up to this one hold {total} bytes, more than the checkpoint's {budget} bytes on disk (views are copied row-major when it opens; at most the checkpoint's size is)"
                    ),
                });
            }
        }
        let dir = std::env::temp_dir();
        let fail =
            |ck: &Checkpoint, i: usize, op: &'static str, source: std::io::Error| Error::ViewCopy {
                file: ck.files[ck.locs[i].file].clone(),
                tensor: ck.tensors[i].name.clone(),
                dir: dir.clone(),
                op,
                source,
            };
        let mut file = tempfile::tempfile_in(&dir).map_err(|e| fail(self, first, "create", e))?;
        let mut buf = Vec::with_capacity(GATHER_CHUNK.min(total as usize));
        let (mut at, mut done) = (0usize, 0u64);
        let map = self.maps.len();
        for &i in &listed {
            let (info, loc) = (&self.tensors[i], self.locs[i]);
            let strides = views[i].as_deref().unwrap_or_default();
            let src = &self.maps[loc.map][loc.start..loc.end];
            gather(
                src,
                &info.shape,
                strides,
                info.dtype.size(),
                &mut buf,
                &mut |b| file.write_all(b),
            )
            .map_err(|e| fail(self, i, "write", e))?;
            // the source pages read: out of this process's resident set again, as `release` does after a tensor
            self.maps[loc.map].unmap_pages(loc.start, loc.end);
            let n = info.nbytes();
            done += info.numel() as u64;
            self.locs[i] = Loc {
                file: loc.file,
                map,
                start: at,
                end: at + n,
            };
            at += n;
            if !copied(done, elements) {
                return Err(Error::Cancelled {
                    path: self.path.clone(),
                });
            }
        }
        // SAFETY: the file has no name and only this handle, which `Mapped` keeps: nothing writes it from here on
        // (see `map_file` on why the views need that).
        #[allow(unsafe_code)]
        let mapped = unsafe { Mmap::map(&file) }.map_err(|e| fail(self, first, "memory-map", e))?;
        self.maps.push(Mapped { map: mapped, file });
        Ok(())
    }
}

/// Appends the elements of a strided view, row-major, to `buf`, handing `buf` to `flush` (then emptied) whenever it
/// holds [`GATHER_CHUNK`] bytes and at the end: `buf` never holds twice that. `src` starts at the view's first
/// element; `strides` are in elements of `size` bytes, one per dimension of `shape`.
///
/// The last two dimensions are copied in bands of up to 512 rows, in parallel, and tiles of 64 columns within a
/// band: the source lines of a transposed weight's tile (strides `(1, rows)`) then stay in cache while it is
/// copied, and each source page is read by few bands. The bytes do not depend on the thread count.
pub(crate) fn gather(
    src: &[u8],
    shape: &[usize],
    strides: &[usize],
    size: usize,
    buf: &mut Vec<u8>,
    flush: &mut impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    // as a stack of matrices: `outer` dimensions, then rows × cols (a vector is one row, a scalar one element)
    let n = shape.len();
    let (rows, row_step) = if n >= 2 {
        (shape[n - 2], strides[n - 2] * size)
    } else {
        (1, 0)
    };
    let (cols, col_step) = if n >= 1 {
        (shape[n - 1], strides[n - 1] * size)
    } else {
        (1, 0)
    };
    let outer = &shape[..n.saturating_sub(2)];
    // blocks of rows under GATHER_CHUNK bytes, copied in bands of up to 512 rows, at least one per thread, in
    // parallel; a row longer than that in pieces of it
    let block = (GATHER_CHUNK / (cols * size)).max(1);
    let band = block
        .div_ceil(rayon::current_num_threads().max(1))
        .clamp(1, 512);
    let piece = cols.min(GATHER_CHUNK / size).max(1);
    let mut index = vec![0usize; outer.len()];
    // byte offset of the current matrix's first element
    let mut first = 0usize;
    for _ in 0..outer.iter().product::<usize>() {
        let mut r0 = 0;
        while r0 < rows {
            let h = block.min(rows - r0);
            // `h` whole rows, or (h = 1) one row piece by piece
            let mut c0 = 0;
            while c0 < cols {
                let w = if h == 1 { piece.min(cols - c0) } else { cols };
                let at = buf.len();
                buf.resize(at + h * w * size, 0);
                let top = first + r0 * row_step + c0 * col_step;
                buf[at..]
                    .par_chunks_mut(band * w * size)
                    .enumerate()
                    .for_each(|(b, dst)| {
                        let (top, h) = (top + b * band * row_step, dst.len() / (w * size));
                        match size {
                            1 => copy_band::<1>(src, dst, top, h, w, row_step, col_step),
                            2 => copy_band::<2>(src, dst, top, h, w, row_step, col_step),
                            4 => copy_band::<4>(src, dst, top, h, w, row_step, col_step),
                            _ => copy_band::<8>(src, dst, top, h, w, row_step, col_step),
                        }
                    });
                if buf.len() >= GATHER_CHUNK {
                    flush(buf)?;
                    buf.clear();
                }
                c0 += w;
            }
            r0 += h;
        }
        // the next matrix: an odometer over the outer dimensions
        for d in (0..outer.len()).rev() {
            index[d] += 1;
            first += strides[d] * size;
            if index[d] < outer[d] {
                break;
            }
            first -= outer[d] * strides[d] * size;
            index[d] = 0;
        }
    }
    flush(buf)?;
    buf.clear();
    Ok(())
}

/// [`gather`]'s band: `h` rows of `cols` elements of `N` bytes into `dst` row-major, from `src` (row `k`, column `c`
/// at `top + k·row_step + c·col_step`).
fn copy_band<const N: usize>(
    src: &[u8],
    dst: &mut [u8],
    top: usize,
    h: usize,
    cols: usize,
    row_step: usize,
    col_step: usize,
) {
    // in tiles of 64 columns: a transposed tile's source lines then stay in L1 across its rows
    const TILE: usize = 64;
    for c0 in (0..cols).step_by(TILE) {
        let w = TILE.min(cols - c0);
        for (k, row) in dst.chunks_exact_mut(cols * N).take(h).enumerate() {
            let first = top + k * row_step + c0 * col_step;
            for (c, out) in row[c0 * N..(c0 + w) * N].chunks_exact_mut(N).enumerate() {
                let from = first + c * col_step;
                out.copy_from_slice(&src[from..from + N]);
            }
        }
    }
}

/// True if `name` is one plain file name (no separators, not `.` or `..`).
pub(crate) fn is_plain_file_name(name: &str) -> bool {
    let mut comps = Path::new(name).components();
    matches!(
        (comps.next(), comps.next()),
        (Some(Component::Normal(_)), None)
    ) && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0')
}

/// True for the names of files `torch.save` may have written a model's weights to (`*.bin`, `*.pt`, `*.pth`, `*.ckpt`),
/// except the other files a Hugging Face trainer leaves beside them (`training_args.bin`, `optimizer.pt`, ...).
pub(crate) fn is_torch_file_name(name: &str) -> bool {
    const TRAINER: [&str; 6] = [
        "training_args.bin",
        "optimizer.pt",
        "optimizer.bin",
        "scheduler.pt",
        "scaler.pt",
        "trainer_state.pt",
    ];
    let lower = name.to_ascii_lowercase();
    has_torch_extension(&lower)
        && !TRAINER.contains(&lower.as_str())
        && !lower.starts_with("rng_state")
}

/// True for a lower-case file name with an extension `torch.save` files have (`.bin`, `.pt`, `.pth`, and `.ckpt`
/// for PyTorch Lightning's, a state dict under `state_dict`) after a stem.
fn has_torch_extension(lower: &str) -> bool {
    [".bin", ".pt", ".pth", ".ckpt"]
        .iter()
        .any(|ext| lower.len() > ext.len() && lower.ends_with(ext))
}

/// True for file names that hold weights or index weights.
pub(crate) fn is_weight_file_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let has_weight_ext = |s: &str| {
        WEIGHT_EXTENSIONS.iter().any(|ext| {
            s.len() > ext.len() + 1 && s.ends_with(ext) && s[..s.len() - ext.len()].ends_with('.')
        })
    };
    if has_weight_ext(&lower) {
        return true;
    }
    lower
        .strip_suffix(".index.json")
        .is_some_and(has_weight_ext)
}

/// The walk of a model folder behind [`Checkpoint::companions`].
struct CompanionWalk {
    /// Resolved folder every companion must lie in.
    root: PathBuf,
    /// Resolved folders already walked (a symlink back to a parent folder is not entered again).
    visited: Vec<PathBuf>,
    /// (companion name, path) of the files kept.
    out: Vec<(String, PathBuf)>,
    skipped: Vec<(PathBuf, String)>,
}

impl CompanionWalk {
    /// Adds the companions of `dir` (whose name relative to the model folder is `prefix`, `""` at the top, else
    /// ending in `/`), `depth` levels below the model folder.
    fn folder(&mut self, dir: &Path, prefix: &str, depth: usize) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<(String, PathBuf)> = rd
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.to_owned(), e.path())))
            .collect();
        entries.sort();
        for (name, path) in entries {
            if name.starts_with('.') {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_dir() && !meta.is_file() {
                continue;
            }
            let resolved = path.canonicalize().ok();
            match &resolved {
                Some(r) if r.starts_with(&self.root) => {}
                _ => {
                    let to = resolved
                        .map(|r| r.display().to_string())
                        .unwrap_or_else(|| "an unresolvable path".into());
                    self.skipped
                        .push((path, format!("resolves to {to}, outside the model folder")));
                    continue;
                }
            }
            if meta.is_dir() {
                let resolved = resolved.unwrap_or_default();
                if self.visited.iter().any(|v| v == &resolved) {
                    continue;
                }
                if depth + 1 > MAX_COMPANION_DEPTH {
                    self.skipped.push((
                        path,
                        format!("deeper than {MAX_COMPANION_DEPTH} folders below the model folder"),
                    ));
                    continue;
                }
                self.visited.push(resolved);
                self.folder(&path, &format!("{prefix}{name}/"), depth + 1);
            } else if is_weight_file_name(&name) {
                // The checkpoint's own weights (and indexes) at the top are not companions; weights in a subfolder
                // are another copy of a model (an ONNX export, a trainer checkpoint) and are not carried either.
                if depth > 0 {
                    self.skipped.push((
                        path,
                        "a weight file in a subfolder (weights are never carried as companion files)".into(),
                    ));
                }
            } else if meta.len() > MAX_COMPANION_BYTES {
                continue;
            } else if self.out.len() >= MAX_COMPANION_COUNT {
                self.skipped.push((
                    path,
                    format!("more than {MAX_COMPANION_COUNT} companion files"),
                ));
            } else {
                self.out.push((format!("{prefix}{name}"), path));
            }
        }
    }
}

/// A folder whose one weight file is a PEFT adapter's (`adapter_model.*` beside `adapter_config.json`) holds low-rank
/// factors, not a model: refused, with what to do. A file named explicitly is opened as asked.
fn check_not_adapter(dir: &Path, weights: &str) -> Result<()> {
    if weights.starts_with("adapter_model.") && is_regular_file(&dir.join("adapter_config.json")) {
        return Err(Error::NotACheckpoint {
            path: dir.to_path_buf(),
            reason: format!(
                "holds a PEFT adapter ({weights} and adapter_config.json), low-rank factors rather than a model: merge it into its base first (peft: `model.merge_and_unload().save_pretrained(dir)`) and compress that folder"
            ),
        });
    }
    Ok(())
}

/// Validates a weight file's tensor entries, by its format: PyTorch's (`torch.save`: a zip, or the legacy format)
/// or safetensors.
fn parse_weights(file: &Path, buf: &[u8]) -> Result<header::Header> {
    if crate::torch::is_zip(buf) || crate::torch::is_legacy(buf) {
        crate::torch::parse(file, buf)
    } else if looks_like_torch(file) && buf.get(8) != Some(&b'{') {
        // Named like a PyTorch file and not a safetensors header either: say what it is not.
        let head: Vec<String> = buf.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Err(Error::InvalidTorch {
            file: file.to_path_buf(),
            reason: format!(
                "neither a file torch.save writes (a zip, or the legacy format's magic number) nor safetensors: the file starts with {}",
                head.join(" ")
            ),
        })
    } else {
        header::parse(file, buf)
    }
}

/// True for file names PyTorch uses (`.bin`, `.pt`, `.pth`, `.ckpt`), trainer files included.
fn looks_like_torch(file: &Path) -> bool {
    file.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| has_torch_extension(&n.to_ascii_lowercase()))
}

fn is_regular_file(p: &Path) -> bool {
    // follows symlinks: Hugging Face cache snapshots are symlinks to blobs
    std::fs::metadata(p).is_ok_and(|m| m.is_file())
}

impl Checkpoint {
    /// Opens a checkpoint. `path` is one of:
    /// - a `.safetensors` file (any file name is accepted and parsed as safetensors);
    /// - a sharded-checkpoint index json (`*.safetensors.index.json`);
    /// - a folder holding `model.safetensors`;
    /// - a folder holding `model.safetensors.index.json` (sharded; `weight_map` maps tensor -> shard file);
    /// - a folder holding exactly one `*.safetensors` file (or exactly one `*.safetensors.index.json`);
    /// - a PyTorch checkpoint written by `torch.save` (its zip format, or the legacy one of PyTorch before 1.6): the file (`pytorch_model.bin`, `*.pt`,
    ///   `*.pth`, any name), its sharded index (`pytorch_model.bin.index.json`), or a folder without safetensors
    ///   holding `pytorch_model.bin`, its index, or exactly one `*.bin` / `*.pt` / `*.pth` / `*.ckpt` (PyTorch Lightning) other than a trainer's
    ///   (`training_args.bin`, `optimizer.pt`, `rng_state*.pth`, ...). Its tensors are byte ranges of the file, mapped
    ///   like a safetensors file's; the pickle inside is interpreted as data, never run (checks in the `torch`
    ///   module's documentation). A tensor saved as a strided view is copied row-major here, into an unnamed
    ///   temporary file in [`std::env::temp_dir`] mapped beside the weight files (all views together at most the
    ///   checkpoint's size on disk, else [`Error::InvalidTensorEntry`]; [`Error::ViewCopy`] if the file cannot be
    ///   made or written). Safetensors files are used when a folder holds both.
    ///
    /// A weight file is recognised by its first bytes (a zip or the legacy magic number is PyTorch's, anything else
    /// safetensors), not its name.
    ///
    /// Nothing from a file is trusted before it is checked, in this order, per weight file: the file holds the 8-byte
    /// little-endian header length; that length is at most [`MAX_HEADER_BYTES`](crate::MAX_HEADER_BYTES) and lies
    /// inside the file; the header is UTF-8 JSON, one object without duplicate keys, whose `__metadata__` maps strings
    /// to strings; each tensor entry (in header order) has a supported `dtype`, a `shape` whose byte size does not
    /// overflow, and `data_offsets` `[begin, end]` spanning exactly `numel * dtype size` bytes; then, in offset
    /// order, each range ends inside the file (checked arithmetic; else [`Error::Truncated`] naming the file and the
    /// first tensor cut off) and overlaps no other. An index json is capped at the same size, must map tensor names
    /// to plain file names in its folder, every shard must exist, every tensor it lists must be in the shard it
    /// names, and a tensor name may appear in only one shard.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        Self::open_with(path, &mut |_, _| true)
    }

    /// [`open`](Self::open), reporting the row-major copy of a PyTorch file's strided views as it goes:
    /// `copied(done, total)`, in elements, after each view (never called when there is none), so that a caller can
    /// show progress on a large checkpoint of views. It returns whether to go on: `false` stops with
    /// [`Error::Cancelled`] (the temporary file of the copies vanishes with it).
    pub fn open_with(
        path: impl AsRef<Path>,
        copied: &mut dyn FnMut(u64, u64) -> bool,
    ) -> Result<Checkpoint> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "open", e))?;
        let Parsed {
            mut checkpoint,
            views,
        } = if meta.is_dir() {
            Self::open_dir(path)?
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".index.json"))
        {
            Self::open_sharded(path, path)?
        } else {
            Self::open_single(path, path)?
        };
        checkpoint.gather_views(&views, copied)?;
        Ok(checkpoint)
    }

    fn open_dir(dir: &Path) -> Result<Parsed> {
        let single = dir.join(SINGLE_FILE_NAME);
        if is_regular_file(&single) {
            return Self::open_single(dir, &single);
        }
        let index = dir.join(INDEX_FILE_NAME);
        if is_regular_file(&index) {
            return Self::open_sharded(dir, &index);
        }
        let mut weights = Vec::new();
        let mut indexes = Vec::new();
        // Weight files in another format (a PyTorch pickle, say), named when no safetensors file is there.
        let mut others = Vec::new();
        let (mut torch, mut torch_indexes) = (Vec::new(), Vec::new());
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "list", e))?;
        for entry in rd {
            let entry = entry.map_err(|e| Error::io(dir, "list", e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with('.') || !is_regular_file(&entry.path()) {
                continue;
            }
            if name.ends_with(".safetensors") {
                weights.push(name);
            } else if name.ends_with(".safetensors.index.json") {
                indexes.push(name);
            } else if is_torch_file_name(&name) {
                torch.push(name);
            } else if is_torch_file_name(name.strip_suffix(".index.json").unwrap_or_default()) {
                torch_indexes.push(name);
            } else if is_weight_file_name(&name) && !name.ends_with(".index.json") {
                others.push(name);
            }
        }
        others.sort();
        weights.sort();
        indexes.sort();
        torch.sort();
        torch_indexes.sort();
        if weights.is_empty() && indexes.is_empty() {
            // No safetensors: PyTorch's own files, the Hugging Face names first.
            let torch_index = dir.join(TORCH_INDEX_FILE_NAME);
            if is_regular_file(&torch_index) {
                return Self::open_sharded(dir, &torch_index);
            }
            let torch_single = dir.join(TORCH_FILE_NAME);
            if is_regular_file(&torch_single) {
                return Self::open_single(dir, &torch_single);
            }
            match (torch.as_slice(), torch_indexes.as_slice()) {
                (_, [idx]) => return Self::open_sharded(dir, &dir.join(idx)),
                ([one], []) => {
                    check_not_adapter(dir, one)?;
                    return Self::open_single(dir, &dir.join(one));
                }
                ([], []) => {}
                (many, []) => {
                    return Err(Error::NotACheckpoint {
                        path: dir.to_path_buf(),
                        reason: format!(
                            "folder holds {} PyTorch files ({}) but no {TORCH_FILE_NAME} or index saying which are the model's (name the file to use)",
                            many.len(),
                            list_names(many)
                        ),
                    })
                }
                (_, several) => {
                    return Err(Error::NotACheckpoint {
                        path: dir.to_path_buf(),
                        reason: format!(
                            "folder holds {} PyTorch index files ({}) and no {TORCH_INDEX_FILE_NAME} (expected exactly one index)",
                            several.len(),
                            list_names(several)
                        ),
                    })
                }
            }
        }
        match (weights.as_slice(), indexes.as_slice()) {
            (_, [idx]) => Self::open_sharded(dir, &dir.join(idx)),
            ([one], []) => {
                check_not_adapter(dir, one)?;
                Self::open_single(dir, &dir.join(one))
            }
            ([], []) if !others.is_empty() => Err(Error::NotACheckpoint {
                path: dir.to_path_buf(),
                reason: format!(
                    "folder holds weights in another format ({}) and no .safetensors or PyTorch (torch.save) file: convert them to safetensors first",
                    list_names(&others)
                ),
            }),
            ([], []) => Err(Error::NotACheckpoint {
                path: dir.to_path_buf(),
                reason: format!(
                    "folder holds no .safetensors file (expected {SINGLE_FILE_NAME}, {INDEX_FILE_NAME} with its shards, or exactly one *.safetensors)"
                ),
            }),
            (many, []) => Err(Error::NotACheckpoint {
                path: dir.to_path_buf(),
                reason: format!(
                    "folder holds {} .safetensors files ({}) but no {INDEX_FILE_NAME} saying how they fit together (expected {SINGLE_FILE_NAME}, an index, or exactly one *.safetensors)",
                    many.len(),
                    list_names(many)
                ),
            }),
            (_, several) => Err(Error::NotACheckpoint {
                path: dir.to_path_buf(),
                reason: format!(
                    "folder holds {} safetensors index files ({}) and no {INDEX_FILE_NAME} (expected exactly one index)",
                    several.len(),
                    list_names(several)
                ),
            }),
        }
    }

    fn open_single(given: &Path, file: &Path) -> Result<Parsed> {
        let map = map_file(file)?;
        let hdr = parse_weights(file, &map)?;
        let dir = parent_dir(file);
        let size = map.len() as u64;
        let mut tensors = Vec::with_capacity(hdr.entries.len());
        for e in hdr.entries {
            tensors.push((
                e.info,
                Loc {
                    file: 0,
                    map: 0,
                    start: e.start,
                    end: e.end,
                },
                e.strides,
            ));
        }
        Self::assemble(
            given,
            dir,
            vec![file.to_path_buf()],
            None,
            vec![map],
            tensors,
            hdr.metadata,
            size,
        )
    }

    fn open_sharded(given: &Path, index_path: &Path) -> Result<Parsed> {
        let bad = |reason: String| Error::InvalidIndex {
            file: index_path.to_path_buf(),
            reason,
        };
        let index_len = crate::error::check_regular_file(index_path)?.len();
        if index_len > MAX_HEADER_BYTES {
            return Err(bad(format!(
                "file is {index_len} bytes, over the {MAX_HEADER_BYTES}-byte limit"
            )));
        }
        let text =
            std::fs::read_to_string(index_path).map_err(|e| Error::io(index_path, "read", e))?;
        let index: IndexJson = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if index.weight_map.0.is_empty() {
            return Err(bad("weight_map lists no tensors".into()));
        }
        // shard file name -> tensors the index places there
        let mut by_shard: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (tensor, shard) in index.weight_map.0 {
            if !is_plain_file_name(&shard) {
                return Err(bad(format!(
                    "tensor {tensor:?} maps to {shard:?}, expected a plain file name in the same folder"
                )));
            }
            by_shard.entry(shard).or_default().push(tensor);
        }
        let dir = parent_dir(index_path);
        let mut files = Vec::with_capacity(by_shard.len());
        let mut maps = Vec::with_capacity(by_shard.len());
        let mut tensors = Vec::new();
        let mut metadata = None;
        let mut size = index_len;
        for (i, (shard, listed)) in by_shard.into_iter().enumerate() {
            let shard_path = dir.join(&shard);
            if !shard_path.exists() {
                return Err(Error::MissingShard {
                    index: index_path.to_path_buf(),
                    shard,
                    tensor: listed[0].clone(),
                });
            }
            let map = map_file(&shard_path)?;
            let hdr = parse_weights(&shard_path, &map)?;
            {
                let held: std::collections::HashSet<&str> =
                    hdr.entries.iter().map(|e| e.info.name.as_str()).collect();
                if let Some(t) = listed.iter().find(|t| !held.contains(t.as_str())) {
                    return Err(Error::IndexMismatch {
                        index: index_path.to_path_buf(),
                        tensor: t.clone(),
                        shard,
                    });
                }
            }
            size += map.len() as u64;
            metadata.get_or_insert(hdr.metadata);
            for e in hdr.entries {
                tensors.push((
                    e.info,
                    Loc {
                        file: i,
                        map: i,
                        start: e.start,
                        end: e.end,
                    },
                    e.strides,
                ));
            }
            files.push(shard_path);
            maps.push(map);
        }
        Self::assemble(
            given,
            dir,
            files,
            Some(index_path.to_path_buf()),
            maps,
            tensors,
            metadata.unwrap_or_default(),
            size,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        given: &Path,
        dir: PathBuf,
        files: Vec<PathBuf>,
        index: Option<PathBuf>,
        maps: Vec<Mapped>,
        mut tensors: Vec<Listed>,
        metadata: BTreeMap<String, String>,
        size_on_disk: u64,
    ) -> Result<Parsed> {
        // stable: ties keep shard order, so a duplicate names the earlier shard first
        tensors.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        for w in tensors.windows(2) {
            if w[0].0.name == w[1].0.name {
                return Err(Error::DuplicateTensor {
                    tensor: w[0].0.name.clone(),
                    first: files[w[0].1.file].clone(),
                    second: files[w[1].1.file].clone(),
                });
            }
        }
        let mut views = Vec::with_capacity(tensors.len());
        let (tensors, locs) = tensors
            .into_iter()
            .map(|(t, l, v)| {
                views.push(v);
                (t, l)
            })
            .unzip();
        let checkpoint = Checkpoint {
            path: given.to_path_buf(),
            dir,
            files,
            index,
            maps,
            tensors,
            locs,
            metadata,
            size_on_disk,
        };
        Ok(Parsed { checkpoint, views })
    }

    /// The path given to [`open`](Self::open).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder holding the weight files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The weight files (one, or the shards sorted by file name).
    pub fn weight_files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The sharded-checkpoint index json, if the checkpoint is sharded.
    pub fn index_file(&self) -> Option<&Path> {
        self.index.as_deref()
    }

    /// Sum of the weight files' sizes plus the index json's, in bytes.
    pub fn size_on_disk(&self) -> u64 {
        self.size_on_disk
    }

    /// Every tensor, sorted by name.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Total bytes of tensor data (sum of every tensor's `nbytes`).
    pub fn total_tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.nbytes() as u64).sum()
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.tensors
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
    }

    /// Description of one tensor.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.position(name).map(|i| &self.tensors[i])
    }

    /// A view of one tensor's bytes in the memory map. [`Error::TensorNotFound`] if there is no such tensor.
    pub fn view(&self, name: &str) -> Result<TensorView<'_>> {
        let Some(i) = self.position(name) else {
            return Err(Error::TensorNotFound {
                path: self.path.clone(),
                tensor: name.to_string(),
            });
        };
        Ok(self.view_at(i))
    }

    fn view_at(&self, i: usize) -> TensorView<'_> {
        let loc = self.locs[i];
        TensorView {
            info: &self.tensors[i],
            bytes: &self.maps[loc.map][loc.start..loc.end],
            file: &self.files[loc.file],
            handle: &self.maps[loc.map].file,
            offset: loc.start as u64,
        }
    }

    /// Drops this process's mapping of `name`'s pages (the file data stays in the page cache), so a pass over a
    /// checkpoint larger than memory keeps a resident set the size of one tensor. Later reads of the tensor fault
    /// the pages back in. Only a hint: unknown names and failures are ignored.
    pub fn release(&self, name: &str) {
        if let Some(i) = self.position(name) {
            let loc = self.locs[i];
            self.maps[loc.map].unmap_pages(loc.start, loc.end);
        }
    }

    /// Asks the kernel to start reading `name`'s bytes into the page cache now (`MADV_WILLNEED`), so that a pass
    /// working on another tensor meanwhile finds them there. Only a hint: unknown names, other systems and
    /// failures are ignored; pages already cached cost nothing.
    pub fn prefetch(&self, name: &str) {
        #[cfg(unix)]
        if let Some(i) = self.position(name) {
            let loc = self.locs[i];
            if loc.end > loc.start {
                let _ = self.maps[loc.map].advise_range(
                    memmap2::Advice::WillNeed,
                    loc.start,
                    loc.end - loc.start,
                );
            }
        }
        #[cfg(not(unix))]
        let _ = name;
    }

    /// Views of every tensor, in name order.
    pub fn views(&self) -> impl Iterator<Item = TensorView<'_>> + '_ {
        (0..self.tensors.len()).map(|i| self.view_at(i))
    }

    /// The weight file holding `name`.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.position(name)
            .map(|i| self.files[self.locs[i].file].as_path())
    }

    /// The safetensors `__metadata__` of the first weight file (empty if it has none); for a PyTorch file,
    /// `{"format": "pt"}`, what transformers writes in the safetensors files it saves.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Small non-weight files of the model folder (`config.json`, tokenizer files, `generation_config.json`, and
    /// the files of its subfolders such as sentence-transformers' `1_Pooling/config.json`), as full paths sorted by
    /// their [`companion_name`](Self::companion_name).
    ///
    /// Walks [`dir`](Self::dir) and its subfolders (at most [`MAX_COMPANION_DEPTH`] levels down, at most
    /// [`MAX_COMPANION_COUNT`] files) and lists the regular files (symlinks are followed, as in the Hugging Face
    /// cache) that are not hidden (no path component starting with `.`, so `.git/` and `.cache/` are not entered),
    /// at most [`MAX_COMPANION_BYTES`], and not weights: not `*.safetensors`, `*.bin`, `*.pt`, `*.pth`, `*.ckpt`,
    /// `*.h5`, `*.msgpack`, `*.onnx`, `*.gguf`, nor an index of those (`*.safetensors.index.json`,
    /// `*.bin.index.json`, ...), in the folder or in any subfolder (an `onnx/` export or a trainer's
    /// `checkpoint-500/` holds another copy of the weights). Names that are not UTF-8 are skipped. When the
    /// checkpoint was opened from a single file, the folder counts as a model folder only if it holds a
    /// `config.json`; otherwise the list is empty (a lone file in, say, a downloads folder has no companions).
    /// An unreadable folder gives an empty list.
    pub fn companion_files(&self) -> Vec<PathBuf> {
        self.companions().0
    }

    /// [`companion_files`](Self::companion_files), and the candidates left out with the reason: files or
    /// subfolders that resolve outside the model folder (a symlinked `tokenizer.json -> /etc/passwd`), weight files
    /// in subfolders, and anything past the depth and count limits. A companion is read only if its resolved path
    /// lies inside the model folder's resolved path; for a Hugging Face cache snapshot
    /// (`…/models--org--name/snapshots/REV/`) the model folder is the repository folder `models--org--name`,
    /// whose `blobs/` the snapshot's symlinks point into. A subfolder is entered once (a symlink back to a parent
    /// folder does not loop).
    pub fn companions(&self) -> (Vec<PathBuf>, Vec<(PathBuf, String)>) {
        // A lone .safetensors file in an arbitrary folder (say, Downloads) has no companions:
        // only a model folder (opened as a folder, or holding a config.json) does.
        if self.path.is_file() && !self.dir.join("config.json").is_file() {
            return (Vec::new(), Vec::new());
        }
        let Ok(top) = self.dir.canonicalize() else {
            return (Vec::new(), Vec::new());
        };
        let snapshot = top
            .parent()
            .filter(|p| p.file_name().is_some_and(|n| n == "snapshots"))
            .and_then(Path::parent)
            .map(Path::to_path_buf);
        let root = snapshot.unwrap_or_else(|| top.clone());
        let mut walk = CompanionWalk {
            root,
            visited: vec![top],
            out: Vec::new(),
            skipped: Vec::new(),
        };
        walk.folder(&self.dir, "", 0);
        let CompanionWalk {
            mut out,
            mut skipped,
            ..
        } = walk;
        out.sort();
        skipped.sort();
        (out.into_iter().map(|(_, p)| p).collect(), skipped)
    }

    /// The name a companion file at `path` (one of [`companion_files`](Self::companion_files)) is stored and
    /// rebuilt under: its path relative to [`dir`](Self::dir), components joined by `/` (`config.json`,
    /// `1_Pooling/config.json`). `None` when `path` is not inside the folder or not UTF-8.
    pub fn companion_name(&self, path: &Path) -> Option<String> {
        let rel = path.strip_prefix(&self.dir).ok()?;
        let mut parts = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => parts.push(n.to_str()?),
                _ => return None,
            }
        }
        (!parts.is_empty()).then(|| parts.join("/"))
    }

    /// The parsed `config.json` beside the weights, if it exists, is at most [`MAX_COMPANION_BYTES`] and is valid JSON.
    pub fn config(&self) -> Option<serde_json::Value> {
        let p = self.dir.join("config.json");
        let m = std::fs::metadata(&p).ok()?;
        if !m.is_file() || m.len() > MAX_COMPANION_BYTES {
            return None;
        }
        let text = std::fs::read(&p).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// A 16-hex-digit (xxh3-64) identity of the checkpoint's tensors, cheap to compute.
    ///
    /// Covers, in name order, for every tensor: its name, dtype, shape, byte length and a sample of its bytes — all
    /// of them when the tensor has at most 4096 bytes, otherwise 64 windows of 64 bytes at evenly spaced offsets
    /// `floor(i * (nbytes - 64) / 63)`, `i = 0..64` (so the first and last 64 bytes are always included). It does not
    /// cover bytes outside the windows, the `__metadata__`, how tensors are split across shards or ordered within a
    /// file, file names, or companion files: the same tensors written single-file or sharded fingerprint the same.
    pub fn fingerprint(&self) -> String {
        // Sampling touches a few pages per tensor: ask the kernel not to read ahead around them meanwhile.
        self.advise_all(AccessPattern::Random);
        let fp = self.compute_fingerprint();
        self.advise_all(AccessPattern::Sequential);
        fp
    }

    fn advise_all(&self, pattern: AccessPattern) {
        #[cfg(unix)]
        for m in &self.maps {
            // only a hint: failure changes nothing but speed
            let _ = m.advise(match pattern {
                AccessPattern::Random => memmap2::Advice::Random,
                AccessPattern::Sequential => memmap2::Advice::Sequential,
            });
        }
        #[cfg(not(unix))]
        let _ = pattern;
    }

    fn compute_fingerprint(&self) -> String {
        let mut h = Xxh3::new();
        h.update(b"ultradelta-io fingerprint v1\0");
        h.update(&(self.tensors.len() as u64).to_le_bytes());
        for v in self.views() {
            let info = v.info();
            h.update(&(info.name.len() as u64).to_le_bytes());
            h.update(info.name.as_bytes());
            h.update(info.dtype.name().as_bytes());
            h.update(b"\0");
            h.update(&(info.shape.len() as u64).to_le_bytes());
            for &d in &info.shape {
                h.update(&(d as u64).to_le_bytes());
            }
            let bytes = v.bytes();
            h.update(&(bytes.len() as u64).to_le_bytes());
            if bytes.len() <= FP_WINDOWS * FP_WINDOW {
                h.update(bytes);
            } else {
                let span = (bytes.len() - FP_WINDOW) as u128;
                for i in 0..FP_WINDOWS {
                    let off = (i as u128 * span / (FP_WINDOWS as u128 - 1)) as usize;
                    h.update(&bytes[off..off + FP_WINDOW]);
                }
            }
            // The kernel maps cached pages around each sampled one (fault-around): unmapped tensor by tensor, or
            // about a GB of a LLaMA-7B checkpoint would be in this process's resident set at once.
            self.release(&info.name);
        }
        format!("{:016x}", h.digest())
    }
}

fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn list_names(names: &[String]) -> String {
    const SHOWN: usize = 4;
    let mut s = names
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(", ... {} more", names.len() - SHOWN));
    }
    s
}

/// One tensor's bytes, borrowed from the checkpoint's memory map.
#[derive(Clone, Copy)]
pub struct TensorView<'a> {
    info: &'a TensorInfo,
    bytes: &'a [u8],
    file: &'a Path,
    /// The open weight file and the tensor's offset in it, for [`TensorView::read_hashed_into`].
    #[cfg_attr(not(unix), allow(dead_code))]
    handle: &'a File,
    #[cfg_attr(not(unix), allow(dead_code))]
    offset: u64,
}

impl fmt::Debug for TensorView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorView")
            .field("info", self.info)
            .field("file", &self.file)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl<'a> TensorView<'a> {
    /// Name, dtype and shape.
    pub fn info(&self) -> &'a TensorInfo {
        self.info
    }

    /// Raw little-endian bytes (`info().nbytes()` of them). Not necessarily aligned to the element size.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The weight file holding this tensor.
    pub fn file(&self) -> &'a Path {
        self.file
    }

    fn context(&self) -> String {
        format!("{}: tensor {:?}", self.file.display(), self.info.name)
    }

    /// The values as `f32` (F64 narrows with round-to-nearest). Float dtypes only, else [`Error::NotFloat`].
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        if !self.info.dtype.is_float() {
            return Err(Error::NotFloat {
                context: self.context(),
                dtype: self.info.dtype,
            });
        }
        let mut out = vec![0f32; self.info.numel()];
        self.to_f32_into(&mut out)?;
        Ok(out)
    }

    /// Like [`to_f32`](Self::to_f32) into a caller-owned buffer of exactly `numel` values. Large tensors are
    /// converted in parallel (rayon); the result is the same for any thread count.
    pub fn to_f32_into(&self, out: &mut [f32]) -> Result<()> {
        if !self.info.dtype.is_float() {
            return Err(Error::NotFloat {
                context: self.context(),
                dtype: self.info.dtype,
            });
        }
        let numel = self.info.numel();
        if out.len() != numel {
            return Err(Error::LengthMismatch {
                context: self.context(),
                expected: numel,
                found: out.len(),
            });
        }
        decode_into(self.info.dtype, self.bytes, out);
        Ok(())
    }

    /// Like [`to_f32_into`](Self::to_f32_into) for the elements `start..start + out.len()` only, on the calling
    /// thread (for callers that split a tensor into their own parallel chunks).
    ///
    /// # Errors
    /// [`Error::NotFloat`] for a non-float dtype, [`Error::LengthMismatch`] if the range passes the end.
    pub fn range_to_f32_into(&self, start: usize, out: &mut [f32]) -> Result<()> {
        if !self.info.dtype.is_float() {
            return Err(Error::NotFloat {
                context: self.context(),
                dtype: self.info.dtype,
            });
        }
        let numel = self.info.numel();
        let end = start.checked_add(out.len()).filter(|&e| e <= numel);
        let Some(end) = end else {
            return Err(Error::LengthMismatch {
                context: self.context(),
                expected: numel.saturating_sub(start),
                found: out.len(),
            });
        };
        let es = self.info.dtype.size();
        crate::convert::decode_chunk(self.info.dtype, &self.bytes[start * es..end * es], out);
        Ok(())
    }

    /// The view of this tensor's leading rows that `info` describes: the same name and dtype, a shape that differs
    /// only in its first dimension, at most this tensor's (a vocabulary's first rows, say). Its bytes are this
    /// view's first `info.nbytes()`; `None` when `info` is not such a shape.
    pub fn leading_rows<'b>(&self, info: &'b TensorInfo) -> Option<TensorView<'b>>
    where
        'a: 'b,
    {
        let (mine, theirs) = (&self.info.shape, &info.shape);
        let fits = info.name == self.info.name
            && info.dtype == self.info.dtype
            && !theirs.is_empty()
            && theirs.len() == mine.len()
            && theirs[1..] == mine[1..]
            && theirs[0] <= mine[0];
        fits.then(|| TensorView {
            info,
            bytes: &self.bytes[..info.nbytes()],
            file: self.file,
            handle: self.handle,
            offset: self.offset,
        })
    }

    /// xxh3-64 of [`bytes`](Self::bytes).
    pub fn content_hash(&self) -> u64 {
        xxh3_64(self.bytes)
    }

    /// Copies the tensor's bytes into `out` (exactly their length) and returns their xxh3-64 (the value of
    /// [`content_hash`](Self::content_hash)), in one pass: positioned reads from the file of `chunk` bytes (the
    /// last one shorter), each hashed and handed to `each(offset, bytes)` while it is still in cache. The reads
    /// touch no page of the memory map, so a tensor read this way costs no page faults and its pages need no
    /// [`Checkpoint::release`]; on systems without positioned reads the bytes are copied from the map.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] if `out` is not the tensor's byte size or `chunk` is 0; [`Error::Io`] (naming the
    /// weight file) if a read fails or the file got shorter than its header says.
    pub fn read_hashed_into(
        &self,
        out: &mut [u8],
        chunk: usize,
        mut each: impl FnMut(usize, &[u8]),
    ) -> Result<u64> {
        if out.len() != self.bytes.len() || chunk == 0 {
            return Err(Error::LengthMismatch {
                context: format!("reading the bytes of tensor {}", self.info.name),
                expected: self.bytes.len(),
                found: out.len(),
            });
        }
        let mut hasher = Xxh3::new();
        for (k, part) in out.chunks_mut(chunk).enumerate() {
            let at = k * chunk;
            #[cfg(unix)]
            {
                use std::os::unix::fs::FileExt;
                self.handle
                    .read_exact_at(part, self.offset + at as u64)
                    .map_err(|e| Error::io(self.file, "read", e))?;
            }
            #[cfg(not(unix))]
            part.copy_from_slice(&self.bytes[at..at + part.len()]);
            hasher.update(part);
            each(at, part);
        }
        Ok(hasher.digest())
    }
}

/// Result of [`pair`]: tensors of a base and a fine-tuned checkpoint matched by name. Every list is sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pairing {
    /// Names in both checkpoints with the same dtype and shape.
    pub matched: Vec<String>,
    /// Names only in the base checkpoint.
    pub only_base: Vec<String>,
    /// Names only in the fine-tuned checkpoint.
    pub only_finetuned: Vec<String>,
    /// Same name, different dtype or shape: `(base, finetuned)`.
    pub mismatched: Vec<(TensorInfo, TensorInfo)>,
}

impl Pairing {
    /// True when every tensor has a counterpart with the same dtype and shape.
    pub fn is_clean(&self) -> bool {
        self.only_base.is_empty() && self.only_finetuned.is_empty() && self.mismatched.is_empty()
    }
}

/// Pairs the tensors of `base` and `finetuned` by name.
pub fn pair(base: &Checkpoint, finetuned: &Checkpoint) -> Pairing {
    pair_infos(base.tensors(), finetuned.tensors())
}

/// [`pair`] on two name-sorted tensor lists.
fn pair_infos(base: &[TensorInfo], ft: &[TensorInfo]) -> Pairing {
    let mut p = Pairing::default();
    let ft_by_name: HashMap<&str, &TensorInfo> = ft.iter().map(|t| (t.name.as_str(), t)).collect();
    for b in base {
        match ft_by_name.get(b.name.as_str()) {
            Some(f) if f.dtype == b.dtype && f.shape == b.shape => p.matched.push(b.name.clone()),
            Some(f) => p.mismatched.push((b.clone(), (*f).clone())),
            None => p.only_base.push(b.name.clone()),
        }
    }
    let base_names: std::collections::HashSet<&str> =
        base.iter().map(|t| t.name.as_str()).collect();
    p.only_finetuned = ft
        .iter()
        .filter(|t| !base_names.contains(t.name.as_str()))
        .map(|t| t.name.clone())
        .collect();
    // inputs are name-sorted already; sorting again keeps the promise for any input
    p.matched.sort();
    p.only_base.sort();
    p.only_finetuned.sort();
    p.mismatched.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_names() {
        for n in [
            "model.safetensors",
            "model-00001-of-00002.safetensors",
            "pytorch_model.bin",
            "x.PT",
            "a.gguf",
            "model.safetensors.index.json",
            "pytorch_model.bin.index.json",
        ] {
            assert!(is_weight_file_name(n), "{n}");
        }
        for n in [
            "config.json",
            "tokenizer.json",
            "vocab.txt",
            "safetensors",
            ".bin",
            "binary.json",
            "merges.txt",
        ] {
            assert!(!is_weight_file_name(n), "{n}");
        }
    }

    #[test]
    fn plain_names() {
        assert!(is_plain_file_name("model-00001-of-00002.safetensors"));
        for n in ["", ".", "..", "a/b", "/etc/passwd", "..\\x", "a\0b"] {
            assert!(!is_plain_file_name(n), "{n:?}");
        }
    }
}
