// spatial_aware_pool CUDA kernels (math in common/spatial_aware_pool.h).
//
// Forward: one CTA per (plane, TILE x TILE input tile) loads the tile plus a 4-pixel halo into
// shared memory once, builds level 1 and level 2 cells there, writes those levels' outputs and
// level 3's cells (1/64 of the map) to a scratch buffer. Each further level is one small kernel
// that reads level j's cells, writes level j's outputs and level j+1's cells.
// Backward: the same pyramid run backwards, with gathers only (no atomics, bitwise repeatable):
// small kernels give each cell of levels >= 3 its gradient, coarsest first, each level folding in
// the next coarser one; a tile kernel does the same for levels 2 and 1 in shared memory and
// writes every pixel's gradient from its level 1 cell.
// channels_last maps (chosen from the strides) get channel-fastest variants of every kernel: a
// tile CTA takes a group of adjacent channels and the cell buffer is channel-fastest, so that
// neighbouring threads read and write neighbouring channels, adjacent in memory.
#include "cuda/cuda_utils.cuh"
#include "cuda/spatial_aware_pool.cuh"

#include <vector>

namespace rtseg {
namespace {

// Tiles: a block takes CG adjacent channels of one TILE x TILE input tile. NCHW input gets one
// channel (a block reads its plane along rows) and the largest tile that fits: float cells need
// 46 KB of shared memory at 64, double cells as much at 32. channels_last input gets 16 x 16
// tiles of 8 float (4 double) cells' channels, so that neighbouring threads take neighbouring
// channels of a pixel, adjacent in memory (32 bytes per pixel for float32), in the same 42 KB.
template <typename A, bool CL> struct Tiling {
  static constexpr int tile = CL ? 16 : (sizeof(A) == 8 ? 32 : 64);
  static constexpr int channels = CL ? (sizeof(A) == 8 ? 4 : 8) : 1;
};

// Resident blocks per SM that the kernels without large shared arrays ask for: all 8 (32
// registers) with float cells, 5 with double cells, which need about 48 registers.
template <typename T> constexpr int min_blocks() { return sizeof(acc_t<T>) == 8 ? 5 : 8; }

// Cells in shared memory as four arrays, so that threads reading one field of neighbouring
// cells hit distinct banks.
template <typename A, int N> struct SharedCells {
  A block[N], col[N], row[N], point[N];
  __device__ __forceinline__ SapCell<A> operator[](int i) const {
    return {block[i], col[i], row[i], point[i]};
  }
  __device__ __forceinline__ void set(int i, const SapCell<A>& c) {
    block[i] = c.block;
    col[i] = c.col;
    row[i] = c.row;
    point[i] = c.point;
  }
};

// The cells of one level >= 3 in the scratch buffer: plane-major for NCHW launches,
// channel-fastest for channels_last ones, so that in either the coarse kernels' neighbouring
// threads (which walk the outputs in the same order) touch neighbouring cells.
template <bool CL> struct CellGrid {
  int64_t channels, rows, cols;
  // Cell (b, c, r, k) lies at origin(b, c) + (r * cols + k) * pitch().
  __device__ __forceinline__ int64_t origin(int64_t b, int64_t c) const {
    return CL ? b * rows * cols * channels + c : (b * channels + c) * rows * cols;
  }
  __device__ __forceinline__ int64_t pitch() const { return CL ? channels : 1; }
  __device__ __forceinline__ int64_t at(int64_t b, int64_t c, int64_t r, int64_t k) const {
    return origin(b, c) + (r * cols + k) * pitch();
  }
  // The inverse of at(): (b, c, r, k) of the cell at index i.
  __device__ __forceinline__ void split(int64_t i, int64_t& b, int64_t& c, int64_t& r,
                                        int64_t& k) const {
    if constexpr (CL) {
      c = i % channels;
      k = (i / channels) % cols;
      r = (i / (channels * cols)) % rows;
      b = i / (channels * cols * rows);
    } else {
      k = i % cols;
      r = (i / cols) % rows;
      c = (i / (cols * rows)) % channels;
      b = i / (cols * rows * channels);
    }
  }
  __device__ __forceinline__ CellGrid coarser() const {
    return {channels, sap_out_size(rows, 2), sap_out_size(cols, 2)};
  }
};

// The block's batch index and first channel: blockIdx.x runs over (batch, group of CG channels).
template <int CG> struct BlockChannels {
  int64_t b, c0;
  __device__ explicit BlockChannels(int64_t channels) {
    const int64_t groups = (channels + CG - 1) / CG;
    b = blockIdx.x / groups;
    c0 = (blockIdx.x % groups) * CG;
  }
};

// Writes the outputs of one level owned by a tile: n x n outputs starting at (oy0, ox0) for
// each of the block's CG channels, whose cell (oy, ox) of channel c0 + ch is
// cells[(first + (oy - oy0) * pitch + ox - ox0) * CG + ch].
template <typename T, typename A, int CG, typename Cells>
__device__ void write_tile_outputs(const Cells& cells, int first, int pitch, int n, int64_t oy0,
                                   int64_t ox0, int64_t s, const Strided4& xs, T* out,
                                   const Strided4& os, const BlockChannels<CG>& bc,
                                   bool count_include_pad) {
  for (int i = threadIdx.x; i < n * n * CG; i += kThreads) {
    const int ch = i % CG, m = i / CG;
    const int64_t oy = oy0 + m / n, ox = ox0 + m % n, c = bc.c0 + ch;
    if (oy >= os.h || ox >= os.w || c >= os.c) continue;
    const auto cell = [&](int64_t a, int64_t k) {
      return cells[(first + int(a - oy0) * pitch + int(k - ox0)) * CG + ch];
    };
    const A sum = sap_window_sum<A>(cell, oy, ox);
    const A count = A(sap_window_count(oy, s, xs.h, count_include_pad) *
                      sap_window_count(ox, s, xs.w, count_include_pad));
    out[bc.b * os.sn + c * os.sc + oy * os.sh + ox * os.sw] = from_acc<T>(sum / count);
  }
}

// Shared arrays hold entry e of the block's channel ch at e * CG + ch, and loops give thread i
// channel i % CG: with CG > 1 neighbouring threads read neighbouring channels.
template <typename T, int TILE, int CG>
__device__ __forceinline__ void fine_levels(const T* __restrict__ x, const Strided4& xs,
                                            const SapOutputs& outs, int levels,
                                            bool count_include_pad,
                                            SapCell<acc_t<T>>* __restrict__ level3_cells) {
  using A = acc_t<T>;
  constexpr int P = TILE + 8;       // pixels per side: 4 before the tile, 4 after
  constexpr int N1 = TILE / 2 + 4;  // level 1 cells per side: 2 before, 2 after
  constexpr int N2 = TILE / 4 + 2;  // level 2 cells per side: 1 before, 1 after
  constexpr int N3 = TILE / 8;      // level 3 cells of the tile itself
  __shared__ A pixels[P * P * CG];
  __shared__ SharedCells<A, N1 * N1 * CG> cells1;
  __shared__ SharedCells<A, N2 * N2 * CG> cells2;

  const BlockChannels<CG> bc(xs.c);
  const int64_t y0 = int64_t(blockIdx.z) * TILE, x0 = int64_t(blockIdx.y) * TILE;
  const T* src = x + bc.b * xs.sn;
  for (int i = threadIdx.x; i < P * P * CG; i += kThreads) {
    const int ch = i % CG, m = i / CG;
    const int64_t y = y0 - 4 + m / P, xx = x0 - 4 + m % P, c = bc.c0 + ch;
    const bool inside = c < xs.c && y >= 0 && y < xs.h && xx >= 0 && xx < xs.w;
    pixels[i] = inside ? to_acc(src[c * xs.sc + y * xs.sh + xx * xs.sw]) : A(0);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < N1 * N1 * CG; i += kThreads) {
    const int ch = i % CG, m = i / CG;
    const int r = 2 * (m / N1), q = 2 * (m % N1);
    const auto pixel = [&](int a, int k) { return pixels[(a * P + k) * CG + ch]; };
    const A p00 = pixel(r, q), p01 = pixel(r, q + 1), p10 = pixel(r + 1, q),
            p11 = pixel(r + 1, q + 1);
    cells1.set(i, {(p00 + p01) + (p10 + p11), p00 + p10, p00 + p01, p00});
  }
  __syncthreads();
  for (int i = threadIdx.x; i < N2 * N2 * CG; i += kThreads) {
    const int ch = i % CG, m = i / CG;
    const int r = 2 * (m / N2), q = 2 * (m % N2);
    const auto cell = [&](int a, int k) { return cells1[(a * N1 + k) * CG + ch]; };
    cells2.set(i, sap_merge(cell(r, q), cell(r, q + 1), cell(r + 1, q), cell(r + 1, q + 1)));
  }
  __syncthreads();
  // cells1 starts at global cell y0/2 - 2 and the tile's outputs at y0/2: two cells in.
  write_tile_outputs<T, A, CG>(cells1, 2 * N1 + 2, N1, TILE / 2, y0 / 2, x0 / 2, 2, xs,
                               static_cast<T*>(outs.data[0]), outs.shape[0], bc,
                               count_include_pad);
  if (levels >= 2)
    write_tile_outputs<T, A, CG>(cells2, N2 + 1, N2, TILE / 4, y0 / 4, x0 / 4, 4, xs,
                                 static_cast<T*>(outs.data[1]), outs.shape[1], bc,
                                 count_include_pad);
  if (levels >= 3) {
    const CellGrid<(CG > 1)> grid{xs.c, sap_out_size(xs.h, 8), sap_out_size(xs.w, 8)};
    for (int i = threadIdx.x; i < N3 * N3 * CG; i += kThreads) {
      const int ch = i % CG, m = i / CG;
      const int64_t gy = y0 / 8 + m / N3, gx = x0 / 8 + m % N3, c = bc.c0 + ch;
      if (gy >= grid.rows || gx >= grid.cols || c >= xs.c) continue;
      // cells2 starts at global cell y0/4 - 1: level 3 cell gy covers level 2 cells 2gy, 2gy+1.
      const int r = 2 * (m / N3) + 1, q = 2 * (m % N3) + 1;
      const auto cell = [&](int a, int k) { return cells2[(a * N2 + k) * CG + ch]; };
      level3_cells[grid.at(bc.b, c, gy, gx)] =
          sap_merge(cell(r, q), cell(r, q + 1), cell(r + 1, q), cell(r + 1, q + 1));
    }
  }
}

// Levels 1 and 2 per tile (plus level 3's cells when levels >= 3), one channel per block.
template <typename T, int TILE>
__global__ void __launch_bounds__(kThreads)
    fine_levels_kernel(const T* __restrict__ x, Strided4 xs, SapOutputs outs, int levels,
                       bool count_include_pad, SapCell<acc_t<T>>* __restrict__ level3_cells) {
  fine_levels<T, TILE, 1>(x, xs, outs, levels, count_include_pad, level3_cells);
}

// The same for channels_last input, CG channels per block.
template <typename T, int TILE, int CG>
__global__ void __launch_bounds__(kThreads)
    fine_levels_channels_last_kernel(const T* __restrict__ x, Strided4 xs, SapOutputs outs,
                                     int levels, bool count_include_pad,
                                     SapCell<acc_t<T>>* __restrict__ level3_cells) {
  fine_levels<T, TILE, CG>(x, xs, outs, levels, count_include_pad, level3_cells);
}

// Level j >= 3: outputs from level j's cells, and level j+1's cells when `next` is not null.
template <typename T, bool CL>
__device__ __forceinline__ void coarse_level(const SapCell<acc_t<T>>* __restrict__ cells,
                                             int64_t rows, int64_t cols, int64_t s,
                                             const Strided4& xs, T* __restrict__ out,
                                             const Strided4& os, bool count_include_pad,
                                             SapCell<acc_t<T>>* __restrict__ next) {
  using A = acc_t<T>;
  const CellGrid<CL> grid{xs.c, rows, cols}, coarser = grid.coarser();
  const int64_t total = xs.n * xs.c * rows * cols;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * kThreads) {
    int64_t b, c, oy, ox;
    grid.split(i, b, c, oy, ox);
    const SapCell<A>* plane_cells = cells + grid.origin(b, c);
    const auto cell = [&](int64_t a, int64_t k) {
      return a < 0 || a >= rows || k < 0 || k >= cols ? SapCell<A>{A(0), A(0), A(0), A(0)}
                                                       : plane_cells[(a * cols + k) * grid.pitch()];
    };
    const A count = A(sap_window_count(oy, s, xs.h, count_include_pad) *
                      sap_window_count(ox, s, xs.w, count_include_pad));
    out[b * os.sn + c * os.sc + oy * os.sh + ox * os.sw] =
        from_acc<T>(sap_window_sum<A>(cell, oy, ox) / count);
    if (next != nullptr && oy % 2 == 0 && ox % 2 == 0)
      next[coarser.at(b, c, oy / 2, ox / 2)] =
          sap_merge(cell(oy, ox), cell(oy, ox + 1), cell(oy + 1, ox), cell(oy + 1, ox + 1));
  }
}

// No min_blocks: nvcc gives it 32 registers unasked, but spills it when told to cap at 32.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    coarse_level_kernel(const SapCell<acc_t<T>>* __restrict__ cells, int64_t rows, int64_t cols,
                        int64_t s, Strided4 xs, T* __restrict__ out, Strided4 os,
                        bool count_include_pad, SapCell<acc_t<T>>* __restrict__ next) {
  coarse_level<T, false>(cells, rows, cols, s, xs, out, os, count_include_pad, next);
}

