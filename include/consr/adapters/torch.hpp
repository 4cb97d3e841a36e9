// consr/adapters/torch.hpp — LibTorch tensors as consr views, and consr's algorithms as autograd
// functions on at::Tensor (torch::Tensor): token log-probs (spec §4), the DPO objectives (§7),
// the same from hidden states × output projection without the N × V logits (§4, linear_logprobs.hpp),
// visual weights (eqs. 12–13) and the image corruptions (§3, Table 7).
//
// Layers (FlashInfer's split): this header validates tensors, picks the algorithm for the tensor's
// device and dtype, and turns consr::error into c10::Error; the algorithms themselves are the
// framework-free ones of consr/*.hpp (CPU tensors) and consr/cuda/*.cuh (CUDA tensors, through the
// registry below, which consr/adapters/torch_cuda.cuh fills when a program compiles it with nvcc).
// The same functions back the torch.ops library of bindings/torch/ (torch.ops.consr.*).
//
// Errors: every failure is a c10::Error (Python: RuntimeError) whose message names the function and
// the argument, in consr::error's format:
//   "consr::libtorch::token_logprobs: argument 'labels': labels[1, 5] = 152064 is outside [0, 152064) ..."
//
// Compatibility: written against the API common to LibTorch 1.13 and 2.x (at::Tensor, Function<T>,
// AutogradContext::saved_data / save_for_backward / set_materialize_grads / needs_input_grad).
// This header never includes CUDA headers.
#pragma once

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../corruption.hpp"
#include "../dpo.hpp"
#include "../error.hpp"
#include "../linear_logprobs.hpp"
#include "../logprobs.hpp"
#include "../numeric.hpp"
#include "../random.hpp"
#include "../view.hpp"

