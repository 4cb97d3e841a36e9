#!/usr/bin/env python3
"""The paper's ablations in miniature (issue 14): runs consr_experiment once per variant on one shared
synthetic world, for each shipped model family, and writes docs/experiments.md with the tables, the
command, the date and the machine. Not run in CI (tens of minutes).

    python3 tools/run_ablations.py [--build build/default] [--out build/ablations] [--families qwen,llava]
                                   [--only table3,table4,table6,table7,table8]
                                   [--pipeline-args "--lr 3e-4"] [--items 120] [--test-images 60] [--doc docs/experiments.md]

Every variant is the main job (examples/08_consr_experiment) with pipeline options changed; the
pipeline stages a variant shares with the base run (descriptions, candidates, scores) are copied from
the base run's directory first, so the pipeline recomputes only the stale stages (its fingerprints
decide). Choices are never made on the test split: the table reports what each variant gives.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (table, name, pipeline options). The first entry is the base run every other variant copies from.
VARIANTS = [
    ("base", "ConSR (λ 0.8, 15 candidates, eq. 14 loss)", []),
    # Table 3: data construction
    ("table3", "λ = 0 (S_corrupt only)", ["--lambda", "0"]),
    ("table3", "λ = 0.5", ["--lambda", "0.5"]),
    ("table3", "λ = 1 (S_semantic only)", ["--lambda", "1"]),
    ("table3", "without revised and noisy candidates", ["--num-revised", "0", "--num-noisy", "0"]),
    ("table3", "POVID-style pairs (sampled preferred, noisy dispreferred)", ["--pair-rule", "povid"]),
    # Table 4: the loss
    ("table4", "standard DPO (eq. 7)", ["--loss", "standard", "--no-length-normalize", "--no-visual-weights"]),
    ("table4", "+ length normalization (eq. 11)", ["--no-visual-weights"]),
    ("table4", "+ visual weights α = 0.25", ["--visual-alpha", "0.25"]),
    ("table4", "+ visual weights α = 1", ["--visual-alpha", "1"]),
    # Table 6: reward noise step
    ("table6", "reward noise step 500", ["--reward-noise-step", "500"]),
    ("table6", "reward noise step 999", ["--reward-noise-step", "999"]),
    # Table 7: reward corruption kind
    ("table7", "reward corruption: patch mask", ["--reward-corruption", "mask"]),
    ("table7", "reward corruption: mixup", ["--reward-corruption", "mixup"]),
    ("table7", "reward corruption: resized crop", ["--reward-corruption", "resized-crop"]),
    # Table 8: the enriched prompt's text (the file is written into --out at run time)
    ("table8", "enriched prompt: a grounding instruction (no description)", ["--enriched-prompt-file", "{instruction}"]),
]

# Table 8's alternative to "For your reference, the input image can be described as follows: {Image
# Description} {Original Prompt}": a fixed instruction that asks for grounding but carries no description.
GROUNDING_INSTRUCTION = ("Look carefully at the image and answer based only on what is visible in it. "
                         "{Original Prompt}")

TITLES = {
    "base": "The base run",
    "table3": "Table 3 in miniature — data construction",
    "table4": "Table 4 in miniature — the loss",
    "table6": "Table 6 in miniature — the reward's noise step",
    "table7": "Table 7 in miniature — the reward's corruption",
    "table8": "Table 8 in miniature — the enriched prompt's text (base row: the model's own description)",
}

FAMILIES = {"qwen": "models/qwen2_5_vl_world", "llava": "models/llava_onevision_world"}


def pct(v):
    return "n/a" if v is None else "%.1f" % (100 * v)


def ci(v):
    return "" if not v or v[0] is None else "[%.1f, %.1f]" % (100 * v[0], 100 * v[1])


def trained_pairs(out):
    """Of the pairs the run trained on: chosen correct and rejected wrong / the reverse / all."""
    pairs = json.load(open(os.path.join(out, "report.json")))["pairs"]
    right = sum(1 for p in pairs if p["chosen_correct"] and not p["rejected_correct"])
    wrong = sum(1 for p in pairs if p["rejected_correct"] and not p["chosen_correct"])
    return "%d / %d / %d" % (right, wrong, len(pairs))


def row(name, s, out):
    b, a = s["before"], s["after"]
    adv_b = b["pope"].get("adversarial", {}).get("false_yes_rate")
    adv_a = a["pope"].get("adversarial", {}).get("false_yes_rate")
    return "| %s | %s | %s | %s | %s → %s | %s pt %s | %s → %s | %s → %s | %.1f → %.1f |" % (
        name, trained_pairs(out), pct(s["pair_agreement"]), "n/a" if s["reward_auc"] is None else "%.3f" % s["reward_auc"],
        pct(b["overall"]["accuracy"]), pct(a["overall"]["accuracy"]),
        "n/a" if s["accuracy_diff"] is None else "%+.1f" % (100 * s["accuracy_diff"]), ci(s["accuracy_diff_ci95"]),
        pct(adv_b), pct(adv_a), "%.3f" % b["chair"]["chair_i"] if b["chair"]["chair_i"] is not None else "n/a",
        "%.3f" % a["chair"]["chair_i"] if a["chair"]["chair_i"] is not None else "n/a",
        b["mean_length"], a["mean_length"])


HEADER = ("| variant | trained pairs right / reversed / all | pair agreement of r % | AUC of r | test accuracy % "
          "| Δ accuracy (95 % CI) | adversarial false-yes % | CHAIR_i | mean length | time |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "default"))
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "ablations"))
    ap.add_argument("--families", default="qwen,llava")
    ap.add_argument("--only", default="")
    ap.add_argument("--items", default="120")
    ap.add_argument("--train-images", default="40")
    ap.add_argument("--test-images", default="60")
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs", "experiments-ablations.md"))
    ap.add_argument("--pipeline-args", default="",
                    help="pipeline options appended to every variant, e.g. \"--lr 3e-4\" (they override the job's)")
    args = ap.parse_args()
    exe = os.path.join(args.build, "examples", "08_consr_experiment", "consr_experiment")
    if not os.path.isfile(exe):
        sys.exit("run_ablations: %s not found: build the default preset first (tools/main.sh builds it)" % exe)
    only = set(filter(None, args.only.split(",")))
    os.makedirs(args.out, exist_ok=True)
    world = os.path.join(args.out, "world")
    instruction = os.path.join(args.out, "grounding_instruction.txt")
    with open(instruction, "w") as f:
        f.write(GROUNDING_INSTRUCTION)
    sections = {}
    started = time.time()
    for fam in filter(None, args.families.split(",")):
        model = os.path.join(ROOT, FAMILIES[fam])
        base_dir = os.path.join(args.out, fam, "base")
        for table, name, extra in VARIANTS:
            if only and table not in only and table != "base":
                continue
            tag = name.split(" (")[0].replace(" ", "_").replace("/", "_").replace("=", "").replace("+", "plus")
            out = base_dir if table == "base" else os.path.join(args.out, fam, table + "_" + tag)
            if table != "base" and os.path.isdir(os.path.join(base_dir, "pipeline")):
                shutil.rmtree(out, ignore_errors=True)
                os.makedirs(out)
                shutil.copytree(os.path.join(base_dir, "pipeline"), os.path.join(out, "pipeline"))
            cmd = [exe, "--out", out, "--world", world, "--model", model, "--items", args.items,
                   "--train-images", args.train_images, "--test-images", args.test_images, "--no-plots", "--"] + [
                       instruction if e == "{instruction}" else e for e in extra] + args.pipeline_args.split()
            print("run_ablations: " + " ".join(cmd), flush=True)
            t0 = time.time()
            res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            with open(out + ".log", "w") as f:
                f.write(res.stdout)
            if res.returncode != 0:
                print("run_ablations: variant failed (%s): %s" % (name, res.stdout.strip().splitlines()[-1:]))
                sections.setdefault((fam, table), []).append("| %s | failed: %s |" % (
                    name, (res.stdout.strip().splitlines() or ["?"])[-1].replace("|", "/")))
                continue
            s = json.load(open(os.path.join(out, "summary.json")))
            sections.setdefault((fam, table), []).append(row(name, s, out) + " %.0f s |" % (time.time() - t0))
    lines = ["# Ablations in miniature (generated by tools/run_ablations.py)", "",
             "Command: `python3 tools/run_ablations.py %s`" % " ".join(sys.argv[1:]),
             "Date: %s; machine: %s, %d cores; total %.0f s." % (
                 datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"), platform.processor() or platform.machine(),
                 os.cpu_count(), time.time() - started), "",
             "Each row is the main job (`consr_experiment`) with the pipeline options of the variant. *Trained pairs*: "
             "of the pairs the run trained on, how many have a correct chosen and a wrong rejected answer, how many the "
             "reverse, and how many in all (the POVID row's pairs do not come from r). *Pair agreement* and *AUC* "
             "describe the reward r of the variant on the train questions against ground truth (see "
             "docs/experiments.md). Then base vs base + adapter on the held-out test split, with the experiment's "
             "training defaults (lr 1e-4, 2 epochs, early stopping on validation pairs)" + (
                 ", with `%s` added to every run" % args.pipeline_args if args.pipeline_args else "") + ". Intervals are 95 % (paired "
             "bootstrap for the difference). Analysis: docs/experiments.md.", ""]
    for fam in filter(None, args.families.split(",")):
        lines += ["## %s (`%s`)" % (fam, FAMILIES[fam]), ""]
        for table in ["base", "table3", "table4", "table6", "table7", "table8"]:
            if (fam, table) not in sections:
                continue
            lines += ["### " + TITLES[table], "", HEADER]
            lines += sections[(fam, table)] + [""]
    with open(args.doc, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("run_ablations: wrote " + args.doc)


if __name__ == "__main__":
    main()