// The same over channel-fastest cells: neighbouring threads take neighbouring channels.
template <typename T>
__global__ void __launch_bounds__(kThreads, min_blocks<T>())
    coarse_level_channels_last_kernel(const SapCell<acc_t<T>>* __restrict__ cells,
                                      int64_t rows, int64_t cols, int64_t s, Strided4 xs,
                                      T* __restrict__ out, Strided4 os, bool count_include_pad,
                                      SapCell<acc_t<T>>* __restrict__ next) {
  coarse_level<T, true>(cells, rows, cols, s, xs, out, os, count_include_pad, next);
}

// Output gradient divided by its divisor, zero outside the outputs.
template <typename T>
__device__ __forceinline__ acc_t<T> divided_grad(const T* g, const Strided4& gs, int64_t oy,
                                                 int64_t ox, int64_t s, const Strided4& xs,
                                                 bool count_include_pad) {
  using A = acc_t<T>;
  if (oy < 0 || oy >= gs.h || ox < 0 || ox >= gs.w) return A(0);
  const A count = A(sap_window_count(oy, s, xs.h, count_include_pad) *
                    sap_window_count(ox, s, xs.w, count_include_pad));
  return to_acc(g[oy * gs.sh + ox * gs.sw]) / count;
}

// Backward of level j >= 3, coarsest first: the gradient of each level j cell, its own outputs'
// plus level j+1's folded in (`coarse`, null for the last level).
template <typename T, bool CL>
__device__ __forceinline__ void coarse_grad(const T* __restrict__ grad, const Strided4& gs,
                                            int64_t s, const Strided4& xs,
                                            bool count_include_pad,
                                            const SapCell<acc_t<T>>* __restrict__ coarse,
                                            SapCell<acc_t<T>>* __restrict__ cells) {
  using A = acc_t<T>;
  const CellGrid<CL> grid{gs.c, gs.h, gs.w}, coarser = grid.coarser();
  const int64_t total = gs.n * gs.c * gs.h * gs.w;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * kThreads) {
    int64_t b, c, r, k;
    grid.split(i, b, c, r, k);
    const T* g = grad + b * gs.sn + c * gs.sc;
    const auto w = [&](int64_t oy, int64_t ox) {
      return divided_grad(g, gs, oy, ox, s, xs, count_include_pad);
    };
    SapCell<A> cell = sap_cell_gradient<A>(w, r, k);
    if (coarse != nullptr) sap_fold(cell, coarse[coarser.at(b, c, r / 2, k / 2)], r, k);
    cells[i] = cell;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, min_blocks<T>())
    coarse_grad_kernel(const T* __restrict__ grad, Strided4 gs, int64_t s, Strided4 xs,
                       bool count_include_pad, const SapCell<acc_t<T>>* __restrict__ coarse,
                       SapCell<acc_t<T>>* __restrict__ cells) {
  coarse_grad<T, false>(grad, gs, s, xs, count_include_pad, coarse, cells);
}

