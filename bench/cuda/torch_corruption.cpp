// LibTorch-CUDA baselines of bench_corruption.cu: what a PyTorch user writes
// for the same corruption (same shapes, same byte counts, same timing).
#include <torch/torch.h>

#include <consr/corruption.hpp>

#include "cuda_bench.hpp"

using namespace consr_bench_cuda;

namespace {

torch::TensorOptions cuda_f32() { return torch::TensorOptions().device(torch::kCUDA).dtype(torch::kFloat32); }

void BM_torch_noise(benchmark::State& state, torch::ScalarType dtype) {
  const auto x = torch::randn({10, 3, 384, 384}, cuda_f32()).to(dtype);
  const consr::diffusion_coefficients c = consr::diffusion_noise_coefficients({});
  torch::Tensor y;
  run_timed(state, [&] { y = torch::randn_like(x).mul_(c.sqrt_one_minus_alpha_bar).add_(x, c.sqrt_alpha_bar); },
            2.0 * static_cast<double>(x.numel()) * static_cast<double>(x.element_size()));
}

void BM_torch_noise_patch_rows(benchmark::State& state) {
  const auto x = torch::randn({7840, 1176}, cuda_f32());
  const consr::diffusion_coefficients c = consr::diffusion_noise_coefficients({});
  torch::Tensor y;
  run_timed(state, [&] { y = torch::randn_like(x).mul_(c.sqrt_one_minus_alpha_bar).add_(x, c.sqrt_alpha_bar); },
            2.0 * static_cast<double>(x.numel()) * 4.0);
}

void BM_torch_patch_mask(benchmark::State& state) {
  const int64_t B = 10, H = 384, W = 384, ps = 14, gh = (H + ps - 1) / ps, gw = (W + ps - 1) / ps;
  const auto x = torch::randn({B, 3, H, W}, cuda_f32());
  torch::Tensor y;
  run_timed(state,
            [&] {
              const auto m = torch::rand({B, 1, gh, gw}, cuda_f32()) < 0.5;
              const auto big = m.repeat_interleave(ps, 2).repeat_interleave(ps, 3).slice(2, 0, H).slice(3, 0, W);
              y = x.masked_fill(big, 0.0);
            },
            2.0 * static_cast<double>(x.numel()) * 4.0);
}

void BM_torch_mixup(benchmark::State& state) {
  const auto a = torch::randn({10 * 3 * 384 * 384}, cuda_f32());
  const auto b = torch::randn_like(a);
  torch::Tensor y = torch::empty_like(a);
  run_timed(state, [&] { torch::lerp_out(y, b, a, 0.7); }, 3.0 * static_cast<double>(a.numel()) * 4.0);
}

void BM_torch_random_resized_crop(benchmark::State& state) {
  const int64_t B = 10, H = 384, W = 384;
  const auto x = torch::randn({B, 3, H, W}, cuda_f32());
  torch::Tensor y = torch::empty_like(x);
  std::vector<consr::crop_box> boxes;
  for (int64_t b = 0; b < B; ++b) boxes.push_back(consr::draw_resized_crop_box(H, W, {5, 0}, static_cast<std::uint64_t>(b)));
  run_timed(state,
            [&] {
              for (int64_t b = 0; b < B; ++b) {
                const consr::crop_box& k = boxes[static_cast<size_t>(b)];
                const auto crop = x.slice(0, b, b + 1).slice(2, k.top, k.top + k.height).slice(3, k.left, k.left + k.width);
                y.slice(0, b, b + 1).copy_(torch::upsample_bilinear2d(crop, {H, W}, false));
              }
            },
            2.0 * static_cast<double>(x.numel()) * 4.0);
}

}  // namespace

BENCHMARK_CAPTURE(BM_torch_noise, fp32, torch::kFloat32)->Name("torch/noise/fp32/10x3x384x384")->Apply(gpu_timed);
BENCHMARK_CAPTURE(BM_torch_noise, bf16, torch::kBFloat16)->Name("torch/noise/bf16/10x3x384x384")->Apply(gpu_timed);
BENCHMARK(BM_torch_noise_patch_rows)->Name("torch/noise/fp32/patch_rows_7840x1176")->Apply(gpu_timed);
BENCHMARK(BM_torch_patch_mask)->Name("torch/patch_mask/fp32/10x3x384x384")->Apply(gpu_timed);
BENCHMARK(BM_torch_mixup)->Name("torch/mixup/fp32/10x3x384x384")->Apply(gpu_timed);
BENCHMARK(BM_torch_random_resized_crop)->Name("torch/random_resized_crop/fp32/10x3x384x384")->Apply(gpu_timed);
