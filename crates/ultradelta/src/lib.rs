//! UltraDelta: data-free delta compression of fine-tuned models (facade: configure, compress, write; read, apply).
