// consr_experiment/reward_quality.hpp — how well a per-candidate score picks the visually grounded
// answer, measured against ground truth (issue "the main job as an experiment", part 1; the paper's
// App. D measures the same against human preference: 81 %).
//
// Input: per item (one prompt), its candidates with the pipeline's scores (P, S_corrupt, S_semantic,
// r; eqs. 1–6) and whether the world's checker found the answer correct. For each *signal* (the
// reward r and the baselines a user could pick instead) the report gives:
//
//   pair agreement  among items with at least one correct and one wrong usable candidate ("mixed"
//                   items), the pair that consr::select_pairs makes from that signal (best vs worst,
//                   spec §6: ties to the lower index, non-finite skipped, equal best/worst = no
//                   pair); agreement = pairs whose chosen is correct and rejected is wrong / pairs
//                   made. A Wilson 95 % interval.
//   ranking AUC     over all (correct, wrong) candidate pairs of the same item whose scores are both
//                   finite: the share where the signal ranks the correct one higher, ties ½; given
//                   pooled over pairs (`auc`) and averaged over items (`auc_item_mean`).
//
// Signals: reward (r at the run's λ), s_corrupt (eq. 5), s_semantic (eq. 4), likelihood (P, eq. 1:
// the model's own preference), length (more scored tokens preferred) and random (a uniform draw that
// is a pure function of (seed, item, candidate); its expected agreement is the share of mixed items'
// pairs that are (correct, wrong) by chance).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace consr_experiment {

struct candidate_record {
  double P = 0.0;           ///< eq. 1 (NaN for an unusable / empty candidate)
  double S_corrupt = 0.0;   ///< eq. 5
  double S_semantic = 0.0;  ///< eq. 4
  double r = 0.0;           ///< eq. 6
  double length = 0.0;      ///< scored tokens
  bool usable = true;       ///< false: never paired, never ranked (scores treated as NaN)
  bool correct = false;     ///< the checker's verdict on the candidate's text
};

struct item_record {
  std::string id;
  std::string type;  ///< question type (existence, colour, ...): the report's per-type key
  std::vector<candidate_record> candidates;
};

enum class signal { reward, s_corrupt, s_semantic, likelihood, length, random };

/// Every signal, in report order.
const std::vector<signal>& all_signals();
/// "reward", "s_corrupt", "s_semantic", "likelihood", "length", "random".
const char* to_string(signal s) noexcept;

/// The value of `s` for candidate `c` of item `item` (NaN when the candidate is unusable).
double signal_value(const candidate_record& c, signal s, std::uint64_t seed, std::size_t item, std::size_t candidate);

/// One signal's quality over a set of items.
struct quality {
  std::size_t items = 0;             ///< items considered
  std::size_t items_mixed = 0;       ///< with ≥ 1 correct and ≥ 1 wrong usable candidate
  std::size_t items_all_correct = 0; ///< every usable candidate correct (a pair there cannot be wrong)
  std::size_t items_all_wrong = 0;   ///< no usable candidate correct (or none usable)
  std::size_t pairs = 0;             ///< pairs select_pairs made on mixed items
  std::size_t pairs_agree = 0;       ///< of those: chosen correct and rejected wrong
  std::size_t pairs_reversed = 0;    ///< of those: chosen wrong and rejected correct
  std::size_t auc_pairs = 0;         ///< (correct, wrong) candidate pairs with finite scores
  double auc_wins = 0.0;             ///< Σ over those pairs of 1 (correct ranked higher), ½ (tie), 0
  std::size_t auc_items = 0;         ///< items contributing to auc_item_mean
  double auc_item_sum = 0.0;         ///< Σ over those items of the item's AUC

  double agreement() const;      ///< pairs_agree / pairs (NaN if no pair)
  double auc() const;            ///< auc_wins / auc_pairs (NaN if none)
  double auc_item_mean() const;  ///< auc_item_sum / auc_items (NaN if none)
};

/// The quality of `s` over `items`, or over the items whose indices `subset` lists (items keep their
/// index in `items` for the random signal, so a subset sees the same draws as the whole).
/// Throws std::invalid_argument naming 'items' if an item has no candidates, 'subset' for an index
/// out of range.
quality measure(const std::vector<item_record>& items, signal s, std::uint64_t seed,
                const std::vector<std::size_t>* subset = nullptr);

/// Wilson 95 % score interval of k successes in n trials ({NaN, NaN} for n = 0).
std::pair<double, double> wilson95(std::size_t k, std::size_t n);

/// The report: {"overall": {signal: {...}}, "per_type": {type: {signal: {...}}}} where each entry has
/// items, items_mixed, items_all_correct, items_all_wrong, pairs, pairs_agree, pairs_reversed,
/// pair_agreement, pair_agreement_ci95, auc, auc_pairs, auc_item_mean (NaN written as null).
nlohmann::json report(const std::vector<item_record>& items, std::uint64_t seed);

}  // namespace consr_experiment
