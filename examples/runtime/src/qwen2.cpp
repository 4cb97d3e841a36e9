// The Qwen2 decoder (see consr_runtime/qwen2.hpp).
#include "consr_runtime/qwen2.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>

#include <torch/torch.h>

#include "consr_runtime/error.hpp"
#include "attention_util.hpp"
#include "torch_util.hpp"

namespace consr_runtime {
namespace {

[[noreturn]] void fail(const char* function, const char* argument, const std::string& message) {
  throw runtime_error(std::string("consr_runtime::") + function + ": argument '" + argument + "': " + message);
}

}  // namespace

namespace {

constexpr std::int64_t few_rows_max = 8;

// y[m, n] = Σ_k x[m, k] · w[n, k] for rows n in [n0, n1) and the R rows of x: every row of W is read
// once for all the x rows (a GEMM with few rows is a memory-bound pass over W). 16 independent fp32
// partial sums per x row, so the compiler vectorizes without reassociating.
template <int R>
__attribute__((always_inline)) inline void few_rows_block(const float* x, const float* w, std::int64_t k_dim, float* y,
                                                          std::int64_t ld_y, std::int64_t n0, std::int64_t n1) {
  constexpr std::int64_t lanes = 16;
  const std::int64_t k_main = k_dim / lanes * lanes;
  for (std::int64_t n = n0; n < n1; ++n) {
    const float* wr = w + n * k_dim;
    float acc[R][lanes] = {};
    for (std::int64_t k = 0; k < k_main; k += lanes)
      for (int m = 0; m < R; ++m)
        for (std::int64_t l = 0; l < lanes; ++l) acc[m][l] += x[m * k_dim + k + l] * wr[k + l];
    for (int m = 0; m < R; ++m) {
      float sum = 0;
      for (std::int64_t l = 0; l < lanes; ++l) sum += acc[m][l];
      for (std::int64_t k = k_main; k < k_dim; ++k) sum += x[m * k_dim + k] * wr[k];
      y[m * ld_y + n] = sum;
    }
  }
}

// The clones pick AVX-512 / AVX2 at run time (the runtime builds for baseline x86-64).
__attribute__((target_clones("avx512f", "avx2", "default")))
void few_rows_kernel(const float* x, std::int64_t rows, const float* w, std::int64_t k_dim, float* y, std::int64_t ld_y,
                     std::int64_t n0, std::int64_t n1) {
  switch (rows) {
    case 2: few_rows_block<2>(x, w, k_dim, y, ld_y, n0, n1); break;
    case 3: few_rows_block<3>(x, w, k_dim, y, ld_y, n0, n1); break;
    case 4: few_rows_block<4>(x, w, k_dim, y, ld_y, n0, n1); break;
    case 5: few_rows_block<5>(x, w, k_dim, y, ld_y, n0, n1); break;
    case 6: few_rows_block<6>(x, w, k_dim, y, ld_y, n0, n1); break;
    case 7: few_rows_block<7>(x, w, k_dim, y, ld_y, n0, n1); break;
    default: few_rows_block<8>(x, w, k_dim, y, ld_y, n0, n1); break;
  }
}

}  // namespace

torch::Tensor times_transposed(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  // A few rows (decoding a few streams) without autograd, fp32 on the CPU: one pass over W for all
  // rows. OpenBLAS (Debian's LibTorch) runs such an sgemm through its full GEMM path, packing all of
  // W first: for the 152k × 2048 lm_head, 5 rows took 4.4× and 1 row 3.5× the time of one GEMV
  // (docs/performance.md, issue 17 §2).
  const std::int64_t rows = x.size(0);
  const bool tracked = torch::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad() ||
                                                        (bias.defined() && bias.requires_grad()));
  if (rows >= 2 && rows <= few_rows_max && !tracked && x.device().is_cpu() && x.scalar_type() == torch::kFloat32 &&
      weight.scalar_type() == torch::kFloat32 && weight.is_contiguous()) {
    const torch::Tensor xc = x.contiguous();
    const std::int64_t n_dim = weight.size(0), k_dim = weight.size(1);
    torch::Tensor y = torch::empty({rows, n_dim}, x.options());
    const float* xp = xc.data_ptr<float>();
    const float* wp = weight.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    at::parallel_for(0, n_dim, 64, [&](std::int64_t n0, std::int64_t n1) {
      few_rows_kernel(xp, rows, wp, k_dim, yp, n_dim, n0, n1);
    });
    return bias.defined() ? y.add_(bias) : y;
  }
  // One row (a decoding step of one stream): a matrix-vector product, BLAS's GEMV.
  if (rows == 1) {
    torch::Tensor y = bias.defined() ? torch::addmv(bias, weight, x[0]) : torch::mv(weight, x[0]);
    return y.unsqueeze(0);
  }
  return bias.defined() ? torch::addmm(bias, x, weight.t()) : torch::mm(x, weight.t());
}

