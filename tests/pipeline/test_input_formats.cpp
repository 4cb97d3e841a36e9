// The pipeline's input formats besides {id, image, prompt} (examples/04_consr_pipeline/input_formats.*,
// docs/pipeline.md "Input"): a LLaVA-style JSON with --image-folder, a sharegpt JSONL (messages +
// images, plain and list contents) and a Hugging Face export with base64-embedded images must give the
// same items as the equivalent consr JSONL (ids, prompts, image bytes and their hash; the embedded
// images written once under --out/images/ by content hash); and everything else is an error naming
// the file, the item and the field. The input files are written by this test from the fixture images,
// except in the last test case, which loads the committed files of tools/make_input_format_fixtures.py
// (tests/fixtures/input_formats/: a datasets.Dataset with RLAIF-V's schema exported to JSONL, and the
// same rows as LLaVA JSON, sharegpt JSONL and consr JSONL).
// LibTorch first: its glog headers define CHECK, which Catch's CHECK must replace.
#include <torch/torch.h>
#undef CHECK
#include <catch2/catch.hpp>

#include "../test_files.hpp"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "consr_runtime/image.hpp"
#include "consr_runtime/safetensors.hpp"
#include "context.hpp"
#include "input_formats.hpp"
#include "pipeline.hpp"

namespace {

namespace fs = std::filesystem;
namespace cp = consr_pipeline;
using json = nlohmann::json;

const std::string images_dir = std::string(CONSR_FIXTURES_DIR) + "/models/images";

using consr_test_files::slurp;

using consr_test_files::write_text;

// RFC 4648 base64 with padding, written here independently of the pipeline's decoder.
std::string base64(const std::string& bytes) {
  static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (std::size_t i = 0; i < bytes.size(); i += 3) {
    std::uint32_t v = static_cast<unsigned char>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) v |= static_cast<unsigned char>(bytes[i + 1]) << 8;
    if (i + 2 < bytes.size()) v |= static_cast<unsigned char>(bytes[i + 2]);
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? alphabet[(v >> 6) & 63] : '=';
    out += i + 2 < bytes.size() ? alphabet[v & 63] : '=';
  }
  return out;
}

std::string jsonl(const std::vector<json>& rows) {
  std::string s;
  for (const auto& r : rows) s += r.dump() + "\n";
  return s;
}

struct scratch_dir : consr_test_files::temp_dir {
  scratch_dir() : consr_test_files::temp_dir("consr_input_formats") {}
};

using consr_test_files::thrown;

// Two items over two fixture images (a PNG and a JPEG), in the formats' own words.
struct example {
  std::string id;
  std::string file;  // under images_dir
  std::string question;
};
const std::vector<example> examples{{"a", "qwen_a_101x159.png", "What is shown in the picture?"},
                                    {"7", "photo_48x64.jpg", "How many objects are there?"}};

cp::options options_for(const fs::path& input, const fs::path& out) {
  cp::options o = cp::default_options(cp::profile::demo);
  o.input = input.string();
  o.output_dir = out.string();
  return o;
}

}  // namespace

TEST_CASE("input formats: base64 decodes the RFC 4648 test vectors and refuses the rest", "[input]") {
  CHECK(cp::decode_base64("", "x").empty());
  CHECK(cp::decode_base64("Zg==", "x") == "f");
  CHECK(cp::decode_base64("Zm8=", "x") == "fo");
  CHECK(cp::decode_base64("Zm9v", "x") == "foo");
  CHECK(cp::decode_base64("Zm9vYg==", "x") == "foob");
  CHECK(cp::decode_base64("Zm9vYmE=", "x") == "fooba");
  CHECK(cp::decode_base64("Zm9v\nYmFy", "x") == "foobar");
  CHECK_THAT(thrown([] { (void)cp::decode_base64("Zm9v!mFy", "field 'image.bytes'"); }),
             Catch::Contains("field 'image.bytes'") && Catch::Contains("character '!'") && Catch::Contains("offset 4"));
  CHECK_THAT(thrown([] { (void)cp::decode_base64("Zm9vY", "f"); }), Catch::Contains("not valid base64"));
  CHECK_THAT(thrown([] { (void)cp::decode_base64("Zg==Zg==", "f"); }), Catch::Contains("after '=' padding"));
  CHECK_THAT(thrown([] { (void)cp::decode_base64("Zg===", "f"); }), Catch::Contains("not valid base64"));
}

