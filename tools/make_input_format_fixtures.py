#!/usr/bin/env python3
"""Writes tests/fixtures/input_formats/: the same two records in each input format the pipeline reads
besides its own (docs/pipeline.md "Input", issue 17 §3), made the way their users make them, for
tests/pipeline/test_input_formats.cpp.

The records follow RLAIF-V's schema (openbmb/RLAIF-V-Dataset: ds_name, image, question, chosen,
rejected, origin_dataset, origin_split, idx, image_path, every field a string except `image`, a
`datasets.Image()`), over two small fixture PNGs of tests/fixtures/models/images/. Files written:

- `rlaif_v.jsonl` (`--input-format hf`): a 2-row `datasets.Dataset` with that schema, exported with
  `Dataset.to_json` (JSON Lines, pandas' encoder: `/` written as `\\/`, non-ASCII as `\\uXXXX`).
  `to_json` cannot serialise the image column as it is (the PNG bytes are not UTF-8: pandas raises
  OverflowError), so the column is first cast to `datasets.Image(decode=False)` (rows hold
  `{"bytes", "path"}` instead of PIL images) and the bytes are base64-encoded with `Dataset.map`,
  which is what a user exporting RLAIF-V to JSON has to do; the records then carry
  `"image": {"bytes": "<base64 of the PNG file>", "path": "<file name>"}`.
- `images/<file name>`: the two PNGs, byte for byte (the image folder of the next two).
- `llava.json` (`--input-format llava`, with `--image-folder images/`): a LLaVA / LLaVA-NeXT
  training JSON array, `{"id", "image": <path relative to the image folder>, "conversations":
  [{"from": "human", "value": "<image>\\n<question>"}, {"from": "gpt", "value": <chosen>}]}`.
- `sharegpt.jsonl` (`--input-format sharegpt`): LLaMA-Factory's multimodal sharegpt records
  (`"messages"` with `role` / `content`, `"images"`: paths relative to the dataset directory, here the
  file's), `{"id", "messages": [{"role": "user", "content": "<image><question>"}, {"role":
  "assistant", "content": <chosen>}], "images": ["images/<file name>"]}`.
- `consr.jsonl`: the pipeline's own `{"id", "image", "prompt"}` for the same rows (the reference).

The output is deterministic (no timestamps, fixed key order, in-memory datasets); run it twice and
the files are byte-identical. `--check` writes to a temporary directory and compares with the
committed files instead (exit status 1 and the differing names when they differ).

Needs PyPI `datasets` (5.x) and Pillow: build/venv-torch/bin/python has them; CI never runs this.
Usage: build/venv-torch/bin/python tools/make_input_format_fixtures.py [--out DIR] [--check]
"""
import argparse
import base64
import filecmp
import json
import os
import shutil
import sys
import tempfile

import datasets
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_IMAGES = os.path.join(ROOT, "tests", "fixtures", "models", "images")
DEFAULT_OUT = os.path.join(ROOT, "tests", "fixtures", "input_formats")

# Two small PNGs the tiny Qwen2.5-VL fixture accepts (both sides >= 28 pixels), a grayscale one (the
# pipeline converts it to RGB) and an RGB one, whose pixels as PIL decodes them are in
# tests/fixtures/models/images/pil_reference.safetensors (decoded.qwen_b_gray, decoded.qwen_a). The questions carry a '/' (escaped by pandas),
# double quotes and a non-ASCII character (escaped by pandas, kept by json.dumps(ensure_ascii=False)).
ROWS = [
    {
        "file": "qwen_b_gray_70x45.png",
        "idx": "rlaif_v-0",
        "question": "What is shown in this gray/white picture?",
        "chosen": "A small grayscale pattern.",
        "rejected": "A red car parked on a street.",
    },
    {
        "file": "qwen_a_101x159.png",
        "idx": "rlaif_v-1",
        "question": 'Is the "main" colour smooth \u2014 yes or no?',
        "chosen": "No, the colours vary from pixel to pixel.",
        "rejected": "Yes, it is a plain blue sky.",
    },
]