namespace consr {
namespace libtorch {

// ================================================================================================
// dtypes and errors
// ================================================================================================

/// The at::ScalarType whose elements have the bits of consr element type T
/// (float, double, consr::bfloat16 → kBFloat16, consr::float16 → kHalf, int32, int64).
template <class T>
struct torch_dtype;
template <>
struct torch_dtype<float> {
  static constexpr at::ScalarType value = at::kFloat;
};
template <>
struct torch_dtype<double> {
  static constexpr at::ScalarType value = at::kDouble;
};
template <>
struct torch_dtype<bfloat16> {
  static constexpr at::ScalarType value = at::kBFloat16;
};
template <>
struct torch_dtype<float16> {
  static constexpr at::ScalarType value = at::kHalf;
};
template <>
struct torch_dtype<std::int32_t> {
  static constexpr at::ScalarType value = at::kInt;
};
template <>
struct torch_dtype<std::int64_t> {
  static constexpr at::ScalarType value = at::kLong;
};
template <class T>
inline constexpr at::ScalarType torch_dtype_v = torch_dtype<std::remove_cv_t<T>>::value;

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

/// Calls f(type_tag<T>{}) with T the consr element type of a floating tensor.
template <class F>
decltype(auto) dispatch_floating(const at::Tensor& t, const char* fn, const char* arg, F&& f) {
  switch (t.scalar_type()) {
    case at::kFloat: return f(type_tag<float>{});
    case at::kDouble: return f(type_tag<double>{});
    case at::kBFloat16: return f(type_tag<bfloat16>{});
    case at::kHalf: return f(type_tag<float16>{});
    default: break;
  }
  fail(fn, arg, "has dtype " + dtype_name(t.scalar_type()) + " but must be float32, float64, bfloat16 or float16");
}

/// Calls f(type_tag<T>{}) with T = float or double for a float32 / float64 tensor.
template <class F>
decltype(auto) dispatch_float_or_double(const at::Tensor& t, const char* fn, const char* arg, F&& f) {
  switch (t.scalar_type()) {
    case at::kFloat: return f(type_tag<float>{});
    case at::kDouble: return f(type_tag<double>{});
    default: break;
  }
  fail(fn, arg, "has dtype " + dtype_name(t.scalar_type()) + " but must be float32 or float64");
}

/// Calls f(type_tag<I>{}) with I = int32_t or int64_t for an int32 / int64 tensor.
template <class F>
decltype(auto) dispatch_index(const at::Tensor& t, const char* fn, const char* arg, F&& f) {
  switch (t.scalar_type()) {
    case at::kInt: return f(type_tag<std::int32_t>{});
    case at::kLong: return f(type_tag<std::int64_t>{});
    default: break;
  }
  fail(fn, arg, "has dtype " + dtype_name(t.scalar_type()) + " but must be int64 or int32");
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

// ================================================================================================
// The CUDA registry
// ================================================================================================

/// The CUDA implementations of the adapter's operations. consr/adapters/torch_cuda.cuh fills the
/// entries it has kernels for when a program compiles it (nvcc, CUDA-enabled LibTorch); an empty
/// entry makes a CUDA tensor fail with a clear "not built with CUDA" error instead. Entries receive
/// tensors already validated by this header (dtypes, shapes, one CUDA device) with the views the
/// host path uses: logits [N, V] with unit inner stride, per-row tensors [N].
namespace detail {
/// A dpo_side after validation: 1-D tensors on one device, policy/reference/weights of one float
/// dtype (float32 or float64), offsets and labels int64; the constants are detached. Undefined
/// tensors are absent (one of the two references is).
struct dpo_prepared_side {
  at::Tensor policy_logp;
  at::Tensor offsets;
  at::Tensor reference_logp;
  at::Tensor reference_logp_sum;
  at::Tensor labels;
  at::Tensor weights;
};
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

/// Shared checks of token_logprobs / token_logprobs_backward. Returns true for [B, L, V] logits.
inline bool check_logprob_inputs(const at::Tensor& logits, const at::Tensor& labels, const logprob_options& options,
                                 const char* fn, bool validate_labels = true) {
  check_defined(logits, fn, "logits");
  check_defined(labels, fn, "labels");
  check_floating(logits, fn, "logits");
  check_index_dtype(labels, fn, "labels");
  CONSR_TORCH_CHECK(logits.dim() == 2 || logits.dim() == 3, fn, "logits", "has shape ",
                    shape_string(logits.sizes()), " but must be [N, V] or [B, L, V]");
  CONSR_TORCH_CHECK(labels.sizes() == logits.sizes().slice(0, static_cast<std::size_t>(logits.dim() - 1)), fn,
                    "labels", "has shape ", shape_string(labels.sizes()), " but logits ",
                    shape_string(logits.sizes()), " need labels ",
                    shape_string(logits.sizes().slice(0, static_cast<std::size_t>(logits.dim() - 1))),
                    " (one label per row, already aligned: the causal shift is the caller's)");
  is_cuda_tensor(logits, fn, "logits");
  check_same_device(labels, logits, fn, "labels", "logits");
  const int64_t vocab = logits.size(-1);
  CONSR_TORCH_CHECK(vocab <= 1 || logits.stride(-1) == 1, fn, "logits",
                    "the vocabulary (last) dimension has stride ", logits.stride(-1),
                    " but must be contiguous (stride 1); pass logits.contiguous()");
  CONSR_TORCH_CHECK(std::isfinite(options.temperature) && options.temperature > 0.0, fn, "temperature",
                    "must be finite and > 0, got ", options.temperature);
  // On CUDA this costs one synchronization; the autograd backward skips it (the forward checked).
  if (validate_labels) check_labels_range(labels, vocab, options.ignore_index, fn);
  return logits.dim() == 3;
}

}  // namespace detail

// ================================================================================================
// Token log-probs (spec §4)
// ================================================================================================

/// Forward of token_logprobs without autograd: returns (token_logp, lse), both of labels' shape and
/// of dtype accum_dtype(logits) (float64 for float64 logits, else float32):
///   token_logp = z[y] − logsumexp(z),  lse = logsumexp(z),  z = logits / temperature.
/// - logits [N, V] or [B, L, V] (float32/64, bfloat16, float16), the vocabulary dimension contiguous,
///   any other strides (a view such as logits[:, :-1] is read in place, without a copy);
/// - labels [N] or [B, L] (int64 or int32) on the same device, already aligned with the rows: the
///   causal shift (logits[:, :-1] against labels[:, 1:]) is the caller's (spec §2). Rows whose label
///   is options.ignore_index get 0.
/// CPU tensors run consr::token_logprobs; CUDA tensors the CUDA registry's kernel.
/// Throws c10::Error naming 'logits', 'labels' (dtype, shape, device, a label outside [0, V) that is
/// not ignore_index, with its index) or 'temperature'.
inline std::tuple<at::Tensor, at::Tensor> token_logprobs_forward(const at::Tensor& logits, const at::Tensor& labels,
                                                                 const logprob_options& options = {}) {
  constexpr const char* fn = "consr::libtorch::token_logprobs";
  const bool batched = detail::check_logprob_inputs(logits, labels, options, fn);
  const at::TensorOptions out_options = logits.options().dtype(accum_dtype(logits.scalar_type()));
  at::Tensor token_logp = at::empty(labels.sizes(), out_options);
  at::Tensor lse = at::empty(labels.sizes(), out_options);
  if (logits.device().is_cuda()) {
    const auto run = detail::cuda_entry(cuda_backend_registry().token_logprobs, fn, "logits", "token_logprobs");
    detail::for_each_row_block<4>({logits, labels, token_logp, lse}, batched, [&](const std::array<at::Tensor, 4>& b) {
      run(b[0], b[1], b[2], b[3], options);
    });
    return {token_logp, lse};
  }
  detail::dispatch_floating(logits, fn, "logits", [&](auto logit_tag) {
    using Logit = typename decltype(logit_tag)::type;
    using Acc = accum_t<Logit>;
    detail::dispatch_index(labels, fn, "labels", [&](auto label_tag) {
      using Label = typename decltype(label_tag)::type;
      detail::for_each_row_block<4>(
          {logits, labels, token_logp, lse}, batched, [&](const std::array<at::Tensor, 4>& b) {
            detail::translate_errors([&] {
              consr::token_logprobs<Logit, Label>(host_view_of<const Logit, 2>(b[0], "logits", fn),
                                                  host_view_of<const Label, 1>(b[1], "labels", fn),
                                                  host_view_of<Acc, 1>(b[2], "token_logp", fn),
                                                  host_view_of<Acc, 1>(b[3], "lse", fn), options);
            });
          });
    });
  });
  return {token_logp, lse};
}

/// Backward of token_logprobs without autograd (spec §4): returns grad_logits, a new contiguous
/// tensor of logits' shape and dtype,
///   grad_logits[i, v] = (g_i / τ) · (1[v = y_i] − exp(z_i[v] − lse_i)),  g = grad_token_logp,
/// in one fused pass per row (no other N × V temporary). `lse` is the forward's; grad_token_logp
/// has labels' shape (any floating dtype, any strides). Throws c10::Error naming the argument.
inline at::Tensor token_logprobs_backward(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& lse,
                                          const at::Tensor& grad_token_logp, const logprob_options& options = {});

namespace detail {

inline at::Tensor token_logprobs_backward_impl(const at::Tensor& logits, const at::Tensor& labels,
                                               const at::Tensor& lse, const at::Tensor& grad_token_logp,
                                               const logprob_options& options, bool validate_labels) {
  constexpr const char* fn = "consr::libtorch::token_logprobs_backward";
  const bool batched = detail::check_logprob_inputs(logits, labels, options, fn, validate_labels);
  const at::ScalarType acc = accum_dtype(logits.scalar_type());
  detail::check_defined(lse, fn, "lse");
  detail::check_dtype_in(lse, {acc}, fn, "lse");
  detail::check_shape(lse, labels.sizes(), fn, "lse", "one per row, from the forward");
  detail::check_same_device(lse, logits, fn, "lse", "logits");
  detail::check_defined(grad_token_logp, fn, "grad_token_logp");
  detail::check_floating(grad_token_logp, fn, "grad_token_logp");
  detail::check_shape(grad_token_logp, labels.sizes(), fn, "grad_token_logp", "one per row");
  detail::check_same_device(grad_token_logp, logits, fn, "grad_token_logp", "logits");
  const at::Tensor grad = grad_token_logp.to(acc);
  at::Tensor grad_logits = at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  if (logits.device().is_cuda()) {
    const auto run = detail::cuda_entry(cuda_backend_registry().token_logprobs_backward, fn, "logits",
                                        "token_logprobs_backward");
    detail::for_each_row_block<5>({logits, labels, lse, grad, grad_logits}, batched,
                                  [&](const std::array<at::Tensor, 5>& b) { run(b[0], b[1], b[2], b[3], b[4], options); });
    return grad_logits;
  }
  detail::dispatch_floating(logits, fn, "logits", [&](auto logit_tag) {
    using Logit = typename decltype(logit_tag)::type;
    using Acc = accum_t<Logit>;
    detail::dispatch_index(labels, fn, "labels", [&](auto label_tag) {
      using Label = typename decltype(label_tag)::type;
      detail::for_each_row_block<5>(
          {logits, labels, lse, grad, grad_logits}, batched, [&](const std::array<at::Tensor, 5>& b) {
            detail::translate_errors([&] {
              consr::token_logprobs_backward<Logit, Label, Logit>(
                  host_view_of<const Logit, 2>(b[0], "logits", fn), host_view_of<const Label, 1>(b[1], "labels", fn),
                  host_view_of<const Acc, 1>(b[2], "lse", fn), host_view_of<const Acc, 1>(b[3], "grad_token_logp", fn),
                  host_view_of<Logit, 2>(b[4], "grad_logits", fn), options);
            });
          });
    });
  });
  return grad_logits;
}

}  // namespace detail

inline at::Tensor token_logprobs_backward(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& lse,
                                          const at::Tensor& grad_token_logp, const logprob_options& options) {
  return detail::token_logprobs_backward_impl(logits, labels, lse, grad_token_logp, options, true);
}

/// The autograd function of token_logprobs: saves logits, labels and lse (one float per row) and
/// computes ∂L/∂logits in one fused pass; an undefined or all-zero upstream gradient gives zeros
/// without running the kernel. Labels get no gradient.
struct token_logprobs_function : public torch::autograd::Function<token_logprobs_function> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& labels,
                            const logprob_options& options) {
    auto [token_logp, lse] = token_logprobs_forward(logits, labels, options);
    ctx->save_for_backward({logits, labels, lse});
    ctx->saved_data["temperature"] = options.temperature;
    ctx->saved_data["ignore_index"] = static_cast<int64_t>(options.ignore_index);
    ctx->set_materialize_grads(false);
    return token_logp;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const at::Tensor& logits = saved[0];
    if (!ctx->needs_input_grad(0)) return {at::Tensor(), at::Tensor(), at::Tensor()};
    const at::Tensor& grad = grad_outputs[0];
    // Zero upstream gradient (e.g. a loss that does not use these log-probs): zeros, no kernel.
    if (!grad.defined() || (grad.device().is_cpu() && !grad.ne(0).any().item<bool>()))
      return {at::zeros_like(logits, at::MemoryFormat::Contiguous), at::Tensor(), at::Tensor()};
    logprob_options options;
    options.temperature = ctx->saved_data["temperature"].toDouble();
    options.ignore_index = ctx->saved_data["ignore_index"].toInt();
    return {detail::token_logprobs_backward_impl(logits, saved[1], saved[2], grad, options, false), at::Tensor(),
            at::Tensor()};
  }
};

/// Token log-probs with autograd (spec §4): logp = z[y] − logsumexp(z), z = logits / temperature,
/// of labels' shape, float32 (float64 for float64 logits). Differentiable w.r.t. logits (fused
/// backward: the only N × V memory is the gradient itself). Inputs as token_logprobs_forward:
/// logits [N, V] or [B, L, V], labels [N] or [B, L] aligned with the rows (shift them yourself),
/// ignore_index rows give 0 and gradient 0. Throws c10::Error naming the argument.
inline at::Tensor token_logprobs(const at::Tensor& logits, const at::Tensor& labels,
                                 const logprob_options& options = {}) {
  // Function::apply reads every tensor argument's device: undefined ones are rejected first.
  detail::check_defined(logits, "consr::libtorch::token_logprobs", "logits");
  detail::check_defined(labels, "consr::libtorch::token_logprobs", "labels");
  return token_logprobs_function::apply(logits, labels, options);
}

// ================================================================================================
// Memory-bounded token log-probs from hidden states (spec §4, consr/linear_logprobs.hpp)
// ================================================================================================

/// GEMM policy (consr/detail/gemm.hpp's contract) on ATen's matrix product, i.e. the BLAS LibTorch
/// was built with: the row-major operands are wrapped with at::from_blob (no copy) and
/// C = alpha·op(A)·op(B) + beta·C is one in-place addmm_ (beta = 0 ignores C's contents, as BLAS).
struct torch_gemm {
  template <class T>
  static at::Tensor matrix(const T* data, index_t rows, index_t cols, index_t ld) {
    return at::from_blob(const_cast<T*>(data), {rows, cols}, {ld, 1}, at::TensorOptions().dtype(torch_dtype_v<T>));
  }
  template <class T>
  static void run(index_t m, index_t n, const at::Tensor& a, const at::Tensor& b, T alpha, T beta, T* c,
                  index_t ldc) {
    if (m == 0 || n == 0) return;
    at::Tensor out = matrix<T>(c, m, n, ldc);
    out.addmm_(a, b, beta, alpha);
  }
  /// C[m×n] = alpha·A[m×k]·B[n×k]ᵀ + beta·C.
  template <class T>
  static void gemm_nt(index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda, const T* b, index_t ldb,
                      T beta, T* c, index_t ldc) {
    run<T>(m, n, matrix(a, m, k, lda), matrix(b, n, k, ldb).t(), alpha, beta, c, ldc);
  }
  /// C[m×n] = alpha·A[m×k]·B[k×n] + beta·C.
  template <class T>
  static void gemm_nn(index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda, const T* b, index_t ldb,
                      T beta, T* c, index_t ldc) {
    run<T>(m, n, matrix(a, m, k, lda), matrix(b, k, n, ldb), alpha, beta, c, ldc);
  }
  /// C[m×n] = alpha·A[k×m]ᵀ·B[k×n] + beta·C.
  template <class T>
  static void gemm_tn(index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda, const T* b, index_t ldb,
                      T beta, T* c, index_t ldc) {
    run<T>(m, n, matrix(a, k, m, lda).t(), matrix(b, k, n, ldb), alpha, beta, c, ldc);
  }
};

namespace detail {

/// linear_token_logprobs' arguments after validation: hidden [N, H] and labels [N] as rows (a copy
/// only where the rows of a [B, L, H] view cannot be merged), weight [V, H], bias [V] or empty.
struct linear_inputs {
  at::Tensor hidden, weight, bias, labels;
  bool has_bias;
};

inline linear_inputs check_linear_inputs(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& bias,
                                         bool has_bias, const at::Tensor& labels,
                                         const linear_logprob_options& options, const char* fn) {
  check_defined(hidden, fn, "hidden");
  check_defined(weight, fn, "weight");
  check_defined(labels, fn, "labels");
  check_floating(hidden, fn, "hidden");
  CONSR_TORCH_CHECK(weight.scalar_type() == hidden.scalar_type(), fn, "weight", "has dtype ",
                    dtype_name(weight.scalar_type()), " but 'hidden' has dtype ", dtype_name(hidden.scalar_type()),
                    " (hidden, weight and bias share one dtype)");
  check_index_dtype(labels, fn, "labels");
  CONSR_TORCH_CHECK(hidden.dim() == 2 || hidden.dim() == 3, fn, "hidden", "has shape ", shape_string(hidden.sizes()),
                    " but must be [N, H] or [B, L, H]");
  const auto rows = hidden.sizes().slice(0, static_cast<std::size_t>(hidden.dim() - 1));
  CONSR_TORCH_CHECK(labels.sizes() == rows, fn, "labels", "has shape ", shape_string(labels.sizes()), " but hidden ",
                    shape_string(hidden.sizes()), " needs labels ", shape_string(rows),
                    " (one label per row, already aligned: the causal shift is the caller's)");
  check_dim(weight, 2, fn, "weight");
  CONSR_TORCH_CHECK(weight.size(1) == hidden.size(-1), fn, "weight", "has shape ", shape_string(weight.sizes()),
                    " but must be [V, ", hidden.size(-1), "] (its columns are the hidden size of 'hidden')");
  CONSR_TORCH_CHECK(weight.size(1) <= 1 || weight.stride(1) == 1, fn, "weight", "rows have stride ",
                    weight.stride(1), " but must be contiguous (stride 1); pass weight.contiguous()");
  is_cuda_tensor(hidden, fn, "hidden");
  check_same_device(weight, hidden, fn, "weight", "hidden");
  check_same_device(labels, hidden, fn, "labels", "hidden");
  if (has_bias) {
    check_defined(bias, fn, "bias");
    CONSR_TORCH_CHECK(bias.scalar_type() == hidden.scalar_type(), fn, "bias", "has dtype ",
                      dtype_name(bias.scalar_type()), " but 'hidden' has dtype ", dtype_name(hidden.scalar_type()));
    check_shape(bias, {weight.size(0)}, fn, "bias", "one per vocabulary entry, rows of weight");
    check_same_device(bias, hidden, fn, "bias", "hidden");
  }
  CONSR_TORCH_CHECK(std::isfinite(options.temperature) && options.temperature > 0.0, fn, "temperature",
                    "must be finite and > 0, got ", options.temperature);
  CONSR_TORCH_CHECK(options.vocab_chunk > 0, fn, "vocab_chunk", "must be > 0, got ", options.vocab_chunk);
  check_labels_range(labels, weight.size(0), options.ignore_index, fn);
  linear_inputs in;
  in.hidden = hidden.reshape({-1, hidden.size(-1)});
  if (in.hidden.size(1) > 1 && in.hidden.stride(1) != 1) in.hidden = in.hidden.contiguous();
  in.weight = weight;
  in.bias = has_bias ? bias.contiguous() : at::Tensor();
  in.labels = labels.reshape({-1});
  in.has_bias = has_bias;
  return in;
}

}  // namespace detail

/// The autograd function of linear_token_logprobs: saves hidden, weight, bias, labels and lse and
/// recomputes the logits chunk by chunk in the backward (three GEMMs, none of them N × V).
/// `bias` is always a tensor argument (an empty one when `has_bias` is false) because
/// Function::apply needs defined tensors.
struct linear_logprobs_function : public torch::autograd::Function<linear_logprobs_function> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& bias, bool has_bias, const at::Tensor& labels,
                            const linear_logprob_options& options) {
    constexpr const char* fn = "consr::libtorch::linear_token_logprobs";
    const detail::linear_inputs in = detail::check_linear_inputs(hidden, weight, bias, has_bias, labels, options, fn);
    const at::TensorOptions out_options = hidden.options().dtype(accum_dtype(hidden.scalar_type()));
    at::Tensor token_logp = at::empty({in.hidden.size(0)}, out_options);
    at::Tensor lse = at::empty({in.hidden.size(0)}, out_options);
    if (hidden.device().is_cuda()) {
      detail::cuda_entry(cuda_backend_registry().linear_token_logprobs, fn, "hidden", "linear_token_logprobs")(
          in.hidden, in.weight, in.bias, in.labels, token_logp, lse, options);
    } else {
      forward_on_cpu(in, token_logp, lse, options);
    }
    ctx->save_for_backward({in.hidden, in.weight, in.has_bias ? in.bias : at::empty({0}, weight.options()),
                            in.labels, lse});
    ctx->saved_data["has_bias"] = in.has_bias;
    ctx->saved_data["temperature"] = options.temperature;
    ctx->saved_data["ignore_index"] = static_cast<int64_t>(options.ignore_index);
    ctx->saved_data["vocab_chunk"] = static_cast<int64_t>(options.vocab_chunk);
    ctx->saved_data["hidden_sizes"] = hidden.sizes().vec();
    return token_logp.view(labels.sizes());
  }

  static void forward_on_cpu(const detail::linear_inputs& in, const at::Tensor& token_logp, const at::Tensor& lse,
                             const linear_logprob_options& options) {
    constexpr const char* fn = "consr::libtorch::linear_token_logprobs";
    detail::dispatch_floating(in.hidden, fn, "hidden", [&](auto tag) {
      using T = typename decltype(tag)::type;
      using Acc = accum_t<T>;
      detail::dispatch_index(in.labels, fn, "labels", [&](auto label_tag) {
        using Label = typename decltype(label_tag)::type;
        detail::translate_errors([&] {
          consr::linear_token_logprobs<torch_gemm>(
              host_view_of<const T, 2>(in.hidden, "hidden", fn), host_view_of<const T, 2>(in.weight, "weight", fn),
              in.has_bias ? host_view_of<const T, 1>(in.bias, "bias", fn) : host_view<const T, 1>{},
              host_view_of<const Label, 1>(in.labels, "labels", fn), host_view_of<Acc, 1>(token_logp, "token_logp", fn),
              host_view_of<Acc, 1>(lse, "lse", fn), options);
        });
      });
    });
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    constexpr const char* fn = "consr::libtorch::linear_token_logprobs (backward)";
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const at::Tensor &hidden = saved[0], &weight = saved[1], &bias = saved[2], &labels = saved[3], &lse = saved[4];
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    linear_logprob_options options;
    options.temperature = ctx->saved_data["temperature"].toDouble();
    options.ignore_index = ctx->saved_data["ignore_index"].toInt();
    options.vocab_chunk = ctx->saved_data["vocab_chunk"].toInt();
    const std::vector<int64_t> hidden_sizes = ctx->saved_data["hidden_sizes"].toIntVector();
    const bool want_hidden = ctx->needs_input_grad(0), want_weight = ctx->needs_input_grad(1);
    const bool want_bias = has_bias && ctx->needs_input_grad(2);
    const at::ScalarType acc = accum_dtype(hidden.scalar_type());
    const at::TensorOptions acc_options = hidden.options().dtype(acc);
    // grad_hidden is overwritten; grad_weight and grad_bias are accumulated into zeros.
    at::Tensor grad_hidden = want_hidden ? at::empty(hidden.sizes(), acc_options) : at::Tensor();
    at::Tensor grad_weight = want_weight ? at::zeros(weight.sizes(), acc_options) : at::Tensor();
    at::Tensor grad_bias = want_bias ? at::zeros({weight.size(0)}, acc_options) : at::Tensor();
    const at::Tensor& g = grad_outputs[0];
    if (!g.defined()) {
      if (want_hidden) grad_hidden.zero_();
    } else if ((want_hidden || want_weight || want_bias) && hidden.device().is_cuda()) {
      const at::Tensor upstream = g.reshape({-1}).to(acc).contiguous();
      detail::cuda_entry(cuda_backend_registry().linear_token_logprobs_backward, fn, "hidden",
                         "linear_token_logprobs (backward)")(hidden, weight, has_bias ? bias : at::Tensor(), labels,
                                                             lse, upstream, grad_hidden, grad_weight, grad_bias,
                                                             options);
    } else if (want_hidden || want_weight || want_bias) {
      const at::Tensor upstream = g.reshape({-1}).to(acc).contiguous();
      detail::dispatch_floating(hidden, fn, "hidden", [&](auto tag) {
        using T = typename decltype(tag)::type;
        using Acc = accum_t<T>;
        detail::dispatch_index(labels, fn, "labels", [&](auto label_tag) {
          using Label = typename decltype(label_tag)::type;
          detail::translate_errors([&] {
            consr::linear_token_logprobs_backward<torch_gemm>(
                host_view_of<const T, 2>(hidden, "hidden", fn), host_view_of<const T, 2>(weight, "weight", fn),
                has_bias ? host_view_of<const T, 1>(bias, "bias", fn) : host_view<const T, 1>{},
                host_view_of<const Label, 1>(labels, "labels", fn), host_view_of<const Acc, 1>(lse, "lse", fn),
                host_view_of<const Acc, 1>(upstream, "grad_token_logp", fn),
                want_hidden ? host_view_of<Acc, 2>(grad_hidden, "grad_hidden", fn) : host_view<Acc, 2>{},
                want_weight ? host_view_of<Acc, 2>(grad_weight, "grad_weight", fn) : host_view<Acc, 2>{},
                want_bias ? host_view_of<Acc, 1>(grad_bias, "grad_bias", fn) : host_view<Acc, 1>{}, options);
          });
        });
      });
    }
    const at::ScalarType dtype = hidden.scalar_type();
    return {want_hidden ? grad_hidden.to(dtype).view(hidden_sizes) : at::Tensor(),
            want_weight ? grad_weight.to(dtype) : at::Tensor(),
            want_bias ? grad_bias.to(dtype) : at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor()};
  }
};

