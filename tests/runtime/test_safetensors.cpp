// safetensors reader / writer / checkpoint directories: values against files written by the Python
// `safetensors` package (tools/make_safetensors_fixture.py), round trips, and corrupt inputs, each
// of which must throw consr_runtime::runtime_error naming the file (and tensor), never crash.
#include "runtime_test_support.hpp"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "consr_runtime/safetensors.hpp"

namespace fs = std::filesystem;
using consr_runtime::checkpoint;
using consr_runtime::runtime_error;
using consr_runtime::safetensors_file;
using Catch::Matchers::Contains;

namespace {

const std::string fixtures = std::string(CONSR_FIXTURES_DIR) + "/safetensors";

using runtime_test::read_json;

/// A fresh temporary directory, removed at scope exit.
struct temp_dir : runtime_test::temp_dir {
  temp_dir() : runtime_test::temp_dir("consr_st") {}
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// A safetensors file from a header text (unpadded, as given) and a data buffer.
std::string make_file(const std::string& header, const std::string& data, std::uint64_t declared_len = UINT64_MAX) {
  std::uint64_t n = declared_len == UINT64_MAX ? header.size() : declared_len;
  std::string out(8, '\0');
  std::memcpy(&out[0], &n, 8);
  return out + header + data;
}

/// Opening `bytes` written to a file must throw runtime_error whose message names the file and
/// contains every string of `parts`.
void expect_rejected(const temp_dir& dir, const std::string& name, const std::string& bytes,
                     const std::vector<std::string>& parts) {
  const std::string path = dir.file(name);
  write_bytes(path, bytes);
  INFO("case " << name);
  try {
    safetensors_file f(path);
    FAIL("no exception for " << name);
  } catch (const runtime_error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK_THAT(msg, Contains(path));
    for (const auto& p : parts) CHECK_THAT(msg, Contains(p));
  }
}

std::vector<double> as_doubles(const torch::Tensor& t) {
  torch::Tensor d = t.to(torch::kFloat64).contiguous();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

}  // namespace

TEST_CASE("safetensors: a file written by Python safetensors reads back with the same dtypes, shapes, values") {
  const nlohmann::json ref = read_json(fixtures + "/reference.json");
  safetensors_file f(fixtures + "/reference.safetensors");
  CHECK(f.path() == fixtures + "/reference.safetensors");
  CHECK(f.entries().size() == ref["tensors"].size());
  using string_map = std::map<std::string, std::string>;
  CHECK(f.metadata() == ref["metadata"].get<string_map>());
  const std::map<std::string, torch::ScalarType> torch_of = {
      {"float32", torch::kFloat32}, {"float64", torch::kFloat64}, {"float16", torch::kFloat16},
      {"bfloat16", torch::kBFloat16}, {"int64", torch::kInt64}, {"int32", torch::kInt32},
      {"int16", torch::kInt16}, {"int8", torch::kInt8}, {"uint8", torch::kUInt8}, {"bool", torch::kBool}};
  for (auto it = ref["tensors"].begin(); it != ref["tensors"].end(); ++it) {
    INFO("tensor " << it.key());
    REQUIRE(f.contains(it.key()));
    torch::Tensor t = f.load(it.key());
    CHECK(t.scalar_type() == torch_of.at(it.value()["dtype"].get<std::string>()));
    CHECK(t.sizes().vec() == it.value()["shape"].get<std::vector<int64_t>>());
    CHECK(f.entry(it.key()).shape == it.value()["shape"].get<std::vector<int64_t>>());
    if (t.scalar_type() == torch::kInt64) {
      // int64 beyond 2^53 must not pass through double
      torch::Tensor c = t.contiguous();
      std::vector<int64_t> got(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
      CHECK(got == it.value()["values"].get<std::vector<int64_t>>());
    } else {
      CHECK(as_doubles(t) == it.value()["values"].get<std::vector<double>>());
    }
  }
  // entries() is sorted by name
  for (std::size_t i = 1; i < f.entries().size(); ++i) CHECK(f.entries()[i - 1].name < f.entries()[i].name);
}

TEST_CASE("safetensors: writer -> reader round trip for every dtype, with metadata and odd shapes") {
  temp_dir dir;
  torch::manual_seed(7);
  std::vector<std::pair<std::string, torch::Tensor>> ts = {
      {"f32", torch::randn({3, 5})},
      {"f64", torch::randn({4}, torch::kFloat64)},
      {"f16", torch::randn({2, 3}).to(torch::kFloat16)},
      {"bf16", torch::randn({7}).to(torch::kBFloat16)},
      {"i64", torch::randint(-1000000, 1000000, {3, 2}, torch::kInt64) * 1000003},
      {"i32", torch::randint(-100000, 100000, {5}, torch::kInt32)},
      {"i16", torch::randint(-30000, 30000, {2, 2}, torch::kInt16)},
      {"i8", torch::randint(-128, 128, {9}, torch::kInt8)},
      {"u8", torch::randint(0, 256, {1, 1, 3}, torch::kUInt8)},
      {"bool", torch::randint(0, 2, {6}, torch::kInt64).to(torch::kBool)},
      {"c64", torch::randn({2}, torch::kComplexFloat)},
      {"scalar", torch::tensor(3.25)},
      {"empty", torch::zeros({0, 4}, torch::kBFloat16)},
      {"non_contiguous", torch::arange(12, torch::kFloat32).reshape({3, 4}).t()},
  };
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"k", "v w"}};
  const std::string path = dir.file("rt.safetensors");
  consr_runtime::save_safetensors(path, ts, meta);
  CHECK_FALSE(fs::exists(path + ".tmp"));

