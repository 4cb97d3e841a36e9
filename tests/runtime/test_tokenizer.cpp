// Byte-level BPE tokenizer: exact HF `tokenizers` ids and decodes from the committed fixture
// (tools/make_tokenizer_fixture.py), for both merges formats; tokenizer files of another kind and
// malformed inputs are rejected with errors naming the file / argument.
#include <catch2/catch.hpp>

#include "../test_files.hpp"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "consr_runtime/tokenizer.hpp"

namespace fs = std::filesystem;
using consr_runtime::runtime_error;
using consr_runtime::tokenizer;
using Catch::Matchers::Contains;
using json = nlohmann::json;

namespace {

const std::string dir = std::string(CONSR_FIXTURES_DIR) + "/tokenizer";

json read_json(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  return json::parse(in);
}

/// Printable form of a test string for failure messages.
std::string escaped(const std::string& s) { return json(s).dump(); }

std::string ids_string(const std::vector<int64_t>& ids) { return json(ids).dump(); }

struct temp_dir : consr_test_files::temp_dir {
  temp_dir() : consr_test_files::temp_dir("consr_tok") {}
};

/// Every reference encode and decode case of `ref` against `tok`.
void check_reference(const tokenizer& tok, const json& ref) {
  CHECK(tok.vocab_size() == ref["vocab_size_with_added"].get<int64_t>());
  std::size_t encode_failures = 0;
  for (const auto& c : ref["encode"]) {
    const std::string text = c["text"].get<std::string>();
    const auto expected = c["ids"].get<std::vector<int64_t>>();
    const auto got = tok.encode(text);
    if (got != expected) {
      ++encode_failures;
      FAIL_CHECK("encode " << escaped(text) << ": got " << ids_string(got) << ", HF " << ids_string(expected));
    }
  }
  CHECK(encode_failures == 0);
  std::size_t decode_failures = 0;
  for (const auto& c : ref["decode"]) {
    const auto ids = c["ids"].get<std::vector<int64_t>>();
    const bool skip = c["skip_special"].get<bool>();
    const std::string expected = c["text"].get<std::string>();
    const std::string got = tok.decode(ids, skip);
    if (got != expected) {
      ++decode_failures;
      FAIL_CHECK("decode " << ids_string(ids) << " skip_special=" << skip << ": got " << escaped(got) << ", HF "
                           << escaped(expected));
    }
  }
  CHECK(decode_failures == 0);
}

}  // namespace

TEST_CASE("tokenizer: ids and decodes equal HF tokenizers' on the reference strings ([\"a\",\"b\"] merges)") {
  const json ref = read_json(dir + "/reference_ids.json");
  REQUIRE(ref["encode"].size() > 100);
  const tokenizer tok = tokenizer::from_file(dir + "/tokenizer.json");
  CHECK(tok.path() == dir + "/tokenizer.json");
  check_reference(tok, ref);
}

TEST_CASE("tokenizer: the legacy \"a b\" merges file gives the same ids") {
  const json ref = read_json(dir + "/reference_ids.json");
  check_reference(tokenizer::from_file(dir + "/tokenizer_legacy_merges.json"), ref);
}

TEST_CASE("tokenizer: added tokens, byte tokens and lookups agree with the fixture") {
  const json ref = read_json(dir + "/reference_ids.json");
  const tokenizer tok = tokenizer::from_directory(dir);
  const auto byte_ids = ref["byte_token_ids"].get<std::vector<int64_t>>();
  // decode of each single byte token is that byte (ASCII) or U+FFFD (a lone non-ASCII byte).
  for (int b = 0; b < 256; ++b) {
    const std::string got = tok.decode({byte_ids[b]});
    CHECK(got == (b < 0x80 ? std::string(1, static_cast<char>(b)) : std::string("\xEF\xBF\xBD")));
  }
  REQUIRE(tok.added_tokens().size() == ref["added_tokens"].size());
  for (std::size_t i = 0; i < tok.added_tokens().size(); ++i) {
    const auto& a = tok.added_tokens()[i];
    const auto& r = ref["added_tokens"][i];
    CHECK(a.id == r["id"].get<int64_t>());
    CHECK(a.content == r["content"].get<std::string>());
    CHECK(a.special == r["special"].get<bool>());
    CHECK(tok.token_id(a.content) == a.id);
    CHECK(tok.is_special(a.id) == a.special);
    CHECK(tok.id_to_token(a.id) == a.content);
  }
  CHECK(tok.token_id("Ġ") == byte_ids[' ']);
  CHECK_FALSE(tok.find_token("no such token").has_value());
  CHECK_THROWS_WITH(tok.token_id("no such token"), Contains("'no such token'") && Contains("tokenizer.json"));
  CHECK_THROWS_WITH(tok.id_to_token(tok.vocab_size()), Contains("id " + std::to_string(tok.vocab_size())));
  CHECK_FALSE(tok.is_special(-1));
  CHECK_FALSE(tok.is_special(byte_ids['a']));
}

TEST_CASE("tokenizer: lstrip / rstrip / normalized added tokens behave as HF's") {
  const json ref = read_json(dir + "/reference_added_flags.json");
  const tokenizer tok = tokenizer::from_file(dir + "/tokenizer_added_flags.json");
  for (const auto& c : ref["encode"]) {
    const std::string text = c["text"].get<std::string>();
    INFO("text " << escaped(text));
    const auto ids = c["ids"].get<std::vector<int64_t>>();
    CHECK(ids_string(tok.encode(text)) == ids_string(ids));
    CHECK(escaped(tok.decode(ids)) == escaped(c["decode"].get<std::string>()));
    CHECK(escaped(tok.decode(ids, true)) == escaped(c["decode_skip_special"].get<std::string>()));
  }
}

