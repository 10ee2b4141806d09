# expected output-error energy sum_i (d_i - dhat_i) H (d_i - dhat_i)^T over the linear layers, H from BBC texts:
# unbiased seeded sample (survivors / p) vs least-squares survivors fit with H_fit (BBC itself = oracle, random tokens
# = data-free), same positions; no quantization. usage: gain.py TASK [P] [H of the truth: bbc (default), sre, jobs]
import sys, os; sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '../../2026-12-05-column-density-study'))
import sys, numpy as np
from acts import loadall, T
task = sys.argv[1]; p = float(sys.argv[2]) if len(sys.argv) > 2 else 0.118
B = loadall(f'{T}/base/model.safetensors'); F = loadall(f'{T}/{task}/model.safetensors')
Hb = np.load('H_bbc.npz'); Hr = np.load('H_rand.npz'); Ht = np.load(f'H_{sys.argv[3]}.npz') if len(sys.argv) > 3 else Hb
rng = np.random.default_rng(1)
tot = {'sample': 0.0, 'lsq-bbc': 0.0, 'lsq-rand': 0.0, 'lsq-diag': 0.0, 'zero': 0.0}
for k in Hb.files:
    D = (F[k+'.weight'] - B[k+'.weight']).numpy().astype(np.float64)
    H = Ht[k]; Hf = {'lsq-bbc': Hb[k], 'lsq-rand': Hr[k], 'lsq-diag': np.diag(np.diag(Hb[k]))}
    keep = rng.random(D.shape) < p
    tot['sample'] += (D**2 * np.diag(H)[None, :]).sum() * (1-p)/p
    tot['zero'] += np.einsum('ij,jk,ik->', D, H, D)
    for name, Hfit in Hf.items():
        lam = 1e-3 * np.trace(Hfit) / Hfit.shape[0]
        err = 0.0
        for i in range(D.shape[0]):
            S = np.flatnonzero(keep[i])
            if len(S) == 0:
                e = D[i]
            else:
                v = np.linalg.solve(Hfit[np.ix_(S, S)] + lam*np.eye(len(S)), Hfit[S] @ D[i])
                e = D[i].copy(); e[S] -= v
            err += e @ H @ e
        tot[name] += err
    print(k, {n: round(v/tot['zero'], 3) for n, v in tot.items()}, flush=True, file=sys.stderr)
print(task, p, 'error energy / energy of the delta\'s action (zero = dropping the delta):', {n: round(v/tot['zero'], 3) for n, v in tot.items()})
