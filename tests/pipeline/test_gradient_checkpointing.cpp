// --gradient-checkpointing (issue 17 §2): training with it gives the losses and the adapter of
// training without it (the decoder layers are recomputed in backward, nothing else changes), and the
// flag is refused, by name, where there is no training to apply it to.
#include <torch/torch.h>
#undef CHECK
#include <catch2/catch.hpp>

#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../test_files.hpp"
#include "pipeline_test_options.hpp"
#include "consr_runtime/safetensors.hpp"
#include "pipeline.hpp"

namespace cp = consr_pipeline;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

json load(const fs::path& p) { return json::parse(consr_test_files::slurp(p)); }

cp::options parse(std::vector<const char*> args) {
  args.insert(args.begin(), "consr_pipeline");
  return cp::parse_command_line(static_cast<int>(args.size()), args.data(), nullptr);
}

}  // namespace

TEST_CASE("gradient checkpointing: the flag is parsed, and refused where no training runs", "[pipeline][options]") {
  CHECK_FALSE(parse({}).gradient_checkpointing);
  CHECK(parse({"--gradient-checkpointing"}).gradient_checkpointing);
  CHECK(parse({"train", "--gradient-checkpointing"}).gradient_checkpointing);
  for (const char* stage : {"describe", "candidates", "score", "write"}) {
    INFO(stage);
    CHECK_THROWS_WITH(parse({stage, "--gradient-checkpointing"}),
                      Catch::Contains("--gradient-checkpointing") && Catch::Contains(std::string("'") + stage + "'"));
  }
  CHECK_THROWS_WITH(parse({"--gradient-checkpointing=1"}), Catch::Contains("--gradient-checkpointing"));
}

TEST_CASE("gradient checkpointing: training with it equals training without it", "[pipeline]") {
  cp::options o = consr_pipeline_test::tiny_options("gradient_checkpointing", 8);
  o.num_sampled = 3;
  o.num_revised = 1;
  o.num_noisy = 2;
  fs::remove_all(o.output_dir);
  std::ostringstream log;
  cp::run_pipeline(o, log);
  const fs::path dir = o.output_dir;
  const json plain = load(dir / "train_log.json");
  const consr_runtime::safetensors_file plain_adapter((dir / "adapter" / "adapter_model.safetensors").string());
  std::vector<std::pair<std::string, torch::Tensor>> plain_tensors;
  for (const auto& e : plain_adapter.entries()) plain_tensors.emplace_back(e.name, plain_adapter.load(e.name).clone());
  REQUIRE_FALSE(plain["steps"].empty());

  // The train stage again (its inputs are fresh), with checkpointing.
  o.gradient_checkpointing = true;
  o.force = true;
  std::ostringstream log2;
  const auto results = cp::run_pipeline(o, log2);
  for (const auto& r : results) CHECK(r.ran == (r.which == cp::stage::train));
  CHECK(log2.str().find("; gradient checkpointing") != std::string::npos);
  CHECK(log.str().find("gradient checkpointing") == std::string::npos);
  const json ckpt = load(dir / "train_log.json");
  REQUIRE(ckpt["steps"].size() == plain["steps"].size());
  for (std::size_t i = 0; i < plain["steps"].size(); ++i)
    for (const char* k : {"loss", "dpo_loss"}) {
      INFO("step " << i << " " << k);
      const double a = plain["steps"][i][k].get<double>(), b = ckpt["steps"][i][k].get<double>();
      CHECK(std::abs(a - b) <= 1e-6 * std::max(1.0, std::abs(a)));
    }
  const consr_runtime::safetensors_file ckpt_adapter((dir / "adapter" / "adapter_model.safetensors").string());
  REQUIRE(ckpt_adapter.entries().size() == plain_tensors.size());
  double moved = 0;
  for (const auto& [name, t] : plain_tensors) {
    INFO(name);
    const torch::Tensor u = ckpt_adapter.load(name).to(torch::kDouble);
    const torch::Tensor v = t.to(torch::kDouble);
    CHECK((u - v).abs().max().item<double>() <= 1e-6 * std::max(1.0, v.abs().max().item<double>()));
    if (name.find("lora_B") != std::string::npos) moved += v.abs().sum().item<double>();
  }
  CHECK(moved > 0);  // the adapter trained (B starts at zero), so the comparison is not of two zeros
}
