// Full-model parity with Hugging Face transformers 5.24 (fp32, eager attention) on the tiny
// fixtures of tools/make_model_fixtures.py: Qwen2.5-VL (multimodal RoPE) and LLaVA-OneVision, with an
// image in the input and text-only, from the processor's pixel_values and from HF's vision features;
// get_rope_index; the sharded copies in the other hub naming; KV-cache decoding and batching with
// images; bad input.
#include "runtime_test_support.hpp"

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "consr_runtime/chat_template.hpp"
#include "consr_runtime/error.hpp"
#include "consr_runtime/generation.hpp"
#include "consr_runtime/image.hpp"
#include "consr_runtime/models.hpp"
#include "consr_runtime/tokenizer.hpp"
#include "consr_runtime/vision.hpp"
#include "consr_runtime/processors.hpp"
#include "consr_runtime/safetensors.hpp"

using namespace consr_runtime;

namespace {

const std::string models_dir = std::string(CONSR_FIXTURES_DIR) + "/models/";
const std::string qwen_dir = models_dir + "qwen2_5_vl_tiny";
const std::string llava_dir = models_dir + "llava_onevision_tiny";

using fixture = runtime_test::model_reference;

const fixture& qwen_fixture() {
  static fixture f(qwen_dir);
  return f;
}
const fixture& llava_fixture() {
  static fixture f(llava_dir);
  return f;
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  REQUIRE(a.sizes() == b.sizes());
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

// Logits rows at the fixture's text and image positions vs HF.
void check_prompt_logits(const torch::Tensor& logits, const fixture& f) {
  torch::Tensor text_pos = f["prompt_logits_text_positions"];
  torch::Tensor image_pos = f["prompt_logits_image_positions"];
  double text_err = max_abs_diff(logits.index_select(0, text_pos), f["prompt_logits_text"]);
  double image_err = max_abs_diff(logits.index_select(0, image_pos), f["prompt_logits_image"]);
  INFO("text positions: " << text_pos.numel() << ", image positions: " << image_pos.numel());
  CHECK(text_err <= 1e-4);
  CHECK(image_err <= 1e-4);
  // The fixture's logits are not trivially small (the tolerance means something).
  CHECK(f["prompt_logits_text"].abs().max().item<double>() > 0.05);
  WARN("max |logits − HF| = " << text_err << " (text positions), " << image_err << " (image positions)");
}

rgb_image fixture_image(const fixture& f) {
  return load_image(f.dir + "/" + f.meta["prompt_images"][0].get<std::string>());
}

// The fixture's prompt (its input_ids), with `pixel_values` as its image when given; the caller adds
// the family's image_grid_thw / image_sizes or the features.
model_inputs prompt_inputs(const fixture& f, const torch::Tensor& pixel_values = {}) {
  model_inputs in;
  in.input_ids = f["prompt_input_ids"];
  in.images.pixel_values = pixel_values;
  return in;
}

model_inputs qwen_image_inputs_from_pixels() {
  const fixture& f = qwen_fixture();
  const std::int64_t rows = f["prompt_image_grid_thw"].prod().item<std::int64_t>();
  model_inputs in = prompt_inputs(f, f["pixel_values"].narrow(0, 0, rows));
  in.images.image_grid_thw = f["prompt_image_grid_thw"];
  return in;
}

}  // namespace

TEST_CASE("models: Qwen2.5-VL get_rope_index equals HF", "[models][qwen]") {
  const fixture& f = qwen_fixture();
  auto config = load_model_config(qwen_dir);
  torch::Tensor next;
  torch::Tensor ids = f["prompt_input_ids"];
  torch::Tensor pos = qwen2_5_vl_rope_index(ids, {}, f["prompt_image_grid_thw"], config.image_token_id(),
                                            config.qwen2_5_vl->vision.spatial_merge_size, &next);
  CHECK(pos.equal(f["prompt_position_ids"]));
  CHECK((next - ids.size(1)).equal(f["prompt_rope_deltas"]));
  // The image really has 2-D positions (h and w rows differ somewhere).
  CHECK_FALSE(pos[1].equal(pos[2]));

  SECTION("left padding: a padded row gets the positions it gets alone") {
    const std::int64_t len = ids.size(1), pad = 5;
    torch::Tensor padded = torch::cat({torch::full({1, pad}, 7, torch::kInt64), ids}, 1);
    torch::Tensor mask = torch::cat({torch::zeros({1, pad}, torch::kInt64), torch::ones({1, len}, torch::kInt64)}, 1);
    torch::Tensor batch_ids = torch::cat({torch::cat({ids, torch::full({1, pad}, 9, torch::kInt64)}, 1), padded}, 0);
    torch::Tensor batch_mask = torch::cat({torch::ones({1, len + pad}, torch::kInt64), mask}, 0);
    torch::Tensor grids = torch::cat({f["prompt_image_grid_thw"], f["prompt_image_grid_thw"]}, 0);
    torch::Tensor next2;
    torch::Tensor p2 = qwen2_5_vl_rope_index(batch_ids, batch_mask, grids, config.image_token_id(), 2, &next2);
    CHECK(p2.select(1, 1).narrow(1, pad, len).equal(f["prompt_position_ids"].select(1, 0)));
    CHECK(p2.select(1, 1).narrow(1, 0, pad).eq(0).all().item<bool>());
    CHECK(next2[1].item<std::int64_t>() == next[0].item<std::int64_t>());
    // Row 0 has 5 trailing text tokens after the prompt: its next position is 5 further.
    CHECK(next2[0].item<std::int64_t>() == next[0].item<std::int64_t>() + pad);
  }
  SECTION("image tokens and grids must agree") {
    torch::Tensor grid = f["prompt_image_grid_thw"];
    CHECK_THROWS_WITH(qwen2_5_vl_rope_index(ids, {}, grid.narrow(0, 0, 0), config.image_token_id(), 2),
                      Catch::Contains("'input_ids'") && Catch::Contains("more image tokens"));
    CHECK_THROWS_WITH(qwen2_5_vl_rope_index(ids, {}, torch::cat({grid, grid}, 0), config.image_token_id(), 2),
                      Catch::Contains("'image_grid_thw'"));
    torch::Tensor bigger = grid.clone();
    bigger[0][1] += 2;
    CHECK_THROWS_WITH(qwen2_5_vl_rope_index(ids, {}, bigger, config.image_token_id(), 2),
                      Catch::Contains("'input_ids'") && Catch::Contains("needs"));
    torch::Tensor odd = grid.clone();
    odd[0][2] += 1;
    CHECK_THROWS_WITH(qwen2_5_vl_rope_index(ids, {}, odd, config.image_token_id(), 2), Catch::Contains("'image_grid_thw'"));
  }
}

TEST_CASE("models: Qwen2.5-VL logits equal HF (fp32, image in the input)", "[models][qwen]") {
  const fixture& f = qwen_fixture();
  auto model = qwen2_5_vl_model::load(qwen_dir);
  model->eval();
  torch::NoGradGuard no_grad;

  SECTION("from the fixture's pixel_values") {
    torch::Tensor logits = model->forward(qwen_image_inputs_from_pixels())[0];
    check_prompt_logits(logits, f);
  }
  SECTION("from the PNG through the processor (decode → smart_resize → normalize → pack)") {
    auto processor = qwen2_vl_image_processor::from_file(qwen_dir);
    auto packed = processor({fixture_image(f)});
    model_inputs in = prompt_inputs(f, packed.pixel_values);
    in.images.image_grid_thw = packed.image_grid_thw;
    CHECK(packed.image_grid_thw.equal(f["prompt_image_grid_thw"]));
    check_prompt_logits(model->forward(in)[0], f);
  }
  SECTION("from HF's vision features (the decoder, merge and mRoPE alone)") {
    model_inputs in = prompt_inputs(f);
    in.images.image_grid_thw = f["prompt_image_grid_thw"];
    const std::int64_t n = f.meta["num_image_tokens"].get<std::int64_t>();
    in.images.features = f["vision_features"].narrow(0, 0, n);
    check_prompt_logits(model->forward(in)[0], f);
  }
  SECTION("vision encoder output equals HF's merger output") {
    image_inputs images;
    images.pixel_values = f["pixel_values"];
    images.image_grid_thw = f["image_grid_thw"];
    CHECK(max_abs_diff(model->image_features(images), f["vision_features"]) <= 1e-4);
  }
}

TEST_CASE("models: text-only logits equal HF", "[models]") {
  for (const std::string& dir : {qwen_dir, llava_dir}) {
    fixture f(dir);
    auto model = load_model(dir);
    torch::NoGradGuard no_grad;
    model_inputs in;
    in.input_ids = f["text_input_ids"].view({1, -1});
    double err = max_abs_diff(model->forward(in)[0], f["text_logits"]);
    INFO(dir);
    CHECK(err <= 1e-4);
    WARN(dir << ": text-only max |logits − HF| = " << err);
  }
}

TEST_CASE("models: LLaVA-OneVision logits equal HF (fp32, image in the input)", "[models][llava]") {
  const fixture& f = llava_fixture();
  auto model = llava_onevision_model::load(llava_dir);
  torch::NoGradGuard no_grad;

  SECTION("from the PNG through the processor (anyres tiles, packing with image_newline)") {
    auto processor = llava_onevision_image_processor::from_directory(llava_dir);
    auto packed = processor({fixture_image(f)});
    model_inputs in = prompt_inputs(f, packed.pixel_values);
    in.images.image_sizes = packed.image_sizes;
    CHECK(packed.num_image_tokens.at(0) == f.meta["num_image_tokens"].get<std::int64_t>());
    check_prompt_logits(model->forward(in)[0], f);
  }
  SECTION("from HF's packed image features (the decoder and merge alone)") {
    model_inputs in = prompt_inputs(f);
    in.images.features = f["vision_features"];
    check_prompt_logits(model->forward(in)[0], f);
  }
}

TEST_CASE("models: LLaVA-OneVision with two images in one prompt — one tile and 730 features each",
          "[models][llava][multi_image]") {
  // LlavaOnevisionModel.get_image_features with batch_num_images = [2]: need_patching is false, so
  // each image is its one (square-padded) tile, and pack_image_features appends one image_newline
  // to its 729 base features.
  const fixture& f = llava_fixture();
  auto model = llava_onevision_model::load(llava_dir);
  torch::NoGradGuard no_grad;
  const auto processor = llava_onevision_image_processor::from_directory(llava_dir);
  const rgb_image a = load_image(models_dir + "images/" + f.meta["images"][0].get<std::string>());
  const rgb_image b = load_image(models_dir + "images/" + f.meta["images"][1].get<std::string>());
  const auto packed = processor({a, b});
  image_inputs images;
  images.pixel_values = packed.pixel_values;
  images.image_sizes = packed.image_sizes;
  images.batch_num_images = packed.batch_num_images;
  const torch::Tensor features = model->image_features(images);
  REQUIRE(features.size(0) == 1460);
  const torch::Tensor tiles = model->vision->tile_features(packed.pixel_values);  // [2, 729, hidden]
  const torch::Tensor newline = model->named_parameters()["model.image_newline"];
  for (std::int64_t k = 0; k < 2; ++k) {
    CHECK(torch::equal(features.narrow(0, 730 * k, 729), tiles[k]));
    CHECK(torch::equal(features[730 * k + 729], newline));
  }
  // Without batch_num_images, one tile per image is read the same way (an anyres image has >= 2).
  image_inputs inferred = images;
  inferred.batch_num_images = torch::Tensor();
  CHECK(torch::equal(model->image_features(inferred), features));
  // Anyres tiles for images of a two-image prompt are refused, naming the rule.
  const auto tiled_a = processor({a}), tiled_b = processor({b});
  image_inputs tiled;
  tiled.pixel_values = torch::cat({tiled_a.pixel_values, tiled_b.pixel_values}, 0);
  tiled.image_sizes = packed.image_sizes;
  tiled.batch_num_images = packed.batch_num_images;
  CHECK_THROWS_WITH(model->image_features(tiled), Catch::Contains("'pixel_values'") && Catch::Contains("not tiled"));
  // Two one-image prompts in one batch keep anyres.
  tiled.batch_num_images = torch::tensor(std::vector<std::int64_t>{1, 1});
  CHECK(model->image_features(tiled).size(0) == tiled_a.num_image_tokens[0] + tiled_b.num_image_tokens[0]);

  // The whole prompt: the chat template, both placeholders expanded (1460 image tokens), a forward
  // and a greedy generation through collate (which sets batch_num_images from the prompt's images).
  const tokenizer tok = tokenizer::from_directory(llava_dir);
  const std::string text = render_chat(
      chat_format::llava_onevision,
      {chat_message{"user", {content_item::image(), content_item::image(), content_item::make_text("Compare them.")}}});
  prompt_input prompt;
  prompt.input_ids = tok.encode(expand_image_placeholders(chat_format::llava_onevision, text, packed.num_image_tokens));
  prompt.images = images;
  model_inputs in;
  in.input_ids = torch::tensor(prompt.input_ids, torch::kInt64).view({1, -1});
  in.images = images;
  const torch::Tensor logits = model->forward(in);
  CHECK(logits.isfinite().all().item<bool>());
  sampling_options greedy;
  greedy.max_new_tokens = 3;
  greedy.temperature = 0;
  const auto out = generate(*model, {prompt}, greedy).at(0);
  CHECK(out.token_ids.size() <= 3);
  CHECK(out.token_ids.at(0) == logits[0][-1].argmax().item<std::int64_t>());
}

TEST_CASE("models: the sharded copies in the other hub naming load to identical logits", "[models]") {
  // The sharded copies hold this model's weights rounded to bf16, under the other naming
  // (Qwen: model.language_model.* / model.visual.*; LLaVA: the legacy vision_tower.vision_model.*).
  for (const std::string& dir : {qwen_dir, llava_dir}) {
    fixture f(dir);
    auto reference = load_model(dir);
    {
      torch::NoGradGuard no_grad;
      for (auto& p : reference->parameters()) p.copy_(p.to(torch::kBFloat16).to(torch::kFloat32));
    }
    auto sharded = load_model(dir + "_sharded");
    if (dir == qwen_dir) CHECK(sharded->language_model_hub_prefix() != reference->language_model_hub_prefix());
    torch::NoGradGuard no_grad;
    model_inputs in;
    in.input_ids = f["text_input_ids"].view({1, -1});
    INFO(dir);
    CHECK(sharded->forward(in).equal(reference->forward(in)));
    auto a = reference->named_parameters();
    for (auto& p : sharded->named_parameters()) CHECK(p.value().equal(a[p.key()]));
    // Loading in bf16 keeps the stored values exactly.
    auto bf16 = load_model(dir + "_sharded", torch::TensorOptions().dtype(torch::kBFloat16));
    CHECK(bf16->dtype() == torch::kBFloat16);
    CHECK(bf16->language_model->embed_tokens->weight.to(torch::kFloat32).equal(a["model.language_model.embed_tokens.weight"]));
    torch::Tensor logits16 = bf16->forward(in).to(torch::kFloat32), logits32 = reference->forward(in);
    CHECK(logits16.isfinite().all().item<bool>());
    CHECK((logits16 - logits32).abs().max().item<double>() < 0.05 * logits32.abs().max().item<double>());
  }
}

TEST_CASE("models: KV-cache decoding after an image prompt equals the full forward", "[models]") {
  const fixture& f = qwen_fixture();
  auto model = qwen2_5_vl_model::load(qwen_dir);
  torch::NoGradGuard no_grad;
  model_inputs prompt = qwen_image_inputs_from_pixels();
  torch::Tensor response = f["response_ids"];
  model_inputs full = prompt;
  full.input_ids = torch::cat({prompt.input_ids, response.view({1, -1})}, 1);
  torch::Tensor full_logits = model->forward(full)[0];
  decode_state state;
  torch::Tensor prefill = model->forward(prompt, &state)[0];
  CHECK(torch::allclose(prefill, full_logits.narrow(0, 0, prompt.input_ids.size(1)), 1e-5, 1e-5));
  // Decoding positions are cache_position + rope_delta (the prompt's image compresses positions).
  CHECK(state.next_position[0].item<std::int64_t>() ==
        prompt.input_ids.size(1) + f["prompt_rope_deltas"][0].item<std::int64_t>());
  for (std::int64_t t = 0; t < response.numel(); ++t) {
    torch::Tensor step = model->decode(response.narrow(0, t, 1), state)[0];
    INFO("step " << t);
    CHECK(torch::allclose(step, full_logits[prompt.input_ids.size(1) + t], 1e-5, 1e-5));
  }
}

TEST_CASE("models: a left-padded batch with and without images equals each row alone", "[models]") {
  for (const std::string& dir : {qwen_dir, llava_dir}) {
    fixture f(dir);
    auto model = load_model(dir);
    torch::NoGradGuard no_grad;
    const bool qwen = dir == qwen_dir;
    model_inputs image_row;
    image_row.input_ids = f["prompt_input_ids"];
    if (qwen) image_row.images.image_grid_thw = f["prompt_image_grid_thw"];
    image_row.images.features = qwen ? f["vision_features"].narrow(0, 0, f.meta["num_image_tokens"].get<std::int64_t>())
                                     : f["vision_features"];
    model_inputs text_row;
    text_row.input_ids = f["text_input_ids"].view({1, -1});
    const std::int64_t a = image_row.input_ids.size(1), b = text_row.input_ids.size(1), len = std::max(a, b);
    REQUIRE(a > b);
    model_inputs batch;
    batch.input_ids = torch::cat({image_row.input_ids, torch::cat({torch::zeros({1, len - b}, torch::kInt64), text_row.input_ids}, 1)}, 0);
    batch.attention_mask = torch::cat({torch::ones({1, len}, torch::kInt64),
                                       torch::cat({torch::zeros({1, len - b}, torch::kInt64), torch::ones({1, b}, torch::kInt64)}, 1)}, 0);
    batch.images = image_row.images;
    torch::Tensor logits = model->forward(batch);
    INFO(dir);
    CHECK(torch::allclose(logits[0], model->forward(image_row)[0], 1e-5, 1e-4));
    CHECK(torch::allclose(logits[1].narrow(0, len - b, b), model->forward(text_row)[0], 1e-5, 1e-4));
    CHECK(max_abs_diff(logits[1].narrow(0, len - b, b), f["text_logits"]) <= 1e-4);
  }
}

TEST_CASE("models: image_features without an image, or pixels without their layout, names the function and argument",
          "[models]") {
  for (const std::string& dir : {qwen_dir, llava_dir}) {
    fixture f(dir);
    auto model = load_model(dir);
    torch::NoGradGuard no_grad;
    const bool qwen = dir == qwen_dir;
    const std::string fn = qwen ? "consr_runtime::qwen2_5_vl_model::image_features: "
                                : "consr_runtime::llava_onevision_model::image_features: ";
    INFO(dir);
    image_inputs images;
    CHECK_THROWS_WITH(model->image_features(images),
                      fn + "argument 'images': neither pixel_values nor features given");
    images.pixel_values = torch::zeros({1, 3, 4, 4});  // rejected before its shape is read
    CHECK_THROWS_WITH(model->image_features(images), fn + (qwen ? "argument 'image_grid_thw'" : "argument 'image_sizes'") +
                                                         ": required with pixel_values");
    // Given features are returned as they are, without the layout tensor.
    images.features = f["vision_features"];
    CHECK(torch::equal(model->image_features(images), f["vision_features"]));
  }
}

TEST_CASE("models: bad input is rejected with a clear error", "[models]") {
  const fixture& f = qwen_fixture();
  auto model = load_model(qwen_dir);
  torch::NoGradGuard no_grad;
  SECTION("image token count differs from the features") {
    model_inputs in = prompt_inputs(f);
    in.images.image_grid_thw = f["prompt_image_grid_thw"];
    in.images.features = f["vision_features"];  // 28 rows for 24 tokens
    CHECK_THROWS_WITH(model->embed(in), Catch::Contains("'input_ids'") && Catch::Contains("24 image tokens") &&
                                            Catch::Contains("28 feature rows"));
  }
  SECTION("image tokens without images") {
    model_inputs in = prompt_inputs(f);
    CHECK_THROWS_WITH(model->forward(in), Catch::Contains("'input_ids'"));
  }
  SECTION("a prompt longer than max_position_embeddings") {
    model_inputs in;
    in.input_ids = torch::full({1, model->text().max_position_embeddings + 1}, 5, torch::kInt64);
    CHECK_THROWS_WITH(model->forward(in), Catch::Contains("'input_ids'") && Catch::Contains("max_position_embeddings"));
  }
  SECTION("malformed ids and masks") {
    model_inputs in;
    in.input_ids = torch::tensor({1, 2, 3}, torch::kInt64);
    CHECK_THROWS_WITH(model->forward(in), Catch::Contains("'input_ids'"));
    in.input_ids = torch::tensor({1, 2, 3000}, torch::kInt64).view({1, 3});
    CHECK_THROWS_WITH(model->forward(in), Catch::Contains("'input_ids'") && Catch::Contains("3000"));
    in.input_ids = torch::tensor({1, 2, 3}, torch::kInt64).view({1, 3});
    in.attention_mask = torch::ones({1, 4}, torch::kInt64);
    CHECK_THROWS_WITH(model->forward(in), Catch::Contains("'attention_mask'"));
  }
  SECTION("decode without a prefill, or with the wrong batch") {
    decode_state state;
    CHECK_THROWS_WITH(model->decode(torch::tensor({1}, torch::kInt64), state), Catch::Contains("'state'"));
    model_inputs in;
    in.input_ids = torch::tensor({1, 2, 3}, torch::kInt64).view({1, 3});
    model->forward(in, &state);
    CHECK_THROWS_WITH(model->decode(torch::tensor({1, 2}, torch::kInt64), state), Catch::Contains("'next_ids'"));
  }
  SECTION("the wrong architecture or directory") {
    CHECK_THROWS_WITH(llava_onevision_model::load(qwen_dir), Catch::Contains("not llava_onevision"));
    CHECK_THROWS_AS(load_model(models_dir + "does_not_exist"), runtime_error);
  }
}
