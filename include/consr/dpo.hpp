// consr/dpo.hpp — the DPO objectives of ConSR (spec §7, paper eqs. 7–14):
// standard DPO, the length-normalized margin and the ConSR surrogate with its
// stop-gradient, forward and backward on the host (the token visual weights it
// takes are in visual_weights.hpp, included here).
//
// A batch holds P preference pairs. Each side (chosen y_w, rejected y_l) is
// packed: its per-token policy log-probs with offsets of P + 1 entries (as in
// reductions.hpp). Everything accumulates in double; σ and softplus are
// evaluated in forms that neither overflow nor lose the tail for |Δ| up to
// 1e4 and beyond. Above detail::segment_parallel_threshold tokens the host
// code runs its pairs in parallel (OpenMP), with the same result for any
// thread count; it is the reference for the CUDA version.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "config.hpp"
#include "detail/dpo_check.hpp"  // the argument checks, shared with cuda/dpo.cuh
#include "detail/dpo_host.hpp"   // the loops over contiguous pairs
#include "dpo_types.hpp"         // dpo_options, dpo_sequences, dpo_pair_metrics
#include "error.hpp"
#include "numeric.hpp"
#include "reductions.hpp"
#include "view.hpp"
#include "visual_weights.hpp"  // ω_t of eqs. 12–13, the weights of the ConSR objective