TEST_CASE("input formats: LLaVA, sharegpt and Hugging Face exports give the items of the consr JSONL", "[input]") {
  scratch_dir s;
  const fs::path data = s.path / "data", folder = s.path / "image_folder";
  fs::create_directories(folder / "sub");
  for (const auto& e : examples) fs::copy_file(fs::path(images_dir) / e.file, folder / "sub" / e.file, fs::copy_options::overwrite_existing);

  // The reference: our own JSONL, image paths relative to the file.
  std::vector<json> consr_rows, llava_rows, sharegpt_rows, sharegpt_parts_rows, hf_rows;
  for (const auto& e : examples) {
    consr_rows.push_back({{"id", e.id == "7" ? json(7) : json(e.id)}, {"image", "../image_folder/sub/" + e.file}, {"prompt", e.question}});
    llava_rows.push_back({{"id", e.id},
                          {"image", "sub/" + e.file},
                          {"conversations",
                           {{{"from", "human"}, {"value", "<image>\n" + e.question}}, {{"from", "gpt"}, {"value", "An answer."}}}}});
    sharegpt_rows.push_back({{"id", e.id},
                             {"messages",
                              {{{"role", "user"}, {"content", "<image>" + e.question}}, {{"role", "assistant"}, {"content", "An answer."}}}},
                             {"images", {"sub/" + e.file}}});
    sharegpt_parts_rows.push_back(
        {{"id", e.id},
         {"messages", {{{"role", "user"}, {"content", {{{"type", "image"}}, {{"type", "text"}, {"text", e.question}}}}}}},
         {"images", {"sub/" + e.file}}});
    // RLAIF-V's row shape: idx, image {bytes, path}, question, chosen, rejected, ...
    hf_rows.push_back({{"ds_name", "test"},
                       {"idx", e.id},
                       {"image", {{"bytes", base64(slurp(fs::path(images_dir) / e.file))}, {"path", e.file}}},
                       {"question", e.question},
                       {"chosen", "A good answer."},
                       {"rejected", "A bad answer."}});
  }
  write_text(data / "items.jsonl", jsonl(consr_rows));
  write_text(data / "llava.json", json(llava_rows).dump(2));
  write_text(data / "sharegpt.jsonl", jsonl(sharegpt_rows));
  write_text(data / "sharegpt_parts.json", json{{"items", sharegpt_parts_rows}}.dump());
  write_text(data / "rlaif_v.jsonl", jsonl(hf_rows));

  const fs::path out = s.path / "out";
  const std::vector<cp::item> reference = cp::load_items(options_for(data / "items.jsonl", out));
  REQUIRE(reference.size() == 2);
  CHECK(reference[1].id == "7");
  CHECK(!fs::exists(out));  // paths only: nothing written

  auto same_items = [&](const std::vector<cp::item>& items, bool embedded) {
    REQUIRE(items.size() == reference.size());
    for (std::size_t i = 0; i < items.size(); ++i) {
      INFO("item " << i);
      CHECK(items[i].id == reference[i].id);
      CHECK(items[i].prompt == reference[i].prompt);
      CHECK(items[i].image_hash == reference[i].image_hash);
      CHECK(slurp(items[i].image) == slurp(reference[i].image));
      if (!embedded) CHECK(items[i].image == reference[i].image);
    }
  };

  SECTION("LLaVA JSON with --image-folder (detected, and named)") {
    for (const char* format : {"auto", "llava"}) {
      cp::options o = options_for(data / "llava.json", out);
      o.image_folder = folder.string();
      o.input_format = format;
      same_items(cp::load_items(o), false);
    }
  }
  SECTION("sharegpt JSONL (string and list contents)") {
    for (const char* file : {"sharegpt.jsonl", "sharegpt_parts.json"}) {
      cp::options o = options_for(data / file, out);
      o.image_folder = folder.string();
      same_items(cp::load_items(o), false);
      o.input_format = "sharegpt";
      same_items(cp::load_items(o), false);
    }
  }
  SECTION("Hugging Face export with embedded images: written once under --out/images by content hash") {
    cp::options o = options_for(data / "rlaif_v.jsonl", out);
    const std::vector<cp::item> items = cp::load_items(o);
    same_items(items, true);
    for (std::size_t i = 0; i < items.size(); ++i) {
      const fs::path p = items[i].image;
      CHECK(p.parent_path() == fs::absolute(out / "images").lexically_normal());
      CHECK(p.filename().string() == items[i].image_hash + (i == 0 ? ".png" : ".jpg"));
    }
    // Loading again writes nothing new and leaves no temporary file.
    const auto first_write = fs::last_write_time(items[0].image);
    o.input_format = "hf";
    const std::vector<cp::item> again = cp::load_items(o);
    CHECK(again[0].image == items[0].image);
    CHECK(fs::last_write_time(again[0].image) == first_write);
    std::size_t files = 0;
    for (const auto& f : fs::directory_iterator(out / "images")) {
      (void)f;
      ++files;
    }
    CHECK(files == 2);
  }
}

