// consr_runtime/distributed.hpp — data parallelism on torch.distributed's C++ engine (c10d): the
// launcher's environment (torchrun, SLURM, or consr's own --nproc), a TCPStore rendezvous and a
// Gloo process group, and the few collectives the pipeline needs (barrier, bucketed sum
// all-reduce, broadcast), each failing with one line that names the rank and what it was doing.
//
// Single process (no launcher variables): every collective is a no-op, nothing is connected.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

namespace consr_runtime {

/// Where this process stands in a job.
struct dist_env {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  /// torchrun's static rendezvous hosts the TCPStore in its agent (TORCHELASTIC_USE_AGENT_STORE=True):
  /// every rank is a client, under the key prefix "/worker/attempt_<TORCHELASTIC_RESTART_COUNT>".
  bool agent_store = false;
  std::string store_prefix;
  /// "single process", "env (torchrun / consr --nproc)" or "slurm".
  std::string source = "single process";
};

/// Reads the launcher's variables through `get` (std::getenv by default):
///  * RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT (torchrun,
///    torch.distributed.launch, consr's --nproc); TORCHELASTIC_USE_AGENT_STORE and
///    TORCHELASTIC_RESTART_COUNT as torch.distributed's env:// rendezvous reads them;
///  * else SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE (srun), with MASTER_ADDR
///    required when SLURM_NTASKS > 1 (MASTER_PORT defaults to 29500);
///  * else a single process.
/// Throws runtime_error naming the variable for a missing or malformed value (RANK without
/// WORLD_SIZE, RANK >= WORLD_SIZE, a port outside 1..65535, ...).
dist_env read_dist_env(const std::function<const char*(const char*)>& get = nullptr);

/// Whether this build can connect several processes (LibTorch's c10d with Gloo was found at
/// configure time: ProcessGroupGloo.hpp and the gloo headers).
bool distributed_available() noexcept;

/// A process group over a dist_env. Collectives take a `what` that names the step in errors.
class process_group {
 public:
  /// world_size 1: a group of one (no sockets). Otherwise: the TCPStore rendezvous at
  /// MASTER_ADDR:MASTER_PORT (rank 0 hosts it unless torchrun's agent does) and a Gloo process
  /// group over it; every collective waits at most `timeout` for the other ranks. Throws
  /// runtime_error naming the rank and the address when the rendezvous fails or times out, or when
  /// this build has no c10d Gloo (distributed_available()).
  static std::shared_ptr<process_group> connect(const dist_env& env, std::chrono::milliseconds timeout);

  virtual ~process_group() = default;
  int rank() const noexcept { return env_.rank; }
  int size() const noexcept { return env_.world_size; }
  bool is_root() const noexcept { return env_.rank == 0; }
  const dist_env& env() const noexcept { return env_; }
  std::chrono::milliseconds timeout() const noexcept { return timeout_; }

  /// Waits for every rank.
  virtual void barrier(const std::string& what) = 0;
  /// Sums each tensor over the ranks, in place (identical results on every rank). Floating-point
  /// and int64 tensors on any device; packed per dtype into flat buffers of at most `bucket_bytes`
  /// (one all-reduce per bucket, as DDP's gradient buckets), copied through the CPU for Gloo.
  virtual void all_reduce_sum(std::vector<torch::Tensor>& tensors, const std::string& what,
                              std::int64_t bucket_bytes = std::int64_t{25} << 20) = 0;
  /// Replaces each tensor with rank 0's, in place.
  virtual void broadcast(std::vector<torch::Tensor>& tensors, const std::string& what) = 0;
  /// Every rank's `mine`, in rank order, on every rank (e.g. results serialized as JSON).
  virtual std::vector<std::string> all_gather(const std::string& mine, const std::string& what) = 0;

 protected:
  process_group(dist_env env, std::chrono::milliseconds timeout) : env_(std::move(env)), timeout_(timeout) {}
  /// "rank R of W: <what> failed: <why> (...)": the error every collective throws.
  [[noreturn]] void fail(const std::string& what, const std::string& why) const;

 private:
  dist_env env_;
  std::chrono::milliseconds timeout_;
};

/// consr's own local launcher (`--nproc N`): runs `argv` N times as ranks 0..N-1 with RANK,
/// WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1 and a free MASTER_PORT set (and
/// OMP_NUM_THREADS = cores / N when the user has not set it, so the ranks share the cores), and
/// waits. When a rank fails (non-zero exit or a signal) the others are sent SIGTERM (SIGKILL after
/// `grace`); returns the first failing rank's exit status (0 when all succeed) after printing one
/// line per failed rank to `err`. `argv[0]` is run as /proc/self/exe.
int launch_local(int nproc, const std::vector<std::string>& argv, std::ostream& err,
                 std::chrono::milliseconds grace = std::chrono::seconds(10));

/// The command line `argv[0..argc)` without `--nproc` and its value (`--nproc N` or `--nproc=N`): what
/// a program started with --nproc hands launch_local for its ranks.
std::vector<std::string> command_line_without_nproc(int argc, const char* const* argv);

}  // namespace consr_runtime
