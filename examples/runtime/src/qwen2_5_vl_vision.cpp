// Qwen2.5-VL vision encoder (transformers' Qwen2_5_VisionTransformerPretrainedModel). See
// consr_runtime/vision.hpp.
#include <algorithm>
#include <cmath>
#include <string>

#include <torch/torch.h>

#include "consr_runtime/error.hpp"
#include "consr_runtime/vision.hpp"
#include "attention_util.hpp"
#include "torch_util.hpp"

namespace consr_runtime {
namespace {

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  throw runtime_error("consr_runtime::" + where + ": " + what);
}

// RMSNorm as Qwen2_5_VLRMSNorm: normalise in fp32, cast back, then scale.
torch::Tensor apply_rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  auto x32 = x.to(torch::kFloat);
  x32 = x32 * torch::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * x32.to(x.scalar_type());
}

struct rms_norm_impl : torch::nn::Module {
  rms_norm_impl(std::int64_t dim, const torch::TensorOptions& options)
      : weight(register_parameter("weight", torch::ones({dim}, options))) {}
  torch::Tensor forward(const torch::Tensor& x) { return apply_rms_norm(x, weight, 1e-6); }
  torch::Tensor weight;
};
TORCH_MODULE_IMPL(rms_norm, rms_norm_impl);

