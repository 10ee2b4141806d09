//! Element types and tensor descriptions.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Element type of a tensor, named as in safetensors headers.
///
/// Serialized (serde) as the safetensors name: `"F32"`, `"BF16"`, `"BOOL"`, ...
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DType {
    /// 64-bit IEEE float.
    F64,
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE float (binary16).
    F16,
    /// bfloat16.
    BF16,
    /// Signed 64-bit integer.
    I64,
    /// Signed 32-bit integer.
    I32,
    /// Signed 16-bit integer.
    I16,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 8-bit integer.
    U8,
    /// Boolean, one byte each.
    #[serde(rename = "BOOL")]
    Bool,
}

impl DType {
    /// Every supported dtype.
    pub const ALL: [DType; 10] = [
        DType::F64,
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I64,
        DType::I32,
        DType::I16,
        DType::I8,
        DType::U8,
        DType::Bool,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The safetensors name (`"F32"`, `"BOOL"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "F64",
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::I16 => "I16",
            DType::I8 => "I8",
            DType::U8 => "U8",
            DType::Bool => "BOOL",
        }
    }

    /// True for F64, F32, F16 and BF16.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }

    /// Parses a safetensors dtype name (exact, case-sensitive as in the format). `None` for anything unsupported.
    pub fn parse(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == s)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Name, dtype and shape of one tensor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    /// Tensor name, e.g. `"model.layers.0.mlp.down_proj.weight"`.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first (row-major). Empty for a scalar.
    pub shape: Vec<usize>,
}

impl TensorInfo {
    /// Creates a tensor description.
    pub fn new(name: impl Into<String>, dtype: DType, shape: Vec<usize>) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            dtype,
            shape,
        }
    }

    /// Number of elements (product of the shape; 1 for a scalar). Saturates at `usize::MAX` instead of overflowing;
    /// infos read from a checkpoint never overflow (the reader checks).
    pub fn numel(&self) -> usize {
        self.shape.iter().fold(1usize, |a, &d| a.saturating_mul(d))
    }

    /// Size of the data in bytes (`numel * dtype.size()`, saturating like [`numel`](Self::numel)).
    pub fn nbytes(&self) -> usize {
        self.numel().saturating_mul(self.dtype.size())
    }

    /// `numel * dtype.size()` with overflow reported as `None`.
    pub fn checked_nbytes(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))?
            .checked_mul(self.dtype.size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::parse(d.name()), Some(d));
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{}\"", d.name()));
            assert_eq!(serde_json::from_str::<DType>(&json).unwrap(), d);
        }
        assert_eq!(DType::parse("f32"), None);
        assert_eq!(DType::parse("F8_E4M3"), None);
        assert_eq!(DType::parse("U16"), None);
    }

    #[test]
    fn sizes_and_floats() {
        assert_eq!(DType::BF16.size(), 2);
        assert_eq!(DType::F64.size(), 8);
        assert_eq!(DType::Bool.size(), 1);
        assert!(DType::BF16.is_float());
        assert!(!DType::I64.is_float());
        assert!(!DType::Bool.is_float());
    }

    #[test]
    fn numel_and_bytes() {
        let t = TensorInfo::new("a", DType::F16, vec![3, 4]);
        assert_eq!(t.numel(), 12);
        assert_eq!(t.nbytes(), 24);
        assert_eq!(TensorInfo::new("s", DType::F32, vec![]).numel(), 1);
        assert_eq!(TensorInfo::new("z", DType::F32, vec![0, 7]).nbytes(), 0);
        let huge = TensorInfo::new("h", DType::F64, vec![usize::MAX, 2]);
        assert_eq!(huge.checked_nbytes(), None);
        assert_eq!(huge.numel(), usize::MAX);
    }
}
