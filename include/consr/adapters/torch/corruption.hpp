// consr/adapters/torch/corruption.hpp — the image corruptions of the contrastive reward (spec §3,
// Table 7: diffusion noise, random patch mask, mixup, random resized crop) on at::Tensor, with
// autograd; the same (seed, offset) gives the same result on CPU and CUDA. Part of
// consr/adapters/torch.hpp.
#pragma once

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "../../corruption.hpp"
#include "../../random.hpp"
#include "common.hpp"
#include "registry.hpp"

namespace consr {
namespace libtorch {

/// "sigmoid" / "linear" / "scaled_linear" / "cosine" as a noise_schedule (consr::parse_noise_schedule).
/// Throws c10::Error naming 'schedule' otherwise.
inline noise_schedule parse_noise_schedule(const std::string& name) {
  return detail::parse_option("consr::libtorch::parse_noise_schedule",
                              [&] { return consr::parse_noise_schedule(name); });
}

namespace detail {

inline void save_key(torch::autograd::AutogradContext* ctx, rng_key key) {
  // IValue holds int64: the uint64 bits are stored as they are.
  ctx->saved_data["seed"] = static_cast<int64_t>(key.seed);
  ctx->saved_data["offset"] = static_cast<int64_t>(key.offset);
}
inline rng_key load_key(torch::autograd::AutogradContext* ctx) {
  return rng_key{static_cast<std::uint64_t>(ctx->saved_data["seed"].toInt()),
                 static_cast<std::uint64_t>(ctx->saved_data["offset"].toInt())};
}

/// Checks an image tensor of rank 3 ([C, H, W]) or 4 ([B, C, H, W]) and returns it as rank 4.
inline at::Tensor image_batch(const at::Tensor& image, const char* fn, const char* arg) {
  check_defined(image, fn, arg);
  check_floating(image, fn, arg);
  CONSR_TORCH_CHECK(image.dim() == 3 || image.dim() == 4, fn, arg, "has shape ", shape_string(image.sizes()),
                    " but must be [C, H, W] or [B, C, H, W]");
  return image.dim() == 3 ? image.unsqueeze(0) : image;
}

/// Calls f(type_tag<T>{}, x, y) with T the element type of `image`, x its view (const T, rank R)
/// and y the view of `out` (T, rank R), both in memory space Space: the host and CUDA entries of
/// the one-image corruptions.
template <int R, class Space, class F>
void with_image_views(const at::Tensor& image, const at::Tensor& out, const char* fn, F&& f) {
  dispatch_floating(image, fn, "image", [&](auto tag) {
    using T = typename decltype(tag)::type;
    f(tag, view_of<const T, R, Space>(image, "image", fn), view_of<T, R, Space>(out, "out", fn));
  });
}

inline at::Tensor random_patch_mask_impl(const at::Tensor& image, rng_key key, const patch_mask_options& options,
                                         const char* fn) {
  const at::Tensor x = image_batch(image, fn, "image");
  at::Tensor out = at::empty(image.sizes(), image.options().memory_format(at::MemoryFormat::Contiguous));
  const at::Tensor y = image.dim() == 3 ? out.unsqueeze(0) : out;
  if (is_cuda_tensor(image, fn, "image")) {
    cuda_entry(cuda_backend_registry().random_patch_mask, fn, "image", "random_patch_mask")(x, y, key, options);
    return out;
  }
  with_image_views<4, host_space>(x, y, fn, [&](auto tag, auto in, auto to) {
    using T = typename decltype(tag)::type;
    translate_errors([&] { consr::random_patch_mask<T, 4>(in, to, key, options); });
  });
  return out;
}

}  // namespace detail

/// The autograd function of add_diffusion_noise: out = a·image + b·ε is linear in the image, so
/// ∂out/∂image = a = sqrt(ᾱ_t).
struct diffusion_noise_function : public torch::autograd::Function<diffusion_noise_function> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& image, rng_key key,
                            const diffusion_noise_options& options) {
    constexpr const char* fn = "consr::libtorch::add_diffusion_noise";
    detail::check_defined(image, fn, "image");
    detail::check_floating(image, fn, "image");
    CONSR_TORCH_CHECK(image.dim() <= 8, fn, "image", "has ", image.dim(), " dimensions; at most 8 are supported");
    const diffusion_coefficients coef = detail::translate_errors([&] { return diffusion_noise_coefficients(options); });
    // The noise of element i depends on its row-major logical index only, so a contiguous copy
    // (of a non-contiguous image) gives the same values as the strided host algorithm.
    const at::Tensor x = image.contiguous();
    at::Tensor out = at::empty(image.sizes(), image.options().memory_format(at::MemoryFormat::Contiguous));
    if (detail::is_cuda_tensor(image, fn, "image")) {
      detail::cuda_entry(cuda_backend_registry().add_diffusion_noise, fn, "image", "add_diffusion_noise")(x, out, key,
                                                                                                        options);
    } else {
      detail::with_image_views<1, host_space>(x.view({-1}), out.view({-1}), fn, [&](auto tag, auto in, auto to) {
        using T = typename decltype(tag)::type;
        detail::translate_errors([&] { consr::add_diffusion_noise<T, 1>(in, to, key, options); });
      });
    }
    ctx->saved_data["sqrt_alpha_bar"] = coef.sqrt_alpha_bar;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const double a = ctx->saved_data["sqrt_alpha_bar"].toDouble();
    return {grad_outputs[0].mul(a), at::Tensor(), at::Tensor()};
  }
};