// ---- linear ---------------------------------------------------------------------------------------

linear_impl::linear_impl(std::int64_t in_features, std::int64_t out_features, bool with_bias,
                         const torch::TensorOptions& options)
    : in_features_(in_features), out_features_(out_features) {
  weight = register_parameter("weight", torch::empty({out_features, in_features}, options));
  if (with_bias) bias = register_parameter("bias", torch::empty({out_features}, options));
}

torch::Tensor linear_impl::forward(const torch::Tensor& x) {
  if (x.dim() < 1 || x.size(-1) != in_features_)
    fail("linear::forward", "x", "expected last dim " + std::to_string(in_features_) + ", got shape " + shape_string(x));
  torch::Tensor y = times_transposed(x.reshape({-1, in_features_}), weight, bias);
  if (lora_A) {
    // (α/r)·B(A(x)); the base path is untouched so a zero B leaves the output bit-identical.
    torch::Tensor delta = torch::mm(torch::mm(x.reshape({-1, in_features_}), lora_A->weight.t()), lora_B->weight.t());
    y = y + delta * lora_scaling_;
  }
  std::vector<std::int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out_features_;
  return y.view(shape);
}

void linear_impl::attach_lora(const torch::Tensor& lora_a, const torch::Tensor& lora_b, double scaling) {
  if (lora_a.dim() != 2 || lora_a.size(1) != in_features_ || lora_a.size(0) < 1)
    fail("linear::attach_lora", "lora_a", "expected [rank, " + std::to_string(in_features_) + "], got " +
                                              shape_string(lora_a));
  if (lora_b.dim() != 2 || lora_b.size(0) != out_features_ || lora_b.size(1) != lora_a.size(0))
    fail("linear::attach_lora", "lora_b", "expected [" + std::to_string(out_features_) + ", " +
                                              std::to_string(lora_a.size(0)) + "], got " + shape_string(lora_b));
  if (!std::isfinite(scaling)) fail("linear::attach_lora", "scaling", "must be finite");
  detach_lora();
  const std::int64_t rank = lora_a.size(0);
  auto options = weight.options();
  lora_A = std::make_shared<linear_impl>(in_features_, rank, false, options);
  lora_B = std::make_shared<linear_impl>(rank, out_features_, false, options);
  {
    torch::NoGradGuard no_grad;
    lora_A->weight.copy_(lora_a);
    lora_B->weight.copy_(lora_b);
  }
  register_module("lora_A", lora_A);
  register_module("lora_B", lora_B);
  lora_scaling_ = scaling;
}

void linear_impl::detach_lora() {
  if (!lora_A) return;
  unregister_module("lora_A");
  unregister_module("lora_B");
  lora_A.reset();
  lora_B.reset();
  lora_scaling_ = 0.0;
}

// ---- rms_norm -------------------------------------------------------------------------------------

rms_norm_impl::rms_norm_impl(std::int64_t size, double eps, const torch::TensorOptions& options) : eps_(eps) {
  weight = register_parameter("weight", torch::empty({size}, options));
}

torch::Tensor rms_norm_impl::forward(const torch::Tensor& x) {
  torch::Tensor x32 = x.to(torch::kFloat32);
  torch::Tensor normed = x32 * torch::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps_);
  return weight * normed.to(x.scalar_type());
}

// ---- kv_cache -------------------------------------------------------------------------------------

std::int64_t kv_cache::batch_size() const {
  for (const auto& k : keys_)
    if (k.defined()) return k.size(0);
  return 0;
}

