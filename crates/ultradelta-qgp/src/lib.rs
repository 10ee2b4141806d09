//! Quantize-then-group-wise-prune for UltraDelta: uniform b-bit quantization and stratified (DAC) pruning.
