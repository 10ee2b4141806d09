//! The PyTorch reader on arbitrary bytes: the zip container or the legacy layout, the pickle interpreter and the
//! tensor checks (ultradelta-io's `torch` module), then every tensor's view, conversion to f32 and the fingerprint.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ultradelta_fuzz::open_checkpoint("pytorch_model.bin", data));