/// Forward diffusion in closed form (spec §3), with autograd:
///   out = sqrt(ᾱ_t)·image + sqrt(1 − ᾱ_t)·ε,  ε_i = normal_at(key, options.element_offset + i),
/// i the element's row-major logical index: exactly consr::add_diffusion_noise on the host (the
/// same (seed, offset) gives the same noise on CPU and CUDA). Any shape (rank ≤ 8), any floating
/// dtype; returns a new contiguous tensor. ∂out/∂image = sqrt(ᾱ_t).
/// Throws c10::Error naming 'image', 'step', 'num_steps' or 'element_offset'.
inline at::Tensor add_diffusion_noise(const at::Tensor& image, rng_key key, const diffusion_noise_options& options = {}) {
  detail::check_defined(image, "consr::libtorch::add_diffusion_noise", "image");
  return diffusion_noise_function::apply(image, key, options);
}

/// The autograd function of random_patch_mask: masked pixels are constants, the others are
/// copied, so the gradient is the upstream gradient with the same patches set to 0.
struct patch_mask_function : public torch::autograd::Function<patch_mask_function> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& image, rng_key key,
                            const patch_mask_options& options) {
    at::Tensor out = detail::random_patch_mask_impl(image, key, options, "consr::libtorch::random_patch_mask");
    detail::save_key(ctx, key);
    ctx->saved_data["patch_size"] = static_cast<int64_t>(options.patch_size);
    ctx->saved_data["probability"] = options.probability;
    ctx->saved_data["image_offset"] = static_cast<int64_t>(options.image_offset);
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    patch_mask_options options;
    options.patch_size = ctx->saved_data["patch_size"].toInt();
    options.probability = ctx->saved_data["probability"].toDouble();
    options.image_offset = static_cast<std::uint64_t>(ctx->saved_data["image_offset"].toInt());
    options.fill_value = 0.0;
    return {detail::random_patch_mask_impl(grad_outputs[0], detail::load_key(ctx), options,
                                           "consr::libtorch::random_patch_mask (backward)"),
            at::Tensor(), at::Tensor()};
  }
};

/// Random patch masking (Table 7), with autograd: consr::random_patch_mask of [C, H, W] or
/// [B, C, H, W] images (any floating dtype); returns a new contiguous tensor. Throws c10::Error
/// naming 'image', 'patch_size', 'probability' or 'image_offset'.
inline at::Tensor random_patch_mask(const at::Tensor& image, rng_key key, const patch_mask_options& options = {}) {
  detail::check_defined(image, "consr::libtorch::random_patch_mask", "image");
  return patch_mask_function::apply(image, key, options);
}

/// The autograd function of mixup: ∂out/∂image = λ, ∂out/∂other = 1 − λ.
struct mixup_function : public torch::autograd::Function<mixup_function> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& image, const at::Tensor& other,
                            double lambda) {
    constexpr const char* fn = "consr::libtorch::mixup";
    detail::check_defined(image, fn, "image");
    detail::check_defined(other, fn, "other");
    detail::check_floating(image, fn, "image");
    CONSR_TORCH_CHECK(other.scalar_type() == image.scalar_type(), fn, "other", "has dtype ",
                      dtype_name(other.scalar_type()), " but 'image' has dtype ", dtype_name(image.scalar_type()));
    detail::check_shape(other, image.sizes(), fn, "other", "the image's shape");
    detail::check_same_device(other, image, fn, "other", "image");
    CONSR_TORCH_CHECK(lambda >= 0.0 && lambda <= 1.0, fn, "lambda", "must be in [0, 1], got ", lambda);
    const at::Tensor x = image.contiguous();
    const at::Tensor o = other.contiguous();
    at::Tensor out = at::empty(image.sizes(), image.options().memory_format(at::MemoryFormat::Contiguous));
    if (detail::is_cuda_tensor(image, fn, "image")) {
      detail::cuda_entry(cuda_backend_registry().mixup, fn, "image", "mixup")(x, o, out, lambda);
    } else {
      detail::dispatch_floating(image, fn, "image", [&](auto tag) {
        using T = typename decltype(tag)::type;
        detail::translate_errors([&] {
          consr::mixup<T, 1>(host_view_of<const T, 1>(x.view({-1}), "image", fn),
                             host_view_of<const T, 1>(o.view({-1}), "other", fn),
                             host_view_of<T, 1>(out.view({-1}), "out", fn), lambda);
        });
      });
    }
    ctx->saved_data["lambda"] = lambda;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const double lambda = ctx->saved_data["lambda"].toDouble();
    const at::Tensor& g = grad_outputs[0];
    return {ctx->needs_input_grad(0) ? g.mul(lambda) : at::Tensor(),
            ctx->needs_input_grad(1) ? g.mul(1.0 - lambda) : at::Tensor(), at::Tensor()};
  }
};

