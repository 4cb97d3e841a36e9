// Byte-level BPE (Qwen2) from tokenizer.json: added tokens, NFC, PCRE2 pre-tokenizer, merges by rank.
#include "consr_runtime/tokenizer.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <queue>
#include <sstream>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "byte_level.hpp"
#include "consr_runtime/config.hpp"

namespace consr_runtime {

const char* const qwen2_pretokenize_regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

namespace {

// GPT-2's pattern, which the ByteLevel pre-tokenizer applies itself when use_regex is true.
const char* const gpt2_pretokenize_regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

using json = nlohmann::json;

[[noreturn]] void fail_file(const std::string& path, const std::string& msg) {
  throw runtime_error("consr_runtime::tokenizer: '" + path + "': " + msg);
}

// ---- UTF-8 -----------------------------------------------------------------------------------------

/// Length of the well-formed UTF-8 sequence at s[i] (Unicode Table 3-7), or 0 if ill-formed; in
/// that case `*maximal` receives the length of its maximal subpart (>= 1), the unit errors="replace"
/// turns into one U+FFFD.
std::size_t utf8_sequence(const unsigned char* s, std::size_t n, std::size_t i, char32_t* cp, std::size_t* maximal) {
  const unsigned char b0 = s[i];
  std::size_t len;
  unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
  if (b0 < 0x80) {
    if (cp) *cp = b0;
    return 1;
  } else if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    if (maximal) *maximal = 1;
    return 0;
  }
  char32_t v = b0 & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
  for (std::size_t k = 1; k < len; ++k) {
    const bool ok = i + k < n && s[i + k] >= (k == 1 ? lo : 0x80) && s[i + k] <= (k == 1 ? hi : 0xBF);
    if (!ok) {
      if (maximal) *maximal = k;
      return 0;
    }
    v = (v << 6) | (s[i + k] & 0x3F);
  }
  if (cp) *cp = v;
  return len;
}

/// Offset of the first ill-formed byte of `s`, or npos.
std::size_t first_invalid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t len = utf8_sequence(p, s.size(), i, nullptr, nullptr);
    if (len == 0) return i;
    i += len;
  }
  return std::string::npos;
}

/// `bytes` as UTF-8 with every maximal ill-formed subpart replaced by U+FFFD (Python's
/// errors="replace", Rust's from_utf8_lossy).
std::string utf8_lossy(const std::string& bytes) {
  std::string out;
  out.reserve(bytes.size());
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  for (std::size_t i = 0; i < bytes.size();) {
    std::size_t maximal = 1;
    const std::size_t len = utf8_sequence(p, bytes.size(), i, nullptr, &maximal);
    if (len) {
      out.append(bytes, i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      i += maximal;
    }
  }
  return out;
}

/// Rust's char::is_whitespace (the Unicode White_Space property), which HF uses for lstrip/rstrip.
bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/// NFC of valid UTF-8 `s` (ASCII is already NFC).
std::string nfc(const std::string& s) {
  return byte_level::nfc(s, [](const char* why) {
    throw runtime_error(std::string("consr_runtime::tokenizer::encode: NFC normalization failed: ") + why);
  });
}

struct pcre2_code_deleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
struct pcre2_match_data_deleter {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};

/// Added tokens that may start at each first byte, longest first (leftmost-longest matching, as HF's
/// Aho-Corasick automaton with MatchKind::LeftmostLongest).
struct added_matcher {
  struct entry {
    std::string text;  // what is matched: the content, NFC-normalized for normalized tokens (as HF)
    const added_token* token;
  };
  std::array<std::vector<entry>, 256> by_first_byte;
  bool empty = true;
  void add(std::string text, const added_token* t) {
    if (text.empty()) return;
    auto& v = by_first_byte[static_cast<unsigned char>(text[0])];
    v.push_back({std::move(text), t});
    std::stable_sort(v.begin(), v.end(), [](const entry& a, const entry& b) { return a.text.size() > b.text.size(); });
    empty = false;
  }
};

struct segment {
  bool is_token;
  int64_t id;
  std::size_t begin, end;
};

}  // namespace

