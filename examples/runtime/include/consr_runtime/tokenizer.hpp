// consr_runtime/tokenizer.hpp — the byte-level BPE tokenizer of Qwen2 / Qwen2.5-VL / LLaVA-OneVision,
// read from a Hugging Face tokenizer.json (runtime facts §5).
//
// encode(text): split out added tokens (longest match first, left to right) -> NFC (utf8proc) ->
// pre-tokenizer regex (PCRE2, UTF + UCP; read from the file) -> bytes_to_unicode -> BPE merges by rank.
// It returns exactly the ids of HF `tokenizers` `encode(text, add_special_tokens=False)`; no BOS/EOS
// is ever added (the Qwen2 files define none).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "consr_runtime/error.hpp"

namespace consr_runtime {

/// Qwen2's pre-tokenizer regex (transformers' PRETOKENIZE_REGEX), used when tokenizer.json has no
/// pre_tokenizer (the older vocab.json + merges.txt Qwen2 tokenizers imply it).
extern const char* const qwen2_pretokenize_regex;

/// One entry of tokenizer.json's "added_tokens".
struct added_token {
  int64_t id = 0;
  std::string content;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

/// An immutable byte-level BPE tokenizer. Copies share the loaded tables; encode/decode are const
/// and safe to call from several threads at once.
///
/// Accepted tokenizer.json (anything else is rejected with a runtime_error naming the file and the
/// offending field, rather than tokenized differently from HF):
///   model: BPE (merges as "a b" strings or ["a","b"] pairs; dropout null; byte_fallback false; no
///          continuing_subword_prefix / end_of_word_suffix; ignore_merges honoured);
///   normalizer: null, NFC, or a Sequence of those;
///   pre_tokenizer: Sequence[Split(Regex, "Isolated", invert=false), ByteLevel(add_prefix_space=false,
///          use_regex=false)] (Qwen2), or ByteLevel(add_prefix_space=false, use_regex=true) (GPT-2
///          regex), or null (the Qwen2 regex);
///   decoder: ByteLevel; post_processor: null or ByteLevel (neither adds tokens);
///   added tokens: `normalized` honoured (matched before / after NFC as HF does), `lstrip` / `rstrip`
///          honoured (the token absorbs adjacent Unicode white space), `single_word` rejected.
/// truncation / padding settings in the file are ignored (transformers overrides them per call).
class tokenizer {
 public:
  /// Loads a tokenizer.json. Throws runtime_error naming the file if it is missing, not JSON, or of
  /// another kind (WordPiece, Unigram, ... or a pipeline step listed above as unsupported).
  static tokenizer from_file(const std::string& path);
  /// Loads `<dir>/tokenizer.json`. When `<dir>/config.json` is an lmms-lab LLaVA-OneVision config
  /// (model_type "llava" / "llava_qwen", config.hpp) and the file has no "<image>" / "<video>" token
  /// (LLaVA-NeXT splices its image marker into the ids in code; the lmms-lab tokenizer is Qwen2's),
  /// both are added as special tokens at the config's image_token_index / video_token_index, as
  /// transformers' convert_llava_onevision_weights_to_hf.py adds them (151646 / 151647 for Qwen2).
  /// Throws runtime_error naming the file if such an id is already another token's.
  static tokenizer from_directory(const std::string& dir);

  /// Token ids of `text` (UTF-8). Special and other added tokens in the text are recognised.
  /// Throws runtime_error naming argument 'text' and the byte offset if `text` is not valid UTF-8
  /// (HF takes Python str, which cannot be invalid; we refuse rather than guess).
  std::vector<int64_t> encode(const std::string& text) const;

  /// Text of `ids`: token strings mapped back through the byte table and decoded as UTF-8 with
  /// errors="replace" (each maximal invalid subsequence becomes U+FFFD), as HF's ByteLevel decoder.
  /// With `skip_special`, special added tokens are dropped (non-special added tokens are kept).
  /// Ids with no token (e.g. padded embedding rows) are skipped, as HF does; a negative id throws
  /// runtime_error naming argument 'ids' and its position.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special = false) const;

  /// Id of a token given as stored in the file (added-token content, or a vocab entry in byte-level
  /// form such as "Ġthe"); throws runtime_error naming the token if absent.
  int64_t token_id(const std::string& token) const;
  /// Same, or nullopt.
  std::optional<int64_t> find_token(const std::string& token) const;
  /// Stored string of `id` (added-token content or vocab entry); throws if the id has no token.
  const std::string& id_to_token(int64_t id) const;
  /// Whether `id` is an added token marked special.
  bool is_special(int64_t id) const;
  /// 1 + the largest id of the vocab and the added tokens (HF's len(tokenizer) for gap-free files).
  int64_t vocab_size() const;
  const std::vector<added_token>& added_tokens() const;
  /// The file this tokenizer was read from.
  const std::string& path() const;

 private:
  struct impl;
  /// from_file, with `extra` added tokens appended unless a token of the same content exists.
  static tokenizer load(const std::string& path, const std::vector<added_token>& extra);
  explicit tokenizer(std::shared_ptr<const impl> p) : impl_(std::move(p)) {}
  std::shared_ptr<const impl> impl_;
};

}  // namespace consr_runtime
