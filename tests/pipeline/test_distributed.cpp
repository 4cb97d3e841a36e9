// Tests of the data-parallel pipeline (docs/distributed.md) on the tiny Qwen2.5-VL fixture, with
// real processes on loopback (c10d TCPStore + Gloo):
//  * 2 ranks (consr's --nproc launcher) write artefacts byte-identical to one process, and train
//    2 ranks × batch 1 as 1 rank × batch 2 (loss, metrics and adapter to 1e-6);
//  * torchrun (Debian's python3-torch) starts the same binary: the same artefacts again;
//  * a rank that dies ends the run with one line naming it; a rerun resumes from the checkpoints and
//    ends with the same artefacts; a rank that hangs ends the others within --dist-timeout;
//  * the launcher's environment is read and checked (read_dist_env), without processes.
// LibTorch first: its glog headers define CHECK, which Catch's CHECK must replace.
#include <torch/torch.h>
#undef CHECK
#include <catch2/catch.hpp>

#include "../test_files.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "consr_runtime/distributed.hpp"
#include "consr_runtime/error.hpp"
#include "consr_runtime/safetensors.hpp"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
namespace cr = consr_runtime;

const fs::path test_root = fs::path(CONSR_PIPELINE_TEST_OUT) / "distributed";
const std::string exe = CONSR_PIPELINE_EXE;
// Short generations and a few training steps over the embedded default (3 items, 3 pairs).
const std::string common_args = " --max-new-tokens 12 --description-max-new-tokens 12 --epochs 2";

using consr_test_files::slurp;

struct result {
  int status = -1;
  std::string out, err;
  double seconds = 0;
};

// Runs a shell command with stdout / stderr captured in files next to the run.
result run(const std::string& cmd, const std::string& name) {
  fs::create_directories(test_root);
  const fs::path out = test_root / (name + ".stdout"), err = test_root / (name + ".stderr");
  const auto t0 = std::chrono::steady_clock::now();
  const int raw = std::system((cmd + " > '" + out.string() + "' 2> '" + err.string() + "'").c_str());
  result r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

result pipeline(const std::string& env, const std::string& launcher, const fs::path& out, const std::string& extra,
                const std::string& name) {
  fs::remove_all(out);
  return run(env + " " + launcher + " '" + exe + "' --out '" + out.string() + "'" + common_args + " " + extra, name);
}

// A pipeline run that must succeed (its stderr shown when it does not).
result pipeline_ok(const std::string& env, const std::string& launcher, const fs::path& out, const std::string& extra,
                   const std::string& name) {
  result r = pipeline(env, launcher, out, extra, name);
  INFO(r.err);
  REQUIRE(r.status == 0);
  return r;
}

// The cases that start processes need c10d Gloo; without it they are skipped with a warning.
bool gloo_available() {
  if (cr::distributed_available()) return true;
  WARN("skipped: this build has no c10d Gloo (libgloo-dev)");
  return false;
}

// Every process computes with one thread: LibTorch's CPU kernels may round differently at another
// thread count (~1e-6 in the scores), and the claim is about ranks, not threads.
const std::string threads = "OMP_NUM_THREADS=1";

// The artefacts that must not depend on the number of ranks (everything but training).
const std::vector<std::string> stage_files{"descriptions.json", "candidates.json", "scores.json", "report.json",
                                           "llava_ov_dpo.json", "llamafactory/consr_preference.json",
                                           "llamafactory/dataset_info.json"};

void require_same_stage_files(const fs::path& a, const fs::path& b) {
  for (const auto& f : stage_files) {
    INFO(f);
    REQUIRE(fs::is_regular_file(a / f));
    REQUIRE(fs::is_regular_file(b / f));
    CHECK(slurp(a / f) == slurp(b / f));
  }
}

// Every number of two JSON values within `tol` (relative to max(1, |x|)), everything else equal.
void require_close(const json& a, const json& b, double tol, const std::string& where) {
  INFO(where);
  REQUIRE(a.type() == b.type());
  if (a.is_number_float()) {
    const double x = a.get<double>(), y = b.get<double>();
    CHECK(std::abs(x - y) <= tol * std::max(1.0, std::abs(x)));
  } else if (a.is_object()) {
    REQUIRE(a.size() == b.size());
    for (auto it = a.begin(); it != a.end(); ++it) {
      REQUIRE(b.contains(it.key()));
      require_close(it.value(), b.at(it.key()), tol, where + "." + it.key());
    }
  } else if (a.is_array()) {
    REQUIRE(a.size() == b.size());
    for (std::size_t i = 0; i < a.size(); ++i) require_close(a[i], b[i], tol, where + "[" + std::to_string(i) + "]");
  } else {
    CHECK(a == b);
  }
}

void require_same_training(const fs::path& a, const fs::path& b, double tol) {
  const json la = json::parse(slurp(a / "train_log.json")), lb = json::parse(slurp(b / "train_log.json"));
  REQUIRE(la.at("steps").size() >= 2);
  require_close(la, lb, tol, "train_log");
  const cr::safetensors_file fa((a / "adapter/adapter_model.safetensors").string());
  const cr::safetensors_file fb((b / "adapter/adapter_model.safetensors").string());
  REQUIRE(fa.entries().size() == fb.entries().size());
  REQUIRE(!fa.entries().empty());
  double max_diff = 0, max_abs = 0;
  for (const auto& e : fa.entries()) {
    const torch::Tensor x = fa.load(e.name).to(torch::kFloat64), y = fb.load(e.name).to(torch::kFloat64);
    REQUIRE(x.sizes() == y.sizes());
    max_diff = std::max(max_diff, (x - y).abs().max().item<double>());
    max_abs = std::max(max_abs, x.abs().max().item<double>());
  }
  INFO("adapter: max |difference| " << max_diff << ", max |value| " << max_abs);
  CHECK(max_abs > 0);
  CHECK(max_diff <= tol);
}

std::string torchrun_path() {
  for (const char* p : {"/usr/bin/torchrun", "/usr/local/bin/torchrun"})
    if (fs::exists(p)) return p;
  return "";
}

}  // namespace

