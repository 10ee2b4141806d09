//! Streaming a pair of checkpoints to disk through `ultradelta_io::CheckpointWriter`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use ultradelta_io::{CheckpointWriter, TensorInfo, WriterOptions};

use crate::{arch_config_json, dtype_of, plan, render_into, Error, Result, SynthConfig};

fn writer_options(cfg: &SynthConfig) -> WriterOptions {
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_owned(), "pt".to_owned());
    WriterOptions {
        max_shard_bytes: cfg.max_shard_bytes,
        metadata,
        overwrite: cfg.overwrite,
        ..WriterOptions::default()
    }
}

/// A rendered tensor on its way to the writer thread.
struct Rendered {
    index: usize,
    base: Vec<u8>,
    finetuned: Vec<u8>,
}

/// Writes `dir/base` and `dir/finetuned`: Hugging Face-layout folders with `config.json` and
/// `model.safetensors` (or shards plus `model.safetensors.index.json` above `max_shard_bytes`).
///
/// Tensors are generated one at a time (in parallel blocks on the rayon pool) while a background
/// thread writes the previous one, so memory stays at about two tensors of each checkpoint.
/// `progress(done, total)` is called on the calling thread after each tensor reaches both writers.
/// Each folder appears atomically when its writer finishes; a writer that fails removes its temp
/// folder, so no half-written checkpoint is ever left behind.
/// Returns the two folder paths.
pub fn write_pair(
    dir: &Path,
    cfg: &SynthConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<(PathBuf, PathBuf)> {
    cfg.validate()?;
    std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
        path: dir.to_owned(),
        source,
    })?;
    let plans = plan(cfg);
    let total = plans.len();
    let base_infos: Vec<TensorInfo> = plans
        .iter()
        .map(|p| TensorInfo::new(p.spec.name.clone(), dtype_of(p, cfg), p.spec.shape.clone()))
        .collect();
    let ft_infos: Vec<TensorInfo> = plans
        .iter()
        .filter(|p| p.in_finetuned)
        .map(|p| TensorInfo::new(p.spec.name.clone(), cfg.dtype, p.spec.shape.clone()))
        .collect();
    let config = serde_json::to_vec_pretty(&arch_config_json(cfg.shape, cfg.arch(), cfg.dtype))
        .unwrap_or_default();

    let mut base_w = CheckpointWriter::create(dir.join("base"), base_infos, writer_options(cfg))?;
    let mut ft_w = CheckpointWriter::create(dir.join("finetuned"), ft_infos, writer_options(cfg))?;
    base_w.add_file("config.json", &config)?;
    ft_w.add_file("config.json", &config)?;

    // Rendezvous channel: the generator renders tensor i+1 while the writer writes tensor i; the
    // writer hands the buffers back for reuse.
    let (to_writer, from_main) = mpsc::sync_channel::<Rendered>(0);
    let (to_main, from_writer) = mpsc::channel::<Rendered>();
    let plans = &plans;
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> Result<(PathBuf, PathBuf)> {
            for r in from_main {
                let p = &plans[r.index];
                base_w.write_tensor(&p.spec.name, &r.base)?;
                if p.in_finetuned {
                    ft_w.write_tensor(&p.spec.name, &r.finetuned)?;
                }
                // The generator may already have finished; then the buffers are simply dropped.
                let _ = to_main.send(r);
            }
            let base = base_w.finish()?;
            let ft = ft_w.finish()?;
            Ok((base, ft))
        });

        let mut done = 0;
        let mut spare: Vec<Rendered> = Vec::new();
        for (index, p) in plans.iter().enumerate() {
            let mut r = spare.pop().unwrap_or(Rendered {
                index,
                base: Vec::new(),
                finetuned: Vec::new(),
            });
            r.index = index;
            render_into(p, cfg, &mut r.base, &mut r.finetuned);
            if to_writer.send(r).is_err() {
                break; // the writer stopped on an error; join below reports it
            }
            while let Ok(back) = from_writer.try_recv() {
                done += 1;
                progress(done, total);
                spare.push(back);
            }
        }
        drop(to_writer);
        let result = writer.join().map_err(|_| Error::WriterPanicked {
            path: dir.to_owned(),
        })?;
        for _ in from_writer.try_iter() {
            done += 1;
            progress(done, total);
        }
        result
    })
}
