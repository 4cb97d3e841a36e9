// Sampling, batched generation and teacher-forced log-probs (see consr_runtime/generation.hpp).
#include "consr_runtime/generation.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <sstream>
#include <string>

#include <torch/torch.h>

#include <consr/adapters/torch.hpp>

#include "consr_runtime/error.hpp"

namespace consr_runtime {
namespace {

[[noreturn]] void fail(const std::string& function, const std::string& argument, const std::string& message) {
  throw runtime_error("consr_runtime::" + function + ": argument '" + argument + "': " + message);
}

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

enum class image_kind { none, pixels, features };

image_kind kind_of(const image_inputs& images) {
  if (images.features.defined()) return image_kind::features;
  if (images.pixel_values.defined()) return image_kind::pixels;
  return image_kind::none;
}

void check_sampling(const char* fn, const sampling_options& o) {
  if (o.max_new_tokens < 0) fail(fn, "max_new_tokens", "must be non-negative, got " + std::to_string(o.max_new_tokens));
  if (!(o.temperature >= 0) || !std::isfinite(o.temperature))
    fail(fn, "temperature", "must be finite and >= 0, got " + std::to_string(o.temperature));
  if (!(o.top_p > 0 && o.top_p <= 1)) fail(fn, "top_p", "must be in (0, 1], got " + std::to_string(o.top_p));
}

}  // namespace

double counter_uniform(std::uint64_t seed, std::uint64_t stream, std::uint64_t counter) {
  std::uint64_t h = splitmix64(seed ^ 0x5851F42D4C957F2Dull);
  h = splitmix64(h ^ stream);
  h = splitmix64(h ^ (counter * 0xD1B54A32D192ED03ull));
  return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0);  // 53 bits → [0, 1)
}

model_inputs collate(const std::vector<prompt_input>& prompts, std::int64_t pad_token_id) {
  const char* fn = "collate";
  if (prompts.empty()) fail(fn, "prompts", "empty list");
  const std::int64_t batch = static_cast<std::int64_t>(prompts.size());
  std::int64_t len = 0;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].input_ids.empty()) fail(fn, "prompts", "prompt " + std::to_string(i) + " has no tokens");
    len = std::max<std::int64_t>(len, static_cast<std::int64_t>(prompts[i].input_ids.size()));
  }
  model_inputs out;
  out.input_ids = torch::full({batch, len}, pad_token_id, torch::kInt64);
  out.attention_mask = torch::zeros({batch, len}, torch::kInt64);
  auto ids = out.input_ids.accessor<std::int64_t, 2>();
  auto mask = out.attention_mask.accessor<std::int64_t, 2>();
  for (std::int64_t b = 0; b < batch; ++b) {
    const auto& p = prompts[static_cast<std::size_t>(b)].input_ids;
    const std::int64_t off = len - static_cast<std::int64_t>(p.size());
    for (std::size_t i = 0; i < p.size(); ++i) {
      ids[b][off + static_cast<std::int64_t>(i)] = p[i];
      mask[b][off + static_cast<std::int64_t>(i)] = 1;
    }
  }
  // Images of every row, in row order: the model scatters them into the placeholder runs in the
  // same (row-major) order.
  image_kind kind = image_kind::none;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    image_kind k = kind_of(prompts[i].images);
    if (k == image_kind::none) continue;
    if (kind != image_kind::none && k != kind)
      fail(fn, "prompts", "prompt " + std::to_string(i) + " mixes precomputed image features and pixel_values with other prompts");
    kind = k;
  }
  if (kind == image_kind::none) return out;
  std::vector<torch::Tensor> pixels, grids, sizes, features;
  std::vector<std::int64_t> images_per_row;  // LLaVA-OV: a prompt is one row
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const image_inputs& im = prompts[i].images;
    if (im.image_grid_thw.defined()) grids.push_back(im.image_grid_thw.to(torch::kInt64).reshape({-1, 3}));
    if (im.image_sizes.defined()) {
      sizes.push_back(im.image_sizes.to(torch::kInt64).reshape({-1, 2}));
      images_per_row.push_back(sizes.back().size(0));
    }
    if (kind == image_kind::features) {
      if (im.features.defined()) features.push_back(im.features);
    } else if (im.pixel_values.defined()) {
      // Qwen2.5-VL patch rows [N, F] and LLaVA-OV tiles [N, C, S, S] both concatenate along dim 0.
      if (!pixels.empty() && pixels.front().sizes().slice(1) != im.pixel_values.sizes().slice(1))
        fail(fn, "prompts", "prompt " + std::to_string(i) + ": pixel_values shape differs from the other prompts'");
      pixels.push_back(im.pixel_values);
    }
  }
  if (!pixels.empty()) out.images.pixel_values = torch::cat(pixels, 0);
  if (!features.empty()) out.images.features = torch::cat(features, 0);
  if (!grids.empty()) out.images.image_grid_thw = torch::cat(grids, 0);
  if (!sizes.empty()) {
    out.images.image_sizes = torch::cat(sizes, 0);
    out.images.batch_num_images = torch::tensor(images_per_row, torch::kInt64);
  }
  return out;
}

