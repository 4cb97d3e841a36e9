// consr_eval/questions.hpp — the questions an evaluation asks: the world's JSONL or a POPE JSONL.
//
// World JSONL (`DIR/<split>.jsonl`, one question per line):
//   {"id", "image" (relative to DIR), "prompt", "answer", "type": existence|colour|count|position|
//    reading|description, "label"?, "pope_split"?, "scene"}; the scenes lie in `DIR/<split>_scenes.jsonl`.
// POPE JSONL (Li et al., 2023; the released files):
//   {"question_id", "image" (relative to the image directory), "text", "label": "yes"|"no"}.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace consr_eval {

enum class question_format { world, pope };

/// "world" / "pope".
const char* to_string(question_format format) noexcept;

/// One question to answer.
struct question {
  std::string id;      ///< `id` (world) or `question_id` (POPE), integers written in decimal
  std::string image;   ///< absolute, normalised path of an existing file
  std::string prompt;  ///< the question text, image placeholders (<image>, <|image_pad|>, ...) removed, trimmed
  std::string type;    ///< the world's `type`; "pope" for POPE rows
  nlohmann::json record;  ///< the line as read (for the scorer)
};

struct question_set {
  question_format format = question_format::world;
  std::string path;         ///< absolute path of the file read
  std::string scenes_path;  ///< world: `DIR/<split>_scenes.jsonl` when that file exists, else ""
  std::vector<question> questions;  ///< in file order
};

struct question_load_options {
  /// Keep only the first `limit` questions (0 = all). The lines after them are not read.
  std::size_t limit = 0;
  /// Directory relative image paths are resolved against; "" = the questions file's directory
  /// (the world's rule). POPE files usually need the COCO image folder here.
  std::string image_dir;
};

/// Reads a questions file. The format is taken from the first record (`question_id` + `text` →
/// POPE, `id` + `prompt` → world) and every line must follow it; blank lines are skipped.
/// Throws consr_eval::error naming argument 'path' (and the line / question id) when the file is
/// missing, empty, holds a line that is not a JSON object, lacks a field or has one of the wrong
/// type, repeats an id, has an empty prompt or names an image that does not exist; naming
/// 'options.image_dir' when that is not a directory.
question_set load_questions(const std::string& path, const question_load_options& options = {});

/// Removes every image / video placeholder of both chat formats from `prompt` and trims it (the
/// pipeline's rule: the image is placed by the chat template, before the text).
std::string strip_image_placeholders(const std::string& prompt);

}  // namespace consr_eval
