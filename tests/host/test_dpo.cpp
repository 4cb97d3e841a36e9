// Tests for consr/dpo.hpp: standard DPO (eq. 7), the length-normalized margin
// (eq. 11), visual weights (eqs. 12–13) and the ConSR surrogate (eq. 14).
// The references are plain double loops written here; gradients are checked
// against central finite differences of those loops.
#include <catch2/catch.hpp>

#include <consr/dpo.hpp>

#include "test_util.hpp"

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

using consr::index_t;

namespace {

const double nan_v = std::numeric_limits<double>::quiet_NaN();

template <class F>
consr::error catch_error(F&& f) {
  try {
    f();
  } catch (const consr::error& e) {
    return e;
  }
  return consr::error("<none>", "<no error>", "no error was thrown");
}

// P pairs; each side packed with its own offsets. With `ignored`, about 30% of
// the tokens (never the first of a sequence) carry label -100 and hold NaN in
// every per-token array, so reading one would show.
struct batch {
  index_t pairs = 0;
  std::vector<std::int64_t> off_w{0}, off_l{0};
  std::vector<double> a, a_ref, w_w, b, b_ref, w_l;
  std::vector<std::int64_t> lab_w, lab_l;  // empty: no labels
  std::vector<double> a_ref_sum, b_ref_sum;
};

bool scored(const std::vector<std::int64_t>& lab, index_t t) { return lab.empty() || lab[t] != -100; }

batch make_batch(std::mt19937_64& rng, index_t pairs, bool ignored, int max_len = 6) {
  std::uniform_int_distribution<int> len(1, max_len);
  std::uniform_real_distribution<double> lp(-3.0, -0.05), shift(-1.0, 1.0), weight(0.8, 1.2);
  std::bernoulli_distribution ign(0.3);
  batch B;
  B.pairs = pairs;
  auto fill = [&](std::vector<std::int64_t>& off, std::vector<double>& x, std::vector<double>& ref,
                  std::vector<double>& w, std::vector<std::int64_t>& lab, std::vector<double>& ref_sum) {
    for (index_t i = 0; i < pairs; ++i) {
      const int n = len(rng);
      double sum = 0;
      for (int t = 0; t < n; ++t) {
        const bool drop = ignored && t > 0 && ign(rng);
        if (ignored) lab.push_back(drop ? -100 : 17);
        if (drop) {
          x.push_back(nan_v);
          ref.push_back(nan_v);
          w.push_back(nan_v);
        } else {
          x.push_back(lp(rng));
          ref.push_back(x.back() + shift(rng));
          w.push_back(weight(rng));
          sum += ref.back();
        }
      }
      off.push_back(static_cast<std::int64_t>(x.size()));
      ref_sum.push_back(sum);
    }
  };
  fill(B.off_w, B.a, B.a_ref, B.w_w, B.lab_w, B.a_ref_sum);
  fill(B.off_l, B.b, B.b_ref, B.w_l, B.lab_l, B.b_ref_sum);
  return B;
}

template <class T>
consr::host_view<const T, 1> cview(const std::vector<T>& v) {
  return consr::make_view(v.data(), static_cast<index_t>(v.size()));
}

using seq_t = consr::dpo_sequences<double, std::int64_t>;

seq_t chosen_of(const batch& B, bool per_seq_ref) {
  return seq_t{cview(B.a), cview(B.off_w), per_seq_ref ? consr::host_view<const double, 1>{} : cview(B.a_ref),
               per_seq_ref ? cview(B.a_ref_sum) : consr::host_view<const double, 1>{}, cview(B.lab_w), cview(B.w_w)};
}
seq_t rejected_of(const batch& B, bool per_seq_ref) {
  return seq_t{cview(B.b), cview(B.off_l), per_seq_ref ? consr::host_view<const double, 1>{} : cview(B.b_ref),
               per_seq_ref ? cview(B.b_ref_sum) : consr::host_view<const double, 1>{}, cview(B.lab_l), cview(B.w_l)};
}

// ---- the reference: plain loops over one pair -----------------------------------------------------
struct ref_pair {
  double s_w = 0, s_l = 0, n_w = 0, n_l = 0, ww = 0, wl = 0;
  double delta = 0, sigma_neg = 0, dpo_loss = 0, objective = 0;
};

ref_pair reference_pair(const batch& B, index_t i, const consr::dpo_options& o, bool per_seq_ref,
                        const double* fixed_sigma_neg) {
  const bool consr_loss = o.loss == consr::dpo_loss_type::consr;
  const bool use_w = consr_loss && o.visual_weights;
  ref_pair r;
  for (index_t t = B.off_w[i]; t < B.off_w[i + 1]; ++t) {
    if (!scored(B.lab_w, t)) continue;
    r.s_w += per_seq_ref ? B.a[t] : B.a[t] - B.a_ref[t];
    r.ww += (use_w ? B.w_w[t] : 1.0) * B.a[t];
    r.n_w += 1;
  }
  for (index_t t = B.off_l[i]; t < B.off_l[i + 1]; ++t) {
    if (!scored(B.lab_l, t)) continue;
    r.s_l += per_seq_ref ? B.b[t] : B.b[t] - B.b_ref[t];
    r.wl += (use_w ? B.w_l[t] : 1.0) * B.b[t];
    r.n_l += 1;
  }
  if (per_seq_ref) {
    r.s_w -= B.a_ref_sum[i];
    r.s_l -= B.b_ref_sum[i];
  }
  const double beta = o.beta;
  if (consr_loss && o.length_normalize) {
    r.delta = (r.n_w + r.n_l) / 2.0 * (beta / r.n_w * r.s_w - beta / r.n_l * r.s_l);
  } else {
    r.delta = beta * (r.s_w - r.s_l);
  }
  r.sigma_neg = 1.0 / (1.0 + std::exp(r.delta));
  r.dpo_loss = std::log1p(std::exp(-r.delta));
  if (!consr_loss) {
    r.objective = r.dpo_loss;
  } else {
    const double s = fixed_sigma_neg ? *fixed_sigma_neg : r.sigma_neg;
    r.objective = -s * (r.ww - r.wl) * (o.scale_by_beta ? beta : 1.0);
  }
  return r;
}

// The scalar the backward differentiates: grad_loss · reduce(L) for mean/sum,
// Σ_i u_i L_i for none. For consr, σ(−Δ') is held at the base point.
double reference_upstream_objective(const batch& B, const consr::dpo_options& o, bool per_seq_ref,
                                    const std::vector<double>& base_sigma, double grad_loss,
                                    const std::vector<double>& upstream) {
  double total = 0;
  for (index_t i = 0; i < B.pairs; ++i) {
    const double L = reference_pair(B, i, o, per_seq_ref, &base_sigma[i]).objective;
    total += o.reduction == consr::loss_reduction::none ? upstream[i] * L : L;
  }
  if (o.reduction == consr::loss_reduction::mean) total /= double(B.pairs);
  if (o.reduction != consr::loss_reduction::none) total *= grad_loss;
  return total;
}

const char* name_of(consr::loss_reduction r) {
  return r == consr::loss_reduction::mean ? "mean" : r == consr::loss_reduction::sum ? "sum" : "none";
}

}  // namespace

