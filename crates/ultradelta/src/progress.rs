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
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}
