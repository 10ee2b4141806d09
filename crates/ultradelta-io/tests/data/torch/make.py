#!/work/torchenv/bin/python
"""Write small, real torch.save fixtures (+ <name>.expected.json) into out/.

Run with a Python that has torch (written with torch 2.5.1, the PyPI wheel run on CPU, transformers 4.46.3,
safetensors 0.8.0): `python crates/ultradelta-io/tests/data/torch/make.py`. It writes the fixtures next to itself.
Every file comes out byte-identical on each run but legacy.bin and legacy-protocol*.pt (their storage keys are
memory addresses) and protocol*.pt (committed from a run that named them p2.pt, p4.pt: their zip prefix differs).
"""
import argparse
import json
import os
import shutil
from collections import OrderedDict

import torch
import torch.nn as nn

OUT = os.path.dirname(os.path.abspath(__file__))

ST_NAME = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)
        self.embed = nn.Embedding(5, 4)


def tiny_state_dict():
    torch.manual_seed(0)
    m = Tiny()
    # make LayerNorm params non-trivial (default init is all ones / zeros)
    with torch.no_grad():
        m.norm.weight.copy_(torch.tensor([1.0, 0.5, -0.25, 2.0]))
        m.norm.bias.copy_(torch.tensor([0.125, -1.0, 0.0, 3.5]))
    return m.state_dict()


def tensor_entry(t):
    requires_grad = bool(t.requires_grad)
    is_parameter = isinstance(t, nn.Parameter)
    t = t.detach()
    flat = t.contiguous().reshape(-1)
    if t.dtype == torch.bool:
        values = [int(v) for v in flat.tolist()]
    elif t.dtype in (torch.float16, torch.bfloat16):
        values = flat.to(torch.float64).tolist()  # exact conversion
    else:
        values = flat.tolist()
    return {
        "dtype": ST_NAME[t.dtype],
        "shape": list(t.shape),
        "values": values,
        # extra info (about the on-disk representation as loaded back):
        "stride": list(t.stride()),
        "storage_offset": t.storage_offset(),
        "storage_numel_elems": t.untyped_storage().nbytes() // t.element_size(),
        "requires_grad": requires_grad,
        "is_parameter": is_parameter,
    }


