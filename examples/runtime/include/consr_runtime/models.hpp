// consr_runtime/models.hpp — the two vision-language models of the pipeline, loaded from their
// Hugging Face checkpoint directories as published: Qwen2.5-VL (`qwen2_5_vl_model`, multimodal
// RoPE) and LLaVA-OneVision (`llava_onevision_model`, 1-D RoPE), both a Qwen2 decoder (qwen2.hpp)
// with image features scattered into the placeholder-token positions (runtime facts §2d, §3d).
//
// Module layout (the in-memory layout of transformers 5.x):
//   Qwen2.5-VL:      model.visual.*, model.language_model.*, lm_head.*
//   LLaVA-OneVision: model.vision_tower.*, model.multi_modal_projector.*, model.image_newline,
//                    model.language_model.*, lm_head.*
// Loading accepts both these names and the legacy hub names (visual.*, model.layers.*;
// language_model.model.*, language_model.lm_head.*, vision_tower.vision_model.*, ...).
//
// Batching: rows are left-padded; `attention_mask` marks real tokens. Every row gets the positions
// it would get alone (per-row get_rope_index / cumsum of the mask), so a batch equals its rows run
// one by one up to rounding.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/types.h>

#include "consr_runtime/config.hpp"
#include "consr_runtime/qwen2.hpp"

namespace consr_runtime {

class qwen2_5_vl_vision_model_impl;  // vision.hpp
class llava_onevision_vision_impl;   // vision.hpp
class checkpoint;                    // safetensors.hpp
struct weight_binding;               // weights.hpp
struct load_options;                 // weights.hpp

/// The processed images of one forward, in the order of their placeholder runs in `input_ids`
/// (row by row). Exactly what the processors' `pack` produce, or precomputed `features`.
struct image_inputs {
  /// Qwen2.5-VL: [Σ t·h·w, C·T·P·P] patch rows; LLaVA-OV: [Σ (1 + tiles), C, S, S], each image's
  /// base tile first (as the processors' `pack` produce them).
  torch::Tensor pixel_values;
  /// Qwen2.5-VL: int64 [n_images, 3] (t, h, w) in patches. Needed for the mRoPE positions even
  /// when `features` are given.
  torch::Tensor image_grid_thw;
  /// LLaVA-OV: int64 [n_images, 2] original (height, width).
  torch::Tensor image_sizes;
  /// LLaVA-OV: int64 [rows], the images of each prompt row (transformers' batch_num_images). The
  /// images of a row with more than one are not tiled (one tile each, a single image_newline), as
  /// LlavaOnevisionForConditionalGeneration does. Undefined: every image is tiled (anyres), unless
  /// pixel_values hold exactly one tile per image. `collate` sets it from each row's image_sizes.
  torch::Tensor batch_num_images;
  /// Optional precomputed image features [n_image_tokens, hidden] (the vision tower + merger /
  /// projector + packing output, e.g. from `image_features()`); when defined, `pixel_values` is
  /// not used. Lets the three ConSR scoring passes share one vision forward.
  torch::Tensor features;

