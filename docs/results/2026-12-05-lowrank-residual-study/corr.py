import numpy as np,sys,os
sys.argv=[sys.argv[0]]
sys.path.insert(0,os.path.join(os.path.dirname(os.path.abspath(__file__)),'..','2026-12-05-column-density-study'))
from acts import loadall,T
B=loadall(f'{T}/base/model.safetensors')
for task in ['sre','jobs']:
    F=loadall(f'{T}/{task}/model.safetensors')
    cs=[];qs=[];kur=[]
    rng=np.random.default_rng(0)
    for k in [k[:-7] for k in B if k.startswith('encoder.layer') and k.endswith('.weight') and B[k].ndim==2]:
        W=B[k+'.weight'].numpy().astype(np.float64)
        D=(F[k+'.weight'].numpy().astype(np.float64)-W)
        c=(D*W).sum()/np.sqrt((D*D).sum()*(W*W).sum()); cs.append(c)
        p=0.118; m=rng.random(D.shape)<p; x=D[m]
        lo,hi=x.min(),x.max(); step=(hi-lo)/7; q=lo+np.round((x-lo)/step)*step
        qs.append(((q-x)**2).sum()/(x**2).sum()); kur.append((x**4).mean()/(x**2).mean()**2)
        lev=np.round((x-lo)/step).astype(int); pr=np.bincount(lev,minlength=8)/len(lev); H=-(pr[pr>0]*np.log2(pr[pr>0])).sum()
        if k.endswith('layer.5.output.dense') or k.endswith('layer.0.attention.self.query'): print(task,k,'corr',round(c,4),'qrel',round(qs[-1],3),'kurt',round(kur[-1],1),'H',round(H,2),'levels',np.round(pr,3))
    print(task,'corr(D,W) range',np.min(cs),np.max(cs),'mean',np.mean(cs))
    print(task,'quant MSE / energy of kept: mean',np.mean(qs),'range',np.min(qs),np.max(qs),'kurtosis mean',np.mean(kur))
