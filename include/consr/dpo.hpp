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
#include <string>
#include <string_view>
#include <type_traits>

#include "config.hpp"
#include "detail/enum_names.hpp"
#include "error.hpp"
#include "numeric.hpp"
#include "detail/dpo_host.hpp"
#include "reductions.hpp"
#include "view.hpp"
#include "visual_weights.hpp"  // ω_t of eqs. 12–13, the weights of the ConSR objective

namespace consr {

/// Which objective dpo_forward / dpo_backward compute.
enum class dpo_loss_type {
  standard,  ///< eq. 7: L = −log σ(Δ); length_normalize, visual_weights, scale_by_beta do not apply
  consr,     ///< eq. 14: L' = −sg(σ(−Δ'))·(Σ ω a − Σ ω b) (default)
};

/// How per-pair objectives reduce over the batch (spec §2).
enum class loss_reduction {
  mean,  ///< Σ_i L_i / P (0 for P = 0)
  sum,   ///< Σ_i L_i
  none,  ///< per-pair values in metrics.loss; dpo_forward returns their sum
};

namespace detail {
inline constexpr enum_name<dpo_loss_type> dpo_loss_type_names[] = {{dpo_loss_type::consr, "consr", " (eq. 14)"},
                                                                   {dpo_loss_type::standard, "standard", " (eq. 7)"}};
inline constexpr enum_name<loss_reduction> loss_reduction_names[] = {
    {loss_reduction::mean, "mean"}, {loss_reduction::sum, "sum"}, {loss_reduction::none, "none"}};
}  // namespace detail

/// Name of a loss type: "standard" or "consr".
inline const char* to_string(dpo_loss_type t) noexcept { return detail::name_of(t, detail::dpo_loss_type_names); }

/// The dpo_loss_type named `name` ("consr" or "standard", as to_string writes them).
/// Throws consr::error naming 'loss_type' otherwise.
inline dpo_loss_type parse_dpo_loss_type(std::string_view name) {
  return detail::parse_name(name, detail::dpo_loss_type_names, "consr::parse_dpo_loss_type", "loss_type");
}

/// Name of a reduction: "mean", "sum" or "none".
inline const char* to_string(loss_reduction r) noexcept { return detail::name_of(r, detail::loss_reduction_names); }

/// The loss_reduction named `name` ("mean", "sum" or "none", as to_string writes them).
/// Throws consr::error naming 'reduction' otherwise.
inline loss_reduction parse_loss_reduction(std::string_view name) {
  return detail::parse_name(name, detail::loss_reduction_names, "consr::parse_loss_reduction", "reduction");
}

/// Options of dpo_forward / dpo_backward.
struct dpo_options {
  dpo_loss_type loss = dpo_loss_type::consr;
  double beta = 0.1;             ///< β > 0, finite
  bool length_normalize = true;  ///< consr: Δ' of eq. 11 (off: Δ' = Δ)
  bool visual_weights = true;    ///< consr: ω_t from `weights` (off: ω_t = 1)
  bool scale_by_beta = false;    ///< consr: multiply the surrogate (and its gradient) by β (spec §7 decision)
  loss_reduction reduction = loss_reduction::mean;
  std::int64_t ignore_index = default_ignore_index;  ///< tokens with this label are excluded (with labels)
};

/// One side (chosen or rejected) of P pairs, packed, in one memory space: the
/// host algorithms take host_space (the default), the CUDA launchers of
/// consr/cuda/dpo.cuh device_space (alias consr::cuda::dpo_sequences); one
/// check (detail::dpo_check) serves both. Non-const views convert to these
/// members implicitly.
///  - policy_logp: per-token policy log-probs (a_t or b_t), n tokens.
///  - offsets: P + 1 entries, valid for n (reductions.hpp rules).
///  - exactly one reference: reference_logp per token (n values, same
///    packing) or reference_logp_sum per sequence (P values, summed by the
///    caller over the same scored tokens). The per-sequence form is used when
///    reference_logp_sum is non-empty; otherwise reference_logp must have n
///    values.
///  - labels: optional (size 0) or n; a token whose label equals
///    options.ignore_index is excluded from every sum and length and gets
///    gradient 0.
///  - weights: visual weights ω_t per token (visual_weights()); n values,
///    required iff loss == consr && visual_weights; otherwise ignored (but
///    its size, if non-zero, must still be n).
template <class T, class Offset, class Label = std::int64_t, class Space = host_space>
struct dpo_sequences {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "consr::dpo_sequences: log-probs must be float or double");
  static_assert(is_index_type_v<Offset>, "consr::dpo_sequences: offsets must be int32 or int64");
  static_assert(is_index_type_v<Label>, "consr::dpo_sequences: labels must be int32 or int64");
  using space = Space;
  strided_view<const T, 1, Space> policy_logp;
  strided_view<const Offset, 1, Space> offsets;
  strided_view<const T, 1, Space> reference_logp;
  strided_view<const T, 1, Space> reference_logp_sum;
  strided_view<const Label, 1, Space> labels;
  strided_view<const T, 1, Space> weights;
};

