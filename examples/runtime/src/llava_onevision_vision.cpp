// LLaVA-OneVision vision path: SigLIP tower (SiglipVisionModel), multi-modal projector and anyres
// feature packing (LlavaOnevisionModel.get_image_features / pack_image_features). See
// consr_runtime/vision.hpp.
#include <algorithm>
#include <cmath>
#include <string>

#include <torch/torch.h>

#include "consr_runtime/error.hpp"
#include "consr_runtime/processors.hpp"
#include "consr_runtime/vision.hpp"
#include "attention_util.hpp"
#include "python_math.hpp"
#include "torch_util.hpp"

namespace consr_runtime {
namespace {

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  throw runtime_error("consr_runtime::" + where + ": " + what);
}

torch::nn::LayerNorm make_layer_norm(std::int64_t dim, double eps, const torch::TensorOptions& options) {
  torch::nn::LayerNorm n(torch::nn::LayerNormOptions({dim}).eps(eps));
  n->to(options.dtype().toScalarType());
  if (options.has_device()) n->to(options.device());
  return n;
}

struct siglip_attention_impl : torch::nn::Module {
  siglip_attention_impl(std::int64_t dim, std::int64_t heads, const torch::TensorOptions& options)
      : num_heads(heads), head_dim(dim / heads) {
    k_proj = register_module("k_proj", make_linear(dim, dim, true, options));
    v_proj = register_module("v_proj", make_linear(dim, dim, true, options));
    q_proj = register_module("q_proj", make_linear(dim, dim, true, options));
    out_proj = register_module("out_proj", make_linear(dim, dim, true, options));
  }
  torch::Tensor forward(const torch::Tensor& x) {  // [n, L, dim], bidirectional
    const auto n = x.size(0), length = x.size(1);
    auto split = [&](const torch::Tensor& t) { return t.view({n, length, num_heads, head_dim}).transpose(1, 2); };
    auto q = split(q_proj(x)), k = split(k_proj(x)), v = split(v_proj(x));
    // Query-chunked (attention_util.hpp): n tiles × heads × L × L scores stay within the chunk budget.
    auto out = bidirectional_attention(q, k, v).transpose(1, 2).reshape({n, length, num_heads * head_dim});
    return out_proj(out);
  }
  std::int64_t num_heads, head_dim;
  torch::nn::Linear k_proj{nullptr}, v_proj{nullptr}, q_proj{nullptr}, out_proj{nullptr};
};
TORCH_MODULE_IMPL(siglip_attention, siglip_attention_impl);

struct siglip_mlp_impl : torch::nn::Module {
  siglip_mlp_impl(std::int64_t dim, std::int64_t inter, bool tanh_gelu, const torch::TensorOptions& options)
      : tanh(tanh_gelu) {
    fc1 = register_module("fc1", make_linear(dim, inter, true, options));
    fc2 = register_module("fc2", make_linear(inter, dim, true, options));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::gelu(fc1(x), tanh ? "tanh" : "none")); }
  bool tanh;
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE_IMPL(siglip_mlp, siglip_mlp_impl);

struct siglip_layer_impl : torch::nn::Module {
  siglip_layer_impl(const siglip_vision_config& c, bool tanh_gelu, const torch::TensorOptions& options) {
    layer_norm1 = register_module("layer_norm1", make_layer_norm(c.hidden_size, c.layer_norm_eps, options));
    self_attn = register_module("self_attn", siglip_attention(c.hidden_size, c.num_attention_heads, options));
    layer_norm2 = register_module("layer_norm2", make_layer_norm(c.hidden_size, c.layer_norm_eps, options));
    mlp = register_module("mlp", siglip_mlp(c.hidden_size, c.intermediate_size, tanh_gelu, options));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = x + self_attn(layer_norm1(x));
    return h + mlp(layer_norm2(h));
  }
  torch::nn::LayerNorm layer_norm1{nullptr}, layer_norm2{nullptr};
  siglip_attention self_attn{nullptr};
  siglip_mlp mlp{nullptr};
};
TORCH_MODULE_IMPL(siglip_layer, siglip_layer_impl);

bool tanh_gelu_of(const std::string& act, const std::string& where, const std::string& field) {
  if (act == "gelu_pytorch_tanh" || act == "gelu_new" || act == "gelu_fast") return true;
  if (act == "gelu") return false;
  fail(where, "config: " + field + " '" + act + "' is not supported (gelu, gelu_pytorch_tanh)");
}

}  // namespace

