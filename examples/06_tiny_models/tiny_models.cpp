// Training the two tiny vision-language models from scratch (see tiny_models.hpp).
#include "tiny_models.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <memory>
#include <numeric>
#include <optional>
#include <ostream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "consr_runtime/bpe_trainer.hpp"
#include "consr_runtime/chat_template.hpp"
#include "consr_runtime/config.hpp"
#include "consr_runtime/generation.hpp"
#include "consr_runtime/image.hpp"
#include "consr_runtime/model_io.hpp"
#include "consr_runtime/paper_prompts.hpp"
#include "consr_runtime/models.hpp"
#include "consr_runtime/processors.hpp"
#include "consr_runtime/safetensors.hpp"
#include "consr_runtime/tokenizer.hpp"

namespace consr_tiny {
namespace {

namespace cr = consr_runtime;
namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;
using clock_type = std::chrono::steady_clock;

[[noreturn]] void fail(const std::string& message) { throw std::runtime_error("consr_train_tiny: " + message); }

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// ---- the two families' files ----------------------------------------------------------------------

// The official chat templates (Qwen2.5-VL's hub template; LLaVA-OV's from
// convert_llava_onevision_weights_to_hf.py), as in tests/fixtures/models/*/chat_template.json.
const char* const qwen_chat_template =
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}";

const char* const llava_chat_template =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}{# Render all images first #}{% for "
    "content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}{# "
    "Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ "
    "'<video>\\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}{% for content in "
    "message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}{% else %}{% for "
    "content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] }}"
    "{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}";

std::vector<std::string> special_tokens(bool qwen) {
  if (qwen)
    return {"<|endoftext|>", "<|im_start|>", "<|im_end|>",   "<|vision_start|>",
            "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"};
  return {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"};
}

ojson tokenizer_config_json(const std::vector<cr::added_token>& added, bool qwen) {
  ojson j;
  j["add_bos_token"] = false;
  j["add_prefix_space"] = false;
  ojson decoder = ojson::object();
  for (const auto& t : added)
    decoder[std::to_string(t.id)] = ojson{{"content", t.content}, {"lstrip", false}, {"normalized", false},
                                          {"rstrip", false},      {"single_word", false}, {"special", true}};
  j["added_tokens_decoder"] = decoder;
  ojson extra = ojson::array();
  for (const auto& t : added)
    if (t.content != "<|endoftext|>" && t.content != "<|im_end|>") extra.push_back(t.content);
  j["additional_special_tokens"] = extra;
  j["bos_token"] = nullptr;
  j["chat_template"] = qwen ? qwen_chat_template : llava_chat_template;
  j["clean_up_tokenization_spaces"] = false;
  j["eos_token"] = "<|im_end|>";
  j["errors"] = "replace";
  j["model_max_length"] = 2048;
  j["pad_token"] = "<|endoftext|>";
  j["split_special_tokens"] = false;
  j["tokenizer_class"] = "Qwen2Tokenizer";
  j["unk_token"] = nullptr;
  return j;
}

ojson preprocessor_config_json(bool qwen, const model_sizes& s) {
  ojson j;
  j["do_convert_rgb"] = true;
  j["do_normalize"] = true;
  if (!qwen) j["do_pad"] = true;
  j["do_rescale"] = true;
  j["do_resize"] = true;
  if (qwen) {
    j["image_mean"] = {0.48145466, 0.4578275, 0.40821073};
    j["image_processor_type"] = "Qwen2VLImageProcessor";
    j["image_std"] = {0.26862954, 0.26130258, 0.27577711};
    j["merge_size"] = 2;
    j["patch_size"] = s.patch_size;
    j["resample"] = 3;
    j["rescale_factor"] = 1.0 / 255.0;
    // min 56² (the default); max 112²: a 112 x 112 world image stays as it is (8 x 8 patches, 16 tokens)
    // and anything larger is scaled down to at most 16 image tokens.
    j["size"] = ojson{{"longest_edge", 112 * 112}, {"shortest_edge", 56 * 56}};
    j["temporal_patch_size"] = 2;
  } else {
    j["image_grid_pinpoints"] = ojson::array({ojson::array({s.image_size, s.image_size})});
    j["image_mean"] = {0.5, 0.5, 0.5};
    j["image_processor_type"] = "LlavaOnevisionImageProcessor";
    j["image_std"] = {0.5, 0.5, 0.5};
    j["resample"] = 3;
    j["rescale_factor"] = 1.0 / 255.0;
    j["size"] = ojson{{"height", s.image_size}, {"width", s.image_size}};
  }
  return j;
}

/// config.json of the family at `sizes` with the given token ids.
ojson build_config_json(bool qwen, const model_sizes& s, std::int64_t vocab, const std::map<std::string, std::int64_t>& ids) {
  const std::int64_t head_dim = s.hidden / s.heads;
  if (s.hidden % s.heads || head_dim % 2) fail("--hidden must be a multiple of --heads with an even head size");
  cr::text_config t;
  t.vocab_size = vocab;
  t.hidden_size = s.hidden;
  t.intermediate_size = s.intermediate;
  t.num_hidden_layers = s.layers;
  t.num_attention_heads = s.heads;
  t.num_key_value_heads = s.kv_heads;
  t.head_dim = head_dim;
  t.rms_norm_eps = 1e-6;
  t.rope_theta = s.rope_theta;
  t.max_position_embeddings = 2048;
  t.bos_token_id = ids.at("<|endoftext|>");
  t.eos_token_ids = {ids.at("<|im_end|>")};
  cr::model_config c;
  if (qwen) {
    // mRoPE sections over head_dim / 2 frequencies in the 7B model's proportions (16, 24, 24 of 64).
    const std::int64_t half = head_dim / 2, hw = (half * 3 / 8);
    t.mrope_section = {half - 2 * hw, hw, hw};
    cr::qwen2_5_vl_config q;
    q.text = t;
    q.vision.depth = s.vision_layers;
    q.vision.hidden_size = s.vision_hidden;
    q.vision.intermediate_size = s.vision_intermediate;
    q.vision.num_heads = s.vision_heads;
    q.vision.out_hidden_size = s.hidden;
    q.vision.patch_size = s.patch_size;
    q.vision.spatial_merge_size = 2;
    q.vision.temporal_patch_size = 2;
    q.vision.window_size = 112;
    q.vision.tokens_per_second = 2;
    q.vision.fullatt_block_indexes = {s.vision_layers - 1};  // the last block attends to the whole image
    q.image_token_id = ids.at("<|image_pad|>");
    q.video_token_id = ids.at("<|video_pad|>");
    q.vision_start_token_id = ids.at("<|vision_start|>");
    q.vision_end_token_id = ids.at("<|vision_end|>");
    c.model_type = "qwen2_5_vl";
    c.qwen2_5_vl = q;
  } else {
    cr::llava_onevision_config l;
    l.text = t;
    l.vision.hidden_size = s.vision_hidden;
    l.vision.intermediate_size = s.vision_intermediate;
    l.vision.num_hidden_layers = s.vision_layers;
    l.vision.num_attention_heads = s.vision_heads;
    l.vision.image_size = s.image_size;
    l.vision.patch_size = s.patch_size;
    l.image_token_index = ids.at("<image>");
    l.video_token_index = ids.at("<video>");
    l.image_grid_pinpoints = {{s.image_size, s.image_size}};
    l.vision_feature_layer = {-1};
    l.vision_feature_select_strategy = "full";
    l.vision_aspect_ratio = "anyres_max_9";
    c.model_type = "llava_onevision";
    c.llava_onevision = l;
  }
  return cr::model_config_json(c, "float32");
}

// ---- data -------------------------------------------------------------------------------------------

std::string lower_trim(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

/// The canonical comparison form of a short answer: lower case, trimmed, without a final full stop.
std::string normalise_answer(const std::string& s) {
  std::string t = lower_trim(s);
  while (!t.empty() && (t.back() == '.' || t.back() == ' ')) t.pop_back();
  return t;
}

std::vector<std::string> sentences(const std::string& text) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : text) {
    if (c == '.') {
      std::string s = lower_trim(cur);
      if (!s.empty()) out.push_back(s);
      cur.clear();
    } else {
      cur += c;
    }
  }
  std::string s = lower_trim(cur);
  if (!s.empty()) out.push_back(s);
  return out;
}

/// A permutation of [0, n) that depends only on (seed, epoch): Fisher–Yates on counter_uniform.
std::vector<std::size_t> permutation(std::size_t n, std::uint64_t seed, std::uint64_t epoch) {
  std::vector<std::size_t> p(n);
  std::iota(p.begin(), p.end(), 0);
  for (std::size_t i = n; i > 1; --i) {
    const double u = cr::counter_uniform(seed, 0x7D1A000000000000ull + epoch, i);
    const std::size_t j = std::min<std::size_t>(i - 1, static_cast<std::size_t>(u * static_cast<double>(i)));
    std::swap(p[i - 1], p[j]);
  }
  return p;
}

/// Everything a batch needs: the model, its processor, tokenizer and chat format, and an image cache.
struct model_context {
  bool qwen = true;
  std::shared_ptr<cr::vision_language_model> model;
  std::optional<cr::tokenizer> tok;
  std::optional<cr::qwen2_vl_image_processor> qwen_processor;
  std::optional<cr::llava_onevision_image_processor> llava_processor;
  cr::chat_format format = cr::chat_format::qwen2_5_vl;
  std::int64_t end_of_turn = 0, pad = 0;
  std::vector<std::int64_t> stop_ids;
  std::unordered_map<std::string, cr::rgb_image> images;

  const cr::rgb_image& image(const std::string& path) {
    auto it = images.find(path);
    if (it == images.end()) it = images.emplace(path, cr::load_image(path)).first;
    return it->second;
  }

  /// The prompt as the pipeline builds it (examples/04: one user turn, the image then the text,
  /// the placeholder expanded to the processor's token count, the assistant turn opened).
  cr::prompt_input prompt(const example& e) {
    const cr::rgb_image& img = image(e.image);
    cr::prompt_input p;
    std::int64_t n_tokens = 0;
    if (qwen) {
      cr::qwen2_vl_packed packed = (*qwen_processor)({img});
      p.images.pixel_values = packed.pixel_values;
      p.images.image_grid_thw = packed.image_grid_thw;
      n_tokens = packed.num_image_tokens.at(0);
    } else {
      cr::llava_onevision_packed packed = (*llava_processor)({img});
      p.images.pixel_values = packed.pixel_values;
      p.images.image_sizes = packed.image_sizes;
      n_tokens = packed.num_image_tokens.at(0);
    }
    const std::string chat = cr::render_chat(
        format, {cr::chat_message{"user", {cr::content_item::image(), cr::content_item::make_text(e.prompt)}}});
    p.input_ids = tok->encode(cr::expand_image_placeholders(format, chat, {n_tokens}));
    return p;
  }
};

/// The texts the tokenizer is trained on: every training conversation as the chat template renders
/// it (prompt turn + answer turn), cut at the special tokens (they are added tokens, never merged).
std::vector<std::string> tokenizer_corpus(const std::vector<example>& train, cr::chat_format format,
                                          const std::vector<std::string>& specials) {
  std::vector<std::string> texts;
  for (const auto& e : train) {
    std::string chat = cr::render_chat(
        format, {cr::chat_message{"user", {cr::content_item::image(), cr::content_item::make_text(e.prompt)}}});
    chat += e.answer + "<|im_end|>\n";
    std::size_t pos = 0;
    while (pos < chat.size()) {
      std::size_t next = std::string::npos, len = 0;
      for (const auto& s : specials) {
        const std::size_t at = chat.find(s, pos);
        if (at < next) {
          next = at;
          len = s.size();
        }
      }
      if (next == std::string::npos) {
        texts.push_back(chat.substr(pos));
        break;
      }
      if (next > pos) texts.push_back(chat.substr(pos, next - pos));
      pos = next + len;
    }
  }
  return texts;
}

/// The validation questions evaluated: up to `per_type` of each type, drawn by a fixed permutation
/// (the same subset for every run, model and seed), in file order.
std::vector<std::size_t> eval_subset(const std::vector<example>& val, std::int64_t per_type) {
  std::map<std::string, std::vector<std::size_t>> by_type;
  for (std::size_t i = 0; i < val.size(); ++i) by_type[val[i].type].push_back(i);
  std::vector<std::size_t> out;
  std::uint64_t stream = 0;
  for (const auto& [type, idx] : by_type) {
    const std::size_t k = std::min<std::size_t>(idx.size(), static_cast<std::size_t>(std::max<std::int64_t>(per_type, 0)));
    const std::vector<std::size_t> p = permutation(idx.size(), 0xE7A1u, stream++);
    std::vector<std::size_t> picked;
    for (std::size_t j = 0; j < k; ++j) picked.push_back(idx[p[j]]);
    std::sort(picked.begin(), picked.end());
    out.insert(out.end(), picked.begin(), picked.end());
  }
  return out;
}

evaluation evaluate(model_context& m, const std::vector<example>& val, const std::vector<std::size_t>& subset,
                    const std::map<std::string, std::int64_t>& max_tokens_by_type, std::int64_t batch_size,
                    std::int64_t step) {
  const auto t0 = clock_type::now();
  torch::NoGradGuard no_grad;
  m.model->eval();
  evaluation ev;
  ev.step = step;
  std::map<std::string, std::vector<std::size_t>> by_type;
  for (auto i : subset) by_type[val[i].type].push_back(i);
  std::int64_t short_correct = 0, short_total = 0, no_total = 0, no_yes = 0;
  std::map<std::string, std::pair<std::int64_t, std::int64_t>> pope;  // split -> (yes on no, no total)
  double precision_sum = 0, recall_sum = 0;
  for (const auto& [type, idx] : by_type) {
    cr::sampling_options s;
    s.temperature = 0;
    s.stop_token_ids = m.stop_ids;
    s.pad_token_id = m.pad;
    auto it = max_tokens_by_type.find(type);
    s.max_new_tokens = it != max_tokens_by_type.end() ? it->second : 48;
    for (std::size_t b = 0; b < idx.size(); b += static_cast<std::size_t>(batch_size)) {
      std::vector<cr::prompt_input> prompts;
      const std::size_t e = std::min(idx.size(), b + static_cast<std::size_t>(batch_size));
      for (std::size_t k = b; k < e; ++k) prompts.push_back(m.prompt(val[idx[k]]));
      auto results = cr::generate(*m.model, prompts, s);
      for (std::size_t k = b; k < e; ++k) {
        const example& ex = val[idx[k]];
        const std::string text = m.tok->decode(results[k - b].token_ids, /*skip_special=*/true);
        const bool correct = normalise_answer(text) == normalise_answer(ex.answer);
        auto& pt = ev.per_type[type];
        pt.first += correct;
        pt.second += 1;
        if (type == "description") {
          const auto gen = sentences(text), ref = sentences(ex.answer);
          const std::set<std::string> ref_set(ref.begin(), ref.end()), gen_set(gen.begin(), gen.end());
          std::int64_t true_gen = 0, found_ref = 0;
          for (const auto& g : gen) true_gen += ref_set.count(g);
          for (const auto& r : ref) found_ref += gen_set.count(r);
          precision_sum += gen.empty() ? 0.0 : static_cast<double>(true_gen) / static_cast<double>(gen.size());
          recall_sum += ref.empty() ? 1.0 : static_cast<double>(found_ref) / static_cast<double>(ref.size());
          ++ev.descriptions;
          if (ev.samples.size() < 2) ev.samples.emplace_back(ex.answer, text);
        } else {
          short_correct += correct;
          ++short_total;
        }
        if (type == "existence") {
          const std::string label = !ex.label.empty() ? lower_trim(ex.label) : normalise_answer(ex.answer);
          if (label == "no") {
            const bool said_yes = normalise_answer(text) == "yes";
            ++no_total;
            no_yes += said_yes;
            if (!ex.pope.empty()) {
              pope[ex.pope].first += said_yes;
              pope[ex.pope].second += 1;
            }
          }
        }
      }
    }
  }
  (void)short_correct;
  (void)short_total;
  std::map<std::string, std::int64_t> type_counts;
  for (const auto& e : val) ++type_counts[e.type];
  double weighted = 0, weight = 0, macro = 0;
  std::int64_t types = 0;
  for (const auto& [type, ct] : ev.per_type) {
    if (type == "description" || ct.second == 0) continue;
    const double acc = static_cast<double>(ct.first) / static_cast<double>(ct.second);
    weighted += acc * static_cast<double>(type_counts[type]);
    weight += static_cast<double>(type_counts[type]);
    macro += acc;
    ++types;
  }
  ev.accuracy = weight > 0 ? weighted / weight : 0.0;
  ev.macro_accuracy = types ? macro / static_cast<double>(types) : 0.0;
  ev.existence_false_yes = no_total ? static_cast<double>(no_yes) / static_cast<double>(no_total) : 0.0;
  for (const auto& [k, v] : pope) ev.false_yes_by_pope[k] = v.second ? static_cast<double>(v.first) / static_cast<double>(v.second) : 0.0;
  if (ev.descriptions) {
    ev.description_precision = precision_sum / static_cast<double>(ev.descriptions);
    ev.description_recall = recall_sum / static_cast<double>(ev.descriptions);
  }
  ev.seconds = seconds_since(t0);
  m.model->train();
  return ev;
}

void print_eval(std::ostream& log, const evaluation& ev, const char* what) {
  log << what << " step " << ev.step << ": accuracy " << std::fixed << std::setprecision(3) << ev.accuracy
      << " (question-weighted), " << ev.macro_accuracy << " (mean over types)";
  for (const auto& [type, ct] : ev.per_type)
    log << " | " << type << " " << ct.first << "/" << ct.second;
  log << " | existence false-yes " << ev.existence_false_yes;
  for (const auto& [k, v] : ev.false_yes_by_pope) log << " " << k << " " << v;
  if (ev.descriptions)
    log << " | description sentence precision " << ev.description_precision << " recall " << ev.description_recall;
  log << " (" << std::setprecision(1) << ev.seconds << " s)" << std::defaultfloat << std::setprecision(6) << "\n";
}

ojson eval_json(const evaluation& ev) {
  ojson j;
  j["step"] = ev.step;
  j["accuracy_question_weighted"] = ev.accuracy;
  j["accuracy_mean_over_types"] = ev.macro_accuracy;
  ojson types = ojson::object();
  for (const auto& [type, ct] : ev.per_type)
    types[type] = ojson{{"correct", ct.first}, {"total", ct.second},
                        {"accuracy", ct.second ? static_cast<double>(ct.first) / static_cast<double>(ct.second) : 0.0}};
  j["per_type"] = types;
  j["existence_false_yes"] = ev.existence_false_yes;
  j["existence_false_yes_by_pope_split"] = ev.false_yes_by_pope;
  j["description_sentence_precision"] = ev.description_precision;
  j["description_sentence_recall"] = ev.description_recall;
  ojson samples = ojson::array();
  for (const auto& [ref, gen] : ev.samples) samples.push_back(ojson{{"reference", ref}, {"generated", gen}});
  j["description_samples"] = samples;
  j["seconds"] = ev.seconds;
  return j;
}

/// Writes runtime_reference.safetensors: for two validation questions, the prompt ids, the processor
/// output and the runtime's fp32 logits, for tools/check_tiny_models_with_transformers.py.
void write_reference(model_context& m, const std::vector<example>& val, const std::string& path) {
  torch::NoGradGuard no_grad;
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  std::map<std::string, std::string> metadata{{"format", "pt"}, {"generator", "consr_train_tiny"}};
  std::vector<std::size_t> picks;
  std::set<std::string> types;
  for (std::size_t i = 0; i < val.size() && picks.size() < 2; ++i)
    if (types.insert(val[i].type).second) picks.push_back(i);
  for (std::size_t k = 0; k < picks.size(); ++k) {
    const example& e = val[picks[k]];
    // The prompt plus the reference answer, so the logits cover image, prompt and answer tokens.
    cr::prompt_input p = m.prompt(e);
    const std::int64_t n_image = static_cast<std::int64_t>(
        std::count(p.input_ids.begin(), p.input_ids.end(), m.model->image_token_id()));
    for (auto id : m.tok->encode(e.answer)) p.input_ids.push_back(id);
    p.input_ids.push_back(m.end_of_turn);
    // The same ids from the text, which the check script also encodes with HF tokenizers.
    const std::string text =
        cr::expand_image_placeholders(
            m.format,
            cr::render_chat(m.format, {cr::chat_message{"user", {cr::content_item::image(),
                                                                 cr::content_item::make_text(e.prompt)}}}),
            {n_image}) +
        e.answer + "<|im_end|>";
    if (m.tok->encode(text) != p.input_ids) fail("the reference text does not encode to the prompt's ids");
    metadata["text_" + std::to_string(k)] = text;
    metadata["question_" + std::to_string(k)] = e.prompt;
    cr::model_inputs in = cr::collate({p}, m.pad);
    torch::Tensor logits = m.model->forward(in).to(torch::kFloat32)[0].contiguous();
    const std::string s = std::to_string(k);
    tensors.emplace_back("input_ids_" + s, in.input_ids[0].contiguous());
    tensors.emplace_back("pixel_values_" + s, p.images.pixel_values.contiguous());
    if (m.qwen) tensors.emplace_back("image_grid_thw_" + s, p.images.image_grid_thw.contiguous());
    else tensors.emplace_back("image_sizes_" + s, p.images.image_sizes.contiguous());
    tensors.emplace_back("logits_" + s, logits);
  }
  cr::save_safetensors(path, tensors, metadata);
}

}  // namespace

