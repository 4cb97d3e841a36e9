// consr/cuda/corruption.cuh against its host twin consr/corruption.hpp on the
// same inputs and keys.
//
// Tolerances (spec §3): device and host normals are the same function of
// (seed, offset, i) evaluated by two compilers that may contract the double
// Box–Muller arithmetic into FMAs differently, so they agree within 1e-6
// absolute (asserted directly on the normals). A noised element a·x + b·ε then
// differs by at most b·1e-6 plus one rounding of the output type. Patch masks
// are the same bits (a copy or the fill value). Mixup and the bilinear crop use
// explicitly rounded device arithmetic that matches a host compiled without FMA
// contraction; they are checked within one rounding of the output type so the
// test also holds where the host compiler contracts.
#include "cuda_test_util.cuh"

#include <consr/corruption.hpp>
#include <consr/cuda/corruption.cuh>
#include <consr/random.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

using consr::index_t;
using consr_test::device_buffer;
using consr_test::epsilon_of;
using consr_test::run_two_phase;

namespace {

__global__ void normals_kernel(consr::rng_key key, std::uint64_t first, index_t n, float* out) {
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    out[i] = consr::normal_at(key, first + static_cast<std::uint64_t>(i));
}

template <class T>
std::vector<T> random_image(std::mt19937_64& rng, index_t n) {
  std::normal_distribution<double> d(0.2, 1.5);
  std::vector<T> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = consr::from_accum<T>(d(rng));
  return v;
}

/// |dev − host| <= abs_tol + ulps · eps_T · |host| element by element.
template <class T>
void check_close(const std::vector<T>& dev, const std::vector<T>& host, double abs_tol, double ulps,
                 const char* what) {
  REQUIRE(dev.size() == host.size());
  std::size_t bad = 0;
  double worst = 0.0;
  for (std::size_t i = 0; i < dev.size(); ++i) {
    const double d = consr::to_accum<double>(dev[i]), h = consr::to_accum<double>(host[i]);
    const double err = std::fabs(d - h);
    worst = std::max(worst, err);
    if (!(err <= abs_tol + ulps * epsilon_of<T>() * std::fabs(h))) {
      if (bad < 5) UNSCOPED_INFO(what << ": element " << i << " device " << d << " host " << h);
      ++bad;
    }
  }
  INFO(what << ": " << bad << " of " << dev.size() << " elements outside tolerance; largest difference " << worst);
  CHECK(bad == 0);
}

template <class T>
void check_same_bits(const std::vector<T>& dev, const std::vector<T>& host, const char* what) {
  REQUIRE(dev.size() == host.size());
  std::size_t bad = 0;
  for (std::size_t i = 0; i < dev.size(); ++i) bad += consr_test::same_bits(dev[i], host[i]) ? 0 : 1;
  INFO(what << ": " << bad << " of " << dev.size() << " elements differ");
  CHECK(bad == 0);
}

/// Noise on a contiguous [B, C, H, W] tensor with the given element offset and
/// pointer misalignment (the view starts `shift` elements into its buffer).
template <class T>
void check_noise_contiguous(std::mt19937_64& rng, std::array<index_t, 4> shape, std::uint64_t element_offset,
                            index_t shift, bool in_place, int step) {
  const index_t n = shape[0] * shape[1] * shape[2] * shape[3];
  const std::vector<T> image = random_image<T>(rng, n);
  const consr::rng_key key{0x5eed1234abcdull + static_cast<std::uint64_t>(n), 17};
  consr::diffusion_noise_options opt;
  opt.step = step;
  opt.element_offset = element_offset;

  std::vector<T> host(image.size());
  consr::add_diffusion_noise<T, 4>(consr::make_view(image.data(), shape[0], shape[1], shape[2], shape[3]),
                                   consr::make_view(host.data(), shape[0], shape[1], shape[2], shape[3]), key, opt);

  std::vector<T> padded(static_cast<std::size_t>(n + shift));
  std::copy(image.begin(), image.end(), padded.begin() + shift);
  device_buffer<T> d_in(padded), d_out(padded.size());
  const auto in = consr::make_view<consr::device_space>(static_cast<const T*>(d_in.data() + shift), shape[0], shape[1],
                                                        shape[2], shape[3]);
  const auto out = consr::make_view<consr::device_space>((in_place ? d_in.data() : d_out.data()) + shift, shape[0],
                                                         shape[1], shape[2], shape[3]);
  CONSR_TEST_OK(consr::cuda::add_diffusion_noise<T, 4>(in, out, key, opt));
  CONSR_TEST_CUDA(cudaDeviceSynchronize());
  std::vector<T> got = (in_place ? d_in : d_out).download();
  got.erase(got.begin(), got.begin() + shift);
  INFO("shape " << shape[0] << "x" << shape[1] << "x" << shape[2] << "x" << shape[3] << ", element_offset "
                << element_offset << ", shift " << shift << ", in place " << in_place);
  check_close(got, host, 1e-6, 2.0, "noise");
}

}  // namespace