TEST_CASE("dpo: forward, metrics and backward (finite differences) for every option combination", "[dpo]") {
  std::mt19937_64 rng(2025);
  const batch plain = make_batch(rng, 3, false);
  const batch with_ignored = make_batch(rng, 3, true);
  const double grad_loss = 0.7;
  const std::vector<double> upstream = {0.3, -1.1, 2.0};
  int combos = 0;
  for (int ignored = 0; ignored < 2; ++ignored) {
    batch B = ignored ? with_ignored : plain;
    for (int loss = 0; loss < 2; ++loss)
      for (int ln = 0; ln < 2; ++ln)
        for (int vw = 0; vw < 2; ++vw)
          for (int sbb = 0; sbb < 2; ++sbb)
            for (auto red : {consr::loss_reduction::mean, consr::loss_reduction::sum, consr::loss_reduction::none})
              for (int per_seq = 0; per_seq < 2; ++per_seq) {
                ++combos;
                consr::dpo_options o;
                o.loss = loss ? consr::dpo_loss_type::consr : consr::dpo_loss_type::standard;
                o.length_normalize = ln;
                o.visual_weights = vw;
                o.scale_by_beta = sbb;
                o.reduction = red;
                o.beta = 0.35;
                INFO("loss=" << (loss ? "consr" : "standard") << " length_normalize=" << ln << " visual_weights="
                             << vw << " scale_by_beta=" << sbb << " reduction=" << name_of(red)
                             << " per_seq_ref=" << per_seq << " ignored=" << ignored);
                const index_t P = B.pairs;
                // ---- forward and metrics
                std::vector<double> m_delta(P), m_sig(P), m_cr(P), m_rr(P), m_rm(P), m_acc(P), m_dl(P), m_loss(P);
                consr::dpo_pair_metrics<double> metrics{
                    consr::make_view(m_delta.data(), P), consr::make_view(m_sig.data(), P),
                    consr::make_view(m_cr.data(), P),    consr::make_view(m_rr.data(), P),
                    consr::make_view(m_rm.data(), P),    consr::make_view(m_acc.data(), P),
                    consr::make_view(m_dl.data(), P),    consr::make_view(m_loss.data(), P)};
                const double value =
                    consr::dpo_forward(chosen_of(B, per_seq), rejected_of(B, per_seq), o, metrics);
                double ref_total = 0;
                std::vector<double> base_sigma(P);
                for (index_t i = 0; i < P; ++i) {
                  const ref_pair r = reference_pair(B, i, o, per_seq, nullptr);
                  base_sigma[i] = r.sigma_neg;
                  ref_total += r.objective;
                  CHECK(m_delta[i] == Approx(r.delta).epsilon(1e-12).margin(1e-14));
                  CHECK(m_sig[i] == Approx(r.sigma_neg).epsilon(1e-12));
                  CHECK(m_cr[i] == Approx(o.beta * r.s_w).epsilon(1e-12).margin(1e-14));
                  CHECK(m_rr[i] == Approx(o.beta * r.s_l).epsilon(1e-12).margin(1e-14));
                  CHECK(m_rm[i] == Approx(o.beta * (r.s_w - r.s_l)).epsilon(1e-12).margin(1e-14));
                  CHECK(m_acc[i] == (r.delta > 0 ? 1.0 : 0.0));
                  CHECK(m_dl[i] == Approx(r.dpo_loss).epsilon(1e-12));
                  CHECK(m_loss[i] == Approx(r.objective).epsilon(1e-12).margin(1e-14));
                }
                const double ref_value = red == consr::loss_reduction::mean ? ref_total / double(P) : ref_total;
                CHECK(value == Approx(ref_value).epsilon(1e-12).margin(1e-14));

                // ---- backward against central differences of the reference
                std::vector<double> ga(B.a.size(), nan_v), gb(B.b.size(), nan_v);
                if (red == consr::loss_reduction::none) {
                  consr::dpo_backward(chosen_of(B, per_seq), rejected_of(B, per_seq), o, cview(upstream),
                                      consr::make_view(ga.data(), ga.size()), consr::make_view(gb.data(), gb.size()));
                } else {
                  consr::dpo_backward(chosen_of(B, per_seq), rejected_of(B, per_seq), o, grad_loss,
                                      consr::make_view(ga.data(), ga.size()), consr::make_view(gb.data(), gb.size()));
                }
                const double h = 1e-5;
                auto fd = [&](std::vector<double>& x, std::size_t t) {
                  const double keep = x[t];
                  x[t] = keep + h;
                  const double fp = reference_upstream_objective(B, o, per_seq, base_sigma, grad_loss, upstream);
                  x[t] = keep - h;
                  const double fm = reference_upstream_objective(B, o, per_seq, base_sigma, grad_loss, upstream);
                  x[t] = keep;
                  return (fp - fm) / (2 * h);
                };
                for (std::size_t t = 0; t < B.a.size(); ++t) {
                  if (!scored(B.lab_w, t)) {
                    CHECK(ga[t] == 0.0);  // ignored: exactly zero
                    continue;
                  }
                  CHECK(ga[t] == Approx(fd(B.a, t)).epsilon(1e-6).margin(1e-9));
                }
                for (std::size_t t = 0; t < B.b.size(); ++t) {
                  if (!scored(B.lab_l, t)) {
                    CHECK(gb[t] == 0.0);
                    continue;
                  }
                  CHECK(gb[t] == Approx(fd(B.b, t)).epsilon(1e-6).margin(1e-9));
                }
              }
  }
  CHECK(combos == 192);
}

TEST_CASE("dpo: without labels the sums are the same bits as with every token labelled scored", "[dpo]") {
  // Without labels dpo_forward / dpo_backward accumulate only the sums the objective needs (one or
  // two lanes instead of three); with labels, all three. Each lane's sum must not change.
  std::mt19937_64 rng(77);
  batch B = make_batch(rng, 5, false, 41);  // lengths 1..41: full groups of 8 and a partial one
  batch L = B;
  L.lab_w.assign(B.a.size(), 17);
  L.lab_l.assign(B.b.size(), 17);
  for (int loss = 0; loss < 2; ++loss)
    for (int vw = 0; vw < 2; ++vw)
      for (int per_seq = 0; per_seq < 2; ++per_seq) {
        consr::dpo_options o;
        o.loss = loss ? consr::dpo_loss_type::consr : consr::dpo_loss_type::standard;
        o.visual_weights = vw;
        INFO("loss=" << loss << " visual_weights=" << vw << " per_seq_ref=" << per_seq);
        const index_t P = B.pairs;
        std::vector<std::vector<double>> m(2, std::vector<double>(8 * static_cast<std::size_t>(P)));
        std::vector<double> value(2);
        std::vector<std::vector<double>> ga(2, std::vector<double>(B.a.size())), gb(2, std::vector<double>(B.b.size()));
        for (int k = 0; k < 2; ++k) {
          const batch& X = k == 0 ? B : L;
          double* d = m[static_cast<std::size_t>(k)].data();
          consr::dpo_pair_metrics<double> metrics{consr::make_view(d, P),         consr::make_view(d + P, P),
                                                  consr::make_view(d + 2 * P, P), consr::make_view(d + 3 * P, P),
                                                  consr::make_view(d + 4 * P, P), consr::make_view(d + 5 * P, P),
                                                  consr::make_view(d + 6 * P, P), consr::make_view(d + 7 * P, P)};
          value[static_cast<std::size_t>(k)] = consr::dpo_forward(chosen_of(X, per_seq), rejected_of(X, per_seq), o, metrics);
          consr::dpo_backward(chosen_of(X, per_seq), rejected_of(X, per_seq), o, 0.7,
                              consr::make_view(ga[static_cast<std::size_t>(k)].data(), ga[0].size()),
                              consr::make_view(gb[static_cast<std::size_t>(k)].data(), gb[0].size()));
        }
        CHECK(std::isfinite(value[0]));
        CHECK(value[0] == value[1]);  // exact
        CHECK(m[0] == m[1]);
        CHECK(ga[0] == ga[1]);
        CHECK(gb[0] == gb[1]);
      }
}

