// consr_runtime/processors.hpp — the image processors of Qwen2.5-VL (Qwen2VLImageProcessor) and
// LLaVA-OneVision (LlavaOnevisionImageProcessor), ported from transformers' slow (PIL) processors.
//
// Each has two stages so that the corruption of spec §3 can be applied in between:
//   normalize(image) -> the rescaled and mean/std-normalized float tensor(s) of one image
//                       (Qwen: [3, H', W'] after smart_resize; LLaVA: [1 + tiles, 3, S, S], base first)
//   pack(normalized) -> the model inputs (Qwen: frame duplication to temporal_patch_size and the patch
//                       flattening to pixel_values [t*h*w, C*T*P*P] plus image_grid_thw; LLaVA: the
//                       tiles as pixel_values plus image_sizes) and the number of LLM image tokens.
//
// image_processor is the same two stages behind one interface for code that handles every family
// alike (the ConSR pipeline); make_image_processor picks the family from the model config.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/types.h>

#include "consr_runtime/image.hpp"

namespace consr_runtime {

// ---------------------------------------------------------------------------------------------
// Qwen2-VL / Qwen2.5-VL
// ---------------------------------------------------------------------------------------------

/// The values of a Qwen2-VL `preprocessor_config.json`.
struct qwen2_vl_processor_config {
  std::array<double, 3> image_mean{0.48145466, 0.4578275, 0.40821073};   ///< OPENAI_CLIP_MEAN
  std::array<double, 3> image_std{0.26862954, 0.26130258, 0.27577711};   ///< OPENAI_CLIP_STD
  double rescale_factor = 1.0 / 255.0;
  std::int64_t min_pixels = 56 * 56;              ///< `min_pixels` or `size.shortest_edge`
  std::int64_t max_pixels = 28 * 28 * 1280;       ///< `max_pixels` or `size.longest_edge`
  std::int64_t patch_size = 14;
  std::int64_t temporal_patch_size = 2;
  std::int64_t merge_size = 2;
  resample_filter resample = resample_filter::bicubic;
  bool do_resize = true, do_rescale = true, do_normalize = true;
};

/// Parses a Qwen2-VL preprocessor_config.json (the hub spelling with `min_pixels`/`max_pixels` or the
/// transformers 5.x one with `size: {shortest_edge, longest_edge}`). Throws runtime_error naming the
/// key and `source` for invalid JSON, a value of the wrong type or an invalid value.
qwen2_vl_processor_config parse_qwen2_vl_processor_config(const std::string& json_text,
                                                          const std::string& source = "preprocessor_config.json");

/// Qwen2-VL's smart_resize: the (height, width) an image is resized to, both multiples of `factor`,
/// with h*w within [min_pixels, max_pixels] and the aspect ratio kept as closely as possible.
/// round() is Python's (half to even); above max_pixels the sides are floored (at least `factor`),
/// below min_pixels ceiled. Throws runtime_error naming the argument when height or width < 10, when
/// the aspect ratio exceeds 200, or when factor / min_pixels / max_pixels are not positive.
/// (transformers 5.24 accepts sides below 10; the runtime rejects them as too small to describe.)
std::pair<std::int64_t, std::int64_t> smart_resize(std::int64_t height, std::int64_t width, std::int64_t factor,
                                                   std::int64_t min_pixels, std::int64_t max_pixels);

/// The model inputs of a list of images.
struct qwen2_vl_packed {
  torch::Tensor pixel_values;     ///< float32 [sum t*h*w, C * temporal * patch * patch]
  torch::Tensor image_grid_thw;   ///< int64 [n_images, 3] (t, h, w) in patches
  std::vector<std::int64_t> num_image_tokens;  ///< t*h*w / merge² per image (<|image_pad|> count)
};

class qwen2_vl_image_processor {
 public:
  explicit qwen2_vl_image_processor(qwen2_vl_processor_config config);
  /// Reads `path`: a preprocessor_config.json file or a model directory holding one.
  static qwen2_vl_image_processor from_file(const std::string& path);