std::vector<std::int64_t> chat_stop_token_ids(const tokenizer& tok) {
  std::vector<std::int64_t> ids;
  for (const char* stop : {"<|im_end|>", "<|endoftext|>"})
    if (auto id = tok.find_token(stop)) ids.push_back(*id);
  return ids;
}

std::int64_t sample_token(const torch::Tensor& logits, double temperature, double top_p, double u) {
  const char* fn = "sample_token";
  if (!logits.defined() || logits.numel() < 1) fail(fn, "logits", "empty");
  if (!(temperature >= 0) || !std::isfinite(temperature)) fail(fn, "temperature", "must be finite and >= 0");
  if (!(top_p > 0 && top_p <= 1)) fail(fn, "top_p", "must be in (0, 1], got " + std::to_string(top_p));
  if (!(u >= 0 && u < 1)) fail(fn, "u", "must be in [0, 1)");
  torch::Tensor row = logits.detach().reshape({-1}).to(torch::kCPU, torch::kFloat64).contiguous();
  const double* z = row.data_ptr<double>();
  const std::int64_t vocab = row.numel();
  std::int64_t best = -1;
  for (std::int64_t i = 0; i < vocab; ++i) {
    if (std::isnan(z[i]) || z[i] == std::numeric_limits<double>::infinity())
      fail(fn, "logits", "entry " + std::to_string(i) + " is not finite");
    if (best < 0 || z[i] > z[best]) best = i;
  }
  if (z[best] == -std::numeric_limits<double>::infinity()) fail(fn, "logits", "every entry is -inf");
  if (temperature == 0) return best;
  std::vector<double> p(static_cast<std::size_t>(vocab));
  double total = 0;
  for (std::int64_t i = 0; i < vocab; ++i) total += (p[i] = std::exp((z[i] - z[best]) / temperature));
  if (top_p >= 1) {
    const double target = u * total;
    double cum = 0;
    std::int64_t last = best;
    for (std::int64_t i = 0; i < vocab; ++i) {
      if (p[i] <= 0) continue;
      cum += p[i];
      last = i;
      if (cum > target) return i;
    }
    return last;  // rounding: u·total at the very end
  }
  // Nucleus: tokens by probability, descending; keep token r iff the mass before it is < top_p (HF
  // TopPLogitsWarper: remove where the ascending cumsum <= 1 − top_p), at least one. Ties are ordered
  // by higher id first, which is HF's order (a stable ascending torch.sort, read from the end).
  // Sorting a growing prefix avoids a full sort of a 150k vocabulary for a typical small nucleus.
  std::vector<std::int64_t> order(static_cast<std::size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  auto before = [&](std::int64_t a, std::int64_t b) { return p[a] > p[b] || (p[a] == p[b] && a > b); };
  const double threshold = top_p * total;
  std::int64_t sorted = 0, kept = 0;
  double kept_mass = 0;
  for (std::int64_t k = std::min<std::int64_t>(vocab, 64);; k = std::min<std::int64_t>(vocab, k * 4)) {
    std::partial_sort(order.begin() + sorted, order.begin() + k, order.end(), before);
    sorted = k;
    while (kept < sorted && (kept == 0 || kept_mass < threshold)) kept_mass += p[order[kept++]];
    if (kept < sorted || kept_mass >= threshold || sorted == vocab) break;
  }
  const double target = u * kept_mass;
  double cum = 0;
  for (std::int64_t r = 0; r < kept; ++r) {
    cum += p[order[r]];
    if (cum > target) return order[r];
  }
  return order[kept - 1];
}

namespace {

void check_generation(const char* fn, const vision_language_model& model, const sampling_options& options) {
  check_sampling(fn, options);
  const std::int64_t vocab = model.text().vocab_size;
  for (auto s : options.stop_token_ids)
    if (s < 0 || s >= vocab) fail(fn, "stop_token_ids", "id " + std::to_string(s) + " outside [0, " + std::to_string(vocab) + ")");
  if (options.pad_token_id < 0 || options.pad_token_id >= vocab)
    fail(fn, "pad_token_id", "id " + std::to_string(options.pad_token_id) + " outside [0, " + std::to_string(vocab) + ")");
}

// The decoding loop after a prefill: `logits` [B, V] (CPU) of each state row's last position; row r
// of the state belongs to results[r] and draws with key keys[r].
std::vector<generation_result> decode_loop(vision_language_model& model, decode_state& state, torch::Tensor logits,
                                           const sampling_options& options, const std::vector<std::uint64_t>& keys) {
  const std::size_t batch = keys.size();
  std::vector<generation_result> results(batch);
  std::vector<std::size_t> active(batch);  // active[r] = result index of state row r
  std::iota(active.begin(), active.end(), 0);
  const std::int64_t context = model.text().max_position_embeddings;
  for (std::int64_t step = 0; !active.empty(); ++step) {
    std::vector<std::int64_t> next_ids;
    std::vector<std::int64_t> keep_rows;
    std::vector<std::size_t> still_active;
    torch::Tensor real = state.real_length.to(torch::kCPU);
    for (std::size_t r = 0; r < active.size(); ++r) {
      const std::size_t i = active[r];
      const double u = counter_uniform(options.seed, keys[i], static_cast<std::uint64_t>(step));
      const std::int64_t token = sample_token(logits[static_cast<std::int64_t>(r)], options.temperature, options.top_p, u);
      generation_result& res = results[i];
      if (std::find(options.stop_token_ids.begin(), options.stop_token_ids.end(), token) != options.stop_token_ids.end()) {
        res.stop_token = token;
        res.reason = finish_reason::stop_token;
        continue;
      }
      res.token_ids.push_back(token);
      if (static_cast<std::int64_t>(res.token_ids.size()) >= options.max_new_tokens) {
        res.reason = finish_reason::length;
        continue;
      }
      if (real[static_cast<std::int64_t>(r)].item<std::int64_t>() + 1 > context) {
        res.reason = finish_reason::context_full;
        continue;
      }
      next_ids.push_back(token);
      keep_rows.push_back(static_cast<std::int64_t>(r));
      still_active.push_back(i);
    }
    if (still_active.empty()) break;
    if (still_active.size() != active.size()) state.select_rows(torch::tensor(keep_rows, torch::kInt64));
    active = std::move(still_active);
    logits = model.decode(torch::tensor(next_ids, torch::kInt64), state).to(torch::kCPU);
  }
  return results;
}

}  // namespace

namespace {

bool same_tensor(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined() || a.is_same(b)) return true;
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() && a.device() == b.device() && torch::equal(a, b);
}

bool same_images(const image_inputs& a, const image_inputs& b) {
  return same_tensor(a.pixel_values, b.pixel_values) && same_tensor(a.features, b.features) &&
         same_tensor(a.image_grid_thw, b.image_grid_thw) && same_tensor(a.image_sizes, b.image_sizes) &&
         same_tensor(a.batch_num_images, b.batch_num_images);
}

// The number of leading tokens every prompt shares and that can be prefilled once: all prompts have
// the same images, every image token lies inside the shared part, and every prompt keeps at least
// one token after it (its last token's logits start the decoding). 0 when there is nothing to share.
std::size_t shareable_prefix(const std::vector<prompt_input>& prompts, std::int64_t image_token_id) {
  if (prompts.size() < 2) return 0;
  std::size_t shared = prompts[0].input_ids.size();
  for (const auto& p : prompts) {
    if (!same_images(p.images, prompts[0].images)) return 0;
    std::size_t k = 0;
    while (k < shared && k < p.input_ids.size() && p.input_ids[k] == prompts[0].input_ids[k]) ++k;
    shared = std::min(k, p.input_ids.size() - 1);
  }
  for (const auto& p : prompts)
    if (std::find(p.input_ids.begin() + static_cast<std::ptrdiff_t>(shared), p.input_ids.end(), image_token_id) !=
        p.input_ids.end())
      return 0;
  return shared;
}

}  // namespace

