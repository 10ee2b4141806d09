# per-channel input MEAN of every linear layer, fine-tune's forward on BBC training texts (oracle for the bias correction)
import sys, os, json, numpy as np, torch
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '2026-12-05-column-density-study'))
from acts import loadall, tok, T
import acts
task = sys.argv[1]
def forward(W, ids, stats):
    x = W['embeddings.word_embeddings.weight'][ids] + W['embeddings.position_embeddings.weight'][:len(ids)] + W['embeddings.token_type_embeddings.weight'][0]
    ln = lambda x, p: torch.nn.functional.layer_norm(x, (384,), W[p + '.weight'], W[p + '.bias'], 1e-12)
    x = ln(x, 'embeddings.LayerNorm')
    def lin(name, x):
        stats.setdefault(name, []).append(x.sum(0)); stats.setdefault(name + '#n', []).append(x.shape[0])
        return x @ W[name + '.weight'].T + W[name + '.bias']
    for l in range(6):
        p = f'encoder.layer.{l}.'
        q = lin(p + 'attention.self.query', x); k = lin(p + 'attention.self.key', x); v = lin(p + 'attention.self.value', x)
        n = x.shape[0]; q = q.view(n, 12, 32).transpose(0, 1); k = k.view(n, 12, 32).transpose(0, 1); v = v.view(n, 12, 32).transpose(0, 1)
        a = torch.softmax(q @ k.transpose(1, 2) / 32 ** 0.5, -1) @ v; a = a.transpose(0, 1).reshape(n, 384)
        x = ln(lin(p + 'attention.output.dense', a) + x, p + 'attention.output.LayerNorm')
        h = torch.nn.functional.gelu(lin(p + 'intermediate.dense', x))
        x = ln(lin(p + 'output.dense', h) + x, p + 'output.LayerNorm')
W = loadall(f'{T}/{task}/model.safetensors')
texts = [json.loads(l)['text'] for l in open('/work/testbed/data/bbc/train.jsonl')][:200]
stats = {}
with torch.no_grad():
    for t in texts: forward(W, tok(t), stats)
m = {k: (torch.stack(v).sum(0) / sum(stats[k + '#n'])).numpy() for k, v in stats.items() if not k.endswith('#n')}
np.savez(os.path.join(os.path.dirname(os.path.abspath(__file__)), f'means_{task}.npz'), **m)
for k, v in m.items(): print(k, 'mean-vector norm %.3f' % np.linalg.norm(v))
