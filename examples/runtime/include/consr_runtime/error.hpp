// consr_runtime/error.hpp — the one exception type of the model runtime.
#pragma once

#include <stdexcept>
#include <string>

namespace consr_runtime {

/// Every failure of the runtime (a missing or corrupt file, a tokenizer of another kind, a tensor
/// missing from a checkpoint, an argument out of range) is a `runtime_error` whose message names the
/// file, the argument and/or the tensor concerned, e.g.
///   "consr_runtime::safetensors_file: '/m/model.safetensors': tensor 'lm_head.weight': data_offsets
///    [0, 12) hold 12 bytes but dtype F32 x shape [2, 2] needs 16"
class runtime_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace consr_runtime
