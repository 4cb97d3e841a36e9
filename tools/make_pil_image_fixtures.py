#!/usr/bin/env python3
"""Writes tests/fixtures/images_pil/: small JPEG and PNG files of every kind the runtime must decode,
and the RGB arrays Pillow gives for them, for tests/runtime/test_image.cpp (bit-equality).

The reference is what the models see in transformers: `convert_to_rgb(PIL.Image.open(path))`
(transformers.image_transforms.convert_to_rgb, re-stated below so that transformers is not needed):
an "RGB" image is kept as decoded; any other mode is converted to "RGBA" (PIL's rules: palette
transparency, tRNS colour keys, 16-bit clipping), alpha-composited onto opaque white and converted to
"RGB". For images without transparency this equals `Image.convert("RGB")`.

Needs PyPI Pillow and numpy (e.g. `python3 -m venv /tmp/pil && /tmp/pil/bin/pip install pillow
numpy`); CI never runs it. Usage: tools/make_pil_image_fixtures.py [out_dir]

Files written: the images, `reference.safetensors` (one uint8 [H, W, 3] tensor per image, written
here without the safetensors package) and `images.json` (file, kind, PIL mode, Pillow version).
PNG variants that Pillow cannot write (16-bit RGB, 1/2/4-bit, tRNS colour keys) are encoded by hand.
"""
import io
import json
import os
import struct
import sys
import zlib

import numpy as np
import PIL
from PIL import Image, features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def convert_to_rgb(image):
    """transformers.image_transforms.convert_to_rgb (transformers 4.4x / 5.x)."""
    if image.mode == "RGB":
        return image
    image_rgba = image.convert("RGBA")
    background = Image.new("RGBA", image_rgba.size, (255, 255, 255))
    alpha_composite = Image.alpha_composite(background, image_rgba)
    return alpha_composite.convert("RGB")


