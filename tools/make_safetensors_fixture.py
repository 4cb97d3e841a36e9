#!/usr/bin/env python3
"""Build the safetensors fixture of the LibTorch runtime tests (tests/fixtures/safetensors/).

Run once by whoever regenerates fixtures (never by CI):  python3 tools/make_safetensors_fixture.py
Needs PyPI `torch`, `safetensors` and `huggingface_hub`.

- reference.safetensors: written by the Python `safetensors` package (the reference writer), one
  tensor per dtype the C++ reader loads, plus a scalar, an empty tensor and __metadata__.
- reference.json: each tensor's dtype, shape and values (as JSON numbers, exact for these values),
  so the C++ test checks what it reads against values that did not pass through C++.
- sharded/: a sharded model directory written by huggingface_hub.save_torch_state_dict
  (model-0000k-of-0000n.safetensors + model.safetensors.index.json), as the hub publishes them.
Deterministic: re-running gives byte-identical files.
"""
import json
import os
import shutil

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "safetensors")


def tensors():
    base = torch.arange(24, dtype=torch.float64)
    return {
        "f32": ((base[:6] - 2.5) * 0.75).reshape(2, 3).to(torch.float32),
        "f64": (base[:5] / 3.0 - 1.0).to(torch.float64),
        "f16": ((base[:8] - 4) * 0.125).reshape(2, 2, 2).to(torch.float16),
        "bf16": ((base[:12] - 5) * 0.375).reshape(3, 4).to(torch.bfloat16),
        "i64": (base[:4].to(torch.int64) - 2) * 1_000_000_007,
        "i32": (base[:6].to(torch.int32) - 3) * 65_537,
        "i16": (base[:4].to(torch.int16) - 2) * 1000,
        "i8": (base[:6].to(torch.int8) - 3) * 40,
        "u8": (base[:5].to(torch.uint8) * 60),
        "bool": torch.tensor([[True, False, True], [False, False, True]]),
        "scalar": torch.tensor(2.5, dtype=torch.float32),
        "empty": torch.zeros(0, 3, dtype=torch.float32),
        "model.layers.0.self_attn.q_proj.weight": ((base[:8] - 3.5) / 8).reshape(4, 2).to(torch.float32),
    }


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    ts = tensors()
    save_file(ts, os.path.join(OUT, "reference.safetensors"), metadata={"format": "pt", "source": "python safetensors"})
    ref = {name: {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
                  "values": [float(v) if t.is_floating_point() else int(v) for v in t.reshape(-1).tolist()]}
           for name, t in sorted(ts.items())}
    with open(os.path.join(OUT, "reference.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump({"generator": "tools/make_safetensors_fixture.py", "metadata": {"format": "pt", "source": "python safetensors"},
                   "tensors": ref}, f, indent=1, sort_keys=True)
        f.write("\n")

    from huggingface_hub import save_torch_state_dict
    g = torch.Generator().manual_seed(0)
    state = {
        "model.embed_tokens.weight": torch.randn(16, 8, generator=g),
        "model.layers.0.mlp.up_proj.weight": torch.randn(12, 8, generator=g),
        "model.layers.1.mlp.up_proj.weight": torch.randn(12, 8, generator=g),
        "model.norm.weight": torch.ones(8),
        "lm_head.weight": torch.randn(16, 8, generator=g).to(torch.bfloat16),
    }
    sharded = os.path.join(OUT, "sharded")
    os.makedirs(sharded)
    save_torch_state_dict(state, sharded, max_shard_size=600, metadata={"format": "pt"})
    names = sorted(os.listdir(sharded))
    assert "model.safetensors.index.json" in names and sum(n.endswith(".safetensors") for n in names) >= 2, names
    with open(os.path.join(OUT, "sharded_reference.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump({"generator": "tools/make_safetensors_fixture.py",
                   "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""),
                                   "values": [float(x) for x in v.float().reshape(-1).tolist()]}
                               for k, v in sorted(state.items())}}, f, indent=1, sort_keys=True)
        f.write("\n")
    print("wrote", OUT, sorted(os.listdir(OUT)), names)


if __name__ == "__main__":
    main()