  bool empty() const { return !pixel_values.defined() && !features.defined(); }
};

/// A batch for one forward.
struct model_inputs {
  torch::Tensor input_ids;       ///< int64 [B, L], image placeholders already expanded
  torch::Tensor attention_mask;  ///< [B, L]: 1 real, 0 left padding; undefined = all real
  image_inputs images;
};

/// State of incremental decoding after a prefill (`forward_hidden(inputs, &state)`).
struct decode_state {
  kv_cache cache;
  torch::Tensor attention_mask;  ///< int64 [B, T]: real (1) / padding (0) of every cached position
  torch::Tensor next_position;   ///< int64 [B]: position of each row's next token (all 3 mRoPE rows)
  torch::Tensor real_length;     ///< int64 [B]: real tokens cached per row
  std::int64_t batch_size() const { return attention_mask.defined() ? attention_mask.size(0) : 0; }
  /// Keeps only the rows `index` (int64 [B']) of the cache and the per-row state, e.g. to stop
  /// computing finished sequences.
  void select_rows(const torch::Tensor& index);
};

/// Multimodal RoPE positions of Qwen2.5-VL (`get_rope_index`, facts §2d), per row over the real
/// tokens (attention_mask != 0): text runs continue 1-D from the previous maximum + 1; each image
/// (a run of t·(h/m)·(w/m) image tokens; consecutive runs consume image_grid_thw rows in order
/// across the batch) gets t/h/w positions offset by the start. Padding gets position 0.
/// Returns position_ids int64 [3, B, L]; `next_position` (if non-null) receives int64 [B] =
/// max position + 1 per row (rope_delta = next_position − real length).
/// Throws runtime_error naming 'input_ids' / 'image_grid_thw' when the image-token runs do not
/// match the grids (too few grids, a run length that is not a sum of grid sizes, grids left over).
torch::Tensor qwen2_5_vl_rope_index(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                    const torch::Tensor& image_grid_thw, std::int64_t image_token_id,
                                    std::int64_t spatial_merge_size, torch::Tensor* next_position = nullptr);

/// Common interface of the two models: embedding + image merge, the Qwen2 decoder, the LM head.
class vision_language_model : public torch::nn::Module {
 public:
  ~vision_language_model() override = default;

  const model_config& config() const { return config_; }
  const text_config& text() const { return config_.text(); }
  std::int64_t image_token_id() const { return config_.image_token_id(); }
  /// The directory the weights were loaded from ("" if constructed without loading).
  const std::string& directory() const { return directory_; }
  torch::Dtype dtype() const { return options_.dtype().toScalarType(); }
  torch::Device device() const { return options_.device(); }

  /// Image features [n_image_tokens, hidden] of `images` in placeholder order (Qwen: vision encoder
  /// + merger; LLaVA: SigLIP + projector + anyres packing with image_newline). Returns `features`
  /// unchanged when given. Throws runtime_error naming the argument on inconsistent shapes.
  virtual torch::Tensor image_features(const image_inputs& images) = 0;

  /// Position ids of a prefill ([3, B, L] for Qwen2.5-VL, [B, L] for LLaVA-OV) and, if non-null,
  /// each row's next position.
  virtual torch::Tensor position_ids(const model_inputs& inputs, torch::Tensor* next_position) = 0;

  /// Embeds `input_ids` [B, L] and scatters the image features into the image-token positions.
  /// Throws runtime_error naming 'input_ids' when the number of image tokens differs from the
  /// number of feature rows (both counts in the message).
  torch::Tensor embed(const model_inputs& inputs);

  /// Prefill: final-normed hidden states [B, L, hidden]. With `state`, it is reset and then holds
  /// the KV cache, mask and next positions for `decode`. Throws runtime_error naming 'input_ids'
  /// when a row has more real tokens than max_position_embeddings.
  torch::Tensor forward_hidden(const model_inputs& inputs, decode_state* state = nullptr);

  /// Prefill: logits [B, L, V] (the model's dtype).
  torch::Tensor forward(const model_inputs& inputs, decode_state* state = nullptr);

  /// One decoding step: feeds next_ids int64 [B] (one token per row, all real) and returns the
  /// final-normed hidden states [B, hidden] of those tokens. Throws runtime_error naming
  /// 'next_ids' on a batch mismatch and 'state' when a row would pass max_position_embeddings.
  torch::Tensor decode_hidden(const torch::Tensor& next_ids, decode_state& state);

  /// One decoding step returning logits [B, V].
  torch::Tensor decode(const torch::Tensor& next_ids, decode_state& state);