std::pair<torch::Tensor, torch::Tensor> kv_cache::update(std::size_t layer, const torch::Tensor& k,
                                                         const torch::Tensor& v) {
  if (k.dim() != 4 || !v.defined() || v.sizes() != k.sizes())
    fail("kv_cache::update", "k", "expected k and v of equal shape [B, KV, L, d], got " + shape_string(k) + " and " +
                                      shape_string(v));
  if (layer >= keys_.size()) {
    keys_.resize(layer + 1);
    values_.resize(layer + 1);
  }
  torch::Tensor& kbuf = keys_[layer];
  torch::Tensor& vbuf = values_[layer];
  const std::int64_t add = k.size(2);
  const std::int64_t need = length_ + add;
  if (kbuf.defined()) {
    if (kbuf.size(0) != k.size(0) || kbuf.size(1) != k.size(1) || kbuf.size(3) != k.size(3))
      fail("kv_cache::update", "k", "shape " + shape_string(k) + " does not match the cache " + shape_string(kbuf));
  } else if (length_ != 0) {
    fail("kv_cache::update", "layer", "layer " + std::to_string(layer) + " has no cached entries but length is " +
                                          std::to_string(length_));
  }
  if (!kbuf.defined() || kbuf.size(2) < need) {
    // Geometric growth keeps appends amortised O(1) instead of re-copying the cache every step.
    std::int64_t capacity = kbuf.defined() ? std::max<std::int64_t>(need, 2 * kbuf.size(2)) : need;
    auto grow = [&](const torch::Tensor& old, const torch::Tensor& like) {
      torch::Tensor fresh = torch::empty({like.size(0), like.size(1), capacity, like.size(3)}, like.options());
      if (old.defined() && length_ > 0) fresh.narrow(2, 0, length_).copy_(old.narrow(2, 0, length_));
      return fresh;
    };
    kbuf = grow(kbuf, k);
    vbuf = grow(vbuf, v);
  }
  kbuf.narrow(2, length_, add).copy_(k);
  vbuf.narrow(2, length_, add).copy_(v);
  return {kbuf.narrow(2, 0, need), vbuf.narrow(2, 0, need)};
}

void kv_cache::advance(std::int64_t count) {
  if (count < 0) fail("kv_cache::advance", "count", "must be non-negative");
  length_ += count;
}

void kv_cache::select_rows(const torch::Tensor& index) {
  for (auto& t : keys_)
    if (t.defined()) t = t.index_select(0, index.to(t.device()));
  for (auto& t : values_)
    if (t.defined()) t = t.index_select(0, index.to(t.device()));
}

void kv_cache::clear() {
  keys_.clear();
  values_.clear();
  length_ = 0;
}

// ---- rotary ---------------------------------------------------------------------------------------

