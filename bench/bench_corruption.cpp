// bench/bench_corruption.cpp — the image corruptions of the contrastive reward (spec §3, Table 7)
// on the pixel tensors the models really see:
//   * LLaVA-OneVision: 10 tiles of 3 × 384 × 384 (anyres: base image + 9 crops), [10, 3, 384, 384];
//   * Qwen2.5-VL: patch rows of 1176 = 3 · 2 · 14 · 14 values, 1024 rows per 448 × 448 image,
//     10 images: [10240, 1176].
// Baselines are what the Python stacks run, written with LibTorch ops:
//   diffusion noise (VCD / SeVa):  sqrt(ᾱ_t)·x + sqrt(1 − ᾱ_t)·randn_like(x)
//   patch mask:   rand(B, 1, gh, gw) < p, upsampled by repeat_interleave, masked_fill
//   mixup:        λ·x + (1 − λ)·y
//   resized crop: per image, the crop slice interpolated back to H × W (bilinear, align_corners
//                 false, as torchvision's resized_crop when enlarging), the same boxes as consr.
// Traffic: noise / mask / crop read the image once and write the output once; mixup reads two.
// Compute ceiling of the noise (tools/run-benchmarks.py's roofline table): noise_incache runs
// add_diffusion_noise on 64K elements per thread that stay in L2, and its stages alone on the same
// count, noise_philox_incache (the Philox words) and noise_normals_incache (words + Box–Muller +
// interleave: the normals without the image); all count the traffic of the memory-bound rows (4 B
// read + 4 B written per element), so their bytes per second compare with the copy probe.
#include "common/bench_common.hpp"

#include <consr/corruption.hpp>

#include <cstdint>
#include <string>
#include <vector>

#if defined(CONSR_BENCH_HAS_TORCH)
#include <torch/torch.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

using consr::index_t;

constexpr index_t tiles = 10, channels = 3, side = 384;
constexpr index_t image_elements = tiles * channels * side * side;
constexpr index_t patch_rows = 10 * 1024, patch_width = 1176;
const std::string tiles_label = "10x3x384x384";
const std::string patches_label = "10240x1176";

std::vector<float> pixels(std::size_t n, std::uint64_t seed) { return consr_bench::uniform_floats(n, seed, -1.8f, 2.2f); }