TEST_CASE("tokenizer: decode(encode(x)) is NFC(x) on long and mixed inputs; results are thread-independent") {
  const tokenizer tok = tokenizer::from_file(dir + "/tokenizer.json");
  std::string big;
  for (int i = 0; i < 300; ++i) big += "Größe 你好 " + std::to_string(i * 7919) + "  \n\t!? émoji 👍🏽 ";
  big += std::string(5000, ' ') + "end" + std::string(3000, '\n');
  const auto ids = tok.encode(big);
  CHECK(tok.decode(ids) == big);  // already NFC
  CHECK(tok.decode(tok.encode("cafe\xCC\x81")) == "caf\xC3\xA9");  // e + combining acute -> é
  std::vector<std::vector<int64_t>> results(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back([&, t] { results[t] = tok.encode(big); });
  for (auto& th : threads) th.join();
  for (const auto& r : results) CHECK(r == ids);
  CHECK(tok.encode("").empty());
}

TEST_CASE("tokenizer: invalid UTF-8 input and negative ids are errors naming the argument") {
  const tokenizer tok = tokenizer::from_file(dir + "/tokenizer.json");
  CHECK_THROWS_WITH(tok.encode(std::string("ab\xC3")), Contains("'text'") && Contains("byte 2"));
  CHECK_THROWS_WITH(tok.encode(std::string("\xED\xA0\x80")), Contains("'text'") && Contains("byte 0"));  // surrogate
  CHECK_THROWS_WITH(tok.encode(std::string("x\xC0\x80")), Contains("byte 1"));                           // overlong
  CHECK_THROWS_WITH(tok.encode(std::string("\xF4\x90\x80\x80")), Contains("byte 0"));                    // > U+10FFFF
  CHECK(tok.encode(std::string("a\0b", 3)).size() == 3);  // NUL is valid UTF-8
  CHECK_THROWS_WITH(tok.decode({5, -1}), Contains("'ids'") && Contains("position 1"));
  // Ids with no token are skipped, as HF does (e.g. padded embedding rows of a model).
  CHECK(tok.decode({tok.token_id("a"), tok.vocab_size() + 10, tok.token_id("b")}) == "ab");
}

TEST_CASE("tokenizer: files of another kind, or missing, are errors naming the file") {
  for (const char* other : {"tokenizer_wordpiece.json", "tokenizer_unigram.json"}) {
    const std::string path = dir + "/" + other;
    CHECK_THROWS_WITH(tokenizer::from_file(path), Contains(path) && Contains("model type"));
  }
  CHECK_THROWS_WITH(tokenizer::from_file(dir + "/absent.json"), Contains(dir + "/absent.json") && Contains("does not exist"));
  CHECK_THROWS_WITH(tokenizer::from_directory(dir + "/nope"), Contains(dir + "/nope/tokenizer.json"));
  CHECK_THROWS_WITH(tokenizer::from_file(dir), Contains("not a regular file"));
}

TEST_CASE("tokenizer: unsupported pipeline steps and malformed BPE files are rejected, naming the file") {
  temp_dir tmp;
  const json base = read_json(dir + "/tokenizer.json");
  auto expect = [&](const std::string& name, const json& j, const std::string& part) {
    const std::string path = tmp.write(name, j.dump());
    INFO(name);
    CHECK_THROWS_WITH(tokenizer::from_file(path), Contains(path) && Contains(part));
  };
  // Edits of the fixture (JSON Patches in tests/fixtures/tokenizer/rejected_edits.json), one file each.
  const json cases = read_json(dir + "/rejected_edits.json")["cases"];
  REQUIRE(cases.size() == 15);
  for (const auto& c : cases)
    expect(c.at("file").get<std::string>(), base.patch(c.at("patch")), c.at("part").get<std::string>());
  expect("array.json", json::array({1, 2}), "not a JSON object");
  const std::string broken = tmp.write("broken.json", "{\"model\": {");
  CHECK_THROWS_WITH(tokenizer::from_file(broken), Contains(broken) && Contains("not valid JSON"));
  // A BPE without the byte tokens cannot encode the missing bytes: an error, never a silent drop.
  json j = base;
  j["model"]["vocab"].erase("Ā");  // byte 0x00
  j["model"]["merges"] = json::array();
  const std::string path = tmp.write("no_byte.json", j.dump());
  const tokenizer tok = tokenizer::from_file(path);
  CHECK_THROWS_WITH(tok.encode(std::string("a\0", 2)), Contains("0x00") && Contains(path));
}

TEST_CASE("tokenizer: a token id too large to index is an error naming the file (fuzz finding)") {
  // fuzz_tokenizer_json, fuzz/regressions/tokenizer_json/crash-eaa29e73...: a vocab id of
  // 22222222222221493 made from_file size its id tables by it (an allocation of ~700 PB: bad_alloc,
  // or an out-of-memory abort under ASan). Ids above 2^24 - 1 are refused; real vocabularies stay far below.
  temp_dir tmp;
  const json base = read_json(dir + "/tokenizer.json");
  json j = base;
  j["model"]["vocab"]["zzzz"] = 22222222222221493LL;
  std::string path = tmp.write("huge_vocab_id.json", j.dump());
  CHECK_THROWS_WITH(tokenizer::from_file(path), Contains(path) && Contains("22222222222221493") && Contains("zzzz"));
  j = base;
  j["added_tokens"][0]["id"] = std::int64_t{1} << 40;
  path = tmp.write("huge_added_id.json", j.dump());
  CHECK_THROWS_WITH(tokenizer::from_file(path), Contains(path) && Contains(std::to_string(std::int64_t{1} << 40)));
  CHECK_THROWS_WITH(tokenizer::from_file(path), Contains("16777215"));  // the limit is named
}
