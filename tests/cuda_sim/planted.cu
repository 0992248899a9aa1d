// Kernels with planted bugs (and correct twins) that prove the CUDA simulator catches what it
// claims to: tests/test_cuda_sim.py runs each through launch_planted().
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace {

__global__ void missing_sync_kernel(float* data, int64_t n) {
  __shared__ float buf[256];
  buf[threadIdx.x] = data[threadIdx.x];
  // planted: no __syncthreads() before reading a neighbour's element
  data[threadIdx.x] = buf[(threadIdx.x + 1) % blockDim.x];
}

__global__ void tree_sum_kernel(float* data, int64_t n) {
  __shared__ float buf[256];
  buf[threadIdx.x] = data[threadIdx.x];
  __syncthreads();
  for (unsigned int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) buf[threadIdx.x] += buf[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) data[0] = buf[0];
}

__global__ void out_of_bounds_kernel(float* data, int64_t n) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i <= n) data[i] = 1.0f;  // planted: <= instead of <
}

__global__ void divergent_barrier_kernel(float* data, int64_t n) {
  if (threadIdx.x < 16) {  // planted: a barrier only half the block reaches
    __syncthreads();
    data[threadIdx.x] = 1.0f;
  }
}

__global__ void missing_lane_kernel(float* data, int64_t n) {
  float v = data[threadIdx.x];
  if (threadIdx.x == 5) return;  // planted: lane 5 leaves before the full-warp shuffle
  v = __shfl_sync(0xffffffffu, v, 0);
  data[threadIdx.x] = v;
}

__global__ void warp_sum_kernel(float* data, int64_t n) {
  float v = data[threadIdx.x];
  const unsigned int positive = __ballot_sync(0xffffffffu, v > 0.0f);
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const float first = __shfl_sync(0xffffffffu, data[threadIdx.x], 0);
  const float up = __shfl_up_sync(0xffffffffu, data[threadIdx.x], 1);
  const int any = __any_sync(0xffffffffu, threadIdx.x == 7);
  const int all = __all_sync(0xffffffffu, threadIdx.x < 32);
  __syncwarp();
  data[threadIdx.x] = v;
  data[32 + threadIdx.x] = first + up;
  if (threadIdx.x == 0) {
    data[64] = static_cast<float>(positive & 0xffffu);
    data[65] = static_cast<float>(any + 2 * all);
  }
}

__global__ void uninitialized_kernel(float* data, int64_t n) {
  __shared__ float buf[64];
  if (threadIdx.x == 0) buf[0] = 1.0f;  // planted: only element 0 is written
  __syncthreads();
  data[threadIdx.x] = buf[threadIdx.x];
}

template <int kVariant> __global__ void reverse_kernel(float* data, int64_t n) {
  extern __shared__ float dyn[];
  dyn[threadIdx.x] = data[threadIdx.x];
  __syncthreads();
  data[threadIdx.x] = dyn[blockDim.x - 1 - threadIdx.x];
}

}  // namespace

cudaError_t launch_planted(const std::string& which, float* data, int64_t n) {
  const unsigned int threads = static_cast<unsigned int>(n < 1024 ? n : 1024);
  if (which == "missing_sync") {
    missing_sync_kernel<<<1, 256>>>(data, n);
  } else if (which == "tree_sum") {
    tree_sum_kernel<<<1, 256>>>(data, n);
  } else if (which == "out_of_bounds") {
    out_of_bounds_kernel<<<unsigned((n + 63) / 64), 64>>>(data, n);
  } else if (which == "divergent_barrier") {
    divergent_barrier_kernel<<<1, 32>>>(data, n);
  } else if (which == "missing_lane") {
    missing_lane_kernel<<<1, 32>>>(data, n);
  } else if (which == "warp_sum") {
    warp_sum_kernel<<<1, 32>>>(data, n);
  } else if (which == "uninitialized") {
    uninitialized_kernel<<<1, 64>>>(data, n);
  } else if (which == "reverse") {
    reverse_kernel<0><<<1, threads, threads * sizeof(float)>>>(data, n);
  } else if (which == "reverse_short_shared") {  // planted: one float too few
    reverse_kernel<0><<<1, threads, (threads - 1) * sizeof(float)>>>(data, n);
  } else if (which == "too_many_threads") {
    tree_sum_kernel<<<1, 1025>>>(data, n);
  } else if (which == "grid_y_too_large") {
    out_of_bounds_kernel<<<dim3(1, 65536), 32>>>(data, n);
  } else if (which == "shared_without_opt_in") {
    reverse_kernel<1><<<1, 32, 49 * 1024>>>(data, n);
  } else if (which == "shared_with_opt_in") {
    const cudaError_t err = cudaFuncSetAttribute(
        reverse_kernel<2>, cudaFuncAttributeMaxDynamicSharedMemorySize, 49 * 1024);
    if (err != cudaSuccess) return err;
    reverse_kernel<2><<<1, threads, 49 * 1024>>>(data, n);
  } else if (which == "shared_over_limit") {
    return cudaFuncSetAttribute(reverse_kernel<3>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                228 * 1024);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}
