# sim3.py TASK OUTDIR SEED [MODE]: each compressed linear tensor gets the default archive's record bits (ranks and
# record bytes from ranks_TASK.txt); MODE lr: low-rank part of the archive's rank (4-bit factors, ~3.5 bits each
# after rANS, one f32 scale per vector) + VQ of the residual in the rest; MODE vq: VQ only in the whole record bits.
# VQ: d=32 blocks along rows, random signs, +-1 codebook of 2^(k-1) words and a sign bit, k per row (k or k+1, to
# fill the bits), one 8-bit gain per row; unbiased rescale per codebook. Word embeddings: 3-bit range sample at
# the archive's density.
import numpy as np, json, struct, sys, shutil, os
task, out = sys.argv[1:3]; seed = int(sys.argv[3]); mode = sys.argv[4] if len(sys.argv) > 4 else 'lr'
T = '/work/testbed/models'; FB = float(os.environ.get('FB', '3.5')); D_ = int(os.environ.get('VQD', '32'))
def load(p):
    f = open(p, 'rb'); n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n)); base = 8 + n; o = {}
    for k, e in h.items():
        if k == '__metadata__' or e['dtype'] != 'F32': continue
        a, b = e['data_offsets']; f.seek(base + a); o[k] = np.frombuffer(f.read(b - a), dtype=np.float32).reshape(e['shape'])
    return o, h, n
B, _, _ = load(f'{T}/base/model.safetensors'); F, h, n = load(f'{T}/{task}/model.safetensors')
RM = float(os.environ.get("RMUL", "1")); RA = int(os.environ.get("RADD", "0"))
info = {l.split()[0]: (int(l.split()[1]), int(round(int(l.split()[2]) * RM)) + (RA if "word" not in l else 0)) for l in open(os.path.join(os.path.dirname(os.path.abspath(__file__)), f'ranks_{task}.txt'))}
dens = {'sre': 0.11533, 'jobs': 0.15052}[task]
r = np.random.default_rng(seed)
def q4(v):  # symmetric 4-bit levels, one scale per vector
    s = np.abs(v).max() / 7; return np.round(v / s).clip(-7, 7) * s
def vq(D, bits):
    m, nn = D.shape; d = D_; nbr = nn // d
    avail = bits - 8 * m                       # row gains
    kf = avail / (m * nbr)                    # bits per block
    k = int(np.floor(kf)); extra = int(round((kf - k) * m))   # rows that get k+1
    sg = np.where(r.random(D.shape) < 0.5, -1.0, 1.0); X = (D * sg)
    rows_hi = np.zeros(m, bool); rows_hi[r.permutation(m)[:extra]] = True
    out = np.zeros_like(X); used = 0
    for kk, sel in ((k, ~rows_hi), (k + 1, rows_hi)):
        if sel.sum() == 0 or kk < 1: continue
        Xs = X[sel].reshape(-1, d); M = 2 ** (kk - 1)
        C = np.where(r.random((M, d)) < 0.5, -1.0, 1.0) / np.sqrt(d)
        S = Xs @ C.T; i = np.abs(S).argmax(1); g = S[np.arange(len(Xs)), i]
        a = np.abs(g).reshape(sel.sum(), -1); g = np.sign(g) * np.repeat(a.mean(1), a.shape[1])
        Xh = g[:, None] * C[i]; alpha = (Xh * Xs).sum() / (Xs ** 2).sum()
        out[sel] = (Xh / alpha).reshape(sel.sum(), nn); used += kk * len(Xs)
    return out * sg, used + 8 * m
shutil.rmtree(out, ignore_errors=True); shutil.copytree(f'{T}/{task}', out)
pth = f'{out}/model.safetensors'; f = open(pth, 'r+b')
def put(k, W):
    e = h[k]; f.seek(8 + n + e['data_offsets'][0]); f.write(np.ascontiguousarray(W, dtype=np.float32).tobytes())
tot_b = tot_used = 0
LW = [float(x) for x in os.environ.get('LAYW', '1,1,1,1,1,1').split(',')]
def lw(k):
    return LW[int(k.split('.')[2])] if k.startswith('encoder.layer.') else 1.0
lin = [k for k in info if 'word_embeddings' not in k]
norm = sum(8 * info[k][0] - 320 for k in lin) / sum((8 * info[k][0] - 320) * lw(k) for k in lin)
for k, (nbytes, rank) in info.items():
    D = (F[k] - B[k]).astype(np.float64)
    if 'word_embeddings' in k:
        lo, hi = D.min(), D.max(); step = (hi - lo) / 7; l = np.clip(np.round((D - lo) / step), 0, 7)
        Dh = np.where(r.random(D.shape) < dens, (lo + l * step) / dens, 0.0); put(k, B[k] + Dh); continue
    bits = (8 * nbytes - 8 * 40) * lw(k) * norm   # record header, roughly; LAYW moves bits between layers
    L = np.zeros_like(D); fbits = 0
    if mode == 'lr' and rank > 0:
        U, s, Vt = np.linalg.svd(D, full_matrices=False)
        for j in range(rank):
            u = q4(U[:, j] * np.sqrt(s[j])); v = q4(Vt[j] * np.sqrt(s[j])); L += np.outer(u, v)
        fbits = rank * (D.shape[0] + D.shape[1]) * FB + rank * 64
    Rh, used = vq(D - L, bits - fbits)
    tot_b += bits; tot_used += used + fbits
    put(k, B[k] + L + Rh)
pk = [k for k in B if 'position_embeddings' in k][0]; put(pk, B[pk]); f.close()
print(task, mode, 'linear bits budget %d used %d' % (tot_b, tot_used), file=sys.stderr)
