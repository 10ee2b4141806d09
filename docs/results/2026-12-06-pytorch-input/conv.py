import sys, shutil, os, torch
from safetensors.torch import load_file
src, dst, shard = sys.argv[1], sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else None)
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
if os.path.exists(os.path.join(src, "model.safetensors")):
    sd = load_file(os.path.join(src, "model.safetensors"))
else:
    import json
    idx = json.load(open(os.path.join(src, "model.safetensors.index.json")))
    sd = {}
    for f in sorted(set(idx["weight_map"].values())):
        sd.update(load_file(os.path.join(src, f)))
if shard:
    # Hugging Face's own sharded layout
    from transformers.modeling_utils import shard_checkpoint
import collections
torch.save(collections.OrderedDict(sd), os.path.join(dst, "pytorch_model.bin"))