TEST_CASE("input formats: everything else is an error naming the file, the item and the field", "[input]") {
  scratch_dir s;
  const fs::path data = s.path / "data";
  fs::create_directories(data);
  fs::copy_file(fs::path(images_dir) / "qwen_a_101x159.png", data / "a.png");
  // The records of each bad file, as JSON text (one record per element).
  const std::string human = R"({"from": "human", "value": "<image>\nWhat is it?"})";
  const std::string gpt = R"({"from": "gpt", "value": "A thing."})";
  const std::string good_llava = R"({"id": "g", "image": "a.png", "conversations": [)" + human + ", " + gpt + "]}";
  struct bad_case {
    std::string name;
    std::string rows;  // a JSON array
    std::string format;
    std::vector<std::string> message;
  };
  const std::string png_b64 = base64(slurp(data / "a.png"));
  const std::string bad_b64 = png_b64.substr(0, 40) + "*" + png_b64.substr(40);
  const std::vector<bad_case> cases{
      {"llava_two_images.json", "[" + good_llava + R"(, {"id": "m", "image": ["a.png", "a.png"], "conversations": [)" + human + "]}]",
       "auto", {"item 1", "id 'm'", "field 'image'", "2 images"}},
      {"llava_two_placeholders.json",
       R"([{"id": "p", "image": "a.png", "conversations": [{"from": "human", "value": "<image><image> Compare."}]}])", "auto",
       {"item 0", "field 'conversations[0]'", "2 image placeholders"}},
      {"llava_no_human.json", "[" + good_llava + R"(, {"id": "n", "image": "a.png", "conversations": [)" + gpt + "]}]", "auto",
       {"llava_no_human.json", "item 1", "field 'conversations'", "no human/user turn"}},
      {"llava_two_turns.json",
       R"([{"id": "t", "image": "a.png", "conversations": [)" + human + "," + gpt + "," + human + "," + gpt + "]}]", "auto",
       {"item 0", "field 'conversations[2]'", "second human/user turn"}},
      {"llava_bad_role.json", R"([{"id": "r", "image": "a.png", "conversations": [{"from": "robot", "value": "x"}]}])", "auto",
       {"item 0", "field 'conversations[0].from'", "'robot'"}},
      {"llava_no_image.json", R"([{"id": "x", "conversations": [)" + human + "]}]", "llava",
       {"item 0", "missing field 'image'"}},
      {"sharegpt_system.jsonl",
       R"([{"id": "s", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"}], "images": ["a.png"]}])",
       "auto", {"item 0", "field 'messages[0]'", "system turn"}},
      {"sharegpt_two_images.jsonl",
       R"([{"id": "s2", "messages": [{"role": "user", "content": "Q?"}], "images": ["a.png", "a.png"]}])", "auto",
       {"item 0", "field 'images'", "2 images"}},
      {"sharegpt_missing_image.jsonl",
       R"([{"id": "s3", "messages": [{"role": "user", "content": "Q?"}], "images": ["nope.png"]}])", "auto",
       {"item 0", "id 's3'", "field 'images[0]'", "nope.png", "does not exist"}},
      {"hf_bad_base64.jsonl", R"([{"idx": 3, "image": {"bytes": ")" + bad_b64 + R"(", "path": "a.png"}, "question": "Q?"}])",
       "auto", {"hf_bad_base64.jsonl", "item 0", "field 'image.bytes'", "not valid base64", "'*'"}},
      {"hf_not_an_image.jsonl",
       R"([{"idx": 4, "image": {"bytes": ")" + base64("not a picture") + R"(", "path": "a.png"}, "question": "Q?"}])", "auto",
       {"item 0", "id '4'", "field 'image.bytes'", "does not decode"}},
      {"hf_no_question.jsonl", R"([{"idx": 5, "image": {"bytes": ")" + png_b64 + R"("}, "answer": "A"}])", "hf",
       {"item 0", "'question' or 'prompt'"}},
      {"hf_empty_image.jsonl", R"([{"idx": 6, "image": {"bytes": null, "path": null}, "question": "Q?"}])", "auto",
       {"item 0", "field 'image'", "neither 'bytes' nor a 'path'"}},
      {"unknown.jsonl", R"([{"text": "hello", "label": 1}])", "auto",
       {"unknown.jsonl", "item 0", "cannot tell the input format", "'label'", "'text'", "--input-format"}},
      {"consr_as_llava.jsonl", R"([{"id": "c", "image": "a.png", "prompt": "Q?"}])", "llava",
       {"item 0", "missing field 'conversations'"}},
      {"mixed.jsonl", "[" + good_llava + R"(, {"id": "c", "image": "a.png", "prompt": "Q?"}])", "auto",
       {"item 1", "missing field 'conversations'", "input format llava"}},
      {"llava_empty_question.json",
       R"([{"id": "e", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\n "}]}])", "auto",
       {"item 0", "the question is empty"}},
  };
  for (const auto& c : cases) {
    const json rows = json::parse(c.rows);
    write_text(data / c.name, c.name.find(".jsonl") != std::string::npos ? jsonl(rows.get<std::vector<json>>()) : rows.dump());
    cp::options o = options_for(data / c.name, s.path / "out");
    o.input_format = c.format;
    const std::string e = thrown([&] { (void)cp::load_items(o); });
    INFO(c.name << ": " << e);
    CHECK(e.find((data / c.name).string()) != std::string::npos);
    for (const auto& part : c.message) CHECK(e.find(part) != std::string::npos);
  }
  CHECK(!fs::exists(s.path / "out"));  // nothing written for a failed input

  SECTION("the options") {
    write_text(data / "good.json", "[" + good_llava + "]");
    cp::options o = options_for(data / "good.json", s.path / "out");
    o.input_format = "alpaca";
    CHECK_THAT(thrown([&] { cp::validate_options(o); }), Catch::Contains("--input-format") && Catch::Contains("alpaca"));
    CHECK_THAT(thrown([&] { (void)cp::parse_command_line(3, std::vector<const char*>{"p", "--input-format", "alpaca"}.data()); }),
               Catch::Contains("--input-format"));
    o.input_format = "auto";
    o.image_folder = (s.path / "no_such_dir").string();
    CHECK_THAT(thrown([&] { (void)cp::load_items(o); }), Catch::Contains("--image-folder") && Catch::Contains("no_such_dir"));
    const cp::options parsed = cp::parse_command_line(
        5, std::vector<const char*>{"p", "--input-format", "llava", "--image-folder", "/data/images"}.data());
    CHECK(parsed.input_format == "llava");
    CHECK(parsed.image_folder == "/data/images");
  }
}