/// Token log-probs from hidden states and the output projection (spec §4, last paragraph), with
/// autograd, without ever holding the N × V logits: logp = z[y] − logsumexp(z), z = (hidden·Wᵀ + b)/τ,
/// exactly what token_logprobs(at::linear(hidden, weight, bias), labels) gives, through
/// consr::linear_token_logprobs in vocabulary chunks of options.vocab_chunk with ATen's GEMM
/// (torch_gemm). The backward recomputes each chunk and yields ∂/∂hidden, ∂/∂weight and ∂/∂bias
/// (only those that require grad: a frozen lm_head skips a quarter of the work).
/// - hidden [N, H] or [B, L, H], weight [V, H] (rows contiguous), bias [V] or an undefined tensor for
///   none: one floating dtype; labels [N] or [B, L] (int64/int32) aligned with the rows (the causal
///   shift is the caller's). Returns labels' shape, float32 (float64 for float64). CPU tensors run
///   the host algorithm; CUDA tensors consr::cuda's (cuBLAS GEMMs on PyTorch's handle and stream).
/// Throws c10::Error naming 'hidden', 'weight', 'bias', 'labels' (with the offending index),
/// 'temperature' or 'vocab_chunk'.
inline at::Tensor linear_token_logprobs(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& bias,
                                        const at::Tensor& labels, const linear_logprob_options& options = {}) {
  constexpr const char* fn = "consr::libtorch::linear_token_logprobs";
  detail::check_defined(hidden, fn, "hidden");
  detail::check_defined(weight, fn, "weight");
  detail::check_defined(labels, fn, "labels");
  const bool has_bias = bias.defined();
  const at::Tensor bias_argument = has_bias ? bias : at::empty({0}, weight.options());
  return linear_logprobs_function::apply(hidden, weight, bias_argument, has_bias, labels, options);
}