namespace {

// One side's arrays in T, taken from a batch, as contiguous views or spread to stride 2 (the gaps
// hold NaN and label 17; a loop that read them would show).
template <class T>
struct side_arrays {
  std::vector<T> logp, ref, ref_sum, weights;
  std::vector<std::int64_t> offsets, labels;
  side_arrays(const batch& B, bool chosen) {
    const auto& x = chosen ? B.a : B.b;
    const auto& r = chosen ? B.a_ref : B.b_ref;
    const auto& rs = chosen ? B.a_ref_sum : B.b_ref_sum;
    const auto& w = chosen ? B.w_w : B.w_l;
    logp.assign(x.begin(), x.end());
    ref.assign(r.begin(), r.end());
    ref_sum.assign(rs.begin(), rs.end());
    weights.assign(w.begin(), w.end());
    offsets = chosen ? B.off_w : B.off_l;
    labels = chosen ? B.lab_w : B.lab_l;
  }
  template <class V>
  static std::vector<V> spread(const std::vector<V>& v, V gap) {
    std::vector<V> out(2 * v.size(), gap);
    for (std::size_t t = 0; t < v.size(); ++t) out[2 * t] = v[t];
    return out;
  }
};

template <class V>
consr::host_view<const V, 1> view_of(const std::vector<V>& v, bool strided) {
  const index_t n = static_cast<index_t>(strided ? v.size() / 2 : v.size());
  return consr::make_strided_view(v.data(), std::array<index_t, 1>{n}, std::array<index_t, 1>{strided ? 2 : 1});
}

// dpo_forward (loss, every metric) and dpo_backward (both gradients) of one configuration, with
// every per-token array contiguous or at stride 2; returns the bytes of everything written.
template <class T>
std::vector<unsigned char> run_dpo_bytes(const side_arrays<T>& w, const side_arrays<T>& l, bool per_seq_w,
                                         bool per_seq_l, const consr::dpo_options& o, bool strided) {
  const T nan_t = std::numeric_limits<T>::quiet_NaN();
  std::vector<T> buf[2][3];  // logp, ref, weights per side
  std::vector<std::int64_t> lab[2];
  consr::dpo_sequences<T, std::int64_t> seq[2];
  const side_arrays<T>* sides[2] = {&w, &l};
  const bool per_seq[2] = {per_seq_w, per_seq_l};
  for (int k = 0; k < 2; ++k) {
    const side_arrays<T>& s = *sides[k];
    buf[k][0] = strided ? s.spread(s.logp, nan_t) : s.logp;
    buf[k][1] = strided ? s.spread(s.ref, nan_t) : s.ref;
    buf[k][2] = strided ? s.spread(s.weights, nan_t) : s.weights;
    lab[k] = strided ? s.spread(s.labels, std::int64_t{17}) : s.labels;
    seq[k].policy_logp = view_of(buf[k][0], strided);
    seq[k].offsets = cview(s.offsets);
    if (per_seq[k]) seq[k].reference_logp_sum = cview(s.ref_sum);
    else seq[k].reference_logp = view_of(buf[k][1], strided);
    seq[k].labels = view_of(lab[k], strided);
    seq[k].weights = view_of(buf[k][2], strided);
  }
  const index_t P = static_cast<index_t>(w.offsets.size()) - 1;
  std::vector<T> m(8 * static_cast<std::size_t>(P));
  T* d = m.data();
  consr::dpo_pair_metrics<T> metrics{consr::make_view(d, P),         consr::make_view(d + P, P),
                                     consr::make_view(d + 2 * P, P), consr::make_view(d + 3 * P, P),
                                     consr::make_view(d + 4 * P, P), consr::make_view(d + 5 * P, P),
                                     consr::make_view(d + 6 * P, P), consr::make_view(d + 7 * P, P)};
  const double value = consr::dpo_forward(seq[0], seq[1], o, metrics);
  const std::size_t nw = w.logp.size(), nl = l.logp.size();
  std::vector<T> ga((strided ? 2 : 1) * nw, nan_t), gb((strided ? 2 : 1) * nl, nan_t);
  const auto gview = [&](std::vector<T>& g, std::size_t n) {
    return consr::make_strided_view(g.data(), std::array<index_t, 1>{static_cast<index_t>(n)},
                                    std::array<index_t, 1>{strided ? 2 : 1});
  };
  consr::dpo_backward(seq[0], seq[1], o, 0.7, gview(ga, nw), gview(gb, nl));
  std::vector<unsigned char> bytes(sizeof value);
  std::memcpy(bytes.data(), &value, sizeof value);
  const auto append = [&](const T* p, std::size_t n, std::size_t step) {
    for (std::size_t t = 0; t < n; ++t) {
      const auto* c = reinterpret_cast<const unsigned char*>(p + t * step);
      bytes.insert(bytes.end(), c, c + sizeof(T));
    }
  };
  append(m.data(), m.size(), 1);
  append(ga.data(), nw, strided ? 2 : 1);
  append(gb.data(), nl, strided ? 2 : 1);
  return bytes;
}

template <class T>
void check_contiguous_matches_strided() {
  std::mt19937_64 rng(91);
  const batch plain = make_batch(rng, 9, false, 41);  // lengths 1..41: the two sides' groups of eight differ
  const batch ignored = make_batch(rng, 9, true, 41);
  int combos = 0;
  for (int labels_w = 0; labels_w < 2; ++labels_w)
    for (int labels_l = 0; labels_l < 2; ++labels_l)
      for (int per_seq_w = 0; per_seq_w < 2; ++per_seq_w)
        for (int per_seq_l = 0; per_seq_l < 2; ++per_seq_l)
          for (int loss = 0; loss < 2; ++loss)
            for (int vw = 0; vw < 2; ++vw)
              for (int ln = 0; ln < 2; ++ln) {
                const side_arrays<T> w(labels_w ? ignored : plain, true), l(labels_l ? ignored : plain, false);
                consr::dpo_options o;
                o.loss = loss ? consr::dpo_loss_type::consr : consr::dpo_loss_type::standard;
                o.visual_weights = vw;
                o.length_normalize = ln;
                o.beta = 0.3;
                INFO("labels " << labels_w << labels_l << " per_seq_ref " << per_seq_w << per_seq_l << " loss "
                               << loss << " visual_weights " << vw << " length_normalize " << ln);
                const auto contiguous = run_dpo_bytes(w, l, per_seq_w, per_seq_l, o, false);
                const auto strided = run_dpo_bytes(w, l, per_seq_w, per_seq_l, o, true);
                CHECK(contiguous == strided);
                ++combos;
              }
  CHECK(combos == 128);
}

}  // namespace

