#!/usr/bin/env python3
"""Times the PyTorch baselines of bench/ with the torch of the interpreter that runs it (a pip
torch 2.x in a venv, or Debian's python3-torch 1.13), at the same sizes and thread counts, so the
pip rows can stand beside the LibTorch (Debian) rows of docs/performance.md. Not run in CI.

    build/venv-torch/bin/python tools/bench_pip_torch.py [--threads 1,2] [--min-time 1.0] [--repeats 5]
    /usr/bin/python3 tools/bench_pip_torch.py        # Debian's torch, same script: the like-for-like pair

Operations (what bench/*.cpp times as its torch / torch_autograd baseline; sizes as there):
  logprobs_fwd       log_softmax(logits, -1).gather(labels), fp32, no grad     N = 256, 1024; V = 152064
  logprobs_fwd_bf16  the same on bf16 logits                                   N = 256
  logprobs_fwd_bwd   the same with autograd, backward(grad), grad set to None  N = 256, 1024
  noise              x * sqrt(abar) + randn_like(x) * sqrt(1 - abar), no grad  10x3x384x384, 10240x1176
  dpo_standard       TRL's dpo_loss (sigmoid) on padded [P, L] log-probs + backward   P = 16, 256
  dpo_consr          the ConSR objective (eq. 14, length-normalized, visual weights) + backward

Each row: the median (and min) of --repeats timings, each the mean over enough calls to fill
--min-time / --repeats seconds (>= 1 call), after one warm-up call; torch.set_num_threads(t) for each
t of --threads.
Prints a Markdown table (and --json FILE writes the rows).
"""
import argparse
import json
import math
import platform
import statistics
import sys
import time

import torch

VOCAB = 152064


def time_call(fn, min_time, repeats):
    """[seconds per call] for `repeats` runs, each the mean over >= min_time / repeats seconds."""
    fn()  # warm-up: thread pools, allocator, lazy library state
    budget = min_time / repeats
    runs = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= budget:
                break
        runs.append(elapsed / calls)
    return runs


def logprobs(logits, labels):
    return torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def logprobs_problem(n, dtype=torch.float32):
    g = torch.Generator().manual_seed(7)
    logits = (torch.rand(n, VOCAB, generator=g) * 24 - 12).to(dtype)
    labels = torch.randint(0, VOCAB, (n,), generator=g)
    return logits, labels


def bench_logprobs_fwd(n, dtype):
    logits, labels = logprobs_problem(n, dtype)

    def run():
        with torch.no_grad():
            logprobs(logits, labels)
    return run


def bench_logprobs_fwd_bwd(n):
    logits, labels = logprobs_problem(n)
    logits.requires_grad_(True)
    grad = torch.rand(n) * 2 - 1

    def run():
        logprobs(logits, labels).backward(grad)
        logits.grad = None  # as optimizer.zero_grad(set_to_none=True)
    return run


def bench_noise(shape):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(*shape, generator=g) * 2 - 1
    a, b = 0.25, math.sqrt(1 - 0.25 ** 2)  # sqrt(abar_t), sqrt(1 - abar_t): scalars; their values do not change the time

    def run():
        with torch.no_grad():
            x * a + torch.randn_like(x) * b
    return run


