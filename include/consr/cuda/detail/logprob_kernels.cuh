// consr/cuda/detail/logprob_kernels.cuh — the forward and backward kernels of the token log-probs
// (part of consr/cuda/logprobs.cuh, whose comment describes the method), on the row machinery of
// logprob_tiles.cuh; the backward's per-element gradient is shared with
// consr/cuda/linear_logprobs.cuh.
#pragma once

#include "logprob_tiles.cuh"

namespace consr {
namespace cuda {
namespace detail {

// ---- forward ----------------------------------------------------------------------------------

template <class Logit, class Label>
struct logprob_forward_args {
  const Logit* logits;
  index_t rows;
  index_t vocab;
  index_t row_stride;
  const Label* labels;
  index_t label_stride;
  accum_t<Logit>* token_logp;
  index_t logp_stride;
  accum_t<Logit>* lse;  // nullptr: not written
  index_t lse_stride;
  double tau;
  double inv_tau;          // 1/τ for the fp64 rescaling
  accum_t<Logit> c_hi;     // float: log2 e / τ = c_hi + c_lo, c_lo > 0; double: 1/τ (c_lo = 0)
  accum_t<Logit> c_lo;
  std::int64_t ignore_index;
  int splits;              // blocks per row (threads_per_row = 256); > 1 → partials + combine kernel
  double2* partials;       // [rows × splits] (max, sum) when splits > 1
  error_info* error;
};

/// What the last step of a scored row needs: the label's logit, the row's max and its sum of
/// exp((z − max)/τ).
struct logprob_row_stats {
  double z_y;
  double max;
  double sum;
};

/// The last step of row `row` (label y), in fp64: logp = (z_y − max)/τ − log(sum), lse = max/τ +
/// log(sum); both 0 for an ignored row, NaN with a report for a label outside [0, vocab).
/// `stats()` gives the row's logprob_row_stats and is called for a scored row only. Writes
/// a.token_logp and a.lse (when not null). Shared by the log-probs and the linear log-probs.
template <class Acc, class Args, class Stats>
__device__ __forceinline__ void logprob_finish(const Args& a, index_t row, std::int64_t y, Stats stats) {
  Acc logp = Acc(0);
  Acc lse = Acc(0);
  if (y == a.ignore_index) {
    // not scored: logp = lse = 0
  } else if (y < 0 || y >= a.vocab) {
    report_error(a.error, status::label_out_of_range, row);
    logp = logprob_nan<Acc>();
    lse = logprob_nan<Acc>();
  } else {
    const logprob_row_stats r = stats();
    const double log_sum = log(r.sum);
    logp = static_cast<Acc>((r.z_y - r.max) / a.tau - log_sum);
    lse = static_cast<Acc>(r.max / a.tau + log_sum);
  }
  a.token_logp[row * a.logp_stride] = logp;
  if (a.lse != nullptr) a.lse[row * a.lse_stride] = lse;
}

/// The last step of a row of the log-probs forward (logprob_finish on its logits).
template <class Logit, class Label>
__device__ void logprob_finish_row(const logprob_forward_args<Logit, Label>& a, index_t row, std::int64_t y,
                                   double row_max, double row_sum) {
  logprob_finish<accum_t<Logit>>(a, row, y, [&] {
    return logprob_row_stats{static_cast<double>(logprob_load<Logit>(a.logits + row * a.row_stride + y)), row_max,
                             row_sum};
  });
}

/// Work item `item` of a kernel with TPR threads per row: 8 consecutive rows for TPR = 32 (one
/// warp each, this thread's warp takes `row`), or split `split` of row `row` for TPR = 256.
template <int TPR>
struct logprob_work_item {
  static_assert(TPR == 32 || TPR == logprob_block_threads, "a row is handled by a warp or by a block");
  index_t row;
  int split;

