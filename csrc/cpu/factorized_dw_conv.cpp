// factorized_dw_conv on the CPU: one task per (batch, channel) plane, processed row by row so the
// intermediate only ever lives in a row buffer. Kernels are written for order="vh" (vertical conv,
// then horizontal); order="hv" runs them on H/W-transposed views.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "factorized_dw_conv.h"

namespace rtseg {
namespace {

template <typename T, typename A>
void load_row(const T* src, int64_t stride, int64_t n, A* dst) {
  if (stride == 1) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<A>(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<A>(src[i * stride]);
  }
}

template <typename T, typename A>
void store_row(const A* src, int64_t n, T* dst, int64_t stride) {
  if (stride == 1) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i * stride] = static_cast<T>(src[i]);
  }
}

// Row y - d, y and y + d of a plane into three buffers, zeros for rows outside the image.
template <typename T, typename A>
void load_row_taps(const T* plane, const Strided4& s, int64_t y, int64_t d, A* above, A* center,
                   A* below) {
  load_row(plane + y * s.sh, s.sw, s.w, center);
  if (y - d >= 0) load_row(plane + (y - d) * s.sh, s.sw, s.w, above);
  else std::fill(above, above + s.w, A(0));
  if (y + d < s.h) load_row(plane + (y + d) * s.sh, s.sw, s.w, below);
  else std::fill(below, below + s.w, A(0));
}

// out[x] = w0 * a[x - d] + w1 * a[x] + w2 * a[x + d], zero outside [0, n).
template <typename A>
void conv3_row(const A* a, int64_t n, int64_t d, A w0, A w1, A w2, A* out) {
  for (int64_t x = 0; x < n; ++x) out[x] = w1 * a[x];
  for (int64_t x = d; x < n; ++x) out[x] += w0 * a[x - d];
  for (int64_t x = 0; x + d < n; ++x) out[x] += w2 * a[x + d];
}

// grad[k] += sum_x g[x] * a[x + (k - 1) d]: the tap gradients of conv3_row.
template <typename A>
void tap_grads_row(const A* g, const A* a, int64_t n, int64_t d, A* grad) {
  A lo = 0, mid = 0, hi = 0;
  for (int64_t x = d; x < n; ++x) lo += g[x] * a[x - d];
  for (int64_t x = 0; x < n; ++x) mid += g[x] * a[x];
  for (int64_t x = 0; x + d < n; ++x) hi += g[x] * a[x + d];
  grad[0] += lo;
  grad[1] += mid;
  grad[2] += hi;
}

template <typename T>
void forward(const T* x, Strided4 xs, T* out, Strided4 os, int64_t d, DWStagePtrs first_p,
             DWStagePtrs second_p) {
  using A = acc_t<T>;
  const int64_t W = xs.w;
  at::parallel_for(0, xs.n * xs.c, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> buf(4 * W);
    A *above = buf.data(), *center = above + W, *below = center + W, *t = below + W;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / xs.c, c = task % xs.c;
      const auto first = DWStage<A>::template load<T>(first_p, c);
      const auto second = DWStage<A>::template load<T>(second_p, c);
      const T* plane = x + b * xs.sn + c * xs.sc;
      T* out_plane = out + b * os.sn + c * os.sc;
      for (int64_t y = 0; y < xs.h; ++y) {
        load_row_taps(plane, xs, y, d, above, center, below);
        for (int64_t i = 0; i < W; ++i)
          t[i] = first.act(first.affine(first.conv(above[i], center[i], below[i])));
        conv3_row(t, W, d, second.w0, second.w1, second.w2, center);
        for (int64_t i = 0; i < W; ++i) center[i] = second.act(second.affine(center[i]));
        store_row(center, W, out_plane + y * os.sh, os.sw);
      }
    }
  });
}