/// Per-pair values reported by dpo_forward (host or device memory, as
/// dpo_sequences; alias consr::cuda::dpo_pair_metrics); each view is optional
/// (size 0 = not written) and otherwise has P elements. Δ' below means Δ for
/// the standard loss and for consr without length normalization.
template <class T, class Space = host_space>
struct dpo_pair_metrics {
  using space = Space;
  strided_view<T, 1, Space> margin_logit;     ///< Δ (eq. 7) or Δ' (eq. 11)
  strided_view<T, 1, Space> sigma_neg;        ///< σ(−Δ')
  strided_view<T, 1, Space> chosen_reward;    ///< β·Σ(a − a_ref) over scored tokens
  strided_view<T, 1, Space> rejected_reward;  ///< β·Σ(b − b_ref) over scored tokens
  strided_view<T, 1, Space> reward_margin;    ///< chosen_reward − rejected_reward
  strided_view<T, 1, Space> accuracy;         ///< 1 if Δ' > 0, else 0 (NaN gives 0)
  strided_view<T, 1, Space> dpo_loss;         ///< −log σ(Δ') = softplus(−Δ')
  strided_view<T, 1, Space> loss;             ///< the per-pair objective being reduced (L or L')
};

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

/// Names of one side's arguments, for error messages.
struct dpo_side_names {
  const char* side;
  const char* policy_logp;
  const char* offsets;
  const char* reference_logp;
  const char* reference_logp_sum;
  const char* labels;
  const char* weights;
  const char* length_symbol;
};
inline constexpr dpo_side_names dpo_chosen_names{"chosen",         "chosen.policy_logp", "chosen.offsets",
                                                 "chosen.reference_logp", "chosen.reference_logp_sum",
                                                 "chosen.labels",  "chosen.weights",     "|y_w|"};
inline constexpr dpo_side_names dpo_rejected_names{"rejected",         "rejected.policy_logp", "rejected.offsets",
                                                   "rejected.reference_logp", "rejected.reference_logp_sum",
                                                   "rejected.labels",  "rejected.weights",     "|y_l|"};

CONSR_HOST_DEVICE inline bool dpo_uses_weights(const dpo_options& o) noexcept {
  return o.loss == dpo_loss_type::consr && o.visual_weights;
}
CONSR_HOST_DEVICE inline bool dpo_uses_length_normalization(const dpo_options& o) noexcept {
  return o.loss == dpo_loss_type::consr && o.length_normalize;
}

/// Sums of one side of one pair over its scored tokens (the device kernels
/// reduce into this type too).
struct dpo_side_sums {
  double log_ratio = 0.0;        ///< Σ (a − a_ref)
  double weighted_policy = 0.0;  ///< Σ ω a (ω = 1 without weights)
  index_t length = 0;            ///< |y| (scored tokens)
};

template <class T, class Offset, class Label>
index_t dpo_scored_length(const dpo_sequences<T, Offset, Label>& s, index_t pair, std::int64_t ignore_index) {
  return scored_count(s.labels, s.labels.size() != 0, ignore_index, s.offsets[pair], s.offsets[pair + 1]);
}