TEST_CASE("input formats: the describe stage sees the same images from embedded bytes as from the files",
          "[input][run]") {
  // The tiny Qwen2.5-VL fixture describes the two images from a consr JSONL and from an RLAIF-V-style
  // export with the images embedded: the token ids must be identical (same pixels, same item order
  // and seed), only the image paths differ.
  scratch_dir s;
  std::vector<json> consr_rows, hf_rows;
  for (const auto& e : examples) {
    consr_rows.push_back({{"id", e.id}, {"image", (fs::path(images_dir) / e.file).string()}, {"prompt", e.question}});
    hf_rows.push_back({{"idx", e.id},
                       {"image", {{"bytes", base64(slurp(fs::path(images_dir) / e.file))}, {"path", e.file}}},
                       {"question", e.question}});
  }
  write_text(s.path / "items.jsonl", jsonl(consr_rows));
  write_text(s.path / "rlaif_v.jsonl", jsonl(hf_rows));
  auto describe = [&](const std::string& input, const std::string& out) {
    cp::options o = options_for(s.path / input, s.path / out);
    o.target = cp::stage::describe;
    o.description_max_new_tokens = 6;
    std::ostringstream log;
    (void)cp::run_pipeline(o, log);
    return json::parse(slurp(s.path / out / "descriptions.json")).at("descriptions");
  };
  const json from_files = describe("items.jsonl", "out_files");
  const json from_bytes = describe("rlaif_v.jsonl", "out_bytes");
  REQUIRE(from_files.size() == 2);
  REQUIRE(from_bytes.size() == 2);
  for (std::size_t i = 0; i < 2; ++i) {
    INFO("image " << i);
    CHECK(from_bytes[i].at("token_ids") == from_files[i].at("token_ids"));
    CHECK(!from_files[i].at("token_ids").empty());
    const fs::path written = from_bytes[i].at("image").get<std::string>();
    CHECK(written.parent_path() == fs::absolute(s.path / "out_bytes" / "images").lexically_normal());
    CHECK(slurp(written) == slurp(fs::path(images_dir) / examples[i].file));
  }
}

