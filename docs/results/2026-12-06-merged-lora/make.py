# A merged-LoRA fine-tune of SmolLM2 for the check: the base's weights, with every q_proj and v_proj moved by the
# rank-8 truncation of zen's delta there (the other 212 tensors unchanged), in bf16 as a merge would save it.
# Usage (Debian's python3 with numpy): cp -r T/llama/models/zen zen-lora && python3 make.py T
import json, re, struct, sys
import numpy as np

T = sys.argv[1]


def read(p):
    b = open(p, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:], b[:8 + n]


def bf16_to_f32(raw):
    return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(a):
    u = a.astype(np.float32).view(np.uint32)
    return (((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)).tobytes()


hb, db, _ = read(f'{T}/llama/models/base/model.safetensors')
hf, df, head = read('zen-lora/model.safetensors')
d = bytearray(df)
for k, v in hf.items():
    if k == '__metadata__':
        continue
    s, e = v['data_offsets']
    bs, be = hb[k]['data_offsets']
    if re.search(r'self_attn\.(q|v)_proj\.weight', k):
        B = bf16_to_f32(db[bs:be]).reshape(v['shape'])
        F = bf16_to_f32(df[s:e]).reshape(v['shape'])
        U, S, Vt = np.linalg.svd((F - B).astype(np.float64), full_matrices=False)
        d[s:e] = f32_to_bf16((B + (U[:, :8] * S[:8]) @ Vt[:8]).astype(np.float32))
    else:
        d[s:e] = db[bs:be]
open('zen-lora/model.safetensors', 'wb').write(head + bytes(d))
