// Example 03: describe an image with a vision-language model loaded from a Hugging Face checkpoint
// directory (Qwen2.5-VL or LLaVA-OneVision, as published), using the paper's description prompt
// (ConSR App. B.1), the model's chat template, its image processor and the runtime's generation.
// Prints the description and the decoding speed. With --adapter, a LoRA adapter in PEFT's format is
// attached first (the `adapter/` the pipeline's train stage writes, or one saved by PEFT). Several
// images go into one prompt (LLaVA-OneVision then does not tile them, as transformers' processor).
//
//   example_03_describe_image [model_dir] [image...] [--adapter DIR] [--max-new-tokens N] [--temperature T]
//                             [--top-p P] [--seed S] [--dtype float32|bfloat16] [--device cpu|cuda[:n]]
//
// Defaults: the tiny Qwen2.5-VL test fixture and its test image, greedy decoding, 64 tokens, fp32.
#include <algorithm>
#include <chrono>
#include <iterator>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "consr_runtime/chat_template.hpp"
#include "consr_runtime/device.hpp"
#include "consr_runtime/error.hpp"
#include "consr_runtime/generation.hpp"
#include "consr_runtime/image.hpp"
#include "consr_runtime/lora.hpp"
#include "consr_runtime/models.hpp"
#include "consr_runtime/parse_number.hpp"
#include "consr_runtime/processors.hpp"
#include "consr_runtime/tokenizer.hpp"

namespace {

// ConSR App. B.1, verbatim (including the paper's spelling).
const char* description_prompt =
    "Describe the given image in detail. Compress the description in one paragraph. Please inlucde all "
    "foreground and background contents such object types, colors, states, actions, number of objects, precise "
    "object locations, texts or OCR results, relationships and relative positions between objects, environment, "
    "background, time, weather, etc. In case of non-real-world scenes, like charts, graphs, tables, etc., please "
    "describe the table, mention all numbers (if any), mention the written text, and all other details.";

struct arguments {
  std::string model_dir = CONSR_EXAMPLE_DEFAULT_MODEL;
  std::vector<std::string> images{CONSR_EXAMPLE_DEFAULT_IMAGE};
  std::string adapter;  ///< PEFT LoRA adapter directory ("" = none)
  consr_runtime::sampling_options sampling;
  torch::Dtype dtype = torch::kFloat32;
  torch::Device device = torch::kCPU;
};

double parse_number(const std::string& flag, const std::string& value) {
  if (const auto x = consr_runtime::parse_double(value)) return *x;
  throw consr_runtime::runtime_error("argument '" + flag + "': not a number: '" + value + "'");
}

arguments parse(int argc, char** argv) {
  arguments a;
  a.sampling.temperature = 0.0;
  a.sampling.max_new_tokens = 64;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      positional.push_back(arg);
      continue;
    }
    static const char* const known[] = {"--adapter", "--max-new-tokens", "--temperature", "--top-p",
                                        "--seed",    "--dtype",          "--device"};
    if (std::find(std::begin(known), std::end(known), arg) == std::end(known))
      throw consr_runtime::runtime_error("argument '" + arg + "': unknown option");
    if (i + 1 >= argc) throw consr_runtime::runtime_error("argument '" + arg + "': missing value");
    std::string value = argv[++i];
    if (arg == "--adapter") {
      if (value.empty()) throw consr_runtime::runtime_error("argument '--adapter': empty directory name");
      a.adapter = value;
    } else if (arg == "--max-new-tokens") {
      a.sampling.max_new_tokens = static_cast<std::int64_t>(parse_number(arg, value));
    } else if (arg == "--temperature") {
      a.sampling.temperature = parse_number(arg, value);
    } else if (arg == "--top-p") {
      a.sampling.top_p = parse_number(arg, value);
    } else if (arg == "--seed") {
      a.sampling.seed = static_cast<std::uint64_t>(parse_number(arg, value));
    } else if (arg == "--dtype") {
      if (value == "float32") a.dtype = torch::kFloat32;
      else if (value == "bfloat16") a.dtype = torch::kBFloat16;
      else throw consr_runtime::runtime_error("argument '--dtype': expected float32 or bfloat16, got '" + value + "'");
    } else {  // --device: checked here, one line instead of LibTorch's trace at the first tensor
      a.device = consr_runtime::parse_device(value, "--device");
    }
  }
  if (positional.size() >= 1) a.model_dir = positional[0];
  if (positional.size() >= 2) a.images.assign(positional.begin() + 1, positional.end());
  std::error_code ec;
  if (!a.adapter.empty() && !std::filesystem::is_directory(a.adapter, ec))
    throw consr_runtime::runtime_error("argument '--adapter': '" + a.adapter + "' is not a directory");
  return a;
}

