// consr/cuda/reductions.cuh — segmented reductions over packed sequences on the
// GPU (spec §2), on cub::DeviceSegmentedReduce. Host twin: consr/reductions.hpp.
//
// Every launcher:
//  * follows CUB's two-phase temporary-storage convention: called with
//    d_temp_storage == nullptr it only writes the bytes it needs to
//    temp_storage_bytes (host checks still run; nothing is launched);
//  * checks shapes on the host and returns status::invalid_argument (message in
//    consr::cuda::last_error_message()) before launching anything;
//  * is stream-ordered: no allocation, no device synchronization, never throws;
//  * accumulates in double, like the host twin, and writes each result rounded
//    once to the output type. CUB's per-segment reduction tree is fixed for a
//    given device and segment length, so results are deterministic run to run;
//    they differ from the host's sequential double sums only by reassociation
//    (a few ulp of double), i.e. by at most one rounding of the output type;
//  * reads offsets on the device through packed_segments (clamped: bad offsets
//    never cause an out-of-bounds access) and, when `error` is not null, first
//    runs a validation kernel that reports bad offsets in *error
//    (status::invalid_argument, index = the first bad segment; see
//    detail::validate_offsets). `error` must then be zero-initialised.
// Views may be strided (any stride, as the host twin); S = offsets.size() − 1,
// and S = 0 is a successful no-op.
#pragma once

#include <cub/device/device_segmented_reduce.cuh>
#include <cuda/std/limits>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../reductions.hpp"
#include "common.cuh"