std::vector<generation_result> generate(vision_language_model& model, const std::vector<prompt_input>& prompts,
                                        const sampling_options& options, const std::vector<std::uint64_t>& sample_keys) {
  const char* fn = "generate";
  check_generation(fn, model, options);
  if (prompts.empty()) fail(fn, "prompts", "empty list");
  if (!sample_keys.empty() && sample_keys.size() != prompts.size())
    fail(fn, "sample_keys", std::to_string(sample_keys.size()) + " keys for " + std::to_string(prompts.size()) + " prompts");
  std::vector<std::uint64_t> keys = sample_keys;
  if (keys.empty())
    for (std::size_t i = 0; i < prompts.size(); ++i) keys.push_back(i);
  if (options.max_new_tokens == 0) return std::vector<generation_result>(prompts.size());
  torch::NoGradGuard no_grad;
  decode_state state;
  for (std::size_t i = 0; i < prompts.size(); ++i)
    if (prompts[i].input_ids.empty()) fail(fn, "prompts", "prompt " + std::to_string(i) + " has no tokens");
  // Prompts that share a prefix (e.g. one image and its questions, or the revision prompts of one
  // item): prefill it once, copy its KV cache to every row and feed each row's rest in one batch.
  const std::size_t shared = shareable_prefix(prompts, model.image_token_id());
  if (shared > 0) {
    const std::int64_t batch = static_cast<std::int64_t>(prompts.size());
    prompt_input prefix = prompts[0];
    prefix.input_ids.resize(shared);
    model.forward_hidden(collate({prefix}, options.pad_token_id), &state);
    state.select_rows(torch::zeros({batch}, torch::kInt64));
    std::int64_t rest = 0;
    for (const auto& p : prompts) rest = std::max<std::int64_t>(rest, static_cast<std::int64_t>(p.input_ids.size() - shared));
    torch::Tensor ids = torch::zeros({batch, rest}, torch::kInt64), mask = torch::zeros({batch, rest}, torch::kInt64);
    auto ia = ids.accessor<std::int64_t, 2>();
    auto ma = mask.accessor<std::int64_t, 2>();
    std::vector<std::int64_t> last;  // flat index of each row's last real token
    for (std::int64_t b = 0; b < batch; ++b) {
      const auto& p = prompts[static_cast<std::size_t>(b)].input_ids;
      const std::int64_t n = static_cast<std::int64_t>(p.size() - shared);
      for (std::int64_t k = 0; k < n; ++k) {
        ia[b][k] = p[shared + static_cast<std::size_t>(k)];
        ma[b][k] = 1;
      }
      last.push_back(b * rest + n - 1);
    }
    torch::Tensor hidden = model.extend_hidden(ids, mask, state);
    hidden = hidden.reshape({-1, hidden.size(2)}).index_select(0, torch::tensor(last, torch::kInt64).to(hidden.device()));
    return decode_loop(model, state, model.logits(hidden).to(torch::kCPU), options, keys);
  }
  model_inputs inputs = collate(prompts, options.pad_token_id);
  torch::Tensor hidden = model.forward_hidden(inputs, &state);
  torch::Tensor logits = model.logits(hidden.select(1, hidden.size(1) - 1)).to(torch::kCPU);  // [B, V]
  return decode_loop(model, state, logits, options, keys);
}

