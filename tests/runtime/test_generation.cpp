// Generation and teacher-forced log-probs against Hugging Face (greedy tokens of model.generate and
// log_softmax(logits[t−1])[id_t] from tools/make_model_fixtures.py), plus the sampler against a
// plain reference of HF's temperature + top-p rule, seeding, stop tokens and batching.
#include "runtime_test_support.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "consr_runtime/error.hpp"
#include "consr_runtime/generation.hpp"
#include "consr_runtime/image.hpp"
#include "consr_runtime/models.hpp"
#include "consr_runtime/processors.hpp"
#include "consr_runtime/safetensors.hpp"
#include "consr_runtime/tokenizer.hpp"

using namespace consr_runtime;

namespace {

const std::string models_dir = std::string(CONSR_FIXTURES_DIR) + "/models/";

struct fixture : runtime_test::model_reference {
  std::shared_ptr<vision_language_model> model;
  explicit fixture(const std::string& name) : model_reference(models_dir + name), model(load_model(dir)) {}
  std::vector<std::int64_t> ids(const std::string& name) const {
    torch::Tensor t = ref.load(name).reshape({-1}).contiguous();
    return std::vector<std::int64_t>(t.data_ptr<std::int64_t>(), t.data_ptr<std::int64_t>() + t.numel());
  }
  std::int64_t token(const std::string& name) const { return meta["token_ids"][name].get<std::int64_t>(); }
  bool qwen() const { return model->config().qwen2_5_vl.has_value(); }

  // The image prompt with its image run through this model's processor (from the PNG).
  prompt_input image_prompt() const {
    prompt_input p;
    p.input_ids = ids("prompt_input_ids");
    rgb_image image = load_image(dir + "/" + meta["prompt_images"][0].get<std::string>());
    if (qwen()) {
      auto packed = qwen2_vl_image_processor::from_file(dir)({image});
      p.images.pixel_values = packed.pixel_values;
      p.images.image_grid_thw = packed.image_grid_thw;
    } else {
      auto packed = llava_onevision_image_processor::from_directory(dir)({image});
      p.images.pixel_values = packed.pixel_values;
      p.images.image_sizes = packed.image_sizes;
    }
    return p;
  }
  prompt_input text_prompt() const {
    prompt_input p;
    p.input_ids = ids("text_input_ids");
    return p;
  }
  std::vector<std::int64_t> stops() const {
    auto ids = chat_stop_token_ids(tokenizer::from_directory(dir));
    REQUIRE(ids == std::vector<std::int64_t>{token("im_end"), token("endoftext")});
    return ids;
  }
};

fixture& qwen() {
  static fixture f("qwen2_5_vl_tiny");
  return f;
}
fixture& llava() {
  static fixture f("llava_onevision_tiny");
  return f;
}

sampling_options greedy(const fixture& f, std::int64_t max_new_tokens) {
  sampling_options o;
  o.temperature = 0;
  o.max_new_tokens = max_new_tokens;
  o.stop_token_ids = f.stops();
  return o;
}

// generated tokens plus the stop token, as HF's generate returns them
std::vector<std::int64_t> with_stop(const generation_result& r) {
  std::vector<std::int64_t> out = r.token_ids;
  if (r.stop_token) out.push_back(*r.stop_token);
  return out;
}

// HF's TopPLogitsWarper after a temperature, written directly: probabilities (double) of the
// tokens kept, renormalised; removed tokens get 0.
std::vector<double> reference_distribution(const std::vector<double>& logits, double temperature, double top_p) {
  std::vector<double> p(logits.size());
  double mx = *std::max_element(logits.begin(), logits.end()), z = 0;
  for (std::size_t i = 0; i < p.size(); ++i) z += (p[i] = std::exp((logits[i] - mx) / temperature));
  for (auto& v : p) v /= z;
  // Ascending sort; remove while the cumulative mass (ascending) <= 1 − top_p; keep the largest.
  std::vector<std::size_t> asc(p.size());
  std::iota(asc.begin(), asc.end(), 0);
  std::stable_sort(asc.begin(), asc.end(), [&](std::size_t a, std::size_t b) { return p[a] < p[b]; });
  std::vector<double> kept = p;
  double cum = 0;
  for (std::size_t k = 0; k + 1 < asc.size(); ++k) {
    cum += p[asc[k]];
    if (cum <= 1 - top_p) kept[asc[k]] = 0;
  }
  double s = std::accumulate(kept.begin(), kept.end(), 0.0);
  for (auto& v : kept) v /= s;
  return kept;
}

}  // namespace