// ================================================================================================
// DPO objectives (spec §7)
// ================================================================================================

/// One side (chosen or rejected) of P preference pairs, as tensors on one device. Either packed
/// (policy_logp [n] with offsets [P + 1], int64/int32) or padded (policy_logp [P, L] and no offsets;
/// mark padding with labels == ignore_index). The policy log-probs are the differentiable input
/// (float32/64; bfloat16/float16 are upcast to float32); everything else is a constant (no gradient):
///  - reference_logp: per token, policy_logp's shape; or reference_logp_sum [P] per sequence (exactly one);
///  - labels (optional, policy_logp's shape, int64/int32): tokens equal to ignore_index are not scored;
///  - weights (policy_logp's shape): visual weights ω_t (visual_weights()), needed by the consr loss
///    with visual_weights on.
struct dpo_side {
  at::Tensor policy_logp;
  at::Tensor offsets;
  at::Tensor reference_logp;
  at::Tensor reference_logp_sum;
  at::Tensor labels;
  at::Tensor weights;
};

/// The columns of dpo_result::metrics (consr::dpo_pair_metrics, spec §7 "reported per pair").
enum class dpo_metric : int {
  margin_logit = 0,     ///< Δ (eq. 7) or Δ' (eq. 11)
  sigma_neg = 1,        ///< σ(−Δ')
  chosen_reward = 2,    ///< β·Σ(a − a_ref)
  rejected_reward = 3,  ///< β·Σ(b − b_ref)
  reward_margin = 4,    ///< chosen_reward − rejected_reward
  accuracy = 5,         ///< 1 if Δ' > 0 else 0
  dpo_loss = 6,         ///< −log σ(Δ') = softplus(−Δ'), the DPO loss value of the pair
  loss = 7,             ///< the pair's objective being reduced (L or the ConSR surrogate L')
};
inline constexpr int dpo_metric_count = 8;

/// Name of a metric column ("margin_logit", ...), as torch.ops.consr.dpo_metric_names() lists them.
inline const char* to_string(dpo_metric m) noexcept {
  switch (m) {
    case dpo_metric::margin_logit: return "margin_logit";
    case dpo_metric::sigma_neg: return "sigma_neg";
    case dpo_metric::chosen_reward: return "chosen_reward";
    case dpo_metric::rejected_reward: return "rejected_reward";
    case dpo_metric::reward_margin: return "reward_margin";
    case dpo_metric::accuracy: return "accuracy";
    case dpo_metric::dpo_loss: return "dpo_loss";
    case dpo_metric::loss: return "loss";
  }
  return "unknown";
}

/// What dpo_loss returns: `loss` (a 0-dim tensor for reduction mean/sum, [P] for none;
/// differentiable w.r.t. both sides' policy_logp) and `metrics` [P, 8] (no gradient), one column
/// per dpo_metric.
struct dpo_result {
  at::Tensor loss;
  at::Tensor metrics;
  /// Column `m` of metrics, [P].
  at::Tensor metric(dpo_metric m) const { return metrics.select(1, static_cast<int64_t>(m)); }
};

/// "consr" / "standard" as a dpo_loss_type. Throws c10::Error naming 'loss_type' otherwise.
inline dpo_loss_type parse_dpo_loss_type(const std::string& name) {
  if (name == "consr") return dpo_loss_type::consr;
  if (name == "standard") return dpo_loss_type::standard;
  detail::fail("consr::libtorch::parse_dpo_loss_type", "loss_type",
               "is \"" + name + "\" but must be \"consr\" (eq. 14) or \"standard\" (eq. 7)");
}

