// gated_flow_fusion on the CPU: per output row and group, the taps of both warps (the low warp's
// merged 16 taps without the zero ones) are computed once and reused by all of the group's
// channels; the upsampled low map is never stored. The high warp samples whole rows of a channel
// (16 pixels at a time on AVX-512 CPUs: cpu/bilinear_avx512.h), the low warp a pixel at a time.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/gated_flow_fusion.h"
#include "cpu/bilinear_avx512.h"
#include "gated_flow_fusion.h"

namespace rtseg {
namespace {

template <typename T> struct FusionArgs {
  const T *high, *low, *flow_high, *flow_low, *gate_high, *gate_low;
  Strided4 hs, ls, fhs, fls, ghs, gls;
  int64_t groups;
};

template <typename T>
FusionArgs<T> fusion_args(const at::Tensor& high, const at::Tensor& low,
                          const at::Tensor& flow_high, const at::Tensor& flow_low,
                          const at::Tensor& gate_high, const at::Tensor& gate_low,
                          int64_t groups) {
  return {high.const_data_ptr<T>(), low.const_data_ptr<T>(), flow_high.const_data_ptr<T>(),
          flow_low.const_data_ptr<T>(), gate_high.const_data_ptr<T>(),
          gate_low.const_data_ptr<T>(), strided4(high), strided4(low), strided4(flow_high),
          strided4(flow_low), strided4(gate_high), strided4(gate_low), groups};
}

// 1 + tanh of both gate maps (scale) and its derivative (dscale), (B, H, W) each, computed once
// rather than once per group and channel slice. Scales are stored apart so rows of them load as
// vectors.
template <typename T> struct GateMaps {
  std::vector<T> high, low, dhigh, dlow;
  explicit GateMaps(const FusionArgs<T>& a)
      : high(a.hs.n * a.hs.h * a.hs.w), low(high.size()), dhigh(high.size()), dlow(high.size()) {
    const int64_t H = a.hs.h, W = a.hs.w;
    at::parallel_for(0, a.hs.n * H, grain_for(W), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t y = row % H, b = row / H;
        for (int64_t x = 0; x < W; ++x) {
          const auto gh = gate_of(a.gate_high[b * a.ghs.sn + y * a.ghs.sh + x * a.ghs.sw]);
          const auto gl = gate_of(a.gate_low[b * a.gls.sn + y * a.gls.sh + x * a.gls.sw]);
          high[row * W + x] = gh.scale;
          dhigh[row * W + x] = gh.dscale;
          low[row * W + x] = gl.scale;
          dlow[row * W + x] = gl.dscale;
        }
      }
    });
  }
};

// Taps and gates of one output row of one group. Pixel x owns the merged low taps
// [low_begin[x], low_begin[x + 1]).
template <typename T, typename Index> struct FusionRow {
  RowTaps<T, Index> high;
  const T* gate_high = nullptr;  // scales of the row
  const T* gate_low = nullptr;
  std::vector<int64_t> low_begin, low_offset;
  std::vector<T> low_weight, low_dx, low_dy;
  FusionRow(int64_t W, bool grads)
      : high(W, grads), low_begin(W + 1), low_offset(16 * W),
        low_weight(16 * W), low_dx(16 * W), low_dy(16 * W) {}

  void fill(const FusionArgs<T>& a, const GateMaps<T>& gates, int64_t b, int64_t g, int64_t y) {
    const int64_t H = a.hs.h, W = a.hs.w;
    const T* fl = a.flow_low + b * a.fls.sn + 2 * g * a.fls.sc + y * a.fls.sh;
    gate_high = gates.high.data() + (b * H + y) * W;
    gate_low = gates.low.data() + (b * H + y) * W;
    // fusion_warp_corners' warp of high.
    fill_taps(high, a.flow_high, a.fhs, b, g, y, a.hs, true, Padding::Zeros);
    int64_t n = 0;
    for (int64_t x = 0; x < W; ++x) {
      const auto corners = fusion_warp_corners<T>(x, y, fl[x * a.fls.sw],
                                                  fl[a.fls.sc + x * a.fls.sw], H, W, W, 1);
      const auto taps = upsampled_warp_taps<T>(corners, H, W, a.ls.h, a.ls.w, a.ls.sh, a.ls.sw);
      low_begin[x] = n;
      for (int i = 0; i < 16; ++i) {
        if (tap_is_zero(taps, i)) continue;
        low_offset[n] = taps.offset[i];
        low_weight[n] = taps.weight[i];
        low_dx[n] = taps.dweight_dx[i];
        low_dy[n] = taps.dweight_dy[i];
        ++n;
      }
    }
    low_begin[W] = n;
  }
};

