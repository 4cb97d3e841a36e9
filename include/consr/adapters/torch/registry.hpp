// consr/adapters/torch/registry.hpp — the CUDA registry of the LibTorch adapter: one function
// pointer per operation, filled by consr/adapters/torch_cuda.cuh where a program compiles it with
// nvcc; an empty entry makes a CUDA tensor fail with a clear "not built with CUDA" error. Part of
// consr/adapters/torch.hpp. This header never includes CUDA headers.
#pragma once

#include <ATen/ATen.h>

#include "../../corruption.hpp"
#include "../../dpo.hpp"
#include "../../linear_logprobs.hpp"
#include "../../logprobs.hpp"
#include "../../random.hpp"
#include "common.hpp"

namespace consr {
namespace libtorch {

/// The CUDA implementations of the adapter's operations. consr/adapters/torch_cuda.cuh fills the
/// entries it has kernels for when a program compiles it (nvcc, CUDA-enabled LibTorch); an empty
/// entry makes a CUDA tensor fail with a clear "not built with CUDA" error instead. Entries receive
/// tensors already validated by the family headers of consr/adapters/torch/ (dtypes, shapes, one
/// CUDA device) with the views the host path uses: logits [N, V] with unit inner stride, per-row
/// tensors [N].
namespace detail {
struct dpo_prepared_side;  // a validated dpo_side (torch/dpo.hpp)
}  // namespace detail

struct cuda_backend {
  /// token_logp[i], lse[i] = spec §4 forward of rows logits [N, V], labels [N].
  void (*token_logprobs)(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& token_logp,
                         const at::Tensor& lse, const logprob_options& options) = nullptr;
  /// grad_logits [N, V] = spec §4 backward (grad_token_logp and lse of the accumulation dtype).
  void (*token_logprobs_backward)(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& lse,
                                  const at::Tensor& grad_token_logp, const at::Tensor& grad_logits,
                                  const logprob_options& options) = nullptr;
  /// out (contiguous, image's shape) = spec §3 diffusion noise of contiguous `image`.
  void (*add_diffusion_noise)(const at::Tensor& image, const at::Tensor& out, rng_key key,
                              const diffusion_noise_options& options) = nullptr;
  /// out = random_patch_mask(image) for [B, C, H, W] tensors.
  void (*random_patch_mask)(const at::Tensor& image, const at::Tensor& out, rng_key key,
                            const patch_mask_options& options) = nullptr;
  /// out = mixup(image, other, lambda) for contiguous tensors of one shape.
  void (*mixup)(const at::Tensor& image, const at::Tensor& other, const at::Tensor& out, double lambda) = nullptr;
  /// out = random_resized_crop(image) for [B, C, H, W] tensors.
  void (*random_resized_crop)(const at::Tensor& image, const at::Tensor& out, rng_key key,
                              const resized_crop_options& options) = nullptr;
  /// spec §7 forward: loss [1] (the reduced objective) and metrics [P, 8] (dpo_metric columns).
  void (*dpo_forward)(const detail::dpo_prepared_side& chosen, const detail::dpo_prepared_side& rejected,
                      const dpo_options& options, const at::Tensor& loss, const at::Tensor& metrics) = nullptr;
  /// spec §7 backward; grad_loss on the device: [1] for mean / sum, [P] for none.
  void (*dpo_backward)(const detail::dpo_prepared_side& chosen, const detail::dpo_prepared_side& rejected,
                       const dpo_options& options, const at::Tensor& grad_loss, const at::Tensor& grad_chosen,
                       const at::Tensor& grad_rejected) = nullptr;
  /// eqs. 12–13: weights [n] from logp_clean, logp_corrupt [n], all of the weights' dtype.
  void (*visual_weights)(const at::Tensor& logp_clean, const at::Tensor& logp_corrupt, weight_side side,
                         const visual_weight_options& options, const at::Tensor& weights) = nullptr;
  /// spec §4 from hidden [N, H] × weight [V, H] (+ bias [V], undefined for none): token_logp, lse [N].
  void (*linear_token_logprobs)(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& bias,
                                const at::Tensor& labels, const at::Tensor& token_logp, const at::Tensor& lse,
                                const linear_logprob_options& options) = nullptr;
  /// Its backward: grad_hidden overwritten, grad_weight / grad_bias accumulated (undefined: skipped).
  void (*linear_token_logprobs_backward)(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& bias,
                                         const at::Tensor& labels, const at::Tensor& lse,
                                         const at::Tensor& grad_token_logp, const at::Tensor& grad_hidden,
                                         const at::Tensor& grad_weight, const at::Tensor& grad_bias,
                                         const linear_logprob_options& options) = nullptr;
};

/// The process-wide CUDA registry (one per program: an inline function's static).
inline cuda_backend& cuda_backend_registry() noexcept {
  static cuda_backend backend;
  return backend;
}

namespace detail {

/// The registry entry for a CUDA tensor, or a c10::Error saying why there is none.
template <class Entry>
Entry cuda_entry(Entry entry, const char* fn, const char* arg, const char* what) {
  CONSR_TORCH_CHECK(entry != nullptr, fn, arg,
                    "is a CUDA tensor, but this program has no consr CUDA implementation of ", what,
                    " (consr::libtorch's CUDA code is compiled only where consr's CUDA backend "
                    "(CONSR_ENABLE_CUDA) and a CUDA build of LibTorch are both present, by including "
                    "consr/adapters/torch_cuda.cuh in a .cu file); pass CPU tensors instead");
  return entry;
}

}  // namespace detail
}  // namespace libtorch
}  // namespace consr