/// "mean" / "sum" / "none" as a loss_reduction. Throws c10::Error naming 'reduction' otherwise.
inline loss_reduction parse_loss_reduction(const std::string& name) {
  if (name == "mean") return loss_reduction::mean;
  if (name == "sum") return loss_reduction::sum;
  if (name == "none") return loss_reduction::none;
  detail::fail("consr::libtorch::parse_loss_reduction", "reduction",
               "is \"" + name + "\" but must be \"mean\", \"sum\" or \"none\"");
}

namespace detail {

struct dpo_arg_names {
  std::string policy_logp, offsets, reference_logp, reference_logp_sum, labels, weights;
  explicit dpo_arg_names(const std::string& side)
      : policy_logp(side + ".policy_logp"),
        offsets(side + ".offsets"),
        reference_logp(side + ".reference_logp"),
        reference_logp_sum(side + ".reference_logp_sum"),
        labels(side + ".labels"),
        weights(side + ".weights") {}
};

/// The float dtype the DPO computation runs in for policy log-probs of dtype `s`.
inline at::ScalarType dpo_value_dtype(at::ScalarType s) noexcept { return s == at::kDouble ? at::kDouble : at::kFloat; }

inline at::Tensor dpo_optional_float(const at::Tensor& t, at::ScalarType dtype, const at::Tensor& policy,
                                     const std::string& arg, const std::string& policy_arg, bool same_shape,
                                     const char* fn) {
  if (!t.defined()) return t;
  check_floating(t, fn, arg.c_str());
  check_same_device(t, policy, fn, arg.c_str(), policy_arg.c_str());
  if (same_shape)
    CONSR_TORCH_CHECK(t.sizes() == policy.sizes(), fn, arg.c_str(), "has shape ", shape_string(t.sizes()), " but '",
                      policy_arg, "' has shape ", shape_string(policy.sizes()), " (one value per token)");
  else
    check_dim(t, 1, fn, arg.c_str());
  return t.detach().reshape({-1}).to(dtype);
}

/// Validates one side and brings it to the packed 1-D form. `policy_logp` stays differentiable.
inline dpo_prepared_side prepare_dpo_side(const dpo_side& s, const std::string& side, at::ScalarType value_dtype,
                                          const at::Tensor& device_reference, const std::string& device_reference_arg,
                                          const char* fn) {
  const dpo_arg_names names(side);
  dpo_prepared_side p;
  check_defined(s.policy_logp, fn, names.policy_logp.c_str());
  check_floating(s.policy_logp, fn, names.policy_logp.c_str());
  is_cuda_tensor(s.policy_logp, fn, names.policy_logp.c_str());
  check_same_device(s.policy_logp, device_reference, fn, names.policy_logp.c_str(), device_reference_arg.c_str());
  CONSR_TORCH_CHECK(dpo_value_dtype(s.policy_logp.scalar_type()) == value_dtype, fn, names.policy_logp.c_str(),
                    "has dtype ", dtype_name(s.policy_logp.scalar_type()), " but '", device_reference_arg,
                    "' has dtype ", dtype_name(device_reference.scalar_type()),
                    "; both sides must be float64, or both float32/bfloat16/float16");
  const at::Tensor& policy = s.policy_logp;
  if (s.offsets.defined()) {
    check_index_dtype(s.offsets, fn, names.offsets.c_str());
    check_dim(s.offsets, 1, fn, names.offsets.c_str());
    check_same_device(s.offsets, policy, fn, names.offsets.c_str(), names.policy_logp.c_str());
    CONSR_TORCH_CHECK(policy.dim() == 1, fn, names.policy_logp.c_str(), "has shape ", shape_string(policy.sizes()),
                      " but with '", names.offsets,
                      "' it must be packed 1-D [n]; pass padded [P, L] log-probs without offsets");
    p.offsets = s.offsets.to(at::kLong);
  } else {
    CONSR_TORCH_CHECK(policy.dim() == 2, fn, names.policy_logp.c_str(), "has shape ", shape_string(policy.sizes()),
                      " but without '", names.offsets,
                      "' it must be padded [P, L] (mark padding with labels == ignore_index)");
    p.offsets = at::arange(policy.size(0) + 1, policy.options().dtype(at::kLong)).mul(policy.size(1));
  }
  p.policy_logp = policy.reshape({-1}).to(value_dtype);
  p.reference_logp =
      dpo_optional_float(s.reference_logp, value_dtype, policy, names.reference_logp, names.policy_logp, true, fn);
  p.reference_logp_sum = dpo_optional_float(s.reference_logp_sum, value_dtype, policy, names.reference_logp_sum,
                                            names.policy_logp, false, fn);
  p.weights = dpo_optional_float(s.weights, value_dtype, policy, names.weights, names.policy_logp, true, fn);
  CONSR_TORCH_CHECK(p.reference_logp.defined() || p.reference_logp_sum.defined(), fn, names.reference_logp.c_str(),
                    "is missing: pass the reference model's log-probs per token ('", names.reference_logp,
                    "') or per sequence ('", names.reference_logp_sum, "')");
  if (s.labels.defined()) {
    check_index_dtype(s.labels, fn, names.labels.c_str());
    check_same_device(s.labels, policy, fn, names.labels.c_str(), names.policy_logp.c_str());
    CONSR_TORCH_CHECK(s.labels.sizes() == policy.sizes(), fn, names.labels.c_str(), "has shape ",
                      shape_string(s.labels.sizes()), " but '", names.policy_logp, "' has shape ",
                      shape_string(policy.sizes()), " (one label per token)");
    p.labels = s.labels.reshape({-1}).to(at::kLong);
  }
  return p;
}

template <class T>
dpo_sequences<T, std::int64_t, std::int64_t> dpo_sequences_of(const at::Tensor& policy_logp,
                                                              const dpo_prepared_side& s, const dpo_arg_names& names,
                                                              const char* fn) {
  dpo_sequences<T, std::int64_t, std::int64_t> q;
  q.policy_logp = host_view_of<const T, 1>(policy_logp, names.policy_logp.c_str(), fn);
  q.offsets = host_view_of<const std::int64_t, 1>(s.offsets, names.offsets.c_str(), fn);
  if (s.reference_logp.defined())
    q.reference_logp = host_view_of<const T, 1>(s.reference_logp, names.reference_logp.c_str(), fn);
  if (s.reference_logp_sum.defined())
    q.reference_logp_sum = host_view_of<const T, 1>(s.reference_logp_sum, names.reference_logp_sum.c_str(), fn);
  if (s.labels.defined()) q.labels = host_view_of<const std::int64_t, 1>(s.labels, names.labels.c_str(), fn);
  if (s.weights.defined()) q.weights = host_view_of<const T, 1>(s.weights, names.weights.c_str(), fn);
  return q;
}

/// Column m of a [P, 8] metrics tensor as a host view (empty for P = 0: no pointer arithmetic on null).
template <class T>
host_view<T, 1> metric_column(const at::Tensor& metrics, dpo_metric m) {
  if (metrics.size(0) == 0) return {};
  const index_t ext[1] = {metrics.size(0)};
  const index_t str[1] = {metrics.stride(0)};
  return host_view<T, 1>(static_cast<T*>(metrics.data_ptr()) + static_cast<int>(m) * metrics.stride(1), ext, str);
}

inline void save_dpo_side(torch::autograd::AutogradContext* ctx, const std::string& side, const dpo_prepared_side& s) {
  ctx->saved_data[side + ".offsets"] = s.offsets;
  ctx->saved_data[side + ".reference_logp"] = s.reference_logp;
  ctx->saved_data[side + ".reference_logp_sum"] = s.reference_logp_sum;
  ctx->saved_data[side + ".labels"] = s.labels;
  ctx->saved_data[side + ".weights"] = s.weights;
}

inline dpo_prepared_side load_dpo_side(torch::autograd::AutogradContext* ctx, const std::string& side,
                                       const at::Tensor& policy_logp) {
  dpo_prepared_side s;
  s.policy_logp = policy_logp;
  s.offsets = ctx->saved_data[side + ".offsets"].toTensor();
  s.reference_logp = ctx->saved_data[side + ".reference_logp"].toTensor();
  s.reference_logp_sum = ctx->saved_data[side + ".reference_logp_sum"].toTensor();
  s.labels = ctx->saved_data[side + ".labels"].toTensor();
  s.weights = ctx->saved_data[side + ".weights"].toTensor();
  return s;
}

inline void save_dpo_options(torch::autograd::AutogradContext* ctx, const dpo_options& o) {
  ctx->saved_data["loss"] = static_cast<int64_t>(o.loss);
  ctx->saved_data["beta"] = o.beta;
  ctx->saved_data["length_normalize"] = o.length_normalize;
  ctx->saved_data["visual_weights"] = o.visual_weights;
  ctx->saved_data["scale_by_beta"] = o.scale_by_beta;
  ctx->saved_data["reduction"] = static_cast<int64_t>(o.reduction);
  ctx->saved_data["ignore_index"] = static_cast<int64_t>(o.ignore_index);
}

inline dpo_options load_dpo_options(torch::autograd::AutogradContext* ctx) {
  dpo_options o;
  o.loss = static_cast<dpo_loss_type>(ctx->saved_data["loss"].toInt());
  o.beta = ctx->saved_data["beta"].toDouble();
  o.length_normalize = ctx->saved_data["length_normalize"].toBool();
  o.visual_weights = ctx->saved_data["visual_weights"].toBool();
  o.scale_by_beta = ctx->saved_data["scale_by_beta"].toBool();
  o.reduction = static_cast<loss_reduction>(ctx->saved_data["reduction"].toInt());
  o.ignore_index = ctx->saved_data["ignore_index"].toInt();
  return o;
}

}  // namespace detail

