//! Entropy-coded levels (docs/FORMAT.md, "Entropy-coded levels block"): a per-tensor static model of the levels
//! that occur, and an rANS stream coded with the `constriction` crate (`AnsCoder<u16, u32>`, 16-bit precision).
//!
//! The model lists the distinct levels in increasing order with a frequency each (`u16`, summing to `2^16`, each
//! at least 1); a level is coded as its index in that list. [`encode_levels`] derives the frequencies from the
//! exact counts ([`quantize_frequencies`]); a reader accepts any valid table. With one distinct level the stream
//! is empty (every level is that one).

use constriction::stream::model::{
    ContiguousCategoricalEntropyModel, ContiguousLookupDecoderModel,
};
use constriction::stream::stack::AnsCoder;
use constriction::stream::Decode;

use crate::{Error, Result};

/// Fixed-point precision of the model: frequencies sum to `2^PRECISION`.
pub const RANS_PRECISION: u32 = 16;

type Coder = AnsCoder<u16, u32>;
type EncModel = ContiguousCategoricalEntropyModel<u16, Vec<u16>, 16>;
type DecModel = ContiguousLookupDecoderModel<u16, Vec<u16>, Box<[u16]>, 16>;

/// A levels block: the static model and the rANS words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RansLevels {
    /// Distinct levels, strictly increasing.
    pub symbols: Vec<u16>,
    /// Frequency of each symbol, summing to `2^16` (a single symbol is stored as frequency 0, meaning `2^16`).
    pub freqs: Vec<u16>,
    /// The rANS words, as `constriction`'s `into_compressed` returns them (decoding pops from the end).
    pub words: Vec<u16>,
}

/// Frequencies summing to `2^16`, each at least 1, from non-zero `counts` (at most `2^16` of them): each is
/// `max(1, floor(c · 2^16 / total))`; a shortfall is added to the most frequent symbol (first on ties), an
/// excess is taken from the largest frequencies (first on ties) without going below 1.
pub fn quantize_frequencies(counts: &[u64]) -> Vec<u32> {
    let total: u64 = counts.iter().sum();
    let target = 1u64 << RANS_PRECISION;
    if counts.is_empty() || total == 0 {
        return Vec::new();
    }
    let mut f: Vec<u64> = counts
        .iter()
        .map(|&c| ((u128::from(c) * u128::from(target) / u128::from(total)) as u64).max(1))
        .collect();
    let sum: u64 = f.iter().sum();
    if sum < target {
        let i = argmax(counts);
        f[i] += target - sum;
    } else {
        let mut excess = sum - target;
        while excess > 0 {
            let i = argmax(&f);
            let take = excess.min(f[i] - 1);
            f[i] -= take;
            excess -= take;
        }
    }
    f.into_iter().map(|x| x as u32).collect()
}