llava_onevision_vision_impl::llava_onevision_vision_impl(const llava_onevision_config& config,
                                                         const torch::TensorOptions& options)
    : config_(config) {
  const std::string where = "llava_onevision_vision";
  const auto& v = config_.vision;
  if (v.hidden_size <= 0 || v.num_attention_heads <= 0 || v.intermediate_size <= 0 || v.num_hidden_layers <= 0 ||
      v.patch_size <= 0 || v.image_size <= 0 || v.num_channels <= 0)
    fail(where, "config: vision_config dimensions must be positive");
  if (v.hidden_size % v.num_attention_heads != 0)
    fail(where, "config: vision_config.hidden_size is not divisible by num_attention_heads");
  if (v.image_size < v.patch_size)
    fail(where, "config: vision_config.image_size " + std::to_string(v.image_size) + " is smaller than patch_size " +
                    std::to_string(v.patch_size));
  if (config_.text.hidden_size <= 0) fail(where, "config: text hidden_size must be positive");
  if (config_.vision_feature_layer.empty()) fail(where, "config: vision_feature_layer is empty");
  for (auto layer : config_.vision_feature_layer) {
    const auto index = layer < 0 ? v.num_hidden_layers + 1 + layer : layer;
    if (index < 0 || index > v.num_hidden_layers)
      fail(where, "config: vision_feature_layer " + std::to_string(layer) + " is outside the tower's " +
                      std::to_string(v.num_hidden_layers + 1) + " hidden states");
    feature_layer_ = std::max(feature_layer_, index);
  }
  if (config_.vision_feature_select_strategy != "full" && config_.vision_feature_select_strategy != "default")
    fail(where, "config: vision_feature_select_strategy '" + config_.vision_feature_select_strategy +
                    "' is neither 'full' nor 'default'");
  anyres_max_patches(config_.vision_aspect_ratio);  // validates
  if (config_.image_grid_pinpoints.empty()) fail(where, "config: image_grid_pinpoints is empty");
  const bool tower_tanh = tanh_gelu_of(v.hidden_act, where, "vision_config.hidden_act");
  const bool projector_tanh = tanh_gelu_of(config_.projector_hidden_act, where, "projector_hidden_act");
  (void)projector_tanh;

  const auto opts = options.dtype(options.dtype().toScalarType());
  const std::int64_t side = v.image_size / v.patch_size;  // "valid" convolution: 384 / 14 -> 27
  auto tower = register_module("vision_tower", std::make_shared<torch::nn::Module>("vision_tower"));
  auto model = tower->register_module("vision_model", std::make_shared<torch::nn::Module>("vision_model"));
  auto embeddings = model->register_module("embeddings", std::make_shared<torch::nn::Module>("embeddings"));
  auto patch = embeddings->register_module("patch_embedding", std::make_shared<torch::nn::Module>("patch_embedding"));
  patch_weight_ = patch->register_parameter("weight", torch::zeros({v.hidden_size, v.num_channels, v.patch_size, v.patch_size}, opts));
  patch_bias_ = patch->register_parameter("bias", torch::zeros({v.hidden_size}, opts));
  position_embedding_ = embeddings->register_module(
      "position_embedding", torch::nn::Embedding(torch::nn::EmbeddingOptions(side * side, v.hidden_size)));
  position_embedding_->to(opts.dtype().toScalarType());
  if (opts.has_device()) position_embedding_->to(opts.device());
  auto encoder = model->register_module("encoder", std::make_shared<torch::nn::Module>("encoder"));
  layers_ = encoder->register_module("layers", torch::nn::ModuleList());
  for (std::int64_t i = 0; i < v.num_hidden_layers; ++i) layers_->push_back(siglip_layer(v, tower_tanh, opts));
  // Present in every checkpoint although LLaVA-OV reads the hidden states before it.
  model->register_module("post_layernorm", make_layer_norm(v.hidden_size, v.layer_norm_eps, opts));
  const std::int64_t feature_dim = v.hidden_size * static_cast<std::int64_t>(config_.vision_feature_layer.size());
  auto projector = register_module("multi_modal_projector", std::make_shared<torch::nn::Module>("multi_modal_projector"));
  linear_1_ = projector->register_module(
      "linear_1", make_linear(feature_dim, config_.text.hidden_size, config_.multimodal_projector_bias, opts));
  linear_2_ = projector->register_module(
      "linear_2", make_linear(config_.text.hidden_size, config_.text.hidden_size, config_.multimodal_projector_bias, opts));
  image_newline_ = register_parameter("image_newline", torch::zeros({config_.text.hidden_size}, opts));
}

