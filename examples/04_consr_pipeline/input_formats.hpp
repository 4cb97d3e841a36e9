// examples/04_consr_pipeline/input_formats.hpp — the record formats the pipeline reads besides its own
// {id, image, prompt}: LLaVA-style conversations, sharegpt messages + images, and the JSON / JSONL
// export of a Hugging Face dataset with embedded images (docs/pipeline.md "Input"). input.cpp reads
// the file and builds the items; this part turns one record into (id, prompt, image).
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "context.hpp"

namespace consr_pipeline {

enum class input_format {
  consr,     ///< {id, image: path, prompt}
  llava,     ///< {id, image: path, conversations: [{from: human, value: "<image>\n..."}, {from: gpt, ...}]}
  sharegpt,  ///< {messages (or conversations): [{role, content} | {from, value}], images: [one path]}
  hf,        ///< {id | idx, image: {bytes: <base64>, path}, question | prompt} (e.g. RLAIF-V's rows)
};

/// "consr", "llava", "sharegpt", "hf".
const char* format_name(input_format f) noexcept;

/// --input-format: "auto" → nullopt; otherwise one of format_name's. Throws pipeline_error naming
/// '--input-format' for anything else.
std::optional<input_format> parse_input_format(const std::string& name);

/// The format of a file, from its first record's fields (consr: a string `image` and `prompt`; llava:
/// `conversations` with a string `image`; sharegpt: `messages`, or `conversations` with an `images`
/// list; hf: an `image` object with `bytes`). Throws pipeline_error naming `where` when none fits.
input_format detect_input_format(const json& record, const std::string& where);

/// One record in the pipeline's terms. Exactly one of image_path / image_bytes is set.
struct input_record {
  std::optional<std::string> id;  ///< absent: the pipeline names it item-<index>
  std::string prompt;             ///< the user's question, placeholders still in
  std::string image_path;         ///< as written in the record (relative or absolute)
  std::string image_bytes;        ///< an embedded image, decoded from base64
  std::string image_field;        ///< where the image came from ("image", "images[0]", "image.bytes"), for errors
};

/// Reads `record` as `format`. Throws pipeline_error starting with `where` (file and item) and naming
/// the field for a missing or mistyped field, a record of several images, a conversation without a
/// user turn or with more than one, a placeholder count other than 0 or 1, or invalid base64.
input_record read_record(const json& record, input_format format, const std::string& where);

/// Standard base64 (RFC 4648, '=' padding; ASCII whitespace skipped). Throws pipeline_error starting
/// with `what` for any other character, a bad length or misplaced padding.
std::string decode_base64(const std::string& text, const std::string& what);

/// Where an embedded image is written for the stages (which read images by path) and for the
/// preference data written at the end: `<out_dir>/images/<fnv1a of the bytes>.<png|jpg>`.
/// Writes it (atomically, under a per-process temporary name) unless a file of the same bytes is
/// there; returns the absolute path. `what` names the record in errors.
std::filesystem::path materialize_image(const std::string& bytes, const std::filesystem::path& out_dir,
                                        const std::string& what);

}  // namespace consr_pipeline