// The same over channel-fastest cells: neighbouring threads take neighbouring channels.
template <typename T>
__global__ void __launch_bounds__(kThreads, min_blocks<T>())
    coarse_grad_channels_last_kernel(const T* __restrict__ grad, Strided4 gs, int64_t s,
                                     Strided4 xs, bool count_include_pad,
                                     const SapCell<acc_t<T>>* __restrict__ coarse,
                                     SapCell<acc_t<T>>* __restrict__ cells) {
  coarse_grad<T, true>(grad, gs, s, xs, count_include_pad, coarse, cells);
}

// Fills w, M x M entries per channel laid out as in fine_levels, with level j's divided output
// gradients from output (oy0, ox0) on, for the block's channels (zeros past the last channel).
template <typename T, int M, int CG>
__device__ __forceinline__ void load_divided_grads(acc_t<T>* w, const SapGrads& grads, int j,
                                                   int64_t oy0, int64_t ox0,
                                                   const BlockChannels<CG>& bc,
                                                   const Strided4& gxs, bool count_include_pad) {
  const Strided4& gs = grads.shape[j - 1];
  const T* g = static_cast<const T*>(grads.data[j - 1]) + bc.b * gs.sn;
  for (int i = threadIdx.x; i < M * M * CG; i += kThreads) {
    const int ch = i % CG, m = i / CG;
    const int64_t c = bc.c0 + ch;
    w[i] = c < gxs.c ? divided_grad(g + c * gs.sc, gs, oy0 + m / M, ox0 + m % M,
                                    int64_t(1) << j, gxs, count_include_pad)
                     : acc_t<T>(0);
  }
}

