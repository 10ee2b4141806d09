//! Labelled classification tasks fine-tuned on the testbed (`cargo xtask testbed` writes them).
//!
//! A task named `<name>` lives in a testbed folder as
//!
//! ```text
//! models/<name>/model.safetensors        the fine-tuned encoder + classifier.weight [n_classes, hidden], classifier.bias
//! models/<name>/task.json                labels, split, hyper-parameters, the training stack's test accuracy
//! models/<name>/test_logits_head.json    the training stack's token ids, logits and prediction per test example
//! data/<name>/{train,test}.jsonl         {"text": ..., "label": <class index>} per line
//! ```

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{Error, LinearHead, Result, SentenceEncoder};

/// One labelled text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// The input text.
    pub text: String,
    /// Index into [`Task::labels`].
    pub label: usize,
}

/// What the training stack computed for one test example (from `test_logits_head.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceOutput {
    /// Position in the test set.
    pub index: usize,
    /// Token ids the training stack fed the encoder (`[CLS] … [SEP]`).
    pub token_ids: Vec<u32>,
    /// Logits of the fine-tuned head.
    pub logits: Vec<f32>,
    /// The predicted class.
    pub prediction: usize,
}

/// A fine-tuned classification task of the testbed, as described by its `task.json`.
#[derive(Debug, Clone)]
pub struct Task {
    /// Task name (`bbc`, `spam`).
    pub name: String,
    /// Class names; a label is an index into this list.
    pub labels: Vec<String>,
    /// Maximum sequence length the model was trained with, `[CLS]` and `[SEP]` included.
    pub max_tokens: usize,
    /// Test accuracy measured by the training stack, in `[0, 1]`.
    pub test_accuracy: f64,
    /// Number of correctly classified test examples measured by the training stack.
    pub test_correct: usize,
    /// Accuracy of the base model's nearest-centroid probe on the raw pooled embeddings, when recorded.
    pub base_centroid_probe_accuracy: Option<f64>,
    /// The model folder (`models/<name>`).
    pub model_dir: PathBuf,
    /// The training examples file.
    pub train_file: PathBuf,
    /// The test examples file.
    pub test_file: PathBuf,
    /// The whole `task.json`.
    pub info: Value,
}