TEST_CASE("cuda normals equal the host's within 1e-6 for the same (seed, offset, i)", "[cuda][corruption]") {
  const index_t n = 1 << 20;
  for (const consr::rng_key key : {consr::rng_key{0, 0}, consr::rng_key{42, 7}, consr::rng_key{~0ull, 1ull << 40}}) {
    for (const std::uint64_t first : {std::uint64_t{0}, std::uint64_t{3}, std::uint64_t{1} << 50}) {
      device_buffer<float> d(static_cast<std::size_t>(n));
      normals_kernel<<<256, 256>>>(key, first, n, d.data());
      CONSR_TEST_CUDA(cudaGetLastError());
      const std::vector<float> dev = d.download();
      double worst = 0.0;
      std::size_t equal = 0;
      for (index_t i = 0; i < n; ++i) {
        const float h = consr::normal_at(key, first + static_cast<std::uint64_t>(i));
        worst = std::max(worst, std::fabs(static_cast<double>(dev[i]) - h));
        equal += dev[i] == h ? 1 : 0;
      }
      INFO("seed " << key.seed << " offset " << key.offset << " first " << first << ": " << equal << " of " << n
                   << " bitwise equal, largest difference " << worst);
      CHECK(worst <= 1e-6);
    }
  }
}

TEST_CASE("cuda diffusion noise matches the host twin", "[cuda][corruption]") {
  std::mt19937_64 rng(3);
  SECTION("fp32, aligned, every element offset phase") {
    for (std::uint64_t off : {0ull, 1ull, 2ull, 3ull, 1001ull})
      check_noise_contiguous<float>(rng, {2, 3, 17, 19}, off, 0, false, 800);
  }
  SECTION("fp32, misaligned pointer (scalar path) and in place") {
    check_noise_contiguous<float>(rng, {1, 3, 10, 10}, 0, 1, false, 500);
    check_noise_contiguous<float>(rng, {1, 3, 10, 10}, 2, 2, true, 999);
  }
  SECTION("tiny sizes") {
    for (index_t w : {1, 2, 3, 5}) check_noise_contiguous<float>(rng, {1, 1, 1, w}, 3, 0, false, 0);
  }
  SECTION("the benchmark shape 10x3x384x384") { check_noise_contiguous<float>(rng, {10, 3, 384, 384}, 0, 0, false, 800); }
  SECTION("bfloat16 and double") {
    check_noise_contiguous<consr::bfloat16>(rng, {2, 3, 9, 31}, 1, 0, false, 800);
    check_noise_contiguous<consr::bfloat16>(rng, {2, 3, 9, 32}, 0, 0, false, 800);
    check_noise_contiguous<double>(rng, {2, 3, 9, 31}, 6, 0, false, 800);
  }
}

