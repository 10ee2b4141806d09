//! A linear classification head on the mean-pooled sentence embedding.

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::metrics::argmax;
use crate::{Error, Result};

/// A linear classifier `logits = W · x + b` over a sentence embedding `x`, as trained by a
/// sequence-classification fine-tune that puts a linear layer on the mean-pooled BERT output.
///
/// Feed it [`SentenceEncoder::embed_raw`](crate::SentenceEncoder::embed_raw) (mean-pooled, not normalised)
/// unless the fine-tune normalised before its head, in which case feed it
/// [`SentenceEncoder::embed`](crate::SentenceEncoder::embed).
#[derive(Debug, Clone, PartialEq)]
pub struct LinearHead {
    /// Row-major `[n_classes, hidden]`.
    weight: Vec<f32>,
    bias: Vec<f32>,
    hidden: usize,
}

impl LinearHead {
    /// Default name of the weight tensor, shape `[n_classes, hidden]`.
    pub const WEIGHT: &'static str = "classifier.weight";
    /// Default name of the bias tensor, shape `[n_classes]`.
    pub const BIAS: &'static str = "classifier.bias";

    /// A head from a row-major `[n_classes, hidden]` weight matrix and a `[n_classes]` bias.
    pub fn new(weight: Vec<f32>, bias: Vec<f32>, hidden: usize) -> Result<Self> {
        if bias.is_empty() || hidden == 0 {
            return Err(Error::InvalidArgument(format!(
                "linear head needs at least one class and a positive width (got {} classes, width {hidden})",
                bias.len()
            )));
        }
        if bias.len().checked_mul(hidden) != Some(weight.len()) {
            return Err(Error::InvalidArgument(format!(
                "linear head weight has {} values, expected {} classes x {hidden}",
                weight.len(),
                bias.len()
            )));
        }
        Ok(Self {
            weight,
            bias,
            hidden,
        })
    }

    /// Reads `classifier.weight` and `classifier.bias` (F32, F16 or BF16) from a safetensors checkpoint.
    pub fn from_checkpoint(path: &Path) -> Result<Self> {
        Self::from_checkpoint_named(path, Self::WEIGHT, Self::BIAS)
    }

    /// Reads a head stored under other tensor names.
    pub fn from_checkpoint_named(path: &Path, weight_name: &str, bias_name: &str) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            op: "read",
            source,
        })?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let (w_shape, weight) = read_f32(&st, path, weight_name)?;
        let (b_shape, bias) = read_f32(&st, path, bias_name)?;
        let tensor_err = |tensor: &str, reason: String| Error::Tensor {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            reason,
        };
        let [n_classes, hidden] = w_shape[..] else {
            return Err(tensor_err(
                weight_name,
                format!("shape {w_shape:?}, expected [n_classes, hidden]"),
            ));
        };
        if b_shape != [n_classes] {
            return Err(tensor_err(
                bias_name,
                format!("shape {b_shape:?}, expected [{n_classes}] to match {weight_name}"),
            ));
        }
        if n_classes == 0 || hidden == 0 {
            return Err(tensor_err(
                weight_name,
                format!("shape {w_shape:?}, expected both dimensions positive"),
            ));
        }
        Self::new(weight, bias, hidden)
    }

    /// Number of classes.
    pub fn n_classes(&self) -> usize {
        self.bias.len()
    }

    /// Width of the embeddings the head expects.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// The logits `W · emb + b`, one per class.
    ///
    /// # Panics
    /// If `emb.len()` differs from [`hidden_size`](Self::hidden_size).
    pub fn logits(&self, emb: &[f32]) -> Vec<f32> {
        assert_eq!(
            emb.len(),
            self.hidden,
            "LinearHead: embedding of length {}, expected {}",
            emb.len(),
            self.hidden
        );
        self.weight
            .chunks_exact(self.hidden)
            .zip(&self.bias)
            .map(|(row, &b)| {
                let dot: f64 = row
                    .iter()
                    .zip(emb)
                    .map(|(&w, &x)| f64::from(w) * f64::from(x))
                    .sum();
                (dot + f64::from(b)) as f32
            })
            .collect()
    }

    /// The predicted class: index of the largest logit (the first on ties).
    ///
    /// # Panics
    /// If `emb.len()` differs from [`hidden_size`](Self::hidden_size).
    pub fn predict(&self, emb: &[f32]) -> usize {
        argmax(&self.logits(emb))
    }

    /// Share of `embs` whose prediction equals the label, in `[0, 1]`; NaN when empty.
    ///
    /// # Panics
    /// If the slices differ in length or an embedding has the wrong width.
    pub fn accuracy(&self, embs: &[Vec<f32>], labels: &[usize]) -> f64 {
        assert_eq!(
            embs.len(),
            labels.len(),
            "LinearHead::accuracy: {} embeddings but {} labels",
            embs.len(),
            labels.len()
        );
        if embs.is_empty() {
            return f64::NAN;
        }
        let correct = embs
            .iter()
            .zip(labels)
            .filter(|(e, &y)| self.predict(e) == y)
            .count();
        correct as f64 / embs.len() as f64
    }
}

/// Shape and values of one tensor, converted to f32.
fn read_f32(st: &SafeTensors<'_>, path: &Path, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let view = st.tensor(name).map_err(|_| Error::Tensor {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        reason: "not found in the checkpoint".into(),
    })?;
    let data = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(Error::Tensor {
                path: path.to_path_buf(),
                tensor: name.to_string(),
                reason: format!("dtype {other:?}, expected F32, F16 or BF16"),
            })
        }
    };
    Ok((view.shape().to_vec(), values))
}
