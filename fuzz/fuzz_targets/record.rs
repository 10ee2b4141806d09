//! One record's bytes straight into the decoders, past the checksums: the common header, then every kind's
//! payload decode with the default limits, and the decoded record's dense expansion.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ultradelta_archive::{decode_record, Limits};

fuzz_target!(|data: &[u8]| {
    if let Ok((_header, record)) = decode_record(data, &Limits::default()) {
        let _ = record.kept();
    }
});
