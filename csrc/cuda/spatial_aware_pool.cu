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
#include "cuda/cuda_utils.cuh"
#include "cuda/spatial_aware_pool.cuh"

#include <vector>

namespace rtseg {
namespace {

// Input tile side: float cells need 46 KB of shared memory at 64, double cells as much at 32.
template <typename A> struct TileSide { static constexpr int value = 64; };
template <> struct TileSide<double> { static constexpr int value = 32; };

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

// Writes the outputs of one level owned by a tile: n x n outputs starting at (oy0, ox0), whose
// cell (oy, ox) is cells[first + (oy - oy0) * pitch + ox - ox0].
template <typename T, typename A, typename Cells>
__device__ void write_tile_outputs(const Cells& cells, int first, int pitch, int n, int64_t oy0,
                                   int64_t ox0, int64_t s, const Strided4& xs, T* out,
                                   const Strided4& os, int64_t b, int64_t c,
                                   bool count_include_pad) {
  for (int i = threadIdx.x; i < n * n; i += kThreads) {
    const int64_t oy = oy0 + i / n, ox = ox0 + i % n;
    if (oy >= os.h || ox >= os.w) continue;
    const auto cell = [&](int64_t a, int64_t k) {
      return cells[first + int(a - oy0) * pitch + int(k - ox0)];
    };
    const A sum = sap_window_sum<A>(cell, oy, ox);
    const A count = A(sap_window_count(oy, s, xs.h, count_include_pad) *
                      sap_window_count(ox, s, xs.w, count_include_pad));
    out[b * os.sn + c * os.sc + oy * os.sh + ox * os.sw] = from_acc<T>(sum / count);
  }
}

template <typename T, int TILE>
__global__ void __launch_bounds__(kThreads)
    fine_levels_kernel(const T* __restrict__ x, Strided4 xs, SapOutputs outs, int levels,
                       bool count_include_pad, SapCell<acc_t<T>>* __restrict__ level3_cells) {
  using A = acc_t<T>;
  constexpr int P = TILE + 8;       // pixels per side: 4 before the tile, 4 after
  constexpr int N1 = TILE / 2 + 4;  // level 1 cells per side: 2 before, 2 after
  constexpr int N2 = TILE / 4 + 2;  // level 2 cells per side: 1 before, 1 after
  constexpr int N3 = TILE / 8;      // level 3 cells of the tile itself
  __shared__ A pixels[P * P];
  __shared__ SharedCells<A, N1 * N1> cells1;
  __shared__ SharedCells<A, N2 * N2> cells2;

  const int64_t plane = blockIdx.x;
  const int64_t b = plane / xs.c, c = plane % xs.c;
  const int64_t y0 = int64_t(blockIdx.z) * TILE, x0 = int64_t(blockIdx.y) * TILE;
  const T* src = x + b * xs.sn + c * xs.sc;
  for (int i = threadIdx.x; i < P * P; i += kThreads) {
    const int64_t y = y0 - 4 + i / P, xx = x0 - 4 + i % P;
    const bool inside = y >= 0 && y < xs.h && xx >= 0 && xx < xs.w;
    pixels[i] = inside ? to_acc(src[y * xs.sh + xx * xs.sw]) : A(0);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < N1 * N1; i += kThreads) {
    const int r = 2 * (i / N1), q = 2 * (i % N1);
    const A p00 = pixels[r * P + q], p01 = pixels[r * P + q + 1];
    const A p10 = pixels[(r + 1) * P + q], p11 = pixels[(r + 1) * P + q + 1];
    cells1.set(i, {(p00 + p01) + (p10 + p11), p00 + p10, p00 + p01, p00});
  }
  __syncthreads();
  for (int i = threadIdx.x; i < N2 * N2; i += kThreads) {
    const int r = 2 * (i / N2), q = 2 * (i % N2);
    cells2.set(i, sap_merge(cells1[r * N1 + q], cells1[r * N1 + q + 1],
                            cells1[(r + 1) * N1 + q], cells1[(r + 1) * N1 + q + 1]));
  }
  __syncthreads();
  // cells1 starts at global cell y0/2 - 2 and the tile's outputs at y0/2: two cells in.
  write_tile_outputs<T, A>(cells1, 2 * N1 + 2, N1, TILE / 2, y0 / 2, x0 / 2, 2, xs,
                           static_cast<T*>(outs.data[0]), outs.shape[0], b, c,
                           count_include_pad);
  if (levels >= 2)
    write_tile_outputs<T, A>(cells2, N2 + 1, N2, TILE / 4, y0 / 4, x0 / 4, 4, xs,
                             static_cast<T*>(outs.data[1]), outs.shape[1], b, c,
                             count_include_pad);
  if (levels >= 3) {
    const int64_t rows3 = sap_out_size(xs.h, 8), cols3 = sap_out_size(xs.w, 8);
    for (int i = threadIdx.x; i < N3 * N3; i += kThreads) {
      const int64_t gy = y0 / 8 + i / N3, gx = x0 / 8 + i % N3;
      if (gy >= rows3 || gx >= cols3) continue;
      // cells2 starts at global cell y0/4 - 1: level 3 cell gy covers level 2 cells 2gy, 2gy+1.
      const int r = 2 * (i / N3) + 1, q = 2 * (i % N3) + 1;
      level3_cells[(plane * rows3 + gy) * cols3 + gx] =
          sap_merge(cells2[r * N2 + q], cells2[r * N2 + q + 1], cells2[(r + 1) * N2 + q],
                    cells2[(r + 1) * N2 + q + 1]);
    }
  }
}

// Level j >= 3: outputs from level j's cells, and level j+1's cells when `next` is not null.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    coarse_level_kernel(const SapCell<acc_t<T>>* __restrict__ cells, int64_t planes,
                        int64_t rows, int64_t cols, int64_t s, Strided4 xs, T* __restrict__ out,
                        Strided4 os, bool count_include_pad,
                        SapCell<acc_t<T>>* __restrict__ next) {
  using A = acc_t<T>;
  const int64_t total = planes * rows * cols;
  const int64_t next_rows = sap_out_size(rows, 2), next_cols = sap_out_size(cols, 2);
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * kThreads) {
    const int64_t ox = i % cols, oy = (i / cols) % rows, plane = i / (cols * rows);
    const SapCell<A>* plane_cells = cells + plane * rows * cols;
    const auto cell = [&](int64_t a, int64_t k) {
      return a < 0 || a >= rows || k < 0 || k >= cols ? SapCell<A>{A(0), A(0), A(0), A(0)}
                                                       : plane_cells[a * cols + k];
    };
    const A count = A(sap_window_count(oy, s, xs.h, count_include_pad) *
                      sap_window_count(ox, s, xs.w, count_include_pad));
    const int64_t b = plane / xs.c, c = plane % xs.c;
    out[b * os.sn + c * os.sc + oy * os.sh + ox * os.sw] =
        from_acc<T>(sap_window_sum<A>(cell, oy, ox) / count);
    if (next != nullptr && oy % 2 == 0 && ox % 2 == 0)
      next[(plane * next_rows + oy / 2) * next_cols + ox / 2] =
          sap_merge(cell(oy, ox), cell(oy, ox + 1), cell(oy + 1, ox), cell(oy + 1, ox + 1));
  }
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
template <typename T>
__global__ void __launch_bounds__(kThreads)
    coarse_grad_kernel(const T* __restrict__ grad, Strided4 gs, int64_t s, Strided4 xs,
                       bool count_include_pad, const SapCell<acc_t<T>>* __restrict__ coarse,
                       SapCell<acc_t<T>>* __restrict__ cells) {
  using A = acc_t<T>;
  const int64_t rows = gs.h, cols = gs.w, planes = gs.n * gs.c;
  const int64_t coarse_rows = sap_out_size(rows, 2), coarse_cols = sap_out_size(cols, 2);
  const int64_t total = planes * rows * cols;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * kThreads) {
    const int64_t k = i % cols, r = (i / cols) % rows, plane = i / (cols * rows);
    const T* g = grad + (plane / gs.c) * gs.sn + (plane % gs.c) * gs.sc;
    const auto w = [&](int64_t oy, int64_t ox) {
      return divided_grad(g, gs, oy, ox, s, xs, count_include_pad);
    };
    SapCell<A> cell = sap_cell_gradient<A>(w, r, k);
    if (coarse != nullptr)
      sap_fold(cell, coarse[(plane * coarse_rows + r / 2) * coarse_cols + k / 2], r, k);
    cells[i] = cell;
  }
}

