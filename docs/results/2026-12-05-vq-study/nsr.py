import numpy as np, sys, os
task=sys.argv[1]; sys.argv=['x',task,'det','/dev/null']
src=open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'sim.py')).read().split('shutil.rmtree')[0]
exec(src)
r=np.random.default_rng(5); num=den=0; numl=denl=0
for k in keys:
    l,lo,step=Q[k]; D=(F[k]-B[k]).astype(np.float64)
    keep=r.random(l.shape)<p; Dh=np.where(keep,(lo+l*step)/p,0.0)
    e=((Dh-D)**2).sum(); s=(D**2).sum()
    num+=e; den+=s
    if 'word' not in k: numl+=e; denl+=s
lin=[k for k in keys if 'word' not in k]
bits_lin=p*sum(B[k].size*H[k] for k in lin)/sum(B[k].size for k in lin)
print(task,'density %.4f'%p,'NSR all %.2f linear %.2f'%(num/den,numl/denl),'linear bits/entry %.3f'%bits_lin,'Gaussian RD-bound NSR at that rate %.2f'%(1/(2**(2*bits_lin)-1)))
