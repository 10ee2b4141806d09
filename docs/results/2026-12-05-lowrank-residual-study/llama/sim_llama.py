# Low-rank (quantized SVD factors) + seeded sparse residual vs the plain seeded sparse code, at equal bits per
# tensor (the real archive's record bytes), on the LLaMA testbed (SmolLM2-135M, bf16).
# Usage: sim_llama.py MOOD RATIO[,RATIO] SEEDS(e.g. 1,2) ARMS(e.g. base,b4,b5[,base+emb])
# Writes simulated models to /work/study2/llama/scratch/<mood>-<ratio>-<arm>-s<seed>/, evaluates them with the
# harness's exact `ultradelta-eval perplexity` invocation, appends to results.txt, deletes the folder.
import numpy as np, sys, os, json, struct, shutil, subprocess, time, pickle
import torch
torch.set_num_threads(1)

T = '/work/testbed'
M = f'{T}/llama/models'
W = '/work/study2/llama'
EVAL = '/work/main/target/release/ultradelta-eval'
BITS = 3
RMAX = 16
FIT_SAMPLE = 1 << 15


# ---------- safetensors (bf16) by hand ----------
def header(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        return n, json.loads(f.read(n))


def load_bf16(path, names):
    n, h = header(path)
    out = {}
    with open(path, 'rb') as f:
        for k in names:
            e = h[k]
            a, b = e['data_offsets']
            f.seek(8 + n + a)
            raw = np.frombuffer(f.read(b - a), dtype=np.uint16)
            out[k] = (raw.astype(np.uint32) << 16).view(np.float32).reshape(e['shape'])
    return out


def to_bf16_bytes(x):
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16).view(torch.int16).numpy().tobytes()


# ---------- quantizers ----------
def entropy_counts(c):
    c = c[c > 0]
    pr = c / c.sum()
    return float(-(pr * np.log2(pr)).sum())


def levels_of(x, lo, step, mx):
    return np.clip(np.round((x - lo) / step), 0, mx)