TEST_CASE("dpo: contiguous views (both sides' sums interleaved, vector lanes) give the same bits as strided ones",
          "[dpo]") {
  // Contiguous sides go through detail/dpo_host.hpp, strided ones through lane_sums; the sums must
  // be the same additions in the same order. Sides may differ in labels and reference kind.
  SECTION("double") { check_contiguous_matches_strided<double>(); }
  SECTION("float") { check_contiguous_matches_strided<float>(); }
}

TEST_CASE("dpo: with scale_by_beta, no length normalization and alpha = 0 the ConSR gradient is the DPO gradient",
          "[dpo]") {
  // Claim checked: bitwise equality (the same floating-point operations).
  std::mt19937_64 rng(11);
  for (int ignored = 0; ignored < 2; ++ignored) {
    batch B = make_batch(rng, 4, ignored);
    // ω = 1 from eq. 13 with α = 0, through the library's own visual_weights.
    consr::visual_weight_options vwo;
    vwo.alpha = 0.0;
    std::vector<double> clean(B.a.size(), -0.1), corrupt(B.a.size(), -2.0);
    consr::visual_weights(cview(clean), cview(corrupt), consr::weight_side::chosen,
                          consr::make_view(B.w_w.data(), B.w_w.size()), vwo);
    clean.assign(B.b.size(), -0.1);
    corrupt.assign(B.b.size(), -2.0);
    consr::visual_weights(cview(clean), cview(corrupt), consr::weight_side::rejected,
                          consr::make_view(B.w_l.data(), B.w_l.size()), vwo);
    for (double w : B.w_w) REQUIRE(w == 1.0);
    for (double w : B.w_l) REQUIRE(w == 1.0);
    for (auto red : {consr::loss_reduction::mean, consr::loss_reduction::sum}) {
      for (int vw = 0; vw < 2; ++vw) {
        consr::dpo_options standard;
        standard.loss = consr::dpo_loss_type::standard;
        standard.reduction = red;
        consr::dpo_options con = standard;
        con.loss = consr::dpo_loss_type::consr;
        con.scale_by_beta = true;
        con.length_normalize = false;
        con.visual_weights = vw;
        std::vector<double> ga1(B.a.size()), gb1(B.b.size()), ga2(B.a.size()), gb2(B.b.size());
        consr::dpo_backward(chosen_of(B, false), rejected_of(B, false), standard, 1.3,
                            consr::make_view(ga1.data(), ga1.size()), consr::make_view(gb1.data(), gb1.size()));
        consr::dpo_backward(chosen_of(B, false), rejected_of(B, false), con, 1.3,
                            consr::make_view(ga2.data(), ga2.size()), consr::make_view(gb2.data(), gb2.size()));
        CHECK(std::memcmp(ga1.data(), ga2.data(), ga1.size() * sizeof(double)) == 0);
        CHECK(std::memcmp(gb1.data(), gb2.data(), gb1.size() * sizeof(double)) == 0);
        // and the value of that gradient is eq. 8: −β σ(−Δ) per chosen token.
        std::vector<double> sig(4);
        consr::dpo_pair_metrics<double> m;
        m.sigma_neg = consr::make_view(sig.data(), 4);
        consr::dpo_forward(chosen_of(B, false), rejected_of(B, false), standard, m);
        const double scale = red == consr::loss_reduction::mean ? 1.3 / 4.0 : 1.3;
        for (index_t i = 0; i < 4; ++i)
          for (index_t t = B.off_w[i]; t < B.off_w[i + 1]; ++t)
            if (scored(B.lab_w, t)) CHECK(ga1[t] == Approx(-standard.beta * sig[i] * scale).epsilon(1e-14));
      }
    }
  }
}

TEST_CASE("dpo: policy == reference gives log 2; swapping sides flips the margin", "[dpo]") {
  std::mt19937_64 rng(3);
  batch B = make_batch(rng, 5, true);
  B.a_ref = B.a;
  B.b_ref = B.b;
  consr::dpo_options o;
  o.loss = consr::dpo_loss_type::standard;
  CHECK(consr::dpo_forward(chosen_of(B, false), rejected_of(B, false), o) == Approx(std::log(2.0)).epsilon(1e-14));
  o.reduction = consr::loss_reduction::sum;
  CHECK(consr::dpo_forward(chosen_of(B, false), rejected_of(B, false), o) ==
        Approx(5 * std::log(2.0)).epsilon(1e-14));
  // consr reports the same DPO loss and σ(−Δ') = 1/2.
  o.loss = consr::dpo_loss_type::consr;
  std::vector<double> dl(5), sig(5);
  consr::dpo_pair_metrics<double> m;
  m.dpo_loss = consr::make_view(dl.data(), 5);
  m.sigma_neg = consr::make_view(sig.data(), 5);
  consr::dpo_forward(chosen_of(B, false), rejected_of(B, false), o, m);
  for (index_t i = 0; i < 5; ++i) {
    CHECK(dl[i] == Approx(std::log(2.0)).epsilon(1e-15));
    CHECK(sig[i] == 0.5);
  }

  batch C = make_batch(rng, 5, true);
  for (int loss = 0; loss < 2; ++loss)
    for (int ln = 0; ln < 2; ++ln) {
      consr::dpo_options q;
      q.loss = loss ? consr::dpo_loss_type::consr : consr::dpo_loss_type::standard;
      q.length_normalize = ln;
      std::vector<double> d1(5), d2(5), r1(5), r2(5);
      consr::dpo_pair_metrics<double> m1, m2;
      m1.margin_logit = consr::make_view(d1.data(), 5);
      m1.reward_margin = consr::make_view(r1.data(), 5);
      m2.margin_logit = consr::make_view(d2.data(), 5);
      m2.reward_margin = consr::make_view(r2.data(), 5);
      consr::dpo_forward(chosen_of(C, false), rejected_of(C, false), q, m1);
      consr::dpo_forward(rejected_of(C, false), chosen_of(C, false), q, m2);
      for (index_t i = 0; i < 5; ++i) {
        CHECK(d2[i] == -d1[i]);
        CHECK(r2[i] == -r1[i]);
        CHECK(d1[i] != 0.0);
      }
    }
}

TEST_CASE("dpo: sigma and softplus stay accurate and finite for |delta| up to 1e4", "[dpo]") {
  // One token per side; reference zero; Δ = β (a − b) with β = 0.1.
  for (double delta : {1e4, -1e4, 745.0, -745.0, 40.0, -40.0, 0.0}) {
    const std::vector<double> a = {delta / 0.1}, b = {0.0}, zero = {0.0};
    const std::vector<std::int64_t> off = {0, 1};
    seq_t w{cview(a), cview(off), cview(zero), {}, {}, {}};
    seq_t l{cview(b), cview(off), cview(zero), {}, {}, {}};
    consr::dpo_options o;
    o.loss = consr::dpo_loss_type::standard;
    std::vector<double> d(1), sig(1), dl(1);
    consr::dpo_pair_metrics<double> m;
    m.margin_logit = consr::make_view(d.data(), 1);
    m.sigma_neg = consr::make_view(sig.data(), 1);
    m.dpo_loss = consr::make_view(dl.data(), 1);
    const double value = consr::dpo_forward(w, l, o, m);
    INFO("delta = " << delta);
    REQUIRE(d[0] == Approx(delta).epsilon(1e-14));
    CHECK(std::isfinite(value));
    CHECK(value == dl[0]);
    // References: −log σ(Δ) = Δ⁻ + log1p(e^−|Δ|), σ(−Δ) = e^−Δ/(1 + e^−Δ) for Δ > 0.
    if (delta > 0) {
      CHECK(dl[0] == Approx(std::exp(-d[0])).epsilon(1e-12).margin(0));  // log1p(x) ≈ x for tiny x
      CHECK(sig[0] == Approx(std::exp(-d[0])).epsilon(1e-12).margin(0));
    } else if (delta < 0) {
      CHECK(dl[0] == -d[0]);  // −Δ + log1p(e^Δ) with e^Δ below half an ulp of −Δ
      CHECK(sig[0] == Approx(1.0).epsilon(1e-15));
    } else {
      CHECK(dl[0] == Approx(std::log(2.0)).epsilon(1e-15));
    }
    std::vector<double> ga(1), gb(1);
    consr::dpo_backward(w, l, o, 1.0, consr::make_view(ga.data(), 1), consr::make_view(gb.data(), 1));
    CHECK(std::isfinite(ga[0]));
    CHECK(ga[0] == -gb[0]);
  }
}

