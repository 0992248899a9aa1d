// factorized_dw_conv CUDA kernels (order "vh" on the caller's view; "hv" is a transposed view).
//
// A block owns a tile of CC channels x TR rows x TW columns of one batch item. The first stage's
// output for the tile's rows, widened by the dilation halo along W, is computed once into shared
// memory (its three vertical taps read straight from global memory), and the second stage reads
// its taps from there: the intermediate never reaches global memory. Threads are mapped so that
// consecutive threads touch consecutive addresses: along W for NCHW, along H for the transposed
// view of NCHW, along C for channels_last.
#include <algorithm>

#include "cuda/cuda_utils.cuh"
#include "cuda/factorized_dw_conv.cuh"

namespace rtseg {
namespace {

enum class Fastest : int { Col = 0, Row = 1, Channel = 2 };

struct Tile {
  Fastest fastest;
  int64_t cc, tr, tw;                       // channels, rows, columns per tile
  int64_t chunks, row_tiles, col_tiles;     // tiles per batch item along C, H, W
};

struct TilePos {
  int64_t b, c0, y0, x0, index;  // index: (b, row tile, col tile), the partials' row
};

__device__ __forceinline__ TilePos tile_pos(int64_t blk, const Tile& t) {
  TilePos p;
  const int64_t ct = blk % t.col_tiles;
  blk /= t.col_tiles;
  const int64_t rt = blk % t.row_tiles;
  blk /= t.row_tiles;
  const int64_t chunk = blk % t.chunks;
  p.b = blk / t.chunks;
  p.c0 = chunk * t.cc;
  p.y0 = rt * t.tr;
  p.x0 = ct * t.tw;
  p.index = (p.b * t.row_tiles + rt) * t.col_tiles + ct;
  return p;
}

// Item i of a (cc, tr, n) block-local array, enumerated with the tile's fastest dimension first.
__device__ __forceinline__ void split3(int64_t i, const Tile& t, int64_t n, int64_t& cl,
                                       int64_t& r, int64_t& j) {
  switch (t.fastest) {
    case Fastest::Col: j = i % n; i /= n; r = i % t.tr; cl = i / t.tr; break;
    case Fastest::Row: r = i % t.tr; i /= t.tr; j = i % n; cl = i / n; break;
    default: cl = i % t.cc; i /= t.cc; j = i % n; r = i / n; break;
  }
}

// Owned output j of a channel (tr x tw), row- or column-fastest.
__device__ __forceinline__ void split2(int64_t j, const Tile& t, int64_t& r, int64_t& col) {
  if (t.fastest == Fastest::Row) {
    r = j % t.tr;
    col = j / t.tr;
  } else {
    col = j % t.tw;
    r = j / t.tw;
  }
}

struct ToAcc {
  template <typename T> __device__ acc_t<T> operator()(T v) const { return to_acc(v); }
};

template <typename T>
__device__ __forceinline__ acc_t<T> load(const T* plane, const Strided4& s, int64_t y, int64_t x) {
  return (y >= 0 && y < s.h && x >= 0 && x < s.w) ? to_acc(plane[y * s.sh + x * s.sw])
                                                  : acc_t<T>(0);
}

// Stage parameters of the tile's channels into shared memory.
template <typename T, typename A>
__device__ void load_stages(DWStage<A>* first, DWStage<A>* second, const DWConvArgs& a,
                            int64_t c0, int64_t cc) {
  for (int64_t cl = threadIdx.x; cl < cc; cl += blockDim.x) {
    const int64_t c = min(c0 + cl, a.x.c - 1);  // padding channels of the last chunk
    first[cl] = DWStage<A>::template load<T>(a.first, c, ToAcc());
    second[cl] = DWStage<A>::template load<T>(a.second, c, ToAcc());
  }
}

__host__ __device__ __forceinline__ int64_t align16(int64_t bytes) {
  return (bytes + 15) / 16 * 16;
}

// Shared memory starts with both stages' parameters for the tile's channels.
template <typename A>
__host__ __device__ __forceinline__ int64_t stages_bytes(int64_t cc) {
  return align16(2 * cc * int64_t(sizeof(DWStage<A>)));
}

// The first conv's output of the tile rows over columns [lo, lo + n), after the stage's affine
// and PReLU when kActivate (forward), before them otherwise (backward).
template <bool kActivate, typename T, typename A>
__device__ void fill_first_conv(A* u1, const T* x, const DWConvArgs& a, const Tile& t,
                                const TilePos& p, const DWStage<A>* first, int64_t lo, int64_t n) {
  const int64_t d = a.dilation;
  for (int64_t i = threadIdx.x; i < t.cc * t.tr * n; i += blockDim.x) {
    int64_t cl, r, j;
    split3(i, t, n, cl, r, j);
    const int64_t c = p.c0 + cl, y = p.y0 + r, col = lo + j;
    A v = A(0);
    if (c < a.x.c && y < a.x.h) {
      const T* plane = x + p.b * a.x.sn + c * a.x.sc;
      v = first[cl].conv(load(plane, a.x, y - d, col), load(plane, a.x, y, col),
                         load(plane, a.x, y + d, col));
      if (kActivate) v = first[cl].act(first[cl].affine(v));
    }
    u1[(cl * t.tr + r) * n + j] = v;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 4)
    forward_kernel(const T* __restrict__ x, T* __restrict__ out, Strided4 os,
                   DWConvArgs a, Tile t, int64_t blocks) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  DWStage<A>* first = reinterpret_cast<DWStage<A>*>(smem);
  DWStage<A>* second = first + t.cc;
  A* tmid = reinterpret_cast<A*>(smem + stages_bytes<A>(t.cc));
  const int64_t d = a.dilation, W = a.x.w;
  for (int64_t blk = blockIdx.x; blk < blocks; blk += gridDim.x) {
    const TilePos p = tile_pos(blk, t);
    const int64_t lo = max(int64_t(0), p.x0 - d), hi = min(W, p.x0 + t.tw + d), n = hi - lo;
    __syncthreads();  // the previous tile is done with shared memory
    load_stages<T>(first, second, a, p.c0, t.cc);
    __syncthreads();
    fill_first_conv<true, T>(tmid, x, a, t, p, first, lo, n);
    __syncthreads();
    const int64_t cl = threadIdx.x % t.cc, threads_per_channel = blockDim.x / t.cc;
    const int64_t c = p.c0 + cl;
    if (c >= a.x.c) continue;
    const A* row_base = tmid + cl * t.tr * n;
    for (int64_t j = threadIdx.x / t.cc; j < t.tr * t.tw; j += threads_per_channel) {
      int64_t r, col;
      split2(j, t, r, col);
      const int64_t y = p.y0 + r, xx = p.x0 + col;
      if (y >= a.x.h || xx >= W) continue;
      const A* row = row_base + r * n - lo;  // row[xx] is the intermediate at column xx
      const A left = xx - d >= 0 ? row[xx - d] : A(0);
      const A right = xx + d < W ? row[xx + d] : A(0);
      const A v = second[cl].act(second[cl].affine(second[cl].conv(left, row[xx], right)));
      out[p.b * os.sn + c * os.sc + y * os.sh + xx * os.sw] = from_acc<T>(v);
    }
  }
}

// Backward, one tile: u1 over the columns the second stage's gradient needs (halo 2d), the
// gradient at the second conv's output over halo d, then per owned pixel the parameter
// gradients (kept per thread, one channel per thread) and the gradient at the first conv's
// output, which goes to grad_u1 for the vertical transposed conv of transposed_first_kernel.
// Per-channel sums are reduced in a fixed tree per block and written per tile.
template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    backward_tile_kernel(const T* __restrict__ grad_out, Strided4 gs,
                         const T* __restrict__ x, acc_t<T>* __restrict__ grad_u1,
                         Strided4 us, acc_t<T>* __restrict__ partials, DWConvArgs a,
                         Tile t, int64_t blocks) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  DWStage<A>* first = reinterpret_cast<DWStage<A>*>(smem);
  DWStage<A>* second = first + t.cc;
  A* red = reinterpret_cast<A*>(smem + stages_bytes<A>(t.cc));  // kDWGrads x blockDim
  A* u1 = red + kDWGrads * blockDim.x;
  const int64_t d = a.dilation, W = a.x.w, C = a.x.c;
  A* dsec = u1 + t.cc * t.tr * min(W, t.tw + 4 * d);  // gradient at the second conv's output
  for (int64_t blk = blockIdx.x; blk < blocks; blk += gridDim.x) {
    const TilePos p = tile_pos(blk, t);
    const int64_t lo2 = max(int64_t(0), p.x0 - 2 * d), n2 = min(W, p.x0 + t.tw + 2 * d) - lo2;
    const int64_t lo1 = max(int64_t(0), p.x0 - d), n1 = min(W, p.x0 + t.tw + d) - lo1;
    __syncthreads();
    load_stages<T>(first, second, a, p.c0, t.cc);
    __syncthreads();
    fill_first_conv<false, T>(u1, x, a, t, p, first, lo2, n2);
    __syncthreads();
    // t at column xx of block-local row (cl, r), zero outside the image
    auto mid = [&](int64_t cl, int64_t r, int64_t xx) {
      if (xx < 0 || xx >= W) return A(0);
      return first[cl].act(first[cl].affine(u1[(cl * t.tr + r) * n2 + xx - lo2]));
    };
    for (int64_t i = threadIdx.x; i < t.cc * t.tr * n1; i += blockDim.x) {
      int64_t cl, r, j;
      split3(i, t, n1, cl, r, j);
      const int64_t c = p.c0 + cl, y = p.y0 + r, xx = lo1 + j;
      A v = A(0);
      if (c < C && y < a.x.h) {
        const A z2 = second[cl].affine(second[cl].conv(mid(cl, r, xx - d), mid(cl, r, xx),
                                                       mid(cl, r, xx + d)));
        const A g = to_acc(grad_out[p.b * gs.sn + c * gs.sc + y * gs.sh + xx * gs.sw]);
        v = g * second[cl].act_grad(z2) * second[cl].scale;
      }
      dsec[(cl * t.tr + r) * n1 + j] = v;
    }
    __syncthreads();
    const int64_t cl = threadIdx.x % t.cc, threads_per_channel = blockDim.x / t.cc;
    const int64_t c = p.c0 + cl;
    A sums[kDWGrads];
    RTSEG_UNROLL
    for (int k = 0; k < kDWGrads; ++k) sums[k] = A(0);
    A* s1 = sums;
    A* s2 = sums + kDWGradsPerStage;
    if (c < C) {
      const DWStage<A>& f = first[cl];
      const DWStage<A>& s = second[cl];
      const T* plane = x + p.b * a.x.sn + c * a.x.sc;
      for (int64_t j = threadIdx.x / t.cc; j < t.tr * t.tw; j += threads_per_channel) {
        int64_t r, col;
        split2(j, t, r, col);
        const int64_t y = p.y0 + r, xx = p.x0 + col;
        if (y >= a.x.h || xx >= W) continue;
        const A tm = mid(cl, r, xx - d), tc = mid(cl, r, xx), tp = mid(cl, r, xx + d);
        const A u2 = s.conv(tm, tc, tp), z2 = s.affine(u2);
        const A g = to_acc(grad_out[p.b * gs.sn + c * gs.sc + y * gs.sh + xx * gs.sw]);
        const A dz2 = g * s.act_grad(z2);
        s2[kDWGradScale] += dz2 * u2;
        s2[kDWGradShift] += dz2;
        s2[kDWGradPrelu] += g * s.slope_grad(z2);
        const A* drow = dsec + (cl * t.tr + r) * n1 - lo1;
        const A dc = drow[xx];
        s2[kDWGradWeight] += dc * tm;
        s2[kDWGradWeight + 1] += dc * tc;
        s2[kDWGradWeight + 2] += dc * tp;
        const A dt = s.conv_transposed(xx - d >= 0 ? drow[xx - d] : A(0), dc,
                                       xx + d < W ? drow[xx + d] : A(0));
        const A u = u1[(cl * t.tr + r) * n2 + xx - lo2], z1 = f.affine(u);
        const A dz1 = dt * f.act_grad(z1);
        s1[kDWGradScale] += dz1 * u;
        s1[kDWGradShift] += dz1;
        s1[kDWGradPrelu] += dt * f.slope_grad(z1);
        const A e = dz1 * f.scale;
        grad_u1[p.b * us.sn + c * us.sc + y * us.sh + xx * us.sw] = e;
        s1[kDWGradWeight] += e * load(plane, a.x, y - d, xx);
        s1[kDWGradWeight + 1] += e * load(plane, a.x, y, xx);
        s1[kDWGradWeight + 2] += e * load(plane, a.x, y + d, xx);
      }
    }
    // Threads of channel cl are cl + cc * k; fold them pairwise in a fixed order.
    RTSEG_UNROLL
    for (int k = 0; k < kDWGrads; ++k) red[k * blockDim.x + threadIdx.x] = sums[k];
    __syncthreads();
    const int64_t lane = threadIdx.x / t.cc;
    for (int64_t half = threads_per_channel / 2; half > 0; half /= 2) {
      if (lane < half) {
        RTSEG_UNROLL
        for (int k = 0; k < kDWGrads; ++k)
          red[k * blockDim.x + threadIdx.x] += red[k * blockDim.x + threadIdx.x + half * t.cc];
      }
      __syncthreads();
    }
    if (lane == 0 && c < C) {
      A* dst = partials + (p.index * C + c) * kDWGrads;
      RTSEG_UNROLL
      for (int k = 0; k < kDWGrads; ++k) dst[k] = red[k * blockDim.x + threadIdx.x];
    }
  }
}

// grad_x = vertical transposed conv of grad_u1 with the first stage's taps.
template <typename T>
__global__ void __launch_bounds__(kThreads, 8)
    transposed_first_kernel(const acc_t<T>* __restrict__ grad_u1, Strided4 us,
                            T* __restrict__ grad_x, Strided4 gxs, DWConvArgs a,
                            Fastest fastest) {
  using A = acc_t<T>;
  const int64_t H = a.x.h, W = a.x.w, C = a.x.c, d = a.dilation;
  const int64_t total = a.x.n * C * H * W;
  const T* weights = static_cast<const T*>(a.first.weight);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t b, c, y, x, q = i;
    switch (fastest) {
      case Fastest::Col: x = q % W; q /= W; y = q % H; q /= H; c = q % C; b = q / C; break;
      case Fastest::Row: y = q % H; q /= H; x = q % W; q /= W; c = q % C; b = q / C; break;
      default: c = q % C; q /= C; x = q % W; q /= W; y = q % H; b = q / H; break;
    }
    const A* plane = grad_u1 + b * us.sn + c * us.sc + x * us.sw;
    A v = to_acc(weights[3 * c + 1]) * plane[y * us.sh];
    if (y + d < H) v += to_acc(weights[3 * c]) * plane[(y + d) * us.sh];
    if (y - d >= 0) v += to_acc(weights[3 * c + 2]) * plane[(y - d) * us.sh];
    grad_x[b * gxs.sn + c * gxs.sc + y * gxs.sh + x * gxs.sw] = from_acc<T>(v);
  }
}

