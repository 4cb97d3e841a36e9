// Image processors of Qwen2.5-VL and LLaVA-OneVision. See consr_runtime/processors.hpp.
#include "consr_runtime/processors.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "consr_runtime/config.hpp"
#include "consr_runtime/error.hpp"
#include "attention_util.hpp"
#include "python_math.hpp"

namespace consr_runtime {
namespace {

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  throw runtime_error("consr_runtime::" + where + ": " + what);
}

nlohmann::json parse_object(const std::string& text, const std::string& source, const std::string& where) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(where, "'" + source + "' is not valid JSON: " + e.what());
  }
  if (!j.is_object()) fail(where, "'" + source + "' must hold a JSON object");
  return j;
}

// The value of `key` in `j`, or nullptr when it is absent or null (the caller's default applies).
// Throws naming the key and `source` when the value is not `kind` (as `is_kind` tells).
const nlohmann::json* find_typed(const nlohmann::json& j, const char* key, bool (nlohmann::json::*is_kind)() const,
                                 const char* kind, const std::string& source, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  if (!((*it).*is_kind)()) fail(where, "'" + source + "': key '" + key + "' must be " + kind);
  return &*it;
}

std::int64_t get_int(const nlohmann::json& j, const char* key, std::int64_t fallback, const std::string& source,
                     const std::string& where, std::int64_t min_value = 1) {
  const nlohmann::json* found = find_typed(j, key, &nlohmann::json::is_number_integer, "an integer", source, where);
  if (!found) return fallback;
  const auto v = found->get<std::int64_t>();
  if (v < min_value)
    fail(where, "'" + source + "': key '" + key + "' = " + std::to_string(v) + " must be >= " + std::to_string(min_value));
  return v;
}

bool get_bool(const nlohmann::json& j, const char* key, bool fallback, const std::string& source,
              const std::string& where) {
  const nlohmann::json* found = find_typed(j, key, &nlohmann::json::is_boolean, "a boolean", source, where);
  return found ? found->get<bool>() : fallback;
}

double get_double(const nlohmann::json& j, const char* key, double fallback, const std::string& source,
                  const std::string& where) {
  const nlohmann::json* found = find_typed(j, key, &nlohmann::json::is_number, "a number", source, where);
  return found ? found->get<double>() : fallback;
}

std::array<double, 3> get_triple(const nlohmann::json& j, const char* key, std::array<double, 3> fallback,
                                 const std::string& source, const std::string& where, bool positive) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  std::array<double, 3> out{};
  if (it->is_number()) {
    out.fill(it->get<double>());
  } else if (it->is_array() && it->size() == 3) {
    for (std::size_t i = 0; i < 3; ++i) {
      if (!(*it)[i].is_number()) fail(where, "'" + source + "': key '" + key + "' must hold numbers");
      out[i] = (*it)[i].get<double>();
    }
  } else {
    fail(where, "'" + source + "': key '" + key + "' must be a number or a list of 3 numbers");
  }
  for (double v : out)
    if (!std::isfinite(v) || (positive && !(v > 0)))
      fail(where, "'" + source + "': key '" + key + "' has an invalid value " + std::to_string(v));
  return out;
}

resample_filter get_resample(const nlohmann::json& j, const std::string& source, const std::string& where) {
  auto it = j.find("resample");
  if (it == j.end() || it->is_null()) return resample_filter::bicubic;
  if (!it->is_number_integer()) fail(where, "'" + source + "': key 'resample' must be an integer PIL filter code");
  try {
    return resample_filter_from_pil(it->get<std::int64_t>(), "resample");
  } catch (const runtime_error& e) {
    fail(where, "'" + source + "': " + e.what());
  }
}

