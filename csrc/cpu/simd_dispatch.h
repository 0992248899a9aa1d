#pragma once
// Run-time ISA dispatch for auto-vectorised CPU loops. The extension is compiled for baseline
// x86-64 (SSE2, 4 floats a vector), which leaves memory-bound loops compute-bound.
// simd_dispatch(body) compiles `body`, a lambda marked RTSEG_SIMD_BODY (always inlined, so it and
// the helpers it inlines take the caller's target), for AVX-512, for AVX2 + FMA and for the
// baseline, and runs the best copy this CPU supports. Helpers called from a body should be
// RTSEG_SIMD_BODY too: an out-of-line call runs its baseline code.
// A whole function over raw pointers can instead be marked RTSEG_SIMD_CLONES: GCC builds it for the
// same levels (as x86-64-v4 and x86-64-v3) with its callees inlined and picks a copy when the
// library loads. Either way, no torch code is compiled out of line for a wider ISA.
#if defined(__GNUC__) && defined(__x86_64__)

#define RTSEG_SIMD_BODY __attribute__((always_inline))
#define RTSEG_SIMD_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), flatten))

namespace rtseg {
namespace simd_detail {

template <typename F>
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512")))
void run_avx512(const F& body) {
  body();
}

template <typename F>
__attribute__((target("avx2,fma"))) void run_avx2(const F& body) {
  body();
}

template <typename F>
void run_baseline(const F& body) {
  body();
}

enum class Level { Baseline, Avx2, Avx512 };

}  // namespace simd_detail

// The AVX-512 subsets of x86-64-v4 (kernels written with AVX-512 intrinsics check this too).
inline bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("avx512cd");
  return has;
}

namespace simd_detail {

inline Level cpu_level() {
  static const Level level = [] {
    if (cpu_has_avx512()) return Level::Avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Level::Avx2;
    return Level::Baseline;
  }();
  return level;
}

}  // namespace simd_detail

inline const char* cpu_simd_level_name() {
  switch (simd_detail::cpu_level()) {
    case simd_detail::Level::Avx512: return "AVX-512 (x86-64-v4)";
    case simd_detail::Level::Avx2: return "AVX2 + FMA (x86-64-v3)";
    default: return "baseline x86-64 (SSE2)";
  }
}

template <typename F>
void simd_dispatch(const F& body) {
  switch (simd_detail::cpu_level()) {
    case simd_detail::Level::Avx512: simd_detail::run_avx512(body); break;
    case simd_detail::Level::Avx2: simd_detail::run_avx2(body); break;
    default: simd_detail::run_baseline(body);
  }
}

}  // namespace rtseg

#else

#define RTSEG_SIMD_BODY
#define RTSEG_SIMD_CLONES

namespace rtseg {
inline bool cpu_has_avx512() { return false; }

inline const char* cpu_simd_level_name() { return "baseline (no run-time dispatch on this CPU)"; }

template <typename F>
void simd_dispatch(const F& body) {
  body();
}
}  // namespace rtseg

#endif
