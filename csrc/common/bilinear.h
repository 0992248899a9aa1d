#pragma once
// Bilinear sampling math shared by the CPU and CUDA kernels: grid_sample's coordinate rules
// (align_corners, zeros/border padding) reduced to four corner offsets and weights per sample.
#include "common/core.h"

#include <cmath>
#include <type_traits>

namespace rtseg {

enum class Padding : int { Zeros = 0, Border = 1 };

template <typename T> RTSEG_HD T rt_floor(T v) {
#if defined(__CUDA_ARCH__)
  return floor(v);
#else
  return std::floor(v);
#endif
}
template <typename T> RTSEG_HD T rt_min(T a, T b) { return a < b ? a : b; }
template <typename T> RTSEG_HD T rt_max(T a, T b) { return a > b ? a : b; }

// torch.linspace(-1, 1, n)[i] up to rounding.
template <typename T> RTSEG_HD T linspace_pm1(int64_t i, int64_t n) {
  return n > 1 ? T(-1) + T(2) * T(i) / T(n - 1) : T(-1);
}

// Normalised coordinate in [-1, 1] -> pixel coordinate, and its derivative.
template <typename T> RTSEG_HD T unnormalize(T coord, int64_t size, bool align_corners) {
  return align_corners ? (coord + T(1)) * T(0.5) * T(size - 1)
                       : ((coord + T(1)) * T(size) - T(1)) * T(0.5);
}
template <typename T> RTSEG_HD T unnormalize_slope(int64_t size, bool align_corners) {
  return align_corners ? T(0.5) * T(size - 1) : T(0.5) * T(size);
}

// The four corners of one bilinear sample: offsets into a strided plane and their weights, plus
// the weights' derivatives with respect to the sample's pixel coordinates (ix, iy). Corners
// outside the plane get weight 0, derivative 0 and offset 0, so kernels read without branches and
// never out of bounds.
template <typename T> struct BilinearTaps {
  int64_t offset[4];  // nw, ne, sw, se
  int64_t row[4], col[4];  // the corners' pixel indices (0 outside the plane)
  T weight[4];
  T dweight_dx[4];
  T dweight_dy[4];
};

// Border padding clamps to the plane; the clamp's derivative is 0 at and beyond the edges, as in
// grid_sample (its backward treats the edges themselves as clipped).
template <typename T> RTSEG_HD T clip_to_plane(T coord, int64_t size, T* slope) {
  const T hi = T(size - 1);
  if (coord <= T(0)) { *slope = T(0); return T(0); }
  if (coord >= hi) { *slope = T(0); return hi; }
  *slope = T(1);
  return coord;
}

// Sample at pixel coordinates (ix, iy) of an h x w plane with strides (sy, sx).
template <typename T>
RTSEG_HD BilinearTaps<T> bilinear_taps(T ix, T iy, int64_t h, int64_t w, int64_t sy, int64_t sx,
                                       Padding padding) {
  T slope_x = T(1), slope_y = T(1);
  if (padding == Padding::Border) {
    ix = clip_to_plane(ix, w, &slope_x);
    iy = clip_to_plane(iy, h, &slope_y);
  } else {
    // Any coordinate beyond [-1, size] samples only zeros; clamping keeps the integer conversion
    // defined for huge or infinite flows without changing the result. NaN maps to -2 (zeros).
    ix = rt_min(rt_max(ix, T(-2)), T(w + 1));
    iy = rt_min(rt_max(iy, T(-2)), T(h + 1));
    if (!(ix == ix)) ix = T(-2);
    if (!(iy == iy)) iy = T(-2);
  }
  const T fx = rt_floor(ix), fy = rt_floor(iy);
  const int64_t x0 = static_cast<int64_t>(fx), y0 = static_cast<int64_t>(fy);
  const T tx = ix - fx, ty = iy - fy;
  const int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1};
  const T wx[4] = {T(1) - tx, tx, T(1) - tx, tx};
  const T wy[4] = {T(1) - ty, T(1) - ty, ty, ty};
  const T dwx[4] = {T(-1), T(1), T(-1), T(1)};
  const T dwy[4] = {T(-1), T(-1), T(1), T(1)};
  BilinearTaps<T> taps;
RTSEG_UNROLL
  for (int k = 0; k < 4; ++k) {
    const bool inside = xs[k] >= 0 && xs[k] < w && ys[k] >= 0 && ys[k] < h;
    taps.offset[k] = inside ? ys[k] * sy + xs[k] * sx : 0;
    taps.row[k] = inside ? ys[k] : 0;
    taps.col[k] = inside ? xs[k] : 0;
    taps.weight[k] = inside ? wx[k] * wy[k] : T(0);
    taps.dweight_dx[k] = inside ? dwx[k] * wy[k] * slope_x : T(0);
    taps.dweight_dy[k] = inside ? wx[k] * dwy[k] * slope_y : T(0);
  }
  return taps;
}