int run(const arguments& args) {
  using clock = std::chrono::steady_clock;
  using namespace consr_runtime;
  auto t0 = clock::now();
  auto model = load_model(args.model_dir, torch::TensorOptions().dtype(args.dtype).device(args.device));
  model->eval();
  std::string adapter_info;
  if (!args.adapter.empty()) {
    try {
      const lora_config lora = load_lora_adapter(*model, args.adapter);
      adapter_info = args.adapter + " (rank " + std::to_string(lora.rank) + ", alpha " + std::to_string(lora.alpha) + ", " +
                     std::to_string(lora_parameters(*model).size() / 2) + " modules)";
    } catch (const std::exception& e) {
      throw runtime_error("argument '--adapter': " + std::string(e.what()));
    }
  }
  tokenizer tok = tokenizer::from_directory(args.model_dir);
  const model_config& config = model->config();
  std::vector<rgb_image> images;
  for (const auto& path : args.images) images.push_back(load_image(path));

  // The images through the model's processor (all in one prompt); the prompt through its chat
  // template, with each image placeholder expanded to the number of that image's features.
  prompt_input prompt;
  std::vector<std::int64_t> tokens_per_image;
  if (config.qwen2_5_vl) {
    auto packed = qwen2_vl_image_processor::from_file(args.model_dir)(images);
    prompt.images.pixel_values = packed.pixel_values;
    prompt.images.image_grid_thw = packed.image_grid_thw;
    tokens_per_image = packed.num_image_tokens;
  } else {
    auto packed = llava_onevision_image_processor::from_directory(args.model_dir)(images);
    prompt.images.pixel_values = packed.pixel_values;
    prompt.images.image_sizes = packed.image_sizes;
    prompt.images.batch_num_images = packed.batch_num_images;
    tokens_per_image = packed.num_image_tokens;
  }
  chat_format format = parse_chat_format(config.model_type);
  std::vector<content_item> content(images.size(), content_item::image());
  content.push_back(content_item::make_text(description_prompt));
  std::string text = render_chat(format, {chat_message{"user", content}});
  prompt.input_ids = tok.encode(expand_image_placeholders(format, text, tokens_per_image));

  sampling_options sampling = args.sampling;
  sampling.stop_token_ids = chat_stop_token_ids(tok);
  auto t1 = clock::now();
  generation_result result = generate(*model, {prompt}, sampling).at(0);
  auto t2 = clock::now();

  const double load_s = std::chrono::duration<double>(t1 - t0).count();
  const double gen_s = std::chrono::duration<double>(t2 - t1).count();
  const std::size_t n = result.token_ids.size() + (result.stop_token ? 1 : 0);
  std::cout << "model: " << args.model_dir << " (" << config.model_type << ", " << (args.dtype == torch::kBFloat16 ? "bfloat16" : "float32")
            << ", " << args.device << ")\n"
            << "adapter: " << (adapter_info.empty() ? "none" : adapter_info) << "\n";
  for (std::size_t k = 0; k < images.size(); ++k)
    std::cout << "image: " << args.images[k] << " (" << images[k].width() << "x" << images[k].height() << ", "
              << tokens_per_image.at(k) << " image tokens)\n";
  std::cout << "prompt tokens: " << prompt.input_ids.size() << "\n"
            << "description: " << tok.decode(result.token_ids, /*skip_special=*/true) << "\n"
            << "finished by: "
            << (result.reason == finish_reason::stop_token ? "stop token"
                : result.reason == finish_reason::length   ? "max_new_tokens"
                                                           : "context length")
            << "\n"
            << "load + preprocess: " << load_s << " s\n"
            << "generated " << n << " tokens in " << gen_s << " s (prefill included): "
            << (gen_s > 0 ? static_cast<double>(n) / gen_s : 0.0) << " tokens/s\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n"
              << "usage: " << argv[0]
              << " [model_dir] [image...] [--adapter DIR] [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S]"
                 " [--dtype float32|bfloat16] [--device cpu|cuda[:n]]\n";
    return 1;
  }
}
