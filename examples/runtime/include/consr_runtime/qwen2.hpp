// consr_runtime/qwen2.hpp — the Qwen2 decoder shared by Qwen2.5-VL and LLaVA-OneVision
// (runtime facts §1, mRoPE §2d): token embedding, pre-norm decoder layers (RMSNorm, GQA attention
// with RoPE or multimodal RoPE, SwiGLU MLP), final norm, LM head, and a KV cache for incremental
// decoding.
//
// Submodules are named like the Hugging Face parameter paths (`embed_tokens`, `layers.{i}.self_attn.
// q_proj`, `layers.{i}.mlp.gate_proj`, `norm`, ...) so that `named_parameters()` yields the hub
// names after a prefix. Parameters are allocated uninitialised in the requested dtype/device (a 7B
// model is never materialised twice): load them with `load_weights` (weights.hpp) or fill them.
//
// Batching and positions (design): a batch is left-padded; `attention_mask` [B, T] marks the real
// tokens of every cached-plus-new position (1) and the padding (0). Each query attends to the keys
// that are real and not after it (causal in the padded layout). Position ids are given per row by
// the caller ([B, L] for 1-D RoPE, [3, B, L] for mRoPE), so a left-padded row gets exactly the
// positions it would get alone: batched results equal one-by-one results up to rounding.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include "consr_runtime/config.hpp"

namespace consr_runtime {

/// x Wᵀ (+ b) for x [rows, in], W [out, in], b [out] or undefined: a matrix-vector product when
/// rows == 1 (decoding one stream), else one matrix product.
torch::Tensor times_transposed(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);

/// y = x Wᵀ + b, plus an optional LoRA delta  scaling · (x Aᵀ) Bᵀ  (lora.hpp attaches it).
/// Parameters: `weight` [out, in], `bias` [out] (when built with a bias), and when LoRA is
/// attached the submodules `lora_A` (weight [r, in]) and `lora_B` (weight [out, r]), so that their
/// names are `<path>.lora_A.weight` / `<path>.lora_B.weight` as in PEFT's adapter files.
class linear_impl : public torch::nn::Module {
 public:
  linear_impl(std::int64_t in_features, std::int64_t out_features, bool with_bias,
              const torch::TensorOptions& options = {});
  /// x [..., in] → [..., out]. Throws consr::error-like runtime_error if the last dim is not `in`.
  torch::Tensor forward(const torch::Tensor& x);

  std::int64_t in_features() const { return in_features_; }
  std::int64_t out_features() const { return out_features_; }

  /// Attaches LoRA factors (A [rank, in], B [out, rank], both in the weight's dtype/device) with
  /// the given output scaling (α/r, or α/√r for rsLoRA). Replaces a previous adapter.
  void attach_lora(const torch::Tensor& lora_a, const torch::Tensor& lora_b, double scaling);
  /// Removes the adapter (if any).
  void detach_lora();
  bool has_lora() const { return static_cast<bool>(lora_A); }
  double lora_scaling() const { return lora_scaling_; }

  torch::Tensor weight;
  torch::Tensor bias;
  std::shared_ptr<linear_impl> lora_A;  ///< registered as "lora_A" while attached
  std::shared_ptr<linear_impl> lora_B;  ///< registered as "lora_B" while attached

 private:
  std::int64_t in_features_;
  std::int64_t out_features_;
  double lora_scaling_ = 0.0;
};
TORCH_MODULE_IMPL(linear, linear_impl);

/// RMSNorm as in HF: computed in fp32, cast back to the input dtype, then multiplied by `weight`.
class rms_norm_impl : public torch::nn::Module {
 public:
  rms_norm_impl(std::int64_t size, double eps, const torch::TensorOptions& options = {});
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;

 private:
  double eps_;
};
TORCH_MODULE_IMPL(rms_norm, rms_norm_impl);

/// Per-layer key/value cache for incremental decoding. Keys and values of layer i are stored in
/// [B, num_kv_heads, capacity, head_dim] buffers that grow geometrically; `length()` positions are
/// valid. The model appends L new positions per forward (all layers), then `advance(L)`.
class kv_cache {
 public:
  /// Number of cached positions (the same for every layer and row).
  std::int64_t length() const { return length_; }
  /// Batch size of the cached tensors (0 when empty).
  std::int64_t batch_size() const;
  bool empty() const { return length_ == 0; }

  /// Writes k, v [B, KV, L, d] of `layer` at positions [length, length + L) and returns the views
  /// [B, KV, length + L, d] of all cached keys and values. Throws runtime_error on a batch, head or
  /// dim mismatch with what is cached.
  std::pair<torch::Tensor, torch::Tensor> update(std::size_t layer, const torch::Tensor& k, const torch::Tensor& v);
  /// Marks L more positions as cached (after every layer has been updated).
  void advance(std::int64_t count);
  /// Keeps only the rows `index` (int64 [B']), e.g. to drop finished sequences.
  void select_rows(const torch::Tensor& index);
  void clear();

