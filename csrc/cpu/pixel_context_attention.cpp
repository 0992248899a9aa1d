// pixel_context_attention on the CPU, fused per tile of pixels: the (pixels x M) logits of a
// tile live in a per-thread buffer that stays in cache between the two BLAS products and the
// softmax, so the (N x M) attention matrix is never written out. The forward saves the per-pixel
// log-sum-exp; the backward recomputes the probabilities from it.
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>


#include "pixel_context_attention.h"

namespace rtseg {
namespace {

constexpr int64_t kTile = 512;        // pixels per task
constexpr int64_t kMaxPartials = 8;   // dK/dV partial sums per batch item (fixed: deterministic)

struct Tiles {
  int64_t per_batch, partials, per_partial, tile_macs;
  Tiles(int64_t N, int64_t M, int64_t Ck, int64_t Cv) {
    per_batch = (N + kTile - 1) / kTile;
    partials = std::min(per_batch, kMaxPartials);
    per_partial = (per_batch + partials - 1) / partials;
    tile_macs = std::min(kTile, N) * M * (Ck + Cv);
  }
  // Tasks per parallel chunk, so that small calls run inline instead of waking the thread pool.
  int64_t grain(int64_t tiles_per_task) const {
    return grain_for(tiles_per_task * tile_macs);
  }
};

// (B, C, H, W) -> (B, C, N) without a copy where the pixels of a channel form one strided run
// (NCHW and channels_last); BLAS reads either directly.
at::Tensor pixels(const at::Tensor& t) { return t.flatten(2); }

void check_cpu_dtype(const at::Tensor& query) {
  TORCH_CHECK(query.scalar_type() == at::kFloat || query.scalar_type() == at::kDouble,
              "query: expected float32 or float64 on the CPU, got ", query.scalar_type());
}

// logits <- scale * logits - shift[r] row by row; then exp_ in place (ATen's vectorised exp, one
// call per tile: the extension itself is built for baseline x86-64).
template <typename T>
void shifted_exp_rows(at::Tensor& logits, const T* shift, T scale) {
  const int64_t rows = logits.size(0), M = logits.size(1);
  T* s = logits.mutable_data_ptr<T>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < M; ++j) s[r * M + j] = scale * s[r * M + j] - shift[r];
  logits.exp_();
}

// In-place softmax of the rows of `scale * logits`, and its log-sum-exp into `lse`.
template <typename T>
void softmax_rows(at::Tensor& logits, T* lse, T scale) {
  const int64_t rows = logits.size(0), M = logits.size(1);
  T* s = logits.mutable_data_ptr<T>();
  for (int64_t r = 0; r < rows; ++r) {
    T mx = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < M; ++j) mx = std::max(mx, s[r * M + j]);
    lse[r] = scale * mx;  // the row maximum of the scaled logits (scale may be negative)
    if (scale < 0) {
      T mn = std::numeric_limits<T>::infinity();
#pragma omp simd reduction(min : mn)
      for (int64_t j = 0; j < M; ++j) mn = std::min(mn, s[r * M + j]);
      lse[r] = scale * mn;
    }
  }
  shifted_exp_rows(logits, lse, scale);
  for (int64_t r = 0; r < rows; ++r) {
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < M; ++j) sum += s[r * M + j];
    const T inv = T(1) / sum;
    for (int64_t j = 0; j < M; ++j) s[r * M + j] *= inv;
    lse[r] += std::log(sum);
  }
}