// Backward of levels 1 and 2 and the pixels, per (CG channels, TILE x TILE tile): the divided
// output gradients of the tile's windows (plus one each side) in shared memory, level 2 then
// level 1 cell gradients, level 3's folded in from `level3` (null when levels < 3), then each
// pixel. Shared arrays and loops are laid out as in fine_levels.
template <typename T, int TILE, int CG>
__device__ __forceinline__ void fine_grad(const SapGrads& grads, T* __restrict__ grad_x,
                                          const Strided4& gxs, int levels,
                                          bool count_include_pad,
                                          const SapCell<acc_t<T>>* __restrict__ level3) {
  using A = acc_t<T>;
  constexpr int M1 = TILE / 2 + 2, M2 = TILE / 4 + 2;  // outputs per side, 1 before, 1 after
  constexpr int N1 = TILE / 2, N2 = TILE / 4;          // cells per side
  __shared__ A w1[M1 * M1 * CG];
  __shared__ A w2[M2 * M2 * CG];
  __shared__ SharedCells<A, N1 * N1 * CG> cells1;
  __shared__ SharedCells<A, N2 * N2 * CG> cells2;

  const BlockChannels<CG> bc(gxs.c);
  const int64_t y0 = int64_t(blockIdx.z) * TILE, x0 = int64_t(blockIdx.y) * TILE;
  load_divided_grads<T, M1>(w1, grads, 1, y0 / 2 - 1, x0 / 2 - 1, bc, gxs, count_include_pad);
  if (levels >= 2)
    load_divided_grads<T, M2>(w2, grads, 2, y0 / 4 - 1, x0 / 4 - 1, bc, gxs, count_include_pad);
  __syncthreads();
  if (levels >= 2) {
    const CellGrid<(CG > 1)> grid3{gxs.c, sap_out_size(gxs.h, 8), sap_out_size(gxs.w, 8)};
    for (int i = threadIdx.x; i < N2 * N2 * CG; i += kThreads) {
      const int ch = i % CG, m = i / CG;
      const int r = m / N2, q = m % N2;
      const auto w = [&](int64_t a, int64_t k) { return w2[((a + 1) * M2 + k + 1) * CG + ch]; };
      SapCell<A> cell = sap_cell_gradient<A>(w, r, q);
      const int64_t gy = y0 / 4 + r, gx = x0 / 4 + q, c = bc.c0 + ch;  // global level 2 cell
      if (level3 != nullptr && gy / 2 < grid3.rows && gx / 2 < grid3.cols && c < gxs.c)
        sap_fold(cell, level3[grid3.at(bc.b, c, gy / 2, gx / 2)], gy, gx);
      cells2.set(i, cell);
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < N1 * N1 * CG; i += kThreads) {
    const int ch = i % CG, m = i / CG;
    const int r = m / N1, q = m % N1;
    const auto w = [&](int64_t a, int64_t k) { return w1[((a + 1) * M1 + k + 1) * CG + ch]; };
    SapCell<A> cell = sap_cell_gradient<A>(w, r, q);
    if (levels >= 2) sap_fold(cell, cells2[((r / 2) * N2 + q / 2) * CG + ch], r, q);
    cells1.set(i, cell);
  }
  __syncthreads();
  T* dst = grad_x + bc.b * gxs.sn;
  for (int i = threadIdx.x; i < TILE * TILE * CG; i += kThreads) {
    const int ch = i % CG, m = i / CG;
    const int r = m / TILE, q = m % TILE;
    const int64_t y = y0 + r, x = x0 + q, c = bc.c0 + ch;
    if (y >= gxs.h || x >= gxs.w || c >= gxs.c) continue;
    dst[c * gxs.sc + y * gxs.sh + x * gxs.sw] =
        from_acc<T>(sap_pixel_gradient(cells1[((r / 2) * N1 + q / 2) * CG + ch], r, q));
  }
}

template <typename T, int TILE>
__global__ void __launch_bounds__(kThreads, min_blocks<T>())
    fine_grad_kernel(SapGrads grads, T* __restrict__ grad_x, Strided4 gxs, int levels,
                     bool count_include_pad, const SapCell<acc_t<T>>* __restrict__ level3) {
  fine_grad<T, TILE, 1>(grads, grad_x, gxs, levels, count_include_pad, level3);
}

// The same for channels_last grad_x, CG channels per block.
template <typename T, int TILE, int CG>
__global__ void __launch_bounds__(kThreads, min_blocks<T>())
    fine_grad_channels_last_kernel(SapGrads grads, T* __restrict__ grad_x, Strided4 gxs,
                                   int levels, bool count_include_pad,
                                   const SapCell<acc_t<T>>* __restrict__ level3) {
  fine_grad<T, TILE, CG>(grads, grad_x, gxs, levels, count_include_pad, level3);
}

// The channel-fastest kernels take channels_last maps (channels adjacent in memory).
bool channel_fastest(const Strided4& s) { return s.sc == 1 && s.c > 1; }

// Grid of a tile kernel: (batch x channel groups, column tiles, row tiles), or an error when it
// exceeds CUDA's grid limits.
cudaError_t tile_grid(const Strided4& s, int tile, int channels, dim3& grid) {
  const int64_t blocks = s.n * ((s.c + channels - 1) / channels);
  const int64_t tiles_x = (s.w + tile - 1) / tile, tiles_y = (s.h + tile - 1) / tile;
  if (blocks > INT32_MAX || tiles_x > 65535 || tiles_y > 65535)
    return cudaErrorInvalidConfiguration;
  grid = dim3(unsigned(blocks), unsigned(tiles_x), unsigned(tiles_y));
  return cudaSuccess;
}

template <typename T, bool CL>
cudaError_t forward_in_layout(const T* x, Strided4 xs, SapOutputs outs, int levels,
                    bool count_include_pad, void* workspace, cudaStream_t stream) {
  using A = acc_t<T>;
  constexpr int TILE = Tiling<A, CL>::tile, CG = Tiling<A, CL>::channels;
  dim3 grid;
  cudaError_t err = tile_grid(xs, TILE, CG, grid);
  if (err != cudaSuccess) return err;
  auto* cells = static_cast<SapCell<A>*>(workspace);
  SapCell<A>* level3 = levels >= 3 ? cells : nullptr;
  if constexpr (CL)
    fine_levels_channels_last_kernel<T, TILE, CG><<<grid, kThreads, 0, stream>>>(
        x, xs, outs, levels, count_include_pad, level3);
  else
    fine_levels_kernel<T, TILE><<<grid, kThreads, 0, stream>>>(x, xs, outs, levels,
                                                              count_include_pad, level3);
  err = cudaGetLastError();
  const int64_t planes = xs.n * xs.c;
  for (int j = 3; j <= levels && err == cudaSuccess; ++j) {
    const int64_t s = int64_t(1) << j;
    const int64_t rows = sap_out_size(xs.h, s), cols = sap_out_size(xs.w, s);
    SapCell<A>* next = j < levels ? cells + planes * rows * cols : nullptr;
    const unsigned blocks = blocks_for(planes * rows * cols);
    T* out = static_cast<T*>(outs.data[j - 1]);
    if constexpr (CL)
      coarse_level_channels_last_kernel<T><<<blocks, kThreads, 0, stream>>>(
          cells, rows, cols, s, xs, out, outs.shape[j - 1], count_include_pad, next);
    else
      coarse_level_kernel<T><<<blocks, kThreads, 0, stream>>>(
          cells, rows, cols, s, xs, out, outs.shape[j - 1], count_include_pad, next);
    err = cudaGetLastError();
    cells = next;
  }
  return err;
}

template <typename T, bool CL>
cudaError_t backward_in_layout(SapGrads grads, T* grad_x, Strided4 gxs, int levels,
                     bool count_include_pad, void* workspace, cudaStream_t stream) {
  using A = acc_t<T>;
  constexpr int TILE = Tiling<A, CL>::tile, CG = Tiling<A, CL>::channels;
  dim3 grid;
  cudaError_t err = tile_grid(gxs, TILE, CG, grid);
  if (err != cudaSuccess) return err;
  const int64_t planes = gxs.n * gxs.c;
  // The workspace holds level 3's cells first, then level 4's, ...: fill it coarsest first.
  std::vector<SapCell<A>*> level_cells(kSapMaxLevels + 2, nullptr);
  auto* next = static_cast<SapCell<A>*>(workspace);
  for (int j = 3; j <= levels; ++j) {
    level_cells[j] = next;
    next += planes * sap_out_size(gxs.h, int64_t(1) << j) * sap_out_size(gxs.w, int64_t(1) << j);
  }
  for (int j = levels; j >= 3 && err == cudaSuccess; --j) {
    const Strided4& gs = grads.shape[j - 1];
    const unsigned blocks = blocks_for(planes * gs.h * gs.w);
    const T* g = static_cast<const T*>(grads.data[j - 1]);
    if constexpr (CL)
      coarse_grad_channels_last_kernel<T><<<blocks, kThreads, 0, stream>>>(
          g, gs, int64_t(1) << j, gxs, count_include_pad, level_cells[j + 1], level_cells[j]);
    else
      coarse_grad_kernel<T><<<blocks, kThreads, 0, stream>>>(
          g, gs, int64_t(1) << j, gxs, count_include_pad, level_cells[j + 1], level_cells[j]);
    err = cudaGetLastError();
  }
  if (err != cudaSuccess) return err;
  if constexpr (CL)
    fine_grad_channels_last_kernel<T, TILE, CG><<<grid, kThreads, 0, stream>>>(
        grads, grad_x, gxs, levels, count_include_pad, level_cells[3]);
  else
    fine_grad_kernel<T, TILE><<<grid, kThreads, 0, stream>>>(grads, grad_x, gxs, levels,
                                                            count_include_pad, level_cells[3]);
  return cudaGetLastError();
}

// Dispatches on the layout; empty maps launch nothing.
template <typename T>
cudaError_t forward(const T* x, Strided4 xs, SapOutputs outs, int levels,
                    bool count_include_pad, void* workspace, cudaStream_t stream) {
  if (xs.n * xs.c == 0 || xs.h == 0 || xs.w == 0) return cudaSuccess;
  return channel_fastest(xs)
             ? forward_in_layout<T, true>(x, xs, outs, levels, count_include_pad, workspace,
                                          stream)
             : forward_in_layout<T, false>(x, xs, outs, levels, count_include_pad, workspace,
                                           stream);
}

template <typename T>
cudaError_t backward(SapGrads grads, T* grad_x, Strided4 gxs, int levels,
                     bool count_include_pad, void* workspace, cudaStream_t stream) {
  if (gxs.n * gxs.c == 0 || gxs.h == 0 || gxs.w == 0) return cudaSuccess;
  return channel_fastest(gxs)
             ? backward_in_layout<T, true>(grads, grad_x, gxs, levels, count_include_pad,
                                           workspace, stream)
             : backward_in_layout<T, false>(grads, grad_x, gxs, levels, count_include_pad,
                                            workspace, stream);
}

}  // namespace

cudaError_t launch_spatial_aware_pool_forward(const void* x, Strided4 xs, SapOutputs outs,
                                              int levels, bool count_include_pad,
                                              void* workspace, DType dtype, cudaStream_t stream) {
  if (levels < 1 || levels > kSapMaxLevels) return cudaErrorInvalidValue;
  cudaError_t err = cudaSuccess;
  RTSEG_DISPATCH_DTYPE(dtype, T, {
    err = forward(static_cast<const T*>(x), xs, outs, levels, count_include_pad, workspace,
                  stream);
  });
  return err;
}

cudaError_t launch_spatial_aware_pool_backward(SapGrads grads, void* grad_x, Strided4 gxs,
                                               int levels, bool count_include_pad,
                                               void* workspace, DType dtype,
                                               cudaStream_t stream) {
  if (levels < 1 || levels > kSapMaxLevels) return cudaErrorInvalidValue;
  cudaError_t err = cudaSuccess;
  RTSEG_DISPATCH_DTYPE(dtype, T, {
    err = backward(grads, static_cast<T*>(grad_x), gxs, levels, count_include_pad, workspace,
                   stream);
  });
  return err;
}

}  // namespace rtseg
