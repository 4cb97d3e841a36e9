// The --device option, checked up front (see consr_runtime/device.hpp).
#include "consr_runtime/device.hpp"

#include <torch/cuda.h>

#include "consr_runtime/error.hpp"

namespace consr_runtime {

torch::Device parse_device(const std::string& spec, const std::string& arg) {
  const auto fail = [&](const std::string& message) -> runtime_error {
    return runtime_error("argument '" + arg + "': " + message);
  };
  if (spec != "cpu" && spec.rfind("cuda", 0) != 0) throw fail("is '" + spec + "' but must be cpu or cuda[:n]");
  torch::Device device(torch::kCPU);
  try {
    device = torch::Device(spec);
  } catch (const std::exception&) {
    throw fail("is '" + spec + "' but must be cpu or cuda[:n]");
  }
  if (device.is_cpu()) return device;
  const auto count = static_cast<std::int64_t>(torch::cuda::device_count());
  if (count == 0)
    throw fail("'" + spec + "' asked, but this process sees no CUDA device (LibTorch built without CUDA, no GPU, or "
                            "CUDA_VISIBLE_DEVICES hides them); use --device cpu");
  if (device.has_index() && device.index() >= count)
    throw fail("'" + spec + "' asked, but this process sees " + std::to_string(count) + " CUDA device(s) (cuda:0" +
               (count > 1 ? " to cuda:" + std::to_string(count - 1) : std::string()) + ")");
  return device;
}

}  // namespace consr_runtime
