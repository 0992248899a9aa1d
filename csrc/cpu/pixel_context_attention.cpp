// pixel_context_attention on the CPU, fused per tile of pixels: the (pixels x M) logits of a
// tile live in a per-thread buffer that stays in cache between the two BLAS products and the
// softmax, so the (N x M) attention matrix is never written out. The forward saves the per-pixel
// log-sum-exp; the backward recomputes the probabilities from it.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "pixel_context_attention.h"

namespace rtseg {
namespace {

constexpr int64_t kTile = 256;        // pixels per task
constexpr int64_t kMaxPartials = 8;   // dK/dV partial sums per batch item (fixed: deterministic)

struct Tiles {
  int64_t per_batch, partials, per_partial;
  explicit Tiles(int64_t N) {
    per_batch = (N + kTile - 1) / kTile;
    partials = std::min(per_batch, kMaxPartials);
    per_partial = (per_batch + partials - 1) / partials;
  }
};

// (B, C, H, W) -> (B, C, N) without a copy where the pixels of a channel form one strided run
// (NCHW and channels_last); BLAS reads either directly.
at::Tensor pixels(const at::Tensor& t) { return t.flatten(2); }

template <typename T>
void softmax_rows(T* s, T* lse, int64_t rows, int64_t M, double scale) {
  for (int64_t r = 0; r < rows; ++r) {
    T* row = s + r * M;
    T mx = -std::numeric_limits<T>::infinity();
    for (int64_t j = 0; j < M; ++j) mx = std::max(mx, row[j] * T(scale));
    T sum = 0;
    for (int64_t j = 0; j < M; ++j) sum += row[j] = std::exp(row[j] * T(scale) - mx);
    const T inv = T(1) / sum;
    for (int64_t j = 0; j < M; ++j) row[j] *= inv;
    lse[r] = mx + std::log(sum);
  }
}

std::tuple<at::Tensor, at::Tensor> pixel_context_attention_cpu(const at::Tensor& query,
                                                               const at::Tensor& key,
                                                               const at::Tensor& value,
                                                               double scale) {
  check_pixel_context_attention_args(query, key, value);
  const int64_t B = query.size(0), H = query.size(2), W = query.size(3), N = H * W;
  const int64_t M = key.size(2), Cv = value.size(1);
  auto out = at::empty({B, Cv, H, W}, query.options().memory_format(output_format(query)));
  auto lse = at::empty({B, N}, query.options().dtype(lse_dtype(query)));
  if (out.numel() == 0) return {out, lse};
  const at::Tensor q = pixels(query), o = pixels(out);
  const Tiles tiles(N);
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "pixel_context_attention_cpu", [&] {
    at::parallel_for(0, B * tiles.per_batch, 1, [&](int64_t begin, int64_t end) {
      auto probs = at::empty({kTile, M}, query.options());
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / tiles.per_batch, n0 = (task % tiles.per_batch) * kTile;
        const int64_t n = std::min(kTile, N - n0);
        auto p = probs.narrow(0, 0, n);
        at::mm_out(p, q[b].narrow(1, n0, n).t(), key[b]);
        softmax_rows(p.mutable_data_ptr<scalar_t>(),
                     lse.mutable_data_ptr<scalar_t>() + b * N + n0, n, M, scale);
        auto o_tile = o[b].narrow(1, n0, n);
        at::mm_out(o_tile, value[b], p.t());
      }
    });
  });
  return {out, lse};
}

