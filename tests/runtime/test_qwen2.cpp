// The Qwen2 decoder against an independent double-precision reference written with plain loops
// (RMSNorm, GQA attention, RoPE / mRoPE with rotate_half, SwiGLU), plus the KV cache, left-padded
// batching, tied embeddings, HF parameter names and bad input. Full-model parity with Hugging Face
// is in test_models.cpp (fixtures produced by transformers).
#include "runtime_test_support.hpp"

#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "consr_runtime/error.hpp"
#include "consr_runtime/qwen2.hpp"

using namespace consr_runtime;

namespace {

using runtime_test::randomize;

text_config tiny_config(bool mrope, bool tie = false) {
  text_config c = runtime_test::tiny_text_config(37, 24, 40, 2);  // head_dim 8 != 24 / 4 on purpose
  c.rms_norm_eps = 1e-6;
  c.tie_word_embeddings = tie;
  if (mrope) c.mrope_section = {1, 1, 2};
  return c;
}

// ---- the reference: one sequence, double precision, plain loops --------------------------------

using vec = std::vector<double>;

std::vector<double> to_vector(const torch::Tensor& t) {
  torch::Tensor d = t.detach().to(torch::kFloat64).contiguous();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

// y = W x (+ b); W row-major [out, in]
vec matvec(const vec& w, const vec* b, const vec& x, std::size_t out) {
  std::size_t in = x.size();
  vec y(out, 0.0);
  for (std::size_t o = 0; o < out; ++o) {
    double s = b ? (*b)[o] : 0.0;
    for (std::size_t i = 0; i < in; ++i) s += w[o * in + i] * x[i];
    y[o] = s;
  }
  return y;
}

vec rms(const vec& x, const vec& w, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  double r = 1.0 / std::sqrt(ss / x.size() + eps);
  vec y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = w[i] * x[i] * r;
  return y;
}

// Rotates one head vector in place: pair (j, j + d/2) by angle pos·θ^(−2j/d); with mRoPE the
// position row of frequency j is the section j falls in.
void rope(double* x, std::size_t d, const std::vector<std::int64_t>& pos3, const text_config& c) {
  std::size_t half = d / 2;
  for (std::size_t j = 0; j < half; ++j) {
    std::size_t row = 0;
    if (!c.mrope_section.empty()) {
      std::size_t acc = 0;
      for (std::size_t s = 0; s < c.mrope_section.size(); ++s) {
        acc += static_cast<std::size_t>(c.mrope_section[s]);
        if (j < acc) {
          row = s;
          break;
        }
      }
    }
    double freq = 1.0 / std::pow(c.rope_theta, 2.0 * j / d);
    double angle = static_cast<double>(pos3[row]) * freq;
    double a = x[j], b = x[j + half];
    x[j] = a * std::cos(angle) - b * std::sin(angle);
    x[j + half] = b * std::cos(angle) + a * std::sin(angle);
  }
}

// logits [n][V] of one unpadded sequence with positions pos[i] = {t, h, w} (all equal for 1-D).
std::vector<vec> reference_logits(qwen2_causal_lm& lm, const text_config& c, const std::vector<std::int64_t>& ids,
                                  const std::vector<std::vector<std::int64_t>>& pos) {
  auto params = lm->named_parameters();
  auto P = [&](const std::string& name) { return to_vector(params[name]); };
  const std::size_t n = ids.size(), H = c.hidden_size, d = c.head_dim, nh = c.num_attention_heads,
                    nkv = c.num_key_value_heads, I = c.intermediate_size, V = c.vocab_size;
  vec emb = P("model.embed_tokens.weight");
  std::vector<vec> x(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = vec(emb.begin() + ids[i] * H, emb.begin() + (ids[i] + 1) * H);
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    std::string pre = "model.layers." + std::to_string(l) + ".";
    vec wq = P(pre + "self_attn.q_proj.weight"), bq = P(pre + "self_attn.q_proj.bias");
    vec wk = P(pre + "self_attn.k_proj.weight"), bk = P(pre + "self_attn.k_proj.bias");
    vec wv = P(pre + "self_attn.v_proj.weight"), bv = P(pre + "self_attn.v_proj.bias");
    vec wo = P(pre + "self_attn.o_proj.weight");
    vec n1 = P(pre + "input_layernorm.weight"), n2 = P(pre + "post_attention_layernorm.weight");
    vec wg = P(pre + "mlp.gate_proj.weight"), wu = P(pre + "mlp.up_proj.weight"), wd = P(pre + "mlp.down_proj.weight");
    std::vector<vec> q(n), k(n), v(n);
    for (std::size_t i = 0; i < n; ++i) {
      vec h = rms(x[i], n1, c.rms_norm_eps);
      q[i] = matvec(wq, &bq, h, nh * d);
      k[i] = matvec(wk, &bk, h, nkv * d);
      v[i] = matvec(wv, &bv, h, nkv * d);
      for (std::size_t hd = 0; hd < nh; ++hd) rope(&q[i][hd * d], d, pos[i], c);
      for (std::size_t hd = 0; hd < nkv; ++hd) rope(&k[i][hd * d], d, pos[i], c);
    }
    for (std::size_t i = 0; i < n; ++i) {
      vec attn(nh * d, 0.0);
      for (std::size_t hd = 0; hd < nh; ++hd) {
        std::size_t g = hd / (nh / nkv);
        vec s(i + 1);
        double mx = -1e300;
        for (std::size_t j = 0; j <= i; ++j) {
          double dot = 0;
          for (std::size_t e = 0; e < d; ++e) dot += q[i][hd * d + e] * k[j][g * d + e];
          s[j] = dot / std::sqrt(static_cast<double>(d));
          mx = std::max(mx, s[j]);
        }
        double z = 0;
        for (auto& e : s) z += (e = std::exp(e - mx));
        for (std::size_t j = 0; j <= i; ++j)
          for (std::size_t e = 0; e < d; ++e) attn[hd * d + e] += s[j] / z * v[j][g * d + e];
      }
      vec o = matvec(wo, nullptr, attn, H);
      for (std::size_t e = 0; e < H; ++e) x[i][e] += o[e];
      vec h2 = rms(x[i], n2, c.rms_norm_eps);
      vec g = matvec(wg, nullptr, h2, I), u = matvec(wu, nullptr, h2, I);
      for (std::size_t e = 0; e < I; ++e) g[e] = g[e] / (1.0 + std::exp(-g[e])) * u[e];
      vec m = matvec(wd, nullptr, g, H);
      for (std::size_t e = 0; e < H; ++e) x[i][e] += m[e];
    }
  }
  vec fn = P("model.norm.weight");
  vec head = c.tie_word_embeddings ? emb : P("lm_head.weight");
  std::vector<vec> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = matvec(head, nullptr, rms(x[i], fn, c.rms_norm_eps), V);
  return out;
}

std::vector<std::vector<std::int64_t>> linear_positions(std::size_t n, std::int64_t start = 0) {
  std::vector<std::vector<std::int64_t>> p;
  for (std::size_t i = 0; i < n; ++i) p.push_back({start + (std::int64_t)i, start + (std::int64_t)i, start + (std::int64_t)i});
  return p;
}

torch::Tensor ids_tensor(const std::vector<std::int64_t>& ids) {
  return torch::tensor(ids, torch::kInt64).view({1, -1});
}

// max |a − ref| over a logits tensor [L, V] vs reference rows
double max_diff(const torch::Tensor& logits, const std::vector<vec>& ref) {
  torch::Tensor l = logits.to(torch::kFloat64).contiguous();
  double m = 0;
  for (std::size_t i = 0; i < ref.size(); ++i)
    for (std::size_t v = 0; v < ref[i].size(); ++v)
      m = std::max(m, std::abs(l[static_cast<std::int64_t>(i)][static_cast<std::int64_t>(v)].item<double>() - ref[i][v]));
  return m;
}

const std::vector<std::int64_t> sample_ids{3, 17, 0, 36, 5, 5, 22, 9, 30};

}  // namespace

TEST_CASE("qwen2: parameter names follow Hugging Face", "[qwen2]") {
  qwen2_causal_lm lm(tiny_config(false));
  std::set<std::string> names;
  for (auto& p : lm->named_parameters()) names.insert(p.key());
  std::set<std::string> expected{"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"};
  for (int l = 0; l < 2; ++l) {
    std::string pre = "model.layers." + std::to_string(l) + ".";
    for (const char* s : {"self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight",
                          "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias",
                          "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                          "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight"})
      expected.insert(pre + s);
  }
  CHECK(names == expected);
  auto params = lm->named_parameters();
  CHECK(params["model.layers.0.self_attn.q_proj.weight"].sizes() == torch::IntArrayRef({32, 24}));
  CHECK(params["model.layers.0.self_attn.k_proj.weight"].sizes() == torch::IntArrayRef({16, 24}));
  CHECK(params["model.layers.0.self_attn.o_proj.weight"].sizes() == torch::IntArrayRef({24, 32}));
  CHECK(params["model.layers.1.mlp.down_proj.weight"].sizes() == torch::IntArrayRef({24, 40}));

  qwen2_causal_lm tied(tiny_config(false, true));
  bool has_head = false;
  for (auto& p : tied->named_parameters()) has_head = has_head || p.key().rfind("lm_head", 0) == 0;
  CHECK_FALSE(has_head);
}

TEST_CASE("qwen2: logits equal a double-precision reference (1-D RoPE)", "[qwen2]") {
  for (bool tie : {false, true}) {
    text_config c = tiny_config(false, tie);
    qwen2_causal_lm lm(c);
    randomize(*lm, 11 + tie);
    torch::NoGradGuard no_grad;
    torch::Tensor pos = torch::arange(static_cast<std::int64_t>(sample_ids.size())).view({1, -1});
    torch::Tensor logits = lm->forward(ids_tensor(sample_ids), pos)[0];
    auto ref = reference_logits(lm, c, sample_ids, linear_positions(sample_ids.size()));
    INFO("tie_word_embeddings = " << tie);
    CHECK(max_diff(logits, ref) < 2e-4);
    // RoPE is relative: a uniform shift leaves the logits unchanged, a gap changes them.
    CHECK(max_diff(lm->forward(ids_tensor(sample_ids), pos + 5)[0], ref) < 2e-4);
    torch::Tensor gapped_pos = pos + (pos >= 4).to(torch::kInt64) * 3;
    std::vector<std::vector<std::int64_t>> gapped;
    for (std::int64_t i = 0; i < gapped_pos.size(1); ++i) {
      std::int64_t p = gapped_pos[0][i].item<std::int64_t>();
      gapped.push_back({p, p, p});
    }
    torch::Tensor with_gap = lm->forward(ids_tensor(sample_ids), gapped_pos)[0];
    CHECK(max_diff(with_gap, ref) > 1e-2);
    CHECK(max_diff(with_gap, reference_logits(lm, c, sample_ids, gapped)) < 2e-4);
  }
}

TEST_CASE("qwen2: multimodal RoPE with distinct t/h/w rows equals the reference", "[qwen2]") {
  text_config c = tiny_config(true);
  qwen2_causal_lm lm(c);
  randomize(*lm, 5);
  torch::NoGradGuard no_grad;
  // A text run, a 2x2 "image" block (t fixed, h/w raster), then text again — as get_rope_index.
  std::vector<std::vector<std::int64_t>> pos{{0, 0, 0}, {1, 1, 1}, {2, 2, 2}, {2, 2, 3}, {2, 3, 2},
                                             {2, 3, 3}, {4, 4, 4}, {5, 5, 5}, {6, 6, 6}};
  torch::Tensor p = torch::empty({3, 1, (std::int64_t)pos.size()}, torch::kInt64);
  for (std::size_t i = 0; i < pos.size(); ++i)
    for (int r = 0; r < 3; ++r) p[r][0][(std::int64_t)i] = pos[i][r];
  torch::Tensor logits = lm->forward(ids_tensor(sample_ids), p)[0];
  auto ref = reference_logits(lm, c, sample_ids, pos);
  CHECK(max_diff(logits, ref) < 2e-4);
  // Equal rows reduce to 1-D RoPE.
  torch::Tensor lin = torch::arange((std::int64_t)sample_ids.size()).view({1, 1, -1}).expand({3, 1, -1}).contiguous();
  CHECK(max_diff(lm->forward(ids_tensor(sample_ids), lin)[0],
                 reference_logits(lm, c, sample_ids, linear_positions(sample_ids.size()))) < 2e-4);
}

TEST_CASE("qwen2: KV-cache decoding equals the full forward", "[qwen2]") {
  for (bool mrope : {false, true}) {
    text_config c = tiny_config(mrope);
    qwen2_causal_lm lm(c);
    randomize(*lm, 21);
    torch::NoGradGuard no_grad;
    const std::int64_t n = static_cast<std::int64_t>(sample_ids.size());
    auto positions = [&](std::int64_t from, std::int64_t count) {
      torch::Tensor p = torch::arange(from, from + count).view({1, -1});
      return mrope ? p.unsqueeze(0).expand({3, 1, count}).contiguous() : p;
    };
    torch::Tensor full = lm->forward(ids_tensor(sample_ids), positions(0, n))[0];
    kv_cache cache;
    torch::Tensor ids = ids_tensor(sample_ids);
    const std::int64_t prefill = 4;
    std::vector<torch::Tensor> parts{lm->forward(ids.narrow(1, 0, prefill), positions(0, prefill), {}, &cache)[0]};
    CHECK(cache.length() == prefill);
    for (std::int64_t t = prefill; t < n; ++t) parts.push_back(lm->forward(ids.narrow(1, t, 1), positions(t, 1), {}, &cache)[0]);
    CHECK(cache.length() == n);
    INFO("mrope = " << mrope);
    CHECK(torch::allclose(torch::cat(parts, 0), full, 1e-5, 1e-5));
  }
}

TEST_CASE("qwen2: a left-padded batch equals each row alone", "[qwen2]") {
  text_config c = tiny_config(false);
  qwen2_causal_lm lm(c);
  randomize(*lm, 33);
  torch::NoGradGuard no_grad;
  std::vector<std::vector<std::int64_t>> rows{{3, 17, 0, 36, 5, 5, 22}, {9, 30, 1, 2}, {11}};
  const std::int64_t L = 7, pad = 0;
  torch::Tensor ids = torch::full({3, L}, pad, torch::kInt64);
  torch::Tensor mask = torch::zeros({3, L}, torch::kInt64);
  for (std::int64_t b = 0; b < 3; ++b) {
    std::int64_t off = L - (std::int64_t)rows[b].size();
    for (std::size_t i = 0; i < rows[b].size(); ++i) {
      ids[b][off + (std::int64_t)i] = rows[b][i];
      mask[b][off + (std::int64_t)i] = 1;
    }
  }
  torch::Tensor pos = positions_from_mask(mask);
  CHECK(pos[1].equal(torch::tensor({0, 0, 0, 0, 1, 2, 3}, torch::kInt64)));
  // Prefill the first 5 columns, then decode the last 2 with the cache (mask grows with it).
  kv_cache cache;
  torch::Tensor a = lm->forward(ids.narrow(1, 0, 5), pos.narrow(1, 0, 5), mask.narrow(1, 0, 5), &cache);
  torch::Tensor b = lm->forward(ids.narrow(1, 5, 2), pos.narrow(1, 5, 2), mask, &cache);
  torch::Tensor batched = torch::cat({a, b}, 1);
  for (std::int64_t r = 0; r < 3; ++r) {
    std::int64_t n = (std::int64_t)rows[r].size();
    auto ref = reference_logits(lm, c, rows[r], linear_positions(rows[r].size()));
    INFO("row " << r);
    CHECK(max_diff(batched[r].narrow(0, L - n, n), ref) < 2e-4);
  }
  // The rows of a finished sequence can be dropped from the cache.
  cache.select_rows(torch::tensor({0, 2}, torch::kInt64));
  CHECK(cache.batch_size() == 2);
}

TEST_CASE("qwen2: bf16 with left padding stays finite and close to fp32", "[qwen2]") {
  text_config c = tiny_config(false);
  qwen2_causal_lm lm32(c);
  randomize(*lm32, 44);
  qwen2_causal_lm lm16(c, torch::TensorOptions().dtype(torch::kBFloat16));
  {
    torch::NoGradGuard no_grad;
    auto p16 = lm16->named_parameters();
    for (auto& p : lm32->named_parameters()) {
      p16[p.key()].copy_(p.value());
      p.value().copy_(p16[p.key()].to(torch::kFloat32));  // the same (bf16-representable) weights
    }
  }
  torch::NoGradGuard no_grad;
  torch::Tensor ids = torch::tensor({0, 0, 0, 4, 5, 6, 1, 2, 3, 4, 5, 6}, torch::kInt64).view({2, 6});
  torch::Tensor mask = torch::tensor({0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1}, torch::kInt64).view({2, 6});
  torch::Tensor pos = positions_from_mask(mask);
  torch::Tensor a = lm16->forward(ids, pos, mask).to(torch::kFloat32);
  torch::Tensor b = lm32->forward(ids, pos, mask);
  CHECK(a.isfinite().all().item<bool>());
  CHECK(lm16->forward(ids, pos, mask).scalar_type() == torch::kBFloat16);
  // bf16 keeps ~3 significant digits; the real rows agree with fp32 to that precision.
  double scale = b.abs().max().item<double>();
  CHECK((a[0].narrow(0, 3, 3) - b[0].narrow(0, 3, 3)).abs().max().item<double>() < 0.05 * scale);
  CHECK((a[1] - b[1]).abs().max().item<double>() < 0.05 * scale);
}

TEST_CASE("qwen2: long inputs are processed in query chunks with the same result", "[qwen2]") {
  // 2^26 / (heads · T) queries per chunk: with 4 heads and T = 4200 that is 3994 rows, so a
  // 4200-token input runs as two chunks; it must equal the per-row reference on a sample.
  text_config c = tiny_config(false);
  c.max_position_embeddings = 8192;
  qwen2_causal_lm lm(c);
  randomize(*lm, 55);
  torch::NoGradGuard no_grad;
  const std::int64_t n = 4200;
  torch::Tensor ids = torch::remainder(torch::arange(n) * 7 + 3, c.vocab_size).view({1, n});
  torch::Tensor logits = lm->forward(ids, torch::arange(n).view({1, n}))[0];
  // Chunking is invisible: the tail equals a run of the same tokens through the KV cache, where
  // each step is a single chunk.
  kv_cache cache;
  lm->forward(ids.narrow(1, 0, n - 3), torch::arange(n - 3).view({1, -1}), {}, &cache);
  for (std::int64_t t = n - 3; t < n; ++t) {
    torch::Tensor step = lm->forward(ids.narrow(1, t, 1), torch::full({1, 1}, t, torch::kInt64), {}, &cache)[0][0];
    CHECK(torch::allclose(step, logits[t], 1e-4, 1e-4));
  }
}

TEST_CASE("qwen2: RMSNorm multiplies the weight after the cast back (bf16)", "[qwen2]") {
  rms_norm norm(16, 1e-6, torch::TensorOptions().dtype(torch::kBFloat16));
  torch::manual_seed(3);
  torch::Tensor x64 = torch::randn({5, 16}, torch::kFloat64) * 3;
  torch::Tensor w64 = 1 + 0.5 * torch::randn({16}, torch::kFloat64);
  {
    torch::NoGradGuard no_grad;
    norm->weight.copy_(w64);
  }
  torch::Tensor x = x64.to(torch::kBFloat16);
  torch::Tensor y = norm->forward(x);
  CHECK(y.scalar_type() == torch::kBFloat16);
  // Reference: normalise the bf16 input in double, round to bf16, then a bf16 product.
  torch::Tensor xd = x.to(torch::kFloat64);
  torch::Tensor normed = (xd / (xd.pow(2).mean(-1, true) + 1e-6).sqrt()).to(torch::kBFloat16);
  torch::Tensor expected = norm->weight.detach() * normed;
  CHECK(y.equal(expected));
}

TEST_CASE("qwen2: bad input is rejected naming the argument", "[qwen2]") {
  qwen2_causal_lm lm(tiny_config(false));
  randomize(*lm, 1);
  torch::NoGradGuard no_grad;
  torch::Tensor pos = torch::arange(3).view({1, 3});
  CHECK_THROWS_WITH(lm->forward(torch::tensor({1, 37, 2}, torch::kInt64).view({1, 3}), pos),
                    Catch::Contains("'input_ids'") && Catch::Contains("37"));
  CHECK_THROWS_WITH(lm->forward(torch::tensor({1, -1, 2}, torch::kInt64).view({1, 3}), pos), Catch::Contains("'input_ids'"));
  CHECK_THROWS_WITH(lm->forward(torch::tensor({1, 2, 3}, torch::kInt64).view({1, 3}), pos.narrow(1, 0, 2)),
                    Catch::Contains("'position_ids'"));
  CHECK_THROWS_WITH(lm->forward(torch::tensor({1, 2, 3}, torch::kInt64).view({1, 3}), torch::zeros({3, 1, 3}, torch::kInt64)),
                    Catch::Contains("'position_ids'") && Catch::Contains("mrope"));
  CHECK_THROWS_WITH(lm->forward(torch::tensor({1, 2, 3}, torch::kInt64).view({1, 3}), pos, torch::ones({1, 4})),
                    Catch::Contains("'attention_mask'"));
  kv_cache cache;
  lm->forward(torch::tensor({1, 2, 3}, torch::kInt64).view({1, 3}), pos, {}, &cache);
  CHECK_THROWS_WITH(lm->forward(torch::tensor({1, 2}, torch::kInt64).view({2, 1}), torch::zeros({2, 1}, torch::kInt64), {}, &cache),
                    Catch::Contains("'cache'"));
}

TEST_CASE("qwen2: times_transposed equals x·Wᵀ (+ b) for every row count, with and without autograd", "[qwen2]") {
  torch::manual_seed(5);
  // K not a multiple of the kernel's 16 lanes, to cover the remainder.
  const torch::Tensor w = torch::randn({301, 77}), b = torch::randn({301});
  for (std::int64_t rows : {1, 2, 3, 5, 8, 9, 17}) {
    const torch::Tensor x = torch::randn({rows, 77});
    const torch::Tensor ref = torch::mm(x.to(torch::kFloat64), w.to(torch::kFloat64).t());
    INFO(rows << " rows");
    {
      torch::NoGradGuard no_grad;
      CHECK(torch::allclose(times_transposed(x, w, {}).to(torch::kFloat64), ref, 1e-5, 1e-5));
      CHECK(torch::allclose(times_transposed(x, w, b).to(torch::kFloat64), ref + b.to(torch::kFloat64), 1e-5, 1e-5));
      CHECK(times_transposed(x, w, b).sizes() == torch::IntArrayRef{rows, 301});
    }
    // With autograd the gradient flows (the few-rows kernel is not used then).
    torch::Tensor xg = x.clone().requires_grad_(true);
    times_transposed(xg, w, b).sum().backward();
    CHECK(torch::allclose(xg.grad(), w.sum(0).expand({rows, 77}), 1e-5, 1e-5));
  }
}
