#pragma once
// Pyramid pooling math shared by the CPU and CUDA kernels.
//
// Every level pooled from the input cuts the input rows and columns at its adaptive_avg_pool2d
// bin boundaries. Cutting at the union of those boundaries gives "atoms": rectangles such that
// every bin of every such level is a whole number of atoms, even where bins overlap. One read of
// the input yields the atom sums, and every level follows from them; the backward pass is the
// same in reverse (level gradients -> atom gradients -> one write of the input gradient).
#include "common/core.h"

namespace rtseg {

constexpr int kMaxPyramidLevels = 16;

// adaptive_avg_pool2d's bin i of `out` bins over `in` cells is [start, end).
RTSEG_HD int64_t adaptive_start(int64_t i, int64_t in, int64_t out) { return (i * in) / out; }
RTSEG_HD int64_t adaptive_end(int64_t i, int64_t in, int64_t out) {
  return ((i + 1) * in + out - 1) / out;
}

// Whether coordinate q (0..n) is a bin boundary (start or end) of adaptive pooling of n cells
// into `bins` bins, in O(1): the only bin that can start at q is i = ceil(q * bins / n), the only
// one that can end there j - 1 with j = floor(q * bins / n) (both functions are monotone in i).
RTSEG_HD bool is_bin_boundary(int64_t q, int64_t n, int64_t bins) {
  const int64_t i = (q * bins + n - 1) / n, j = (q * bins) / n;
  return (i < bins && adaptive_start(i, n, bins) == q) ||
         (j >= 1 && adaptive_end(j - 1, n, bins) == q);
}

// The cells a level pools: `h` x `w` source cells, grouped into rows/columns by `ymap`/`xmap`
// (atom index of each coordinate 0..h / 0..w) or taken one by one when the maps are null.
struct PoolSource {
  const int32_t* ymap;
  const int32_t* xmap;
  int64_t h, w;
};

RTSEG_HD int64_t map_index(const int32_t* map, int64_t p) { return map ? map[p] : p; }

// Levels in computation order. Level l has oh x ow bins at `offset[l]` of the per-plane value
// buffer; src[l] < 0: pooled from the input (through the atoms), else from level src[l] (cascade).
// Output entry k (the order of `grids`) is a copy of level out_level[k].
struct PyramidPlan {
  int levels, outputs;
  int oh[kMaxPyramidLevels], ow[kMaxPyramidLevels];
  int src[kMaxPyramidLevels], offset[kMaxPyramidLevels];
  int out_level[kMaxPyramidLevels];
  int total;                  // sum of oh * ow over levels
  int out_total;              // M = sum of oh * ow over output entries
  int atoms_h, atoms_w;
  int64_t in_h, in_w;
};

// Whether the atoms cut the input rows (rows true, q in 0..in_h) or columns at q: at both ends
// and at every bin boundary of every level pooled from the input. The host plan and the CUDA
// kernel that builds the index maps on the device both number the atoms with this.
RTSEG_HD bool is_atom_cut(const PyramidPlan& p, bool rows, int64_t q) {
  const int64_t n = rows ? p.in_h : p.in_w;
  if (q == 0 || q == n) return true;
  for (int l = 0; l < p.levels; ++l)
    if (p.src[l] < 0 && is_bin_boundary(q, n, rows ? p.oh[l] : p.ow[l])) return true;
  return false;
}

// The source a level pools (the atoms of the input, or the level it cascades from).
RTSEG_HD PoolSource level_source(const PyramidPlan& p, int l, const int32_t* ymap,
                                 const int32_t* xmap) {
  if (p.src[l] < 0) return {ymap, xmap, p.in_h, p.in_w};
  return {nullptr, nullptr, p.oh[p.src[l]], p.ow[p.src[l]]};
}

// Width of the buffer holding a level's source cells.
RTSEG_HD int source_width(const PyramidPlan& p, int l) {
  return p.src[l] < 0 ? p.atoms_w : p.ow[p.src[l]];
}

// Bin (i, j) of an oh x ow level as a rectangle of source cells [r0, r1) x [c0, c1) and the
// number of input elements (or source cells, for a cascaded level) it averages.
struct BinRect {
  int64_t r0, r1, c0, c1, count;
};

RTSEG_HD BinRect bin_rect(PoolSource s, int oh, int ow, int i, int j) {
  const int64_t y0 = adaptive_start(i, s.h, oh), y1 = adaptive_end(i, s.h, oh);
  const int64_t x0 = adaptive_start(j, s.w, ow), x1 = adaptive_end(j, s.w, ow);
  return {map_index(s.ymap, y0), map_index(s.ymap, y1), map_index(s.xmap, x0),
          map_index(s.xmap, x1), (y1 - y0) * (x1 - x0)};
}

// Mean of bin (i, j) of an oh x ow level over `cells` (row width `cells_w`) laid out as `s`.
// Cells are `step` elements apart (several channels interleaved, channel fastest).
template <typename A>
RTSEG_HD A pool_bin(const A* cells, int cells_w, PoolSource s, int oh, int ow, int i, int j,
                    int step) {
  const BinRect b = bin_rect(s, oh, ow, i, j);
  A sum = 0;
  for (int64_t r = b.r0; r < b.r1; ++r)
    for (int64_t c = b.c0; c < b.c1; ++c) sum += cells[(r * cells_w + c) * step];
  return sum / A(b.count);
}

// Adjoint of pool_bin for one row `r` of the cells: adds grad[i][j] / count to every cell of
// row r inside bin (i, j). Rows are independent, so threads may own rows without races. Cells
// and gradients are `step` elements apart.
template <typename A>
RTSEG_HD void unpool_row(A* cells_row, int64_t r, PoolSource s, const A* grad, int oh, int ow,
                         int step) {
  for (int i = 0; i < oh; ++i) {
    const int64_t y0 = adaptive_start(i, s.h, oh), y1 = adaptive_end(i, s.h, oh);
    if (r < map_index(s.ymap, y0) || r >= map_index(s.ymap, y1)) continue;
    for (int j = 0; j < ow; ++j) {
      const BinRect b = bin_rect(s, oh, ow, i, j);
      const A g = grad[(i * ow + j) * step] / A(b.count);
      for (int64_t c = b.c0; c < b.c1; ++c) cells_row[c * step] += g;
    }
  }
}

}  // namespace rtseg
