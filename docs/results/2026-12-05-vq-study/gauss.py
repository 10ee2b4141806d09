import numpy as np
r=np.random.default_rng(0)
n=32*20000
x=r.standard_normal(n)
for d,k in [(16,4),(32,7),(32,8),(64,14)]:
    if d==64: continue
    X=x[:n//d*d].reshape(-1,d); M=2**(k-1)
    C=r.standard_normal((M,d)); C/=np.linalg.norm(C,axis=1,keepdims=True)
    S=X@C.T; i=np.abs(S).argmax(1); g=S[np.arange(len(X)),i]
    Xh=g[:,None]*C[i]
    a=(g**2).sum()/(X**2).sum()   # captured fraction = alpha
    Xt=Xh/a
    nsr=((Xt-X)**2).sum()/(X**2).sum()
    R=k/d
    # const gain per tensor: |g| replaced by its mean
    Xc=(np.sign(g)*np.abs(g).mean())[:,None]*C[i]; ac=(Xc*X).sum()/(X**2).sum(); nsr_c=((Xc/ac-X)**2).sum()/(X**2).sum()
    print(f'd={d} k={k} R={R:.3f} captured {a:.3f} (RD {1-2**(-2*R):.3f}) NSR unbiased {nsr:.2f} const-gain {nsr_c:.2f} bound {1/(2**(2*R)-1):.2f}; sampling p=R/2 NSR {(1-R/2)/(R/2):.2f}')
