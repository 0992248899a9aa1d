#pragma once
// Copies a block computed in cache into a large output with non-temporal stores. Ordinary stores
// to an output that is not in cache first read every line from memory (read for ownership); on the
// 2-core VM, one core writing a 33 MB output that way spends longer on memory than on the GEMM that
// produced it.
#include <algorithm>
#include <cstdint>
#include <cstring>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace rtseg {

// dst[r * dst_stride + j] = src[r * cols + j] for r < rows, j < cols (element strides).
template <typename T>
void stream_rows(T* dst, int64_t dst_stride, const T* src, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    auto* out = reinterpret_cast<char*>(dst + r * dst_stride);
    const auto* in = reinterpret_cast<const char*>(src + r * cols);
    int64_t bytes = cols * static_cast<int64_t>(sizeof(T));
#if defined(__SSE2__)
    const int64_t head = std::min<int64_t>(bytes, (16 - reinterpret_cast<uintptr_t>(out) % 16) % 16);
    std::memcpy(out, in, head);
    out += head, in += head, bytes -= head;
    for (; bytes >= 16; bytes -= 16, out += 16, in += 16) {
      _mm_stream_si128(reinterpret_cast<__m128i*>(out),
                       _mm_loadu_si128(reinterpret_cast<const __m128i*>(in)));
    }
#endif
    std::memcpy(out, in, bytes);
  }
#if defined(__SSE2__)
  _mm_sfence();  // the streamed lines are visible before any later store from this thread
#endif
}

}  // namespace rtseg
