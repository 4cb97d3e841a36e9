#!/usr/bin/env python3
"""Checks that LoRA adapters saved by the C++ runtime load in Python and give the same logits.

Not part of CI (needs PyPI torch, transformers and peft). Usage:

    CONSR_LORA_EXPORT_DIR=/tmp/lora build/<dir>/tests/runtime/runtime_test_lora "[export]"
    python3 tools/check_lora_with_peft.py /tmp/lora

For each tiny fixture model the test wrote <export>/<model>/<naming>/{adapter_model.safetensors,
adapter_config.json, expected_logits.safetensors}: one adapter (non-zero B) saved in the checkpoint's
hub naming ("checkpoint", the legacy layout), in transformers 5's module naming ("transformers5"),
and with the runtime's default naming ("default": what the pipeline's train stage writes unless
--lora-naming says otherwise; it must be transformers 5's), with the C++ logits of the fixture's
text prompt. This script loads the fixture model with transformers and the adapter with
  (a) transformers' PEFT integration, model.load_adapter(dir), for every naming, and
  (b) peft.PeftModel.from_pretrained(model, dir) for the transformers5 and default namings,
checks that every saved tensor reached a decoder linear of the language model (nothing in the
vision tower) and compares the logits (<= 1e-4). It also reports, without failing, whether
PeftModel.from_pretrained maps the checkpoint naming (peft 0.21.2 on transformers 5.24: yes for
LLaVA-OV's language_model.model.*, no for Qwen2.5-VL's model.layers.*).

With --pipeline-adapter DIR it also loads the adapter/ of a default pipeline run on the tiny
Qwen2.5-VL fixture (consr_pipeline --out RUN; DIR = RUN/adapter) with PeftModel.from_pretrained and
requires every tensor to load.
"""
import os
import re
import sys
import warnings

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlavaOnevisionForConditionalGeneration, Qwen2_5_VLForConditionalGeneration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {
    "qwen2_5_vl_tiny": Qwen2_5_VLForConditionalGeneration,
    "llava_onevision_tiny": LlavaOnevisionForConditionalGeneration,
}


def base_model(name, cls):
    path = os.path.join(ROOT, "tests", "fixtures", "models", name)
    return cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def lora_report(model, saved):
    """(number of LoRA tensors that hold the saved values, names of wrapped modules)."""
    state = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    wrapped = sorted({k.split(".lora_")[0] for k in state})
    for w in wrapped:
        assert re.search(r"language_model\.(model\.)?layers\.\d+\.(self_attn|mlp)\.[a-z_]+$", w), w
    saved_values = sorted(float(v.double().abs().sum()) for v in saved.values())
    loaded_values = sorted(float(v.double().abs().sum()) for v in state.values())
    matched = sum(1 for a, b in zip(saved_values, loaded_values) if abs(a - b) <= 1e-6 * max(1.0, a))
    return matched if len(state) == len(saved) else -1, wrapped


def logits_of(model, expected):
    with torch.no_grad():
        return model(input_ids=expected["input_ids"]).logits[0].float()


NAMINGS = ("checkpoint", "transformers5", "default")


def check(export_dir, name, cls):
    for naming in NAMINGS:
        if naming == "default" and not os.path.isdir(os.path.join(export_dir, name, naming)):
            sys.exit(f"{export_dir}/{name}/default is missing: rerun runtime_test_lora \"[export]\" from this tree")
        adapter = os.path.join(export_dir, name, naming)
        expected = load_file(os.path.join(adapter, "expected_logits.safetensors"))
        saved = load_file(os.path.join(adapter, "adapter_model.safetensors"))

        model = base_model(name, cls)
        plain = logits_of(model, expected)
        model.load_adapter(adapter)
        matched, wrapped = lora_report(model, saved)
        assert matched == len(saved), (name, naming, matched, len(saved))
        diff = (logits_of(model, expected) - expected["logits"]).abs().max().item()
        effect = (plain - expected["logits"]).abs().max().item()
        print(f"{name} [{naming}] transformers load_adapter: {len(wrapped)} modules, "
              f"max |logits - C++| = {diff:.3g} (adapter effect {effect:.3g})")
        assert diff <= 1e-4 and effect > 1e-3, (diff, effect)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model = PeftModel.from_pretrained(base_model(name, cls), adapter).eval()
        matched, wrapped = lora_report(peft_model, saved)
        diff = (logits_of(peft_model, expected) - expected["logits"]).abs().max().item()
        ok = matched == len(saved) and diff <= 1e-4
        print(f"{name} [{naming}] PeftModel.from_pretrained: {matched}/{len(saved)} tensors loaded, "
              f"max |logits - C++| = {diff:.3g} -> {'OK' if ok else 'not loaded (legacy names not remapped)'}")
        if naming != "checkpoint":
            assert ok, (name, naming, matched, diff)


def check_pipeline_adapter(adapter):
    """A default pipeline run's adapter (tiny Qwen2.5-VL): PeftModel.from_pretrained loads every tensor."""
    saved = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(base_model("qwen2_5_vl_tiny", MODELS["qwen2_5_vl_tiny"]), adapter).eval()
    state = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    print(f"pipeline adapter {adapter}: {len(saved)} tensors saved, {len(state)} LoRA tensors in the PEFT model")
    assert len(state) == len(saved), (len(state), len(saved))
    loaded = sorted(float(v.double().abs().sum()) for v in state.values())
    expected = sorted(float(v.double().abs().sum()) for v in saved.values())
    assert all(abs(a - b) <= 1e-6 * max(1.0, a) for a, b in zip(expected, loaded)), "values differ"


def main():
    args = sys.argv[1:]
    pipeline_adapter = None
    if len(args) == 3 and args[1] == "--pipeline-adapter":
        pipeline_adapter = args[2]
        args = args[:1]
    if len(args) != 1:
        sys.exit(__doc__)
    for name, cls in MODELS.items():
        check(args[0], name, cls)
    if pipeline_adapter:
        check_pipeline_adapter(pipeline_adapter)
    print("OK")


if __name__ == "__main__":
    main()
