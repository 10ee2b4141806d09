#!/usr/bin/env python3
"""Scores a GLUE fine-tune (a rebuilt model folder) on the task's validation split; prints one JSON object.

The evaluator protocol of `cargo xtask reproduce`: numeric metrics on the last line of standard output,
errors on standard error with a non-zero exit.

    pip install torch transformers datasets scipy
    python3 glue_json.py --model /path/rebuilt --task sst2 [--arch encoder|t5] [--limit 0]

--arch encoder: AutoModelForSequenceClassification (RoBERTa/BERT); the predicted class is the argmax logit
(the regression output for STS-B). --arch t5: the model generates the label word from the "<task> ..." prompt
of the original T5 GLUE format; a word that is no label counts as wrong.
"""
import argparse
import json
import sys

FIELDS = {
    "cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
    "stsb": ("sentence1", "sentence2"), "qqp": ("question1", "question2"),
    "mnli": ("premise", "hypothesis"), "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"),
}
T5_PREFIX = {
    "cola": "cola sentence:", "sst2": "sst2 sentence:", "mrpc": "mrpc", "stsb": "stsb", "qqp": "qqp",
    "mnli": "mnli", "qnli": "qnli", "rte": "rte",
}
T5_LABELS = {
    "cola": ["unacceptable", "acceptable"], "sst2": ["negative", "positive"],
    "mrpc": ["not_equivalent", "equivalent"], "qqp": ["not_duplicate", "duplicate"],
    "mnli": ["entailment", "neutral", "contradiction"], "qnli": ["entailment", "not_entailment"],
    "rte": ["entailment", "not_entailment"],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", required=True, choices=sorted(FIELDS))
    ap.add_argument("--arch", default="encoder", choices=["encoder", "t5"])
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args()
    try:
        import torch
        from datasets import load_dataset
        from scipy.stats import spearmanr
        from sklearn.metrics import matthews_corrcoef
        import transformers as tf
    except ImportError as e:
        sys.exit(f"glue_json: missing package: {e.name} (pip install torch transformers datasets scipy scikit-learn)")
    split = "validation_matched" if a.task == "mnli" else "validation"
    ds = load_dataset("glue", a.task, split=split)
    if a.limit:
        ds = ds.select(range(min(a.limit, len(ds))))
    f1, f2 = FIELDS[a.task]
    tok = tf.AutoTokenizer.from_pretrained(a.model)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    preds = []
    if a.arch == "encoder":
        model = tf.AutoModelForSequenceClassification.from_pretrained(a.model).to(dev).eval()
    else:
        model = tf.AutoModelForSeq2SeqLM.from_pretrained(a.model).to(dev).eval()
    for i in range(0, len(ds), a.batch_size):
        b = ds[i:i + a.batch_size]
        if a.arch == "encoder":
            enc = tok(b[f1], b[f2] if f2 else None, truncation=True, padding=True, return_tensors="pt").to(dev)
            with torch.no_grad():
                logits = model(**enc).logits
            preds += logits[:, 0].tolist() if a.task == "stsb" else logits.argmax(-1).tolist()
        else:
            texts = [f"{T5_PREFIX[a.task]} {f1}: {x}" + (f" {f2}: {y}" if f2 else "")
                     for x, y in zip(b[f1], b[f2] if f2 else b[f1])]
            enc = tok(texts, truncation=True, padding=True, return_tensors="pt").to(dev)
            with torch.no_grad():
                out = tok.batch_decode(model.generate(**enc, max_new_tokens=8), skip_special_tokens=True)
            for w in out:
                w = w.strip()
                if a.task == "stsb":
                    try:
                        preds.append(float(w))
                    except ValueError:
                        preds.append(float("nan"))
                else:
                    labels = T5_LABELS[a.task]
                    preds.append(labels.index(w) if w in labels else -1)
    gold = ds["label"]
    if a.task == "stsb":
        out = {"spearman": float(spearmanr(preds, gold, nan_policy="omit").correlation)}
    elif a.task == "cola":
        out = {"matthews": float(matthews_corrcoef(gold, preds)),
               "accuracy": sum(p == g for p, g in zip(preds, gold)) / len(gold)}
    else:
        out = {"accuracy": sum(p == g for p, g in zip(preds, gold)) / len(gold)}
    out["n"] = len(gold)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
