#!/usr/bin/env python3
"""One-off cross-check of ultradelta-eval's SentenceEncoder against an independent NumPy BERT.

Needs only NumPy (no torch, no tokenizers). Implements the BERT WordPiece tokenizer (uncased: clean text,
lower-case, strip accents, split punctuation and CJK characters, greedy longest match with ##) from vocab.txt,
reads model.safetensors by hand, runs the encoder in float64, mean-pools and L2-normalises, then runs the Rust
example `embed` on the same sentences (dev profile: the workspace builds dependencies at opt-level 3) and reports
the largest absolute difference. Exit status 0 when they agree within 1e-4.

    python3 crates/ultradelta-eval/scripts/numpy_reference.py target/testbed/models/base
"""

import json
import math
import os
import struct
import subprocess
import sys
import unicodedata

import numpy as np

SENTENCES = [
    "pod keeps crashing",
    "CrashLoopBackOff",
    "The quick brown fox jumps over the lazy dog, doesn't it? Café déjà vu!",
]


# ---------------------------------------------------------------- tokenizer

def _is_punct(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp):
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def basic_tokens(text):
    out = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
            continue
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            out.append(" ")
        elif _is_cjk(cp):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    text = "".join(out).lower()
    text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    tokens = []
    for word in text.split():
        cur = ""
        for ch in word:
            if _is_punct(ch):
                if cur:
                    tokens.append(cur)
                    cur = ""
                tokens.append(ch)
            else:
                cur += ch
        if cur:
            tokens.append(cur)
    return tokens


def wordpiece(tokens, vocab, max_chars=100):
    ids = []
    for tok in tokens:
        if len(tok) > max_chars:
            ids.append(vocab["[UNK]"])
            continue
        start, pieces = 0, []
        while start < len(tok):
            end, found = len(tok), None
            while start < end:
                piece = tok[start:end] if start == 0 else "##" + tok[start:end]
                if piece in vocab:
                    found = vocab[piece]
                    break
                end -= 1
            if found is None:
                pieces = [vocab["[UNK]"]]
                break
            pieces.append(found)
            start = end
        ids.extend(pieces)
    return ids


def encode(text, vocab, max_tokens=256):
    ids = wordpiece(basic_tokens(text), vocab)[: max_tokens - 2]
    return [vocab["[CLS]"]] + ids + [vocab["[SEP]"]]


# ---------------------------------------------------------------- weights

def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        arr = np.frombuffer(data[base + a:base + b], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
        out[name] = arr.astype(np.float64) if arr.dtype != np.int64 else arr
    return out


# ---------------------------------------------------------------- model

_erf = np.vectorize(math.erf)


def layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def embed(ids, w, cfg):
    p = "bert." if "bert.embeddings.word_embeddings.weight" in w else ""
    eps = cfg["layer_norm_eps"]
    heads = cfg["num_attention_heads"]
    n = len(ids)
    x = (w[p + "embeddings.word_embeddings.weight"][ids]
         + w[p + "embeddings.position_embeddings.weight"][:n]
         + w[p + "embeddings.token_type_embeddings.weight"][0])
    x = layer_norm(x, w[p + "embeddings.LayerNorm.weight"], w[p + "embeddings.LayerNorm.bias"], eps)
    h = x.shape[1]
    d = h // heads

    def lin(name, v):
        return v @ w[name + ".weight"].T + w[name + ".bias"]

    for l in range(cfg["num_hidden_layers"]):
        q = f"{p}encoder.layer.{l}."
        Q = lin(q + "attention.self.query", x).reshape(n, heads, d).transpose(1, 0, 2)
        K = lin(q + "attention.self.key", x).reshape(n, heads, d).transpose(1, 0, 2)
        V = lin(q + "attention.self.value", x).reshape(n, heads, d).transpose(1, 0, 2)
        s = Q @ K.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ V).transpose(1, 0, 2).reshape(n, h)
        x = layer_norm(lin(q + "attention.output.dense", ctx) + x,
                       w[q + "attention.output.LayerNorm.weight"], w[q + "attention.output.LayerNorm.bias"], eps)
        u = lin(q + "intermediate.dense", x)
        u = 0.5 * u * (1.0 + _erf(u / math.sqrt(2.0)))
        x = layer_norm(lin(q + "output.dense", u) + x,
                       w[q + "output.LayerNorm.weight"], w[q + "output.LayerNorm.bias"], eps)
    v = x.mean(0)
    return v / max(np.linalg.norm(v), 1e-12)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    model = sys.argv[1]
    vocab = {}
    with open(os.path.join(model, "vocab.txt"), encoding="utf-8") as f:
        for i, line in enumerate(f):
            vocab[line.rstrip("\n")] = i
    with open(os.path.join(model, "config.json")) as f:
        cfg = json.load(f)
    weights = load_safetensors(os.path.join(model, "model.safetensors"))
    ref = []
    for s in SENTENCES:
        ids = encode(s, vocab)
        print(f"{s!r}: ids {ids}")
        ref.append(embed(ids, weights, cfg))
    ref = np.array(ref)

    crate = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run(
        ["cargo", "run", "--quiet", "-p", "ultradelta-eval", "--example", "embed", "--",
         os.path.abspath(model)],
        input="\n".join(SENTENCES) + "\n", capture_output=True, text=True, cwd=crate, check=True)
    sys.stderr.write(run.stderr)
    rust = np.array(json.loads(run.stdout), dtype=np.float64)
    diff = np.abs(rust - ref).max(axis=1)
    for s, d in zip(SENTENCES, diff):
        print(f"max |rust - numpy| = {d:.3e}  {s!r}")
    print(f"cosine(s0, s1): numpy {ref[0] @ ref[1]:.4f}, rust {rust[0] @ rust[1]:.4f}")
    worst = diff.max()
    print(f"{'AGREE' if worst < 1e-4 else 'DISAGREE'} within 1e-4 (worst {worst:.3e})")
    sys.exit(0 if worst < 1e-4 else 1)


if __name__ == "__main__":
    main()
