// Byte-level BPE training and tokenizer.json writing (see consr_runtime/bpe_trainer.hpp).
#include "consr_runtime/bpe_trainer.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <unordered_map>

#include "byte_level.hpp"

namespace consr_runtime {
namespace {

[[noreturn]] void fail(const std::string& function, const std::string& argument, const std::string& message) {
  throw runtime_error("consr_runtime::" + function + ": argument '" + argument + "': " + message);
}

/// NFC of `s`; utf8proc rejects invalid UTF-8.
std::string nfc(const std::string& s, const char* function) {
  return byte_level::nfc(s, [&](const char* why) { fail(function, "text", std::string("not valid UTF-8 (") + why + ")"); });
}

struct code_deleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
struct match_deleter {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};

std::size_t utf8_length(unsigned char b0) { return b0 < 0x80 ? 1 : b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4; }

/// Splits normalised `s` with a compiled regex (Split, Isolated), appending the pieces to `out`.
void split_isolated(const std::string& s, pcre2_code* re, pcre2_match_data* md, std::vector<std::string>& out) {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  std::size_t offset = 0, last = 0;
  while (offset < s.size()) {
    const int rc = pcre2_match(re, subject, s.size(), offset, 0, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(rc, buf, sizeof buf);
      fail("pretokenize", "text", "regex match failed: " + std::string(reinterpret_cast<const char*>(buf)));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const std::size_t mb = ov[0], me = ov[1];
    if (me == mb) {
      offset = mb + utf8_length(static_cast<unsigned char>(s[mb]));
      continue;
    }
    if (mb > last) out.push_back(s.substr(last, mb - last));
    out.push_back(s.substr(mb, me - mb));
    last = offset = me;
  }
  if (last < s.size()) out.push_back(s.substr(last));
}

std::unique_ptr<pcre2_code, code_deleter> compile_regex(const std::string& pattern, const char* function) {
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  std::unique_ptr<pcre2_code, code_deleter> re(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()), pattern.size(),
                                                             PCRE2_UTF | PCRE2_UCP, &err, &err_offset, nullptr));
  if (!re) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(err, buf, sizeof buf);
    fail(function, "regex", "PCRE2 rejects the pattern at offset " + std::to_string(err_offset) + ": " +
                                std::string(reinterpret_cast<const char*>(buf)));
  }
  return re;
}

}  // namespace

std::string bytes_to_byte_level(const std::string& bytes) {
  std::string out;
  for (unsigned char b : bytes) out += byte_level::bytes().to_unicode[b];
  return out;
}

std::vector<std::string> pretokenize(const std::string& text, const std::string& regex) {
  auto re = compile_regex(regex, "pretokenize");
  std::unique_ptr<pcre2_match_data, match_deleter> md(pcre2_match_data_create_from_pattern(re.get(), nullptr));
  std::vector<std::string> out;
  split_isolated(nfc(text, "pretokenize"), re.get(), md.get(), out);
  return out;
}

bpe_model train_byte_level_bpe(const std::vector<std::string>& texts, const bpe_trainer_options& options) {
  const char* fn = "train_byte_level_bpe";
  if (options.vocab_size < 256) fail(fn, "options.vocab_size", "must be at least 256 (the byte tokens)");
  if (options.min_frequency < 1) fail(fn, "options.min_frequency", "must be at least 1");
  auto re = compile_regex(options.pretokenize_regex, fn);
  std::unique_ptr<pcre2_match_data, match_deleter> md(pcre2_match_data_create_from_pattern(re.get(), nullptr));

  // 1. Word counts (std::map: a fixed order, independent of the texts' order).
  std::map<std::string, std::int64_t> word_counts;
  std::vector<std::string> pieces;
  for (const auto& text : texts) {
    pieces.clear();
    split_isolated(nfc(text, fn), re.get(), md.get(), pieces);
    for (auto& p : pieces) ++word_counts[p];
  }

  // 2. The byte alphabet, and each word as byte-token ids.
  bpe_model model;
  model.pretokenize_regex = options.pretokenize_regex;
  std::unordered_map<std::string, std::int64_t> id_of;
  std::array<std::int64_t, 256> byte_id{};
  for (int k = 0; k < 256; ++k) {
    const int b = byte_level::bytes().order[k];
    model.tokens.push_back(byte_level::bytes().to_unicode[b]);
    id_of[byte_level::bytes().to_unicode[b]] = k;
    byte_id[b] = k;
  }
  struct word {
    std::vector<std::int64_t> symbols;
    std::int64_t count;
  };
  std::vector<word> words;
  for (const auto& [w, c] : word_counts) {
    word x{{}, c};
    for (unsigned char b : w) x.symbols.push_back(byte_id[b]);
    words.push_back(std::move(x));
  }

  // 3. Merge the most frequent pair until the vocabulary is full.
  while (static_cast<std::int64_t>(model.tokens.size()) < options.vocab_size) {
    std::map<std::pair<std::int64_t, std::int64_t>, std::int64_t> pair_counts;
    for (const auto& w : words)
      for (std::size_t i = 0; i + 1 < w.symbols.size(); ++i) pair_counts[{w.symbols[i], w.symbols[i + 1]}] += w.count;
    std::pair<std::int64_t, std::int64_t> best{-1, -1};
    std::int64_t best_count = 0;
    for (const auto& [pair, count] : pair_counts)  // ascending ids: the first maximum wins ties
      if (count > best_count) {
        best = pair;
        best_count = count;
      }
    if (best_count < options.min_frequency || best.first < 0) break;
    const std::string merged = model.tokens[static_cast<std::size_t>(best.first)] + model.tokens[static_cast<std::size_t>(best.second)];
    model.merges.emplace_back(model.tokens[static_cast<std::size_t>(best.first)], model.tokens[static_cast<std::size_t>(best.second)]);
    std::int64_t new_id;
    auto it = id_of.find(merged);
    if (it != id_of.end()) {
      new_id = it->second;
    } else {
      new_id = static_cast<std::int64_t>(model.tokens.size());
      model.tokens.push_back(merged);
      id_of.emplace(merged, new_id);
    }
    for (auto& w : words) {
      std::vector<std::int64_t> out;
      out.reserve(w.symbols.size());
      for (std::size_t i = 0; i < w.symbols.size(); ++i) {
        if (i + 1 < w.symbols.size() && w.symbols[i] == best.first && w.symbols[i + 1] == best.second) {
          out.push_back(new_id);
          ++i;
        } else {
          out.push_back(w.symbols[i]);
        }
      }
      w.symbols = std::move(out);
    }
  }
  return model;
}

