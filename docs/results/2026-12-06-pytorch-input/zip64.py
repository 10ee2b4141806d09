import torch, collections
sd = collections.OrderedDict()
sd["a"] = torch.zeros(1_200_000_000, dtype=torch.float32)  # 4.8 GB: the next entries start past 4 GiB
sd["a"][-1] = 7.0
sd["b"] = torch.arange(12, dtype=torch.float32).reshape(3, 4)
sd["c"] = torch.arange(5, dtype=torch.bfloat16)
torch.save(sd, "base/pytorch_model.bin")
sd["b"] = sd["b"] + 0.5
torch.save(sd, "ft/pytorch_model.bin")