std::pair<torch::Tensor, torch::Tensor> rotary_cos_sin(const torch::Tensor& position_ids, std::int64_t head_dim,
                                                       double theta, const std::vector<std::int64_t>& mrope_section,
                                                       torch::Dtype dtype) {
  auto fopt = torch::TensorOptions().dtype(torch::kFloat32).device(position_ids.device());
  // As HF: inv_freq = 1 / θ^(arange(0, d, 2) / d) in fp32.
  torch::Tensor exponents = torch::arange(0, head_dim, 2, fopt.dtype(torch::kInt64)).to(torch::kFloat32) / static_cast<double>(head_dim);
  torch::Tensor inv_freq = 1.0 / torch::pow(theta, exponents);
  torch::Tensor freqs = position_ids.to(torch::kFloat32).unsqueeze(-1) * inv_freq;  // [..., B, L, d/2]
  if (position_ids.dim() == 3) {
    if (position_ids.size(0) != 3) fail("rotary_cos_sin", "position_ids", "expected [3, B, L] for mRoPE, got " + shape_string(position_ids));
    if (mrope_section.empty()) fail("rotary_cos_sin", "position_ids", "[3, B, L] positions need an mrope_section");
    // Frequency chunk i takes its positions from row i % 3 (t, h, w).
    std::vector<torch::Tensor> chunks;
    std::int64_t start = 0;
    for (std::size_t i = 0; i < mrope_section.size(); ++i) {
      chunks.push_back(freqs[static_cast<std::int64_t>(i % 3)].narrow(-1, start, mrope_section[i]));
      start += mrope_section[i];
    }
    if (start != head_dim / 2) fail("rotary_cos_sin", "mrope_section", "must sum to head_dim/2");
    freqs = torch::cat(chunks, -1);
  } else if (position_ids.dim() != 2) {
    fail("rotary_cos_sin", "position_ids", "expected [B, L] or [3, B, L], got " + shape_string(position_ids));
  }
  torch::Tensor emb = torch::cat({freqs, freqs}, -1);
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

torch::Tensor apply_rotary(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const std::int64_t half = x.size(-1) / 2;
  torch::Tensor rotated = torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  torch::Tensor c = cos.unsqueeze(1);  // broadcast over heads
  torch::Tensor s = sin.unsqueeze(1);
  return x * c + rotated * s;
}

// ---- attention / mlp / layer ------------------------------------------------------------------------

qwen2_attention_impl::qwen2_attention_impl(const text_config& config, const torch::TensorOptions& options)
    : num_heads_(config.num_attention_heads),
      num_kv_heads_(config.num_key_value_heads),
      head_dim_(config.head_dim),
      scaling_(1.0 / std::sqrt(static_cast<double>(config.head_dim))) {
  const std::int64_t h = config.hidden_size;
  q_proj = register_module("q_proj", linear(h, num_heads_ * head_dim_, true, options));
  k_proj = register_module("k_proj", linear(h, num_kv_heads_ * head_dim_, true, options));
  v_proj = register_module("v_proj", linear(h, num_kv_heads_ * head_dim_, true, options));
  o_proj = register_module("o_proj", linear(num_heads_ * head_dim_, h, false, options));
}

torch::Tensor qwen2_attention_impl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                            const torch::Tensor& allowed, kv_cache* cache, std::size_t layer) {
  const std::int64_t batch = x.size(0);
  const std::int64_t len = x.size(1);
  const std::int64_t rep = num_heads_ / num_kv_heads_;
  torch::Tensor q = q_proj->forward(x).view({batch, len, num_heads_, head_dim_}).transpose(1, 2);
  torch::Tensor k = k_proj->forward(x).view({batch, len, num_kv_heads_, head_dim_}).transpose(1, 2);
  torch::Tensor v = v_proj->forward(x).view({batch, len, num_kv_heads_, head_dim_}).transpose(1, 2);
  q = apply_rotary(q, cos, sin);
  k = apply_rotary(k, cos, sin);
  if (cache) std::tie(k, v) = cache->update(layer, k, v);
  const std::int64_t total = k.size(2);
  torch::Tensor kt = k.transpose(2, 3);
  torch::Tensor disallowed = allowed.logical_not();
  // Queries in chunks so the fp32 scores of a long prompt (e.g. thousands of image tokens) stay
  // within ~2^26 elements per chunk (attention_chunk_elements(), CONSR_ATTENTION_CHUNK_ELEMENTS)
  // instead of heads × L × T at once; a short input is one chunk.
  const std::int64_t chunk = attention_query_chunk(batch * num_heads_, total, attention_chunk_elements());
  std::vector<torch::Tensor> outputs;
  for (std::int64_t start = 0; start < len; start += chunk) {
    const std::int64_t n = std::min(chunk, len - start);
    // GQA without materialising repeat_kv: the `rep` query heads of KV head g are rows of one
    // matmul (head h uses KV head h / rep, as HF's repeat_kv).
    torch::Tensor qg = q.narrow(2, start, n).reshape({batch, num_kv_heads_, rep * n, head_dim_});
    torch::Tensor scores = torch::matmul(qg, kt) * scaling_;  // [B, KV, rep·n, T]
    scores = scores.view({batch, num_kv_heads_, rep, n, total});
    // Masked scores take the lowest finite fp32 value (as HF's finfo.min) so a fully masked padding
    // row stays finite instead of NaN (a NaN value row would poison real rows through 0·NaN). The
    // fill happens after the cast: fp32's lowest is -inf in bf16/fp16.
    torch::Tensor scores32 = scores.to(torch::kFloat32).masked_fill(
        disallowed.narrow(1, start, n).view({batch, 1, 1, n, total}), std::numeric_limits<float>::lowest());
    torch::Tensor probs = torch::softmax(scores32, -1).to(q.scalar_type());
    torch::Tensor out = torch::matmul(probs.view({batch, num_kv_heads_, rep * n, total}), v);  // [B, KV, rep·n, d]
    outputs.push_back(out.view({batch, num_heads_, n, head_dim_}));
  }
  torch::Tensor out = outputs.size() == 1 ? outputs[0] : torch::cat(outputs, 2);
  out = out.transpose(1, 2).reshape({batch, len, num_heads_ * head_dim_});
  return o_proj->forward(out);
}

