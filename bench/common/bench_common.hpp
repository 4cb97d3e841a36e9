// bench/common/bench_common.hpp — helpers shared by consr's benchmark executables.
//
// Conventions every executable follows, so that tools/run-benchmarks.py can read any of them:
//   * a benchmark is named "<kernel>/<impl>/<size>/threads:<t>", impl = "consr", a baseline
//     ("torch", "torch_autograd", ...) or "stream" (the bandwidth probe); <size> has no '/';
//   * it reports, per iteration, the counters "bytes_read" and "bytes_written": the bytes the
//     operation must move at least (inputs read once, outputs written once), the same for consr
//     and the baseline, so "share of the limit" = (bytes / time) / (probe bandwidth of the same
//     access pattern at the same thread count);
//   * time is wall-clock (UseRealTime: the work runs on OpenMP threads), and every benchmark adds
//     a "min" statistic next to Google Benchmark's mean/median/stddev when run with repetitions;
//   * the thread count is set (OpenMP and LibTorch intra-op) at the start of each run.
#pragma once

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace consr_bench {

/// Number of cores the benchmarks treat as "all cores": CONSR_BENCH_ALL_THREADS if set, else the
/// OpenMP processor count (std::thread::hardware_concurrency without OpenMP).
int all_cores();

/// The thread counts every benchmark runs at: {1, all_cores()} (just {1} on one core).
std::vector<int> thread_counts();

/// Sets the thread count of consr's OpenMP loops and of LibTorch's intra-op pool.
void set_threads(int threads);

/// The body of a benchmark: runs the timed loop over `state` at the thread count given.
using bench_fn = std::function<void(benchmark::State&, int threads)>;

/// Registers "<kernel>/<impl>/<size>/threads:<t>" for every t in thread_counts(): wall-clock time,
/// milliseconds, a "min" statistic. The thread count is set before `fn` runs.
void add(const std::string& kernel, const std::string& impl, const std::string& size, bench_fn fn);

/// Records the bytes one iteration must move (see the file comment) and sets bytes_per_second.
void set_traffic(benchmark::State& state, double bytes_read, double bytes_written);

/// Registers the STREAM-like bandwidth probe of this machine at every thread count, as
/// "stream/read", "stream/write" and "stream/copy": the best of plain and non-temporal stores, over
/// arrays of CONSR_BENCH_STREAM_MIB MiB (default 256; far beyond the caches of common machines).
void add_stream_probe();

/// Registers "<kernel>/<impl>/<size>/threads:1" run exactly once (Iterations(1)), for measurements
/// that are not timings (e.g. peak memory of a child process, reported as counters).
void add_once(const std::string& kernel, const std::string& impl, const std::string& size,
              std::function<void(benchmark::State&)> fn);

/// Standard main of a benchmark executable: registers the probe (unless CONSR_BENCH_NO_STREAM is
/// set), runs `register_fn` to register the executable's benchmarks, then Google Benchmark.
/// `argv[1] == "--consr-child=<spec>"` instead runs child_fn(spec) alone (see run_child) and returns
/// its exit code.
int run_main(int argc, char** argv, const std::function<void()>& register_fn,
             const std::function<int(const std::string&)>& child_fn = {});

/// n floats uniform in [lo, hi), deterministic in `seed`, filled in parallel.
std::vector<float> uniform_floats(std::size_t n, std::uint64_t seed, float lo, float hi);

/// n integers uniform in [0, bound), deterministic in `seed`.
std::vector<std::int64_t> uniform_ints(std::size_t n, std::uint64_t seed, std::int64_t bound);

/// Lengths uniform in [lo, hi] for `count` sequences, and their offsets (count + 1 entries).
std::vector<std::int64_t> random_offsets(std::size_t count, std::uint64_t seed, std::int64_t lo, std::int64_t hi);

/// Peak-resident-memory meter for a process that measures itself (run it in a fresh child process,
/// see run_child): reset() makes the peak equal to the current resident size (writing "5" to
/// /proc/self/clear_refs), extra_bytes() is how far the peak has since risen above that size.
class peak_rss_meter {
 public:
  /// Resets the peak; returns false when this kernel cannot (then the peak so far is the baseline).
  bool reset();
  /// Bytes the peak resident size rose above the resident size at reset().
  double extra_bytes() const;

 private:
  double baseline_ = 0;
};

/// Runs this executable again (/proc/self/exe) with `args` and returns the last line it prints on
/// stdout (empty if it failed). Used to measure memory in a fresh process that has no other state.
std::string run_child(const std::vector<std::string>& args);

}  // namespace consr_bench
