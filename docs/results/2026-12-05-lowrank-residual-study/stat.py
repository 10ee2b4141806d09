import numpy as np,sys
import os; sys.path.insert(0,os.path.join(os.path.dirname(os.path.abspath(__file__)),'..','2026-12-05-column-density-study'))
from acts import loadall,T
B=loadall(f'{T}/base/model.safetensors')
for task in ['sre','jobs']:
    F=loadall(f'{T}/{task}/model.safetensors')
    for k in [k[:-7] for k in B if k.startswith('encoder.layer') and k.endswith('.weight') and B[k].ndim==2][:36:5]:
        D=(F[k+'.weight']-B[k+'.weight']).numpy().astype(np.float64)
        E=(D*D).sum(); rm=D.mean(1,keepdims=True); cm=D.mean(0,keepdims=True)
        S=np.linalg.svd(D,compute_uv=False)
        print(task,k[14:],D.shape,'mean/std %.3f'%(D.mean()/D.std()),'rowmean %.3f colmean %.3f'%((rm**2).sum()*D.shape[1]/E,(cm**2).sum()*D.shape[0]/E),'rank1 %.3f rank4 %.3f'%(S[0]**2/E,(S[:4]**2).sum()/E))
