# writes a copy of the fine-tune whose linear deltas are a seeded-style sample at density p: survivors / p
# ('sample') or survivors fit by least squares to the layer's input second moments ('bbc', 'rand'); optionally
# quantized to `bits` range levels (0: none)
import sys, os; sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '../../2026-12-05-column-density-study'))
import sys, shutil, json, struct, numpy as np
from acts import loadall, T
task, scheme, out = sys.argv[1:4]; p = float(sys.argv[4]); bits = int(sys.argv[5]); seed = int(sys.argv[6])
B = loadall(f'{T}/base/model.safetensors'); F = loadall(f'{T}/{task}/model.safetensors')
Hs = {'bbc': np.load('H_bbc.npz'), 'rand': np.load('H_rand.npz')}
rng = np.random.default_rng(seed)
shutil.rmtree(out, ignore_errors=True); shutil.copytree(f'{T}/{task}', out)
pth = f'{out}/model.safetensors'; fh = open(pth, 'rb'); n = struct.unpack('<Q', fh.read(8))[0]; h = json.loads(fh.read(n)); fh.close()
f = open(pth, 'r+b')
def quant(v):
    if bits == 0 or v.size == 0: return v
    lo, hi = v.min(), v.max(); step = (hi-lo)/(2**bits-1) if hi > lo else 1.0
    return lo + np.round((v-lo)/step)*step
for k in Hs['bbc'].files:
    D = (F[k+'.weight'] - B[k+'.weight']).numpy().astype(np.float64)
    keep = rng.random(D.shape) < p
    Dh = np.zeros_like(D)
    if scheme == 'sample':
        Dh = np.where(keep, D/p, 0.0)
        Dh[keep] = quant(Dh[keep])
    else:
        Hf = Hs[scheme][k]; lam = 1e-3*np.trace(Hf)/Hf.shape[0]
        for i in range(D.shape[0]):
            S = np.flatnonzero(keep[i])
            if len(S): Dh[i, S] = np.linalg.solve(Hf[np.ix_(S, S)] + lam*np.eye(len(S)), Hf[S] @ D[i])
        Dh[keep] = quant(Dh[keep])
    W = (B[k+'.weight'].numpy() + Dh).astype(np.float32)
    e = h[k+'.weight']; f.seek(8+n+e['data_offsets'][0]); f.write(W.tobytes())
f.close()