  const std::string bytes = read_bytes(path);
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  CHECK(n % 8 == 0);  // padded header, as the reference writer does
  CHECK(bytes[8] == '{');

  safetensors_file f(path);
  CHECK(f.metadata() == meta);
  CHECK(f.entries().size() == ts.size());
  for (const auto& [name, t] : ts) {
    INFO("tensor " << name);
    torch::Tensor back = f.load(name);
    CHECK(back.scalar_type() == t.scalar_type());
    CHECK(back.sizes() == t.sizes());
    CHECK(torch::equal(back, t.contiguous()));
    // every tensor is aligned to its element size inside the file
    const auto& e = f.entry(name);
    CHECK((8 + n + e.begin) % consr_runtime::safetensors_dtype_size(e.dtype) == 0);
  }
  // Copies share the mapping and outlive the original.
  safetensors_file copy = f;
  { safetensors_file moved = std::move(f); }
  CHECK(torch::equal(copy.load("f32"), ts[0].second));
}

TEST_CASE("safetensors: writer rejects bad names and dtypes, naming the file and the tensor") {
  temp_dir dir;
  const std::string path = dir.file("bad.safetensors");
  auto expect = [&](std::vector<std::pair<std::string, torch::Tensor>> ts, const std::string& part) {
    try {
      consr_runtime::save_safetensors(path, ts);
      FAIL("no exception");
    } catch (const runtime_error& e) {
      CHECK_THAT(e.what(), Contains(path) && Contains(part));
    }
  };
  expect({{"a", torch::zeros({1})}, {"a", torch::zeros({1})}}, "'a'");
  expect({{"", torch::zeros({1})}}, "empty name");
  expect({{"__metadata__", torch::zeros({1})}}, "reserved");
  expect({{"u", torch::Tensor()}}, "'u'");
  expect({{"q", torch::zeros({2}, torch::kComplexDouble)}}, "'q'");
  CHECK_FALSE(fs::exists(path));
}

TEST_CASE("safetensors: corrupt or malicious files throw runtime_error naming the file and tensor") {
  temp_dir dir;
  const std::string ok_entry = R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string data8(8, '\0');

  expect_rejected(dir, "empty", "", {"fewer than the 8-byte"});
  expect_rejected(dir, "short", "abc", {"3 bytes"});

  // One row a corrupt header: the file make_file(header, data, declared_len) must be rejected with
  // every one of `parts` in the message (expect_rejected names the row in a failure).
  struct corrupt_header {
    std::string name, header, data;
    std::vector<std::string> parts;
    std::uint64_t declared_len = UINT64_MAX;
  };
  const std::vector<corrupt_header> rows = {
      {"len_beyond_file", "{}", "", {"runs past the end"}, 4096},
      {"len_huge", "{}", "", {"100 MB"}, 200'000'000ULL},
      {"len_max", "{}", "", {"100 MB"}, UINT64_MAX - 1},
      {"not_json", "{not json", data8, {"not valid JSON"}},
      {"truncated_json", R"({"a":{"dtype":"F32")", data8, {"not valid JSON"}},
      {"array_header", "[1,2]", data8, {"not a JSON object"}},
      {"empty_header", "", data8, {"not a JSON object"}},
      {"entry_not_object", R"({"w":[1]})", data8, {"'w'", "not a JSON object"}},
      {"unknown_dtype", R"({"w":{"dtype":"F17","shape":[2],"data_offsets":[0,8]}})", data8,
       {"'w'", "unknown dtype 'F17'"}},
      {"missing_dtype", R"({"w":{"shape":[2],"data_offsets":[0,8]}})", data8, {"'w'", "dtype"}},
      {"negative_shape", R"({"w":{"dtype":"F32","shape":[-1,2],"data_offsets":[0,8]}})", data8,
       {"'w'", "non-negative"}},
      {"fractional_shape", R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,8]}})", data8,
       {"'w'", "non-negative"}},
      {"shape_overflow",
       R"({"w":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904],"data_offsets":[0,8]}})", data8,
       {"'w'", "overflow"}},
      {"bytes_overflow", R"({"w":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]}})", data8,
       {"'w'", "overflow"}},
      {"length_mismatch", R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data8, {"'w'", "needs 12"}},
      {"offsets_out_of_range", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", data8,
       {"'w'", "outside the data buffer"}},
      {"offsets_reversed", R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", data8, {"'w'", "outside"}},
      {"offsets_negative", R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", data8,
       {"'w'", "data_offsets"}},
      {"offsets_not_pair", R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", data8,
       {"'w'", "data_offsets"}},
      {"overlap",
       R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
       R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       std::string(12, '\0'), {"'b'", "overlap", "'a'"}},
      {"overlap_same", R"({"a":)" + ok_entry + R"(,"b":)" + ok_entry + "}", data8, {"overlap"}},
      {"duplicate_names", R"({"w":)" + ok_entry + R"(,"w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
       std::string(16, '\0'), {"'w' twice"}},
      {"duplicate_field", R"({"w":{"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]}})", data8,
       {"'dtype' twice"}},
      {"metadata_not_string", R"({"__metadata__":{"a":1},"w":)" + ok_entry + "}", data8, {"__metadata__", "'a'"}},
      {"metadata_not_object", R"({"__metadata__":[],"w":)" + ok_entry + "}", data8, {"__metadata__"}},
  };
  for (const auto& row : rows)
    expect_rejected(dir, row.name, make_file(row.header, row.data, row.declared_len), row.parts);

  // A real file cut short: its last tensor's offsets now run past the data buffer.
  const std::string good = dir.file("good.safetensors");
  consr_runtime::save_safetensors(good, {{"a", torch::ones({4})}, {"b", torch::ones({8}, torch::kFloat64)}});
  const std::string bytes = read_bytes(good);
  expect_rejected(dir, "truncated_file", bytes.substr(0, bytes.size() - 3), {"outside the data buffer"});
  expect_rejected(dir, "truncated_in_header", bytes.substr(0, 20), {"runs past the end"});

  // A missing file and a directory name the path too.
  CHECK_THROWS_WITH(safetensors_file(dir.file("absent.safetensors")), Contains(dir.file("absent.safetensors")));
  CHECK_THROWS_WITH(safetensors_file(dir.path.string()), Contains("not a regular file"));
}

