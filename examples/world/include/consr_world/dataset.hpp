// consr_world/dataset.hpp — writing (and reading back) the world's files.
//
// The layout of DIR (a contract the training and evaluation code relies on):
//   DIR/images/<split>/<index6>.png      112 x 112 RGB
//   DIR/<split>.jsonl                    one question per line:
//       {"id": "<split>-<index6>-<q>", "image": "images/<split>/<index6>.png", "prompt", "answer",
//        "type": "existence|colour|count|position|reading|description", "scene": "<split>-<index6>"}
//       plus for existence "label": "yes"|"no" and "pope_split": "random"|"popular"|"adversarial"
//   DIR/<split>_scenes.jsonl             one image per line:
//       {"scene", "image", "objects": [{"shape", "colour", "size", "cell", "position", "x", "y"}],
//        "digit": null|d, "digit_position": null|"top left"...}
//   DIR/pope_<split>_<popsplit>.jsonl    {"question_id", "image", "text", "label"} (existence only)
//   DIR/world.json                       seed, counts, vocabulary, the co-occurrence prior
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "consr_world/questions.hpp"
#include "consr_world/world.hpp"

namespace consr_world {

struct generate_options {
  std::uint64_t seed = 1;
  int counts[3] = {3000, 300, 600};  // train, validation, test
  question_options questions;
  int threads = 0;                   // 0: std::thread::hardware_concurrency()
  bool images = true;                // write the PNGs
};

struct generate_summary {
  int images[3] = {0, 0, 0};
  int questions[3] = {0, 0, 0};
  double seconds = 0;
};

/// Writes the whole world under `dir` (created if needed). Throws std::runtime_error on I/O errors.
generate_summary generate(const std::string& dir, const generate_options& options);

/// Writes an image as PNG (stb_image_write). Returns false on failure.
bool write_png(const std::string& path, const image& img);

nlohmann::ordered_json to_json(const question& q);
nlohmann::ordered_json to_json(const scene& s);
/// world.json: seed, counts, question counts, vocabulary, the prior.
nlohmann::ordered_json world_json(const generate_options& options, const generate_summary& summary);

/// Reads a questions JSONL (DIR/<split>.jsonl): id, image, prompt, answer, type, scene, label,
/// pope_split; the structured fields (target, number, cell) are recovered from the answer/prompt.
std::vector<question> read_questions(const std::string& path);
/// Reads DIR/<split>_scenes.jsonl (objects' shape, colour, size, cell, x, y; digit).
std::vector<scene> read_scenes(const std::string& path);
scene scene_from_json(const nlohmann::json& j);

}  // namespace consr_world
