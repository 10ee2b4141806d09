//! Fixed-width bit packing of quantization levels (docs/FORMAT.md, "Levels stream").
//!
//! Level `i` occupies stream bits `[i * bits, (i + 1) * bits)`, its least significant bit first; stream bit `k` is
//! bit `k % 8` of byte `k / 8`. The stream takes exactly `ceil(n * bits / 8)` bytes, the unused high bits of the last
//! byte are zero. `bits == 0` (a constant tensor: every level is 0) takes no bytes at all.

use crate::bits::{BitReader, BitWriter};
use crate::{Error, Result};

/// Byte length of `n` levels packed at `bits` bits, or `None` on overflow.
pub fn packed_len(n: u64, bits: u8) -> Option<u64> {
    n.checked_mul(u64::from(bits)).map(|b| b.div_ceil(8))
}

/// Packs `levels` at `bits` bits each (0..=16), LSB-first.
///
/// # Panics
/// If `bits > 16` or a level does not fit in `bits` bits. These are caller bugs; the archive writer validates
/// records before packing and never triggers them.
pub fn pack(levels: &[u16], bits: u8) -> Vec<u8> {
    assert!(bits <= 16, "bit width {bits} above 16");
    if bits == 0 {
        assert!(levels.iter().all(|&l| l == 0), "non-zero level at 0 bits");
        return Vec::new();
    }
    let limit = 1u32 << bits;
    let total = packed_len(levels.len() as u64, bits).unwrap_or(0);
    if bits == 8 {
        return levels
            .iter()
            .map(|&l| {
                assert!(
                    u32::from(l) < limit,
                    "level {l} does not fit in {bits} bits"
                );
                l as u8
            })
            .collect();
    }
    if bits == 4 {
        let mut out = Vec::with_capacity(total as usize);
        for pair in levels.chunks(2) {
            let lo = pair[0];
            let hi = pair.get(1).copied().unwrap_or(0);
            assert!(
                u32::from(lo) < limit && u32::from(hi) < limit,
                "level does not fit in 4 bits"
            );
            out.push((lo as u8) | ((hi as u8) << 4));
        }
        return out;
    }
    let mut w = BitWriter::with_capacity_bits(total * 8);
    for &l in levels {
        assert!(
            u32::from(l) < limit,
            "level {l} does not fit in {bits} bits"
        );
        w.put_lsb_first(u64::from(l), u32::from(bits));
    }
    w.finish()
}

/// Unpacks `n` levels of `bits` bits each. Validates the byte length (`ceil(n * bits / 8)` exactly), the bit
/// width (`<= 16`) and that the padding bits are zero before allocating the output.
///
/// # Errors
/// [`Error::InvalidStream`] (stream `"bitpack"`).
pub fn unpack(bytes: &[u8], bits: u8, n: usize) -> Result<Vec<u16>> {
    let bad = |d: String| Error::stream("bitpack", d);
    if bits > 16 {
        return Err(bad(format!("bit width {bits} above 16")));
    }
    let expected = packed_len(n as u64, bits)
        .ok_or_else(|| bad(format!("{n} levels at {bits} bits overflow")))?;
    if bytes.len() as u64 != expected {
        return Err(bad(format!(
            "{} bytes given for {n} levels at {bits} bits (expected {expected})",
            bytes.len()
        )));
    }
    if bits == 0 {
        return Ok(vec![0; n]);
    }
    let bit_len = n as u64 * u64::from(bits);
    if !BitReader::padding_is_zero(bytes, bit_len) {
        return Err(bad("non-zero padding bits after the last level".into()));
    }
    match bits {
        8 => Ok(bytes.iter().map(|&b| u16::from(b)).collect()),
        4 => {
            let mut out = Vec::with_capacity(n);
            for &b in bytes {
                out.push(u16::from(b & 0x0F));
                out.push(u16::from(b >> 4));
            }
            out.truncate(n);
            Ok(out)
        }
        16 => Ok(bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()),
        _ => {
            let mut r = BitReader::new(bytes, bit_len);
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                // Cannot fail: the length was checked above.
                let v = r
                    .get_lsb_first(u32::from(bits))
                    .ok_or_else(|| bad("stream ended early".into()))?;
                out.push(v as u16);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_layouts() {
        assert_eq!(pack(&[1, 2, 3], 4), vec![0x21, 0x03]);
        assert_eq!(pack(&[1, 2, 3], 2), vec![0b11_10_01]);
        assert_eq!(pack(&[0x1FF], 9), vec![0xFF, 0x01]);
        assert_eq!(pack(&[0xABCD], 16), vec![0xCD, 0xAB]);
        assert_eq!(pack(&[5, 6], 3), vec![0b110_101]);
        assert!(pack(&[0, 0], 0).is_empty());
    }

    #[test]
    fn generic_and_fast_paths_agree() {
        let levels: Vec<u16> = (0..1001u32).map(|i| ((i * 7919) % 256) as u16).collect();
        for bits in [4u8, 8, 16] {
            let mask = ((1u32 << bits) - 1) as u16;
            let l: Vec<u16> = levels.iter().map(|&v| v & mask).collect();
            let mut w = BitWriter::with_capacity_bits(0);
            for &v in &l {
                w.put_lsb_first(u64::from(v), u32::from(bits));
            }
            assert_eq!(pack(&l, bits), w.finish(), "bits {bits}");
            assert_eq!(unpack(&pack(&l, bits), bits, l.len()).unwrap(), l);
        }
    }

    #[test]
    fn unpack_rejects_bad_input() {
        assert!(unpack(&[0x21], 4, 3).is_err());
        assert!(unpack(&[0x21, 0x13], 4, 3).is_err()); // padding nibble set
        assert!(unpack(&[0], 17, 0).is_err());
        assert!(unpack(&[1], 0, 5).is_err());
        assert_eq!(unpack(&[], 0, 5).unwrap(), vec![0; 5]);
    }

    #[test]
    fn hostile_bitpack_streams() {
        let err = unpack(&[0xFF; 3], 4, 7).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidStream {
                    stream: "bitpack",
                    ..
                }
            ),
            "{err}"
        );
        assert!(unpack(&[0xFF; 3], 4, 5).is_err());
        assert!(unpack(&[0; 3], 4, usize::MAX).is_err());
    }

    proptest::proptest! {
    #[test]
    fn bitpack_round_trip(bits in 0u8..=16, raw in proptest::collection::vec(proptest::prelude::any::<u16>(), 0..500)) {
        let mask = if bits == 0 { 0 } else { ((1u32 << bits) - 1) as u16 };
        let levels: Vec<u16> = raw.iter().map(|&v| v & mask).collect();
        let packed = pack(&levels, bits);
        proptest::prop_assert_eq!(packed.len() as u64, (levels.len() as u64 * u64::from(bits)).div_ceil(8));
        proptest::prop_assert_eq!(unpack(&packed, bits, levels.len()).unwrap(), levels);
    }
    }
}
