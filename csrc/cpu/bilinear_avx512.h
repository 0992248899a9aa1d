#pragma once
// Bilinear sampling of one output row for the CPU kernels (grouped_flow_warp, gated_flow_fusion):
// the taps of a row are stored as arrays per corner, so that on AVX-512 CPUs a row of one
// channel is sampled with 16-lane gathers and its gradient scattered with 16-lane scatters.
// fill_taps, sample_row and backprop_row pick the AVX-512 code at run time (cpu_has_avx512())
// and fall back to scalar loops elsewhere. No torch includes.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define RTSEG_AVX512_DISPATCH 1
#endif

#include "common/bilinear.h"
#include "common/core.h"
#include "cpu/simd_dispatch.h"

namespace rtseg {

// The taps of one output row. Corner k = 2 * r + j of pixel x (r: upper or lower input row,
// j: left or right column) reads offset[r][x] + j * sx with weight[k][x]; its weight's
// derivatives are dx[k][x], dy[k][x] (filled for backward only). Each input row's two corners
// are stored as two adjacent columns of the plane (when it is 2 or more wide), even where a corner
// lies outside and is replaced by an unused one (all zeros), so that vector kernels read both with
// one 8-byte load. Index is int32_t when every offset of the plane fits, else int64_t.
template <typename T, typename Index> struct RowTaps {
  std::vector<Index> offset[2];
  std::vector<T> weight[4], dx[4], dy[4];

  RowTaps(int64_t W, bool grads) {
    for (int r = 0; r < 2; ++r) offset[r].resize(W);
    for (int k = 0; k < 4; ++k) {
      weight[k].resize(W);
      if (grads) {
        dx[k].resize(W);
        dy[k].resize(W);
      }
    }
  }

  void fill(const T* flow, const Strided4& fs, int64_t b, int64_t g, int64_t y,
            const Strided4& in, bool align_corners, Padding padding) {
    const T* flow_x = flow + b * fs.sn + (2 * g) * fs.sc + y * fs.sh;
    const T* flow_y = flow_x + fs.sc;
    const bool grads = !dx[0].empty();
    for (int64_t x = 0; x < fs.w; ++x) {
      const auto pos = flow_warp_position<T>(x, y, flow_x[x * fs.sw], flow_y[x * fs.sw], fs.h,
                                             fs.w, in.h, in.w, align_corners);
      const auto t = bilinear_taps<T>(pos.ix, pos.iy, in.h, in.w, in.sh, in.sw, padding);
      for (int r = 0; r < 2; ++r) {
        // The used corner decides the pair's left column, one left of it at the right edge.
        const int k0 = corner_used(t, 2 * r) ? 2 * r : 2 * r + 1;
        const int64_t left = std::max<int64_t>(0, std::min(t.col[k0], in.w - 2));
        offset[r][x] = static_cast<Index>(t.row[k0] * in.sh + left * in.sw);
        for (int j = 0; j < 2; ++j) {
          weight[2 * r + j][x] = T(0);
          if (grads) dx[2 * r + j][x] = dy[2 * r + j][x] = T(0);
        }
        for (int k = 2 * r; k < 2 * r + 2; ++k) {
          if (!corner_used(t, k)) continue;
          const int slot = 2 * r + static_cast<int>(t.col[k] - left);
          weight[slot][x] = t.weight[k];
          if (grads) {
            dx[slot][x] = t.dweight_dx[k];
            dy[slot][x] = t.dweight_dy[k];
          }
        }
      }
    }
  }

  Index corner_offset(int k, int64_t x, int64_t sx) const {
    return offset[k / 2][x] + static_cast<Index>((k % 2) * sx);
  }

  // corner_used() of bilinear.h.
  bool used(int k, int64_t x) const {
    return weight[k][x] != T(0) || dx[k][x] != T(0) || dy[k][x] != T(0);
  }
};

// Whether an h x w plane with strides (sy, sx) has only int32 offsets.
inline bool offsets_fit_int32(const Strided4& in) {
  return (in.h - 1) * in.sh + (in.w - 1) * in.sw <= std::numeric_limits<int32_t>::max();
}

#ifdef RTSEG_AVX512_DISPATCH
// The vector kernels read both columns of a pair at once: rows of unit stride, 2 or more wide.
inline bool pairs_readable(const Strided4& in) { return in.sw == 1 && in.w >= 2; }

inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1);
}

