//! The testbed's own fine-tunes (`cargo xtask testbed` trains them with PyTorch): the Rust evaluator must
//! reproduce the training stack's token ids, head logits (within 1e-4) and predictions on every test example.
//! Runs when `UD_TESTBED=<dir>` is set; skips with a note otherwise.

use std::path::PathBuf;

use ultradelta_eval::{read_examples, Error, Task};

/// Largest tolerated |logit(Rust) − logit(PyTorch)|.
const LOGIT_BUDGET: f32 = 1e-4;

const TASKS: [&str; 2] = ["bbc", "spam"];

fn testbed() -> Option<PathBuf> {
    match std::env::var_os("UD_TESTBED") {
        Some(d) => Some(PathBuf::from(d)),
        None => {
            eprintln!("note: UD_TESTBED is not set; skipping the fine-tuned task test (run `cargo xtask testbed`)");
            None
        }
    }
}

#[test]
fn evaluator_matches_the_training_stack_on_every_test_example() {
    let Some(dir) = testbed() else { return };
    let mut checked = 0;
    for name in TASKS {
        if !dir.join("models").join(name).join("task.json").is_file() {
            eprintln!(
                "note: {name}: no task.json in {} (built with --no-finetune?); skipped",
                dir.display()
            );
            continue;
        }
        let task = Task::load(&dir, name).unwrap_or_else(|e| panic!("{e}"));
        let test = task.test().unwrap_or_else(|e| panic!("{e}"));
        let refs = task.reference_outputs().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            refs.len(),
            test.len(),
            "{name}: reference outputs vs test examples"
        );
        let enc = task.encoder().unwrap_or_else(|e| panic!("{e}"));
        let head = task.head().unwrap_or_else(|e| panic!("{e}"));

        let texts: Vec<&str> = test.iter().map(|e| e.text.as_str()).collect();
        for (i, (text, r)) in texts.iter().zip(&refs).enumerate() {
            let ids = enc.token_ids(text).expect("tokenize");
            assert_eq!(
                ids, r.token_ids,
                "{name}: token ids of test example {i} differ"
            );
        }
        let embs = enc.embed_raw(&texts).expect("embed");
        let (mut worst, mut correct) = (0f32, 0usize);
        for (i, ((e, r), ex)) in embs.iter().zip(&refs).zip(&test).enumerate() {
            let logits = head.logits(e);
            for (a, b) in logits.iter().zip(&r.logits) {
                worst = worst.max((a - b).abs());
            }
            assert!(
                logits
                    .iter()
                    .zip(&r.logits)
                    .all(|(a, b)| (a - b).abs() <= LOGIT_BUDGET),
                "{name}: test example {i}: logits {logits:?}, PyTorch {:?} (budget {LOGIT_BUDGET})",
                r.logits
            );
            let pred = head.predict(e);
            assert_eq!(pred, r.prediction, "{name}: prediction of test example {i}");
            correct += usize::from(pred == ex.label);
        }
        let labels: Vec<usize> = test.iter().map(|e| e.label).collect();
        let accuracy = head.accuracy(&embs, &labels);
        eprintln!(
            "{name}: {} test examples, max |logit diff| {worst:.2e}, accuracy {accuracy:.4} (PyTorch {:.4})",
            test.len(),
            task.test_accuracy
        );
        assert_eq!(correct, task.test_correct, "{name}: correct predictions");
        assert!(
            (accuracy - task.test_accuracy).abs() < 1e-12,
            "{name}: accuracy"
        );
        checked += 1;
    }
    eprintln!("checked {checked} fine-tuned task(s)");
}

#[test]
fn malformed_task_files_fail_with_the_file_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("models").join("t");
    std::fs::create_dir_all(&model).expect("mkdir");
    let err = Task::load(dir.path(), "t").expect_err("no task.json");
    assert!(matches!(err, Error::Io { .. }), "{err}");

    std::fs::write(model.join("task.json"), r#"{"labels": ["a", 3]}"#).expect("write");
    let err = Task::load(dir.path(), "t").expect_err("bad labels");
    assert!(
        matches!(&err, Error::Task { reason, .. } if reason.contains("labels")),
        "{err}"
    );
    assert!(err.to_string().contains("task.json"), "{err}");

    std::fs::write(
        model.join("task.json"),
        r#"{"labels": ["a", "b"], "hyper_parameters": {"max_tokens": 128}, "test_correct": 3,
            "test_accuracy": 0.75, "split": {"train_file": "train.jsonl", "test_file": "test.jsonl"}}"#,
    )
    .expect("write");
    let task = Task::load(dir.path(), "t").expect("valid task.json");
    assert_eq!(
        (task.n_classes(), task.max_tokens, task.test_correct),
        (2, 128, 3)
    );
    assert_eq!(task.base_centroid_probe_accuracy, None);

    std::fs::write(
        dir.path().join("test.jsonl"),
        "{\"text\": \"x\", \"label\": 1}\n\n{\"text\": \"y\", \"label\": 0}\n",
    )
    .expect("write");
    let got = task.test().expect("two examples");
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].text.as_str(), got[0].label), ("x", 1));

    std::fs::write(
        dir.path().join("train.jsonl"),
        "{\"text\": \"x\", \"label\": 2}\n",
    )
    .expect("write");
    let err = task.train().expect_err("label out of range");
    assert!(err.to_string().contains("line 1"), "{err}");
    let err = read_examples(&dir.path().join("train.jsonl"), 3).map(|v| v.len());
    assert_eq!(err.expect("label 2 of 3 classes"), 1);
    let err = task.reference_outputs().expect_err("no reference outputs");
    assert!(matches!(err, Error::Io { .. }), "{err}");
}
