//! Companion files stored against the base model's (docs/FORMAT.md, "Kind 13", "Kind 14"): at compress time, the base's file
//! of the same name each of the fine-tune's companion files may be compressed against; at apply time, finding
//! those files in the base model's folder and checking them before anything is written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ultradelta_archive::{ArchiveReader, BaseFileRef};
use ultradelta_io::Checkpoint;

use crate::{Error, Result};

/// The companion files of `ck` by name (`config.json`, `1_Pooling/config.json`, ...).
fn by_name(ck: &Checkpoint) -> HashMap<String, PathBuf> {
    ck.companions()
        .0
        .into_iter()
        .filter_map(|p| Some((ck.companion_name(&p)?, p)))
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })
}

/// The first `most` bytes of `path` at most (a base file that grew since it was checked cannot make a reader
/// hold more than the archive says it needs, plus one byte to tell that it differs).
fn read_at_most(path: &Path, most: u64) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let err = |source| Error::File {
        path: path.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    std::fs::File::open(path)
        .map_err(err)?
        .take(most)
        .read_to_end(&mut out)
        .map_err(err)?;
    Ok(out)
}

/// Calls `each(name, bytes, base)` for every one of `files`, companion files of `ft` as
/// [`Checkpoint::companions`] lists them, in order: `bytes` the file's, `base` the base model's file of the same
/// name if it has one and `self_contained` is off. One pair in memory at a time.
pub(crate) fn for_each(
    ft: &Checkpoint,
    files: Vec<PathBuf>,
    base: &Checkpoint,
    self_contained: bool,
    mut each: impl FnMut(&str, &[u8], Option<&[u8]>) -> Result<()>,
) -> Result<()> {
    let base_files = if self_contained {
        HashMap::new()
    } else {
        by_name(base)
    };
    for file in files {
        let bytes = read(&file)?;
        // `config.json`, or `1_Pooling/config.json` for a file in a subfolder.
        let name = ft.companion_name(&file).unwrap_or_default();
        let base_bytes = base_files.get(&name).map(|p| read(p)).transpose()?;
        each(&name, &bytes, base_bytes.as_deref())?;
    }
    Ok(())
}

/// The base model's files the archive's companion files were stored against, by name, each checked: present in
/// the base model's folder under the entry's name, with the size (compared before reading) and xxh3-64 the index
/// names. `apply` calls this before it writes anything.
///
/// # Errors
/// [`Error::BaseFile`] for the first file missing or different; [`Error::File`] if one cannot be read.
pub fn check_base_files(
    base: &Checkpoint,
    reader: &ArchiveReader,
    archive: &Path,
) -> Result<HashMap<String, PathBuf>> {
    let wanted: Vec<_> = reader
        .manifest()
        .files
        .iter()
        .filter_map(|f| Some((f, f.base.as_ref()?)))
        .collect();
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let have = by_name(base);
    let mut found = HashMap::with_capacity(wanted.len());
    for (f, want) in wanted {
        let err = |problem: String| Error::BaseFile {
            archive: archive.to_path_buf(),
            name: f.name.clone(),
            size: want.size,
            xxh3: want.xxh3.clone(),
            problem,
        };
        let Some(path) = have.get(&f.name) else {
            return Err(err(format!(
                "{} has no companion file of that name",
                base.path().display()
            )));
        };
        let len = std::fs::metadata(path)
            .map_err(|source| Error::File {
                path: path.clone(),
                source,
            })?
            .len();
        let got = if len == want.size {
            BaseFileRef::of(&read_at_most(path, want.size.saturating_add(1))?)
        } else {
            BaseFileRef { size: len, xxh3: 0 }
        };
        let got_xxh3 = format!("{:016x}", got.xxh3);
        if got.size != want.size || got_xxh3 != want.xxh3 {
            return Err(err(if got.size != want.size {
                format!("{} has {} bytes", path.display(), got.size)
            } else {
                format!("{} has xxh3 {got_xxh3}", path.display())
            }));
        }
        found.insert(f.name.clone(), path.clone());
    }
    Ok(found)
}

/// Companion file `name` of the archive, read with the base's file of the same name when it was stored against
/// it (`base_files` from [`check_base_files`]; the reader checks the bytes again).
///
/// # Errors
/// [`Error::File`] if the base's file cannot be read; the reader's errors ([`Error::Archive`]).
pub fn read_companion(
    reader: &ArchiveReader,
    name: &str,
    base_files: &HashMap<String, PathBuf>,
) -> Result<Vec<u8>> {
    let most = reader
        .file_entry(name)
        .and_then(|f| f.base.as_ref())
        .map_or(0, |b| b.size.saturating_add(1));
    let base = base_files
        .get(name)
        .map(|p| read_at_most(p, most))
        .transpose()?;
    Ok(reader.read_file_with_base(name, base.as_deref())?)
}