// (x * rescale in double, stored as float) then (x - mean) / std in float: numpy's rescale and
// normalize in transformers.image_transforms, giving bit-identical values.
torch::Tensor rescale_normalize(const torch::Tensor& hwc, double rescale_factor, const std::array<double, 3>& mean,
                                const std::array<double, 3>& stdev, bool do_rescale, bool do_normalize) {
  auto chw = hwc.permute({2, 0, 1});
  torch::Tensor x = do_rescale ? (chw.to(torch::kDouble) * rescale_factor).to(torch::kFloat) : chw.to(torch::kFloat);
  if (do_normalize) {
    const auto m = torch::tensor({static_cast<float>(mean[0]), static_cast<float>(mean[1]), static_cast<float>(mean[2])},
                                 torch::kFloat).view({3, 1, 1});
    const auto s = torch::tensor({static_cast<float>(stdev[0]), static_cast<float>(stdev[1]), static_cast<float>(stdev[2])},
                                 torch::kFloat).view({3, 1, 1});
    x = (x - m) / s;
  }
  return x.contiguous();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Qwen2-VL
// ---------------------------------------------------------------------------------------------

qwen2_vl_processor_config parse_qwen2_vl_processor_config(const std::string& json_text, const std::string& source) {
  const std::string where = "parse_qwen2_vl_processor_config";
  const auto j = parse_object(json_text, source, where);
  qwen2_vl_processor_config c;
  c.image_mean = get_triple(j, "image_mean", c.image_mean, source, where, false);
  c.image_std = get_triple(j, "image_std", c.image_std, source, where, true);
  c.rescale_factor = get_double(j, "rescale_factor", c.rescale_factor, source, where);
  // As Qwen2VLImageProcessor.__init__: `size` first, then min_pixels / max_pixels override it.
  if (auto it = j.find("size"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) fail(where, "'" + source + "': key 'size' must be an object");
    c.min_pixels = get_int(*it, "shortest_edge", c.min_pixels, source, where);
    c.max_pixels = get_int(*it, "longest_edge", c.max_pixels, source, where);
  }
  c.min_pixels = get_int(j, "min_pixels", c.min_pixels, source, where);
  c.max_pixels = get_int(j, "max_pixels", c.max_pixels, source, where);
  if (c.min_pixels > c.max_pixels)
    fail(where, "'" + source + "': min_pixels " + std::to_string(c.min_pixels) + " exceeds max_pixels " +
                    std::to_string(c.max_pixels));
  c.patch_size = get_int(j, "patch_size", c.patch_size, source, where);
  c.temporal_patch_size = get_int(j, "temporal_patch_size", c.temporal_patch_size, source, where);
  c.merge_size = get_int(j, "merge_size", c.merge_size, source, where);
  c.resample = get_resample(j, source, where);
  c.do_resize = get_bool(j, "do_resize", c.do_resize, source, where);
  c.do_rescale = get_bool(j, "do_rescale", c.do_rescale, source, where);
  c.do_normalize = get_bool(j, "do_normalize", c.do_normalize, source, where);
  if (!std::isfinite(c.rescale_factor) || !(c.rescale_factor > 0))
    fail(where, "'" + source + "': key 'rescale_factor' must be positive");
  return c;
}

std::pair<std::int64_t, std::int64_t> smart_resize(std::int64_t height, std::int64_t width, std::int64_t factor,
                                                   std::int64_t min_pixels, std::int64_t max_pixels) {
  const std::string where = "smart_resize";
  if (factor <= 0) fail(where, "argument 'factor' = " + std::to_string(factor) + " must be positive");
  if (min_pixels <= 0 || max_pixels <= 0)
    fail(where, "arguments 'min_pixels' / 'max_pixels' must be positive");
  if (height < 10 || width < 10)
    fail(where, "argument 'height' x 'width' = " + std::to_string(height) + " x " + std::to_string(width) +
                    ": the image is too small (both sides must be at least 10 pixels)");
  constexpr std::int64_t max_side = std::int64_t{1} << 24;  // keeps h*w and the doubles exact
  if (height > max_side || width > max_side)
    fail(where, "argument 'height' x 'width' = " + std::to_string(height) + " x " + std::to_string(width) +
                    " is too large");
  const double aspect = static_cast<double>(std::max(height, width)) / static_cast<double>(std::min(height, width));
  if (aspect > 200.0)
    fail(where, "argument 'height' x 'width' = " + std::to_string(height) + " x " + std::to_string(width) +
                    ": absolute aspect ratio must be at most 200, got " + std::to_string(aspect));
  const double f = static_cast<double>(factor);
  // Python's round() on a float is round-half-to-even: nearbyint under the default rounding mode.
  std::int64_t h_bar = static_cast<std::int64_t>(std::nearbyint(static_cast<double>(height) / f)) * factor;
  std::int64_t w_bar = static_cast<std::int64_t>(std::nearbyint(static_cast<double>(width) / f)) * factor;
  const double area = static_cast<double>(height * width);
  if (h_bar * w_bar > max_pixels) {
    const double beta = std::sqrt(area / static_cast<double>(max_pixels));
    h_bar = std::max(factor, static_cast<std::int64_t>(std::floor(static_cast<double>(height) / beta / f)) * factor);
    w_bar = std::max(factor, static_cast<std::int64_t>(std::floor(static_cast<double>(width) / beta / f)) * factor);
  } else if (h_bar * w_bar < min_pixels) {
    const double beta = std::sqrt(static_cast<double>(min_pixels) / area);
    h_bar = static_cast<std::int64_t>(std::ceil(static_cast<double>(height) * beta / f)) * factor;
    w_bar = static_cast<std::int64_t>(std::ceil(static_cast<double>(width) * beta / f)) * factor;
  }
  return {h_bar, w_bar};
}

qwen2_vl_image_processor::qwen2_vl_image_processor(qwen2_vl_processor_config config) : config_(std::move(config)) {
  if (config_.patch_size <= 0 || config_.merge_size <= 0 || config_.temporal_patch_size <= 0)
    fail("qwen2_vl_image_processor", "argument 'config': patch_size, merge_size and temporal_patch_size must be positive");
  if (config_.min_pixels <= 0 || config_.max_pixels < config_.min_pixels)
    fail("qwen2_vl_image_processor", "argument 'config': need 0 < min_pixels <= max_pixels");
}

qwen2_vl_image_processor qwen2_vl_image_processor::from_file(const std::string& path) {
  // transformers 5.x processor_config.json (nested image_processor) or the legacy preprocessor_config.json
  const image_processor_settings s = load_image_processor_settings(path);
  return qwen2_vl_image_processor(parse_qwen2_vl_processor_config(s.json_text, s.source));
}

std::pair<std::int64_t, std::int64_t> qwen2_vl_image_processor::resized_size(std::int64_t height,
                                                                             std::int64_t width) const {
  return smart_resize(height, width, config_.patch_size * config_.merge_size, config_.min_pixels, config_.max_pixels);
}

torch::Tensor qwen2_vl_image_processor::normalize(const rgb_image& image) const {
  const auto img = make_rgb_image(image.pixels, "image");
  auto [h, w] = resized_size(img.height(), img.width());
  torch::Tensor pixels = img.pixels;
  if (config_.do_resize) pixels = resize_uint8(pixels, h, w, config_.resample);
  return rescale_normalize(pixels, config_.rescale_factor, config_.image_mean, config_.image_std, config_.do_rescale,
                           config_.do_normalize);
}

qwen2_vl_packed qwen2_vl_image_processor::pack(const std::vector<torch::Tensor>& normalized) const {
  const std::int64_t p = config_.patch_size, m = config_.merge_size, tp = config_.temporal_patch_size;
  const std::int64_t unit = p * m;
  std::vector<torch::Tensor> rows;
  std::vector<std::int64_t> grid;
  qwen2_vl_packed out;
  for (std::size_t i = 0; i < normalized.size(); ++i) {
    const auto& x = normalized[i];
    const std::string arg = "normalized[" + std::to_string(i) + "]";
    if (!x.defined() || x.scalar_type() != torch::kFloat || x.dim() != 3 || x.size(0) != 3)
      fail("qwen2_vl_image_processor::pack", "argument '" + arg + "' must be a float32 tensor [3, H, W]");
    if (x.size(1) <= 0 || x.size(2) <= 0 || x.size(1) % unit != 0 || x.size(2) % unit != 0)
      fail("qwen2_vl_image_processor::pack", "argument '" + arg + "' has size " + c10::str(x.sizes()) +
                                                 "; H and W must be positive multiples of patch_size * merge_size = " +
                                                 std::to_string(unit));
    const std::int64_t c = x.size(0), gh = x.size(1) / p, gw = x.size(2) / p;
    // (C, gh/m, m, P, gw/m, m, P) -> (gh/m, gw/m, m, m, C, P, P), then the still image repeated to
    // `tp` frames (the corruption is applied before, so both frames carry the same noise).
    auto patches = x.reshape({c, gh / m, m, p, gw / m, m, p}).permute({1, 4, 2, 5, 0, 3, 6}).unsqueeze(5);
    patches = patches.expand({gh / m, gw / m, m, m, c, tp, p, p});
    rows.push_back(patches.reshape({gh * gw, c * tp * p * p}));
    grid.insert(grid.end(), {1, gh, gw});
    out.num_image_tokens.push_back(gh * gw / (m * m));
  }
  if (rows.empty()) fail("qwen2_vl_image_processor::pack", "argument 'normalized' is empty");
  out.pixel_values = torch::cat(rows, 0).contiguous();
  out.image_grid_thw = torch::tensor(grid, torch::kLong).view({static_cast<std::int64_t>(rows.size()), 3});
  return out;
}

qwen2_vl_packed qwen2_vl_image_processor::pack(const torch::Tensor& normalized) const {
  return pack(std::vector<torch::Tensor>{normalized});
}

qwen2_vl_packed qwen2_vl_image_processor::operator()(const std::vector<rgb_image>& images) const {
  std::vector<torch::Tensor> normalized;
  normalized.reserve(images.size());
  for (const auto& image : images) normalized.push_back(normalize(image));
  return pack(normalized);
}

// ---------------------------------------------------------------------------------------------
// LLaVA-OneVision
// ---------------------------------------------------------------------------------------------

namespace {

std::vector<std::array<std::int64_t, 2>> parse_pinpoints(const nlohmann::json& v, const std::string& source,
                                                         const std::string& where) {
  if (!v.is_array() || v.empty()) fail(where, "'" + source + "': key 'image_grid_pinpoints' must be a non-empty list");
  std::vector<std::array<std::int64_t, 2>> out;
  for (const auto& p : v) {
    if (!p.is_array() || p.size() != 2 || !p[0].is_number_integer() || !p[1].is_number_integer() ||
        p[0].get<std::int64_t>() <= 0 || p[1].get<std::int64_t>() <= 0)
      fail(where, "'" + source + "': key 'image_grid_pinpoints' must hold [height, width] pairs of positive integers");
    out.push_back({p[0].get<std::int64_t>(), p[1].get<std::int64_t>()});
  }
  return out;
}

std::vector<std::array<std::int64_t, 2>> default_pinpoints() {
  std::vector<std::array<std::int64_t, 2>> out;
  for (std::int64_t a = 1; a <= 6; ++a)
    for (std::int64_t b = 1; b <= 6; ++b) out.push_back({384 * a, 384 * b});
  return out;
}

}  // namespace

std::int64_t anyres_max_patches(const std::string& aspect) {
  const std::string where = "anyres_max_patches";
  // HF: int(vision_aspect_ratio.strip("anyres_max_")).
  const std::string prefix = "anyres_max_";
  if (aspect.compare(0, prefix.size(), prefix) != 0 || aspect.size() == prefix.size())
    fail(where, "argument 'vision_aspect_ratio' = '" + aspect + "' is not of the form anyres_max_<n>");
  std::int64_t n = 0;
  for (std::size_t i = prefix.size(); i < aspect.size(); ++i) {
    if (aspect[i] < '0' || aspect[i] > '9' || n > 1000000)
      fail(where, "argument 'vision_aspect_ratio' = '" + aspect + "' is not of the form anyres_max_<n>");
    n = n * 10 + (aspect[i] - '0');
  }
  if (n <= 0) fail(where, "vision_aspect_ratio '" + aspect + "' must have a positive maximum");
  return n;
}

namespace {

// The best-resolution resize size (transformers.image_processing_utils.get_patch_output_size).
std::array<std::int64_t, 2> patch_output_size(std::int64_t height, std::int64_t width, std::int64_t target_h,
                                              std::int64_t target_w) {
  const double scale_w = static_cast<double>(target_w) / static_cast<double>(width);
  const double scale_h = static_cast<double>(target_h) / static_cast<double>(height);
  if (scale_w < scale_h) {
    const auto h = static_cast<std::int64_t>(std::ceil(static_cast<double>(height) * scale_w));
    return {std::min(h, target_h), target_w};
  }
  const auto w = static_cast<std::int64_t>(std::ceil(static_cast<double>(width) * scale_h));
  return {target_h, std::min(w, target_w)};
}

}  // namespace

llava_onevision_processor_config parse_llava_onevision_processor_config(const std::string& json_text,
                                                                        const std::string& source) {
  const std::string where = "parse_llava_onevision_processor_config";
  const auto j = parse_object(json_text, source, where);
  llava_onevision_processor_config c;
  c.image_mean = get_triple(j, "image_mean", {0.48145466, 0.4578275, 0.40821073}, source, where, false);
  c.image_std = get_triple(j, "image_std", {0.26862954, 0.26130258, 0.27577711}, source, where, true);
  c.rescale_factor = get_double(j, "rescale_factor", c.rescale_factor, source, where);
  if (!std::isfinite(c.rescale_factor) || !(c.rescale_factor > 0))
    fail(where, "'" + source + "': key 'rescale_factor' must be positive");
  if (auto it = j.find("size"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) fail(where, "'" + source + "': key 'size' must be an object");
    if (it->contains("height") || it->contains("width")) {
      const auto h = get_int(*it, "height", 384, source, where), w = get_int(*it, "width", 384, source, where);
      if (h != w) fail(where, "'" + source + "': key 'size' must be square, got " + std::to_string(h) + "x" + std::to_string(w));
      c.tile_size = h;
    } else {
      c.tile_size = get_int(*it, "shortest_edge", 384, source, where);
    }
  }
  if (auto it = j.find("crop_size"); it != j.end() && !it->is_null() && get_bool(j, "do_center_crop", false, source, where)) {
    fail(where, "'" + source + "': do_center_crop is not supported by the LLaVA-OneVision processor port");
  }
  if (auto it = j.find("image_grid_pinpoints"); it != j.end() && !it->is_null())
    c.image_grid_pinpoints = parse_pinpoints(*it, source, where);
  else
    c.image_grid_pinpoints = default_pinpoints();
  c.resample = get_resample(j, source, where);
  c.do_rescale = get_bool(j, "do_rescale", c.do_rescale, source, where);
  c.do_normalize = get_bool(j, "do_normalize", c.do_normalize, source, where);
  if (!get_bool(j, "do_resize", true, source, where))
    fail(where, "'" + source + "': do_resize false is not supported (anyres tiling resizes)");
  return c;
}

std::array<std::int64_t, 2> select_best_resolution(std::int64_t height, std::int64_t width,
                                                   const std::vector<std::array<std::int64_t, 2>>& pinpoints) {
  if (height <= 0 || width <= 0)
    fail("select_best_resolution", "arguments 'height' and 'width' must be positive, got " + std::to_string(height) +
                                       " x " + std::to_string(width));
  if (pinpoints.empty()) fail("select_best_resolution", "argument 'pinpoints' is empty");
  std::array<std::int64_t, 2> best{0, 0};
  std::int64_t max_effective = 0;
  std::int64_t min_wasted = std::numeric_limits<std::int64_t>::max();
  bool found = false;
  for (const auto& p : pinpoints) {
    const std::int64_t ch = p[0], cw = p[1];
    if (ch <= 0 || cw <= 0) fail("select_best_resolution", "argument 'pinpoints' holds a non-positive size");
    const double scale = std::min(static_cast<double>(cw) / static_cast<double>(width),
                                  static_cast<double>(ch) / static_cast<double>(height));
    const auto dw = static_cast<std::int64_t>(static_cast<double>(width) * scale);
    const auto dh = static_cast<std::int64_t>(static_cast<double>(height) * scale);
    const std::int64_t effective = std::min(dw * dh, width * height);
    const std::int64_t wasted = cw * ch - effective;
    if (effective > max_effective || (effective == max_effective && wasted < min_wasted)) {
      max_effective = effective;
      min_wasted = wasted;
      best = {ch, cw};
      found = true;
    }
  }
  if (!found) best = pinpoints.front();  // HF would return None; every effective resolution was 0
  return best;
}

std::int64_t llava_onevision_num_image_tokens(std::int64_t height, std::int64_t width,
                                              const llava_onevision_processor_config& config, bool anyres) {
  const std::int64_t side = config.tile_size / config.vision_patch_size;  // 27 features per tile side
  const std::int64_t strategy = config.vision_feature_select_strategy == "default" ? 1 : 0;
  // processing_llava_onevision._expand_image_tokens: an image of a multi-image prompt gets
  // num_image_tokens (side²) + 1 for the image_newline, whatever its size.
  if (!anyres) return side * side + 1 - strategy;
  const auto best = select_best_resolution(height, width, config.image_grid_pinpoints);
  std::int64_t cur_h = side * (best[0] / config.tile_size);
  std::int64_t cur_w = side * (best[1] / config.tile_size);
  const double original_aspect = static_cast<double>(width) / static_cast<double>(height);
  const double current_aspect = static_cast<double>(cur_w) / static_cast<double>(cur_h);
  if (original_aspect > current_aspect) {
    const auto new_h = python_int(python_round(static_cast<double>(height) *
                                                   (static_cast<double>(cur_w) / static_cast<double>(width)), 7));
    cur_h -= python_floordiv_int(cur_h - new_h, 2) * 2;
  } else {
    const auto new_w = python_int(python_round(static_cast<double>(width) *
                                                   (static_cast<double>(cur_h) / static_cast<double>(height)), 7));
    cur_w -= python_floordiv_int(cur_w - new_w, 2) * 2;
  }
  std::int64_t unpadded = cur_h * cur_w, newline = cur_h;
  const double ratio = std::sqrt(static_cast<double>(cur_h * cur_w) /
                                 static_cast<double>(config.anyres_max_patches * side * side));
  if (ratio > 1.1) {
    const auto h = python_int(python_floordiv(static_cast<double>(cur_h), ratio));
    const auto w = python_int(python_floordiv(static_cast<double>(cur_w), ratio));
    unpadded = h * w;
    newline = h;
  }
  return unpadded + newline + side * side - strategy;
}

llava_onevision_image_processor::llava_onevision_image_processor(llava_onevision_processor_config config)
    : config_(std::move(config)) {
  const std::string where = "llava_onevision_image_processor";
  if (config_.tile_size <= 0 || config_.vision_patch_size <= 0 || config_.tile_size < config_.vision_patch_size)
    fail(where, "argument 'config': need 0 < vision_patch_size <= tile_size");
  if (config_.image_grid_pinpoints.empty()) fail(where, "argument 'config': image_grid_pinpoints is empty");
  for (const auto& p : config_.image_grid_pinpoints)
    if (p[0] <= 0 || p[1] <= 0 || p[0] % config_.tile_size != 0 || p[1] % config_.tile_size != 0)
      fail(where, "argument 'config': pinpoint [" + std::to_string(p[0]) + ", " + std::to_string(p[1]) +
                      "] is not a positive multiple of tile_size " + std::to_string(config_.tile_size));
  if (config_.vision_feature_select_strategy != "full" && config_.vision_feature_select_strategy != "default")
    fail(where, "argument 'config': vision_feature_select_strategy '" + config_.vision_feature_select_strategy +
                    "' is neither 'full' nor 'default'");
  if (config_.anyres_max_patches <= 0) fail(where, "argument 'config': anyres_max_patches must be positive");
}

llava_onevision_image_processor llava_onevision_image_processor::from_directory(const std::string& model_dir) {
  const std::string where = "llava_onevision_image_processor::from_directory";
  const image_processor_settings s = load_image_processor_settings(model_dir);
  auto c = parse_llava_onevision_processor_config(s.json_text, s.source);
  std::ifstream probe(model_dir + "/config.json");
  if (probe.good()) {
    const auto mc = load_model_config(model_dir);
    if (!mc.llava_onevision)
      fail(where, "'" + model_dir + "/config.json' is a '" + mc.model_type + "' config, not llava_onevision");
    const auto& lc = *mc.llava_onevision;
    if (!lc.image_grid_pinpoints.empty()) c.image_grid_pinpoints = lc.image_grid_pinpoints;
    c.vision_patch_size = lc.vision.patch_size;
    c.vision_feature_select_strategy = lc.vision_feature_select_strategy;
    c.anyres_max_patches = anyres_max_patches(lc.vision_aspect_ratio);
    if (lc.vision.image_size != c.tile_size)
      fail(where, "'" + model_dir + "': vision_config.image_size " + std::to_string(lc.vision.image_size) +
                      " differs from the processor's tile size " + std::to_string(c.tile_size));
  }
  return llava_onevision_image_processor(std::move(c));
}

std::int64_t llava_onevision_image_processor::num_tiles(std::int64_t height, std::int64_t width) const {
  const auto best = select_best_resolution(height, width, config_.image_grid_pinpoints);
  return 1 + (best[0] / config_.tile_size) * (best[1] / config_.tile_size);
}

torch::Tensor llava_onevision_image_processor::normalize(const rgb_image& image, bool anyres) const {
  const auto img = make_rgb_image(image.pixels, "image");
  const std::int64_t s = config_.tile_size;
  if (!anyres) {
    // LlavaOnevisionImageProcessor for batch_num_images > 1: pad_to_square with the background
    // colour tuple(int(x * 255) for x in image_mean), the image at offset (max - side) // 2, then the
    // resize to size; no tiles.
    const std::int64_t h = img.height(), w = img.width(), side = std::max(h, w);
    torch::Tensor square = img.pixels;
    if (h != w) {
      square = torch::empty({side, side, 3}, torch::kUInt8);
      for (std::int64_t c = 0; c < 3; ++c) {
        const double v = std::trunc(config_.image_mean[static_cast<std::size_t>(c)] * 255.0);  // Python int()
        square.select(2, c).fill_(static_cast<std::int64_t>(std::min(255.0, std::max(0.0, v))));
      }
      square.narrow(0, (side - h) / 2, h).narrow(1, (side - w) / 2, w).copy_(img.pixels);
    }
    return rescale_normalize(resize_uint8(square, s, s, config_.resample), config_.rescale_factor, config_.image_mean,
                             config_.image_std, config_.do_rescale, config_.do_normalize)
        .unsqueeze(0);
  }
  const auto best = select_best_resolution(img.height(), img.width(), config_.image_grid_pinpoints);
  const auto size = patch_output_size(img.height(), img.width(), best[0], best[1]);
  const auto resized = resize_uint8(img.pixels, size[0], size[1], config_.resample);
  // Centre padding with 0 in pixel space: top/left get (diff)//2, bottom/right the rest.
  auto padded = torch::zeros({best[0], best[1], 3}, torch::kUInt8);
  const std::int64_t top = (best[0] - size[0]) / 2, left = (best[1] - size[1]) / 2;
  padded.narrow(0, top, size[0]).narrow(1, left, size[1]).copy_(resized);
  std::vector<torch::Tensor> tiles;
  tiles.push_back(resize_uint8(img.pixels, s, s, config_.resample));  // the base image
  for (std::int64_t y = 0; y < best[0]; y += s)
    for (std::int64_t x = 0; x < best[1]; x += s) tiles.push_back(padded.narrow(0, y, s).narrow(1, x, s));
  std::vector<torch::Tensor> out;
  out.reserve(tiles.size());
  for (const auto& t : tiles)
    out.push_back(rescale_normalize(t, config_.rescale_factor, config_.image_mean, config_.image_std, config_.do_rescale,
                                    config_.do_normalize));
  return torch::stack(out, 0);
}

llava_onevision_packed llava_onevision_image_processor::pack(
    const std::vector<torch::Tensor>& normalized, const std::vector<std::array<std::int64_t, 2>>& image_sizes) const {
  const std::string where = "llava_onevision_image_processor::pack";
  if (normalized.empty()) fail(where, "argument 'normalized' is empty");
  if (normalized.size() != image_sizes.size())
    fail(where, "arguments 'normalized' (" + std::to_string(normalized.size()) + " images) and 'image_sizes' (" +
                    std::to_string(image_sizes.size()) + ") differ in length");
  const std::int64_t s = config_.tile_size;
  llava_onevision_packed out;
  std::vector<std::int64_t> sizes;
  for (std::size_t i = 0; i < normalized.size(); ++i) {
    const auto& x = normalized[i];
    const std::string arg = "normalized[" + std::to_string(i) + "]";
    if (!x.defined() || x.scalar_type() != torch::kFloat || x.dim() != 4 || x.size(1) != 3 || x.size(2) != s ||
        x.size(3) != s)
      fail(where, "argument '" + arg + "' must be a float32 tensor [tiles, 3, " + std::to_string(s) + ", " +
                      std::to_string(s) + "]");
    const auto h = image_sizes[i][0], w = image_sizes[i][1];
    if (h <= 0 || w <= 0) fail(where, "argument 'image_sizes[" + std::to_string(i) + "]' must be positive");
    const auto expected = num_tiles(h, w);
    if (x.size(0) != expected && x.size(0) != 1)
      fail(where, "argument '" + arg + "' has " + std::to_string(x.size(0)) + " tiles but an image of " +
                      std::to_string(h) + " x " + std::to_string(w) + " needs " + std::to_string(expected) +
                      " (anyres) or 1 (one of several images in a prompt)");
    sizes.insert(sizes.end(), {h, w});
    out.num_image_tokens.push_back(llava_onevision_num_image_tokens(h, w, config_, /*anyres=*/x.size(0) != 1));
  }
  out.pixel_values = torch::cat(normalized, 0).contiguous();
  out.image_sizes = torch::tensor(sizes, torch::kLong).view({static_cast<std::int64_t>(normalized.size()), 2});
  return out;
}

llava_onevision_packed llava_onevision_image_processor::operator()(const std::vector<rgb_image>& images) const {
  std::vector<torch::Tensor> normalized;
  std::vector<std::array<std::int64_t, 2>> sizes;
  const bool anyres = images.size() == 1;  // transformers: need_patching = (batch_num_images == 1)
  for (const auto& image : images) {
    normalized.push_back(normalize(image, anyres));
    sizes.push_back({image.height(), image.width()});
  }
  llava_onevision_packed out = pack(normalized, sizes);
  out.batch_num_images = torch::tensor(std::vector<std::int64_t>{static_cast<std::int64_t>(images.size())}, torch::kLong);
  return out;
}

// ---------------------------------------------------------------------------------------------
// One interface over the families
// ---------------------------------------------------------------------------------------------

namespace {

// A family's pack output of one image as the family-independent packed_image: the pixels, the
// family's layout tensor (Qwen2-VL: image_grid_thw, LLaVA-OneVision: image_sizes) and the image's tokens.
void copy_layout(packed_image& out, const qwen2_vl_packed& p) { out.image_grid_thw = p.image_grid_thw; }
void copy_layout(packed_image& out, const llava_onevision_packed& p) { out.image_sizes = p.image_sizes; }

template <class Packed>
packed_image one_image(const Packed& p) {
  packed_image out;
  out.pixel_values = p.pixel_values;
  copy_layout(out, p);
  out.num_image_tokens = p.num_image_tokens.at(0);
  return out;
}

// What the families share: the model type, the image and video token ids and the family's processor.
template <class Processor>
class family_base : public image_processor {
 public:
  family_base(std::string model_type, std::int64_t image_token, std::int64_t video_token, Processor processor)
      : model_type_(std::move(model_type)),
        image_token_(image_token),
        video_token_(video_token),
        processor_(std::move(processor)) {}

  const std::string& model_type() const noexcept override { return model_type_; }
  torch::Tensor normalize(const rgb_image& image) const override { return processor_.normalize(image); }
  std::vector<std::int64_t> feature_token_ids() const override { return {image_token_, video_token_}; }

 protected:
  std::string model_type_;
  std::int64_t image_token_, video_token_;
  Processor processor_;
};

class qwen2_vl_family final : public family_base<qwen2_vl_image_processor> {
 public:
  qwen2_vl_family(const model_config& config, qwen2_vl_processor_config pc)
      : family_base(config.model_type, config.qwen2_5_vl->image_token_id, config.qwen2_5_vl->video_token_id,
                    qwen2_vl_image_processor(std::move(pc))) {}

  std::optional<pixel_bounds> bounds() const override {
    return pixel_bounds{processor_.config().min_pixels, processor_.config().max_pixels};
  }
  void check_size(std::int64_t height, std::int64_t width) const override {
    (void)processor_.resized_size(height, width);
  }
  packed_image pack(const torch::Tensor& normalized, std::int64_t, std::int64_t) const override {
    return one_image(processor_.pack(normalized));
  }
  vision_workload workload(std::int64_t height, std::int64_t width) const override {
    const auto [h, w] = processor_.resized_size(height, width);
    const std::int64_t p = processor_.config().patch_size, m = processor_.config().merge_size;
    const std::int64_t patches = (h / p) * (w / p);  // one temporal patch: the still image
    return {1, patches, patches / (m * m)};
  }
};

class llava_onevision_family final : public family_base<llava_onevision_image_processor> {
 public:
  llava_onevision_family(const model_config& config, llava_onevision_image_processor processor)
      : family_base(config.model_type, config.llava_onevision->image_token_index,
                    config.llava_onevision->video_token_index, std::move(processor)) {}

  std::optional<pixel_bounds> bounds() const override { return std::nullopt; }
  void check_size(std::int64_t, std::int64_t) const override {}  // anyres takes any size
  packed_image pack(const torch::Tensor& normalized, std::int64_t height, std::int64_t width) const override {
    return one_image(processor_.pack({normalized}, {{height, width}}));
  }
  vision_workload workload(std::int64_t height, std::int64_t width) const override {
    const auto& c = processor_.config();
    const std::int64_t side = c.tile_size / c.vision_patch_size;
    return {processor_.num_tiles(height, width), side * side, llava_onevision_num_image_tokens(height, width, c)};
  }
};

}  // namespace

double vision_attention_bytes(const model_config& config, const vision_workload& w, std::int64_t chunk_elements) {
  std::int64_t heads = 0;
  if (config.qwen2_5_vl) heads = config.qwen2_5_vl->vision.num_heads;
  else if (config.llava_onevision) heads = config.llava_onevision->vision.num_attention_heads;
  else fail("vision_attention_bytes", "argument 'config': model_type '" + config.model_type + "' has no vision tower");
  if (w.sequences < 0 || w.sequence_length < 0)
    fail("vision_attention_bytes", "argument 'w': negative sequences " + std::to_string(w.sequences) +
                                       " or sequence_length " + std::to_string(w.sequence_length));
  // The chunking of bidirectional_attention (attention_util.hpp), with the same budget: the rows
  // (heads x sequences, all tiles in one batch) compute `queries` query rows at a time against all
  // L keys, and a chunk's scores are freed before the next chunk's are made.
  const std::int64_t rows = heads * w.sequences, length = w.sequence_length;
  const std::int64_t budget = chunk_elements > 0 ? chunk_elements : attention_chunk_elements();
  const std::int64_t queries = std::min(length, attention_query_chunk(rows, length, budget));
  return static_cast<double>(rows) * static_cast<double>(queries) * static_cast<double>(length) * 8.0;
}

std::unique_ptr<image_processor> make_image_processor(const model_config& config, const std::string& model_dir,
                                                      const pixel_bounds& overrides) {
  const bool override_bounds = overrides.min_pixels > 0 || overrides.max_pixels > 0;
  if (config.qwen2_5_vl) {
    qwen2_vl_processor_config pc = qwen2_vl_image_processor::from_file(model_dir).config();
    if (overrides.min_pixels > 0) pc.min_pixels = overrides.min_pixels;
    if (overrides.max_pixels > 0) pc.max_pixels = overrides.max_pixels;
    return std::make_unique<qwen2_vl_family>(config, std::move(pc));
  }
  if (config.llava_onevision) {
    if (override_bounds)
      fail("make_image_processor", "argument 'overrides': " + config.model_type +
                                       " has no pixel bounds (it tiles at a fixed size)");
    return std::make_unique<llava_onevision_family>(config, llava_onevision_image_processor::from_directory(model_dir));
  }
  fail("make_image_processor", "argument 'config': model_type '" + config.model_type + "' has no image processor");
}

}  // namespace consr_runtime
