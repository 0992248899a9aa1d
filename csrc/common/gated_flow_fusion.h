#pragma once
// Per-pixel math of gated_flow_fusion shared by the CPU and CUDA kernels (no torch includes).
#include "common/bilinear.h"

namespace rtseg {

template <typename T> RTSEG_HD T rt_tanh(T v) {
#if defined(__CUDA_ARCH__)
  return tanh(v);
#else
  return std::tanh(v);
#endif
}

// The gate 1 + tanh(logit) and its derivative with respect to the logit.
template <typename T> struct Gate {
  T scale, dscale;
};
template <typename T> RTSEG_HD Gate<T> gate_of(T logit) {
  const T t = rt_tanh(logit);
  return {T(1) + t, T(1) - t * t};
}

// Where both warps of output pixel (x, y) sample: high and the upsampled low map are both
// H x W, so the flow -> position rule is grouped_flow_warp's with equal input and output sizes.
template <typename T>
RTSEG_HD BilinearTaps<T> fusion_warp_corners(int64_t x, int64_t y, T dx, T dy, int64_t H,
                                             int64_t W, int64_t sy, int64_t sx) {
  const auto pos = flow_warp_position<T>(x, y, dx, dy, H, W, H, W, true);
  return bilinear_taps<T>(pos.ix, pos.iy, H, W, sy, sx, Padding::Zeros);
}

// The warp of the upsampled low map at one pixel as 16 taps of the h x w low plane: each of the
// four warp corners in the H x W upsampled grid is itself four taps of low. Weights and their
// derivatives with respect to the sampling position (in pixels of the upsampled grid) are the
// products of both levels' weights. Neighbouring upsampled pixels mostly read the same low
// pixels, so taps with equal offsets are merged into the first of them and the others get zero
// coefficients, as do corners outside the grid: kernels skip taps whose coefficients are all 0.
template <typename T> struct UpsampledWarpTaps {
  int64_t offset[16];
  T weight[16], dweight_dx[16], dweight_dy[16];
};
template <typename T>
RTSEG_HD UpsampledWarpTaps<T> upsampled_warp_taps(const BilinearTaps<T>& corners, int64_t H,
                                                  int64_t W, int64_t h, int64_t w, int64_t sy,
                                                  int64_t sx) {
  UpsampledWarpTaps<T> taps;
  RTSEG_UNROLL
  for (int k = 0; k < 4; ++k) {
    const auto up = align_corners_upsample_taps<T>(corners.row[k], corners.col[k], H, W, h, w, sy,
                                                   sx);
    RTSEG_UNROLL
    for (int j = 0; j < 4; ++j) {
      taps.offset[4 * k + j] = up.offset[j];
      taps.weight[4 * k + j] = corners.weight[k] * up.weight[j];
      taps.dweight_dx[4 * k + j] = corners.dweight_dx[k] * up.weight[j];
      taps.dweight_dy[4 * k + j] = corners.dweight_dy[k] * up.weight[j];
    }
  }
  RTSEG_UNROLL
  for (int i = 1; i < 16; ++i) {
    bool merged = false;
    RTSEG_UNROLL
    for (int j = 0; j < i; ++j) {
      // Earlier duplicates were already merged into their first occurrence, so the first equal
      // offset found is that occurrence.
      if (!merged && taps.offset[j] == taps.offset[i]) {
        taps.weight[j] += taps.weight[i];
        taps.dweight_dx[j] += taps.dweight_dx[i];
        taps.dweight_dy[j] += taps.dweight_dy[i];
        taps.weight[i] = taps.dweight_dx[i] = taps.dweight_dy[i] = T(0);
        merged = true;
      }
    }
  }
  return taps;
}

// One axis of the same low warp in separable form (both bilinear levels are separable): the
// warp's two corners around position `pos` of the size-n upsampled axis (zero padding, as in
// bilinear_taps) read through the align_corners upsampling of the size-m low axis
// (align_corners_axis_taps), as four entries (corner, upsampling tap) with their low index, weight
// and derivative with respect to pos. An entry reading the same index as an earlier entry of an
// inside corner is merged into it; merged entries and those of corners outside the axis have
// index 0 and zero coefficients. upsampled_warp_taps' tap (r, c) is row entry r times column entry
// c: weight ay.weight[r] * ax.weight[c], d/dx ay.weight[r] * ax.dweight[c], d/dy
// ay.dweight[r] * ax.weight[c]. That is 8 indices and 16 coefficients per pixel instead of 16
// offsets and 48 coefficients, which is what keeps the CUDA kernels' registers down.
template <typename T> struct LowAxis {
  int32_t index[4];  // a row or column index: spatial sizes are below 2^31
  T weight[4], dweight[4];
  RTSEG_HD bool unused(int e) const { return weight[e] == T(0) && dweight[e] == T(0); }
};
template <typename T> RTSEG_HD LowAxis<T> low_axis(T pos, int64_t n, int64_t m) {
  pos = rt_min(rt_max(pos, T(-2)), T(n + 1));  // see bilinear_taps
  if (!(pos == pos)) pos = T(-2);
  const T f = rt_floor(pos);
  const int64_t i0 = static_cast<int64_t>(f);
  const T t = pos - f;
  LowAxis<T> axis;
  bool live[4];  // an entry of an inside corner, not merged away
  RTSEG_UNROLL
  for (int j = 0; j < 2; ++j) {
    const int64_t i = i0 + j;
    const bool inside = i >= 0 && i < n;
    live[2 * j] = live[2 * j + 1] = inside;
    const T w = j ? t : T(1) - t, d = j ? T(1) : T(-1);
    const auto up = align_corners_axis_taps<T>(inside ? i : 0, m, n);
    axis.index[2 * j] = inside ? static_cast<int32_t>(up.i0) : 0;
    axis.index[2 * j + 1] = inside ? static_cast<int32_t>(up.i1) : 0;
    axis.weight[2 * j] = inside ? w * (T(1) - up.lambda) : T(0);
    axis.weight[2 * j + 1] = inside ? w * up.lambda : T(0);
    axis.dweight[2 * j] = inside ? d * (T(1) - up.lambda) : T(0);
    axis.dweight[2 * j + 1] = inside ? d * up.lambda : T(0);
  }
  RTSEG_UNROLL
  for (int e = 1; e < 4; ++e) {
    RTSEG_UNROLL
    for (int k = 0; k < e; ++k) {
      if (live[e] && live[k] && axis.index[k] == axis.index[e]) {
        axis.weight[k] += axis.weight[e];
        axis.dweight[k] += axis.dweight[e];
        axis.index[e] = 0;
        axis.weight[e] = axis.dweight[e] = T(0);
        live[e] = false;
      }
    }
  }
  return axis;
}

template <typename T> RTSEG_HD bool tap_is_zero(const UpsampledWarpTaps<T>& taps, int i) {
  return taps.weight[i] == T(0) && taps.dweight_dx[i] == T(0) && taps.dweight_dy[i] == T(0);
}

// Backward: per pixel and group, sums over the group's channels of grad_output times the warped
// value (for the gates) and times its derivatives along x and y (for the flows). The chain rule
// to the flow and gate gradients is applied once per pixel on these sums.
enum FusionSum : int {
  kHighDx = 0, kHighDy, kLowDx, kLowDy, kHighValue, kLowValue, kFusionSums
};

}  // namespace rtseg