torch::Tensor llava_onevision_vision_impl::siglip_hidden(const torch::Tensor& pixel_values, std::int64_t layer) {
  const std::string where = "llava_onevision_vision::siglip_hidden";
  const auto& v = config_.vision;
  if (!pixel_values.defined() || pixel_values.dim() != 4 || pixel_values.size(1) != v.num_channels ||
      pixel_values.size(2) != v.image_size || pixel_values.size(3) != v.image_size || !pixel_values.is_floating_point())
    fail(where, "argument 'pixel_values' must be a floating tensor [tiles, " + std::to_string(v.num_channels) + ", " +
                    std::to_string(v.image_size) + ", " + std::to_string(v.image_size) + "]");
  if (layer < 0 || layer > v.num_hidden_layers)
    fail(where, "argument 'layer' = " + std::to_string(layer) + " outside [0, " + std::to_string(v.num_hidden_layers) + "]");
  auto x = torch::conv2d(pixel_values.to(patch_weight_.device(), patch_weight_.scalar_type()), patch_weight_, patch_bias_,
                         /*stride=*/{v.patch_size, v.patch_size});
  x = x.flatten(2).transpose(1, 2);  // [tiles, side², hidden]
  x = x + position_embedding_->weight.unsqueeze(0);
  for (std::int64_t i = 0; i < layer; ++i) x = layers_->ptr<siglip_layer_impl>(static_cast<std::size_t>(i))->forward(x);
  return x;
}

torch::Tensor llava_onevision_vision_impl::tile_features(const torch::Tensor& pixel_values) {
  const auto& v = config_.vision;
  std::vector<torch::Tensor> selected;
  if (config_.vision_feature_layer.size() == 1) {
    const auto l = config_.vision_feature_layer[0];
    selected.push_back(siglip_hidden(pixel_values, l < 0 ? v.num_hidden_layers + 1 + l : l));
  } else {
    // Several layers: run once, keep each requested hidden state, concatenate on the feature axis.
    std::vector<torch::Tensor> states{siglip_hidden(pixel_values, 0)};
    for (std::int64_t i = 0; i < feature_layer_; ++i)
      states.push_back(layers_->ptr<siglip_layer_impl>(static_cast<std::size_t>(i))->forward(states.back()));
    for (auto l : config_.vision_feature_layer)
      selected.push_back(states[static_cast<std::size_t>(l < 0 ? v.num_hidden_layers + 1 + l : l)]);
  }
  auto features = selected.size() == 1 ? selected[0] : torch::cat(selected, -1);
  if (config_.vision_feature_select_strategy == "default") features = features.narrow(1, 1, features.size(1) - 1);
  auto h = linear_1_(features);
  h = torch::gelu(h, config_.projector_hidden_act == "gelu" ? "none" : "tanh");
  return linear_2_(h);
}