TEST_CASE("dpo: float log-probs agree with double", "[dpo]") {
  std::mt19937_64 rng(8);
  const batch B = make_batch(rng, 4, true);
  auto to_f = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
  const auto a = to_f(B.a), ar = to_f(B.a_ref), ww = to_f(B.w_w), b = to_f(B.b), br = to_f(B.b_ref), wl = to_f(B.w_l);
  using fseq = consr::dpo_sequences<float, std::int64_t>;
  fseq w{cview(a), cview(B.off_w), cview(ar), {}, cview(B.lab_w), cview(ww)};
  fseq l{cview(b), cview(B.off_l), cview(br), {}, cview(B.lab_l), cview(wl)};
  // Compare against the double computation on the float-rounded inputs.
  batch D = B;
  D.a.assign(a.begin(), a.end());
  D.a_ref.assign(ar.begin(), ar.end());
  D.w_w.assign(ww.begin(), ww.end());
  D.b.assign(b.begin(), b.end());
  D.b_ref.assign(br.begin(), br.end());
  D.w_l.assign(wl.begin(), wl.end());
  consr::dpo_options o;
  const double vf = consr::dpo_forward(w, l, o);
  const double vd = consr::dpo_forward(chosen_of(D, false), rejected_of(D, false), o);
  CHECK(vf == Approx(vd).epsilon(1e-12));  // both accumulate in double
  std::vector<float> ga(a.size()), gb(b.size());
  std::vector<double> gda(a.size()), gdb(b.size());
  consr::dpo_backward(w, l, o, 1.0, consr::make_view(ga.data(), ga.size()), consr::make_view(gb.data(), gb.size()));
  consr::dpo_backward(chosen_of(D, false), rejected_of(D, false), o, 1.0, consr::make_view(gda.data(), gda.size()),
                      consr::make_view(gdb.data(), gdb.size()));
  for (std::size_t t = 0; t < ga.size(); ++t) CHECK(ga[t] == static_cast<float>(gda[t]));
  for (std::size_t t = 0; t < gb.size(); ++t) CHECK(gb[t] == static_cast<float>(gdb[t]));
}

TEST_CASE("dpo: long sequences above the parallel threshold: reference values, same bits for 1, 2 and 3 threads",
          "[dpo][threads]") {
  // Sequences of 1-400 tokens (the per-pair sums run over eight interleaved partial sums plus a
  // tail) and enough tokens that the pairs are split over threads.
  std::mt19937_64 rng(2026);
  const batch B = make_batch(rng, 300, true, 400);  // P > 256: blocks of more than one pair in the loss sum
  REQUIRE(static_cast<index_t>(B.a.size() + B.b.size()) >= consr::detail::segment_parallel_threshold);
  for (const bool per_seq_ref : {false, true}) {
    for (const bool consr_loss : {false, true}) {
      consr::dpo_options o;
      o.beta = 0.2;
      o.loss = consr_loss ? consr::dpo_loss_type::consr : consr::dpo_loss_type::standard;
      CAPTURE(per_seq_ref, consr_loss);
      // Reference: plain loops; the backward is −/+ σ(−Δ')·ω (×β) / P on scored tokens.
      double ref_loss = 0;
      std::vector<double> ref_ga(B.a.size(), 0.0), ref_gb(B.b.size(), 0.0);
      for (index_t i = 0; i < B.pairs; ++i) {
        const ref_pair r = reference_pair(B, i, o, per_seq_ref, nullptr);
        ref_loss += r.objective / double(B.pairs);
        const double g = r.sigma_neg * (consr_loss && !o.scale_by_beta ? 1.0 : o.beta) / double(B.pairs);
        for (index_t t = B.off_w[i]; t < B.off_w[i + 1]; ++t)
          if (scored(B.lab_w, t)) ref_ga[t] = -g * (consr_loss ? B.w_w[t] : 1.0);
        for (index_t t = B.off_l[i]; t < B.off_l[i + 1]; ++t)
          if (scored(B.lab_l, t)) ref_gb[t] = g * (consr_loss ? B.w_l[t] : 1.0);
      }
      double loss[3];
      std::vector<double> margin[3], ga[3], gb[3];
      consr_test::for_thread_counts(3, [&](int k) {
        margin[k].assign(static_cast<std::size_t>(B.pairs), 0.0);
        ga[k].assign(B.a.size(), nan_v);
        gb[k].assign(B.b.size(), nan_v);
        consr::dpo_pair_metrics<double> m;
        m.margin_logit = consr::make_view(margin[k].data(), B.pairs);
        loss[k] = consr::dpo_forward(chosen_of(B, per_seq_ref), rejected_of(B, per_seq_ref), o, m);
        consr::dpo_backward(chosen_of(B, per_seq_ref), rejected_of(B, per_seq_ref), o, 1.0,
                            consr::make_view(ga[k].data(), ga[k].size()), consr::make_view(gb[k].data(), gb[k].size()));
      });
      CHECK(loss[0] == Approx(ref_loss).epsilon(1e-12));
      for (index_t i = 0; i < B.pairs; ++i) {
        const ref_pair r = reference_pair(B, i, o, per_seq_ref, nullptr);
        CHECK(margin[0][i] == Approx(r.delta).epsilon(1e-12).margin(1e-12));
      }
      for (std::size_t t = 0; t < ref_ga.size(); ++t) CHECK(ga[0][t] == Approx(ref_ga[t]).epsilon(1e-12));
      for (std::size_t t = 0; t < ref_gb.size(); ++t) CHECK(gb[0][t] == Approx(ref_gb[t]).epsilon(1e-12));
      for (int k = 1; k < 3; ++k) {
        CHECK(std::memcmp(&loss[0], &loss[k], sizeof(double)) == 0);
        CHECK(std::memcmp(margin[0].data(), margin[k].data(), margin[0].size() * sizeof(double)) == 0);
        CHECK(std::memcmp(ga[0].data(), ga[k].data(), ga[0].size() * sizeof(double)) == 0);
        CHECK(std::memcmp(gb[0].data(), gb[k].data(), gb[0].size() * sizeof(double)) == 0);
      }
    }
  }
}

