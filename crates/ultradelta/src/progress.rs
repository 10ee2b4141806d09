/// Receives progress from long-running operations (compress, apply, eval).
///
/// The library never draws anything itself; the CLI implements this with a
/// progress bar on a terminal. All methods have empty defaults.
pub trait Progress: Sync {
    /// A stage starts; `total` units (usually tensor elements) will follow.
    fn begin(&self, _stage: &str, _total: u64) {}
    /// `n` more units of the current stage are done.
    fn advance(&self, _n: u64) {}
    /// An informational line (for example which tensor-selection preset was chosen).
    fn note(&self, _message: &str) {}
    /// The current stage is finished.
    fn end(&self) {}
    /// Polled between tensors (by `compress`, `apply`, `verify`, `eval`, a budget search's evaluations, and after
    /// each view [`open_checkpoint`] copies): `true` stops the operation with
    /// [`Error::Cancelled`](crate::Error::Cancelled). What it had started to write is removed, as after any error;
    /// an output that existed before is left as it was.
    fn cancelled(&self) -> bool {
        false
    }
}

/// Opens a checkpoint as [`ultradelta_io::Checkpoint::open`] does, reporting the copy of tensors saved as strided
/// views (PyTorch files whose tensors were saved without `.contiguous()`) as the stage `copying views`, then a note
/// saying how many parameters were copied. Nothing is reported for a checkpoint without views.
/// [`Progress::cancelled`] is polled after each view copied.
pub fn open_checkpoint(
    path: &std::path::Path,
    progress: &dyn Progress,
) -> crate::Result<ultradelta_io::Checkpoint> {
    let mut last = 0u64;
    let opened = ultradelta_io::Checkpoint::open_with(path, &mut |done, total| {
        if last == 0 {
            progress.begin("copying views", total);
        }
        progress.advance(done - last);
        last = done;
        !progress.cancelled()
    });
    let ck = match opened {
        Err(ultradelta_io::Error::Cancelled { .. }) => return Err(crate::Error::Cancelled),
        other => other?,
    };
    if last > 0 {
        progress.end();
        progress.note(&format!(
            "{}: {last} parameters saved as strided views (without .contiguous()), copied row-major",
            path.display()
        ));
    }
    Ok(ck)
}

/// [`Error::Cancelled`](crate::Error::Cancelled) when `progress` says so.
pub(crate) fn check_cancelled(progress: &dyn Progress) -> crate::Result<()> {
    if progress.cancelled() {
        Err(crate::Error::Cancelled)
    } else {
        Ok(())
    }
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::test_pairs::tiny_f32;
    use crate::{ApplyOptions, CompressConfig, Error};

    /// Cancels once `stage` has been polled `after` times.
    struct CancelIn {
        stage: &'static str,
        after: usize,
        current: Mutex<String>,
        polls: AtomicUsize,
    }

    impl CancelIn {
        fn new(stage: &'static str, after: usize) -> CancelIn {
            CancelIn {
                stage,
                after,
                current: Mutex::new(String::new()),
                polls: AtomicUsize::new(0),
            }
        }
    }

    impl Progress for CancelIn {
        fn begin(&self, stage: &str, _total: u64) {
            *self.current.lock().unwrap() = stage.to_string();
        }
        fn cancelled(&self) -> bool {
            *self.current.lock().unwrap() == self.stage
                && self.polls.fetch_add(1, Ordering::Relaxed) >= self.after
        }
    }

    /// Names in `dir` other than `keep`: partial files or folders a stopped writer would leave.
    fn others(dir: &std::path::Path, keep: &[&str]) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !keep.contains(&n.as_str()))
            .collect()
    }

    #[test]
    fn a_cancelled_compress_apply_or_verify_leaves_nothing_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let (base, ft) = tiny_f32(&dir.path().join("models"));
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let archive = out.join("a.udelta");
        let cfg = CompressConfig::default();
        // Stopped after two tensors of pass 2, and in pass 1.
        for (stage, after) in [("compressing", 2), ("analysing deltas", 0)] {
            let e = crate::compress(
                &base,
                &ft,
                &cfg,
                &archive,
                false,
                &CancelIn::new(stage, after),
            );
            assert!(matches!(e, Err(Error::Cancelled)), "{stage}: {e:?}");
            assert_eq!(others(&out, &[]), Vec::<String>::new(), "{stage}");
        }
        // Stopped inside a budget search: its first evaluation (a stage of its own) polls before each tensor.
        let budget = CompressConfig {
            target_ratio: Some(60.0),
            ..CompressConfig::default()
        };
        let e = crate::compress(
            &base,
            &ft,
            &budget,
            &archive,
            false,
            &CancelIn::new("budget search", 3),
        );
        assert!(matches!(e, Err(Error::Cancelled)), "{e:?}");
        assert_eq!(others(&out, &[]), Vec::<String>::new());

        // A forced rewrite that is stopped leaves the archive that was there.
        crate::compress(&base, &ft, &cfg, &archive, false, &NoProgress).unwrap();
        let before = std::fs::read(&archive).unwrap();
        let sparser = CompressConfig {
            sparsity: 0.5,
            ..CompressConfig::default()
        };
        let e = crate::compress(
            &base,
            &ft,
            &sparser,
            &archive,
            true,
            &CancelIn::new("compressing", 1),
        );
        assert!(matches!(e, Err(Error::Cancelled)));
        assert_eq!(std::fs::read(&archive).unwrap(), before);
        assert_eq!(others(&out, &["a.udelta"]), Vec::<String>::new());

        // apply, stopped after the first tensor was handed to the writer thread.
        let rebuilt = out.join("rebuilt");
        let e = crate::apply(
            &base,
            &archive,
            &rebuilt,
            &ApplyOptions::default(),
            &CancelIn::new("rebuilding", 1),
        );
        assert!(matches!(e, Err(Error::Cancelled)), "{e:?}");
        assert_eq!(others(&out, &["a.udelta"]), Vec::<String>::new());
        crate::apply(
            &base,
            &archive,
            &rebuilt,
            &ApplyOptions::default(),
            &NoProgress,
        )
        .unwrap();

        // verify: no verdict on the archive.
        let e = crate::verify(&archive, Some(&base), &CancelIn::new("verifying", 1)).unwrap_err();
        assert!(matches!(e, Error::Cancelled));
        assert_eq!(crate::verify_failure(&e), crate::VerifyFailure::Io);
    }
}
