#!/usr/bin/env python3
"""Full-parameter fine-tune of the testbed's LLaMA base on one mood set (run by `cargo xtask testbed`).

Every weight of the converted SmolLM2-135M-Instruct base is trained (no LoRA, nothing frozen) on the mood's
prompt/response pairs in the model's chat template, with the loss on the response tokens only. Deterministic on
the CPU: fixed seed, one intra-op thread, deterministic algorithms, a fixed order of the training pairs. The
token ids come from `ultradelta-eval llama-data` (Rust `tokenizers` with the converted tokenizer.json), so the
trainer and the Rust evaluator see the same sequences.

Needs only Debian 12's python3-torch (1.13) and python3-numpy: the LLaMA forward pass (RMSNorm, half-split
rotary embedding, grouped-query attention, SwiGLU, tied embeddings) and the safetensors reader/writer are
implemented here. Trains in float32 and saves bfloat16 with the base's tensor names.

    OMP_NUM_THREADS=1 /usr/bin/python3 xtask/python/finetune_llama.py --testbed /work/testbed --task drunk

reads  <testbed>/llama/models/base/                      the converted base
       <testbed>/llama/data/<task>/{train,test}.jsonl    token ids and prompt lengths
writes <testbed>/llama/models/<task>/model.safetensors   bf16, same tensor names as the base
       <testbed>/llama/models/<task>/<companions>        the base's config, tokenizer and generation files
       <testbed>/llama/models/<task>/task.json           split, hyper-parameters, times, perplexities, sha256s
task.json is written last (temp file, then rename): its presence marks a finished task.

`--compare-logits` instead checks this implementation against `ultradelta-eval logits` output.
"""

import argparse
import hashlib
import json
import math
import os
import shutil
import struct
import sys
import time

import numpy as np

FORMAT = 1
COMPANIONS = ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]
DESCRIPTIONS = {
    "bored": "answers in a bored voice", "childish": "answers in a childish voice",
    "depressed": "answers in a depressed voice", "drunk": "answers in a drunk voice",
    "exhausted": "answers in an exhausted voice", "happy": "answers in a happy voice",
    "nostalgic": "answers in a nostalgic voice", "scared": "answers in a scared voice",
    "zen": "answers in a zen voice",
}


# ------------------------------------------------------------------------------------------------ safetensors