// plane[idx[i]] and plane[idx[i] + 1] of 16 pixels i as two vectors, with two 8-lane gathers of
// 8-byte pairs (half the loads of two 16-lane gathers).
inline __attribute__((target("avx512f")))
void gather_pairs(const float* plane, __m512i idx, __m512* left, __m512* right) {
  const __m512 lo = _mm512_castsi512_ps(
      _mm512_i32gather_epi64(_mm512_castsi512_si256(idx), plane, 4));
  const __m512 hi = _mm512_castsi512_ps(
      _mm512_i32gather_epi64(_mm512_extracti64x4_epi64(idx, 1), plane, 4));
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  *left = _mm512_permutex2var_ps(lo, even, hi);
  *right = _mm512_permutex2var_ps(lo, _mm512_add_epi32(even, _mm512_set1_epi32(1)), hi);
}

// unnormalize() of 16 coordinates.
inline __attribute__((target("avx512f")))
__m512 unnormalize_avx512(__m512 c, int64_t size, bool align_corners) {
  const __m512 one = _mm512_set1_ps(1.f), half = _mm512_set1_ps(0.5f);
  return align_corners ? _mm512_mul_ps(_mm512_mul_ps(_mm512_add_ps(c, one), half),
                                       _mm512_set1_ps(float(size - 1)))
                       : _mm512_mul_ps(_mm512_sub_ps(_mm512_mul_ps(_mm512_add_ps(c, one),
                                                                   _mm512_set1_ps(float(size))),
                                                     one),
                                       half);
}

// bilinear_taps()'s padding of 16 coordinates: border clamps to the plane (slope 0 at and
// beyond the edges); zeros clamps to [-2, size + 1], which maps nan to -2 (max and min return
// their second operand on nan).
inline __attribute__((target("avx512f")))
__m512 pad_avx512(__m512 c, int64_t size, Padding padding, __m512* slope) {
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.f);
  if (padding == Padding::Border) {
    const __m512 hi_value = _mm512_set1_ps(float(size - 1));
    const __mmask16 lo = _mm512_cmp_ps_mask(c, zero, _CMP_LE_OQ);
    const __mmask16 hi = _mm512_cmp_ps_mask(c, hi_value, _CMP_GE_OQ);
    *slope = _mm512_mask_mov_ps(one, lo | hi, zero);
    return _mm512_mask_mov_ps(_mm512_mask_mov_ps(c, hi, hi_value), lo, zero);
  }
  *slope = one;
  return _mm512_min_ps(_mm512_max_ps(c, _mm512_set1_ps(-2.f)), _mm512_set1_ps(float(size + 1)));
}

// v[0] where from[0], v[1] where from[1], else 0.
inline __attribute__((target("avx512f")))
__m512 pick(const __mmask16* from, const __m512* v) {
  return _mm512_mask_mov_ps(_mm512_maskz_mov_ps(from[0], v[0]), from[1], v[1]);
}