// ---- reading the world -------------------------------------------------------------------------------

std::vector<example> read_split(const std::string& world_dir, const std::string& split) {
  const std::string path = (fs::path(world_dir) / (split + ".jsonl")).string();
  std::ifstream f(path);
  if (!f) fail("cannot read '" + path + "' (is --world a directory written by consr_world generate?)");
  std::vector<example> out;
  std::string line;
  std::int64_t number = 0;
  while (std::getline(f, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r\n") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(number);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      fail(where + ": invalid JSON (" + e.what() + ")");
    }
    auto str = [&](const char* key, bool required) -> std::string {
      auto it = j.find(key);
      if (it == j.end() || it->is_null()) {
        if (required) fail(where + ": missing field '" + key + "'");
        return "";
      }
      if (!it->is_string()) fail(where + ": field '" + key + "' is not a string");
      return it->get<std::string>();
    };
    example e;
    e.id = str("id", true);
    e.image = (fs::path(world_dir) / str("image", true)).lexically_normal().string();
    e.prompt = str("prompt", true);
    e.answer = str("answer", true);
    e.type = str("type", true);
    e.label = str("label", false);
    e.pope = str("pope_split", false);
    e.scene = str("scene", false);
    out.push_back(std::move(e));
  }
  if (out.empty()) fail("'" + path + "' holds no questions");
  return out;
}

