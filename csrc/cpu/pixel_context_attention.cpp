// pixel_context_attention on the CPU, fused per tile of pixels: the (M x pixels) logits of a
// tile live in a per-thread buffer that stays in cache between the BLAS products and the
// softmax, so the (N x M) attention matrix is never written out. The forward saves the per-pixel
// log-sum-exp; the backward recomputes the probabilities from it.
// Tiles are context-major (one row per context vector): every product is then a plain or
// once-transposed GEMM that MKL runs near its peak, and the softmax over M vectorises across
// pixels.
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/output_arena.h"
#include "cpu/simd_dispatch.h"
#include "cpu/stream_store.h"
#include "pixel_context_attention.h"

namespace rtseg {
namespace {

constexpr int64_t kTile = 512;        // pixels per task
constexpr int64_t kMaxPartials = 8;   // dK/dV partial sums per batch item (fixed: deterministic)
constexpr int64_t kStreamOutputBytes = int64_t(16) << 20;

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

// An (M x n) tile over a per-thread buffer that lives across calls: tile buffers of hundreds of
// KiB would otherwise be mmap'd and page-faulted afresh by every call and thread.
template <typename T>
at::Tensor tile_buffer(int slot, int64_t M, int64_t n, const at::TensorOptions& options) {
  thread_local std::vector<T> buffers[2];
  auto& buffer = buffers[slot];
  if (buffer.size() < static_cast<size_t>(M * n)) buffer.resize(M * n);
  return at::from_blob(buffer.data(), {M, n}, options);
}

// The column loops below run over the n pixels of an (M x n) tile, contiguous, so they vectorise.

// s <- scale * s - shift, column by column.
template <typename T>
RTSEG_SIMD_CLONES void subtract_columns(T* s, const T* shift, int64_t M, int64_t n, T scale) {
  for (int64_t m = 0; m < M; ++m) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) s[m * n + j] = scale * s[m * n + j] - shift[j];
  }
}

// shift <- the column maxima of scale * s (which keeps exp() in range whatever the sign of scale);
// then s <- scale * s - shift.
template <typename T>
RTSEG_SIMD_CLONES void shift_columns(T* s, T* shift, int64_t M, int64_t n, T scale) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) shift[j] = -std::numeric_limits<T>::infinity();
  for (int64_t m = 0; m < M; ++m) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) shift[j] = std::max(shift[j], scale * s[m * n + j]);
  }
  subtract_columns(s, shift, M, n, scale);
}

// exp(logits) -> probabilities, column by column; lse (the shift) gains the sums' logs.
template <typename T>
RTSEG_SIMD_CLONES void normalize_columns(T* s, T* lse, int64_t M, int64_t n) {
  T sum[kTile], inv[kTile];
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) sum[j] = 0;
  for (int64_t m = 0; m < M; ++m) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) sum[j] += s[m * n + j];
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) inv[j] = T(1) / sum[j];
  for (int64_t m = 0; m < M; ++m) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) s[m * n + j] *= inv[j];
  }
  for (int64_t j = 0; j < n; ++j) lse[j] += std::log(sum[j]);
}

