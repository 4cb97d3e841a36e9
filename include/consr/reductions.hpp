// consr/reductions.hpp — segmented reductions over packed sequences (spec §2).
//
// A packed array holds S variable-length segments end to end; `offsets` has
// S + 1 entries and segment s is [offsets[s], offsets[s+1]), exactly as CUB's
// DeviceSegmentedReduce takes them. These host functions are the references
// the CUDA versions are tested against, so their semantics are exact:
//   * offsets are int32 or int64, offsets[0] == 0, non-decreasing, and
//     offsets[S] equals the packed array's length (checked in O(S));
//   * an offsets view of length 1 (S = 0) is a successful no-op; length 0 is
//     an error;
//   * every segment accumulates in double in a fixed order (element k of the
//     segment goes to partial sum k mod 8; the eight partial sums are then
//     added in a fixed tree, detail::lane_sums), so results do not depend on
//     the thread count (OpenMP splits the work by segment, never inside one);
//   * values may be float, double, consr::bfloat16 or consr::float16 (read
//     through to_accum); results are written to float, double, bfloat16 or
//     float16 outputs, rounded once from the double accumulator.
// Views may be strided (any stride); const and non-const element types are
// both accepted for inputs.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "config.hpp"
#include "detail/streaming_store.hpp"
#include "error.hpp"
#include "numeric.hpp"
#include "view.hpp"