TEST_CASE("dpo: saved gradient scales and dpo_forward_backward give dpo_forward / dpo_backward's bits (1-3 threads)",
          "[dpo][threads]") {
  std::mt19937_64 rng(404);
  const batch B = make_batch(rng, 300, true, 400);  // above the parallel threshold, ignored tokens
  REQUIRE(static_cast<index_t>(B.a.size() + B.b.size()) >= consr::detail::segment_parallel_threshold);
  const index_t P = B.pairs;
  std::vector<double> upstream(static_cast<std::size_t>(P));
  for (index_t i = 0; i < P; ++i) upstream[static_cast<std::size_t>(i)] = 0.5 + 0.01 * static_cast<double>(i % 7);
  int combos = 0;
  for (int per_seq = 0; per_seq < 2; ++per_seq)
    for (int loss = 0; loss < 2; ++loss)
      for (int vw = 0; vw < 2; ++vw)
        for (auto red : {consr::loss_reduction::mean, consr::loss_reduction::sum, consr::loss_reduction::none}) {
          consr::dpo_options o;
          o.loss = loss ? consr::dpo_loss_type::consr : consr::dpo_loss_type::standard;
          o.visual_weights = vw;
          o.reduction = red;
          o.beta = 0.2;
          INFO("per_seq_ref=" << per_seq << " loss=" << loss << " visual_weights=" << vw
                              << " reduction=" << name_of(red));
          const seq_t w = chosen_of(B, per_seq), l = rejected_of(B, per_seq);
          const auto metrics_of = [&](std::vector<double>& m) {
            m.assign(8 * static_cast<std::size_t>(P), nan_v);
            double* d = m.data();
            return consr::dpo_pair_metrics<double>{consr::make_view(d, P),         consr::make_view(d + P, P),
                                                   consr::make_view(d + 2 * P, P), consr::make_view(d + 3 * P, P),
                                                   consr::make_view(d + 4 * P, P), consr::make_view(d + 5 * P, P),
                                                   consr::make_view(d + 6 * P, P), consr::make_view(d + 7 * P, P)};
          };
          const auto backward = [&](std::vector<double>& ga, std::vector<double>& gb,
                                    consr::host_view<const double, 1> saved) {
            ga.assign(B.a.size(), nan_v);
            gb.assign(B.b.size(), nan_v);
            const auto va = consr::make_view(ga.data(), ga.size()), vb = consr::make_view(gb.data(), gb.size());
            if (red == consr::loss_reduction::none) consr::dpo_backward(w, l, o, cview(upstream), va, vb, saved);
            else consr::dpo_backward(w, l, o, 0.7, va, vb, saved);
          };
          // The existing path, one thread.
          std::vector<double> m0, ga0, gb0;
          double loss0 = 0;
          consr_test::for_thread_counts(1, [&](int) {
            loss0 = consr::dpo_forward(w, l, o, metrics_of(m0));
            backward(ga0, gb0, {});
          });
          consr_test::for_thread_counts(3, [&](int k) {
            INFO("threads=" << k + 1);
            std::vector<double> m1, ga1, gb1, saved(static_cast<std::size_t>(P), nan_v);
            const double loss1 = consr::dpo_forward(w, l, o, metrics_of(m1), consr::make_view(saved.data(), P));
            backward(ga1, gb1, cview(saved));
            CHECK(std::memcmp(&loss0, &loss1, sizeof loss0) == 0);
            CHECK(std::memcmp(m0.data(), m1.data(), m0.size() * sizeof(double)) == 0);
            CHECK(std::memcmp(ga0.data(), ga1.data(), ga0.size() * sizeof(double)) == 0);
            CHECK(std::memcmp(gb0.data(), gb1.data(), gb0.size() * sizeof(double)) == 0);
            if (red == consr::loss_reduction::none) return;
            std::vector<double> m2, ga2(B.a.size(), nan_v), gb2(B.b.size(), nan_v);
            const double loss2 = consr::dpo_forward_backward(w, l, o, 0.7, consr::make_view(ga2.data(), ga2.size()),
                                                             consr::make_view(gb2.data(), gb2.size()), metrics_of(m2));
            CHECK(std::memcmp(&loss0, &loss2, sizeof loss0) == 0);
            CHECK(std::memcmp(m0.data(), m2.data(), m0.size() * sizeof(double)) == 0);
            CHECK(std::memcmp(ga0.data(), ga2.data(), ga0.size() * sizeof(double)) == 0);
            CHECK(std::memcmp(gb0.data(), gb2.data(), gb0.size() * sizeof(double)) == 0);
            if (k != 0) return;
            // dpo_forward_backward against the plain double loops: the value, and the gradient
            // −/+ σ(−Δ')·ω (×β for eq. 7) · upstream on scored tokens, 0 on ignored ones.
            double ref_total = 0;
            const double up = red == consr::loss_reduction::mean ? 0.7 / double(P) : 0.7;
            for (index_t i = 0; i < P; ++i) {
              const ref_pair r = reference_pair(B, i, o, per_seq, nullptr);
              ref_total += r.objective;
              const double g = r.sigma_neg * (loss ? 1.0 : o.beta) * up;
              for (index_t t = B.off_w[i]; t < B.off_w[i + 1]; ++t)
                CHECK(ga2[t] == (scored(B.lab_w, t) ? Approx(-g * (loss && vw ? B.w_w[t] : 1.0)).epsilon(1e-12)
                                                    : Approx(0.0).margin(0.0)));
              for (index_t t = B.off_l[i]; t < B.off_l[i + 1]; ++t)
                CHECK(gb2[t] == (scored(B.lab_l, t) ? Approx(g * (loss && vw ? B.w_l[t] : 1.0)).epsilon(1e-12)
                                                    : Approx(0.0).margin(0.0)));
            }
            CHECK(loss2 == Approx(red == consr::loss_reduction::mean ? ref_total / double(P) : ref_total)
                               .epsilon(1e-12));
          });
          ++combos;
        }
  CHECK(combos == 24);
}

TEST_CASE("dpo: length normalization with an empty sequence is an error naming the pair", "[dpo]") {
  // Pair 1's rejected side has only ignored tokens; pair 2's chosen side is empty.
  const std::vector<double> a = {-1, -2, -1, -3}, b = {-2, -1, -1, -1};
  const std::vector<std::int64_t> off_w = {0, 2, 4, 4}, off_l = {0, 1, 3, 4};
  const std::vector<std::int64_t> lab_w = {1, 1, 1, 1}, lab_l = {1, -100, -100, 1};
  seq_t w{cview(a), cview(off_w), cview(a), {}, cview(lab_w), {}};
  seq_t l{cview(b), cview(off_l), cview(b), {}, cview(lab_l), {}};
  consr::dpo_options o;
  o.visual_weights = false;
  auto e = catch_error([&] { consr::dpo_forward(w, l, o); });
  CHECK(e.argument() == "chosen");
  CHECK_THAT(e.what(), Catch::Contains("pair 2") && Catch::Contains("|y_w| = 0"));
  // Chosen fixed: now the rejected side of pair 1 is reported.
  const std::vector<std::int64_t> off_w2 = {0, 1, 3, 4};
  seq_t w2{cview(a), cview(off_w2), cview(a), {}, cview(lab_w), {}};
  e = catch_error([&] { consr::dpo_forward(w2, l, o); });
  CHECK(e.argument() == "rejected");
  CHECK_THAT(e.what(), Catch::Contains("pair 1") && Catch::Contains("|y_l| = 0"));
  std::vector<double> ga(4), gb(4);
  e = catch_error([&] {
    consr::dpo_backward(w2, l, o, 1.0, consr::make_view(ga.data(), 4), consr::make_view(gb.data(), 4));
  });
  CHECK(e.argument() == "rejected");
  // Without length normalization, and for standard DPO, an empty side is fine (its sums are 0).
  o.length_normalize = false;
  CHECK(std::isfinite(consr::dpo_forward(w, l, o)));
  o.length_normalize = true;
  o.loss = consr::dpo_loss_type::standard;
  CHECK(std::isfinite(consr::dpo_forward(w, l, o)));
}