std::vector<generation_result> generate_samples(vision_language_model& model, const prompt_input& prompt,
                                                std::int64_t num_samples, const sampling_options& options,
                                                std::uint64_t first_key) {
  const char* fn = "generate_samples";
  if (num_samples < 1) fail(fn, "num_samples", "must be positive, got " + std::to_string(num_samples));
  check_generation(fn, model, options);
  if (prompt.input_ids.empty()) fail(fn, "prompt", "has no tokens");
  std::vector<std::uint64_t> keys(static_cast<std::size_t>(num_samples));
  for (std::size_t k = 0; k < keys.size(); ++k) keys[k] = first_key + k;
  if (options.max_new_tokens == 0) return std::vector<generation_result>(keys.size());
  // The shared prefix: one prefill of the prompt (and one vision forward), then its KV cache and
  // last logits copied to every sample's row.
  torch::NoGradGuard no_grad;
  decode_state state;
  torch::Tensor hidden = model.forward_hidden(collate({prompt}, options.pad_token_id), &state);
  torch::Tensor logits = model.logits(hidden.select(1, hidden.size(1) - 1)).to(torch::kCPU);  // [1, V]
  if (num_samples > 1) {
    state.select_rows(torch::zeros({num_samples}, torch::kInt64));
    logits = logits.expand({num_samples, logits.size(1)});
  }
  return decode_loop(model, state, logits, options, keys);
}

