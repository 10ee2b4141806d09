#!/usr/bin/env python3
"""Study: low-rank + sparse-residual hybrid vs the default, at equal whole-file bytes.

For a MiniLM embedding fine-tune: the default archive at --target-ratio R gives the byte budget A (whole file).
The hybrid stores, for every 2-D tensor the default compresses, the rank-r truncated SVD of the delta as fp16
factors (bytes counted as the project's lowrank-f16 record: 2 bytes per factor entry), and compresses the residual
fine-tune (base + delta - L_r) with the default under --target-size A - lowrank_bytes. Rebuilt = apply(residual) + L_r.
The word, position and token-type embeddings get no low-rank part (the default compresses them like the rest).
Run with Debian's python3 (numpy): REPO=<checkout> TESTBED=<testbed> BIN=<release dir> WORK=<dir> hybrid.py jobs 50.9 2,4,8
Results of 2026-12-04 (the 2-core machine, nice 19 beside a reproduce run): README "Choosing the defaults".
"""
import json, os, shutil, struct, subprocess, sys
import numpy as np

# Paths: the release binaries, the testbed (`cargo xtask testbed`), the checkout (for the in-domain pairs), a work dir.
REPO = os.environ.get("REPO", os.getcwd())
REL = os.environ.get("BIN", f"{REPO}/target/release")
UD, EV = f"{REL}/ultradelta", f"{REL}/ultradelta-eval"
TB = os.environ.get("TESTBED", "testbed")
WORK = os.environ.get("WORK", "target/hybrid-study")

DT = {"F32": "<f4", "I64": "<i8"}

def read_st(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(data[a:b], dtype=DT[v["dtype"]]).reshape(v["shape"]).copy()
    return out

def write_st(path, tensors):
    hdr, off, blobs = {}, 0, []
    for k in sorted(tensors):
        a = np.ascontiguousarray(tensors[k])
        b = a.tobytes()
        hdr[k] = {"dtype": {v: k for k, v in DT.items()}[a.dtype.str], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(hdr).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)

def lowrank_targets(name, t):
    return t.ndim == 2 and "embeddings" not in name

def clone_folder(src, dst):
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))

def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    return r.stdout

def evaluate(task, model, cache):
    out = run([EV, "embedding", "--testbed", TB, "--probe-task", "bbc", "--model", model,
               "--finetuned", f"{TB}/models/{task}", "--base", f"{TB}/models/base", "--limit", "100",
               "--train-per-class", "30", "--cache", cache,
               "--pairs", f"{REPO}/crates/ultradelta-eval/data/indomain/{task}.tsv"])
    j = json.loads(out.strip().splitlines()[-1])
    return j

def main():
    # usage: hybrid.py TASK RATIO RANK,RANK,...  (one JSON line per rank on stdout; rank 0 is the default alone)
    task, ratio, ranks = sys.argv[1], sys.argv[2], [int(x) for x in sys.argv[3].split(",")]
    work = f"{WORK}/{task}-{ratio}"
    os.makedirs(work, exist_ok=True)
    cache = f"{WORK}/cache"
    os.makedirs(cache, exist_ok=True)
    base_dir, ft_dir = f"{TB}/models/base", f"{TB}/models/{task}"
    # the default at R
    arc = f"{work}/default.udelta"
    run([UD, "compress", "--base", base_dir, "--finetuned", ft_dir, "--target-ratio", ratio, "--output", arc, "--force"])
    A = os.path.getsize(arc)
    reb = f"{work}/default-rebuilt"
    run([UD, "apply", "--base", base_dir, arc, "--output", reb, "--force"])
    res = {"task": task, "ratio": ratio, "budget_bytes": A, "default": evaluate(task, reb, cache)}
    print(json.dumps({"rank": 0, "bytes": A, "metrics": res["default"].get("indomain", res["default"])}), flush=True)
    base = read_st(f"{base_dir}/model.safetensors")
    ft = read_st(f"{ft_dir}/model.safetensors")
    svds = {}
    for k in ft:
        if ft[k].dtype == np.float32 and lowrank_targets(k, ft[k]):
            d = (ft[k] - base[k]).astype(np.float64)
            u, s, vt = np.linalg.svd(d, full_matrices=False)
            svds[k] = (u, s, vt)
    for r in ranks:
        lr, lr_bytes = {}, 0
        for k, (u, s, vt) in svds.items():
            a = (u[:, :r] * s[:r]).astype(np.float16).astype(np.float32)
            b = vt[:r].astype(np.float16).astype(np.float32)
            lr[k] = a @ b
            lr_bytes += 2 * r * (a.shape[0] + b.shape[1]) + 32  # factors + a record header's worth
        resid_dir = f"{work}/resid-r{r}"
        clone_folder(ft_dir, resid_dir)
        resid = {k: (ft[k] - lr[k]) if k in lr else ft[k] for k in ft}
        write_st(f"{resid_dir}/model.safetensors", resid)
        budget = A - lr_bytes
        if budget <= 0:
            print(json.dumps({"rank": r, "skipped": "low-rank part over budget"}), flush=True)
            continue
        arc_r = f"{work}/resid-r{r}.udelta"
        out = subprocess.run([UD, "compress", "--base", base_dir, "--finetuned", resid_dir, "--target-size", str(budget),
                              "--output", arc_r, "--force"], capture_output=True, text=True)
        if out.returncode != 0:
            print(json.dumps({"rank": r, "skipped": out.stderr.strip()[-300:]}), flush=True)
            continue
        reb_r = f"{work}/hybrid-r{r}"
        run([UD, "apply", "--base", base_dir, arc_r, "--output", reb_r, "--force"])
        rebuilt = read_st(f"{reb_r}/model.safetensors")
        for k in lr:
            rebuilt[k] = rebuilt[k] + lr[k]
        write_st(f"{reb_r}/model.safetensors", rebuilt)
        m = evaluate(task, reb_r, cache)
        total = os.path.getsize(arc_r) + lr_bytes
        print(json.dumps({"rank": r, "bytes": total, "resid_bytes": os.path.getsize(arc_r), "lowrank_bytes": lr_bytes,
                          "metrics": m.get("indomain", m)}), flush=True)
        shutil.rmtree(resid_dir)

if __name__ == "__main__":
    main()
