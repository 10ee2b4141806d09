//! Golomb coding of the kept positions of a sparse tensor (docs/FORMAT.md, "Positions stream").
//!
//! The positions `p_0 < p_1 < ... < p_{k-1} < numel` are turned into gaps `g_0 = p_0`, `g_i = p_i - p_{i-1} - 1`
//! (the number of dropped entries before each kept one). Each gap is written as a Golomb code with parameter `m`:
//! the quotient `q = g / m` in unary (`q` one-bits, then a zero-bit), then the remainder `r = g % m` in truncated
//! binary, most significant bit first: with `c = ceil(log2 m)` and `u = 2^c - m`, `r < u` takes `c - 1` bits (value
//! `r`), otherwise `c` bits (value `r + u`). Bits are stored LSB-first in bytes, the last byte zero-padded.
//!
//! For independent (geometric) gaps with keep probability `p` the best `m` is near
//! `ceil(ln(2 - p) / -ln(1 - p))`; [`optimal_parameter`] evaluates the exact bit cost of a window of candidates
//! around it and keeps the cheapest (smallest `m` on ties), so the choice is deterministic.
//!
//! Decoding ([`decode_positions`]) treats the stream as hostile: every unary run is capped so the position cannot
//! pass `numel`, positions come out strictly increasing and below `numel`, exactly `count` codes must use exactly
//! `bit_len` bits, and the padding bits must be zero.

use crate::bits::{reverse_low, BitReader, BitWriter};
use crate::{Error, Result};

/// `ceil(log2 m)` for `m >= 1`.
#[inline]
fn ceil_log2(m: u64) -> u32 {
    if m <= 1 {
        0
    } else {
        64 - (m - 1).leading_zeros()
    }
}

/// Truncated-binary constants for parameter `m`: `(c, u)` with `c = ceil(log2 m)` and `u = 2^c - m`.
#[inline]
fn tb_constants(m: u64) -> (u32, u64) {
    let c = ceil_log2(m);
    let pow = if c == 64 { 0 } else { 1u64 << c };
    // For c == 64 (m > 2^63), 2^64 - m computed with wrapping arithmetic is exact.
    (c, pow.wrapping_sub(m))
}

/// Bits used by the Golomb code of one gap with parameter `m`.
#[inline]
pub fn gap_bits(gap: u64, m: u64) -> u64 {
    let (c, u) = tb_constants(m);
    let q = gap / m;
    let r = gap % m;
    let rem_bits = if c == 0 {
        0
    } else if r < u {
        c - 1
    } else {
        c
    };
    q + 1 + u64::from(rem_bits)
}

/// Checks that `positions` are strictly increasing and below `numel`.
///
/// # Errors
/// [`Error::InvalidRecord`] naming the first offending index.
pub fn validate_positions(positions: &[u64], numel: u64) -> Result<()> {
    let mut next_min = 0u64;
    for (i, &p) in positions.iter().enumerate() {
        if p < next_min {
            return Err(Error::record(format!(
                "positions must be strictly increasing: positions[{i}] = {p} after {}",
                next_min - 1
            )));
        }
        if p >= numel {
            return Err(Error::record(format!(
                "positions[{i}] = {p} is not below numel {numel}"
            )));
        }
        next_min = p + 1;
    }
    Ok(())
}

/// Iterator over the gaps of valid positions.
fn gaps(positions: &[u64]) -> impl Iterator<Item = u64> + '_ {
    let mut next_min = 0u64;
    positions.iter().map(move |&p| {
        let g = p - next_min;
        next_min = p + 1;
        g
    })
}

/// The Golomb parameter that is optimal for geometric gaps with keep probability `p = kept / numel`:
/// `ceil(ln(2 - p) / -ln(1 - p))`, clamped to `[1, max(numel, 1)]`. 1 when nothing or everything is kept.
pub fn geometric_parameter(kept: u64, numel: u64) -> u64 {
    if kept == 0 || kept >= numel {
        return 1;
    }
    let p = kept as f64 / numel as f64;
    let m = ((2.0 - p).ln() / -(-p).ln_1p()).ceil();
    if !m.is_finite() || m < 1.0 {
        1
    } else {
        (m as u64).clamp(1, numel)
    }
}