/// The constant (non-differentiable) tensors of both sides, as dpo_loss_function receives them.
struct dpo_constants {
  detail::dpo_prepared_side chosen;
  detail::dpo_prepared_side rejected;
};

/// The autograd function of dpo_loss: inputs the two packed policy log-prob tensors (1-D, float32
/// or float64), the constants and the options; outputs (loss, metrics), metrics non-differentiable.
/// Backward: consr::dpo_backward (eq. 8 / eq. 14 with σ(−Δ') held fixed), scaled by the upstream
/// gradient of loss (a scalar for mean/sum, one per pair for none).
struct dpo_loss_function : public torch::autograd::Function<dpo_loss_function> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& chosen_logp,
                                                const at::Tensor& rejected_logp, const dpo_constants& constants,
                                                const dpo_options& options) {
    constexpr const char* fn = "consr::libtorch::dpo_loss";
    const int64_t num_pairs = std::max<int64_t>(constants.chosen.offsets.size(0) - 1, 0);
    at::Tensor metrics = at::empty({num_pairs, dpo_metric_count}, chosen_logp.options());
    at::Tensor loss;
    if (chosen_logp.device().is_cuda()) {
      detail::dpo_prepared_side chosen = constants.chosen, rejected = constants.rejected;
      chosen.policy_logp = chosen_logp;
      rejected.policy_logp = rejected_logp;
      at::Tensor reduced = at::empty({1}, chosen_logp.options());
      detail::cuda_entry(cuda_backend_registry().dpo_forward, fn, "chosen.policy_logp", "dpo_loss")(
          chosen, rejected, options, reduced, metrics);
      loss = options.reduction == loss_reduction::none
                 ? metrics.select(1, static_cast<int64_t>(dpo_metric::loss)).clone()
                 : reduced.view({});
    } else {
      loss = cpu_forward(chosen_logp, rejected_logp, constants, options, metrics);
    }
    ctx->save_for_backward({chosen_logp, rejected_logp});
    detail::save_dpo_side(ctx, "chosen", constants.chosen);
    detail::save_dpo_side(ctx, "rejected", constants.rejected);
    detail::save_dpo_options(ctx, options);
    ctx->mark_non_differentiable({metrics});
    return {loss, metrics};
  }

  /// The host forward: fills metrics, returns the loss tensor.
  static at::Tensor cpu_forward(const at::Tensor& chosen_logp, const at::Tensor& rejected_logp,
                                const dpo_constants& constants, const dpo_options& options, const at::Tensor& metrics) {
    constexpr const char* fn = "consr::libtorch::dpo_loss";
    const double total = detail::dispatch_float_or_double(chosen_logp, fn, "chosen.policy_logp", [&](auto tag) {
      using T = typename decltype(tag)::type;
      const auto chosen = detail::dpo_sequences_of<T>(chosen_logp, constants.chosen, detail::dpo_arg_names("chosen"), fn);
      const auto rejected =
          detail::dpo_sequences_of<T>(rejected_logp, constants.rejected, detail::dpo_arg_names("rejected"), fn);
      dpo_pair_metrics<T> m;
      m.margin_logit = detail::metric_column<T>(metrics, dpo_metric::margin_logit);
      m.sigma_neg = detail::metric_column<T>(metrics, dpo_metric::sigma_neg);
      m.chosen_reward = detail::metric_column<T>(metrics, dpo_metric::chosen_reward);
      m.rejected_reward = detail::metric_column<T>(metrics, dpo_metric::rejected_reward);
      m.reward_margin = detail::metric_column<T>(metrics, dpo_metric::reward_margin);
      m.accuracy = detail::metric_column<T>(metrics, dpo_metric::accuracy);
      m.dpo_loss = detail::metric_column<T>(metrics, dpo_metric::dpo_loss);
      m.loss = detail::metric_column<T>(metrics, dpo_metric::loss);
      return detail::translate_errors([&] { return consr::dpo_forward(chosen, rejected, options, m); });
    });
    return options.reduction == loss_reduction::none
               ? metrics.select(1, static_cast<int64_t>(dpo_metric::loss)).clone()
               : at::scalar_tensor(total, chosen_logp.options());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    constexpr const char* fn = "consr::libtorch::dpo_loss";
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const at::Tensor& chosen_logp = saved[0];
    const at::Tensor& rejected_logp = saved[1];
    const detail::dpo_prepared_side chosen_side = detail::load_dpo_side(ctx, "chosen", chosen_logp);
    const detail::dpo_prepared_side rejected_side = detail::load_dpo_side(ctx, "rejected", rejected_logp);
    const dpo_options options = detail::load_dpo_options(ctx);
    at::Tensor grad_chosen = at::empty({chosen_logp.size(0)}, chosen_logp.options());
    at::Tensor grad_rejected = at::empty({rejected_logp.size(0)}, rejected_logp.options());
    const at::Tensor& grad_loss = grad_outputs[0];
    if (chosen_logp.device().is_cuda()) {
      // The upstream gradient stays on the device: no synchronization in the backward.
      const int64_t count =
          options.reduction == loss_reduction::none ? std::max<int64_t>(chosen_side.offsets.size(0) - 1, 0) : 1;
      const at::Tensor upstream = grad_loss.defined()
                                      ? grad_loss.to(chosen_logp.scalar_type()).reshape({count}).contiguous()
                                      : at::zeros({count}, chosen_logp.options());
      detail::cuda_entry(cuda_backend_registry().dpo_backward, fn, "chosen.policy_logp", "dpo_loss (backward)")(
          chosen_side, rejected_side, options, upstream, grad_chosen, grad_rejected);
      return {grad_chosen, grad_rejected, at::Tensor(), at::Tensor()};
    }
    detail::dispatch_float_or_double(chosen_logp, fn, "chosen.policy_logp", [&](auto tag) {
      using T = typename decltype(tag)::type;
      const auto chosen = detail::dpo_sequences_of<T>(chosen_logp, chosen_side, detail::dpo_arg_names("chosen"), fn);
      const auto rejected =
          detail::dpo_sequences_of<T>(rejected_logp, rejected_side, detail::dpo_arg_names("rejected"), fn);
      const auto gc = host_view_of<T, 1>(grad_chosen, "grad_chosen_logp", fn);
      const auto gr = host_view_of<T, 1>(grad_rejected, "grad_rejected_logp", fn);
      detail::translate_errors([&] {
        if (options.reduction == loss_reduction::none) {
          const int64_t num_pairs = std::max<int64_t>(chosen_side.offsets.size(0) - 1, 0);
          const at::Tensor upstream = grad_loss.defined() ? grad_loss.to(chosen_logp.scalar_type()).contiguous()
                                                          : at::zeros({num_pairs}, chosen_logp.options());
          consr::dpo_backward(chosen, rejected, options, host_view_of<const T, 1>(upstream, "grad_loss", fn), gc, gr);
        } else {
          const double upstream = grad_loss.defined() ? grad_loss.item<double>() : 0.0;
          consr::dpo_backward(chosen, rejected, options, upstream, gc, gr);
        }
      });
    });
    return {grad_chosen, grad_rejected, at::Tensor(), at::Tensor()};
  }
};

