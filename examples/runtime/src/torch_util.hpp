// Small LibTorch helpers shared by the runtime's model sources (private to consr_runtime).
#pragma once

#include <cstdint>
#include <sstream>
#include <string>

#include <torch/torch.h>

namespace consr_runtime {

/// "[2, 3]" for error messages; "(undefined)" for an undefined tensor.
inline std::string shape_string(const torch::Tensor& t) {
  if (!t.defined()) return "(undefined)";
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

/// A torch::nn::Linear of `options`' dtype and device with zero parameters (they are loaded from a
/// checkpoint afterwards).
inline torch::nn::Linear make_linear(std::int64_t in, std::int64_t out, bool bias, const torch::TensorOptions& options) {
  torch::nn::Linear l(torch::nn::LinearOptions(in, out).bias(bias));
  l->to(options.dtype().toScalarType());
  if (options.has_device()) l->to(options.device());
  torch::NoGradGuard guard;
  l->weight.zero_();
  if (bias) l->bias.zero_();
  return l;
}

}  // namespace consr_runtime
