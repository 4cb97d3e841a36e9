// consr_runtime/bpe_trainer.hpp — training a byte-level BPE tokenizer (the Qwen2 kind that
// tokenizer.hpp reads) from a corpus, and writing it as a Hugging Face tokenizer.json.
//
// Training (the classic algorithm of Sennrich et al. / HF `tokenizers`' BpeTrainer, written out):
//   1. every text is NFC-normalised and split by the pre-tokenizer regex (Qwen2's by default) into
//      words; each distinct word is counted;
//   2. each word becomes the sequence of its bytes, each byte written as GPT-2's printable stand-in
//      character (bytes_to_unicode), so the 256 byte tokens are the initial vocabulary (ids 0..255
//      in GPT-2's order: '!' .. '~', '¡' .. '¬', '®' .. 'ÿ', then the remapped bytes 'Ā' ..);
//   3. repeatedly: count every adjacent pair of symbols over the words (weighted by the word
//      counts), merge the most frequent pair everywhere (ties: the pair whose left, then right
//      token has the smaller id), append the merge and, if new, the merged token; stop at
//      `vocab_size` tokens or when no pair occurs `min_frequency` times.
// Deterministic: the result depends only on the texts (as a multiset) and the options.
//
// The written tokenizer.json has the layout of Qwen2's (the fixtures' files): NFC normalizer,
// Sequence[Split(regex, Isolated), ByteLevel(use_regex=false)] pre-tokenizer, ByteLevel
// post-processor and decoder, a BPE model with merges as pairs, and the added tokens with ids after
// the vocabulary. It loads in `consr_runtime::tokenizer` and in HF `tokenizers`.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "consr_runtime/tokenizer.hpp"

namespace consr_runtime {

struct bpe_trainer_options {
  /// Final vocabulary size (byte tokens + merged tokens), ≥ 256. Added tokens come on top.
  std::int64_t vocab_size = 512;
  /// A pair is merged only if it occurs at least this often (weighted by word counts); ≥ 1.
  std::int64_t min_frequency = 2;
  /// The pre-tokenizer regex (PCRE2, UTF + UCP); Qwen2's by default.
  std::string pretokenize_regex = qwen2_pretokenize_regex;
};

/// A trained byte-level BPE model.
struct bpe_model {
  /// Token strings in byte-level form (e.g. "Ġred"), index = id. The first 256 are the bytes.
  std::vector<std::string> tokens;
  /// Merges in rank order, each a pair of byte-level token strings.
  std::vector<std::pair<std::string, std::string>> merges;
  /// The pre-tokenizer regex the model was trained with (written into tokenizer.json).
  std::string pretokenize_regex;
};

/// The pieces `text` (valid UTF-8, NFC-normalised first) is split into by `regex` with HF's
/// Split(behavior = Isolated): every match and every gap between matches. Throws runtime_error
/// naming 'text' for invalid UTF-8 and 'regex' for a pattern PCRE2 rejects.
std::vector<std::string> pretokenize(const std::string& text, const std::string& regex = qwen2_pretokenize_regex);

/// GPT-2's byte-level form of raw bytes: each byte as its printable stand-in character (UTF-8).
std::string bytes_to_byte_level(const std::string& bytes);

/// Trains a byte-level BPE model on `texts` (see the file comment). Throws runtime_error naming the
/// option for vocab_size < 256 or min_frequency < 1, and as `pretokenize` for bad input.
bpe_model train_byte_level_bpe(const std::vector<std::string>& texts, const bpe_trainer_options& options = {});

/// The tokenizer.json of `model` plus `added` tokens (each needs an id ≥ the vocabulary size and
/// unique ids / contents). Throws runtime_error naming 'added' otherwise.
nlohmann::ordered_json byte_level_bpe_tokenizer_json(const bpe_model& model, const std::vector<added_token>& added);

/// Writes byte_level_bpe_tokenizer_json(model, added) to `path` (2-space indentation, UTF-8).
/// Throws runtime_error naming the file on I/O failure.
void save_tokenizer_json(const std::string& path, const bpe_model& model, const std::vector<added_token>& added);

}  // namespace consr_runtime
