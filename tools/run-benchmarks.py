#!/usr/bin/python3
"""Runs consr's benchmark suite and rewrites the results table in docs/performance.md.

One command, from the repository root:

    tools/run-benchmarks.py

builds the `bench` preset (Release, -march=native, benchmarks on, tests off) into build/bench, runs
every bench/consr_bench_* executable with Google Benchmark's JSON output (min of repetitions), and
rewrites docs/performance.md from that run: the machine, the date, the command, then one row per
kernel, size and thread count with consr's time, the baseline's time, the speed-up and the share of
the machine's bandwidth limit that consr reaches; then the memory measurement, the targets of the
issue (met or missed, computed from the numbers), and the GPU section. The raw JSON files are kept
in build/bench/results/.

Standard library only (Debian's /usr/bin/python3). See --help for the options; the whole suite takes
about 5-10 minutes on a 2-core machine with the defaults.
"""

import argparse
import datetime
import glob
import json
import os
import platform
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Targets of the benchmark issue, checked against the numbers of the run.
# (kernel, size, minimum speed-up over the baseline) at every thread count.
SPEEDUP_TARGETS = [
    ("logprobs_fwd", "N=256,V=152064", 5.0),
    ("logprobs_fwd_bwd", "N=256,V=152064", 4.0),
    ("noise", "10x3x384x384", 3.0),
    # memory-bounded log-probs issue: forward + backward within 1.5x of LibTorch's materialized path
    # (only measured with --large)
    ("linear_fwd_bwd", "N=1024,H=3584,V=152064", 1.0 / 1.5),
    # issue 16: DPO eq. 7 never slower than LibTorch, ConSR eq. 14 at least 5x
    ("dpo_standard", "P=16,len=200..1000", 1.0),
    ("dpo_standard", "P=256,len=200..1000", 1.0),
    ("dpo_consr", "P=16,len=200..1000", 5.0),
    ("dpo_consr", "P=256,len=200..1000", 5.0),
]
# consr implementations that get their own rows next to the default one: the CBLAS GEMM policy runs
# the same BLAS library as LibTorch's `linear`, so it is the like-for-like comparison; the fused DPO
# (dpo_forward_backward, one call) is what a C++ caller that knows the upstream gradient runs.
CONSR_IMPLS = ("consr", "consr_cblas", "consr_fused")
# (kernel, size, minimum share of the bandwidth limit) at every thread count.
SHARE_TARGETS = [
    ("logprobs_fwd", "N=256,V=152064", 0.40),
    # issue 16: close to the machine's limit (docs/performance.md, "Issue 16", says what stands between)
    ("logprobs_fwd", "N=256,V=152064", 0.85),
    ("logprobs_fwd_bf16", "N=256,V=152064", 0.85),
    ("logprobs_fwd_bwd", "N=256,V=152064", 0.70),
    ("noise", "10x3x384x384", 0.60),
    ("noise", "10240x1176", 0.60),
]

KERNEL_DESCRIPTIONS = {
    "logprobs_fwd": "token log-probs, fp32 logits",
    "logprobs_fwd_bf16": "token log-probs, bf16 logits",
    "logprobs_fwd_bwd": "token log-probs forward + backward",
    "noise": "diffusion noise (t = 800)",
    "patch_mask": "random patch mask (14 px, p = 0.5)",
    "mixup": "mixup (λ = 0.7)",
    "resized_crop": "random resized crop (bilinear)",
    "segment_sum": "segmented sum",
    "segment_masked_mean": "segmented mean over scored tokens",
    "reward": "contrastive reward, eqs. 1-6",
    "pairs": "pair selection (best vs worst)",
    "reward_pairs": "reward + pair selection",
    "dpo_standard": "DPO eq. 7, forward + backward",
    "dpo_consr": "ConSR DPO eq. 14, forward + backward",
    "linear_fwd": "log-probs from hidden states (vocabulary-chunked GEMM), forward",
    "linear_fwd_bwd": "log-probs from hidden states, forward + backward",
}

BEGIN_MARK = "<!-- BEGIN GENERATED RESULTS: tools/run-benchmarks.py rewrites everything up to the END mark -->"
END_MARK = "<!-- END GENERATED RESULTS -->"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, **kw):
    log("+ " + " ".join(shlex.quote(c) for c in cmd))
    return subprocess.run(cmd, check=True, **kw)


# ---- building and running -------------------------------------------------------------------------