  __device__ __forceinline__ logprob_work_item(index_t item, int splits)
      : row(TPR == 32 ? item * (logprob_block_threads / TPR) + static_cast<int>(threadIdx.x) / TPR : item / splits),
        split(TPR == 32 ? 0 : static_cast<int>(item % splits)) {}
};

/// Loads a lane's vectors of a tile, raw[k] = body[first + k·TPR] (first = tile · TPR · VPT + lane)
/// below body_vecs: through the read-only cache with −∞ vectors past the end (ReadOnly), or with
/// plain loads (the backward, whose output may be this very memory) leaving those past it unset.
template <class Logit, int TPR, bool ReadOnly, int VPT>
__device__ __forceinline__ void logprob_load_tile(uint4 (&raw)[VPT], const uint4* body, int body_vecs, int first) {
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int v = first + k * TPR;
    if constexpr (ReadOnly) raw[k] = v < body_vecs ? __ldg(body + v) : logprob_neg_inf_vector<Logit>();
    else if (v < body_vecs) raw[k] = body[v];
  }
}

/// The tiles [begin, end) of a row body of `body_vecs` vectors that split `split` of `splits`
/// reads: an even share of ⌈body_vecs / tile_vecs⌉ tiles.
struct logprob_tile_range {
  int begin;
  int end;

