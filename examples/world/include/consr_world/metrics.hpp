// consr_world/metrics.hpp — intervals, POPE metrics and paired comparisons (issue 13; the
// definitions are those of shared/reference/evaluation-metrics.md).
//
//   wilson          Wilson score interval for k/n (z = 1.96 by default); [0, 0] ... for n = 0 -> [0, 1].
//   pope            accuracy, precision, recall, F1 with "yes" the positive class; yes-ratio (share of
//                   "yes" answers) and the false-yes rate FP / (FP + TN); precision is 0 when the
//                   model never says yes, F1 is 0 when precision + recall is 0.
//   mcnemar_exact   two-sided exact McNemar p = min(1, 2 P[Binomial(b + c, 1/2) <= min(b, c)]); 1 when
//                   b + c = 0.
//   paired          the accuracy difference B - A of two systems on the same questions, with a 95 %
//                   paired bootstrap interval: 10,000 resamples of the n questions with replacement, a
//                   fixed seed (so the interval is deterministic), percentiles 2.5 / 97.5 with linear
//                   interpolation. We chose the bootstrap over Newcombe's hybrid score interval because
//                   it is what the reference describes and needs no correlation estimate; with fixed
//                   seed it is reproducible bit for bit. Only the discordant questions move the
//                   difference, so a resample draws each question's category (A only right / B only
//                   right / same) — the same distribution as resampling the questions.
#pragma once

#include <cstdint>
#include <vector>

namespace consr_world {

struct interval {
  double lo = 0;
  double hi = 0;
};

interval wilson(long long k, long long n, double z = 1.959963984540054);

struct pope_metrics {
  long long n = 0, tp = 0, fp = 0, tn = 0, fn = 0;
  double accuracy = 0, precision = 0, recall = 0, f1 = 0, yes_ratio = 0, false_yes_rate = 0;
};
/// label_yes[i]: the truth is "yes"; said_yes[i]: the answer was read as "yes".
pope_metrics pope(const std::vector<bool>& label_yes, const std::vector<bool>& said_yes);

double mcnemar_exact(long long b, long long c);

struct paired_result {
  long long n = 0;
  long long a_only = 0;  // right under A, wrong under B
  long long b_only = 0;  // wrong under A, right under B
  double diff = 0;       // accuracy(B) - accuracy(A)
  interval ci95;         // paired bootstrap
  double p_value = 1;    // exact McNemar on (a_only, b_only)
};
paired_result paired(const std::vector<bool>& a_correct, const std::vector<bool>& b_correct, int resamples = 10000,
                     std::uint64_t seed = 0x13C0FFEEull);

}  // namespace consr_world
