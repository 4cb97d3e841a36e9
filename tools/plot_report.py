#!/usr/bin/env python3
"""Plots of the ConSR experiment (the main job): reads the files the C++ program wrote into its output
directory and writes PNGs into <out>/plots/.

    /usr/bin/python3 tools/plot_report.py <experiment output directory>

Inputs (written by consr_experiment, docs/experiments.md):
  candidates.jsonl  one line per candidate: id, type, kind, usable, correct, P, S_corrupt, S_semantic, r
  report.json       pairs (margin, chosen_correct, rejected_correct), training.steps / training.validation,
                    before / after (eval.json: per_type with accuracy and ci95)

Uses Debian's python3-matplotlib (installed for /usr/bin/python3). Exits 3 with one line on stderr
when matplotlib is missing, so the caller can say the plots were skipped.
"""
import json
import math
import os
import sys


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: plot_report.py <experiment output directory>", file=sys.stderr)
        return 2
    out = sys.argv[1]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_report.py: matplotlib is not installed (Debian: python3-matplotlib); plots skipped", file=sys.stderr)
        return 3

    with open(os.path.join(out, "report.json"), encoding="utf-8") as f:
        report = json.load(f)
    cands = []
    with open(os.path.join(out, "candidates.jsonl"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                cands.append(json.loads(line))
    plots = os.path.join(out, "plots")
    os.makedirs(plots, exist_ok=True)
    written = []

    def finite(v):
        return v is not None and isinstance(v, (int, float)) and math.isfinite(v)

    usable = [c for c in cands if c.get("usable") and finite(c.get("r"))]
    good = [c for c in usable if c["correct"]]
    bad = [c for c in usable if not c["correct"]]

    # 1. reward of correct vs wrong candidates
    fig, ax = plt.subplots(figsize=(6, 4))
    if usable:
        lo = min(c["r"] for c in usable)
        hi = max(c["r"] for c in usable)
        bins = [lo + (hi - lo) * i / 40 for i in range(41)] if hi > lo else 10
        ax.hist([c["r"] for c in good], bins=bins, alpha=0.6, label=f"correct ({len(good)})", color="tab:green")
        ax.hist([c["r"] for c in bad], bins=bins, alpha=0.6, label=f"wrong ({len(bad)})", color="tab:red")
    ax.set_xlabel("contrastive reward r (eq. 6)")
    ax.set_ylabel("candidates")
    ax.set_title("Reward of correct vs wrong candidates")
    ax.legend()
    fig.tight_layout()
    written.append(os.path.join(plots, "reward_correct_vs_wrong.png"))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # 2. S_corrupt vs S_semantic coloured by correctness
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for group, colour, name in ((bad, "tab:red", "wrong"), (good, "tab:green", "correct")):
        pts = [(c["S_corrupt"], c["S_semantic"]) for c in group if finite(c["S_corrupt"]) and finite(c["S_semantic"])]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=6, alpha=0.5, c=colour, label=name)
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("S_corrupt = P − P_corrupt (eq. 5)")
    ax.set_ylabel("S_semantic = P_semantic − P (eq. 4)")
    ax.set_title("The two reward components")
    ax.legend()
    fig.tight_layout()
    written.append(os.path.join(plots, "s_corrupt_vs_s_semantic.png"))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # 3. margin histogram of the selected pairs
    pairs = report.get("pairs", [])
    fig, ax = plt.subplots(figsize=(6, 4))
    groups = (
        ("chosen correct, rejected wrong", lambda p: p["chosen_correct"] and not p["rejected_correct"], "tab:green"),
        ("both correct / both wrong", lambda p: p["chosen_correct"] == p["rejected_correct"], "tab:grey"),
        ("chosen wrong, rejected correct", lambda p: (not p["chosen_correct"]) and p["rejected_correct"], "tab:red"),
    )
    data = [[p["margin"] for p in pairs if pick(p) and finite(p["margin"])] for _, pick, _ in groups]
    if any(data):
        ax.hist(data, bins=30, stacked=True, label=[g[0] for g in groups], color=[g[2] for g in groups])
    ax.set_xlabel("reward margin r(chosen) − r(rejected)")
    ax.set_ylabel("pairs")
    ax.set_title(f"Margins of the {len(pairs)} selected pairs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(os.path.join(plots, "pair_margins.png"))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # 4. training curves
    training = report.get("training", {})
    steps = training.get("steps", [])
    fig, ax = plt.subplots(figsize=(6, 4))
    if steps:
        xs = [s["step"] for s in steps]
        ax.plot(xs, [s["dpo_loss"] for s in steps], label="train −log σ(Δ′) (batch)", lw=0.8)
        ax2 = ax.twinx()
        ax2.plot(xs, [s["accuracy"] for s in steps], color="tab:orange", lw=0.8, alpha=0.7, label="train pair accuracy")
        ax2.set_ylabel("pair accuracy (Δ′ > 0)")
        ax2.set_ylim(-0.05, 1.05)
    val = training.get("validation", [])
    if val:
        ax.plot([v["step"] for v in val], [v["dpo_loss"] for v in val], "o-", color="tab:purple",
                label="validation −log σ(Δ′)")
    ax.set_xlabel("step")
    ax.set_ylabel("DPO loss")
    ax.set_title("ConSR-DPO training")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    written.append(os.path.join(plots, "training.png"))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # 5. accuracy before / after per type with Wilson intervals
    before = report.get("before", {}).get("per_type", {})
    after = report.get("after", {}).get("per_type", {})
    types = [t for t in before if t in after]
    if types:
        fig, ax = plt.subplots(figsize=(7, 4))
        w = 0.38
        for k, (name, ev, colour) in enumerate((("base", before, "tab:blue"), ("ConSR-DPO", after, "tab:orange"))):
            xs = [i + (k - 0.5) * w for i in range(len(types))]
            acc = [ev[t]["accuracy"] for t in types]
            lo = [ev[t]["accuracy"] - ev[t]["ci95"][0] for t in types]
            hi = [ev[t]["ci95"][1] - ev[t]["accuracy"] for t in types]
            ax.bar(xs, acc, w, yerr=[lo, hi], capsize=3, label=name, color=colour)
        ax.set_xticks(range(len(types)))
        ax.set_xticklabels(types, rotation=20)
        ax.set_ylim(0, 1)
        ax.set_ylabel("held-out accuracy (Wilson 95 %)")
        ax.set_title("Before and after ConSR-DPO (test split)")
        ax.legend()
        fig.tight_layout()
        written.append(os.path.join(plots, "accuracy_before_after.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    for w in written:
        print(w)
    return 0


if __name__ == "__main__":
    sys.exit(main())
