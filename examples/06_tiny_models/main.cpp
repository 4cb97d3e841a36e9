// consr_train_tiny — trains a small Qwen2.5-VL-like or LLaVA-OneVision-like model from random
// initialisation on a consr_world directory and writes it as a Hugging Face checkpoint directory
// (docs/tiny-models.md).
//
//   consr_train_tiny --world WORLD --family qwen2_5_vl --out models/qwen2_5_vl_world --steps 600 --seed 0
#include <exception>
#include <iostream>

#include <CLI/CLI.hpp>

#include "tiny_models.hpp"

int main(int argc, char** argv) {
  consr_tiny::train_options o;
  CLI::App app{"Train a tiny Qwen2.5-VL-like or LLaVA-OneVision-like model from scratch on a consr_world "
               "directory (tokenizer + full-parameter SFT) and save it as a Hugging Face checkpoint."};
  app.add_option("--world", o.world, "world directory (consr_world generate --out DIR)")->required();
  app.add_option("--family", o.family, "qwen2_5_vl or llava_onevision")->check(CLI::IsMember({"qwen2_5_vl", "llava_onevision"}));
  app.add_option("--out", o.out, "checkpoint directory to write")->required();
  app.add_flag("--force", o.force, "replace an existing --out");
  app.add_option("--steps", o.steps, "optimiser steps")->capture_default_str();
  app.add_option("--batch-size", o.batch_size, "questions per step")->capture_default_str();
  app.add_option("--lr", o.lr, "peak learning rate (AdamW)")->capture_default_str();
  app.add_option("--min-lr-ratio", o.min_lr_ratio, "cosine decays to lr * this")->capture_default_str();
  app.add_option("--warmup", o.warmup, "linear warm-up steps")->capture_default_str();
  app.add_option("--weight-decay", o.weight_decay, "AdamW weight decay (matrices only)")->capture_default_str();
  app.add_option("--clip", o.clip, "gradient-norm clipping")->capture_default_str();
  app.add_option("--seed", o.seed, "seed: initialisation and data order")->capture_default_str();
  app.add_option("--threads", o.threads, "LibTorch intra-op threads (results depend on seed and this)")->capture_default_str();
  app.add_option("--train-limit", o.train_limit, "use only the first N training questions (0: all)")->capture_default_str();
  app.add_option("--type-temperature", o.type_temperature,
                 "draw a question type with probability ∝ count^T, then a question of it (1: the data's mix)")
      ->capture_default_str();
  app.add_option("--vocab-size", o.vocab_size, "BPE vocabulary: 256 bytes + merges (special tokens on top)")->capture_default_str();
  app.add_option("--log-every", o.log_every, "print the mean loss every N steps")->capture_default_str();
  app.add_option("--eval-every", o.eval_every, "validate every N steps during training (0: only at the end)")->capture_default_str();
  app.add_option("--eval-per-type", o.eval_per_type, "validation questions per type during training")->capture_default_str();
  app.add_option("--final-eval-per-type", o.final_eval_per_type, "validation questions per type at the end")->capture_default_str();
  app.add_option("--eval-batch-size", o.eval_batch_size, "prompts per generation batch")->capture_default_str();
  app.add_option("--hidden", o.sizes.hidden, "text hidden size")->capture_default_str();
  app.add_option("--layers", o.sizes.layers, "decoder layers")->capture_default_str();
  app.add_option("--heads", o.sizes.heads, "attention heads")->capture_default_str();
  app.add_option("--kv-heads", o.sizes.kv_heads, "key/value heads")->capture_default_str();
  app.add_option("--intermediate", o.sizes.intermediate, "MLP width")->capture_default_str();
  app.add_option("--vision-hidden", o.sizes.vision_hidden, "vision hidden size")->capture_default_str();
  app.add_option("--vision-layers", o.sizes.vision_layers, "vision blocks")->capture_default_str();
  app.add_option("--vision-heads", o.sizes.vision_heads, "vision heads")->capture_default_str();
  app.add_option("--vision-intermediate", o.sizes.vision_intermediate, "vision MLP width")->capture_default_str();
  app.add_option("--image-size", o.sizes.image_size, "LLaVA-OV: SigLIP image size (the tile and the only pinpoint)")->capture_default_str();
  app.add_option("--patch-size", o.sizes.patch_size, "vision patch size")->capture_default_str();
  app.add_option("--rope-theta", o.sizes.rope_theta, "decoder RoPE base")->capture_default_str();
  app.add_option("--paper-description", o.augment.paper_description,
                 "share of description questions also trained with the paper's description prompt (App. B.1)")
      ->capture_default_str()->check(CLI::Range(0.0, 1.0));
  app.add_option("--enriched", o.augment.enriched,
                 "share of short-answer questions also trained with the paper's enriched prompt (reference description)")
      ->capture_default_str()->check(CLI::Range(0.0, 1.0));
  app.add_option("--revision", o.augment.revision,
                 "share of short-answer questions also trained as the paper's revision prompt (answer: the reference)")
      ->capture_default_str()->check(CLI::Range(0.0, 1.0));
  bool no_reference = false;
  app.add_flag("--no-reference", no_reference, "do not write runtime_reference.safetensors");
  CLI11_PARSE(app, argc, argv);
  o.write_reference = !no_reference;
  try {
    consr_tiny::train(o, std::cout);
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
  return 0;
}
