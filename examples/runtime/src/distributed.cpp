// consr_runtime/distributed.cpp — see distributed.hpp.
#include "consr_runtime/distributed.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <map>
#include <ostream>
#include <thread>

#include <c10/util/Exception.h>

#include "consr_runtime/error.hpp"

#ifdef CONSR_RUNTIME_HAS_GLOO
// LibTorch's CMake config defines these for its own builds with Gloo (Debian's does); a config
// that does not would leave ProcessGroupGloo.hpp empty.
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif

namespace consr_runtime {

namespace {

[[noreturn]] void env_fail(const std::string& var, const std::string& why) {
  throw runtime_error("environment variable " + var + ": " + why);
}

long long env_int(const char* name, const char* value, long long lo, long long hi) {
  const std::string s = value;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || end == s.c_str() || *end != '\0' || errno == ERANGE)
    env_fail(name, "'" + s + "' is not an integer");
  if (v < lo || v > hi)
    env_fail(name, "'" + s + "' is outside " + std::to_string(lo) + ".." + std::to_string(hi));
  return v;
}

// SLURM_NTASKS_PER_NODE / SLURM_TASKS_PER_NODE look like "2" or "2(x3)" or "2,1": the leading count.
int leading_count(const char* value) {
  if (value == nullptr) return 0;
  const int n = std::atoi(value);
  return n > 0 ? n : 0;
}

std::string why_of(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

// A group of one: nothing to communicate.
class single_process_group final : public process_group {
 public:
  explicit single_process_group(const dist_env& env) : process_group(env, std::chrono::milliseconds(0)) {}
  void barrier(const std::string&) override {}
  void all_reduce_sum(std::vector<torch::Tensor>&, const std::string&, std::int64_t) override {}
  void broadcast(std::vector<torch::Tensor>&, const std::string&) override {}
  std::vector<std::string> all_gather(const std::string& mine, const std::string&) override { return {mine}; }
};

#ifdef CONSR_RUNTIME_HAS_GLOO

class gloo_process_group final : public process_group {
 public:
  gloo_process_group(const dist_env& env, std::chrono::milliseconds timeout) : process_group(env, timeout) {
    const std::string where = "rendezvous at " + env.master_addr + ":" + std::to_string(env.master_port);
    try {
      c10d::TCPStoreOptions so;
      so.port = static_cast<std::uint16_t>(env.master_port);
      so.timeout = timeout;
      if (env.agent_store) {
        so.isServer = false;
        so.waitWorkers = false;
      } else {
        so.isServer = env.rank == 0;
        so.numWorkers = static_cast<std::size_t>(env.world_size);
        so.waitWorkers = true;
        so.multiTenant = true;
      }
      c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
      if (!env.store_prefix.empty()) store = c10::make_intrusive<c10d::PrefixStore>(env.store_prefix, store);
      store = c10::make_intrusive<c10d::PrefixStore>("consr/", store);
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname) {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      } else if (env.local_world_size == env.world_size) {
        // Every rank on this node: loopback works whatever the host name resolves to.
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      } else {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      opts->threads = 2;
      pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store, env.rank, env.world_size, opts);
    } catch (const std::exception& e) {
      fail(where, why_of(e));
    }
  }

  void barrier(const std::string& what) override {
    try {
      pg_->barrier()->wait(timeout());
    } catch (const std::exception& e) {
      fail(what, why_of(e));
    }
  }

  void all_reduce_sum(std::vector<torch::Tensor>& tensors, const std::string& what, std::int64_t bucket_bytes) override {
    // Buckets of one transport dtype (bf16 / fp16 travel as fp32), in the order given.
    const auto transport = [](torch::ScalarType t) {
      return (t == torch::kBFloat16 || t == torch::kHalf) ? torch::kFloat32 : t;
    };
    std::size_t i = 0;
    while (i < tensors.size()) {
      if (!tensors[i].defined() || tensors[i].numel() == 0) {
        ++i;
        continue;
      }
      const torch::ScalarType dt = transport(tensors[i].scalar_type());
      if (dt != torch::kFloat32 && dt != torch::kFloat64 && dt != torch::kInt64)
        fail(what, std::string("all_reduce_sum: unsupported dtype ") + c10::toString(tensors[i].scalar_type()));
      std::vector<std::size_t> members;
      std::int64_t bytes = 0;
      std::size_t j = i;
      for (; j < tensors.size(); ++j) {
        if (!tensors[j].defined() || tensors[j].numel() == 0) continue;
        if (transport(tensors[j].scalar_type()) != dt) break;
        const std::int64_t b = tensors[j].numel() * static_cast<std::int64_t>(c10::elementSize(dt));
        if (!members.empty() && bytes + b > bucket_bytes) break;
        members.push_back(j);
        bytes += b;
      }
      std::vector<torch::Tensor> flat;
      for (std::size_t k : members) flat.push_back(tensors[k].detach().to(torch::kCPU, dt).reshape({-1}));
      std::vector<torch::Tensor> buffer{torch::cat(flat).contiguous()};
      try {
        pg_->allreduce(buffer)->wait(timeout());
      } catch (const std::exception& e) {
        fail(what, why_of(e));
      }
      std::int64_t at = 0;
      for (std::size_t k : members) {
        torch::Tensor& t = tensors[k];
        const std::int64_t n = t.numel();
        torch::NoGradGuard no_grad;
        t.copy_(buffer[0].narrow(0, at, n).view(t.sizes()));
        at += n;
      }
      i = j;
    }
  }

  void broadcast(std::vector<torch::Tensor>& tensors, const std::string& what) override {
    for (auto& t : tensors) {
      if (!t.defined() || t.numel() == 0) continue;
      std::vector<torch::Tensor> buffer{t.detach().to(torch::kCPU).contiguous().clone()};
      try {
        c10d::BroadcastOptions bo;
        bo.rootRank = 0;
        pg_->broadcast(buffer, bo)->wait(timeout());
      } catch (const std::exception& e) {
        fail(what, why_of(e));
      }
      torch::NoGradGuard no_grad;
      t.copy_(buffer[0]);
    }
  }

  std::vector<std::string> all_gather(const std::string& mine, const std::string& what) override {
    // Sizes first (each rank fills its slot, the sum is exact), then the bytes padded to the longest.
    const auto n = static_cast<std::int64_t>(size());
    std::vector<torch::Tensor> sizes{torch::zeros({n}, torch::kInt64)};
    sizes[0][rank()] = static_cast<std::int64_t>(mine.size());
    all_reduce_sum(sizes, what + " (sizes)", std::int64_t{1} << 20);
    const std::int64_t longest = std::max<std::int64_t>(1, sizes[0].max().item<std::int64_t>());
    std::vector<torch::Tensor> input{torch::zeros({longest}, torch::kUInt8)};
    std::memcpy(input[0].data_ptr<std::uint8_t>(), mine.data(), mine.size());
    std::vector<std::vector<torch::Tensor>> output(1);
    for (std::int64_t r = 0; r < n; ++r) output[0].push_back(torch::empty({longest}, torch::kUInt8));
    try {
      pg_->allgather(output, input)->wait(timeout());
    } catch (const std::exception& e) {
      fail(what, why_of(e));
    }
    std::vector<std::string> all;
    for (std::int64_t r = 0; r < n; ++r)
      all.emplace_back(reinterpret_cast<const char*>(output[0][static_cast<std::size_t>(r)].data_ptr<std::uint8_t>()),
                       static_cast<std::size_t>(sizes[0][r].item<std::int64_t>()));
    return all;
  }

 private:
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
};

#endif  // CONSR_RUNTIME_HAS_GLOO

}  // namespace

