# Appends `k` rows to the named 2-D tensors of a one-file safetensors checkpoint folder (copying the other files):
# the new rows are the mean of the existing rows plus small deterministic noise (how HF's resize_token_embeddings
# initialises added tokens, roughly), in the tensor's dtype.
import json, struct, sys, shutil, os
import numpy as np
src, dst, k = sys.argv[1], sys.argv[2], int(sys.argv[3]); names = sys.argv[4:]
os.makedirs(dst, exist_ok=True)
for f in os.listdir(src):
    p = os.path.join(src, f)
    if f.endswith('.safetensors'): continue
    if os.path.isdir(p): shutil.copytree(p, os.path.join(dst, f), dirs_exist_ok=True)
    else: shutil.copy(p, dst)
files = [f for f in os.listdir(src) if f.endswith('.safetensors')]
assert len(files) == 1, files
raw = open(os.path.join(src, files[0]), 'rb').read()
n = struct.unpack('<Q', raw[:8])[0]; hdr = json.loads(raw[8:8+n]); data = raw[8+n:]
meta = hdr.pop('__metadata__', None)
out = {}; blobs = []; off = 0
rng = np.random.default_rng(0)
def bf16_to_f32(b): return (np.frombuffer(b, np.uint16).astype(np.uint32) << 16).view(np.float32)
def f32_to_bf16(a):
    u = a.astype(np.float32).view(np.uint32); u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16).tobytes()
for name, t in sorted(hdr.items(), key=lambda kv: kv[1]['data_offsets'][0]):
    b = data[t['data_offsets'][0]:t['data_offsets'][1]]; shape = list(t['shape'])
    if name in names:
        rows, cols = shape
        if t['dtype'] == 'F32': a = np.frombuffer(b, np.float32).reshape(rows, cols)
        elif t['dtype'] == 'BF16': a = bf16_to_f32(b).reshape(rows, cols)
        else: raise SystemExit(t['dtype'])
        new = a.mean(0) + 0.02 * rng.standard_normal((k, cols)).astype(np.float32)
        nb = new.astype(np.float32).tobytes() if t['dtype'] == 'F32' else f32_to_bf16(new)
        b = b + nb; shape = [rows + k, cols]
    out[name] = {'dtype': t['dtype'], 'shape': shape, 'data_offsets': [off, off + len(b)]}
    blobs.append(b); off += len(b)
if meta is not None: out['__metadata__'] = meta
h = json.dumps(out, separators=(',', ':')).encode(); h += b' ' * (-len(h) % 8)
with open(os.path.join(dst, files[0]), 'wb') as f:
    f.write(struct.pack('<Q', len(h))); f.write(h)
    for b in blobs: f.write(b)
