"""How Gaussian are the testbed's fine-tuning deltas? Per compressed (2-D linear) tensor: the excess of the
delta's kurtosis over a Gaussian's (3), and the share of its energy in its largest 0.5 / 2 / 5 / 12 % of entries,
against a Gaussian's shares. Reads safetensors (F32, BF16) with numpy only.

usage: python3 tails.py TESTBED   (the real testbed: models/{base,sre,jobs}, llama/models/{base,zen,...})
"""
import json
import struct
import sys

import numpy as np

FRACS = (0.005, 0.02, 0.05, 0.12)


def load(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = memoryview(data)[8 + n :]
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        s, e = v["data_offsets"]
        raw = body[s:e]
        if v["dtype"] == "F32":
            a = np.frombuffer(raw, dtype="<f4")
        elif v["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            continue
        out[name] = a.reshape(v["shape"])
    return out


def shares(d):
    e = np.sort(d.astype(np.float64) ** 2)[::-1]
    c = np.cumsum(e)
    return [c[max(int(len(e) * f), 1) - 1] / c[-1] for f in FRACS]


def linear(name, a):
    if a.ndim != 2 or not name.endswith("weight"):
        return False
    return not any(k in name for k in ("embed", "lm_head", "norm", "LayerNorm"))


def report(label, base, ft):
    kurt, sh = [], []
    for name, b in base.items():
        f = ft.get(name)
        if f is None or f.shape != b.shape or not linear(name, b):
            continue
        d = (f.astype(np.float64) - b.astype(np.float64)).ravel()
        if not d.any():
            continue
        kurt.append((d**4).mean() / (d**2).mean() ** 2)
        sh.append(shares(d))
    kurt, sh = np.array(kurt), np.array(sh).mean(0)
    print(
        f"{label:<12} {len(kurt):>4} tensors  kurtosis median {np.median(kurt):5.2f} "
        f"(10-90 %: {np.percentile(kurt, 10):5.2f}-{np.percentile(kurt, 90):5.2f})  "
        "energy in the top " + " / ".join(f"{100*f:g}%: {s:.3f}" for f, s in zip(FRACS, sh))
    )


def main():
    t = sys.argv[1]
    g = np.random.default_rng(0).standard_normal(4_000_000)
    print("Gaussian     kurtosis 3.00, energy in the top " + " / ".join(
        f"{100*f:g}%: {s:.3f}" for f, s in zip(FRACS, shares(g))))
    lap = np.random.default_rng(0).laplace(size=4_000_000)
    print("(Laplace     kurtosis 6.00, energy in the top " + " / ".join(
        f"{100*f:g}%: {s:.3f}" for f, s in zip(FRACS, shares(lap))) + ")")
    base = load(f"{t}/models/base/model.safetensors")
    for ft in ("sre", "jobs"):
        report(f"MiniLM {ft}", base, load(f"{t}/models/{ft}/model.safetensors"))
    base = load(f"{t}/llama/models/base/model.safetensors")
    for ft in ("zen", "drunk", "childish", "scared"):
        report(f"LLaMA {ft}", base, load(f"{t}/llama/models/{ft}/model.safetensors"))


if __name__ == "__main__":
    main()
