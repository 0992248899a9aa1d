// grouped_flow_warp on the CPU: per output row, the bilinear taps of every pixel are computed once
// per group and reused by all of the group's channels.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "grouped_flow_warp.h"

namespace rtseg {
namespace {

// Taps is BilinearTaps<T> (backward) or the smaller SampleTaps<T> (forward).
template <typename T, typename Taps>
void taps_for_row(const T* flow, const Strided4& fs, int64_t b, int64_t g, int64_t y,
                  const Strided4& in, bool align_corners, Padding padding, Taps* taps) {
  const T* dx = flow + b * fs.sn + (2 * g) * fs.sc + y * fs.sh;
  const T* dy = dx + fs.sc;
  for (int64_t x = 0; x < fs.w; ++x) {
    const auto pos = flow_warp_position<T>(x, y, dx[x * fs.sw], dy[x * fs.sw], fs.h, fs.w, in.h,
                                           in.w, align_corners);
    const auto full = bilinear_taps<T>(pos.ix, pos.iy, in.h, in.w, in.sh, in.sw, padding);
    if constexpr (std::is_same_v<Taps, SampleTaps<T>>) {
      taps[x] = sample_taps(full);
    } else {
      taps[x] = full;
    }
  }
}

template <typename T>
void forward(const T* input, Strided4 in, const T* flow, Strided4 fs, T* out, Strided4 os,
             int64_t groups, Padding padding, bool align_corners) {
  const int64_t cg = in.c / groups;
  at::parallel_for(0, in.n * groups * fs.h, grain_for(cg * fs.w), [&](int64_t begin, int64_t end) {
    std::vector<SampleTaps<T>> taps(fs.w);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t y = task % fs.h, g = (task / fs.h) % groups, b = task / (fs.h * groups);
      taps_for_row(flow, fs, b, g, y, in, align_corners, padding, taps.data());
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        const T* plane = input + b * in.sn + c * in.sc;
        T* row = out + b * os.sn + c * os.sc + y * os.sh;
        for (int64_t x = 0; x < fs.w; ++x) {
          row[x * os.sw] = interpolate(taps[x], [plane](int64_t o) { return plane[o]; });
        }
      }
    }
  });
}

// Each task owns a batch item, a group and a slice of its channels, so its input-gradient
// scatter never races; flow gradients from several slices are summed afterwards in a fixed
// order, which keeps the result bitwise deterministic.
template <typename T>
void backward(const T* grad_out, Strided4 gs, const T* input, Strided4 in, const T* flow,
              Strided4 fs, T* grad_in, T* grad_flow_slices, int64_t slices, int64_t groups,
              Padding padding, bool align_corners) {
  const int64_t cg = in.c / groups;
  const int64_t per_slice = (cg + slices - 1) / slices;
  const int64_t flow_numel = fs.n * fs.c * fs.h * fs.w;
  // Every pixel shares d(ix)/d(dx) and d(iy)/d(dy).
  const auto pos0 = flow_warp_position<T>(0, 0, T(0), T(0), fs.h, fs.w, in.h, in.w, align_corners);
  at::parallel_for(0, in.n * groups * slices, grain_for(per_slice * fs.h * fs.w),
                   [&](int64_t begin, int64_t end) {
    std::vector<BilinearTaps<T>> taps(fs.w);
    std::vector<T> gx(fs.w), gy(fs.w);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task % slices, g = (task / slices) % groups, b = task / (slices * groups);
      const int64_t c_begin = g * cg + s * per_slice;
      const int64_t c_end = std::min(c_begin + per_slice, (g + 1) * cg);
      // Flow gradients live in a contiguous (B, 2G, H, W) block per slice.
      T* gflow = grad_flow_slices + s * flow_numel + (b * fs.c + 2 * g) * fs.h * fs.w;
      for (int64_t y = 0; y < fs.h; ++y) {
        taps_for_row(flow, fs, b, g, y, in, align_corners, padding, taps.data());
        std::fill(gx.begin(), gx.end(), T(0));
        std::fill(gy.begin(), gy.end(), T(0));
        for (int64_t c = c_begin; c < c_end; ++c) {
          const T* plane = input + b * in.sn + c * in.sc;
          T* gplane = grad_in + b * in.sn + c * in.sc;
          const T* go = grad_out + b * gs.sn + c * gs.sc + y * gs.sh;
          for (int64_t x = 0; x < fs.w; ++x) {
            const auto& t = taps[x];
            const T g_o = go[x * gs.sw];
            T vx = 0, vy = 0;
            for (int k = 0; k < 4; ++k) {
              if (!corner_used(t, k)) continue;  // outside: see interpolate()
              const T v = plane[t.offset[k]];
              gplane[t.offset[k]] += t.weight[k] * g_o;
              vx += t.dweight_dx[k] * v;
              vy += t.dweight_dy[k] * v;
            }
            gx[x] += vx * g_o;
            gy[x] += vy * g_o;
          }
        }
        for (int64_t x = 0; x < fs.w; ++x) {
          gflow[y * fs.w + x] = gx[x] * pos0.dix_ddx;
          gflow[fs.h * fs.w + y * fs.w + x] = gy[x] * pos0.diy_ddy;
        }
      }
    }
  });
}