/// The candidate parameters [`optimal_parameter`] evaluates: `m0 * k / 8` for `k = 4..=16` and `m0 - 3 ..= m0 + 3`,
/// where `m0` = [`geometric_parameter`], clamped to `[1, max(numel, 1)]`, ascending and without duplicates.
pub fn candidate_parameters(kept: u64, numel: u64) -> Vec<u64> {
    let m0 = geometric_parameter(kept, numel);
    let hi = numel.max(1);
    let mut c: Vec<u64> = (4u64..=16)
        .map(|k| m0.saturating_mul(k) / 8)
        .chain((0..=6).map(|d| (m0 + d).saturating_sub(3)))
        .map(|m| m.clamp(1, hi))
        .collect();
    c.sort_unstable();
    c.dedup();
    c
}

/// Exact number of bits the positions stream takes with parameter `m`. `positions` must be valid (see
/// [`validate_positions`]) and `m >= 1`.
pub fn encoded_bits(positions: &[u64], m: u64) -> u64 {
    gaps(positions).map(|g| gap_bits(g, m)).sum()
}

/// Picks the parameter with the smallest exact bit cost among [`candidate_parameters`] (smallest `m` on ties).
///
/// # Errors
/// [`Error::InvalidRecord`] if the positions are not strictly increasing and below `numel`.
pub fn optimal_parameter(positions: &[u64], numel: u64) -> Result<u64> {
    validate_positions(positions, numel)?;
    let cands = candidate_parameters(positions.len() as u64, numel);
    if cands.len() == 1 || positions.is_empty() {
        return Ok(cands[0]);
    }
    let costs = candidate_costs(positions, &cands);
    let best = costs
        .iter()
        .zip(&cands)
        .min_by_key(|&(&cost, &m)| (cost, m))
        .map_or(1, |(_, &m)| m);
    Ok(best)
}

/// Gaps below this are counted in a histogram by [`candidate_costs`]; larger ones are costed one by one.
const GAP_HISTOGRAM: usize = 1 << 12;

/// Positions per parallel work unit of [`candidate_costs`].
const COST_CHUNK: usize = 1 << 16;

/// [`encoded_bits`] of valid `positions` for every parameter in `cands`: the bit cost of a gap depends only on the
/// gap, so the gaps are counted once (small ones in a histogram, in parallel fixed chunks) and every candidate is
/// costed from the counts. Integer sums, so the result does not depend on the thread count.
fn candidate_costs(positions: &[u64], cands: &[u64]) -> Vec<u64> {
    use rayon::prelude::*;
    let (hist, costs) = positions
        .par_chunks(COST_CHUNK)
        .enumerate()
        .map(|(c, chunk)| {
            let mut hist = vec![0u64; GAP_HISTOGRAM];
            let mut costs = vec![0u64; cands.len()];
            let mut next_min = if c == 0 {
                0
            } else {
                positions[c * COST_CHUNK - 1] + 1
            };
            for &p in chunk {
                let g = p - next_min;
                next_min = p + 1;
                if g < GAP_HISTOGRAM as u64 {
                    hist[g as usize] += 1;
                } else {
                    for (cost, &m) in costs.iter_mut().zip(cands) {
                        *cost += gap_bits(g, m);
                    }
                }
            }
            (hist, costs)
        })
        .reduce(
            || (vec![0u64; GAP_HISTOGRAM], vec![0u64; cands.len()]),
            |(mut h, mut c), (h2, c2)| {
                h.iter_mut().zip(h2).for_each(|(a, b)| *a += b);
                c.iter_mut().zip(c2).for_each(|(a, b)| *a += b);
                (h, c)
            },
        );
    let mut costs = costs;
    for (cost, &m) in costs.iter_mut().zip(cands) {
        for (g, &n) in hist.iter().enumerate() {
            if n > 0 {
                *cost += n * gap_bits(g as u64, m);
            }
        }
    }
    costs
}