def photo(h, w, seed):
    """A smooth colour field with sharp edges and noise: exercises chroma upsampling and the IDCT."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / 5.0 + seed) * np.cos(y / 7.0)
    g = 128 + 90 * np.cos((x + y) / 6.0)
    b = np.where((x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(h, w) / 3) ** 2, 230.0, 30.0)
    img = np.stack([r, g, b], axis=-1) + rng.normal(0, 12, (h, w, 3))
    img[h // 3 : h // 3 + 3, :, :] = [255, 0, 40]  # a saturated stripe: chroma edges
    return np.clip(img, 0, 255).astype(np.uint8)


# --- a minimal PNG writer (filter type 0 on every row) ---------------------------------------------
def _chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _pack_row(samples, bit_depth):
    if bit_depth == 16:
        return b"".join(struct.pack(">H", int(v)) for v in samples)
    if bit_depth == 8:
        return bytes(int(v) for v in samples)
    per_byte = 8 // bit_depth
    out = bytearray()
    for i in range(0, len(samples), per_byte):
        byte = 0
        for j in range(per_byte):
            v = int(samples[i + j]) if i + j < len(samples) else 0
            byte |= v << (8 - bit_depth * (j + 1))
        out.append(byte)
    return bytes(out)


_ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def png_bytes(samples, bit_depth, color_type, palette=None, trns=None, interlace=False):
    """samples: [H, W, C] integer array in the sample range of bit_depth."""
    h, w = samples.shape[:2]
    if interlace:  # Adam7: seven reduced images, each with its own filtered rows
        raw = b""
        for x0, y0, dx, dy in _ADAM7:
            sub = samples[y0::dy, x0::dx]
            if sub.shape[0] and sub.shape[1]:
                raw += b"".join(b"\x00" + _pack_row(sub[y].reshape(-1), bit_depth) for y in range(sub.shape[0]))
    else:
        raw = b"".join(b"\x00" + _pack_row(samples[y].reshape(-1), bit_depth) for y in range(h))
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0,
                                                               1 if interlace else 0))
    if palette is not None:
        out += _chunk(b"PLTE", bytes(np.asarray(palette, dtype=np.uint8).reshape(-1)))
    if trns is not None:
        out += _chunk(b"tRNS", trns)
    return out + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "fixtures", "images_pil")
    os.makedirs(out_dir, exist_ok=True)
    files = {}  # key -> (file name, bytes, kind)

    def add(key, name, data, kind):
        files[key] = (name, data, kind)

    def jpeg(img, **kw):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", **kw)
        return buf.getvalue()

    rgb = Image.fromarray(photo(27, 37, seed=1), mode="RGB")
    add("jpeg_420", "baseline_420_q85.jpg", jpeg(rgb, quality=85, subsampling=2), "baseline JPEG, 4:2:0")
    add("jpeg_422", "baseline_422_q90.jpg", jpeg(rgb, quality=90, subsampling=1), "baseline JPEG, 4:2:2")
    add("jpeg_444", "baseline_444_q95.jpg", jpeg(rgb, quality=95, subsampling=0), "baseline JPEG, 4:4:4")
    add("jpeg_prog_420", "progressive_420_q80.jpg", jpeg(rgb, quality=80, subsampling=2, progressive=True),
        "progressive JPEG, 4:2:0")
    add("jpeg_prog_444", "progressive_444_q90.jpg", jpeg(rgb, quality=90, subsampling=0, progressive=True),
        "progressive JPEG, 4:4:4")
    odd = Image.fromarray(photo(17, 9, seed=3), mode="RGB")
    add("jpeg_420_odd", "baseline_420_9x17.jpg", jpeg(odd, quality=75, subsampling=2),
        "baseline JPEG, 4:2:0, odd size smaller than one MCU row")
    add("jpeg_gray", "gray_q90.jpg", jpeg(rgb.convert("L"), quality=90), "grayscale JPEG")
    add("jpeg_gray_prog", "gray_progressive_q70.jpg", jpeg(rgb.convert("L"), quality=70, progressive=True),
        "progressive grayscale JPEG")
    add("jpeg_cmyk", "cmyk_q90.jpg", jpeg(rgb.convert("CMYK"), quality=90), "CMYK JPEG (Adobe, inverted)")

    rng = np.random.RandomState(11)
    h, w = 13, 19
    # 16-bit grayscale: the full range, plus values below 256 (PIL clips I;16 to 255 when converting).
    g16 = rng.randint(0, 65536, (h, w, 1))
    g16[0, :, 0] = np.arange(w) * 13  # < 256
    g16[1, :4, 0] = [255, 256, 0, 65535]
    add("png_gray16", "gray16.png", png_bytes(g16, 16, 0), "16-bit grayscale PNG (I;16)")
    g16t = g16.copy()
    g16t[2, :3, 0] = [100, 100, 356]
    add("png_gray16_trns", "gray16_trns.png", png_bytes(g16t, 16, 0, trns=struct.pack(">H", 100)),
        "16-bit grayscale PNG with a tRNS colour key")
    rgb16 = rng.randint(0, 65536, (h, w, 3))
    add("png_rgb16", "rgb16.png", png_bytes(rgb16, 16, 2), "16-bit RGB PNG")
    rgba16 = rng.randint(0, 65536, (h, w, 4))
    rgba16[0, :3, 3] = [0, 65535, 255]
    add("png_rgba16", "rgba16.png", png_bytes(rgba16, 16, 6), "16-bit RGBA PNG")
    la16 = rng.randint(0, 65536, (h, w, 2))
    add("png_la16", "la16.png", png_bytes(la16, 16, 4), "16-bit gray + alpha PNG")
    for bits in (1, 2, 4):
        g = rng.randint(0, 1 << bits, (h, w, 1))
        add(f"png_gray{bits}", f"gray{bits}.png", png_bytes(g, bits, 0), f"{bits}-bit grayscale PNG")
    g2 = rng.randint(0, 4, (h, w, 1))
    add("png_gray2_trns", "gray2_trns.png", png_bytes(g2, 2, 0, trns=struct.pack(">H", 1)),
        "2-bit grayscale PNG with tRNS (PIL compares the key with the scaled value)")
    g1 = rng.randint(0, 2, (h, w, 1))
    add("png_gray1_trns", "gray1_trns.png", png_bytes(g1, 1, 0, trns=struct.pack(">H", 1)),
        "1-bit grayscale PNG with tRNS")
    g8 = rng.randint(0, 256, (h, w, 1))
    g8[0, :5, 0] = 77
    add("png_gray8_trns", "gray8_trns.png", png_bytes(g8, 8, 0, trns=struct.pack(">H", 77)),
        "8-bit grayscale PNG with tRNS")
    rgb8 = rng.randint(0, 256, (h, w, 3))
    rgb8[0, :4] = [10, 20, 30]
    add("png_rgb8_trns", "rgb8_trns.png", png_bytes(rgb8, 8, 2, trns=struct.pack(">HHH", 10, 20, 30)),
        "8-bit RGB PNG with a tRNS colour key (transformers keeps RGB images as decoded)")
    pal = rng.randint(0, 256, (16, 3))
    idx = rng.randint(0, 16, (h, w, 1))
    alphas = bytes([0, 128, 255, 7, 250, 1, 64])  # shorter than the palette: the rest are opaque
    add("png_pal8_trns", "palette8_trns.png", png_bytes(idx, 8, 3, palette=pal, trns=alphas),
        "8-bit palette PNG with per-entry alpha (tRNS)")
    add("png_pal4_trns1", "palette4_one_transparent.png",
        png_bytes(idx, 4, 3, palette=pal, trns=bytes([255, 255, 0, 255])),
        "4-bit palette PNG with one fully transparent entry")
    idx2 = rng.randint(0, 4, (h, w, 1))
    add("png_pal2", "palette2.png", png_bytes(idx2, 2, 3, palette=pal[:4]), "2-bit palette PNG")
    idx_short = rng.randint(0, 8, (h, w, 1))
    add("png_pal_short", "palette_short.png", png_bytes(idx_short, 4, 3, palette=pal[:5]),
        "4-bit palette PNG with indices past the PLTE entries")
    la8 = rng.randint(0, 256, (h, w, 2))
    add("png_la8", "la8.png", png_bytes(la8, 8, 4), "8-bit gray + alpha PNG")
    buf = io.BytesIO()
    Image.fromarray(photo(21, 23, seed=5), mode="RGB").save(buf, format="PNG")
    add("png_rgb8", "rgb8.png", buf.getvalue(), "8-bit RGB PNG")
    rng2 = np.random.RandomState(23)
    rgba8 = rng2.randint(0, 256, (11, 13, 4))
    add("png_rgba8_adam7", "rgba8_adam7.png", png_bytes(rgba8, 8, 6, interlace=True), "Adam7-interlaced 8-bit RGBA PNG")
    g16i = rng2.randint(0, 300, (9, 10, 1))
    add("png_gray16_adam7", "gray16_adam7.png", png_bytes(g16i, 16, 0, interlace=True),
        "Adam7-interlaced 16-bit grayscale PNG")
    g4i = rng2.randint(0, 16, (7, 5, 1))
    add("png_gray4_adam7", "gray4_adam7.png", png_bytes(g4i, 4, 0, interlace=True), "Adam7-interlaced 4-bit grayscale PNG")

    # Decode every file as transformers would, and write the references.
    tensors = {}
    meta = {"pillow": PIL.__version__, "libjpeg_turbo": features.version("libjpeg_turbo"),
            "rule": "transformers convert_to_rgb(PIL.Image.open(file))", "images": {}}
    for key, (name, data, kind) in files.items():
        path = os.path.join(out_dir, name)
        with open(path, "wb") as f:
            f.write(data)
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(convert_to_rgb(im), dtype=np.uint8)
        assert arr.ndim == 3 and arr.shape[2] == 3, (key, arr.shape)
        tensors[key] = np.ascontiguousarray(arr)
        meta["images"][key] = {"file": name, "kind": kind, "pil_mode": mode,
                               "height": int(arr.shape[0]), "width": int(arr.shape[1])}
    header, offset, blobs = {}, 0, []
    for key in sorted(tensors):
        b = tensors[key].tobytes()
        header[key] = {"dtype": "U8", "shape": list(tensors[key].shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    with open(os.path.join(out_dir, "reference.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hjson)) + hjson + b"".join(blobs))
    with open(os.path.join(out_dir, "images.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {len(files)} images and their references to {out_dir}")


if __name__ == "__main__":
    main()