namespace {

// The tokens scored for response i: the response, plus end_of_turn_id unless it ends with it or
// end_of_turn_id < 0 (spec §5). Throws naming 'responses' for an id outside [0, vocab).
std::vector<std::int64_t> scored_tokens(const char* fn, const std::vector<std::int64_t>& response, std::size_t i,
                                        std::int64_t end_of_turn_id, std::int64_t vocab) {
  std::vector<std::int64_t> scored = response;
  if (end_of_turn_id >= 0 && (scored.empty() || scored.back() != end_of_turn_id)) scored.push_back(end_of_turn_id);
  for (auto id : scored)
    if (id < 0 || id >= vocab)
      fail(fn, "responses", "response " + std::to_string(i) + " has id " + std::to_string(id) + " outside [0, " +
                                std::to_string(vocab) + ")");
  return scored;
}

}  // namespace

torch::Tensor token_logprobs_of(vision_language_model& model, const torch::Tensor& hidden,
                                const std::vector<std::int64_t>& targets) {
  if (hidden.dim() != 2 || hidden.size(0) != static_cast<std::int64_t>(targets.size()))
    fail("token_logprobs_of", "hidden", "expected [" + std::to_string(targets.size()) + ", hidden] (one row per target), got " +
                                            std::to_string(hidden.dim()) + "-d");
  torch::Tensor labels = torch::tensor(targets, torch::kInt64).to(hidden.device());
  const bool lora_head = model.lm_head && model.lm_head->has_lora();
  const bool no_cuda_kernel =
      hidden.is_cuda() && consr::libtorch::cuda_backend_registry().linear_token_logprobs == nullptr;
  if (lora_head || no_cuda_kernel) {
    torch::Tensor logp = torch::log_softmax(model.logits(hidden).to(torch::kFloat32), -1);
    return logp.gather(1, labels.unsqueeze(1)).squeeze(1);
  }
  const torch::Tensor& weight = model.lm_head ? model.lm_head->weight : model.language_model->embed_tokens->weight;
  return consr::libtorch::linear_token_logprobs(hidden.contiguous(), weight, torch::Tensor(), labels).to(torch::kFloat32);
}

