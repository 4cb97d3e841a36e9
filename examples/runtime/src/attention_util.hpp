// Memory-bounded attention shared by the runtime's model sources (private to consr_runtime).
//
// Scores of one attention call are heads × L_q × L_k elements: a Qwen2.5-VL image at the default
// pixel bound (65536 patches, 16 heads) would need 16 · 65536² fp32 scores (256 GiB) at once. The
// queries are therefore processed in chunks whose scores stay within `attention_chunk_elements()`
// (2^26 elements, 256 MiB of fp32, by default); a short input is one chunk and computes exactly what
// the unchunked formula computes (every query row is independent of the others).
#pragma once

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <torch/version.h>

#include "consr_runtime/error.hpp"

namespace consr_runtime {

/// Default score elements per query chunk (2^26: 256 MiB of fp32 scores).
inline constexpr std::int64_t default_attention_chunk_elements = std::int64_t{1} << 26;

/// Score elements per query chunk: the environment variable CONSR_ATTENTION_CHUNK_ELEMENTS when set
/// (a positive integer; tests use a tiny value to force many chunks), else 2^26. Read at every call
/// so that a test can change it between forwards. Throws runtime_error naming the variable for a
/// value that is not a positive integer.
inline std::int64_t attention_chunk_elements() {
  const char* text = std::getenv("CONSR_ATTENTION_CHUNK_ELEMENTS");
  if (text == nullptr || *text == '\0') return default_attention_chunk_elements;
  errno = 0;
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || value <= 0)
    throw runtime_error(std::string("consr_runtime: environment variable CONSR_ATTENTION_CHUNK_ELEMENTS = '") + text +
                        "' is not a positive integer");
  return static_cast<std::int64_t>(value);
}

/// Queries per chunk so that rows × chunk × keys ≤ budget (at least one query).
inline std::int64_t attention_query_chunk(std::int64_t rows, std::int64_t keys, std::int64_t budget) {
  return std::max<std::int64_t>(1, budget / std::max<std::int64_t>(1, rows * keys));
}

/// Unmasked (bidirectional) attention softmax(q kᵀ / √d) v for q [..., L_q, d] and k, v [..., L_k, d]
/// with equal leading dims (e.g. [heads, L, d] or [batch, heads, L, d]); returns [..., L_q, d].
/// With LibTorch 2.x through at::scaled_dot_product_attention (its fused kernels where the device has
/// them); with 1.x as transformers' eager path: scores in the input dtype, softmax in fp32, the
/// probabilities cast back before the product with v. Either way the queries are chunked so that at
/// most `budget` scores exist at once (attention_chunk_elements() when budget ≤ 0).
inline torch::Tensor bidirectional_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                             std::int64_t budget = 0) {
  const std::int64_t lq = q.size(-2), lk = k.size(-2), d = q.size(-1);
  const std::int64_t rows = lq == 0 || d == 0 ? 1 : q.numel() / (lq * d);  // product of the leading dims
  const std::int64_t chunk = attention_query_chunk(rows, lk, budget > 0 ? budget : attention_chunk_elements());
  auto one = [&](const torch::Tensor& qc) {
#if TORCH_VERSION_MAJOR >= 2
    return at::scaled_dot_product_attention(qc, k, v);  // scale 1/√d by default
#else
    const double scaling = 1.0 / std::sqrt(static_cast<double>(d));
    auto w = torch::matmul(qc, k.transpose(-2, -1)) * scaling;
    w = torch::softmax(w, -1, torch::kFloat).to(qc.scalar_type());
    return torch::matmul(w, v);
#endif
  };
  if (chunk >= lq) return one(q);
  std::vector<torch::Tensor> outs;
  outs.reserve(static_cast<std::size_t>((lq + chunk - 1) / chunk));
  for (std::int64_t start = 0; start < lq; start += chunk) outs.push_back(one(q.narrow(-2, start, std::min(chunk, lq - start))));
  return torch::cat(outs, -2);
}

}  // namespace consr_runtime
