import numpy as np,sys
sys.argv=[sys.argv[0]]
from acts import loadall,T
A=np.load('acts_base.npz')
B=loadall(f'{T}/base/model.safetensors')
for task in ['sre','jobs']:
    F=loadall(f'{T}/{task}/model.safetensors')
    tot={}
    for k in A.files:
        D=(F[k+'.weight']-B[k+'.weight']).numpy().astype(np.float64)
        s=A[k]; Dw=D*s[None,:]   # weight columns by input rms: the output-error metric
        m,n=D.shape
        U,S,Vt=np.linalg.svd(D,full_matrices=False)
        E=(Dw**2).sum()
        budget_bits=m*n*32/132.5*0.9   # ~90% of the compressed bytes are levels
        for fb in [16,8,5]:
          for r in [0,1,2,4,8,16]:
            L=(U[:,:r]*S[:r])@Vt[:r]; R=D-L; Rw=R*s[None,:]
            cost=r*(m+n)*fb
            d=(budget_bits-cost)/(1.82*m*n)
            V=((Rw**2).sum()*(1/d-1)) if d>0 else np.inf
            tot[(fb,r)]=tot.get((fb,r),0)+V
    base=tot[(16,0)]
    for fb in [16,8,5]:
        print(task,'factor bits',fb,' '.join('r%d %.3f'%(r,tot[(fb,r)]/base) for r in [0,1,2,4,8,16]))