// Channels per inner loop: each tap's address and weights are loaded once for all of them.
constexpr int64_t kChannelBlock = 4;

// Output row y of channels [c, c + N); high_rows: N rows of W for the high warp's samples.
template <int N, typename T, typename Index>
void forward_channels(const FusionArgs<T>& a, const FusionRow<T, Index>& row, int64_t b,
                      int64_t c, int64_t y, T* out, const Strided4& os, T* high_rows) {
  const int64_t W = a.hs.w;
  const T* lp[N];
  const T* vh[N];
  T* o[N];
  for (int j = 0; j < N; ++j) {
    sample_row(a.high + b * a.hs.sn + (c + j) * a.hs.sc, a.hs, row.high, W, high_rows + j * W);
    vh[j] = high_rows + j * W;
    lp[j] = a.low + b * a.ls.sn + (c + j) * a.ls.sc;
    o[j] = out + b * os.sn + (c + j) * os.sc + y * os.sh;
  }
  for (int64_t x = 0; x < W; ++x) {
    T vl[N] = {};
    for (int64_t m = row.low_begin[x]; m < row.low_begin[x + 1]; ++m) {
      const int64_t offset = row.low_offset[m];
      const T weight = row.low_weight[m];
      for (int j = 0; j < N; ++j) vl[j] += weight * lp[j][offset];
    }
    const T scale_high = row.gate_high[x], scale_low = row.gate_low[x];
    for (int j = 0; j < N; ++j) o[j][x * os.sw] = scale_low * vl[j] + scale_high * vh[j][x];
  }
}

template <typename T, typename Index>
void forward(const FusionArgs<T>& a, T* out, Strided4 os) {
  const GateMaps<T> gates(a);
  const int64_t B = a.hs.n, H = a.hs.h, W = a.hs.w, cg = a.hs.c / a.groups;
  at::parallel_for(0, B * a.groups * H, grain_for(W * cg), [&](int64_t begin, int64_t end) {
    FusionRow<T, Index> row(W, false);
    std::vector<T> high_rows(kChannelBlock * W);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t y = task % H, g = (task / H) % a.groups, b = task / (H * a.groups);
      row.fill(a, gates, b, g, y);
      int64_t c = g * cg;
      for (; c + kChannelBlock <= (g + 1) * cg; c += kChannelBlock)
        forward_channels<kChannelBlock>(a, row, b, c, y, out, os, high_rows.data());
      for (; c < (g + 1) * cg; ++c) forward_channels<1>(a, row, b, c, y, out, os, high_rows.data());
    }
  });
}

// Gradient row y of channels [c, c + N): scatters into grad_high and grad_low and adds the
// channels' FusionSums to `sums` (kFusionSums rows of W). go_rows: N rows of W for grad_output
// rows of non-unit stride.
template <int N, typename T, typename Index>
void backward_channels(const FusionArgs<T>& a, const FusionRow<T, Index>& row, int64_t b,
                       int64_t c, int64_t y, const T* grad_out, const Strided4& gs, T* grad_high,
                       T* grad_low, T* sums, T* go_rows) {
  const int64_t W = a.hs.w;
  const T* lp[N];
  const T* go[N];
  T* glp[N];
  for (int j = 0; j < N; ++j) {
    go[j] = grad_out + b * gs.sn + (c + j) * gs.sc + y * gs.sh;
    if (gs.sw != 1) {
      for (int64_t x = 0; x < W; ++x) go_rows[j * W + x] = go[j][x * gs.sw];
      go[j] = go_rows + j * W;
    }
    const int64_t plane = b * a.hs.sn + (c + j) * a.hs.sc;
    backprop_row(a.high + plane, grad_high + plane, a.hs, go[j], row.gate_high, row.high, W,
                 sums + kHighDx * W, sums + kHighDy * W, sums + kHighValue * W);
    lp[j] = a.low + b * a.ls.sn + (c + j) * a.ls.sc;
    glp[j] = grad_low + b * a.ls.sn + (c + j) * a.ls.sc;
  }
  for (int64_t x = 0; x < W; ++x) {
    T g_o[N], g_low[N];
    for (int j = 0; j < N; ++j) {
      g_o[j] = go[j][x];
      g_low[j] = row.gate_low[x] * g_o[j];
    }
    T v[N] = {}, vx[N] = {}, vy[N] = {};
    for (int64_t m = row.low_begin[x]; m < row.low_begin[x + 1]; ++m) {
      const int64_t offset = row.low_offset[m];
      const T weight = row.low_weight[m], dx = row.low_dx[m], dy = row.low_dy[m];
      for (int j = 0; j < N; ++j) {
        const T val = lp[j][offset];
        glp[j][offset] += weight * g_low[j];
        v[j] += weight * val;
        vx[j] += dx * val;
        vy[j] += dy * val;
      }
    }
    // Summed locally first: the compiler cannot keep `sums` in registers across the scatters.
    T s[3] = {};
    for (int j = 0; j < N; ++j) {
      s[0] += g_o[j] * v[j];
      s[1] += g_o[j] * vx[j];
      s[2] += g_o[j] * vy[j];
    }
    sums[kLowValue * W + x] += s[0];
    sums[kLowDx * W + x] += s[1];
    sums[kLowDy * W + x] += s[2];
  }
}

