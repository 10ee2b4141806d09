# full input second-moment matrices H = E[x x^T] of every linear layer of MiniLM's base, from a torch forward on
# (a) 300 BBC training texts (bbc), (b) 300 random token sequences (rand, data-free), (c) the in-domain pairs (sre, jobs)
import sys, os; sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '../../2026-12-05-column-density-study'))
import sys, json, numpy as np, torch
from acts import loadall, tok, T
torch.set_num_threads(2)
W = loadall(f'{T}/base/model.safetensors')
def forward(ids, H):
    x = W['embeddings.word_embeddings.weight'][ids] + W['embeddings.position_embeddings.weight'][:len(ids)] + W['embeddings.token_type_embeddings.weight'][0]
    ln = lambda x, p: torch.nn.functional.layer_norm(x, (384,), W[p+'.weight'], W[p+'.bias'], 1e-12)
    x = ln(x, 'embeddings.LayerNorm')
    def lin(name, x):
        x64 = x.double()
        if name in H: H[name][0] += x64.T @ x64; H[name][1] += x.shape[0]
        else: H[name] = [x64.T @ x64, x.shape[0]]
        return x @ W[name+'.weight'].T + W[name+'.bias']
    for l in range(6):
        p = f'encoder.layer.{l}.'
        q = lin(p+'attention.self.query', x); k = lin(p+'attention.self.key', x); v = lin(p+'attention.self.value', x)
        n = x.shape[0]; q = q.view(n,12,32).transpose(0,1); k = k.view(n,12,32).transpose(0,1); v = v.view(n,12,32).transpose(0,1)
        a = torch.softmax(q@k.transpose(1,2)/32**0.5, -1)@v; a = a.transpose(0,1).reshape(n,384)
        x = ln(lin(p+'attention.output.dense', a)+x, p+'attention.output.LayerNorm')
        h = torch.nn.functional.gelu(lin(p+'intermediate.dense', x))
        x = ln(lin(p+'output.dense', h)+x, p+'output.LayerNorm')
which = sys.argv[1]
H = {}
with torch.no_grad():
    if which == 'bbc':
        texts = [json.loads(l)['text'] for l in open('/work/testbed/data/bbc/train.jsonl')][:300]
        for t in texts: forward(tok(t), H)
    elif which in ('sre', 'jobs'):
        rows = [l.rstrip('\n').split('\t') for l in open(os.path.join(os.path.dirname(os.path.abspath(__file__)), f'../../../../crates/ultradelta-eval/data/indomain/{which}.tsv'))]
        rows = [r for r in rows if len(r) == 3 and not r[0].startswith('#') and r[0] != 'kind']
        for r in rows:
            forward(tok(r[1]), H); forward(tok(r[2]), H)
    else:
        g = torch.Generator().manual_seed(0)
        V = W['embeddings.word_embeddings.weight'].shape[0]
        for _ in range(300):
            ids = [101] + torch.randint(1000, V, (62,), generator=g).tolist() + [102]
            forward(ids, H)
np.savez(f'H_{which}.npz', **{k: (v[0]/v[1]).numpy() for k, v in H.items()})
for k, (m, n) in list(H.items())[:6]:
    e = np.linalg.eigvalsh((m/n).numpy())[::-1]; c = np.cumsum(e)/e.sum()
    print(k, n, 'eff. dims for 90/99 % energy:', int(np.searchsorted(c, .9))+1, int(np.searchsorted(c, .99))+1)