dist_env read_dist_env(const std::function<const char*(const char*)>& get_fn) {
  const auto get = [&](const char* name) -> const char* {
    const char* v = get_fn ? get_fn(name) : std::getenv(name);
    return (v != nullptr && *v != '\0') ? v : nullptr;
  };
  dist_env e;
  const int max_ranks = 1 << 20;
  if (get("RANK") || get("WORLD_SIZE")) {
    if (!get("RANK")) env_fail("RANK", "missing while WORLD_SIZE is set");
    if (!get("WORLD_SIZE")) env_fail("WORLD_SIZE", "missing while RANK is set");
    e.source = "env (torchrun / consr --nproc)";
    e.world_size = static_cast<int>(env_int("WORLD_SIZE", get("WORLD_SIZE"), 1, max_ranks));
    e.rank = static_cast<int>(env_int("RANK", get("RANK"), 0, e.world_size - 1));
    e.local_rank = get("LOCAL_RANK") ? static_cast<int>(env_int("LOCAL_RANK", get("LOCAL_RANK"), 0, e.world_size - 1)) : 0;
    e.local_world_size = get("LOCAL_WORLD_SIZE")
                             ? static_cast<int>(env_int("LOCAL_WORLD_SIZE", get("LOCAL_WORLD_SIZE"), 1, e.world_size))
                             : 0;  // unknown: treat as several nodes
  } else if (get("SLURM_PROCID") && get("SLURM_NTASKS")) {
    e.source = "slurm";
    e.world_size = static_cast<int>(env_int("SLURM_NTASKS", get("SLURM_NTASKS"), 1, max_ranks));
    e.rank = static_cast<int>(env_int("SLURM_PROCID", get("SLURM_PROCID"), 0, e.world_size - 1));
    e.local_rank = get("SLURM_LOCALID") ? static_cast<int>(env_int("SLURM_LOCALID", get("SLURM_LOCALID"), 0, e.world_size - 1)) : 0;
    e.local_world_size = leading_count(get("SLURM_NTASKS_PER_NODE"));
    if (e.local_world_size == 0 && get("SLURM_NNODES") &&
        env_int("SLURM_NNODES", get("SLURM_NNODES"), 1, max_ranks) == 1)
      e.local_world_size = e.world_size;
  } else {
    return e;
  }
  if (e.world_size > 1) {
    if (!get("MASTER_ADDR")) env_fail("MASTER_ADDR", "missing (the host of rank 0 or of torchrun's rendezvous)");
    e.master_addr = get("MASTER_ADDR");
    if (get("MASTER_PORT")) {
      e.master_port = static_cast<int>(env_int("MASTER_PORT", get("MASTER_PORT"), 1, 65535));
    } else if (e.source != "slurm") {
      env_fail("MASTER_PORT", "missing (torchrun and --nproc set it)");
    }
    if (const char* a = get("TORCHELASTIC_USE_AGENT_STORE"); a && std::string(a) == "True") {
      e.agent_store = true;
      const char* attempt = get("TORCHELASTIC_RESTART_COUNT");
      if (!attempt) env_fail("TORCHELASTIC_RESTART_COUNT", "missing while TORCHELASTIC_USE_AGENT_STORE=True");
      e.store_prefix = std::string("/worker/attempt_") + attempt;
    }
  }
  return e;
}

