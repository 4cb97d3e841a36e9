// bench/common/bench_common.cpp — see bench_common.hpp.
#include "common/bench_common.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <string>
#include <thread>

#include <dlfcn.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(CONSR_BENCH_HAS_TORCH)
#include <ATen/Parallel.h>
#endif
#include "consr/detail/streaming_store.hpp"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

extern char** environ;

namespace consr_bench {

int all_cores() {
  if (const char* env = std::getenv("CONSR_BENCH_ALL_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
#if defined(_OPENMP)
  return std::max(1, omp_get_num_procs());
#else
  return std::max(1u, std::thread::hardware_concurrency());
#endif
}

std::vector<int> thread_counts() {
  const int all = all_cores();
  if (all == 1) return {1};
  return {1, all};
}

void set_threads(int threads) {
#if defined(_OPENMP)
  omp_set_num_threads(threads);
#endif
#if defined(CONSR_BENCH_HAS_TORCH)
  at::set_num_threads(threads);
#endif
  // OpenBLAS's pthread build (Debian's libblas.so.3 alternative, used by LibTorch's linear and by
  // consr::cblas) runs its own thread pool that neither OpenMP nor ATen's setting reaches: without
  // this, a "1 thread" GEMM baseline would quietly use every core. Looked up at run time so the
  // benchmarks also run where libblas is another implementation.
  using set_fn = void (*)(int);
  if (auto* f = reinterpret_cast<set_fn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) f(threads);
}

namespace {

double min_of(const std::vector<double>& v) { return v.empty() ? 0.0 : *std::min_element(v.begin(), v.end()); }

}  // namespace

void add(const std::string& kernel, const std::string& impl, const std::string& size, bench_fn fn) {
  for (const int t : thread_counts()) {
    const std::string name = kernel + "/" + impl + "/" + size + "/threads:" + std::to_string(t);
    benchmark::RegisterBenchmark(name.c_str(),
                                 [fn, t](benchmark::State& state) {
                                   set_threads(t);
                                   fn(state, t);
                                 })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond)
        ->ComputeStatistics("min", min_of);
  }
}

void set_traffic(benchmark::State& state, double bytes_read, double bytes_written) {
  state.counters["bytes_read"] = bytes_read;
  state.counters["bytes_written"] = bytes_written;
  state.SetBytesProcessed(static_cast<std::int64_t>(static_cast<double>(state.iterations()) * (bytes_read + bytes_written)));
}

// ---- bandwidth probe ------------------------------------------------------------------------------

namespace {

struct aligned_floats {
  float* data = nullptr;
  std::size_t size = 0;
  explicit aligned_floats(std::size_t n) : size(n) {
    data = static_cast<float*>(std::aligned_alloc(64, ((n * sizeof(float) + 63) / 64) * 64));
    if (data == nullptr) throw std::bad_alloc();
#pragma omp parallel for schedule(static)
    for (std::size_t i = 0; i < n; ++i) data[i] = static_cast<float>(i % 1024) * 0.001f;  // first touch by the threads
  }
  ~aligned_floats() { std::free(data); }
  aligned_floats(const aligned_floats&) = delete;
  aligned_floats& operator=(const aligned_floats&) = delete;
};

std::size_t stream_elements() {
  std::size_t mib = 256;
  if (const char* env = std::getenv("CONSR_BENCH_STREAM_MIB")) {
    const long v = std::atol(env);
    if (v > 0) mib = static_cast<std::size_t>(v);
  }
  return mib * 1024 * 1024 / sizeof(float);
}

float stream_read(const float* a, std::size_t n) {
  float sum = 0;
#pragma omp parallel for simd schedule(static) reduction(+ : sum)
  for (std::size_t i = 0; i < n; ++i) sum += a[i];
  return sum;
}

void stream_write_plain(float* a, std::size_t n, float v) {
  // The stored value depends on i so that the compiler cannot turn the loop into memset.
#pragma omp parallel for simd schedule(static)
  for (std::size_t i = 0; i < n; ++i) a[i] = v + static_cast<float>(i & 7);
}

void stream_copy_plain(const float* a, float* b, std::size_t n) {
#pragma omp parallel for simd schedule(static)
  for (std::size_t i = 0; i < n; ++i) b[i] = a[i] * 1.0001f;
}

// Non-temporal (streaming) stores bypass the caches and skip the read-for-ownership of each line,
// which is what the fastest writing kernels use; the limit is the better of the two store kinds.
// Floats per store: the width of the library's own streaming stores (consr/detail/streaming_store.hpp).
#if defined(__SSE2__)
constexpr std::size_t nt_width = consr::detail::streaming_store_width / sizeof(float);
#endif

void stream_write_nontemporal(float* a, std::size_t n, float v) {
#if defined(__SSE2__)
  const std::size_t blocks = n / 64;  // 64 floats = 4 cache lines per step; arrays are 64-byte aligned
#pragma omp parallel for schedule(static)
  for (std::size_t blk = 0; blk < blocks; ++blk) {
    float* p = a + blk * 64;
    for (std::size_t k = 0; k < 64; k += nt_width) {
#if defined(__AVX512F__)
      _mm512_stream_ps(p + k, _mm512_set1_ps(v + static_cast<float>(k)));
#elif defined(__AVX__)
      _mm256_stream_ps(p + k, _mm256_set1_ps(v + static_cast<float>(k)));
#else
      _mm_stream_ps(p + k, _mm_set1_ps(v + static_cast<float>(k)));
#endif
    }
  }
  for (std::size_t i = blocks * 64; i < n; ++i) a[i] = v;
  _mm_sfence();
#else
  stream_write_plain(a, n, v);
#endif
}

void stream_copy_nontemporal(const float* a, float* b, std::size_t n) {
#if defined(__SSE2__)
  const std::size_t blocks = n / 64;
#pragma omp parallel for schedule(static)
  for (std::size_t blk = 0; blk < blocks; ++blk) {
    const float* p = a + blk * 64;
    float* q = b + blk * 64;
    for (std::size_t k = 0; k < 64; k += nt_width) {
#if defined(__AVX512F__)
      _mm512_stream_ps(q + k, _mm512_mul_ps(_mm512_load_ps(p + k), _mm512_set1_ps(1.0001f)));
#elif defined(__AVX__)
      _mm256_stream_ps(q + k, _mm256_mul_ps(_mm256_load_ps(p + k), _mm256_set1_ps(1.0001f)));
#else
      _mm_stream_ps(q + k, _mm_mul_ps(_mm_load_ps(p + k), _mm_set1_ps(1.0001f)));
#endif
    }
  }
  for (std::size_t i = blocks * 64; i < n; ++i) b[i] = a[i] * 1.0001f;
  _mm_sfence();
#else
  stream_copy_plain(a, b, n);
#endif
}

}  // namespace

void add_stream_probe() {
  const std::size_t n = stream_elements();
  const std::string size = std::to_string(n * sizeof(float) / (1024 * 1024)) + "MiB";
  const double bytes = static_cast<double>(n * sizeof(float));
  add("stream_read", "plain", size, [n, bytes](benchmark::State& state, int) {
    aligned_floats a(n);
    for (auto _ : state) benchmark::DoNotOptimize(stream_read(a.data, n));
    set_traffic(state, bytes, 0);
  });
  for (const bool nt : {false, true}) {
    add("stream_write", nt ? "nontemporal" : "plain", size, [n, bytes, nt](benchmark::State& state, int) {
      aligned_floats a(n);
      float v = 1.0f;
      for (auto _ : state) {
        if (nt) stream_write_nontemporal(a.data, n, v);
        else stream_write_plain(a.data, n, v);
        benchmark::ClobberMemory();
        v += 1.0f;
      }
      set_traffic(state, 0, bytes);
    });
    add("stream_copy", nt ? "nontemporal" : "plain", size, [n, bytes, nt](benchmark::State& state, int) {
      aligned_floats a(n), b(n);
      for (auto _ : state) {
        if (nt) stream_copy_nontemporal(a.data, b.data, n);
        else stream_copy_plain(a.data, b.data, n);
        benchmark::ClobberMemory();
      }
      set_traffic(state, bytes, bytes);
    });
  }
}

void add_once(const std::string& kernel, const std::string& impl, const std::string& size,
              std::function<void(benchmark::State&)> fn) {
  const std::string name = kernel + "/" + impl + "/" + size + "/threads:1";
  benchmark::RegisterBenchmark(name.c_str(),
                               [fn](benchmark::State& state) {
                                 set_threads(1);
                                 fn(state);
                               })
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond)
      ->Iterations(1)
      ->Repetitions(1);
}

int run_main(int argc, char** argv, const std::function<void()>& register_fn,
             const std::function<int(const std::string&)>& child_fn) {
  const std::string child_flag = "--consr-child=";
  if (argc >= 2 && std::strncmp(argv[1], child_flag.c_str(), child_flag.size()) == 0) {
    if (!child_fn) return 2;
    return child_fn(std::string(argv[1] + child_flag.size()));
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (std::getenv("CONSR_BENCH_NO_STREAM") == nullptr) add_stream_probe();
  register_fn();
  benchmark::AddCustomContext("consr_all_cores", std::to_string(all_cores()));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

// ---- data -------------------------------------------------------------------------------------------

namespace {

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

std::vector<float> uniform_floats(std::size_t n, std::uint64_t seed, float lo, float hi) {
  std::vector<float> v(n);
  const double scale = (static_cast<double>(hi) - lo) / 9007199254740992.0;  // 2^53
  const std::uint64_t key = splitmix64(seed);
#pragma omp parallel for schedule(static)
  for (std::size_t i = 0; i < n; ++i)
    v[i] = static_cast<float>(lo + scale * static_cast<double>(splitmix64(key ^ (i * 0xD1B54A32D192ED03ull)) >> 11));
  return v;
}

std::vector<std::int64_t> uniform_ints(std::size_t n, std::uint64_t seed, std::int64_t bound) {
  std::vector<std::int64_t> v(n);
  const std::uint64_t key = splitmix64(seed + 1);
  for (std::size_t i = 0; i < n; ++i)
    v[i] = static_cast<std::int64_t>(splitmix64(key ^ (i * 0xD1B54A32D192ED03ull)) % static_cast<std::uint64_t>(bound));
  return v;
}

std::vector<std::int64_t> random_offsets(std::size_t count, std::uint64_t seed, std::int64_t lo, std::int64_t hi) {
  const std::vector<std::int64_t> r = uniform_ints(count, seed, hi - lo + 1);
  std::vector<std::int64_t> offsets(count + 1, 0);
  for (std::size_t i = 0; i < count; ++i) offsets[i + 1] = offsets[i] + lo + r[i];
  return offsets;
}

// ---- memory measurement -----------------------------------------------------------------------------

namespace {

// A field of /proc/self/status in bytes ("VmHWM:   1234 kB"); -1 if absent.
double proc_status_bytes(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::size_t len = std::strlen(field);
  while (std::getline(in, line)) {
    if (line.compare(0, len, field) == 0 && line.size() > len && line[len] == ':') {
      return std::atof(line.c_str() + len + 1) * 1024.0;
    }
  }
  return -1.0;
}

}  // namespace

bool peak_rss_meter::reset() {
  bool ok = false;
  {
    std::ofstream clear("/proc/self/clear_refs");
    if (clear) {
      clear << "5";
      clear.flush();
      ok = static_cast<bool>(clear);
    }
  }
  // After a successful reset VmHWM equals VmRSS; otherwise the peak so far is the baseline.
  baseline_ = ok ? proc_status_bytes("VmRSS") : proc_status_bytes("VmHWM");
  return ok;
}

double peak_rss_meter::extra_bytes() const { return proc_status_bytes("VmHWM") - baseline_; }

std::string run_child(const std::vector<std::string>& args) {
  int fds[2];
  if (pipe(fds) != 0) return {};
  std::vector<std::string> storage;
  storage.push_back("/proc/self/exe");
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& s : storage) argv.push_back(s.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  pid_t pid = 0;
  std::string exe(storage[0]);
  const int rc = posix_spawn(&pid, exe.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  std::string out;
  if (rc == 0) {
    char buf[4096];
    ssize_t got;
    while ((got = read(fds[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<std::size_t>(got));
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) out.clear();
  }
  close(fds[0]);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  const std::size_t nl = out.rfind('\n');
  return nl == std::string::npos ? out : out.substr(nl + 1);
}

}  // namespace consr_bench
