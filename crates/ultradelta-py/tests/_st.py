"""A minimal safetensors reader and writer for the tests (the format: an 8-byte little-endian header length, a
JSON header, then the tensors' bytes), so that the suite can make bf16 and sharded checkpoints itself."""

import json
import struct
from pathlib import Path

DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def read_safetensors(path):
    """{name: (dtype, shape, bytes)} and the metadata of one file."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    body = data[8 + n :]
    out = {}
    for name, h in header.items():
        a, b = h["data_offsets"]
        out[name] = (h["dtype"], tuple(h["shape"]), body[a:b])
    return out, meta


def read_safetensors_folder(folder):
    """The tensors of a model folder, single-file or sharded: {name: (dtype, shape, bytes)}."""
    folder = Path(folder)
    out = {}
    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no safetensors in {folder}"
    for f in files:
        t, _ = read_safetensors(f)
        out.update(t)
    return out


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: (dtype, shape, bytes)} in the given order."""
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    off = 0
    for name, (dtype, shape, raw) in tensors.items():
        n = DTYPE_SIZES[dtype]
        count = 1
        for s in shape:
            count *= s
        assert len(raw) == n * count, name
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, (_, _, raw) in tensors.items():
            f.write(raw)


def write_sharded(folder, tensors, shards):
    """Writes {name: (dtype, shape, bytes)} as `shards` files with a model.safetensors.index.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    per = -(-len(names) // shards)
    weight_map = {}
    for i in range(shards):
        part = {n: tensors[n] for n in names[i * per : (i + 1) * per]}
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(folder / fname, part)
        for n in part:
            weight_map[n] = fname
    total = sum(len(t[2]) for t in tensors.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
