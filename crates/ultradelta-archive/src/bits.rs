//! Bit streams shared by the Golomb and bit-packing codecs.
//!
//! Stream bit `k` is bit `k % 8` (value `1 << (k % 8)`) of byte `k / 8`: the first bit of the stream is the least
//! significant bit of the first byte ("LSB-first"). Unused bits of the last byte are zero.

/// Appends bits to a byte vector, LSB-first.
pub(crate) struct BitWriter {
    bytes: Vec<u8>,
    acc: u64,
    /// Number of pending bits in `acc` (always < 8 between calls).
    pending: u32,
    len: u64,
}

impl BitWriter {
    pub(crate) fn with_capacity_bits(bits: u64) -> BitWriter {
        let cap = usize::try_from(bits.div_ceil(8)).unwrap_or(0);
        BitWriter {
            bytes: Vec::with_capacity(cap),
            acc: 0,
            pending: 0,
            len: 0,
        }
    }

    /// Appends the low `n` bits of `value` (n <= 56), bit 0 of `value` first.
    #[inline]
    pub(crate) fn put_lsb_first(&mut self, value: u64, n: u32) {
        debug_assert!(n <= 56);
        if n == 0 {
            return;
        }
        let masked = value & ((1u64 << n) - 1);
        self.acc |= masked << self.pending;
        self.pending += n;
        self.len += u64::from(n);
        while self.pending >= 8 {
            self.bytes.push(self.acc as u8);
            self.acc >>= 8;
            self.pending -= 8;
        }
    }

    /// Appends the low `n` bits of `value` (n <= 64), most significant of those bits first.
    #[inline]
    pub(crate) fn put_msb_first(&mut self, value: u64, n: u32) {
        if n == 0 {
            return;
        }
        let mut n = n;
        let mut value = if n == 64 {
            value
        } else {
            value & ((1u64 << n) - 1)
        };
        // Emit in chunks of at most 32 bits, high chunk first.
        while n > 32 {
            let hi = value >> (n - 32);
            self.put_lsb_first(reverse_low(hi, 32), 32);
            n -= 32;
            value &= (1u64 << n) - 1;
        }
        self.put_lsb_first(reverse_low(value, n), n);
    }

    /// Appends `count` one-bits.
    #[inline]
    pub(crate) fn put_ones(&mut self, mut count: u64) {
        while count >= 32 {
            self.put_lsb_first(u64::from(u32::MAX), 32);
            count -= 32;
        }
        // count < 32 here.
        self.put_lsb_first((1u64 << count) - 1, count as u32);
    }

    /// Number of bits written so far.
    pub(crate) fn bit_len(&self) -> u64 {
        self.len
    }

    /// Flushes the partial last byte (zero-padded) and returns the bytes.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        if self.pending > 0 {
            self.bytes.push(self.acc as u8);
        }
        self.bytes
    }
}

/// Reverses the order of the low `n` bits of `v` (n in 1..=64).
#[inline]
pub(crate) fn reverse_low(v: u64, n: u32) -> u64 {
    v.reverse_bits() >> (64 - n)
}

/// Reads bits from a byte slice, LSB-first, never past `bit_len`.
pub(crate) struct BitReader<'a> {
    bytes: &'a [u8],
    pos: u64,
    bit_len: u64,
}

impl<'a> BitReader<'a> {
    /// `bit_len` must be <= `bytes.len() * 8` (checked by callers).
    pub(crate) fn new(bytes: &'a [u8], bit_len: u64) -> BitReader<'a> {
        debug_assert!(bit_len <= (bytes.len() as u64) * 8);
        BitReader {
            bytes,
            pos: 0,
            bit_len,
        }
    }

    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.bit_len - self.pos
    }

    /// The next 57..=64 bits of the stream (stream order from bit 0), zero beyond the end of the bytes.
    /// Bits past `bit_len` may be non-zero; callers bound what they consume with `remaining()`.
    #[inline]
    fn peek(&self) -> u64 {
        let byte = (self.pos / 8) as usize;
        let shift = (self.pos % 8) as u32;
        let mut buf = [0u8; 8];
        if let Some(tail) = self.bytes.get(byte..) {
            let n = tail.len().min(8);
            buf[..n].copy_from_slice(&tail[..n]);
        }
        u64::from_le_bytes(buf) >> shift
    }

    /// The next 64 stream bits (first stream bit into bit 0) by one unaligned load: `remaining() >= 64` is
    /// required, so every bit belongs to the stream. For decoders' fast paths.
    #[inline(always)]
    pub(crate) fn peek_word(&self) -> u64 {
        debug_assert!(self.remaining() >= 64);
        let byte = (self.pos / 8) as usize;
        let w: [u8; 8] = self.bytes[byte..byte + 8].try_into().expect("8 bytes");
        // The byte holding `pos` and the next seven give at least 57 bits from `pos`; the 64th comes next.
        let lo = u64::from_le_bytes(w) >> (self.pos % 8);
        let hi = u64::from(self.bytes.get(byte + 8).copied().unwrap_or(0));
        lo | (hi << 1 << (63 - self.pos % 8))
    }

