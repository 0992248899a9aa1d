// spatial_aware_pool on the CPU. Forward: per (batch, channel) plane, one pass over the pixels
// builds level 1's cells, each further level's cells come from the previous level's, and every
// output is nine cell lookups (common/spatial_aware_pool.h). Backward: a gather, so no two tasks
// write the same element; each input row sums, per level, the output gradients whose windows
// contain it, folding the levels together from the coarsest down.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cpu/output_arena.h"
#include "spatial_aware_pool.h"

namespace rtseg {
namespace {

// A rows x cols grid of `lanes` values each (one per channel processed together), stored with a
// one-element zero border, so lookups at -1 and at rows/cols need no bounds checks.
template <typename V> struct BorderedGrid {
  std::vector<V> data;
  int64_t rows = 0, cols = 0, lanes = 1;

  void reset(int64_t r, int64_t c, int64_t l = 1) {
    rows = r;
    cols = c;
    lanes = l;
    const int64_t row_size = (c + 2) * l;
    data.resize((r + 2) * row_size);
    std::fill(data.begin(), data.begin() + row_size, V{});
    std::fill(data.end() - row_size, data.end(), V{});
    for (int64_t i = 1; i <= r; ++i) {
      std::fill_n(data.begin() + i * row_size, l, V{});
      std::fill_n(data.begin() + i * row_size + (c + 1) * l, l, V{});
    }
  }
  // Cell (i, k)'s first lane, for i in [-1, rows] and k in [-1, cols].
  V* at(int64_t i, int64_t k) { return data.data() + ((i + 1) * (cols + 2) + k + 1) * lanes; }
  const V* at(int64_t i, int64_t k) const {
    return data.data() + ((i + 1) * (cols + 2) + k + 1) * lanes;
  }
};

// Per level: divisors of each output row and column (their product is avg_pool2d's divisor).
template <typename A> struct LevelCounts {
  std::vector<A> rows, cols;
};

template <typename A>
std::vector<LevelCounts<A>> level_counts(int64_t h, int64_t w, int64_t levels,
                                         bool count_include_pad) {
  std::vector<LevelCounts<A>> counts(levels);
  for (int64_t j = 0; j < levels; ++j) {
    const int64_t s = int64_t(1) << (j + 1);
    for (int64_t o = 0; o < sap_out_size(h, s); ++o)
      counts[j].rows.push_back(A(sap_window_count(o, s, h, count_include_pad)));
    for (int64_t o = 0; o < sap_out_size(w, s); ++o)
      counts[j].cols.push_back(A(sap_window_count(o, s, w, count_include_pad)));
  }
  return counts;
}

// Copies input row y, channels [c0, c0 + lanes) of batch item b, into `dst` as the accumulation
// type: dst[x * lanes + l], zero past the map's width, and all zero past its height.
template <typename T, typename A>
void load_row(const T* input, const Strided4& xs, int64_t b, int64_t c0, int64_t lanes,
              int64_t y, std::vector<A>& dst) {
  std::fill(dst.begin() + xs.w * lanes, dst.end(), A(0));
  if (y >= xs.h) {
    std::fill(dst.begin(), dst.begin() + xs.w * lanes, A(0));
    return;
  }
  const T* src = input + b * xs.sn + c0 * xs.sc + y * xs.sh;
  for (int64_t x = 0; x < xs.w; ++x)
    for (int64_t l = 0; l < lanes; ++l) dst[x * lanes + l] = A(src[x * xs.sw + l * xs.sc]);
}

// Channels processed together by one task: one when rows are contiguous (NCHW), up to 16 when
// channels are the innermost dimension (channels_last), so each pixel's read is a cache line
// rather than one element of a line that another task reads again.
inline int64_t lanes_for(const Strided4& s) {
  return s.sc == 1 && s.c > 1 ? std::min<int64_t>(16, s.c) : 1;
}

// kLanes = 1 (the NCHW case) lets the compiler drop the lane loops and vectorise the rows.
template <typename T, int64_t kLanes>
void forward(const T* input, Strided4 xs, const std::vector<T*>& outs,
             const std::vector<Strided4>& os, int64_t levels, bool count_include_pad) {
  using A = acc_t<T>;
  const auto counts = level_counts<A>(xs.h, xs.w, levels, count_include_pad);
  const int64_t max_lanes = kLanes == 1 ? 1 : lanes_for(xs);
  const int64_t groups = (xs.c + max_lanes - 1) / max_lanes;
  at::parallel_for(0, xs.n * groups, 1, [&](int64_t begin, int64_t end) {
    BorderedGrid<SapCell<A>> cur, next;
    std::vector<A> row0(2 * sap_out_size(xs.w, 2) * max_lanes), row1(row0.size());
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / groups, c0 = (task % groups) * max_lanes;
      const int64_t lanes = kLanes == 1 ? 1 : std::min(max_lanes, xs.c - c0);
      cur.reset(sap_out_size(xs.h, 2), sap_out_size(xs.w, 2), lanes);
      for (int64_t i = 0; i < cur.rows; ++i) {
        load_row(input, xs, b, c0, lanes, 2 * i, row0);
        load_row(input, xs, b, c0, lanes, 2 * i + 1, row1);
        SapCell<A>* dst = cur.at(i, 0);
        for (int64_t k = 0; k < cur.cols; ++k)
          for (int64_t l = 0; l < lanes; ++l) {
            const int64_t left = 2 * k * lanes + l;  // pixel 2k, lane l
            const A p00 = row0[left], p01 = row0[left + lanes];
            const A p10 = row1[left], p11 = row1[left + lanes];
            dst[k * lanes + l] = {(p00 + p01) + (p10 + p11), p00 + p10, p00 + p01, p00};
          }
      }
      for (int64_t j = 0; j < levels; ++j) {
        if (j > 0) {
          next.reset(sap_out_size(cur.rows, 2), sap_out_size(cur.cols, 2), lanes);
          for (int64_t i = 0; i < next.rows; ++i)
            for (int64_t k = 0; k < next.cols; ++k) {
              SapCell<A>* dst = next.at(i, k);
              const SapCell<A>* c00 = cur.at(2 * i, 2 * k);
              const SapCell<A>* c01 = cur.at(2 * i, 2 * k + 1);
              const SapCell<A>* c10 = cur.at(2 * i + 1, 2 * k);
              const SapCell<A>* c11 = cur.at(2 * i + 1, 2 * k + 1);
              for (int64_t l = 0; l < lanes; ++l)
                dst[l] = sap_merge(c00[l], c01[l], c10[l], c11[l]);
            }
          std::swap(cur, next);
        }
        const Strided4& o = os[j];
        int64_t l = 0;
        const auto cell = [&](int64_t i, int64_t k) { return cur.at(i, k)[l]; };
        for (int64_t oy = 0; oy < cur.rows; ++oy) {
          T* out_row = outs[j] + b * o.sn + c0 * o.sc + oy * o.sh;
          const A count_y = counts[j].rows[oy];
          for (int64_t ox = 0; ox < cur.cols; ++ox) {
            const A count = count_y * counts[j].cols[ox];
            for (l = 0; l < lanes; ++l)
              out_row[ox * o.sw + l * o.sc] = T(sap_window_sum<A>(cell, oy, ox) / count);
          }
        }
      }
    }
  });
}

// Level j's part of the gradient of input pixel x in the current row: the row sums v of windows
// x/s and x/s + 1, plus, on the grid (x % s == 0), that of window x/s - 1. From the coarsest
// level down, `blocks` and `points` fold each coarser level into level j's block and grid-point
// indices, so each pixel finally reads two numbers instead of 2 or 3 per level.
template <typename T>
void backward(const std::vector<const T*>& grads, const std::vector<Strided4>& gs, T* grad_input,
              Strided4 xs, int64_t levels, bool count_include_pad) {
  using A = acc_t<T>;
  const auto counts = level_counts<A>(xs.h, xs.w, levels, count_include_pad);
  at::parallel_for(0, xs.n * xs.c, 1, [&](int64_t begin, int64_t end) {
    // Per level: the output gradient divided by its divisor; the sum of its rows whose windows
    // contain the current input row (v[ox + 1] for ox in [-1, outputs]); the folded sums.
    std::vector<BorderedGrid<A>> weights(levels);
    std::vector<A> v;
    std::vector<std::vector<A>> blocks(levels), points(levels);
    for (int64_t plane_index = begin; plane_index < end; ++plane_index) {
      const int64_t b = plane_index / xs.c, c = plane_index % xs.c;
      for (int64_t j = 0; j < levels; ++j) {
        const Strided4& g = gs[j];
        const T* g_plane = grads[j] + b * g.sn + c * g.sc;
        weights[j].reset(g.h, g.w);
        blocks[j].resize(g.w);
        points[j].resize(g.w);
        for (int64_t oy = 0; oy < g.h; ++oy) {
          A* dst = weights[j].at(oy, 0);
          const A count_y = counts[j].rows[oy];
          for (int64_t ox = 0; ox < g.w; ++ox)
            dst[ox] = A(g_plane[oy * g.sh + ox * g.sw]) / (count_y * counts[j].cols[ox]);
        }
      }
      T* gx_plane = grad_input + b * xs.sn + c * xs.sc;
      for (int64_t y = 0; y < xs.h; ++y) {
        for (int64_t j = levels - 1; j >= 0; --j) {
          const BorderedGrid<A>& wg = weights[j];
          const SapRange r = sap_windows_containing(y, int64_t(2) << j);
          v.assign(wg.cols + 2, A(0));
          for (int64_t oy = r.first; oy <= r.last; ++oy) {
            const A* row = wg.at(oy, -1);
            for (int64_t k = 0; k < wg.cols + 2; ++k) v[k] += row[k];
          }
          A* blk = blocks[j].data();
          A* pts = points[j].data();
          for (int64_t k = 0; k < wg.cols; ++k) {
            blk[k] = v[k + 1] + v[k + 2];
            pts[k] = v[k];
          }
          if (j + 1 < levels) {
            const A* coarse_blk = blocks[j + 1].data();
            const A* coarse_pts = points[j + 1].data();
            for (int64_t k = 0; k < wg.cols; ++k) blk[k] += coarse_blk[k >> 1];
            for (int64_t k = 0; k < wg.cols; k += 2) pts[k] += coarse_pts[k >> 1];
          }
        }
        T* dst = gx_plane + y * xs.sh;
        const A* blk = blocks[0].data();
        const A* pts = points[0].data();
        for (int64_t x = 0; x < xs.w; ++x)
          dst[x * xs.sw] = T(blk[x >> 1] + ((x & 1) == 0 ? pts[x >> 1] : A(0)));
      }
    }
  });
}

std::vector<at::Tensor> spatial_aware_pool_cpu(const at::Tensor& x, int64_t levels,
                                               bool count_include_pad) {
  check_spatial_aware_pool_args(x, levels);
  std::vector<at::Tensor> outs;
  for (int64_t j = 1; j <= levels; ++j)
    outs.push_back(at::empty(spatial_aware_pool_shape(x, j),
                             x.options().memory_format(output_format(x))));
  if (x.numel() == 0) return outs;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spatial_aware_pool_cpu", [&] {
    std::vector<scalar_t*> out_ptrs;
    std::vector<Strided4> out_strides;
    for (auto& o : outs) {
      out_ptrs.push_back(o.mutable_data_ptr<scalar_t>());
      out_strides.push_back(strided4(o));
    }
    const auto run = lanes_for(strided4(x)) == 1 ? &forward<scalar_t, 1> : &forward<scalar_t, 0>;
    run(x.const_data_ptr<scalar_t>(), strided4(x), out_ptrs, out_strides, levels,
        count_include_pad);
  });
  return outs;
}

