# The LLaMA check of the study: SmolLM2's zen fine-tune with the tied token embedding and layers 0-9 (of 30) set back
# to the base's values. Usage: cp -r T/llama/models/zen zen-frozen && python3 llama-freeze.py T
import json, re, struct, sys

T = sys.argv[1]


def read(p):
    b = open(p, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:], b[:8 + n]


hb, db, _ = read(f'{T}/llama/models/base/model.safetensors')
hf, df, head = read('zen-frozen/model.safetensors')
d = bytearray(df)
frozen = changed = 0
for k, v in hf.items():
    if k == '__metadata__':
        continue
    s, e = v['data_offsets']
    if re.search(r'embed_tokens|model\.layers\.([0-9])\.', k):
        bs, be = hb[k]['data_offsets']
        assert e - s == be - bs
        d[s:e] = db[bs:be]
        frozen += 1
    else:
        changed += (e - s) // 2
open('zen-frozen/model.safetensors', 'wb').write(head + bytes(d))
print('frozen tensors', frozen, 'changed parameters', changed)
