import numpy as np,sys
sys.argv=[sys.argv[0]]
from acts import loadall,T  # run from this folder after acts.py
A=np.load('acts_base.npz')
B=loadall(f'{T}/base/model.safetensors')
def norm_p(w,pbar):
    # scale weights w (same shape as target) so mean p = pbar with cap 1
    p=w/w.mean()*pbar
    for _ in range(50):
        p=np.minimum(p,1); sc=pbar*p.size/p.sum(); p=p*sc
    return np.minimum(p,1)
def V(D2s,p): return (D2s*(1-p)/p).sum()
pbar=0.118
for task in ['sre','jobs']:
    F=loadall(f'{T}/{task}/model.safetensors')
    tot={}
    for k in A.files:
        D=(F[k+'.weight']-B[k+'.weight']).numpy(); s=A[k]
        l=k.split('.')[2]
        if 'self' in k or 'intermediate' in k:
            ln = 'embeddings.LayerNorm' if (l=='0' and 'self' in k) else (f'encoder.layer.{int(l)-1}.output.LayerNorm' if 'self' in k else f'encoder.layer.{l}.attention.output.LayerNorm')
            g=np.sqrt(B[ln+'.weight'].numpy()**2+B[ln+'.bias'].numpy()**2)
        else: g=np.ones_like(s)
        D2s=D**2*s[None,:]**2
        cn=np.sqrt(D2s.sum(0)); rn=np.sqrt(D2s.sum(1))
        sch={'u':np.full(D.shape,pbar),
             'ocol':norm_p(np.broadcast_to(cn[None,:],D.shape).copy(),pbar),
             'scol':norm_p(np.broadcast_to(s[None,:],D.shape).copy(),pbar),
             'gcol':norm_p(np.broadcast_to(g[None,:],D.shape).copy(),pbar),
             'orc':norm_p(np.outer(rn,cn),pbar)}
        v={n:V(D2s,p) for n,p in sch.items()}
        for n in v: tot[n]=tot.get(n,0)+v[n]
        kind=k.split('.',3)[3]
        print(task,k,' '.join('%s %.2f'%(n,v[n]/v['u']) for n in v))
    print(task,'TOTAL',' '.join('%s %.3f'%(n,tot[n]/tot['u']) for n in tot))
