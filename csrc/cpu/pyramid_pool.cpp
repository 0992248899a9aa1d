// pyramid_pool on the CPU: per (batch, channel) plane, one read of the input gives the atom sums
// (csrc/common/pyramid_pool.h) and every level; the backward writes each input gradient once.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "pyramid_pool.h"

namespace rtseg {
namespace {

template <typename T>
void forward(const T* x, Strided4 xs, T* out, const PyramidPlan& p, const int32_t* maps) {
  using A = acc_t<T>;
  const int32_t* ymap = maps;
  const int32_t* xmap = maps + xs.h + 1;
  at::parallel_for(0, xs.n * xs.c, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> colsum(xs.w), atoms(p.atoms_h * p.atoms_w), values(p.total);
    for (int64_t plane = begin; plane < end; ++plane) {
      const T* in = x + (plane / xs.c) * xs.sn + (plane % xs.c) * xs.sc;
      std::fill(colsum.begin(), colsum.end(), A(0));
      std::fill(atoms.begin(), atoms.end(), A(0));
      for (int64_t y = 0; y < xs.h; ++y) {
        const T* row = in + y * xs.sh;
        if (xs.sw == 1) {
          for (int64_t c = 0; c < xs.w; ++c) colsum[c] += row[c];
        } else {
          for (int64_t c = 0; c < xs.w; ++c) colsum[c] += row[c * xs.sw];
        }
        if (y + 1 == xs.h || ymap[y + 1] != ymap[y]) {  // last row of an atom row
          A* atom_row = atoms.data() + ymap[y] * p.atoms_w;
          for (int64_t c = 0; c < xs.w; ++c) atom_row[xmap[c]] += colsum[c];
          std::fill(colsum.begin(), colsum.end(), A(0));
        }
      }
      for (int l = 0; l < p.levels; ++l) {
        const A* cells = p.src[l] < 0 ? atoms.data() : values.data() + p.offset[p.src[l]];
        const PoolSource s = level_source(p, l, ymap, xmap);
        for (int i = 0; i < p.oh[l]; ++i)
          for (int j = 0; j < p.ow[l]; ++j)
            values[p.offset[l] + i * p.ow[l] + j] =
                pool_bin(cells, source_width(p, l), s, p.oh[l], p.ow[l], i, j);
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
  at::parallel_for(0, xs.n * xs.c, 1, [&](int64_t begin, int64_t end) {
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
      for (int l = p.levels - 1; l >= 0; --l) {
        if (p.src[l] < 0) continue;
        const PoolSource s = level_source(p, l, ymap, xmap);
        A* cells = grads.data() + p.offset[p.src[l]];
        for (int64_t r = 0; r < s.h; ++r)
          unpool_row(cells + r * s.w, r, s, grads.data() + p.offset[l], p.oh[l], p.ow[l]);
      }
      std::fill(atoms.begin(), atoms.end(), A(0));
      for (int l = 0; l < p.levels; ++l) {
        if (p.src[l] >= 0) continue;
        const PoolSource s = level_source(p, l, ymap, xmap);
        for (int64_t r = 0; r < p.atoms_h; ++r)
          unpool_row(atoms.data() + r * p.atoms_w, r, s, grads.data() + p.offset[l], p.oh[l],
                     p.ow[l]);
      }
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
  auto grad_x = at::empty(x.sizes(), x.options().memory_format(output_format(x)));
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