qwen2_mlp_impl::qwen2_mlp_impl(const text_config& config, const torch::TensorOptions& options) {
  gate_proj = register_module("gate_proj", linear(config.hidden_size, config.intermediate_size, false, options));
  up_proj = register_module("up_proj", linear(config.hidden_size, config.intermediate_size, false, options));
  down_proj = register_module("down_proj", linear(config.intermediate_size, config.hidden_size, false, options));
}

torch::Tensor qwen2_mlp_impl::forward(const torch::Tensor& x) {
  return down_proj->forward(torch::silu(gate_proj->forward(x)) * up_proj->forward(x));
}

qwen2_decoder_layer_impl::qwen2_decoder_layer_impl(const text_config& config, const torch::TensorOptions& options) {
  self_attn = register_module("self_attn", qwen2_attention(config, options));
  mlp = register_module("mlp", qwen2_mlp(config, options));
  input_layernorm = register_module("input_layernorm", rms_norm(config.hidden_size, config.rms_norm_eps, options));
  post_attention_layernorm =
      register_module("post_attention_layernorm", rms_norm(config.hidden_size, config.rms_norm_eps, options));
}

torch::Tensor qwen2_decoder_layer_impl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                                const torch::Tensor& sin, const torch::Tensor& allowed,
                                                kv_cache* cache, std::size_t layer) {
  torch::Tensor h = x + self_attn->forward(input_layernorm->forward(x), cos, sin, allowed, cache, layer);
  return h + mlp->forward(post_attention_layernorm->forward(h));
}

// ---- embedding / model ----------------------------------------------------------------------------

embedding_impl::embedding_impl(std::int64_t num_embeddings, std::int64_t dim, const torch::TensorOptions& options) {
  weight = register_parameter("weight", torch::empty({num_embeddings, dim}, options));
}

torch::Tensor embedding_impl::forward(const torch::Tensor& ids) {
  if (ids.scalar_type() != torch::kInt64) fail("embedding::forward", "input_ids", "expected int64 ids");
  if (ids.numel() > 0) {
    const std::int64_t lo = ids.min().item<std::int64_t>();
    const std::int64_t hi = ids.max().item<std::int64_t>();
    if (lo < 0 || hi >= weight.size(0))
      fail("embedding::forward", "input_ids",
           "id " + std::to_string(lo < 0 ? lo : hi) + " outside [0, " + std::to_string(weight.size(0)) + ")");
  }
  return weight.index_select(0, ids.reshape({-1}).to(weight.device())).view([&] {
    std::vector<std::int64_t> s(ids.sizes().begin(), ids.sizes().end());
    s.push_back(weight.size(1));
    return s;
  }());
}