// ---- the tables --------------------------------------------------------------------------------------

struct tokenizer::impl {
  std::string path;
  std::unordered_map<std::string, int64_t> vocab;  // byte-level token string -> id
  std::vector<std::string> id_strings;             // id -> token string (added content wins)
  std::vector<char> has_id, special_id;
  std::vector<added_token> added;
  std::unordered_map<std::string, int64_t> added_by_content;
  added_matcher raw_matcher, normalized_matcher;  // normalized=false / normalized=true tokens
  std::unordered_map<std::uint64_t, std::pair<std::int32_t, std::int32_t>> merges;  // (a,b) -> (rank, merged id)
  std::array<std::int64_t, 256> byte_id{};                                         // -1 if the vocab lacks it
  bool ignore_merges = false;
  bool normalize_nfc = false;
  std::unique_ptr<pcre2_code, pcre2_code_deleter> regex;
  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<std::int64_t>> cache;

  static std::uint64_t pair_key(std::int64_t a, std::int64_t b) {
    return (static_cast<std::uint64_t>(a) << 32) | static_cast<std::uint64_t>(b);
  }

  void split_added(const std::string& s, std::size_t begin, std::size_t end, const added_matcher& m,
                   std::vector<segment>& out) const;
  void encode_normalized(const std::string& s, std::vector<std::int64_t>& out) const;
  void encode_piece(const std::string& s, std::size_t begin, std::size_t end, std::vector<std::int64_t>& out) const;
};

/// Splits s[begin, end) at the added tokens of `m` (HF AddedVocabulary::find_matches): leftmost-longest
/// matches; lstrip / rstrip extend a match over adjacent white space.
void tokenizer::impl::split_added(const std::string& s, std::size_t begin, std::size_t end, const added_matcher& m,
                                  std::vector<segment>& out) const {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  std::size_t start_offset = begin;
  std::size_t i = begin;
  while (i < end && !m.empty) {
    const added_matcher::entry* hit = nullptr;
    for (const auto& e : m.by_first_byte[p[i]]) {
      if (e.text.size() <= end - i && s.compare(i, e.text.size(), e.text) == 0) {
        hit = &e;
        break;
      }
    }
    if (!hit) {
      ++i;  // contents are valid UTF-8, so they never match from a continuation byte
      continue;
    }
    std::size_t start = i, stop = i + hit->text.size();
    if (hit->token->lstrip) {
      std::size_t k = start;
      while (k > begin) {
        std::size_t c = k - 1;
        while (c > begin && (p[c] & 0xC0) == 0x80) --c;
        char32_t cp = 0;
        utf8_sequence(p, end, c, &cp, nullptr);
        if (!is_white_space(cp)) break;
        k = c;
      }
      start = std::max(k, start_offset);
    }
    if (hit->token->rstrip) {
      while (stop < end) {
        char32_t cp = 0;
        const std::size_t len = utf8_sequence(p, end, stop, &cp, nullptr);
        if (len == 0 || !is_white_space(cp)) break;
        stop += len;
      }
    }
    if (start_offset < start) out.push_back({false, 0, start_offset, start});
    out.push_back({true, hit->token->id, start, stop});
    start_offset = stop;
    i = stop;
  }
  if (start_offset < end) out.push_back({false, 0, start_offset, end});
}

