// gated_flow_fusion on the CPU: per output row and group, the taps of both warps (the low warp's
// up to 16 merged taps without the zero ones) are computed once and reused by all of the group's
// channels; the upsampled low map is never stored. The high warp samples whole rows of a channel
// (16 pixels at a time on AVX-512 CPUs: cpu/bilinear_avx512.h). The low map (small) is read in
// channels_last order, so each low tap reads and scatters the group's channels as one contiguous
// vector.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/gated_flow_fusion.h"
#include "cpu/output_arena.h"
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
    // upsampled_warp_taps' taps, as the products of one LowAxis per axis.
    for (int64_t x = 0; x < W; ++x) {
      const auto pos = flow_warp_position<T>(x, y, fl[x * a.fls.sw], fl[a.fls.sc + x * a.fls.sw],
                                             H, W, H, W, true);
      const auto ax = low_axis(pos.ix, W, a.ls.w), ay = low_axis(pos.iy, H, a.ls.h);
      low_begin[x] = n;
      for (int r = 0; r < 4; ++r) {
        for (int c = 0; c < 4; ++c) {
          const T weight = ay.weight[r] * ax.weight[c], dx = ay.weight[r] * ax.dweight[c],
                  dy = ay.dweight[r] * ax.weight[c];
          if (weight == T(0) && dx == T(0) && dy == T(0)) continue;  // reads nothing
          low_offset[n] = ay.index[r] * a.ls.sh + ax.index[c] * a.ls.sw;
          low_weight[n] = weight;
          low_dx[n] = dx;
          low_dy[n] = dy;
          ++n;
        }
      }
    }
    low_begin[W] = n;
  }
};

// rows[x * n + k] = sum of the low taps of pixel x of channel k < n, where low holds the first
// channel of the n (channels_last: unit channel stride).
template <typename T, typename Index>
void sample_low_rows(const FusionRow<T, Index>& row, const T* low, int64_t W, int64_t n,
                     T* rows) {
  simd_dispatch([&]() RTSEG_SIMD_BODY {
    for (int64_t x = 0; x < W; ++x) {
      T* acc = rows + x * n;
      std::fill(acc, acc + n, T(0));
      for (int64_t m = row.low_begin[x]; m < row.low_begin[x + 1]; ++m) {
        const T* src = low + row.low_offset[m];
        const T weight = row.low_weight[m];
#pragma omp simd
        for (int64_t k = 0; k < n; ++k) acc[k] += weight * src[k];
      }
    }
  });
}

template <typename T, typename Index>
void forward(const FusionArgs<T>& a, T* out, Strided4 os) {
  const GateMaps<T> gates(a);
  const int64_t B = a.hs.n, H = a.hs.h, W = a.hs.w, cg = a.hs.c / a.groups;
  at::parallel_for(0, B * a.groups * H, grain_for(W * cg), [&](int64_t begin, int64_t end) {
    FusionRow<T, Index> row(W, false);
    std::vector<T> low_rows(W * cg), high_row(W);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t y = task % H, g = (task / H) % a.groups, b = task / (H * a.groups);
      row.fill(a, gates, b, g, y);
      sample_low_rows(row, a.low + b * a.ls.sn + g * cg, W, cg, low_rows.data());
      for (int64_t k = 0; k < cg; ++k) {
        const int64_t c = g * cg + k;
        sample_row(a.high + b * a.hs.sn + c * a.hs.sc, a.hs, row.high, W, high_row.data());
        T* o = out + b * os.sn + c * os.sc + y * os.sh;
        for (int64_t x = 0; x < W; ++x) {
          o[x * os.sw] = row.gate_low[x] * low_rows[x * cg + k] + row.gate_high[x] * high_row[x];
        }
      }
    }
  });
}