// Each task owns a batch item, a group and a slice of its channels, so its scatter into
// grad_high and grad_low never races. It writes its per-pixel FusionSums into its own block of
// `partials` (slices, B, groups, kFusionSums, H, W); finalize() adds the slices and groups in a
// fixed order, which keeps the result bitwise deterministic.
template <typename T, typename Index>
void backward(const FusionArgs<T>& a, const GateMaps<T>& gates, const T* grad_out, Strided4 gs,
              T* grad_high, T* grad_low, T* partials, int64_t slices) {
  const int64_t B = a.hs.n, H = a.hs.h, W = a.hs.w, cg = a.hs.c / a.groups;
  const int64_t per_slice = (cg + slices - 1) / slices;
  const int64_t grain = grain_for(H * W * per_slice);
  at::parallel_for(0, B * a.groups * slices, grain, [&](int64_t begin, int64_t end) {
    FusionRow<T, Index> row(W, true);
    std::vector<T> sums(kFusionSums * W), go_rows(gs.sw == 1 ? 0 : kChannelBlock * W);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task % slices, g = (task / slices) % a.groups,
                    b = task / (slices * a.groups);
      const int64_t c_begin = g * cg + s * per_slice;
      const int64_t c_end = std::min(c_begin + per_slice, (g + 1) * cg);
      T* block = partials + ((s * B + b) * a.groups + g) * kFusionSums * H * W;
      for (int64_t y = 0; y < H; ++y) {
        row.fill(a, gates, b, g, y);
        std::fill(sums.begin(), sums.end(), T(0));
        int64_t c = c_begin;
        for (; c + kChannelBlock <= c_end; c += kChannelBlock)
          backward_channels<kChannelBlock>(a, row, b, c, y, grad_out, gs, grad_high, grad_low,
                                           sums.data(), go_rows.data());
        for (; c < c_end; ++c)
          backward_channels<1>(a, row, b, c, y, grad_out, gs, grad_high, grad_low, sums.data(),
                               go_rows.data());
        for (int q = 0; q < kFusionSums; ++q)
          std::copy(sums.begin() + q * W, sums.begin() + (q + 1) * W, block + (q * H + y) * W);
      }
    }
  });
}

// Chain rule from the summed FusionSums to the flow and gate gradients (contiguous outputs).
template <typename T>
void finalize(const FusionArgs<T>& a, const GateMaps<T>& gates, const T* partials,
              int64_t slices, T* grad_flow_high, T* grad_flow_low, T* grad_gate_high,
              T* grad_gate_low) {
  const int64_t B = a.hs.n, H = a.hs.h, W = a.hs.w, G = a.groups, HW = H * W;
  const auto slope = flow_warp_position<T>(0, 0, T(0), T(0), H, W, H, W, true);
  at::parallel_for(0, B * H, grain_for(W * G), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t y = task % H, b = task / H;
      for (int64_t x = 0; x < W; ++x) {
        const T scale_high = gates.high[task * W + x], scale_low = gates.low[task * W + x];
        T value_high = 0, value_low = 0;
        for (int64_t g = 0; g < G; ++g) {
          T s[kFusionSums] = {};
          for (int64_t sl = 0; sl < slices; ++sl) {
            const T* block = partials + ((sl * B + b) * G + g) * kFusionSums * HW + y * W + x;
            for (int q = 0; q < kFusionSums; ++q) s[q] += block[q * HW];
          }
          const int64_t idx = (b * 2 * G + 2 * g) * HW + y * W + x;
          grad_flow_high[idx] = scale_high * slope.dix_ddx * s[kHighDx];
          grad_flow_high[idx + HW] = scale_high * slope.diy_ddy * s[kHighDy];
          grad_flow_low[idx] = scale_low * slope.dix_ddx * s[kLowDx];
          grad_flow_low[idx + HW] = scale_low * slope.diy_ddy * s[kLowDy];
          value_high += s[kHighValue];
          value_low += s[kLowValue];
        }
        grad_gate_high[b * HW + y * W + x] = gates.dhigh[task * W + x] * value_high;
        grad_gate_low[b * HW + y * W + x] = gates.dlow[task * W + x] * value_low;
      }
    }
  });
}

