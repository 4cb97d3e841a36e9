#!/usr/bin/env python3
"""Loads the project's tiny models (models/qwen2_5_vl_world, models/llava_onevision_world, written by
consr_train_tiny) with Hugging Face transformers and compares their logits with the runtime's.

Not run by CI. Needs PyPI transformers (5.x), torch, safetensors, tokenizers, e.g.

    python3 -m venv /tmp/hf && /tmp/hf/bin/pip install torch transformers safetensors
    /tmp/hf/bin/python tools/check_tiny_models_with_transformers.py [MODEL_DIR ...]

For each checkpoint directory it reads runtime_reference.safetensors (written by consr_train_tiny next to
the weights): two prompts (input_ids, pixel_values, image_grid_thw or image_sizes), the text they were
encoded from (metadata text_<k>) and the runtime's fp32 logits. It checks that
  1. AutoTokenizer (HF tokenizers, from tokenizer.json) encodes the text to the same ids;
  2. the chat template in tokenizer_config.json renders the same prompt as the runtime's C++ template;
  3. the model class loaded with from_pretrained (fp32, eager attention) gives the same logits (max abs
     difference printed; fails above --tolerance).
Exit status 0 when every check passes, 1 otherwise.

Without torch/transformers (--tokenizer-only, or when they cannot be imported) it runs checks 1 and 2
with HF `tokenizers`, jinja2 and safetensors' numpy reader only (pip install tokenizers jinja2
safetensors numpy): tokenizer.json through HF tokenizers, the chat template through jinja2 (with
transformers' `{% generation %}` tag).
"""
import argparse
import inspect
import os
import sys

DEFAULT_MODELS = ["models/qwen2_5_vl_world", "models/llava_onevision_world"]


def render_template(template, messages):
    """The chat template rendered as transformers does (jinja2 sandbox, trim_blocks, lstrip_blocks,
    the {% generation %} tag of LLaVA-OV's template kept as plain output)."""
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation])
    return env.from_string(template).render(messages=messages, add_generation_prompt=True)


def check_text_side(model_dir, config, meta, ref, encode, image_token, image_token_id):
    """Checks 1 and 2 for every reference prompt; returns True when all pass."""
    import json
    ok = True
    template = json.load(open(os.path.join(model_dir, "chat_template.json"), encoding="utf-8"))["chat_template"]
    k = 0
    while f"input_ids_{k}" in ref:
        text = meta[f"text_{k}"]
        ids = [int(x) for x in ref[f"input_ids_{k}"].tolist()]
        if encode(text) != ids:
            print(f"  prompt {k}: HF tokenizer ids differ from the runtime's")
            ok = False
        else:
            print(f"  prompt {k}: HF tokenizer ids equal the runtime's ({len(ids)} tokens)")
        prompt_text = text.split("<|im_start|>assistant\n")[0] + "<|im_start|>assistant\n"
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": meta[f"question_{k}"]}]}]
        rendered = render_template(template, messages)
        n_image = sum(1 for i in ids if i == image_token_id)
        if rendered.replace(image_token, image_token * n_image, 1) != prompt_text:
            print(f"  prompt {k}: the chat template renders differently: {rendered!r}")
            ok = False
        else:
            print(f"  prompt {k}: the chat template renders the runtime's prompt")
        k += 1
    return ok


def family(config):
    if config["model_type"] == "qwen2_5_vl":
        return "<|image_pad|>", config["image_token_id"]
    if config["model_type"] == "llava_onevision":
        return "<image>", config["image_token_index"]
    sys.exit(f"unexpected model_type {config['model_type']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--tokenizer-only", action="store_true", help="checks 1 and 2 only (no torch/transformers)")
    args = ap.parse_args()
    import json

    tokenizer_only = args.tokenizer_only
    if not tokenizer_only:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError:
            print("torch / transformers not importable: running the tokenizer and chat-template checks only")
            tokenizer_only = True

    ok = True
    for model_dir in args.models:
        print(f"== {model_dir}")
        config = json.load(open(os.path.join(model_dir, "config.json"), encoding="utf-8"))
        image_token, image_token_id = family(config)
        ref_path = os.path.join(model_dir, "runtime_reference.safetensors")
        if tokenizer_only:
            from safetensors.numpy import load_file
            from safetensors import safe_open
            from tokenizers import Tokenizer
            with safe_open(ref_path, framework="numpy") as f:
                meta = f.metadata()
            ref = load_file(ref_path)
            tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
            ok &= check_text_side(model_dir, config, meta, ref,
                                  lambda t: tok.encode(t, add_special_tokens=False).ids, image_token, image_token_id)
            continue

        import torch
        from safetensors import safe_open
        from transformers import AutoTokenizer
        if config["model_type"] == "qwen2_5_vl":
            from transformers import Qwen2_5_VLForConditionalGeneration as cls
        else:
            from transformers import LlavaOnevisionForConditionalGeneration as cls
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = cls.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
        print(f"loaded {cls.__name__}: {sum(p.numel() for p in model.parameters())} parameters")
        with safe_open(ref_path, framework="pt") as f:
            meta = f.metadata()
            ref = {k: f.get_tensor(k) for k in f.keys()}
        ok &= check_text_side(model_dir, config, meta, ref,
                              lambda t: tok(t, add_special_tokens=False)["input_ids"], image_token, image_token_id)
        # transformers' own rendering of the chat template (tokenizer_config.json) must agree as well.
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": meta["question_0"]}]}]
        if tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) != render_template(
                json.load(open(os.path.join(model_dir, "chat_template.json")))["chat_template"], messages):
            print("  apply_chat_template differs from the jinja2 rendering")
            ok = False
        k = 0
        while f"input_ids_{k}" in ref:
            ids = ref[f"input_ids_{k}"].long()
            inputs = {"input_ids": ids.view(1, -1), "attention_mask": torch.ones(1, ids.numel(), dtype=torch.long)}
            pv = ref[f"pixel_values_{k}"]
            if config["model_type"] == "qwen2_5_vl":
                inputs["pixel_values"] = pv
                inputs["image_grid_thw"] = ref[f"image_grid_thw_{k}"].long()
                # transformers >= 5.25 computes the 3-D (mrope) positions only from the processor's
                # mm_token_type_ids (0 text, 1 image); without them it silently uses 1-D positions.
                if "mm_token_type_ids" in inspect.signature(model.forward).parameters:
                    inputs["mm_token_type_ids"] = (ids == image_token_id).long().view(1, -1)
            else:
                inputs["pixel_values"] = pv.unsqueeze(0)  # [1, tiles, 3, S, S]
                inputs["image_sizes"] = ref[f"image_sizes_{k}"].long()
                inputs["batch_num_images"] = torch.tensor([1])
            with torch.no_grad():
                logits = model(**inputs).logits[0].float()
            diff = (logits - ref[f"logits_{k}"]).abs().max().item()
            same_argmax = bool((logits.argmax(-1) == ref[f"logits_{k}"].argmax(-1)).all())
            print(f"  prompt {k}: max |logit difference| HF vs runtime = {diff:.3g}; argmax equal: {same_argmax}")
            if diff > args.tolerance:
                ok = False
            k += 1
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