namespace consr {
namespace cuda {

namespace detail {

/// A quiet NaN of type T on host and device (the bits std::numeric_limits gives).
template <class T>
__host__ __device__ inline T quiet_nan() noexcept {
  return ::cuda::std::numeric_limits<T>::quiet_NaN();
}

/// A strided device array read by index: what a reduction's reader keeps of a 1-D view.
template <class T>
struct strided_in {
  const T* data;
  index_t stride;
  __device__ T operator[](index_t i) const { return data[i * stride]; }
};

/// Item i of a strided view, converted to Acc (bf16/fp16 through to_accum).
template <class V, class Acc>
struct read_as {
  strided_in<V> values;
  __device__ Acc operator()(index_t i) const { return to_accum<Acc>(values[i]); }
};

/// weights[i] · values[i] in double.
template <class V, class W>
struct read_weighted {
  strided_in<V> values;
  strided_in<W> weights;
  __device__ double operator()(index_t i) const { return to_accum<double>(weights[i]) * to_accum<double>(values[i]); }
};

/// 1 when labels[i] is scored (not ignore_index), else 0.
template <class Label>
struct read_scored {
  strided_in<Label> labels;
  std::int64_t ignore_index;
  __device__ long long operator()(index_t i) const {
    return static_cast<std::int64_t>(labels[i]) != ignore_index ? 1 : 0;
  }
};

/// Sum and count of scored items.
struct masked_accum {
  double sum;
  long long count;
};
struct masked_accum_plus {
  __device__ masked_accum operator()(const masked_accum& a, const masked_accum& b) const {
    return {a.sum + b.sum, a.count + b.count};
  }
};

/// (values[i], 1) when labels[i] is scored, else (0, 0); an ignored value is never read.
template <class V, class Label>
struct read_masked {
  strided_in<V> values;
  strided_in<Label> labels;
  std::int64_t ignore_index;
  __device__ masked_accum operator()(index_t i) const {
    if (static_cast<std::int64_t>(labels[i]) == ignore_index) return {0.0, 0};
    return {to_accum<double>(values[i]), 1};
  }
};

struct double_plus {
  __device__ double operator()(double a, double b) const { return a + b; }
};
struct count_plus {
  __device__ long long operator()(long long a, long long b) const { return a + b; }
};

/// out[s] = value (rounded once).
template <class R>
struct write_value {
  R* out;
  index_t stride;
  __device__ void operator()(index_t s, double v) const { out[s * stride] = from_accum<R>(v); }
};

/// out[s] = sum / segment length, NaN for an empty segment.
template <class R, class Offset>
struct write_mean {
  R* out;
  index_t stride;
  packed_segments<Offset> seg;
  __device__ void operator()(index_t s, double sum) const {
    const index_t len = seg.end(s) - seg.begin(s);
    out[s * stride] = from_accum<R>(len > 0 ? sum / static_cast<double>(len) : quiet_nan<double>());
  }
};

/// out[s] = sum / count of scored items, NaN when none.
template <class R>
struct write_masked_mean {
  R* out;
  index_t stride;
  __device__ void operator()(index_t s, const masked_accum& a) const {
    out[s * stride] = from_accum<R>(a.count > 0 ? a.sum / static_cast<double>(a.count) : quiet_nan<double>());
  }
};

/// out[s] = count; a count too large for Count is reported (invalid_argument, index s).
template <class Count>
struct write_count {
  Count* out;
  index_t stride;
  error_info* error;
  __device__ void operator()(index_t s, long long n) const {
    if (n > static_cast<long long>(std::numeric_limits<Count>::max())) report_error(error, status::invalid_argument, s);
    out[s * stride] = static_cast<Count>(n);
  }
};

template <class Offset>
struct segment_begin_at {
  packed_segments<Offset> seg;
  __device__ Offset operator()(index_t s) const { return static_cast<Offset>(seg.begin(s)); }
};
template <class Offset>
struct segment_end_at {
  packed_segments<Offset> seg;
  __device__ Offset operator()(index_t s) const { return static_cast<Offset>(seg.end(s)); }
};

/// cub::DeviceSegmentedReduce::Reduce over `seg` with clamped segment bounds:
/// item i of the packed array is `read(i)`, segment s's result goes to
/// `write(s, result)`. With S = 0 the size query answers 1 byte and the run is
/// a no-op (CUB would leave temp_storage_bytes unset).
template <class Acc, class Read, class Write, class Offset, class Op>
status segmented_reduce(void* d_temp_storage, std::size_t& temp_storage_bytes, Read read, Write write,
                        const packed_segments<Offset>& seg, Op op, Acc init, cudaStream_t stream) {
  if (seg.num_segments == 0) {
    if (d_temp_storage == nullptr) temp_storage_bytes = 1;
    return status::success;
  }
  const index_input_iterator<Read, Acc> in{read, 0};
  const index_output_iterator<Write> out{{write}, 0};
  const index_input_iterator<segment_begin_at<Offset>, Offset> begins{{seg}, 0};
  const index_input_iterator<segment_end_at<Offset>, Offset> ends{{seg}, 0};
  return to_status(cub::DeviceSegmentedReduce::Reduce(d_temp_storage, temp_storage_bytes, in, out,
                                                      static_cast<std::int64_t>(seg.num_segments), begins, ends, op,
                                                      init, stream));
}

template <class V>
constexpr void assert_device_value_type() {
  static_assert(is_supported_float_v<std::remove_cv_t<V>>,
                "consr::cuda: values must be float, double, consr::bfloat16 or consr::float16");
}
template <class R>
constexpr void assert_device_output_type() {
  static_assert(!std::is_const_v<R>, "consr::cuda: an output view must not have a const element type");
  static_assert(is_supported_float_v<R>, "consr::cuda: outputs must be float, double, consr::bfloat16 or consr::float16");
}

/// Host checks shared by the launchers: offsets over `packed_size` items and an output of S items.
template <class Offset, class R>
packed_segments<std::remove_cv_t<Offset>> check_segments_and_output(const device_view<Offset, 1>& offsets,
                                                                    index_t packed_size,
                                                                    const device_view<R, 1>& out, const char* fn) {
  const auto seg = make_packed_segments(offsets, packed_size, fn, "offsets");
  ::consr::detail::check_view(out, fn, "out");
  ::consr::detail::check_extent(out, 0, seg.num_segments, fn, "out", "one value per segment");
  ::consr::detail::check_no_broadcast(out, fn, "out");
  return seg;
}

/// The checks of a reduction over `values` with one `companion` (weights, labels) per value: both
/// views well formed, the companion's length, then the offsets and out as check_segments_and_output.
template <class V, class C, class Offset, class R>
packed_segments<std::remove_cv_t<Offset>> check_paired_segments(const device_view<V, 1>& values,
                                                                const device_view<C, 1>& companion,
                                                                const char* companion_arg, const char* companion_what,
                                                                const device_view<Offset, 1>& offsets,
                                                                const device_view<R, 1>& out, const char* fn) {
  ::consr::detail::check_view(values, fn, "values");
  ::consr::detail::check_view(companion, fn, companion_arg);
  ::consr::detail::check_extent(companion, 0, values.size(), fn, companion_arg, companion_what);
  return check_segments_and_output(offsets, values.size(), out, fn);
}

/// The launch sequence of every reduction: size query, offsets check, CUB.
template <class Acc, class Read, class Write, class Offset, class Op>
status run_reduction(void* d_temp_storage, std::size_t& temp_storage_bytes, Read read, Write write,
                     const packed_segments<Offset>& seg, Op op, Acc init, cudaStream_t stream, error_info* error) {
  if (d_temp_storage != nullptr) {
    const status v = validate_offsets(seg, error, stream);
    if (v != status::success) return v;
  }
  return segmented_reduce(d_temp_storage, temp_storage_bytes, read, write, seg, op, init, stream);
}

/// segmented_sum and segmented_mean: the checks, then each segment's sum of `values` in double,
/// passed to the writer make_write(segments) returns.
template <class V, class Offset, class R, class MakeWrite>
status sum_segments(void* d_temp_storage, std::size_t& temp_storage_bytes, const device_view<V, 1>& values,
                    const device_view<Offset, 1>& offsets, const device_view<R, 1>& out, cudaStream_t stream,
                    error_info* error, const char* fn, MakeWrite make_write) noexcept {
  assert_device_value_type<V>();
  assert_device_output_type<R>();
  return guarded([&] {
    ::consr::detail::check_view(values, fn, "values");
    const auto seg = check_segments_and_output(offsets, values.size(), out, fn);
    using VT = std::remove_cv_t<V>;
    return run_reduction<double>(d_temp_storage, temp_storage_bytes,
                                 read_as<VT, double>{{values.data(), values.stride(0)}}, make_write(seg), seg,
                                 double_plus{}, 0.0, stream, error);
  });
}

}  // namespace detail

/// Per-segment sum on the device: out[s] = Σ_{i ∈ [offsets[s], offsets[s+1])} values[i]
/// (spec §2), accumulated in double; an empty segment gives 0. Host twin:
/// consr::segmented_sum.
/// Preconditions: offsets (S + 1 entries, int32/int64) valid for values.size()
/// — checked on the device only when `error` is given; out.size() == S.
/// Returns status::invalid_argument (naming 'values', 'offsets', 'out' or
/// 'temp_storage_bytes') with nothing launched, status::device_error when a
/// launch fails.
template <class V, class Offset, class R>
status segmented_sum(void* d_temp_storage, std::size_t& temp_storage_bytes, device_view<V, 1> values,
                     device_view<Offset, 1> offsets, device_view<R, 1> out, cudaStream_t stream = nullptr,
                     error_info* error = nullptr) noexcept {
  return detail::sum_segments(d_temp_storage, temp_storage_bytes, values, offsets, out, stream, error,
                              "consr::cuda::segmented_sum",
                              [&](const auto& /*seg*/) { return detail::write_value<R>{out.data(), out.stride(0)}; });
}

/// Per-segment mean on the device: out[s] = Σ values[i] / (offsets[s+1] − offsets[s]),
/// in double; an empty segment gives NaN. Host twin: consr::segmented_mean.
/// Preconditions, errors and temporary storage as segmented_sum.
template <class V, class Offset, class R>
status segmented_mean(void* d_temp_storage, std::size_t& temp_storage_bytes, device_view<V, 1> values,
                      device_view<Offset, 1> offsets, device_view<R, 1> out, cudaStream_t stream = nullptr,
                      error_info* error = nullptr) noexcept {
  using O = std::remove_cv_t<Offset>;
  return detail::sum_segments(d_temp_storage, temp_storage_bytes, values, offsets, out, stream, error,
                              "consr::cuda::segmented_mean", [&](const detail::packed_segments<O>& seg) {
                                return detail::write_mean<R, O>{out.data(), out.stride(0), seg};
                              });
}

/// Per-segment weighted sum on the device: out[s] = Σ_i weights[i] · values[i]
/// over segment s, products and sum in double; an empty segment gives 0.
/// Host twin: consr::segmented_weighted_sum. Preconditions: weights.size() ==
/// values.size(); otherwise as segmented_sum (errors also name 'weights').
template <class V, class W, class Offset, class R>
status segmented_weighted_sum(void* d_temp_storage, std::size_t& temp_storage_bytes, device_view<V, 1> values,
                              device_view<W, 1> weights, device_view<Offset, 1> offsets, device_view<R, 1> out,
                              cudaStream_t stream = nullptr, error_info* error = nullptr) noexcept {
  detail::assert_device_value_type<V>();
  detail::assert_device_value_type<W>();
  detail::assert_device_output_type<R>();
  return detail::guarded([&] {
    constexpr const char* fn = "consr::cuda::segmented_weighted_sum";
    const auto seg =
        detail::check_paired_segments(values, weights, "weights", "one weight per value", offsets, out, fn);
    return detail::run_reduction<double>(
        d_temp_storage, temp_storage_bytes,
        detail::read_weighted<std::remove_cv_t<V>, std::remove_cv_t<W>>{{values.data(), values.stride(0)},
                                                                        {weights.data(), weights.stride(0)}},
        detail::write_value<R>{out.data(), out.stride(0)}, seg, detail::double_plus{}, 0.0, stream, error);
  });
}

/// Per-segment number of scored tokens on the device: out[s] = #{i in segment s :
/// labels[i] != ignore_index} (spec §2). Count is int32 or int64. Host twin:
/// consr::segmented_count. A count that does not fit an int32 `out` is
/// reported in *error (status::invalid_argument, index s) when `error` is
/// given (the host twin checks segment lengths instead; the device cannot
/// without reading the offsets). Otherwise as segmented_sum (errors name
/// 'labels', 'offsets', 'out').
template <class Label, class Offset, class Count>
status segmented_count(void* d_temp_storage, std::size_t& temp_storage_bytes, device_view<Label, 1> labels,
                       device_view<Offset, 1> offsets, device_view<Count, 1> out,
                       std::int64_t ignore_index = default_ignore_index, cudaStream_t stream = nullptr,
                       error_info* error = nullptr) noexcept {
  static_assert(is_index_type_v<std::remove_cv_t<Label>>, "consr::cuda::segmented_count: labels must be int32 or int64");
  static_assert(!std::is_const_v<Count> && is_index_type_v<Count>,
                "consr::cuda::segmented_count: out must be a non-const int32 or int64 view");
  return detail::guarded([&] {
    constexpr const char* fn = "consr::cuda::segmented_count";
    ::consr::detail::check_view(labels, fn, "labels");
    const auto seg = detail::check_segments_and_output(offsets, labels.size(), out, fn);
    using L = std::remove_cv_t<Label>;
    return detail::run_reduction<long long>(d_temp_storage, temp_storage_bytes,
                                            detail::read_scored<L>{{labels.data(), labels.stride(0)}, ignore_index},
                                            detail::write_count<Count>{out.data(), out.stride(0), error}, seg,
                                            detail::count_plus{}, 0ll, stream, error);
  });
}

/// Per-segment mean over the scored tokens only, on the device:
/// out[s] = Σ_{i: labels[i] != ignore_index} values[i] / #{those i}, in double;
/// NaN for a segment without a scored token. Values at ignored positions are
/// never read. Host twin: consr::segmented_masked_mean. Preconditions:
/// labels.size() == values.size(); otherwise as segmented_sum (errors also
/// name 'labels').
template <class V, class Label, class Offset, class R>
status segmented_masked_mean(void* d_temp_storage, std::size_t& temp_storage_bytes, device_view<V, 1> values,
                             device_view<Label, 1> labels, device_view<Offset, 1> offsets, device_view<R, 1> out,
                             std::int64_t ignore_index = default_ignore_index, cudaStream_t stream = nullptr,
                             error_info* error = nullptr) noexcept {
  detail::assert_device_value_type<V>();
  detail::assert_device_output_type<R>();
  static_assert(is_index_type_v<std::remove_cv_t<Label>>,
                "consr::cuda::segmented_masked_mean: labels must be int32 or int64");
  return detail::guarded([&] {
    constexpr const char* fn = "consr::cuda::segmented_masked_mean";
    const auto seg = detail::check_paired_segments(values, labels, "labels", "one label per value", offsets, out, fn);
    return detail::run_reduction<detail::masked_accum>(
        d_temp_storage, temp_storage_bytes,
        detail::read_masked<std::remove_cv_t<V>, std::remove_cv_t<Label>>{
            {values.data(), values.stride(0)}, {labels.data(), labels.stride(0)}, ignore_index},
        detail::write_masked_mean<R>{out.data(), out.stride(0)}, seg, detail::masked_accum_plus{},
        detail::masked_accum{0.0, 0}, stream, error);
  });
}

}  // namespace cuda
}  // namespace consr