/// Encodes `positions` with the parameter `m`. Returns the stream bytes and its length in bits.
///
/// # Errors
/// [`Error::InvalidRecord`] if the positions are invalid or `m` is not in `[1, max(numel, 1)]`.
pub fn encode_positions_with(positions: &[u64], numel: u64, m: u64) -> Result<(Vec<u8>, u64)> {
    validate_positions(positions, numel)?;
    if m == 0 || m > numel.max(1) {
        return Err(Error::record(format!(
            "Golomb parameter {m} is outside [1, {}]",
            numel.max(1)
        )));
    }
    let bits = candidate_costs(positions, &[m])[0];
    let (c, u) = tb_constants(m);
    let mut w = BitWriter::with_capacity_bits(bits);
    for g in gaps(positions) {
        let q = g / m;
        let r = g % m;
        if q < 24 && c <= 24 {
            // The whole code in one append: q ones, a zero, then the remainder most significant bit first.
            let (value, n) = if c == 0 {
                (0, 0)
            } else if r < u {
                (r, c - 1)
            } else {
                (r + u, c)
            };
            let rem = if n == 0 {
                0
            } else {
                value.reverse_bits() >> (64 - n)
            };
            let q = q as u32;
            w.put_lsb_first(((1u64 << q) - 1) | (rem << (q + 1)), q + 1 + n);
            continue;
        }
        w.put_ones(q);
        w.put_lsb_first(0, 1);
        if c > 0 {
            if r < u {
                w.put_msb_first(r, c - 1);
            } else {
                w.put_msb_first(r + u, c);
            }
        }
    }
    debug_assert_eq!(w.bit_len(), bits);
    let bit_len = w.bit_len();
    Ok((w.finish(), bit_len))
}

/// Encodes `positions` with the cheapest parameter ([`optimal_parameter`]). Returns `(m, bytes, bit_len)`.
///
/// # Errors
/// [`Error::InvalidRecord`] if the positions are not strictly increasing and below `numel`.
pub fn encode_positions(positions: &[u64], numel: u64) -> Result<(u64, Vec<u8>, u64)> {
    let m = optimal_parameter(positions, numel)?;
    let (bytes, bit_len) = encode_positions_with(positions, numel, m)?;
    Ok((m, bytes, bit_len))
}

/// Decodes exactly `count` positions from a stream of `bit_len` bits written with parameter `m`.
///
/// Safe on hostile input: checks `bytes.len() == ceil(bit_len / 8)`, `1 <= m <= max(numel, 1)`,
/// `count <= min(numel, bit_len)` before allocating, caps every unary run so no position can reach `numel`, and
/// requires that the codes end exactly at `bit_len` and that the padding bits are zero.
///
/// # Errors
/// [`Error::InvalidStream`] (stream `"golomb"`) describing the first violation.
pub fn decode_positions(
    bytes: &[u8],
    bit_len: u64,
    m: u64,
    count: u64,
    numel: u64,
) -> Result<Vec<u64>> {
    decode_positions_with(bytes, bit_len, m, count, numel, true)
}