 private:
  std::vector<torch::Tensor> keys_;
  std::vector<torch::Tensor> values_;
  std::int64_t length_ = 0;
};

/// cos and sin [B, L, head_dim] of (multimodal) RoPE for `position_ids` ([B, L] or [3, B, L]),
/// computed in fp32 (inv_freq = 1/θ^(2i/d), emb = cat(freqs, freqs)) and cast to `dtype`. With
/// [3, B, L] positions, frequency j < d/2 takes its position row from `mrope_section` (facts §2d:
/// t for the first section, h for the second, w for the third; mirrored for the second half).
std::pair<torch::Tensor, torch::Tensor> rotary_cos_sin(const torch::Tensor& position_ids, std::int64_t head_dim,
                                                       double theta, const std::vector<std::int64_t>& mrope_section,
                                                       torch::Dtype dtype);

/// x·cos + rotate_half(x)·sin with rotate_half(x) = cat(−x[d/2:], x[:d/2]); x [B, heads, L, d],
/// cos/sin [B, L, d].
torch::Tensor apply_rotary(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

/// GQA self-attention: q/k/v projections with bias, o_proj without; softmax in fp32.
class qwen2_attention_impl : public torch::nn::Module {
 public:
  qwen2_attention_impl(const text_config& config, const torch::TensorOptions& options = {});
  /// x [B, L, hidden]; cos/sin [B, L, d]; `allowed` bool [B, L, T] (T = cached + L): which keys each
  /// query may attend to. With `cache`, the new keys/values are appended to layer `layer`.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& allowed, kv_cache* cache, std::size_t layer);

  linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  std::int64_t num_heads_, num_kv_heads_, head_dim_;
  double scaling_;
};
TORCH_MODULE_IMPL(qwen2_attention, qwen2_attention_impl);

/// down_proj(silu(gate_proj(x)) · up_proj(x)), no biases.
class qwen2_mlp_impl : public torch::nn::Module {
 public:
  qwen2_mlp_impl(const text_config& config, const torch::TensorOptions& options = {});
  torch::Tensor forward(const torch::Tensor& x);
  linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE_IMPL(qwen2_mlp, qwen2_mlp_impl);

/// Pre-norm decoder layer: h = x + attn(norm1(x)); y = h + mlp(norm2(h)).
class qwen2_decoder_layer_impl : public torch::nn::Module {
 public:
  qwen2_decoder_layer_impl(const text_config& config, const torch::TensorOptions& options = {});
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& allowed, kv_cache* cache, std::size_t layer);
  qwen2_attention self_attn{nullptr};
  qwen2_mlp mlp{nullptr};
  rms_norm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};
TORCH_MODULE_IMPL(qwen2_decoder_layer, qwen2_decoder_layer_impl);

/// The token embedding table (`embed_tokens.weight` [V, hidden]).
class embedding_impl : public torch::nn::Module {
 public:
  embedding_impl(std::int64_t num_embeddings, std::int64_t dim, const torch::TensorOptions& options = {});
  /// ids int64 [...] → [..., dim]. Throws runtime_error naming 'input_ids' for an id outside [0, V).
  torch::Tensor forward(const torch::Tensor& ids);
  torch::Tensor weight;
};
TORCH_MODULE_IMPL(embedding, embedding_impl);

/// `Qwen2Model`: embed_tokens, layers, norm.
class qwen2_model_impl : public torch::nn::Module {
 public:
  qwen2_model_impl(const text_config& config, const torch::TensorOptions& options = {});

  /// Runs the decoder on `inputs_embeds` [B, L, hidden] and returns the final-normed hidden states
  /// [B, L, hidden].
  ///  - position_ids: int64 [B, L] (1-D RoPE) or [3, B, L] (mRoPE; needs config.mrope_section).
  ///  - attention_mask: [B, T] with T = cache length + L, nonzero for real tokens, 0 for padding;
  ///    undefined means all real. Combined with causality.
  ///  - cache: when given, the new keys/values are appended and `cache->length()` grows by L.
  /// Throws runtime_error naming the argument on a shape or dtype mismatch.
  torch::Tensor forward(const torch::Tensor& inputs_embeds, const torch::Tensor& position_ids,
                        const torch::Tensor& attention_mask = {}, kv_cache* cache = nullptr);

  const text_config& config() const { return config_; }

  /// Gradient checkpointing per decoder layer (off by default). When on, a forward that records
  /// autograd (grad mode on and a layer parameter or the input requiring grad) keeps only each
  /// layer's input and recomputes the layer in backward: activation memory of one layer instead of
  /// all, for one more forward per layer. Values and gradients are those of the plain forward. Such a
  /// forward with a `cache` throws runtime_error naming 'cache'; without autograd it changes nothing.
  void set_gradient_checkpointing(bool on) { gradient_checkpointing_ = on; }
  bool gradient_checkpointing() const { return gradient_checkpointing_; }

  embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  rms_norm norm{nullptr};

 private:
  text_config config_;
  std::vector<qwen2_decoder_layer> layer_refs_;
  bool gradient_checkpointing_ = false;
};
TORCH_MODULE_IMPL(qwen2_model, qwen2_model_impl);

/// Logits [..., V] of hidden states through `lm_head` or, when `lm_head` is empty (tied word
/// embeddings), through the embedding matrix.
torch::Tensor lm_logits(const torch::Tensor& hidden, linear lm_head, embedding embed_tokens);

/// `Qwen2ForCausalLM`: `model` (qwen2_model) and `lm_head` (absent when tie_word_embeddings).
/// A text-only LM; the multimodal models hold the same two parts under their own paths.
class qwen2_causal_lm_impl : public torch::nn::Module {
 public:
  qwen2_causal_lm_impl(const text_config& config, const torch::TensorOptions& options = {});
  /// input_ids int64 [B, L] → logits [B, L, V]; arguments as qwen2_model_impl::forward.
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& position_ids,
                        const torch::Tensor& attention_mask = {}, kv_cache* cache = nullptr);
  qwen2_model model{nullptr};
  linear lm_head{nullptr};
};
TORCH_MODULE_IMPL(qwen2_causal_lm, qwen2_causal_lm_impl);

/// Per-row 1-D positions of a left-padded batch: cumsum(mask) − 1 on real tokens, 0 on padding.
/// `attention_mask` [B, L]; returns int64 [B, L].
torch::Tensor positions_from_mask(const torch::Tensor& attention_mask);

}  // namespace consr_runtime
