#pragma once
// The CUDA simulator's view of CUDA: the runtime API, the execution model and the device
// functions the project's .cu files use, implemented on the host (runtime in ../runtime.cpp).
//
// Every thread of a block runs as a fiber with its own threadIdx; __syncthreads() and the warp
// collectives are rendezvous checked for divergence; shared memory lives in the section
// "cuda_sim_shared" so that every load and store to it is checked for races (the .cu files are
// compiled with -fsanitize-coverage=trace-loads,trace-stores, whose callbacks are in
// runtime.cpp). The generated copy of each .cu (tests/cuda_sim/__init__.py) turns
// `k<<<g, b, s, st>>>(args)` into `::cuda_sim::launcher(k, "k", __FILE__, __LINE__, g, b, s,
// st)(args)` and defines the `extern __shared__` arrays; nothing else of the kernels changes.
#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- language extensions ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static __attribute__((section("cuda_sim_shared")))
#define CUDA_SIM_EXTERN_SHARED __attribute__((section("cuda_sim_shared")))  // extern __shared__
#define CUDA_SIM_NO_TRACE __attribute__((no_sanitize("coverage")))

// ---- runtime types ----
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
      : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;
struct CUstream_st;
using cudaStream_t = CUstream_st*;
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t err);
cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attr, int value);
template <typename... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}

// Per fiber (threadIdx) and per block; the scheduler sets them on every switch.
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;
constexpr int warpSize = 32;