/// The DPO objective over P pairs (spec §7), with autograd through both sides' policy_logp:
///   standard (eq. 7):  L = −log σ(Δ),  Δ = β(Σ(a − a_ref) − Σ(b − b_ref));
///   consr (eq. 14):    L' = −sg(σ(−Δ'))·(Σ ω a − Σ ω b) [×β with scale_by_beta], Δ' of eq. 11 with
///                      length_normalize, ω = weights with visual_weights;
/// reduced over pairs by options.reduction. Returns loss and the [P, 8] per-pair metrics (dpo_metric).
/// Sides as dpo_side (packed with offsets, or padded [P, L]); references, labels and weights are
/// constants. CPU tensors run consr::dpo_forward / dpo_backward; CUDA tensors consr::cuda's (the
/// forward synchronizes once, to report bad offsets or empty sequences; the backward does not).
/// Throws c10::Error naming the argument ('chosen.offsets', 'rejected.weights', 'options.beta', ...):
/// dtype, shape, device mismatch, offsets not matching the packed length, a missing reference, an
/// empty sequence under length normalization (the message names the pair).
inline dpo_result dpo_loss(const dpo_side& chosen, const dpo_side& rejected, const dpo_options& options = {}) {
  constexpr const char* fn = "consr::libtorch::dpo_loss";
  detail::check_defined(chosen.policy_logp, fn, "chosen.policy_logp");
  detail::check_floating(chosen.policy_logp, fn, "chosen.policy_logp");
  const at::ScalarType value_dtype = detail::dpo_value_dtype(chosen.policy_logp.scalar_type());
  dpo_constants constants;
  constants.chosen =
      detail::prepare_dpo_side(chosen, "chosen", value_dtype, chosen.policy_logp, "chosen.policy_logp", fn);
  constants.rejected =
      detail::prepare_dpo_side(rejected, "rejected", value_dtype, chosen.policy_logp, "chosen.policy_logp", fn);
  const at::Tensor chosen_logp = constants.chosen.policy_logp;
  const at::Tensor rejected_logp = constants.rejected.policy_logp;
  constants.chosen.policy_logp = at::Tensor();  // passed to the function as its differentiable inputs
  constants.rejected.policy_logp = at::Tensor();
  torch::autograd::variable_list out = dpo_loss_function::apply(chosen_logp, rejected_logp, constants, options);
  return {out[0], out[1]};
}

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

/// "chosen" / "rejected" as a weight_side. Throws c10::Error naming 'side' otherwise.
inline weight_side parse_weight_side(const std::string& name) {
  if (name == "chosen") return weight_side::chosen;
  if (name == "rejected") return weight_side::rejected;
  detail::fail("consr::libtorch::parse_weight_side", "side", "is \"" + name + "\" but must be \"chosen\" or \"rejected\"");
}

// ================================================================================================
// Image corruptions (spec §3, Table 7)
// ================================================================================================

/// "sigmoid" / "linear" / "scaled_linear" / "cosine" as a noise_schedule. Throws c10::Error naming
/// 'schedule' otherwise.
inline noise_schedule parse_noise_schedule(const std::string& name) {
  for (const noise_schedule s :
       {noise_schedule::sigmoid, noise_schedule::linear, noise_schedule::scaled_linear, noise_schedule::cosine})
    if (name == consr::to_string(s)) return s;
  detail::fail("consr::libtorch::parse_noise_schedule", "schedule",
               "is \"" + name + "\" but must be \"sigmoid\", \"linear\", \"scaled_linear\" or \"cosine\"");
}

namespace detail {

inline void save_key(torch::autograd::AutogradContext* ctx, rng_key key) {
  // IValue holds int64: the uint64 bits are stored as they are.
  ctx->saved_data["seed"] = static_cast<int64_t>(key.seed);
  ctx->saved_data["offset"] = static_cast<int64_t>(key.offset);
}
inline rng_key load_key(torch::autograd::AutogradContext* ctx) {
  return rng_key{static_cast<std::uint64_t>(ctx->saved_data["seed"].toInt()),
                 static_cast<std::uint64_t>(ctx->saved_data["offset"].toInt())};
}

/// Checks an image tensor of rank 3 ([C, H, W]) or 4 ([B, C, H, W]) and returns it as rank 4.
inline at::Tensor image_batch(const at::Tensor& image, const char* fn, const char* arg) {
  check_defined(image, fn, arg);
  check_floating(image, fn, arg);
  CONSR_TORCH_CHECK(image.dim() == 3 || image.dim() == 4, fn, arg, "has shape ", shape_string(image.sizes()),
                    " but must be [C, H, W] or [B, C, H, W]");
  return image.dim() == 3 ? image.unsqueeze(0) : image;
}

inline at::Tensor random_patch_mask_impl(const at::Tensor& image, rng_key key, const patch_mask_options& options,
                                         const char* fn) {
  const at::Tensor x = image_batch(image, fn, "image");
  at::Tensor out = at::empty(image.sizes(), image.options().memory_format(at::MemoryFormat::Contiguous));
  const at::Tensor y = image.dim() == 3 ? out.unsqueeze(0) : out;
  if (is_cuda_tensor(image, fn, "image")) {
    cuda_entry(cuda_backend_registry().random_patch_mask, fn, "image", "random_patch_mask")(x, y, key, options);
    return out;
  }
  dispatch_floating(image, fn, "image", [&](auto tag) {
    using T = typename decltype(tag)::type;
    translate_errors([&] {
      consr::random_patch_mask<T, 4>(host_view_of<const T, 4>(x, "image", fn), host_view_of<T, 4>(y, "out", fn), key,
                                     options);
    });
  });
  return out;
}

}  // namespace detail

/// The autograd function of add_diffusion_noise: out = a·image + b·ε is linear in the image, so
/// ∂out/∂image = a = sqrt(ᾱ_t).
struct diffusion_noise_function : public torch::autograd::Function<diffusion_noise_function> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& image, rng_key key,
                            const diffusion_noise_options& options) {
    constexpr const char* fn = "consr::libtorch::add_diffusion_noise";
    detail::check_defined(image, fn, "image");
    detail::check_floating(image, fn, "image");
    CONSR_TORCH_CHECK(image.dim() <= 8, fn, "image", "has ", image.dim(), " dimensions; at most 8 are supported");
    const diffusion_coefficients coef = detail::translate_errors([&] { return diffusion_noise_coefficients(options); });
    // The noise of element i depends on its row-major logical index only, so a contiguous copy
    // (of a non-contiguous image) gives the same values as the strided host algorithm.
    const at::Tensor x = image.contiguous();
    at::Tensor out = at::empty(image.sizes(), image.options().memory_format(at::MemoryFormat::Contiguous));
    if (detail::is_cuda_tensor(image, fn, "image")) {
      detail::cuda_entry(cuda_backend_registry().add_diffusion_noise, fn, "image", "add_diffusion_noise")(x, out, key,
                                                                                                        options);
    } else {
      detail::dispatch_floating(image, fn, "image", [&](auto tag) {
        using T = typename decltype(tag)::type;
        detail::translate_errors([&] {
          consr::add_diffusion_noise<T, 1>(host_view_of<const T, 1>(x.view({-1}), "image", fn),
                                           host_view_of<T, 1>(out.view({-1}), "out", fn), key, options);
        });
      });
    }
    ctx->saved_data["sqrt_alpha_bar"] = coef.sqrt_alpha_bar;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const double a = ctx->saved_data["sqrt_alpha_bar"].toDouble();
    return {grad_outputs[0].mul(a), at::Tensor(), at::Tensor()};
  }
};

/// Forward diffusion in closed form (spec §3), with autograd:
///   out = sqrt(ᾱ_t)·image + sqrt(1 − ᾱ_t)·ε,  ε_i = normal_at(key, options.element_offset + i),
/// i the element's row-major logical index: exactly consr::add_diffusion_noise on the host (the
/// same (seed, offset) gives the same noise on CPU and CUDA). Any shape (rank ≤ 8), any floating
/// dtype; returns a new contiguous tensor. ∂out/∂image = sqrt(ᾱ_t).
/// Throws c10::Error naming 'image', 'step', 'num_steps' or 'element_offset'.
inline at::Tensor add_diffusion_noise(const at::Tensor& image, rng_key key, const diffusion_noise_options& options = {}) {
  detail::check_defined(image, "consr::libtorch::add_diffusion_noise", "image");
  return diffusion_noise_function::apply(image, key, options);
}

