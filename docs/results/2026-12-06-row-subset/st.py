import json, struct, numpy as np
def load(path):
    with open(path,'rb') as f:
        n=struct.unpack('<Q',f.read(8))[0]; h=json.loads(f.read(n)); data=f.read()
    out={}
    for k,v in h.items():
        if k=='__metadata__': continue
        a,b=v['data_offsets']; dt={'F32':np.float32,'F16':np.float16,'I64':np.int64}[v['dtype']]
        out[k]=np.frombuffer(data[a:b],dtype=dt).reshape(v['shape'])
    return out
