// consr_runtime/config.hpp — the parts of a Hugging Face `config.json` the runtime needs, for the
// two model families of the pipeline: Qwen2.5-VL (`model_type: qwen2_5_vl`) and LLaVA-OneVision
// (`model_type: llava_onevision`, the llava-hf layout; or the lmms-lab layout of LLaVA-NeXT's
// LlavaQwenForCausalLM, `model_type: llava` / `llava_qwen`, read into the same llava_onevision config).
//
// Both layouts are accepted: the flat one (text keys at the top level, as the Qwen2.5-VL hub
// file) and the nested `text_config` one that newer transformers write (LLaVA-OV always nests).
// RoPE parameters are read from `rope_parameters` (transformers 5.x), else `rope_scaling` (with
// "type": "mrope" or "rope_type": "default" and an `mrope_section`) plus a separate `rope_theta`.
// Dimension keys are required (a missing one is a runtime_error naming the key and the file); the
// other keys take the default of the corresponding transformers config class (listed per field).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace consr_runtime {

/// The Qwen2 decoder of either model (Qwen2.5-VL's text model or LLaVA-OV's `text_config`).
struct text_config {
  std::string model_type;                 ///< "qwen2" (LLaVA-OV), "qwen2_5_vl_text"/"qwen2_5_vl" (Qwen)
  std::int64_t vocab_size = 0;            ///< required
  std::int64_t hidden_size = 0;           ///< required
  std::int64_t intermediate_size = 0;     ///< required
  std::int64_t num_hidden_layers = 0;     ///< required
  std::int64_t num_attention_heads = 0;   ///< required
  std::int64_t num_key_value_heads = 0;   ///< default: num_attention_heads
  std::int64_t head_dim = 0;              ///< default: hidden_size / num_attention_heads
  double rms_norm_eps = 1e-6;             ///< default: 1e-6 (qwen2), 1e-5 (qwen2_5_vl text class)
  double rope_theta = 10000.0;            ///< default: 1e4 (qwen2), 1e6 (qwen2_5_vl)
  std::string hidden_act = "silu";        ///< only "silu" is supported
  std::int64_t max_position_embeddings = 32768;
  bool tie_word_embeddings = false;       ///< top-level value OR the text_config value (as HF 5.x)
  /// mRoPE sections over head_dim/2 frequencies (t, h, w); empty for plain 1-D RoPE.
  std::vector<std::int64_t> mrope_section;
  std::optional<std::int64_t> bos_token_id;
  std::vector<std::int64_t> eos_token_ids;  ///< `eos_token_id` as an int or a list
};

/// Qwen2.5-VL vision encoder (`vision_config`).
struct qwen2_5_vl_vision_config {
  std::int64_t depth = 0;                 ///< required
  std::int64_t hidden_size = 0;           ///< required
  std::int64_t intermediate_size = 0;     ///< required
  std::int64_t num_heads = 0;             ///< required
  std::int64_t out_hidden_size = 0;       ///< required (= text hidden_size)
  std::int64_t in_channels = 3;           ///< `in_channels` or the legacy `in_chans`
  std::int64_t patch_size = 14;
  std::int64_t temporal_patch_size = 2;
  std::int64_t spatial_merge_size = 2;
  std::int64_t window_size = 112;
  std::int64_t tokens_per_second = 4;
  std::vector<std::int64_t> fullatt_block_indexes{7, 15, 23, 31};
  std::string hidden_act = "silu";
};

/// SigLIP vision tower of LLaVA-OneVision (`vision_config`).
struct siglip_vision_config {
  std::int64_t hidden_size = 0;           ///< required
  std::int64_t intermediate_size = 0;     ///< required
  std::int64_t num_hidden_layers = 0;     ///< required
  std::int64_t num_attention_heads = 0;   ///< required
  std::int64_t image_size = 0;            ///< required
  std::int64_t patch_size = 0;            ///< required
  std::int64_t num_channels = 3;
  double layer_norm_eps = 1e-6;
  std::string hidden_act = "gelu_pytorch_tanh";
};

/// `model_type: qwen2_5_vl`.
struct qwen2_5_vl_config {
  text_config text;
  qwen2_5_vl_vision_config vision;
  std::int64_t image_token_id = 151655;
  std::int64_t video_token_id = 151656;
  std::int64_t vision_start_token_id = 151652;
  std::int64_t vision_end_token_id = 151653;
};