// ds <- scale * P * (dP - colsum(P * dP)), in place. With all M rows of a column at hand,
// colsum(P * dP) equals flash-attention's <dO, O> without reading the output.
template <typename T>
RTSEG_SIMD_CLONES void softmax_backward_columns(const T* p, T* ds, int64_t M, int64_t n, T scale) {
  T dot[kTile];
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dot[j] = 0;
  for (int64_t m = 0; m < M; ++m) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dot[j] += p[m * n + j] * ds[m * n + j];
  }
  for (int64_t m = 0; m < M; ++m) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j)
      ds[m * n + j] = scale * p[m * n + j] * (ds[m * n + j] - dot[j]);
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
  auto out = empty_output({B, Cv, H, W}, query.options().memory_format(output_format(query)));
  auto lse = at::empty({B, N}, query.options().dtype(accumulation_type(query)));
  if (out.numel() == 0) return {out, lse};
  const at::Tensor q = pixels(query), o = pixels(out);
  const bool channels_last = !out.is_contiguous();
  // An output far larger than the caches is written with non-temporal stores (stream_store.h);
  // a smaller one is left in cache for whatever reads it next.
  const bool stream_out = out.numel() * out.element_size() >= kStreamOutputBytes;
  const Tiles tiles(N, M, query.size(1), Cv);
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "pixel_context_attention_cpu", [&] {
    const auto s = static_cast<scalar_t>(scale);
    at::parallel_for(0, B * tiles.per_batch, tiles.grain(1), [&](int64_t begin, int64_t end) {
      // The tiles' ATen calls run below autograd (the inputs may require grad); the guard is
      // thread-local, so every worker sets it.
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / tiles.per_batch, n0 = (task % tiles.per_batch) * kTile;
        const int64_t n = std::min(kTile, N - n0);
        auto p = tile_buffer<scalar_t>(0, M, n, query.options());
        scalar_t* tile_lse = lse.mutable_data_ptr<scalar_t>() + b * N + n0;
        at::mm_out(p, key[b].t(), q[b].narrow(1, n0, n));
        shift_columns(p.mutable_data_ptr<scalar_t>(), tile_lse, M, n, s);
        p.exp_();  // ATen's exp is vectorised for the CPU it runs on
        normalize_columns(p.mutable_data_ptr<scalar_t>(), tile_lse, M, n);
        if (!stream_out) {
          auto o_tile = o[b].narrow(1, n0, n);
          at::mm_out(o_tile, value[b], p);
          continue;
        }
        // The output tile is computed in cache, in the output's layout, then streamed out.
        auto o_tile = tile_buffer<scalar_t>(1, Cv, n, query.options());
        scalar_t* o_dst = out.mutable_data_ptr<scalar_t>() + b * Cv * N;
        if (channels_last) {
          o_tile = o_tile.view({n, Cv}).t();
          at::mm_out(o_tile, value[b], p);
          stream_rows(o_dst + n0 * Cv, 0, o_tile.const_data_ptr<scalar_t>(), 1, n * Cv);
        } else {
          at::mm_out(o_tile, value[b], p);
          stream_rows(o_dst + n0, N, o_tile.const_data_ptr<scalar_t>(), Cv, n);
        }
      }
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pixel_context_attention_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& lse, double scale) {
  check_pixel_context_attention_args(query, key, value);
  check_pixel_context_attention_grad(grad_output, lse, query, value);
  check_cpu_dtype(query);
  const int64_t B = query.size(0), Ck = query.size(1), N = query.size(2) * query.size(3);
  const int64_t M = key.size(2), Cv = value.size(1);
  auto grad_query = empty_output_like(query);
  if (B == 0 || N == 0) {
    return {grad_query.zero_(), at::zeros_like(key), at::zeros_like(value)};
  }
  const Tiles tiles(N, M, Ck, Cv);
  // Each partial sums a fixed run of tiles; the partials are summed in order afterwards. They are
  // context-major, (M x C), which makes their products with the tiles plain GEMMs with a
  // transposed right-hand side, the faster form in MKL (75 -> 116 GFLOP/s for dK on one core).
  auto grad_key_parts = at::empty({B, tiles.partials, M, Ck}, key.options());
  auto grad_value_parts = at::empty({B, tiles.partials, M, Cv}, value.options());
  // Zero strides (from .sum()) would make every tile's BLAS call copy; densify once instead.
  const at::Tensor go = pixels(dense(grad_output)), q = pixels(query);
  const at::Tensor gq = pixels(grad_query), lse_dense = lse.contiguous();
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "pixel_context_attention_backward_cpu", [&] {
    const auto s = static_cast<scalar_t>(scale);
    const int64_t grain = tiles.grain(tiles.per_partial);
    at::parallel_for(0, B * tiles.partials, grain, [&](int64_t begin, int64_t end) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / tiles.partials, part = task % tiles.partials;
        auto gk = grad_key_parts[b][part], gv = grad_value_parts[b][part];
        const int64_t first = part * tiles.per_partial;
        for (int64_t t = first; t < std::min(tiles.per_batch, first + tiles.per_partial); ++t) {
          const int64_t n0 = t * kTile, n = std::min(kTile, N - n0);
          auto p = tile_buffer<scalar_t>(0, M, n, query.options());
          auto ds = tile_buffer<scalar_t>(1, M, n, query.options());
          const auto q_tile = q[b].narrow(1, n0, n), go_tile = go[b].narrow(1, n0, n);
          at::mm_out(p, key[b].t(), q_tile);
          subtract_columns(p.mutable_data_ptr<scalar_t>(),
                           lse_dense.const_data_ptr<scalar_t>() + b * N + n0, M, n, s);
          p.exp_();
          at::mm_out(ds, value[b].t(), go_tile);
          softmax_backward_columns(p.const_data_ptr<scalar_t>(), ds.mutable_data_ptr<scalar_t>(),
                                   M, n, s);
          auto gq_tile = gq[b].narrow(1, n0, n);
          at::mm_out(gq_tile, key[b], ds);
          const double beta = t == first ? 0.0 : 1.0;  // the first tile initialises the partial
          at::addmm_out(gk, gk, ds, q_tile.t(), beta);
          at::addmm_out(gv, gv, p, go_tile.t(), beta);
        }
      }
    });
  });
  // Summed, then transposed: a sum straight into the transposed output is 3x slower.
  return {grad_query, grad_key_parts.sum(1).transpose(1, 2).contiguous(),
          grad_value_parts.sum(1).transpose(1, 2).contiguous()};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtseg, CPU, m) {
  m.impl("pixel_context_attention", &pixel_context_attention_cpu);
  m.impl("pixel_context_attention_backward", &pixel_context_attention_backward_cpu);
}

}  // namespace rtseg