TEST_CASE("generation: sampler matches HF's temperature + top-p distribution", "[generation]") {
  const std::vector<double> logits{0.3, 2.0, -1.0, 1.2, 2.0, -3.0, 0.9};
  torch::Tensor t = torch::tensor(logits, torch::kFloat64);
  for (double temperature : {0.5, 1.0, 1.7}) {
    for (double top_p : {1.0, 0.95, 0.7, 0.4, 0.05}) {
      auto expected = reference_distribution(logits, temperature, top_p);
      const int draws = 20000;
      std::vector<double> freq(logits.size(), 0.0);
      for (int k = 0; k < draws; ++k) freq[sample_token(t, temperature, top_p, (k + 0.5) / draws)] += 1.0 / draws;
      INFO("T = " << temperature << ", top_p = " << top_p);
      // Stratified u: every frequency is within 1/draws of the exact probability.
      for (std::size_t i = 0; i < logits.size(); ++i) CHECK(std::abs(freq[i] - expected[i]) <= 1.5 / draws);
    }
  }
  // T = 0: the first maximum (ids 1 and 4 tie).
  CHECK(sample_token(t, 0.0, 1.0, 0.99) == 1);
  // Tiny top_p keeps only the most likely token whatever u; on an exact tie HF keeps the last of the
  // tied maxima (its stable ascending sort; checked with transformers' TopPLogitsWarper(0.05) on
  // these logits: only id 4 survives).
  for (double u : {0.0, 0.5, 0.999}) CHECK(sample_token(t, 1.0, 1e-9, u) == 4);
  for (double u : {0.0, 0.5, 0.999}) CHECK(sample_token(t, 1.0, 0.05, u) == 4);
}

TEST_CASE("generation: top-p boundary follows HF (keep while the mass before a token < top_p)", "[generation]") {
  // probabilities 0.5, 0.3, 0.2
  torch::Tensor t = torch::tensor({std::log(0.2), std::log(0.5), std::log(0.3)}, torch::kFloat64);
  auto support = [&](double top_p) {
    std::vector<int> seen(3, 0);
    for (int k = 0; k < 1000; ++k) seen[sample_token(t, 1.0, top_p, (k + 0.5) / 1000)] = 1;
    return seen;
  };
  CHECK(support(0.49) == std::vector<int>{0, 1, 0});
  CHECK(support(0.51) == std::vector<int>{0, 1, 1});
  CHECK(support(0.79) == std::vector<int>{0, 1, 1});
  CHECK(support(0.81) == std::vector<int>{1, 1, 1});
  // Bad options and logits name the argument.
  CHECK_THROWS_WITH(sample_token(t, -1.0, 1.0, 0.5), Catch::Contains("'temperature'"));
  CHECK_THROWS_WITH(sample_token(t, 1.0, 0.0, 0.5), Catch::Contains("'top_p'"));
  CHECK_THROWS_WITH(sample_token(t, 1.0, 1.5, 0.5), Catch::Contains("'top_p'"));
  CHECK_THROWS_WITH(sample_token(torch::tensor({0.0, std::nan("")}), 1.0, 1.0, 0.5), Catch::Contains("'logits'"));
}

