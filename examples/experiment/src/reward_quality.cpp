// Reward quality against ground truth. See consr_experiment/reward_quality.hpp.
#include "consr_experiment/reward_quality.hpp"

#include <cmath>
#include <limits>
#include <map>
#include <stdexcept>

#include <consr/pairs.hpp>
#include <consr/view.hpp>

namespace consr_experiment {
namespace {

constexpr double nan_v = std::numeric_limits<double>::quiet_NaN();

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

nlohmann::json to_json(const quality& q) {
  const auto ci = wilson95(q.pairs_agree, q.pairs);
  return {{"items", q.items},
          {"items_mixed", q.items_mixed},
          {"items_all_correct", q.items_all_correct},
          {"items_all_wrong", q.items_all_wrong},
          {"pairs", q.pairs},
          {"pairs_agree", q.pairs_agree},
          {"pairs_reversed", q.pairs_reversed},
          {"pair_agreement", number_or_null(q.agreement())},
          {"pair_agreement_ci95", {number_or_null(ci.first), number_or_null(ci.second)}},
          {"auc", number_or_null(q.auc())},
          {"auc_pairs", q.auc_pairs},
          {"auc_item_mean", number_or_null(q.auc_item_mean())}};
}

}  // namespace

const std::vector<signal>& all_signals() {
  static const std::vector<signal> all{signal::reward,     signal::s_corrupt, signal::s_semantic,
                                       signal::likelihood, signal::length,    signal::random};
  return all;
}

const char* to_string(signal s) noexcept {
  switch (s) {
    case signal::reward: return "reward";
    case signal::s_corrupt: return "s_corrupt";
    case signal::s_semantic: return "s_semantic";
    case signal::likelihood: return "likelihood";
    case signal::length: return "length";
    case signal::random: return "random";
  }
  return "?";
}

double signal_value(const candidate_record& c, signal s, std::uint64_t seed, std::size_t item, std::size_t candidate) {
  if (!c.usable) return nan_v;
  switch (s) {
    case signal::reward: return c.r;
    case signal::s_corrupt: return c.S_corrupt;
    case signal::s_semantic: return c.S_semantic;
    case signal::likelihood: return c.P;
    case signal::length: return c.length;
    case signal::random: {
      const std::uint64_t h = splitmix64(splitmix64(splitmix64(seed) ^ item) ^ candidate);
      return static_cast<double>(h >> 11) * 0x1.0p-53;
    }
  }
  return nan_v;
}

double quality::agreement() const { return pairs ? static_cast<double>(pairs_agree) / pairs : nan_v; }
double quality::auc() const { return auc_pairs ? auc_wins / auc_pairs : nan_v; }
double quality::auc_item_mean() const { return auc_items ? auc_item_sum / auc_items : nan_v; }

std::pair<double, double> wilson95(std::size_t k, std::size_t n) {
  if (n == 0) return {nan_v, nan_v};
  const double z = 1.959963984540054, nn = static_cast<double>(n), p = k / nn;
  const double denom = 1.0 + z * z / nn;
  const double centre = (p + z * z / (2.0 * nn)) / denom;
  const double half = z * std::sqrt(p * (1.0 - p) / nn + z * z / (4.0 * nn * nn)) / denom;
  return {std::max(0.0, centre - half), std::min(1.0, centre + half)};
}

quality measure(const std::vector<item_record>& items, signal s, std::uint64_t seed,
                const std::vector<std::size_t>* subset) {
  quality q;
  const std::size_t count = subset ? subset->size() : items.size();
  for (std::size_t k = 0; k < count; ++k) {
    const std::size_t i = subset ? subset->at(k) : k;
    if (i >= items.size())
      throw std::invalid_argument("consr_experiment::measure: argument 'subset': index " + std::to_string(i) +
                                  " is out of range for " + std::to_string(items.size()) + " items");
    const auto& cands = items[i].candidates;
    if (cands.empty())
      throw std::invalid_argument("consr_experiment::measure: argument 'items': item " + std::to_string(i) + " (id '" +
                                  items[i].id + "') has no candidates");
    ++q.items;
    std::vector<double> v(cands.size());
    std::size_t n_correct = 0, n_wrong = 0;
    for (std::size_t c = 0; c < cands.size(); ++c) {
      v[c] = signal_value(cands[c], s, seed, i, c);
      if (!cands[c].usable) continue;
      (cands[c].correct ? n_correct : n_wrong) += 1;
    }
    if (n_correct == 0) {
      ++q.items_all_wrong;
      continue;
    }
    if (n_wrong == 0) {
      ++q.items_all_correct;
      continue;
    }
    ++q.items_mixed;

    // The pair the pipeline would make from this signal: the library's own selection rules.
    const std::int64_t offsets[2] = {0, static_cast<std::int64_t>(v.size())};
    std::vector<consr::preference_pair> pairs;
    consr::select_pairs(consr::make_view(v.data(), static_cast<consr::index_t>(v.size())),
                        consr::make_view(offsets, 2), pairs);
    for (const auto& p : pairs) {
      ++q.pairs;
      const bool chosen_ok = cands[static_cast<std::size_t>(p.chosen)].correct;
      const bool rejected_ok = cands[static_cast<std::size_t>(p.rejected)].correct;
      if (chosen_ok && !rejected_ok) ++q.pairs_agree;
      if (!chosen_ok && rejected_ok) ++q.pairs_reversed;
    }

    // Within-item AUC over (correct, wrong) pairs with finite scores.
    std::size_t item_pairs = 0;
    double item_wins = 0.0;
    for (std::size_t a = 0; a < cands.size(); ++a) {
      if (!cands[a].usable || !cands[a].correct || !std::isfinite(v[a])) continue;
      for (std::size_t b = 0; b < cands.size(); ++b) {
        if (!cands[b].usable || cands[b].correct || !std::isfinite(v[b])) continue;
        ++item_pairs;
        item_wins += v[a] > v[b] ? 1.0 : (v[a] == v[b] ? 0.5 : 0.0);
      }
    }
    if (item_pairs) {
      q.auc_pairs += item_pairs;
      q.auc_wins += item_wins;
      ++q.auc_items;
      q.auc_item_sum += item_wins / static_cast<double>(item_pairs);
    }
  }
  return q;
}

nlohmann::json report(const std::vector<item_record>& items, std::uint64_t seed) {
  nlohmann::json out;
  out["overall"] = nlohmann::json::object();
  for (signal s : all_signals()) out["overall"][to_string(s)] = to_json(measure(items, s, seed));
  // Per type: the items of that type keep their global index so the random signal is the same draw.
  std::map<std::string, std::vector<std::size_t>> by_type;
  for (std::size_t i = 0; i < items.size(); ++i) by_type[items[i].type].push_back(i);
  out["per_type"] = nlohmann::json::object();
  for (const auto& [type, idx] : by_type) {
    nlohmann::json t = nlohmann::json::object();
    for (signal s : all_signals()) {
      const quality total = measure(items, s, seed, &idx);
      t[to_string(s)] = to_json(total);
    }
    out["per_type"][type] = t;
  }
  return out;
}

}  // namespace consr_experiment