  const qwen2_vl_processor_config& config() const noexcept { return config_; }

  /// smart_resize with this processor's factor (patch * merge) and pixel bounds.
  std::pair<std::int64_t, std::int64_t> resized_size(std::int64_t height, std::int64_t width) const;

  /// Stage 1: PIL-exact bicubic resize to smart_resize(H, W), rescale (x * rescale_factor in double,
  /// stored as float) and normalize ((x - mean) / std in float), as [3, H', W'] float32.
  /// Throws as smart_resize for an image that is too small or too elongated.
  torch::Tensor normalize(const rgb_image& image) const;

  /// Stage 2: each [3, H', W'] tensor (H', W' multiples of patch*merge) is duplicated to
  /// temporal_patch_size frames and flattened into rows ordered (t, h/m, w/m, m_h, m_w), features
  /// ordered (C, T, P, P); the rows of all images are concatenated. Throws runtime_error naming
  /// 'normalized' (and the index) for a wrong dtype, rank, channel count or size.
  qwen2_vl_packed pack(const std::vector<torch::Tensor>& normalized) const;
  qwen2_vl_packed pack(const torch::Tensor& normalized) const;

  /// normalize + pack of each image.
  qwen2_vl_packed operator()(const std::vector<rgb_image>& images) const;

 private:
  qwen2_vl_processor_config config_;
};

// ---------------------------------------------------------------------------------------------
// LLaVA-OneVision
// ---------------------------------------------------------------------------------------------

/// The values of a LLaVA-OneVision `preprocessor_config.json` plus what the token count needs from
/// the model config (vision patch size, feature strategy, anyres maximum).
struct llava_onevision_processor_config {
  std::array<double, 3> image_mean{0.5, 0.5, 0.5};
  std::array<double, 3> image_std{0.5, 0.5, 0.5};
  double rescale_factor = 1.0 / 255.0;
  std::int64_t tile_size = 384;               ///< `size.height` (= width), also the crop/tile size
  /// Candidate (height, width) resolutions; from the model config's `image_grid_pinpoints` when set,
  /// else the processor config's.
  std::vector<std::array<std::int64_t, 2>> image_grid_pinpoints;
  resample_filter resample = resample_filter::bicubic;
  bool do_rescale = true, do_normalize = true;
  std::int64_t vision_patch_size = 14;        ///< SigLIP patch: tile_size / patch = 27 features per side
  std::string vision_feature_select_strategy = "full";  ///< "default" drops one token per image
  std::int64_t anyres_max_patches = 9;        ///< from `vision_aspect_ratio` "anyres_max_9"
};

/// Parses a LLaVA-OneVision preprocessor_config.json. Throws runtime_error naming the key and `source`.
llava_onevision_processor_config parse_llava_onevision_processor_config(
    const std::string& json_text, const std::string& source = "preprocessor_config.json");

/// LLaVA-NeXT's select_best_resolution: the candidate (height, width) maximising the effective
/// resolution min(int(W*s) * int(H*s), W*H), s = min(cw/W, ch/H), ties broken by the least waste
/// (first candidate wins exact ties). Throws runtime_error for an empty list or non-positive sizes.
std::array<std::int64_t, 2> select_best_resolution(std::int64_t height, std::int64_t width,
                                                   const std::vector<std::array<std::int64_t, 2>>& pinpoints);

/// The maximum tile count of a `vision_aspect_ratio` "anyres_max_<n>" (HF: int(s.strip("anyres_max_"))).
/// Throws runtime_error naming 'vision_aspect_ratio' for another form.
std::int64_t anyres_max_patches(const std::string& vision_aspect_ratio);

/// The number of <image> tokens LLaVA-OneVision uses for one (single-image, anyres) image of the
/// given original size: base (side²) + unpadded grid + one newline per grid row, with the anyres_max
/// downsample (processing_llava_onevision._get_number_of_features). With `anyres` false (an image
/// of a prompt that holds several, transformers' multi-image rule) the size does not matter: side²
/// base features + one image_newline (730 for SigLIP-384/14). Both minus 1 with the "default"
/// feature strategy.
std::int64_t llava_onevision_num_image_tokens(std::int64_t height, std::int64_t width,
                                              const llava_onevision_processor_config& config, bool anyres = true);

/// The model inputs of a list of images.
struct llava_onevision_packed {
  torch::Tensor pixel_values;   ///< float32 [sum over images of tiles, 3, S, S], base tile first
  torch::Tensor image_sizes;    ///< int64 [n_images, 2] original (height, width)
  /// int64 [1]: the images of the prompt (transformers' batch_num_images); more than 1 means that
  /// none of them is tiled. Set by operator(); pack leaves it undefined.
  torch::Tensor batch_num_images;
  std::vector<std::int64_t> num_image_tokens;
};

class llava_onevision_image_processor {
 public:
  explicit llava_onevision_image_processor(llava_onevision_processor_config config);
  /// Reads `model_dir`/preprocessor_config.json and, when present, `model_dir`/config.json (pinpoints,
  /// vision patch size, feature strategy, vision_aspect_ratio).
  static llava_onevision_image_processor from_directory(const std::string& model_dir);