response_logprobs_batch teacher_forced_logprobs(vision_language_model& model, const std::vector<prompt_input>& prompts,
                                                const std::vector<std::vector<std::int64_t>>& responses,
                                                std::int64_t end_of_turn_id, std::int64_t pad_token_id) {
  const char* fn = "teacher_forced_logprobs";
  if (prompts.empty()) fail(fn, "prompts", "empty list");
  if (responses.size() != prompts.size())
    fail(fn, "responses", std::to_string(responses.size()) + " responses for " + std::to_string(prompts.size()) + " prompts");
  const std::int64_t vocab = model.text().vocab_size;
  if (end_of_turn_id >= vocab) fail(fn, "end_of_turn_id", "id " + std::to_string(end_of_turn_id) + " outside the vocabulary");
  std::vector<prompt_input> sequences(prompts.size());
  response_logprobs_batch out;
  out.offsets.push_back(0);
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].input_ids.empty()) fail(fn, "prompts", "prompt " + std::to_string(i) + " has no tokens (nothing to condition on)");
    std::vector<std::int64_t> scored = scored_tokens(fn, responses[i], i, end_of_turn_id, vocab);
    sequences[i].input_ids = prompts[i].input_ids;
    sequences[i].input_ids.insert(sequences[i].input_ids.end(), scored.begin(), scored.end());
    sequences[i].images = prompts[i].images;
    out.offsets.push_back(out.offsets.back() + static_cast<std::int64_t>(scored.size()));
    out.token_ids.push_back(std::move(scored));
  }
  model_inputs inputs = collate(sequences, pad_token_id);
  const std::int64_t len = inputs.input_ids.size(1);
  // Hidden state at t − 1 predicts token t: gather those rows only, so lm_head (V × hidden) runs on
  // the response positions instead of the whole (possibly image-heavy) sequence.
  std::vector<std::int64_t> rows, targets;
  for (std::size_t i = 0; i < sequences.size(); ++i) {
    const std::int64_t t_count = static_cast<std::int64_t>(out.token_ids[i].size());
    const std::int64_t first = len - t_count;  // padded index of the first scored token
    for (std::int64_t k = 0; k < t_count; ++k) {
      rows.push_back(static_cast<std::int64_t>(i) * len + first + k - 1);
      targets.push_back(out.token_ids[i][static_cast<std::size_t>(k)]);
    }
  }
  if (rows.empty()) {
    out.logprobs = torch::zeros({0}, torch::TensorOptions().dtype(torch::kFloat32).device(model.device()));
    return out;
  }
  torch::Tensor hidden = model.forward_hidden(inputs);
  torch::Tensor picked = hidden.reshape({-1, hidden.size(2)}).index_select(0, torch::tensor(rows, torch::kInt64).to(hidden.device()));
  out.logprobs = token_logprobs_of(model, picked, targets);
  return out;
}

std::vector<scored_response> score_responses(vision_language_model& model, const std::vector<prompt_input>& prompts,
                                             const std::vector<std::vector<std::int64_t>>& responses,
                                             std::int64_t end_of_turn_id, std::int64_t batch_size,
                                             std::int64_t pad_token_id) {
  if (batch_size < 1) fail("score_responses", "batch_size", "must be positive");
  if (responses.size() != prompts.size())
    fail("score_responses", "responses", std::to_string(responses.size()) + " responses for " +
                                             std::to_string(prompts.size()) + " prompts");
  torch::NoGradGuard no_grad;
  std::vector<scored_response> out;
  for (std::size_t start = 0; start < prompts.size(); start += static_cast<std::size_t>(batch_size)) {
    std::size_t end = std::min(prompts.size(), start + static_cast<std::size_t>(batch_size));
    std::vector<prompt_input> p(prompts.begin() + start, prompts.begin() + end);
    std::vector<std::vector<std::int64_t>> r(responses.begin() + start, responses.begin() + end);
    response_logprobs_batch b = teacher_forced_logprobs(model, p, r, end_of_turn_id, pad_token_id);
    torch::Tensor lp = b.logprobs.to(torch::kCPU).contiguous();
    for (std::size_t i = 0; i < p.size(); ++i) {
      scored_response s;
      s.token_ids = b.token_ids[i];
      const float* data = lp.data_ptr<float>();
      s.logprobs.assign(data + b.offsets[i], data + b.offsets[i + 1]);
      out.push_back(std::move(s));
    }
  }
  return out;
}

