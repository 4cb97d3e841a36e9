// consr/cuda/reward.cuh — the contrastive reward of ConSR on the GPU (spec §5,
// paper eqs. 1–6). Host twin: consr/reward.hpp.
//
// One cub::DeviceSegmentedReduce pass over the candidates: each token
// contributes (logp, logp_corrupt, logp_semantic, 1) — or nothing when its
// label is ignore_index — summed in double per candidate; the pass's output
// iterator turns each candidate's sums into P, P_corrupt, P_semantic,
// S_semantic, S_corrupt and r (eqs. 1–6, in double, rounded once to the output
// type) and counts empty candidates and non-finite rewards. Conventions as
// consr/cuda/reductions.cuh (two-phase temporary storage, host checks before
// any launch, stream-ordered, optional offsets validation into error_info).
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../reward.hpp"
#include "common.cuh"
#include "reductions.cuh"

namespace consr {
namespace cuda {

/// Per-candidate device outputs of contrastive_reward: consr::reward_outputs
/// with device views (same fields, same rules, same check).
template <class T>
using reward_outputs = ::consr::reward_outputs<T, device_space>;

/// Device-side counts of contrastive_reward (the host twin's reward_report
/// without the index list: empty candidates are the ones whose outputs are NaN
/// with T = 0). The launcher zeroes them (cudaMemsetAsync) before counting.
struct reward_counts {
  unsigned long long empty_candidates;   ///< candidates with no scored token (every output NaN)
  unsigned long long nonfinite_rewards;  ///< candidates with T > 0 whose stored reward is NaN or ±inf
};

namespace detail {

struct reward_accum {
  double sum;
  double sum_corrupt;
  double sum_semantic;
  long long count;
};
struct reward_accum_plus {
  __device__ reward_accum operator()(const reward_accum& a, const reward_accum& b) const {
    return {a.sum + b.sum, a.sum_corrupt + b.sum_corrupt, a.sum_semantic + b.sum_semantic, a.count + b.count};
  }
};

/// Token i's contribution; an ignored token's values are never read.
template <class V1, class V2, class V3, class Label>
struct read_reward_token {
  const V1* logp;
  index_t logp_stride;
  const V2* logp_corrupt;
  index_t corrupt_stride;
  const V3* logp_semantic;
  index_t semantic_stride;
  const Label* labels;  // null: every token scored
  index_t labels_stride;
  std::int64_t ignore_index;
  __device__ reward_accum operator()(index_t i) const {
    if (labels != nullptr && static_cast<std::int64_t>(labels[i * labels_stride]) == ignore_index)
      return {0.0, 0.0, 0.0, 0};
    return {to_accum<double>(logp[i * logp_stride]), to_accum<double>(logp_corrupt[i * corrupt_stride]),
            to_accum<double>(logp_semantic[i * semantic_stride]), 1};
  }
};

/// Eqs. 1–6 for candidate c from its sums, by the host twin's own
/// consr::detail::contrastive_reward_terms.
template <class R>
struct write_reward {
  reward_outputs<R> out;
  double lambda;
  bool log_space;
  reward_counts* counts;
  __device__ void operator()(index_t c, const reward_accum& a) const {
    const ::consr::detail::reward_terms r = ::consr::detail::contrastive_reward_terms(
        a.sum, a.sum_corrupt, a.sum_semantic, a.count, lambda, log_space);
    const R stored = ::consr::detail::store_reward_terms(out, c, r);
    if (counts != nullptr) {
      if (a.count == 0) {
        atomicAdd(&counts->empty_candidates, 1ull);
      } else if (!isfinite(static_cast<double>(stored))) {
        atomicAdd(&counts->nonfinite_rewards, 1ull);
      }
    }
  }
};

template <class V1, class V2, class V3, class Offset, class Label, class R>
status contrastive_reward_impl(void* d_temp_storage, std::size_t& temp_storage_bytes, const device_view<V1, 1>& logp,
                               const device_view<V2, 1>& logp_corrupt, const device_view<V3, 1>& logp_semantic,
                               const device_view<Offset, 1>& offsets, const device_view<Label, 1>& labels,
                               bool has_labels, const reward_outputs<R>& out, reward_counts* counts,
                               const reward_options& options, cudaStream_t stream, error_info* error) {
  constexpr const char* fn = "consr::cuda::contrastive_reward";
  ::consr::detail::contrastive_reward_check(logp, logp_corrupt, logp_semantic, offsets, labels, has_labels, out,
                                            options, fn);
  const auto seg = make_packed_segments(offsets, logp.size(), fn, "offsets");
  using L = std::remove_cv_t<Label>;
  const read_reward_token<std::remove_cv_t<V1>, std::remove_cv_t<V2>, std::remove_cv_t<V3>, L> read{
      logp.data(),          logp.stride(0),
      logp_corrupt.data(),  logp_corrupt.stride(0),
      logp_semantic.data(), logp_semantic.stride(0),
      has_labels ? labels.data() : nullptr, has_labels ? labels.stride(0) : 0,
      options.ignore_index};
  const write_reward<R> write{out, options.lambda, options.space == reward_space::log, counts};
  if (d_temp_storage != nullptr && counts != nullptr)
    CONSR_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(counts, 0, sizeof(reward_counts), stream));
  return run_reduction<reward_accum>(d_temp_storage, temp_storage_bytes, read, write, seg, reward_accum_plus{},
                                     reward_accum{0.0, 0.0, 0.0, 0}, stream, error);
}

}  // namespace detail

/// The contrastive reward of every candidate on the device (spec §5, eqs. 1–6),
/// in double:
///   m, m_c, m_s = mean token log-prob of the candidate's scored tokens under
///                 (x, I), (x, Ĩ), (x', I)   [logp, logp_corrupt, logp_semantic]
///   probability space: P = exp(m), ...; log space: P = m, ...
///   S_semantic = P_semantic − P, S_corrupt = P − P_corrupt,
///   r = λ·S_semantic + (1 − λ)·S_corrupt.
/// The three arrays share `offsets` (C + 1 entries). Tokens whose label equals
/// options.ignore_index are neither read nor counted. A candidate with T = 0
/// gets NaN in every output and is counted in counts->empty_candidates;
/// candidates with T > 0 and a non-finite stored reward in
/// counts->nonfinite_rewards (`counts` may be null: not counted). Host twin:
/// consr::contrastive_reward (whose report also lists the empty indices).
/// Sums are in double on both sides; the device's tree order differs from the
/// host's sequential one only by reassociation. Returns
/// status::invalid_argument naming 'logp', 'logp_corrupt', 'logp_semantic',
/// 'labels', 'offsets', 'out.*' or 'options.*', with nothing launched.
template <class V1, class V2, class V3, class Offset, class Label, class R>
status contrastive_reward(void* d_temp_storage, std::size_t& temp_storage_bytes, device_view<V1, 1> logp,
                          device_view<V2, 1> logp_corrupt, device_view<V3, 1> logp_semantic,
                          device_view<Offset, 1> offsets, device_view<Label, 1> labels, reward_outputs<R> out,
                          reward_counts* counts = nullptr, const reward_options& options = {},
                          cudaStream_t stream = nullptr, error_info* error = nullptr) noexcept {
  return detail::guarded([&] {
    return detail::contrastive_reward_impl(d_temp_storage, temp_storage_bytes, logp, logp_corrupt, logp_semantic,
                                           offsets, labels, true, out, counts, options, stream, error);
  });
}

/// contrastive_reward without labels: every token of every segment is scored.
template <class V1, class V2, class V3, class Offset, class R>
status contrastive_reward(void* d_temp_storage, std::size_t& temp_storage_bytes, device_view<V1, 1> logp,
                          device_view<V2, 1> logp_corrupt, device_view<V3, 1> logp_semantic,
                          device_view<Offset, 1> offsets, reward_outputs<R> out, reward_counts* counts = nullptr,
                          const reward_options& options = {}, cudaStream_t stream = nullptr,
                          error_info* error = nullptr) noexcept {
  return detail::guarded([&] {
    const device_view<const std::int64_t, 1> no_labels{};
    return detail::contrastive_reward_impl(d_temp_storage, temp_storage_bytes, logp, logp_corrupt, logp_semantic,
                                           offsets, no_labels, false, out, counts, options, stream, error);
  });
}

}  // namespace cuda
}  // namespace consr