def build(build_dir, jobs):
    if os.path.abspath(build_dir) == os.path.join(ROOT, "build", "bench"):
        run(["cmake", "--preset", "bench"], cwd=ROOT)
    else:
        run(["cmake", "-S", ROOT, "-B", build_dir, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
             "-DCONSR_NATIVE_ARCH=ON", "-DCONSR_BUILD_BENCHMARKS=ON", "-DCONSR_BUILD_TESTS=OFF",
             "-DCONSR_BUILD_EXAMPLES=OFF"], cwd=ROOT)
    run(["cmake", "--build", build_dir, "--target", "consr_host_benchmarks", "-j", str(jobs)], cwd=ROOT)


def executables(build_dir):
    found = sorted(glob.glob(os.path.join(build_dir, "bench", "consr_bench_*")))
    return [f for f in found if os.access(f, os.X_OK) and not f.endswith((".json", ".txt"))]


def run_executable(exe, out_json, args, env):
    cmd = [exe, "--benchmark_out=" + out_json, "--benchmark_out_format=json",
           "--benchmark_repetitions=%d" % args.repetitions, "--benchmark_report_aggregates_only=true",
           "--benchmark_min_time=%g" % args.min_time]
    if args.filter:
        cmd.append("--benchmark_filter=" + args.filter)
    run(cmd, env=env)


# ---- parsing --------------------------------------------------------------------------------------

class Result:
    """One benchmark at one thread count: min and median wall time (ms) and its counters."""

    def __init__(self, kernel, impl, size, threads):
        self.kernel, self.impl, self.size, self.threads = kernel, impl, size, threads
        self.min_ms = None
        self.median_ms = None
        self.counters = {}
        self.error = None

    def bytes(self):
        return self.counters.get("bytes_read", 0.0) + self.counters.get("bytes_written", 0.0)


UNIT_TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
NAME_RE = re.compile(r"^(?P<kernel>[^/]+)/(?P<impl>[^/]+)/(?P<size>[^/]+)/threads:(?P<threads>\d+)")


def parse_results(paths):
    """Results keyed by (kernel, impl, size, threads), and the context of the first file. Every
    executable measures the bandwidth probe too: the machine's limit is the best of them (a probe
    slowed down by another process would otherwise inflate the shares of that executable)."""
    results, context = {}, None
    for path in paths:
        one, ctx = parse_one_result_file(path)
        context = context or ctx
        for key, r in one.items():
            old = results.get(key)
            if old is None or (key[0].startswith("stream_") and r.min_ms is not None and
                               (old.min_ms is None or r.min_ms < old.min_ms)):
                results[key] = r
    return results, context


def parse_one_result_file(path):
    """The results of one Google Benchmark JSON file, and its context."""
    results = {}
    with open(path) as f:
        data = json.load(f)
    for b in data.get("benchmarks", []):
        m = NAME_RE.match(b.get("run_name", b["name"]))
        if not m:
            continue
        key = (m["kernel"], m["impl"], m["size"], int(m["threads"]))
        r = results.setdefault(key, Result(*key))
        if b.get("error_occurred"):
            r.error = b.get("error_message", "error")
            continue
        ms = b["real_time"] * UNIT_TO_MS[b.get("time_unit", "ns")]
        kind = b.get("aggregate_name") if b.get("run_type") == "aggregate" else "iteration"
        if kind == "min":
            r.min_ms = ms
        elif kind == "median":
            r.median_ms = ms
        elif kind == "iteration":
            # A single run (no repetitions): it is its own min and median.
            r.min_ms = ms if r.min_ms is None else min(r.min_ms, ms)
            r.median_ms = r.median_ms or ms
        if kind in ("min", "iteration", "median", "mean"):
            for k, v in b.items():
                if k in ("bytes_read", "bytes_written", "peak_extra_bytes", "logits_bytes"):
                    r.counters[k] = v
    return results, data.get("context", {})


