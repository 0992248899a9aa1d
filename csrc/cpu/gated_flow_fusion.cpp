// gated_flow_fusion on the CPU: per output row and group, the taps of both warps (the low warp's
// merged 16 taps without the zero ones) are computed once and reused by all of the group's
// channels; the upsampled low map is never stored.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/gated_flow_fusion.h"
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

// 1 + tanh of both gate maps and its derivative, (B, H, W) each, computed once rather than once
// per group and channel slice.
template <typename T> struct GateMaps {
  std::vector<Gate<T>> high, low;
  explicit GateMaps(const FusionArgs<T>& a) : high(a.hs.n * a.hs.h * a.hs.w), low(high.size()) {
    const int64_t H = a.hs.h, W = a.hs.w;
    at::parallel_for(0, a.hs.n * H, grain_for(W), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t y = row % H, b = row / H;
        for (int64_t x = 0; x < W; ++x) {
          high[row * W + x] = gate_of(a.gate_high[b * a.ghs.sn + y * a.ghs.sh + x * a.ghs.sw]);
          low[row * W + x] = gate_of(a.gate_low[b * a.gls.sn + y * a.gls.sh + x * a.gls.sw]);
        }
      }
    });
  }
};

// Taps and gates of one output row of one group. Pixel x owns the merged low taps
// [low_begin[x], low_begin[x + 1]).
template <typename T> struct FusionRow {
  std::vector<BilinearTaps<T>> high;
  const Gate<T>* gate_high = nullptr;
  const Gate<T>* gate_low = nullptr;
  std::vector<int64_t> low_begin, low_offset;
  std::vector<T> low_weight, low_dx, low_dy;
  explicit FusionRow(int64_t W)
      : high(W), low_begin(W + 1), low_offset(16 * W),
        low_weight(16 * W), low_dx(16 * W), low_dy(16 * W) {}

  void fill(const FusionArgs<T>& a, const GateMaps<T>& gates, int64_t b, int64_t g, int64_t y) {
    const int64_t H = a.hs.h, W = a.hs.w;
    const T* fh = a.flow_high + b * a.fhs.sn + 2 * g * a.fhs.sc + y * a.fhs.sh;
    const T* fl = a.flow_low + b * a.fls.sn + 2 * g * a.fls.sc + y * a.fls.sh;
    gate_high = gates.high.data() + (b * H + y) * W;
    gate_low = gates.low.data() + (b * H + y) * W;
    int64_t n = 0;
    for (int64_t x = 0; x < W; ++x) {
      high[x] = fusion_warp_corners<T>(x, y, fh[x * a.fhs.sw], fh[a.fhs.sc + x * a.fhs.sw], H, W,
                                       a.hs.sh, a.hs.sw);
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

// Output row y of channels [c, c + N).
template <int N, typename T>
void forward_channels(const FusionArgs<T>& a, const FusionRow<T>& row, int64_t b, int64_t c,
                      int64_t y, T* out, const Strided4& os) {
  const T* hp[N];
  const T* lp[N];
  T* o[N];
  for (int j = 0; j < N; ++j) {
    hp[j] = a.high + b * a.hs.sn + (c + j) * a.hs.sc;
    lp[j] = a.low + b * a.ls.sn + (c + j) * a.ls.sc;
    o[j] = out + b * os.sn + (c + j) * os.sc + y * os.sh;
  }
  for (int64_t x = 0; x < a.hs.w; ++x) {
    const auto& t = row.high[x];
    T vh[N] = {}, vl[N] = {};
    for (int k = 0; k < 4; ++k) {
      if (t.weight[k] == T(0)) continue;  // unused corners read nothing: see interpolate()
      const int64_t offset = t.offset[k];
      const T weight = t.weight[k];
      for (int j = 0; j < N; ++j) vh[j] += weight * hp[j][offset];
    }
    for (int64_t m = row.low_begin[x]; m < row.low_begin[x + 1]; ++m) {
      const int64_t offset = row.low_offset[m];
      const T weight = row.low_weight[m];
      for (int j = 0; j < N; ++j) vl[j] += weight * lp[j][offset];
    }
    const T scale_high = row.gate_high[x].scale, scale_low = row.gate_low[x].scale;
    for (int j = 0; j < N; ++j) o[j][x * os.sw] = scale_low * vl[j] + scale_high * vh[j];
  }
}

template <typename T>
void forward(const FusionArgs<T>& a, T* out, Strided4 os) {
  const GateMaps<T> gates(a);
  const int64_t B = a.hs.n, H = a.hs.h, W = a.hs.w, cg = a.hs.c / a.groups;
  at::parallel_for(0, B * a.groups * H, grain_for(W * cg), [&](int64_t begin, int64_t end) {
    FusionRow<T> row(W);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t y = task % H, g = (task / H) % a.groups, b = task / (H * a.groups);
      row.fill(a, gates, b, g, y);
      int64_t c = g * cg;
      for (; c + kChannelBlock <= (g + 1) * cg; c += kChannelBlock)
        forward_channels<kChannelBlock>(a, row, b, c, y, out, os);
      for (; c < (g + 1) * cg; ++c) forward_channels<1>(a, row, b, c, y, out, os);
    }
  });
}

// Gradient row y of channels [c, c + N): scatters into grad_high and grad_low and adds the
// channels' FusionSums to `sums` (kFusionSums rows of W).
template <int N, typename T>
void backward_channels(const FusionArgs<T>& a, const FusionRow<T>& row, int64_t b, int64_t c,
                       int64_t y, const T* grad_out, const Strided4& gs, T* grad_high,
                       T* grad_low, T* sums) {
  const int64_t W = a.hs.w;
  const T* hp[N];
  const T* lp[N];
  const T* go[N];
  T* ghp[N];
  T* glp[N];
  for (int j = 0; j < N; ++j) {
    hp[j] = a.high + b * a.hs.sn + (c + j) * a.hs.sc;
    lp[j] = a.low + b * a.ls.sn + (c + j) * a.ls.sc;
    ghp[j] = grad_high + b * a.hs.sn + (c + j) * a.hs.sc;
    glp[j] = grad_low + b * a.ls.sn + (c + j) * a.ls.sc;
    go[j] = grad_out + b * gs.sn + (c + j) * gs.sc + y * gs.sh;
  }
  for (int64_t x = 0; x < W; ++x) {
    T g_o[N], g_high[N], g_low[N];
    for (int j = 0; j < N; ++j) {
      g_o[j] = go[j][x * gs.sw];
      g_high[j] = row.gate_high[x].scale * g_o[j];
      g_low[j] = row.gate_low[x].scale * g_o[j];
    }
    const auto& t = row.high[x];
    T v[N] = {}, vx[N] = {}, vy[N] = {};
    for (int k = 0; k < 4; ++k) {
      if (!corner_used(t, k)) continue;
      const int64_t offset = t.offset[k];
      for (int j = 0; j < N; ++j) {
        const T val = hp[j][offset];
        ghp[j][offset] += t.weight[k] * g_high[j];
        v[j] += t.weight[k] * val;
        vx[j] += t.dweight_dx[k] * val;
        vy[j] += t.dweight_dy[k] * val;
      }
    }
    // Summed locally first: the compiler cannot keep `sums` in registers across the scatters.
    T s[kFusionSums] = {};
    for (int j = 0; j < N; ++j) {
      s[kHighValue] += g_o[j] * v[j];
      s[kHighDx] += g_o[j] * vx[j];
      s[kHighDy] += g_o[j] * vy[j];
      v[j] = vx[j] = vy[j] = T(0);
    }
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
    for (int j = 0; j < N; ++j) {
      s[kLowValue] += g_o[j] * v[j];
      s[kLowDx] += g_o[j] * vx[j];
      s[kLowDy] += g_o[j] * vy[j];
    }
    for (int q = 0; q < kFusionSums; ++q) sums[q * W + x] += s[q];
  }
}

// Each task owns a batch item, a group and a slice of its channels, so its scatter into
// grad_high and grad_low never races. It writes its per-pixel FusionSums into its own block of
// `partials` (slices, B, groups, kFusionSums, H, W); finalize() adds the slices and groups in a
// fixed order, which keeps the result bitwise deterministic.
template <typename T>
void backward(const FusionArgs<T>& a, const GateMaps<T>& gates, const T* grad_out, Strided4 gs,
              T* grad_high, T* grad_low, T* partials, int64_t slices) {
  const int64_t B = a.hs.n, H = a.hs.h, W = a.hs.w, cg = a.hs.c / a.groups;
  const int64_t per_slice = (cg + slices - 1) / slices;
  const int64_t grain = grain_for(H * W * per_slice);
  at::parallel_for(0, B * a.groups * slices, grain, [&](int64_t begin, int64_t end) {
    FusionRow<T> row(W);
    std::vector<T> sums(kFusionSums * W);
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
                                           sums.data());
        for (; c < c_end; ++c)
          backward_channels<1>(a, row, b, c, y, grad_out, gs, grad_high, grad_low, sums.data());
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
        const auto& gh = gates.high[task * W + x];
        const auto& gl = gates.low[task * W + x];
        T value_high = 0, value_low = 0;
        for (int64_t g = 0; g < G; ++g) {
          T s[kFusionSums] = {};
          for (int64_t sl = 0; sl < slices; ++sl) {
            const T* block = partials + ((sl * B + b) * G + g) * kFusionSums * HW + y * W + x;
            for (int q = 0; q < kFusionSums; ++q) s[q] += block[q * HW];
          }
          const int64_t idx = (b * 2 * G + 2 * g) * HW + y * W + x;
          grad_flow_high[idx] = gh.scale * slope.dix_ddx * s[kHighDx];
          grad_flow_high[idx + HW] = gh.scale * slope.diy_ddy * s[kHighDy];
          grad_flow_low[idx] = gl.scale * slope.dix_ddx * s[kLowDx];
          grad_flow_low[idx + HW] = gl.scale * slope.diy_ddy * s[kLowDy];
          value_high += s[kHighValue];
          value_low += s[kLowValue];
        }
        grad_gate_high[b * HW + y * W + x] = gh.dscale * value_high;
        grad_gate_low[b * HW + y * W + x] = gl.dscale * value_low;
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
    forward<scalar_t>(fusion_args<scalar_t>(high, low, flow_high, flow_low, gate_high, gate_low,
                                            groups),
                      out.mutable_data_ptr<scalar_t>(), strided4(out));
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
      backward<scalar_t>(a, gates, grad_output.const_data_ptr<scalar_t>(),
                         strided4(grad_output), grad_high.mutable_data_ptr<scalar_t>(),
                         grad_low.mutable_data_ptr<scalar_t>(),
                         partials.mutable_data_ptr<scalar_t>(), slices);
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
