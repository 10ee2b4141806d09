# rows.py gather FT OUTDIR  -> OUTDIR/{base,ft}/model.safetensors with the hot rows of the word-embedding delta;
#                              prints "H rowbytes" (hot rows, zstd size of the row list as a bitmap)
# rows.py scatter MODEL FT REBUILT_GATHERED -> MODEL's word embeddings: hot rows = base + decoded gathered delta
import sys, json, struct, numpy as np, os, shutil, subprocess
import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); from st import load
K='embeddings.word_embeddings.weight'; BASE=os.environ.get('TESTBED', '/work/testbed') + '/models/base'
def hot_rows(ft):
    b=load(BASE+'/model.safetensors')[K].astype(np.float64); f=load(ft+'/model.safetensors')[K]
    rn=np.sqrt(((f-b)**2).sum(1)); return np.nonzero(rn>4*np.median(rn))[0]
def write(path, arr):
    h={K:{'dtype':'F32','shape':list(arr.shape),'data_offsets':[0,arr.nbytes]}}; hb=json.dumps(h).encode(); hb+=b' '*((8-len(hb)%8)%8)
    with open(path,'wb') as f: f.write(struct.pack('<Q',len(hb))); f.write(hb); f.write(np.ascontiguousarray(arr,dtype=np.float32).tobytes())
if sys.argv[1]=='gather':
    ft,out=sys.argv[2],sys.argv[3]; rows=hot_rows(ft)
    b=load(BASE+'/model.safetensors')[K]; f=load(ft+'/model.safetensors')[K]
    for name,arr in [('base',b[rows]),('ft',f[rows])]:
        os.makedirs(f'{out}/{name}',exist_ok=True); write(f'{out}/{name}/model.safetensors',arr); shutil.copy(BASE+'/config.json',f'{out}/{name}/config.json')
    bm=np.zeros(b.shape[0],dtype=bool); bm[rows]=True
    z=subprocess.run(['zstd','-19','-c'],input=np.packbits(bm).tobytes(),capture_output=True).stdout
    np.save(f'{out}/rows.npy',rows); print(len(rows), len(z))
else:
    model,ft,reb=sys.argv[2],sys.argv[3],sys.argv[4]; rows=np.load(os.path.dirname(reb.rstrip('/'))+'/rows.npy')
    g=load(reb+'/model.safetensors')[K]; gb=load(os.path.dirname(reb.rstrip('/'))+'/base/model.safetensors')[K]
    p=model+'/model.safetensors'
    with open(p,'r+b') as f:
        n=struct.unpack('<Q',f.read(8))[0]; h=json.loads(f.read(n)); a,_=h[K]['data_offsets']; C=h[K]['shape'][1]
        for i,r in enumerate(rows):
            f.seek(8+n+a+int(r)*C*4); f.write(np.ascontiguousarray(g[i],dtype=np.float32).tobytes())