    /// Consumes `n` bits already read with [`peek_word`](Self::peek_word) (`n <= remaining()`).
    #[inline(always)]
    pub(crate) fn skip(&mut self, n: u64) {
        debug_assert!(n <= self.remaining());
        self.pos += n;
    }

    /// Reads `n` bits (n <= 56), first stream bit into bit 0. `None` if fewer than `n` bits remain.
    #[inline]
    pub(crate) fn get_lsb_first(&mut self, n: u32) -> Option<u64> {
        debug_assert!(n <= 56);
        if n == 0 {
            return Some(0);
        }
        if u64::from(n) > self.remaining() {
            return None;
        }
        let v = self.peek() & ((1u64 << n) - 1);
        self.pos += u64::from(n);
        Some(v)
    }

    /// Reads `n` bits (n <= 64), first stream bit as the most significant. `None` if fewer than `n` bits remain.
    #[inline]
    pub(crate) fn get_msb_first(&mut self, n: u32) -> Option<u64> {
        if u64::from(n) > self.remaining() {
            return None;
        }
        let mut v = 0u64;
        let mut left = n;
        while left > 0 {
            let take = left.min(32);
            let chunk = self.get_lsb_first(take)?;
            v = (v << take) | reverse_low(chunk, take);
            left -= take;
        }
        Some(v)
    }

    /// Counts one-bits up to the next zero bit and consumes them and the zero. Stops with `Err(count)` once more than
    /// `cap` ones have been seen or the stream ends before a zero (`count` = ones consumed so far).
    #[inline]
    pub(crate) fn get_unary(&mut self, cap: u64) -> Result<u64, u64> {
        let mut count = 0u64;
        loop {
            let remaining = self.remaining();
            if remaining == 0 {
                return Err(count);
            }
            let avail = remaining.min(56) as u32;
            let word = self.peek();
            let ones = word.trailing_ones().min(avail);
            count += u64::from(ones);
            self.pos += u64::from(ones);
            if count > cap {
                return Err(count);
            }
            if ones < avail {
                // The next bit is the terminating zero.
                self.pos += 1;
                return Ok(count);
            }
        }
    }

    /// True if every bit from `bit_len` to the end of the byte slice is zero.
    pub(crate) fn padding_is_zero(bytes: &[u8], bit_len: u64) -> bool {
        let full = (bit_len / 8) as usize;
        let rem = (bit_len % 8) as u32;
        let mut rest = bytes.get(full..).unwrap_or(&[]);
        if rem != 0 {
            match rest.split_first() {
                Some((&first, tail)) => {
                    if first >> rem != 0 {
                        return false;
                    }
                    rest = tail;
                }
                None => return false,
            }
        }
        rest.iter().all(|&b| b == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msb_and_lsb_round_trip() {
        let mut w = BitWriter::with_capacity_bits(0);
        w.put_lsb_first(0b101, 3);
        w.put_msb_first(0b110, 3);
        w.put_ones(70);
        w.put_lsb_first(0, 1);
        w.put_msb_first(0xDEAD_BEEF_1234_5678, 64);
        w.put_msb_first(0x1_2345_6789, 40);
        let len = w.bit_len();
        let bytes = w.finish();
        assert_eq!(len, 3 + 3 + 71 + 64 + 40);
        assert_eq!(bytes.len() as u64, len.div_ceil(8));
        // Stream order: first bit is bit 0 of byte 0.
        assert_eq!(bytes[0] & 0b111, 0b101);
        // MSB-first 0b110: stream bits 3,4,5 = 1,1,0.
        assert_eq!((bytes[0] >> 3) & 0b111, 0b011);
        let mut r = BitReader::new(&bytes, len);
        assert_eq!(r.get_lsb_first(3), Some(0b101));
        assert_eq!(r.get_msb_first(3), Some(0b110));
        assert_eq!(r.get_unary(1000), Ok(70));
        assert_eq!(r.get_msb_first(64), Some(0xDEAD_BEEF_1234_5678));
        assert_eq!(r.get_msb_first(40), Some(0x1_2345_6789));
        assert_eq!(r.remaining(), 0);
        assert_eq!(r.get_lsb_first(1), None);
        assert!(BitReader::padding_is_zero(&bytes, len));
    }

    #[test]
    fn unary_respects_cap_and_end() {
        let mut w = BitWriter::with_capacity_bits(0);
        w.put_ones(100);
        let len = w.bit_len();
        let bytes = w.finish();
        assert!(BitReader::new(&bytes, len).get_unary(10).is_err());
        assert_eq!(BitReader::new(&bytes, len).get_unary(1000), Err(100));
    }

    #[test]
    fn padding_check() {
        assert!(BitReader::padding_is_zero(&[0xFF, 0x01], 9));
        assert!(!BitReader::padding_is_zero(&[0xFF, 0x03], 9));
        assert!(!BitReader::padding_is_zero(&[0xFF, 0x01, 0x00, 0x10], 9));
        assert!(BitReader::padding_is_zero(&[], 0));
    }
}
