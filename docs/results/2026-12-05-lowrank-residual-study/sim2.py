# quantizer x density at equal level bits (entropy of each tensor's levels), uniform seeded-like positions
import numpy as np,sys,shutil,json,struct
task,scheme,out=sys.argv[1:4]; pbar=float(sys.argv[4]) if len(sys.argv)>4 else 0.118
seed=int(sys.argv[5]) if len(sys.argv)>5 else 1
sys.argv=[sys.argv[0]]
import os; sys.path.insert(0,os.path.join(os.path.dirname(os.path.abspath(__file__)),'..','2026-12-05-column-density-study'))
from acts import loadall,T
B=loadall(f'{T}/base/model.safetensors'); F=loadall(f'{T}/{task}/model.safetensors')
rng=np.random.default_rng(seed)
def H(lev):
    _,c=np.unique(lev,return_counts=True); pr=c/c.sum(); return -(pr*np.log2(pr)).sum()
def range3(x):
    lo,hi=x.min(),x.max(); step=(hi-lo)/7; l=np.round((x-lo)/step); return lo+l*step, H(l)
def sign1(x):
    a=(x*x).sum()/np.abs(x).sum(); return np.sign(x)*a, 1.0
def unif(x,bits_step):   # uniform mid-tread quantizer centred at 0, step = bits_step*std, MMSE-ish recon, projection-unbiased
    s=x.std()*bits_step; l=np.round(x/s); q=l*s; g=(x*x).sum()/(x*q).sum(); return q*g, H(l)
def ternary(x,t):
    T_=t*x.std(); l=np.where(np.abs(x)>T_,np.sign(x),0); a=(x*x).sum()/(np.abs(x)*(l!=0)).sum()
    return l*a, H(l)
shutil.rmtree(out,ignore_errors=True); shutil.copytree(f'{T}/{task}',out)
p_=f'{out}/model.safetensors'; b=open(p_,'rb'); n=struct.unpack('<Q',b.read(8))[0]; h=json.loads(b.read(n)); b.close()
f=open(p_,'r+b'); tot_bits=0; tot_kept=0; N=0
for k in [k[:-7] for k in B if k.startswith('encoder.layer') and k.endswith('.weight') and B[k].ndim==2]:
    D=(F[k+'.weight']-B[k+'.weight']).numpy().astype(np.float64)
    _,H3=range3(D); budget=pbar*D.size*H3
    if scheme=='r3': fn=range3
    elif scheme=='s1': fn=sign1
    elif scheme.startswith('u'): fn=lambda x: unif(x,float(scheme[1:]))
    elif scheme.startswith('t'): fn=lambda x: ternary(x,float(scheme[1:]))
    _,Hs=fn(D); p=min(1.0,budget/(D.size*Hs))
    keep=rng.random(D.shape)<p
    q,_=fn(D[keep]) if scheme!='r3' else (None,None)
    if scheme=='r3':
        lo,hi=D.min(),D.max(); step=(hi-lo)/7; q=(lo+np.round((D-lo)/step)*step)[keep]
    Dh=np.zeros_like(D); Dh[keep]=q/p
    tot_bits+=budget; tot_kept+=keep.sum(); N+=D.size
    W=(B[k+'.weight'].numpy()+Dh).astype(np.float32)
    e=h[k+'.weight']; f.seek(8+n+e['data_offsets'][0]); f.write(W.tobytes())
f.close()
print(scheme,'bits/entry %.4f kept %.4f'%(tot_bits/N,tot_kept/N),file=sys.stderr)
