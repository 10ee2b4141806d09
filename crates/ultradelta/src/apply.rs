//! apply: base checkpoint + archive → the rebuilt fine-tuned checkpoint folder.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use ultradelta_archive::{ArchiveReader, Policy, Record, TensorEntry};
use ultradelta_io::{f32_to_bytes, Checkpoint, CheckpointWriter, TensorInfo, WriterOptions};

use crate::{Error, Progress, Result};

/// Options of [`apply`].
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Replace an existing output folder.
    pub overwrite: bool,
    /// Shard the rebuilt checkpoint when it is larger than this (bytes).
    pub max_shard_bytes: u64,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            overwrite: false,
            max_shard_bytes: WriterOptions::default().max_shard_bytes,
        }
    }
}

/// Checks that `base` is the checkpoint `reader`'s archive was made against.
pub fn check_base(base: &Checkpoint, reader: &ArchiveReader, archive: &Path) -> Result<()> {
    let found = base.fingerprint();
    let expected = &reader.manifest().base_fingerprint;
    if &found != expected {
        return Err(Error::WrongBase {
            archive: archive.to_path_buf(),
            base: base.path().to_path_buf(),
            expected: expected.clone(),
            found,
        });
    }
    Ok(())
}

/// Rebuilds one tensor of the fine-tuned model, in its original dtype, from the base and
/// the archive: base + γ·Δ̂ for compressed tensors, base XOR stored bits for kept ones,
/// the base value for dropped ones, the stored tensor for new ones.
///
/// This is the single decoding path used by `apply` and `eval`; every lossy record kind (UltraDelta and each
/// baseline) is turned into Δ̂ by [`Record::add_delta_into`], the same function the in-memory result uses.
pub fn rebuild_tensor(
    base: &Checkpoint,
    reader: &ArchiveReader,
    archive: &Path,
    entry: &TensorEntry,
) -> Result<Vec<u8>> {
    let name = entry.name.as_str();
    let base_err = |what: String| Error::BaseTensor {
        base: base.path().to_path_buf(),
        archive: archive.to_path_buf(),
        tensor: name.to_string(),
        what,
    };
    if entry.policy == Policy::New {
        return match reader.read_record(name)? {
            Record::Full { bytes, .. } => Ok(bytes),
            _ => Err(Error::Config(format!(
                "{}: tensor \"{name}\": unexpected record kind",
                archive.display()
            ))),
        };
    }
    let Some(info) = base.info(name) else {
        return Err(base_err("is missing".into()));
    };
    if info.shape != entry.shape || info.dtype != entry.dtype {
        return Err(base_err(format!(
            "is {} {:?}, expected {} {:?}",
            info.dtype.name(),
            info.shape,
            entry.dtype.name(),
            entry.shape
        )));
    }
    let view = base.view(name)?;
    if let Some(expected) = &entry.base_hash {
        let found = format!("{:016x}", view.content_hash());
        if &found != expected {
            return Err(Error::BaseTensorChanged {
                archive: archive.to_path_buf(),
                file: base.file_of(name).unwrap_or(base.path()).to_path_buf(),
                tensor: name.to_string(),
                expected: expected.clone(),
                found,
            });
        }
    }
    match entry.policy {
        Policy::Drop => Ok(view.bytes().to_vec()),
        Policy::Keep => match reader.read_record(name)? {
            Record::XorDelta { xor_bytes, .. } => {
                let mut out = view.bytes().to_vec();
                out.par_chunks_mut(1 << 16)
                    .zip(xor_bytes.par_chunks(1 << 16))
                    .for_each(|(o, x)| {
                        for (o, x) in o.iter_mut().zip(x) {
                            *o ^= x;
                        }
                    });
                Ok(out)
            }
            _ => Err(Error::Config(format!(
                "{}: tensor \"{name}\": unexpected record kind",
                archive.display()
            ))),
        },
        Policy::Compress => {
            let rec = reader.read_record(name)?;
            let mut w = view.to_f32()?;
            rec.add_delta_into(reader.manifest().gamma as f32, &mut w)
                .map_err(|source| Error::Decode {
                    archive: archive.to_path_buf(),
                    tensor: name.to_string(),
                    source: Box::new(source),
                })?;
            let mut out = Vec::with_capacity(entry.dtype.size() * w.len());
            f32_to_bytes(&w, entry.dtype, &mut out)?;
            Ok(out)
        }
        Policy::New => unreachable!("handled above"),
    }
}

/// Rebuilds the fine-tuned checkpoint from `base` and the archive at `archive` into the
/// folder `out_dir` (safetensors, sharded when large, with the fine-tune's metadata and
/// companion files). The folder appears only when complete.
pub fn apply(
    base: &Checkpoint,
    archive: &Path,
    out_dir: &Path,
    opts: &ApplyOptions,
    progress: &dyn Progress,
) -> Result<PathBuf> {
    let reader = ArchiveReader::open(archive)?;
    check_base(base, &reader, archive)?;
    let manifest = reader.manifest();
    let infos: Vec<TensorInfo> = manifest
        .tensors
        .iter()
        .map(|e| TensorInfo {
            name: e.name.clone(),
            dtype: e.dtype,
            shape: e.shape.clone(),
        })
        .collect();
    let total: u64 = infos.iter().map(|i| i.numel() as u64).sum();
    let wopts = WriterOptions {
        max_shard_bytes: opts.max_shard_bytes,
        metadata: manifest.finetuned.metadata.clone(),
        overwrite: opts.overwrite,
    };
    let mut writer = CheckpointWriter::create(out_dir, infos, wopts)?;
    progress.begin("rebuilding", total);
    for entry in &manifest.tensors {
        let bytes = rebuild_tensor(base, &reader, archive, entry)?;
        writer.write_tensor(&entry.name, &bytes)?;
        progress.advance(entry.numel);
    }
    progress.end();
    for f in &manifest.files {
        let bytes = reader.read_file(&f.name)?;
        writer.add_file(&f.name, &bytes)?;
    }
    Ok(writer.finish()?)
}