namespace consr {

namespace detail {

/// σ(x) = 1 / (1 + e^−x) without overflow: e^x is only taken of x <= 0.
/// Host and device (consr/cuda/dpo.cuh) run this same code.
CONSR_HOST_DEVICE inline double stable_sigmoid(double x) noexcept {
  if (x >= 0.0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);  // x < 0 or NaN
  return e / (1.0 + e);
}

/// softplus(x) = log(1 + e^x) = max(x, 0) + log1p(e^−|x|): exact for large
/// |x| (x itself, or e^x), never overflows; NaN propagates.
CONSR_HOST_DEVICE inline double stable_softplus(double x) noexcept {
  if (std::isnan(x)) return x;
  const double positive_part = x < 0.0 ? 0.0 : x;  // std::max(x, 0.0), which nvcc cannot call on the device
  return positive_part + std::log1p(std::exp(-std::fabs(x)));
}

/// Sums of one side of one pair over its scored tokens (the device kernels
/// reduce into this type too).
struct dpo_side_sums {
  double log_ratio = 0.0;        ///< Σ (a − a_ref)
  double weighted_policy = 0.0;  ///< Σ ω a (ω = 1 without weights)
  index_t length = 0;            ///< |y| (scored tokens)
};

/// One side of one pair, summed in lane_sums' fixed order (reductions.hpp).
template <class T, class Offset, class Label>
dpo_side_sums dpo_side(const dpo_sequences<T, Offset, Label>& s, index_t pair, const dpo_options& o) {
  const bool has_labels = s.labels.size() != 0;
  const bool per_token_reference = s.reference_logp_sum.size() == 0;
  const bool weighted = dpo_uses_weights(o);
  const std::int64_t ignore = o.ignore_index;
  const std::int64_t unfused = opaque_all_ones();  // dpo_unfused: the weighted products rounded alone
  dpo_side_sums sums;
  if (!has_labels) {
    // All scored: |y| is the length; only the sums needed are accumulated, each bit-identical to
    // its lane of the loop below (a lane_sums sum depends on its own addends and positions only).
    sums.length = static_cast<index_t>(s.offsets[pair + 1]) - static_cast<index_t>(s.offsets[pair]);
    if (!weighted && !per_token_reference) {  // Σ a is both sums
      double r[1];
      lane_sums<1>(s.offsets[pair], s.offsets[pair + 1], [&](index_t t, double* x) { x[0] = static_cast<double>(s.policy_logp[t]); }, r);
      sums.log_ratio = r[0] - static_cast<double>(s.reference_logp_sum[pair]);
      sums.weighted_policy = r[0];
      return sums;
    }
    double r[2];
    lane_sums<2>(
        s.offsets[pair], s.offsets[pair + 1],
        [&](index_t t, double* x) {
          const double a = static_cast<double>(s.policy_logp[t]);
          x[0] = per_token_reference ? a - static_cast<double>(s.reference_logp[t]) : a;
          x[1] = weighted ? dpo_unfused(static_cast<double>(s.weights[t]) * a, unfused) : a;
        },
        r);
    sums.log_ratio = r[0];
    sums.weighted_policy = r[1];
    if (!per_token_reference) sums.log_ratio -= static_cast<double>(s.reference_logp_sum[pair]);
    return sums;
  }
  double r[3];  // Σ (a − a_ref) or Σ a, Σ ω a, |y| (exact in double)
  lane_sums<3>(
      s.offsets[pair], s.offsets[pair + 1],
      [&](index_t t, double* x) {
        const bool scored = !has_labels || static_cast<std::int64_t>(s.labels[t]) != ignore;
        const double a = static_cast<double>(s.policy_logp[t]);
        const double ratio = per_token_reference ? a - static_cast<double>(s.reference_logp[t]) : a;
        const double weighted_a = weighted ? dpo_unfused(static_cast<double>(s.weights[t]) * a, unfused) : a;
        x[0] = scored ? ratio : 0.0;
        x[1] = scored ? weighted_a : 0.0;
        x[2] = scored ? 1.0 : 0.0;
      },
      r);
  sums.log_ratio = r[0];
  sums.weighted_policy = r[1];
  sums.length = static_cast<index_t>(r[2]);
  if (!per_token_reference) sums.log_ratio -= static_cast<double>(s.reference_logp_sum[pair]);
  return sums;
}

/// Whether dpo_forward / dpo_backward split the pairs over threads: only
/// above detail::segment_parallel_threshold tokens (forking costs more than
/// the work below it).
template <class T, class Offset, class Label>
bool dpo_parallel_worth_it(const dpo_sequences<T, Offset, Label>& chosen, const dpo_sequences<T, Offset, Label>& rejected,
                           index_t num_pairs) noexcept {
  return num_pairs > 1 && chosen.policy_logp.size() + rejected.policy_logp.size() >= segment_parallel_threshold;
}

/// Everything the forward and the backward need about one pair.
struct dpo_pair_terms {
  double delta;            ///< Δ or Δ'
  double sigma_neg;        ///< σ(−Δ')
  double chosen_reward;    ///< β Σ(a − a_ref)
  double rejected_reward;  ///< β Σ(b − b_ref)
  double reward_margin;    ///< chosen_reward − rejected_reward
  double dpo_loss;         ///< softplus(−Δ')
  double objective;        ///< L (standard) or L' (consr)
  double grad_scale;       ///< |∂L/∂a_t| / ω_t = σ(−Δ')·β (standard, or consr with scale_by_beta) or σ(−Δ')
};

/// A pair's terms from the sums of its two sides: eqs. 7, 8, 11 and 14. The
/// host (dpo_pair) and the device kernels (consr/cuda/dpo.cuh) both call this
/// function, so the two cannot drift apart. Every product is mul_rn, so no
/// compiler can contract it into an fma with the subtraction that follows:
/// Δ(chosen, rejected) = −Δ(rejected, chosen) exactly, under any contraction
/// policy and on either side. With length normalization a side with no
/// scored token gives Δ' = NaN (and NaN terms); the host rejects such pairs
/// before, the device reports them.
CONSR_HOST_DEVICE inline dpo_pair_terms dpo_pair_from_sums(const dpo_side_sums& w, const dpo_side_sums& l,
                                                         const dpo_options& o) noexcept {
  const double beta = o.beta;
  dpo_pair_terms p{};
  if (dpo_uses_length_normalization(o)) {
    // eq. 11
    const double nw = static_cast<double>(w.length), nl = static_cast<double>(l.length);
    p.delta = w.length > 0 && l.length > 0
                  ? mul_rn(0.5 * (nw + nl), mul_rn(beta / nw, w.log_ratio) - mul_rn(beta / nl, l.log_ratio))
                  : quiet_nan_double();
  } else {
    p.delta = mul_rn(beta, w.log_ratio - l.log_ratio);  // eq. 7; the same expression for both losses
  }
  p.sigma_neg = stable_sigmoid(-p.delta);
  p.chosen_reward = mul_rn(beta, w.log_ratio);
  p.rejected_reward = mul_rn(beta, l.log_ratio);
  p.reward_margin = p.chosen_reward - p.rejected_reward;
  p.dpo_loss = stable_softplus(-p.delta);
  if (o.loss == dpo_loss_type::standard) {
    p.objective = p.dpo_loss;
    p.grad_scale = mul_rn(p.sigma_neg, beta);  // eq. 8
  } else {
    const double factor = o.scale_by_beta ? beta : 1.0;
    p.grad_scale = mul_rn(p.sigma_neg, factor);
    p.objective = mul_rn(-p.grad_scale, w.weighted_policy - l.weighted_policy);  // eq. 14
  }
  return p;
}

/// Whether every view of a side that the sums read is contiguous: its pairs then go through the
/// loops of detail/dpo_host.hpp (the same bits as dpo_side, at least twice as fast).
template <class T, class Offset, class Label>
bool dpo_contiguous(const dpo_sequences<T, Offset, Label>& s, const dpo_options& o) noexcept {
  const auto unit = [](const auto& v) { return v.size() <= 1 || v.stride(0) == 1; };
  return unit(s.policy_logp) && unit(s.reference_logp) && unit(s.labels) && (!dpo_uses_weights(o) || unit(s.weights));
}

/// Pair `pair` of a contiguous side, as the loops of detail/dpo_host.hpp read it.
template <class T, class Offset, class Label>
dpo_run<T, Label> dpo_run_of(const dpo_sequences<T, Offset, Label>& s, index_t pair, const dpo_options& o) noexcept {
  const index_t begin = static_cast<index_t>(s.offsets[pair]);
  dpo_run<T, Label> r;
  r.logp = s.policy_logp.data() + begin;
  if (s.reference_logp_sum.size() == 0) r.reference = s.reference_logp.data() + begin;
  if (dpo_uses_weights(o)) r.weights = s.weights.data() + begin;
  if (s.labels.size() != 0) r.labels = s.labels.data() + begin;
  r.length = static_cast<index_t>(s.offsets[pair + 1]) - begin;
  return r;
}

/// Calls f(L, R, W, S) with the four flags as std::bool_constant (one instantiation each).
template <class F>
CONSR_FORCEINLINE void dpo_with_flags(bool labels, bool reference, bool weights, bool second, F&& f) {
  const auto split = [](bool v, auto&& g) {
    if (v) g(std::true_type{});
    else g(std::false_type{});
  };
  split(labels, [&](auto L) {
    split(reference, [&](auto R) { split(weights, [&](auto W) { split(second, [&](auto S) { f(L, R, W, S); }); }); });
  });
}

/// Both sides' sums of pair i: dpo_side's, bit for bit. Contiguous sides run through the
/// interleaved loops (together when they read the same arrays, else one after the other).
template <class T, class Offset, class Label>
void dpo_pair_sums(const dpo_sequences<T, Offset, Label>& chosen, const dpo_sequences<T, Offset, Label>& rejected,
                   index_t i, const dpo_options& o, bool contiguous, dpo_side_sums& w, dpo_side_sums& l) {
  if (!contiguous) {
    w = dpo_side(chosen, i, o);
    l = dpo_side(rejected, i, o);
    return;
  }
  const bool weighted = dpo_uses_weights(o);
  const auto sums = [&](const dpo_run<T, Label>& x, const dpo_run<T, Label>& y, dpo_side_sums& sx, dpo_side_sums& sy,
                        bool labels, bool reference) {
    // Σ ω a is read by eq. 14 only, and is Σ a = sum 0 without weights and per-token reference.
    const bool second = o.loss == dpo_loss_type::consr && (weighted || reference);
    dpo_with_flags(labels, reference, weighted, second, [&](auto L, auto R, auto W, auto S) {
      dpo_run_sums<L, R, W, S> ax, ay;
      dpo_run_pair_sums(x, y, o.ignore_index, ax, ay);
      const auto out = [&](const auto& a, index_t length, dpo_side_sums& r) {
        r.log_ratio = a.sum0();
        r.weighted_policy = decltype(S)::value ? a.sum1() : r.log_ratio;
        r.length = decltype(L)::value ? a.scored() : length;
      };
      out(ax, x.length, sx);
      out(ay, y.length, sy);
    });
  };
  const dpo_run<T, Label> rw = dpo_run_of(chosen, i, o), rl = dpo_run_of(rejected, i, o);
  const bool labels_w = rw.labels != nullptr, labels_l = rl.labels != nullptr;
  const bool ref_w = rw.reference != nullptr, ref_l = rl.reference != nullptr;
  if (labels_w == labels_l && ref_w == ref_l) {
    sums(rw, rl, w, l, labels_w, ref_w);
  } else {
    dpo_side_sums unused;
    sums(rw, dpo_run<T, Label>{}, w, unused, labels_w, ref_w);
    sums(dpo_run<T, Label>{}, rl, unused, l, labels_l, ref_l);
  }
  if (!ref_w) w.log_ratio -= static_cast<double>(chosen.reference_logp_sum[i]);
  if (!ref_l) l.log_ratio -= static_cast<double>(rejected.reference_logp_sum[i]);
}

template <class T, class Offset, class Label>
dpo_pair_terms dpo_pair(const dpo_sequences<T, Offset, Label>& chosen, const dpo_sequences<T, Offset, Label>& rejected,
                        index_t pair, const dpo_options& o, bool contiguous) {
  dpo_side_sums w, l;
  dpo_pair_sums(chosen, rejected, pair, o, contiguous, w, l);
  return dpo_pair_from_sums(w, l, o);
}

/// Stores pair i's terms into every metric view that is not empty. Host
/// (dpo_forward) and device (consr/cuda/dpo.cuh) metrics both go through here.
template <class Metrics>
CONSR_HOST_DEVICE inline void dpo_store_metrics(const Metrics& m, index_t i, const dpo_pair_terms& p) noexcept {
  using T = std::remove_cv_t<std::remove_reference_t<decltype(m.loss[0])>>;
  if (m.margin_logit.size() != 0) m.margin_logit[i] = static_cast<T>(p.delta);
  if (m.sigma_neg.size() != 0) m.sigma_neg[i] = static_cast<T>(p.sigma_neg);
  if (m.chosen_reward.size() != 0) m.chosen_reward[i] = static_cast<T>(p.chosen_reward);
  if (m.rejected_reward.size() != 0) m.rejected_reward[i] = static_cast<T>(p.rejected_reward);
  if (m.reward_margin.size() != 0) m.reward_margin[i] = static_cast<T>(p.reward_margin);
  if (m.accuracy.size() != 0) m.accuracy[i] = p.delta > 0.0 ? T(1) : T(0);
  if (m.dpo_loss.size() != 0) m.dpo_loss[i] = static_cast<T>(p.dpo_loss);
  if (m.loss.size() != 0) m.loss[i] = static_cast<T>(p.objective);
}

/// Writes pair i's gradients, ∂L/∂a_t = −g·ω_t and ∂L/∂b_t = +g·ω_t (0 on ignored tokens), where
/// g = grad_scale · upstream (eqs. 8, 14); `unit` when dpo_unit_gradients holds.
template <class T, class Offset, class Label>
void dpo_pair_gradients(const dpo_sequences<T, Offset, Label>& chosen, const dpo_sequences<T, Offset, Label>& rejected,
                        index_t i, const dpo_options& o, double g, bool unit, const host_view<T, 1>& grad_chosen,
                        const host_view<T, 1>& grad_rejected) {
  const bool weighted = dpo_uses_weights(o);
  const auto write_side = [&](const dpo_sequences<T, Offset, Label>& s, const host_view<T, 1>& grad, double sign) {
    if (unit) {
      dpo_run_gradient(grad.data() + s.offsets[i], dpo_run_of(s, i, o), sign * g, o.ignore_index);
      return;
    }
    const bool has_labels = s.labels.size() != 0;
    for (index_t t = s.offsets[i]; t < static_cast<index_t>(s.offsets[i + 1]); ++t) {
      if (has_labels && static_cast<std::int64_t>(s.labels[t]) == o.ignore_index) {
        grad[t] = T(0);
        continue;
      }
      const double omega = weighted ? static_cast<double>(s.weights[t]) : 1.0;
      grad[t] = static_cast<T>(sign * g * omega);
    }
  };
  write_side(chosen, grad_chosen, -1.0);
  write_side(rejected, grad_rejected, 1.0);
}

/// Whether the sides and both gradients are contiguous (dpo_run_gradient writes them).
template <class T, class Offset, class Label>
bool dpo_unit_gradients(const dpo_sequences<T, Offset, Label>& chosen, const dpo_sequences<T, Offset, Label>& rejected,
                        const dpo_options& o, const host_view<T, 1>& grad_chosen,
                        const host_view<T, 1>& grad_rejected) noexcept {
  return dpo_contiguous(chosen, o) && dpo_contiguous(rejected, o) &&
         (grad_chosen.size() <= 1 || grad_chosen.stride(0) == 1) &&
         (grad_rejected.size() <= 1 || grad_rejected.stride(0) == 1);
}

/// The check of the per-pair gradient scales dpo_forward saves and dpo_backward reads.
template <class V>
void dpo_check_saved(const host_view<V, 1>& saved, index_t num_pairs, const char* fn) {
  check_view(saved, fn, "saved_grad_scale");
  if constexpr (!std::is_const_v<V>) check_no_broadcast(saved, fn, "saved_grad_scale");
  CONSR_CHECK_ARG(saved.size() == 0 || saved.size() == num_pairs, fn, "saved_grad_scale", "has ", saved.size(),
                  " elements but must have 0 (none) or ", num_pairs, " (one per pair, as dpo_forward saves them)");
}

template <class T, class Offset, class Label>
void dpo_backward_impl(const dpo_sequences<T, Offset, Label>& chosen, const dpo_sequences<T, Offset, Label>& rejected,
                       const dpo_options& o, double grad_loss, const host_view<const T, 1>& grad_loss_per_pair,
                       bool per_pair, const host_view<T, 1>& grad_chosen, const host_view<T, 1>& grad_rejected,
                       const host_view<const double, 1>& saved) {
  constexpr const char* fn = "consr::dpo_backward";
  const index_t num_pairs = dpo_check(chosen, rejected, o, fn);
  if (per_pair) {
    CONSR_CHECK_ARG(o.reduction == loss_reduction::none, fn, "grad_loss_per_pair",
                    "is a per-pair upstream gradient, which needs options.reduction == none; pass a scalar "
                    "grad_loss for mean or sum");
    check_view_extent(grad_loss_per_pair, 0, num_pairs, fn, "grad_loss_per_pair", "one upstream gradient per pair");
  } else {
    CONSR_CHECK_ARG(o.reduction != loss_reduction::none, fn, "options.reduction",
                    "is none, which needs a per-pair upstream gradient (grad_loss_per_pair), not a scalar");
  }
  dpo_check_grads(chosen, rejected, grad_chosen, grad_rejected, fn);
  dpo_check_saved(saved, num_pairs, fn);
  check_disjoint(grad_chosen, saved, fn, "grad_chosen_logp", "saved_grad_scale");
  check_disjoint(grad_rejected, saved, fn, "grad_rejected_logp", "saved_grad_scale");

  const double upstream_all =
      o.reduction == loss_reduction::mean ? grad_loss / static_cast<double>(num_pairs) : grad_loss;
  const bool contiguous = dpo_contiguous(chosen, o) && dpo_contiguous(rejected, o);
  const bool unit = dpo_unit_gradients(chosen, rejected, o, grad_chosen, grad_rejected);
  const bool reuse = saved.size() != 0;  // the forward's scales: no second pass over the log-probs
  // Each pair's tokens are written by one thread; no value depends on the thread count.
  CONSR_OMP(parallel for schedule(static) if (dpo_parallel_worth_it(chosen, rejected, num_pairs)))
  for (index_t i = 0; i < num_pairs; ++i) {
    const double scale = reuse ? saved[i] : dpo_pair(chosen, rejected, i, o, contiguous).grad_scale;
    const double upstream = per_pair ? static_cast<double>(grad_loss_per_pair[i]) : upstream_all;
    dpo_pair_gradients(chosen, rejected, i, o, scale * upstream, unit, grad_chosen, grad_rejected);
  }
}

/// dpo_forward, and with `grads` (reduction mean or sum) dpo_backward's gradients for grad_loss
/// written pair by pair as the pair's sums are known.
template <class T, class Offset, class Label>
double dpo_forward_impl(const dpo_sequences<T, Offset, Label>& chosen, const dpo_sequences<T, Offset, Label>& rejected,
                        const dpo_options& options, const dpo_pair_metrics<T>& metrics,
                        const host_view<double, 1>& saved, bool grads, double grad_loss,
                        const host_view<T, 1>& grad_chosen, const host_view<T, 1>& grad_rejected, const char* fn) {
  const index_t num_pairs = detail::dpo_check(chosen, rejected, options, fn);
  detail::dpo_check_metrics(metrics, num_pairs, fn);
  dpo_check_saved(saved, num_pairs, fn);
  if (grads) {
    CONSR_CHECK_ARG(options.reduction != loss_reduction::none, fn, "options.reduction",
                    "is none, whose gradient needs per-pair upstream gradients: call dpo_forward, then "
                    "dpo_backward with grad_loss_per_pair");
    dpo_check_grads(chosen, rejected, grad_chosen, grad_rejected, fn);
  }
  const double upstream =
      options.reduction == loss_reduction::mean ? grad_loss / static_cast<double>(num_pairs) : grad_loss;
  const bool contiguous = dpo_contiguous(chosen, options) && dpo_contiguous(rejected, options);
  const bool unit = grads && dpo_unit_gradients(chosen, rejected, options, grad_chosen, grad_rejected);

  // The pairs are cut into at most dpo_sum_blocks blocks whose bounds depend on P alone; each
  // block is summed in pair order (by one thread), then the block sums in block order: the
  // result does not depend on the thread count, and nothing is allocated.
  constexpr index_t dpo_sum_blocks = 256;
  const index_t blocks = num_pairs < dpo_sum_blocks ? num_pairs : dpo_sum_blocks;
  double block_sum[dpo_sum_blocks];
  CONSR_OMP(parallel for schedule(static) if (detail::dpo_parallel_worth_it(chosen, rejected, num_pairs)))
  for (index_t k = 0; k < blocks; ++k) {
    double sum = 0.0;
    for (index_t i = k * num_pairs / blocks, end = (k + 1) * num_pairs / blocks; i < end; ++i) {
      const detail::dpo_pair_terms p = detail::dpo_pair(chosen, rejected, i, options, contiguous);
      sum += p.objective;
      detail::dpo_store_metrics(metrics, i, p);
      if (saved.size() != 0) saved[i] = p.grad_scale;
      if (grads) dpo_pair_gradients(chosen, rejected, i, options, p.grad_scale * upstream, unit, grad_chosen,
                                    grad_rejected);
    }
    block_sum[k] = sum;
  }
  double total = 0.0;
  for (index_t k = 0; k < blocks; ++k) total += block_sum[k];
  if (options.reduction == loss_reduction::mean) return num_pairs > 0 ? total / static_cast<double>(num_pairs) : 0.0;
  return total;
}

}  // namespace detail

/// Forward of the DPO objective over P pairs (spec §7). Per pair, over the
/// scored tokens (labels != ignore_index) of each side:
///   S_w = Σ(a − a_ref), S_l = Σ(b − b_ref), |y_w|, |y_l| = scored lengths
///   standard (eq. 7):  Δ = β(S_w − S_l),  L = −log σ(Δ) = softplus(−Δ)
///   consr (eq. 14):    Δ' = (|y_w| + |y_l|)/2 · (β/|y_w|·S_w − β/|y_l|·S_l)
///                      with length_normalize (eq. 11), else Δ' = Δ;
///                      L' = −σ(−Δ')·(Σ ω_t a_t − Σ ω_t b_t), ×β with
///                      scale_by_beta; ω_t = weights[t] with visual_weights,
///                      else 1. (Its value is a surrogate: its gradient, with
///                      σ(−Δ') held fixed, is the ConSR gradient.)
/// Returns Σ_i L_i / P (mean; 0 for P = 0), Σ_i L_i (sum), or Σ_i L_i
/// (none; the per-pair L_i go to metrics.loss). Metrics are optional; see
/// dpo_pair_metrics.
/// Throws consr::error naming the argument: 'options.beta' (not finite or
/// <= 0), 'options.loss' / 'options.reduction' (not an enum value),
/// 'chosen.*' / 'rejected.*' (offsets invalid or for different P, reference
/// missing, both given or of the wrong size, labels or weights of the wrong
/// size), 'chosen' / 'rejected' (with length normalization, a pair with no
/// scored token: the message names the pair), 'metrics.*' (wrong size).
/// saved_grad_scale (optional, P doubles): receives each pair's gradient
/// scale σ(−Δ')·β or σ(−Δ'), which dpo_backward then reads instead of summing
/// the log-probs again (same gradients, bit for bit; one pass over the tokens
/// instead of two). Throws naming 'saved_grad_scale' (size not 0 or P).
template <class T, class Offset, class Label>
double dpo_forward(const dpo_sequences<T, Offset, Label>& chosen, const dpo_sequences<T, Offset, Label>& rejected,
                   const dpo_options& options, dpo_pair_metrics<detail::type_identity_t<T>> metrics = {},
                   host_view<double, 1> saved_grad_scale = {}) {
  return detail::dpo_forward_impl(chosen, rejected, options, metrics, saved_grad_scale, false, 0.0, host_view<T, 1>{},
                                  host_view<T, 1>{}, "consr::dpo_forward");
}

/// dpo_forward and dpo_backward(grad_loss) in one call (reduction mean or sum): returns the
/// reduced objective and fills metrics exactly as dpo_forward, and writes the gradients exactly
/// as dpo_backward, bit for bit, each pair's right after its sums (one pass over the log-probs,
/// the pair's tokens still in cache for the gradient). For a caller that knows grad_loss
/// before the forward, e.g. 1 for a loss it minimizes directly. Throws consr::error as
/// dpo_forward and dpo_backward ('options.reduction' for none).
template <class T, class Offset, class Label>
double dpo_forward_backward(const dpo_sequences<T, Offset, Label>& chosen,
                            const dpo_sequences<T, Offset, Label>& rejected, const dpo_options& options,
                            double grad_loss, host_view<T, 1> grad_chosen_logp, host_view<T, 1> grad_rejected_logp,
                            dpo_pair_metrics<detail::type_identity_t<T>> metrics = {}) {
  return detail::dpo_forward_impl(chosen, rejected, options, metrics, host_view<double, 1>{}, true, grad_loss,
                                  grad_chosen_logp, grad_rejected_logp, "consr::dpo_forward_backward");
}

/// Backward of dpo_forward for reduction mean or sum: writes ∂(reduced
/// objective)/∂a_t · grad_loss into grad_chosen_logp and the same for b_t into
/// grad_rejected_logp (overwritten, every token):
///   standard: ∂L/∂a_t = −β σ(−Δ),           ∂L/∂b_t = +β σ(−Δ)        (eq. 8)
///   consr:    ∂L'/∂a_t = −σ(−Δ') ω_t [×β],   ∂L'/∂b_t = +σ(−Δ') ω_t [×β]
/// (σ(−Δ') is a constant: stop-gradient), divided by P for mean; ignored
/// tokens get 0. The reference, labels and weights get no gradient (they are
/// constants). With scale_by_beta, length_normalize off and ω = 1, the consr
/// gradient is computed by the same floating-point operations as the
/// standard one, so the two are bitwise equal.
/// Preconditions: as dpo_forward; options.reduction is mean or sum;
/// grad_*_logp have the sizes of the policy_logp views and overlap neither
/// the inputs nor each other. Throws consr::error as dpo_forward, and names
/// 'options.reduction' (none), 'grad_chosen_logp' or 'grad_rejected_logp'.
/// saved_grad_scale (optional): what dpo_forward saved for the same inputs
/// and options; given, the backward only writes (no pass over the log-probs).
/// Throws naming 'saved_grad_scale' (size not 0 or P, or overlapping a gradient).
template <class T, class Offset, class Label>
void dpo_backward(const dpo_sequences<T, Offset, Label>& chosen, const dpo_sequences<T, Offset, Label>& rejected,
                  const dpo_options& options, double grad_loss, host_view<T, 1> grad_chosen_logp,
                  host_view<T, 1> grad_rejected_logp, host_view<const double, 1> saved_grad_scale = {}) {
  detail::dpo_backward_impl(chosen, rejected, options, grad_loss, host_view<const T, 1>{}, false, grad_chosen_logp,
                            grad_rejected_logp, saved_grad_scale);
}

/// Backward for reduction none: pair i's gradients are scaled by
/// grad_loss_per_pair[i] (the upstream gradient of metrics.loss[i]).
/// Otherwise as the scalar overload. Throws consr::error naming
/// 'grad_loss_per_pair' (reduction is not none, or size != P) and as above.
template <class T, class Offset, class Label>
void dpo_backward(const dpo_sequences<T, Offset, Label>& chosen, const dpo_sequences<T, Offset, Label>& rejected,
                  const dpo_options& options, host_view<const detail::type_identity_t<T>, 1> grad_loss_per_pair,
                  host_view<T, 1> grad_chosen_logp, host_view<T, 1> grad_rejected_logp,
                  host_view<const double, 1> saved_grad_scale = {}) {
  detail::dpo_backward_impl(chosen, rejected, options, 0.0, grad_loss_per_pair, true, grad_chosen_logp,
                            grad_rejected_logp, saved_grad_scale);
}

}  // namespace consr
