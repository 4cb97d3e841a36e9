// consr/adapters/torch/visual_weights.hpp — token visual weights (eqs. 12–13) of the ConSR loss on
// at::Tensor (no gradient). Part of consr/adapters/torch.hpp.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "../../dpo.hpp"
#include "common.hpp"
#include "registry.hpp"

namespace consr {
namespace libtorch {

/// Token visual weights, eqs. 12–13 (no gradient): ω = 1 ± clip(α·(exp(logp_clean) −
/// exp(logp_corrupt)), lo, hi), + on the chosen side, − on the rejected side. logp_clean and
/// logp_corrupt: one shape, any floating dtype (the policy's log-probs under (x, I) and (x, Ĩ));
/// returns that shape in float64 for float64 logp_clean, else float32. CPU or CUDA tensors.
/// Throws c10::Error naming 'logp_clean', 'logp_corrupt' or an option.
inline at::Tensor visual_weights(const at::Tensor& logp_clean, const at::Tensor& logp_corrupt, weight_side side,
                                 const visual_weight_options& options = {}) {
  constexpr const char* fn = "consr::libtorch::visual_weights";
  detail::check_defined(logp_clean, fn, "logp_clean");
  detail::check_defined(logp_corrupt, fn, "logp_corrupt");
  detail::check_floating(logp_clean, fn, "logp_clean");
  detail::check_floating(logp_corrupt, fn, "logp_corrupt");
  detail::check_shape(logp_corrupt, logp_clean.sizes(), fn, "logp_corrupt", "the same tokens as 'logp_clean'");
  detail::check_same_device(logp_corrupt, logp_clean, fn, "logp_corrupt", "logp_clean");
  const bool on_cuda = detail::is_cuda_tensor(logp_clean, fn, "logp_clean");
  const at::ScalarType dtype = logp_clean.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor clean = logp_clean.detach().reshape({-1}).to(dtype);
  const at::Tensor corrupt = logp_corrupt.detach().reshape({-1}).to(dtype);
  at::Tensor weights = at::empty({clean.size(0)}, clean.options());
  if (on_cuda) {
    detail::cuda_entry(cuda_backend_registry().visual_weights, fn, "logp_clean", "visual_weights")(clean, corrupt, side,
                                                                                                   options, weights);
    return weights.view(logp_clean.sizes());
  }
  detail::dispatch_float_or_double(clean, fn, "logp_clean", [&](auto tag) {
    using T = typename decltype(tag)::type;
    detail::translate_errors([&] {
      consr::visual_weights<const T, const T, T>(host_view_of<const T, 1>(clean, "logp_clean", fn),
                                                 host_view_of<const T, 1>(corrupt, "logp_corrupt", fn), side,
                                                 host_view_of<T, 1>(weights, "weights", fn), options);
    });
  });
  return weights.view(logp_clean.sizes());
}


/// "chosen" / "rejected" as a weight_side (consr::parse_weight_side). Throws c10::Error naming 'side'
/// otherwise.
inline weight_side parse_weight_side(const std::string& name) {
  return detail::parse_option("consr::libtorch::parse_weight_side", [&] { return consr::parse_weight_side(name); });
}

}  // namespace libtorch
}  // namespace consr
