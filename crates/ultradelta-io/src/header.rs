//! Validation of untrusted safetensors headers.
//!
//! The checks run in a fixed order, and nothing from the header is trusted before it passes them:
//!
//! 1. the file holds at least the 8-byte little-endian header length;
//! 2. the declared header length is at most [`MAX_HEADER_BYTES`];
//! 3. the header lies inside the file;
//! 4. the header is UTF-8 JSON: one object, no duplicate keys; `__metadata__`, if present, maps strings to strings;
//! 5. per tensor, in header order: the entry is an object with `dtype` (a supported name), `shape` (non-negative
//!    integers whose product times the dtype size does not overflow) and `data_offsets` `[begin, end]` with
//!    `begin <= end` and `end - begin == numel * dtype size`;
//! 6. in offset order: each absolute range (checked arithmetic) ends inside the file, and no two ranges overlap.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::{DType, Error, Result, TensorInfo};

/// Largest JSON header (and index json) accepted, in bytes: 100 MiB.
pub const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// Length of the header-length prefix.
pub(crate) const PREFIX_LEN: usize = 8;

/// One validated tensor entry: absolute byte range in the file.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub info: TensorInfo,
    pub start: usize,
    pub end: usize,
    /// For a tensor stored as a strided view (PyTorch only): its elements' steps, and `start..end` spans them all
    /// from the first. `None` for row-major bytes, the only layout safetensors has.
    pub strides: Option<Vec<usize>>,
}

/// A validated header.
#[derive(Debug)]
pub(crate) struct Header {
    pub entries: Vec<Entry>,
    pub metadata: BTreeMap<String, String>,
}

/// A JSON object kept in file order that rejects duplicate keys (serde_json would silently keep the last).
pub(crate) struct UniqueMap<V>(pub Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct V2<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V2<V> {
            type Value = UniqueMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut seen = std::collections::HashSet::new();
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, V>()? {
                    if !seen.insert(k.clone()) {
                        return Err(serde::de::Error::custom(format!("duplicate key {k:?}")));
                    }
                    out.push((k, v));
                }
                Ok(UniqueMap(out))
            }
        }
        deserializer.deserialize_map(V2(PhantomData))
    }
}

/// Validates the header of a whole safetensors file held in `buf`. `file` is used in error messages only.
pub(crate) fn parse(file: &Path, buf: &[u8]) -> Result<Header> {
    let file_len = buf.len() as u64;
    // 1. prefix present
    let Some(prefix) = buf.get(..PREFIX_LEN) else {
        return Err(Error::HeaderTooSmall {
            file: file.to_path_buf(),
            len: file_len,
        });
    };
    let mut arr = [0u8; PREFIX_LEN];
    arr.copy_from_slice(prefix);
    let declared = u64::from_le_bytes(arr);
    // 2. cap
    if declared > MAX_HEADER_BYTES {
        return Err(Error::HeaderTooLarge {
            file: file.to_path_buf(),
            declared,
            limit: MAX_HEADER_BYTES,
        });
    }
    // 3. inside the file (declared <= 100 MiB, so this cannot overflow and fits usize)
    let header_end = PREFIX_LEN as u64 + declared;
    if header_end > file_len {
        return Err(Error::HeaderTruncated {
            file: file.to_path_buf(),
            declared,
            file_len,
        });
    }
    let header_end = header_end as usize;
    let header_bytes = &buf[PREFIX_LEN..header_end];
    // 4. UTF-8 JSON object without duplicate keys
    let text = std::str::from_utf8(header_bytes).map_err(|e| Error::InvalidHeader {
        file: file.to_path_buf(),
        reason: format!("not UTF-8: {e}"),
    })?;
    let map: UniqueMap<Value> = serde_json::from_str(text).map_err(|e| Error::InvalidHeader {
        file: file.to_path_buf(),
        reason: format!("not a JSON object: {e}"),
    })?;

    let mut metadata = BTreeMap::new();
    let mut entries = Vec::with_capacity(map.0.len());
    for (name, value) in map.0 {
        if name == "__metadata__" {
            metadata = parse_metadata(file, value)?;
            continue;
        }
        // 5. structural checks of each entry
        let (info, begin, end) = parse_entry(file, &name, name.clone(), &value)?;
        // absolute offsets, checked (a hostile u64 offset must not wrap)
        let abs = |x: u64| (header_end as u64).checked_add(x);
        let (Some(abs_start), Some(abs_end)) = (abs(begin), abs(end)) else {
            return Err(Error::Truncated {
                file: file.to_path_buf(),
                tensor: name,
                end: u64::MAX,
                file_len,
            });
        };
        entries.push((info, abs_start, abs_end));
    }

    // 6. ranges inside the file and disjoint, in offset order (so a truncation names the first tensor cut off)
    entries.sort_by(|a, b| (a.1, a.2, &a.0.name).cmp(&(b.1, b.2, &b.0.name)));
    let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
    // furthest end seen so far, and the index in `out` of the tensor reaching it
    let mut furthest: Option<(u64, usize)> = None;
    for (info, start, end) in entries {
        if end > file_len {
            return Err(Error::Truncated {
                file: file.to_path_buf(),
                tensor: info.name,
                end,
                file_len,
            });
        }
        if let Some((f_end, f_idx)) = furthest {
            // empty tensors occupy no bytes and cannot overlap anything
            if start < end && start < f_end {
                return Err(Error::OverlappingTensors {
                    file: file.to_path_buf(),
                    tensor: info.name,
                    other: out[f_idx].info.name.clone(),
                });
            }
        }
        if start < end && furthest.is_none_or(|(f_end, _)| end > f_end) {
            furthest = Some((end, out.len()));
        }
        // both fit in usize: end <= file_len == buf.len()
        out.push(Entry {
            info,
            start: start as usize,
            end: end as usize,
            strides: None,
        });
    }
    Ok(Header {
        entries: out,
        metadata,
    })
}

