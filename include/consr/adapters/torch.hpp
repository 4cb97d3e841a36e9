// consr/adapters/torch.hpp — LibTorch tensors as consr views, and consr's algorithms as autograd
// functions on at::Tensor (torch::Tensor): token log-probs (spec §4), the DPO objectives (§7),
// the same from hidden states × output projection without the N × V logits (§4, linear_logprobs.hpp),
// visual weights (eqs. 12–13) and the image corruptions (§3, Table 7).
//
// Layers (FlashInfer's split): these headers validate tensors, pick the algorithm for the tensor's
// device and dtype, and turn consr::error into c10::Error; the algorithms themselves are the
// framework-free ones of consr/*.hpp (CPU tensors) and consr/cuda/*.cuh (CUDA tensors, through the
// registry of torch/registry.hpp, which consr/adapters/torch_cuda.cuh fills when a program compiles
// it with nvcc).
// The same functions back the torch.ops library of bindings/torch/ (torch.ops.consr.*).
//
// Errors: every failure is a c10::Error (Python: RuntimeError) whose message names the function and
// the argument, in consr::error's format:
//   "consr::libtorch::token_logprobs: argument 'labels': labels[1, 5] = 152064 is outside [0, 152064) ..."
//
// Compatibility: written against the API common to LibTorch 1.13 and 2.x (at::Tensor, Function<T>,
// AutogradContext::saved_data / save_for_backward / set_materialize_grads / needs_input_grad).
// None of these headers includes CUDA headers.
#pragma once

// One header per algorithm family (include just one where that is all a file needs):
#include "torch/common.hpp"           // dtype map, errors, checks, dispatch, view_of
#include "torch/registry.hpp"         // the CUDA registry torch_cuda.cuh fills
#include "torch/logprobs.hpp"         // token_logprobs (spec §4)
#include "torch/linear_logprobs.hpp"  // linear_token_logprobs, torch_gemm (spec §4)
#include "torch/dpo.hpp"              // dpo_loss, dpo_side, dpo_metric (spec §7)
#include "torch/visual_weights.hpp"   // visual_weights (eqs. 12–13)
#include "torch/corruption.hpp"       // diffusion noise, patch mask, mixup, resized crop (spec §3)
