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

template <typename T, typename A = acc_t<T>>
DWStage<A> load_stage(const DWStagePtrs& p, int64_t c) {
  return DWStage<A>::template load<T>(p, c, [](T v) { return static_cast<A>(v); });
}

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
      const auto first = load_stage<T>(first_p, c);
      const auto second = load_stage<T>(second_p, c);
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

// Channel-contiguous views (channels_last): one task per (batch, row) over all channels, so every
// inner loop runs along C. Per-channel parameters are unpacked into arrays first; a missing
// PReLU is slope 1, for which max(z, 0) + slope * min(z, 0) is exactly z.
template <typename A>
struct StageArrays {
  std::vector<A> w0, w1, w2, scale, shift, slope;

  // u[c] = act(scale * u[c] + shift)
  void affine_act(A* u, int64_t C) const {
    for (int64_t c = 0; c < C; ++c) {
      const A z = scale[c] * u[c] + shift[c];
      u[c] = std::max(z, A(0)) + slope[c] * std::min(z, A(0));
    }
  }
};

template <typename T, typename A = acc_t<T>>
StageArrays<A> make_stage_arrays(const DWStagePtrs& p, int64_t C) {
  StageArrays<A> a;
  for (auto* v : {&a.w0, &a.w1, &a.w2, &a.scale, &a.shift, &a.slope}) v->resize(C);
  for (int64_t c = 0; c < C; ++c) {
    const auto s = load_stage<T>(p, c);
    a.w0[c] = s.w0, a.w1[c] = s.w1, a.w2[c] = s.w2;
    a.scale[c] = s.scale, a.shift[c] = s.shift, a.slope[c] = s.prelu ? s.slope : A(1);
  }
  return a;
}

template <typename T>
void forward_channels_last(const T* x, Strided4 xs, T* out, Strided4 os, int64_t d,
                           DWStagePtrs first_p, DWStagePtrs second_p) {
  using A = acc_t<T>;
  const int64_t C = xs.c, H = xs.h, W = xs.w;
  const auto first = make_stage_arrays<T>(first_p, C);
  const auto second = make_stage_arrays<T>(second_p, C);
  at::parallel_for(0, xs.n * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> t(W * C), u(C);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / H, y = task % H;
      const T* row = x + b * xs.sn + y * xs.sh;
      for (int64_t i = 0; i < W; ++i) {
        const T* px = row + i * xs.sw;
        A* ti = t.data() + i * C;
        for (int64_t c = 0; c < C; ++c) ti[c] = first.w1[c] * static_cast<A>(px[c]);
        if (y - d >= 0) {
          const T* pa = px - d * xs.sh;
          for (int64_t c = 0; c < C; ++c) ti[c] += first.w0[c] * static_cast<A>(pa[c]);
        }
        if (y + d < H) {
          const T* pb = px + d * xs.sh;
          for (int64_t c = 0; c < C; ++c) ti[c] += first.w2[c] * static_cast<A>(pb[c]);
        }
        first.affine_act(ti, C);
      }
      T* out_row = out + b * os.sn + y * os.sh;
      for (int64_t i = 0; i < W; ++i) {
        const A* ti = t.data() + i * C;
        for (int64_t c = 0; c < C; ++c) u[c] = second.w1[c] * ti[c];
        if (i - d >= 0) {
          for (int64_t c = 0; c < C; ++c) u[c] += second.w0[c] * ti[c - d * C];
        }
        if (i + d < W) {
          for (int64_t c = 0; c < C; ++c) u[c] += second.w2[c] * ti[c + d * C];
        }
        second.affine_act(u.data(), C);
        store_row(u.data(), C, out_row + i * os.sw, os.sc);
      }
    }
  });
}

// d act / dz per channel (StageArrays form of DWStage::act_grad).
template <typename A>
A act_grad(A z, A slope, bool prelu) {
  return prelu ? A(z >= A(0) ? 1 : 0) + (z <= A(0) ? slope : A(0)) : A(1);
}