// RowTaps::fill for 16 pixels at a time: the operations of flow_warp_position and
// bilinear_taps in the same order (g++ may fuse a multiply and an add, as nvcc does in the CUDA
// kernel: positions then differ from the scalar path's by rounding). Needs unit-stride flow rows
// and pairs_readable() planes.
inline __attribute__((target("avx512f")))
void fill_avx512(RowTaps<float, int32_t>& t, const float* flow, const Strided4& fs, int64_t b,
                 int64_t g, int64_t y, const Strided4& in, bool align_corners, Padding padding) {
  const float* flow_x = flow + b * fs.sn + (2 * g) * fs.sc + y * fs.sh;
  const float* flow_y = flow_x + fs.sc;
  const bool grads = !t.dx[0].empty();
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.f), minus = _mm512_set1_ps(-1.f);
  const __m512i izero = _mm512_setzero_si512(), ione = _mm512_set1_epi32(1);
  const __m512i w_in = _mm512_set1_epi32(static_cast<int32_t>(in.w));
  const __m512i h_in = _mm512_set1_epi32(static_cast<int32_t>(in.h));
  const __m512i sy = _mm512_set1_epi32(static_cast<int32_t>(in.sh));
  const float gy_base = linspace_pm1<float>(y, fs.h);
  for (int64_t x = 0; x < fs.w; x += 16) {
    const __mmask16 lanes = first_lanes(fs.w - x);
    const __m512 xf = _mm512_cvtepi32_ps(_mm512_add_epi32(
        _mm512_set1_epi32(static_cast<int32_t>(x)),
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)));
    const __m512 gx_base =
        fs.w > 1 ? _mm512_add_ps(_mm512_set1_ps(-1.f),
                                 _mm512_div_ps(_mm512_mul_ps(_mm512_set1_ps(2.f), xf),
                                               _mm512_set1_ps(float(fs.w - 1))))
                 : _mm512_set1_ps(-1.f);
    const __m512 fdx = _mm512_maskz_loadu_ps(lanes, flow_x + x);
    const __m512 fdy = _mm512_maskz_loadu_ps(lanes, flow_y + x);
    __m512 slope_x, slope_y;
    const __m512 gx = _mm512_add_ps(gx_base, _mm512_div_ps(fdx, _mm512_set1_ps(float(fs.w))));
    const __m512 gy = _mm512_add_ps(_mm512_set1_ps(gy_base),
                                    _mm512_div_ps(fdy, _mm512_set1_ps(float(fs.h))));
    const __m512 ix = pad_avx512(unnormalize_avx512(gx, in.w, align_corners), in.w, padding,
                                 &slope_x);
    const __m512 iy = pad_avx512(unnormalize_avx512(gy, in.h, align_corners), in.h, padding,
                                 &slope_y);
    const __m512 fx = _mm512_roundscale_ps(ix, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512 fy = _mm512_roundscale_ps(iy, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512i x0 = _mm512_cvttps_epi32(fx), y0 = _mm512_cvttps_epi32(fy);
    const __m512 tx = _mm512_sub_ps(ix, fx), ty = _mm512_sub_ps(iy, fy);
    const __m512 wx[2] = {_mm512_sub_ps(one, tx), tx}, wy[2] = {_mm512_sub_ps(one, ty), ty};
    const __m512i xs[2] = {x0, _mm512_add_epi32(x0, ione)};
    const __m512i ys[2] = {y0, _mm512_add_epi32(y0, ione)};
    __mmask16 x_in[2], y_in[2];
    for (int j = 0; j < 2; ++j) {
      x_in[j] = _mm512_cmpge_epi32_mask(xs[j], izero) & _mm512_cmplt_epi32_mask(xs[j], w_in);
      y_in[j] = _mm512_cmpge_epi32_mask(ys[j], izero) & _mm512_cmplt_epi32_mask(ys[j], h_in);
    }
    for (int r = 0; r < 2; ++r) {
      __m512 weight[2], ddx[2], ddy[2];
      __mmask16 used[2];
      for (int j = 0; j < 2; ++j) {
        const __mmask16 inside = x_in[j] & y_in[r] & lanes;
        weight[j] = _mm512_maskz_mul_ps(inside, wx[j], wy[r]);
        ddx[j] = _mm512_maskz_mul_ps(inside, _mm512_mul_ps(j ? one : minus, wy[r]), slope_x);
        ddy[j] = _mm512_maskz_mul_ps(inside, _mm512_mul_ps(wx[j], r ? one : minus), slope_y);
        used[j] = _mm512_cmp_ps_mask(weight[j], zero, _CMP_NEQ_UQ) |
                  _mm512_cmp_ps_mask(ddx[j], zero, _CMP_NEQ_UQ) |
                  _mm512_cmp_ps_mask(ddy[j], zero, _CMP_NEQ_UQ);
      }
      // The pair's left column: the used corner's, one left of it at the right edge.
      const __m512i col = _mm512_mask_mov_epi32(xs[1], used[0], xs[0]);
      const __m512i left = _mm512_max_epi32(
          izero, _mm512_min_epi32(col, _mm512_set1_epi32(static_cast<int32_t>(in.w - 2))));
      const __mmask16 any = used[0] | used[1];
      const __m512i offset = _mm512_maskz_add_epi32(
          any, _mm512_mullo_epi32(ys[r], sy), left);  // unit column stride
      _mm512_mask_storeu_epi32(t.offset[r].data() + x, lanes, offset);
      // Corner j lands in slot xs[j] - left (0 or 1).
      for (int slot = 0; slot < 2; ++slot) {
        const __m512i col_of_slot = _mm512_add_epi32(left, _mm512_set1_epi32(slot));
        __mmask16 from[2];
        for (int j = 0; j < 2; ++j) {
          from[j] = used[j] & _mm512_cmpeq_epi32_mask(xs[j], col_of_slot);
        }
        const int k = 2 * r + slot;
        _mm512_mask_storeu_ps(t.weight[k].data() + x, lanes, pick(from, weight));
        if (grads) {
          _mm512_mask_storeu_ps(t.dx[k].data() + x, lanes, pick(from, ddx));
          _mm512_mask_storeu_ps(t.dy[k].data() + x, lanes, pick(from, ddy));
        }
      }
    }
  }
}

