//! Integration tests of the archive format: one binary, one module per area.

mod appended_rows;
mod base_files;
mod baselines;
mod coded;
mod common;
mod compat;
mod errors;
mod hostile;
mod lowrank_sparse;
mod ratio;
mod roundtrip;
mod row_subset;
mod spec;
