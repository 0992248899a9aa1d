// grouped_flow_warp on the CPU: per output row, the bilinear taps of every pixel are computed once
// per group and reused by all of the group's channels (row sampling: cpu/bilinear_avx512.h).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/output_arena.h"
#include "cpu/bilinear_avx512.h"
#include "grouped_flow_warp.h"

namespace rtseg {
namespace {

template <typename T, typename Index>
void forward(const T* input, Strided4 in, const T* flow, Strided4 fs, T* out, Strided4 os,
             int64_t groups, Padding padding, bool align_corners) {
  const int64_t cg = in.c / groups;
  at::parallel_for(0, in.n * groups * fs.h, grain_for(cg * fs.w), [&](int64_t begin, int64_t end) {
    RowTaps<T, Index> taps(fs.w, false);
    std::vector<T> strided_row(os.sw == 1 ? 0 : fs.w);  // staging for non-unit output strides
    for (int64_t task = begin; task < end; ++task) {
      const int64_t y = task % fs.h, g = (task / fs.h) % groups, b = task / (fs.h * groups);
      fill_taps(taps, flow, fs, b, g, y, in, align_corners, padding);
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
        T* row = out + b * os.sn + c * os.sc + y * os.sh;
        sample_row(input + b * in.sn + c * in.sc, in, taps, fs.w,
                   os.sw == 1 ? row : strided_row.data());
        if (os.sw != 1) {
          for (int64_t x = 0; x < fs.w; ++x) row[x * os.sw] = strided_row[x];
        }
      }
    }
  });
}

// Each task owns a batch item, a group and a slice of its channels, so its input-gradient
// scatter never races; flow gradients from several slices are summed afterwards in a fixed
// order, which keeps the result bitwise deterministic.
template <typename T, typename Index>
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
    RowTaps<T, Index> taps(fs.w, true);
    std::vector<T> gx(fs.w), gy(fs.w);
    std::vector<T> strided_row(gs.sw == 1 ? 0 : fs.w);  // staging for non-unit gradient strides
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task % slices, g = (task / slices) % groups, b = task / (slices * groups);
      const int64_t c_begin = g * cg + s * per_slice;
      const int64_t c_end = std::min(c_begin + per_slice, (g + 1) * cg);
      // Flow gradients live in a contiguous (B, 2G, H, W) block per slice.
      T* gflow = grad_flow_slices + s * flow_numel + (b * fs.c + 2 * g) * fs.h * fs.w;
      for (int64_t y = 0; y < fs.h; ++y) {
        fill_taps(taps, flow, fs, b, g, y, in, align_corners, padding);
        std::fill(gx.begin(), gx.end(), T(0));
        std::fill(gy.begin(), gy.end(), T(0));
        for (int64_t c = c_begin; c < c_end; ++c) {
          const T* go = grad_out + b * gs.sn + c * gs.sc + y * gs.sh;
          if (gs.sw != 1) {
            for (int64_t x = 0; x < fs.w; ++x) strided_row[x] = go[x * gs.sw];
            go = strided_row.data();
          }
          backprop_row(input + b * in.sn + c * in.sc, grad_in + b * in.sn + c * in.sc, in, go,
                       static_cast<const T*>(nullptr), taps, fs.w, gx.data(), gy.data(),
                       static_cast<T*>(nullptr));
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
  auto out = empty_output({input.size(0), input.size(1), flow.size(2), flow.size(3)},
                          input.options().memory_format(output_format(input)));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "grouped_flow_warp_cpu", [&] {
    auto run = [&](auto index) {
      forward<scalar_t, decltype(index)>(input.const_data_ptr<scalar_t>(), strided4(input),
                                         flow.const_data_ptr<scalar_t>(), strided4(flow),
                                         out.mutable_data_ptr<scalar_t>(), strided4(out), groups,
                                         padding, align_corners);
    };
    offsets_fit_int32(strided4(input)) ? run(int32_t()) : run(int64_t());
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
  auto grad_input = empty_output_like(input).zero_();
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
    auto run = [&](auto index) {
      backward<scalar_t, decltype(index)>(
          grad_output.const_data_ptr<scalar_t>(), strided4(grad_output),
          input.const_data_ptr<scalar_t>(), strided4(input), flow.const_data_ptr<scalar_t>(),
          strided4(flow), grad_input.mutable_data_ptr<scalar_t>(),
          slice_buffer.mutable_data_ptr<scalar_t>(), slices, groups, padding, align_corners);
    };
    offsets_fit_int32(strided4(input)) ? run(int32_t()) : run(int64_t());
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
