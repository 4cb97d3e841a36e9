// consr/adapters/torch/common.hpp — what every part of the LibTorch adapter shares: the dtype map
// (consr element type ↔ at::ScalarType), c10::Error in consr::error's format (CONSR_TORCH_CHECK),
// the tensor checks, the dtype dispatchers, view_of (a tensor as a consr view, no copy), and the
// row-block helpers of [N, ...] / [B, L, ...] tensors. Part of consr/adapters/torch.hpp (include
// that umbrella, or one family header of this folder, which includes this one).
// This header never includes CUDA headers.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../error.hpp"
#include "../../numeric.hpp"
#include "../../view.hpp"

namespace consr {
namespace libtorch {

// ================================================================================================
// dtypes and errors
// ================================================================================================

/// The at::ScalarType whose elements have the bits of consr element type T
/// (float, double, consr::bfloat16 → kBFloat16, consr::float16 → kHalf, int32, int64).
template <class T>
constexpr at::ScalarType torch_dtype_of() noexcept {
  using U = std::remove_cv_t<T>;
  static_assert(is_supported_float_v<U> || is_index_type_v<U>,
                "consr::libtorch: element type must be float, double, consr::bfloat16, consr::float16, int32 or int64");
  if constexpr (std::is_same_v<U, float>) return at::kFloat;
  else if constexpr (std::is_same_v<U, double>) return at::kDouble;
  else if constexpr (std::is_same_v<U, bfloat16>) return at::kBFloat16;
  else if constexpr (std::is_same_v<U, float16>) return at::kHalf;
  else if constexpr (std::is_same_v<U, std::int32_t>) return at::kInt;
  else return at::kLong;
}
template <class T>
inline constexpr at::ScalarType torch_dtype_v = torch_dtype_of<T>();

/// Python-style dtype name ("float32", "bfloat16", "int64", ...) for messages.
inline std::string dtype_name(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    default: return c10::toString(s);
  }
}

/// The dtype of token log-probs computed from logits of dtype `logits` (spec §2): float64 for
/// float64, float32 for float32, bfloat16 and float16.
inline at::ScalarType accum_dtype(at::ScalarType logits) noexcept {
  return logits == at::kDouble ? at::kDouble : at::kFloat;
}

namespace detail {

/// Throws c10::Error with `message` (TORCH_CHECK: Python sees a RuntimeError).
[[noreturn]] inline void throw_torch_error(const std::string& message) { TORCH_CHECK(false, message); }

/// Throws c10::Error with consr::error's message format: "fn: argument 'arg': message".
[[noreturn]] inline void fail(const char* fn, const char* arg, const std::string& message) {
  throw_torch_error(consr::error(fn, arg ? arg : "", message).what());
}

/// Runs f() and turns a consr::error from the host algorithms into c10::Error with the same message.
template <class F>
decltype(auto) translate_errors(F&& f) {
  try {
    return std::forward<F>(f)();
  } catch (const consr::error& e) {
    throw_torch_error(e.what());
  }
}

/// Runs parse(), one of consr's parse_<enum>(std::string_view) functions, and turns its consr::error
/// into c10::Error with the same message under the adapter's function name `fn`
/// ("consr::libtorch::parse_noise_schedule: argument 'schedule': ...").
template <class F>
decltype(auto) parse_option(const char* fn, F&& parse) {
  try {
    return std::forward<F>(parse)();
  } catch (const consr::error& e) {
    const std::string what = e.what();
    throw_torch_error(std::string(fn) + what.substr(e.function().size()));
  }
}

}  // namespace detail

/// Throws c10::Error naming `function` and `argument` unless `cond` holds (message parts are
/// streamed only on failure), like CONSR_CHECK_ARG for torch callers.
#define CONSR_TORCH_CHECK(cond, function, argument, ...)                                                 \
  do {                                                                                                   \
    if (CONSR_UNLIKELY(!(cond)))                                                                         \
      ::consr::libtorch::detail::fail((function), (argument), ::consr::detail::concat(__VA_ARGS__));     \
  } while (0)

namespace detail {

inline std::string shape_string(at::IntArrayRef sizes) {
  std::string s = "[";
  for (std::size_t d = 0; d < sizes.size(); ++d) {
    if (d) s += ", ";
    s += std::to_string(sizes[d]);
  }
  return s + "]";
}

inline std::string dtype_list(std::initializer_list<at::ScalarType> allowed) {
  std::string s;
  std::size_t i = 0;
  for (const at::ScalarType t : allowed) {
    if (i) s += i + 1 == allowed.size() ? " or " : ", ";
    s += dtype_name(t);
    ++i;
  }
  return s;
}

inline void check_defined(const at::Tensor& t, const char* fn, const char* arg) {
  CONSR_TORCH_CHECK(t.defined(), fn, arg, "is an undefined tensor");
}

inline void check_dtype_in(const at::Tensor& t, std::initializer_list<at::ScalarType> allowed, const char* fn,
                           const char* arg) {
  bool ok = false;
  for (const at::ScalarType s : allowed) ok = ok || t.scalar_type() == s;
  CONSR_TORCH_CHECK(ok, fn, arg, "has dtype ", dtype_name(t.scalar_type()), " but must be ", dtype_list(allowed));
}

inline void check_floating(const at::Tensor& t, const char* fn, const char* arg) {
  check_dtype_in(t, {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}, fn, arg);
}

inline void check_index_dtype(const at::Tensor& t, const char* fn, const char* arg) {
  check_dtype_in(t, {at::kLong, at::kInt}, fn, arg);
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* fn, const char* arg) {
  CONSR_TORCH_CHECK(t.dim() == dim, fn, arg, "has ", t.dim(), " dimensions ", shape_string(t.sizes()),
                    " but must have ", dim);
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& reference, const char* fn, const char* arg,
                              const char* reference_arg) {
  CONSR_TORCH_CHECK(t.device() == reference.device(), fn, arg, "is on ", t.device().str(), " but '", reference_arg,
                    "' is on ", reference.device().str(), "; all arguments must be on one device");
}

inline void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* fn, const char* arg,
                        const char* what) {
  CONSR_TORCH_CHECK(t.sizes() == expected, fn, arg, "has shape ", shape_string(t.sizes()), " but must have ",
                    shape_string(expected), " (", what, ")");
}

template <class T>
struct type_tag {
  using type = T;
};

/// Calls f(type_tag<T>{}) with T the first of T, Rest... whose torch dtype is t's; otherwise fails
/// naming `arg` and the dtypes `allowed`.
template <class T, class... Rest, class F>
decltype(auto) dispatch_dtype_among(const at::Tensor& t, const char* fn, const char* arg, F& f,
                                    std::initializer_list<at::ScalarType> allowed) {
  if (t.scalar_type() == torch_dtype_v<T>) return f(type_tag<T>{});
  if constexpr (sizeof...(Rest) > 0) {
    return dispatch_dtype_among<Rest...>(t, fn, arg, f, allowed);
  } else {
    fail(fn, arg, "has dtype " + dtype_name(t.scalar_type()) + " but must be " + dtype_list(allowed));
  }
}

/// Calls f(type_tag<T>{}) with T the one of Ts (consr element or index types) that t holds;
/// otherwise fails naming `arg` and the dtypes of Ts, in that order.
template <class... Ts, class F>
decltype(auto) dispatch_dtype(const at::Tensor& t, const char* fn, const char* arg, F&& f) {
  return dispatch_dtype_among<Ts...>(t, fn, arg, f, {torch_dtype_v<Ts>...});
}

/// Calls f(type_tag<T>{}) with T the consr element type of a floating tensor.
template <class F>
decltype(auto) dispatch_floating(const at::Tensor& t, const char* fn, const char* arg, F&& f) {
  return dispatch_dtype<float, double, bfloat16, float16>(t, fn, arg, f);
}

/// Calls f(type_tag<T>{}) with T = float or double for a float32 / float64 tensor.
template <class F>
decltype(auto) dispatch_float_or_double(const at::Tensor& t, const char* fn, const char* arg, F&& f) {
  return dispatch_dtype<float, double>(t, fn, arg, f);
}

/// Calls f(type_tag<I>{}) with I = int32_t or int64_t for an int32 / int64 tensor.
template <class F>
decltype(auto) dispatch_index(const at::Tensor& t, const char* fn, const char* arg, F&& f) {
  return dispatch_dtype<std::int64_t, std::int32_t>(t, fn, arg, f);
}

/// Calls f(type_tag<T>{}, type_tag<I>{}) with T the consr element type of the floating tensor
/// `values` (dispatch_floating, named `values_arg`) and I the index type of `labels`.
template <class F>
decltype(auto) dispatch_values_and_labels(const at::Tensor& values, const at::Tensor& labels, const char* fn,
                                          const char* values_arg, F&& f) {
  return dispatch_floating(values, fn, values_arg, [&](auto value_tag) -> decltype(auto) {
    return dispatch_index(labels, fn, "labels", [&](auto label_tag) -> decltype(auto) { return f(value_tag, label_tag); });
  });
}

}  // namespace detail

