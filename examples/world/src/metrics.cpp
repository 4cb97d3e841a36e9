// Intervals, POPE metrics and paired comparisons (see metrics.hpp).
#include "consr_world/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "consr_world/world.hpp"

namespace consr_world {

interval wilson(long long k, long long n, double z) {
  if (n <= 0) return {0.0, 1.0};
  const double nn = static_cast<double>(n);
  const double p = static_cast<double>(k) / nn;
  const double z2 = z * z;
  const double denom = 1 + z2 / nn;
  const double centre = (p + z2 / (2 * nn)) / denom;
  const double half = z * std::sqrt(p * (1 - p) / nn + z2 / (4 * nn * nn)) / denom;
  return {std::max(0.0, centre - half), std::min(1.0, centre + half)};
}

pope_metrics pope(const std::vector<bool>& label_yes, const std::vector<bool>& said_yes) {
  if (label_yes.size() != said_yes.size()) throw std::invalid_argument("consr_world::pope: sizes differ");
  pope_metrics m;
  m.n = static_cast<long long>(label_yes.size());
  for (std::size_t i = 0; i < label_yes.size(); ++i) {
    if (label_yes[i]) (said_yes[i] ? m.tp : m.fn) += 1;
    else (said_yes[i] ? m.fp : m.tn) += 1;
  }
  const auto ratio = [](long long a, long long b) { return b > 0 ? static_cast<double>(a) / static_cast<double>(b) : 0.0; };
  m.accuracy = ratio(m.tp + m.tn, m.n);
  m.precision = ratio(m.tp, m.tp + m.fp);
  m.recall = ratio(m.tp, m.tp + m.fn);
  m.f1 = m.precision + m.recall > 0 ? 2 * m.precision * m.recall / (m.precision + m.recall) : 0.0;
  m.yes_ratio = ratio(m.tp + m.fp, m.n);
  m.false_yes_rate = ratio(m.fp, m.fp + m.tn);
  return m;
}

double mcnemar_exact(long long b, long long c) {
  const long long m = b + c;
  if (m <= 0) return 1.0;
  const long long k = std::min(b, c);
  // log P[X = i] = lgamma(m+1) - lgamma(i+1) - lgamma(m-i+1) - m log 2; summed with log-sum-exp.
  const double lm = std::lgamma(static_cast<double>(m) + 1) - static_cast<double>(m) * std::log(2.0);
  std::vector<double> logs;
  double top = -INFINITY;
  for (long long i = 0; i <= k; ++i) {
    const double l = lm - std::lgamma(static_cast<double>(i) + 1) - std::lgamma(static_cast<double>(m - i) + 1);
    logs.push_back(l);
    top = std::max(top, l);
  }
  double sum = 0;
  for (double l : logs) sum += std::exp(l - top);
  const double tail = std::exp(top + std::log(sum));
  return std::min(1.0, 2 * tail);
}

paired_result paired(const std::vector<bool>& a, const std::vector<bool>& b, int resamples, std::uint64_t seed) {
  if (a.size() != b.size()) throw std::invalid_argument("consr_world::paired: sizes differ");
  paired_result r;
  r.n = static_cast<long long>(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    r.a_only += a[i] && !b[i];
    r.b_only += !a[i] && b[i];
  }
  r.p_value = mcnemar_exact(r.a_only, r.b_only);
  if (r.n == 0) {
    r.ci95 = {0, 0};
    return r;
  }
  const double n = static_cast<double>(r.n);
  r.diff = static_cast<double>(r.b_only - r.a_only) / n;
  if (r.a_only + r.b_only == 0 || resamples <= 1) {
    r.ci95 = {r.diff, r.diff};
    return r;
  }
  // Question i of a resample is "A only" when u < a_only, "B only" when a_only <= u < a_only + b_only.
  rng g(mix64(seed));
  std::vector<double> diffs(static_cast<std::size_t>(resamples));
  const auto nn = static_cast<std::uint32_t>(r.n);
  for (int s = 0; s < resamples; ++s) {
    long long d = 0;
    for (std::uint32_t i = 0; i < nn; ++i) {
      const long long u = g.below(nn);
      d += (u >= r.a_only && u < r.a_only + r.b_only) - (u < r.a_only);
    }
    diffs[static_cast<std::size_t>(s)] = static_cast<double>(d) / n;
  }
  std::sort(diffs.begin(), diffs.end());
  const auto quantile = [&](double q) {
    const double pos = q * (resamples - 1);
    const auto lo = static_cast<std::size_t>(std::floor(pos));
    const auto hi = std::min(lo + 1, diffs.size() - 1);
    return diffs[lo] + (pos - static_cast<double>(lo)) * (diffs[hi] - diffs[lo]);
  };
  r.ci95 = {quantile(0.025), quantile(0.975)};
  return r;
}

}  // namespace consr_world