// Channel-contiguous backward: one task per (batch, row) over all channels. A row's gradient at
// the first conv's output only needs that row, so it is computed per task into grad_u1 (B, H, W, C)
// with the parameter-gradient sums of the task in partials (B * H, kDWGrads, C); a second pass
// applies the vertical transposed conv. The caller sums the partials over tasks in order.
template <typename T>
void backward_channels_last(const T* grad_out, Strided4 gs, const T* x, Strided4 xs, T* grad_x,
                            Strided4 gxs, int64_t d, DWStagePtrs first_p, DWStagePtrs second_p,
                            acc_t<T>* grad_u1, acc_t<T>* partials) {
  using A = acc_t<T>;
  const int64_t C = xs.c, H = xs.h, W = xs.w;
  const auto first = make_stage_arrays<T>(first_p, C);
  const auto second = make_stage_arrays<T>(second_p, C);
  const bool prelu1 = first_p.prelu != nullptr, prelu2 = second_p.prelu != nullptr;
  at::parallel_for(0, xs.n * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> u1(W * C), t(W * C), dsec(W * C);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / H, y = task % H;
      A* sums = partials + task * kDWGrads * C;
      auto sum = [&](int stage, int k) { return sums + (stage * kDWGradsPerStage + k) * C; };
      const T* row = x + b * xs.sn + y * xs.sh;
      for (int64_t i = 0; i < W; ++i) {
        const T* px = row + i * xs.sw;
        A* ui = u1.data() + i * C;
        for (int64_t c = 0; c < C; ++c) ui[c] = first.w1[c] * static_cast<A>(px[c]);
        if (y - d >= 0) {
          for (int64_t c = 0; c < C; ++c) ui[c] += first.w0[c] * static_cast<A>(px[c - d * xs.sh]);
        }
        if (y + d < H) {
          for (int64_t c = 0; c < C; ++c) ui[c] += first.w2[c] * static_cast<A>(px[c + d * xs.sh]);
        }
        A* ti = t.data() + i * C;
        std::copy(ui, ui + C, ti);
        first.affine_act(ti, C);
      }
      const T* g_row = grad_out + b * gs.sn + y * gs.sh;
      A *s2_scale = sum(1, kDWGradScale), *s2_shift = sum(1, kDWGradShift),
        *s2_prelu = sum(1, kDWGradPrelu), *s2_w = sum(1, kDWGradWeight);
      for (int64_t i = 0; i < W; ++i) {
        const A* ti = t.data() + i * C;
        const T* gi = g_row + i * gs.sw;
        A* di = dsec.data() + i * C;
        for (int64_t c = 0; c < C; ++c) {
          const A left = i - d >= 0 ? ti[c - d * C] : A(0);
          const A right = i + d < W ? ti[c + d * C] : A(0);
          const A u2 = second.w0[c] * left + second.w1[c] * ti[c] + second.w2[c] * right;
          const A z2 = second.scale[c] * u2 + second.shift[c];
          const A g = static_cast<A>(gi[c * gs.sc]);
          const A dz2 = g * act_grad(z2, second.slope[c], prelu2);
          s2_scale[c] += dz2 * u2;
          s2_shift[c] += dz2;
          s2_prelu[c] += g * std::min(z2, A(0));
          di[c] = dz2 * second.scale[c];
          s2_w[c] += di[c] * left;
          s2_w[C + c] += di[c] * ti[c];
          s2_w[2 * C + c] += di[c] * right;
        }
      }
      A *s1_scale = sum(0, kDWGradScale), *s1_shift = sum(0, kDWGradShift),
        *s1_prelu = sum(0, kDWGradPrelu), *s1_w = sum(0, kDWGradWeight);
      A* e_row = grad_u1 + task * W * C;
      for (int64_t i = 0; i < W; ++i) {
        const A* di = dsec.data() + i * C;
        const A* ui = u1.data() + i * C;
        const T* px = row + i * xs.sw;
        A* ei = e_row + i * C;
        for (int64_t c = 0; c < C; ++c) {
          const A dt = second.w1[c] * di[c] + (i - d >= 0 ? second.w2[c] * di[c - d * C] : A(0)) +
                       (i + d < W ? second.w0[c] * di[c + d * C] : A(0));
          const A z1 = first.scale[c] * ui[c] + first.shift[c];
          const A dz1 = dt * act_grad(z1, first.slope[c], prelu1);
          s1_scale[c] += dz1 * ui[c];
          s1_shift[c] += dz1;
          s1_prelu[c] += dt * std::min(z1, A(0));
          ei[c] = dz1 * first.scale[c];
          if (y - d >= 0) s1_w[c] += ei[c] * static_cast<A>(px[c - d * xs.sh]);
          s1_w[C + c] += ei[c] * static_cast<A>(px[c]);
          if (y + d < H) s1_w[2 * C + c] += ei[c] * static_cast<A>(px[c + d * xs.sh]);
        }
      }
    }
  });
  at::parallel_for(0, xs.n * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / H, y = task % H;
      const A* e = grad_u1 + task * W * C;
      T* out_row = grad_x + b * gxs.sn + y * gxs.sh;
      for (int64_t i = 0; i < W; ++i) {
        const A* ei = e + i * C;
        T* gi = out_row + i * gxs.sw;
        for (int64_t c = 0; c < C; ++c) {
          A v = first.w1[c] * ei[c];
          if (y + d < H) v += first.w0[c] * ei[c + d * W * C];
          if (y - d >= 0) v += first.w2[c] * ei[c - d * W * C];
          gi[c] = static_cast<T>(v);
        }
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
      const auto first = load_stage<T>(first_p, c);
      const auto second = load_stage<T>(second_p, c);
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
  const DWStages stages{{weight_v, scale_v, shift_v, prelu_v},
                        {weight_h, scale_h, shift_h, prelu_h}, hv};
  auto view = [hv](const at::Tensor& t) { return factorized_dw_view(t, hv); };
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "factorized_dw_conv_cpu", [&] {
    auto kernel = x.stride(1) == 1 && x.size(1) > 1 ? forward_channels_last<scalar_t>
                                                    : forward<scalar_t>;
    kernel(x.const_data_ptr<scalar_t>(), view(x), out.mutable_data_ptr<scalar_t>(), view(out),
           dilation, stages.first(), stages.second());
  });
  return out;
}