at::Tensor spatial_aware_pool_backward_cpu(at::TensorList grad_outputs, const at::Tensor& x,
                                           int64_t levels, bool count_include_pad) {
  check_spatial_aware_pool_args(x, levels);
  check_spatial_aware_pool_grads(grad_outputs, x, levels);
  // The kernel works plane by plane; for channels_last, planes are strided by C and the tasks
  // would fight over cache lines (several times slower than the two layout copies).
  const bool channels_last = output_format(x) == at::MemoryFormat::ChannelsLast;
  auto grad_input = empty_output(x.sizes(), x.options());
  if (x.numel() == 0) return grad_input.contiguous(output_format(x));
  std::vector<at::Tensor> grads;
  for (const auto& g : grad_outputs) grads.push_back(channels_last ? g.contiguous() : g);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spatial_aware_pool_backward_cpu", [&] {
    std::vector<const scalar_t*> grad_ptrs;
    std::vector<Strided4> grad_strides;
    for (const auto& g : grads) {
      grad_ptrs.push_back(g.const_data_ptr<scalar_t>());
      grad_strides.push_back(strided4(g));
    }
    backward<scalar_t>(grad_ptrs, grad_strides, grad_input.mutable_data_ptr<scalar_t>(),
                       strided4(grad_input), levels, count_include_pad);
  });
  return channels_last ? grad_input.contiguous(at::MemoryFormat::ChannelsLast) : grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(rtseg, CPU, m) {
  m.impl("spatial_aware_pool", &spatial_aware_pool_cpu);
  m.impl("spatial_aware_pool_backward", &spatial_aware_pool_backward_cpu);
}

}  // namespace rtseg
