#!/usr/bin/env python3
"""Zero-shot top-1 accuracy of a (rebuilt) open_clip model folder on one dataset; prints one JSON object.

The evaluator protocol of `cargo xtask reproduce`: numeric metrics on the last line of standard output,
errors on standard error with a non-zero exit. The model folder holds `open_clip_model.safetensors`
(the full CLIP state dict: the fine-tuned visual encoder and the original text tower).

    pip install open_clip_torch clip_benchmark
    python3 clip_zeroshot_json.py --arch ViT-B-32 --model /path/rebuilt --dataset vtab/eurosat --data-root /data
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", required=True, help="open_clip architecture, e.g. ViT-B-32")
    ap.add_argument("--model", required=True, help="folder holding open_clip_model.safetensors")
    ap.add_argument("--dataset", required=True, help="clip_benchmark dataset name")
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--batch-size", default="64")
    a = ap.parse_args()
    weights = os.path.join(a.model, "open_clip_model.safetensors")
    if not os.path.isfile(weights):
        sys.exit(f"clip_zeroshot_json: {weights}: no such file")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = ["clip_benchmark", "eval", "--model", a.arch, "--pretrained", weights, "--dataset", a.dataset,
               "--dataset_root", a.data_root, "--task", "zeroshot_classification", "--batch_size", a.batch_size,
               "--output", out]
        try:
            r = subprocess.run(cmd, stdout=sys.stderr)
        except FileNotFoundError:
            sys.exit("clip_zeroshot_json: clip_benchmark is not installed (pip install clip_benchmark)")
        if r.returncode != 0:
            sys.exit(f"clip_zeroshot_json: clip_benchmark failed with exit code {r.returncode}")
        with open(out) as f:
            metrics = json.load(f)["metrics"]
    print(json.dumps({"acc1": metrics["acc1"], "acc5": metrics.get("acc5"),
                      "mean_per_class_recall": metrics.get("mean_per_class_recall")}))


if __name__ == "__main__":
    main()
