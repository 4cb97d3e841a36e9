#!/usr/bin/env python3
"""Builds the tiny model fixtures of the LibTorch runtime tests (tests/fixtures/models/).

Run once by whoever regenerates fixtures, never by CI or the tests:

    python3 tools/make_model_fixtures.py            # writes tests/fixtures/models/
    python3 tools/make_model_fixtures.py --out DIR  # writes elsewhere (e.g. to check determinism)

Needs PyPI transformers (5.24), torch, safetensors, pillow, numpy, and R1's tokenizer fixture
(tests/fixtures/tokenizer/, made by tools/make_tokenizer_fixture.py). Everything is seeded and runs
on one CPU thread, so running it twice gives byte-identical files.

What it writes (all sizes tiny, real geometry):
  images/                      test images (PNG, one grayscale PNG, an RGBA PNG, one JPEG) and the PIL
                               references of the image tests: decoded pixels, PIL resizes (bicubic /
                               bilinear, up and down), smart_resize / select_best_resolution / token-count
                               cases computed by the HF functions.
  qwen2_5_vl_tiny/             a complete HF model directory (save_pretrained of a randomly initialised
                               Qwen2_5_VLForConditionalGeneration, fp32, eager attention) + the slow (PIL)
                               image processor config + R1's tokenizer files + reference.{json,safetensors}.
  llava_onevision_tiny/        the same for LlavaOnevisionForConditionalGeneration (SigLIP 384/14, anyres_max_9).
  qwen2_5_vl_tiny_sharded/     the Qwen weights again in the other parameter-name layout (see NAME_LAYOUTS),
                               as a 2-shard checkpoint with model.safetensors.index.json, a flat (hub-style)
                               config.json and a hub-style preprocessor_config.json (min_pixels/max_pixels);
                               nothing else (no tokenizer), to keep the fixtures small.
  llava_onevision_tiny_sharded/ the LLaVA weights again in the hub's legacy layout (vision_tower.vision_model.*),
                               2 shards + index, config.json and preprocessor_config.json.
The sharded copies hold the weights in bfloat16, as the hub checkpoints do; each is loaded back with
from_pretrained (as fp32) and must reproduce exactly the logits of the original model with its weights
rounded to bf16, which proves that HF accepts that layout and config.
"""

import argparse
import hashlib
import io
import json
import math
import os
import shutil
import sys

import numpy as np
import PIL
import safetensors
import torch
import transformers
from PIL import Image, ImageDraw
from safetensors.torch import save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER_DIR = os.path.join(REPO, "tests", "fixtures", "tokenizer")

# Parameter-name layouts, recorded in the reference files. transformers 5.24's save_pretrained writes the
# hub layout for Qwen2.5-VL ("visual.*", "model.*", "lm_head.weight") and, for LLaVA-OneVision,
# "vision_tower.*" (SigLIP without its "vision_model." level), "multi_modal_projector.*", "image_newline",
# "language_model.model.*", "language_model.lm_head.weight".
NAME_LAYOUTS = {
    "qwen2_5_vl_tiny": "transformers 5.24 save_pretrained: visual.*, model.{embed_tokens,layers,norm}.*, lm_head.weight",
    "qwen2_5_vl_tiny_sharded": "in-memory / transformers 4.5x layout: model.visual.*, model.language_model.*, lm_head.weight",
    "llava_onevision_tiny": "transformers 5.24 save_pretrained: vision_tower.{embeddings,encoder,post_layernorm}.*, "
    "multi_modal_projector.*, image_newline, language_model.model.*, language_model.lm_head.weight",
    "llava_onevision_tiny_sharded": "hub legacy layout (conversion script): vision_tower.vision_model.*, "
    "multi_modal_projector.*, image_newline, language_model.model.*, language_model.lm_head.weight",
}

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def set_determinism():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


# ----------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------

def gradient_shapes(height, width, seed):
    """An RGB image of smooth gradients with a few flat shapes and lines: compresses well as PNG and
    has both smooth areas and sharp edges for the resampler."""
    rng = np.random.RandomState(seed)
    y = np.arange(height, dtype=np.float64)[:, None] / max(height - 1, 1)
    x = np.arange(width, dtype=np.float64)[None, :] / max(width - 1, 1)
    a, b, c = rng.uniform(0.2, 1.0, size=3)
    r = 255 * (a * x + (1 - a) * y)
    g = 255 * (0.5 + 0.5 * np.sin(2 * np.pi * (b * x + c * y)))
    bl = 255 * (1 - x) * (1 - y * c)
    arr = np.stack([r, g, bl], axis=-1).clip(0, 255).round().astype(np.uint8)
    img = Image.fromarray(arr, mode="RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, x1 = sorted(rng.randint(0, width, size=2).tolist())
        y0, y1 = sorted(rng.randint(0, height, size=2).tolist())
        color = tuple(int(v) for v in rng.randint(0, 256, size=3))
        kind = rng.randint(0, 3)
        if kind == 0:
            draw.rectangle([x0, y0, x1, y1], fill=color)
        elif kind == 1:
            draw.ellipse([x0, y0, x1, y1], fill=color)
        else:
            draw.line([x0, y0, x1, y1], fill=color, width=int(rng.randint(1, 4)))
    return img


def noise_image(height, width, seed, channels=3):
    rng = np.random.RandomState(seed)
    arr = rng.randint(0, 256, size=(height, width, channels)).astype(np.uint8)
    return arr


def save_png(img, path):
    img.save(path, format="PNG", optimize=False, compress_level=9)


def u8(t):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(t, dtype=np.uint8)))


