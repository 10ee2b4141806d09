//! Export of a `lowrank` archive's factors as a PEFT LoRA adapter.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use safetensors::tensor::{serialize, Dtype, TensorView};
use ultradelta_archive::{ArchiveReader, Record};

use crate::config::Method;
use crate::{Error, Result};

fn file_err(path: &Path, source: std::io::Error) -> Error {
    Error::File {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the low-rank factors of the `lowrank` archive at `archive` as a PEFT LoRA adapter folder `out_dir`:
/// `adapter_model.safetensors` with `base_model.model.<module>.lora_A.weight` `[r, in]` and
/// `base_model.model.<module>.lora_B.weight` `[out, r]` (F32; `<module>` is the tensor name without its
/// `.weight` suffix), and `adapter_config.json` with `r`, `lora_alpha = r` (so PEFT's scaling α/r is 1) and
/// `target_modules` (the modules' last name components). The record's scale and the archive's γ are folded
/// into `lora_B`; tensors whose rank was capped below `r` by their shape are zero-padded to `r`.
/// The folder appears by atomic rename; an existing one is replaced only with `overwrite`.
///
/// # Errors
/// [`Error::Unsupported`] if the archive was not written by `lowrank` or holds no factors; [`Error::OutputExists`]
/// if `out_dir` exists and `!overwrite`; archive and IO errors.
pub fn export_lora(archive: &Path, out_dir: &Path, overwrite: bool) -> Result<PathBuf> {
    crate::guard::check_output(out_dir, &[crate::guard::Input::path(archive, "archive")])?;
    let reader = ArchiveReader::open(archive)?;
    let m = reader.manifest();
    if m.method != Method::Lowrank.name() {
        return Err(Error::Unsupported {
            archive: archive.to_path_buf(),
            what: format!(
                "LoRA export needs a lowrank archive, this one is {}",
                m.method
            ),
        });
    }
    let gamma = m.gamma as f32;
    let mut factors = Vec::new();
    for e in &m.tensors {
        // A dropped delta (no record) has nothing to export; the base's tensor stands. Only low-rank records are
        // read: another kind's record (a hostile archive's entropy-coded levels, say) is never decoded here.
        if e.kind == ultradelta_archive::RecordKind::AppendedRows.name() {
            return Err(Error::Unsupported {
                archive: archive.to_path_buf(),
                what: format!(
                    "LoRA export of tensor \"{}\": the fine-tune added rows to the base's (a resized vocabulary), \
                     which an adapter of the base's shape cannot carry",
                    e.name
                ),
            });
        }
        if e.kind != ultradelta_archive::RecordKind::LowrankF16.name() {
            continue;
        }
        if let Record::LowRank(r) = reader.read_record(&e.name)? {
            factors.push((e.name.clone(), r));
        }
    }
    let r = factors
        .iter()
        .map(|(_, f)| f.rank as usize)
        .max()
        .unwrap_or(0);
    if r == 0 {
        return Err(Error::Unsupported {
            archive: archive.to_path_buf(),
            what: "no low-rank factors to export".into(),
        });
    }
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut modules = BTreeSet::new();
    for (name, f) in &factors {
        let module = name.strip_suffix(".weight").unwrap_or(name);
        modules.insert(module.rsplit('.').next().unwrap_or(module).to_string());
        let (rows, cols, k) = (f.rows as usize, f.cols as usize, f.rank as usize);
        let mut a = vec![0f32; r * cols];
        for kk in 0..k {
            for j in 0..cols {
                a[kk * cols + j] = f.v[kk * cols + j].to_f32();
            }
        }
        let mut b = vec![0f32; rows * r];
        for i in 0..rows {
            for kk in 0..k {
                b[i * r + kk] = f.u[i * k + kk].to_f32() * f.scale * gamma;
            }
        }
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        data.push((
            format!("base_model.model.{module}.lora_A.weight"),
            vec![r, cols],
            bytes(&a),
        ));
        data.push((
            format!("base_model.model.{module}.lora_B.weight"),
            vec![rows, r],
            bytes(&b),
        ));
    }
    let views = data
        .iter()
        .map(|(n, shape, b)| {
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|source| Error::LoraExport {
                    dir: out_dir.to_path_buf(),
                    source,
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let st = serialize(views, None).map_err(|source| Error::LoraExport {
        dir: out_dir.to_path_buf(),
        source,
    })?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": r,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "target_modules": modules,
        "base_model_name_or_path": serde_json::Value::Null,
        "task_type": serde_json::Value::Null,
    });

    if out_dir.exists() && !overwrite {
        return Err(Error::OutputExists {
            path: out_dir.to_path_buf(),
        });
    }
    let parent = out_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| file_err(parent, e))?;
    let stem = out_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("adapter");
    let tmp = parent.join(format!(".{stem}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| file_err(&tmp, e))?;
    let write = || -> Result<()> {
        let p = tmp.join("adapter_model.safetensors");
        std::fs::write(&p, &st).map_err(|e| file_err(&p, e))?;
        let p = tmp.join("adapter_config.json");
        let text = serde_json::to_string_pretty(&config).expect("config serialises");
        std::fs::write(&p, text).map_err(|e| file_err(&p, e))?;
        if out_dir.exists() {
            std::fs::remove_dir_all(out_dir).map_err(|e| file_err(out_dir, e))?;
        }
        std::fs::rename(&tmp, out_dir).map_err(|e| file_err(out_dir, e))
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(out_dir.to_path_buf())
}