FactorizedDWGrads factorized_dw_conv_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& weight_v,
    const at::Tensor& weight_h, int64_t dilation, const OptTensor& scale_v,
    const OptTensor& shift_v, const OptTensor& prelu_v, const OptTensor& scale_h,
    const OptTensor& shift_h, const OptTensor& prelu_h, c10::string_view order) {
  const bool hv = check_factorized_dw_args(x, weight_v, weight_h, dilation, scale_v, shift_v,
                                           prelu_v, scale_h, shift_h, prelu_h, order);
  check_factorized_dw_grad(grad_output, x);
  const int64_t B = x.size(0), C = x.size(1);
  auto grad_x = at::empty(x.sizes(), x.options().memory_format(output_format(x)));
  const auto acc_type = accumulation_type(x);
  const DWStages stages{{weight_v, scale_v, shift_v, prelu_v},
                        {weight_h, scale_h, shift_h, prelu_h}, hv};
  auto view = [hv](const at::Tensor& t) { return factorized_dw_view(t, hv); };
  at::Tensor reduced;
  // Gradients of channels_last tensors come out channels_last (output_format), so the row kernel
  // writes grad_x along C.
  if (x.stride(1) == 1 && C > 1 && grad_x.stride(1) == 1) {
    const Strided4 xv = view(x);
    const int64_t tasks = xv.n * xv.h;
    auto partials = at::zeros({tasks, kDWGrads, C}, x.options().dtype(acc_type));
    auto grad_u1 = at::empty({xv.n, xv.h, xv.w, C}, x.options().dtype(acc_type));
    reduced = at::zeros({kDWGrads, C}, partials.options());
    if (grad_x.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "factorized_dw_conv_backward_cpu", [&] {
        using A = acc_t<scalar_t>;
        A* parts = partials.mutable_data_ptr<A>();
        backward_channels_last<scalar_t>(
            grad_output.const_data_ptr<scalar_t>(), view(grad_output),
            x.const_data_ptr<scalar_t>(), xv, grad_x.mutable_data_ptr<scalar_t>(), view(grad_x),
            dilation, stages.first(), stages.second(),
            grad_u1.mutable_data_ptr<A>(), parts);
        // Sum over the row tasks in order (deterministic whatever the thread count).
        A* sums = reduced.mutable_data_ptr<A>();
        for (int64_t task = 0; task < tasks; ++task)
          for (int64_t i = 0; i < kDWGrads * C; ++i) sums[i] += parts[task * kDWGrads * C + i];
      });
    }
    reduced = reduced.t();
  } else {
    auto partials = at::zeros({B, C, kDWGrads}, x.options().dtype(acc_type));
    if (grad_x.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "factorized_dw_conv_backward_cpu", [&] {
        backward<scalar_t>(grad_output.const_data_ptr<scalar_t>(), view(grad_output),
                           x.const_data_ptr<scalar_t>(), view(x),
                           grad_x.mutable_data_ptr<scalar_t>(), view(grad_x), dilation,
                           stages.first(), stages.second(),
                           partials.mutable_data_ptr<acc_t<scalar_t>>());
      });
    }
    // Sum over the batch in order (deterministic whatever the thread count).
    reduced = at::zeros({C, kDWGrads}, partials.options());
    for (int64_t b = 0; b < B; ++b) reduced.add_(partials.select(0, b));
  }
  return factorized_dw_grads(grad_x, reduced, hv, weight_v, weight_h);
}

}  // namespace

TORCH_LIBRARY_IMPL(rtseg, CPU, m) {
  m.impl("factorized_dw_conv", &factorized_dw_conv_cpu);
  m.impl("factorized_dw_conv_backward", &factorized_dw_conv_backward_cpu);
}

}  // namespace rtseg