TEST_CASE("generation: counter_uniform is a pure function of (seed, stream, counter)", "[generation]") {
  CHECK(counter_uniform(1, 2, 3) == counter_uniform(1, 2, 3));
  CHECK(counter_uniform(1, 2, 3) != counter_uniform(2, 2, 3));
  CHECK(counter_uniform(1, 2, 3) != counter_uniform(1, 3, 3));
  CHECK(counter_uniform(1, 2, 3) != counter_uniform(1, 2, 4));
  double sum = 0, lo = 1, hi = 0;
  for (std::uint64_t i = 0; i < 20000; ++i) {
    double u = counter_uniform(7, 0, i);
    REQUIRE(u >= 0.0);
    REQUIRE(u < 1.0);
    sum += u;
    lo = std::min(lo, u);
    hi = std::max(hi, u);
  }
  CHECK(std::abs(sum / 20000 - 0.5) < 0.01);
  CHECK(lo < 0.001);
  CHECK(hi > 0.999);
}

TEST_CASE("generation: greedy continuation equals HF generate", "[generation]") {
  for (fixture* f : {&qwen(), &llava()}) {
    auto expected = f->ids("greedy_ids");
    auto result = generate(*f->model, {f->image_prompt()}, greedy(*f, f->meta["greedy"]["max_new_tokens"].get<std::int64_t>()));
    INFO(f->dir);
    CHECK(with_stop(result.at(0)) == expected);
  }
}

TEST_CASE("generation: teacher-forced log-probs equal HF", "[generation]") {
  for (fixture* f : {&qwen(), &llava()}) {
    auto response = f->ids("response_ids");  // "A gradient with a red circle.<|im_end|>"
    REQUIRE(response.back() == f->token("im_end"));
    std::vector<std::int64_t> without_end(response.begin(), response.end() - 1);
    // The end-of-turn token is appended (spec decision), unless the response already ends with it.
    auto scored = score_responses(*f->model, {f->image_prompt(), f->text_prompt(), f->image_prompt()},
                                  {without_end, without_end, response}, f->token("im_end"));
    torch::Tensor image_ref = (*f)["response_logprobs"];
    torch::Tensor text_ref = (*f)["text_response_logprobs"];
    INFO(f->dir);
    for (int row : {0, 1, 2}) CHECK(scored[row].token_ids == response);
    auto diff = [](const scored_response& s, const torch::Tensor& ref) {
      REQUIRE(static_cast<std::int64_t>(s.logprobs.size()) == ref.numel());
      double m = 0;
      for (std::size_t i = 0; i < s.logprobs.size(); ++i)
        m = std::max(m, std::abs(static_cast<double>(s.logprobs[i]) - ref[static_cast<std::int64_t>(i)].item<double>()));
      return m;
    };
    CHECK(diff(scored[0], image_ref) <= 1e-4);
    CHECK(diff(scored[1], text_ref) <= 1e-4);
    CHECK(diff(scored[2], image_ref) <= 1e-4);
    // The image matters: with and without it the log-probs differ.
    CHECK(diff(scored[0], text_ref) > 1e-3);
    WARN(f->dir << ": max |logprob − HF| = " << std::max(diff(scored[0], image_ref), diff(scored[1], text_ref)));

    // The differentiable form gives the same numbers and a gradient.
    auto batch = teacher_forced_logprobs(*f->model, {f->text_prompt()}, {response}, f->token("im_end"));
    CHECK(batch.offsets == std::vector<std::int64_t>{0, static_cast<std::int64_t>(response.size())});
    CHECK(batch.logprobs.requires_grad());
    CHECK(torch::allclose(batch.logprobs.detach(), text_ref, 1e-5, 1e-4));
  }
}

