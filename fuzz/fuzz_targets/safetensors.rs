//! The safetensors reader on arbitrary bytes: header validation (ultradelta-io's header parser), then every
//! tensor's view and conversion to f32.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ultradelta_fuzz::scratch_file;
use ultradelta_io::Checkpoint;

fuzz_target!(|data: &[u8]| {
    let path = scratch_file("model.safetensors", data);
    let Ok(ck) = Checkpoint::open(&path) else {
        return;
    };
    let _ = ck.fingerprint();
    for v in ck.views() {
        let _ = v.to_f32();
        let _ = v.content_hash();
    }
});
