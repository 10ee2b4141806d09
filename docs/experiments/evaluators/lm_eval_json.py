#!/usr/bin/env python3
"""Runs one lm-evaluation-harness task on a model folder and prints its metrics as one JSON object.

The evaluator protocol of `cargo xtask reproduce`: numeric metrics on the last line of standard output,
errors on standard error with a non-zero exit. Metric names are lm-eval's with "," replaced by "."
(e.g. "exact_match,flexible-extract" -> "exact_match.flexible-extract").

    pip install lm-eval==0.4.*   (and torch with CUDA for 7B/13B models)
    python3 lm_eval_json.py --model /path/rebuilt --task gsm8k [--limit 0] [--batch-size 8]
"""
import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face model folder (the rebuilt checkpoint)")
    ap.add_argument("--task", required=True, help="lm-eval task name, e.g. gsm8k")
    ap.add_argument("--limit", type=int, default=0, help="first N examples only (0: all)")
    ap.add_argument("--batch-size", default="8")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--allow-code-execution", action="store_true", help="needed by code benchmarks (HumanEval)")
    a = ap.parse_args()
    try:
        import lm_eval
    except ImportError:
        sys.exit("lm_eval_json: lm-evaluation-harness is not installed (pip install lm-eval)")
    res = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={a.model},dtype={a.dtype}",
        tasks=[a.task],
        batch_size=a.batch_size,
        limit=a.limit or None,
        confirm_run_unsafe_code=a.allow_code_execution,
    )
    metrics = res["results"][a.task]
    out = {k.replace(",", "."): v for k, v in metrics.items() if isinstance(v, (int, float))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
