// Example 01 — the ConSR flow on synthetic numbers, one step at a time.
//
// A real run scores responses of a multimodal LLM (see examples/03_* and the
// pipeline). Here a tiny stand-in "model" produces the token logits, so that
// every step of the method is visible with numbers you can follow:
//
//   1. corrupt an image with diffusion noise (spec §3),
//   2. score 15 candidates per prompt under three inputs — original, corrupted
//      image, description-enriched prompt — and form the contrastive reward
//      (eqs. 1–6),
//   3. pick the best and the worst candidate of each prompt as a preference pair (§6),
//   4. compute the token visual weights (eqs. 12–13) and one forward and
//      backward pass of the ConSR loss (eq. 14) next to standard DPO (eq. 7).
#include <consr/consr.hpp>

#include <cmath>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

namespace {

constexpr int num_prompts = 3;
constexpr int candidates_per_prompt = 15;  // 5 sampled + 5 revised + 5 noisy (paper §3.1)
constexpr int vocab = 64;                  // a toy vocabulary

const char* kind_of(int c) { return c < 5 ? "sampled" : (c < 10 ? "revised" : "noisy"); }

// Deterministic pseudo-random numbers for the toy model (not consr's Philox:
// these only make up example data).
struct toy_rng {
  std::uint64_t s;
  double uniform() {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<double>(s >> 11) * 0x1.0p-53;
  }
};

// One candidate response of the toy model: its tokens and how well it is grounded in
// the image (hidden from the method: the reward has to discover it).
struct candidate {
  std::vector<std::int64_t> tokens;
  double grounding;  // in [0, 1]
};

// The toy model's logits for one token under one of the three scoring inputs.
// A grounded token gets extra probability from the image; corrupting the image
// removes most of it, and adding the model's own description restores some
// of what a poorly grounded answer lacks.
void toy_logits(std::int64_t label, double grounding, int condition, toy_rng& rng, float* row) {
  for (int v = 0; v < vocab; ++v) row[v] = static_cast<float>(2.0 * rng.uniform() - 1.0);
  double boost = 1.0 + 3.0 * grounding;                  // (x, I): original
  if (condition == 1) boost = 1.0 + 0.8 * grounding;     // (x, Ĩ): image detail destroyed
  if (condition == 2) boost = 1.4 + 3.2 * grounding;     // (x', I): description ⊕ prompt
  row[label] += static_cast<float>(boost);
}

}  // namespace

