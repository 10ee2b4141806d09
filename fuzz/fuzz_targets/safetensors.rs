//! The safetensors reader on arbitrary bytes: header validation (ultradelta-io's header parser), then every
//! tensor's view and conversion to f32.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ultradelta_fuzz::open_checkpoint("model.safetensors", data));