def disturbed_runs(paths):
    """Executables whose all-cores probe did not beat their 1-thread probe: another process was
    using the other cores while they ran, so their all-cores rows understate consr and LibTorch."""
    notes = []
    for path in paths:
        try:
            one, _ = parse_one_result_file(path)
        except (OSError, ValueError):
            continue
        probes = {t: r for (k, i, sz, t), r in one.items() if k == "stream_read" and r.min_ms}
        if len(probes) < 2:
            continue
        lo, hi = min(probes), max(probes)
        bw_lo = probes[lo].bytes() / probes[lo].min_ms
        bw_hi = probes[hi].bytes() / probes[hi].min_ms
        # A consr kernel slower with all cores than with one (serial kernels take the same time).
        slower = sorted({"`%s` %s" % (k, sz) for (k, i, sz, t), r in one.items()
                         if i == "consr" and t == hi and r.min_ms and (k, i, sz, lo) in one
                         and one[(k, i, sz, lo)].min_ms and r.min_ms > 1.15 * one[(k, i, sz, lo)].min_ms})
        name = os.path.basename(path).replace(".json", "")
        if bw_hi < 1.2 * bw_lo:
            notes.append("`%s` (its read probe: %.1f GB/s at %d threads, %.1f GB/s at 1)" % (
                name, bw_hi * 1e-6, hi, bw_lo * 1e-6))
        elif slower:
            notes.append("`%s` (slower at %d threads than at 1: %s)" % (name, hi, ", ".join(slower)))
    return notes


def bandwidth_limits(results):
    """Bytes/s of the STREAM-like probe per (pattern, threads): the best store kind of each pattern."""
    limits = {}
    for (kernel, impl, size, threads), r in results.items():
        if not kernel.startswith("stream_") or r.min_ms is None:
            continue
        pattern = kernel[len("stream_"):]
        bw = r.bytes() / (r.min_ms * 1e-3)
        if bw > limits.get((pattern, threads), (0, None))[0]:
            limits[(pattern, threads)] = (bw, impl)
    return limits


def access_pattern(r):
    read, written = r.counters.get("bytes_read", 0.0), r.counters.get("bytes_written", 0.0)
    if written <= 0.01 * read:
        return "read"
    if read <= 0.01 * written:
        return "write"
    return "copy"


# ---- formatting ------------------------------------------------------------------------------------

def fmt_ms(ms):
    if ms is None:
        return "—"
    if ms >= 100:
        return "%.0f ms" % ms
    if ms >= 1:
        return "%.2f ms" % ms
    return "%.1f µs" % (ms * 1e3)


def fmt_bytes(b):
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if abs(b) >= scale:
            return "%.1f %s" % (b / scale, unit)
    return "%.0f B" % b


def fmt_gbs(bps):
    return "%.1f GB/s" % (bps / 1e9)


def comparison_rows(results, limits):
    """(kernel, size, threads, consr Result, baseline Result or None, share or None, pattern)."""
    rows = []
    for (kernel, impl, size, threads), r in sorted(results.items()):
        if (impl not in CONSR_IMPLS or kernel.startswith("stream_") or kernel.endswith("_memory")
                or kernel.endswith(IN_CACHE_SUFFIX)):
            continue
        # The baseline: LibTorch where it was measured (torch, torch_autograd), else another impl.
        candidates = sorted(((i2, r2) for (k2, i2, s2, t2), r2 in results.items()
                             if k2 == kernel and s2 == size and t2 == threads and not i2.startswith("consr")),
                            key=lambda x: (not x[0].startswith("torch"), x[0]))
        baseline = candidates[0][1] if candidates else None
        share, pattern = None, access_pattern(r)
        if r.min_ms and r.bytes() > 0 and (pattern, threads) in limits:
            share = (r.bytes() / (r.min_ms * 1e-3)) / limits[(pattern, threads)][0]
        rows.append((kernel, size, threads, r, baseline, share, pattern))
    order = list(KERNEL_DESCRIPTIONS)
    rows.sort(key=lambda x: (order.index(x[0]) if x[0] in order else len(order), x[0], x[1], x[2]))
    return rows