torch::Tensor llava_onevision_vision_impl::pack_image_features(const torch::Tensor& features, std::int64_t height,
                                                               std::int64_t width) {
  const std::string where = "llava_onevision_vision::pack_image_features";
  const auto& v = config_.vision;
  if (!features.defined() || features.dim() != 3 || features.size(0) < 1)
    fail(where, "argument 'features' must be a tensor [tiles, tokens, hidden]");
  if (height <= 0 || width <= 0) fail(where, "arguments 'height' and 'width' must be positive");
  const auto newline = image_newline_.to(features.scalar_type());
  if (features.size(0) == 1)  // a single tile (multi-image mode): its tokens plus one newline
    return torch::cat({features[0], newline.unsqueeze(0)}, 0);
  const std::int64_t side = v.image_size / v.patch_size;
  const auto channels = features.size(2);
  if (features.size(1) != side * side)
    fail(where, "argument 'features' has " + std::to_string(features.size(1)) + " tokens per tile, expected " +
                    std::to_string(side * side));
  const auto best = select_best_resolution(height, width, config_.image_grid_pinpoints);
  const std::int64_t nph = best[0] / v.image_size, npw = best[1] / v.image_size;
  if (features.size(0) != 1 + nph * npw)
    fail(where, "argument 'features' has " + std::to_string(features.size(0)) + " tiles but an image of " +
                    std::to_string(height) + " x " + std::to_string(width) + " needs " + std::to_string(1 + nph * npw));
  auto base = features[0];
  auto grid = features.narrow(0, 1, nph * npw)
                  .view({nph, npw, side, side, channels})
                  .permute({4, 0, 2, 1, 3})
                  .contiguous()
                  .view({channels, nph * side, npw * side});
  // unpad_image: crop the rows (or columns) that are padding at the original aspect ratio.
  const std::int64_t ch = grid.size(1), cw = grid.size(2);
  const double original_aspect = static_cast<double>(width) / static_cast<double>(height);
  const double current_aspect = static_cast<double>(cw) / static_cast<double>(ch);
  if (original_aspect > current_aspect) {
    const double scale = static_cast<double>(cw) / static_cast<double>(width);
    const auto new_h = python_int(python_round(static_cast<double>(height) * scale, 7));
    const auto pad = std::max<std::int64_t>(0, python_floordiv_int(ch - new_h, 2));
    grid = grid.narrow(1, pad, ch - 2 * pad);
  } else {
    const double scale = static_cast<double>(ch) / static_cast<double>(height);
    const auto new_w = python_int(python_round(static_cast<double>(width) * scale, 7));
    const auto pad = std::max<std::int64_t>(0, python_floordiv_int(cw - new_w, 2));
    grid = grid.narrow(2, pad, cw - 2 * pad);
  }
  const std::int64_t gh = grid.size(1), gw = grid.size(2);
  const auto max_patches = anyres_max_patches(config_.vision_aspect_ratio);
  const double ratio = std::sqrt(static_cast<double>(gh * gw) / static_cast<double>(max_patches * side * side));
  if (ratio > 1.1) {
    const auto th = python_int(python_floordiv(static_cast<double>(gh), ratio));
    const auto tw = python_int(python_floordiv(static_cast<double>(gw), ratio));
    namespace F = torch::nn::functional;
    grid = F::interpolate(grid.unsqueeze(0), F::InterpolateFuncOptions()
                                                 .size(std::vector<std::int64_t>{th, tw})
                                                 .mode(torch::kBilinear)
                                                 .align_corners(false))[0];
  }
  grid = torch::cat({grid, newline.view({channels, 1, 1}).expand({channels, grid.size(1), 1})}, -1);
  grid = grid.flatten(1, 2).transpose(0, 1);
  return torch::cat({base, grid}, 0);
}

