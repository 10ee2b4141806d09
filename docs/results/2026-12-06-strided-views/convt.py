# A folder as ../2026-12-06-pytorch-input/conv.py writes it (its safetensors weights saved again with torch.save),
# but with every matrix whose dimensions both exceed 1 saved as a transposed view of its storage (strides (1, rows)),
# the layout transformers' TensorFlow conversions left kernels in: torch.from_numpy(np.transpose(kernel)).
# Usage: convt.py SRC DST (torch in the Python that runs it).
import collections, os, subprocess, sys
import torch

src, dst = sys.argv[1], sys.argv[2]
conv = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "2026-12-06-pytorch-input", "conv.py")
subprocess.run([sys.executable, conv, src, dst], check=True)
path = os.path.join(dst, "pytorch_model.bin")
out, n = collections.OrderedDict(), 0
for k, v in torch.load(path, weights_only=True).items():
    if v.dim() == 2 and min(v.shape) > 1:
        v, n = v.t().contiguous().t(), n + 1
        assert not v.is_contiguous()
    out[k] = v
torch.save(out, path)
print(dst, n, "of", len(out), "tensors saved as transposed views")
