// A minimal user program: token log-probs of a 2 x 4 logits block through the installed headers.
#include <consr/consr.hpp>
#if CONSUMER_HAS_EIGEN
#include <consr/adapters/eigen.hpp>
#endif

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  std::vector<float> logits = {0.f, 1.f, 2.f, 3.f, 1.f, 1.f, 1.f, 1.f};
  std::vector<long long> labels_ll = {3, 0};
  std::vector<std::int64_t> labels(labels_ll.begin(), labels_ll.end());
  std::vector<float> logp(2), lse(2);
  consr::token_logprobs(consr::make_view<consr::host_space>(static_cast<const float*>(logits.data()), 2, 4),
                        consr::make_view(static_cast<const std::int64_t*>(labels.data()), 2),
                        consr::make_view(logp.data(), 2), consr::make_view(lse.data(), 2));
  // Row 1 is uniform over 4 entries: log(1/4).
  const double expected1 = std::log(0.25);
  if (std::fabs(logp[1] - expected1) > 1e-6) {
    std::printf("wrong log-prob: %f vs %f\n", logp[1], expected1);
    return 1;
  }
#if CONSUMER_HAS_EIGEN
  Eigen::Matrix<float, 2, 4, Eigen::RowMajor> m;
  m << 0, 1, 2, 3, 1, 1, 1, 1;
  const auto mv = consr::as_view<2>(m, "logits");
  if (mv(0, 3) != 3.0f) return 1;
  std::printf("consumer: consr::eigen available\n");
#endif
  std::printf("consumer: ok (log p = %f, %f)\n", logp[0], logp[1]);
  return 0;
}
