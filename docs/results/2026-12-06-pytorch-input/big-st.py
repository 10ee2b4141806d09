# A 4.8 GB f32 tensor (all zeros but its last entry) and two small ones, base and fine-tune, as safetensors.
import json, os, struct
import numpy as np
def save(path, tensors):
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for k, (dt, shape, data) in tensors.items():
        header[k] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h))); f.write(h)
        for _, _, data in tensors.values():
            f.write(data)
a = np.zeros(1_200_000_000, dtype=np.float32); a[-1] = 7.0
b = np.arange(12, dtype=np.float32)
for d, bb in [("base", b), ("ft", b + 0.5)]:
    save(f"{d}/model.safetensors", {"a": ("F32", [1_200_000_000], memoryview(a).cast("B")), "b": ("F32", [3, 4], bb.tobytes())})