bool distributed_available() noexcept {
#ifdef CONSR_RUNTIME_HAS_GLOO
  return true;
#else
  return false;
#endif
}

void process_group::fail(const std::string& what, const std::string& why) const {
  std::string first_line = why.substr(0, why.find('\n'));
  throw runtime_error("rank " + std::to_string(rank()) + " of " + std::to_string(size()) + ": " + what +
                      " failed: " + first_line + " (another rank has stopped or is stuck: it failed, was killed or "
                      "hangs; collectives wait at most " + std::to_string(timeout().count() / 1000) + " s)");
}

std::shared_ptr<process_group> process_group::connect(const dist_env& env, std::chrono::milliseconds timeout) {
  if (env.world_size <= 1) return std::make_shared<single_process_group>(env);
#ifdef CONSR_RUNTIME_HAS_GLOO
  return std::make_shared<gloo_process_group>(env, timeout);
#else
  (void)timeout;
  throw runtime_error("rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size) +
                      ": this build has no c10d Gloo (LibTorch's ProcessGroupGloo.hpp and the gloo headers, Debian: "
                      "libgloo-dev, were not found at configure time), so it runs as one process only");
#endif
}

namespace {

int free_local_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw runtime_error(std::string("--nproc: socket(): ") + std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    throw runtime_error("--nproc: cannot find a free port on 127.0.0.1: " + why);
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("was killed by signal ") + std::to_string(WTERMSIG(status)) + " (" +
                                  ::strsignal(WTERMSIG(status)) + ")";
  return "stopped (status " + std::to_string(status) + ")";
}

}  // namespace