def collect(obj, prefix, tensors, other):
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = tensor_entry(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            collect(v, f"{prefix}.{k}" if prefix else str(k), tensors, other)
    elif isinstance(obj, argparse.Namespace):
        other[prefix] = {"type": "argparse.Namespace", "attrs": vars(obj)}
    else:
        other[prefix] = obj


def write_expected(name, loaded, extra_note=None):
    tensors, other = OrderedDict(), OrderedDict()
    collect(loaded, "", tensors, other)
    doc = OrderedDict()
    doc["tensors"] = tensors
    if other:
        doc["non_tensor"] = other
    if extra_note:
        doc["note"] = extra_note
    with open(os.path.join(OUT, name + ".expected.json"), "w") as f:
        json.dump(doc, f, indent=1)


def save(name, obj, note=None, **kw):
    path = os.path.join(OUT, name)
    torch.save(obj, path, **kw)
    loaded = torch.load(path, weights_only=False)
    write_expected(name, loaded, note)
    print(f"{name}: {os.path.getsize(path)} bytes")
    return loaded


def main():
    for d in ["bert-bin", "bert-st", "bert-ft-bin", "bert-ft-st"]:
        shutil.rmtree(os.path.join(OUT, d), ignore_errors=True)

    # a. plain state dict (OrderedDict with _metadata attribute)
    sd = tiny_state_dict()
    save("plain.bin", sd)

    # b. dtypes
    torch.manual_seed(1)
    base = torch.tensor([[0.5, -1.25, 3.0], [1e-3, 65504.0 / 1024, -0.0], [2.0, 7.75, -100.5], [0.1, 0.2, 0.3]])
    dt = OrderedDict()
    dt["f32"] = base.clone()
    dt["f16"] = base.to(torch.float16)
    dt["bf16"] = base.to(torch.bfloat16)
    dt["f64"] = torch.tensor([[1.0 / 3, -2.5e-300], [1e300, 0.1]], dtype=torch.float64)
    dt["i64"] = torch.tensor([0, 1, -1, 2**40, -(2**40) - 7, 2**53 - 1], dtype=torch.int64)
    dt["i32"] = torch.tensor([[0, -2147483648], [2147483647, 12345]], dtype=torch.int32)
    dt["i16"] = torch.tensor([-32768, 32767, 0, -2, 300], dtype=torch.int16)
    dt["i8"] = torch.tensor([-128, 127, 0, -1], dtype=torch.int8)
    dt["u8"] = torch.tensor([[0, 255, 1], [128, 7, 42]], dtype=torch.uint8)
    dt["bool"] = torch.tensor([[True, False, True], [False, False, True]])
    dt["scalar"] = torch.tensor(3.25, dtype=torch.float32)
    dt["empty"] = torch.zeros((0, 3), dtype=torch.float32)
    save("dtypes.bin", dt)

    # c. tied (same tensor object under two keys) + an independent one
    torch.manual_seed(2)
    w = torch.randn(5, 4)
    tied = OrderedDict()
    tied["embed.weight"] = w
    tied["lm_head.weight"] = w
    tied["other"] = torch.arange(4, dtype=torch.float32)
    save("tied.bin", tied, note="embed.weight and lm_head.weight are the same tensor object -> one storage (data/0)")

    # d. views of one 4x3 f32 tensor
    t = torch.arange(12, dtype=torch.float32).reshape(4, 3) + 0.5
    views = OrderedDict()
    views["offset"] = t[1:]  # contiguous, storage_offset 3
    views["transpose"] = t.T  # shape (3,4), stride (1,3)
    views["strided"] = t[:, ::2]  # shape (4,2), stride (3,2)
    save("views.bin", views, note="all three views share ONE storage holding all 12 elements of the base tensor")
    save("offset.bin", {"a": t[1:]}, note="storage holds all 12 elements; tensor uses offset 3, shape (3,3)")

    # d2. the strided tensors real checkpoints hold: TensorFlow kernels transposed in place (transformers'
    # conversions: torch.from_numpy(np.transpose(kernel))), a column slice of a fused weight, a channels_last
    # convolution, a permuted 3-D tensor, an expanded buffer (stride 0), a bf16 transpose
    import numpy as np
    torch.manual_seed(5)
    kernel = np.arange(24, dtype=np.float32).reshape(4, 6) / 8 - 1
    fused = torch.randn(4, 12)
    more = OrderedDict()
    more["tf.kernel"] = torch.from_numpy(np.transpose(kernel))  # shape (6,4), stride (1,6)
    more["fused.k"] = fused[:, 4:8]  # shape (4,4), stride (12,1), offset 4
    more["conv.weight"] = torch.randn(2, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    more["permuted"] = torch.arange(24, dtype=torch.float16).reshape(2, 3, 4).permute(2, 0, 1)
    more["expanded"] = torch.arange(3, dtype=torch.int64).expand(2, 3)  # stride (0,1)
    more["bf16.t"] = torch.randn(3, 5).to(torch.bfloat16).T
    more["plain"] = torch.arange(4, dtype=torch.float32)
    save("views-real.pth", more, note="strided views as real checkpoints hold them; torch.load keeps their strides")

    # e. BEiT-3 style wrapped checkpoint
    save("wrapped.pth", {"model": sd, "epoch": 3, "args": argparse.Namespace(lr=0.1)})

    # e2. a PyTorch Lightning checkpoint of a fine-tune of plain.bin's model: the state dict under "state_dict" with
    # the LightningModule's "model." prefix, beside the optimizer's moments and training state
    torch.manual_seed(6)
    ft = OrderedDict((k, v + 0.01 * torch.randn_like(v)) for k, v in sd.items())
    params = [nn.Parameter(v.clone()) for v in ft.values()]
    opt = torch.optim.AdamW(params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    torch.save({
        "epoch": 3, "global_step": 1200, "pytorch-lightning_version": "2.1.0",
        "state_dict": OrderedDict(("model." + k, v) for k, v in ft.items()),
        "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 4}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.25)}},
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [],
        "hyper_parameters": {"lr": 1e-4},
    }, os.path.join(OUT, "lightning.ckpt"))
    # the state dict, as torch loads it (the rest holds lists of tensors, which the expected file does not describe)
    write_expected("lightning.ckpt", {"state_dict": torch.load(os.path.join(OUT, "lightning.ckpt"))["state_dict"]})

    # f. parameters
    torch.manual_seed(3)
    params = OrderedDict()
    params["weight"] = nn.Parameter(torch.randn(2, 3))
    params["bias"] = nn.Parameter(torch.randn(3), requires_grad=False)
    save("param.bin", params)

    # g. legacy (non-zip) format
    save("legacy.bin", sd, _use_new_zipfile_serialization=False)

    # h. Hugging Face BERT, .bin and .safetensors, same weights
    try:
        from transformers import BertConfig, BertModel
        from safetensors.torch import load_file
    except Exception as e:  # pragma: no cover
        print("transformers unavailable, skipping BERT:", e)
        return
    torch.manual_seed(4)
    cfg = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=16)
    bert = BertModel(cfg)
    bert.save_pretrained(os.path.join(OUT, "bert-bin"), safe_serialization=False)
    bert.save_pretrained(os.path.join(OUT, "bert-st"), safe_serialization=True)
    lb = torch.load(os.path.join(OUT, "bert-bin", "pytorch_model.bin"), weights_only=False)
    write_expected("bert-bin", lb)
    ls = load_file(os.path.join(OUT, "bert-st", "model.safetensors"))
    write_expected("bert-st", ls)
    assert lb.keys() == ls.keys(), (lb.keys() ^ ls.keys())
    for k in lb:
        assert torch.equal(lb[k], ls[k]), k
    print("bert: .bin and .safetensors identical,", len(lb), "tensors")
    os.remove(os.path.join(OUT, "bert-st.expected.json"))  # the same as bert-bin's

    # j. other pickle protocols (torch.save's default is 2), zip and legacy; tied "a"
    torch.manual_seed(0)
    sd = OrderedDict(a=torch.randn(4, 3), b=torch.randn(5).half(), c=torch.arange(6).reshape(2, 3))
    sd["tied"] = sd["a"]
    torch.save(sd, os.path.join(OUT, "protocol2.pt"), pickle_protocol=2)
    torch.save(sd, os.path.join(OUT, "protocol4.pt"), pickle_protocol=4)
    for p in (4, 5):
        torch.save(sd, os.path.join(OUT, f"legacy-protocol{p}.pt"), pickle_protocol=p,
                   _use_new_zipfile_serialization=False)

    # i. a fine-tune of it (every float tensor moved a little), in both formats: a pair to compress
    torch.manual_seed(5)
    with torch.no_grad():
        for p in bert.parameters():
            p.add_(0.02 * torch.randn_like(p))
    bert.save_pretrained(os.path.join(OUT, "bert-ft-bin"), safe_serialization=False)
    bert.save_pretrained(os.path.join(OUT, "bert-ft-st"), safe_serialization=True)

    # k. the same fine-tune with every matrix a transposed view of its storage, the layout transformers'
    # TensorFlow conversions saved (torch.from_numpy(np.transpose(kernel))): a pair with bert-bin to compress
    shutil.rmtree(os.path.join(OUT, "bert-ft-views"), ignore_errors=True)
    with torch.no_grad():
        for p in bert.parameters():
            if p.dim() == 2 and min(p.shape) > 1:
                p.data = p.data.t().contiguous().t()
    # (save_pretrained makes them contiguous: torch.save the state dict as it is, beside the config)
    os.makedirs(os.path.join(OUT, "bert-ft-views"))
    bert.config.to_json_file(os.path.join(OUT, "bert-ft-views", "config.json"))
    torch.save(bert.state_dict(), os.path.join(OUT, "bert-ft-views", "pytorch_model.bin"))
    views = torch.load(os.path.join(OUT, "bert-ft-views", "pytorch_model.bin"), weights_only=True)
    print("bert-ft-views:", sum(not t.is_contiguous() for t in views.values()), "of", len(views),
          "tensors are strided views")


if __name__ == "__main__":
    main()
