# Base-informed seeded positions (2026-12-05): keep probability p_i ∝ g_i from the base, each survivor scaled by
# 1/p_i; prints the Horvitz–Thompson variance relative to uniform positions. Needs numpy only.
import sys, numpy as np
import json, struct
def load_file(p):
    b=open(p,'rb').read(); n=struct.unpack('<Q',b[:8])[0]; h=json.loads(b[8:8+n]); out={}
    for k,v in h.items():
        if k=='__metadata__' or v['dtype']!='F32': continue
        s,e=v['data_offsets']; out[k]=np.frombuffer(b[8+n+s:8+n+e],dtype=np.float32).reshape(v['shape'])
    return out
task = sys.argv[1]
B = load_file('/work/testbed/models/base/model.safetensors')
F = load_file(f'/work/testbed/models/{task}/model.safetensors')
d = 0.03
def ht_var(D2, p):
    return float(np.sum(D2 * (1/p - 1)))
def probs(g, d):
    g = g / g.mean() * d
    for _ in range(20):
        g = np.minimum(g, 1.0); s = g.sum(); 
        if abs(s - d*g.size) < 1e-6*g.size: break
        free = g < 1.0
        g[free] *= (d*g.size - (~free).sum()) / g[free].sum()
    return np.clip(g, 1e-12, 1.0)
tot = {}
for k in sorted(B):
    if B[k].ndim != 2 or 'embeddings' in k: continue
    W = B[k].astype(np.float64); D = F[k].astype(np.float64) - W
    D2 = D*D; n = D.size
    if not D2.any(): continue
    u = ht_var(D2, np.full(D.shape, d))
    rn = np.sqrt((W*W).mean(1, keepdims=True)); cn = np.sqrt((W*W).mean(0, keepdims=True))
    cands = {
      '|W|': np.abs(W) + 1e-3*np.abs(W).mean(),
      'sqrt|W|': np.sqrt(np.abs(W)) + 1e-6,
      'rowcol': rn @ cn,
      'oracle|D|': np.abs(D) + 1e-12,
      'oracle-row': np.broadcast_to(np.sqrt(D2.mean(1, keepdims=True)), D.shape).copy() + 1e-12,
    }
    for name, g in cands.items():
        tot.setdefault(name, [0, 0]); tot[name][0] += ht_var(D2, probs(g.astype(np.float64), d)); tot[name][1] += u
    c = np.corrcoef(np.abs(W).ravel(), np.abs(D).ravel())[0,1]
    tot.setdefault('corr', []).append(c)
print(task, 'corr(|W|,|D|) mean %.3f' % np.nanmean(tot.pop('corr')))
for name, (v, u) in tot.items():
    print('  %-14s variance / uniform %.3f' % (name, v/u))