def results_table(rows, limits):
    out = ["| Kernel | Size | Threads | consr (min) | Baseline | Baseline (min) | Speed-up | consr bandwidth | Share of limit |",
           "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for kernel, size, threads, r, b, share, pattern in rows:
        desc = KERNEL_DESCRIPTIONS.get(kernel, kernel)
        if r.impl != "consr":
            desc += " [%s]" % r.impl
        speedup = "—"
        if b is not None and b.min_ms and r.min_ms:
            speedup = "**%.1f×**" % (b.min_ms / r.min_ms) if b.min_ms >= r.min_ms else "%.2f×" % (b.min_ms / r.min_ms)
        bw = fmt_gbs(r.bytes() / (r.min_ms * 1e-3)) if r.min_ms and r.bytes() else "—"
        share_s = "%.0f %% of %s" % (100 * share, pattern) if share is not None else "—"
        base_name = b.impl if b is not None else "(none)"
        base_ms = fmt_ms(b.min_ms) if b is not None else "—"
        if r.error:
            share_s, bw = "error: " + r.error, "—"
        out.append("| `%s` %s | %s | %d | %s | %s | %s | %s | %s | %s |" % (
            kernel, desc, size, threads, fmt_ms(r.min_ms), base_name, base_ms, speedup, bw, share_s))
    return "\n".join(out)


IN_CACHE_SUFFIX = "_incache"
# Stages of a kernel timed alone on in-cache data (bench/bench_corruption.cpp): kernel -> [(stage
# benchmark, what it runs)]; each counts the kernel's own traffic, so its rate is directly comparable.
IN_CACHE_STAGES = {
    "noise": [("noise_philox_incache", "Philox4x32-10 words alone"),
              ("noise_normals_incache", "normals alone (words + Box–Muller + interleave)")],
}


def roofline_table(results, limits):
    """The two ceilings of every kernel that has an in-cache twin ("<kernel>_incache": the same calls on
    data that stays in L2, counting the same traffic): the memory limit (the probe) and the compute
    ceiling (the in-cache rate), the lower of the two as the bound, and the memory-bound row's share of each."""
    lines = ["| Kernel | Size | Threads | Memory limit (probe) | Compute ceiling (in L2) | Bound | Measured | "
             "Share of limit | Share of bound |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    stage_lines = ["| Kernel | Stage | Threads | Rate alone (in L2) | Share of the kernel's in-L2 time |",
                   "|---|---|---:|---:|---:|"]
    found = False
    for (kernel, impl, size, threads), r in sorted(results.items()):
        if impl != "consr" or not kernel.endswith(IN_CACHE_SUFFIX) or not r.min_ms or not r.bytes():
            continue
        base = kernel[:-len(IN_CACHE_SUFFIX)]
        ceiling = r.bytes() / (r.min_ms * 1e-3)
        for (k2, i2, s2, t2), m in sorted(results.items()):
            if k2 != base or i2 != "consr" or t2 != threads or not m.min_ms or not m.bytes():
                continue
            pattern = access_pattern(m)
            if (pattern, threads) not in limits:
                continue
            found = True
            limit = limits[(pattern, threads)][0]
            measured = m.bytes() / (m.min_ms * 1e-3)
            bound = min(limit, ceiling)
            lines.append("| `%s` | %s | %d | %s (%s) | %s | %s (%s) | %s | %.0f %% | %.0f %% |" % (
                base, s2, threads, fmt_gbs(limit), pattern, fmt_gbs(ceiling), fmt_gbs(bound),
                "memory" if limit <= ceiling else "compute", fmt_gbs(measured), 100 * measured / limit,
                100 * measured / bound))
        for stage, what in IN_CACHE_STAGES.get(base, []):
            st = results.get((stage, "consr", size, threads))
            if st is None or not st.min_ms or not st.bytes():
                continue
            rate = st.bytes() / (st.min_ms * 1e-3)
            stage_lines.append("| `%s` | %s | %d | %s | %.0f %% |" % (base, what, threads, fmt_gbs(rate), 100 * ceiling / rate))
    if not found:
        return "Not measured in this run."
    out = "\n".join(lines)
    if len(stage_lines) > 2:
        out += "\n\nStages of the in-L2 runs, each timed alone on the same data (the kernel's own traffic counted):\n\n" + "\n".join(stage_lines)
    return out


def limits_table(limits):
    out = ["| Access pattern | Threads | Bandwidth | Best store kind |", "|---|---:|---:|---|"]
    for (pattern, threads), (bw, impl) in sorted(limits.items()):
        out.append("| %s | %d | %s | %s |" % (pattern, threads, fmt_gbs(bw), impl))
    return "\n".join(out)


def memory_table(results):
    """One table per "<family>_memory" kernel: peak extra resident memory of each impl, per size."""
    kernels = {}
    for (kernel, impl, size, threads), r in results.items():
        if kernel.endswith("_memory") and "peak_extra_bytes" in r.counters:
            kernels.setdefault(kernel, {}).setdefault(size, {})[impl] = r
    if not kernels:
        return "Not measured in this run."

    def n_of(size):
        m = re.match(r"N=(\d+)", size)
        return int(m.group(1)) if m else 0

    def impl_order(impl):
        return (impl != "consr", impl.startswith("torch"), impl)

    tables = []
    for kernel in sorted(kernels):
        sizes = kernels[kernel]
        impls = sorted({i for per_size in sizes.values() for i in per_size}, key=impl_order)
        out = ["`%s`:" % kernel, "",
               "| Size | Logits (N × V × 4 B) | " + " | ".join("%s peak extra" % i for i in impls) + " |",
               "|---|---:|" + "---:|" * len(impls)]
        for size in sorted(sizes, key=n_of):
            per = sizes[size]
            logits = next((r.counters.get("logits_bytes", 0) for r in per.values()), 0)
            cells = []
            for i in impls:
                r = per.get(i)
                if r is None:
                    cells.append("—")
                    continue
                extra = r.counters["peak_extra_bytes"]
                cells.append(fmt_bytes(extra) + (" (%.2f × logits)" % (extra / logits) if logits else ""))
            out.append("| %s | %s | %s |" % (size, fmt_bytes(logits) if logits else "—", " | ".join(cells)))
        tables.append("\n".join(out))
    return "\n\n".join(tables)


def targets_section(rows):
    lines = ["| Target | Threads | Measured | Status |", "|---|---:|---:|---|"]
    index = {(k, s, t, r.impl): (r, b, share) for k, s, t, r, b, share, _ in rows}
    thread_set = sorted({t for (_, _, t, _) in index})
    for kernel, size, minimum in SPEEDUP_TARGETS:
        for impl in CONSR_IMPLS:
            for t in thread_set:
                if (kernel, size, t, impl) not in index:
                    continue
                r, b, _ = index[(kernel, size, t, impl)]
                who = "`%s` %s%s" % (kernel, size, "" if impl == "consr" else " [%s]" % impl)
                goal = ("≥ %.0f×" % minimum) if minimum >= 1 else ("within %.1f× of" % (1 / minimum))
                if b is None or not b.min_ms or not r.min_ms:
                    lines.append("| %s %s baseline | %d | — | not measured |" % (who, goal, t))
                    continue
                s = b.min_ms / r.min_ms
                status = "met" if s >= minimum else "**missed** by %.0f %%" % (100 * (1 - s / minimum))
                lines.append("| %s %s %s | %d | %.2f× | %s |" % (who, goal, b.impl, t, s, status))
    for kernel, size, minimum in SHARE_TARGETS:
        for impl in CONSR_IMPLS:
            for t in thread_set:
                if (kernel, size, t, impl) not in index:
                    continue
                who = "`%s` %s%s" % (kernel, size, "" if impl == "consr" else " [%s]" % impl)
                _, _, share = index[(kernel, size, t, impl)]
                if share is None:
                    lines.append("| %s ≥ %.0f %% of the limit | %d | — | not measured |" % (who, 100 * minimum, t))
                    continue
                status = "met" if share >= minimum else "**missed** by %.0f points" % (100 * (minimum - share))
                lines.append("| %s ≥ %.0f %% of the limit | %d | %.0f %% | %s |" % (who, 100 * minimum, t, 100 * share, status))
    return "\n".join(lines)


# ---- GPU results (tools/gpu-check.sh) -----------------------------------------------------------

# consr's CUDA benchmark name -> the name of its LibTorch-CUDA baseline, where they differ
# (bench/cuda/*: "<impl>/<kernel>/<variant>[/<arg>]").
GPU_BASELINE_ALIASES = {
    "segmented_masked_mean": "masked_mean",
    "segmented_sum": "segment_reduce_sum",
}
SUFFIX_SCALE = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_counter(text):
    m = re.match(r"^([-+0-9.eE]+)([kMGTmun]?)(/s)?$", text)
    if not m:
        return None
    try:
        return float(m.group(1)) * SUFFIX_SCALE[m.group(2)]
    except ValueError:
        return None


def parse_gpu_text(path):
    """Benchmarks of a gpu-check results file: (status note, {name: counters}, device line)."""
    with open(path, errors="replace") as f:
        lines = f.read().splitlines()
    # The benchmarks' context line (bench/cuda/cuda_bench.hpp) names the device.
    device = next((l.split(":", 1)[1].strip() for l in lines if l.strip().startswith("cuda_device:")), "")
    in_bench, header, rows, note = False, None, {}, ""
    for line in lines:
        if line.startswith("===="):
            in_bench = "CUDA benchmarks" in line
            header = None
            continue
        if not in_bench:
            continue
        if line.strip().startswith("not run"):
            note = line.strip()
        if line.startswith("Benchmark"):
            header = line.split()
            continue
        if header is None or not line.strip() or line.startswith("-"):
            continue
        tok = line.split()
        if len(tok) < 6 or "/" not in tok[0]:
            continue
        name = re.sub(r"/(manual_time|real_time)$", "", tok[0])
        counters = {"time": parse_counter(tok[1]), "time_unit": tok[2]}
        for col, val in zip(header[4:], tok[6:]):
            counters[col] = parse_counter(val)
        rows[name] = counters
    if not rows and not note:
        note = "it holds no benchmark table (the check did not reach or did not run the benchmarks)"
    return note, rows, device


def gpu_call_us(c):
    if c.get("us_per_call") is not None:
        return c["us_per_call"]
    scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}.get(c.get("time_unit"), None)
    return c["time"] * scale if scale and c.get("time") is not None else None