namespace consr {

namespace detail {

/// Below this many packed elements the host segment loops stay on one thread
/// (forking costs more than the work).
inline constexpr index_t segment_parallel_threshold = index_t(1) << 15;

/// Checks an offsets view's shape (well formed, at least one element) in any
/// memory space and returns the number of segments S = offsets.size() - 1.
template <class Offset, class S>
index_t check_offsets_count(const strided_view<Offset, 1, S>& offsets, const char* fn, const char* arg) {
  static_assert(is_index_type_v<Offset>, "consr: offsets must be int32 or int64");
  check_view(offsets, fn, arg);
  CONSR_CHECK_ARG(offsets.size() >= 1, fn, arg,
                  "is empty; the offsets of S segments have S + 1 elements (a single 0 for no segment)");
  return offsets.size() - 1;
}

/// Checks a packed-sequence offsets array against the packed array's length
/// `packed_size` and returns the number of segments S = offsets.size() - 1.
/// Throws consr::error naming `fn` / `arg` (and the offending segment) unless
/// offsets has at least one element, offsets[0] == 0, offsets is
/// non-decreasing, and offsets[S] == packed_size. `packed_arg` names the
/// packed array in the message.
template <class Offset>
index_t check_packed_offsets(const host_view<Offset, 1>& offsets, index_t packed_size, const char* fn,
                             const char* arg, const char* packed_arg) {
  const index_t num_segments = check_offsets_count(offsets, fn, arg);
  CONSR_CHECK_ARG(offsets[0] == 0, fn, arg, "offsets[0] is ", offsets[0], " but must be 0");
  for (index_t s = 0; s < num_segments; ++s) {
    CONSR_CHECK_ARG(offsets[s] <= offsets[s + 1], fn, arg, "segment ", s, " has offsets[", s, "] = ", offsets[s],
                    " > offsets[", s + 1, "] = ", offsets[s + 1], " (offsets must be non-decreasing)");
  }
  CONSR_CHECK_ARG(static_cast<index_t>(offsets[num_segments]) == packed_size, fn, arg, "offsets[", num_segments,
                  "] (the end of the last segment) is ", offsets[num_segments], " but '", packed_arg, "' has ",
                  packed_size, " elements");
  return num_segments;
}

/// The offsets check of a family's shared argument checks: host offsets are
/// checked in full (check_packed_offsets); device offsets only by shape, since
/// the host cannot read them (the CUDA launchers validate their values on the
/// device, consr/cuda/common.cuh). Returns S.
template <class Offset, class S>
index_t check_segment_offsets(const strided_view<Offset, 1, S>& offsets, index_t packed_size, const char* fn,
                              const char* arg, const char* packed_arg) {
  if constexpr (std::is_same_v<S, host_space>) {
    return check_packed_offsets(offsets, packed_size, fn, arg, packed_arg);
  } else {
    return check_offsets_count(offsets, fn, arg);
  }
}

/// Checks that an optional per-token `labels` view (any memory space) is either
/// empty (no labels: every token is scored) or has exactly `packed_size` elements.
template <class Label, class S>
void check_optional_labels(const strided_view<Label, 1, S>& labels, index_t packed_size, const char* fn,
                           const char* arg) {
  static_assert(is_index_type_v<Label>, "consr: labels must be int32 or int64");
  check_view(labels, fn, arg);
  CONSR_CHECK_ARG(labels.size() == 0 || labels.size() == packed_size, fn, arg, "has ", labels.size(),
                  " elements but must have 0 (no labels) or one per token (", packed_size, ")");
}

/// Checks that an optional per-item output (any memory space) is either empty
/// (not written) or has exactly `count` distinct elements (no broadcast
/// stride, which would race between threads).
template <class T, class S>
void check_optional_output(const strided_view<T, 1, S>& out, index_t count, const char* fn, const char* arg,
                           const char* what) {
  check_view(out, fn, arg);
  check_no_broadcast(out, fn, arg);
  CONSR_CHECK_ARG(out.size() == 0 || out.size() == count, fn, arg, "has ", out.size(), " elements but must have 0 (",
                  "not written) or ", count, " (", what, ")");
}

/// Number of interleaved partial sums of lane_sums.
inline constexpr int sum_lanes = 8;

/// M sums in double over [begin, end): term(t, x) writes the M addends of
/// position t into x[0..M). Position begin + k goes to partial sum k mod 8 of
/// each of the M sums, and the eight partial sums are combined as
/// ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)). The order is fixed by
/// the positions alone (no thread count, vector width or compiler flag
/// changes it); eight independent chains instead of one take the sum off the
/// floating-point adder's latency (up to 8× faster on long segments).
template <int M, class Term>
CONSR_FORCEINLINE void lane_sums(index_t begin, index_t end, Term&& term, double (&result)[M]) {
  double acc[M][sum_lanes] = {};
  double x[M];
  index_t t = begin;
  for (; end - t >= sum_lanes; t += sum_lanes) {
    for (int k = 0; k < sum_lanes; ++k) {
      term(t + k, x);
      for (int m = 0; m < M; ++m) acc[m][k] += x[m];
    }
  }
  if (t < end) {  // the last, partial group: lane k gets position t + k, as above
    for (int k = 0; k < sum_lanes; ++k) {
      if (t + k < end) {  // (a fixed-trip loop, so the partial sums stay in registers)
        term(t + k, x);
        for (int m = 0; m < M; ++m) acc[m][k] += x[m];
      }
    }
  }
  for (int m = 0; m < M; ++m) {
    const double* a = acc[m];
    result[m] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  }
}

/// How far ahead of a segment prefetch_segment_ahead reaches, in bytes.
inline constexpr std::size_t segment_prefetch_ahead_bytes = 32768;

/// Sparse L2 prefetch (detail::prefetch_ahead_to_l2) of the positions
/// [begin, end) shifted segment_prefetch_ahead_bytes ahead, clamped to the
/// view: a loop over consecutive short segments then finds the hardware
/// prefetchers already running in each new page. Strided views: nothing.
template <class T>
CONSR_FORCEINLINE void prefetch_segment_ahead(const host_view<T, 1>& v, index_t begin, index_t end) noexcept {
  constexpr index_t ahead = static_cast<index_t>(segment_prefetch_ahead_bytes / sizeof(T));
  if (v.stride(0) != 1) return;
  const index_t n = v.size();
  const index_t b = std::min(begin + ahead, n), e = std::min(end + ahead, n);
  if (b < e) prefetch_ahead_to_l2(v.data() + b, static_cast<std::size_t>(e - b) * sizeof(T));
}

/// Sum (in double, in lane_sums' order) of values[t] over the tokens of
/// [begin, end) whose label is not `ignore_index`, and their number in
/// `count`. With `has_labels` false every token is scored. The value at an
/// ignored position is replaced by 0 before the addition, so a NaN stored
/// there does not propagate.
template <class V, class Label>
CONSR_FORCEINLINE double scored_sum(const host_view<V, 1>& values, const host_view<Label, 1>& labels, bool has_labels,
                                    std::int64_t ignore_index, index_t begin, index_t end, index_t& count) {
  prefetch_segment_ahead(values, begin, end);
  if (!has_labels) {
    double r[1];
    lane_sums<1>(begin, end, [&](index_t t, double* x) { x[0] = to_accum<double>(values[t]); }, r);
    count = end - begin;
    return r[0];
  }
  prefetch_segment_ahead(labels, begin, end);
  double r[2];  // the sum, and the count (exact in double)
  lane_sums<2>(
      begin, end,
      [&](index_t t, double* x) {
        const bool scored = static_cast<std::int64_t>(labels[t]) != ignore_index;
        const double v = to_accum<double>(values[t]);
        x[0] = scored ? v : 0.0;
        x[1] = scored ? 1.0 : 0.0;
      },
      r);
  count = static_cast<index_t>(r[1]);
  return r[0];
}

template <class V>
constexpr void assert_value_type() {
  static_assert(is_supported_float_v<V>,
                "consr: values must be float, double, consr::bfloat16 or consr::float16");
}
template <class R>
constexpr void assert_output_type() {
  static_assert(!std::is_const_v<R>, "consr: an output view must not have a const element type");
  static_assert(is_supported_float_v<R>, "consr: outputs must be float, double, consr::bfloat16 or consr::float16");
}

/// Number of tokens of [begin, end) whose label is not `ignore_index` (all of
/// them without labels).
template <class Label>
index_t scored_count(const host_view<Label, 1>& labels, bool has_labels, std::int64_t ignore_index, index_t begin,
                     index_t end) noexcept {
  if (!has_labels) return end - begin;
  index_t n = 0;
  for (index_t t = begin; t < end; ++t) n += static_cast<std::int64_t>(labels[t]) != ignore_index ? 1 : 0;
  return n;
}

/// The checks of a per-segment reduction over scored tokens: `values` (named
/// `values_arg`), `labels` when given (one per value: `labels_what`), the
/// offsets over the values, `out` (one per segment: `out_what`). Returns S.
template <class V, class Label, class Offset, class R>
index_t check_scored_segments(const host_view<V, 1>& values, const char* values_arg, const host_view<Label, 1>& labels,
                              bool has_labels, const host_view<Offset, 1>& offsets, const host_view<R, 1>& out,
                              const char* fn, const char* labels_what, const char* out_what) {
  assert_value_type<V>();
  assert_output_type<R>();
  check_view(values, fn, values_arg);
  if (has_labels) {
    check_view_extent(labels, 0, values.size(), fn, "labels", labels_what);
  }
  const index_t num_segments = check_packed_offsets(offsets, values.size(), fn, "offsets", values_arg);
  check_view_extent(out, 0, num_segments, fn, "out", out_what);
  check_no_broadcast(out, fn, "out");
  return num_segments;
}

/// out[s] = finish(sum, count) for each of the S segments, with the scored sum
/// (in double) and count of segment s; in parallel for large inputs.
template <class V, class Label, class Offset, class R, class Finish>
void reduce_scored_segments(const host_view<V, 1>& values, const host_view<Label, 1>& labels, bool has_labels,
                            std::int64_t ignore_index, const host_view<Offset, 1>& offsets, index_t num_segments,
                            const host_view<R, 1>& out, Finish finish) {
  CONSR_OMP(parallel for schedule(static) if (values.size() >= segment_parallel_threshold && num_segments > 1))
  for (index_t s = 0; s < num_segments; ++s) {
    index_t count = 0;
    const double sum = scored_sum(values, labels, has_labels, ignore_index, offsets[s], offsets[s + 1], count);
    out[s] = from_accum<R>(finish(sum, count));
  }
}

/// segmented_sum, segmented_mean and segmented_masked_mean: checks (values,
/// labels when given, offsets, out), then per segment the scored sum, stored
/// as is or divided by the scored count (NaN when there is none).
template <class V, class Label, class Offset, class R>
void segmented_scored_reduce(const host_view<V, 1>& values, const host_view<Label, 1>& labels, bool has_labels,
                             std::int64_t ignore_index, const host_view<Offset, 1>& offsets, const host_view<R, 1>& out,
                             bool mean, const char* fn) {
  const index_t num_segments = check_scored_segments(values, "values", labels, has_labels, offsets, out, fn,
                                                     "one label per value", "one value per segment");
  reduce_scored_segments(values, labels, has_labels, ignore_index, offsets, num_segments, out,
                         [mean](double sum, index_t count) {
                           if (!mean) return sum;
                           return count > 0 ? sum / static_cast<double>(count)
                                            : std::numeric_limits<double>::quiet_NaN();
                         });
}

}  // namespace detail

/// Per-segment sum: out[s] = Σ_{i ∈ [offsets[s], offsets[s+1])} values[i]
/// (spec §2), accumulated in double; an empty segment gives 0.
/// Preconditions: offsets valid for values.size() (see the file comment),
/// out.size() == S. Throws consr::error naming 'values', 'offsets' or 'out'.
template <class V, class Offset, class R>
void segmented_sum(host_view<V, 1> values, host_view<Offset, 1> offsets, host_view<R, 1> out) {
  detail::segmented_scored_reduce(values, host_view<const std::int64_t, 1>{}, false, 0, offsets, out, false,
                                  "consr::segmented_sum");
}

/// Per-segment mean: out[s] = (Σ values[i]) / (offsets[s+1] − offsets[s]),
/// accumulated in double; an empty segment gives NaN.
/// Preconditions and errors as segmented_sum.
template <class V, class Offset, class R>
void segmented_mean(host_view<V, 1> values, host_view<Offset, 1> offsets, host_view<R, 1> out) {
  detail::segmented_scored_reduce(values, host_view<const std::int64_t, 1>{}, false, 0, offsets, out, true,
                                  "consr::segmented_mean");
}

/// Per-segment weighted sum: out[s] = Σ_i weights[i] · values[i] over
/// segment s, each product and the sum in double; an empty segment gives 0.
/// Preconditions: weights.size() == values.size(), otherwise as
/// segmented_sum. Throws consr::error naming 'values', 'weights', 'offsets'
/// or 'out'.
template <class V, class W, class Offset, class R>
void segmented_weighted_sum(host_view<V, 1> values, host_view<W, 1> weights, host_view<Offset, 1> offsets,
                            host_view<R, 1> out) {
  constexpr const char* fn = "consr::segmented_weighted_sum";
  detail::assert_value_type<V>();
  detail::assert_value_type<W>();
  detail::assert_output_type<R>();
  detail::check_view(values, fn, "values");
  detail::check_view(weights, fn, "weights");
  detail::check_extent(weights, 0, values.size(), fn, "weights", "one weight per value");
  const index_t num_segments = detail::check_packed_offsets(offsets, values.size(), fn, "offsets", "values");
  detail::check_view(out, fn, "out");
  detail::check_extent(out, 0, num_segments, fn, "out", "one value per segment");
  detail::check_no_broadcast(out, fn, "out");
  CONSR_OMP(parallel for schedule(static) if (values.size() >= detail::segment_parallel_threshold && num_segments > 1))
  for (index_t s = 0; s < num_segments; ++s) {
    double acc = 0.0;
    for (index_t i = offsets[s]; i < static_cast<index_t>(offsets[s + 1]); ++i)
      acc += to_accum<double>(weights[i]) * to_accum<double>(values[i]);
    out[s] = from_accum<R>(acc);
  }
}

/// Per-segment number of scored tokens: out[s] = #{i in segment s :
/// labels[i] != ignore_index} (spec §2: ignored tokens do not count in any
/// length |y|). Count may be int32 or int64.
/// Preconditions: offsets valid for labels.size(), out.size() == S; with an
/// int32 `out`, no segment may be longer than INT32_MAX. Throws consr::error
/// naming 'labels', 'offsets' or 'out'.
template <class Label, class Offset, class Count>
void segmented_count(host_view<Label, 1> labels, host_view<Offset, 1> offsets, host_view<Count, 1> out,
                     std::int64_t ignore_index = default_ignore_index) {
  constexpr const char* fn = "consr::segmented_count";
  static_assert(is_index_type_v<Label>, "consr::segmented_count: labels must be int32 or int64");
  static_assert(!std::is_const_v<Count> && is_index_type_v<Count>,
                "consr::segmented_count: out must be a non-const int32 or int64 view");
  detail::check_view(labels, fn, "labels");
  const index_t num_segments = detail::check_packed_offsets(offsets, labels.size(), fn, "offsets", "labels");
  detail::check_view(out, fn, "out");
  detail::check_extent(out, 0, num_segments, fn, "out", "one count per segment");
  detail::check_no_broadcast(out, fn, "out");
  if constexpr (sizeof(Count) < sizeof(index_t)) {
    for (index_t s = 0; s < num_segments; ++s) {
      CONSR_CHECK_ARG(static_cast<index_t>(offsets[s + 1]) - static_cast<index_t>(offsets[s]) <=
                          static_cast<index_t>(std::numeric_limits<Count>::max()),
                      fn, "out", "segment ", s, " has ", offsets[s + 1] - offsets[s],
                      " elements, more than an int32 count holds; pass an int64 'out'");
    }
  }
  CONSR_OMP(parallel for schedule(static) if (labels.size() >= detail::segment_parallel_threshold && num_segments > 1))
  for (index_t s = 0; s < num_segments; ++s)
    out[s] = static_cast<Count>(detail::scored_count(labels, true, ignore_index, offsets[s], offsets[s + 1]));
}

/// Per-segment mean over the scored tokens only:
/// out[s] = Σ_{i: labels[i] != ignore_index} values[i] / #{those i}, in
/// double; a segment without a scored token gives NaN. Values at ignored
/// positions are never read (a NaN there does not propagate).
/// Preconditions: labels.size() == values.size(), otherwise as
/// segmented_sum. Throws consr::error naming 'values', 'labels', 'offsets'
/// or 'out'.
template <class V, class Label, class Offset, class R>
void segmented_masked_mean(host_view<V, 1> values, host_view<Label, 1> labels, host_view<Offset, 1> offsets,
                           host_view<R, 1> out, std::int64_t ignore_index = default_ignore_index) {
  static_assert(is_index_type_v<Label>, "consr::segmented_masked_mean: labels must be int32 or int64");
  detail::segmented_scored_reduce(values, labels, true, ignore_index, offsets, out, true,
                                  "consr::segmented_masked_mean");
}

}  // namespace consr
