//! The uniform quantizer's parameters and its one decoding formula (docs/FORMAT.md, kinds 1 and 9–12).

/// Uniform quantizer parameters of one tensor (ALGORITHM.md §1): level `l` stands for `lo + l · step`.
///
/// Fitting a quantizer to data and mapping values to levels is the writer's business (`ultradelta_qgp::Quantizer`:
/// `QuantParams::fit`, `quantize_one`); this type and [`QuantParams::dequantize`] are what a reader needs.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct QuantParams {
    /// Bit width, 1..=16 when produced by `QuantParams::fit` (0..=16 in an archive).
    pub bits: u8,
    /// Value of level 0 (the minimum of the data).
    pub lo: f32,
    /// Spacing between levels; `0.0` means a constant tensor (every value is level 0 = `lo`).
    pub step: f32,
}

impl QuantParams {
    /// Number of levels, `2^bits` (bits above 16 are treated as 16).
    #[inline]
    pub fn levels(&self) -> u32 {
        1u32 << self.bits.min(16)
    }

    /// Highest level, `2^bits - 1`.
    #[inline]
    pub fn max_level(&self) -> u16 {
        (self.levels() - 1) as u16
    }

    /// THE decoding formula, used everywhere: `lo + (level as f32) * step`, in f32.
    #[inline]
    pub fn dequantize(&self, level: u16) -> f32 {
        self.lo + (level as f32) * self.step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_formula() {
        let q = QuantParams {
            bits: 2,
            lo: -0.5,
            step: 0.25,
        };
        assert_eq!(q.levels(), 4);
        assert_eq!(q.max_level(), 3);
        assert_eq!(
            (0..4).map(|l| q.dequantize(l)).collect::<Vec<_>>(),
            [-0.5, -0.25, 0.0, 0.25]
        );
        let wide = QuantParams {
            bits: 16,
            lo: 0.0,
            step: 1.0,
        };
        assert_eq!(wide.max_level(), u16::MAX);
    }
}