at::Tensor grouped_flow_warp_cpu(const at::Tensor& input, const at::Tensor& flow, int64_t groups,
                                 c10::string_view padding_mode, bool align_corners) {
  check_grouped_flow_warp_args(input, flow, groups);
  const Padding padding = parse_padding(std::string(padding_mode));
  auto out = at::empty({input.size(0), input.size(1), flow.size(2), flow.size(3)},
                       input.options().memory_format(output_format(input)));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "grouped_flow_warp_cpu", [&] {
    forward<scalar_t>(input.const_data_ptr<scalar_t>(), strided4(input),
                      flow.const_data_ptr<scalar_t>(), strided4(flow),
                      out.mutable_data_ptr<scalar_t>(), strided4(out), groups, padding,
                      align_corners);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> grouped_flow_warp_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input_arg, const at::Tensor& flow,
    int64_t groups, c10::string_view padding_mode, bool align_corners) {
  check_grouped_flow_warp_args(input_arg, flow, groups);
  check_grouped_flow_warp_grad(grad_output, input_arg, flow);
  const Padding padding = parse_padding(std::string(padding_mode));
  const at::Tensor input = dense(input_arg);  // grad_input below shares its strides
  auto grad_input = at::zeros_like(input);
  auto grad_flow = at::zeros(flow.sizes(), flow.options());
  if (grad_output.numel() == 0) return {grad_input, grad_flow};
  // Slice channels only when batch x groups leaves threads idle.
  const int64_t tasks = input.size(0) * groups;
  const int64_t threads = at::get_num_threads();
  const int64_t slices =
      tasks >= threads ? 1 : std::min<int64_t>(input.size(1) / groups, (threads + tasks - 1) / tasks);
  at::Tensor slice_buffer = slices == 1 ? grad_flow : at::zeros({slices, flow.size(0),
      flow.size(1), flow.size(2), flow.size(3)}, flow.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "grouped_flow_warp_backward_cpu", [&] {
    backward<scalar_t>(grad_output.const_data_ptr<scalar_t>(), strided4(grad_output),
                       input.const_data_ptr<scalar_t>(), strided4(input),
                       flow.const_data_ptr<scalar_t>(), strided4(flow),
                       grad_input.mutable_data_ptr<scalar_t>(),
                       slice_buffer.mutable_data_ptr<scalar_t>(), slices, groups, padding,
                       align_corners);
  });
  if (slices > 1) grad_flow = slice_buffer.sum(0);
  return {grad_input, grad_flow};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtseg, CPU, m) {
  m.impl("grouped_flow_warp", &grouped_flow_warp_cpu);
  m.impl("grouped_flow_warp_backward", &grouped_flow_warp_backward_cpu);
}

}  // namespace rtseg
