// pyramid_pool on the CPU: per (batch, channel) plane, one read of the input gives the atom sums
// (csrc/common/pyramid_pool.h) and every level; the backward writes each input gradient once.
// The CUDA kernels use the same bin geometry (bin_rect) through pool_bin / unpool_row.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cpu/output_arena.h"
#include "pyramid_pool.h"

namespace rtseg {
namespace {

// Every bin's rectangle and 1 / count, computed once per call: the bin boundaries are the same
// for every plane, so the per-plane loops below do no integer divisions.
struct Bins {
  std::vector<BinRect> rect;  // one per level value, at the level's offset
  std::vector<double> inv_count;
  Bins(const PyramidPlan& p, const int32_t* ymap, const int32_t* xmap)
      : rect(p.total), inv_count(p.total) {
    for (int l = 0; l < p.levels; ++l) {
      const PoolSource s = level_source(p, l, ymap, xmap);
      for (int i = 0; i < p.oh[l]; ++i)
        for (int j = 0; j < p.ow[l]; ++j) {
          const int q = p.offset[l] + i * p.ow[l] + j;
          rect[q] = bin_rect(s, p.oh[l], p.ow[l], i, j);
          inv_count[q] = 1.0 / static_cast<double>(rect[q].count);
        }
    }
  }
};

template <typename T>
void forward(const T* x, Strided4 xs, T* out, const PyramidPlan& p, const int32_t* maps) {
  using A = acc_t<T>;
  const int32_t* ymap = maps;
  const int32_t* xmap = maps + xs.h + 1;
  const int32_t* col_starts = maps + xs.h + xs.w + 2 + p.atoms_h + 1;
  const Bins bins(p, ymap, xmap);
  at::parallel_for(0, xs.n * xs.c, grain_for(xs.h * xs.w), [&](int64_t begin, int64_t end) {
    std::vector<A> colsum(xs.w), atoms(p.atoms_h * p.atoms_w), values(p.total);
    for (int64_t plane = begin; plane < end; ++plane) {
      const T* in = x + (plane / xs.c) * xs.sn + (plane % xs.c) * xs.sc;
      std::fill(colsum.begin(), colsum.end(), A(0));
      for (int64_t y = 0; y < xs.h; ++y) {
        const T* row = in + y * xs.sh;
        if (xs.sw == 1) {
          for (int64_t c = 0; c < xs.w; ++c) colsum[c] += row[c];
        } else {
          for (int64_t c = 0; c < xs.w; ++c) colsum[c] += row[c * xs.sw];
        }
        if (y + 1 == xs.h || ymap[y + 1] != ymap[y]) {  // last row of an atom row
          A* atom_row = atoms.data() + ymap[y] * p.atoms_w;
          for (int q = 0; q < p.atoms_w; ++q) {
            A sum = 0;
            for (int64_t c = col_starts[q]; c < col_starts[q + 1]; ++c) sum += colsum[c];
            atom_row[q] = sum;
          }
          std::fill(colsum.begin(), colsum.end(), A(0));
        }
      }
      for (int l = 0; l < p.levels; ++l) {
        const A* cells = p.src[l] < 0 ? atoms.data() : values.data() + p.offset[p.src[l]];
        const int cw = source_width(p, l);
        for (int q = p.offset[l]; q < p.offset[l] + p.oh[l] * p.ow[l]; ++q) {
          const BinRect& b = bins.rect[q];
          A sum = 0;
          for (int64_t r = b.r0; r < b.r1; ++r)
            for (int64_t c = b.c0; c < b.c1; ++c) sum += cells[r * cw + c];
          values[q] = sum * static_cast<A>(bins.inv_count[q]);
        }
      }
      T* o = out + plane * p.out_total;
      for (int k = 0; k < p.outputs; ++k) {
        const int l = p.out_level[k];
        for (int q = 0; q < p.oh[l] * p.ow[l]; ++q) *o++ = static_cast<T>(values[p.offset[l] + q]);
      }
    }
  });
}

template <typename T>
void backward(const T* grad_out, int64_t gs_n, int64_t gs_c, int64_t gs_m, T* grad_x,
              Strided4 xs, const PyramidPlan& p, const int32_t* maps) {
  using A = acc_t<T>;
  const int32_t* ymap = maps;
  const int32_t* xmap = maps + xs.h + 1;
  const Bins bins(p, ymap, xmap);
  // Adjoint of one level's pooling: every bin adds its gradient / count to its source cells.
  auto unpool = [&](int l, const A* grads, A* cells) {
    const int cw = source_width(p, l);
    for (int q = p.offset[l]; q < p.offset[l] + p.oh[l] * p.ow[l]; ++q) {
      const BinRect& b = bins.rect[q];
      const A g = grads[q] * static_cast<A>(bins.inv_count[q]);
      for (int64_t r = b.r0; r < b.r1; ++r)
        for (int64_t c = b.c0; c < b.c1; ++c) cells[r * cw + c] += g;
    }
  };
  at::parallel_for(0, xs.n * xs.c, grain_for(xs.h * xs.w), [&](int64_t begin, int64_t end) {
    std::vector<A> grads(p.total), atoms(p.atoms_h * p.atoms_w);
    std::vector<T> row_grad(xs.w);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t b = plane / xs.c, ch = plane % xs.c;
      const T* g = grad_out + b * gs_n + ch * gs_c;
      std::fill(grads.begin(), grads.end(), A(0));
      for (int k = 0, m = 0; k < p.outputs; ++k) {
        const int l = p.out_level[k];
        for (int q = 0; q < p.oh[l] * p.ow[l]; ++q, ++m) grads[p.offset[l] + q] += g[m * gs_m];
      }
      // Cascaded levels hand their gradient down to the level they pool, smallest first.
      for (int l = p.levels - 1; l >= 0; --l)
        if (p.src[l] >= 0) unpool(l, grads.data(), grads.data() + p.offset[p.src[l]]);
      std::fill(atoms.begin(), atoms.end(), A(0));
      for (int l = 0; l < p.levels; ++l)
        if (p.src[l] < 0) unpool(l, grads.data(), atoms.data());
      T* gx = grad_x + b * xs.sn + ch * xs.sc;
      for (int64_t y = 0; y < xs.h; ++y) {
        if (y == 0 || ymap[y] != ymap[y - 1]) {
          const A* atom_row = atoms.data() + ymap[y] * p.atoms_w;
          for (int64_t c = 0; c < xs.w; ++c) row_grad[c] = static_cast<T>(atom_row[xmap[c]]);
        }
        T* row = gx + y * xs.sh;
        if (xs.sw == 1) {
          std::copy(row_grad.begin(), row_grad.end(), row);
        } else {
          for (int64_t c = 0; c < xs.w; ++c) row[c * xs.sw] = row_grad[c];
        }
      }
    }
  });
}

at::Tensor pyramid_pool_cpu(const at::Tensor& x, at::IntArrayRef grids, bool keep_aspect_ratio,
                            bool cascade) {
  check_pyramid_pool_input(x);
  const auto geo = pyramid_geometry(x.size(2), x.size(3), grids, keep_aspect_ratio, cascade);
  auto out = at::empty({x.size(0), x.size(1), geo.plan.out_total}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pyramid_pool_cpu", [&] {
    forward<scalar_t>(x.const_data_ptr<scalar_t>(), strided4(x), out.mutable_data_ptr<scalar_t>(),
                      geo.plan, geo.maps.data());
  });
  return out;
}

at::Tensor pyramid_pool_backward_cpu(const at::Tensor& grad_output, const at::Tensor& x,
                                     at::IntArrayRef grids, bool keep_aspect_ratio, bool cascade) {
  check_pyramid_pool_input(x);
  const auto geo = pyramid_geometry(x.size(2), x.size(3), grids, keep_aspect_ratio, cascade);
  check_pyramid_pool_grad(grad_output, x, geo.plan);
  auto grad_x = empty_output_like(x);
  if (grad_x.numel() == 0) return grad_x;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pyramid_pool_backward_cpu", [&] {
    backward<scalar_t>(grad_output.const_data_ptr<scalar_t>(), grad_output.stride(0),
                       grad_output.stride(1), grad_output.stride(2),
                       grad_x.mutable_data_ptr<scalar_t>(), strided4(grad_x), geo.plan,
                       geo.maps.data());
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(rtseg, CPU, m) {
  m.impl("pyramid_pool", &pyramid_pool_cpu);
  m.impl("pyramid_pool_backward", &pyramid_pool_backward_cpu);
}

}  // namespace rtseg