namespace {

// What the backward of a checkpointed layer needs besides its saved tensors: the layer and the
// trainable parameters it was given (in the order of the forward's inputs).
struct checkpointed_layer_state : torch::CustomClassHolder {
  std::shared_ptr<qwen2_decoder_layer_impl> layer;
  std::vector<torch::Tensor> params;
};

// Gradient checkpointing of one decoder layer (LibTorch has no torch.utils.checkpoint): forward runs
// the layer without autograd (Function::apply turns it off) and keeps only its inputs; backward
// recomputes the layer with autograd on and differentiates it. The trainable parameters are inputs
// of the node (their gradients flow through it to their AccumulateGrad), so a LoRA-only model whose
// first layer input does not require grad still gets its gradients. cos/sin and `allowed` carry no
// gradient (positions and the mask); the caller checks that they do not require it.
struct checkpointed_layer : torch::autograd::Function<checkpointed_layer> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& cos,
                               const torch::Tensor& sin, const torch::Tensor& allowed,
                               const c10::intrusive_ptr<checkpointed_layer_state>& state, at::TensorList params) {
    (void)params;  // the same tensors as state->params; listed as inputs for their gradient edges
    ctx->save_for_backward({x, cos, sin, allowed});
    ctx->saved_data["state"] = c10::IValue::make_capsule(state);
    return state->layer->forward(x, cos, sin, allowed, nullptr, 0);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto capsule = ctx->saved_data["state"].toCapsule();
    auto* state = static_cast<checkpointed_layer_state*>(capsule.get());
    const bool x_grad = saved[0].requires_grad();
    torch::Tensor x = saved[0].detach().requires_grad_(x_grad);
    torch::Tensor y;
    {
      torch::AutoGradMode enable(true);
      y = state->layer->forward(x, saved[1], saved[2], saved[3], nullptr, 0);
    }
    std::vector<torch::Tensor> wrt;
    if (x_grad) wrt.push_back(x);
    wrt.insert(wrt.end(), state->params.begin(), state->params.end());
    auto grads = torch::autograd::grad({y}, wrt, {grad_outputs[0]}, /*retain_graph=*/false, /*create_graph=*/false,
                                       /*allow_unused=*/true);
    // One entry per forward input: x, cos, sin, allowed, state (not a tensor), then the parameters.
    torch::autograd::variable_list out(5);
    std::size_t next = 0;
    if (x_grad) out[0] = grads[next++];
    for (; next < grads.size(); ++next) out.push_back(grads[next]);
    return out;
  }
};

}  // namespace

qwen2_model_impl::qwen2_model_impl(const text_config& config, const torch::TensorOptions& options) : config_(config) {
  embed_tokens = register_module("embed_tokens", embedding(config.vocab_size, config.hidden_size, options));
  layers = register_module("layers", torch::nn::ModuleList());
  for (std::int64_t i = 0; i < config.num_hidden_layers; ++i) {
    layer_refs_.push_back(qwen2_decoder_layer(config, options));
    layers->push_back(layer_refs_.back());
  }
  norm = register_module("norm", rms_norm(config.hidden_size, config.rms_norm_eps, options));
}