TEST_CASE("cuda diffusion noise on strided views uses logical indices", "[cuda][corruption]") {
  std::mt19937_64 rng(11);
  const consr::rng_key key{99, 5};
  consr::diffusion_noise_options opt;
  opt.element_offset = 2;

  SECTION("a transposed (column-major) matrix") {
    const index_t rows = 37, cols = 23;
    const std::vector<float> storage = random_image<float>(rng, rows * cols);
    const std::array<index_t, 2> ext{rows, cols}, str{1, rows};
    std::vector<float> host(storage.size()), dev_out(storage.size());
    consr::add_diffusion_noise<float, 2>(consr::make_strided_view(storage.data(), ext, str),
                                         consr::make_strided_view(host.data(), ext, str), key, opt);
    device_buffer<float> d_in(storage), d_out(storage.size());
    CONSR_TEST_OK(consr::cuda::add_diffusion_noise<float, 2>(
        consr::make_strided_view<consr::device_space>(static_cast<const float*>(d_in.data()), ext, str),
        consr::make_strided_view<consr::device_space>(d_out.data(), ext, str), key, opt));
    check_close(d_out.download(), host, 1e-6, 2.0, "transposed noise");
  }
  SECTION("one temporal frame of Qwen2.5-VL patch rows [L, 3, 2, 14, 14]") {
    const index_t rows = 50;
    const std::vector<float> storage = random_image<float>(rng, rows * 1176);
    const std::array<index_t, 4> ext{rows, 3, 14, 14}, str{1176, 392, 14, 1};  // temporal index 0
    std::vector<float> host = storage;
    consr::add_diffusion_noise<float, 4>(consr::make_strided_view(host.data(), ext, str), key, opt);
    device_buffer<float> d(storage);
    CONSR_TEST_OK(consr::cuda::add_diffusion_noise<float, 4>(
        consr::make_strided_view<consr::device_space>(d.data(), ext, str), key, opt));
    check_close(d.download(), host, 1e-6, 2.0, "frame noise");  // the other frame stays untouched on both
  }
}

TEST_CASE("cuda diffusion noise rejects bad arguments without launching", "[cuda][corruption]") {
  // 65 elements: the partial-overlap view below is 4 x 16 starting one element in.
  device_buffer<float> d_in(std::vector<float>(65, 1.0f)), d_out(64);
  d_out.fill_bytes(0x3C);
  const std::vector<float> sentinel = d_out.download();
  const auto in = consr::make_view<consr::device_space>(static_cast<const float*>(d_in.data()), 4, 16);
  const consr::rng_key key{1, 0};
  consr::diffusion_noise_options opt;
  opt.step = 1000;
  CHECK(consr::cuda::add_diffusion_noise<float, 2>(in, consr::make_view<consr::device_space>(d_out.data(), 4, 16), key,
                                                   opt) == consr::status::invalid_argument);
  CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'step'"));
  opt.step = 10;
  CHECK(consr::cuda::add_diffusion_noise<float, 2>(in, consr::make_view<consr::device_space>(d_out.data(), 4, 15), key,
                                                   opt) == consr::status::invalid_argument);
  CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'out'"));
  // Partial overlap: out has the image's shape and starts one element into it.
  CHECK(consr::cuda::add_diffusion_noise<float, 2>(
            in, consr::make_view<consr::device_space>(d_in.data() + 1, 4, 16), key, opt) ==
        consr::status::invalid_argument);
  CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("partially overlaps"));
  CONSR_TEST_CUDA(cudaDeviceSynchronize());
  check_same_bits(d_out.download(), sentinel, "untouched output");
  CHECK(d_in.download() == std::vector<float>(65, 1.0f));
}