  __device__ __forceinline__ logprob_tile_range(int body_vecs, int tile_vecs, int split, int splits) {
    const int tiles = (body_vecs + tile_vecs - 1) / tile_vecs;
    begin = static_cast<int>(static_cast<long long>(tiles) * split / splits);
    end = static_cast<int>(static_cast<long long>(tiles) * (split + 1) / splits);
  }
};

/// Work item = (row, split) for TPR = 256 (one block), or 8 consecutive rows for TPR = 32 (one
/// warp each). Control flow is uniform per group, so the group's shuffles and barriers are safe.
template <int TPR, class Logit, class Label>
__global__ void __launch_bounds__(logprob_block_threads, TPR == 32 ? 1 : 8)
    logprob_forward_kernel(const logprob_forward_args<Logit, Label> a, const index_t items) {
  using Acc = accum_t<Logit>;
  constexpr int vec = logprob_vec_v<Logit>;
  constexpr int vpt = logprob_vectors_per_thread;
  constexpr int tile_vecs = TPR * vpt;
  __shared__ logprob_group_scratch<Acc> scratch;
  const int vocab = static_cast<int>(a.vocab);
  const int lane = static_cast<int>(threadIdx.x) % TPR;

  for (index_t item = blockIdx.x; item < items; item += gridDim.x) {
    const auto [row, split] = logprob_work_item<TPR>(item, a.splits);
    if (row >= a.rows) continue;  // only the last block of the warp-per-row shape; whole warps
    const std::int64_t y = static_cast<std::int64_t>(__ldg(a.labels + row * a.label_stride));
    const bool scored = y != a.ignore_index && y >= 0 && y < a.vocab;
    double row_max = static_cast<double>(logprob_neg_inf<Acc>());
    double row_sum = 0.0;
    if (scored) {  // ignored and bad rows are never read
      const Logit* logits_row = a.logits + row * a.row_stride;
      const logprob_row_layout layout = logprob_layout(logits_row, vocab);
      logprob_running<Acc> run{logprob_neg_inf<Acc>(), 0.0};
      if (split == 0) {
        // Head and tail scalars (fewer than 2 × vec ≤ 16 elements): one per lane.
        const int edge_count = layout.head + (vocab - layout.tail_begin);
        if (lane < edge_count) {
          const int e = lane < layout.head ? lane : layout.tail_begin + (lane - layout.head);
          logprob_absorb(run, logprob_load<Logit>(logits_row + e), a.inv_tau, a.c_hi, a.c_lo);
        }
      }
      const logprob_tile_range tiles(layout.body_vecs, tile_vecs, split, a.splits);
      const uint4* body = reinterpret_cast<const uint4*>(logits_row + layout.head);
      for (int t = tiles.begin; t < tiles.end; ++t) {
        uint4 raw[vpt];
        logprob_load_tile<Logit, TPR, true>(raw, body, layout.body_vecs, t * tile_vecs + lane);
        logprob_raise_max(run, logprob_tile_max<Logit>(raw), a.inv_tau);
        const Acc shift = logprob_shift(run.max);
        Acc tile_sum = Acc(0);  // ≤ 32 terms in fp32, each ≤ 1 (or NaN)
#pragma unroll
        for (int k = 0; k < vpt; ++k) {
#pragma unroll
          for (int j = 0; j < vec; ++j) tile_sum += logprob_term(logprob_element<Logit>(raw[k], j), shift, a.c_hi, a.c_lo);
        }
        run.sum += static_cast<double>(tile_sum);
      }
      const logprob_total total = logprob_group_total<TPR>(run, a.inv_tau, scratch);
      row_max = total.max;
      row_sum = total.sum;
    }
    if (lane == 0) {
      if (a.splits == 1) logprob_finish_row(a, row, y, row_max, row_sum);
      else if (scored) a.partials[row * a.splits + split] = make_double2(row_max, row_sum);
    }
  }
}

/// Second step of the split forward: one thread per row combines its splits in order.
template <class Logit, class Label>
__global__ void __launch_bounds__(logprob_block_threads)
    logprob_combine_kernel(const logprob_forward_args<Logit, Label> a) {
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t row = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < a.rows; row += stride) {
    const std::int64_t y = static_cast<std::int64_t>(a.labels[row * a.label_stride]);
    double row_max = static_cast<double>(logprob_neg_inf<accum_t<Logit>>());
    double row_sum = 0.0;
    if (y != a.ignore_index && y >= 0 && y < a.vocab) {
      const double2* p = a.partials + row * a.splits;
      for (int s = 0; s < a.splits; ++s) row_max = fmax(row_max, p[s].x);
      for (int s = 0; s < a.splits; ++s) row_sum += logprob_rescaled(p[s].x, p[s].y, row_max, a.inv_tau);
    }
    logprob_finish_row(a, row, y, row_max, row_sum);
  }
}

// ---- backward ---------------------------------------------------------------------------------

template <class Logit, class Label, class Grad>
struct logprob_backward_args {
  const Logit* logits;  // may alias grad (in-place): read with plain loads, each element before its write
  index_t rows;
  index_t vocab;
  index_t row_stride;
  const Label* labels;
  index_t label_stride;
  const accum_t<Logit>* lse;
  index_t lse_stride;
  const accum_t<Logit>* grad_logp;
  index_t grad_logp_stride;
  Grad* grad;
  index_t grad_row_stride;
  double tau;
  accum_t<Logit> c_hi;  // as in logprob_forward_args
  accum_t<Logit> c_lo;
  std::int64_t ignore_index;
  int splits;
  error_info* error;
};

template <class Grad, class Acc>
__device__ __forceinline__ void logprob_store(Grad* out, Acc value) {
  if constexpr (std::is_same_v<Grad, bfloat16>) out->bits = __bfloat16_as_ushort(__float2bfloat16_rn(static_cast<float>(value)));
  else if constexpr (std::is_same_v<Grad, float16>) out->bits = __half_as_ushort(__float2half_rn(static_cast<float>(value)));
  else *out = static_cast<Grad>(value);
}

template <class Grad>
__device__ __forceinline__ unsigned logprob_pack2(float lo, float hi) {
  unsigned short a, b;
  if constexpr (std::is_same_v<Grad, bfloat16>) {
    a = __bfloat16_as_ushort(__float2bfloat16_rn(lo));
    b = __bfloat16_as_ushort(__float2bfloat16_rn(hi));
  } else {
    a = __half_as_ushort(__float2half_rn(lo));
    b = __half_as_ushort(__float2half_rn(hi));
  }
  return static_cast<unsigned>(a) | (static_cast<unsigned>(b) << 16);
}

/// Bytes of alignment the vectorized store of one input vector's worth of gradients needs.
template <class Logit, class Grad>
inline constexpr unsigned logprob_store_alignment_v =
    logprob_vec_v<Logit> * sizeof(Grad) >= 16 ? 16u : static_cast<unsigned>(logprob_vec_v<Logit> * sizeof(Grad));

/// Stores the gradients of one input vector (Vec elements) with 16-byte (or 8-byte) stores when the
/// destination is aligned for them, element by element otherwise.
template <class Grad, class Acc, int Vec>
__device__ __forceinline__ void logprob_store_vector(Grad* out, const Acc (&g)[Vec], bool vectorized) {
  if (vectorized) {
    if constexpr (logprob_is_16bit_v<Grad>) {
      static_assert(Vec == 8, "16-bit gradients come from 16-bit logits");
      *reinterpret_cast<uint4*>(out) = make_uint4(logprob_pack2<Grad>(g[0], g[1]), logprob_pack2<Grad>(g[2], g[3]),
                                                  logprob_pack2<Grad>(g[4], g[5]), logprob_pack2<Grad>(g[6], g[7]));
      return;
    } else if constexpr (std::is_same_v<Grad, float> && Vec >= 4) {
#pragma unroll
      for (int c = 0; c < Vec / 4; ++c)
        reinterpret_cast<float4*>(out)[c] =
            make_float4(static_cast<float>(g[4 * c]), static_cast<float>(g[4 * c + 1]),
                        static_cast<float>(g[4 * c + 2]), static_cast<float>(g[4 * c + 3]));
      return;
    } else if constexpr (std::is_same_v<Grad, float>) {
      static_assert(Vec == 2, "fp64 logits come two to a vector");
      *reinterpret_cast<float2*>(out) = make_float2(static_cast<float>(g[0]), static_cast<float>(g[1]));
      return;
    } else {
#pragma unroll
      for (int c = 0; c < Vec / 2; ++c)
        reinterpret_cast<double2*>(out)[c] = make_double2(static_cast<double>(g[2 * c]), static_cast<double>(g[2 * c + 1]));
      return;
    }
  }
#pragma unroll
  for (int j = 0; j < Vec; ++j) logprob_store(out + j, g[j]);
}

/// Per-row constants of the backward.
template <class Acc>
struct logprob_grad_row {
  Acc neg_scale;  // −g/τ
  double scale;   // g/τ
  double lse;
  Acc l_hi;       // float: lse · log2 e = l_hi + l_lo; double: lse
  Acc l_lo;
};

/// The backward's constants of a row from its lse, upstream gradient g and τ (both backward kernels).
template <class Acc>
__device__ __forceinline__ logprob_grad_row<Acc> make_logprob_grad_row(double lse, double grad_logp, double tau) {
  logprob_grad_row<Acc> r;
  r.lse = lse;
  r.scale = grad_logp / tau;
  r.neg_scale = static_cast<Acc>(-r.scale);
  if constexpr (std::is_same_v<Acc, float>) {
    const double l = r.lse * logprob_log2e;
    r.l_hi = static_cast<float>(l);
    r.l_lo = static_cast<float>(l - static_cast<double>(r.l_hi));
  } else {
    r.l_hi = r.lse;
    r.l_lo = 0.0;
  }
  return r;
}

/// −(g/τ) · exp(z/τ − lse): float as exp2f(z·(c_hi + c_lo) − (l_hi + l_lo)).
__device__ __forceinline__ float logprob_grad_term(float z, const logprob_grad_row<float>& r, float c_hi, float c_lo) {
  return r.neg_scale * exp2f(fmaf(z, c_hi, -r.l_hi) + fmaf(z, c_lo, -r.l_lo));
}
__device__ __forceinline__ double logprob_grad_term(double z, const logprob_grad_row<double>& r, double c_hi,
                                                     double /*c_lo*/) {
  return r.neg_scale * exp(z * c_hi - r.l_hi);
}

/// The label's entry, (g/τ)(1 − exp(z_y/τ − lse)) in fp64 (once per row: kept out of line).
template <class Acc>
__device__ __noinline__ Acc logprob_label_grad(Acc z_y, double scale, double tau, double lse) {
  return static_cast<Acc>(scale * (1.0 - exp(static_cast<double>(z_y) / tau - lse)));
}

// Block rows: at most 64 registers, so that 4 blocks (1024 threads, 64 KiB of loads in flight) fit
// on an SM. (Warp rows are short; a cap there would only spill.)
template <int TPR, class Logit, class Label, class Grad>
__global__ void __launch_bounds__(logprob_block_threads, TPR == 32 ? 1 : 4)
    logprob_backward_kernel(const logprob_backward_args<Logit, Label, Grad> a, const index_t items) {
  using Acc = accum_t<Logit>;
  constexpr int vec = logprob_vec_v<Logit>;
  constexpr int vpt = logprob_vectors_per_thread;
  constexpr int tile_vecs = TPR * vpt;
  constexpr unsigned store_alignment = logprob_store_alignment_v<Logit, Grad>;
  const int vocab = static_cast<int>(a.vocab);
  const int lane = static_cast<int>(threadIdx.x) % TPR;

  for (index_t item = blockIdx.x; item < items; item += gridDim.x) {
    const auto [row, split] = logprob_work_item<TPR>(item, a.splits);
    if (row >= a.rows) continue;
    const std::int64_t y = static_cast<std::int64_t>(a.labels[row * a.label_stride]);
    const bool ignored = y == a.ignore_index;
    const bool scored = !ignored && y >= 0 && y < a.vocab;
    const Logit* logits_row = a.logits + row * a.row_stride;
    Grad* out_row = a.grad + row * a.grad_row_stride;
    const logprob_row_layout layout = logprob_layout(logits_row, vocab);
    const bool vectorized =
        (reinterpret_cast<std::uintptr_t>(out_row + layout.head) & (store_alignment - 1u)) == 0u;
    const logprob_tile_range tiles(layout.body_vecs, tile_vecs, split, a.splits);
    const int edge_count = layout.head + (vocab - layout.tail_begin);
    const int edge = lane < layout.head ? lane : layout.tail_begin + (lane - layout.head);  // if lane < edge_count

    if (!scored) {
      // Ignored rows get 0; rows with a bad label NaN (and an error report). Their logits are not read.
      const Acc fill = ignored ? Acc(0) : logprob_nan<Acc>();
      if (!ignored && split == 0 && lane == 0) report_error(a.error, status::label_out_of_range, row);
      if (split == 0 && lane < edge_count) logprob_store(out_row + edge, fill);
      Acc g[vec];
#pragma unroll
      for (int j = 0; j < vec; ++j) g[j] = fill;
      for (int t = tiles.begin; t < tiles.end; ++t) {
#pragma unroll
        for (int k = 0; k < vpt; ++k) {
          const int v = t * tile_vecs + lane + k * TPR;
          if (v < layout.body_vecs) logprob_store_vector(out_row + layout.head + v * vec, g, vectorized);
        }
      }
      continue;
    }

    const logprob_grad_row<Acc> r =
        make_logprob_grad_row<Acc>(static_cast<double>(a.lse[row * a.lse_stride]),
                                   static_cast<double>(a.grad_logp[row * a.grad_logp_stride]), a.tau);

    if (split == 0 && lane < edge_count) {
      const Acc z = logprob_load<Logit, false>(logits_row + edge);
      const Acc g = edge == y ? logprob_label_grad(z, r.scale, a.tau, r.lse) : logprob_grad_term(z, r, a.c_hi, a.c_lo);
      logprob_store(out_row + edge, g);
    }
    // The body vector holding the label (−1 if the label is a head/tail scalar) and its slot.
    const int label = static_cast<int>(y);
    const int label_vector = label >= layout.head && label < layout.tail_begin ? (label - layout.head) / vec : -1;
    const int label_offset = (label - layout.head) % vec;
    const uint4* body = reinterpret_cast<const uint4*>(logits_row + layout.head);
    for (int t = tiles.begin; t < tiles.end; ++t) {
      uint4 raw[vpt];
      const int first = t * tile_vecs + lane;
      logprob_load_tile<Logit, TPR, false>(raw, body, layout.body_vecs, first);  // grad may be this memory
#pragma unroll
      for (int k = 0; k < vpt; ++k) {
        const int v = first + k * TPR;
        if (v < layout.body_vecs) {
          const int e0 = layout.head + v * vec;
          Acc g[vec];
#pragma unroll
          for (int j = 0; j < vec; ++j) g[j] = logprob_grad_term(logprob_element<Logit>(raw[k], j), r, a.c_hi, a.c_lo);
          if (v == label_vector) {  // once per row
            Acc z_y = Acc(0);
#pragma unroll
            for (int j = 0; j < vec; ++j)
              if (j == label_offset) z_y = logprob_element<Logit>(raw[k], j);
            const Acc label_grad = logprob_label_grad(z_y, r.scale, a.tau, r.lse);
#pragma unroll
            for (int j = 0; j < vec; ++j)
              if (j == label_offset) g[j] = label_grad;
          }
          logprob_store_vector(out_row + e0, g, vectorized);
        }
      }
    }
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace consr