TEST_CASE("read_dist_env reads torchrun's and SLURM's variables and names a bad one", "[distributed][env]") {
  const auto env_of = [](std::map<std::string, std::string> vars) {
    return [vars](const char* name) -> const char* {
      const auto it = vars.find(name);
      return it == vars.end() ? nullptr : it->second.c_str();
    };
  };
  const cr::dist_env one = cr::read_dist_env(env_of({}));
  CHECK(one.world_size == 1);
  CHECK(one.rank == 0);

  const cr::dist_env t = cr::read_dist_env(env_of({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"},
                                                   {"LOCAL_WORLD_SIZE", "2"}, {"MASTER_ADDR", "node0"},
                                                   {"MASTER_PORT", "29511"}, {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                                                   {"TORCHELASTIC_RESTART_COUNT", "2"}}));
  CHECK(t.rank == 3);
  CHECK(t.world_size == 4);
  CHECK(t.local_rank == 1);
  CHECK(t.local_world_size == 2);
  CHECK(t.master_addr == "node0");
  CHECK(t.master_port == 29511);
  CHECK(t.agent_store);
  CHECK(t.store_prefix == "/worker/attempt_2");

  const cr::dist_env s = cr::read_dist_env(env_of({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "1"},
                                                   {"SLURM_NTASKS_PER_NODE", "4(x2)"}, {"MASTER_ADDR", "n1"}}));
  CHECK(s.source == "slurm");
  CHECK(s.rank == 5);
  CHECK(s.world_size == 8);
  CHECK(s.local_rank == 1);
  CHECK(s.local_world_size == 4);
  CHECK(s.master_port == 29500);

  const auto throws_naming = [&](std::map<std::string, std::string> vars, const std::string& needle) {
    INFO(needle);
    try {
      (void)cr::read_dist_env(env_of(vars));
      FAIL("no error");
    } catch (const cr::runtime_error& e) {
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
  };
  throws_naming({{"RANK", "0"}}, "WORLD_SIZE: missing");
  throws_naming({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "1"}}, "RANK: '2' is outside 0..1");
  throws_naming({{"RANK", "x"}, {"WORLD_SIZE", "2"}}, "RANK: 'x' is not an integer");
  throws_naming({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "1"}}, "MASTER_ADDR: missing");
  throws_naming({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "70000"}},
                "MASTER_PORT: '70000' is outside 1..65535");
  throws_naming({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "1"},
                 {"TORCHELASTIC_USE_AGENT_STORE", "True"}},
                "TORCHELASTIC_RESTART_COUNT: missing");
}