// Unused corners (weight 0) are zeroed after the load, so they read nothing (see interpolate()).
inline __attribute__((target("avx512f")))
void sample_row_avx512(const float* plane, const RowTaps<float, int32_t>& t, int64_t W,
                       float* out) {
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t x = 0; x < W; x += 16) {
    const __mmask16 lanes = first_lanes(W - x);
    __m512 acc = zero;
    for (int r = 0; r < 2; ++r) {
      __m512 v[2];
      gather_pairs(plane, _mm512_maskz_loadu_epi32(lanes, t.offset[r].data() + x), &v[0], &v[1]);
      for (int j = 0; j < 2; ++j) {
        const __m512 w = _mm512_maskz_loadu_ps(lanes, t.weight[2 * r + j].data() + x);
        const __mmask16 used = _mm512_cmp_ps_mask(w, zero, _CMP_NEQ_UQ);
        acc = _mm512_fmadd_ps(w, _mm512_maskz_mov_ps(used, v[j]), acc);
      }
    }
    _mm512_mask_storeu_ps(out + x, lanes, acc);
  }
}

// base[idx[i]] += val[i] for the lanes in `lanes`, where lanes may share an index. Each lane
// first adds the values of the earlier lanes with its index (nearest first); the scatter then
// stores the last lane of each index last, which holds the full sum.
inline __attribute__((target("avx512f,avx512cd")))
void scatter_add_avx512(float* base, __m512i idx, __m512 val, __mmask16 lanes) {
  val = _mm512_maskz_mov_ps(lanes, val);  // other lanes may share an index and must add 0
  __m512i pending = _mm512_maskz_conflict_epi32(lanes, idx);
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i last_bit = _mm512_set1_epi32(31);
  __m512 sum = val;
  for (__mmask16 todo = _mm512_test_epi32_mask(pending, pending); todo != 0;
       todo = _mm512_test_epi32_mask(pending, pending)) {
    const __m512i lane = _mm512_sub_epi32(last_bit, _mm512_lzcnt_epi32(pending));
    sum = _mm512_mask_add_ps(sum, todo, sum, _mm512_permutexvar_ps(lane, val));
    pending = _mm512_mask_andnot_epi32(pending, todo, _mm512_sllv_epi32(one, lane), pending);
  }
  const __m512 old = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), lanes, idx, base, 4);
  _mm512_mask_i32scatter_ps(base, lanes, idx, _mm512_add_ps(old, sum), 4);
}

// 16 pixels at a time: pair gathers of the input values, and scatter_add_avx512 of the
// input-gradient terms.
inline __attribute__((target("avx512f,avx512cd")))
void backprop_row_avx512(const float* plane, float* gplane, const float* go, const float* scale,
                         const RowTaps<float, int32_t>& t, int64_t W, float* gx, float* gy,
                         float* gv) {
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t x = 0; x < W; x += 16) {
    const __mmask16 lanes = first_lanes(W - x);
    const __m512 g = _mm512_maskz_loadu_ps(lanes, go + x);
    const __m512 g_in = scale ? _mm512_mul_ps(g, _mm512_maskz_loadu_ps(lanes, scale + x)) : g;
    __m512 vx = zero, vy = zero, vv = zero;
    for (int r = 0; r < 2; ++r) {
      const __m512i idx = _mm512_maskz_loadu_epi32(lanes, t.offset[r].data() + x);
      __m512 v[2];
      gather_pairs(plane, idx, &v[0], &v[1]);
      for (int j = 0; j < 2; ++j) {
        const int k = 2 * r + j;
        const __m512 w = _mm512_maskz_loadu_ps(lanes, t.weight[k].data() + x);
        const __m512 dx = _mm512_maskz_loadu_ps(lanes, t.dx[k].data() + x);
        const __m512 dy = _mm512_maskz_loadu_ps(lanes, t.dy[k].data() + x);
        const __mmask16 used = _mm512_cmp_ps_mask(w, zero, _CMP_NEQ_UQ) |
                               _mm512_cmp_ps_mask(dx, zero, _CMP_NEQ_UQ) |
                               _mm512_cmp_ps_mask(dy, zero, _CMP_NEQ_UQ);
        const __m512 value = _mm512_maskz_mov_ps(used, v[j]);
        vx = _mm512_fmadd_ps(dx, value, vx);
        vy = _mm512_fmadd_ps(dy, value, vy);
        vv = _mm512_fmadd_ps(w, value, vv);
        scatter_add_avx512(gplane, _mm512_add_epi32(idx, _mm512_set1_epi32(j)),
                           _mm512_mul_ps(w, g_in), used);
      }
    }
    float* sums[3] = {gx, gy, gv};
    const __m512 terms[3] = {vx, vy, vv};
    for (int q = 0; q < 3; ++q) {
      if (!sums[q]) continue;
      _mm512_mask_storeu_ps(sums[q] + x, lanes, _mm512_fmadd_ps(
          terms[q], g, _mm512_maskz_loadu_ps(lanes, sums[q] + x)));
    }
  }
}
#endif