// ================================================================================================
// Views
// ================================================================================================

/// The consr view of tensor `t` (no copy): element type T (const T for read-only access), rank Rank,
/// memory space Space (host_space: a CPU tensor; device_space: a CUDA tensor). bfloat16 / float16
/// tensors are viewed as consr::bfloat16 / consr::float16 (same bits). Strides are the tensor's own
/// (in elements); algorithms check the contiguity they need.
/// Throws c10::Error naming `argument` for an undefined tensor, another dtype, rank or device.
template <class T, int Rank, class Space = host_space>
strided_view<T, Rank, Space> view_of(const at::Tensor& t, const char* argument = "tensor",
                                     const char* function = "consr::libtorch::view_of") {
  detail::check_defined(t, function, argument);
  CONSR_TORCH_CHECK(t.scalar_type() == torch_dtype_v<T>, function, argument, "has dtype ",
                    dtype_name(t.scalar_type()), " but ", dtype_name(torch_dtype_v<T>), " is required");
  detail::check_dim(t, Rank, function, argument);
  if constexpr (std::is_same_v<Space, host_space>) {
    CONSR_TORCH_CHECK(t.device().is_cpu(), function, argument, "is on ", t.device().str(),
                      " but a CPU tensor is required here");
  } else {
    CONSR_TORCH_CHECK(t.device().is_cuda(), function, argument, "is on ", t.device().str(),
                      " but a CUDA tensor is required here");
  }
  index_t ext[Rank > 0 ? Rank : 1] = {};
  index_t str[Rank > 0 ? Rank : 1] = {};
  for (int d = 0; d < Rank; ++d) {
    ext[d] = t.size(d);
    str[d] = t.stride(d);
  }
  return strided_view<T, Rank, Space>(static_cast<T*>(t.data_ptr()), ext, str);
}