TEST_CASE("2 ranks write the artefacts of 1 process and train 2 x 1 as 1 x 2", "[distributed][processes]") {
  if (!gloo_available()) return;
  const fs::path one = test_root / "one", two = test_root / "two";
  pipeline_ok(threads, "", one, "--batch-size 2", "one");
  const result b = pipeline(threads, "", two, "--batch-size 1 --nproc 2", "two");
  INFO(b.err);
  REQUIRE(b.status == 0);
  CHECK(b.out.find("2 ranks (env (torchrun / consr --nproc), c10d Gloo") != std::string::npos);
  CHECK(b.out.find("batch 2 (2 ranks x 1)") != std::string::npos);
  require_same_stage_files(one, two);
  require_same_training(one, two, 1e-6);

  // torchrun (Debian's torchrun 1.13 on Python 3.11 fails to parse its default --redirects/--tee
  // "0" (enum iteration changed in 3.11); a mapping for a local rank that does not exist parses and
  // redirects nothing): the same artefacts as 1 process, the same bits as --nproc 2.
  const auto torchrun_run = [&](const std::string& name, const std::string& rendezvous) {
    const std::string torchrun = torchrun_path();
    if (torchrun.empty()) {
      WARN("skipped: torchrun not installed (Debian: python3-torch)");
      return;
    }
    const fs::path tr = test_root / name;
    const result c = pipeline(threads, torchrun + " " + rendezvous + " --nproc_per_node 2 --redirects 9:1 --tee 9:1 --no_python",
                              tr, "--batch-size 1", name);
    INFO(c.out);
    INFO(c.err);
    REQUIRE(c.status == 0);
    require_same_stage_files(one, tr);
    require_same_training(two, tr, 0.0);
  };
  // Not SECTIONs: Catch would rerun the two runs above for each.
  torchrun_run("torchrun", "--standalone");  // c10d rendezvous: rank 0 hosts the TCPStore
  // The static rendezvous: torchrun's agent hosts the TCPStore.
  torchrun_run("torchrun_static", "--nnodes 1 --master_addr 127.0.0.1 --master_port " +
                                      std::to_string(20000 + ::getpid() % 20000));
}

TEST_CASE("a rank that dies or hangs ends the run with one clear line; a rerun resumes", "[distributed][faults]") {
  if (!gloo_available()) return;
  const fs::path ref = test_root / "fault_reference", out = test_root / "fault";
  pipeline_ok(threads, "", ref, "score", "fault_reference");

  // Rank 1 crashes when the candidates stage starts: the describe stage is done and stays done.
  const result dead =
      pipeline(threads + " CONSR_PIPELINE_FAULT=1:candidates:exit", "", out, "score --nproc 2", "fault_exit");
  INFO(dead.err);
  CHECK(dead.status != 0);
  CHECK(dead.err.find("--nproc: rank 1 of 2 exited with status 3") != std::string::npos);
  CHECK(dead.seconds < 120);
  CHECK(fs::is_regular_file(out / "descriptions.json"));
  CHECK(!fs::exists(out / "candidates.json"));

  // Rank 1 hangs in the score stage: rank 0 gives up after --dist-timeout and the launcher stops rank 1.
  const result hung = run(threads + " CONSR_PIPELINE_FAULT=1:score:hang '" + exe + "' --out '" + out.string() + "'" + common_args +
                              " score --nproc 2 --dist-timeout 5",
                          "fault_hang");
  INFO(hung.err);
  CHECK(hung.status != 0);
  CHECK(hung.err.find("rank 0 of 2: stage 'score'") != std::string::npos);
  CHECK(hung.err.find("collectives wait at most 5 s") != std::string::npos);
  CHECK(hung.seconds < 120);
  CHECK(fs::is_regular_file(out / "candidates.json"));

  // The rerun (2 ranks, no fault) resumes: describe and candidates up to date, the same artefacts.
  const result rerun =
      run(threads + " '" + exe + "' --out '" + out.string() + "'" + common_args + " score --nproc 2", "fault_rerun");
  INFO(rerun.err);
  REQUIRE(rerun.status == 0);
  CHECK(rerun.out.find("[describe] up to date") != std::string::npos);
  CHECK(rerun.out.find("[candidates] up to date") != std::string::npos);
  for (const char* f : {"descriptions.json", "candidates.json", "scores.json"}) {
    INFO(f);
    CHECK(slurp(ref / f) == slurp(out / f));
  }
  CHECK(!fs::exists(out / "partial"));
}

TEST_CASE("--nproc is checked and refused under a launcher", "[distributed][options]") {
  // The ranks get the command line without --nproc, in either spelling, and everything else as given.
  const char* argv[] = {"prog", "--nproc", "2", "--out", "o", "--nproc=3", "--nprocs", "score"};
  CHECK(cr::command_line_without_nproc(8, argv) == std::vector<std::string>{"prog", "--out", "o", "--nprocs", "score"});
  const result bad = run("'" + exe + "' --nproc 0", "nproc_zero");
  CHECK(bad.status != 0);
  CHECK(bad.err.find("--nproc") != std::string::npos);
  const result under = run("RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=1 '" + exe + "' --nproc 2", "nproc_under");
  CHECK(under.status != 0);
  CHECK(under.err.find("argument '--nproc': not under a launcher") != std::string::npos);
}