def make_images(out_dir):
    """Writes the test images and the PIL references of the image tests. Returns {name: path}."""
    d = os.path.join(out_dir, "images")
    os.makedirs(d, exist_ok=True)
    paths = {}
    ref = {}
    cases = {"resize": []}

    # Qwen image A: 101 x 159 (H x W) -> smart_resize 112 x 168 (neither side a multiple of 28).
    img = gradient_shapes(101, 159, seed=1)
    paths["qwen_a"] = os.path.join(d, "qwen_a_101x159.png")
    save_png(img, paths["qwen_a"])
    # Qwen image B: grayscale 70 x 45 -> smart_resize rounds 70/28 = 2.5 half-to-even to 2 -> 56 x 56.
    gray = gradient_shapes(70, 45, seed=2).convert("L")
    paths["qwen_b_gray"] = os.path.join(d, "qwen_b_gray_70x45.png")
    save_png(gray, paths["qwen_b_gray"])
    # LLaVA image C: 233 x 410 -> best resolution 384 x 768 (2 tiles), unpadded to 27 x 48 features.
    img = gradient_shapes(233, 410, seed=3)
    paths["llava_c"] = os.path.join(d, "llava_c_233x410.png")
    save_png(img, paths["llava_c"])
    # LLaVA image D: 900 x 1203 -> best resolution 1152 x 1536 (12 tiles), anyres_max_9 downsample (ratio > 1.1).
    img = gradient_shapes(900, 1203, seed=4)
    paths["llava_d"] = os.path.join(d, "llava_d_900x1203.png")
    save_png(img, paths["llava_d"])

    # Decoding references: an RGBA PNG with varied alpha (HF composites it onto white), a palette PNG,
    # a gray+alpha PNG and a JPEG (4:2:0, quality 90).
    rgba = np.concatenate([noise_image(13, 17, seed=5), (np.arange(13 * 17).reshape(13, 17, 1) * 7 % 256).astype(np.uint8)], axis=-1)
    rgba[0, :4, 3] = [0, 255, 1, 254]
    paths["rgba"] = os.path.join(d, "rgba_13x17.png")
    save_png(Image.fromarray(rgba, mode="RGBA"), paths["rgba"])
    la = np.stack([noise_image(9, 11, seed=6, channels=1)[..., 0], (np.arange(99).reshape(9, 11) * 29 % 256).astype(np.uint8)], axis=-1)
    paths["gray_alpha"] = os.path.join(d, "gray_alpha_9x11.png")
    save_png(Image.fromarray(la, mode="LA"), paths["gray_alpha"])
    pal = gradient_shapes(21, 19, seed=7).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    paths["palette"] = os.path.join(d, "palette_21x19.png")
    save_png(pal, paths["palette"])
    jpg = gradient_shapes(48, 64, seed=8)
    paths["jpeg"] = os.path.join(d, "photo_48x64.jpg")
    jpg.save(paths["jpeg"], format="JPEG", quality=90, optimize=False, progressive=False)

    # What HF's processors see after decoding: transformers.image_transforms.convert_to_rgb (composites
    # alpha onto white), as uint8 HWC.
    from transformers.image_transforms import convert_to_rgb
    for key in ["qwen_a", "qwen_b_gray", "rgba", "gray_alpha", "palette", "jpeg"]:
        with Image.open(paths[key]) as im:
            ref[f"decoded.{key}"] = u8(convert_to_rgb(im, return_numpy=True))

    # PIL resize references (Image.resize on 8-bit RGB, as HF's slow processors call it).
    src = Image.fromarray(noise_image(37, 53, seed=9), mode="RGB")
    paths["noise"] = os.path.join(d, "noise_37x53.png")
    save_png(src, paths["noise"])
    smooth = Image.open(paths["qwen_a"]).convert("RGB")
    resizes = [
        ("noise", src, (37, 53), "bicubic"), ("noise", src, (74, 106), "bicubic"), ("noise", src, (100, 31), "bicubic"),
        ("noise", src, (13, 19), "bicubic"), ("noise", src, (5, 7), "bicubic"), ("noise", src, (1, 1), "bicubic"),
        ("noise", src, (53, 37), "bicubic"), ("noise", src, (37, 200), "bicubic"), ("noise", src, (3, 53), "bicubic"),
        # Pillow 13 runs the vertical pass first when the height shrinks by over twice the width's pixels.
        ("noise", src, (20, 50), "bicubic"), ("noise", src, (12, 60), "bicubic"), ("noise", src, (15, 49), "bilinear"),
        ("noise", src, (74, 106), "bilinear"), ("noise", src, (13, 19), "bilinear"), ("noise", src, (40, 29), "bilinear"),
        ("qwen_a", smooth, (112, 168), "bicubic"), ("qwen_a", smooth, (60, 60), "bicubic"), ("qwen_a", smooth, (28, 56), "bicubic"),
    ]
    filters = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
    for i, (name, im, (h, w), filt) in enumerate(resizes):
        key = f"resize.{i}"
        ref[key] = u8(np.array(im.resize((w, h), resample=filters[filt])))
        cases["resize"].append({"key": key, "source": os.path.basename(paths[name]), "height": h, "width": w, "filter": filt})

    # Processor-arithmetic cases computed by HF's own functions.
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    from transformers.image_processing_utils import select_best_resolution
    sr = []
    for (h, w, mn, mx) in [(101, 159, 3136, 12845056), (70, 45, 3136, 12845056), (42, 42, 3136, 12845056),
                           (14, 14, 3136, 12845056), (10, 2000, 3136, 12845056), (1000, 1000, 3136, 200704),
                           (3000, 4000, 3136, 12845056), (5000, 7000, 3136, 12845056), (126, 98, 3136, 12845056),
                           (154, 182, 3136, 12845056), (1080, 1920, 3136, 1003520), (28, 28, 3136, 12845056),
                           (33, 600, 3136, 12845056), (2000, 11, 3136, 12845056), (699, 1301, 100000, 200000)]:
        rh, rw = smart_resize(h, w, factor=28, min_pixels=mn, max_pixels=mx)
        sr.append({"height": h, "width": w, "min_pixels": mn, "max_pixels": mx, "resized_height": rh, "resized_width": rw})
    cases["smart_resize"] = sr
    pinpoints = [[a, b] for a in (384, 768, 1152, 1536, 1920, 2304) for b in (384, 768, 1152, 1536, 1920, 2304)]
    sb = []
    for (h, w) in [(233, 410), (900, 1203), (384, 384), (100, 100), (768, 384), (384, 768), (1000, 3000),
                   (3000, 1000), (500, 700), (5000, 5000), (10, 4000), (577, 577), (1152, 1536), (800, 1100)]:
        best = select_best_resolution((h, w), pinpoints)
        sb.append({"height": h, "width": w, "best": [int(best[0]), int(best[1])]})
    cases["select_best_resolution"] = {"pinpoints": pinpoints, "cases": sb}

    save_file(ref, os.path.join(d, "pil_reference.safetensors"), metadata={"format": "pt"})
    meta = {
        "generator": "tools/make_model_fixtures.py",
        "versions": versions(),
        "images": {k: os.path.basename(v) for k, v in paths.items()},
        "decoded": "decoded.<key>: transformers.image_transforms.convert_to_rgb(PIL.Image.open(file)) as uint8 [H, W, 3] "
                   "(alpha composited onto white)",
        "cases": cases,
    }
    write_json(meta, os.path.join(d, "images.json"))
    return paths