paper_prompt_texts paper_prompts() {
  return {cr::paper_prompts::description, cr::paper_prompts::revision, cr::paper_prompts::enriched};
}

namespace {
/// Replaces each slot once, as the pipeline's fill_template does for templates with one of each.
std::string fill(std::string text, const std::vector<std::pair<std::string, std::string>>& slots) {
  for (const auto& [name, value] : slots) {
    const std::size_t at = text.find(name);
    if (at == std::string::npos) fail("internal: template without the " + name + " slot");
    text.replace(at, name.size(), value);
  }
  return text;
}
}  // namespace

std::vector<example> augment(const std::vector<example>& train, const augment_options& o) {
  for (double f : {o.paper_description, o.enriched, o.revision})
    if (!(f >= 0 && f <= 1)) fail("augmentation shares must be in [0, 1]");
  const paper_prompt_texts t = paper_prompts();
  std::map<std::string, std::string> description_of;  // scene -> reference description
  std::map<std::string, std::vector<std::string>> answers_of_type;
  for (const auto& e : train) {
    if (e.type == "description" && !e.scene.empty()) description_of.emplace(e.scene, e.answer);
    else if (e.type != "description") answers_of_type[e.type].push_back(e.answer);
  }
  for (auto& [type, a] : answers_of_type) {
    std::sort(a.begin(), a.end());
    a.erase(std::unique(a.begin(), a.end()), a.end());
  }
  std::vector<example> out;
  for (std::size_t i = 0; i < train.size(); ++i) {
    const example& e = train[i];
    const auto d = description_of.find(e.scene);
    if (d == description_of.end()) continue;
    auto draw = [&](std::uint64_t stream) { return cr::counter_uniform(o.seed, 0xA06E000000000000ull + stream, i); };
    if (e.type == "description") {
      if (draw(0) < o.paper_description) {
        example c = e;
        c.prompt = t.description;
        c.variant = "paper_description";
        out.push_back(std::move(c));
      }
      continue;
    }
    if (draw(1) < o.enriched) {
      example c = e;
      c.prompt = fill(t.enriched, {{"{Image Description}", d->second}, {"{Original Prompt}", e.prompt}});
      c.variant = "enriched";
      out.push_back(std::move(c));
    }
    if (draw(2) < o.revision) {
      // The original response: the reference or, half of the time, another answer of the same type.
      std::string original = e.answer;
      const auto& pool = answers_of_type[e.type];
      if (draw(3) < 0.5 && pool.size() > 1) {
        const std::size_t k = std::min(pool.size() - 1, static_cast<std::size_t>(draw(4) * static_cast<double>(pool.size())));
        original = pool[k] != e.answer ? pool[k] : pool[(k + 1) % pool.size()];
      }
      example c = e;
      c.prompt = fill(t.revision, {{"{Description}", d->second}, {"{Question}", e.prompt}, {"{Original Response}", original}});
      c.variant = "revision";
      out.push_back(std::move(c));
    }
  }
  return out;
}