def dpo_side(pairs, seed):
    """Right-padded [P, L] log-probs (requires grad), 0/1 mask, visual weights, reference sums:
    responses of 200-1000 tokens as bench/bench_dpo.cpp."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(200, 1001, (pairs,), generator=g)
    longest = int(lengths.max())
    mask = (torch.arange(longest).unsqueeze(0) < lengths.unsqueeze(1)).float()
    logp = (torch.rand(pairs, longest, generator=g) * -4) * mask
    weights = (torch.rand(pairs, longest, generator=g) * 0.4 + 0.8) * mask
    ref_sum = logp.sum(-1) + torch.rand(pairs, generator=g) * 40 - 20
    return logp.requires_grad_(True), mask, weights, ref_sum


def bench_dpo(pairs, consr_loss):
    w_logp, w_mask, w_weights, w_ref = dpo_side(pairs, 41)
    l_logp, l_mask, l_weights, l_ref = dpo_side(pairs, 51)
    beta = 0.1

    def run():
        chosen = (w_logp * w_mask).sum(-1)
        rejected = (l_logp * l_mask).sum(-1)
        if not consr_loss:  # trl DPOTrainer.dpo_loss, loss_type="sigmoid", label_smoothing=0
            logits = (chosen - rejected) - (w_ref - l_ref)
            loss = -torch.nn.functional.logsigmoid(beta * logits).mean()
        else:
            len_w, len_l = w_mask.sum(-1), l_mask.sum(-1)
            delta = (len_w + len_l) / 2 * (beta / len_w * (chosen - w_ref) - beta / len_l * (rejected - l_ref))
            sigma_neg = torch.sigmoid(-delta).detach()
            loss = -(sigma_neg * ((w_weights * w_logp * w_mask).sum(-1) - (l_weights * l_logp * l_mask).sum(-1))).mean()
        loss.backward()
        w_logp.grad = None
        l_logp.grad = None
    return run


CASES = [
    ("logprobs_fwd", "N=256,V=152064", lambda: bench_logprobs_fwd(256, torch.float32)),
    ("logprobs_fwd", "N=1024,V=152064", lambda: bench_logprobs_fwd(1024, torch.float32)),
    ("logprobs_fwd_bf16", "N=256,V=152064", lambda: bench_logprobs_fwd(256, torch.bfloat16)),
    ("logprobs_fwd_bwd", "N=256,V=152064", lambda: bench_logprobs_fwd_bwd(256)),
    ("logprobs_fwd_bwd", "N=1024,V=152064", lambda: bench_logprobs_fwd_bwd(1024)),
    ("noise", "10x3x384x384", lambda: bench_noise((10, 3, 384, 384))),
    ("noise", "10240x1176", lambda: bench_noise((10240, 1176))),
    ("dpo_standard", "P=16,len=200..1000", lambda: bench_dpo(16, False)),
    ("dpo_standard", "P=256,len=200..1000", lambda: bench_dpo(256, False)),
    ("dpo_consr", "P=16,len=200..1000", lambda: bench_dpo(16, True)),
    ("dpo_consr", "P=256,len=200..1000", lambda: bench_dpo(256, True)),
]


def fmt(seconds):
    if seconds >= 1e-1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds of timed calls per row, split over the repeats (default 1.0)")
    ap.add_argument("--repeats", type=int, default=5, help="timings per row; the median is reported (default 5)")
    ap.add_argument("--filter", default="", help="only the kernels whose name contains this")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        ap.error(f"argument --threads: '{args.threads}' is not a comma-separated list of integers")
    if not threads or min(threads) < 1:
        ap.error("argument --threads: thread counts must be >= 1")
    if args.repeats < 1 or args.min_time <= 0:
        ap.error("arguments --repeats / --min-time must be positive")

    info = [line.strip() for line in torch.__config__.parallel_info().splitlines()
            if line.startswith(("ATen parallel backend", "MKL", "OpenMP"))]
    print(f"torch {torch.__version__} ({torch.__file__}), Python {platform.python_version()}, "
          f"{platform.machine()}; {'; '.join(info)}")
    print()
    print("| kernel | size | threads | median | min | runs |")
    print("|---|---|---|---|---|---|")
    rows = []
    for kernel, size, make in CASES:
        if args.filter not in kernel:
            continue
        run = make()
        for t in threads:
            torch.set_num_threads(t)
            runs = time_call(run, args.min_time, args.repeats)
            med = statistics.median(runs)
            rows.append({"kernel": kernel, "size": size, "threads": t, "median_s": med, "min_s": min(runs),
                         "runs_s": runs, "torch": torch.__version__})
            print(f"| `{kernel}` | {size} | {t} | {fmt(med)} | {fmt(min(runs))} | {len(runs)} |", flush=True)
        del run
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