/// Text already normalized: split at normalized added tokens, pre-tokenize the rest, BPE each piece.
void tokenizer::impl::encode_normalized(const std::string& s, std::vector<std::int64_t>& out) const {
  std::vector<segment> segs;
  split_added(s, 0, s.size(), normalized_matcher, segs);
  std::unique_ptr<pcre2_match_data, pcre2_match_data_deleter> md(pcre2_match_data_create_from_pattern(regex.get(), nullptr));
  if (!md) throw runtime_error("consr_runtime::tokenizer::encode: out of memory");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  for (const segment& seg : segs) {
    if (seg.is_token) {
      out.push_back(seg.id);
      continue;
    }
    // Split(behavior=Isolated): every match and every gap between matches is a piece.
    std::size_t offset = seg.begin, last = seg.begin;
    while (offset < seg.end) {
      const int rc = pcre2_match(regex.get(), subject, seg.end, offset, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR buf[256];
        pcre2_get_error_message(rc, buf, sizeof buf);
        throw runtime_error("consr_runtime::tokenizer::encode: regex match failed: " +
                            std::string(reinterpret_cast<const char*>(buf)));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      const std::size_t mb = ov[0], me = ov[1];
      if (me == mb) {  // an empty match yields no piece; step over one character
        offset = mb + std::max<std::size_t>(1, utf8_sequence(reinterpret_cast<const unsigned char*>(s.data()), seg.end, mb,
                                                             nullptr, nullptr));
        continue;
      }
      if (mb > last) encode_piece(s, last, mb, out);
      encode_piece(s, mb, me, out);
      last = offset = me;
    }
    if (last < seg.end) encode_piece(s, last, seg.end, out);
  }
}

/// BPE of one pre-token (HF Word::merge_all): repeatedly apply the lowest-rank merge, leftmost first.
void tokenizer::impl::encode_piece(const std::string& s, std::size_t begin, std::size_t end,
                                   std::vector<std::int64_t>& out) const {
  const std::string piece = s.substr(begin, end - begin);
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = cache.find(piece);
    if (it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<std::int64_t> ids;
  const auto& table = byte_level::bytes();
  bool done = false;
  if (ignore_merges) {
    std::string mapped;
    for (unsigned char b : piece) mapped += table.to_unicode[b];
    auto it = vocab.find(mapped);
    if (it != vocab.end()) {
      ids.push_back(it->second);
      done = true;
    }
  }
  if (!done) {
    struct symbol {
      std::int64_t id;
      int prev, next;
      bool alive;
    };
    std::vector<symbol> sym;
    sym.reserve(piece.size());
    for (unsigned char b : piece) {
      if (byte_id[b] < 0) {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02X", b);
        throw runtime_error("consr_runtime::tokenizer::encode: '" + path + "' has no token for byte " + hex + " ('" +
                            table.to_unicode[b] + "')");
      }
      const int k = static_cast<int>(sym.size());
      sym.push_back({byte_id[b], k - 1, k + 1, true});
    }
    if (!sym.empty()) sym.back().next = -1;
    struct candidate {
      std::int32_t rank;
      int pos;
      std::int32_t merged;
      bool operator>(const candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<candidate, std::vector<candidate>, std::greater<candidate>> heap;
    auto push = [&](int pos) {
      const int nx = sym[pos].next;
      if (nx < 0) return;
      auto it = merges.find(pair_key(sym[pos].id, sym[nx].id));
      if (it != merges.end()) heap.push({it->second.first, pos, it->second.second});
    };
    for (int k = 0; k + 1 < static_cast<int>(sym.size()); ++k) push(k);
    while (!heap.empty()) {
      const candidate c = heap.top();
      heap.pop();
      symbol& left = sym[c.pos];
      if (!left.alive || left.next < 0) continue;
      auto it = merges.find(pair_key(left.id, sym[left.next].id));
      if (it == merges.end() || it->second.first != c.rank || it->second.second != c.merged) continue;  // stale
      symbol& right = sym[left.next];
      right.alive = false;
      left.id = c.merged;
      left.next = right.next;
      if (left.next >= 0) sym[left.next].prev = c.pos;
      if (left.prev >= 0) push(left.prev);
      push(c.pos);
    }
    for (const symbol& x : sym)
      if (x.alive) ids.push_back(x.id);
  }
  out.insert(out.end(), ids.begin(), ids.end());
  if (piece.size() <= 256) {
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (cache.size() >= 100000) cache.clear();  // bounded; pieces recur, so a rebuild is cheap
    cache.emplace(piece, std::move(ids));
  }
}

// ---- loading -----------------------------------------------------------------------------------------

namespace {

bool get_bool(const json& obj, const char* key, bool fallback) {
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? fallback : it->get<bool>();
}
std::string type_of(const json& j) {
  auto it = j.find("type");
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string("(no type)");
}

}  // namespace

tokenizer tokenizer::from_directory(const std::string& dir) {
  const std::string base = dir.empty() || dir.back() == '/' ? dir : dir + "/";
  std::vector<added_token> extra;
  struct stat cst {};
  if (::stat((base + "config.json").c_str(), &cst) == 0 && S_ISREG(cst.st_mode)) {
    // An lmms-lab LLaVA-OneVision directory: its tokenizer is Qwen2's, without "<image>" / "<video>".
    std::ifstream cin(base + "config.json", std::ios::binary);
    std::stringstream text;
    text << cin.rdbuf();
    const json c = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
    if (c.is_object() && c.contains("model_type") && (c["model_type"] == "llava" || c["model_type"] == "llava_qwen")) {
      const model_config mc = load_model_config(base + "config.json");  // errors name the key
      extra.push_back({mc.llava_onevision->image_token_index, "<image>", true, false, false, false, false});
      extra.push_back({mc.llava_onevision->video_token_index, "<video>", true, false, false, false, false});
    }
  }
  return load(base + "tokenizer.json", extra);
}

tokenizer tokenizer::from_file(const std::string& path) { return load(path, {}); }

tokenizer tokenizer::load(const std::string& path, const std::vector<added_token>& extra) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail_file(path, "file does not exist");
  if (!S_ISREG(st.st_mode)) fail_file(path, "not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_file(path, "cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  json j;
  try {
    j = json::parse(ss.str());
  } catch (const json::exception& e) {
    fail_file(path, std::string("not valid JSON (") + e.what() + ")");
  }
  if (!j.is_object()) fail_file(path, "not a JSON object");
  for (const added_token& a : extra) {
    if (!j.contains("added_tokens") || j["added_tokens"].is_null()) j["added_tokens"] = json::array();
    if (!j["added_tokens"].is_array()) fail_file(path, "'added_tokens' is not an array");
    bool present = false;
    for (const json& t : j["added_tokens"]) {
      if (t.is_object() && t.contains("content") && t["content"] == a.content) present = true;
      else if (t.is_object() && t.contains("id") && t["id"] == a.id)
        fail_file(path, "cannot add '" + a.content + "' at id " + std::to_string(a.id) + " (config.json): added token " +
                            t.dump() + " has that id");
    }
    if (present) continue;
    if (j.contains("model") && j["model"].is_object() && j["model"].contains("vocab") && j["model"]["vocab"].is_object())
      for (auto it = j["model"]["vocab"].begin(); it != j["model"]["vocab"].end(); ++it)
        if (it.value() == a.id)
          fail_file(path, "cannot add '" + a.content + "' at id " + std::to_string(a.id) + " (config.json): vocab entry '" +
                              it.key() + "' has that id");
    j["added_tokens"].push_back({{"id", a.id}, {"content", a.content}, {"special", a.special}, {"single_word", false},
                                 {"lstrip", false}, {"rstrip", false}, {"normalized", a.normalized}});
  }

  auto p = std::make_shared<impl>();
  p->path = path;
  try {
    // -- model --
    auto mit = j.find("model");
    if (mit == j.end() || !mit->is_object()) fail_file(path, "has no 'model' object");
    const json& model = *mit;
    const std::string mtype = type_of(model);
    const bool looks_bpe = model.contains("vocab") && model.contains("merges");
    if (!(mtype == "BPE" || (mtype == "(no type)" && looks_bpe)))
      fail_file(path, "model type '" + mtype + "' is not supported (only byte-level BPE tokenizers are)");
    if (model.contains("dropout") && !model["dropout"].is_null()) fail_file(path, "BPE dropout is not supported");
    if (get_bool(model, "byte_fallback", false)) fail_file(path, "BPE byte_fallback is not supported");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (model.contains(k) && !model.at(k).is_null() && !model.at(k).get<std::string>().empty())
        fail_file(path, std::string("BPE ") + k + " is not supported");
    p->ignore_merges = get_bool(model, "ignore_merges", false);
    if (!model.at("vocab").is_object()) fail_file(path, "model.vocab is not an object");
    int64_t max_id = -1;
    // The id tables are indexed by id: an id far beyond any real vocabulary (a damaged or hostile
    // file) would size them by it. 2^24 ids is ~100x the largest vocabularies in use.
    constexpr int64_t largest_id = (int64_t{1} << 24) - 1;
    for (auto it = model.at("vocab").begin(); it != model.at("vocab").end(); ++it) {
      if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0)
        fail_file(path, "vocab id of '" + it.key() + "' is not a non-negative integer");
      const int64_t id = it.value().get<int64_t>();
      if (id > largest_id)
        fail_file(path, "vocab id of '" + it.key() + "' is " + std::to_string(id) + ", above the largest supported id " +
                            std::to_string(largest_id));
      p->vocab.emplace(it.key(), id);
      max_id = std::max(max_id, id);
    }
    // -- added tokens --
    if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
      if (!j["added_tokens"].is_array()) fail_file(path, "'added_tokens' is not an array");
      for (const json& t : j["added_tokens"]) {
        added_token a;
        if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() || t["id"].get<int64_t>() < 0 ||
            !t.contains("content") || !t["content"].is_string() || t["content"].get<std::string>().empty())
          fail_file(path, "an added token is not {id >= 0, content: non-empty string}: " + t.dump());
        a.id = t["id"].get<int64_t>();
        a.content = t["content"].get<std::string>();
        if (a.id > largest_id)
          fail_file(path, "added token '" + a.content + "' has id " + std::to_string(a.id) +
                              ", above the largest supported id " + std::to_string(largest_id));
        a.special = get_bool(t, "special", false);
        a.single_word = get_bool(t, "single_word", false);
        a.lstrip = get_bool(t, "lstrip", false);
        a.rstrip = get_bool(t, "rstrip", false);
        a.normalized = get_bool(t, "normalized", !a.special);
        if (a.single_word) fail_file(path, "added token '" + a.content + "' has single_word=true, which is not supported");
        if (!p->added_by_content.emplace(a.content, a.id).second)
          fail_file(path, "added token '" + a.content + "' is listed twice");
        max_id = std::max(max_id, a.id);
        p->added.push_back(std::move(a));
      }
    }
    p->id_strings.assign(static_cast<std::size_t>(max_id + 1), std::string());
    p->has_id.assign(static_cast<std::size_t>(max_id + 1), 0);
    p->special_id.assign(static_cast<std::size_t>(max_id + 1), 0);
    for (const auto& [s, id] : p->vocab) {
      if (p->has_id[id]) fail_file(path, "vocab id " + std::to_string(id) + " is used twice");
      p->id_strings[id] = s;
      p->has_id[id] = 1;
    }
    for (const auto& a : p->added) {
      p->id_strings[a.id] = a.content;  // HF looks ids up in the added vocabulary first
      p->has_id[a.id] = 1;
      p->special_id[a.id] = a.special ? 1 : 0;
    }
    // -- merges: "a b" strings (legacy) or ["a", "b"] pairs (tokenizers >= 0.20) --
    if (!model.at("merges").is_array()) fail_file(path, "model.merges is not an array");
    std::int32_t rank = 0;
    for (const json& m : model.at("merges")) {
      std::string a, b;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const auto sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          fail_file(path, "merge " + std::to_string(rank) + " '" + s + "' is not two tokens separated by one space");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        a = m[0].get<std::string>();
        b = m[1].get<std::string>();
      } else {
        fail_file(path, "merge " + std::to_string(rank) + " is neither \"a b\" nor [\"a\", \"b\"]: " + m.dump());
      }
      auto ia = p->vocab.find(a), ib = p->vocab.find(b), iab = p->vocab.find(a + b);
      if (ia == p->vocab.end() || ib == p->vocab.end() || iab == p->vocab.end())
        fail_file(path, "merge " + std::to_string(rank) + " ('" + a + "', '" + b + "') uses a token missing from the vocab");
      if (ia->second > INT32_MAX || ib->second > INT32_MAX || iab->second > INT32_MAX)
        fail_file(path, "vocab ids beyond 2^31 are not supported");
      p->merges[impl::pair_key(ia->second, ib->second)] = {rank, static_cast<std::int32_t>(iab->second)};  // later wins, as HF
      ++rank;
    }
    const auto& table = byte_level::bytes();
    for (int b = 0; b < 256; ++b) {
      auto it = p->vocab.find(table.to_unicode[b]);
      p->byte_id[b] = it == p->vocab.end() ? -1 : it->second;
    }
    // -- normalizer --
    const json normalizer = j.value("normalizer", json());
    auto accept_normalizer = [&](const json& n) {
      if (n.is_null()) return;
      const std::string t = type_of(n);
      if (t == "NFC") {
        p->normalize_nfc = true;
      } else {
        fail_file(path, "normalizer '" + t + "' is not supported (only NFC)");
      }
    };
    if (!normalizer.is_null() && type_of(normalizer) == "Sequence") {
      for (const json& n : normalizer.value("normalizers", json::array())) accept_normalizer(n);
    } else {
      accept_normalizer(normalizer);
    }
    for (const auto& a : p->added) {
      if (a.normalized) {
        // HF normalizes a normalized token's content once: it is matched in normalized text and
        // id_to_token / decode return the normalized form.
        std::string text = p->normalize_nfc ? nfc(a.content) : a.content;
        p->id_strings[a.id] = text;
        p->normalized_matcher.add(std::move(text), &a);
      } else {
        p->raw_matcher.add(a.content, &a);
      }
    }
    // -- pre-tokenizer: the split regex --
    std::string pattern;
    const json pre = j.value("pre_tokenizer", json());
    auto check_byte_level = [&](const json& bl, bool want_regex) {
      if (get_bool(bl, "add_prefix_space", true))
        fail_file(path, "pre_tokenizer ByteLevel with add_prefix_space=true is not supported");
      if (get_bool(bl, "use_regex", true) != want_regex)
        fail_file(path, want_regex ? "pre_tokenizer ByteLevel without a regex split is not supported"
                                   : "pre_tokenizer Split followed by ByteLevel(use_regex=true) is not supported");
    };
    if (pre.is_null()) {
      pattern = qwen2_pretokenize_regex;
    } else if (type_of(pre) == "ByteLevel") {
      check_byte_level(pre, true);
      pattern = gpt2_pretokenize_regex;
    } else if (type_of(pre) == "Sequence") {
      const json steps = pre.value("pretokenizers", json::array());
      if (steps.size() != 2 || type_of(steps[0]) != "Split" || type_of(steps[1]) != "ByteLevel")
        fail_file(path, "pre_tokenizer Sequence must be [Split, ByteLevel], got " + pre.dump());
      const json& split = steps[0];
      if (!split.contains("pattern") || !split["pattern"].is_object() || !split["pattern"].contains("Regex") ||
          !split["pattern"]["Regex"].is_string())
        fail_file(path, "pre_tokenizer Split without a Regex pattern is not supported");
      if (split.value("behavior", std::string()) != "Isolated" || get_bool(split, "invert", false))
        fail_file(path, "pre_tokenizer Split must have behavior Isolated and invert false");
      check_byte_level(steps[1], false);
      pattern = split["pattern"]["Regex"].get<std::string>();
    } else {
      fail_file(path, "pre_tokenizer '" + type_of(pre) + "' is not supported");
    }
    int err = 0;
    PCRE2_SIZE err_off = 0;
    p->regex.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                                 &err, &err_off, nullptr));
    if (!p->regex) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(err, buf, sizeof buf);
      fail_file(path, "pre-tokenizer regex does not compile at offset " + std::to_string(err_off) + ": " +
                          reinterpret_cast<const char*>(buf));
    }
    pcre2_jit_compile(p->regex.get(), PCRE2_JIT_COMPLETE);  // optional: the interpreter is used otherwise
    // -- decoder / post-processor --
    const json decoder = j.value("decoder", json());
    if (decoder.is_null() || type_of(decoder) != "ByteLevel")
      fail_file(path, "decoder must be ByteLevel, got " + (decoder.is_null() ? std::string("null") : type_of(decoder)));
    const json post = j.value("post_processor", json());
    if (!post.is_null() && type_of(post) != "ByteLevel")
      fail_file(path, "post_processor '" + type_of(post) + "' is not supported (it would add tokens)");
  } catch (const json::exception& e) {
    fail_file(path, std::string("unexpected JSON content (") + e.what() + ")");
  }
  return tokenizer(std::move(p));
}