torch::Tensor llava_onevision_vision_impl::forward(const torch::Tensor& pixel_values, const torch::Tensor& image_sizes,
                                                  const torch::Tensor& batch_num_images) {
  const std::string where = "llava_onevision_vision::forward";
  if (!image_sizes.defined() || image_sizes.dim() != 2 || image_sizes.size(1) != 2 || image_sizes.size(0) < 1 ||
      (image_sizes.scalar_type() != torch::kLong && image_sizes.scalar_type() != torch::kInt))
    fail(where, "argument 'image_sizes' must be an integer tensor [n_images, 2]");
  if (!pixel_values.defined() || pixel_values.dim() != 4)
    fail(where, "argument 'pixel_values' must be a tensor [tiles, 3, S, S]");
  const auto sizes = image_sizes.to(torch::kCPU, torch::kLong).contiguous();
  const auto n_images = sizes.size(0);
  // transformers' need_patching: [n == 1 for n in batch_num_images for _ in range(n)].
  std::vector<bool> anyres(static_cast<std::size_t>(n_images), true);
  if (batch_num_images.defined()) {
    if (batch_num_images.dim() != 1 || batch_num_images.is_floating_point())
      fail(where, "argument 'batch_num_images' must be an integer tensor [rows]");
    const auto counts = batch_num_images.to(torch::kCPU, torch::kLong).contiguous();
    std::int64_t k = 0;
    for (std::int64_t r = 0; r < counts.size(0); ++r) {
      const auto n = counts[r].item<std::int64_t>();
      if (n < 0 || k + n > n_images) break;
      for (std::int64_t j = 0; j < n; ++j) anyres[static_cast<std::size_t>(k++)] = n == 1;
      if (r + 1 == counts.size(0) && k != n_images) k = -1;
    }
    if (k != n_images)
      fail(where, "argument 'batch_num_images' must hold non-negative counts summing to the " + std::to_string(n_images) +
                      " images of 'image_sizes'");
  }
  std::vector<std::int64_t> tiles;
  std::int64_t total = 0;
  for (std::int64_t i = 0; i < n_images; ++i) {
    const auto h = sizes[i][0].item<std::int64_t>(), w = sizes[i][1].item<std::int64_t>();
    if (h <= 0 || w <= 0)
      fail(where, "argument 'image_sizes': row " + std::to_string(i) + " must be positive");
    std::int64_t n = 1;
    if (anyres[static_cast<std::size_t>(i)]) {
      const auto best = select_best_resolution(h, w, config_.image_grid_pinpoints);
      n = 1 + (best[0] / config_.vision.image_size) * (best[1] / config_.vision.image_size);
    }
    tiles.push_back(n);
    total += n;
  }
  if (total != pixel_values.size(0)) {
    // Without batch_num_images, one tile per image means multi-image mode (an anyres image has at
    // least two).
    if (batch_num_images.defined() || pixel_values.size(0) != n_images)
      fail(where, "argument 'pixel_values' has " + std::to_string(pixel_values.size(0)) + " tiles but 'image_sizes'" +
                      (batch_num_images.defined() ? " and 'batch_num_images' need " + std::to_string(total)
                                                  : " needs " + std::to_string(total) + " (anyres) or " +
                                                        std::to_string(n_images) + " (one per image)") +
                      " (the images of a prompt with several are not tiled)");
    std::fill(tiles.begin(), tiles.end(), 1);
  }
  const auto features = tile_features(pixel_values);
  std::vector<torch::Tensor> packed;
  std::int64_t offset = 0;
  for (std::int64_t i = 0; i < n_images; ++i) {
    const auto n = tiles[static_cast<std::size_t>(i)];
    packed.push_back(pack_image_features(features.narrow(0, offset, n), sizes[i][0].item<std::int64_t>(),
                                         sizes[i][1].item<std::int64_t>()));
    offset += n;
  }
  return torch::cat(packed, 0);
}

}  // namespace consr_runtime
