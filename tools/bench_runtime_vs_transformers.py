#!/usr/bin/env python3
"""One pipeline item's model work in consr and in transformers, side by side (issue 17 §2).

Run with the venv of tools/build-against-pip-torch.sh (PyPI torch 2.x + transformers), never in CI:

    build/venv-torch/bin/python tools/bench_runtime_vs_transformers.py --threads 2 \
        --consr build/default/examples/04_consr_pipeline/consr_bench_item \
        --consr build/pip-torch/examples/04_consr_pipeline/consr_bench_item   # optional: the wheel's LibTorch

1. Makes (once) a random Qwen2.5-VL checkpoint at the 3B model's widths (text: hidden 2048,
   intermediate 11008, 16 heads, 2 KV heads, the real vocabulary size 151936, tied embeddings;
   vision: hidden 1280, intermediate 3420, 16 heads) with --layers decoder and --vision-depth vision
   blocks, fp32, saved with save_pretrained.
2. Runs consr_bench_item on it: it writes the synthetic inputs (token ids, a 448×448 image of random
   patches = 256 image tokens, a noisy copy, 5 revision prompts, 15 candidates) and times
   description (64 greedy tokens), candidates (5 sampled + 5 revised + 5 noisy, 32 tokens) and
   scoring (15 candidates × 3 conditions, shared prefix and per-candidate).
3. Runs the same work in transformers as a Python user would: `generate` (greedy; sampled with
   num_return_sequences; a left-padded batch for the revisions) and, for scoring, one batched
   teacher-forced forward per condition with `logits_to_keep` (only the response positions reach
   lm_head, as in consr). No stop tokens anywhere, so every generation has its full length.
4. Checks equal outputs (greedy tokens identical, scoring log-probs within --tolerance) and prints
   a markdown table of seconds per stage and the ratios; --report writes it to a file and
   --json the raw numbers.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file


def make_model(path, layers, vision_depth):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    if os.path.exists(os.path.join(path, "config.json")):
        return
    os.makedirs(path, exist_ok=True)
    torch.manual_seed(0)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=16,
                         num_key_value_heads=2, vocab_size=151936, rms_norm_eps=1e-6, max_position_embeddings=128000,
                         tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=vision_depth, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                           fullatt_block_indexes=[vision_depth - 1], window_size=112, patch_size=14, temporal_patch_size=2,
                           spatial_merge_size=2, tokens_per_second=2),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        tie_word_embeddings=True)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    model.save_pretrained(path, safe_serialization=True)


def rows(t, lengths):
    out, start = [], 0
    for n in lengths.tolist():
        out.append(t[start:start + n].tolist())
        start += n
    return out


def left_pad(seqs):
    n = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), n, dtype=torch.long)
    mask = torch.zeros(len(seqs), n, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, n - len(s):] = torch.tensor(s)
        mask[i, n - len(s):] = 1
    return ids, mask


def run_transformers(model_dir, inputs_path, threads, score_batch):
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    x = load_file(inputs_path)
    from safetensors import safe_open
    with safe_open(inputs_path, "pt") as f:
        meta = f.metadata()
    desc_tokens, cand_tokens, samples = int(meta["description_tokens"]), int(meta["candidate_tokens"]), int(meta["samples"])
    gc = model.generation_config
    gc.eos_token_id = None
    gc.pad_token_id = 0
    gc.top_k = None
    gc.top_p = None
    gc.temperature = None
    prompt = x["prompt"].tolist()
    px, noisy, thw = x["pixel_values"], x["noisy_pixel_values"], x["image_grid_thw"]
    image_token = model.config.image_token_id
    # What Qwen2_5_VLProcessor passes beside input_ids: without it transformers 5 gives the image
    # tokens 1-D text positions instead of the multimodal (t, h, w) ones.
    mm = lambda ids: (ids == image_token).to(torch.int32)
    sec = {}
    with torch.no_grad():
        ids, mask = left_pad([prompt])
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, mm_token_type_ids=mm(ids), pixel_values=px,
                             image_grid_thw=thw, max_new_tokens=desc_tokens, do_sample=False)
        sec["description"] = time.perf_counter() - t0
        description = out[0, ids.shape[1]:].tolist()

        sample = dict(max_new_tokens=cand_tokens, do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
        t0 = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=mask, mm_token_type_ids=mm(ids), pixel_values=px,
                       image_grid_thw=thw, num_return_sequences=samples, **sample)
        t1 = time.perf_counter()
        rids, rmask = left_pad(rows(x["revise_prompts"], x["revise_prompts_lengths"]))
        model.generate(input_ids=rids, attention_mask=rmask, mm_token_type_ids=mm(rids), pixel_values=px.repeat(rids.shape[0], 1),
                       image_grid_thw=thw.repeat(rids.shape[0], 1), **sample)
        t2 = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=mask, mm_token_type_ids=mm(ids), pixel_values=noisy,
                       image_grid_thw=thw, num_return_sequences=samples, **sample)
        t3 = time.perf_counter()
        sec.update(candidates=t3 - t0, candidates_sampled=t1 - t0, candidates_revised=t2 - t1, candidates_noisy=t3 - t2)

        cands = rows(x["candidates"], x["candidates_lengths"])
        logp = {}
        t0 = time.perf_counter()
        for name, p, pix in [("logp_clean", prompt, px), ("logp_noisy", prompt, noisy), ("logp_enriched", x["enriched"].tolist(), px)]:
            values = []
            for start in range(0, len(cands), score_batch):
                chunk = cands[start:start + score_batch]
                longest = max(len(c) for c in chunk)
                seq = torch.zeros(len(chunk), len(p) + longest, dtype=torch.long)
                m = torch.zeros_like(seq)
                for i, c in enumerate(chunk):  # right-padded: the prompt starts every row
                    seq[i, :len(p) + len(c)] = torch.tensor(p + c)
                    m[i, :len(p) + len(c)] = 1
                logits = model(input_ids=seq, attention_mask=m, mm_token_type_ids=mm(seq), pixel_values=pix.repeat(len(chunk), 1),
                               image_grid_thw=thw.repeat(len(chunk), 1), logits_to_keep=longest + 1).logits
                lp = torch.log_softmax(logits.float(), -1)  # positions len(p) − 1 … len(p) + longest − 1
                for i, c in enumerate(chunk):
                    values.append(lp[i, torch.arange(len(c)), torch.tensor(c)])
            logp[name] = torch.cat(values)
        sec["scoring"] = time.perf_counter() - t0
    sec["item"] = sec["description"] + sec["candidates"] + sec["scoring"]
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "load_s": load_s, "seconds": sec,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "description": description, "logp": logp}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--consr", required=True, action="append",
                    help="path of a consr_bench_item binary; repeat it to compare builds (e.g. Debian's LibTorch and the wheel's)")
    ap.add_argument("--work", default="build/bench-runtime", help="model and run directory")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vision-depth", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--description-tokens", type=int, default=64)
    ap.add_argument("--candidate-tokens", type=int, default=32)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--report", help="write the markdown table here")
    ap.add_argument("--json", help="write the raw numbers here")
    a = ap.parse_args()
    for path in a.consr:
        if not os.access(path, os.X_OK):
            sys.exit(f"bench_runtime_vs_transformers.py: argument '--consr': '{path}' is not an executable")
    model_dir = os.path.join(a.work, f"qwen2_5_vl_3b_widths_{a.layers}l_{a.vision_depth}v")
    make_model(model_dir, a.layers, a.vision_depth)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    runs = []
    for i, path in enumerate(a.consr):
        run_dir = os.path.join(a.work, f"run-{i}")
        cmd = [path, "--model", model_dir, "--out", run_dir, "--threads", str(a.threads), "--image-size", str(a.image_size),
               "--description-tokens", str(a.description_tokens), "--candidate-tokens", str(a.candidate_tokens),
               "--score-batch", "15", "--tolerance", str(a.tolerance)]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        with open(os.path.join(run_dir, "consr.json")) as f:
            report = json.load(f)
        runs.append((run_dir, report, load_file(os.path.join(run_dir, "consr.safetensors"))))
    hf = run_transformers(model_dir, os.path.join(runs[0][0], "inputs.safetensors"), a.threads, 15)
    checks, ok = [], True
    for run_dir, report, ours in runs:
        same_greedy = ours["description"].tolist() == hf["description"]
        diffs = {k: float((ours[k] - hf["logp"][k]).abs().max()) for k in hf["logp"]}
        ok = ok and same_greedy and max(diffs.values()) <= a.tolerance
        checks.append(f"consr on torch {report['torch']}: greedy description tokens {'identical' if same_greedy else 'DIFFERENT'}; "
                      "scoring log-probs max |consr − transformers| = " + ", ".join(f"{k[5:]} {v:.1e}" for k, v in diffs.items())
                      + f"; shared vs per-candidate {report.get('shared_vs_unshared_max_abs_logprob_diff', float('nan')):.1e}; "
                      f"shared-prefix scoring {report['seconds']['scoring_unshared'] / report['seconds']['scoring_shared']:.2f}× "
                      "the per-candidate prefill.")
    h = hf["seconds"]
    head = "| stage | " + " | ".join(f"consr, torch {r['torch']} (s)" for _, r, _ in runs) + \
        f" | transformers, torch {hf['torch']} (s) | " + " | ".join(f"transformers / consr {r['torch']}" for _, r, _ in runs) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(runs))]
    for stage, ck, hk in [("description: 64 greedy tokens, one stream", "description", "description"),
                          ("candidates: 5 sampled", "candidates_sampled", "candidates_sampled"),
                          ("candidates: 5 revised (5 prompts)", "candidates_revised", "candidates_revised"),
                          ("candidates: 5 from the noisy image", "candidates_noisy", "candidates_noisy"),
                          ("candidates: all 15", "candidates", "candidates"),
                          ("scoring 15 × 3: shared prefix (consr), batched forward (transformers)", "scoring_shared", "scoring"),
                          ("scoring 15 × 3: per-candidate prefill (consr), batched forward (transformers)", "scoring_unshared", "scoring"),
                          ("the item (description + candidates + shared scoring)", "item", "item")]:
        cs = [r["seconds"][ck] for _, r, _ in runs]
        lines.append(f"| {stage} | " + " | ".join(f"{c:.2f}" for c in cs) + f" | {h[hk]:.2f} | "
                     + " | ".join(f"{h[hk] / c:.2f}×" for c in cs) + " |")
    lines.append("| peak RSS of the process (MiB) | " + " | ".join(f"{r['peak_rss_mib']:.0f}" for _, r, _ in runs)
                 + f" | {hf['peak_rss_mib']:.0f} |" + " |" * len(runs))
    r0 = runs[0][1]
    notes = checks + [
        f"Threads {a.threads}; model {model_dir} ({a.layers} decoder layers, {a.vision_depth} vision blocks, fp32); "
        f"{r0['image_tokens']} image tokens, prompt {r0['prompt_tokens']} tokens; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M %Z')}."]
    text = "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    print(text)
    if a.report:
        with open(a.report, "w") as f:
            f.write(text)
    if a.json:
        hf_out = {k: v for k, v in hf.items() if k != "logp"}
        with open(a.json, "w") as f:
            json.dump({"consr": [r for _, r, _ in runs], "transformers": hf_out}, f, indent=2)
    if not ok:
        sys.exit("bench_runtime_vs_transformers.py: the outputs differ (see above)")


if __name__ == "__main__":
    main()