// ---- training ----------------------------------------------------------------------------------------

train_summary train(const train_options& o, std::ostream& log) {
  const auto t_start = clock_type::now();
  const bool qwen = o.family == "qwen2_5_vl";
  if (!qwen && o.family != "llava_onevision") fail("--family must be qwen2_5_vl or llava_onevision, got '" + o.family + "'");
  if (o.out.empty()) fail("--out is required");
  if (o.steps < 1 || o.batch_size < 1 || o.threads < 1 || o.log_every < 1) fail("--steps, --batch-size, --threads and --log-every must be positive");
  if (fs::exists(o.out)) {
    if (!o.force) fail("'" + o.out + "' exists (pass --force to replace it)");
    fs::remove_all(o.out);
  }
  fs::create_directories(o.out);
  torch::set_num_threads(o.threads);
  torch::manual_seed(o.seed);

  std::vector<example> train_set = read_split(o.world, "train");
  const std::vector<example> val_set = read_split(o.world, "validation");
  if (o.train_limit > 0 && static_cast<std::int64_t>(train_set.size()) > o.train_limit)
    train_set.resize(static_cast<std::size_t>(o.train_limit));
  {
    augment_options ao = o.augment;
    ao.seed = o.seed;
    std::vector<example> extra = augment(train_set, ao);
    std::map<std::string, std::int64_t> n;
    for (const auto& e : extra) ++n[e.variant];
    if (!extra.empty()) {
      log << "augmented: +" << extra.size() << " questions in the paper's prompt formats (";
      bool first = true;
      for (const auto& [k, v] : n) {
        log << (first ? "" : ", ") << k << " " << v;
        first = false;
      }
      log << ")\n";
    }
    train_set.insert(train_set.end(), std::make_move_iterator(extra.begin()), std::make_move_iterator(extra.end()));
  }
  log << "data: " << train_set.size() << " training questions, " << val_set.size() << " validation questions from "
      << o.world << "\n";

  // 1. The tokenizer, trained on the training conversations.
  model_context m;
  m.qwen = qwen;
  m.format = qwen ? cr::chat_format::qwen2_5_vl : cr::chat_format::llava_onevision;
  const std::vector<std::string> specials = special_tokens(qwen);
  cr::bpe_trainer_options bpe_opt;
  bpe_opt.vocab_size = o.vocab_size;
  const cr::bpe_model bpe = cr::train_byte_level_bpe(tokenizer_corpus(train_set, m.format, specials), bpe_opt);
  std::vector<cr::added_token> added;
  std::map<std::string, std::int64_t> ids;
  for (std::size_t i = 0; i < specials.size(); ++i) {
    cr::added_token t;
    t.id = static_cast<std::int64_t>(bpe.tokens.size() + i);
    t.content = specials[i];
    t.special = true;
    added.push_back(t);
    ids[t.content] = t.id;
  }
  const std::int64_t vocab = (static_cast<std::int64_t>(bpe.tokens.size() + specials.size()) + 63) / 64 * 64;
  cr::save_tokenizer_json((fs::path(o.out) / "tokenizer.json").string(), bpe, added);
  cr::write_json_file((fs::path(o.out) / "tokenizer_config.json").string(), tokenizer_config_json(added, qwen));
  cr::write_json_file((fs::path(o.out) / "chat_template.json").string(),
                      ojson{{"chat_template", qwen ? qwen_chat_template : llava_chat_template}});
  m.tok = cr::tokenizer::from_directory(o.out);
  m.end_of_turn = ids.at("<|im_end|>");
  m.pad = ids.at("<|endoftext|>");
  m.stop_ids = cr::chat_stop_token_ids(*m.tok);
  log << "tokenizer: byte-level BPE, " << bpe.tokens.size() << " tokens (" << bpe.merges.size() << " merges) + "
      << specials.size() << " special; embedding rows " << vocab << "\n";

  // 2. The configuration files and the model.
  cr::write_json_file((fs::path(o.out) / "config.json").string(), build_config_json(qwen, o.sizes, vocab, ids));
  cr::write_json_file((fs::path(o.out) / "preprocessor_config.json").string(), preprocessor_config_json(qwen, o.sizes));
  cr::write_json_file((fs::path(o.out) / "generation_config.json").string(),
                      ojson{{"bos_token_id", m.pad},
                            {"do_sample", false},
                            {"eos_token_id", ojson::array({m.end_of_turn, m.pad})},
                            {"pad_token_id", m.pad}});
  const cr::model_config config = cr::load_model_config(o.out);
  if (qwen) {
    m.model = std::make_shared<cr::qwen2_5_vl_model>(config);
    m.qwen_processor = cr::qwen2_vl_image_processor::from_file(o.out);
  } else {
    m.model = std::make_shared<cr::llava_onevision_model>(config);
    m.llava_processor = cr::llava_onevision_image_processor::from_directory(o.out);
  }
  cr::init_parameters(*m.model, o.seed);
  m.model->train();
  train_summary summary;
  for (const auto& p : m.model->parameters()) summary.parameters += p.numel();
  {
    const cr::prompt_input probe = m.prompt(val_set.front());
    log << "model: " << o.family << ", " << summary.parameters << " parameters; a prompt is " << probe.input_ids.size()
        << " tokens\n";
  }

  // Answers as token ids; the longest answer of each type bounds generation at validation.
  std::vector<std::vector<std::int64_t>> answers;
  std::vector<std::int64_t> sequence_tokens;  // what a batch pads to (see below)
  std::map<std::string, std::int64_t> max_tokens_by_type;
  for (const auto& e : train_set) {
    answers.push_back(m.tok->encode(e.answer));
    // The world's questions are all about as long, so their answers decide; the paper's prompts are
    // long (a revision prompt is ~150 tokens), so they count too.
    sequence_tokens.push_back(static_cast<std::int64_t>(answers.back().size()) +
                              (e.variant.empty() ? 0 : static_cast<std::int64_t>(m.tok->encode(e.prompt).size())));
    auto& mt = max_tokens_by_type[e.type];
    mt = std::max<std::int64_t>(mt, static_cast<std::int64_t>(answers.back().size()) + 8);
  }

  // 3. The optimiser: AdamW, decay on matrices only; linear warm-up, cosine decay, clipping.
  std::vector<torch::Tensor> decay, no_decay, all_params;
  for (const auto& p : m.model->parameters()) {
    (p.dim() >= 2 ? decay : no_decay).push_back(p);
    all_params.push_back(p);
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).weight_decay(o.weight_decay)));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(
                                    torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).weight_decay(0.0)));
  torch::optim::AdamW optimizer(std::move(groups), torch::optim::AdamWOptions(o.lr));
  auto lr_at = [&](std::int64_t step) {  // step 0-based
    if (step < o.warmup) return o.lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup);
    const double progress = static_cast<double>(step - o.warmup) / static_cast<double>(std::max<std::int64_t>(1, o.steps - o.warmup));
    const double cosine = 0.5 * (1.0 + std::cos(3.14159265358979323846 * std::min(1.0, progress)));
    return o.lr * (o.min_lr_ratio + (1.0 - o.min_lr_ratio) * cosine);
  };

  const std::vector<std::size_t> eval_small = eval_subset(val_set, o.eval_per_type);
  std::vector<double> losses;
  // Data order (a pure function of the seed): each draw picks a question type with probability
  // ∝ count^type_temperature, then the next question of that type in a per-type permutation (a new
  // one each time a type is used up). The draws are cut into groups of 8 batches; within a group the
  // questions are sorted by length (answer tokens, plus the prompt's for the paper's prompt formats)
  // and cut into batches (so a description or a revision prompt does not pad 15 short questions to
  // its length), and the group's batches are taken in an order drawn from the seed.
  std::map<std::string, std::vector<std::size_t>> by_type;
  for (std::size_t i = 0; i < train_set.size(); ++i) by_type[train_set[i].type].push_back(i);
  std::vector<const std::vector<std::size_t>*> type_members;
  std::vector<double> type_cdf;
  double type_total = 0;
  for (const auto& [type, idx] : by_type) {
    type_members.push_back(&idx);
    type_total += std::pow(static_cast<double>(idx.size()), o.type_temperature);
    type_cdf.push_back(type_total);
  }
  std::vector<std::vector<std::size_t>> type_order(type_members.size());
  std::vector<std::size_t> type_cursor(type_members.size(), 0);
  std::vector<std::uint64_t> type_epoch(type_members.size(), 0);
  for (std::size_t t = 0; t < type_members.size(); ++t)
    type_order[t] = permutation(type_members[t]->size(), o.seed ^ (0x51A7000000000000ull + t), 0);
  std::uint64_t draw = 0, group = 0;
  std::vector<std::vector<std::size_t>> pending;
  auto next_batch = [&]() {
    if (pending.empty()) {
      std::vector<std::size_t> members;
      for (std::int64_t k = 0; k < o.batch_size * 8; ++k) {
        const double u = cr::counter_uniform(o.seed, 0x7D1A000000000000ull, draw++) * type_total;
        std::size_t t = static_cast<std::size_t>(std::upper_bound(type_cdf.begin(), type_cdf.end(), u) - type_cdf.begin());
        t = std::min(t, type_cdf.size() - 1);
        if (type_cursor[t] == type_order[t].size()) {
          type_order[t] = permutation(type_members[t]->size(), o.seed ^ (0x51A7000000000000ull + t), ++type_epoch[t]);
          type_cursor[t] = 0;
        }
        members.push_back((*type_members[t])[type_order[t][type_cursor[t]++]]);
      }
      std::stable_sort(members.begin(), members.end(),
                       [&](std::size_t a, std::size_t b) { return sequence_tokens[a] < sequence_tokens[b]; });
      std::vector<std::vector<std::size_t>> batches;
      for (std::size_t k = 0; k < members.size(); k += static_cast<std::size_t>(o.batch_size))
        batches.emplace_back(members.begin() + static_cast<std::ptrdiff_t>(k),
                             members.begin() + static_cast<std::ptrdiff_t>(k + static_cast<std::size_t>(o.batch_size)));
      for (std::size_t k : permutation(batches.size(), o.seed ^ 0xB47C400000000000ull, group++))
        pending.push_back(std::move(batches[k]));
      std::reverse(pending.begin(), pending.end());  // taken from the back
    }
    std::vector<std::size_t> b = std::move(pending.back());
    pending.pop_back();
    return b;
  };
  const auto t_train = clock_type::now();
  double eval_seconds = 0;
  log << "training: " << o.steps << " steps of " << o.batch_size << ", lr " << o.lr << ", warm-up " << o.warmup
      << ", " << o.threads << " threads, seed " << o.seed << "\n";
  double t_data = 0, t_forward = 0, t_backward = 0, t_update = 0;  // seconds since the last log line
  for (std::int64_t step = 0; step < o.steps; ++step) {
    auto t0 = clock_type::now();
    std::vector<cr::prompt_input> prompts;
    std::vector<std::vector<std::int64_t>> responses;
    for (std::size_t i : next_batch()) {
      prompts.push_back(m.prompt(train_set[i]));
      responses.push_back(answers[i]);
    }
    const double lr = lr_at(step);
    for (auto& g : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
    t_data += seconds_since(t0);
    t0 = clock_type::now();
    cr::response_logprobs_batch lp = cr::teacher_forced_logprobs(*m.model, prompts, responses, m.end_of_turn, m.pad);
    torch::Tensor loss = -lp.logprobs.mean();
    t_forward += seconds_since(t0);
    t0 = clock_type::now();
    optimizer.zero_grad();
    loss.backward();
    t_backward += seconds_since(t0);
    t0 = clock_type::now();
    torch::nn::utils::clip_grad_norm_(all_params, o.clip);
    optimizer.step();
    t_update += seconds_since(t0);
    losses.push_back(loss.item<double>());
    if ((step + 1) % o.log_every == 0 || step + 1 == o.steps) {
      const std::size_t from = losses.size() - std::min<std::size_t>(losses.size(), static_cast<std::size_t>(o.log_every));
      const double mean = std::accumulate(losses.begin() + static_cast<std::ptrdiff_t>(from), losses.end(), 0.0) /
                          static_cast<double>(losses.size() - from);
      log << "step " << step + 1 << "/" << o.steps << " loss " << std::fixed << std::setprecision(4) << mean << " lr "
          << std::scientific << std::setprecision(2) << lr << std::defaultfloat << std::setprecision(6) << " ("
          << std::fixed << std::setprecision(1) << seconds_since(t_train) - eval_seconds << " s)" << std::defaultfloat
          << std::setprecision(6) << " [data " << std::fixed << std::setprecision(2) << t_data << " forward "
          << t_forward << " backward " << t_backward << " update " << t_update << " s]" << std::defaultfloat
          << std::setprecision(6) << "\n"
          << std::flush;
      t_data = t_forward = t_backward = t_update = 0;
    }
    if (o.eval_every > 0 && (step + 1) % o.eval_every == 0 && step + 1 < o.steps) {
      evaluation ev = evaluate(m, val_set, eval_small, max_tokens_by_type, o.eval_batch_size, step + 1);
      eval_seconds += ev.seconds;
      print_eval(log, ev, "validation");
      summary.evals.push_back(std::move(ev));
    }
  }
  summary.train_seconds = seconds_since(t_train) - eval_seconds;
  const std::size_t window = std::min<std::size_t>(losses.size(), static_cast<std::size_t>(o.log_every));
  summary.first_loss = std::accumulate(losses.begin(), losses.begin() + static_cast<std::ptrdiff_t>(window), 0.0) / static_cast<double>(window);
  summary.last_loss = std::accumulate(losses.end() - static_cast<std::ptrdiff_t>(window), losses.end(), 0.0) / static_cast<double>(window);
  log << "loss: first " << summary.first_loss << " last " << summary.last_loss << " -> "
      << (summary.last_loss < summary.first_loss ? "loss fell" : "loss did not fall") << "\n";
  log << "training time: " << std::fixed << std::setprecision(1) << summary.train_seconds << " s" << std::defaultfloat
      << std::setprecision(6) << "\n";

  // 4. Save, reload with load_model, compare logits.
  m.model->eval();
  cr::save_model(*m.model, o.out);
  summary.checkpoint_bytes = static_cast<std::int64_t>(fs::file_size(fs::path(o.out) / "model.safetensors"));
  {
    torch::NoGradGuard no_grad;
    auto reloaded = cr::load_model(o.out);
    std::vector<cr::prompt_input> prompts;
    for (std::size_t k = 0; k < std::min<std::size_t>(4, val_set.size()); ++k) prompts.push_back(m.prompt(val_set[k]));
    cr::model_inputs in = cr::collate(prompts, m.pad);
    torch::Tensor a = m.model->forward(in), b = reloaded->forward(in);
    summary.reload_max_abs_diff = (a - b).abs().max().item<double>();
    log << "saved " << o.out << " (model.safetensors " << summary.checkpoint_bytes << " bytes); reloaded with load_model: "
        << "max |logit difference| " << summary.reload_max_abs_diff << (torch::equal(a, b) ? " (identical)" : "") << "\n";
    if (!torch::equal(a, b)) fail("the reloaded checkpoint does not reproduce the trained model's logits");
  }
  if (o.write_reference) write_reference(m, val_set, (fs::path(o.out) / "runtime_reference.safetensors").string());

  // 5. Final validation and the training log.
  summary.final_eval = evaluate(m, val_set, eval_subset(val_set, o.final_eval_per_type), max_tokens_by_type,
                                o.eval_batch_size, o.steps);
  print_eval(log, summary.final_eval, "final validation");
  for (const auto& [ref, gen] : summary.final_eval.samples)
    log << "  description reference: " << ref << "\n  description generated: " << gen << "\n";
  // The same questions in the paper's formats: does the model follow the description prompt, and does
  // it use a (reference) description given in the enriched prompt?
  std::optional<evaluation> formats_eval;
  if (o.augment.paper_description > 0 || o.augment.enriched > 0) {
    augment_options all;
    all.paper_description = all.enriched = 1;
    const std::vector<example> val_formats = augment(val_set, all);
    if (!val_formats.empty()) {
      formats_eval = evaluate(m, val_formats, eval_subset(val_formats, o.final_eval_per_type / 2), max_tokens_by_type,
                              o.eval_batch_size, o.steps);
      print_eval(log, *formats_eval, "final validation, paper's prompts (enriched with the reference description)");
    }
  }

  ojson j;
  j["generator"] = "consr_train_tiny (examples/06_tiny_models)";
  j["family"] = o.family;
  j["world"] = fs::path(o.world).filename().string();
  j["options"] = ojson{{"steps", o.steps},          {"batch_size", o.batch_size},   {"lr", o.lr},
                       {"min_lr_ratio", o.min_lr_ratio}, {"warmup", o.warmup},     {"weight_decay", o.weight_decay},
                       {"betas", {o.beta1, o.beta2}}, {"clip", o.clip},             {"seed", o.seed},
                       {"threads", o.threads},       {"train_limit", o.train_limit}, {"vocab_size", o.vocab_size},
                       {"type_temperature", o.type_temperature},
                       {"augment", {{"paper_description", o.augment.paper_description},
                                    {"enriched", o.augment.enriched},
                                    {"revision", o.augment.revision}}}};
  j["sizes"] = ojson{{"hidden", o.sizes.hidden},
                     {"layers", o.sizes.layers},
                     {"heads", o.sizes.heads},
                     {"kv_heads", o.sizes.kv_heads},
                     {"intermediate", o.sizes.intermediate},
                     {"vision_hidden", o.sizes.vision_hidden},
                     {"vision_layers", o.sizes.vision_layers},
                     {"vision_heads", o.sizes.vision_heads},
                     {"vision_intermediate", o.sizes.vision_intermediate},
                     {"image_size", o.sizes.image_size},
                     {"patch_size", o.sizes.patch_size},
                     {"rope_theta", o.sizes.rope_theta}};
  j["parameters"] = summary.parameters;
  j["training_questions"] = train_set.size();
  j["train_seconds"] = summary.train_seconds;
  j["loss_first"] = summary.first_loss;
  j["loss_last"] = summary.last_loss;
  ojson curve = ojson::array();
  for (std::size_t s = 0; s < losses.size(); s += static_cast<std::size_t>(o.log_every)) {
    const std::size_t e = std::min(losses.size(), s + static_cast<std::size_t>(o.log_every));
    curve.push_back(ojson{{"step", e}, {"loss", std::accumulate(losses.begin() + static_cast<std::ptrdiff_t>(s),
                                                                losses.begin() + static_cast<std::ptrdiff_t>(e), 0.0) /
                                                    static_cast<double>(e - s)}});
  }
  j["loss_curve"] = curve;
  ojson evals = ojson::array();
  for (const auto& ev : summary.evals) evals.push_back(eval_json(ev));
  j["validation_during_training"] = evals;
  j["final_validation"] = eval_json(summary.final_eval);
  if (formats_eval) j["final_validation_paper_prompts"] = eval_json(*formats_eval);
  j["reload_max_abs_logit_diff"] = summary.reload_max_abs_diff;
  j["total_seconds"] = seconds_since(t_start);
  cr::write_json_file((fs::path(o.out) / "training_log.json").string(), j);
  log << "total time: " << std::fixed << std::setprecision(1) << seconds_since(t_start) << " s" << std::defaultfloat
      << std::setprecision(6) << "\n";
  return summary;
}

}  // namespace consr_tiny