/// `model_type: llava_onevision`.
struct llava_onevision_config {
  text_config text;
  siglip_vision_config vision;
  std::int64_t image_token_index = 151646;  ///< `image_token_index` (or `image_token_id`)
  std::int64_t video_token_index = 151647;
  /// Candidate (height, width) resolutions of the anyres tiling; default: HF's 36 pairs.
  std::vector<std::array<std::int64_t, 2>> image_grid_pinpoints;
  /// Hidden-state index(es) the features are taken from (an int or a list in the file).
  std::vector<std::int64_t> vision_feature_layer{-1};
  std::string vision_feature_select_strategy = "full";  ///< "full" or "default" (drop CLS)
  std::string vision_aspect_ratio = "anyres_max_9";
  std::string projector_hidden_act = "gelu";
  bool multimodal_projector_bias = true;
  /// "llava-hf" (transformers' LlavaOnevisionForConditionalGeneration) or "lmms-lab" (LLaVA-NeXT's
  /// LlavaQwenForCausalLM, as the paper used it): the lmms-lab config.json is a flat Qwen2 config
  /// plus `mm_*` keys — `mm_vision_tower` (SigLIP-so400m-patch14-384: its dims are SigLIP's, with 26
  /// layers since LLaVA-NeXT drops the last one and takes the last stored layer's output;
  /// a `vision_config` object, if present, overrides them), `mm_projector_type` "mlp2x_gelu",
  /// `mm_patch_merge_type` "spatial_unpad", `image_aspect_ratio` "anyres_max_<n>",
  /// `image_grid_pinpoints` (a list of [height, width] or LLaVA-NeXT's "(1x1),...,(6x6)" string,
  /// in units of the tile size), `mm_hidden_size` (= the vision width); anything else is an error
  /// naming the key. The weights are then read under LLaVA-NeXT's names (models.cpp).
  std::string checkpoint_layout = "llava-hf";
};

/// A parsed `config.json` of one of the two supported families. Exactly one of `qwen2_5_vl` /
/// `llava_onevision` is set, according to `model_type`.
struct model_config {
  std::string model_type;   ///< "qwen2_5_vl" or "llava_onevision" (also for an lmms-lab "llava"/"llava_qwen" file)
  std::string source;       ///< the file the config was read from (for error messages)
  std::optional<qwen2_5_vl_config> qwen2_5_vl;
  std::optional<llava_onevision_config> llava_onevision;

  /// The decoder's config, whichever family.
  const text_config& text() const;
  /// The id of the image placeholder token (`image_token_id` / `image_token_index`).
  std::int64_t image_token_id() const;
};

/// Parses config.json text. `source` names the file in error messages. Throws runtime_error on
/// invalid JSON, an unsupported `model_type`, a missing required key, a value of the wrong type
/// or inconsistent dimensions (head counts that do not divide, an odd head_dim, an mrope_section
/// not summing to head_dim/2), naming the key and `source`.
model_config parse_model_config(const std::string& json_text, const std::string& source = "config.json");

/// Reads and parses `path`, which is either a config.json file or a model directory holding one.
/// Throws runtime_error naming the path when it cannot be read, else as parse_model_config.
model_config load_model_config(const std::string& path);

/// A checkpoint's image-processor settings: the JSON object's text and where it was found (for error
/// messages: a file name, with " (key 'image_processor')" when nested).
struct image_processor_settings {
  std::string json_text;
  std::string source;
};

/// Finds the image-processor settings of a checkpoint as transformers (5.x,
/// `PreprocessingMixin._get_config_dict`) does. `path` is a model directory or a JSON file:
/// - directory: the object under the key `image_processor` of `processor_config.json` (the layout
///   `ProcessorMixin.save_pretrained` writes in transformers 5.x) when that file has the key, else
///   `preprocessor_config.json` (the legacy flat layout of the hub checkpoints);
/// - file: its `image_processor` object when it has one, else the whole file.
/// Throws runtime_error naming the path when neither file exists (naming both), a file cannot be read,
/// `processor_config.json` is not valid JSON, or its `image_processor` value is not an object.
image_processor_settings load_image_processor_settings(const std::string& path);

}  // namespace consr_runtime