TEST_CASE("generation: seeded sampling is reproducible and batch-independent", "[generation]") {
  fixture& f = qwen();
  sampling_options o;
  o.temperature = 1.0;
  o.top_p = 0.9;
  o.max_new_tokens = 12;
  o.seed = 1234;
  prompt_input image = f.image_prompt(), text = f.text_prompt();
  auto a = generate(*f.model, {image, text}, o, {5, 9});
  auto b = generate(*f.model, {image, text}, o, {5, 9});
  CHECK(a[0].token_ids == b[0].token_ids);
  CHECK(a[1].token_ids == b[1].token_ids);
  // The same (seed, key) alone, or in another batch order, gives the same tokens.
  CHECK(generate(*f.model, {text}, o, {9})[0].token_ids == a[1].token_ids);
  auto swapped = generate(*f.model, {text, image}, o, {9, 5});
  CHECK(swapped[0].token_ids == a[1].token_ids);
  CHECK(swapped[1].token_ids == a[0].token_ids);
  // Another seed or key gives other tokens.
  sampling_options o2 = o;
  o2.seed = 99;
  CHECK(generate(*f.model, {text}, o2, {9})[0].token_ids != a[1].token_ids);
  CHECK(generate(*f.model, {text}, o, {10})[0].token_ids != a[1].token_ids);
  // Samples of one prompt: sample k does not depend on how many are drawn.
  auto samples = generate_samples(*f.model, image, 3, o, 4);
  CHECK(samples[1].token_ids == a[0].token_ids);
  CHECK(generate_samples(*f.model, image, 1, o, 5)[0].token_ids == a[0].token_ids);
  CHECK(samples[0].token_ids != samples[1].token_ids);
}

TEST_CASE("generation: top_p tiny equals greedy; stop tokens and max_new_tokens end a row", "[generation]") {
  for (fixture* f : {&qwen(), &llava()}) {
    prompt_input text = f->text_prompt();
    auto greedy_tokens = generate(*f->model, {text}, greedy(*f, 10))[0];
    sampling_options o = greedy(*f, 10);
    o.temperature = 1.3;
    o.top_p = 1e-7;
    o.seed = 3;
    INFO(f->dir);
    CHECK(generate(*f->model, {text}, o)[0].token_ids == greedy_tokens.token_ids);
    REQUIRE(greedy_tokens.token_ids.size() >= 3);
    CHECK(greedy_tokens.reason == finish_reason::length);
    // Declare the third greedy token a stop token: the row ends there, without it.
    sampling_options stop = greedy(*f, 10);
    stop.stop_token_ids = {greedy_tokens.token_ids[2]};
    auto stopped = generate(*f->model, {text}, stop)[0];
    CHECK(stopped.reason == finish_reason::stop_token);
    CHECK(stopped.stop_token == greedy_tokens.token_ids[2]);
    CHECK(stopped.token_ids == std::vector<std::int64_t>(greedy_tokens.token_ids.begin(), greedy_tokens.token_ids.begin() + 2));
    CHECK(generate(*f->model, {text}, greedy(*f, 0))[0].token_ids.empty());
  }
}

TEST_CASE("generation: a batch equals its prompts one by one (greedy)", "[generation]") {
  for (fixture* f : {&qwen(), &llava()}) {
    prompt_input image = f->image_prompt(), text = f->text_prompt();
    prompt_input short_text;
    short_text.input_ids = std::vector<std::int64_t>(text.input_ids.begin(), text.input_ids.begin() + 9);
    sampling_options o = greedy(*f, 6);
    // A stop token that ends one row early exercises dropping finished rows from the batch.
    auto alone_short = generate(*f->model, {short_text}, o)[0];
    REQUIRE(alone_short.token_ids.size() >= 2);
    o.stop_token_ids.push_back(alone_short.token_ids[1]);
    std::vector<prompt_input> prompts{image, text, short_text};
    auto batched = generate(*f->model, prompts, o);
    INFO(f->dir);
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      auto alone = generate(*f->model, {prompts[i]}, o)[0];
      CHECK(batched[i].token_ids == alone.token_ids);
      CHECK(batched[i].stop_token == alone.stop_token);
    }
    CHECK(batched[2].token_ids.size() == 1);
  }
}