/// view_of of an optional argument: an empty view for an undefined tensor.
template <class T, int Rank, class Space = host_space>
strided_view<T, Rank, Space> optional_view_of(const at::Tensor& t, const char* argument = "tensor",
                                              const char* function = "consr::libtorch::view_of") {
  return t.defined() ? view_of<T, Rank, Space>(t, argument, function) : strided_view<T, Rank, Space>{};
}

/// view_of for a CPU tensor: a consr::host_view.
template <class T, int Rank>
host_view<T, Rank> host_view_of(const at::Tensor& t, const char* argument = "tensor",
                                const char* function = "consr::libtorch::host_view_of") {
  return view_of<T, Rank, host_space>(t, argument, function);
}

/// view_of for a CUDA tensor: a consr::device_view (for the consr::cuda launchers).
template <class T, int Rank>
device_view<T, Rank> device_view_of(const at::Tensor& t, const char* argument = "tensor",
                                    const char* function = "consr::libtorch::device_view_of") {
  return view_of<T, Rank, device_space>(t, argument, function);
}

namespace detail {

/// Only CPU and CUDA tensors are supported.
inline bool is_cuda_tensor(const at::Tensor& t, const char* fn, const char* arg) {
  CONSR_TORCH_CHECK(t.device().is_cpu() || t.device().is_cuda(), fn, arg, "is on ", t.device().str(),
                    "; consr supports CPU and CUDA tensors");
  return t.device().is_cuda();
}

// ---- rows of [N, ...] and [B, L, ...] tensors ----------------------------------------------------

/// True when dims 0 and 1 of `t` ([B, L, ...]) can be seen as one dimension of B·L rows.
inline bool rows_mergeable(const at::Tensor& t) {
  const int64_t batch = t.size(0), length = t.size(1);
  return batch <= 1 || length <= 1 || t.stride(0) == length * t.stride(1);
}

/// The [B·L, ...] view of a mergeable [B, L, ...] tensor (no copy).
inline at::Tensor merge_rows(const at::Tensor& t) {
  std::vector<int64_t> sizes{t.size(0) * t.size(1)};
  std::vector<int64_t> strides{t.size(1) > 1 ? t.stride(1) : t.stride(0)};
  for (int64_t d = 2; d < t.dim(); ++d) {
    sizes.push_back(t.size(d));
    strides.push_back(t.stride(d));
  }
  return t.as_strided(sizes, strides, t.storage_offset());
}

/// Calls f(blocks) with every tensor as rows: unchanged when `batched` is false ([N, V] / [N]);
/// else [B, L, ...] tensors merged to [B·L, ...] when all allow it without a copy, or one call per
/// batch element b with t.select(0, b) (e.g. logits[:, :-1] of a causal shift).
template <std::size_t K, class F>
void for_each_row_block(const std::array<at::Tensor, K>& tensors, bool batched, F&& f) {
  if (!batched) {
    f(tensors);
    return;
  }
  bool mergeable = true;
  for (const at::Tensor& t : tensors) mergeable = mergeable && rows_mergeable(t);
  std::array<at::Tensor, K> block;
  if (mergeable) {
    for (std::size_t k = 0; k < K; ++k) block[k] = merge_rows(tensors[k]);
    f(block);
    return;
  }
  const int64_t batch = tensors[0].size(0);
  for (int64_t b = 0; b < batch; ++b) {
    for (std::size_t k = 0; k < K; ++k) block[k] = tensors[k].select(0, b);
    f(block);
  }
}

/// Every label is in [0, vocab) or ignore_index; the message gives the offending multi-index.
/// Works on any device (one reduction; the host kernels check again before reading).
inline void check_labels_range(const at::Tensor& labels, int64_t vocab, int64_t ignore_index, const char* fn) {
  if (labels.numel() == 0) return;
  const at::Tensor bad = labels.ne(ignore_index).logical_and(labels.lt(0).logical_or(labels.ge(vocab)));
  if (!bad.any().item<bool>()) return;
  const at::Tensor where = bad.nonzero().select(0, 0).cpu();
  std::string index;
  for (int64_t d = 0; d < where.numel(); ++d) index += (d ? ", " : "") + std::to_string(where[d].item<int64_t>());
  at::Tensor value = labels;
  for (int64_t d = 0; d < where.numel(); ++d) value = value.select(0, where[d].item<int64_t>());
  fail(fn, "labels",
       "labels[" + index + "] = " + std::to_string(value.item<int64_t>()) + " is outside [0, " +
           std::to_string(vocab) + ") and is not ignore_index (" + std::to_string(ignore_index) + ")");
}

}  // namespace detail
}  // namespace libtorch
}  // namespace consr