TEST_CASE("cuda random patch mask equals the host twin bit for bit", "[cuda][corruption]") {
  std::mt19937_64 rng(5);
  const consr::rng_key key{2024, 3};
  consr::patch_mask_options opt{14, 0.4, -0.5, 3};  // patch size, probability, fill value, image offset

  SECTION("a batch [4, 3, 45, 61] (border patches cut)") {
    const std::array<index_t, 4> s{4, 3, 45, 61};
    const std::vector<float> image = random_image<float>(rng, s[0] * s[1] * s[2] * s[3]);
    std::vector<float> host(image.size());
    consr::random_patch_mask<float, 4>(consr::make_view(image.data(), s[0], s[1], s[2], s[3]),
                                       consr::make_view(host.data(), s[0], s[1], s[2], s[3]), key, opt);
    device_buffer<float> d_in(image), d_out(image.size());
    CONSR_TEST_OK(run_two_phase([&](void* t, std::size_t& b) {
      return consr::cuda::random_patch_mask<float, 4>(
          t, b, consr::make_view<consr::device_space>(static_cast<const float*>(d_in.data()), s[0], s[1], s[2], s[3]),
          consr::make_view<consr::device_space>(d_out.data(), s[0], s[1], s[2], s[3]), key, opt);
    }));
    check_same_bits(d_out.download(), host, "patch mask");
  }
  SECTION("one bf16 image [3, 30, 28] in place") {
    const std::vector<consr::bfloat16> image = random_image<consr::bfloat16>(rng, 3 * 30 * 28);
    std::vector<consr::bfloat16> host = image;
    consr::random_patch_mask<consr::bfloat16, 3>(consr::make_view(host.data(), 3, 30, 28), key, opt);
    device_buffer<consr::bfloat16> d(image);
    CONSR_TEST_OK(run_two_phase([&](void* t, std::size_t& b) {
      return consr::cuda::random_patch_mask<consr::bfloat16, 3>(
          t, b, consr::make_view<consr::device_space>(d.data(), 3, 30, 28), key, opt);
    }));
    check_same_bits(d.download(), host, "patch mask in place");
  }
  SECTION("too little temporary storage is an argument error") {
    device_buffer<float> d(3 * 28 * 28);
    const auto v = consr::make_view<consr::device_space>(d.data(), 3, 28, 28);
    std::size_t bytes = 0;
    CONSR_TEST_OK(consr::cuda::random_patch_mask<float, 3>(nullptr, bytes, v, key, opt));
    CHECK(bytes >= 4);  // 2 x 2 patches
    device_buffer<unsigned char> temp(bytes);
    std::size_t too_few = 1;
    CHECK(consr::cuda::random_patch_mask<float, 3>(temp.data(), too_few, v, key, opt) ==
          consr::status::invalid_argument);
    CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'temp_storage_bytes'"));
    opt.probability = 1.5;
    CHECK(consr::cuda::random_patch_mask<float, 3>(nullptr, bytes, v, key, opt) == consr::status::invalid_argument);
    CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'probability'"));
  }
}

TEST_CASE("cuda mixup matches the host twin", "[cuda][corruption]") {
  std::mt19937_64 rng(8);
  const double lambda = 0.37;
  SECTION("contiguous fp32 and bf16") {
    const index_t n = 4 * 1000 + 3;
    const std::vector<float> a = random_image<float>(rng, n), b = random_image<float>(rng, n);
    std::vector<float> host(a.size());
    consr::mixup<float, 1>(consr::make_view(a.data(), n), consr::make_view(b.data(), n), consr::make_view(host.data(), n),
                           lambda);
    device_buffer<float> da(a), db(b), dout(a.size());
    CONSR_TEST_OK(consr::cuda::mixup<float, 1>(da.cview(), db.cview(), dout.view(), lambda));
    check_close(dout.download(), host, 0.0, 1.0, "mixup fp32");

    const std::vector<consr::bfloat16> ha = random_image<consr::bfloat16>(rng, n),
                                       hb = random_image<consr::bfloat16>(rng, n);
    std::vector<consr::bfloat16> hhost(ha.size());
    consr::mixup<consr::bfloat16, 1>(consr::make_view(ha.data(), n), consr::make_view(hb.data(), n),
                                     consr::make_view(hhost.data(), n), lambda);
    device_buffer<consr::bfloat16> dha(ha), dhb(hb);
    // in place into `other`
    CONSR_TEST_OK(consr::cuda::mixup<consr::bfloat16, 1>(dha.cview(), dhb.cview(), dhb.view(), lambda));
    check_close(dhb.download(), hhost, 0.0, 1.0, "mixup bf16");
  }
  SECTION("strided: a column-major image against a row-major one") {
    const index_t h = 13, w = 7;
    const std::vector<double> a = random_image<double>(rng, h * w), b = random_image<double>(rng, h * w);
    const std::array<index_t, 2> ext{h, w}, col_major{1, h}, row_major{w, 1};
    std::vector<double> host(a.size());
    consr::mixup<double, 2>(consr::make_strided_view(a.data(), ext, col_major),
                            consr::make_strided_view(b.data(), ext, row_major),
                            consr::make_strided_view(host.data(), ext, row_major), lambda);
    device_buffer<double> da(a), db(b), dout(a.size());
    CONSR_TEST_OK(consr::cuda::mixup<double, 2>(
        consr::make_strided_view<consr::device_space>(static_cast<const double*>(da.data()), ext, col_major),
        consr::make_strided_view<consr::device_space>(static_cast<const double*>(db.data()), ext, row_major),
        consr::make_strided_view<consr::device_space>(dout.data(), ext, row_major), lambda));
    check_close(dout.download(), host, 0.0, 1.0, "mixup strided");
  }
  SECTION("lambda outside [0, 1]") {
    device_buffer<float> d(8);
    CHECK(consr::cuda::mixup<float, 1>(d.cview(), d.cview(), d.view(), 1.25) == consr::status::invalid_argument);
    CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'lambda'"));
  }
}