fn argmax(v: &[u64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Encodes `levels` (each below `2^bits`) as a levels block.
///
/// # Errors
/// [`Error::InvalidRecord`] if the coder fails (it cannot for valid input).
pub fn encode_levels(levels: &[u16]) -> Result<RansLevels> {
    let mut counts = vec![0u64; 1 << 16];
    for &l in levels {
        counts[usize::from(l)] += 1;
    }
    let symbols: Vec<u16> = (0..=u16::MAX)
        .filter(|&l| counts[usize::from(l)] > 0)
        .collect();
    let present: Vec<u64> = symbols.iter().map(|&s| counts[usize::from(s)]).collect();
    let freqs32 = quantize_frequencies(&present);
    if symbols.len() <= 1 {
        return Ok(RansLevels {
            freqs: vec![0; symbols.len()],
            symbols,
            words: Vec::new(),
        });
    }
    let freqs: Vec<u16> = freqs32.iter().map(|&f| f as u16).collect();
    let model = EncModel::from_nonzero_fixed_point_probabilities(&freqs, false)
        .map_err(|()| Error::record("level frequencies do not form a model"))?;
    let mut index = vec![0usize; 1 << 16];
    for (i, &s) in symbols.iter().enumerate() {
        index[usize::from(s)] = i;
    }
    let mut coder = Coder::new();
    coder
        .encode_iid_symbols_reverse(levels.iter().map(|&l| index[usize::from(l)]), &model)
        .map_err(|e| Error::record(format!("rANS encoding failed: {e:?}")))?;
    let words = coder
        .into_compressed()
        .map_err(|e| Error::record(format!("rANS encoding failed: {e:?}")))?;
    Ok(RansLevels {
        symbols,
        freqs,
        words,
    })
}

/// Checks a model table: symbols strictly increasing and below `2^bits`, frequencies as documented.
///
/// # Errors
/// [`Error::InvalidStream`] (stream `"rans"`).
pub fn validate_model(symbols: &[u16], freqs: &[u16], bits: u8, kept: u64) -> Result<()> {
    let bad = |d: String| Error::stream("rans", d);
    if symbols.len() != freqs.len() {
        return Err(bad(format!(
            "{} symbols but {} frequencies",
            symbols.len(),
            freqs.len()
        )));
    }
    if (kept == 0) != symbols.is_empty() {
        return Err(bad(format!("{} symbols for {kept} levels", symbols.len())));
    }
    if symbols.windows(2).any(|w| w[0] >= w[1]) {
        return Err(bad("symbols are not strictly increasing".into()));
    }
    if let Some(&s) = symbols.last() {
        if u32::from(s) >= 1u32 << bits {
            return Err(bad(format!("symbol {s} does not fit in {bits} bits")));
        }
    }
    if symbols.len() == 1 {
        if freqs[0] != 0 {
            return Err(bad(format!(
                "a single symbol must have frequency field 0, found {}",
                freqs[0]
            )));
        }
    } else if !symbols.is_empty() {
        if freqs.contains(&0) {
            return Err(bad("a frequency is 0".into()));
        }
        let sum: u64 = freqs.iter().map(|&f| u64::from(f)).sum();
        if sum != 1 << RANS_PRECISION {
            return Err(bad(format!("frequencies sum to {sum}, expected 65536")));
        }
    }
    Ok(())
}

/// Decodes `kept` levels from a validated model and its words. The stream must end exactly: every word
/// consumed and the coder back in its empty state.
///
/// # Errors
/// [`Error::InvalidStream`] (stream `"rans"`).
pub fn decode_levels(symbols: &[u16], freqs: &[u16], words: &[u16], kept: u64) -> Result<Vec<u16>> {
    let n = usize::try_from(kept)
        .map_err(|_| Error::stream("rans", format!("{kept} levels too many")))?;
    // Grow with what is actually decoded, not with the declared count.
    let mut out = Vec::with_capacity(n.min(1 << 20));
    decode_with(symbols, freqs, words, kept, |s, times| {
        out.extend(std::iter::repeat_n(s, times as usize))
    })?;
    Ok(out)
}

/// [`decode_levels`]'s checks without keeping the levels: memory is the words alone, whatever `kept` declares.
///
/// # Errors
/// As [`decode_levels`].
pub fn check_levels(symbols: &[u16], freqs: &[u16], words: &[u16], kept: u64) -> Result<()> {
    decode_with(symbols, freqs, words, kept, |_, _| {})
}

/// Decodes `kept` levels, handing each run to `sink(level, times)`. Once the coder is empty (state 0, no words
/// left) every further symbol is the model's first at state 0 again (the decoder's fixed point), so the rest is
/// handed over as one run: a stream cannot make this loop run longer than its words can pay for.
fn decode_with(
    symbols: &[u16],
    freqs: &[u16],
    words: &[u16],
    kept: u64,
    mut sink: impl FnMut(u16, u64),
) -> Result<()> {
    let bad = |d: String| Error::stream("rans", d);
    usize::try_from(kept).map_err(|_| bad(format!("{kept} levels too many")))?;
    if symbols.len() <= 1 {
        if !words.is_empty() {
            return Err(bad(format!(
                "{} words for a single-symbol model, expected none",
                words.len()
            )));
        }
        if let Some(&s) = symbols.first() {
            sink(s, kept);
        }
        return Ok(());
    }
    let model = DecModel::from_nonzero_fixed_point_probabilities(freqs, false)
        .map_err(|()| bad("frequencies do not form a model".into()))?;
    let mut coder = Coder::from_compressed(words.to_vec())
        .map_err(|_| bad("the stream ends with a zero word".into()))?;
    let mut done = 0u64;
    while done < kept {
        if coder.is_empty() && coder.bulk().is_empty() {
            // Quantile 0 gives the first symbol and leaves the state at 0, with nothing to refill from.
            sink(symbols[0], kept - done);
            break;
        }
        let i = coder
            .decode_symbol(&model)
            .map_err(|e| bad(format!("decoding failed: {e:?}")))?;
        // The lookup model only yields indices below its symbol count.
        sink(symbols.get(i).copied().unwrap_or(0), 1);
        done += 1;
    }
    // Both checks: a hostile stream can reach state 0 with words left.
    if !coder.is_empty() || !coder.bulk().is_empty() {
        return Err(bad(format!(
            "stream not exhausted after {kept} levels (corrupt or truncated)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequencies_sum_and_floor() {
        let f = quantize_frequencies(&[1, 1_000_000, 3]);
        assert_eq!(f.iter().sum::<u32>(), 65536);
        assert!(f.iter().all(|&x| x >= 1));
        let f = quantize_frequencies(&vec![1; 65536]);
        assert!(f.iter().all(|&x| x == 1));
        let f = quantize_frequencies(&[5, 5]);
        assert_eq!(f, vec![32768, 32768]);
    }

    #[test]
    fn round_trip_and_cost_near_entropy() {
        // A bell-shaped 16-level histogram.
        let mut levels = Vec::new();
        let mut x = 12345u64;
        for _ in 0..200_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let a = ((x >> 33) % 8) as i32 + ((x >> 45) % 9) as i32; // triangle 0..=16
            levels.push(a.min(15) as u16);
        }
        let block = encode_levels(&levels).unwrap();
        validate_model(&block.symbols, &block.freqs, 4, levels.len() as u64).unwrap();
        let back = decode_levels(
            &block.symbols,
            &block.freqs,
            &block.words,
            levels.len() as u64,
        )
        .unwrap();
        assert_eq!(back, levels);
        let mut counts = [0f64; 16];
        for &l in &levels {
            counts[l as usize] += 1.0;
        }
        let n = levels.len() as f64;
        let h: f64 = counts
            .iter()
            .filter(|&&c| c > 0.0)
            .map(|&c| -c / n * (c / n).log2())
            .sum();
        let bits = block.words.len() as f64 * 16.0 / n;
        assert!(bits < h + 0.01, "{bits} bits per level vs entropy {h}");
        // Wrong count or damaged words are refused.
        assert!(decode_levels(
            &block.symbols,
            &block.freqs,
            &block.words,
            levels.len() as u64 - 1
        )
        .is_err());
        let mut w = block.words.clone();
        w.pop();
        assert!(decode_levels(&block.symbols, &block.freqs, &w, levels.len() as u64).is_err());
    }

    #[test]
    fn empty_coder_fixed_point_is_handed_over_as_one_run() {
        // Two symbols and no words: state 0 decodes the first symbol and stays 0, so every level is that symbol;
        // constriction's own per-symbol loop agrees with the run.
        let (s, f) = ([3u16, 9], [30000u16, 35536]);
        let model = DecModel::from_nonzero_fixed_point_probabilities(f, false).unwrap();
        let mut coder = Coder::from_compressed(Vec::new()).unwrap();
        let slow: Vec<u16> = coder
            .decode_iid_symbols(1000, &model)
            .map(|i| s[i.unwrap()])
            .collect();
        assert_eq!(decode_levels(&s, &f, &[], 1000).unwrap(), slow);
        // 2^30 declared levels (what an 81-byte kind-12 record can declare) cost no time and no memory to check.
        let t = std::time::Instant::now();
        check_levels(&s, &f, &[], 1 << 30).unwrap();
        assert!(t.elapsed().as_secs_f64() < 1.0, "{:?}", t.elapsed());
        // A real stream whose last-decoded levels are runs of the first symbol decodes to what was encoded.
        let mut levels = vec![1u16, 5, 1, 1, 5];
        levels.extend(std::iter::repeat_n(1, 100));
        levels.extend([5, 1]);
        levels.extend(std::iter::repeat_n(1, 1000));
        let b = encode_levels(&levels).unwrap();
        let n = levels.len() as u64;
        assert_eq!(
            decode_levels(&b.symbols, &b.freqs, &b.words, n).unwrap(),
            levels
        );
        check_levels(&b.symbols, &b.freqs, &b.words, n).unwrap();
        // Damaged streams: the run shortcut gives exactly what constriction's per-symbol loop gives (the decoder
        // before the shortcut), levels or refusal.
        let slow = |words: &[u16]| -> Option<Vec<u16>> {
            let model = DecModel::from_nonzero_fixed_point_probabilities(&b.freqs, false).ok()?;
            let mut coder = Coder::from_compressed(words.to_vec()).ok()?;
            let out: Vec<u16> = coder
                .decode_iid_symbols(n as usize, &model)
                .map(|i| i.map(|i| b.symbols[i]))
                .collect::<std::result::Result<_, _>>()
                .ok()?;
            (coder.is_empty() && coder.bulk().is_empty()).then_some(out)
        };
        let mut damaged = vec![b.words[..b.words.len() - 1].to_vec()];
        for k in 0..b.words.len() {
            let mut w = b.words.clone();
            w[k] ^= 0x0101;
            damaged.push(w);
        }
        let mut refused = 0;
        for w in &damaged {
            let want = slow(w);
            assert_eq!(decode_levels(&b.symbols, &b.freqs, w, n).ok(), want);
            assert_eq!(
                check_levels(&b.symbols, &b.freqs, w, n).is_ok(),
                want.is_some()
            );
            refused += usize::from(want.is_none());
        }
        assert!(refused > 0, "no damaged stream was refused");
    }

    #[test]
    fn degenerate_models() {
        let b = encode_levels(&[]).unwrap();
        assert!(b.symbols.is_empty() && b.words.is_empty());
        assert_eq!(decode_levels(&[], &[], &[], 0).unwrap(), Vec::<u16>::new());
        let b = encode_levels(&[7, 7, 7]).unwrap();
        assert_eq!(
            (b.symbols.as_slice(), b.freqs.as_slice()),
            (&[7u16][..], &[0u16][..])
        );
        assert!(b.words.is_empty());
        validate_model(&b.symbols, &b.freqs, 3, 3).unwrap();
        assert!(validate_model(&b.symbols, &b.freqs, 2, 3).is_err());
        assert_eq!(
            decode_levels(&b.symbols, &b.freqs, &[], 3).unwrap(),
            vec![7, 7, 7]
        );
        assert!(decode_levels(&b.symbols, &b.freqs, &[1], 3).is_err());
        assert!(validate_model(&[1, 1], &[1, 65535], 4, 2).is_err());
        assert!(validate_model(&[1, 2], &[1, 65534], 4, 2).is_err());
        assert!(validate_model(&[1, 2], &[0, 65535], 4, 2).is_err());
    }
}
