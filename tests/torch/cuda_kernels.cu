// consr's CUDA kernels in the adapter test binary (CUDA-enabled builds only): the CUDA cases of
// test_adapter.cpp run where this file is compiled in and a GPU is present.
#include <consr/adapters/torch_cuda.cuh>
