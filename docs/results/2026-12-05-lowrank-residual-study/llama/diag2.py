# On the tensors where the hybrid picks r > 0 (elsewhere both arms write the same values): realized squared error
# ||D_hat - D||^2 (seeds 1, 2, same draws as the runs) and the expectation's projection <D, E[D_hat]> / ||D||^2.
import sys, pickle, numpy as np
mood, ratio, b = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.argv = [sys.argv[0]]
sys.path.insert(0, '/work/study2/llama')
from sim_llama import *
names, rec = sim_names(mood, ratio)
st = pickle.load(open(f'{W}/stats-{mood}.pkl', 'rb'))
B = load_bf16(f'{M}/base/model.safetensors', names); F = load_bf16(f'{M}/{mood}/model.safetensors', names)
acc = np.zeros((2, 5))  # arm x [D2, proj, err s1, err s2, low-rank part's proj]
for ti, k in enumerate(names):
    budget = (rec[k]['bytes'] - 100) * 8.0
    r, p, bits = choose(st[k], budget, b)
    if r == 0: continue
    D = F[k].astype(np.float64) - B[k]
    us = {s: np.random.default_rng([s, ti]).random(D.shape) for s in (1, 2)}
    for ai, (rr, pp) in enumerate([(0, choose(st[k], budget, None)[1]), (r, p)]):
        Lh = factors(*np.linalg.svd(D, full_matrices=False), rr, b)[0] if rr else 0.0
        R = D - Lh; lo, stp, mx, g = fit_mse_unbiased(R); Q = (lo + levels_of(R, lo, stp, mx) * stp) * g
        E = Lh + Q
        row = [(D * D).sum(), (D * E).sum()] + [((Lh + np.where(us[s] < pp, Q / pp, 0) - D) ** 2).sum() for s in (1, 2)] + [(D * Lh).sum() if rr else 0]
        acc[ai] += row
for ai, name in enumerate(['base', f'b{b}']):
    D2 = acc[ai, 0]
    print(f'{mood} {ratio} {name}: on the r>0 tensors: <D,E[Dhat]>/|D|^2={acc[ai,1]/D2:.4f} (low-rank part {acc[ai,4]/D2:.4f}); realized |Dhat-D|^2/|D|^2 seed1 {acc[ai,2]/D2:.3f} seed2 {acc[ai,3]/D2:.3f}')