int main() {
  std::printf("consr %d.%d.%d — the ConSR flow on synthetic numbers\n\n", CONSR_VERSION_MAJOR,
              CONSR_VERSION_MINOR, CONSR_VERSION_PATCH);

  // ---------------------------------------------------------------- 1. corruption
  std::printf("1. Corrupting an image with diffusion noise (spec §3)\n");
  const int C = 3, H = 24, W = 24;
  std::vector<float> image(C * H * W);
  for (int c = 0; c < C; ++c)
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) image[(c * H + y) * W + x] = -1.0f + 2.0f * float(x + y) / float(H + W - 2);
  const consr::rng_key key{/*seed=*/2024, /*offset=*/0};
  for (int step : {500, 800}) {
    consr::diffusion_noise_options opt;
    opt.step = step;
    const auto coef = consr::diffusion_noise_coefficients(opt);
    std::vector<float> noisy(image.size());
    consr::add_diffusion_noise<float, 3>(consr::make_view(image.data(), C, H, W), consr::make_view(noisy.data(), C, H, W),
                                         key, opt);
    double signal = 0, noise = 0;
    for (std::size_t i = 0; i < image.size(); ++i) {
      const double s = coef.sqrt_alpha_bar * image[i];
      signal += s * s;
      noise += (noisy[i] - s) * (noisy[i] - s);
    }
    std::printf("   t = %d: x_t = %.6f * x_0 + %.6f * eps   (signal/noise power %.2f; pixel (0,0,0): %+.3f -> %+.3f)\n",
                step, coef.sqrt_alpha_bar, coef.sqrt_one_minus_alpha_bar, signal / noise, image[0], noisy[0]);
  }
  std::printf("   500 steps make the 'noisy' candidates, 800 steps the corrupted input for the reward.\n");
  std::printf("   The same (seed, offset) gives the same noise on any thread count, chunking or device.\n\n");

  // ---------------------------------------------------------------- 2. scoring
  std::printf("2. Scoring %d candidates for each of %d prompts under three inputs (eqs. 1-6)\n",
              candidates_per_prompt, num_prompts);
  toy_rng rng{7};
  std::vector<candidate> cands;
  for (int p = 0; p < num_prompts; ++p)
    for (int c = 0; c < candidates_per_prompt; ++c) {
      candidate k;
      const double base = c < 5 ? 0.5 : (c < 10 ? 0.65 : 0.3);  // revised answers are better grounded, noisy ones worse
      k.grounding = std::min(1.0, std::max(0.0, base + 0.35 * (rng.uniform() - 0.5)));
      const int len = 4 + static_cast<int>(rng.uniform() * 8);
      for (int t = 0; t < len; ++t) k.tokens.push_back(static_cast<std::int64_t>(rng.uniform() * vocab));
      cands.push_back(k);
    }
  std::vector<std::int64_t> offsets{0}, labels;
  for (const auto& k : cands) {
    labels.insert(labels.end(), k.tokens.begin(), k.tokens.end());
    offsets.push_back(static_cast<std::int64_t>(labels.size()));
  }
  const auto N = static_cast<consr::index_t>(labels.size());
  // Token log-probs of every candidate under each condition: the model's logits, then consr::token_logprobs.
  std::vector<float> logp[3];
  std::vector<float> logits(static_cast<std::size_t>(N) * vocab);
  for (int cond = 0; cond < 3; ++cond) {
    toy_rng model_rng{1000u + static_cast<unsigned>(cond)};
    std::size_t row = 0;
    for (const auto& k : cands)
      for (auto tok : k.tokens) toy_logits(tok, k.grounding, cond, model_rng, &logits[row++ * vocab]);
    logp[cond].resize(static_cast<std::size_t>(N));
    consr::token_logprobs(consr::make_view(logits.data(), N, vocab), consr::make_view(labels.data(), N),
                          consr::make_view(logp[cond].data(), N));
  }
  const auto C_total = static_cast<consr::index_t>(cands.size());
  std::vector<double> P(C_total), Pc(C_total), Ps(C_total), Ss(C_total), Sc(C_total), r(C_total);
  consr::reward_outputs<double> out{consr::make_view(P.data(), C_total),  consr::make_view(Pc.data(), C_total),
                                    consr::make_view(Ps.data(), C_total), consr::make_view(Ss.data(), C_total),
                                    consr::make_view(Sc.data(), C_total), consr::make_view(r.data(), C_total)};
  const auto report = consr::contrastive_reward(consr::make_view(logp[0].data(), N), consr::make_view(logp[1].data(), N),
                                                consr::make_view(logp[2].data(), N),
                                                consr::make_view(offsets.data(), C_total + 1), out);
  std::printf("   P = exp(mean token log-prob) under (x, I); P_corrupt under (x, I~); P_semantic under (x', I).\n");
  std::printf("   r = 0.8 * (P_semantic - P) + 0.2 * (P - P_corrupt)\n");
  std::printf("   prompt 0:\n     cand  kind     grounding     P    P_corrupt  P_semantic      r\n");
  for (int c = 0; c < candidates_per_prompt; ++c)
    std::printf("     %3d   %-8s   %.2f     %.4f    %.4f     %.4f    %+.4f\n", c, kind_of(c), cands[c].grounding, P[c],
                Pc[c], Ps[c], r[c]);
  std::printf("   (%lld candidates scored, %lld empty)\n\n", static_cast<long long>(report.candidates),
              static_cast<long long>(report.empty_candidates));

  // ---------------------------------------------------------------- 3. pairs
  std::printf("3. Selecting one preference pair per prompt: best vs worst reward (spec §6)\n");
  std::vector<std::int64_t> groups;
  for (int p = 0; p <= num_prompts; ++p) groups.push_back(p * candidates_per_prompt);
  std::vector<consr::preference_pair> pairs;
  const auto sel = consr::select_pairs(consr::make_view(r.data(), C_total), consr::make_view(groups.data(), num_prompts + 1),
                                       pairs);
  for (const auto& pr : pairs)
    std::printf("   prompt %lld: chosen %2lld (%s, grounding %.2f, r %+.4f)  rejected %2lld (%s, grounding %.2f, r %+.4f)\n",
                static_cast<long long>(pr.group), static_cast<long long>(pr.chosen % candidates_per_prompt),
                kind_of(int(pr.chosen % candidates_per_prompt)), cands[pr.chosen].grounding, pr.chosen_reward,
                static_cast<long long>(pr.rejected % candidates_per_prompt),
                kind_of(int(pr.rejected % candidates_per_prompt)), cands[pr.rejected].grounding, pr.rejected_reward);
  if (pairs.empty()) {
    std::printf("no preference pair could be formed\n");
    return 1;
  }
  std::printf("   %lld pairs from %lld groups (%lld without a pair)\n\n", static_cast<long long>(sel.pairs),
              static_cast<long long>(sel.groups), static_cast<long long>(sel.groups - sel.groups_with_pairs));

  // ---------------------------------------------------------------- 4. loss
  std::printf("4. One ConSR loss step on these pairs (eqs. 11-14)\n");
  // Pack chosen and rejected sequences; the "reference model" is the policy before training,
  // the policy itself has drifted a little.
  std::vector<std::int64_t> off_w{0}, off_l{0};
  std::vector<double> a, b, a_ref, b_ref, a_corrupt, b_corrupt;
  for (const auto& pr : pairs) {
    for (auto i = offsets[pr.chosen]; i < offsets[pr.chosen + 1]; ++i) {
      a_ref.push_back(logp[0][i]);
      a.push_back(logp[0][i] + 0.05);
      a_corrupt.push_back(logp[1][i]);
    }
    for (auto i = offsets[pr.rejected]; i < offsets[pr.rejected + 1]; ++i) {
      b_ref.push_back(logp[0][i]);
      b.push_back(logp[0][i] - 0.02);
      b_corrupt.push_back(logp[1][i]);
    }
    off_w.push_back(static_cast<std::int64_t>(a.size()));
    off_l.push_back(static_cast<std::int64_t>(b.size()));
  }
  const auto Pn = static_cast<consr::index_t>(pairs.size());
  const auto Nw = static_cast<consr::index_t>(a.size()), Nl = static_cast<consr::index_t>(b.size());
  std::vector<double> w_w(Nw), w_l(Nl);
  consr::visual_weights(consr::make_view(a_ref.data(), Nw), consr::make_view(a_corrupt.data(), Nw),
                        consr::weight_side::chosen, consr::make_view(w_w.data(), Nw));
  consr::visual_weights(consr::make_view(b_ref.data(), Nl), consr::make_view(b_corrupt.data(), Nl),
                        consr::weight_side::rejected, consr::make_view(w_l.data(), Nl));
  std::printf("   visual weights, chosen of prompt 0:  ");
  for (auto i = off_w[0]; i < off_w[1]; ++i) std::printf("%.3f ", w_w[i]);
  std::printf("\n   (1 + clip(0.5 * (p(y|x,I) - p(y|x,I~)), 0, 0.2): tokens that depend on the image weigh more)\n");

  using seq = consr::dpo_sequences<double, std::int64_t>;
  seq chosen{consr::make_view<consr::host_space>(static_cast<const double*>(a.data()), Nw),
             consr::make_view<consr::host_space>(static_cast<const std::int64_t*>(off_w.data()), Pn + 1),
             consr::make_view<consr::host_space>(static_cast<const double*>(a_ref.data()), Nw),
             {},
             {},
             consr::make_view<consr::host_space>(static_cast<const double*>(w_w.data()), Nw)};
  seq rejected{consr::make_view<consr::host_space>(static_cast<const double*>(b.data()), Nl),
               consr::make_view<consr::host_space>(static_cast<const std::int64_t*>(off_l.data()), Pn + 1),
               consr::make_view<consr::host_space>(static_cast<const double*>(b_ref.data()), Nl),
               {},
               {},
               consr::make_view<consr::host_space>(static_cast<const double*>(w_l.data()), Nl)};
  for (auto type : {consr::dpo_loss_type::standard, consr::dpo_loss_type::consr}) {
    consr::dpo_options opt;
    opt.loss = type;
    std::vector<double> margin(Pn), dpo_loss(Pn), acc(Pn);
    consr::dpo_pair_metrics<double> m;
    m.margin_logit = consr::make_view(margin.data(), Pn);
    m.dpo_loss = consr::make_view(dpo_loss.data(), Pn);
    m.accuracy = consr::make_view(acc.data(), Pn);
    const double objective = consr::dpo_forward(chosen, rejected, opt, m);
    std::vector<double> ga(Nw), gb(Nl);
    consr::dpo_backward(chosen, rejected, opt, 1.0, consr::make_view(ga.data(), Nw), consr::make_view(gb.data(), Nl));
    const bool is_consr = type == consr::dpo_loss_type::consr;
    std::printf("   %s: objective %.6f, mean -log sigma(margin) %.6f, accuracy %.2f\n",
                is_consr ? "ConSR (eq. 14, length-normalized, weighted)" : "standard DPO (eq. 7)          ", objective,
                std::accumulate(dpo_loss.begin(), dpo_loss.end(), 0.0) / double(Pn),
                std::accumulate(acc.begin(), acc.end(), 0.0) / double(Pn));
    std::printf("      margins:");
    for (double d : margin) std::printf(" %+.4f", d);
    std::printf("\n      dL/d(log-prob), first chosen token %+.5f, first rejected token %+.5f\n", ga[0], gb[0]);
  }
  std::printf("   The gradient pushes chosen tokens up and rejected tokens down; ConSR scales each token\n");
  std::printf("   by its visual weight and uses the length-normalized margin.\n\n");
  std::printf("ConSR flow complete.\n");
  return 0;
}