def gpu_table(rows):
    def split(name):
        parts = name.split("/")
        return parts[0], parts[1:]

    torch_rows = {}
    for name, c in rows.items():
        impl, rest = split(name)
        if impl != "consr":
            torch_rows["/".join(rest)] = (impl, c)
    out = ["| Kernel | consr (µs per call) | Baseline | Baseline (µs per call) | Speed-up | consr share of copy bandwidth |",
           "|---|---:|---|---:|---:|---:|"]
    for name in sorted(rows):
        impl, rest = split(name)
        if impl != "consr":
            continue
        c = rows[name]
        key = "/".join(rest)
        alias = "/".join([GPU_BASELINE_ALIASES.get(rest[0], rest[0])] + rest[1:]) if rest else key
        base = torch_rows.get(key) or torch_rows.get(alias)
        t = gpu_call_us(c)
        bt = gpu_call_us(base[1]) if base else None
        speed = "—"
        if t and bt:
            speed = ("**%.1f×**" % (bt / t)) if bt >= t else ("%.2f×" % (bt / t))
        share = c.get("bw_share")
        out.append("| `%s` | %s | %s | %s | %s | %s |" % (
            key, "%.1f" % t if t else "—", base[0] if base else "(none)", "%.1f" % bt if bt else "—", speed,
            "%.0f %%" % (100 * share) if share is not None else "—"))
    return "\n".join(out)