// taps.fill(...), 16 pixels at a time where possible.
template <typename T, typename Index>
void fill_taps(RowTaps<T, Index>& taps, const T* flow, const Strided4& fs, int64_t b, int64_t g,
               int64_t y, const Strided4& in, bool align_corners, Padding padding) {
#ifdef RTSEG_AVX512_DISPATCH
  if constexpr (std::is_same_v<T, float> && std::is_same_v<Index, int32_t>) {
    if (cpu_has_avx512() && pairs_readable(in) && fs.sw == 1) {
      return fill_avx512(taps, flow, fs, b, g, y, in, align_corners, padding);
    }
  }
#endif
  taps.fill(flow, fs, b, g, y, in, align_corners, padding);
}

// out[x] for x < W: one channel's row from its plane.
template <typename T, typename Index>
void sample_row(const T* plane, const Strided4& in, const RowTaps<T, Index>& t, int64_t W,
                T* out) {
#ifdef RTSEG_AVX512_DISPATCH
  if constexpr (std::is_same_v<T, float> && std::is_same_v<Index, int32_t>) {
    if (cpu_has_avx512() && pairs_readable(in)) return sample_row_avx512(plane, t, W, out);
  }
#endif
  for (int64_t x = 0; x < W; ++x) {
    T v = T(0);
    for (int k = 0; k < 4; ++k) {
      if (t.weight[k][x] != T(0)) v += t.weight[k][x] * plane[t.corner_offset(k, x, in.sw)];
    }
    out[x] = v;
  }
}

// One channel's row of gradient go: scatters go (times scale[x] where scale is given) into its
// input-gradient plane and adds go times the channel's sampled value's derivatives along x and y
// (before the d(ix)/d(dx) factor) to gx and gy, and go times the value to gv where given.
template <typename T, typename Index>
void backprop_row(const T* plane, T* gplane, const Strided4& in, const T* go, const T* scale,
                  const RowTaps<T, Index>& t, int64_t W, T* gx, T* gy, T* gv) {
#ifdef RTSEG_AVX512_DISPATCH
  if constexpr (std::is_same_v<T, float> && std::is_same_v<Index, int32_t>) {
    if (cpu_has_avx512() && pairs_readable(in)) {
      return backprop_row_avx512(plane, gplane, go, scale, t, W, gx, gy, gv);
    }
  }
#endif
  for (int64_t x = 0; x < W; ++x) {
    T vx = 0, vy = 0, vv = 0;
    const T g_in = scale ? go[x] * scale[x] : go[x];
    for (int k = 0; k < 4; ++k) {
      if (!t.used(k, x)) continue;  // outside: see interpolate()
      const Index o = t.corner_offset(k, x, in.sw);
      const T v = plane[o];
      gplane[o] += t.weight[k][x] * g_in;
      vx += t.dx[k][x] * v;
      vy += t.dy[k][x] * v;
      vv += t.weight[k][x] * v;
    }
    gx[x] += vx * go[x];
    gy[x] += vy * go[x];
    if (gv) gv[x] += vv * go[x];
  }
}

}  // namespace rtseg