TEST_CASE("input formats: the committed fixtures of tools/make_input_format_fixtures.py give the same items",
          "[input][fixtures]") {
  // tests/fixtures/input_formats/: two rows with RLAIF-V's schema, exported from a datasets.Dataset
  // to JSONL with the PNG bytes base64-encoded (pandas' encoder: '/' as '\/', non-ASCII as \uXXXX),
  // and the same rows as a LLaVA JSON (image folder images/), LLaMA-Factory sharegpt JSONL and our
  // own JSONL. The expected ids and prompts are the script's rows, written here again; the pixels
  // are checked against the source PNGs and against PIL's decoding of them (pil_reference.safetensors).
  const fs::path dir = fs::path(CONSR_FIXTURES_DIR) / "input_formats";
  struct expected_item {
    std::string id, prompt, file, pil_key;
  };
  const std::vector<expected_item> expected{
      {"rlaif_v-0", "What is shown in this gray/white picture?", "qwen_b_gray_70x45.png", "decoded.qwen_b_gray"},
      {"rlaif_v-1", "Is the \"main\" colour smooth \xE2\x80\x94 yes or no?", "qwen_a_101x159.png", "decoded.qwen_a"}};
  const consr_runtime::safetensors_file pil(images_dir + "/pil_reference.safetensors");

  // The export is what datasets writes, not a hand-made file: RLAIF-V's columns, escaped slashes.
  const std::string export_text = slurp(dir / "rlaif_v.jsonl");
  CHECK(export_text.find("\\/") != std::string::npos);
  CHECK(export_text.find("\\u2014") != std::string::npos);
  const json first = json::parse(export_text.substr(0, export_text.find('\n')));
  for (const char* key : {"ds_name", "image", "question", "chosen", "rejected", "origin_dataset", "origin_split", "idx",
                          "image_path"})
    CHECK(first.contains(key));
  CHECK(first.size() == 9);
  CHECK(first.at("image").at("path") == "qwen_b_gray_70x45.png");

  scratch_dir s;
  const fs::path out = s.path / "out";
  struct file_case {
    const char* file;
    const char* format;
    bool image_folder;  // LLaVA: paths relative to --image-folder
    bool embedded;      // Hugging Face export: images written under --out/images
  };
  std::vector<std::string> hashes;
  for (const file_case& c : {file_case{"consr.jsonl", "consr", false, false}, file_case{"llava.json", "llava", true, false},
                             file_case{"sharegpt.jsonl", "sharegpt", false, false},
                             file_case{"rlaif_v.jsonl", "hf", false, true}}) {
    for (const char* format : {"auto", c.format}) {
      INFO(c.file << " as --input-format " << format);
      cp::options o = options_for(dir / c.file, out);
      o.input_format = format;
      if (c.image_folder) o.image_folder = (dir / "images").string();
      const std::vector<cp::item> items = cp::load_items(o);
      REQUIRE(items.size() == expected.size());
      for (std::size_t i = 0; i < items.size(); ++i) {
        INFO("item " << i);
        const fs::path source = fs::path(images_dir) / expected[i].file;
        CHECK(items[i].id == expected[i].id);
        CHECK(items[i].prompt == expected[i].prompt);
        const fs::path image = items[i].image;
        CHECK(image.parent_path() == (c.embedded ? fs::absolute(out / "images") : dir / "images").lexically_normal());
        CHECK(slurp(image) == slurp(source));  // the PNG's bytes, through base64 for the export
        const consr_runtime::rgb_image decoded = consr_runtime::load_image(image.string());
        CHECK(torch::equal(decoded.pixels, consr_runtime::load_image(source.string()).pixels));
        CHECK(torch::equal(decoded.pixels, pil.load(expected[i].pil_key)));
        hashes.push_back(items[i].image_hash);
      }
    }
  }
  REQUIRE(hashes.size() == 16);
  for (std::size_t k = 2; k < hashes.size(); ++k) CHECK(hashes[k] == hashes[k % 2]);
  CHECK(hashes[0] != hashes[1]);
}