def latest_gpu_results():
    found = sorted(glob.glob(os.path.join(ROOT, "gpu-results", "*.txt")), key=os.path.getmtime)
    return found[-1:] if found else []


def gpu_section(paths):
    if not paths:
        return ("Not run: no GPU in this session, and no `gpu-results/*.txt` from `tools/gpu-check.sh`. On a\n"
                "machine with an NVIDIA GPU, `bash tools/gpu-check.sh` runs the `bench/cuda` benchmarks (CUDA\n"
                "events, LibTorch-CUDA baselines) and writes that file; this script then shows it here\n"
                "(`--gpu-results FILE`, default: the newest file in `gpu-results/`).")
    parts = []
    for path in paths:
        rel = os.path.relpath(path, ROOT)
        if path.endswith(".json"):
            try:
                results, context = parse_results([path])
            except (OSError, ValueError) as e:
                parts.append("The GPU results file `%s` could not be read: %s." % (rel, e))
                continue
            limits = bandwidth_limits(results)
            rows = comparison_rows(results, limits)
            parts.append("From `%s`:\n\n%s" % (rel, results_table(rows, limits) if rows else "no consr benchmark in it"))
            continue
        try:
            note, rows, device = parse_gpu_text(path)
            when = datetime.datetime.fromtimestamp(os.path.getmtime(path), datetime.timezone.utc).strftime(
                "%Y-%m-%d %H:%M UTC")
        except OSError as e:
            parts.append("Not run: no GPU in this session (the GPU results file `%s` could not be read: %s)." % (
                rel, e.strerror))
            continue
        if not rows:
            parts.append("Not run: no GPU in this session. The newest GPU check, `%s` (%s): %s." % (
                rel, when, note or "no benchmarks"))
            continue
        parts.append("From `%s` (%s%s). Times are GPU time per call from CUDA events; the share is of the\n"
                     "device-to-device copy bandwidth measured in the same binary.\n\n%s" % (
                         rel, when, (", " + device) if device else "", gpu_table(rows)))
    return "\n\n".join(parts)


def machine_description(context):
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = context.get("num_cpus", os.cpu_count())
    mhz = context.get("mhz_per_cpu")
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = ", %.0f GiB RAM" % (kb / 2 ** 20)
    except (OSError, ValueError, IndexError):
        pass
    caches = ", ".join("L%d %s %s" % (c["level"], c["type"].lower(), fmt_bytes(c["size"]))
                       for c in context.get("caches", []))
    load = context.get("load_avg")
    load_s = (", load average at start %s" % ", ".join("%.2f" % x for x in load)) if load else ""
    return "%s, %s cores%s%s; %s; %s %s%s" % (
        cpu, cores, (" at %s MHz" % mhz) if mhz else "", mem, caches, platform.system(), platform.release(), load_s)


