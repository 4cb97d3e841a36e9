// The CUDA kernels of torch.ops.consr: compiling consr/adapters/torch_cuda.cuh here fills the adapter's CUDA
// registry when the library loads (built only with consr's CUDA backend and a CUDA build of LibTorch).
#include <consr/adapters/torch_cuda.cuh>