/// Times op(image, out, key) on the 10 LLaVA tiles, a new key per iteration; the traffic is one
/// read and one write of the batch (the crop reads at most the whole image, usually less).
template <class Op>
void time_on_tiles(benchmark::State& state, std::uint64_t pixel_seed, Op&& op) {
  const std::vector<float> x = pixels(image_elements, pixel_seed);
  std::vector<float> y(x.size());
  std::uint64_t seed = 0;
  for (auto _ : state) {
    op(consr::make_view(x.data(), tiles, channels, side, side), consr::make_view(y.data(), tiles, channels, side, side),
       consr::rng_key{++seed, 0});
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  consr_bench::set_traffic(state, 4.0 * image_elements, 4.0 * image_elements);
}

void consr_noise_tiles(benchmark::State& state) {
  const consr::diffusion_noise_options o;  // t = 800 of the sigmoid schedule: the reward corruption
  time_on_tiles(state, 1, [&](auto x, auto y, consr::rng_key key) { consr::add_diffusion_noise<float, 4>(x, y, key, o); });
}

void consr_noise_patches(benchmark::State& state) {
  const std::vector<float> x = pixels(static_cast<std::size_t>(patch_rows * patch_width), 2);
  std::vector<float> y(x.size());
  std::uint64_t seed = 0;
  for (auto _ : state) {
    consr::add_diffusion_noise<float, 2>(consr::make_view(x.data(), patch_rows, patch_width),
                                         consr::make_view(y.data(), patch_rows, patch_width),
                                         consr::rng_key{++seed, 0});
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  consr_bench::set_traffic(state, 4.0 * patch_rows * patch_width, 4.0 * patch_rows * patch_width);
}

void consr_patch_mask(benchmark::State& state) {
  time_on_tiles(state, 3, [](auto x, auto y, consr::rng_key key) { consr::random_patch_mask<float, 4>(x, y, key); });
}

void consr_mixup(benchmark::State& state) {
  const std::vector<float> x = pixels(image_elements, 4), other = pixels(image_elements, 5);
  std::vector<float> y(x.size());
  for (auto _ : state) {
    consr::mixup<float, 4>(consr::make_view(x.data(), tiles, channels, side, side),
                           consr::make_view(other.data(), tiles, channels, side, side),
                           consr::make_view(y.data(), tiles, channels, side, side), 0.7);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  consr_bench::set_traffic(state, 8.0 * image_elements, 4.0 * image_elements);
}

void consr_resized_crop(benchmark::State& state) {
  time_on_tiles(state, 6, [](auto x, auto y, consr::rng_key key) { consr::random_resized_crop<float, 4>(x, y, key); });
}

// ---- compute ceiling of the noise: inputs in L2, and its stages alone ---------------------------

int thread_id() {
#if defined(_OPENMP)
  return omp_get_thread_num();
#else
  return 0;
#endif
}

constexpr index_t in_cache_per_thread = 32 * consr::detail::noise_tile;  // 64K elements: 256 KiB in, 256 KiB out

void consr_noise_in_cache(benchmark::State& state, int threads) {
  const index_t n = in_cache_per_thread * threads;
  const std::vector<float> x = pixels(static_cast<std::size_t>(n), 6);
  std::vector<float> y(x.size());
  std::uint64_t seed = 0;
  for (auto _ : state) {
    consr::add_diffusion_noise<float, 1>(consr::make_view(x.data(), n), consr::make_view(y.data(), n),
                                         consr::rng_key{++seed, 0});
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  consr_bench::set_traffic(state, 4.0 * n, 4.0 * n);
}

/// One stage of the noise over in_cache_per_thread elements per thread (each thread its own tiles,
/// as add_diffusion_noise splits them): `normals` false runs philox_words alone, true runs
/// fill_normal_blocks (words, Box–Muller, interleave).
void consr_noise_stage(benchmark::State& state, int threads, bool normals) {
  constexpr index_t blocks = consr::detail::noise_tile / 4;
  constexpr index_t tiles_per_thread = in_cache_per_thread / consr::detail::noise_tile;
  std::uint64_t seed = 0;
  for (auto _ : state) {
    const consr::rng_key key{++seed, 0};
    CONSR_OMP(parallel num_threads(threads))
    {
      alignas(64) std::uint32_t w[4][blocks];
      alignas(64) float z[consr::detail::noise_tile + 8];
      const std::uint64_t first = static_cast<std::uint64_t>(thread_id()) * tiles_per_thread * blocks;
      for (index_t t = 0; t < tiles_per_thread; ++t) {
        const std::uint64_t block = first + static_cast<std::uint64_t>(t * blocks);
        if (normals) {
          consr::detail::fill_normal_blocks(key, block, blocks, z);
          benchmark::DoNotOptimize(z[0]);
        } else {
          consr::detail::philox_words(key, block, blocks, w[0], w[1], w[2], w[3]);
          benchmark::DoNotOptimize(w[3][0]);
        }
      }
      benchmark::ClobberMemory();
    }
  }
  const double n = static_cast<double>(in_cache_per_thread) * threads;
  consr_bench::set_traffic(state, 4.0 * n, 4.0 * n);
}

#if defined(CONSR_BENCH_HAS_TORCH)
torch::Tensor torch_pixels(std::vector<index_t> shape, std::uint64_t seed) {
  index_t n = 1;
  for (index_t e : shape) n *= e;
  std::vector<float> v = pixels(static_cast<std::size_t>(n), seed);
  return torch::from_blob(v.data(), shape, torch::kFloat32).clone();
}

void torch_noise(benchmark::State& state, bool patches) {
  const torch::Tensor x = patches ? torch_pixels({patch_rows, patch_width}, 2)
                                  : torch_pixels({tiles, channels, side, side}, 1);
  const auto coef = consr::diffusion_noise_coefficients();
  const double a = coef.sqrt_alpha_bar, b = coef.sqrt_one_minus_alpha_bar;
  torch::NoGradGuard no_grad;
  for (auto _ : state) {
    torch::Tensor y = x * a + torch::randn_like(x) * b;
    benchmark::DoNotOptimize(y.data_ptr());
  }
  const double bytes = 4.0 * static_cast<double>(x.numel());
  consr_bench::set_traffic(state, bytes, bytes);
}

void torch_patch_mask(benchmark::State& state) {
  const torch::Tensor x = torch_pixels({tiles, channels, side, side}, 3);
  constexpr index_t ps = 14, grid = (side + ps - 1) / ps;
  torch::NoGradGuard no_grad;
  for (auto _ : state) {
    torch::Tensor mask = torch::rand({tiles, 1, grid, grid}) < 0.5;
    mask = mask.repeat_interleave(ps, 2).repeat_interleave(ps, 3).narrow(2, 0, side).narrow(3, 0, side);
    torch::Tensor y = x.masked_fill(mask, 0.0);
    benchmark::DoNotOptimize(y.data_ptr());
  }
  consr_bench::set_traffic(state, 4.0 * image_elements, 4.0 * image_elements);
}

void torch_mixup(benchmark::State& state) {
  const torch::Tensor x = torch_pixels({tiles, channels, side, side}, 4);
  const torch::Tensor other = torch_pixels({tiles, channels, side, side}, 5);
  torch::NoGradGuard no_grad;
  for (auto _ : state) {
    torch::Tensor y = 0.7 * x + (1.0 - 0.7) * other;
    benchmark::DoNotOptimize(y.data_ptr());
  }
  consr_bench::set_traffic(state, 8.0 * image_elements, 4.0 * image_elements);
}

void torch_resized_crop(benchmark::State& state) {
  const torch::Tensor x = torch_pixels({tiles, channels, side, side}, 6);
  namespace F = torch::nn::functional;
  torch::NoGradGuard no_grad;
  std::uint64_t seed = 0;
  for (auto _ : state) {
    const consr::rng_key key{++seed, 0};
    std::vector<torch::Tensor> outs;
    for (index_t b = 0; b < tiles; ++b) {
      const consr::crop_box box = consr::draw_resized_crop_box(side, side, key, static_cast<std::uint64_t>(b));
      const torch::Tensor crop = x.narrow(0, b, 1).narrow(2, box.top, box.height).narrow(3, box.left, box.width);
      outs.push_back(F::interpolate(crop, F::InterpolateFuncOptions()
                                              .size(std::vector<int64_t>{side, side})
                                              .mode(torch::kBilinear)
                                              .align_corners(false)));
    }
    torch::Tensor y = torch::cat(outs, 0);
    benchmark::DoNotOptimize(y.data_ptr());
  }
  consr_bench::set_traffic(state, 4.0 * image_elements, 4.0 * image_elements);
}
#endif

void register_all() {
  consr_bench::add("noise", "consr", tiles_label, [](benchmark::State& s, int) { consr_noise_tiles(s); });
  consr_bench::add("noise", "consr", patches_label, [](benchmark::State& s, int) { consr_noise_patches(s); });
  const std::string in_l2 = std::to_string(in_cache_per_thread) + " per thread,in L2";
  consr_bench::add("noise_incache", "consr", in_l2, [](benchmark::State& s, int t) { consr_noise_in_cache(s, t); });
  consr_bench::add("noise_philox_incache", "consr", in_l2,
                   [](benchmark::State& s, int t) { consr_noise_stage(s, t, false); });
  consr_bench::add("noise_normals_incache", "consr", in_l2,
                   [](benchmark::State& s, int t) { consr_noise_stage(s, t, true); });
  consr_bench::add("patch_mask", "consr", tiles_label, [](benchmark::State& s, int) { consr_patch_mask(s); });
  consr_bench::add("mixup", "consr", tiles_label, [](benchmark::State& s, int) { consr_mixup(s); });
  consr_bench::add("resized_crop", "consr", tiles_label, [](benchmark::State& s, int) { consr_resized_crop(s); });
#if defined(CONSR_BENCH_HAS_TORCH)
  consr_bench::add("noise", "torch", tiles_label, [](benchmark::State& s, int) { torch_noise(s, false); });
  consr_bench::add("noise", "torch", patches_label, [](benchmark::State& s, int) { torch_noise(s, true); });
  consr_bench::add("patch_mask", "torch", tiles_label, [](benchmark::State& s, int) { torch_patch_mask(s); });
  consr_bench::add("mixup", "torch", tiles_label, [](benchmark::State& s, int) { torch_mixup(s); });
  consr_bench::add("resized_crop", "torch", tiles_label, [](benchmark::State& s, int) { torch_resized_crop(s); });
#endif
}

}  // namespace

int main(int argc, char** argv) { return consr_bench::run_main(argc, argv, register_all); }