// The low warp's backward of one row of n channels, go[x * n + k] the gradient of channel k at
// pixel x (low and grad_low hold the first channel, unit channel stride): scatters into
// grad_low and adds the FusionSums kLowValue, kLowDx and kLowDy to `sums`. The sum over channels
// of go times a tap's value is taken once per tap and then weighted by its three coefficients.
template <typename T, typename Index>
void backprop_low_rows(const FusionRow<T, Index>& row, const T* low, T* grad_low, const T* go,
                       int64_t W, int64_t n, T* sums) {
  simd_dispatch([&]() RTSEG_SIMD_BODY {
    for (int64_t x = 0; x < W; ++x) {
      const T* gx = go + x * n;
      const T scale = row.gate_low[x];
      T value = 0, dx = 0, dy = 0;
      for (int64_t m = row.low_begin[x]; m < row.low_begin[x + 1]; ++m) {
        const T* src = low + row.low_offset[m];
        T* dst = grad_low + row.low_offset[m];
        const T weight = row.low_weight[m], scatter = weight * scale;
        T dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int64_t k = 0; k < n; ++k) {
          dot += gx[k] * src[k];
          dst[k] += scatter * gx[k];
        }
        value += weight * dot;
        dx += row.low_dx[m] * dot;
        dy += row.low_dy[m] * dot;
      }
      sums[kLowValue * W + x] += value;
      sums[kLowDx * W + x] += dx;
      sums[kLowDy * W + x] += dy;
    }
  });
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
    std::vector<T> sums(kFusionSums * W), go_rows(W * per_slice), go_row(W);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task % slices, g = (task / slices) % a.groups,
                    b = task / (slices * a.groups);
      const int64_t c_begin = g * cg + s * per_slice;
      // A trailing slice may be empty; it still writes its (zero) block.
      const int64_t n = std::max<int64_t>(0, std::min(c_begin + per_slice, (g + 1) * cg) - c_begin);
      T* block = partials + ((s * B + b) * a.groups + g) * kFusionSums * H * W;
      for (int64_t y = 0; y < H; ++y) {
        row.fill(a, gates, b, g, y);
        std::fill(sums.begin(), sums.end(), T(0));
        for (int64_t k = 0; k < n; ++k) {
          const int64_t c = c_begin + k;
          const T* go = grad_out + b * gs.sn + c * gs.sc + y * gs.sh;
          if (gs.sw != 1) {
            for (int64_t x = 0; x < W; ++x) go_row[x] = go[x * gs.sw];
            go = go_row.data();
          }
          const int64_t plane = b * a.hs.sn + c * a.hs.sc;
          backprop_row(a.high + plane, grad_high + plane, a.hs, go, row.gate_high, row.high, W,
                       sums.data() + kHighDx * W, sums.data() + kHighDy * W,
                       sums.data() + kHighValue * W);
          for (int64_t x = 0; x < W; ++x) go_rows[x * n + k] = go[x];
        }
        const int64_t low_plane = b * a.ls.sn + c_begin;
        backprop_low_rows(row, a.low + low_plane, grad_low + low_plane, go_rows.data(), W, n,
                          sums.data());
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
  auto out = empty_output_like(high);
  if (out.numel() == 0) return out;
  const at::Tensor low_cl = low.contiguous(at::MemoryFormat::ChannelsLast);
  AT_DISPATCH_FLOATING_TYPES(high.scalar_type(), "gated_flow_fusion_cpu", [&] {
    const auto a = fusion_args<scalar_t>(high, low_cl, flow_high, flow_low, gate_high, gate_low,
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
  // The input gradients below share these tensors' strides; the kernel reads low and writes its
  // gradient in channels_last order.
  const at::Tensor high = dense(high_arg), low = low_arg.contiguous(at::MemoryFormat::ChannelsLast);
  auto grad_high = empty_output_like(high).zero_();
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
  grad_low = grad_low.contiguous(low_arg.suggest_memory_format());  // low's layout (it is small)
  return {grad_high, grad_low, grad_flow_high, grad_flow_low, grad_gate_high, grad_gate_low};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtseg, CPU, m) {
  m.impl("gated_flow_fusion", &gated_flow_fusion_cpu);
  m.impl("gated_flow_fusion_backward", &gated_flow_fusion_backward_cpu);
}

}  // namespace rtseg