TEST_CASE("dpo: invalid input names the argument", "[dpo]") {
  std::mt19937_64 rng(4);
  batch B = make_batch(rng, 3, false);
  auto arg = [](auto&& f) { return catch_error(f).argument(); };
  consr::dpo_options o;
  auto fwd = [&](const seq_t& w, const seq_t& l, const consr::dpo_options& opt) {
    return [=] { consr::dpo_forward(w, l, opt); };
  };
  const seq_t w = chosen_of(B, false), l = rejected_of(B, false);
  consr::dpo_options bad = o;
  bad.beta = 0.0;
  CHECK(arg(fwd(w, l, bad)) == "options.beta");
  bad.beta = nan_v;
  CHECK(arg(fwd(w, l, bad)) == "options.beta");
  bad.beta = -0.1;
  CHECK(arg(fwd(w, l, bad)) == "options.beta");
  consr::dpo_options bad_enum = o;
  bad_enum.loss = static_cast<consr::dpo_loss_type>(5);
  CHECK(catch_error(fwd(w, l, bad_enum)).what() ==
        std::string("consr::dpo_forward: argument 'options.loss': is not a dpo_loss_type value (5)"));
  bad_enum = o;
  bad_enum.reduction = static_cast<consr::loss_reduction>(-1);
  CHECK(arg(fwd(w, l, bad_enum)) == "options.reduction");

  seq_t no_weights = w;
  no_weights.weights = {};
  CHECK(arg(fwd(no_weights, l, o)) == "chosen.weights");
  consr::dpo_options nvw = o;
  nvw.visual_weights = false;
  CHECK_NOTHROW(consr::dpo_forward(no_weights, l, nvw));
  seq_t short_weights = w;
  short_weights.weights = consr::make_view(B.w_w.data(), 1);
  CHECK(arg(fwd(short_weights, l, nvw)) == "chosen.weights");  // given, so it must fit

  seq_t both_refs = l;
  both_refs.reference_logp_sum = cview(B.b_ref_sum);
  CHECK(arg(fwd(w, both_refs, o)) == "rejected.reference_logp");
  seq_t no_ref = l;
  no_ref.reference_logp = {};
  CHECK(arg(fwd(w, no_ref, o)) == "rejected.reference_logp");
  seq_t short_sum = l;
  short_sum.reference_logp = {};
  short_sum.reference_logp_sum = consr::make_view(B.b_ref_sum.data(), 2);
  CHECK(arg(fwd(w, short_sum, o)) == "rejected.reference_logp_sum");

  seq_t short_labels = w;
  const std::vector<std::int64_t> lab = {1, 2};
  short_labels.labels = cview(lab);
  CHECK(arg(fwd(short_labels, l, o)) == "chosen.labels");

  // Different numbers of pairs on the two sides.
  const std::vector<std::int64_t> off2 = {0, B.off_l[1], B.off_l[3]};
  seq_t two = l;
  two.offsets = cview(off2);
  two.weights = cview(B.w_l);
  CHECK(arg(fwd(w, two, o)) == "rejected.offsets");
  seq_t bad_off = w;
  const std::vector<std::int64_t> off_bad = {0, 5, 2, static_cast<std::int64_t>(B.a.size())};
  bad_off.offsets = cview(off_bad);
  const auto e = catch_error(fwd(bad_off, l, o));
  CHECK(e.argument() == "chosen.offsets");
  CHECK_THAT(e.what(), Catch::Contains("segment 1"));

  std::vector<double> small(1);
  consr::dpo_pair_metrics<double> m;
  m.accuracy = consr::make_view(small.data(), 1);
  CHECK(arg([&] { consr::dpo_forward(w, l, o, m); }) == "metrics.accuracy");

  std::vector<double> ga(B.a.size()), gb(B.b.size()), up(3);
  CHECK(arg([&] {
          consr::dpo_backward(w, l, o, 1.0, consr::make_view(ga.data(), 1), consr::make_view(gb.data(), gb.size()));
        }) == "grad_chosen_logp");
  CHECK(arg([&] {
          consr::dpo_backward(w, l, o, 1.0, consr::make_view(ga.data(), ga.size()), consr::make_view(gb.data(), 1));
        }) == "grad_rejected_logp");
  // Broadcast (stride-0) outputs: pairs running on different threads would race on one element.
  const auto bcast = [](std::vector<double>& v, std::size_t n) {
    return consr::make_strided_view(v.data(), std::array<index_t, 1>{static_cast<index_t>(n)},
                                    std::array<index_t, 1>{0});
  };
  CHECK(arg([&] {
          consr::dpo_backward(w, l, o, 1.0, bcast(ga, ga.size()), consr::make_view(gb.data(), gb.size()));
        }) == "grad_chosen_logp");
  CHECK(arg([&] {
          consr::dpo_backward(w, l, o, 1.0, consr::make_view(ga.data(), ga.size()), bcast(gb, gb.size()));
        }) == "grad_rejected_logp");
  consr::dpo_pair_metrics<double> mb;
  mb.loss = bcast(small, 3);
  CHECK(arg([&] { consr::dpo_forward(w, l, o, mb); }) == "metrics.loss");
  CHECK(arg([&] {
          consr::dpo_backward(w, l, o, cview(up), consr::make_view(ga.data(), ga.size()),
                              consr::make_view(gb.data(), gb.size()));
        }) == "grad_loss_per_pair");
  consr::dpo_options none = o;
  none.reduction = consr::loss_reduction::none;
  CHECK(arg([&] {
          consr::dpo_backward(w, l, none, 1.0, consr::make_view(ga.data(), ga.size()),
                              consr::make_view(gb.data(), gb.size()));
        }) == "options.reduction");
  CHECK(arg([&] {
          consr::dpo_backward(w, l, none, consr::make_view(up.data(), 2), consr::make_view(ga.data(), ga.size()),
                              consr::make_view(gb.data(), gb.size()));
        }) == "grad_loss_per_pair");
  // The gradient scales dpo_forward saves for dpo_backward, and dpo_forward_backward.
  std::vector<double> saved(3);
  const auto va = consr::make_view(ga.data(), ga.size()), vb = consr::make_view(gb.data(), gb.size());
  CHECK(arg([&] { consr::dpo_forward(w, l, o, {}, consr::make_view(saved.data(), 2)); }) == "saved_grad_scale");
  CHECK(arg([&] { consr::dpo_forward(w, l, o, {}, bcast(saved, 3)); }) == "saved_grad_scale");
  CHECK(arg([&] { consr::dpo_backward(w, l, o, 1.0, va, vb, consr::make_view(saved.data(), 2)); }) == "saved_grad_scale");
  CHECK(arg([&] {
          consr::dpo_backward(w, l, o, 1.0, va, vb, consr::make_view(ga.data(), 3));
        }) == "saved_grad_scale");  // overlaps grad_chosen_logp
  CHECK(arg([&] { consr::dpo_forward_backward(w, l, none, 1.0, va, vb); }) == "options.reduction");
  CHECK(arg([&] { consr::dpo_forward_backward(w, l, o, 1.0, consr::make_view(ga.data(), 1), vb); }) ==
        "grad_chosen_logp");
  CHECK(arg([&] { consr::dpo_forward_backward(w, l, o, 1.0, va, bcast(gb, gb.size())); }) == "grad_rejected_logp");
  CHECK(arg([&] { consr::dpo_forward_backward(w, l, o, 1.0, va, vb, mb); }) == "metrics.loss");
  consr::dpo_options zero_beta = o;
  zero_beta.beta = 0.0;
  CHECK(arg([&] { consr::dpo_forward_backward(w, l, zero_beta, 1.0, va, vb); }) == "options.beta");

  // No pairs: mean is 0, backward writes nothing.
  const std::vector<std::int64_t> off0 = {0};
  const double* np = nullptr;
  seq_t empty{consr::make_view(np, 0), cview(off0), consr::make_view(np, 0), {}, {}, consr::make_view(np, 0)};
  CHECK(consr::dpo_forward(empty, empty, o) == 0.0);
  double* gnp = nullptr;
  CHECK_NOTHROW(consr::dpo_backward(empty, empty, o, 1.0, consr::make_view(gnp, 0), consr::make_view(gnp, 0)));
}