namespace cuda_sim {

constexpr size_t kDefaultSharedBytes = 48 * 1024;  // without cudaFuncSetAttribute
constexpr size_t kMaxSharedBytes = 227 * 1024;     // sm_90's opt-in limit per block
constexpr int kMaxThreads = 1024;

// Registers an `extern __shared__` array (the generated .cu copy defines one per name).
bool register_dynamic_shared(void* base);

// Launch: checks the configuration as the GPU does (a bad one sets cudaGetLastError() and runs
// nothing), then runs every block, one after the other, with all its threads as fibers.
struct LaunchConfig {
  const void* kernel;
  const char* name;
  const char* file;
  int line;
  dim3 grid, block;
  size_t shared_bytes;
};
void run_launch(const LaunchConfig& config, void (*invoke)(void*), void* closure);

template <typename... P> struct Launch {
  void (*kernel)(P...);
  LaunchConfig config;
  template <typename... A> void operator()(A&&... args) {
    // Arguments are copied into the kernel's parameter types, as a launch does.
    struct Closure {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> params;
    } closure{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
    run_launch(config, [](void* c) {
      auto* self = static_cast<Closure*>(c);
      std::apply(self->kernel, self->params);
    }, &closure);
  }
};
template <typename... P>
Launch<P...> launcher(void (*kernel)(P...), const char* name, const char* file, int line,
                      dim3 grid, dim3 block, size_t shared_bytes = 0, cudaStream_t = nullptr) {
  return {kernel, {reinterpret_cast<const void*>(kernel), name, file, line, grid, block,
                   shared_bytes}};
}

// ---- synchronisation ----
void syncthreads(const char* file, int line);

enum class WarpOp : int { Shfl, ShflUp, ShflDown, ShflXor, Ballot, Any, All, Sync };
uint64_t warp_collective(WarpOp op, unsigned int mask, uint64_t value, int arg, int width,
                         const char* file, int line);
unsigned int active_mask();

template <typename T> uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                "warp shuffles move values of up to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <typename T> T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}
template <typename T>
T shfl(WarpOp op, unsigned int mask, T v, int arg, const char* file, int line, int width = 32) {
  return from_bits<T>(warp_collective(op, mask, to_bits(v), arg, width, file, line));
}
inline void syncwarp(const char* file, int line, unsigned int mask = 0xffffffffu) {
  warp_collective(WarpOp::Sync, mask, 0, 0, 32, file, line);
}

// ---- atomics (no race tracking: atomics are exempt; bounds are still checked) ----
void count_atomic();
template <typename T> CUDA_SIM_NO_TRACE T atomic_rmw(T* p, T v, int op) {
  count_atomic();
  const T old = *p;
  switch (op) {
    case 0: *p = old + v; break;
    case 1: *p = v < old ? v : old; break;
    case 2: *p = old < v ? v : old; break;
    default: *p = v; break;
  }
  return old;
}

}  // namespace cuda_sim

#define __syncthreads() ::cuda_sim::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::cuda_sim::syncwarp(__FILE__, __LINE__, ##__VA_ARGS__)
#define __activemask() ::cuda_sim::active_mask()
#define __shfl_sync(mask, v, lane, ...) \
  ::cuda_sim::shfl(::cuda_sim::WarpOp::Shfl, mask, v, lane, __FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_up_sync(mask, v, delta, ...) \
  ::cuda_sim::shfl(::cuda_sim::WarpOp::ShflUp, mask, v, delta, __FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_down_sync(mask, v, delta, ...) \
  ::cuda_sim::shfl(::cuda_sim::WarpOp::ShflDown, mask, v, delta, __FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_xor_sync(mask, v, lane_mask, ...) \
  ::cuda_sim::shfl(::cuda_sim::WarpOp::ShflXor, mask, v, lane_mask, __FILE__, __LINE__, ##__VA_ARGS__)
#define __ballot_sync(mask, pred) \
  static_cast<unsigned int>(::cuda_sim::warp_collective(::cuda_sim::WarpOp::Ballot, mask, (pred) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __any_sync(mask, pred) \
  static_cast<int>(::cuda_sim::warp_collective(::cuda_sim::WarpOp::Any, mask, (pred) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __all_sync(mask, pred) \
  static_cast<int>(::cuda_sim::warp_collective(::cuda_sim::WarpOp::All, mask, (pred) ? 1 : 0, 0, 32, __FILE__, __LINE__))

// ---- atomics ----
#define CUDA_SIM_ATOMICS(T)                                                              \
  inline T atomicAdd(T* p, T v) { return ::cuda_sim::atomic_rmw(p, v, 0); }              \
  inline T atomicMin(T* p, T v) { return ::cuda_sim::atomic_rmw(p, v, 1); }              \
  inline T atomicMax(T* p, T v) { return ::cuda_sim::atomic_rmw(p, v, 2); }              \
  inline T atomicExch(T* p, T v) { return ::cuda_sim::atomic_rmw(p, v, 3); }
CUDA_SIM_ATOMICS(int)
CUDA_SIM_ATOMICS(unsigned int)
CUDA_SIM_ATOMICS(unsigned long long)
#undef CUDA_SIM_ATOMICS
inline float atomicAdd(float* p, float v) { return ::cuda_sim::atomic_rmw(p, v, 0); }
inline double atomicAdd(double* p, double v) { return ::cuda_sim::atomic_rmw(p, v, 0); }
inline float atomicExch(float* p, float v) { return ::cuda_sim::atomic_rmw(p, v, 3); }
template <typename T> CUDA_SIM_NO_TRACE T atomicCAS(T* p, T expected, T desired) {
  ::cuda_sim::count_atomic();
  const T old = *p;
  if (old == expected) *p = desired;
  return old;
}

// ---- half precision, rounded as the GPU rounds (to nearest even; NaN stays NaN) ----
namespace cuda_sim {
inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t float_to_half_bits(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7fffu);  // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (abs < 0x38800000u) {  // subnormal half (or zero): round |f| * 2^24 to an integer
    const float scaled = bits_float(abs) * 16777216.0f;
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(scaled)));
  }
  const uint32_t mant = abs & 0x7fffffu;
  uint32_t h = ((abs >> 23) - 112) << 10 | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}
inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0) return (sign ? -1.0f : 1.0f) * static_cast<float>(mant) / 16777216.0f;
  if (exp == 31) return bits_float(sign | 0x7f800000u | (mant << 13));
  return bits_float(sign | ((exp + 112) << 23) | (mant << 13));
}
inline uint16_t float_to_bf16_bits(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }
}  // namespace cuda_sim

struct __half {
  uint16_t __x;
  __half() = default;
  __half(float f) : __x(::cuda_sim::float_to_half_bits(f)) {}
  __half(double d) : __half(static_cast<float>(d)) {}
  operator float() const { return ::cuda_sim::half_bits_to_float(__x); }
};
struct __nv_bfloat16 {
  uint16_t __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(::cuda_sim::float_to_bf16_bits(f)) {}
  __nv_bfloat16(double d) : __nv_bfloat16(static_cast<float>(d)) {}
  operator float() const { return ::cuda_sim::bf16_bits_to_float(__x); }
};
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return static_cast<float>(b); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
CUDA_SIM_NO_TRACE inline __half atomicAdd(__half* p, __half v) {
  return ::cuda_sim::atomic_rmw(p, __half(float(*p) + float(v)), 3);
}
CUDA_SIM_NO_TRACE inline __nv_bfloat16 atomicAdd(__nv_bfloat16* p, __nv_bfloat16 v) {
  return ::cuda_sim::atomic_rmw(p, __nv_bfloat16(float(*p) + float(v)), 3);
}

// ---- device functions ----
#define CUDA_SIM_MINMAX(T)                             \
  inline T min(T a, T b) { return b < a ? b : a; }     \
  inline T max(T a, T b) { return a < b ? b : a; }
CUDA_SIM_MINMAX(int)
CUDA_SIM_MINMAX(unsigned int)
CUDA_SIM_MINMAX(long)
CUDA_SIM_MINMAX(unsigned long)
CUDA_SIM_MINMAX(long long)
CUDA_SIM_MINMAX(unsigned long long)
#undef CUDA_SIM_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
template <typename T> T __ldg(const T* p) { return *p; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline float __fdividef(float a, float b) { return a / b; }