  /// Extends every cached row by up to L text tokens in one forward (shared-prefix scoring: prefill
  /// a prompt once, `state.select_rows` it to B copies, then teacher-force B continuations):
  /// ids int64 [B, L]; `mask` [B, L] nonzero for real tokens and 0 for padding (undefined = all
  /// real). Real token k of a row gets the row's next position + (real tokens before it), so a
  /// right-padded row is the same as the row extended alone. Returns the final-normed hidden states
  /// [B, L, hidden] (those at padding positions are not meaningful). Throws runtime_error naming
  /// 'ids' / 'mask' on a shape mismatch, an id outside the vocabulary or an image token (images go
  /// through a prefill), and 'state' without a prefill or when a row would pass
  /// max_position_embeddings.
  torch::Tensor extend_hidden(const torch::Tensor& ids, const torch::Tensor& mask, decode_state& state);

  /// hidden [..., hidden] → logits [..., V] through lm_head (or the tied embedding).
  torch::Tensor logits(const torch::Tensor& hidden);

  /// The language model's hub parameter prefix in the loaded checkpoint ("model.",
  /// "model.language_model." or "language_model.model."); lm_head's is `lm_head_hub_prefix()`.
  /// Used to name LoRA adapters the way the checkpoint names its modules (lora.hpp).
  const std::string& language_model_hub_prefix() const { return lm_hub_prefix_; }
  const std::string& lm_head_hub_prefix() const { return lm_head_hub_prefix_; }
  /// The in-memory prefix of the language model's modules: "model.language_model.".
  static const char* language_model_module_prefix() { return "model.language_model."; }

  qwen2_model language_model{nullptr};
  linear lm_head{nullptr};  ///< empty when tie_word_embeddings

 protected:
  vision_language_model(model_config config, const torch::TensorOptions& options);
  /// Registers `language_model` (under `model`) and `lm_head`; call from the derived constructor.
  void build_language_model();
  /// What each family's load() ends with: the tensors of `ck`, the checkpoint of `dir`, copied in
  /// under `bindings` and `options` (load_weights), and `dir` kept as directory().
  void load_checkpoint(const std::string& dir, const checkpoint& ck, const std::vector<weight_binding>& bindings,
                       const load_options& options);
  /// The `model` container module (holds the vision parts and `language_model`).
  std::shared_ptr<torch::nn::Module> container_;

  model_config config_;
  torch::TensorOptions options_;
  std::string directory_;
  std::string lm_hub_prefix_ = "model.language_model.";
  std::string lm_head_hub_prefix_ = "lm_head.";
};

/// Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`).
class qwen2_5_vl_model : public vision_language_model {
 public:
  /// Builds the modules (uninitialised parameters) from a config with `qwen2_5_vl` set.
  qwen2_5_vl_model(const model_config& config, const torch::TensorOptions& options = {});
  /// Reads `<dir>/config.json` and the weights (model.safetensors or an index + shards), in
  /// either naming; parameters get `options`' dtype/device (default fp32 CPU). Throws
  /// runtime_error naming the file / tensor on anything missing, extra or mis-shaped.
  static std::shared_ptr<qwen2_5_vl_model> load(const std::string& dir, const torch::TensorOptions& options = {});

  torch::Tensor image_features(const image_inputs& images) override;
  torch::Tensor position_ids(const model_inputs& inputs, torch::Tensor* next_position) override;

  std::shared_ptr<qwen2_5_vl_vision_model_impl> visual;  ///< the vision encoder (vision.hpp), `model.visual`
};

/// LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`).
class llava_onevision_model : public vision_language_model {
 public:
  llava_onevision_model(const model_config& config, const torch::TensorOptions& options = {});
  static std::shared_ptr<llava_onevision_model> load(const std::string& dir, const torch::TensorOptions& options = {});

  torch::Tensor image_features(const image_inputs& images) override;
  torch::Tensor position_ids(const model_inputs& inputs, torch::Tensor* next_position) override;

  /// SigLIP + projector + image_newline (vision.hpp). Its children are registered directly under
  /// `model` (model.vision_tower, model.multi_modal_projector, model.image_newline).
  std::shared_ptr<llava_onevision_vision_impl> vision;
};

/// Loads whichever model `<dir>/config.json` names (model_type qwen2_5_vl or llava_onevision).
std::shared_ptr<vision_language_model> load_model(const std::string& dir, const torch::TensorOptions& options = {});

}  // namespace consr_runtime