// reduced[c][k] = sum over tiles of partials[tile][c][k]: one block per (c, k), fixed order.
template <typename A>
__global__ void __launch_bounds__(kThreads, 8)
    reduce_tiles_kernel(const A* __restrict__ partials, A* __restrict__ reduced,
                        int64_t tiles, int64_t C) {
  __shared__ A buf[kThreads];
  const int64_t ck = blockIdx.x;
  A v = A(0);
  for (int64_t i = threadIdx.x; i < tiles; i += blockDim.x) v += partials[i * C * kDWGrads + ck];
  buf[threadIdx.x] = v;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (static_cast<int>(threadIdx.x) < half) buf[threadIdx.x] += buf[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) reduced[ck] = buf[0];
}

Fastest fastest_dim(const Strided4& s) {
  if (s.sc == 1 && s.c > 1) return Fastest::Channel;
  if (s.sh == 1 && s.sw != 1 && s.h > 1) return Fastest::Row;
  return Fastest::Col;
}

Tile choose_tile(const Strided4& s) {
  Tile t;
  t.fastest = fastest_dim(s);
  switch (t.fastest) {
    case Fastest::Channel: {
      t.cc = 1;
      while (t.cc < 32 && t.cc < s.c) t.cc *= 2;
      t.tr = 1;
      t.tw = 2048 / t.cc;
      break;
    }
    case Fastest::Row: t.cc = 1; t.tr = 32; t.tw = 32; break;
    default: {
      t.cc = 1;
      t.tw = 32;
      while (t.tw < 512 && t.tw < s.w) t.tw *= 2;
      t.tr = 512 / t.tw;
    }
  }
  t.tw = std::min(t.tw, s.w);
  t.tr = std::min(t.tr, s.h);
  t.chunks = (s.c + t.cc - 1) / t.cc;
  t.row_tiles = (s.h + t.tr - 1) / t.tr;
  t.col_tiles = (s.w + t.tw - 1) / t.tw;
  return t;
}