std::vector<std::string> command_line_without_nproc(int argc, const char* const* argv) {
  std::vector<std::string> args;
  for (int k = 0; k < argc; ++k) {
    const std::string a = argv[k];
    if (a == "--nproc") {
      ++k;  // and its value
      continue;
    }
    if (a.rfind("--nproc=", 0) == 0) continue;
    args.push_back(a);
  }
  return args;
}

int launch_local(int nproc, const std::vector<std::string>& argv, std::ostream& err, std::chrono::milliseconds grace) {
  if (nproc < 1) throw runtime_error("argument '--nproc': must be at least 1 (got " + std::to_string(nproc) + ")");
  if (argv.empty()) throw runtime_error("launch_local: empty argv");
  const std::string port = std::to_string(free_local_port());
  std::vector<std::string> args = argv;
  std::vector<char*> cargs;
  for (auto& a : args) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  std::map<pid_t, int> running;  // pid -> rank
  for (int r = 0; r < nproc; ++r) {
    const pid_t pid = ::fork();
    if (pid < 0) throw runtime_error(std::string("--nproc: fork(): ") + std::strerror(errno));
    if (pid == 0) {
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", port.c_str(), 1);
      ::unsetenv("TORCHELASTIC_USE_AGENT_STORE");
      // The cores shared out among the ranks (torchrun sets OMP_NUM_THREADS=1), unless the user chose.
      if (std::getenv("OMP_NUM_THREADS") == nullptr) {
        const unsigned cores = std::thread::hardware_concurrency();
        ::setenv("OMP_NUM_THREADS", std::to_string(std::max(1u, cores / static_cast<unsigned>(nproc))).c_str(), 1);
      }
      ::execv("/proc/self/exe", cargs.data());
      std::fprintf(stderr, "error: --nproc: cannot run /proc/self/exe: %s\n", std::strerror(errno));
      ::_exit(127);
    }
    running[pid] = r;
  }
  int first_failure = 0;
  bool stopping = false;
  auto deadline = std::chrono::steady_clock::time_point::max();
  while (!running.empty()) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (pid == 0) {
      if (stopping && std::chrono::steady_clock::now() > deadline) {
        for (const auto& [p, r] : running) ::kill(p, SIGKILL);
        deadline = std::chrono::steady_clock::time_point::max();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      continue;
    }
    const auto it = running.find(pid);
    if (it == running.end()) continue;
    const int rank = it->second;
    running.erase(it);
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (ok) continue;
    if (!stopping) {
      err << "error: --nproc: rank " << rank << " of " << nproc << " " << describe_status(status)
          << (running.empty() ? "" : "; stopping the other ranks") << "\n";
      first_failure = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      stopping = true;
      for (const auto& [p, r] : running) ::kill(p, SIGTERM);
      deadline = std::chrono::steady_clock::now() + grace;
    }
  }
  err.flush();
  return first_failure;
}

}  // namespace consr_runtime
