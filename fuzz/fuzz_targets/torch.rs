//! The PyTorch reader on arbitrary bytes: the zip container, the pickle interpreter and the tensor checks
//! (ultradelta-io's `torch` module), then every tensor's view, conversion to f32 and the fingerprint.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ultradelta_fuzz::scratch_file;
use ultradelta_io::Checkpoint;

fuzz_target!(|data: &[u8]| {
    let path = scratch_file("pytorch_model.bin", data);
    let Ok(ck) = Checkpoint::open(&path) else {
        return;
    };
    let _ = ck.fingerprint();
    for v in ck.views() {
        let _ = v.to_f32();
        let _ = v.content_hash();
    }
});
