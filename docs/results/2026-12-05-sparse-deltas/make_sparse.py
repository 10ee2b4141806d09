#!/usr/bin/env python3
"""make_sparse.py BASE_DIR FT_DIR OUT_DIR SHARE -- a copy of the fine-tune FT_DIR whose every 2-D tensor keeps only
the SHARE of its delta from BASE_DIR that is largest in magnitude (the rest set back to the base's values, so
those deltas are exactly zero): a TIES-style trimmed delta. Other tensors and files are copied as they are.
Reads and writes f32 safetensors (model.safetensors) with numpy only."""
import json, shutil, struct, sys
import numpy as np

def read(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = f.read(n)
        data = bytearray(f.read())
    return n, header, json.loads(header), data

base_dir, ft_dir, out_dir, share = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
shutil.copytree(ft_dir, out_dir)
n, header, h, data = read(f'{out_dir}/model.safetensors')
_, _, hb, datab = read(f'{base_dir}/model.safetensors')
total = kept = 0
for name, m in h.items():
    if name == '__metadata__' or len(m['shape']) != 2:
        continue
    assert m['dtype'] == 'F32', name
    a, b = m['data_offsets']
    ft = np.frombuffer(bytes(data[a:b]), np.float32).reshape(m['shape']).copy()
    a2, b2 = hb[name]['data_offsets']
    base = np.frombuffer(bytes(datab[a2:b2]), np.float32).reshape(m['shape'])
    d = np.abs(ft - base).ravel()
    k = max(1, int(share * d.size))
    keep = np.abs(ft - base) >= np.partition(d, -k)[-k]
    ft[~keep] = base[~keep]
    total += d.size
    kept += int(((ft - base) != 0).sum())
    data[a:b] = ft.tobytes()
with open(f'{out_dir}/model.safetensors', 'wb') as f:
    f.write(struct.pack('<Q', n) + header + bytes(data))
print(f'{out_dir}: {kept / total:.4f} of the 2-D tensors\' entries differ from the base')