/// [`decode_positions`], with or without its fast path (the tests check both give the same results and errors).
fn decode_positions_with(
    bytes: &[u8],
    bit_len: u64,
    m: u64,
    count: u64,
    numel: u64,
    fast: bool,
) -> Result<Vec<u64>> {
    let bad = |d: String| Error::stream("golomb", d);
    let needed_bytes = bit_len.div_ceil(8);
    if bytes.len() as u64 != needed_bytes {
        return Err(bad(format!(
            "{} bytes given for {bit_len} bits (expected {needed_bytes})",
            bytes.len()
        )));
    }
    if m == 0 || m > numel.max(1) {
        return Err(bad(format!(
            "parameter m = {m} outside [1, {}]",
            numel.max(1)
        )));
    }
    if count > numel {
        return Err(bad(format!(
            "{count} positions declared for {numel} entries"
        )));
    }
    if count > bit_len {
        return Err(bad(format!(
            "{count} positions cannot fit in {bit_len} bits (each code takes at least 1 bit)"
        )));
    }
    if !BitReader::padding_is_zero(bytes, bit_len) {
        return Err(bad("non-zero padding bits after the last code".into()));
    }
    let (c, u) = tb_constants(m);
    let mut r = BitReader::new(bytes, bit_len);
    let count_usize =
        usize::try_from(count).map_err(|_| bad(format!("count {count} too large")))?;
    let mut out = Vec::with_capacity(count_usize);
    let mut next_min = 0u64;
    // Fast path: codes read from one 64-bit word while 64 or more stream bits remain, as long as they are short
    // and land inside the tensor. Anything else (a long unary run, a position past the end, the stream's last
    // bits) goes to the checked loop below, which decodes the rest and reports errors.
    let mut first = 0u64;
    if fast && c <= 24 {
        let k = c.saturating_sub(1);
        let low = (1u64 << k) - 1;
        while first < count && r.remaining() >= 64 {
            let word = r.peek_word();
            let q = word.trailing_ones();
            if q > 32 {
                break;
            }
            let (rem, len) = if c == 0 {
                (0, q + 1)
            } else {
                let bits = (word >> (q + 1)) & low;
                let short = if k == 0 { 0 } else { reverse_low(bits, k) };
                if short < u {
                    (short, q + 1 + k)
                } else {
                    let bit = (word >> (q + 1 + k)) & 1;
                    (((short << 1) | bit).wrapping_sub(u), q + 1 + c)
                }
            };
            let gap = u64::from(q) * m + rem;
            if next_min >= numel || gap > numel - 1 - next_min {
                break;
            }
            let pos = next_min + gap;
            out.push(pos);
            next_min = pos + 1;
            r.skip(u64::from(len));
            first += 1;
        }
    }
    for i in first..count {
        if next_min >= numel {
            return Err(bad(format!(
                "position {i} cannot fit: previous position is already the last entry ({})",
                numel - 1
            )));
        }
        let max_gap = numel - 1 - next_min;
        let cap = max_gap / m;
        let q = match r.get_unary(cap) {
            Ok(q) => q,
            Err(seen) if seen > cap => {
                return Err(bad(format!(
                    "code {i}: unary run longer than {cap} would pass numel {numel}"
                )))
            }
            Err(_) => {
                return Err(bad(format!(
                    "code {i} of {count}: stream ends inside the quotient at bit {}",
                    r.position()
                )))
            }
        };
        let rem = if c == 0 {
            0
        } else {
            let short = r.get_msb_first(c - 1).ok_or_else(|| {
                bad(format!(
                    "code {i} of {count}: stream ends inside the remainder"
                ))
            })?;
            if short < u {
                short
            } else {
                let bit = r.get_lsb_first(1).ok_or_else(|| {
                    bad(format!(
                        "code {i} of {count}: stream ends inside the remainder"
                    ))
                })?;
                ((short << 1) | bit).wrapping_sub(u)
            }
        };
        // q <= cap = max_gap / m, so q * m <= max_gap: no overflow; rem < m may still push past numel.
        let gap = q * m + rem;
        if gap > max_gap {
            return Err(bad(format!(
                "code {i}: position {} is not below numel {numel}",
                u128::from(next_min) + u128::from(gap)
            )));
        }
        let pos = next_min + gap;
        out.push(pos);
        next_min = pos + 1;
    }
    if r.position() != bit_len {
        return Err(bad(format!(
            "{count} codes end at bit {} but the stream has {bit_len} bits",
            r.position()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_binary_known_codes() {
        // m = 5: c = 3, u = 3. r = 0,1,2 -> 2 bits (00, 01, 10); r = 3,4 -> 3 bits (110, 111).
        let positions = [0u64, 2, 5, 9, 14]; // gaps 0,1,2,3,4
        let (bytes, bits) = encode_positions_with(&positions, 20, 5).unwrap();
        // codes: 0|00, 0|01, 0|10, 0|110, 0|111 -> 3+3+3+4+4 = 17 bits.
        assert_eq!(bits, 17);
        let mut stream = String::new();
        for k in 0..bits {
            stream.push(if bytes[(k / 8) as usize] >> (k % 8) & 1 == 1 {
                '1'
            } else {
                '0'
            });
        }
        assert_eq!(stream, "00000101001100111");
        assert_eq!(decode_positions(&bytes, bits, 5, 5, 20).unwrap(), positions);
    }

    #[test]
    fn known_stream_m4_quotients() {
        // m = 4 (Rice): c = 2, u = 0. gap 9 -> q 2, r 1 -> "110" + "01".
        let (bytes, bits) = encode_positions_with(&[9], 10, 4).unwrap();
        assert_eq!(bits, 5);
        assert_eq!(bytes, vec![0b10_011]);
    }

    #[test]
    fn geometric_parameter_values() {
        // p = 0.03: ln(1.97) / -ln(0.97) = 22.26 -> 23.
        assert_eq!(geometric_parameter(3, 100), 23);
        assert_eq!(geometric_parameter(0, 100), 1);
        assert_eq!(geometric_parameter(100, 100), 1);
        assert_eq!(geometric_parameter(50, 100), 1);
        assert_eq!(geometric_parameter(1, 10), 7);
        let c = candidate_parameters(1, 3);
        assert!(c.iter().all(|&m| (1..=3).contains(&m)));
    }

    #[test]
    fn optimal_is_cheapest_candidate() {
        let positions: Vec<u64> = (0..1000u64).map(|i| i * 37 + (i * i) % 17).collect();
        let numel = 40_000;
        let m = optimal_parameter(&positions, numel).unwrap();
        let best = encoded_bits(&positions, m);
        for c in candidate_parameters(positions.len() as u64, numel) {
            assert!(encoded_bits(&positions, c) >= best);
        }
    }

    #[test]
    fn histogram_costs_equal_direct_costs() {
        // Small and huge gaps (past the histogram), several parallel chunks.
        let mut positions = Vec::new();
        let mut p = 0u64;
        for i in 0..300_000u64 {
            p += 1 + (i * 7919) % 61 + if i % 1000 == 0 { 100_000 } else { 0 };
            positions.push(p);
        }
        let numel = p + 10;
        let cands = candidate_parameters(positions.len() as u64, numel);
        let direct: Vec<u64> = cands.iter().map(|&m| encoded_bits(&positions, m)).collect();
        assert_eq!(candidate_costs(&positions, &cands), direct);
    }

    /// Long streams (the fast path) with long gaps (it hands over to the checked loop and back), every kind of
    /// parameter, and corrupted copies: the fast path changes neither the positions nor the errors.
    #[test]
    fn fast_path_equals_the_checked_loop() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for &density in &[0.9f64, 0.5, 0.03, 0.001] {
            let numel = 200_000u64;
            let mut positions: Vec<u64> = (0..numel)
                .filter(|_| (next() % 1_000_000) as f64 / 1e6 < density)
                .collect();
            // A few very long gaps.
            positions.retain(|&p| !(50_000..90_000).contains(&p));
            let (m0, _, _) = encode_positions(&positions, numel).unwrap();
            for m in [1u64, 2, 3, 4, 5, m0, 1000, 1 << 17] {
                let (bytes, bits) = encode_positions_with(&positions, numel, m).unwrap();
                let k = positions.len() as u64;
                assert_eq!(
                    decode_positions(&bytes, bits, m, k, numel).unwrap(),
                    positions
                );
                for _ in 0..20 {
                    let mut bad = bytes.clone();
                    if bad.is_empty() {
                        break;
                    }
                    let at = (next() % bad.len() as u64) as usize;
                    bad[at] ^= 1 << (next() % 8);
                    let fast = decode_positions_with(&bad, bits, m, k, numel, true);
                    let slow = decode_positions_with(&bad, bits, m, k, numel, false);
                    assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "m {m} byte {at}");
                }
            }
        }
    }

    #[test]
    fn edge_cases() {
        for numel in [0u64, 1, 2, 7] {
            let all: Vec<u64> = (0..numel).collect();
            let (m, b, n) = encode_positions(&all, numel).unwrap();
            assert_eq!(decode_positions(&b, n, m, numel, numel).unwrap(), all);
            let (m, b, n) = encode_positions(&[], numel).unwrap();
            assert_eq!(n, 0);
            assert!(b.is_empty());
            assert!(decode_positions(&b, n, m, 0, numel).unwrap().is_empty());
        }
        assert!(encode_positions(&[3, 3], 10).is_err());
        assert!(encode_positions(&[10], 10).is_err());
        assert!(encode_positions_with(&[1], 10, 0).is_err());
        assert!(encode_positions_with(&[1], 10, 11).is_err());
    }

    /// xorshift64*, for test data.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Rng {
            Rng(seed | 1)
        }
        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn unit(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    use proptest::prelude::*;

    /// Strictly increasing positions below `numel`, from a keep mask.
    fn positions_strategy() -> impl Strategy<Value = (u64, Vec<u64>)> {
        (0u64..3000, 0.0f64..1.0, any::<u64>()).prop_map(|(numel, density, seed)| {
            let mut rng = Rng::new(seed);
            let d = density * density; // favour sparse
            let positions = (0..numel).filter(|_| rng.unit() < d).collect();
            (numel, positions)
        })
    }

    proptest! {
        #[test]
        fn golomb_round_trip((numel, positions) in positions_strategy()) {
            let (m, bytes, bits) = encode_positions(&positions, numel).unwrap();
            prop_assert_eq!(bits, encoded_bits(&positions, m));
            prop_assert_eq!(bytes.len() as u64, bits.div_ceil(8));
            let back = decode_positions(&bytes, bits, m, positions.len() as u64, numel).unwrap();
            prop_assert_eq!(&back, &positions);
            // The chosen parameter is the cheapest of the candidates.
            for c in candidate_parameters(positions.len() as u64, numel) {
                prop_assert!(encoded_bits(&positions, c) >= bits);
            }
        }

        #[test]
        fn golomb_round_trip_any_parameter((numel, positions) in positions_strategy(), m_seed in any::<u64>()) {
            let m = 1 + m_seed % numel.max(1);
            let (bytes, bits) = encode_positions_with(&positions, numel, m).unwrap();
            let back = decode_positions(&bytes, bits, m, positions.len() as u64, numel).unwrap();
            prop_assert_eq!(back, positions);
        }

        #[test]
        fn golomb_decoder_total_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..64),
                                           m in 0u64..100, count in 0u64..200, numel in 0u64..5000) {
            // Must return (Ok or Err), never panic or hang; Ok output must be valid.
            if let Ok(p) = decode_positions(&bytes, bytes.len() as u64 * 8, m, count, numel) {
                prop_assert_eq!(p.len() as u64, count);
                prop_assert!(p.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(p.iter().all(|&x| x < numel));
            }
        }
    }

    #[test]
    fn hostile_golomb_streams_decoded_directly() {
        let (m, bytes, bits) = encode_positions(&[3, 10, 11, 40], 50).unwrap();
        assert_eq!(
            decode_positions(&bytes, bits, m, 4, 50).unwrap(),
            [3, 10, 11, 40]
        );
        let fails = |b: &[u8], bits: u64, m: u64, count: u64, numel: u64| {
            let err = decode_positions(b, bits, m, count, numel).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidStream {
                        stream: "golomb",
                        ..
                    }
                ),
                "{err}"
            );
        };
        // Count too high / too low (trailing codes).
        fails(&bytes, bits, m, 5, 50);
        fails(&bytes, bits, m, 3, 50);
        // Last position no longer below numel.
        fails(&bytes, bits, m, 4, 40);
        // Bit length claims more bytes than given, or fewer.
        fails(&bytes, bits + 8, m, 4, 50);
        fails(&bytes[..bytes.len() - 1], bits, m, 4, 50);
        // Non-zero padding.
        if bits % 8 != 0 {
            let mut p = bytes.clone();
            *p.last_mut().unwrap() |= 0x80;
            fails(&p, bits, m, 4, 50);
        }
        // Endless unary run with a huge numel: capped by the stream end, no hang.
        let ones = vec![0xFFu8; 4096];
        fails(&ones, 4096 * 8, 1, 1, 1 << 40);
        // Unary run that would pass numel.
        fails(&ones, 4096 * 8, 1, 1, 100);
        // More positions than bits, or than entries: refused before allocating.
        fails(&[0u8; 2], 16, 1, 17, 1 << 40);
        fails(&[0u8; 2], 16, 1, 1 << 39, 1 << 40);
        fails(&[0u8; 2], 16, 1, 11, 10);
        // Bad parameter.
        fails(&bytes, bits, 0, 4, 50);
        fails(&bytes, bits, 51, 4, 50);
    }

    #[test]
    fn three_percent_density_picks_m_near_the_geometric_optimum() {
        let mut rng = Rng::new(97);
        let numel = 1u64 << 20;
        let positions: Vec<u64> = (0..numel).filter(|_| rng.unit() < 0.03).collect();
        let m = optimal_parameter(&positions, numel).unwrap();
        assert!((20..=26).contains(&m), "m = {m}");
    }
}