/// The autograd function of random_patch_mask: masked pixels are constants, the others are
/// copied, so the gradient is the upstream gradient with the same patches set to 0.
struct patch_mask_function : public torch::autograd::Function<patch_mask_function> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& image, rng_key key,
                            const patch_mask_options& options) {
    at::Tensor out = detail::random_patch_mask_impl(image, key, options, "consr::libtorch::random_patch_mask");
    detail::save_key(ctx, key);
    ctx->saved_data["patch_size"] = static_cast<int64_t>(options.patch_size);
    ctx->saved_data["probability"] = options.probability;
    ctx->saved_data["image_offset"] = static_cast<int64_t>(options.image_offset);
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    patch_mask_options options;
    options.patch_size = ctx->saved_data["patch_size"].toInt();
    options.probability = ctx->saved_data["probability"].toDouble();
    options.image_offset = static_cast<std::uint64_t>(ctx->saved_data["image_offset"].toInt());
    options.fill_value = 0.0;
    return {detail::random_patch_mask_impl(grad_outputs[0], detail::load_key(ctx), options,
                                           "consr::libtorch::random_patch_mask (backward)"),
            at::Tensor(), at::Tensor()};
  }
};

/// Random patch masking (Table 7), with autograd: consr::random_patch_mask of [C, H, W] or
/// [B, C, H, W] images (any floating dtype); returns a new contiguous tensor. Throws c10::Error
/// naming 'image', 'patch_size', 'probability' or 'image_offset'.
inline at::Tensor random_patch_mask(const at::Tensor& image, rng_key key, const patch_mask_options& options = {}) {
  detail::check_defined(image, "consr::libtorch::random_patch_mask", "image");
  return patch_mask_function::apply(image, key, options);
}

/// The autograd function of mixup: ∂out/∂image = λ, ∂out/∂other = 1 − λ.
struct mixup_function : public torch::autograd::Function<mixup_function> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& image, const at::Tensor& other,
                            double lambda) {
    constexpr const char* fn = "consr::libtorch::mixup";
    detail::check_defined(image, fn, "image");
    detail::check_defined(other, fn, "other");
    detail::check_floating(image, fn, "image");
    CONSR_TORCH_CHECK(other.scalar_type() == image.scalar_type(), fn, "other", "has dtype ",
                      dtype_name(other.scalar_type()), " but 'image' has dtype ", dtype_name(image.scalar_type()));
    detail::check_shape(other, image.sizes(), fn, "other", "the image's shape");
    detail::check_same_device(other, image, fn, "other", "image");
    CONSR_TORCH_CHECK(lambda >= 0.0 && lambda <= 1.0, fn, "lambda", "must be in [0, 1], got ", lambda);
    const at::Tensor x = image.contiguous();
    const at::Tensor o = other.contiguous();
    at::Tensor out = at::empty(image.sizes(), image.options().memory_format(at::MemoryFormat::Contiguous));
    if (detail::is_cuda_tensor(image, fn, "image")) {
      detail::cuda_entry(cuda_backend_registry().mixup, fn, "image", "mixup")(x, o, out, lambda);
    } else {
      detail::dispatch_floating(image, fn, "image", [&](auto tag) {
        using T = typename decltype(tag)::type;
        detail::translate_errors([&] {
          consr::mixup<T, 1>(host_view_of<const T, 1>(x.view({-1}), "image", fn),
                             host_view_of<const T, 1>(o.view({-1}), "other", fn),
                             host_view_of<T, 1>(out.view({-1}), "out", fn), lambda);
        });
      });
    }
    ctx->saved_data["lambda"] = lambda;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const double lambda = ctx->saved_data["lambda"].toDouble();
    const at::Tensor& g = grad_outputs[0];
    return {ctx->needs_input_grad(0) ? g.mul(lambda) : at::Tensor(),
            ctx->needs_input_grad(1) ? g.mul(1.0 - lambda) : at::Tensor(), at::Tensor()};
  }
};

/// Mixup (Table 7), with autograd: out = λ·image + (1 − λ)·other (consr::mixup; one shape and
/// dtype, any rank ≤ 8); returns a new contiguous tensor. Throws c10::Error naming 'image',
/// 'other' or 'lambda'.
inline at::Tensor mixup(const at::Tensor& image, const at::Tensor& other, double lambda) {
  detail::check_defined(image, "consr::libtorch::mixup", "image");
  detail::check_defined(other, "consr::libtorch::mixup", "other");
  return mixup_function::apply(image, other, lambda);
}

/// The autograd function of random_resized_crop: the output is a bilinear resampling of a crop,
/// linear in the image; the backward scatters the upstream gradient back with the transposed
/// interpolation (ATen's upsample_bilinear2d_backward, whose taps — half-pixel centres, source
/// clamped at 0, no antialiasing — are the ones consr::crop_and_resize_bilinear uses).
struct resized_crop_function : public torch::autograd::Function<resized_crop_function> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& image, rng_key key,
                            const resized_crop_options& options) {
    constexpr const char* fn = "consr::libtorch::random_resized_crop";
    const at::Tensor x = detail::image_batch(image, fn, "image");
    at::Tensor out = at::empty(image.sizes(), image.options().memory_format(at::MemoryFormat::Contiguous));
    const at::Tensor y = image.dim() == 3 ? out.unsqueeze(0) : out;
    if (detail::is_cuda_tensor(image, fn, "image")) {
      detail::cuda_entry(cuda_backend_registry().random_resized_crop, fn, "image", "random_resized_crop")(x, y, key,
                                                                                                        options);
    } else {
      detail::dispatch_floating(image, fn, "image", [&](auto tag) {
        using T = typename decltype(tag)::type;
        detail::translate_errors([&] {
          consr::random_resized_crop<T, 4>(host_view_of<const T, 4>(x, "image", fn), host_view_of<T, 4>(y, "out", fn),
                                           key, options);
        });
      });
    }
    // The boxes the forward used: draw_resized_crop_box is a pure function of (key, image index).
    std::vector<int64_t> boxes;
    const int64_t height = x.size(2), width = x.size(3);
    if (x.numel() > 0) {
      for (int64_t b = 0; b < x.size(0); ++b) {
        const crop_box box = draw_resized_crop_box(height, width, key,
                                                   options.image_offset + static_cast<std::uint64_t>(b), options);
        boxes.insert(boxes.end(), {box.top, box.left, box.height, box.width});
      }
    }
    ctx->saved_data["boxes"] = boxes;
    ctx->saved_data["rank3"] = image.dim() == 3;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const std::vector<int64_t> boxes = ctx->saved_data["boxes"].toIntVector();
    const bool rank3 = ctx->saved_data["rank3"].toBool();
    const at::Tensor& g = grad_outputs[0];
    const at::Tensor g4 = rank3 ? g.unsqueeze(0) : g;
    // ATen's bilinear backward covers float32/float64 everywhere; 16-bit gradients go through float32.
    const at::ScalarType work = g.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    const at::Tensor gw = g4.to(work);
    at::Tensor grad = at::zeros(gw.sizes(), gw.options());
    const int64_t channels = gw.size(1), height = gw.size(2), width = gw.size(3);
    for (std::size_t b = 0; 4 * b < boxes.size(); ++b) {
      const int64_t top = boxes[4 * b], left = boxes[4 * b + 1], h = boxes[4 * b + 2], w = boxes[4 * b + 3];
      const std::array<int64_t, 2> out_size{height, width};
      const std::array<int64_t, 4> in_size{1, channels, h, w};
      const at::Tensor gb = gw.narrow(0, static_cast<int64_t>(b), 1).contiguous();
      const at::Tensor crop_grad = at::upsample_bilinear2d_backward(gb, at::IntArrayRef(out_size),
                                                                    at::IntArrayRef(in_size), false, c10::nullopt,
                                                                    c10::nullopt);
      grad.select(0, static_cast<int64_t>(b)).narrow(1, top, h).narrow(2, left, w).copy_(crop_grad.select(0, 0));
    }
    at::Tensor result = grad.to(g.scalar_type());
    if (rank3) result = result.squeeze(0);
    return {result, at::Tensor(), at::Tensor()};
  }
};

/// Random resized crop (Table 7), with autograd: consr::random_resized_crop of [C, H, W] or
/// [B, C, H, W] images (any floating dtype), the boxes drawn from `key` exactly as on the host;
/// returns a new contiguous tensor of the image's shape. Throws c10::Error naming 'image' or an option.
inline at::Tensor random_resized_crop(const at::Tensor& image, rng_key key, const resized_crop_options& options = {}) {
  detail::check_defined(image, "consr::libtorch::random_resized_crop", "image");
  return resized_crop_function::apply(image, key, options);
}

}  // namespace libtorch
}  // namespace consr