impl Task {
    /// Reads `<testbed>/models/<name>/task.json`.
    pub fn load(testbed: &Path, name: &str) -> Result<Self> {
        let model_dir = testbed.join("models").join(name);
        let path = model_dir.join("task.json");
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            op: "read",
            source,
        })?;
        let bad = |reason: String| Error::Task {
            path: path.clone(),
            reason,
        };
        let info: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let labels: Vec<String> = info["labels"]
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_str().map(String::from)).collect())
            .ok_or_else(|| bad("\"labels\" is not a list of strings".into()))?;
        if labels.is_empty() {
            return Err(bad(
                "\"labels\" is empty, expected at least one class".into()
            ));
        }
        let usize_at = |v: &Value, what: &str| {
            v.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| bad(format!("{what} is not a non-negative integer")))
        };
        let max_tokens = usize_at(
            &info["hyper_parameters"]["max_tokens"],
            "\"hyper_parameters.max_tokens\"",
        )?;
        let test_correct = usize_at(&info["test_correct"], "\"test_correct\"")?;
        let test_accuracy = info["test_accuracy"]
            .as_f64()
            .filter(|a| (0.0..=1.0).contains(a))
            .ok_or_else(|| bad("\"test_accuracy\" is not a number in [0, 1]".into()))?;
        let file = |key: &str| {
            info["split"][key]
                .as_str()
                .map(|rel| testbed.join(rel))
                .ok_or_else(|| bad(format!("\"split.{key}\" is not a path")))
        };
        let (train_file, test_file) = (file("train_file")?, file("test_file")?);
        Ok(Self {
            name: name.to_string(),
            labels,
            max_tokens,
            test_accuracy,
            test_correct,
            base_centroid_probe_accuracy: info["base_centroid_probe_accuracy"].as_f64(),
            model_dir,
            train_file,
            test_file,
            info,
        })
    }

    /// Number of classes.
    pub fn n_classes(&self) -> usize {
        self.labels.len()
    }

    /// The training examples.
    pub fn train(&self) -> Result<Vec<Example>> {
        read_examples(&self.train_file, self.n_classes())
    }

    /// The test examples.
    pub fn test(&self) -> Result<Vec<Example>> {
        read_examples(&self.test_file, self.n_classes())
    }

    /// The fine-tuned encoder, truncating at the task's [`max_tokens`](Self::max_tokens).
    pub fn encoder(&self) -> Result<SentenceEncoder> {
        self.encoder_from(&self.model_dir)
    }

    /// Another checkpoint folder (say, rebuilt from a compressed delta) set up as this task's encoder.
    pub fn encoder_from(&self, dir: &Path) -> Result<SentenceEncoder> {
        SentenceEncoder::load_dir(dir)?.with_max_tokens(self.max_tokens)
    }

    /// The fine-tuned classification head (`classifier.weight`, `classifier.bias` of `model.safetensors`).
    pub fn head(&self) -> Result<LinearHead> {
        let head = LinearHead::from_checkpoint(&self.model_dir.join("model.safetensors"))?;
        if head.n_classes() != self.n_classes() {
            return Err(Error::Task {
                path: self.model_dir.join("task.json"),
                reason: format!(
                    "{} labels but the head in model.safetensors has {} classes",
                    self.n_classes(),
                    head.n_classes()
                ),
            });
        }
        Ok(head)
    }

    /// The training stack's outputs on the test set (`test_logits_head.json`), in test-set order.
    pub fn reference_outputs(&self) -> Result<Vec<ReferenceOutput>> {
        let path = self.model_dir.join("test_logits_head.json");
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            op: "read",
            source,
        })?;
        let bad = |reason: String| Error::Task {
            path: path.clone(),
            reason,
        };
        let doc: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let rows = doc["examples"]
            .as_array()
            .ok_or_else(|| bad("no \"examples\" list".into()))?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let index = row["index"].as_u64().and_then(|n| usize::try_from(n).ok());
            let prediction = row["prediction"]
                .as_u64()
                .and_then(|n| usize::try_from(n).ok());
            let token_ids: Option<Vec<u32>> = row["token_ids"].as_array().and_then(|a| {
                a.iter()
                    .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
                    .collect()
            });
            let logits: Option<Vec<f32>> = row["logits"]
                .as_array()
                .and_then(|a| a.iter().map(|v| v.as_f64().map(|x| x as f32)).collect());
            let (Some(index), Some(prediction), Some(token_ids), Some(logits)) =
                (index, prediction, token_ids, logits)
            else {
                return Err(bad(format!(
                    "example {i}: expected index, prediction, token_ids and logits"
                )));
            };
            if index != i || logits.len() != self.n_classes() || prediction >= self.n_classes() {
                return Err(bad(format!(
                    "example {i}: index {index}, {} logits, prediction {prediction}; expected index {i} and {} classes",
                    logits.len(),
                    self.n_classes()
                )));
            }
            out.push(ReferenceOutput {
                index,
                token_ids,
                logits,
                prediction,
            });
        }
        Ok(out)
    }
}

/// Reads a JSON-lines file of `{"text": ..., "label": <index below n_classes>}`; blank lines are skipped.
pub fn read_examples(path: &Path, n_classes: usize) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        op: "read",
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| Error::Task {
            path: path.to_path_buf(),
            reason: format!("line {}: {reason}", i + 1),
        };
        let v: Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let text = v["text"]
            .as_str()
            .ok_or_else(|| bad("no string \"text\"".into()))?;
        let label = v["label"]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&l| l < n_classes)
            .ok_or_else(|| bad(format!("\"label\" is not a class index below {n_classes}")))?;
        out.push(Example {
            text: text.to_string(),
            label,
        });
    }
    Ok(out)
}
