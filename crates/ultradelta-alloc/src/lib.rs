//! Per-tensor sparsity allocation for UltraDelta: variance-based mixed sparsity (MSA) and uniform.