def fit_mse_unbiased(x, bits=BITS):
    """The project's `mse-unbiased` placement (crates/ultradelta-qgp/src/fit.rs), in float64: range fit first,
    then levels centred on the mean of a strided sample of 32,768 entries, step by a geometric grid search (2^(1/2)
    coarse from rms/2^min(bits+3,8) to the range step, then 2^(1/16) fine), never wider than the range step; the
    projection gain sum x^2 / sum x Q(x) on the sample (1 outside [1, 4]). Returns (lo, step, max_level, gain)."""
    flat = x.ravel()
    mx = 2 ** bits - 1
    lo_r, hi_r = float(flat.min()), float(flat.max())
    widest = (hi_r - lo_r) / mx
    if widest == 0:
        return lo_r, 1.0, mx, 1.0
    n = flat.size
    m = min(n, FIT_SAMPLE)
    s = flat[(np.arange(m, dtype=np.int64) * n) // m].astype(np.float64)
    mean = s.mean()
    rms = np.sqrt(((s - mean) ** 2).mean())

    def err(lo, st):
        return float(((lo + levels_of(s, lo, st, mx) * st - s) ** 2).sum())

    def cand(st):
        st = min(st, widest)
        return (mean - st * mx / 2.0, st)

    coarse = [(lo_r, widest)]
    st = rms / 2 ** min(bits + 3, 8)
    while st < widest:
        coarse.append(cand(st))
        st *= np.sqrt(2)
    coarse.append(cand(widest))
    best = min(coarse, key=lambda c: err(*c))  # earliest on ties
    centre = best[1]
    fine = [best] + [cand(centre * 2 ** (k / 16)) for k in range(-8, 9) if k != 0]
    lo, st = min(fine, key=lambda c: err(*c))
    q = lo + levels_of(s, lo, st, mx) * st
    g = float((s * s).sum() / (s * q).sum())
    if not (np.isfinite(g) and 1.0 <= g <= 4.0):
        g = 1.0
    return lo, st, mx, g


def code_stats(R):
    """Baseline code of a matrix R: its 3-bit mse-unbiased levels over all entries. Returns the level entropy,
    ||R||^2, the quantizer's squared error ||Q(R) - R||^2 (without the gain) and the quantizer."""
    lo, st, mx, g = fit_mse_unbiased(R)
    lev = levels_of(R, lo, st, mx)
    H = entropy_counts(np.bincount(lev.astype(np.int64).ravel(), minlength=mx + 1).astype(np.float64))
    qn = float(((lo + lev * st - R) ** 2).sum())
    return H, float((R * R).sum()), qn, (lo, st, mx, g)


def qvec(v, b):
    """Symmetric uniform quantizer, levels -L..L, L = 2^(b-1)-1, scale max|v|/L; cost = entropy bits * length + 32."""
    m = np.abs(v).max()
    L = 2 ** (b - 1) - 1
    if m == 0:
        return np.zeros_like(v), 32.0
    l = np.round(v / m * L)
    _, c = np.unique(l, return_counts=True)
    return l * m / L, entropy_counts(c.astype(np.float64)) * v.size + 32.0


def factors(U, S, Vt, r, b):
    Lh = np.zeros((U.shape[0], Vt.shape[1]))
    bits = 512.0 if r > 0 else 0.0
    for i in range(r):
        u, bu = qvec(U[:, i] * np.sqrt(S[i]), b)
        v, bv = qvec(Vt[i] * np.sqrt(S[i]), b)
        Lh += np.outer(u, v)
        bits += bu + bv
    return Lh, bits


# ---------- per-mood statistics (ratio independent) ----------
def sim_names(mood, ratio):
    info = json.load(open(f'{W}/{mood}-{ratio}.json'))
    rec = {t['name']: t for t in info['tensors']}
    names = [k for k, t in rec.items() if t['policy'] == 'compress' and t['kind'] == 'sparse-seeded-rans'
             and '.layers.' in k and len(t['shape']) == 2]
    return names, rec


def mood_stats(mood, names, bs=(4, 5)):
    path = f'{W}/stats-{mood}.pkl'
    if os.path.exists(path):
        return pickle.load(open(path, 'rb'))
    t0 = time.time()
    B = load_bf16(f'{M}/base/model.safetensors', names)
    F = load_bf16(f'{M}/{mood}/model.safetensors', names)
    st = {}
    for k in names:
        D = F[k].astype(np.float64) - B[k].astype(np.float64)
        U, S, Vt = np.linalg.svd(D, full_matrices=False)
        e = {'numel': D.size, 'r0': code_stats(D)[:3]}
        for b in bs:
            rows = []
            Lh = np.zeros_like(D)
            bits = 512.0
            for i in range(RMAX):
                u, bu = qvec(U[:, i] * np.sqrt(S[i]), b)
                v, bv = qvec(Vt[i] * np.sqrt(S[i]), b)
                Lh += np.outer(u, v)
                bits += bu + bv
                H, rr, qn, _ = code_stats(D - Lh)
                rows.append((i + 1, bits, H, rr, qn))
            e[b] = rows
        st[k] = e
    print(f'stats {mood}: {time.time() - t0:.0f}s', file=sys.stderr, flush=True)
    pickle.dump(st, open(path, 'wb'))
    return st


def choose(e, budget, b):
    """Rank minimising ||R||^2 (1/p - 1) + qn/p at the residual's density p (sim3.py's rule); r = 0 for the
    baseline arm (b None). Returns (r, p, factor bits)."""
    H, rr, qn = e['r0']
    N = e['numel']
    p = min(1.0, budget / (N * H))
    best = (rr * (1 / p - 1) + qn / p, 0, p, 0.0)
    if b is None:
        return best[1:]
    for r, bits, H, rr, qn in e[b]:
        p = (budget - bits) / (N * H)
        if p <= 0.01:
            break
        p = min(1.0, p)
        V = rr * (1 / p - 1) + qn / p
        if V < best[0]:
            best = (V, r, p, bits)
    return best[1:]


def arm_b(arm):
    return {'base': None, 'base+emb': None, 'b4': 4, 'b5': 5}[arm]


def build(mood, ratio, arms, seeds, names, rec, st):
    """Writes one model folder per (arm, seed); returns {(arm, seed): (folder, ranks)}."""
    emb = 'model.embed_tokens.weight'
    allnames = names + ([emb] if any(a == 'base+emb' for a in arms) else [])
    B = load_bf16(f'{M}/base/model.safetensors', allnames)
    F = load_bf16(f'{M}/{mood}/model.safetensors', allnames)
    n, h = header(f'{M}/{mood}/model.safetensors')
    outs, fh = {}, {}
    for a in arms:
        for s in seeds:
            d = f'{W}/scratch/{mood}-{ratio}-{a}-s{s}'
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(f'{M}/{mood}', d)
            fh[(a, s)] = open(f'{d}/model.safetensors', 'r+b')
            outs[(a, s)] = [d, []]
    for ti, k in enumerate(allnames):
        budget = (rec[k]['bytes'] - 100) * 8.0
        Df = F[k].astype(np.float64) - B[k].astype(np.float64)
        svd = None
        us = {s: np.random.default_rng([s, ti]).random(Df.shape) for s in seeds}  # common draws across arms
        for a in arms:
            if k == emb and a != 'base+emb':
                continue
            b = arm_b(a)
            if k == emb:
                H, rr, qn, _ = code_stats(Df)
                r, p, bits = 0, min(1.0, budget / (Df.size * H)), 0.0
            else:
                r, p, bits = choose(st[k], budget, b)
            if r > 0:
                if svd is None:
                    svd = np.linalg.svd(Df, full_matrices=False)
                Lh, bits2 = factors(*svd, r, b)
                assert abs(bits2 - bits) < 1e-6 * max(1, bits), (bits, bits2)
            else:
                Lh = 0.0
            R = Df - Lh
            lo, stp, mx, g = fit_mse_unbiased(R)
            Q = lo + levels_of(R, lo, stp, mx) * stp
            for s in seeds:
                Dh = Lh + np.where(us[s] < p, Q * (g / p), 0.0)
                W_ = B[k].astype(np.float64) + Dh
                e = h[k]
                fh[(a, s)].seek(8 + n + e['data_offsets'][0])
                fh[(a, s)].write(to_bf16_bytes(W_))
                if k != emb:
                    outs[(a, s)][1].append(r)
    for f in fh.values():
        f.close()
    return outs


def evaluate(mood, model):
    cmd = [EVAL, 'perplexity', '--testbed', T, '--task', mood, '--model', model, '--base', f'{M}/base',
           '--finetuned', f'{M}/{mood}', '--limit', '16', '--general-limit', '3', '--cache', f'{W}/cache']
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def rank_summary(ranks):
    r = np.array(ranks)
    return f'mean_r={r.mean():.2f} nz={int((r > 0).sum())}/{r.size} max={r.max()} hist={np.bincount(r).tolist()}'


def main():
    mood, ratios, seeds, arms = sys.argv[1], sys.argv[2].split(','), [int(x) for x in sys.argv[3].split(',')], sys.argv[4].split(',')
    names, _ = sim_names(mood, ratios[0])
    st = mood_stats(mood, names)
    for ratio in ratios:
        names, rec = sim_names(mood, ratio)
        t0 = time.time()
        outs = build(mood, ratio, arms, seeds, names, rec, st)
        print(f'build {mood} {ratio}: {time.time() - t0:.0f}s', file=sys.stderr, flush=True)
        for (a, s), (d, ranks) in outs.items():
            res = evaluate(mood, d)
            line = (f'mood={mood} ratio={ratio} arm={a} b={arm_b(a) or "-"} seed={s} {rank_summary(ranks)} '
                    f'retention_x100={100 * res["retention"]:.2f} general_drift={res["general_drift"]:.4f} '
                    f'response_ppl={res["response_ppl"]:.4f} general_ppl={res["general_ppl"]:.3f}')
            print(line, flush=True)
            with open(f'{W}/results.txt', 'a') as f:
                f.write(line + '\n')
            shutil.rmtree(d)


if __name__ == '__main__':
    main()