nlohmann::ordered_json byte_level_bpe_tokenizer_json(const bpe_model& model, const std::vector<added_token>& added) {
  using ojson = nlohmann::ordered_json;
  const std::int64_t vocab = static_cast<std::int64_t>(model.tokens.size());
  std::set<std::int64_t> ids;
  std::set<std::string> contents(model.tokens.begin(), model.tokens.end());
  for (const auto& t : added) {
    if (t.id < vocab)
      fail("byte_level_bpe_tokenizer_json", "added", "token '" + t.content + "' has id " + std::to_string(t.id) +
                                                         " inside the vocabulary (size " + std::to_string(vocab) + ")");
    if (!ids.insert(t.id).second || !contents.insert(t.content).second)
      fail("byte_level_bpe_tokenizer_json", "added", "token '" + t.content + "' repeats an id or a content");
  }
  ojson j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  ojson added_json = ojson::array();
  for (const auto& t : added)
    added_json.push_back(ojson{{"id", t.id},
                               {"content", t.content},
                               {"single_word", t.single_word},
                               {"lstrip", t.lstrip},
                               {"rstrip", t.rstrip},
                               {"normalized", t.normalized},
                               {"special", t.special}});
  j["added_tokens"] = added_json;
  j["normalizer"] = ojson{{"type", "NFC"}};
  j["pre_tokenizer"] = ojson{
      {"type", "Sequence"},
      {"pretokenizers",
       ojson::array({ojson{{"type", "Split"},
                           {"pattern", ojson{{"Regex", model.pretokenize_regex}}},
                           {"behavior", "Isolated"},
                           {"invert", false}},
                     ojson{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}})}};
  j["post_processor"] = ojson{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  j["decoder"] = ojson{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  ojson vocab_json = ojson::object();
  for (std::int64_t i = 0; i < vocab; ++i) vocab_json[model.tokens[static_cast<std::size_t>(i)]] = i;
  ojson merges = ojson::array();
  for (const auto& [a, b] : model.merges) merges.push_back(ojson::array({a, b}));
  j["model"] = ojson{{"type", "BPE"},
                     {"dropout", nullptr},
                     {"unk_token", nullptr},
                     {"continuing_subword_prefix", nullptr},
                     {"end_of_word_suffix", nullptr},
                     {"fuse_unk", false},
                     {"byte_fallback", false},
                     {"ignore_merges", false},
                     {"vocab", vocab_json},
                     {"merges", merges}};
  return j;
}

void save_tokenizer_json(const std::string& path, const bpe_model& model, const std::vector<added_token>& added) {
  const std::string text = byte_level_bpe_tokenizer_json(model, added).dump(2) + "\n";
  std::ofstream f(path, std::ios::binary);
  if (!f) throw runtime_error("consr_runtime::save_tokenizer_json: cannot write '" + path + "'");
  f << text;
  if (!f) throw runtime_error("consr_runtime::save_tokenizer_json: writing '" + path + "' failed");
}

}  // namespace consr_runtime