torch::Tensor qwen2_model_impl::forward(const torch::Tensor& inputs_embeds, const torch::Tensor& position_ids,
                                        const torch::Tensor& attention_mask, kv_cache* cache) {
  if (inputs_embeds.dim() != 3 || inputs_embeds.size(2) != config_.hidden_size)
    fail("qwen2_model::forward", "inputs_embeds",
         "expected [B, L, " + std::to_string(config_.hidden_size) + "], got " + shape_string(inputs_embeds));
  const std::int64_t batch = inputs_embeds.size(0);
  const std::int64_t len = inputs_embeds.size(1);
  const std::int64_t past = cache ? cache->length() : 0;
  const std::int64_t total = past + len;
  if (cache && !cache->empty() && cache->batch_size() != batch)
    fail("qwen2_model::forward", "cache", "batch " + std::to_string(cache->batch_size()) + " differs from the input batch " +
                                              std::to_string(batch));
  const bool mrope = position_ids.dim() == 3;
  if (!position_ids.defined() || position_ids.scalar_type() != torch::kInt64 ||
      !(mrope ? (position_ids.size(0) == 3 && position_ids.size(1) == batch && position_ids.size(2) == len)
              : (position_ids.dim() == 2 && position_ids.size(0) == batch && position_ids.size(1) == len)))
    fail("qwen2_model::forward", "position_ids",
         "expected int64 [B, L] or [3, B, L] with B = " + std::to_string(batch) + ", L = " + std::to_string(len) +
             ", got " + shape_string(position_ids));
  if (mrope && config_.mrope_section.empty())
    fail("qwen2_model::forward", "position_ids", "[3, B, L] positions but the config has no mrope_section");

  auto device = inputs_embeds.device();
  torch::Tensor key_valid;
  if (attention_mask.defined()) {
    if (attention_mask.dim() != 2 || attention_mask.size(0) != batch || attention_mask.size(1) != total)
      fail("qwen2_model::forward", "attention_mask",
           "expected [B, cached + L] = [" + std::to_string(batch) + ", " + std::to_string(total) + "], got " +
               shape_string(attention_mask));
    key_valid = attention_mask.to(device).ne(0);
  } else {
    key_valid = torch::ones({batch, total}, torch::TensorOptions().dtype(torch::kBool).device(device));
  }
  // allowed[b, i, j] = key j is real and j <= past + i (causal in the padded layout).
  torch::Tensor query_index = torch::arange(past, total, torch::TensorOptions().dtype(torch::kInt64).device(device));
  torch::Tensor key_index = torch::arange(0, total, torch::TensorOptions().dtype(torch::kInt64).device(device));
  torch::Tensor causal = key_index.unsqueeze(0).le(query_index.unsqueeze(1));  // [L, T]
  torch::Tensor allowed = causal.unsqueeze(0).logical_and(key_valid.unsqueeze(1));  // [B, L, T]

  auto cos_sin = rotary_cos_sin(position_ids.to(device), config_.head_dim, config_.rope_theta, config_.mrope_section,
                                inputs_embeds.scalar_type());
  torch::Tensor hidden = inputs_embeds;
  for (std::size_t i = 0; i < layer_refs_.size(); ++i) {
    if (gradient_checkpointing_ && torch::GradMode::is_enabled()) {
      auto state = c10::make_intrusive<checkpointed_layer_state>();
      for (const auto& p : layer_refs_[i]->parameters())
        if (p.requires_grad()) state->params.push_back(p);
      if (!state->params.empty() || hidden.requires_grad()) {
        if (cache)
          fail("qwen2_model::forward", "cache",
               "gradient checkpointing recomputes the layers in backward and cannot append to a KV cache; run the "
               "cached forward without autograd (torch::NoGradGuard) or turn checkpointing off");
        if (cos_sin.first.requires_grad() || cos_sin.second.requires_grad())
          fail("qwen2_model::forward", "position_ids", "positions that require grad cannot be checkpointed");
        state->layer = layer_refs_[i].ptr();
        const std::vector<torch::Tensor> params = state->params;
        hidden = checkpointed_layer::apply(hidden, cos_sin.first, cos_sin.second, allowed, state, at::TensorList(params));
        continue;
      }
    }
    hidden = layer_refs_[i]->forward(hidden, cos_sin.first, cos_sin.second, allowed, cache, i);
  }
  if (cache) cache->advance(len);
  return norm->forward(hidden);
}

torch::Tensor lm_logits(const torch::Tensor& hidden, linear lm_head, embedding embed_tokens) {
  if (lm_head) return lm_head->forward(hidden);
  const std::int64_t dim = embed_tokens->weight.size(1);
  std::vector<std::int64_t> shape(hidden.sizes().begin(), hidden.sizes().end());
  shape.back() = embed_tokens->weight.size(0);
  return times_transposed(hidden.reshape({-1, dim}), embed_tokens->weight, {}).view(shape);
}

qwen2_causal_lm_impl::qwen2_causal_lm_impl(const text_config& config, const torch::TensorOptions& options) {
  model = register_module("model", qwen2_model(config, options));
  if (!config.tie_word_embeddings)
    lm_head = register_module("lm_head", linear(config.hidden_size, config.vocab_size, false, options));
}

torch::Tensor qwen2_causal_lm_impl::forward(const torch::Tensor& input_ids, const torch::Tensor& position_ids,
                                            const torch::Tensor& attention_mask, kv_cache* cache) {
  if (input_ids.dim() != 2) fail("qwen2_causal_lm::forward", "input_ids", "expected [B, L], got " + shape_string(input_ids));
  torch::Tensor hidden = model->forward(model->embed_tokens->forward(input_ids), position_ids, attention_mask, cache);
  return lm_logits(hidden, lm_head, model->embed_tokens);
}

torch::Tensor positions_from_mask(const torch::Tensor& attention_mask) {
  if (attention_mask.dim() != 2) fail("positions_from_mask", "attention_mask", "expected [B, L], got " + shape_string(attention_mask));
  torch::Tensor valid = attention_mask.ne(0).to(torch::kInt64);
  return (valid.cumsum(1) - 1).clamp_min(0) * valid;
}

}  // namespace consr_runtime
