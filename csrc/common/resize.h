#pragma once
// Index math of scalar_weighted_sum's resizing (reference.resize_to), shared by its forward and
// backward: F.interpolate(mode="nearest") source indices and F.max_pool2d(3, stride=2, padding=1)
// windows with PyTorch's arg-max rule. No torch includes.
#include "common/core.h"

#include <cmath>

namespace rtseg {

// How one input reaches the output size.
enum class Resize : int {
  Identity = 0,  // same size
  Nearest = 1,   // smaller in both dims: nearest
  PoolNearest = 2,  // otherwise: 3x3/2 max pool, then nearest (identity if the pooled size fits)
};

template <typename Size> RTSEG_HD Resize resize_kind(Size h, Size w, Size H, Size W) {
  if (h == H && w == W) return Resize::Identity;
  return h <= H && w <= W ? Resize::Nearest : Resize::PoolNearest;
}

// Output size of max_pool2d(kernel 3, stride 2, padding 1).
RTSEG_HD int64_t pooled_size(int64_t n) { return (n - 1) / 2 + 1; }

// F.interpolate(mode="nearest") computes its scale and the source index in float32:
// src = min(floor(dst * float(in / out)), in - 1). Matching that rounding keeps indices exact.
RTSEG_HD float nearest_scale(int64_t in, int64_t out) {
  return static_cast<float>(in) / static_cast<float>(out);
}
RTSEG_HD int64_t nearest_source(int64_t dst, float scale, int64_t in) {
  const int64_t src = static_cast<int64_t>(floorf(static_cast<float>(dst) * scale));
  return src < in - 1 ? src : in - 1;
}

// Rows (or columns) [begin, end) of the 3x3/2 window of pooled index p on an axis of size n.
struct Window {
  int64_t begin, end;
};
RTSEG_HD Window pool_window(int64_t p, int64_t n) {
  const int64_t begin = 2 * p - 1 < 0 ? 0 : 2 * p - 1;
  const int64_t end = 2 * p + 2 > n ? n : 2 * p + 2;
  return {begin, end};
}

// max_pool2d's choice in a window: row-major scan that takes a value when it is greater than the
// current maximum or NaN (so the first maximum wins, and the last NaN); starts at the window's
// first element with -inf.
template <typename T> RTSEG_HD bool pool_takes(T value, T current) {
  return value > current || value != value;
}

}  // namespace rtseg