def compiler_description(build_dir):
    try:
        with open(os.path.join(build_dir, "CMakeCache.txt")) as f:
            cache = f.read()
        compiler = re.search(r"CMAKE_CXX_COMPILER:\w+=(.*)", cache).group(1)
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        return version
    except (OSError, AttributeError, IndexError, subprocess.SubprocessError):
        return "unknown compiler"


def build_flags(build_dir):
    try:
        with open(os.path.join(build_dir, "CMakeCache.txt")) as f:
            cache = f.read()
    except OSError:
        return "unknown flags"
    build_type = re.search(r"CMAKE_BUILD_TYPE:\w+=(.*)", cache)
    native = re.search(r"CONSR_NATIVE_ARCH:\w+=(.*)", cache)
    flags = build_type.group(1) if build_type else "unknown build type"
    if native and native.group(1).upper() in ("ON", "TRUE", "1", "YES"):
        flags += ", `-march=native -mprefer-vector-width=512`"
    return flags


def summary_line(rows):
    by_threads = {}
    for kernel, size, threads, r, b, share, pattern in rows:
        if b is not None and b.min_ms and r.min_ms:
            by_threads.setdefault(threads, []).append(b.min_ms / r.min_ms)
    if not by_threads:
        return "No baseline comparisons in this run."
    parts = []
    for threads in sorted(by_threads):
        v = sorted(by_threads[threads])
        median = v[len(v) // 2] if len(v) % 2 else 0.5 * (v[len(v) // 2 - 1] + v[len(v) // 2])
        faster = sum(1 for x in v if x > 1.0)
        parts.append("at %d thread%s consr is faster in %d of %d comparisons (median speed-up %.1f×, range %.2f×–%.1f×)" % (
            threads, "" if threads == 1 else "s", faster, len(v), median, v[0], v[-1]))
    return "**At a glance:** " + "; ".join(parts) + "."


def generated_block(args, results, context, gpu_paths, disturbed=()):
    limits = bandwidth_limits(results)
    rows = comparison_rows(results, limits)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if args.from_json and context.get("date"):
        now = "%s (the run's; regenerated %s)" % (context["date"], now)
    command = "tools/run-benchmarks.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    parts = [
        BEGIN_MARK,
        "",
        "## Results",
        "",
        "- **Machine:** %s" % machine_description(context),
        "- **Date:** %s" % now,
        ("- **Command:** `%s` (%d repetitions of ≥ %g s each; times are the **minimum** over the repetitions, wall clock)" % (
            command.strip(), args.repetitions, args.min_time)) if not args.from_json else
        ("- **Command:** `%s` (regenerated from the JSON files of an earlier run; times are the **minimum** over its "
         "repetitions, wall clock)" % command.strip()),
        "- **Build:** %s (%s), %s, LibTorch %s" % (
            os.path.relpath(args.build_dir, ROOT), build_flags(args.build_dir), compiler_description(args.build_dir),
            torch_version()),
        "",
        summary_line(rows),
        "",
    ]
    if disturbed:
        parts += ["**Disturbed run:** the all-cores rows of " + "; ".join(disturbed) + " were measured while other "
                  "processes used the cores (a probe that gains less than 20 % from the extra threads, or a "
                  "kernel slower with them); rerun on a quiet machine before reading those rows.", ""]
    parts += [
        "Speed-up = baseline time / consr time (**bold** where consr is faster). Share of limit = consr's",
        "bytes per second (the bytes the operation must move: inputs read once, outputs written once) over",
        "the probe bandwidth of the same access pattern at the same thread count (table below).",
        "",
        results_table(rows, limits),
        "",
        "### Bandwidth limit (STREAM-like probe, same run)",
        "",
        limits_table(limits) if limits else "Not measured in this run.",
        "",
        "### Roofline: memory limit and compute ceiling",
        "",
        "The compute ceiling is the same call timed on inputs that stay in each core's L2 cache (`<kernel>_incache`),",
        "counting the traffic of the memory-bound row, so that its bytes per second say how fast the arithmetic",
        "alone would move the data. The bound is the lower of the two ceilings; a kernel can reach it only if its",
        "memory traffic and its arithmetic overlap completely.",
        "",
        roofline_table(results, limits),
        "",
        "### Memory: peak resident memory added by one call (fresh process, inputs excluded)",
        "",
        memory_table(results),
        "",
        "### Targets of the benchmark issue",
        "",
        targets_section(rows),
        "",
        "### GPU",
        "",
        gpu_section(gpu_paths),
        "",
        END_MARK,
    ]
    return "\n".join(parts)


