import sys, json, struct, glob, numpy as np
import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); from st import load
def rule(d):
    e=(d.astype(np.float64)**2).sum(1); n=np.sqrt(e); m=np.median(n)
    hot = n>0 if m==0 else n>4*m
    h=hot.sum(); tot=e.sum()
    if tot==0 or h==0 or h>len(n)//2: return None
    cold=e[~hot].sum()/tot
    return (int(h), len(n), cold) if cold<=0.02 else ('rejected', int(h), round(cold,3))
b=load('/work/testbed/models/base/model.safetensors')
for ft in ['sre','jobs','bbc','spam']:
    f=load(f'/work/testbed/models/{ft}/model.safetensors')
    for k in b:
        if b[k].ndim==2 and k in f and f[k].shape==b[k].shape:
            r=rule(f[k].astype(np.float64)-b[k])
            if r: print(ft,k,r)
def getbf(p):
    f=open(p,'rb'); n=struct.unpack('<Q',f.read(8))[0]; h=json.loads(f.read(n)); data=f.read(); out={}
    for k,v in h.items():
        if k=='__metadata__' or v['dtype']!='BF16': continue
        a,bb=v['data_offsets']; raw=np.frombuffer(data[a:bb],dtype=np.uint16); out[k]=(raw.astype(np.uint32)<<16).view(np.float32).reshape(v['shape'])
    return out
L='/work/testbed/llama/models'; lb=getbf(glob.glob(L+'/base/*.safetensors')[0])
for m in ['zen','drunk']:
    lf=getbf(glob.glob(L+f'/{m}/*.safetensors')[0]); c=0
    for k in lb:
        if lb[k].ndim==2:
            r=rule(lf[k].astype(np.float64)-lb[k])
            if r: print(m,k,r); c+=1
    print(m,'llama triggered',c)
