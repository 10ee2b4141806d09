# per-tensor equal-bytes: budget from a real archive's record bytes. arms: r0 (plain seeded sparse, 3-bit range) / hybrid (quantized low-rank + residual)
import numpy as np,sys,shutil,json,struct,subprocess
task,arch,fb,rmax,out,seed=sys.argv[1],sys.argv[2],int(sys.argv[3]),int(sys.argv[4]),sys.argv[5],int(sys.argv[6])
lam=float(sys.argv[7]) if len(sys.argv)>7 else 1.0
sys.argv=[sys.argv[0]]
import os; sys.path.insert(0,os.path.join(os.path.dirname(os.path.abspath(__file__)),'..','2026-12-05-column-density-study'))
from acts import loadall,T
B=loadall(f'{T}/base/model.safetensors'); F=loadall(f'{T}/{task}/model.safetensors')
info={t['name']:t for t in json.loads(subprocess.check_output([os.environ.get('ULTRADELTA','target/release/ultradelta'),'inspect','--json',arch]))['tensors']}
rng=np.random.default_rng(seed)
def H(lev):
    _,c=np.unique(lev,return_counts=True); pr=c/c.sum(); return -(pr*np.log2(pr)).sum()
def qvec(v,b):
    m=np.abs(v).max(); L=2**(b-1)-1; l=np.round(v/m*L); return l*m/L, H(l)*v.size+32
def r3(R):
    lo,hi=R.min(),R.max(); step=(hi-lo)/7; lev=np.round((R-lo)/step); return lo,step,lev
shutil.rmtree(out,ignore_errors=True); shutil.copytree(f'{T}/{task}',out)
p_=f'{out}/model.safetensors'; b=open(p_,'rb'); n=struct.unpack('<Q',b.read(8))[0]; h=json.loads(b.read(n)); b.close()
f=open(p_,'r+b'); ranks=[]; kept=0; N=0; fbits=0; tb=0
for k,e in h.items():
    if k=='__metadata__' or k not in info or info[k]['kind']!='sparse-seeded-rans' or 'word_embeddings' in k: continue
    D=(F[k].numpy().astype(np.float64)-B[k].numpy().astype(np.float64))
    budget=(info[k]['bytes']-100)*8; tb+=budget
    U,S,Vt=np.linalg.svd(D,full_matrices=False)
    best=None; Lh=np.zeros_like(D); bits=0
    for r in range(0,rmax+1):
        if r:
            u,bu=qvec(U[:,r-1]*np.sqrt(S[r-1]),fb); v,bv=qvec(Vt[r-1]*np.sqrt(S[r-1]),fb); Lh=Lh+np.outer(u,v); bits+=bu+bv+(512 if r==1 else 0)
        R=D-Lh; lo,step,lev=r3(R); HR=H(lev); p=(budget-bits)/(D.size*HR); pc=(budget-lam*bits)/(D.size*HR)
        if p<=0.005: break
        p=min(p,1.0)
        pc=min(max(pc,1e-3),1.0); V=(R*R).sum()*(1/pc-1)+((lo+lev*step-R)**2).sum()/pc
        if best is None or V<best[0]: best=(V,r,Lh.copy(),R,p,bits)
    V,r,Lh,R,p,bits=best; ranks.append(r); fbits+=bits
    lo,step,lev=r3(R); keep=rng.random(D.shape)<p
    Dh=Lh+np.where(keep,(lo+lev*step)/p,0.0); kept+=keep.sum(); N+=D.size
    W=(B[k].numpy()+Dh).astype(np.float32)
    f.seek(8+n+e['data_offsets'][0]); f.write(W.tobytes())
f.close()
print('ranks',''.join(str(min(r,9)) for r in ranks),'kept %.4f factor-share %.3f'%(kept/N,fbits/tb),file=sys.stderr,end=' ')