def torch_version():
    path = "/usr/lib/x86_64-linux-gnu/cmake/Torch/TorchConfigVersion.cmake"
    try:
        with open(path) as f:
            m = re.search(r'PACKAGE_VERSION "([^"]+)"', f.read())
            return m.group(1) if m else "unknown"
    except OSError:
        return "(not found)"


def write_doc(path, block):
    text = ""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    if BEGIN_MARK in text and END_MARK in text:
        head = text[:text.index(BEGIN_MARK)]
        tail = text[text.index(END_MARK) + len(END_MARK):]
        text = head + block + tail
    else:
        text = (text.rstrip() + "\n\n" if text else "# Performance\n\n") + block + "\n"
    with open(path, "w") as f:
        f.write(text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build-dir", default=os.path.join(ROOT, "build", "bench"),
                   help="build directory (default build/bench, the `bench` preset)")
    p.add_argument("--no-build", action="store_true", help="use the executables already built")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel build jobs")
    p.add_argument("--repetitions", type=int, default=5, help="repetitions per benchmark (min is reported)")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds per repetition (Google Benchmark)")
    p.add_argument("--filter", default="", help="only benchmarks matching this regex (the probe is kept)")
    p.add_argument("--only", default="", help="comma-separated families to run, e.g. logprobs,corruption")
    p.add_argument("--large", action="store_true", help="also N = 4096 log-probs (needs ~6 GiB free memory)")
    p.add_argument("--threads", type=int, default=0, help="'all cores' thread count (default: all)")
    p.add_argument("--gpu-results", action="append", default=[],
                   help="results file of tools/gpu-check.sh (gpu-results/*.txt) or Google Benchmark JSON of "
                        "bench/cuda, or a directory of them; repeatable (default: the newest gpu-results/*.txt)")
    p.add_argument("--from-json", default="", help="skip running: regenerate from the JSON files in this directory")
    p.add_argument("--output", default=os.path.join(ROOT, "docs", "performance.md"), help="document to rewrite")
    args = p.parse_args()
    args.build_dir = os.path.abspath(args.build_dir)

    if args.filter:
        args.filter = "stream_|" + args.filter
    gpu_paths = []
    for g in args.gpu_results:
        if os.path.isdir(g):
            gpu_paths += sorted(glob.glob(os.path.join(g, "*.json")) + glob.glob(os.path.join(g, "*.txt")))
        else:
            gpu_paths.append(os.path.abspath(g))

    if args.from_json:
        paths = sorted(glob.glob(os.path.join(args.from_json, "*.json")))
    else:
        if not args.no_build:
            build(args.build_dir, args.jobs)
        exes = executables(args.build_dir)
        if args.only:
            wanted = {"consr_bench_" + f.strip() for f in args.only.split(",")}
            exes = [e for e in exes if os.path.basename(e) in wanted]
        if not exes:
            sys.exit("no benchmark executables in %s/bench (build with --preset bench)" % args.build_dir)
        out_dir = os.path.join(args.build_dir, "results")
        os.makedirs(out_dir, exist_ok=True)
        for old in glob.glob(os.path.join(out_dir, "*.json")):
            os.remove(old)
        env = dict(os.environ)
        if args.large:
            env["CONSR_BENCH_LARGE"] = "1"
        if args.threads:
            env["CONSR_BENCH_ALL_THREADS"] = str(args.threads)
        env.setdefault("OMP_PROC_BIND", "false")
        paths = []
        for exe in exes:
            out_json = os.path.join(out_dir, os.path.basename(exe) + ".json")
            start = datetime.datetime.now()
            run_executable(exe, out_json, args, env)
            log("%s: %.0f s" % (os.path.basename(exe), (datetime.datetime.now() - start).total_seconds()))
            paths.append(out_json)
    if not args.gpu_results:
        gpu_paths = latest_gpu_results()
    results, context = parse_results(paths)
    block = generated_block(args, results, context or {}, gpu_paths, disturbed_runs(paths))
    write_doc(args.output, block)
    log("wrote %s" % os.path.relpath(args.output, ROOT))


if __name__ == "__main__":
    main()