// Per plane: each row recomputes the intermediate, back-propagates through the second stage and
// the first stage's affine and PReLU (all row-local), keeping the gradient at the first conv's
// output in a plane buffer; the vertical transposed conv of that buffer gives grad_x. Parameter
// gradients are summed per plane into `partials` (B, C, kDWGrads) and reduced over the batch in a
// fixed order by the caller, so the result does not depend on the thread count.
template <typename T>
void backward(const T* grad_out, Strided4 gs, const T* x, Strided4 xs, T* grad_x, Strided4 gxs,
              int64_t d, DWStagePtrs first_p, DWStagePtrs second_p, acc_t<T>* partials) {
  using A = acc_t<T>;
  const int64_t H = xs.h, W = xs.w;
  at::parallel_for(0, xs.n * xs.c, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> buf(7 * W);
    A *above = buf.data(), *center = above + W, *below = center + W, *u1 = below + W,
      *t = u1 + W, *g = t + W, *row = g + W;
    std::vector<A> grad_u1(H * W);  // gradient at the first conv's output
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / xs.c, c = task % xs.c;
      const auto first = DWStage<A>::template load<T>(first_p, c);
      const auto second = DWStage<A>::template load<T>(second_p, c);
      const T* plane = x + b * xs.sn + c * xs.sc;
      const T* g_plane = grad_out + b * gs.sn + c * gs.sc;
      A sums[kDWGrads] = {};
      A* sums1 = sums;
      A* sums2 = sums + kDWGradsPerStage;
      for (int64_t y = 0; y < H; ++y) {
        load_row_taps(plane, xs, y, d, above, center, below);
        for (int64_t i = 0; i < W; ++i) {
          u1[i] = first.conv(above[i], center[i], below[i]);
          t[i] = first.act(first.affine(u1[i]));
        }
        conv3_row(t, W, d, second.w0, second.w1, second.w2, row);  // u2
        load_row(g_plane + y * gs.sh, gs.sw, W, g);
        for (int64_t i = 0; i < W; ++i) {
          const A z2 = second.affine(row[i]);
          const A dz2 = g[i] * second.act_grad(z2);
          sums2[kDWGradScale] += dz2 * row[i];
          sums2[kDWGradShift] += dz2;
          sums2[kDWGradPrelu] += g[i] * second.slope_grad(z2);
          g[i] = dz2 * second.scale;  // gradient at the second conv's output
        }
        tap_grads_row(g, t, W, d, sums2 + kDWGradWeight);
        conv3_row(g, W, d, second.w2, second.w1, second.w0, row);  // gradient at t
        A* gu1 = grad_u1.data() + y * W;
        for (int64_t i = 0; i < W; ++i) {
          const A z1 = first.affine(u1[i]);
          const A dz1 = row[i] * first.act_grad(z1);
          sums1[kDWGradScale] += dz1 * u1[i];
          sums1[kDWGradShift] += dz1;
          sums1[kDWGradPrelu] += row[i] * first.slope_grad(z1);
          gu1[i] = dz1 * first.scale;
          sums1[kDWGradWeight] += gu1[i] * above[i];
          sums1[kDWGradWeight + 1] += gu1[i] * center[i];
          sums1[kDWGradWeight + 2] += gu1[i] * below[i];
        }
      }
      T* gx_plane = grad_x + b * gxs.sn + c * gxs.sc;
      for (int64_t y = 0; y < H; ++y) {
        const A* mid = grad_u1.data() + y * W;
        for (int64_t i = 0; i < W; ++i) row[i] = first.w1 * mid[i];
        if (y + d < H) {
          const A* next = mid + d * W;
          for (int64_t i = 0; i < W; ++i) row[i] += first.w0 * next[i];
        }
        if (y - d >= 0) {
          const A* prev = mid - d * W;
          for (int64_t i = 0; i < W; ++i) row[i] += first.w2 * prev[i];
        }
        store_row(row, W, gx_plane + y * gxs.sh, gxs.sw);
      }
      std::copy(sums, sums + kDWGrads, partials + task * kDWGrads);
    }
  });
}

