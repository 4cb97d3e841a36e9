// consr/pairs.hpp — preference-pair selection from per-candidate rewards
// (spec §6).
//
// Candidates are grouped per prompt: group g owns the global candidate
// indices [group_offsets[g], group_offsets[g+1]) of `rewards` (offsets as in
// reductions.hpp: int32/int64, G + 1 entries, checked). Selection is
// deterministic and documented rule by rule at select_pairs; the CUDA
// version implements pairs_per_group = 1, which is exactly the arg-max /
// arg-min scan below.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "config.hpp"
#include "error.hpp"
#include "numeric.hpp"
#include "reductions.hpp"
#include "view.hpp"

namespace consr {

/// Options of select_pairs.
struct pair_options {
  /// Pairs per group, k >= 1 (paper: 1). Pair j matches the j-th best with
  /// the j-th worst candidate (see select_pairs).
  index_t pairs_per_group = 1;
  /// A pair needs chosen_reward − rejected_reward >= min_margin; finite, >= 0.
  double min_margin = 0.0;
  /// Skip a candidate whose token sequence equals that of a lower-index
  /// usable candidate of the same group (needs the overload with tokens).
  bool skip_duplicates = false;
};

/// One selected pair. `chosen` / `rejected` are global candidate indices
/// (into `rewards`); rewards are widened to double; margin = chosen_reward −
/// rejected_reward (> 0 always, see select_pairs).
struct preference_pair {
  index_t group;
  index_t chosen;
  index_t rejected;
  double chosen_reward;
  double rejected_reward;
  double margin;
};

/// Counts of select_pairs. Every group lands in exactly one of
/// groups_with_pairs, groups_too_few_candidates and groups_no_margin, so
/// groups == groups_with_pairs + groups_too_few_candidates + groups_no_margin.
struct selection_report {
  index_t groups = 0;                     ///< G
  index_t pairs = 0;                      ///< pairs written
  index_t groups_with_pairs = 0;          ///< groups that gave at least one pair
  index_t groups_too_few_candidates = 0;  ///< fewer than two usable candidates (empty groups included)
  index_t groups_no_margin = 0;           ///< best == worst (all rewards equal) or margin < min_margin
  index_t nonfinite_candidates = 0;       ///< candidates skipped for a NaN or ±inf reward
  index_t duplicate_candidates = 0;       ///< candidates skipped as duplicates (skip_duplicates)
};

namespace detail {

/// 64-bit hash of a token sequence (FNV-1a over the values, then a final
/// mix); only used to find candidates for an exact comparison.
template <class Token>
std::uint64_t token_sequence_hash(const host_view<Token, 1>& tokens, index_t begin, index_t end) {
  std::uint64_t h = 1469598103934665603ull ^ static_cast<std::uint64_t>(end - begin);
  for (index_t t = begin; t < end; ++t) {
    h ^= static_cast<std::uint64_t>(static_cast<std::int64_t>(tokens[t]));
    h *= 1099511628211ull;
  }
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}

template <class Token, class TokenOffset>
bool same_token_sequence(const host_view<Token, 1>& tokens, const host_view<TokenOffset, 1>& token_offsets, index_t a,
                         index_t b) {
  const index_t a0 = token_offsets[a], a1 = token_offsets[a + 1];
  const index_t b0 = token_offsets[b], b1 = token_offsets[b + 1];
  if (a1 - a0 != b1 - b0) return false;
  for (index_t i = 0; i < a1 - a0; ++i)
    if (tokens[a0 + i] != tokens[b0 + i]) return false;
  return true;
}

template <class R, class GroupOffset, class Token, class TokenOffset>
selection_report select_pairs_impl(const host_view<R, 1>& rewards, const host_view<GroupOffset, 1>& group_offsets,
                                   const host_view<Token, 1>& tokens, const host_view<TokenOffset, 1>& token_offsets,
                                   bool have_tokens, std::vector<preference_pair>& pairs, const pair_options& options) {
  constexpr const char* fn = "consr::select_pairs";
  static_assert(std::is_same_v<std::remove_cv_t<R>, float> || std::is_same_v<std::remove_cv_t<R>, double>,
                "consr::select_pairs: rewards must be float or double");
  CONSR_CHECK_ARG(options.pairs_per_group >= 1, fn, "options.pairs_per_group", "is ", options.pairs_per_group,
                  " but must be >= 1");
  CONSR_CHECK_ARG(std::isfinite(options.min_margin) && options.min_margin >= 0.0, fn, "options.min_margin", "is ",
                  options.min_margin, " but must be finite and >= 0");
  CONSR_CHECK_ARG(have_tokens || !options.skip_duplicates, fn, "options.skip_duplicates",
                  "needs the candidates' tokens; call the select_pairs overload that takes tokens and token_offsets");
  check_view(rewards, fn, "rewards");
  const index_t num_candidates = rewards.size();
  const index_t num_groups = check_packed_offsets(group_offsets, num_candidates, fn, "group_offsets", "rewards");
  if (have_tokens) {
    check_view(tokens, fn, "tokens");
    const index_t num_sequences = check_packed_offsets(token_offsets, tokens.size(), fn, "token_offsets", "tokens");
    CONSR_CHECK_ARG(num_sequences == num_candidates, fn, "token_offsets", "describes ", num_sequences,
                    " token sequences but 'rewards' has ", num_candidates, " candidates");
  }
  const bool dedup = have_tokens && options.skip_duplicates;

  pairs.clear();
  selection_report report;
  report.groups = num_groups;

  std::vector<index_t> usable;               // global indices, ascending
  std::vector<index_t> best, worst;          // rank orders, k > 1 only
  std::vector<std::pair<std::uint64_t, index_t>> hashed;  // dedup only
  std::vector<unsigned char> duplicate;                   // per usable candidate of the group
  for (index_t g = 0; g < num_groups; ++g) {
    const index_t begin = group_offsets[g], end = group_offsets[g + 1];
    usable.clear();
    for (index_t c = begin; c < end; ++c) {
      if (std::isfinite(static_cast<double>(rewards[c]))) {
        usable.push_back(c);
      } else {
        ++report.nonfinite_candidates;
      }
    }
    if (dedup && usable.size() > 1) {
      // Sort finite candidates by (hash, index); within a run of equal hashes
      // a candidate is a duplicate when it equals a lower-index kept one.
      hashed.clear();
      for (index_t c : usable) hashed.emplace_back(token_sequence_hash(tokens, token_offsets[c], token_offsets[c + 1]), c);
      std::sort(hashed.begin(), hashed.end());
      duplicate.assign(static_cast<std::size_t>(end - begin), 0);
      for (std::size_t run = 0; run < hashed.size();) {
        std::size_t run_end = run + 1;
        while (run_end < hashed.size() && hashed[run_end].first == hashed[run].first) ++run_end;
        for (std::size_t i = run + 1; i < run_end; ++i) {
          for (std::size_t j = run; j < i; ++j) {
            const index_t cj = hashed[j].second;
            if (!duplicate[static_cast<std::size_t>(cj - begin)] &&
                same_token_sequence(tokens, token_offsets, cj, hashed[i].second)) {
              duplicate[static_cast<std::size_t>(hashed[i].second - begin)] = 1;
              break;
            }
          }
        }
        run = run_end;
      }
      std::size_t kept = 0;
      for (index_t c : usable) {
        if (duplicate[static_cast<std::size_t>(c - begin)]) {
          ++report.duplicate_candidates;
        } else {
          usable[kept++] = c;
        }
      }
      usable.resize(kept);
    }

    const index_t m = static_cast<index_t>(usable.size());
    if (m < 2) {
      ++report.groups_too_few_candidates;
      continue;
    }
    const auto r = [&](index_t c) { return static_cast<double>(rewards[c]); };
    index_t made = 0;
    if (options.pairs_per_group == 1) {
      // The device algorithm: one arg-max / arg-min scan in index order;
      // strict comparisons keep the lowest index among ties on both sides.
      index_t chosen = usable[0], rejected = usable[0];
      for (index_t i = 1; i < m; ++i) {
        const index_t c = usable[static_cast<std::size_t>(i)];
        if (r(c) > r(chosen)) chosen = c;
        if (r(c) < r(rejected)) rejected = c;
      }
      const double margin = r(chosen) - r(rejected);
      if (r(chosen) > r(rejected) && margin >= options.min_margin) {
        pairs.push_back({g, chosen, rejected, r(chosen), r(rejected), margin});
        made = 1;
      }
    } else {
      // best: descending reward, ties by lower index; worst: ascending reward,
      // ties by lower index. best[0] / worst[0] are the k = 1 arg-max / arg-min.
      best.assign(usable.begin(), usable.end());
      worst.assign(usable.begin(), usable.end());
      const index_t k = std::min(options.pairs_per_group, m);
      std::partial_sort(best.begin(), best.begin() + k, best.end(), [&](index_t a, index_t b) {
        return r(a) > r(b) || (r(a) == r(b) && a < b);
      });
      std::partial_sort(worst.begin(), worst.begin() + k, worst.end(), [&](index_t a, index_t b) {
        return r(a) < r(b) || (r(a) == r(b) && a < b);
      });
      for (index_t j = 0; j < k; ++j) {
        const index_t chosen = best[static_cast<std::size_t>(j)];
        const index_t rejected = worst[static_cast<std::size_t>(j)];
        const double margin = r(chosen) - r(rejected);
        // Margins are non-increasing in j, so the first failure ends the group.
        if (!(r(chosen) > r(rejected)) || !(margin >= options.min_margin)) break;
        pairs.push_back({g, chosen, rejected, r(chosen), r(rejected), margin});
        ++made;
      }
    }
    if (made > 0) {
      ++report.groups_with_pairs;
      report.pairs += made;
    } else {
      ++report.groups_no_margin;
    }
  }
  return report;
}

}  // namespace detail

/// Selects preference pairs per group (spec §6). `pairs` is cleared, then
/// filled in order of group, then rank j. Rules, in order:
///  1. A candidate whose reward is NaN or ±inf is skipped
///     (report.nonfinite_candidates).
///  2. A group with fewer than two usable candidates yields no pair
///     (report.groups_too_few_candidates; empty groups included).
///  3. k = pairs_per_group. Order the usable candidates twice: `best` by
///     descending reward, ties toward the lower index; `worst` by ascending
///     reward, ties toward the lower index. Pair j (j = 0, 1, ..., k − 1)
///     is (chosen = best[j], rejected = worst[j]); pairs are made while
///     reward(best[j]) > reward(worst[j]) strictly (so the chosen stays
///     strictly above the rejected, the two are distinct, and no candidate
///     is used twice) and margin >= min_margin. For k = 1 this is exactly
///     chosen = arg-max, rejected = arg-min, each with ties toward the lower
///     index (the CUDA version's rule). Every margin is therefore > 0.
///  4. A group with >= 2 usable candidates but no pair (all rewards equal, so
///     best == worst, or the best margin < min_margin) counts in
///     report.groups_no_margin.
/// Preconditions: rewards float or double; group_offsets (G + 1 entries)
/// valid for rewards.size(); pairs_per_group >= 1; min_margin finite and
/// >= 0; skip_duplicates needs the overload with tokens. Throws consr::error
/// naming 'rewards', 'group_offsets' or 'options.*'.
template <class R, class GroupOffset>
selection_report select_pairs(host_view<R, 1> rewards, host_view<GroupOffset, 1> group_offsets,
                              std::vector<preference_pair>& pairs, const pair_options& options = {}) {
  const host_view<const std::int64_t, 1> no_tokens{};
  const host_view<const std::int64_t, 1> no_token_offsets{};
  return detail::select_pairs_impl(rewards, group_offsets, no_tokens, no_token_offsets, false, pairs, options);
}

/// select_pairs with duplicate detection. `tokens` packs every candidate's
/// token sequence (int32 or int64), `token_offsets` (C + 1 entries) delimits
/// them, C = rewards.size(). With options.skip_duplicates, a finite-reward
/// candidate whose token sequence equals (same length, same tokens) that of
/// a lower-index finite-reward candidate of the same group is skipped and
/// counted in report.duplicate_candidates, before rule 2 (candidates with a
/// non-finite reward never make another one a duplicate). Without
/// skip_duplicates the tokens are validated but not used.
/// Throws as the first overload, and names 'tokens' / 'token_offsets'.
template <class R, class GroupOffset, class Token, class TokenOffset>
selection_report select_pairs(host_view<R, 1> rewards, host_view<GroupOffset, 1> group_offsets,
                              host_view<Token, 1> tokens, host_view<TokenOffset, 1> token_offsets,
                              std::vector<preference_pair>& pairs, const pair_options& options) {
  static_assert(is_index_type_v<Token>, "consr::select_pairs: tokens must be int32 or int64");
  return detail::select_pairs_impl(rewards, group_offsets, tokens, token_offsets, true, pairs, options);
}

}  // namespace consr
