#!/usr/bin/env python3
"""Checks an experiment's output directory (examples/08_consr_experiment): the report's structure, and
that its reward-quality numbers are recomputable from the saved per-candidate data (candidates.jsonl),
with an implementation written independently of the C++ one (spec §6 selection rules, within-item AUC).
It does not check that the method wins.

    python3 tests/experiment/check_report.py <experiment output directory>
"""
import json
import math
import os
import sys


def fail(msg):
    print("check_report: FAIL: " + msg)
    sys.exit(1)


def close(a, b, tol=1e-9):
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def select_pair(values):
    """spec §6, one pair: chosen = argmax (ties to the lower index), rejected = argmin (lower index);
    non-finite skipped; no pair with < 2 usable or best == worst."""
    idx = [i for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if len(idx) < 2:
        return None
    best = min(idx, key=lambda i: (-values[i], i))
    worst = min(idx, key=lambda i: (values[i], i))
    if best == worst or not values[best] > values[worst]:
        return None
    return best, worst


SIGNALS = {
    "reward": lambda c: c["r"],
    "s_corrupt": lambda c: c["S_corrupt"],
    "s_semantic": lambda c: c["S_semantic"],
    "likelihood": lambda c: c["P"],
    "length": lambda c: float(c["scored_tokens"]),
}


def quality(items, signal):
    q = dict(items=0, items_mixed=0, items_all_correct=0, items_all_wrong=0, pairs=0, pairs_agree=0,
             pairs_reversed=0, auc_pairs=0, auc_wins=0.0)
    for cands in items:
        q["items"] += 1
        usable = [c for c in cands if c["usable"]]
        n_ok = sum(1 for c in usable if c["correct"])
        if n_ok == 0:
            q["items_all_wrong"] += 1
            continue
        if n_ok == len(usable):
            q["items_all_correct"] += 1
            continue
        q["items_mixed"] += 1
        vals = [SIGNALS[signal](c) if c["usable"] else None for c in cands]
        p = select_pair(vals)
        if p:
            q["pairs"] += 1
            cw, cl = cands[p[0]]["correct"], cands[p[1]]["correct"]
            q["pairs_agree"] += cw and not cl
            q["pairs_reversed"] += (not cw) and cl
        for a, ca in enumerate(cands):
            for b, cb in enumerate(cands):
                if not (ca["usable"] and cb["usable"] and ca["correct"] and not cb["correct"]):
                    continue
                va, vb = vals[a], vals[b]
                if va is None or vb is None or not (math.isfinite(va) and math.isfinite(vb)):
                    continue
                q["auc_pairs"] += 1
                q["auc_wins"] += 1.0 if va > vb else (0.5 if va == vb else 0.0)
    return q


def main():
    out = sys.argv[1]
    for f in ("report.json", "summary.json", "report.md", "candidates.jsonl", "eval_before.json", "eval_after.json"):
        if not os.path.isfile(os.path.join(out, f)):
            fail("missing " + f)
    summary = json.load(open(os.path.join(out, "summary.json")))
    for k in ("pair_agreement", "reward_auc", "baselines", "before", "after", "accuracy_diff", "accuracy_diff_ci95",
              "timings"):
        if k not in summary:
            fail("summary.json lacks " + k)
    for b in ("s_corrupt", "s_semantic", "likelihood", "length", "random"):
        if set(summary["baselines"].get(b, {})) != {"pair_agreement", "auc"}:
            fail("summary.json baselines lack " + b)
    for side in ("before", "after"):
        for k in ("model", "adapter", "n", "per_type", "pope", "chair", "mean_length"):
            if k not in summary[side]:
                fail("summary.json %s lacks %s" % (side, k))
    if "paired" not in summary["after"]:
        fail("summary.json after lacks the paired comparison")
    report = json.load(open(os.path.join(out, "report.json")))

    # regroup candidates.jsonl by item, in file order
    items, order = {}, []
    for line in open(os.path.join(out, "candidates.jsonl")):
        c = json.loads(line)
        if c["id"] not in items:
            items[c["id"]] = []
            order.append(c["id"])
        items[c["id"]].append(c)
    grouped = [items[i] for i in order]
    n_checked = 0
    for signal in SIGNALS:
        mine = quality(grouped, signal)
        theirs = report["reward_quality"]["overall"][signal]
        for k in ("items", "items_mixed", "items_all_correct", "items_all_wrong", "pairs", "pairs_agree",
                  "pairs_reversed", "auc_pairs"):
            if mine[k] != theirs[k]:
                fail("%s.%s: recomputed %s, report says %s" % (signal, k, mine[k], theirs[k]))
        agree = mine["pairs_agree"] / mine["pairs"] if mine["pairs"] else None
        auc = mine["auc_wins"] / mine["auc_pairs"] if mine["auc_pairs"] else None
        if not close(agree, theirs["pair_agreement"]) or not close(auc, theirs["auc"]):
            fail("%s: agreement/AUC %s/%s vs report %s/%s" % (signal, agree, auc, theirs["pair_agreement"], theirs["auc"]))
        n_checked += 1
    if not close(summary["pair_agreement"], report["reward_quality"]["overall"]["reward"]["pair_agreement"]):
        fail("summary pair_agreement differs from the report")
    # the pipeline's own pairs are the reward signal's pairs on mixed items
    mixed_pairs = [p for p in report["pairs"] if any(c["correct"] for c in items[p["id"]] if c["usable"])
                   and not all(c["correct"] for c in items[p["id"]] if c["usable"])]
    agree_pipeline = sum(1 for p in mixed_pairs if p["chosen_correct"] and not p["rejected_correct"])
    if len(mixed_pairs) != report["reward_quality"]["overall"]["reward"]["pairs"] or \
            agree_pipeline != report["reward_quality"]["overall"]["reward"]["pairs_agree"]:
        fail("the pipeline's pairs (%d mixed, %d agree) differ from the reward signal's selection" %
             (len(mixed_pairs), agree_pipeline))
    # evaluation: per-type accuracies recomputable from the items
    for side, f in (("before", "eval_before.json"), ("after", "eval_after.json")):
        ev = json.load(open(os.path.join(out, f)))
        by_type = {}
        for it in ev["items"]:
            t = by_type.setdefault(it["type"], [0, 0])
            t[0] += 1
            t[1] += bool(it["correct"])
        for t, (n, k) in by_type.items():
            if ev["per_type"][t]["n"] != n or ev["per_type"][t]["correct"] != k:
                fail("%s: per_type %s says %s/%s, items give %d/%d" % (f, t, ev["per_type"][t]["correct"],
                                                                      ev["per_type"][t]["n"], k, n))
    print("check_report: OK (%d items, %d signals recomputed, %d pairs)" % (len(grouped), n_checked, len(report["pairs"])))


if __name__ == "__main__":
    main()