  const llava_onevision_processor_config& config() const noexcept { return config_; }

  /// Stage 1. With `anyres` (an image alone in its prompt): best resolution, aspect-keeping PIL
  /// bicubic resize, centre padding with 0, tiles of tile_size row-major, and the whole image resized
  /// to tile_size² as the base tile; rescale + normalize each. Returns [1 + tiles, 3, S, S] float32,
  /// base first. Without (one of several images in a prompt, transformers' multi-image rule): the
  /// image centre-padded to a square with the colour int(image_mean · 255) per channel, resized to
  /// tile_size², rescaled and normalized: [1, 3, S, S].
  torch::Tensor normalize(const rgb_image& image, bool anyres = true) const;

  /// Stage 2: concatenates the tiles of each image; `image_sizes` are the original (height, width).
  /// An image given as one tile is an image of a multi-image prompt (normalize without anyres; an
  /// anyres image always has 1 + at least one tile) and gets llava_onevision_num_image_tokens(...,
  /// anyres = false) tokens. Throws runtime_error naming 'normalized' / 'image_sizes' when the tile
  /// count is neither 1 nor the size's 1 + grid, or the shapes are wrong.
  llava_onevision_packed pack(const std::vector<torch::Tensor>& normalized,
                              const std::vector<std::array<std::int64_t, 2>>& image_sizes) const;

  /// The images of ONE prompt, as transformers' processor(images=[images], ...): one image is tiled
  /// (anyres); several are not (each normalize(image, false)), as LlavaOnevisionImageProcessor and
  /// LlavaOnevisionForConditionalGeneration do for batch_num_images > 1. Sets batch_num_images.
  llava_onevision_packed operator()(const std::vector<rgb_image>& images) const;

  /// Tiles (1 + grid) an image of this size is cut into.
  std::int64_t num_tiles(std::int64_t height, std::int64_t width) const;