TEST_CASE("generation: collate left-pads and bad options are rejected", "[generation]") {
  prompt_input a, b;
  a.input_ids = {5, 6, 7};
  b.input_ids = {8};
  model_inputs in = collate({a, b}, 0);
  CHECK(in.input_ids.equal(torch::tensor({5, 6, 7, 0, 0, 8}, torch::kInt64).view({2, 3})));
  CHECK(in.attention_mask.equal(torch::tensor({1, 1, 1, 0, 0, 1}, torch::kInt64).view({2, 3})));
  CHECK_THROWS_WITH(collate({}, 0), Catch::Contains("'prompts'"));
  CHECK_THROWS_WITH(collate({a, prompt_input{}}, 0), Catch::Contains("'prompts'") && Catch::Contains("prompt 1"));

  fixture& f = qwen();
  sampling_options o;
  o.top_p = 0;
  CHECK_THROWS_WITH(generate(*f.model, {a}, o), Catch::Contains("'top_p'"));
  o = sampling_options{};
  o.temperature = -0.5;
  CHECK_THROWS_WITH(generate(*f.model, {a}, o), Catch::Contains("'temperature'"));
  o = sampling_options{};
  o.stop_token_ids = {f.model->text().vocab_size};
  CHECK_THROWS_WITH(generate(*f.model, {a}, o), Catch::Contains("'stop_token_ids'"));
  CHECK_THROWS_WITH(generate(*f.model, {a}, sampling_options{}, {1, 2}), Catch::Contains("'sample_keys'"));
  CHECK_THROWS_WITH(score_responses(*f.model, {a}, {{1, 99999}}, f.token("im_end")), Catch::Contains("'responses'"));
  CHECK_THROWS_WITH(score_responses(*f.model, {a, b}, {{1}}, f.token("im_end")), Catch::Contains("'responses'"));
}

namespace {

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  return m;
}

}  // namespace

TEST_CASE("generation: shared-prefix scoring equals per-row scoring and HF", "[generation]") {
  for (fixture* f : {&qwen(), &llava()}) {
    INFO(f->dir);
    const std::int64_t end = f->token("im_end");
    auto response = f->ids("response_ids");  // ends with <|im_end|>
    std::vector<std::int64_t> without_end(response.begin(), response.end() - 1);
    std::vector<std::int64_t> two(response.begin(), response.begin() + 2);
    std::vector<std::int64_t> reversed(without_end.rbegin(), without_end.rend());
    // Different lengths (right padding inside a batch), an empty response (only <|im_end|> is
    // scored) and one equal to another.
    const std::vector<std::vector<std::int64_t>> responses{without_end, two, {}, reversed, response, without_end};
    for (const prompt_input& prompt : {f->image_prompt(), f->text_prompt()}) {
      auto per_row = score_responses(*f->model, std::vector<prompt_input>(responses.size(), prompt), responses, end, 3);
      for (std::int64_t batch : {1, 2, 4, 8}) {
        INFO("batch_size " << batch << ", prompt of " << prompt.input_ids.size() << " tokens");
        auto shared = score_responses_shared(*f->model, prompt, responses, end, batch);
        REQUIRE(shared.size() == responses.size());
        for (std::size_t i = 0; i < responses.size(); ++i) {
          CHECK(shared[i].token_ids == per_row[i].token_ids);
          CHECK(max_abs_diff(shared[i].logprobs, per_row[i].logprobs) <= 1e-5);
        }
      }
    }
    // Against HF's log-probs of the image prompt's response.
    auto shared = score_responses_shared(*f->model, f->image_prompt(), {without_end}, end);
    torch::Tensor ref = (*f)["response_logprobs"];
    REQUIRE(static_cast<std::int64_t>(shared[0].logprobs.size()) == ref.numel());
    for (std::size_t i = 0; i < shared[0].logprobs.size(); ++i)
      CHECK(std::abs(shared[0].logprobs[i] - ref[static_cast<std::int64_t>(i)].item<double>()) <= 1e-4);
    CHECK(score_responses_shared(*f->model, f->text_prompt(), {}, end).empty());
  }
  fixture& f = qwen();
  const std::int64_t end = f.token("im_end");
  CHECK_THROWS_WITH(score_responses_shared(*f.model, prompt_input{}, {{1}}, end), Catch::Contains("'prompt'"));
  CHECK_THROWS_WITH(score_responses_shared(*f.model, f.text_prompt(), {{1}}, end, 0), Catch::Contains("'batch_size'"));
  CHECK_THROWS_WITH(score_responses_shared(*f.model, f.text_prompt(), {{1}, {2, f.model->image_token_id()}}, end),
                    Catch::Contains("'responses'") && Catch::Contains("response 1"));
  CHECK_THROWS_WITH(score_responses_shared(*f.model, f.text_prompt(), {{-1}}, end), Catch::Contains("'responses'"));
}