at::Tensor gated_flow_fusion_cpu(const at::Tensor& high, const at::Tensor& low,
                                 const at::Tensor& flow_high, const at::Tensor& flow_low,
                                 const at::Tensor& gate_high, const at::Tensor& gate_low,
                                 int64_t groups) {
  check_gated_flow_fusion_args(high, low, flow_high, flow_low, gate_high, gate_low, groups);
  auto out = at::empty(high.sizes(), high.options().memory_format(output_format(high)));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(high.scalar_type(), "gated_flow_fusion_cpu", [&] {
    const auto a = fusion_args<scalar_t>(high, low, flow_high, flow_low, gate_high, gate_low,
                                         groups);
    auto run = [&](auto index) {
      forward<scalar_t, decltype(index)>(a, out.mutable_data_ptr<scalar_t>(), strided4(out));
    };
    offsets_fit_int32(a.hs) ? run(int32_t()) : run(int64_t());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gated_flow_fusion_backward_cpu(const at::Tensor& grad_output, const at::Tensor& high_arg,
                               const at::Tensor& low_arg, const at::Tensor& flow_high,
                               const at::Tensor& flow_low, const at::Tensor& gate_high,
                               const at::Tensor& gate_low, int64_t groups) {
  check_gated_flow_fusion_args(high_arg, low_arg, flow_high, flow_low, gate_high, gate_low,
                               groups);
  check_gated_flow_fusion_grad(grad_output, high_arg);
  // The input gradients below share these tensors' strides.
  const at::Tensor high = dense(high_arg), low = dense(low_arg);
  auto grad_high = at::zeros_like(high);
  auto grad_low = at::zeros_like(low);
  auto grad_flow_high = at::zeros(flow_high.sizes(), flow_high.options());
  auto grad_flow_low = at::zeros(flow_low.sizes(), flow_low.options());
  auto grad_gate_high = at::zeros(gate_high.sizes(), gate_high.options());
  auto grad_gate_low = at::zeros(gate_low.sizes(), gate_low.options());
  if (grad_output.numel() > 0) {
    // Slice channels only when batch x groups leaves threads idle.
    const int64_t B = high.size(0), H = high.size(2), W = high.size(3);
    const int64_t tasks = B * groups, threads = at::get_num_threads();
    const int64_t slices = tasks >= threads ? 1 : std::min<int64_t>(
        high.size(1) / groups, (threads + tasks - 1) / tasks);
    auto partials = at::empty({slices, B, groups, kFusionSums, H, W}, high.options());
    AT_DISPATCH_FLOATING_TYPES(high.scalar_type(), "gated_flow_fusion_backward_cpu", [&] {
      const auto a = fusion_args<scalar_t>(high, low, flow_high, flow_low, gate_high, gate_low,
                                           groups);
      const GateMaps<scalar_t> gates(a);
      auto run = [&](auto index) {
        backward<scalar_t, decltype(index)>(
            a, gates, grad_output.const_data_ptr<scalar_t>(), strided4(grad_output),
            grad_high.mutable_data_ptr<scalar_t>(), grad_low.mutable_data_ptr<scalar_t>(),
            partials.mutable_data_ptr<scalar_t>(), slices);
      };
      offsets_fit_int32(a.hs) ? run(int32_t()) : run(int64_t());
      finalize<scalar_t>(a, gates, partials.const_data_ptr<scalar_t>(), slices,
                         grad_flow_high.mutable_data_ptr<scalar_t>(),
                         grad_flow_low.mutable_data_ptr<scalar_t>(),
                         grad_gate_high.mutable_data_ptr<scalar_t>(),
                         grad_gate_low.mutable_data_ptr<scalar_t>());
    });
  }
  return {grad_high, grad_low, grad_flow_high, grad_flow_low, grad_gate_high, grad_gate_low};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtseg, CPU, m) {
  m.impl("gated_flow_fusion", &gated_flow_fusion_cpu);
  m.impl("gated_flow_fusion_backward", &gated_flow_fusion_backward_cpu);
}

}  // namespace rtseg