# ----------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------

def load_tokenizer():
    if not os.path.isfile(os.path.join(TOKENIZER_DIR, "tokenizer.json")):
        sys.exit(f"make_model_fixtures.py: R1's tokenizer fixture is missing: {TOKENIZER_DIR}/tokenizer.json "
                 "(run tools/make_tokenizer_fixture.py first)")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def token_id(tok, text):
    i = tok.convert_tokens_to_ids(text)
    if i is None or tok.convert_ids_to_tokens(int(i)) != text:
        sys.exit(f"make_model_fixtures.py: the tokenizer fixture has no token {text!r}")
    return int(i)


def chat_template(kind):
    with open(os.path.join(TOKENIZER_DIR, "chat_templates.json"), encoding="utf-8") as f:
        return json.load(f)[kind]


def copy_tokenizer(model_dir, kind):
    """tokenizer.json as R1 made it; tokenizer_config.json with this model's chat template (R1's holds the
    Qwen2.5-VL one); chat_template.json as processors save it."""
    shutil.copyfile(os.path.join(TOKENIZER_DIR, "tokenizer.json"), os.path.join(model_dir, "tokenizer.json"))
    with open(os.path.join(TOKENIZER_DIR, "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    cfg["chat_template"] = chat_template(kind)
    write_json(cfg, os.path.join(model_dir, "tokenizer_config.json"))
    write_json({"chat_template": chat_template(kind)}, os.path.join(model_dir, "chat_template.json"))


def render(tok, kind, messages, add_generation_prompt=True):
    return tok.apply_chat_template(messages, chat_template=chat_template(kind), tokenize=False,
                                   add_generation_prompt=add_generation_prompt)


def padded_vocab(tok):
    # Real checkpoints pad the embedding rows past the tokenizer (Qwen2.5-VL: 152064 rows for 151665 tokens).
    n = len(tok)
    return ((n + 63) // 64) * 64


# ----------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------

def versions():
    return {"transformers": transformers.__version__, "torch": torch.__version__, "pillow": PIL.__version__,
            "safetensors": safetensors.__version__, "numpy": np.__version__}


def write_json(obj, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def strided_positions(mask, stride):
    """Positions where mask is true, every `stride`-th one plus the last."""
    pos = torch.nonzero(mask, as_tuple=False).flatten()
    if pos.numel() == 0:
        return pos
    sel = pos[::stride]
    if sel[-1] != pos[-1]:
        sel = torch.cat([sel, pos[-1:]])
    return sel


def response_logprobs(model, full_ids, prompt_len, **kwargs):
    with torch.no_grad():
        logits = model(input_ids=full_ids, **kwargs).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    tgt = full_ids[0, prompt_len:]
    return logp[prompt_len - 1:-1].gather(1, tgt[:, None])[:, 0].contiguous()


def write_sharded(state, out_dir, shard_split):
    """Writes `state` (name -> tensor) in bfloat16 (as the hub checkpoints are stored) as a 2-shard
    checkpoint with model.safetensors.index.json."""
    names = sorted(state)
    first = [n for n in names if shard_split(n)]
    second = [n for n in names if not shard_split(n)]
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {}
    total = 0
    for fname, part in zip(files, [first, second]):
        save_file({n: state[n].to(torch.bfloat16).contiguous() for n in part}, os.path.join(out_dir, fname), metadata={"format": "pt"})
        for n in part:
            weight_map[n] = fname
            total += state[n].numel() * state[n].element_size()
    write_json({"metadata": {"total_size": total}, "weight_map": weight_map}, os.path.join(out_dir, "model.safetensors.index.json"))


def copy_non_weights(src_dir, dst_dir, names):
    for name in names:
        shutil.copyfile(os.path.join(src_dir, name), os.path.join(dst_dir, name))


def tidy_processor_config(path):
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    write_json(cfg, path)


# ----------------------------------------------------------------------------------------------------
# Qwen2.5-VL
# ----------------------------------------------------------------------------------------------------

QWEN_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def qwen_prompt(text, with_image):
    image = "<|vision_start|><|image_pad|><|vision_end|>" if with_image else ""
    return f"{QWEN_SYSTEM}<|im_start|>user\n{image}{text}<|im_end|>\n<|im_start|>assistant\n"


def qwen_inputs(ip, tok, prompt, image, image_id):
    """What Qwen2_5_VLProcessor does (it cannot be built here without torchvision's video processor): run the
    image processor, expand each <|image_pad|> to t*h*w/4 copies, tokenize, and mark image tokens as type 1."""
    px = ip(images=[image], return_tensors="pt")
    n = int(px["image_grid_thw"][0].prod()) // (ip.merge_size ** 2)
    assert prompt.count("<|image_pad|>") == 1
    text = prompt.replace("<|image_pad|>", "<|image_pad|>" * n)
    input_ids = torch.tensor([tok.encode(text, add_special_tokens=False)], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "mm_token_type_ids": (input_ids == image_id).to(torch.int32),
            "pixel_values": px["pixel_values"], "image_grid_thw": px["image_grid_thw"]}


def make_qwen(out_dir, tok, images):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    name = "qwen2_5_vl_tiny"
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    ids = {k: token_id(tok, v) for k, v in [("image", "<|image_pad|>"), ("video", "<|video_pad|>"),
                                            ("vision_start", "<|vision_start|>"), ("vision_end", "<|vision_end|>"),
                                            ("vision_pad", "<|vision_pad|>"), ("endoftext", "<|endoftext|>"),
                                            ("im_start", "<|im_start|>"), ("im_end", "<|im_end|>")]}
    set_determinism()
    cfg = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=padded_vocab(tok), rms_norm_eps=1e-6,
                         max_position_embeddings=4096, bos_token_id=ids["endoftext"], eos_token_id=ids["im_end"],
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=[1, 3], window_size=112, patch_size=14, temporal_patch_size=2,
                           spatial_merge_size=2, tokens_per_second=2),
        image_token_id=ids["image"], video_token_id=ids["video"], vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"], bos_token_id=ids["endoftext"], eos_token_id=ids["im_end"],
        tie_word_embeddings=False)
    cfg._attn_implementation = "eager"
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    # The default init leaves norms at 1 and biases at 0; perturb every parameter so that a loader that
    # swapped or skipped a tensor cannot still match.
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for pname, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    model.generation_config.do_sample = False
    model.generation_config.eos_token_id = [ids["im_end"], ids["endoftext"]]
    model.generation_config.pad_token_id = ids["endoftext"]
    model.save_pretrained(d, safe_serialization=True)

    ip = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 16384, image_mean=CLIP_MEAN, image_std=CLIP_STD,
                                  patch_size=14, temporal_patch_size=2, merge_size=2)
    ip.save_pretrained(d)
    tidy_processor_config(os.path.join(d, "preprocessor_config.json"))
    copy_tokenizer(d, "qwen2_5_vl")

    img_a = Image.open(images["qwen_a"])
    img_b = Image.open(images["qwen_b_gray"])
    shutil.copyfile(images["qwen_a"], os.path.join(d, os.path.basename(images["qwen_a"])))
    ref = {}

    # Processor + vision encoder on both images at once (two entries in image_grid_thw).
    both = ip(images=[img_a, img_b], return_tensors="pt")
    ref["pixel_values"] = both["pixel_values"].float().contiguous()
    ref["image_grid_thw"] = both["image_grid_thw"].long().contiguous()
    with torch.no_grad():
        vis = model.model.visual(both["pixel_values"], grid_thw=both["image_grid_thw"])
    ref["vision_features"] = vis.pooler_output.float().contiguous()
    # Window bookkeeping of HF, for debugging ports (not needed by the forward).
    from transformers.vision_utils import get_vision_window_index
    widx, cuw = get_vision_window_index(both["image_grid_thw"], 2, 112, 14)
    ref["window_index"] = widx.long().contiguous()
    ref["cu_window_seqlens"] = cuw.long().contiguous()

    # Full model on a prompt with image A.
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this picture."}]}]
    prompt = render(tok, "qwen2_5_vl", messages)
    assert prompt == qwen_prompt("Describe this picture.", True), prompt
    inputs = qwen_inputs(ip, tok, prompt, img_a, ids["image"])
    input_ids = inputs["input_ids"]
    image_mask = input_ids[0] == ids["image"]
    model.model.rope_deltas = None
    with torch.no_grad():
        out = model(**inputs)
    logits = out.logits[0].float()
    text_pos = torch.nonzero(~image_mask).flatten()
    img_pos = strided_positions(image_mask, 5)
    ref["prompt_input_ids"] = input_ids.long().contiguous()
    assert torch.equal(inputs["pixel_values"], both["pixel_values"][: inputs["pixel_values"].shape[0]])
    ref["prompt_image_grid_thw"] = inputs["image_grid_thw"].long().contiguous()
    ref["prompt_logits_text_positions"] = text_pos.long().contiguous()
    ref["prompt_logits_text"] = logits[text_pos].contiguous()
    ref["prompt_logits_image_positions"] = img_pos.long().contiguous()
    ref["prompt_logits_image"] = logits[img_pos].contiguous()
    pos_ids, deltas = model.model.get_rope_index(input_ids, inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"],
                                                 attention_mask=inputs["attention_mask"])
    ref["prompt_position_ids"] = pos_ids.long().contiguous()
    ref["prompt_rope_deltas"] = deltas.long().reshape(-1).contiguous()

    # Greedy continuation (HF generate, KV cache, stops on <|im_end|> or <|endoftext|>).
    model.model.rope_deltas = None
    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    ref["greedy_ids"] = gen[0, input_ids.shape[1]:].long().contiguous()
    model.model.rope_deltas = None

    # Teacher-forced log-probs of a response, with the image and without it.
    response = "A gradient with a red circle.<|im_end|>"
    resp_ids = torch.tensor([tok.encode(response, add_special_tokens=False)], dtype=torch.long)
    full = torch.cat([input_ids, resp_ids], dim=1)
    ref["response_ids"] = resp_ids[0].contiguous()
    ref["response_logprobs"] = response_logprobs(
        model, full, input_ids.shape[1], pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
        mm_token_type_ids=(full == ids["image"]).to(torch.int32))

    # Text-only prompt: all logits.
    text_messages = [{"role": "user", "content": [{"type": "text", "text": "Count to five: 1, 2, 3"}]}]
    text_prompt = render(tok, "qwen2_5_vl", text_messages)
    assert text_prompt == qwen_prompt("Count to five: 1, 2, 3", False), text_prompt
    text_ids = torch.tensor([tok.encode(text_prompt, add_special_tokens=False)], dtype=torch.long)
    with torch.no_grad():
        text_logits = model(input_ids=text_ids).logits[0].float()
    ref["text_input_ids"] = text_ids[0].contiguous()
    ref["text_logits"] = text_logits.contiguous()
    full_t = torch.cat([text_ids, resp_ids], dim=1)
    ref["text_response_logprobs"] = response_logprobs(model, full_t, text_ids.shape[1])

    save_file(ref, os.path.join(d, "reference.safetensors"), metadata={"format": "pt"})
    meta = {
        "generator": "tools/make_model_fixtures.py",
        "versions": versions(),
        "architecture": "Qwen2_5_VLForConditionalGeneration",
        "attn_implementation": "eager",
        "dtype": "float32",
        "parameter_names": NAME_LAYOUTS[name],
        "sharded_copy": {"dir": name + "_sharded", "parameter_names": NAME_LAYOUTS[name + "_sharded"],
                         "dtype": "bfloat16 (the weights of this model rounded to bf16)", "shards": 2},
        "token_ids": ids,
        "images": [os.path.basename(images["qwen_a"]), os.path.basename(images["qwen_b_gray"])],
        "image_sizes_hw": [[img_a.height, img_a.width], [img_b.height, img_b.width]],
        "vision": "pixel_values / image_grid_thw / vision_features: processor and model.model.visual on "
                  "[images[0], images[1]] together; vision_features is the merger output in raster order",
        "prompt": prompt,
        "messages": messages,
        "text_messages": text_messages,
        "prompt_images": [os.path.basename(images["qwen_a"])],
        "prompt_pixel_values": "the prompt's pixel_values are the first prod(prompt_image_grid_thw) rows of pixel_values",
        "num_image_tokens": int(image_mask.sum()),
        "logits": "prompt_logits_text at every non-image position, prompt_logits_image at every 5th image "
                  "position (plus the last); positions index prompt_input_ids",
        "greedy": {"max_new_tokens": 8, "do_sample": False, "stop_ids": [ids["im_end"], ids["endoftext"]],
                   "text": tok.decode(ref["greedy_ids"].tolist())},
        "response": response,
        "response_logprobs": "log_softmax(logits[t-1])[ids[t]] for the response tokens after the image prompt "
                             "(response_logprobs) and after the text-only prompt (text_response_logprobs)",
        "text_prompt": text_prompt,
        "vocab_size": cfg.text_config.vocab_size,
        "tokenizer_size": len(tok),
    }
    write_json(meta, os.path.join(d, "reference.json"))

    # Sibling: the other name layout, sharded, with a flat (hub-style) config and a hub-style processor config.
    sd = os.path.join(out_dir, name + "_sharded")
    os.makedirs(sd, exist_ok=True)

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    write_sharded(state, sd, lambda n: n.startswith("model.visual.") or ".layers.0." in n)
    cfg_saved = json.load(open(os.path.join(d, "config.json"), encoding="utf-8"))
    flat = {k: v for k, v in cfg_saved.items() if k != "text_config"}
    text = dict(cfg_saved["text_config"])
    rope = text.pop("rope_parameters")
    text.pop("model_type", None)
    flat.update(text)
    flat["rope_theta"] = rope["rope_theta"]
    flat["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    flat["vision_config"] = dict(cfg_saved["vision_config"])
    flat.pop("dtype", None)
    flat["torch_dtype"] = "bfloat16"
    write_json(flat, os.path.join(sd, "config.json"))
    pp = json.load(open(os.path.join(d, "preprocessor_config.json"), encoding="utf-8"))
    hub_pp = {"min_pixels": pp["size"]["shortest_edge"], "max_pixels": pp["size"]["longest_edge"],
              "patch_size": pp["patch_size"], "temporal_patch_size": pp["temporal_patch_size"], "merge_size": pp["merge_size"],
              "image_mean": pp["image_mean"], "image_std": pp["image_std"], "image_processor_type": "Qwen2VLImageProcessor",
              "processor_class": "Qwen2_5_VLProcessor"}
    write_json(hub_pp, os.path.join(sd, "preprocessor_config.json"))
    check_reload(Qwen2_5_VLForConditionalGeneration, model, sd, inputs)
    ip2 = Qwen2VLImageProcessorPil.from_pretrained(sd)
    again = ip2(images=[img_a, img_b], return_tensors="pt")
    assert torch.equal(again["pixel_values"], both["pixel_values"]), "hub-style preprocessor_config differs"


def check_reload(cls, model, model_dir, inputs):
    """The bf16 sharded copy, loaded by HF as fp32, must give exactly the logits of `model` with its
    weights rounded to bf16: proof that HF reads that name layout and config."""
    import copy
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(torch.bfloat16).float())
        if hasattr(rounded.model, "rope_deltas"):
            rounded.model.rope_deltas = None
        logits = rounded(**inputs).logits[0].float()
    m = cls.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        again = m(**inputs).logits[0].float()
    if not torch.equal(again, logits):
        sys.exit(f"make_model_fixtures.py: {model_dir} does not reproduce the logits "
                 f"(max diff {(again - logits).abs().max().item()})")


# ----------------------------------------------------------------------------------------------------
# LLaVA-OneVision
# ----------------------------------------------------------------------------------------------------

def llava_prompt(text, with_image):
    image = "<image>\n" if with_image else ""
    return f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{image}{text}<|im_end|>\n<|im_start|>assistant\n"


def llava_token_counter(ip):
    """A LlavaOnevisionProcessor for its token-count methods only (its constructor wants torchvision's video
    processor, which is not installed): _get_number_of_features is HF's own code."""
    from transformers import LlavaOnevisionProcessor
    p = object.__new__(LlavaOnevisionProcessor)
    p.image_processor = ip
    p.num_image_tokens = 729
    p.vision_feature_select_strategy = "full"
    p.vision_aspect_ratio = "anyres_max_9"
    return p


def make_llava(out_dir, tok, images):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

    name = "llava_onevision_tiny"
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    ids = {k: token_id(tok, v) for k, v in [("image", "<image>"), ("video", "<video>"), ("endoftext", "<|endoftext|>"),
                                            ("im_start", "<|im_start|>"), ("im_end", "<|im_end|>")]}
    pinpoints = [[a, b] for a in (384, 768, 1152, 1536, 1920, 2304) for b in (384, 768, 1152, 1536, 1920, 2304)]
    set_determinism()
    cfg = LlavaOnevisionConfig(
        text_config=dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=padded_vocab(tok), rms_norm_eps=1e-6,
                         max_position_embeddings=8192, bos_token_id=ids["endoftext"], eos_token_id=ids["im_end"],
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=False),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=2, image_size=384, patch_size=14, vision_use_head=False,
                           layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh"),
        image_token_index=ids["image"], video_token_index=ids["video"], image_grid_pinpoints=pinpoints,
        vision_aspect_ratio="anyres_max_9", vision_feature_layer=-1, vision_feature_select_strategy="full",
        projector_hidden_act="gelu", multimodal_projector_bias=True, tie_word_embeddings=False)
    cfg._attn_implementation = "eager"
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        for pname, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    model.generation_config.do_sample = False
    model.generation_config.eos_token_id = [ids["im_end"], ids["endoftext"]]
    model.generation_config.pad_token_id = ids["endoftext"]
    model.save_pretrained(d, safe_serialization=True)

    ip = LlavaOnevisionImageProcessorPil(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], size={"height": 384, "width": 384},
                                         image_grid_pinpoints=pinpoints, do_pad=True)
    ip.save_pretrained(d)
    tidy_processor_config(os.path.join(d, "preprocessor_config.json"))
    copy_tokenizer(d, "llava_onevision")
    processor = llava_token_counter(ip)

    img_c = Image.open(images["llava_c"])
    img_d = Image.open(images["llava_d"])
    shutil.copyfile(images["llava_c"], os.path.join(d, os.path.basename(images["llava_c"])))
    ref = {}

    # Image C: pixel values (row/column sums in float64 and a strided sample; the full tensor would be
    # 1.7 MB per tile) and the packed vision features.
    pc = ip(images=[img_c], return_tensors="pt")
    pv = pc["pixel_values"][0].float()  # [1 + tiles, 3, 384, 384]
    ref["pixel_values_shape"] = torch.tensor(list(pv.shape), dtype=torch.long)
    ref["pixel_values_row_sums"] = pv.double().sum(dim=3).contiguous()
    ref["pixel_values_col_sums"] = pv.double().sum(dim=2).contiguous()
    ref["pixel_values_sample"] = pv[:, :, ::11, ::7].contiguous()
    ref["image_sizes"] = pc["image_sizes"].long().contiguous()
    with torch.no_grad():
        feats = model.model.get_image_features(pc["pixel_values"], pc["image_sizes"], vision_feature_layer=-1,
                                               vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
                                               batch_num_images=pc["batch_num_images"])
        tower = model.model.vision_tower(pc["pixel_values"][0], output_hidden_states=True)
    ref["vision_features"] = feats.pooler_output[0].float().contiguous()
    # SigLIP output before post_layernorm (what the projector sees) for the base tile, every 7th token.
    ref["siglip_hidden_base_sample"] = tower.hidden_states[-1][0, ::7].float().contiguous()

    # Image D: 12 tiles and the anyres_max_9 bilinear downsample. Features sampled every 32nd token plus sums.
    pdd = ip(images=[img_d], return_tensors="pt")
    pvd = pdd["pixel_values"][0].float()
    ref["large.pixel_values_shape"] = torch.tensor(list(pvd.shape), dtype=torch.long)
    ref["large.pixel_values_row_sums"] = pvd.double().sum(dim=3).contiguous()
    ref["large.image_sizes"] = pdd["image_sizes"].long().contiguous()
    with torch.no_grad():
        fd = model.model.get_image_features(pdd["pixel_values"], pdd["image_sizes"], vision_feature_layer=-1,
                                            vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
                                            batch_num_images=pdd["batch_num_images"]).pooler_output[0].float()
    ref["large.vision_features_sample"] = fd[::32].contiguous()
    ref["large.vision_features_sum"] = fd.double().sum(dim=0).contiguous()
    ref["large.num_image_tokens"] = torch.tensor([fd.shape[0]], dtype=torch.long)

    # Full model on a prompt with image C.
    system = {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]}
    messages = [system, {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown in this image?"}]}]
    prompt = render(tok, "llava_onevision", messages)
    assert prompt == llava_prompt("What is shown in this image?", True), prompt
    n_img = processor._get_number_of_features(img_c.height, img_c.width, 384, 384)
    text = prompt.replace("<image>", "<image>" * n_img)
    input_ids = torch.tensor([tok.encode(text, add_special_tokens=False)], dtype=torch.long)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": pc["pixel_values"],
              "image_sizes": pc["image_sizes"], "batch_num_images": pc["batch_num_images"]}
    image_mask = input_ids[0] == ids["image"]
    assert int(image_mask.sum()) == ref["vision_features"].shape[0]
    with torch.no_grad():
        out = model(**inputs)
    logits = out.logits[0].float()
    text_pos = torch.nonzero(~image_mask).flatten()
    img_pos = strided_positions(image_mask, 101)
    ref["prompt_input_ids"] = input_ids.long().contiguous()
    ref["prompt_logits_text_positions"] = text_pos.long().contiguous()
    ref["prompt_logits_text"] = logits[text_pos].contiguous()
    ref["prompt_logits_image_positions"] = img_pos.long().contiguous()
    ref["prompt_logits_image"] = logits[img_pos].contiguous()
    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    ref["greedy_ids"] = gen[0, input_ids.shape[1]:].long().contiguous()

    response = "A gradient with a red circle.<|im_end|>"
    resp_ids = torch.tensor([tok.encode(response, add_special_tokens=False)], dtype=torch.long)
    full = torch.cat([input_ids, resp_ids], dim=1)
    ref["response_ids"] = resp_ids[0].contiguous()
    ref["response_logprobs"] = response_logprobs(model, full, input_ids.shape[1], pixel_values=inputs["pixel_values"],
                                                 image_sizes=inputs["image_sizes"], batch_num_images=inputs["batch_num_images"])

    text_messages = [system, {"role": "user", "content": [{"type": "text", "text": "Count to five: 1, 2, 3"}]}]
    text_prompt = render(tok, "llava_onevision", text_messages)
    assert text_prompt == llava_prompt("Count to five: 1, 2, 3", False), text_prompt
    text_ids = torch.tensor([tok.encode(text_prompt, add_special_tokens=False)], dtype=torch.long)
    with torch.no_grad():
        text_logits = model(input_ids=text_ids).logits[0].float()
    ref["text_input_ids"] = text_ids[0].contiguous()
    ref["text_logits"] = text_logits.contiguous()
    ref["text_response_logprobs"] = response_logprobs(model, torch.cat([text_ids, resp_ids], dim=1), text_ids.shape[1])

    save_file(ref, os.path.join(d, "reference.safetensors"), metadata={"format": "pt"})
    meta = {
        "generator": "tools/make_model_fixtures.py",
        "versions": versions(),
        "architecture": "LlavaOnevisionForConditionalGeneration",
        "attn_implementation": "eager",
        "dtype": "float32",
        "parameter_names": NAME_LAYOUTS[name],
        "sharded_copy": {"dir": name + "_sharded", "parameter_names": NAME_LAYOUTS[name + "_sharded"],
                         "dtype": "bfloat16 (the weights of this model rounded to bf16)", "shards": 2},
        "token_ids": ids,
        "images": [os.path.basename(images["llava_c"]), os.path.basename(images["llava_d"])],
        "image_sizes_hw": [[img_c.height, img_c.width], [img_d.height, img_d.width]],
        "pixel_values": "processor output [1 + tiles, 3, 384, 384] of images[0]: pixel_values_row_sums = sum over "
                        "width (float64) [n, 3, 384], pixel_values_col_sums = sum over height, pixel_values_sample = "
                        "pv[:, :, ::11, ::7]; large.* the same for images[1] (row sums only)",
        "vision": "vision_features = model.model.get_image_features(...).pooler_output[0] for images[0] "
                  "(SigLIP hidden_states[-1], projector, anyres packing with unpad and image_newline); "
                  "large.vision_features_sample = every 32nd row for images[1], large.vision_features_sum its "
                  "column sums (float64); siglip_hidden_base_sample = SigLIP hidden_states[-1] of the base tile, "
                  "every 7th token",
        "prompt": prompt,
        "messages": messages,
        "text_messages": text_messages,
        "prompt_images": [os.path.basename(images["llava_c"])],
        "num_image_tokens": int(image_mask.sum()),
        "logits": "prompt_logits_text at every non-image position, prompt_logits_image at every 101st image "
                  "position (plus the last); positions index prompt_input_ids",
        "greedy": {"max_new_tokens": 8, "do_sample": False, "stop_ids": [ids["im_end"], ids["endoftext"]],
                   "text": tok.decode(ref["greedy_ids"].tolist())},
        "response": response,
        "response_logprobs": "log_softmax(logits[t-1])[ids[t]] for the response tokens after the image prompt "
                             "(response_logprobs) and after the text-only prompt (text_response_logprobs)",
        "text_prompt": text_prompt,
        "vocab_size": cfg.text_config.vocab_size,
        "tokenizer_size": len(tok),
        "processor_token_counts": [],
    }
    # Token counts of the HF processor for a range of image sizes (anyres_max_9 with unpad / downsample).
    for (h, w) in [(233, 410), (900, 1203), (384, 384), (100, 100), (500, 700), (1000, 3000), (3000, 1000),
                   (577, 577), (1152, 1536), (800, 1100), (10, 4000), (2000, 2000)]:
        n = processor._get_number_of_features(h, w, 384, 384)
        meta["processor_token_counts"].append({"height": h, "width": w, "num_image_tokens": int(n)})
    write_json(meta, os.path.join(d, "reference.json"))

    # Sibling: hub legacy names (vision_tower.vision_model.*), 2 shards.
    sd = os.path.join(out_dir, name + "_sharded")
    os.makedirs(sd, exist_ok=True)
    copy_non_weights(d, sd, ["preprocessor_config.json"])
    cfg_saved = json.load(open(os.path.join(d, "config.json"), encoding="utf-8"))
    cfg_saved["dtype"] = "bfloat16"
    write_json(cfg_saved, os.path.join(sd, "config.json"))
    from safetensors.torch import load_file
    saved = load_file(os.path.join(d, "model.safetensors"))
    legacy = {}
    for k, v in saved.items():
        if k.startswith("vision_tower."):
            k = "vision_tower.vision_model." + k[len("vision_tower."):]
        legacy[k] = v
    write_sharded(legacy, sd, lambda n: n.startswith(("vision_tower.", "multi_modal_projector.", "image_newline")))
    check_reload(LlavaOnevisionForConditionalGeneration, model, sd, inputs)


def main():
    global TOKENIZER_DIR
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "models"))
    ap.add_argument("--tokenizer", default=TOKENIZER_DIR, help="tokenizer fixture directory (default: R1's)")
    args = ap.parse_args()
    TOKENIZER_DIR = args.tokenizer
    set_determinism()
    transformers.logging.set_verbosity_error()
    os.makedirs(args.out, exist_ok=True)
    images = make_images(args.out)
    tok = load_tokenizer()
    make_qwen(args.out, tok, images)
    make_llava(args.out, tok, images)
    for root, _, files in sorted(os.walk(args.out)):
        for f in sorted(files):
            p = os.path.join(root, f)
            print(f"{os.path.relpath(p, args.out):60s} {os.path.getsize(p):>10d}  {hashlib.sha256(open(p, 'rb').read()).hexdigest()[:16]}")


if __name__ == "__main__":
    main()
