#!/usr/bin/env python3
"""x·Wᵀ with few rows of x through the BLAS a LibTorch was built with: why decoding was slow.

A decoding step multiplies 1–8 hidden rows by every weight matrix, the largest being the
152k × 2048 lm_head of Qwen2.5-VL-3B (1.2 GB in fp32). Reading W once is the limit. This times
torch.mm(x, W.t()) (one sgemm), torch.mv per row (GEMV) and prints the bandwidth each reaches.

    /usr/bin/python3 tools/bench_blas_few_rows.py            # Debian's torch 1.13 (OpenBLAS)
    build/venv-torch/bin/python tools/bench_blas_few_rows.py # pip's torch 2.x (MKL)

consr's runtime (examples/runtime/src/qwen2.cpp, times_transposed) uses GEMV for one row and its
own one-pass kernel for 2–8 rows without autograd; see docs/performance.md (issue 17 §2).
"""
import argparse
import time

import torch


def timed(fn, repeats):
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    w = torch.randn(a.vocab, a.hidden)
    gb = w.numel() * 4 / 1e9
    print(f"torch {torch.__version__}, {a.threads} threads, W {a.vocab} x {a.hidden} fp32 = {gb:.2f} GB")
    print("| rows | mm(x, W.t()) ms | GB/s | mv per row ms | GB/s of W read once |")
    print("|---:|---:|---:|---:|---:|")
    for rows in (1, 2, 5, 8):
        x = torch.randn(rows, a.hidden)
        mm = timed(lambda: torch.mm(x, w.t()), a.repeats)
        mv = timed(lambda: [torch.mv(w, x[r]) for r in range(rows)], a.repeats)
        print(f"| {rows} | {mm * 1e3:.0f} | {gb / mm:.1f} | {mv * 1e3:.0f} | {gb / mv:.1f} |")


if __name__ == "__main__":
    main()
