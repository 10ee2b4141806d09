# Least-squares scale of each compressed linear tensor's rebuilt delta: c* = <D, Dhat> / ||Dhat||^2 (1 = today's 1/(1-s) scale)
import json, struct, sys, numpy as np
def load(p):
    b=open(p,'rb').read(); n=struct.unpack('<Q',b[:8])[0]; h=json.loads(b[8:8+n]); out={}
    for k,v in h.items():
        if k=='__metadata__' or v['dtype']!='F32': continue
        s,e=v['data_offsets']; out[k]=np.frombuffer(b[8+n+s:8+n+e],dtype=np.float32).reshape(v['shape']).astype(np.float64)
    return out
B=load('/work/testbed/models/base/model.safetensors'); F=load(sys.argv[1]+'/model.safetensors'); R=load(sys.argv[2]+'/model.safetensors')
cs=[];ws=[];dens=[]
for k in B:
    if B[k].ndim!=2 or 'embeddings' in k: continue
    D=F[k]-B[k]; H=R[k]-B[k]
    if not H.any(): continue
    cs.append((D*H).sum()/(H*H).sum()); ws.append(D.size); dens.append((H!=0).mean())
cs=np.array(cs); ws=np.array(ws)
print('tensors',len(cs),'LS scale c* (x today) weighted mean %.4f, range %.4f..%.4f; kept density mean %.4f'%((cs*ws).sum()/ws.sum(), cs.min(), cs.max(), np.average(dens,weights=ws)))