TEST_CASE("visual_weights: eqs. 12-13 by hand, clipping at both ends, chosen vs rejected", "[dpo]") {
  // Δp = p_clean − p_corrupt; α = 0.5; clip [0, 0.2].
  //   t0: 0.9 − 0.5 = 0.4   -> 0.2 -> clipped at hi: 0.2
  //   t1: 0.6 − 0.5 = 0.1   -> 0.05 (inside)
  //   t2: 0.3 − 0.7 = −0.4  -> −0.2 -> clipped at lo: 0
  //   t3: 1.0 − 0.1 = 0.9   -> 0.45 -> 0.2
  const std::vector<double> clean = {std::log(0.9), std::log(0.6), std::log(0.3), 0.0};
  const std::vector<double> corrupt = {std::log(0.5), std::log(0.5), std::log(0.7), std::log(0.1)};
  std::vector<double> wc(4), wr(4);
  consr::visual_weights(cview(clean), cview(corrupt), consr::weight_side::chosen, consr::make_view(wc.data(), 4));
  consr::visual_weights(cview(clean), cview(corrupt), consr::weight_side::rejected, consr::make_view(wr.data(), 4));
  const double want_c[4] = {1.2, 1.05, 1.0, 1.2};
  const double want_r[4] = {0.8, 0.95, 1.0, 0.8};
  for (int t = 0; t < 4; ++t) {
    CHECK(wc[t] == Approx(want_c[t]).epsilon(1e-14));
    CHECK(wr[t] == Approx(want_r[t]).epsilon(1e-14));
  }
  // A negative lower bound: t2's −0.2 clips to −0.1.
  consr::visual_weight_options opt;
  opt.clip_lo = -0.1;
  consr::visual_weights(cview(clean), cview(corrupt), consr::weight_side::chosen, consr::make_view(wc.data(), 4), opt);
  consr::visual_weights(cview(clean), cview(corrupt), consr::weight_side::rejected, consr::make_view(wr.data(), 4),
                        opt);
  CHECK(wc[2] == Approx(0.9).epsilon(1e-14));
  CHECK(wr[2] == Approx(1.1).epsilon(1e-14));
  CHECK(wc[1] == Approx(1.05).epsilon(1e-14));
  // float16 inputs, float output.
  std::vector<consr::float16> hc, hr;
  for (double x : clean) hc.push_back(consr::float16(float(x)));
  for (double x : corrupt) hr.push_back(consr::float16(float(x)));
  std::vector<float> wf(4);
  consr::visual_weights(cview(hc), cview(hr), consr::weight_side::chosen, consr::make_view(wf.data(), 4));
  CHECK(wf[0] == Approx(1.2f));
  CHECK(wf[1] == Approx(1.05f).epsilon(1e-3));
  // NaN stays NaN.
  const std::vector<double> nan_in = {nan_v};
  std::vector<double> wn(1);
  consr::visual_weights(cview(nan_in), cview(nan_in), consr::weight_side::chosen, consr::make_view(wn.data(), 1));
  CHECK(std::isnan(wn[0]));
  // Errors.
  auto arg = [](auto&& f) { return catch_error(f).argument(); };
  opt = {};
  opt.clip_lo = 0.3;
  CHECK(arg([&] {
          consr::visual_weights(cview(clean), cview(corrupt), consr::weight_side::chosen,
                                consr::make_view(wc.data(), 4), opt);
        }) == "options.clip_lo");
  opt = {};
  opt.alpha = std::numeric_limits<double>::infinity();
  CHECK(arg([&] {
          consr::visual_weights(cview(clean), cview(corrupt), consr::weight_side::chosen,
                                consr::make_view(wc.data(), 4), opt);
        }) == "options.alpha");
  CHECK(arg([&] {
          consr::visual_weights(cview(clean), consr::make_view(corrupt.data(), 3), consr::weight_side::chosen,
                                consr::make_view(wc.data(), 4));
        }) == "logp_corrupt");
  CHECK(arg([&] {
          consr::visual_weights(cview(clean), cview(corrupt), consr::weight_side::chosen,
                                consr::make_view(wc.data(), 3));
        }) == "weights");
}

TEST_CASE("option enums: to_string and parse_<enum> are inverse; unknown values are named", "[dpo]") {
  for (auto t : {consr::dpo_loss_type::consr, consr::dpo_loss_type::standard})
    CHECK(consr::parse_dpo_loss_type(consr::to_string(t)) == t);
  for (auto r : {consr::loss_reduction::mean, consr::loss_reduction::sum, consr::loss_reduction::none})
    CHECK(consr::parse_loss_reduction(consr::to_string(r)) == r);
  for (auto s : {consr::weight_side::chosen, consr::weight_side::rejected})
    CHECK(consr::parse_weight_side(consr::to_string(s)) == s);
  CHECK(std::string(consr::to_string(consr::loss_reduction::sum)) == "sum");
  CHECK(std::string(consr::to_string(static_cast<consr::weight_side>(9))) == "unknown");
  CHECK(catch_error([] { consr::parse_loss_reduction("avg"); }).what() ==
        std::string("consr::parse_loss_reduction: argument 'reduction': is \"avg\" but must be \"mean\", \"sum\" or "
                    "\"none\""));
  CHECK(catch_error([] { consr::parse_weight_side(""); }).argument() == "side");

  const std::vector<double> clean = {-0.1, -0.2}, corrupt = {-0.3, -0.4};
  std::vector<double> w(2);
  CHECK(catch_error([&] {
          consr::visual_weights(cview(clean), cview(corrupt), static_cast<consr::weight_side>(2),
                                consr::make_view(w.data(), 2));
        }).what() == std::string("consr::visual_weights: argument 'side': is not a weight_side value (2)"));
}