// ---- encode / decode ----------------------------------------------------------------------------------

std::vector<int64_t> tokenizer::encode(const std::string& text) const {
  const std::size_t bad = first_invalid_utf8(text);
  if (bad != std::string::npos)
    throw runtime_error("consr_runtime::tokenizer::encode: argument 'text': invalid UTF-8 at byte " + std::to_string(bad));
  const impl& m = *impl_;
  std::vector<segment> segs;
  m.split_added(text, 0, text.size(), m.raw_matcher, segs);
  std::vector<int64_t> out;
  for (const segment& seg : segs) {
    if (seg.is_token) {
      out.push_back(seg.id);
      continue;
    }
    const std::string piece = text.substr(seg.begin, seg.end - seg.begin);
    m.encode_normalized(m.normalize_nfc ? nfc(piece) : piece, out);
  }
  return out;
}

std::string tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special) const {
  const impl& m = *impl_;
  const auto& table = byte_level::bytes();
  std::string bytes;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const int64_t id = ids[i];
    if (id < 0)
      throw runtime_error("consr_runtime::tokenizer::decode: argument 'ids': id " + std::to_string(id) + " at position " +
                          std::to_string(i) + " is negative");
    if (id >= static_cast<int64_t>(m.has_id.size()) || !m.has_id[id]) continue;  // no token: skipped, as HF
    if (skip_special && m.special_id[id]) continue;
    // ByteLevel decoder: map every character back to its byte; a token with a character outside the
    // table (an added token's content, say) contributes its own UTF-8 bytes instead.
    const std::string& tok = m.id_strings[id];
    std::string mapped;
    bool all_mapped = true;
    const auto* p = reinterpret_cast<const unsigned char*>(tok.data());
    for (std::size_t k = 0; k < tok.size();) {
      char32_t cp = 0;
      const std::size_t len = utf8_sequence(p, tok.size(), k, &cp, nullptr);
      if (len == 0 || cp >= table.to_byte.size() || table.to_byte[cp] < 0) {
        all_mapped = false;
        break;
      }
      mapped += static_cast<char>(table.to_byte[cp]);
      k += len;
    }
    bytes += all_mapped ? mapped : tok;
  }
  return utf8_lossy(bytes);
}