// Backward of levels 1 and 2 and the pixels, per (plane, TILE x TILE tile): the divided output
// gradients of the tile's windows (plus one each side) in shared memory, level 2 then level 1
// cell gradients, level 3's folded in from `level3` (null when levels < 3), then each pixel.
template <typename T, int TILE>
__global__ void __launch_bounds__(kThreads)
    fine_grad_kernel(SapGrads grads, T* __restrict__ grad_x, Strided4 gxs, int levels,
                     bool count_include_pad, const SapCell<acc_t<T>>* __restrict__ level3) {
  using A = acc_t<T>;
  constexpr int M1 = TILE / 2 + 2, M2 = TILE / 4 + 2;  // outputs per side, 1 before, 1 after
  constexpr int N1 = TILE / 2, N2 = TILE / 4;          // cells per side
  __shared__ A w1[M1 * M1];
  __shared__ A w2[M2 * M2];
  __shared__ SharedCells<A, N1 * N1> cells1;
  __shared__ SharedCells<A, N2 * N2> cells2;

  const int64_t plane = blockIdx.x;
  const int64_t b = plane / gxs.c, c = plane % gxs.c;
  const int64_t y0 = int64_t(blockIdx.z) * TILE, x0 = int64_t(blockIdx.y) * TILE;
  const Strided4& gs1 = grads.shape[0];
  const T* g1 = static_cast<const T*>(grads.data[0]) + b * gs1.sn + c * gs1.sc;
  for (int i = threadIdx.x; i < M1 * M1; i += kThreads)
    w1[i] = divided_grad(g1, gs1, y0 / 2 - 1 + i / M1, x0 / 2 - 1 + i % M1, 2, gxs,
                         count_include_pad);
  if (levels >= 2) {
    const Strided4& gs2 = grads.shape[1];
    const T* g2 = static_cast<const T*>(grads.data[1]) + b * gs2.sn + c * gs2.sc;
    for (int i = threadIdx.x; i < M2 * M2; i += kThreads)
      w2[i] = divided_grad(g2, gs2, y0 / 4 - 1 + i / M2, x0 / 4 - 1 + i % M2, 4, gxs,
                           count_include_pad);
  }
  __syncthreads();
  if (levels >= 2) {
    const int64_t rows3 = sap_out_size(gxs.h, 8), cols3 = sap_out_size(gxs.w, 8);
    const auto w = [&](int64_t oy, int64_t ox) { return w2[(oy + 1) * M2 + ox + 1]; };
    for (int i = threadIdx.x; i < N2 * N2; i += kThreads) {
      const int r = i / N2, q = i % N2;
      SapCell<A> cell = sap_cell_gradient<A>(w, r, q);
      const int64_t gy = y0 / 4 + r, gx = x0 / 4 + q;  // global level 2 cell
      if (level3 != nullptr && gy / 2 < rows3 && gx / 2 < cols3)
        sap_fold(cell, level3[(plane * rows3 + gy / 2) * cols3 + gx / 2], gy, gx);
      cells2.set(i, cell);
    }
  }
  __syncthreads();
  {
    const auto w = [&](int64_t oy, int64_t ox) { return w1[(oy + 1) * M1 + ox + 1]; };
    for (int i = threadIdx.x; i < N1 * N1; i += kThreads) {
      const int r = i / N1, q = i % N1;
      SapCell<A> cell = sap_cell_gradient<A>(w, r, q);
      if (levels >= 2) sap_fold(cell, cells2[(r / 2) * N2 + q / 2], r, q);
      cells1.set(i, cell);
    }
  }
  __syncthreads();
  T* dst = grad_x + b * gxs.sn + c * gxs.sc;
  for (int i = threadIdx.x; i < TILE * TILE; i += kThreads) {
    const int r = i / TILE, q = i % TILE;
    const int64_t y = y0 + r, x = x0 + q;
    if (y >= gxs.h || x >= gxs.w) continue;
    dst[y * gxs.sh + x * gxs.sw] =
        from_acc<T>(sap_pixel_gradient(cells1[(r / 2) * N1 + q / 2], r, q));
  }
}