// Grid for `blocks` tiles (the kernels loop when it is capped) and the shared memory opt-in.
template <typename Kernel>
cudaError_t prepare(Kernel kernel, int64_t smem_bytes, int64_t blocks, unsigned int* grid) {
  *grid = static_cast<unsigned int>(std::min(blocks, int64_t(1) << 30));
  if (smem_bytes > 48 * 1024)
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(smem_bytes));
  return cudaSuccess;
}

int64_t tiles_of(const Tile& t, const Strided4& s) { return s.n * t.row_tiles * t.col_tiles; }

}  // namespace

cudaError_t launch_factorized_dw_conv_forward(const void* x, void* out, Strided4 out_view,
                                              const DWConvArgs& args, cudaStream_t stream) {
  const Tile t = choose_tile(args.x);
  const int64_t blocks = tiles_of(t, args.x) * t.chunks;
  RTSEG_DISPATCH_DTYPE(args.dtype, T, {
    using A = acc_t<T>;
    const int64_t smem = stages_bytes<A>(t.cc) + t.cc * t.tr *
                         std::min(args.x.w, t.tw + 2 * args.dilation) * int64_t(sizeof(A));
    unsigned int grid;
    cudaError_t err = prepare(forward_kernel<T>, smem, blocks, &grid);
    if (err != cudaSuccess) return err;
    forward_kernel<T><<<grid, kThreads, smem, stream>>>(static_cast<const T*>(x),
                                                        static_cast<T*>(out), out_view, args, t,
                                                        blocks);
  });
  return cudaGetLastError();
}