std::tuple<at::Tensor, at::Tensor> pixel_context_attention_cpu(const at::Tensor& query,
                                                               const at::Tensor& key,
                                                               const at::Tensor& value,
                                                               double scale) {
  check_pixel_context_attention_args(query, key, value);
  check_cpu_dtype(query);
  const int64_t B = query.size(0), H = query.size(2), W = query.size(3), N = H * W;
  const int64_t M = key.size(2), Cv = value.size(1);
  auto out = at::empty({B, Cv, H, W}, query.options().memory_format(output_format(query)));
  auto lse = at::empty({B, N}, query.options().dtype(accumulation_type(query)));
  if (out.numel() == 0) return {out, lse};
  const at::Tensor q = pixels(query), o = pixels(out);
  const Tiles tiles(N, M, query.size(1), Cv);
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "pixel_context_attention_cpu", [&] {
    at::parallel_for(0, B * tiles.per_batch, tiles.grain(1), [&](int64_t begin, int64_t end) {
      // The tiles' ATen calls run below autograd (the inputs may require grad); the guard is
      // thread-local, so every worker sets it.
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      auto probs = at::empty({kTile, M}, query.options());
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / tiles.per_batch, n0 = (task % tiles.per_batch) * kTile;
        const int64_t n = std::min(kTile, N - n0);
        auto p = probs.narrow(0, 0, n);
        at::mm_out(p, q[b].narrow(1, n0, n).t(), key[b]);
        softmax_rows<scalar_t>(p, lse.mutable_data_ptr<scalar_t>() + b * N + n0,
                               static_cast<scalar_t>(scale));
        auto o_tile = o[b].narrow(1, n0, n);
        at::mm_out(o_tile, value[b], p.t());
      }
    });
  });
  return {out, lse};
}

// grad_logits <- scale * P * (dP - rowsum(P * dP)), in place. With all M columns of a row at
// hand, rowsum(P * dP) equals flash-attention's <dO, O> without reading the output.
template <typename T>
void softmax_backward_rows(const T* probs, T* grad_logits, int64_t rows, int64_t M, T scale) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* p = probs + r * M;
    T* g = grad_logits + r * M;
    T dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < M; ++j) dot += p[j] * g[j];
    for (int64_t j = 0; j < M; ++j) g[j] = scale * p[j] * (g[j] - dot);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pixel_context_attention_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& lse, double scale) {
  check_pixel_context_attention_args(query, key, value);
  check_pixel_context_attention_grad(grad_output, lse, query, value);
  check_cpu_dtype(query);
  const int64_t B = query.size(0), Ck = query.size(1), N = query.size(2) * query.size(3);
  const int64_t M = key.size(2), Cv = value.size(1);
  auto grad_query = at::empty(query.sizes(), query.options().memory_format(output_format(query)));
  if (B == 0 || N == 0) {
    return {grad_query.zero_(), at::zeros_like(key), at::zeros_like(value)};
  }
  const Tiles tiles(N, M, Ck, Cv);
  // Each partial sums a fixed run of tiles; the partials are summed in order afterwards.
  auto grad_key_parts = at::empty({B, tiles.partials, Ck, M}, key.options());
  auto grad_value_parts = at::empty({B, tiles.partials, Cv, M}, value.options());
  // Zero strides (from .sum()) would make every tile's BLAS call copy; densify once instead.
  const at::Tensor go = pixels(dense(grad_output)), q = pixels(query);
  const at::Tensor gq = pixels(grad_query), lse_dense = lse.contiguous();
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "pixel_context_attention_backward_cpu", [&] {
    const int64_t grain = tiles.grain(tiles.per_partial);
    at::parallel_for(0, B * tiles.partials, grain, [&](int64_t begin, int64_t end) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      auto probs = at::empty({kTile, M}, query.options());
      auto grad_logits = at::empty({kTile, M}, query.options());
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
          shifted_exp_rows<scalar_t>(p, lse_dense.const_data_ptr<scalar_t>() + b * N + n0,
                                     static_cast<scalar_t>(scale));
          at::mm_out(ds, go_tile.t(), value[b]);
          softmax_backward_rows<scalar_t>(p.const_data_ptr<scalar_t>(),
                                          ds.mutable_data_ptr<scalar_t>(), n, M,
                                          static_cast<scalar_t>(scale));
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