/// Mixup (Table 7), with autograd: out = λ·image + (1 − λ)·other (consr::mixup; one shape and
/// dtype, any rank ≤ 8); returns a new contiguous tensor. Throws c10::Error naming 'image',
/// 'other' or 'lambda'.
inline at::Tensor mixup(const at::Tensor& image, const at::Tensor& other, double lambda) {
  detail::check_defined(image, "consr::libtorch::mixup", "image");
  detail::check_defined(other, "consr::libtorch::mixup", "other");
  return mixup_function::apply(image, other, lambda);
}

/// The autograd function of random_resized_crop: the output is a bilinear resampling of a crop,
/// linear in the image; the backward scatters the upstream gradient back with the transposed
/// interpolation (ATen's upsample_bilinear2d_backward, whose taps — half-pixel centres, source
/// clamped at 0, no antialiasing — are the ones consr::crop_and_resize_bilinear uses).
struct resized_crop_function : public torch::autograd::Function<resized_crop_function> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& image, rng_key key,
                            const resized_crop_options& options) {
    constexpr const char* fn = "consr::libtorch::random_resized_crop";
    const at::Tensor x = detail::image_batch(image, fn, "image");
    at::Tensor out = at::empty(image.sizes(), image.options().memory_format(at::MemoryFormat::Contiguous));
    const at::Tensor y = image.dim() == 3 ? out.unsqueeze(0) : out;
    if (detail::is_cuda_tensor(image, fn, "image")) {
      detail::cuda_entry(cuda_backend_registry().random_resized_crop, fn, "image", "random_resized_crop")(x, y, key,
                                                                                                        options);
    } else {
      detail::with_image_views<4, host_space>(x, y, fn, [&](auto tag, auto in, auto to) {
        using T = typename decltype(tag)::type;
        detail::translate_errors([&] { consr::random_resized_crop<T, 4>(in, to, key, options); });
      });
    }
    // The boxes the forward used: draw_resized_crop_box is a pure function of (key, image index).
    std::vector<int64_t> boxes;
    const int64_t height = x.size(2), width = x.size(3);
    if (x.numel() > 0) {
      for (int64_t b = 0; b < x.size(0); ++b) {
        const crop_box box = draw_resized_crop_box(height, width, key,
                                                   options.image_offset + static_cast<std::uint64_t>(b), options);
        boxes.insert(boxes.end(), {box.top, box.left, box.height, box.width});
      }
    }
    ctx->saved_data["boxes"] = boxes;
    ctx->saved_data["rank3"] = image.dim() == 3;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const std::vector<int64_t> boxes = ctx->saved_data["boxes"].toIntVector();
    const bool rank3 = ctx->saved_data["rank3"].toBool();
    const at::Tensor& g = grad_outputs[0];
    const at::Tensor g4 = rank3 ? g.unsqueeze(0) : g;
    // ATen's bilinear backward covers float32/float64 everywhere; 16-bit gradients go through float32.
    const at::ScalarType work = g.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    const at::Tensor gw = g4.to(work);
    at::Tensor grad = at::zeros(gw.sizes(), gw.options());
    const int64_t channels = gw.size(1), height = gw.size(2), width = gw.size(3);
    for (std::size_t b = 0; 4 * b < boxes.size(); ++b) {
      const int64_t top = boxes[4 * b], left = boxes[4 * b + 1], h = boxes[4 * b + 2], w = boxes[4 * b + 3];
      const std::array<int64_t, 2> out_size{height, width};
      const std::array<int64_t, 4> in_size{1, channels, h, w};
      const at::Tensor gb = gw.narrow(0, static_cast<int64_t>(b), 1).contiguous();
      const at::Tensor crop_grad = at::upsample_bilinear2d_backward(gb, at::IntArrayRef(out_size),
                                                                    at::IntArrayRef(in_size), false, c10::nullopt,
                                                                    c10::nullopt);
      grad.select(0, static_cast<int64_t>(b)).narrow(1, top, h).narrow(2, left, w).copy_(crop_grad.select(0, 0));
    }
    at::Tensor result = grad.to(g.scalar_type());
    if (rank3) result = result.squeeze(0);
    return {result, at::Tensor(), at::Tensor()};
  }
};

/// Random resized crop (Table 7), with autograd: consr::random_resized_crop of [C, H, W] or
/// [B, C, H, W] images (any floating dtype), the boxes drawn from `key` exactly as on the host;
/// returns a new contiguous tensor of the image's shape. Throws c10::Error naming 'image' or an option.
inline at::Tensor random_resized_crop(const at::Tensor& image, rng_key key, const resized_crop_options& options = {}) {
  detail::check_defined(image, "consr::libtorch::random_resized_crop", "image");
  return resized_crop_function::apply(image, key, options);
}

}  // namespace libtorch
}  // namespace consr