int64_t factorized_dw_conv_backward_workspace(const DWConvArgs& args) {
  return tiles_of(choose_tile(args.x), args.x) * args.x.c * kDWGrads;
}

cudaError_t launch_factorized_dw_conv_backward(const void* grad_out, Strided4 grad_out_view,
                                               const void* x, void* grad_x, Strided4 grad_x_view,
                                               void* grad_u1, Strided4 grad_u1_view,
                                               void* workspace, void* reduced,
                                               const DWConvArgs& args, cudaStream_t stream) {
  const Tile t = choose_tile(args.x);
  const int64_t tiles = tiles_of(t, args.x), blocks = tiles * t.chunks;
  const int64_t d = args.dilation, W = args.x.w;
  RTSEG_DISPATCH_DTYPE(args.dtype, T, {
    using A = acc_t<T>;
    const int64_t smem = stages_bytes<A>(t.cc) +
                         (kDWGrads * kThreads + t.cc * t.tr * (std::min(W, t.tw + 4 * d) +
                                                               std::min(W, t.tw + 2 * d))) *
                             int64_t(sizeof(A));
    unsigned int grid;
    cudaError_t err = prepare(backward_tile_kernel<T>, smem, blocks, &grid);
    if (err != cudaSuccess) return err;
    A* u = static_cast<A*>(grad_u1);
    A* parts = static_cast<A*>(workspace);
    backward_tile_kernel<T><<<grid, kThreads, smem, stream>>>(
        static_cast<const T*>(grad_out), grad_out_view, static_cast<const T*>(x), u,
        grad_u1_view, parts, args, t, blocks);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    const int64_t total = args.x.n * args.x.c * args.x.h * W;
    transposed_first_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(
        u, grad_u1_view, static_cast<T*>(grad_x), grad_x_view, args, fastest_dim(grad_x_view));
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    reduce_tiles_kernel<A><<<static_cast<unsigned int>(args.x.c * kDWGrads), kThreads, 0,
                             stream>>>(parts, static_cast<A*>(reduced), tiles, args.x.c);
  });
  return cudaGetLastError();
}

}  // namespace rtseg
