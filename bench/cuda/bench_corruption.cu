// CUDA benchmarks of consr/cuda/corruption.cuh: diffusion noise on the
// paper-sized batch 10×3×384×384 fp32 (target: >= 70 % of the copy
// bandwidth), on Qwen2.5-VL patch rows [7840, 1176] (10 images × 784 patches)
// and on one temporal frame of them (a strided view), plus patch mask, mixup
// and random resized crop. Bytes are the minimal traffic: read + write of
// every element (mixup: two reads). LibTorch-CUDA baselines, when built, are
// in torch_corruption.cpp.
#include "cuda_bench.hpp"

#include <consr/cuda/corruption.cuh>

#include <cstdlib>
#include <vector>

using consr::index_t;
using namespace consr_bench_cuda;

namespace {

template <class T>
void fill_random(T* p, index_t n) {
  std::vector<T> h(static_cast<size_t>(n));
  for (index_t i = 0; i < n; ++i) h[i] = consr::from_accum<T>(static_cast<float>((i * 2654435761u) % 1000) / 500.0f - 1.0f);
  check_cuda(cudaMemcpy(p, h.data(), sizeof(T) * static_cast<size_t>(n), cudaMemcpyHostToDevice), "upload");
}

/// The paper-sized batch [10, 3, 384, 384] on the device (random values) and an output of its shape.
template <class T>
struct device_tiles {
  static constexpr index_t B = 10, C = 3, H = 384, W = 384, n = B * C * H * W;
  device_array<T> x{static_cast<size_t>(n)}, y{static_cast<size_t>(n)};
  device_tiles() { fill_random(x.ptr, n); }
  consr::device_view<const T, 4> in() const {
    return consr::make_view<consr::device_space>(static_cast<const T*>(x.ptr), B, C, H, W);
  }
  consr::device_view<T, 4> out() const { return consr::make_view<consr::device_space>(y.ptr, B, C, H, W); }
  /// Minimal traffic: every element read once and written once.
  static double bytes() { return 2.0 * static_cast<double>(n) * sizeof(T); }
};

template <class T>
void BM_noise_batch(benchmark::State& state) {
  const device_tiles<T> t;
  consr::diffusion_noise_options opt;  // step 800, the reward corruption
  const consr::diffusion_coefficients coef = consr::diffusion_noise_coefficients(opt);
  const auto in = t.in();
  const auto out = t.out();
  const consr::rng_key key{1234, 0};
  run_timed(state, [&] { require_ok(consr::cuda::add_diffusion_noise<T, 4>(in, out, key, coef, 0)); }, t.bytes());
}

void BM_noise_patch_rows(benchmark::State& state) {
  const index_t rows = 7840, cols = 1176, n = rows * cols;
  device_array<float> x(n), y(n);
  fill_random(x.ptr, n);
  const consr::diffusion_coefficients coef = consr::diffusion_noise_coefficients({});
  const auto in = consr::make_view<consr::device_space>(static_cast<const float*>(x.ptr), rows, cols);
  const auto out = consr::make_view<consr::device_space>(y.ptr, rows, cols);
  run_timed(state, [&] { require_ok(consr::cuda::add_diffusion_noise<float, 2>(in, out, {7, 0}, coef, 0)); },
            2.0 * static_cast<double>(n) * sizeof(float));
}

/// Temporal frame 0 of [7840, 3, 2, 14, 14] patch rows, noised in place (the strided path).
void BM_noise_patch_frame_strided(benchmark::State& state) {
  const index_t rows = 7840;
  device_array<float> x(rows * 1176);
  fill_random(x.ptr, rows * 1176);
  const consr::diffusion_coefficients coef = consr::diffusion_noise_coefficients({});
  const std::array<index_t, 4> ext{rows, 3, 14, 14}, str{1176, 392, 14, 1};
  const auto view = consr::make_strided_view<consr::device_space>(x.ptr, ext, str);
  run_timed(state,
            [&] { require_ok(consr::cuda::add_diffusion_noise<float, 4>(consr::device_view<const float, 4>(view), view,
                                                                        {7, 0}, coef, 0)); },
            2.0 * static_cast<double>(rows * 588) * sizeof(float));
}

void BM_patch_mask(benchmark::State& state) {
  const device_tiles<float> t;
  const auto in = t.in();
  const auto out = t.out();
  consr::patch_mask_options opt;
  size_t bytes = 0;
  require_ok(consr::cuda::random_patch_mask<float, 4>(nullptr, bytes, in, out, {3, 0}, opt));
  device_array<unsigned char> temp(bytes);
  run_timed(state, [&] { require_ok(consr::cuda::random_patch_mask<float, 4>(temp.ptr, bytes, in, out, {3, 0}, opt)); },
            t.bytes());
}

void BM_mixup(benchmark::State& state) {
  const index_t n = 10 * 3 * 384 * 384;
  device_array<float> a(n), b(n), y(n);
  fill_random(a.ptr, n);
  fill_random(b.ptr, n);
  const auto va = consr::make_view<consr::device_space>(static_cast<const float*>(a.ptr), n);
  const auto vb = consr::make_view<consr::device_space>(static_cast<const float*>(b.ptr), n);
  const auto vy = consr::make_view<consr::device_space>(y.ptr, n);
  run_timed(state, [&] { require_ok(consr::cuda::mixup<float, 1>(va, vb, vy, 0.7)); },
            3.0 * static_cast<double>(n) * sizeof(float));
}

void BM_random_resized_crop(benchmark::State& state) {
  const device_tiles<float> t;
  const auto in = t.in();
  const auto out = t.out();
  // Bytes: the output written plus as much read (crops read at most that much once).
  run_timed(state, [&] { require_ok(consr::cuda::random_resized_crop<float, 4>(in, out, {5, 0})); }, t.bytes());
}

}  // namespace

BENCHMARK(BM_noise_batch<float>)->Name("consr/noise/fp32/10x3x384x384")->Apply(gpu_timed);
BENCHMARK(BM_noise_batch<consr::bfloat16>)->Name("consr/noise/bf16/10x3x384x384")->Apply(gpu_timed);
BENCHMARK(BM_noise_patch_rows)->Name("consr/noise/fp32/patch_rows_7840x1176")->Apply(gpu_timed);
BENCHMARK(BM_noise_patch_frame_strided)->Name("consr/noise/fp32/patch_frame_strided_7840x3x14x14")->Apply(gpu_timed);
BENCHMARK(BM_patch_mask)->Name("consr/patch_mask/fp32/10x3x384x384")->Apply(gpu_timed);
BENCHMARK(BM_mixup)->Name("consr/mixup/fp32/10x3x384x384")->Apply(gpu_timed);
BENCHMARK(BM_random_resized_crop)->Name("consr/random_resized_crop/fp32/10x3x384x384")->Apply(gpu_timed);