torch::Tensor rotate_half(const torch::Tensor& x) {
  const auto half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

struct vision_attention_impl : torch::nn::Module {
  vision_attention_impl(std::int64_t dim, std::int64_t heads, const torch::TensorOptions& options)
      : num_heads(heads), head_dim(dim / heads) {
    qkv = register_module("qkv", make_linear(dim, 3 * dim, true, options));
    proj = register_module("proj", make_linear(dim, dim, true, options));
  }
  // x [L, dim]; cos/sin [L, head_dim] fp32; cu: segment boundaries (attention within each).
  torch::Tensor forward(const torch::Tensor& x, const std::vector<std::int64_t>& cu, const torch::Tensor& cos,
                        const torch::Tensor& sin) {
    const auto length = x.size(0);
    auto parts = qkv(x).reshape({length, 3, num_heads, head_dim}).permute({1, 0, 2, 3}).unbind(0);
    const auto dtype = x.scalar_type();
    // Rotary in fp32 (apply_rotary_pos_emb_vision), cast back.
    const auto c = cos.unsqueeze(-2), s = sin.unsqueeze(-2);
    auto q = parts[0].to(torch::kFloat), k = parts[1].to(torch::kFloat);
    q = (q * c + rotate_half(q) * s).to(dtype);
    k = (k * c + rotate_half(k) * s).to(dtype);
    auto v = parts[2];
    std::vector<torch::Tensor> outs;
    outs.reserve(cu.size());
    for (std::size_t i = 0; i + 1 < cu.size(); ++i) {
      const auto begin = cu[i], n = cu[i + 1] - cu[i];
      if (n <= 0) continue;
      auto qs = q.narrow(0, begin, n).transpose(0, 1);  // [heads, n, d]
      auto ks = k.narrow(0, begin, n).transpose(0, 1);
      auto vs = v.narrow(0, begin, n).transpose(0, 1);
      // Query-chunked (attention_util.hpp): a full-attention block over a large image is one
      // segment of all its patches, whose heads × n × n scores would not fit at once.
      outs.push_back(bidirectional_attention(qs, ks, vs).transpose(0, 1).reshape({n, num_heads * head_dim}));
    }
    return proj(torch::cat(outs, 0));
  }
  std::int64_t num_heads, head_dim;
  torch::nn::Linear qkv{nullptr}, proj{nullptr};
};
TORCH_MODULE_IMPL(vision_attention, vision_attention_impl);

struct vision_mlp_impl : torch::nn::Module {
  vision_mlp_impl(std::int64_t dim, std::int64_t inter, const torch::TensorOptions& options) {
    gate_proj = register_module("gate_proj", make_linear(dim, inter, true, options));
    up_proj = register_module("up_proj", make_linear(dim, inter, true, options));
    down_proj = register_module("down_proj", make_linear(inter, dim, true, options));
  }
  torch::Tensor forward(const torch::Tensor& x) { return down_proj(torch::silu(gate_proj(x)) * up_proj(x)); }
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE_IMPL(vision_mlp, vision_mlp_impl);

struct vision_block_impl : torch::nn::Module {
  vision_block_impl(const qwen2_5_vl_vision_config& c, const torch::TensorOptions& options) {
    norm1 = register_module("norm1", rms_norm(c.hidden_size, options));
    norm2 = register_module("norm2", rms_norm(c.hidden_size, options));
    attn = register_module("attn", vision_attention(c.hidden_size, c.num_heads, options));
    mlp = register_module("mlp", vision_mlp(c.hidden_size, c.intermediate_size, options));
  }
  torch::Tensor forward(const torch::Tensor& x, const std::vector<std::int64_t>& cu, const torch::Tensor& cos,
                        const torch::Tensor& sin) {
    auto h = x + attn(norm1(x), cu, cos, sin);
    return h + mlp(norm2(h));
  }
  rms_norm norm1{nullptr}, norm2{nullptr};
  vision_attention attn{nullptr};
  vision_mlp mlp{nullptr};
};
TORCH_MODULE_IMPL(vision_block, vision_block_impl);

struct grid_entry {
  std::int64_t t, h, w;
};

std::vector<grid_entry> read_grid(const torch::Tensor& grid_thw, std::int64_t merge, const std::string& where) {
  if (!grid_thw.defined() || grid_thw.dim() != 2 || grid_thw.size(1) != 3 ||
      (grid_thw.scalar_type() != torch::kLong && grid_thw.scalar_type() != torch::kInt))
    fail(where, "argument 'grid_thw' must be an integer tensor [n_images, 3]");
  const auto g = grid_thw.to(torch::kCPU, torch::kLong).contiguous();
  const auto* p = g.data_ptr<std::int64_t>();
  std::vector<grid_entry> out;
  for (std::int64_t i = 0; i < g.size(0); ++i) {
    grid_entry e{p[3 * i], p[3 * i + 1], p[3 * i + 2]};
    if (e.t <= 0 || e.h <= 0 || e.w <= 0 || e.h % merge != 0 || e.w % merge != 0 || e.t > (1 << 20) ||
        e.h > (1 << 20) || e.w > (1 << 20))
      fail(where, "argument 'grid_thw': row " + std::to_string(i) + " = (" + std::to_string(e.t) + ", " +
                      std::to_string(e.h) + ", " + std::to_string(e.w) +
                      ") must be positive with h and w multiples of spatial_merge_size " + std::to_string(merge));
    out.push_back(e);
  }
  if (out.empty()) fail(where, "argument 'grid_thw' is empty");
  return out;
}

}  // namespace

qwen2_5_vl_window_plan qwen2_5_vl_window_plan_for(const torch::Tensor& grid_thw, std::int64_t merge,
                                                  std::int64_t window_size, std::int64_t patch_size) {
  const std::string where = "qwen2_5_vl_window_plan_for";
  if (merge <= 0 || patch_size <= 0) fail(where, "arguments 'spatial_merge_size' and 'patch_size' must be positive");
  const std::int64_t vws = window_size / merge / patch_size;  // merged cells per window side
  if (vws <= 0) fail(where, "argument 'window_size' = " + std::to_string(window_size) + " is smaller than one merged cell");
  const auto grid = read_grid(grid_thw, merge, where);
  qwen2_5_vl_window_plan plan;
  plan.cu_window_seqlens.push_back(0);
  plan.cu_seqlens.push_back(0);
  const std::int64_t unit = merge * merge;
  std::int64_t offset = 0;
  for (const auto& g : grid) {
    const std::int64_t lh = g.h / merge, lw = g.w / merge;
    // Pads to a multiple of vws, adding a whole empty window when already a multiple (as HF); the
    // empty windows vanish in the unique_consecutive below.
    const std::int64_t nwh = (lh + vws - lh % vws) / vws, nww = (lw + vws - lw % vws) / vws;
    for (std::int64_t t = 0; t < g.t; ++t)
      for (std::int64_t wh = 0; wh < nwh; ++wh)
        for (std::int64_t ww = 0; ww < nww; ++ww) {
          std::int64_t count = 0;
          for (std::int64_t i = 0; i < vws; ++i)
            for (std::int64_t j = 0; j < vws; ++j) {
              const std::int64_t r = wh * vws + i, c = ww * vws + j;
              if (r < lh && c < lw) {
                plan.window_index.push_back(offset + t * lh * lw + r * lw + c);
                ++count;
              }
            }
          const std::int64_t next = plan.cu_window_seqlens.back() + count * unit;
          if (next != plan.cu_window_seqlens.back()) plan.cu_window_seqlens.push_back(next);
        }
    offset += g.t * lh * lw;
    for (std::int64_t t = 0; t < g.t; ++t) plan.cu_seqlens.push_back(plan.cu_seqlens.back() + g.h * g.w);
  }
  return plan;
}

qwen2_5_vl_vision_model_impl::qwen2_5_vl_vision_model_impl(const qwen2_5_vl_vision_config& config,
                                                           const torch::TensorOptions& options)
    : config_(config) {
  const std::string where = "qwen2_5_vl_vision_model";
  const auto& c = config_;
  if (c.depth <= 0 || c.hidden_size <= 0 || c.num_heads <= 0 || c.intermediate_size <= 0 || c.out_hidden_size <= 0)
    fail(where, "config: depth, hidden_size, num_heads, intermediate_size and out_hidden_size must be positive");
  if (c.hidden_size % c.num_heads != 0)
    fail(where, "config: hidden_size " + std::to_string(c.hidden_size) + " is not divisible by num_heads " +
                    std::to_string(c.num_heads));
  head_dim_ = c.hidden_size / c.num_heads;
  if (head_dim_ % 4 != 0)
    fail(where, "config: head_dim " + std::to_string(head_dim_) + " must be divisible by 4 (2-D rotary)");
  if (c.patch_size <= 0 || c.temporal_patch_size <= 0 || c.spatial_merge_size <= 0 || c.in_channels <= 0)
    fail(where, "config: patch_size, temporal_patch_size, spatial_merge_size and in_channels must be positive");
  for (auto i : c.fullatt_block_indexes)
    if (i < 0 || i >= c.depth)
      fail(where, "config: fullatt_block_indexes holds " + std::to_string(i) + " outside [0, depth = " +
                      std::to_string(c.depth) + ")");
  if (c.hidden_act != "silu") fail(where, "config: hidden_act '" + c.hidden_act + "' is not supported (silu)");

  auto opts = options.dtype(options.dtype().toScalarType());
  // patch_embed.proj is a bias-free Conv3d in HF; only its weight is kept (applied as a linear map).
  auto patch_embed = std::make_shared<torch::nn::Module>("patch_embed");
  auto proj = patch_embed->register_module("proj", std::make_shared<torch::nn::Module>("proj"));
  patch_weight_ = proj->register_parameter(
      "weight", torch::zeros({c.hidden_size, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size}, opts));
  register_module("patch_embed", patch_embed);
  blocks_ = register_module("blocks", torch::nn::ModuleList());
  for (std::int64_t i = 0; i < c.depth; ++i) blocks_->push_back(vision_block(c, opts));
  const std::int64_t merged = c.hidden_size * c.spatial_merge_size * c.spatial_merge_size;
  auto merger = std::make_shared<torch::nn::Module>("merger");
  merger_norm_ = merger->register_module("ln_q", rms_norm(c.hidden_size, opts))->weight;
  merger_mlp_ = merger->register_module(
      "mlp", torch::nn::Sequential(make_linear(merged, merged, true, opts), torch::nn::GELU(),
                                   make_linear(merged, c.out_hidden_size, true, opts)));
  register_module("merger", merger);
}

torch::Tensor qwen2_5_vl_vision_model_impl::forward(const torch::Tensor& pixel_values, const torch::Tensor& grid_thw) {
  const std::string where = "qwen2_5_vl_vision_model::forward";
  const auto& c = config_;
  const std::int64_t m = c.spatial_merge_size, unit = m * m;
  const std::int64_t features = c.in_channels * c.temporal_patch_size * c.patch_size * c.patch_size;
  if (!pixel_values.defined() || pixel_values.dim() != 2 || pixel_values.size(1) != features ||
      !pixel_values.is_floating_point())
    fail(where, "argument 'pixel_values' must be a floating tensor [L, " + std::to_string(features) + "]");
  const auto plan = qwen2_5_vl_window_plan_for(grid_thw, m, c.window_size, c.patch_size);
  const std::int64_t length = pixel_values.size(0);
  if (plan.cu_seqlens.back() != length)
    fail(where, "argument 'pixel_values' has " + std::to_string(length) + " rows but 'grid_thw' describes " +
                    std::to_string(plan.cu_seqlens.back()));
  const auto device = patch_weight_.device();
  const auto dtype = patch_weight_.scalar_type();

  // Patch embedding: Conv3d with kernel = stride = the whole patch is one linear map of the row.
  auto x = torch::matmul(pixel_values.to(device, dtype), patch_weight_.reshape({c.hidden_size, features}).t());

  // 2-D rotary: (row, column) of each patch in merge-block order, the same frequencies for both.
  const auto grid = grid_thw.to(torch::kCPU, torch::kLong).contiguous();
  std::vector<std::int64_t> pos;
  pos.reserve(static_cast<std::size_t>(2 * length));
  for (std::int64_t i = 0; i < grid.size(0); ++i) {
    const auto t = grid[i][0].item<std::int64_t>(), h = grid[i][1].item<std::int64_t>(), w = grid[i][2].item<std::int64_t>();
    for (std::int64_t tt = 0; tt < t; ++tt)
      for (std::int64_t bh = 0; bh < h / m; ++bh)
        for (std::int64_t bw = 0; bw < w / m; ++bw)
          for (std::int64_t mh = 0; mh < m; ++mh)
            for (std::int64_t mw = 0; mw < m; ++mw) {
              pos.push_back(bh * m + mh);
              pos.push_back(bw * m + mw);
            }
  }
  const auto pos_t = torch::tensor(pos, torch::kLong).view({length, 2}).to(device);
  const std::int64_t spatial_dim = head_dim_ / 2;
  const auto inv_freq =
      torch::pow(10000.0, torch::arange(0, spatial_dim, 2, torch::TensorOptions().dtype(torch::kFloat).device(device)) /
                              static_cast<double>(spatial_dim)).reciprocal();
  auto freqs = pos_t.unsqueeze(-1).to(torch::kFloat) * inv_freq;  // [L, 2, head_dim/4]
  freqs = torch::cat({freqs.select(1, 0), freqs.select(1, 1)}, -1);  // [L, head_dim/2]
  auto emb = torch::cat({freqs, freqs}, -1);                         // [L, head_dim]
  auto cos = emb.cos(), sin = emb.sin();

  // Reorder rows window by window, in units of one merge group.
  const auto widx = torch::tensor(plan.window_index, torch::kLong).to(device);
  auto permute = [&](const torch::Tensor& t) {
    return t.reshape({length / unit, unit, -1}).index_select(0, widx).reshape({length, -1});
  };
  x = permute(x);
  cos = permute(cos);
  sin = permute(sin);

  std::vector<bool> full(static_cast<std::size_t>(c.depth), false);
  for (auto i : c.fullatt_block_indexes) full[static_cast<std::size_t>(i)] = true;
  for (std::int64_t i = 0; i < c.depth; ++i) {
    auto block = blocks_->ptr<vision_block_impl>(static_cast<std::size_t>(i));
    x = block->forward(x, full[static_cast<std::size_t>(i)] ? plan.cu_seqlens : plan.cu_window_seqlens, cos, sin);
  }
  auto merged = merger_mlp_->forward(apply_rms_norm(x, merger_norm_, 1e-6).reshape({-1, c.hidden_size * unit}));
  return merged.index_select(0, torch::argsort(widx));
}

}  // namespace consr_runtime
