# Builds the "frozen lower layers" fine-tune of the study: MiniLM's sre fine-tune with the embeddings and encoder
# layers 0-2 set back to the base's values (their delta exactly zero), layers 3-5 and the pooler as sre moved them.
# Usage (Debian's python3, standard library only): cp -r T/models/sre sre-frozen && python3 freeze.py T
import json, re, struct, sys

T = sys.argv[1]


def read(p):
    b = open(p, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:], b[:8 + n]


hb, db, _ = read(f'{T}/models/base/model.safetensors')
hf, df, head = read('sre-frozen/model.safetensors')
d = bytearray(df)
frozen = changed = 0
for k, v in hf.items():
    if k == '__metadata__':
        continue
    s, e = v['data_offsets']
    if re.search(r'embeddings\.|encoder\.layer\.[012]\.', k) and k in hb:
        bs, be = hb[k]['data_offsets']
        assert e - s == be - bs
        d[s:e] = db[bs:be]
        frozen += 1
    else:
        changed += (e - s) // 4
open('sre-frozen/model.safetensors', 'wb').write(head + bytes(d))
print('frozen tensors', frozen, 'changed parameters', changed)
