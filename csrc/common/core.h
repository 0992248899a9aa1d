#pragma once
// Shared between the C++ (g++) and CUDA (nvcc) kernels; no torch includes here.
#include <cstdint>

#if defined(__CUDACC__)
#define RTSEG_HD __host__ __device__ __forceinline__
#else
#define RTSEG_HD inline
#endif

// Loop unrolling hint that host compilers (which warn on #pragma unroll) never see.
#if defined(__CUDA_ARCH__)
#define RTSEG_UNROLL _Pragma("unroll")
#else
#define RTSEG_UNROLL
#endif

namespace rtseg {

// Element types the CUDA launchers accept; the glue maps at::ScalarType onto it.
enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

// Accumulation type: float32 for every storage type except float64.
template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };
template <typename T> using acc_t = typename AccType<T>::type;

// Sizes and element strides of a 4-D tensor, passed by value to kernels so that non-contiguous,
// channels_last and zero-stride (expanded) tensors are read without copies.
struct Strided4 {
  int64_t n, c, h, w;
  int64_t sn, sc, sh, sw;
};

}  // namespace rtseg