fn parse_metadata(file: &Path, value: Value) -> Result<BTreeMap<String, String>> {
    let bad = |reason: String| Error::InvalidHeader {
        file: file.to_path_buf(),
        reason,
    };
    let Value::Object(obj) = value else {
        return Err(bad("__metadata__ is not an object of strings".into()));
    };
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        match v {
            Value::String(s) => {
                out.insert(k, s);
            }
            other => {
                return Err(bad(format!(
                    "__metadata__ value for {k:?} is {}, expected a string",
                    json_kind(&other)
                )))
            }
        }
    }
    Ok(out)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_entry(
    file: &Path,
    name: &str,
    owned: String,
    value: &Value,
) -> Result<(TensorInfo, u64, u64)> {
    let bad = |reason: String| Error::InvalidTensorEntry {
        file: file.to_path_buf(),
        tensor: name.to_string(),
        reason,
    };
    if name.is_empty() {
        // Nothing downstream can name it (an archive's index refuses it): refused where it is read.
        return Err(bad("the name is empty, expected a tensor name".into()));
    }
    let Value::Object(obj) = value else {
        return Err(bad(format!(
            "entry is {}, expected an object",
            json_kind(value)
        )));
    };
    let dtype_str = match obj.get("dtype") {
        Some(Value::String(s)) => s,
        Some(v) => return Err(bad(format!("dtype is {}, expected a string", json_kind(v)))),
        None => return Err(bad("missing \"dtype\"".into())),
    };
    let Some(dtype) = DType::parse(dtype_str) else {
        return Err(Error::UnsupportedDType {
            file: file.to_path_buf(),
            tensor: name.to_string(),
            dtype: dtype_str.clone(),
        });
    };
    let shape_json = match obj.get("shape") {
        Some(Value::Array(a)) => a,
        Some(v) => return Err(bad(format!("shape is {}, expected an array", json_kind(v)))),
        None => return Err(bad("missing \"shape\"".into())),
    };
    let mut shape = Vec::with_capacity(shape_json.len());
    for d in shape_json {
        let Some(d) = d.as_u64().and_then(|d| usize::try_from(d).ok()) else {
            return Err(bad(format!(
                "shape entry {d} is not a non-negative integer"
            )));
        };
        shape.push(d);
    }
    let info = TensorInfo {
        name: owned,
        dtype,
        shape,
    };
    let Some(nbytes) = info.checked_nbytes() else {
        return Err(bad(format!(
            "shape {:?} with dtype {dtype} overflows the address space",
            info.shape
        )));
    };
    let offsets = match obj.get("data_offsets") {
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(bad(format!(
                "data_offsets is {}, expected [begin, end]",
                json_kind(v)
            )))
        }
        None => return Err(bad("missing \"data_offsets\"".into())),
    };
    let (begin, end) = match offsets.as_slice() {
        [b, e] => match (b.as_u64(), e.as_u64()) {
            (Some(b), Some(e)) => (b, e),
            _ => return Err(bad("data_offsets are not non-negative integers".into())),
        },
        _ => {
            return Err(bad(format!(
                "data_offsets has {} entries, expected [begin, end]",
                offsets.len()
            )))
        }
    };
    if end < begin {
        return Err(bad(format!(
            "data_offsets [{begin}, {end}] end before they begin"
        )));
    }
    if end - begin != nbytes as u64 {
        return Err(bad(format!(
            "data_offsets [{begin}, {end}] span {} bytes, expected {nbytes} ({dtype} with shape {:?})",
            end - begin,
            info.shape
        )));
    }
    Ok((info, begin, end))
}
