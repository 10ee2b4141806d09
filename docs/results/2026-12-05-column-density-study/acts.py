# per-channel input RMS of every linear layer of MiniLM, from a torch forward on BBC training texts
import json,struct,numpy as np,sys,re,torch,unicodedata
torch.set_num_threads(1)
T='/work/testbed/models'
def loadall(p):
    b=open(p,'rb'); n=struct.unpack('<Q',b.read(8))[0]; h=json.loads(b.read(n)); raw=b.read(); out={}
    for k,e in h.items():
        if k=='__metadata__' or e['dtype']!='F32': continue
        a,c=e['data_offsets']; out[k]=torch.from_numpy(np.frombuffer(raw[a:c],dtype=np.float32).reshape(e['shape']).copy())
    return out
vocab={w.rstrip('\n'):i for i,w in enumerate(open(f'{T}/base/vocab.txt'))}
def tok(t):
    t=unicodedata.normalize('NFD',t.lower()); t=''.join(c for c in t if unicodedata.category(c)!='Mn')
    words=re.findall(r"\w+|[^\w\s]",t); ids=[vocab['[CLS]']]
    for w in words:
        s=0; sub=[]
        while s<len(w):
            e=len(w); cur=None
            while e>s:
                piece=w[s:e] if s==0 else '##'+w[s:e]
                if piece in vocab: cur=vocab[piece]; break
                e-=1
            if cur is None: sub=[vocab['[UNK]']]; break
            sub.append(cur); s=e
        ids+=sub
    return ids[:127]+[vocab['[SEP]']]
def forward(W,ids,stats):
    x=W['embeddings.word_embeddings.weight'][ids]+W['embeddings.position_embeddings.weight'][:len(ids)]+W['embeddings.token_type_embeddings.weight'][0]
    ln=lambda x,p: torch.nn.functional.layer_norm(x,(384,),W[p+'.weight'],W[p+'.bias'],1e-12)
    x=ln(x,'embeddings.LayerNorm')
    def lin(name,x):
        stats.setdefault(name,[]).append((x**2).sum(0)); stats.setdefault(name+'#n',[]).append(x.shape[0])
        return x@W[name+'.weight'].T+W[name+'.bias']
    for l in range(6):
        p=f'encoder.layer.{l}.'
        q=lin(p+'attention.self.query',x); k=lin(p+'attention.self.key',x); v=lin(p+'attention.self.value',x)
        n=x.shape[0]; q=q.view(n,12,32).transpose(0,1); k=k.view(n,12,32).transpose(0,1); v=v.view(n,12,32).transpose(0,1)
        a=torch.softmax(q@k.transpose(1,2)/32**0.5,-1)@v; a=a.transpose(0,1).reshape(n,384)
        x=ln(lin(p+'attention.output.dense',a)+x,p+'attention.output.LayerNorm')
        h=torch.nn.functional.gelu(lin(p+'intermediate.dense',x))
        x=ln(lin(p+'output.dense',h)+x,p+'output.LayerNorm')
    return x
if __name__=='__main__':
    W=loadall(f'{T}/base/model.safetensors')
    texts=[json.loads(l)['text'] for l in open('/work/testbed/data/bbc/train.jsonl')][:200]
    stats={}
    with torch.no_grad():
        for t in texts: forward(W,tok(t),stats)
    rms={k:(torch.stack(v).sum(0)/sum(stats[k+'#n'])).sqrt().numpy() for k,v in stats.items() if not k.endswith('#n')}
    np.savez('acts_base.npz',**rms)
    for k,v in rms.items(): print(k, 'rms mean %.3f max/mean %.1f  cv %.2f'%(v.mean(), v.max()/v.mean(), v.std()/v.mean()))