template <typename T>
cudaError_t forward(const T* x, Strided4 xs, SapOutputs outs, int levels,
                    bool count_include_pad, void* workspace, cudaStream_t stream) {
  using A = acc_t<T>;
  constexpr int TILE = TileSide<A>::value;
  const int64_t planes = xs.n * xs.c;
  if (planes == 0 || xs.h == 0 || xs.w == 0) return cudaSuccess;
  const int64_t tiles_x = (xs.w + TILE - 1) / TILE, tiles_y = (xs.h + TILE - 1) / TILE;
  if (planes > INT32_MAX || tiles_x > 65535 || tiles_y > 65535)
    return cudaErrorInvalidConfiguration;
  auto* cells = static_cast<SapCell<A>*>(workspace);
  fine_levels_kernel<T, TILE><<<dim3(unsigned(planes), unsigned(tiles_x), unsigned(tiles_y)),
                                kThreads, 0, stream>>>(x, xs, outs, levels, count_include_pad,
                                                       levels >= 3 ? cells : nullptr);
  cudaError_t err = cudaGetLastError();
  for (int j = 3; j <= levels && err == cudaSuccess; ++j) {
    const int64_t s = int64_t(1) << j;
    const int64_t rows = sap_out_size(xs.h, s), cols = sap_out_size(xs.w, s);
    SapCell<A>* next = j < levels ? cells + planes * rows * cols : nullptr;
    coarse_level_kernel<T><<<blocks_for(planes * rows * cols), kThreads, 0, stream>>>(
        cells, planes, rows, cols, s, xs, static_cast<T*>(outs.data[j - 1]), outs.shape[j - 1],
        count_include_pad, next);
    err = cudaGetLastError();
    cells = next;
  }
  return err;
}