TEST_CASE("generation: generate_samples prefills once and equals generate over copies", "[generation]") {
  for (fixture* f : {&qwen(), &llava()}) {
    INFO(f->dir);
    prompt_input image = f->image_prompt();
    // Greedy: every sample is the single greedy continuation.
    sampling_options g = greedy(*f, 8);
    auto samples = generate_samples(*f->model, image, 3, g);
    auto alone = generate(*f->model, {image}, g)[0];
    for (const auto& s : samples) CHECK(s.token_ids == alone.token_ids);
    // Sampled: sample k equals generate over copies with key first_key + k.
    sampling_options o;
    o.temperature = 1.0;
    o.max_new_tokens = 10;
    o.seed = 77;
    o.stop_token_ids = f->stops();
    auto drawn = generate_samples(*f->model, image, 4, o, 20);
    auto copies = generate(*f->model, std::vector<prompt_input>(4, image), o, {20, 21, 22, 23});
    for (std::size_t k = 0; k < drawn.size(); ++k) {
      CHECK(drawn[k].token_ids == copies[k].token_ids);
      CHECK(drawn[k].stop_token == copies[k].stop_token);
    }
    CHECK(generate_samples(*f->model, image, 2, greedy(*f, 0))[1].token_ids.empty());
  }
  CHECK_THROWS_WITH(generate_samples(*qwen().model, prompt_input{}, 2, sampling_options{}), Catch::Contains("'prompt'"));
  CHECK_THROWS_WITH(generate_samples(*qwen().model, qwen().text_prompt(), 0, sampling_options{}),
                    Catch::Contains("'num_samples'"));
}

TEST_CASE("generation: extend_hidden checks its arguments", "[generation]") {
  fixture& f = qwen();
  torch::NoGradGuard no_grad;
  decode_state none;
  CHECK_THROWS_WITH(f.model->extend_hidden(torch::ones({1, 2}, torch::kInt64), {}, none), Catch::Contains("'state'"));
  decode_state state;
  f.model->forward_hidden(collate({f.text_prompt()}, 0), &state);
  CHECK_THROWS_WITH(f.model->extend_hidden(torch::ones({2, 2}, torch::kInt64), {}, state), Catch::Contains("'ids'"));
  CHECK_THROWS_WITH(f.model->extend_hidden(torch::ones({1, 2}, torch::kInt64), torch::ones({1, 3}), state),
                    Catch::Contains("'mask'"));
  CHECK_THROWS_WITH(f.model->extend_hidden(torch::full({1, 1}, f.model->image_token_id(), torch::kInt64), {}, state),
                    Catch::Contains("'ids'") && Catch::Contains("image token"));
  CHECK_THROWS_WITH(f.model->extend_hidden(torch::full({1, 1}, f.model->text().vocab_size, torch::kInt64), {}, state),
                    Catch::Contains("'ids'"));
  // A padded id outside the vocabulary is not read; the state grows by the real tokens only.
  const std::int64_t before = state.real_length.item<std::int64_t>();
  torch::Tensor ids = torch::tensor({5, 6, -1}, torch::kInt64).view({1, 3});
  torch::Tensor mask = torch::tensor({1, 1, 0}, torch::kInt64).view({1, 3});
  CHECK(f.model->extend_hidden(ids, mask, state).sizes() == torch::IntArrayRef{1, 3, f.model->text().hidden_size});
  CHECK(state.real_length.item<std::int64_t>() == before + 2);
}

