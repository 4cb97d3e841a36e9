// Qwen2.5-VL and LLaVA-OneVision (see consr_runtime/models.hpp).
#include "consr_runtime/models.hpp"

#include <algorithm>
#include <array>
#include <sstream>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "consr_runtime/error.hpp"
#include "consr_runtime/safetensors.hpp"
#include "consr_runtime/vision.hpp"
#include "consr_runtime/weights.hpp"
#include "torch_util.hpp"

namespace consr_runtime {
namespace {

[[noreturn]] void fail(const std::string& function, const std::string& argument, const std::string& message) {
  throw runtime_error("consr_runtime::" + function + ": argument '" + argument + "': " + message);
}

void check_ids(const char* function, const model_inputs& inputs) {
  const torch::Tensor& ids = inputs.input_ids;
  if (!ids.defined() || ids.dim() != 2 || ids.scalar_type() != torch::kInt64)
    fail(function, "input_ids", "expected int64 [B, L], got " + shape_string(ids));
  if (ids.size(0) < 1 || ids.size(1) < 1) fail(function, "input_ids", "empty batch " + shape_string(ids));
  if (inputs.attention_mask.defined() && inputs.attention_mask.sizes() != ids.sizes())
    fail(function, "attention_mask", "shape " + shape_string(inputs.attention_mask) + " differs from input_ids " +
                                         shape_string(ids));
}

torch::Tensor mask_or_ones(const model_inputs& inputs) {
  if (inputs.attention_mask.defined()) return inputs.attention_mask.ne(0).to(torch::kInt64);
  return torch::ones(inputs.input_ids.sizes(), torch::TensorOptions().dtype(torch::kInt64).device(inputs.input_ids.device()));
}

// The language model's checkpoint prefix: the first candidate under which the embedding exists.
std::string find_prefix(const checkpoint& ck, const std::vector<std::string>& candidates, const std::string& probe) {
  for (const auto& c : candidates)
    if (ck.contains(c + probe)) return c;
  std::string tried;
  for (const auto& c : candidates) tried += (tried.empty() ? "" : ", ") + c + probe;
  throw runtime_error("consr_runtime::load_model: checkpoint '" + ck.directory() + "' has none of the tensors " + tried);
}

// What image_features of both families check before running the vision tower: `images` hold the
// precomputed features (returned on `device`: the tower does not run) or pixel_values with the
// family's `layout` tensor (Qwen2.5-VL's image_grid_thw, LLaVA-OV's image_sizes), named `layout_name`
// in the error. Returns an undefined tensor when the tower is to run.
torch::Tensor given_features(const char* fn, const image_inputs& images, const torch::Tensor& layout,
                             const char* layout_name, const torch::Device& device) {
  if (images.features.defined()) return images.features.to(device);
  if (!images.pixel_values.defined()) fail(fn, "images", "neither pixel_values nor features given");
  if (!layout.defined()) fail(fn, layout_name, "required with pixel_values");
  return {};
}

}  // namespace

// ---- rope index -----------------------------------------------------------------------------------

torch::Tensor qwen2_5_vl_rope_index(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                    const torch::Tensor& image_grid_thw, std::int64_t image_token_id,
                                    std::int64_t spatial_merge_size, torch::Tensor* next_position) {
  const char* fn = "qwen2_5_vl_rope_index";
  if (!input_ids.defined() || input_ids.dim() != 2 || input_ids.scalar_type() != torch::kInt64)
    fail(fn, "input_ids", "expected int64 [B, L], got " + shape_string(input_ids));
  if (attention_mask.defined() && attention_mask.sizes() != input_ids.sizes())
    fail(fn, "attention_mask", "shape " + shape_string(attention_mask) + " differs from input_ids " + shape_string(input_ids));
  if (spatial_merge_size < 1) fail(fn, "spatial_merge_size", "must be positive");
  std::vector<std::array<std::int64_t, 3>> grids;
  if (image_grid_thw.defined() && image_grid_thw.numel() > 0) {
    if (image_grid_thw.dim() != 2 || image_grid_thw.size(1) != 3)
      fail(fn, "image_grid_thw", "expected [n_images, 3], got " + shape_string(image_grid_thw));
    torch::Tensor g = image_grid_thw.to(torch::kCPU, torch::kInt64).contiguous();
    auto acc = g.accessor<std::int64_t, 2>();
    for (std::int64_t i = 0; i < g.size(0); ++i) {
      std::array<std::int64_t, 3> thw{acc[i][0], acc[i][1], acc[i][2]};
      if (thw[0] < 1 || thw[1] < 1 || thw[2] < 1 || thw[1] % spatial_merge_size || thw[2] % spatial_merge_size)
        fail(fn, "image_grid_thw", "row " + std::to_string(i) + " = [" + std::to_string(thw[0]) + ", " +
                                       std::to_string(thw[1]) + ", " + std::to_string(thw[2]) +
                                       "] is not positive with h, w divisible by " + std::to_string(spatial_merge_size));
      grids.push_back(thw);
    }
  }
  const std::int64_t batch = input_ids.size(0), len = input_ids.size(1);
  torch::Tensor ids = input_ids.to(torch::kCPU).contiguous();
  torch::Tensor mask = attention_mask.defined() ? attention_mask.to(torch::kCPU).ne(0).contiguous()
                                                : torch::ones({batch, len}, torch::kBool);
  torch::Tensor pos = torch::zeros({3, batch, len}, torch::kInt64);
  torch::Tensor next = torch::zeros({batch}, torch::kInt64);
  auto id = ids.accessor<std::int64_t, 2>();
  auto m = mask.accessor<bool, 2>();
  auto p = pos.accessor<std::int64_t, 3>();
  std::size_t grid_cursor = 0;
  for (std::int64_t b = 0; b < batch; ++b) {
    std::vector<std::int64_t> real;
    for (std::int64_t i = 0; i < len; ++i)
      if (m[b][i]) real.push_back(i);
    std::int64_t current = 0, max_pos = -1;
    std::size_t i = 0;
    while (i < real.size()) {
      if (id[b][real[i]] != image_token_id) {  // text: 1-D on all three rows
        for (int r = 0; r < 3; ++r) p[r][b][real[i]] = current;
        max_pos = std::max(max_pos, current);
        ++current;
        ++i;
        continue;
      }
      std::size_t run_end = i;
      while (run_end < real.size() && id[b][real[run_end]] == image_token_id) ++run_end;
      std::size_t k = i;
      while (k < run_end) {  // a run may hold several images back to back
        if (grid_cursor >= grids.size())
          fail(fn, "input_ids", "row " + std::to_string(b) + " has more image tokens than image_grid_thw describes (" +
                                    std::to_string(grids.size()) + " images)");
        auto [t, h, w] = grids[grid_cursor];
        const std::int64_t lh = h / spatial_merge_size, lw = w / spatial_merge_size;
        const std::int64_t count = t * lh * lw;
        if (static_cast<std::int64_t>(run_end - k) < count)
          fail(fn, "input_ids", "row " + std::to_string(b) + ": image " + std::to_string(grid_cursor) + " needs " +
                                    std::to_string(count) + " image tokens but its run has " + std::to_string(run_end - k));
        // transformers 5.24 get_vision_position_ids: t·1 (images), h, w in raster order, all + start.
        for (std::int64_t tt = 0; tt < t; ++tt)
          for (std::int64_t hh = 0; hh < lh; ++hh)
            for (std::int64_t ww = 0; ww < lw; ++ww, ++k) {
              std::int64_t at = real[k];
              p[0][b][at] = current + tt;
              p[1][b][at] = current + hh;
              p[2][b][at] = current + ww;
              max_pos = std::max({max_pos, current + tt, current + hh, current + ww});
            }
        current += std::max(lh, lw);
        ++grid_cursor;
      }
      i = run_end;
    }
    next[b] = max_pos + 1;
  }
  if (grid_cursor != grids.size())
    fail(fn, "image_grid_thw", "describes " + std::to_string(grids.size()) + " images but input_ids hold image tokens for " +
                                   std::to_string(grid_cursor));
  if (next_position) *next_position = next.to(input_ids.device());
  return pos.to(input_ids.device());
}

void decode_state::select_rows(const torch::Tensor& index) {
  if (!attention_mask.defined()) return;
  torch::Tensor i = index.to(attention_mask.device(), torch::kInt64);
  cache.select_rows(i);
  attention_mask = attention_mask.index_select(0, i);
  next_position = next_position.index_select(0, i);
  real_length = real_length.index_select(0, i);
}

// ---- common model -----------------------------------------------------------------------------------

vision_language_model::vision_language_model(model_config config, const torch::TensorOptions& options)
    : config_(std::move(config)), options_(options) {
  container_ = register_module("model", std::make_shared<torch::nn::Module>());
}

void vision_language_model::build_language_model() {
  const text_config& t = text();
  language_model = container_->register_module("language_model", qwen2_model(t, options_));
  if (!t.tie_word_embeddings) lm_head = register_module("lm_head", linear(t.hidden_size, t.vocab_size, false, options_));
}

void vision_language_model::load_checkpoint(const std::string& dir, const checkpoint& ck,
                                            const std::vector<weight_binding>& bindings, const load_options& options) {
  load_weights(*this, ck, bindings, options);
  directory_ = dir;
}

torch::Tensor vision_language_model::embed(const model_inputs& inputs) {
  check_ids("vision_language_model::embed", inputs);
  torch::Tensor ids = inputs.input_ids.to(device());
  torch::Tensor embeds = language_model->embed_tokens->forward(ids);
  torch::Tensor is_image = ids.eq(image_token_id());
  if (inputs.attention_mask.defined()) is_image = is_image.logical_and(inputs.attention_mask.to(device()).ne(0));
  const std::int64_t n_tokens = is_image.sum().item<std::int64_t>();
  if (n_tokens == 0 && inputs.images.empty()) return embeds;
  if (inputs.images.empty())
    fail("vision_language_model::embed", "input_ids",
         std::to_string(n_tokens) + " image tokens (id " + std::to_string(image_token_id()) + ") but no images were given");
  torch::Tensor features = image_features(inputs.images);
  if (features.dim() != 2 || features.size(1) != text().hidden_size)
    fail("vision_language_model::embed", "images", "image features must be [n, " + std::to_string(text().hidden_size) +
                                                       "], got " + shape_string(features));
  if (features.size(0) != n_tokens)
    fail("vision_language_model::embed", "input_ids",
         "image features and image tokens do not match: " + std::to_string(n_tokens) + " image tokens (id " +
             std::to_string(image_token_id()) + ") but " + std::to_string(features.size(0)) + " feature rows");
  return embeds.masked_scatter(is_image.unsqueeze(-1), features.to(embeds.scalar_type()));
}

torch::Tensor vision_language_model::forward_hidden(const model_inputs& inputs, decode_state* state) {
  check_ids("vision_language_model::forward", inputs);
  torch::Tensor mask = mask_or_ones(inputs).to(device());
  torch::Tensor real_length = mask.sum(1);
  const std::int64_t longest = real_length.max().item<std::int64_t>();
  if (longest > text().max_position_embeddings)
    fail("vision_language_model::forward", "input_ids",
         "a row has " + std::to_string(longest) + " tokens, more than max_position_embeddings = " +
             std::to_string(text().max_position_embeddings) + " (" + config_.source + ")");
  torch::Tensor next;
  torch::Tensor positions = position_ids(inputs, &next);
  torch::Tensor embeds = embed(inputs);
  if (!state) return language_model->forward(embeds, positions.to(device()), mask, nullptr);
  state->cache.clear();
  torch::Tensor hidden = language_model->forward(embeds, positions.to(device()), mask, &state->cache);
  state->attention_mask = mask;
  state->next_position = next.to(device());
  state->real_length = real_length;
  return hidden;
}

torch::Tensor vision_language_model::forward(const model_inputs& inputs, decode_state* state) {
  return logits(forward_hidden(inputs, state));
}

namespace {

// Feeds ids [B, L] (mask int64 [B, L], 1 real / 0 padding) after the cached positions: each real
// token gets the row's next position + the real tokens before it. Checked by the callers.
torch::Tensor run_extension(const char* fn, vision_language_model& model, const torch::Tensor& ids,
                            const torch::Tensor& mask, decode_state& state) {
  const std::int64_t batch = ids.size(0), len = ids.size(1);
  torch::Tensor added = mask.sum(1);
  if ((state.real_length + added).max().item<std::int64_t>() > model.text().max_position_embeddings)
    fail(fn, "state", "the context is full: max_position_embeddings = " + std::to_string(model.text().max_position_embeddings));
  torch::Tensor pos = state.next_position.view({batch, 1}) + (mask.cumsum(1) - mask);
  // mRoPE: text after the image continues 1-D, the same position on the t, h and w rows.
  if (!model.text().mrope_section.empty()) pos = pos.unsqueeze(0).expand({3, batch, len}).contiguous();
  torch::Tensor full_mask = torch::cat({state.attention_mask, mask.to(state.attention_mask.scalar_type())}, 1);
  torch::Tensor hidden =
      model.language_model->forward(model.language_model->embed_tokens->forward(ids), pos, full_mask, &state.cache);
  state.attention_mask = full_mask;
  state.next_position = state.next_position + added;
  state.real_length = state.real_length + added;
  return hidden;
}

}  // namespace

torch::Tensor vision_language_model::decode_hidden(const torch::Tensor& next_ids, decode_state& state) {
  const char* fn = "vision_language_model::decode";
  if (!state.attention_mask.defined()) fail(fn, "state", "no prefill: call forward(inputs, &state) first");
  const std::int64_t batch = state.batch_size();
  if (!next_ids.defined() || next_ids.scalar_type() != torch::kInt64 || next_ids.numel() != batch)
    fail(fn, "next_ids", "expected int64 [" + std::to_string(batch) + "] (one token per row), got " + shape_string(next_ids));
  // A generated image token embeds as a plain token here (as in transformers' decoding steps).
  torch::Tensor mask = torch::ones({batch, 1}, state.attention_mask.options());
  return run_extension(fn, *this, next_ids.reshape({batch, 1}).to(device()), mask, state).select(1, 0);
}

torch::Tensor vision_language_model::extend_hidden(const torch::Tensor& ids_in, const torch::Tensor& mask_in,
                                                   decode_state& state) {
  const char* fn = "vision_language_model::extend";
  if (!state.attention_mask.defined()) fail(fn, "state", "no prefill: call forward(inputs, &state) first");
  const std::int64_t batch = state.batch_size();
  if (!ids_in.defined() || ids_in.scalar_type() != torch::kInt64 || ids_in.dim() != 2 || ids_in.size(0) != batch ||
      ids_in.size(1) < 1)
    fail(fn, "ids", "expected int64 [" + std::to_string(batch) + ", L >= 1], got " + shape_string(ids_in));
  if (mask_in.defined() && mask_in.sizes() != ids_in.sizes())
    fail(fn, "mask", "shape " + shape_string(mask_in) + " differs from ids " + shape_string(ids_in));
  torch::Tensor ids = ids_in.to(device());
  torch::Tensor mask = mask_in.defined() ? mask_in.to(device()).ne(0).to(torch::kInt64)
                                         : torch::ones(ids.sizes(), state.attention_mask.options());
  torch::Tensor real_ids = ids.masked_select(mask.ne(0));
  if (real_ids.numel() > 0) {
    const std::int64_t lo = real_ids.min().item<std::int64_t>(), hi = real_ids.max().item<std::int64_t>();
    if (lo < 0 || hi >= text().vocab_size)
      fail(fn, "ids", "id " + std::to_string(lo < 0 ? lo : hi) + " outside [0, " + std::to_string(text().vocab_size) + ")");
    // As a prefill would (embed() finds image tokens without features): images need a prefill.
    if (real_ids.eq(image_token_id()).any().item<bool>())
      fail(fn, "ids", "image token " + std::to_string(image_token_id()) + " in a continuation: images go through a prefill");
  }
  // Padding gets a valid id: it is masked out as a key and its own output is not used.
  return run_extension(fn, *this, ids.masked_fill(mask.eq(0), 0), mask, state);
}

torch::Tensor vision_language_model::decode(const torch::Tensor& next_ids, decode_state& state) {
  return logits(decode_hidden(next_ids, state));
}

torch::Tensor vision_language_model::logits(const torch::Tensor& hidden) {
  return lm_logits(hidden, lm_head, language_model->embed_tokens);
}

// ---- Qwen2.5-VL ---------------------------------------------------------------------------------------

qwen2_5_vl_model::qwen2_5_vl_model(const model_config& config, const torch::TensorOptions& options)
    : vision_language_model(config, options) {
  if (!config.qwen2_5_vl)
    throw runtime_error("consr_runtime::qwen2_5_vl_model: " + config.source + " has model_type '" + config.model_type +
                        "', not qwen2_5_vl");
  visual = container_->register_module("visual", std::make_shared<qwen2_5_vl_vision_model_impl>(config.qwen2_5_vl->vision, options));
  build_language_model();
}

std::shared_ptr<qwen2_5_vl_model> qwen2_5_vl_model::load(const std::string& dir, const torch::TensorOptions& options) {
  auto model = std::make_shared<qwen2_5_vl_model>(load_model_config(dir), options);
  checkpoint ck(dir);
  // Newer saves: model.language_model.* / model.visual.*; the hub (and transformers 5's
  // save_pretrained, which reverts the mapping): model.* / visual.*.
  model->lm_hub_prefix_ = find_prefix(ck, {"model.language_model.", "model."}, "embed_tokens.weight");
  load_options opt;
  if (model->text().tie_word_embeddings) opt.ignore_extra.push_back("^lm_head\\.weight$");
  model->load_checkpoint(dir, ck,
                         {{"model.language_model.", {model->lm_hub_prefix_}},
                          {"model.visual.", {"model.visual.", "visual."}},
                          {"lm_head.", {"lm_head."}}},
                         opt);
  return model;
}

torch::Tensor qwen2_5_vl_model::image_features(const image_inputs& images) {
  const torch::Tensor given =
      given_features("qwen2_5_vl_model::image_features", images, images.image_grid_thw, "image_grid_thw", device());
  if (given.defined()) return given;
  return visual->forward(images.pixel_values.to(device(), dtype()), images.image_grid_thw.to(torch::kInt64));
}

torch::Tensor qwen2_5_vl_model::position_ids(const model_inputs& inputs, torch::Tensor* next_position) {
  return qwen2_5_vl_rope_index(inputs.input_ids, inputs.attention_mask, inputs.images.image_grid_thw, image_token_id(),
                               config_.qwen2_5_vl->vision.spatial_merge_size, next_position);
}

// ---- LLaVA-OneVision ----------------------------------------------------------------------------------

llava_onevision_model::llava_onevision_model(const model_config& config, const torch::TensorOptions& options)
    : vision_language_model(config, options) {
  if (!config.llava_onevision)
    throw runtime_error("consr_runtime::llava_onevision_model: " + config.source + " has model_type '" +
                        config.model_type + "', not llava_onevision");
  vision = std::make_shared<llava_onevision_vision_impl>(*config.llava_onevision, options);
  // Register the tower's parts directly under `model` so that parameter names are transformers 5's
  // (model.vision_tower.*, model.multi_modal_projector.*, model.image_newline); the tensors are
  // shared with `vision`, which runs the forward.
  for (const auto& child : vision->named_children()) container_->register_module(child.key(), child.value());
  for (const auto& param : vision->named_parameters(/*recurse=*/false)) container_->register_parameter(param.key(), param.value());
  build_language_model();
}

std::shared_ptr<llava_onevision_model> llava_onevision_model::load(const std::string& dir,
                                                                   const torch::TensorOptions& options) {
  auto model = std::make_shared<llava_onevision_model>(load_model_config(dir), options);
  checkpoint ck(dir);
  if (model->config().llava_onevision->checkpoint_layout == "lmms-lab") {
    // LLaVA-NeXT's LlavaQwenForCausalLM names (what transformers' convert_llava_onevision_weights_to_hf
    // maps from): the Qwen2 decoder at model.* / lm_head.*, SigLIP under
    // model.vision_tower.vision_tower.vision_model.*, the projector as the nn.Sequential
    // model.mm_projector.{0,2}.* (Linear, GELU, Linear), model.image_newline. A tensor missing under
    // these names is reported by load_weights with the name it was looked up as.
    model->lm_hub_prefix_ = "model.";
    model->lm_head_hub_prefix_ = "lm_head.";
    load_options opt;
    if (model->text().tie_word_embeddings) opt.ignore_extra.push_back("^lm_head\\.weight$");
    opt.ignore_extra.push_back("^model\\.vision_tower\\.vision_tower\\.vision_model\\.head\\.");  // SigLIP's unused pooling head
    opt.ignore_extra.push_back("\\.rotary_emb\\.inv_freq$");  // computed, not loaded (older saves kept it)
    model->load_checkpoint(dir, ck,
                           {{"model.language_model.", {"model."}},
                            {"lm_head.", {"lm_head."}},
                            {"model.vision_tower.vision_model.", {"model.vision_tower.vision_tower.vision_model."}},
                            {"model.multi_modal_projector.linear_1.", {"model.mm_projector.0."}},
                            {"model.multi_modal_projector.linear_2.", {"model.mm_projector.2."}},
                            {"model.image_newline", {"model.image_newline"}}},
                           opt);
    return model;
  }
  model->lm_hub_prefix_ = find_prefix(ck, {"model.language_model.", "language_model.model."}, "embed_tokens.weight");
  model->lm_head_hub_prefix_ = ck.contains("lm_head.weight") || !ck.contains("language_model.lm_head.weight")
                                   ? "lm_head."
                                   : "language_model.lm_head.";
  load_options opt;
  if (model->text().tie_word_embeddings) opt.ignore_extra.push_back("^(language_model\\.)?lm_head\\.weight$");
  // SigLIP's pooling head (vision_use_head) is never used by LLaVA-OV.
  opt.ignore_extra.push_back("^(model\\.)?vision_tower\\.(vision_model\\.)?head\\.");
  // SigLIP without the vision_model level: transformers 5.24's save_pretrained writes
  // vision_tower.embeddings.*; the hub conversion script vision_tower.vision_model.*.
  model->load_checkpoint(
      dir, ck,
      {{"model.language_model.", {model->lm_hub_prefix_}},
       {"lm_head.", {model->lm_head_hub_prefix_}},
       {"model.vision_tower.vision_model.",
        {"model.vision_tower.vision_model.", "vision_tower.vision_model.", "model.vision_tower.", "vision_tower."}},
       {"model.multi_modal_projector.", {"model.multi_modal_projector.", "multi_modal_projector."}},
       {"model.image_newline", {"model.image_newline", "image_newline"}}},
      opt);
  return model;
}

torch::Tensor llava_onevision_model::image_features(const image_inputs& images) {
  const torch::Tensor given =
      given_features("llava_onevision_model::image_features", images, images.image_sizes, "image_sizes", device());
  if (given.defined()) return given;
  return vision->forward(images.pixel_values.to(device(), dtype()), images.image_sizes.to(torch::kInt64),
                         images.batch_num_images);
}

torch::Tensor llava_onevision_model::position_ids(const model_inputs& inputs, torch::Tensor* next_position) {
  torch::Tensor mask = mask_or_ones(inputs);
  if (next_position) *next_position = mask.sum(1);
  return positions_from_mask(mask);
}

std::shared_ptr<vision_language_model> load_model(const std::string& dir, const torch::TensorOptions& options) {
  model_config config = load_model_config(dir);
  if (config.qwen2_5_vl) return qwen2_5_vl_model::load(dir, options);
  return llava_onevision_model::load(dir, options);
}

}  // namespace consr_runtime
