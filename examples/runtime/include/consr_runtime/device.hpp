// consr_runtime/device.hpp — the --device option of the runtime's programs, checked up front: a
// device that does not exist is one clear line naming the option, instead of the multi-line
// LibTorch trace the first tensor moved to it would throw.
#pragma once

#include <string>

#include <torch/types.h>

namespace consr_runtime {

/// Parses "cpu", "cuda" or "cuda:N" and checks that the device exists in this process (LibTorch
/// built with CUDA, a GPU visible, N below the device count). Throws runtime_error
/// "argument '<arg>': ..." (one line) otherwise.
torch::Device parse_device(const std::string& spec, const std::string& arg = "--device");

}  // namespace consr_runtime
