//! Tensor descriptions. The element type, [`DType`], is `ultradelta_core`'s (the archive format specifies its
//! codes); this crate re-exports it.

use serde::{Deserialize, Serialize};

pub use ultradelta_core::DType;

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
    fn dtype_serializes_as_its_safetensors_name() {
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