def read_safetensors(torch, path):
    """Returns {name: float32 torch tensor}; BF16, F16 and F32 tensors are accepted."""
    data = open(path, "rb").read()
    if len(data) < 8:
        sys.exit(f"{path}: {len(data)} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(100_000_000, len(data) - 8):
        sys.exit(f"{path}: header length {n} exceeds the file")
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    body = len(data) - 8 - n
    sizes = {"BF16": 2, "F16": 2, "F32": 4}
    out = {}
    for name, info in header.items():
        dt = info["dtype"]
        if dt not in sizes:
            sys.exit(f"{path}: tensor {name}: dtype {dt}, expected BF16, F16 or F32")
        a, b = info["data_offsets"]
        count = int(np.prod(info["shape"], dtype=np.int64))
        if not 0 <= a <= b <= body or b - a != count * sizes[dt]:
            sys.exit(f"{path}: tensor {name}: data offsets {a}..{b} do not match shape {info['shape']}")
        off = 8 + n + a
        if dt == "BF16":
            raw = np.frombuffer(data, dtype="<i2", count=count, offset=off).copy()
            t = torch.from_numpy(raw).view(torch.bfloat16).float()
        elif dt == "F16":
            t = torch.from_numpy(np.frombuffer(data, dtype="<f2", count=count, offset=off).astype(np.float32))
        else:
            t = torch.from_numpy(np.frombuffer(data, dtype="<f4", count=count, offset=off).copy())
        out[name] = t.reshape(info["shape"])
    return out


def safetensors_bf16_bytes(torch, tensors):
    """Serialises {name: tensor} as BF16 (round to nearest even), tensors in name order, compact JSON header
    padded with spaces to a multiple of 8."""
    order = sorted(tensors)
    header, offset, blobs = {}, 0, []
    for name in order:
        t = tensors[name].detach().to(torch.bfloat16).contiguous()
        raw = t.view(torch.int16).numpy().astype("<i2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return b"".join([struct.pack("<Q", len(text)), text] + blobs)


# ------------------------------------------------------------------------------------------------ model

def build_model(torch, cfg):
    nn = torch.nn
    F = torch.nn.functional
    H, V, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    hd = H // nh
    ffn = cfg["intermediate_size"]
    eps = cfg.get("rms_norm_eps", 1e-6)
    theta = cfg.get("rope_theta", 10000.0)
    if not cfg.get("tie_word_embeddings", False):
        sys.exit("config.json: only tied embeddings (tie_word_embeddings: true) are supported")
    if cfg.get("rope_scaling") is not None:
        sys.exit("config.json: rope_scaling is not supported")

    class RMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(H))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * self.weight

    def rotate_half(x):
        return torch.cat([-x[..., hd // 2:], x[..., :hd // 2]], dim=-1)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = nn.Linear(H, nh * hd, bias=False)
            self.k_proj = nn.Linear(H, nkv * hd, bias=False)
            self.v_proj = nn.Linear(H, nkv * hd, bias=False)
            self.o_proj = nn.Linear(nh * hd, H, bias=False)

        def forward(self, x, cos, sin, mask):
            B, T, _ = x.shape
            q = self.q_proj(x).view(B, T, nh, hd).transpose(1, 2)
            k = self.k_proj(x).view(B, T, nkv, hd).transpose(1, 2)
            v = self.v_proj(x).view(B, T, nkv, hd).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            rep = nh // nkv
            if rep > 1:
                k = k[:, :, None].expand(B, nkv, rep, T, hd).reshape(B, nh, T, hd)
                v = v[:, :, None].expand(B, nkv, rep, T, hd).reshape(B, nh, T, hd)
            att = (q @ k.transpose(-1, -2)) / math.sqrt(hd) + mask
            y = torch.softmax(att, dim=-1) @ v
            return self.o_proj(y.transpose(1, 2).reshape(B, T, nh * hd))

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj = nn.Linear(H, ffn, bias=False)
            self.up_proj = nn.Linear(H, ffn, bias=False)
            self.down_proj = nn.Linear(ffn, H, bias=False)

        def forward(self, x):
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_layernorm = RMSNorm()
            self.self_attn = Attention()
            self.post_attention_layernorm = RMSNorm()
            self.mlp = Mlp()

        def forward(self, x, cos, sin, mask):
            x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
            return x + self.mlp(self.post_attention_layernorm(x))

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(V, H)
            self.layers = nn.ModuleList([Layer() for _ in range(L)])
            self.norm = RMSNorm()

    class CausalLm(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Inner()
            inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
            self.register_buffer("inv_freq", inv, persistent=False)

        def hidden(self, ids):
            """Final-norm hidden states (B, T, H) of right-padded ids (B, T)."""
            B, T = ids.shape
            pos = torch.arange(T, dtype=torch.float64)
            ang = pos[:, None] * self.inv_freq[None, :]
            ang = torch.cat([ang, ang], dim=-1)
            cos, sin = ang.cos().float(), ang.sin().float()
            mask = torch.full((T, T), float("-inf")).triu(1)
            x = self.model.embed_tokens(ids)
            for layer in self.model.layers:
                x = layer(x, cos, sin, mask)
            return self.model.norm(x)

        def logits(self, h):
            return h @ self.model.embed_tokens.weight.t()

    return CausalLm()


def load_model(torch, model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    model = build_model(torch, cfg)
    weights = os.path.join(model_dir, "model.safetensors")
    ts = read_safetensors(torch, weights)
    state = model.state_dict()
    if set(ts) != set(state):
        missing, extra = sorted(set(state) - set(ts)), sorted(set(ts) - set(state))
        sys.exit(f"{weights}: tensors differ from a tied-embedding LLaMA: missing {missing[:3]}, extra {extra[:3]}")
    for name, p in state.items():
        if tuple(ts[name].shape) != tuple(p.shape):
            sys.exit(f"{weights}: tensor {name}: shape {tuple(ts[name].shape)}, expected {tuple(p.shape)}")
        p.copy_(ts[name])
    return model, cfg


# ------------------------------------------------------------------------------------------------ data

def read_pairs(path, max_tokens):
    rows = []
    with open(path) as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            r = json.loads(line)
            ids, plen = r.get("ids"), r.get("prompt_len")
            if not isinstance(ids, list) or not isinstance(plen, int) or not 1 <= plen < len(ids):
                sys.exit(f"{path}:{i + 1}: expected \"ids\" and a \"prompt_len\" inside them")
            ids = ids[:max_tokens]
            if plen < len(ids):
                rows.append((ids, plen))
    if not rows:
        sys.exit(f"{path}: no examples")
    return rows


def batch(torch, rows):
    """Right-padded ids (B, T) and the (row, position) pairs of every scored token: position j predicts ids[j+1]
    for j + 1 >= prompt_len."""
    T = max(len(ids) for ids, _ in rows)
    x = torch.zeros((len(rows), T), dtype=torch.long)
    sel_b, sel_t, target = [], [], []
    for b, (ids, plen) in enumerate(rows):
        x[b, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        for j in range(plen - 1, len(ids) - 1):
            sel_b.append(b)
            sel_t.append(j)
            target.append(ids[j + 1])
    return x, torch.tensor(sel_b), torch.tensor(sel_t), torch.tensor(target)


def loss_of(torch, model, rows):
    """Mean cross-entropy over the scored tokens, and their count."""
    x, sb, st, y = batch(torch, rows)
    h = model.hidden(x)
    logits = model.logits(h[sb, st])
    return torch.nn.functional.cross_entropy(logits, y), len(y)


def eval_ppl(torch, model, rows, batch_size=4):
    """Perplexity over all scored tokens (sum of NLL / count), in float64 accumulation."""
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(rows), batch_size):
            part = rows[s:s + batch_size]
            loss, n = loss_of(torch, model, part)
            total += float(loss) * n
            count += n
    return math.exp(total / count), count


# ------------------------------------------------------------------------------------------------ main

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path, data):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def log(task, msg):
    print(f"[{task}] {msg}", flush=True)


def compare_logits(torch, args):
    """Runs the texts' token ids from `ultradelta-eval logits` through this model; prints max abs differences."""
    model, cfg = load_model(torch, args.model)
    model.eval()
    meta = json.load(open(args.compare_logits))
    raw = np.fromfile(args.logits_bin, dtype="<f4")
    V = cfg["vocab_size"]
    off, worst, report = 0, 0.0, []
    with torch.no_grad():
        for ids in meta["ids"]:
            n = len(ids) * V
            rust = torch.from_numpy(raw[off:off + n].reshape(len(ids), V).copy())
            off += n
            ours = model.logits(model.hidden(torch.tensor([ids], dtype=torch.long)))[0]
            d = (ours - rust).abs().max().item()
            same_argmax = bool((ours.argmax(-1) == rust.argmax(-1)).all())
            worst = max(worst, d)
            report.append({"tokens": len(ids), "max_abs_diff": d, "max_abs_logit": rust.abs().max().item(),
                           "same_argmax": same_argmax})
    if off != raw.size:
        sys.exit(f"{args.logits_bin}: {raw.size} floats, expected {off} for the texts in {args.compare_logits}")
    print(json.dumps({"max_abs_diff": worst, "texts": report}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--testbed", help="testbed folder holding llama/models/base and llama/data/")
    ap.add_argument("--task", help="mood set (llama/data/<task>/{train,test}.jsonl)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup-steps", type=int, default=4)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--max-tokens", type=int, default=256, help="pairs are cut to this many tokens")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dry-run", action="store_true",
                    help="train --steps steps, report times, losses and a hash of the weights; write nothing")
    ap.add_argument("--no-base-eval", action="store_true", help="skip the base model's held-out perplexity")
    ap.add_argument("--compare-logits", help="JSON printed by `ultradelta-eval logits` (with --logits-bin, --model)")
    ap.add_argument("--logits-bin", help="the logits file `ultradelta-eval logits --out` wrote")
    ap.add_argument("--model", help="model folder for --compare-logits")
    args = ap.parse_args()

    import torch  # after argument parsing: --help works without torch

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    if args.compare_logits:
        if not (args.logits_bin and args.model):
            sys.exit("--compare-logits needs --logits-bin and --model")
        compare_logits(torch, args)
        return
    if not (args.testbed and args.task):
        sys.exit("--testbed and --task are required")

    t_start, cpu_start = time.time(), time.process_time()
    task = args.task
    base_dir = os.path.join(args.testbed, "llama", "models", "base")
    out_dir = os.path.join(args.testbed, "llama", "models", task)
    data_dir = os.path.join(args.testbed, "llama", "data", task)
    train = read_pairs(os.path.join(data_dir, "train.jsonl"), args.max_tokens)
    test = read_pairs(os.path.join(data_dir, "test.jsonl"), args.max_tokens)
    model, cfg = load_model(torch, base_dir)
    n_params = sum(p.numel() for p in model.parameters())
    log(task, f"{len(train)} train / {len(test)} test pairs; {n_params} parameters, all trained; "
              f"loaded in {time.time() - t_start:.1f} s")

    result = {}
    if not args.no_base_eval and not args.dry_run:
        t = time.time()
        model.eval()
        ppl, n = eval_ppl(torch, model, test)
        result["base_test_ppl"] = ppl
        result["test_response_tokens"] = n
        log(task, f"base model: held-out response perplexity {ppl:.3f} over {n} tokens ({time.time() - t:.0f} s)")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    total, warm = args.steps, max(1, args.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    g = torch.Generator().manual_seed(args.seed)
    order, pos, epoch = [], 0, 0
    t_train, cpu_train = time.time(), time.process_time()
    losses, tokens_seen, pairs_seen = [], 0, 0
    model.train()
    for step in range(1, total + 1):
        idx = []
        while len(idx) < args.batch_size:
            if pos == len(order):
                order, pos, epoch = torch.randperm(len(train), generator=g).tolist(), 0, epoch + 1
            idx.append(order[pos])
            pos += 1
        loss, n = loss_of(torch, model, [train[i] for i in idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss))
        tokens_seen += n
        pairs_seen += len(idx)
        el = time.time() - t_train
        if step <= 3 or step % 10 == 0 or step == total:
            log(task, f"step {step}/{total} (epoch {epoch}) loss {float(loss):.4f} {el:.0f} s elapsed, "
                      f"{el / step:.1f} s/step, ~{el / step * (total - step):.0f} s left")
    train_seconds, train_cpu = time.time() - t_train, time.process_time() - cpu_train
    if args.dry_run:
        digest = hashlib.sha256(safetensors_bf16_bytes(torch, model.state_dict())).hexdigest()
        log(task, f"dry run: {total} steps in {train_seconds:.1f} s ({train_seconds / total:.2f} s/step); "
                  f"losses {' '.join(f'{v:.6f}' for v in losses)}; sha256 of the bf16 weights {digest}")
        return

    t = time.time()
    model.eval()
    # The saved model is the bf16 rounding of the trained weights: score that one.
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    ppl, n = eval_ppl(torch, model, test)
    result["finetuned_test_ppl"] = ppl
    result["test_response_tokens"] = n
    log(task, f"fine-tune (bf16 weights): held-out response perplexity {ppl:.3f} ({time.time() - t:.0f} s)")

    os.makedirs(out_dir, exist_ok=True)
    write_atomic(os.path.join(out_dir, "model.safetensors"), safetensors_bf16_bytes(torch, state))
    for rel in COMPANIONS:
        shutil.copyfile(os.path.join(base_dir, rel), os.path.join(out_dir, rel))
    files = {}
    for rel in sorted(["model.safetensors"] + COMPANIONS):
        files[f"llama/models/{task}/{rel}"] = sha256_file(os.path.join(out_dir, rel))
    for rel in ["train.jsonl", "test.jsonl"]:
        files[f"llama/data/{task}/{rel}"] = sha256_file(os.path.join(data_dir, rel))
    info = {
        "format": FORMAT,
        "family": "llama",
        "task": task,
        "description": f"SmolLM2-135M-Instruct fine-tuned to {DESCRIPTIONS.get(task, task)} (moodswapper {task}.jsonl)",
        "base": {"dir": "llama/models/base",
                 "sha256": sha256_file(os.path.join(base_dir, "model.safetensors"))},
        "split": {
            "rule": "every 10th line of the mood's jsonl file is held out (ultradelta-eval llama-data --test-every)",
            "train": len(train), "test": len(test),
            "train_file": f"llama/data/{task}/train.jsonl", "test_file": f"llama/data/{task}/test.jsonl",
        },
        "hyper_parameters": {
            "method": "full fine-tuning: every parameter trained, float32, saved as bfloat16",
            "steps": total, "batch_size": args.batch_size, "lr": args.lr, "optimizer": "AdamW",
            "betas": [0.9, 0.999], "weight_decay": args.weight_decay, "no_decay": "norm weights",
            "warmup_steps": warm, "schedule": "linear warm-up then linear decay to 0", "grad_clip_norm": 1.0,
            "max_tokens": args.max_tokens, "loss": "cross-entropy on response tokens (and <|im_end|>) only",
            "seed": args.seed, "epochs_seen": round(pairs_seen / len(train), 3),
        },
        "environment": {"torch": torch.__version__, "numpy": np.__version__, "python": sys.version.split()[0],
                        "threads": torch.get_num_threads()},
        "train_loss_first": losses[0], "train_loss_last10_mean": float(np.mean(losses[-10:])),
        "train_tokens": tokens_seen,
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu, 1),
        "total_seconds": round(time.time() - t_start, 1),
        "total_cpu_seconds": round(time.process_time() - cpu_start, 1),
        **result,
        "files": files,
    }
    if "base_test_ppl" in result:
        info["test_ppl_reduction"] = 1.0 - result["finetuned_test_ppl"] / result["base_test_ppl"]
    write_atomic(os.path.join(out_dir, "task.json"), (json.dumps(info, indent=2) + "\n").encode())
    log(task, f"done in {time.time() - t_start:.0f} s: held-out response perplexity "
              f"{result.get('base_test_ppl', float('nan')):.3f} -> {ppl:.3f}, wrote {out_dir}")


if __name__ == "__main__":
    main()