template <typename T>
cudaError_t backward(SapGrads grads, T* grad_x, Strided4 gxs, int levels,
                     bool count_include_pad, void* workspace, cudaStream_t stream) {
  using A = acc_t<T>;
  constexpr int TILE = TileSide<A>::value;
  const int64_t planes = gxs.n * gxs.c;
  if (planes == 0 || gxs.h == 0 || gxs.w == 0) return cudaSuccess;
  const int64_t tiles_x = (gxs.w + TILE - 1) / TILE, tiles_y = (gxs.h + TILE - 1) / TILE;
  if (planes > INT32_MAX || tiles_x > 65535 || tiles_y > 65535)
    return cudaErrorInvalidConfiguration;
  // The workspace holds level 3's cells first, then level 4's, ...: fill it coarsest first.
  std::vector<SapCell<A>*> level_cells(kSapMaxLevels + 2, nullptr);
  auto* next = static_cast<SapCell<A>*>(workspace);
  for (int j = 3; j <= levels; ++j) {
    level_cells[j] = next;
    next += planes * sap_out_size(gxs.h, int64_t(1) << j) * sap_out_size(gxs.w, int64_t(1) << j);
  }
  cudaError_t err = cudaSuccess;
  for (int j = levels; j >= 3 && err == cudaSuccess; --j) {
    const Strided4& gs = grads.shape[j - 1];
    coarse_grad_kernel<T><<<blocks_for(planes * gs.h * gs.w), kThreads, 0, stream>>>(
        static_cast<const T*>(grads.data[j - 1]), gs, int64_t(1) << j, gxs, count_include_pad,
        level_cells[j + 1], level_cells[j]);
    err = cudaGetLastError();
  }
  if (err != cudaSuccess) return err;
  fine_grad_kernel<T, TILE><<<dim3(unsigned(planes), unsigned(tiles_x), unsigned(tiles_y)),
                              kThreads, 0, stream>>>(grads, grad_x, gxs, levels,
                                                     count_include_pad, level_cells[3]);
  return cudaGetLastError();
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