TEST_CASE("cuda resized crop matches the host twin", "[cuda][corruption]") {
  std::mt19937_64 rng(21);
  SECTION("crop_and_resize_bilinear with one box, to a larger and a smaller size") {
    const std::vector<float> image = random_image<float>(rng, 2 * 3 * 40 * 50);
    const consr::crop_box box{5, 7, 20, 31};
    for (const std::array<index_t, 2> hw : {std::array<index_t, 2>{40, 50}, std::array<index_t, 2>{11, 9}}) {
      std::vector<float> host(static_cast<std::size_t>(2 * 3 * hw[0] * hw[1]));
      consr::crop_and_resize_bilinear<float, 4>(consr::make_view(image.data(), 2, 3, 40, 50), box,
                                                consr::make_view(host.data(), 2, 3, hw[0], hw[1]));
      device_buffer<float> d_in(image), d_out(host.size());
      CONSR_TEST_OK(consr::cuda::crop_and_resize_bilinear<float, 4>(
          consr::make_view<consr::device_space>(static_cast<const float*>(d_in.data()), 2, 3, 40, 50), box,
          consr::make_view<consr::device_space>(d_out.data(), 2, 3, hw[0], hw[1])));
      check_close(d_out.download(), host, 1e-12, 1.0, "crop_and_resize_bilinear");
    }
  }
  SECTION("random_resized_crop over a batch larger than one launch's boxes") {
    const index_t batch = 37;  // two launches of boxes
    const std::vector<float> image = random_image<float>(rng, batch * 3 * 24 * 29);
    const consr::rng_key key{77, 1};
    consr::resized_crop_options opt;
    opt.image_offset = 12;
    std::vector<float> host(image.size());
    consr::random_resized_crop<float, 4>(consr::make_view(image.data(), batch, 3, 24, 29),
                                         consr::make_view(host.data(), batch, 3, 24, 29), key, opt);
    device_buffer<float> d_in(image), d_out(image.size());
    CONSR_TEST_OK(consr::cuda::random_resized_crop<float, 4>(
        consr::make_view<consr::device_space>(static_cast<const float*>(d_in.data()), batch, 3, 24, 29),
        consr::make_view<consr::device_space>(d_out.data(), batch, 3, 24, 29), key, opt));
    check_close(d_out.download(), host, 1e-12, 1.0, "random_resized_crop");
  }
  SECTION("a box outside the image and an overlapping out are rejected") {
    device_buffer<float> d(3 * 10 * 10 * 2);
    const auto in = consr::make_view<consr::device_space>(static_cast<const float*>(d.data()), 3, 10, 10);
    const auto out = consr::make_view<consr::device_space>(d.data() + 300, 3, 10, 10);
    CHECK(consr::cuda::crop_and_resize_bilinear<float, 3>(in, consr::crop_box{5, 5, 6, 2}, out) ==
          consr::status::invalid_argument);
    CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'box'"));
    CHECK(consr::cuda::crop_and_resize_bilinear<float, 3>(in, consr::crop_box{0, 0, 2, 2},
                                                          consr::make_view<consr::device_space>(d.data() + 1, 3, 10, 10)) ==
          consr::status::invalid_argument);
    CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("overlaps"));
    consr::resized_crop_options bad;
    bad.scale_min = 0.0;
    CHECK(consr::cuda::random_resized_crop<float, 3>(in, out, consr::rng_key{1, 0}, bad) ==
          consr::status::invalid_argument);
    CHECK_THAT(consr::cuda::last_error_message(), Catch::Contains("'scale_min'"));
  }
}
