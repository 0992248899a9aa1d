#pragma once
// Helpers shared by the .cu kernels: dtype dispatch, conversions to the accumulation type,
// aligned vectors and launch sizing. CUDA headers only.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/core.h"

namespace rtseg {

// Runs the statements with T bound to the storage type named by `dtype`.
#define RTSEG_DISPATCH_DTYPE(dtype, T, ...)                          \
  switch (dtype) {                                                   \
    case ::rtseg::DType::Float32: { using T = float; __VA_ARGS__; break; }          \
    case ::rtseg::DType::Float64: { using T = double; __VA_ARGS__; break; }         \
    case ::rtseg::DType::Float16: { using T = __half; __VA_ARGS__; break; }         \
    case ::rtseg::DType::BFloat16: { using T = __nv_bfloat16; __VA_ARGS__; break; } \
    default: return cudaErrorInvalidValue;                           \
  }

template <> struct AccType<__half> { using type = float; };
template <> struct AccType<__nv_bfloat16> { using type = float; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// N elements loaded or stored as one aligned access (16 bytes for 4 floats or 8 halves).
template <typename T, int N> struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T> constexpr int vec_width() { return 16 / static_cast<int>(sizeof(T)); }

// Threads per block of every launch. Every kernel declares __launch_bounds__(kThreads) (which
// `make cuda-check` requires, as its block size), most with the resident blocks per SM they
// should reach, which caps registers at 65536 / (kThreads * blocks) per thread and so pins the
// occupancy; tools/cuda_resources.py reports each kernel's registers and occupancy and fails on
// any spill.
constexpr int kThreads = 256;

// Channel-fastest kernels for channels_last tensors give each pixel a team of `lanes` threads
// (a power of two up to 32, so a team lies within one warp): lane l takes channels l, l + lanes,
// ..., so neighbouring threads touch neighbouring channels, which are adjacent in memory.
inline int team_lanes(int64_t channels) {
  int lanes = 1;
  while (lanes < 32 && lanes < channels) lanes *= 2;
  return lanes;
}

// The sum of v over the calling thread's team, in a fixed order (every lane of the team must
// call it; lane 0's result is the one to use, other lanes may round differently).
template <typename A> __device__ __forceinline__ A team_sum(A v, int lanes) {
  const unsigned base = threadIdx.x & 31u & ~unsigned(lanes - 1);
  const unsigned mask = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u) << base;
  for (int offset = lanes / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(mask, v, offset, lanes);
  return v;
}

// 1-D grid for a grid-stride loop over `total` items.
inline unsigned int blocks_for(int64_t total, int threads = kThreads) {
  const int64_t blocks = (total + threads - 1) / threads;
  const int64_t cap = int64_t(1) << 20;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

inline bool aligned_to(const void* p, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0;
}

}  // namespace rtseg