at::Tensor factorized_dw_conv_cpu(const at::Tensor& x, const at::Tensor& weight_v,
                                  const at::Tensor& weight_h, int64_t dilation,
                                  const OptTensor& scale_v, const OptTensor& shift_v,
                                  const OptTensor& prelu_v, const OptTensor& scale_h,
                                  const OptTensor& shift_h, const OptTensor& prelu_h,
                                  c10::string_view order) {
  const bool hv = check_factorized_dw_args(x, weight_v, weight_h, dilation, scale_v, shift_v,
                                           prelu_v, scale_h, shift_h, prelu_h, order);
  auto out = at::empty(x.sizes(), x.options().memory_format(output_format(x)));
  if (out.numel() == 0) return out;
  const DWStageTensors v(weight_v, scale_v, shift_v, prelu_v), h(weight_h, scale_h, shift_h,
                                                                 prelu_h);
  auto view = [hv](const at::Tensor& t) { return hv ? transpose_hw(strided4(t)) : strided4(t); };
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "factorized_dw_conv_cpu", [&] {
    forward<scalar_t>(x.const_data_ptr<scalar_t>(), view(x), out.mutable_data_ptr<scalar_t>(),
                      view(out), dilation, hv ? h.ptrs() : v.ptrs(), hv ? v.ptrs() : h.ptrs());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor>
factorized_dw_conv_backward_cpu(const at::Tensor& grad_output, const at::Tensor& x,
                                const at::Tensor& weight_v, const at::Tensor& weight_h,
                                int64_t dilation, const OptTensor& scale_v,
                                const OptTensor& shift_v, const OptTensor& prelu_v,
                                const OptTensor& scale_h, const OptTensor& shift_h,
                                const OptTensor& prelu_h, c10::string_view order) {
  const bool hv = check_factorized_dw_args(x, weight_v, weight_h, dilation, scale_v, shift_v,
                                           prelu_v, scale_h, shift_h, prelu_h, order);
  check_factorized_dw_grad(grad_output, x);
  const int64_t B = x.size(0), C = x.size(1);
  auto grad_x = at::empty(x.sizes(), x.options().memory_format(output_format(x)));
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto partials = at::zeros({B, C, kDWGrads}, x.options().dtype(acc_type));
  if (grad_x.numel() > 0) {
    const DWStageTensors v(weight_v, scale_v, shift_v, prelu_v), h(weight_h, scale_h, shift_h,
                                                                   prelu_h);
    auto view = [hv](const at::Tensor& t) {
      return hv ? transpose_hw(strided4(t)) : strided4(t);
    };
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "factorized_dw_conv_backward_cpu", [&] {
      backward<scalar_t>(grad_output.const_data_ptr<scalar_t>(), view(grad_output),
                         x.const_data_ptr<scalar_t>(), view(x),
                         grad_x.mutable_data_ptr<scalar_t>(), view(grad_x), dilation,
                         hv ? h.ptrs() : v.ptrs(), hv ? v.ptrs() : h.ptrs(),
                         partials.mutable_data_ptr<acc_t<scalar_t>>());
    });
  }
  // Sum over the batch in order (deterministic whatever the thread count).
  auto reduced = at::zeros({C, kDWGrads}, partials.options());
  for (int64_t b = 0; b < B; ++b) reduced.add_(partials.select(0, b));
  const int first = hv ? 1 : 0;  // index of the vertical stage among (first, second)
  auto [gwv, gsv, gbv, gav] = factorized_dw_stage_grads(reduced, first, weight_v, x.scalar_type());
  auto [gwh, gsh, gbh, gah] = factorized_dw_stage_grads(reduced, 1 - first, weight_h,
                                                        x.scalar_type());
  return {grad_x, gwv, gwh, gsv, gbv, gav, gsh, gbh, gah};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtseg, CPU, m) {
  m.impl("factorized_dw_conv", &factorized_dw_conv_cpu);
  m.impl("factorized_dw_conv_backward", &factorized_dw_conv_backward_cpu);
}

}  // namespace rtseg
