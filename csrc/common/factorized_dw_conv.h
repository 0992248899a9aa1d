#pragma once
// factorized_dw_conv math shared by the CPU and CUDA kernels. The kernels only implement
// order="vh" (a 3-tap conv along H, then one along W); order="hv" is the same computation on
// H/W-transposed views (transpose_hw), with the stages' parameters swapped.
#include "common/core.h"

namespace rtseg {

// Per-channel parameters of one stage (conv -> affine -> PReLU), type-erased so that the CUDA
// launchers can take them: weight holds 3 contiguous taps per channel (offsets -d, 0, +d along the
// stage's axis); scale, shift and prelu are (C,) or null (1, 0 and identity).
struct DWStagePtrs {
  const void* weight;
  const void* scale;
  const void* shift;
  const void* prelu;
};

// Layout of the per-channel gradient partials the backward kernels reduce: 6 values per stage,
// first stage then second.
constexpr int kDWGradWeight = 0;  // 3 taps
constexpr int kDWGradScale = 3;
constexpr int kDWGradShift = 4;
constexpr int kDWGradPrelu = 5;
constexpr int kDWGradsPerStage = 6;
constexpr int kDWGrads = 2 * kDWGradsPerStage;

template <typename A>
struct DWStage {
  A w0, w1, w2, scale, shift, slope;
  bool prelu;

  // `to_acc` converts a stored T to A (the CUDA side cannot static_cast half types).
  template <typename T, typename Convert>
  RTSEG_HD static DWStage load(const DWStagePtrs& p, int64_t c, Convert to_acc) {
    const T* w = static_cast<const T*>(p.weight) + 3 * c;
    DWStage s;
    s.w0 = to_acc(w[0]);
    s.w1 = to_acc(w[1]);
    s.w2 = to_acc(w[2]);
    s.scale = p.scale ? to_acc(static_cast<const T*>(p.scale)[c]) : A(1);
    s.shift = p.shift ? to_acc(static_cast<const T*>(p.shift)[c]) : A(0);
    s.prelu = p.prelu != nullptr;
    s.slope = s.prelu ? to_acc(static_cast<const T*>(p.prelu)[c]) : A(1);
    return s;
  }

  // Taps a, b, c at offsets -d, 0, +d (zero outside the image).
  RTSEG_HD A conv(A a, A b, A c) const { return w0 * a + w1 * b + w2 * c; }
  // The transposed conv: the gradient at a position from the gradients at offsets -d, 0, +d.
  RTSEG_HD A conv_transposed(A a, A b, A c) const { return w2 * a + w1 * b + w0 * c; }
  RTSEG_HD A affine(A u) const { return scale * u + shift; }
  // max(z, 0) + slope * min(z, 0)
  RTSEG_HD A act(A z) const { return prelu && !(z > A(0)) ? slope * z : z; }
  // d act / dz; at z == 0 both branches count, as autograd differentiates the clamp pair.
  RTSEG_HD A act_grad(A z) const {
    return prelu ? A(z >= A(0) ? 1 : 0) + (z <= A(0) ? slope : A(0)) : A(1);
  }
  // d act / d slope
  RTSEG_HD A slope_grad(A z) const { return z < A(0) ? z : A(0); }
};

// The same tensor seen with H and W exchanged.
RTSEG_HD Strided4 transpose_hw(Strided4 s) {
  return {s.n, s.c, s.w, s.h, s.sn, s.sc, s.sw, s.sh};
}

}  // namespace rtseg