 private:
  llava_onevision_processor_config config_;
};

// ---------------------------------------------------------------------------------------------
// One interface over the families
// ---------------------------------------------------------------------------------------------

struct model_config;

/// Resize bounds in pixels of a processor that resizes to a pixel budget (Qwen2-VL's smart_resize).
struct pixel_bounds {
  std::int64_t min_pixels = 0;
  std::int64_t max_pixels = 0;
};

/// The attention work of the vision tower on one image: `sequences` sequences of `sequence_length`
/// patches each attend within themselves (Qwen2.5-VL: one sequence of all the image's patches in its
/// full-attention blocks; LLaVA-OneVision: one sequence of side² patches per tile, all tiles in one
/// batch), and the LLM image tokens the image becomes.
struct vision_workload {
  std::int64_t sequences = 0;
  std::int64_t sequence_length = 0;
  std::int64_t image_tokens = 0;
};

/// Bytes of the attention scores the runtime's vision tower holds at once for `w`. The tower
/// computes attention in query chunks (src/attention_util.hpp): the rows = vision heads × sequences
/// take q = min(L, max(1, chunk_elements / (rows × L))) queries at a time against all L keys, so
/// rows × q × L scores exist at once, × 8 bytes (the scores and their fp32 softmax live together; in
/// bfloat16 the scores, the fp32 softmax and its cast back: 2 + 4 + 2). A sequence that fits the
/// budget is one chunk: heads × sequences × L² × 8, the unchunked figure. `chunk_elements` ≤ 0 means
/// the runtime's own budget (the environment variable CONSR_ATTENTION_CHUNK_ELEMENTS, else 2^26),
/// read now. The rest of the tower's activations (linear in L) and the language model (chunked with
/// the same budget) are not counted. Throws runtime_error naming 'config' for a config of no known
/// family, 'w' for negative sizes, and naming the variable when CONSR_ATTENTION_CHUNK_ELEMENTS is set
/// to something other than a positive integer.
double vision_attention_bytes(const model_config& config, const vision_workload& w, std::int64_t chunk_elements = 0);

/// The model inputs of one image, whichever family (the fields a family does not use stay undefined).
struct packed_image {
  torch::Tensor pixel_values;    ///< as the family's pack
  torch::Tensor image_grid_thw;  ///< Qwen2-VL: int64 [1, 3]
  torch::Tensor image_sizes;     ///< LLaVA-OneVision: int64 [1, 2] original (height, width)
  std::int64_t num_image_tokens = 0;  ///< LLM image placeholder tokens of the image
};

/// A model family's image processing behind one interface, for code that handles every family the
/// same way: the processor's two stages for one image (normalize → e.g. the corruption of spec §3 →
/// pack), the size check, the pixel bounds where the family has them, and the ids of the tokens that
/// stand for image / video features. Made by make_image_processor from the model config;
/// implemented by Qwen2.5-VL (qwen2_vl_image_processor) and LLaVA-OneVision
/// (llava_onevision_image_processor).
class image_processor {
 public:
  virtual ~image_processor() = default;

  /// The model_type of the family ("qwen2_5_vl", "llava_onevision").
  virtual const std::string& model_type() const noexcept = 0;
  /// The pixel bounds in effect, or nullopt when the family has none (LLaVA-OneVision tiles at a
  /// fixed size).
  virtual std::optional<pixel_bounds> bounds() const = 0;
  /// Throws runtime_error when normalize would reject an image of this size (without resizing).
  virtual void check_size(std::int64_t height, std::int64_t width) const = 0;
  /// Stage 1: the rescaled and normalized float tensor of one image (the family's normalize).
  virtual torch::Tensor normalize(const rgb_image& image) const = 0;
  /// Stage 2 of one image; `height` and `width` are the decoded image's (LLaVA's anyres needs them).
  virtual packed_image pack(const torch::Tensor& normalized, std::int64_t height, std::int64_t width) const = 0;
  /// The image and the video placeholder token ids of the model config.
  virtual std::vector<std::int64_t> feature_token_ids() const = 0;
  /// What the vision tower does with one image of this size (alone in its prompt), without
  /// resizing it: see vision_workload. Throws as check_size.
  virtual vision_workload workload(std::int64_t height, std::int64_t width) const = 0;
};

/// The image processor of the family `config` describes, read from `model_dir`
/// (qwen2_vl_image_processor::from_file / llava_onevision_image_processor::from_directory).
/// Non-zero fields of `overrides` replace the file's pixel bounds. Throws runtime_error naming
/// 'overrides' when they are given to a family without pixel bounds, and 'config' for a config
/// of no known family.
std::unique_ptr<image_processor> make_image_processor(const model_config& config, const std::string& model_dir,
                                                      const pixel_bounds& overrides = {});

}  // namespace consr_runtime