/// One side of one pair, summed in lane_sums' fixed order (reductions.hpp).
template <class T, class Offset, class Label>
dpo_side_sums dpo_side(const dpo_sequences<T, Offset, Label>& s, index_t pair, const dpo_options& o) {
  const bool has_labels = s.labels.size() != 0;
  const bool per_token_reference = s.reference_logp_sum.size() == 0;
  const bool weighted = dpo_uses_weights(o);
  const std::int64_t ignore = o.ignore_index;
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
          x[1] = weighted ? static_cast<double>(s.weights[t]) * a : a;
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
        const double weighted_a = weighted ? static_cast<double>(s.weights[t]) * a : a;
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

/// The metrics check (host and device): each view empty or one per pair.
template <class T, class Space>
void dpo_check_metrics(const dpo_pair_metrics<T, Space>& m, index_t num_pairs, const char* fn) {
  check_optional_output(m.margin_logit, num_pairs, fn, "metrics.margin_logit", "one per pair");
  check_optional_output(m.sigma_neg, num_pairs, fn, "metrics.sigma_neg", "one per pair");
  check_optional_output(m.chosen_reward, num_pairs, fn, "metrics.chosen_reward", "one per pair");
  check_optional_output(m.rejected_reward, num_pairs, fn, "metrics.rejected_reward", "one per pair");
  check_optional_output(m.reward_margin, num_pairs, fn, "metrics.reward_margin", "one per pair");
  check_optional_output(m.accuracy, num_pairs, fn, "metrics.accuracy", "one per pair");
  check_optional_output(m.dpo_loss, num_pairs, fn, "metrics.dpo_loss", "one per pair");
  check_optional_output(m.loss, num_pairs, fn, "metrics.loss", "one per pair");
}

/// The reference check of one side of n tokens and P pairs: exactly one
/// reference, per token (n values) or per sequence (P).
template <class Side>
void dpo_check_reference(const Side& s, index_t n, index_t num_pairs, const dpo_side_names& names, const char* fn) {
  check_view(s.reference_logp, fn, names.reference_logp);
  check_view(s.reference_logp_sum, fn, names.reference_logp_sum);
  if (s.reference_logp_sum.size() != 0) {
    CONSR_CHECK_ARG(s.reference_logp.size() == 0, fn, names.reference_logp, "has ", s.reference_logp.size(),
                    " elements but '", names.reference_logp_sum,
                    "' is given too; pass exactly one reference (per token or per sequence)");
    check_extent(s.reference_logp_sum, 0, num_pairs, fn, names.reference_logp_sum, "one sum per pair");
  } else {
    CONSR_CHECK_ARG(s.reference_logp.size() == n, fn, names.reference_logp, "has ", s.reference_logp.size(),
                    " elements but must have one per token of '", names.policy_logp, "' (", n, "), or pass '",
                    names.reference_logp_sum, "' with one sum per pair");
  }
}

/// The weights check of one side of n tokens: one per token when the loss
/// uses visual weights, else 0 or one per token.
template <class Side>
void dpo_check_weights(const Side& s, index_t n, const dpo_options& o, const dpo_side_names& names, const char* fn) {
  check_view(s.weights, fn, names.weights);
  if (dpo_uses_weights(o)) {
    CONSR_CHECK_ARG(s.weights.size() == n, fn, names.weights, "has ", s.weights.size(),
                    " elements but the consr loss with visual_weights needs one per token (", n,
                    "); compute them with ", visual_weights_function<typename Side::space>(),
                    " or set visual_weights = false");
  } else {
    CONSR_CHECK_ARG(s.weights.size() == 0 || s.weights.size() == n, fn, names.weights, "has ", s.weights.size(),
                    " elements but must have 0 or one per token (", n, ")");
  }
}

/// One side's checks (device offsets by shape only: their values are checked on the device); returns P.
template <class T, class Offset, class Label, class Space>
index_t dpo_check_side(const dpo_sequences<T, Offset, Label, Space>& s, const dpo_options& o,
                       const dpo_side_names& names, const char* fn) {
  check_view(s.policy_logp, fn, names.policy_logp);
  const index_t n = s.policy_logp.size();
  const index_t num_pairs = check_segment_offsets(s.offsets, n, fn, names.offsets, names.policy_logp);
  dpo_check_reference(s, n, num_pairs, names, fn);
  check_optional_labels(s.labels, n, fn, names.labels);
  dpo_check_weights(s, n, o, names, fn);
  return num_pairs;
}

/// With length normalization, every sequence of the side needs |y| > 0.
template <class T, class Offset, class Label>
void dpo_check_lengths(const dpo_sequences<T, Offset, Label>& s, index_t num_pairs, const dpo_options& o,
                       const dpo_side_names& names, const char* fn) {
  if (!dpo_uses_length_normalization(o)) return;
  for (index_t i = 0; i < num_pairs; ++i) {
    CONSR_CHECK_ARG(dpo_scored_length(s, i, o.ignore_index) > 0, fn, names.side, "pair ", i, " has no scored token (",
                    names.length_symbol,
                    " = 0); length normalization (eq. 11) divides by it: drop the pair or set "
                    "length_normalize = false");
  }
}

/// Validates options and both sides, on the host and before any CUDA launch;
/// returns P. Host data is checked in full (offsets' values, and with length
/// normalization every pair's scored lengths); the device reports what its
/// data gets wrong through error_info (consr/cuda/dpo.cuh).
template <class T, class Offset, class Label, class Space>
index_t dpo_check(const dpo_sequences<T, Offset, Label, Space>& chosen,
                  const dpo_sequences<T, Offset, Label, Space>& rejected, const dpo_options& o, const char* fn) {
  CONSR_CHECK_ARG(o.loss == dpo_loss_type::standard || o.loss == dpo_loss_type::consr, fn, "options.loss",
                  "is not a dpo_loss_type value (", static_cast<int>(o.loss), ")");
  CONSR_CHECK_ARG(o.reduction == loss_reduction::mean || o.reduction == loss_reduction::sum ||
                      o.reduction == loss_reduction::none,
                  fn, "options.reduction", "is not a loss_reduction value (", static_cast<int>(o.reduction), ")");
  CONSR_CHECK_ARG(std::isfinite(o.beta) && o.beta > 0.0, fn, "options.beta", "is ", o.beta,
                  " but must be finite and > 0");
  const index_t num_chosen = dpo_check_side(chosen, o, dpo_chosen_names, fn);
  const index_t num_rejected = dpo_check_side(rejected, o, dpo_rejected_names, fn);
  CONSR_CHECK_ARG(num_rejected == num_chosen, fn, "rejected.offsets", "describes ", num_rejected,
                  " pairs but 'chosen.offsets' describes ", num_chosen, " (both sides must hold the same pairs)");
  if constexpr (std::is_same_v<Space, host_space>) {
    dpo_check_lengths(chosen, num_chosen, o, dpo_chosen_names, fn);
    dpo_check_lengths(rejected, num_chosen, o, dpo_rejected_names, fn);
  }
  return num_chosen;
}

/// The gradient outputs of dpo_backward (host and device): one per token of
/// their side, distinct elements, overlapping neither the inputs nor each other.
template <class T, class Offset, class Label, class Space>
void dpo_check_grads(const dpo_sequences<T, Offset, Label, Space>& chosen,
                     const dpo_sequences<T, Offset, Label, Space>& rejected,
                     const strided_view<T, 1, Space>& grad_chosen, const strided_view<T, 1, Space>& grad_rejected,
                     const char* fn) {
  check_view(grad_chosen, fn, "grad_chosen_logp");
  check_extent(grad_chosen, 0, chosen.policy_logp.size(), fn, "grad_chosen_logp", "one per token of chosen");
  check_no_broadcast(grad_chosen, fn, "grad_chosen_logp");
  check_view(grad_rejected, fn, "grad_rejected_logp");
  check_extent(grad_rejected, 0, rejected.policy_logp.size(), fn, "grad_rejected_logp", "one per token of rejected");
  check_no_broadcast(grad_rejected, fn, "grad_rejected_logp");
  check_disjoint(chosen.policy_logp, grad_chosen, fn, "chosen.policy_logp", "grad_chosen_logp");
  check_disjoint(rejected.policy_logp, grad_rejected, fn, "rejected.policy_logp", "grad_rejected_logp");
  check_disjoint(grad_chosen, grad_rejected, fn, "grad_chosen_logp", "grad_rejected_logp");
}

template <class T, class Offset, class Label>
void dpo_backward_impl(const dpo_sequences<T, Offset, Label>& chosen, const dpo_sequences<T, Offset, Label>& rejected,
                       const dpo_options& o, double grad_loss, const host_view<const T, 1>& grad_loss_per_pair,
                       bool per_pair, const host_view<T, 1>& grad_chosen, const host_view<T, 1>& grad_rejected) {
  constexpr const char* fn = "consr::dpo_backward";
  const index_t num_pairs = dpo_check(chosen, rejected, o, fn);
  if (per_pair) {
    CONSR_CHECK_ARG(o.reduction == loss_reduction::none, fn, "grad_loss_per_pair",
                    "is a per-pair upstream gradient, which needs options.reduction == none; pass a scalar "
                    "grad_loss for mean or sum");
    check_view(grad_loss_per_pair, fn, "grad_loss_per_pair");
    check_extent(grad_loss_per_pair, 0, num_pairs, fn, "grad_loss_per_pair", "one upstream gradient per pair");
  } else {
    CONSR_CHECK_ARG(o.reduction != loss_reduction::none, fn, "options.reduction",
                    "is none, which needs a per-pair upstream gradient (grad_loss_per_pair), not a scalar");
  }
  dpo_check_grads(chosen, rejected, grad_chosen, grad_rejected, fn);

  const bool weighted = dpo_uses_weights(o);
  const double upstream_all =
      o.reduction == loss_reduction::mean ? grad_loss / static_cast<double>(num_pairs) : grad_loss;
  const bool contiguous = dpo_contiguous(chosen, o) && dpo_contiguous(rejected, o);
  const bool unit_grads = contiguous && (grad_chosen.size() <= 1 || grad_chosen.stride(0) == 1) &&
                          (grad_rejected.size() <= 1 || grad_rejected.stride(0) == 1);
  // Each pair's tokens are written by one thread; no value depends on the thread count.
  CONSR_OMP(parallel for schedule(static) if (dpo_parallel_worth_it(chosen, rejected, num_pairs)))
  for (index_t i = 0; i < num_pairs; ++i) {
    const dpo_pair_terms p = dpo_pair(chosen, rejected, i, o, contiguous);
    const double upstream = per_pair ? static_cast<double>(grad_loss_per_pair[i]) : upstream_all;
    const double g = p.grad_scale * upstream;  // ∂L/∂b_t = +g·ω_t, ∂L/∂a_t = −g·ω_t (eqs. 8, 14)
    const auto write_side = [&](const dpo_sequences<T, Offset, Label>& s, const host_view<T, 1>& grad, double sign) {
      if (unit_grads) {
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
template <class T, class Offset, class Label>
double dpo_forward(const dpo_sequences<T, Offset, Label>& chosen, const dpo_sequences<T, Offset, Label>& rejected,
                   const dpo_options& options, dpo_pair_metrics<detail::type_identity_t<T>> metrics = {}) {
  constexpr const char* fn = "consr::dpo_forward";
  const index_t num_pairs = detail::dpo_check(chosen, rejected, options, fn);
  detail::dpo_check_metrics(metrics, num_pairs, fn);

  // The pairs are cut into at most dpo_sum_blocks blocks whose bounds depend on P alone; each
  // block is summed in pair order (by one thread), then the block sums in block order: the
  // result does not depend on the thread count, and nothing is allocated.
  constexpr index_t dpo_sum_blocks = 256;
  const index_t blocks = num_pairs < dpo_sum_blocks ? num_pairs : dpo_sum_blocks;
  double block_sum[dpo_sum_blocks];
  const bool contiguous = detail::dpo_contiguous(chosen, options) && detail::dpo_contiguous(rejected, options);
  CONSR_OMP(parallel for schedule(static) if (detail::dpo_parallel_worth_it(chosen, rejected, num_pairs)))
  for (index_t k = 0; k < blocks; ++k) {
    double sum = 0.0;
    for (index_t i = k * num_pairs / blocks, end = (k + 1) * num_pairs / blocks; i < end; ++i) {
      const detail::dpo_pair_terms p = detail::dpo_pair(chosen, rejected, i, options, contiguous);
      sum += p.objective;
      detail::dpo_store_metrics(metrics, i, p);
    }
    block_sum[k] = sum;
  }
  double total = 0.0;
  for (index_t k = 0; k < blocks; ++k) total += block_sum[k];
  if (options.reduction == loss_reduction::mean) return num_pairs > 0 ? total / static_cast<double>(num_pairs) : 0.0;
  return total;
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
template <class T, class Offset, class Label>
void dpo_backward(const dpo_sequences<T, Offset, Label>& chosen, const dpo_sequences<T, Offset, Label>& rejected,
                  const dpo_options& options, double grad_loss, host_view<T, 1> grad_chosen_logp,
                  host_view<T, 1> grad_rejected_logp) {
  detail::dpo_backward_impl(chosen, rejected, options, grad_loss, host_view<const T, 1>{}, false, grad_chosen_logp,
                            grad_rejected_logp);
}

/// Backward for reduction none: pair i's gradients are scaled by
/// grad_loss_per_pair[i] (the upstream gradient of metrics.loss[i]).
/// Otherwise as the scalar overload. Throws consr::error naming
/// 'grad_loss_per_pair' (reduction is not none, or size != P) and as above.
template <class T, class Offset, class Label>
void dpo_backward(const dpo_sequences<T, Offset, Label>& chosen, const dpo_sequences<T, Offset, Label>& rejected,
                  const dpo_options& options, host_view<const detail::type_identity_t<T>, 1> grad_loss_per_pair,
                  host_view<T, 1> grad_chosen_logp, host_view<T, 1> grad_rejected_logp) {
  detail::dpo_backward_impl(chosen, rejected, options, 0.0, grad_loss_per_pair, true, grad_chosen_logp,
                            grad_rejected_logp);
}

}  // namespace consr