TEST_CASE("safetensors: load rejects BOOL bytes other than 0/1 and dtypes LibTorch cannot hold") {
  temp_dir dir;
  const std::string path = dir.file("odd.safetensors");
  write_bytes(path, make_file(R"({"b":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]},)"
                              R"("u":{"dtype":"U16","shape":[2],"data_offsets":[4,8]}})",
                              std::string("\x01\x02\x00\x00\x01\x00\x02\x00", 8)));
  safetensors_file f(path);  // the header is valid
  CHECK(f.entry("u").dtype == "U16");
  CHECK_THROWS_WITH(f.load("b"), Contains(path) && Contains("'b'") && Contains("value 2"));
  CHECK_THROWS_WITH(f.load("u"), Contains(path) && Contains("'u'") && Contains("U16"));
  CHECK_THROWS_WITH(f.load("zzz"), Contains(path) && Contains("'zzz'"));
  CHECK_THROWS_AS(f.entry("zzz"), runtime_error);
}

TEST_CASE("checkpoint: a sharded directory written by huggingface_hub loads every tensor") {
  const nlohmann::json ref = read_json(fixtures + "/sharded_reference.json");
  checkpoint ck(fixtures + "/sharded");
  std::vector<std::string> expected;
  for (auto it = ref["tensors"].begin(); it != ref["tensors"].end(); ++it) expected.push_back(it.key());
  CHECK(ck.names() == expected);  // both sorted
  for (auto it = ref["tensors"].begin(); it != ref["tensors"].end(); ++it) {
    INFO("tensor " << it.key());
    CHECK(ck.contains(it.key()));
    CHECK(ck.shape(it.key()) == it.value()["shape"].get<std::vector<int64_t>>());
    torch::Tensor t = ck.load(it.key());
    CHECK(as_doubles(t) == it.value()["values"].get<std::vector<double>>());
  }
  CHECK(ck.dtype("lm_head.weight") == "BF16");
  CHECK_FALSE(ck.contains("nope"));
  CHECK_THROWS_WITH(ck.load("nope"), Contains("'nope'") && Contains(fixtures + "/sharded"));
  CHECK_THROWS_WITH(ck.shape("nope"), Contains("'nope'"));
}

