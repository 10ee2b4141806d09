//! Tensor IO for UltraDelta: memory-mapped safetensors checkpoints (single, folder, sharded), pairing, streaming writer.
