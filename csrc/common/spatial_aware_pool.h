#pragma once
// Window and pyramid math of spatial_aware_pool, shared by the CPU and CUDA kernels.
//
// Level j pools with stride s = 2**j, kernel 2s+1, padding s, so output o's window along one axis
// is [o*s - s, o*s + s]: the two stride-s blocks o-1 and o plus the single grid line (o+1)*s.
// Per level we keep, for every s x s block (i, k) of the map, a cell with four partial sums:
//   block: the whole block            col: its column k*s (rows of the block only)
//   row: its row i*s (columns of the block only)   point: the pixel (i*s, k*s)
// A window is then 4 blocks + 2 cols + 2 rows + 1 point of the level's cells, and level j+1's
// cells are sums of level j's 2 x 2 cells. Every partial sum adds values of the map without
// subtracting anything, so float32 accumulation keeps the precision of a direct sum (a summed-
// area table would subtract large, nearly equal prefixes).
#include "common/core.h"

namespace rtseg {

constexpr int kSapMaxLevels = 6;

template <typename A> struct SapCell {
  A block, col, row, point;
};

template <typename A> RTSEG_HD SapCell<A> sap_pixel_cell(A v) { return {v, v, v, v}; }

// Level j+1's cell (i, k) from level j's cells (2i + a, 2k + b), a, b in {0, 1}; cells outside
// the map are zero.
template <typename A>
RTSEG_HD SapCell<A> sap_merge(const SapCell<A>& c00, const SapCell<A>& c01,
                              const SapCell<A>& c10, const SapCell<A>& c11) {
  return {(c00.block + c01.block) + (c10.block + c11.block), c00.col + c10.col,
          c00.row + c01.row, c00.point};
}

// Blocks (= outputs) along an axis of length n at stride s: ceil(n / s).
RTSEG_HD int64_t sap_out_size(int64_t n, int64_t s) { return (n + s - 1) / s; }

// avg_pool2d's divisor along one axis for output o (the 2-D divisor is the product of the two).
RTSEG_HD int64_t sap_window_count(int64_t o, int64_t s, int64_t n, bool count_include_pad) {
  const int64_t start = o * s - s;
  const int64_t padded_end = start + 2 * s + 1 < n + s ? start + 2 * s + 1 : n + s;
  if (count_include_pad) return padded_end - start;
  return (padded_end < n ? padded_end : n) - (start > 0 ? start : 0);
}

// Window sum of output (oy, ox) of a level. `cell(i, k)` returns the level's cell, and must
// return zeros for i, k in {-1, blocks}: the callers store the cells with a zero border.
template <typename A, typename Cell>
RTSEG_HD A sap_window_sum(const Cell& cell, int64_t oy, int64_t ox) {
  const SapCell<A> a = cell(oy - 1, ox - 1), b = cell(oy - 1, ox), c = cell(oy - 1, ox + 1);
  const SapCell<A> d = cell(oy, ox - 1), e = cell(oy, ox), f = cell(oy, ox + 1);
  const SapCell<A> g = cell(oy + 1, ox - 1), h = cell(oy + 1, ox), i = cell(oy + 1, ox + 1);
  return ((a.block + b.block) + (d.block + e.block)) + (c.col + f.col) + (g.row + h.row) +
         i.point;
}

// Backward: the adjoint of the pyramid. `w(oy, ox)` is an output's gradient divided by its
// divisor, zero outside the outputs (oy or ox in {-1, outputs}). Gradient of level j's cell
// (i, k) from level j's own outputs, i.e. from the windows whose sums read it:
template <typename A, typename W>
RTSEG_HD SapCell<A> sap_cell_gradient(const W& w, int64_t i, int64_t k) {
  return {(w(i, k) + w(i, k + 1)) + (w(i + 1, k) + w(i + 1, k + 1)), w(i, k - 1) + w(i + 1, k - 1),
          w(i - 1, k) + w(i - 1, k + 1), w(i - 1, k - 1)};
}

// Adjoint of sap_merge: adds to the gradient of level j's cell (i, k) what it gets from the
// gradient `coarse` of level j+1's cell (i/2, k/2).
template <typename A>
RTSEG_HD void sap_fold(SapCell<A>& cell, const SapCell<A>& coarse, int64_t i, int64_t k) {
  const bool even_i = (i & 1) == 0, even_k = (k & 1) == 0;
  cell.block += coarse.block;
  if (even_k) cell.col += coarse.col;
  if (even_i) cell.row += coarse.row;
  if (even_i && even_k) cell.point += coarse.point;
}
// Adjoint of the level 1 cells' construction: pixel (y, x)'s gradient from its level 1 cell's.
template <typename A>
RTSEG_HD A sap_pixel_gradient(const SapCell<A>& level1, int64_t y, int64_t x) {
  const bool even_y = (y & 1) == 0, even_x = (x & 1) == 0;
  return level1.block + (even_x ? level1.col : A(0)) + (even_y ? level1.row : A(0)) +
         (even_y && even_x ? level1.point : A(0));
}

// Outputs of a level whose window contains position p along an axis: [first, last], where
// first may be -1 and last may equal the output count (zero-border entries for the callers).
struct SapRange {
  int64_t first, last;
};
RTSEG_HD SapRange sap_windows_containing(int64_t p, int64_t s) {
  const int64_t q = p / s;
  return {p % s == 0 ? q - 1 : q, q + 1};
}

}  // namespace rtseg
