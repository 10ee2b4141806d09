//! Element types, named as in safetensors headers, with their archive codes.

use std::fmt;

/// Element type of a tensor, named as in safetensors headers.
///
/// Serialized (serde, feature `serde`) as the safetensors name: `"F32"`, `"BF16"`, `"BOOL"`, ...
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
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
    #[cfg_attr(feature = "serde", serde(rename = "BOOL"))]
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

    /// The dtype's code in an archive record header (docs/FORMAT.md, "Dtype codes"): 1 `F64` … 10 `BOOL`, in
    /// the order of [`DType::ALL`]. Code 0 and codes above 10 are invalid.
    pub const fn code(self) -> u8 {
        match self {
            DType::F64 => 1,
            DType::F32 => 2,
            DType::F16 => 3,
            DType::BF16 => 4,
            DType::I64 => 5,
            DType::I32 => 6,
            DType::I16 => 7,
            DType::I8 => 8,
            DType::U8 => 9,
            DType::Bool => 10,
        }
    }

    /// The dtype of an archive header code, `None` for an invalid code.
    pub fn from_code(code: u8) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.code() == code)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip() {
        for (i, d) in DType::ALL.into_iter().enumerate() {
            assert_eq!(DType::parse(d.name()), Some(d));
            assert_eq!(usize::from(d.code()), i + 1);
            assert_eq!(DType::from_code(d.code()), Some(d));
        }
        assert_eq!(DType::from_code(0), None);
        assert_eq!(DType::from_code(11), None);
        assert_eq!(DType::parse("f32"), None);
        assert_eq!(DType::parse("F8_E4M3"), None);
        assert_eq!(DType::parse("U16"), None);
    }

    #[cfg(feature = "serde")]
    #[test]
    fn serde_uses_the_safetensors_name() {
        for d in DType::ALL {
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{}\"", d.name()));
            assert_eq!(serde_json::from_str::<DType>(&json).unwrap(), d);
        }
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
}
