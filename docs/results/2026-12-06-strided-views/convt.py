# Like ../torchbin/conv.py, but every 2-D tensor is saved as a transposed view (strides (1, rows)), as
# transformers' TensorFlow conversions left kernels: torch.from_numpy(np.transpose(kernel)).
import sys, shutil, os, collections, json, torch
from safetensors.torch import load_file
src, dst = sys.argv[1], sys.argv[2]
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
if os.path.exists(os.path.join(src, "model.safetensors")):
    sd = load_file(os.path.join(src, "model.safetensors"))
else:
    idx = json.load(open(os.path.join(src, "model.safetensors.index.json")))
    sd = {}
    for f in sorted(set(idx["weight_map"].values())):
        sd.update(load_file(os.path.join(src, f)))
out = collections.OrderedDict()
n = 0
for k, v in sd.items():
    if v.dim() == 2 and min(v.shape) > 1:
        v = v.t().contiguous().t()
        assert not v.is_contiguous()
        n += 1
    out[k] = v
torch.save(out, os.path.join(dst, "pytorch_model.bin"))
print(dst, n, "of", len(out), "tensors saved as transposed views")