// sum_c a[c, n] * b[c, n] for the n pixels of a tile, read through strides.
template <typename T>
void channel_dot(const at::Tensor& a, const at::Tensor& b, T* dst) {
  const int64_t C = a.size(0), n = a.size(1);
  const T* pa = a.const_data_ptr<T>();
  const T* pb = b.const_data_ptr<T>();
  const int64_t ac = a.stride(0), an = a.stride(1), bc = b.stride(0), bn = b.stride(1);
  std::fill(dst, dst + n, T(0));
  for (int64_t c = 0; c < C; ++c) {
    const T* ra = pa + c * ac;
    const T* rb = pb + c * bc;
    if (an == 1 && bn == 1) {
      for (int64_t i = 0; i < n; ++i) dst[i] += ra[i] * rb[i];
    } else {
      for (int64_t i = 0; i < n; ++i) dst[i] += ra[i * an] * rb[i * bn];
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pixel_context_attention_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& lse, double scale) {
  check_pixel_context_attention_args(query, key, value);
  check_pixel_context_attention_grad(grad_output, output, lse, query, value);
  const int64_t B = query.size(0), Ck = query.size(1), N = query.size(2) * query.size(3);
  const int64_t M = key.size(2), Cv = value.size(1);
  auto grad_query = at::empty(query.sizes(), query.options().memory_format(output_format(query)));
  if (B == 0 || N == 0) {
    return {grad_query.zero_(), at::zeros_like(key), at::zeros_like(value)};
  }
  const Tiles tiles(N);
  // Each partial sums a fixed run of tiles; the partials are summed in order afterwards.
  auto grad_key_parts = at::empty({B, tiles.partials, Ck, M}, key.options());
  auto grad_value_parts = at::empty({B, tiles.partials, Cv, M}, value.options());
  // Zero strides (from .sum()) would make every tile's BLAS call copy; densify once instead.
  const at::Tensor go = pixels(dense(grad_output)), o = pixels(output), q = pixels(query);
  const at::Tensor gq = pixels(grad_query);
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "pixel_context_attention_backward_cpu", [&] {
    const at::Tensor lse_dense = lse.contiguous();
    const scalar_t* lse_ptr = lse_dense.const_data_ptr<scalar_t>();
    at::parallel_for(0, B * tiles.partials, 1, [&](int64_t begin, int64_t end) {
      auto probs = at::empty({kTile, M}, query.options());
      auto grad_logits = at::empty({kTile, M}, query.options());
      std::vector<scalar_t> row_dot(kTile);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / tiles.partials, part = task % tiles.partials;
        auto gk = grad_key_parts[b][part], gv = grad_value_parts[b][part];
        gk.zero_();
        gv.zero_();
        for (int64_t t = part * tiles.per_partial;
             t < std::min(tiles.per_batch, (part + 1) * tiles.per_partial); ++t) {
          const int64_t n0 = t * kTile, n = std::min(kTile, N - n0);
          auto p = probs.narrow(0, 0, n), ds = grad_logits.narrow(0, 0, n);
          const auto q_tile = q[b].narrow(1, n0, n), go_tile = go[b].narrow(1, n0, n);
          at::mm_out(p, q_tile.t(), key[b]);
          at::mm_out(ds, go_tile.t(), value[b]);
          channel_dot<scalar_t>(go_tile, o[b].narrow(1, n0, n), row_dot.data());
          scalar_t* pp = p.mutable_data_ptr<scalar_t>();
          scalar_t* pds = ds.mutable_data_ptr<scalar_t>();
          const scalar_t* l = lse_ptr + b * N + n0;
          for (int64_t i = 0; i < n; ++i) {
            for (int64_t j = 0; j < M; ++j) {
              const scalar_t prob = std::exp(pp[i * M + j] * scalar_t(scale) - l[i]);
              pp[i * M + j] = prob;
              pds[i * M + j] = scalar_t(scale) * prob * (pds[i * M + j] - row_dot[i]);
            }
          }
          auto gq_tile = gq[b].narrow(1, n0, n);
          at::mm_out(gq_tile, key[b], ds.t());
          gk.addmm_(q_tile, ds);
          gv.addmm_(go_tile, p);
        }
      }
    });
  });
  return {grad_query, grad_key_parts.sum(1), grad_value_parts.sum(1)};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtseg, CPU, m) {
  m.impl("pixel_context_attention", &pixel_context_attention_cpu);
  m.impl("pixel_context_attention_backward", &pixel_context_attention_backward_cpu);
}

}  // namespace rtseg
