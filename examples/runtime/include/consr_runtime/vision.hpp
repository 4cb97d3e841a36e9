// consr_runtime/vision.hpp — the vision towers of the two model families as torch::nn modules whose
// parameter names are the Hugging Face subtrees, so a model registers them as submodules and loads
// them from a checkpoint by prefix mapping (load_weights):
//   qwen2_5_vl_vision_model   registered as "visual":  patch_embed.proj.weight, blocks.{i}.{norm1,norm2,
//                             attn.qkv,attn.proj,mlp.{gate,up,down}_proj}, merger.{ln_q,mlp.0,mlp.2}
//   llava_onevision_vision    vision_tower.vision_model.{embeddings,encoder.layers.{i},post_layernorm}.*,
//                             multi_modal_projector.linear_{1,2}.*, image_newline
// Attention runs per window / per image, in the module's dtype with softmax, RMSNorm and rotary in
// fp32 as transformers does, in query chunks of at most 2^26 scores (CONSR_ATTENTION_CHUNK_ELEMENTS
// overrides the budget), so a large image never holds heads × L² scores at once; with LibTorch 2.x
// each chunk goes through at::scaled_dot_product_attention, with 1.x through matmul + softmax.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include "consr_runtime/config.hpp"

namespace consr_runtime {

// ---------------------------------------------------------------------------------------------
// Qwen2.5-VL vision encoder (Qwen2_5_VisionTransformerPretrainedModel)
// ---------------------------------------------------------------------------------------------

/// The window bookkeeping of one forward pass (transformers' get_vision_window_index and
/// get_vision_cu_seqlens), exposed for tests and debugging.
struct qwen2_5_vl_window_plan {
  std::vector<std::int64_t> window_index;       ///< permutation of merged cells (units of merge² rows)
  std::vector<std::int64_t> cu_window_seqlens;  ///< window boundaries in patch rows, empty windows removed
  std::vector<std::int64_t> cu_seqlens;         ///< per-image (per-frame) boundaries in patch rows
};

/// Computes the window plan of `grid_thw` ([n, 3] int64, (t, h, w) in patches) for window_size
/// pixels, patch_size and spatial_merge_size. Throws runtime_error naming 'grid_thw' when a value is
/// not positive or h, w are not multiples of spatial_merge_size.
qwen2_5_vl_window_plan qwen2_5_vl_window_plan_for(const torch::Tensor& grid_thw, std::int64_t spatial_merge_size,
                                                  std::int64_t window_size, std::int64_t patch_size);

class qwen2_5_vl_vision_model_impl : public torch::nn::Module {
 public:
  /// Builds the encoder of `config` (depth blocks of width hidden_size, merger to out_hidden_size)
  /// with parameters of `options` (dtype / device), initialised to zeros (load weights afterwards).
  /// Throws runtime_error naming the config field for inconsistent dimensions (hidden_size not
  /// divisible by num_heads, head_dim not divisible by 4, a fullatt_block_index outside [0, depth)).
  explicit qwen2_5_vl_vision_model_impl(const qwen2_5_vl_vision_config& config,
                                        const torch::TensorOptions& options = {});

  /// pixel_values [L, in_channels * temporal_patch * patch²] (the processor's rows), grid_thw [n, 3]
  /// int64 with sum t*h*w = L -> merged features [L / merge², out_hidden_size] in raster order
  /// (t, h/merge, w/merge) per image, images concatenated. Full-attention blocks attend within each
  /// image frame, the others within 112-pixel windows. Throws runtime_error naming the argument for
  /// mismatched shapes.
  torch::Tensor forward(const torch::Tensor& pixel_values, const torch::Tensor& grid_thw);

  const qwen2_5_vl_vision_config& config() const noexcept { return config_; }

 private:
  qwen2_5_vl_vision_config config_;
  std::int64_t head_dim_ = 0;
  torch::Tensor patch_weight_;  // patch_embed.proj.weight [hidden, C, T, P, P]
  torch::nn::ModuleList blocks_{nullptr};
  torch::Tensor merger_norm_;   // merger.ln_q.weight
  torch::nn::Sequential merger_mlp_{nullptr};
};
TORCH_MODULE_IMPL(qwen2_5_vl_vision_model, qwen2_5_vl_vision_model_impl);

// ---------------------------------------------------------------------------------------------
// LLaVA-OneVision: SigLIP tower + projector + anyres packing
// ---------------------------------------------------------------------------------------------

class llava_onevision_vision_impl : public torch::nn::Module {
 public:
  /// Builds the SigLIP tower (`config.vision`), the projector to `config.text.hidden_size` and
  /// image_newline, parameters of `options`, zero-initialised. Throws runtime_error naming the config
  /// field for unsupported settings (projector_hidden_act other than gelu / gelu_pytorch_tanh, a
  /// vision_feature_layer outside the tower, image_size below patch_size).
  explicit llava_onevision_vision_impl(const llava_onevision_config& config, const torch::TensorOptions& options = {});

  /// The projected features of each tile: pixel_values [n_tiles, 3, S, S] -> [n_tiles, tokens, hidden]
  /// (SigLIP hidden_states[vision_feature_layer], before post_layernorm; "default" strategy drops
  /// the first token), then the projector.
  torch::Tensor tile_features(const torch::Tensor& pixel_values);

  /// SigLIP hidden states after `layer` encoder layers (0 = embeddings) for [n, 3, S, S].
  torch::Tensor siglip_hidden(const torch::Tensor& pixel_values, std::int64_t layer);

  /// pixel_values [sum over images of (1 + tiles), 3, S, S] (the processor's tiles, base first),
  /// image_sizes [n_images, 2] int64 original (height, width) -> the packed features of all images
  /// concatenated [n_tokens, hidden]: per image the base tile's tokens, then the tile grid unpadded
  /// to the original aspect, bilinearly downsampled when it exceeds anyres_max (ratio > 1.1), with
  /// image_newline appended to every row. An image of a prompt with several images (multi-image
  /// mode, `batch_num_images` > 1 for its row) is one tile and gives its tokens plus one
  /// image_newline. `batch_num_images` (int64 [rows], summing to n_images) as transformers'
  /// get_image_features; undefined: every image anyres, or every image one tile when pixel_values
  /// hold exactly one per image. Throws runtime_error naming the argument when the tile count does
  /// not match the sizes and batch_num_images.
  torch::Tensor forward(const torch::Tensor& pixel_values, const torch::Tensor& image_sizes,
                        const torch::Tensor& batch_num_images = {});

  /// Packs projected tile features of one image ([tiles, tokens, hidden]) as forward does.
  torch::Tensor pack_image_features(const torch::Tensor& features, std::int64_t height, std::int64_t width);

  const llava_onevision_config& config() const noexcept { return config_; }

 private:
  llava_onevision_config config_;
  std::int64_t feature_layer_ = 0;  // number of encoder layers to run
  torch::Tensor patch_weight_, patch_bias_;
  torch::nn::Embedding position_embedding_{nullptr};
  torch::nn::ModuleList layers_{nullptr};
  torch::nn::Linear linear_1_{nullptr}, linear_2_{nullptr};
  torch::Tensor image_newline_;
};
TORCH_MODULE_IMPL(llava_onevision_vision, llava_onevision_vision_impl);

}  // namespace consr_runtime