std::vector<scored_response> score_responses_shared(vision_language_model& model, const prompt_input& prompt,
                                                    const std::vector<std::vector<std::int64_t>>& responses,
                                                    std::int64_t end_of_turn_id, std::int64_t batch_size,
                                                    std::int64_t pad_token_id) {
  const char* fn = "score_responses_shared";
  if (batch_size < 1) fail(fn, "batch_size", "must be positive");
  if (prompt.input_ids.empty()) fail(fn, "prompt", "has no tokens (nothing to condition on)");
  const std::int64_t vocab = model.text().vocab_size;
  if (end_of_turn_id >= vocab) fail(fn, "end_of_turn_id", "id " + std::to_string(end_of_turn_id) + " outside the vocabulary");
  std::vector<std::vector<std::int64_t>> scored(responses.size());
  const std::int64_t prompt_len = static_cast<std::int64_t>(prompt.input_ids.size());
  for (std::size_t i = 0; i < responses.size(); ++i) {
    scored[i] = scored_tokens(fn, responses[i], i, end_of_turn_id, vocab);
    for (auto id : scored[i])
      if (id == model.image_token_id())
        fail(fn, "responses", "response " + std::to_string(i) + " has the image token " + std::to_string(id));
    if (prompt_len + static_cast<std::int64_t>(scored[i].size()) > model.text().max_position_embeddings)
      fail(fn, "responses", "response " + std::to_string(i) + ": prompt + response = " +
                                std::to_string(prompt_len + static_cast<std::int64_t>(scored[i].size())) +
                                " tokens, more than max_position_embeddings = " +
                                std::to_string(model.text().max_position_embeddings));
  }
  std::vector<scored_response> out(responses.size());
  if (responses.empty()) return out;
  torch::NoGradGuard no_grad;
  decode_state prefix;
  torch::Tensor prefix_hidden = model.forward_hidden(collate({prompt}, pad_token_id), &prefix);
  // The prompt's last position predicts every response's first token.
  const torch::Tensor last = prefix_hidden.select(1, prefix_hidden.size(1) - 1);  // [1, hidden]
  for (std::size_t start = 0; start < responses.size(); start += static_cast<std::size_t>(batch_size)) {
    const std::size_t end = std::min(responses.size(), start + static_cast<std::size_t>(batch_size));
    const std::int64_t rows = static_cast<std::int64_t>(end - start);
    // Feed tokens 0 .. T−2 of each response (right-padded); token t is predicted at position t − 1.
    std::int64_t fed = 0;
    for (std::size_t i = start; i < end; ++i) fed = std::max<std::int64_t>(fed, static_cast<std::int64_t>(scored[i].size()) - 1);
    torch::Tensor hidden = last.unsqueeze(1).expand({rows, 1, last.size(1)});  // [rows, 1, hidden]
    if (fed > 0) {
      torch::Tensor ids = torch::full({rows, fed}, pad_token_id, torch::kInt64);
      torch::Tensor mask = torch::zeros({rows, fed}, torch::kInt64);
      auto ia = ids.accessor<std::int64_t, 2>();
      auto ma = mask.accessor<std::int64_t, 2>();
      for (std::size_t i = start; i < end; ++i)
        for (std::size_t k = 0; k + 1 < scored[i].size(); ++k) {
          ia[static_cast<std::int64_t>(i - start)][static_cast<std::int64_t>(k)] = scored[i][k];
          ma[static_cast<std::int64_t>(i - start)][static_cast<std::int64_t>(k)] = 1;
        }
      decode_state state = prefix;  // select_rows makes new tensors: `prefix` stays as it is
      state.select_rows(torch::zeros({rows}, torch::kInt64));
      hidden = torch::cat({hidden, model.extend_hidden(ids, mask, state)}, 1);  // [rows, fed + 1, hidden]
    }
    std::vector<std::int64_t> picked_rows, targets;
    for (std::size_t i = start; i < end; ++i)
      for (std::size_t k = 0; k < scored[i].size(); ++k) {
        picked_rows.push_back(static_cast<std::int64_t>(i - start) * (fed + 1) + static_cast<std::int64_t>(k));
        targets.push_back(scored[i][k]);
      }
    torch::Tensor lp;
    if (!picked_rows.empty()) {
      torch::Tensor picked = hidden.reshape({-1, hidden.size(2)})
                                 .index_select(0, torch::tensor(picked_rows, torch::kInt64).to(hidden.device()));
      lp = token_logprobs_of(model, picked, targets).to(torch::kCPU).contiguous();
    }
    std::size_t offset = 0;
    for (std::size_t i = start; i < end; ++i) {
      out[i].token_ids = scored[i];
      if (!scored[i].empty()) {
        const float* data = lp.data_ptr<float>() + offset;
        out[i].logprobs.assign(data, data + scored[i].size());
      }
      offset += scored[i].size();
    }
  }
  return out;
}

}  // namespace consr_runtime