TEST_CASE("generation: prompts that share a prefix (one image, several questions) equal their rows alone", "[generation]") {
  for (fixture* f : {&qwen(), &llava()}) {
    INFO(f->dir);
    const prompt_input base = f->image_prompt();
    std::vector<prompt_input> prompts;
    for (const std::vector<std::int64_t>& rest : std::vector<std::vector<std::int64_t>>{{5, 6, 7}, {8}, {9, 10, 11, 12, 13}}) {
      prompt_input p = base;
      p.input_ids.insert(p.input_ids.end(), rest.begin(), rest.end());
      prompts.push_back(p);
    }
    sampling_options g = greedy(*f, 7);
    auto batched = generate(*f->model, prompts, g);
    sampling_options o;
    o.temperature = 1.0;
    o.max_new_tokens = 9;
    o.seed = 5;
    o.stop_token_ids = f->stops();
    auto sampled = generate(*f->model, prompts, o, {3, 4, 5});
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      CHECK(batched[i].token_ids == generate(*f->model, {prompts[i]}, g)[0].token_ids);
      auto alone = generate(*f->model, {prompts[i]}, o, {3 + i})[0];
      CHECK(sampled[i].token_ids == alone.token_ids);
      CHECK(sampled[i].stop_token == alone.stop_token);
    }
  }
}

TEST_CASE("generation: token_logprobs_of equals log_softmax of the logits, gradients included", "[generation]") {
  for (fixture* f : {&qwen(), &llava()}) {
    INFO(f->dir);
    vision_language_model& m = *f->model;
    torch::manual_seed(3);
    const std::vector<std::int64_t> targets{0, 5, m.text().vocab_size - 1, 17, 5, 2, 40};
    const torch::Tensor base = torch::randn({7, m.text().hidden_size});
    auto reference = [&](const torch::Tensor& h) {
      torch::Tensor logp = torch::log_softmax(m.logits(h).to(torch::kFloat64), -1);
      return logp.gather(1, torch::tensor(targets, torch::kInt64).unsqueeze(1)).squeeze(1);
    };
    torch::Tensor h1 = base.clone().requires_grad_(true), h2 = base.clone().requires_grad_(true);
    torch::Tensor ours = token_logprobs_of(m, h1, targets);
    torch::Tensor ref = reference(h2);
    CHECK(ours.scalar_type() == torch::kFloat32);
    CHECK(torch::allclose(ours.to(torch::kFloat64), ref.detach(), 1e-5, 1e-5));
    const torch::Tensor weights = torch::linspace(0.5, 2.0, 7);
    (ours * weights).sum().backward();
    (ref * weights.to(torch::kFloat64)).sum().backward();
    CHECK(torch::allclose(h1.grad(), h2.grad(), 1e-5, 1e-5));
    if (m.lm_head) {  // a LoRA adapter on lm_head changes the logits: the result follows them
      m.lm_head->attach_lora(torch::randn({2, m.text().hidden_size}) * 0.1, torch::randn({m.text().vocab_size, 2}) * 0.1, 2.0);
      torch::NoGradGuard no_grad;
      CHECK(torch::allclose(token_logprobs_of(m, base, targets).to(torch::kFloat64), reference(base), 1e-5, 1e-5));
      m.lm_head->detach_lora();
    }
    CHECK_THROWS_WITH(token_logprobs_of(m, base, {1, 2}), Catch::Contains("'hidden'"));
  }
}
