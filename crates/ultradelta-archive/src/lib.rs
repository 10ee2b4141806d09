//! The UltraDelta archive format: Golomb-coded positions, bit-packed levels, lossless records, streaming writer, random-access reader.
