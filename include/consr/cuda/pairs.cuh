// consr/cuda/pairs.cuh — preference-pair selection on the GPU (spec §6), for
// the paper's pairs_per_group = 1. Host twin: consr/pairs.hpp (select_pairs).
//
// One cub::DeviceSegmentedReduce pass over the groups finds, per group, the
// arg-max and the arg-min of the finite rewards with the host's tie rule
// (the lower candidate index wins on both sides) — the reduction operator
// orders (reward, index) pairs lexicographically, so it is associative and
// commutative and the result does not depend on CUB's reduction order — plus
// the numbers of usable and non-finite candidates. The pass's output iterator
// applies the host's rules and writes one row per group. Conventions as
// consr/cuda/reductions.cuh.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../pairs.hpp"
#include "common.cuh"
#include "reductions.cuh"

namespace consr {
namespace cuda {

/// Why a group has or has not a pair (one code per group).
enum class pair_status : std::int32_t {
  paired = 0,              ///< chosen = arg-max, rejected = arg-min
  too_few_candidates = 1,  ///< fewer than two candidates with a finite reward (empty groups included)
  no_margin = 2,           ///< best == worst (all rewards equal) or margin < min_margin
};

/// Per-group device outputs of select_pairs (G = number of groups). `chosen`
/// and `rejected` are required: global candidate indices (into `rewards`), or
/// −1 for a group without a pair. The others are optional (size 0: not
/// written); the reward views hold NaN for a group without a pair.
template <class I>
struct pair_outputs {
  static_assert(is_index_type_v<I>, "consr::cuda::pair_outputs: indices must be int32 or int64");
  device_view<I, 1> chosen;
  device_view<I, 1> rejected;
  device_view<std::int32_t, 1> outcome;  ///< a pair_status value per group
  device_view<double, 1> chosen_reward;
  device_view<double, 1> rejected_reward;
  device_view<double, 1> margin;  ///< chosen_reward − rejected_reward (> 0 for a pair)
};

/// Device-side counts of select_pairs (the host twin's selection_report for
/// k = 1: groups = G, groups_with_pairs = pairs, duplicate_candidates = 0).
/// The launcher zeroes them (cudaMemsetAsync) before counting.
struct selection_counts {
  unsigned long long pairs;                      ///< groups with a pair
  unsigned long long groups_too_few_candidates;  ///< fewer than two usable candidates
  unsigned long long groups_no_margin;           ///< best == worst or margin < min_margin
  unsigned long long nonfinite_candidates;       ///< candidates skipped for a NaN or ±inf reward
};

namespace detail {

struct extremes {
  double max_value;
  index_t max_index;
  double min_value;
  index_t min_index;
  long long usable;
  long long nonfinite;
};

/// Lexicographic (value, −index) max and (value, index) min over usable
/// candidates; associative and commutative, so any reduction order gives the
/// host's sequential scan result.
struct extremes_merge {
  __device__ extremes operator()(const extremes& a, const extremes& b) const {
    extremes r;
    r.usable = a.usable + b.usable;
    r.nonfinite = a.nonfinite + b.nonfinite;
    if (a.usable == 0 || b.usable == 0) {
      const extremes& s = a.usable == 0 ? b : a;
      r.max_value = s.max_value;
      r.max_index = s.max_index;
      r.min_value = s.min_value;
      r.min_index = s.min_index;
      return r;
    }
    const bool a_max = a.max_value > b.max_value || (a.max_value == b.max_value && a.max_index < b.max_index);
    r.max_value = a_max ? a.max_value : b.max_value;
    r.max_index = a_max ? a.max_index : b.max_index;
    const bool a_min = a.min_value < b.min_value || (a.min_value == b.min_value && a.min_index < b.min_index);
    r.min_value = a_min ? a.min_value : b.min_value;
    r.min_index = a_min ? a.min_index : b.min_index;
    return r;
  }
};

template <class R>
struct read_candidate {
  const R* rewards;
  index_t stride;
  __device__ extremes operator()(index_t c) const {
    const double r = static_cast<double>(rewards[c * stride]);
    if (!isfinite(r)) return {0.0, -1, 0.0, -1, 0, 1};
    return {r, c, r, c, 1, 0};
  }
};

template <class I>
struct write_pair {
  pair_outputs<I> out;
  double min_margin;
  selection_counts* counts;
  __device__ void operator()(index_t g, const extremes& e) const {
    pair_status st = pair_status::paired;
    double margin = 0.0;
    if (e.usable < 2) {
      st = pair_status::too_few_candidates;
    } else {
      margin = e.max_value - e.min_value;
      if (!(e.max_value > e.min_value && margin >= min_margin)) st = pair_status::no_margin;
    }
    const bool paired = st == pair_status::paired;
    out.chosen[g] = static_cast<I>(paired ? e.max_index : -1);
    out.rejected[g] = static_cast<I>(paired ? e.min_index : -1);
    if (out.outcome.size() != 0) out.outcome[g] = static_cast<std::int32_t>(st);
    const double nan = quiet_nan<double>();
    if (out.chosen_reward.size() != 0) out.chosen_reward[g] = paired ? e.max_value : nan;
    if (out.rejected_reward.size() != 0) out.rejected_reward[g] = paired ? e.min_value : nan;
    if (out.margin.size() != 0) out.margin[g] = paired ? margin : nan;
    if (counts != nullptr) {
      if (e.nonfinite != 0) atomicAdd(&counts->nonfinite_candidates, static_cast<unsigned long long>(e.nonfinite));
      if (paired) atomicAdd(&counts->pairs, 1ull);
      else if (st == pair_status::too_few_candidates) atomicAdd(&counts->groups_too_few_candidates, 1ull);
      else atomicAdd(&counts->groups_no_margin, 1ull);
    }
  }
};

}  // namespace detail

/// Selects one preference pair per group on the device (spec §6, the paper's
/// default pairs_per_group = 1), by the host twin's rules: candidates with a
/// NaN or ±inf reward are skipped; a group with fewer than two usable
/// candidates has no pair (too_few_candidates); otherwise chosen = arg-max and
/// rejected = arg-min of the reward, ties toward the lower candidate index on
/// both sides, and the pair is made iff reward(chosen) > reward(rejected) and
/// the margin (in double) >= options.min_margin (else no_margin). A group
/// without a pair gets chosen = rejected = −1. Rewards are float or double;
/// group_offsets (G + 1 entries) delimit global candidate indices. `counts`
/// may be null. Host twin: consr::select_pairs (compacted pair list).
/// Returns status::invalid_argument naming 'rewards', 'group_offsets', 'out.*'
/// or 'options.*' (pairs_per_group must be 1 and skip_duplicates false on the
/// device; min_margin finite and >= 0), with nothing launched.
template <class R, class GroupOffset, class I>
status select_pairs(void* d_temp_storage, std::size_t& temp_storage_bytes, device_view<R, 1> rewards,
                    device_view<GroupOffset, 1> group_offsets, pair_outputs<I> out,
                    selection_counts* counts = nullptr, const pair_options& options = {},
                    cudaStream_t stream = nullptr, error_info* error = nullptr) noexcept {
  static_assert(std::is_same_v<std::remove_cv_t<R>, float> || std::is_same_v<std::remove_cv_t<R>, double>,
                "consr::cuda::select_pairs: rewards must be float or double");
  return detail::guarded([&] {
    constexpr const char* fn = "consr::cuda::select_pairs";
    CONSR_CHECK_ARG(options.pairs_per_group == 1, fn, "options.pairs_per_group", "is ", options.pairs_per_group,
                    " but the CUDA version selects one pair per group (the paper's setting); use the host "
                    "consr::select_pairs for k > 1");
    CONSR_CHECK_ARG(!options.skip_duplicates, fn, "options.skip_duplicates",
                    "is not supported by the CUDA version; use the host consr::select_pairs with tokens");
    CONSR_CHECK_ARG(std::isfinite(options.min_margin) && options.min_margin >= 0.0, fn, "options.min_margin", "is ",
                    options.min_margin, " but must be finite and >= 0");
    ::consr::detail::check_view(rewards, fn, "rewards");
    CONSR_CHECK_ARG(rewards.size() == 0 || rewards.size() - 1 <= static_cast<index_t>(std::numeric_limits<I>::max()), fn,
                    "out.chosen", "holds ", 8 * sizeof(I), "-bit candidate indices but 'rewards' has ", rewards.size(),
                    " candidates; use 64-bit outputs");
    const auto seg = detail::make_packed_segments(group_offsets, rewards.size(), fn, "group_offsets");
    const index_t groups = seg.num_segments;
    ::consr::detail::check_view(out.chosen, fn, "out.chosen");
    ::consr::detail::check_extent(out.chosen, 0, groups, fn, "out.chosen", "one entry per group");
    ::consr::detail::check_view(out.rejected, fn, "out.rejected");
    ::consr::detail::check_extent(out.rejected, 0, groups, fn, "out.rejected", "one entry per group");
    ::consr::detail::check_no_broadcast(out.chosen, fn, "out.chosen");
    ::consr::detail::check_no_broadcast(out.rejected, fn, "out.rejected");
    detail::check_optional_output(out.outcome, groups, fn, "out.outcome", "one per group");
    detail::check_optional_output(out.chosen_reward, groups, fn, "out.chosen_reward", "one per group");
    detail::check_optional_output(out.rejected_reward, groups, fn, "out.rejected_reward", "one per group");
    detail::check_optional_output(out.margin, groups, fn, "out.margin", "one per group");
    if (d_temp_storage != nullptr && counts != nullptr)
      CONSR_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(counts, 0, sizeof(selection_counts), stream));
    const detail::extremes init{0.0, -1, 0.0, -1, 0, 0};
    return detail::run_reduction<detail::extremes>(
        d_temp_storage, temp_storage_bytes, detail::read_candidate<std::remove_cv_t<R>>{rewards.data(), rewards.stride(0)},
        detail::write_pair<I>{out, options.min_margin, counts}, seg, detail::extremes_merge{}, init, stream, error);
  });
}

}  // namespace cuda
}  // namespace consr
