# patch.py MODEL_DIR FT_DIR MODE [arg]: overwrite MODEL's word-embedding tensor in place
import sys, json, struct, numpy as np
import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); from st import load
mdir, ftdir, mode = sys.argv[1], sys.argv[2], sys.argv[3]
K='embeddings.word_embeddings.weight'
p=mdir+'/model.safetensors'
with open(p,'r+b') as f:
    n=struct.unpack('<Q',f.read(8))[0]; h=json.loads(f.read(n)); a,b=h[K]['data_offsets']
    f.seek(8+n+a); cur=np.frombuffer(f.read(b-a),dtype=np.float32).reshape(h[K]['shape']).copy()
    ft=load(ftdir+'/model.safetensors')[K]; base=load('' + os.environ.get('TESTBED', '/work/testbed') + '/models/base/model.safetensors')[K]
    d=ft.astype(np.float64)-base
    if mode=='exact': new=ft
    elif mode=='base': new=base
    elif mode=='hot':  # hot rows exact, others base
        q=float(sys.argv[4]); e=(d**2).sum(1); thr=np.quantile(e,1-q); new=np.where((e>=thr)[:,None],ft,base)
    elif mode=='hotkeep':  # hot rows exact, others as archive
        q=float(sys.argv[4]); e=(d**2).sum(1); thr=np.quantile(e,1-q); new=np.where((e>=thr)[:,None],ft,cur)
    err=((cur.astype(np.float64)-ft)**2).sum()/ (d**2).sum()
    print('archive emb error / energy', round(err,3), file=sys.stderr)
    f.seek(8+n+a); f.write(np.ascontiguousarray(new,dtype=np.float32).tobytes())