TEST_CASE("checkpoint: single-file directories and direct file paths") {
  temp_dir dir;
  consr_runtime::save_safetensors(dir.file("model.safetensors"), {{"x", torch::arange(3)}, {"y", torch::ones({2, 2})}});
  checkpoint ck(dir.path.string());
  CHECK(ck.names() == std::vector<std::string>({"x", "y"}));
  CHECK(torch::equal(ck.load("x"), torch::arange(3)));
  checkpoint direct(dir.file("model.safetensors"));
  CHECK(direct.names() == ck.names());
}

TEST_CASE("checkpoint: broken directories and indexes throw naming the file and the tensor") {
  temp_dir dir;
  auto copy_sharded = [&](const std::string& name) {
    fs::path to = dir.path / name;
    fs::copy(fixtures + "/sharded", to, fs::copy_options::recursive);
    return to;
  };
  auto expect = [](const fs::path& d, const std::vector<std::string>& parts) {
    try {
      checkpoint ck(d.string());
      FAIL("no exception for " << d);
    } catch (const runtime_error& e) {
      INFO(e.what());
      for (const auto& p : parts) CHECK_THAT(e.what(), Contains(p));
    }
  };
  // Neither file present.
  fs::create_directory(dir.path / "empty");
  expect(dir.path / "empty", {(dir.path / "empty").string(), "neither"});
  // A missing shard.
  fs::path missing = copy_sharded("missing");
  fs::remove(missing / "model-00002-of-00004.safetensors");
  expect(missing, {"model-00002-of-00004.safetensors", "does not exist", "model.layers.0.mlp.up_proj.weight"});
  // A tensor listed in the index but not in its shard.
  fs::path wrong = copy_sharded("wrong");
  nlohmann::json idx = read_json((wrong / "model.safetensors.index.json").string());
  idx["weight_map"]["model.norm.weight"] = "model-00001-of-00004.safetensors";
  write_bytes((wrong / "model.safetensors.index.json").string(), idx.dump());
  expect(wrong, {"model.safetensors.index.json", "'model.norm.weight'", "does not hold it"});
  // A tensor in a shard the index does not list.
  fs::path unlisted = copy_sharded("unlisted");
  idx = read_json((unlisted / "model.safetensors.index.json").string());
  idx["weight_map"].erase("model.norm.weight");
  write_bytes((unlisted / "model.safetensors.index.json").string(), idx.dump());
  expect(unlisted, {"'model.norm.weight'", "does not list"});
  // A tensor listed twice in the weight_map.
  fs::path dup = copy_sharded("dup");
  write_bytes((dup / "model.safetensors.index.json").string(),
              R"({"weight_map":{"model.norm.weight":"model-00003-of-00004.safetensors",)"
              R"("model.norm.weight":"model-00003-of-00004.safetensors"}})");
  expect(dup, {"'model.norm.weight' twice"});
  // Not JSON / no weight_map / a shard path escaping the directory / a corrupt shard.
  fs::path bad = copy_sharded("bad");
  write_bytes((bad / "model.safetensors.index.json").string(), "{\"weight_map\": ");
  expect(bad, {"not valid JSON"});
  write_bytes((bad / "model.safetensors.index.json").string(), "{\"metadata\": {}}");
  expect(bad, {"weight_map"});
  write_bytes((bad / "model.safetensors.index.json").string(), R"({"weight_map":{"a":"../x.safetensors"}})");
  expect(bad, {"'a'", "inside the model directory"});
  write_bytes((bad / "model-00001-of-00004.safetensors").string(), "garbage!garbage!");
  write_bytes((bad / "model.safetensors.index.json").string(),
              R"({"weight_map":{"model.embed_tokens.weight":"model-00001-of-00004.safetensors"}})");
  expect(bad, {"model-00001-of-00004.safetensors"});
}
