// Image decoding and PIL-exact resampling against Pillow's own outputs, saved by
// tools/make_model_fixtures.py in tests/fixtures/models/images/ and tools/make_pil_image_fixtures.py
// in tests/fixtures/images_pil/.
#include "runtime_test_support.hpp"

#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "consr_runtime/error.hpp"
#include "consr_runtime/image.hpp"
#include "consr_runtime/safetensors.hpp"

using runtime_test::read_json;

namespace {

const std::string images_dir = runtime_test::models_dir + "/images";

std::vector<std::uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  return std::vector<std::uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::int64_t max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kInt32) - b.to(torch::kInt32)).abs().max().item<std::int32_t>();
}

bool message_contains(const std::exception& e, const std::string& part) {
  return std::string(e.what()).find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("decoded PNGs equal transformers' convert_to_rgb(PIL.Image.open(file))", "[image]") {
  const auto meta = read_json(images_dir + "/images.json");
  consr_runtime::safetensors_file ref(images_dir + "/pil_reference.safetensors");
  for (const char* key : {"qwen_a", "qwen_b_gray", "rgba", "gray_alpha", "palette"}) {
    INFO("image " << key);
    const std::string file = images_dir + "/" + meta["images"][key].get<std::string>();
    const auto img = consr_runtime::load_image(file);
    const auto expected = ref.load(std::string("decoded.") + key);
    REQUIRE(img.pixels.sizes() == expected.sizes());
    CHECK(img.pixels.is_contiguous());
    CHECK(torch::equal(img.pixels, expected));
  }
}

TEST_CASE("every kind of JPEG and PNG decodes bit-identically to PIL (transformers' convert_to_rgb)", "[image]") {
  // tests/fixtures/images_pil/ from tools/make_pil_image_fixtures.py (Pillow 13, libjpeg-turbo 3.x):
  // baseline / progressive JPEG in 4:4:4, 4:2:2, 4:2:0, grayscale, CMYK; PNG in 1/2/4/8/16-bit gray,
  // 16-bit RGB / RGBA / gray+alpha, palettes with alpha, tRNS colour keys.
  const std::string dir = std::string(CONSR_FIXTURES_DIR) + "/images_pil";
  const auto meta = read_json(dir + "/images.json");
  consr_runtime::safetensors_file ref(dir + "/reference.safetensors");
  REQUIRE(meta["images"].size() >= 25);
  for (const auto& item : meta["images"].items()) {
    const auto& info = item.value();
    INFO(item.key() << ": " << info["kind"].get<std::string>() << " (PIL mode " << info["pil_mode"].get<std::string>()
                    << ", " << info["file"].get<std::string>() << ")");
    const auto img = consr_runtime::load_image(dir + "/" + info["file"].get<std::string>());
    const auto expected = ref.load(item.key());
    REQUIRE(img.pixels.sizes() == expected.sizes());
    const auto diff = max_abs_diff(img.pixels, expected);
    INFO("max abs difference " << diff << "/255");
    CHECK(diff == 0);
  }
}

TEST_CASE("the older fixtures' JPEG decodes bit-identically to PIL", "[image]") {
  const auto meta = read_json(images_dir + "/images.json");
  consr_runtime::safetensors_file ref(images_dir + "/pil_reference.safetensors");
  const auto img = consr_runtime::load_image(images_dir + "/" + meta["images"]["jpeg"].get<std::string>());
  const auto expected = ref.load("decoded.jpeg");
  REQUIRE(img.pixels.sizes() == expected.sizes());
  CHECK(max_abs_diff(img.pixels, expected) == 0);
}

TEST_CASE("decode_image refuses images over the pixel limit before decoding them", "[image]") {
  const std::string dir = std::string(CONSR_FIXTURES_DIR) + "/images_pil";
  for (const char* file : {"baseline_420_q85.jpg", "palette8_trns.png"}) {
    INFO(file);
    const auto bytes = read_bytes(dir + "/" + file);
    const auto img = consr_runtime::decode_image(bytes.data(), bytes.size(), file);
    const std::int64_t pixels = img.height() * img.width();
    CHECK(consr_runtime::decode_image(bytes.data(), bytes.size(), file, pixels).height() == img.height());
    try {
      consr_runtime::decode_image(bytes.data(), bytes.size(), file, pixels - 1);
      FAIL("no exception");
    } catch (const consr_runtime::runtime_error& e) {
      CHECK(message_contains(e, file));
      CHECK(message_contains(e, "limit"));
    }
  }
}

TEST_CASE("decode_image works from memory and names the source on failure", "[image]") {
  const auto meta = read_json(images_dir + "/images.json");
  const std::string file = images_dir + "/" + meta["images"]["qwen_a"].get<std::string>();
  auto bytes = read_bytes(file);
  const auto from_memory = consr_runtime::decode_image(bytes.data(), bytes.size(), "qwen_a");
  CHECK(torch::equal(from_memory.pixels, consr_runtime::load_image(file).pixels));
  CHECK(from_memory.height() == 101);
  CHECK(from_memory.width() == 159);

  // Truncated PNG.
  try {
    consr_runtime::decode_image(bytes.data(), bytes.size() / 2, "half.png");
    FAIL("no exception");
  } catch (const consr_runtime::runtime_error& e) {
    CHECK(message_contains(e, "half.png"));
  }
  // Not an image at all.
  const std::string text = "this is not an image";
  try {
    consr_runtime::decode_image(reinterpret_cast<const std::uint8_t*>(text.data()), text.size(), "notes.txt");
    FAIL("no exception");
  } catch (const consr_runtime::runtime_error& e) {
    CHECK(message_contains(e, "notes.txt"));
    CHECK(message_contains(e, "not a decodable PNG or JPEG"));
  }
  // Corrupted bytes in the middle of the PNG data stream.
  auto corrupt = bytes;
  for (std::size_t i = 100; i < corrupt.size() && i < 400; ++i) corrupt[i] ^= 0x5a;
  CHECK_THROWS_AS(consr_runtime::decode_image(corrupt.data(), corrupt.size(), "corrupt.png"), consr_runtime::runtime_error);
  CHECK_THROWS_AS(consr_runtime::decode_image(nullptr, 0, "empty"), consr_runtime::runtime_error);
  try {
    consr_runtime::load_image(images_dir + "/does_not_exist.png");
    FAIL("no exception");
  } catch (const consr_runtime::runtime_error& e) {
    CHECK(message_contains(e, "does_not_exist.png"));
  }
  // A truncated JPEG is an error naming the file, as in PIL ("image file is truncated"), at any cut.
  const auto jpeg = read_bytes(images_dir + "/" + meta["images"]["jpeg"].get<std::string>());
  for (std::size_t cut : {std::size_t{2}, std::size_t{20}, jpeg.size() / 3, jpeg.size() - 2}) {
    INFO("cut at " << cut << " of " << jpeg.size());
    try {
      consr_runtime::decode_image(jpeg.data(), cut, "cut.jpg");
      FAIL("no exception");
    } catch (const consr_runtime::runtime_error& e) {
      CHECK(message_contains(e, "cut.jpg"));
    }
  }
}

TEST_CASE("resize_uint8 equals PIL Image.resize for bicubic and bilinear, up and down", "[image]") {
  const auto meta = read_json(images_dir + "/images.json");
  consr_runtime::safetensors_file ref(images_dir + "/pil_reference.safetensors");
  const auto& cases = meta["cases"]["resize"];
  REQUIRE(cases.size() >= 10);
  for (const auto& c : cases) {
    const auto source = consr_runtime::load_image(images_dir + "/" + c["source"].get<std::string>());
    const auto h = c["height"].get<std::int64_t>(), w = c["width"].get<std::int64_t>();
    const auto filter = c["filter"].get<std::string>() == "bicubic" ? consr_runtime::resample_filter::bicubic
                                                                    : consr_runtime::resample_filter::bilinear;
    INFO(c["source"].get<std::string>() << " -> " << h << "x" << w << " " << c["filter"].get<std::string>());
    const auto out = consr_runtime::resize(source, h, w, filter);
    const auto expected = ref.load(c["key"].get<std::string>());
    REQUIRE(out.pixels.sizes() == expected.sizes());
    CHECK(max_abs_diff(out.pixels, expected) == 0);
  }
}

TEST_CASE("resize_uint8 handles other channel counts and strided input", "[image]") {
  // One channel of an RGB resize equals the resize of that channel alone (PIL resamples bands
  // independently), and a non-contiguous view gives the same result as its contiguous copy.
  const auto meta = read_json(images_dir + "/images.json");
  const auto src = consr_runtime::load_image(images_dir + "/" + meta["images"]["noise"].get<std::string>());
  const auto rgb = consr_runtime::resize_uint8(src.pixels, 20, 70, consr_runtime::resample_filter::bicubic);
  const auto green = consr_runtime::resize_uint8(src.pixels.narrow(2, 1, 1), 20, 70, consr_runtime::resample_filter::bicubic);
  CHECK(torch::equal(rgb.narrow(2, 1, 1), green));
  const auto flipped = src.pixels.transpose(0, 1);  // [W, H, 3], non-contiguous
  CHECK(torch::equal(consr_runtime::resize_uint8(flipped, 9, 11, consr_runtime::resample_filter::bilinear),
                     consr_runtime::resize_uint8(flipped.contiguous(), 9, 11, consr_runtime::resample_filter::bilinear)));
  // A constant image stays constant (coefficients sum to one in fixed point).
  const auto flat = torch::full({17, 23, 3}, 200, torch::kUInt8);
  CHECK(torch::equal(consr_runtime::resize_uint8(flat, 40, 5, consr_runtime::resample_filter::bicubic),
                     torch::full({40, 5, 3}, 200, torch::kUInt8)));
}

TEST_CASE("image arguments are validated", "[image]") {
  using consr_runtime::resample_filter;
  CHECK_THROWS_AS(consr_runtime::make_rgb_image(torch::zeros({4, 4, 3}, torch::kFloat)), consr_runtime::runtime_error);
  CHECK_THROWS_AS(consr_runtime::make_rgb_image(torch::zeros({4, 4, 4}, torch::kUInt8)), consr_runtime::runtime_error);
  CHECK_THROWS_AS(consr_runtime::make_rgb_image(torch::zeros({0, 4, 3}, torch::kUInt8)), consr_runtime::runtime_error);
  try {
    consr_runtime::make_rgb_image(torch::zeros({4, 4}, torch::kUInt8), "photo");
    FAIL("no exception");
  } catch (const consr_runtime::runtime_error& e) {
    CHECK(message_contains(e, "'photo'"));
  }
  const auto img = torch::zeros({4, 4, 3}, torch::kUInt8);
  CHECK_THROWS_AS(consr_runtime::resize_uint8(img, 0, 4, resample_filter::bicubic), consr_runtime::runtime_error);
  CHECK_THROWS_AS(consr_runtime::resize_uint8(img, 4, -1, resample_filter::bicubic), consr_runtime::runtime_error);
  CHECK_THROWS_AS(consr_runtime::resize_uint8(img.to(torch::kInt16), 4, 4, resample_filter::bicubic),
                  consr_runtime::runtime_error);
  CHECK(consr_runtime::resample_filter_from_pil(3) == resample_filter::bicubic);
  CHECK(consr_runtime::resample_filter_from_pil(2) == resample_filter::bilinear);
  CHECK_THROWS_AS(consr_runtime::resample_filter_from_pil(1), consr_runtime::runtime_error);
}