// Weighted sum of the used corners; load(offset) reads one. Unused corners are skipped rather
// than multiplied by 0, so an inf or nan stored at offset 0 never leaks in (as in grid_sample).
// Taps is BilinearTaps<T> or SampleTaps<T>.
template <typename Taps, typename Load>
RTSEG_HD auto interpolate(const Taps& taps, Load load)
    -> std::remove_cv_t<std::remove_reference_t<decltype(taps.weight[0])>> {
  using T = std::remove_cv_t<std::remove_reference_t<decltype(taps.weight[0])>>;
  T v = T(0);
  RTSEG_UNROLL
  for (int k = 0; k < 4; ++k) {
    if (taps.weight[k] != T(0)) v += taps.weight[k] * load(taps.offset[k]);
  }
  return v;
}

// The part of BilinearTaps a forward pass reads: a third of its size, for per-row buffers.
template <typename T> struct SampleTaps {
  int64_t offset[4];
  T weight[4];
};
template <typename T> RTSEG_HD SampleTaps<T> sample_taps(const BilinearTaps<T>& t) {
  SampleTaps<T> s;
  RTSEG_UNROLL
  for (int k = 0; k < 4; ++k) {
    s.offset[k] = t.offset[k];
    s.weight[k] = t.weight[k];
  }
  return s;
}

// Whether corner k lies inside the plane. A corner can be inside with weight 0 (an exact grid
// position) and still carry a derivative, so gradients test this rather than the weight.
template <typename T> RTSEG_HD bool corner_used(const BilinearTaps<T>& taps, int k) {
  return taps.weight[k] != T(0) || taps.dweight_dx[k] != T(0) || taps.dweight_dy[k] != T(0);
}

// grouped_flow_warp's sampling position for output pixel (x, y) of an H x W output displaced by
// (dx, dy) pixels of the output grid, in pixel coordinates of the h x w input. Also returns
// d(ix)/d(dx) and d(iy)/d(dy).
template <typename T> struct FlowWarpPosition {
  T ix, iy, dix_ddx, diy_ddy;
};
template <typename T>
RTSEG_HD FlowWarpPosition<T> flow_warp_position(int64_t x, int64_t y, T dx, T dy, int64_t H,
                                                int64_t W, int64_t h, int64_t w,
                                                bool align_corners) {
  FlowWarpPosition<T> p;
  p.ix = unnormalize(linspace_pm1<T>(x, W) + dx / T(W), w, align_corners);
  p.iy = unnormalize(linspace_pm1<T>(y, H) + dy / T(H), h, align_corners);
  p.dix_ddx = unnormalize_slope<T>(w, align_corners) / T(W);
  p.diy_ddy = unnormalize_slope<T>(h, align_corners) / T(H);
  return p;
}

// F.interpolate(mode="bilinear", align_corners=True) along one axis: output index `dst` of
// `out_size` reads input indices i0 and i1 (i1 == i0 at the last input index) with weights
// 1 - lambda and lambda, as in upsample_bilinear2d.
template <typename T> struct AxisTaps {
  int64_t i0, i1;
  T lambda;
};
template <typename T>
RTSEG_HD AxisTaps<T> align_corners_axis_taps(int64_t dst, int64_t in_size, int64_t out_size) {
  const T scale = out_size > 1 ? T(in_size - 1) / T(out_size - 1) : T(0);
  const T src = scale * T(dst);
  AxisTaps<T> t;
  t.i0 = rt_min(static_cast<int64_t>(src), in_size - 1);
  t.i1 = t.i0 < in_size - 1 ? t.i0 + 1 : t.i0;
  t.lambda = rt_min(rt_max(src - T(t.i0), T(0)), T(1));
  return t;
}

// Pixel (row, col) of the H x W align_corners=True upsampling of an h x w plane with strides
// (sy, sx), as four taps of that plane: lets kernels read the upsampled map without storing it.
template <typename T> struct UpsampleTaps {
  int64_t offset[4];  // nw, ne, sw, se
  T weight[4];
};
template <typename T>
RTSEG_HD UpsampleTaps<T> align_corners_upsample_taps(int64_t row, int64_t col, int64_t H,
                                                     int64_t W, int64_t h, int64_t w, int64_t sy,
                                                     int64_t sx) {
  const AxisTaps<T> ty = align_corners_axis_taps<T>(row, h, H);
  const AxisTaps<T> tx = align_corners_axis_taps<T>(col, w, W);
  UpsampleTaps<T> taps;
  taps.offset[0] = ty.i0 * sy + tx.i0 * sx;
  taps.offset[1] = ty.i0 * sy + tx.i1 * sx;
  taps.offset[2] = ty.i1 * sy + tx.i0 * sx;
  taps.offset[3] = ty.i1 * sy + tx.i1 * sx;
  taps.weight[0] = (T(1) - ty.lambda) * (T(1) - tx.lambda);
  taps.weight[1] = (T(1) - ty.lambda) * tx.lambda;
  taps.weight[2] = ty.lambda * (T(1) - tx.lambda);
  taps.weight[3] = ty.lambda * tx.lambda;
  return taps;
}

}  // namespace rtseg