FEATURES = Features(
    {
        "ds_name": Value("string"),
        "image": Image(),
        "question": Value("string"),
        "chosen": Value("string"),
        "rejected": Value("string"),
        "origin_dataset": Value("string"),
        "origin_split": Value("string"),
        "idx": Value("string"),
        "image_path": Value("string"),
    }
)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def build_dataset():
    """The 2-row dataset with RLAIF-V's features, the images given as their PNG files' bytes."""
    columns = {name: [] for name in FEATURES}
    for row in ROWS:
        png = read_bytes(os.path.join(SOURCE_IMAGES, row["file"]))
        with PILImage.open(os.path.join(SOURCE_IMAGES, row["file"])) as im:
            if im.format != "PNG" or min(im.size) < 28:
                sys.exit(f"{row['file']}: expected a PNG with both sides >= 28 pixels, got {im.format} {im.size}")
        columns["ds_name"].append("RLAIF-V")
        # {"bytes", "path"} keeps the file's bytes (a PIL image opened from a file would be stored by
        # its absolute path only, which would differ between checkouts).
        columns["image"].append({"bytes": png, "path": row["file"]})
        columns["question"].append(row["question"])
        columns["chosen"].append(row["chosen"])
        columns["rejected"].append(row["rejected"])
        columns["origin_dataset"].append("consr-fixture")
        columns["origin_split"].append(json.dumps({"model": "none", "type": "question_answering"}))
        columns["idx"].append(row["idx"])
        columns["image_path"].append("consr-fixture/images/" + row["file"])
    return Dataset.from_dict(columns, features=FEATURES)


def export_hf_jsonl(ds, path):
    """Dataset.to_json with the image bytes base64-encoded (see the module docstring)."""
    raw = ds.cast_column("image", Image(decode=False))
    encoded_features = raw.features.copy()
    encoded_features["image"] = {"bytes": Value("string"), "path": Value("string")}

    def encode(record):
        image = record["image"]
        return {"image": {"bytes": base64.b64encode(image["bytes"]).decode("ascii"), "path": image["path"]}}

    encoded = raw.map(encode, features=encoded_features)
    encoded.to_json(path)  # JSON Lines, one record per row, in the column order above
    return raw


def write_all(out):
    datasets.disable_progress_bars()
    ds = build_dataset()
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, "images"))
    raw = export_hf_jsonl(ds, os.path.join(out, "rlaif_v.jsonl"))

    llava, sharegpt, consr = [], [], []
    for record in raw:  # the rows as the dataset holds them (undecoded images)
        name = os.path.basename(record["image"]["path"])
        with open(os.path.join(out, "images", name), "wb") as f:
            f.write(record["image"]["bytes"])
        llava.append(
            {
                "id": record["idx"],
                "image": name,
                "conversations": [
                    {"from": "human", "value": "<image>\n" + record["question"]},
                    {"from": "gpt", "value": record["chosen"]},
                ],
            }
        )
        sharegpt.append(
            {
                "id": record["idx"],
                "messages": [
                    {"role": "user", "content": "<image>" + record["question"]},
                    {"role": "assistant", "content": record["chosen"]},
                ],
                "images": ["images/" + name],
            }
        )
        consr.append({"id": record["idx"], "image": "images/" + name, "prompt": record["question"]})

    write_text(os.path.join(out, "llava.json"), json.dumps(llava, indent=2, ensure_ascii=False) + "\n")
    write_text(os.path.join(out, "sharegpt.jsonl"), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sharegpt))
    write_text(os.path.join(out, "consr.jsonl"), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in consr))


def differing_files(a, b):
    """Relative paths present in only one of the trees or with different bytes."""
    names = set()
    for top in (a, b):
        for dirpath, _, files in os.walk(top):
            names.update(os.path.relpath(os.path.join(dirpath, f), top) for f in files)
    return sorted(
        n
        for n in names
        if not (os.path.isfile(os.path.join(a, n)) and os.path.isfile(os.path.join(b, n)))
        or not filecmp.cmp(os.path.join(a, n), os.path.join(b, n), shallow=False)
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="output directory (replaced; default %(default)s)")
    parser.add_argument("--check", action="store_true", help="compare a fresh build with --out instead of writing it")
    args = parser.parse_args()
    if not args.check:
        write_all(args.out)
        print(f"wrote {args.out}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = os.path.join(tmp, "input_formats")
        write_all(fresh)
        diff = differing_files(fresh, args.out)
    if diff:
        print(f"{args.out} differs from a fresh build: {', '.join(diff)}", file=sys.stderr)
        return 1
    print(f"{args.out} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