// ---- lookups ------------------------------------------------------------------------------------------

std::optional<int64_t> tokenizer::find_token(const std::string& token) const {
  auto a = impl_->added_by_content.find(token);
  if (a != impl_->added_by_content.end()) return a->second;
  auto v = impl_->vocab.find(token);
  if (v != impl_->vocab.end()) return v->second;
  return std::nullopt;
}

int64_t tokenizer::token_id(const std::string& token) const {
  auto id = find_token(token);
  if (!id) throw runtime_error("consr_runtime::tokenizer::token_id: '" + impl_->path + "' has no token '" + token + "'");
  return *id;
}

const std::string& tokenizer::id_to_token(int64_t id) const {
  if (id < 0 || id >= static_cast<int64_t>(impl_->has_id.size()) || !impl_->has_id[id])
    throw runtime_error("consr_runtime::tokenizer::id_to_token: argument 'id': '" + impl_->path + "' has no token with id " +
                        std::to_string(id));
  return impl_->id_strings[id];
}

bool tokenizer::is_special(int64_t id) const {
  return id >= 0 && id < static_cast<int64_t>(impl_->special_id.size()) && impl_->special_id[id];
}

int64_t tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->has_id.size()); }
const std::vector<added_token>& tokenizer::added_tokens() const { return impl_->added; }
const std::string& tokenizer::path() const { return impl_->path; }

}  // namespace consr_runtime
