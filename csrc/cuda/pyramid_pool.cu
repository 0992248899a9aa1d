// pyramid_pool CUDA kernels: one block per (batch, channel) plane, or, for channels_last input,
// per run of adjacent channels (Lanes). The forward reads the planes once, one atom row at a
// time (threads along columns, or along channels then columns, so reads coalesce), reduces them
// to the atom sums in shared memory and derives every level there; the backward derives the
// atom gradients in shared memory and writes each input gradient once. Every sum has a fixed
// order (no atomics), so both passes are deterministic.
#include "cuda/cuda_utils.cuh"
#include "cuda/pyramid_pool.cuh"

namespace rtseg {
namespace {

struct Maps {
  const int32_t *ymap, *xmap, *row_starts, *col_starts;
  __device__ Maps(const int32_t* maps, const Strided4& x, const PyramidPlan& p)
      : ymap(maps), xmap(maps + x.h + 1), row_starts(maps + x.h + x.w + 2),
        col_starts(maps + x.h + x.w + 2 + p.atoms_h + 1) {}
};

// Block 0 numbers the rows, block 1 the columns: each thread counts the cuts of a run of
// coordinates, thread 0 scans the counts, and every coordinate gets its atom index (cuts up to
// and including it, minus one) while each cut records itself as the start of its atom.
__global__ void __launch_bounds__(kThreads, 1)
    maps_kernel(int32_t* __restrict__ maps, PyramidPlan p) {
  __shared__ int32_t first_atom[kThreads];
  const bool rows = blockIdx.x == 0;
  const int64_t n = rows ? p.in_h : p.in_w;
  int32_t* map = rows ? maps : maps + p.in_h + 1;
  int32_t* starts = maps + p.in_h + p.in_w + 2 + (rows ? 0 : p.atoms_h + 1);
  const int64_t per = (n + 1 + kThreads - 1) / kThreads;
  const int64_t q0 = threadIdx.x * per, q1 = min(q0 + per, n + 1);
  int32_t cuts = 0;
  for (int64_t q = q0; q < q1; ++q) cuts += is_atom_cut(p, rows, q);
  first_atom[threadIdx.x] = cuts;
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t atom = -1;
    for (int t = 0; t < kThreads; ++t) {
      const int32_t c = first_atom[t];
      first_atom[t] = atom;
      atom += c;
    }
  }
  __syncthreads();
  int32_t atom = first_atom[threadIdx.x];
  for (int64_t q = q0; q < q1; ++q) {
    if (is_atom_cut(p, rows, q)) starts[++atom] = static_cast<int32_t>(q);
    map[q] = atom;
  }
}

// Elements per shared-memory entry for `lanes` channels: one per lane, plus one of padding when
// there are several, so that threads reading one lane's consecutive entries hit distinct banks.
__host__ __device__ __forceinline__ int lane_stride(int lanes) { return lanes > 1 ? lanes + 1 : 1; }

// The block's channels: `lanes` consecutive channels of one batch item (1 for NCHW input; more
// for channels_last, where they are adjacent in memory). Shared arrays hold entry e of lane l at
// e * stride + l; thread t is lane t % lanes of slot t / lanes, the slots splitting the work.
struct Lanes {
  int64_t b, c0;  // batch item, first channel
  int lanes, stride, lane, slot, slots;
  __device__ Lanes(const Strided4& x, int lanes_)
      : lanes(lanes_), stride(lane_stride(lanes_)), lane(threadIdx.x % lanes_),
        slot(threadIdx.x / lanes_), slots(blockDim.x / lanes_) {
    const int64_t groups = (x.c + lanes - 1) / lanes;
    b = blockIdx.x / groups;
    c0 = (blockIdx.x % groups) * lanes;
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads, 6)
    forward_kernel(const T* __restrict__ x, const int32_t* __restrict__ maps_ptr,
                   T* __restrict__ out, PyramidPoolArgs a, int lanes) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  const PyramidPlan& p = a.plan;
  const Maps maps(maps_ptr, a.x, p);
  const Lanes t(a.x, lanes);
  A* colsum = reinterpret_cast<A*>(smem);
  const int ls = t.stride;
  A* atoms = colsum + a.x.w * ls;
  A* values = atoms + p.atoms_h * p.atoms_w * ls;
  const int64_t ch = t.c0 + t.lane;
  const bool valid = ch < a.x.c;  // the last channel group may be partial
  const T* in = x + t.b * a.x.sn + (valid ? ch : 0) * a.x.sc;

  for (int r = 0; r < p.atoms_h; ++r) {
    for (int64_t c = t.slot; c < a.x.w; c += t.slots) {
      A sum = 0;
      if (valid) {
        for (int64_t y = maps.row_starts[r]; y < maps.row_starts[r + 1]; ++y)
          sum += to_acc(in[y * a.x.sh + c * a.x.sw]);
      }
      colsum[c * ls + t.lane] = sum;
    }
    __syncthreads();
    for (int q = t.slot; q < p.atoms_w; q += t.slots) {
      A sum = 0;
      for (int64_t c = maps.col_starts[q]; c < maps.col_starts[q + 1]; ++c)
        sum += colsum[c * ls + t.lane];
      atoms[(r * p.atoms_w + q) * ls + t.lane] = sum;
    }
    __syncthreads();
  }
  for (int l = 0; l < p.levels; ++l) {
    const A* cells = (p.src[l] < 0 ? atoms : values + p.offset[p.src[l]] * ls) + t.lane;
    const PoolSource s = level_source(p, l, maps.ymap, maps.xmap);
    for (int q = t.slot; q < p.oh[l] * p.ow[l]; q += t.slots)
      values[(p.offset[l] + q) * ls + t.lane] =
          pool_bin(cells, source_width(p, l), s, p.oh[l], p.ow[l], q / p.ow[l], q % p.ow[l], ls);
    __syncthreads();
  }
  // Entry m of channel c0 + k is out[(b, c0 + k, m)]: threads along m, so writes coalesce.
  for (int k = 0, m0 = 0; k < p.outputs; ++k) {
    const int l = p.out_level[k], n = p.oh[l] * p.ow[l];
    for (int i = threadIdx.x; i < n * lanes; i += blockDim.x) {
      const int lane = i / n, q = i % n;
      if (t.c0 + lane < a.x.c)
        out[(t.b * a.x.c + t.c0 + lane) * p.out_total + m0 + q] =
            from_acc<T>(values[(p.offset[l] + q) * ls + lane]);
    }
    m0 += n;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 4)
    backward_kernel(const T* __restrict__ grad_out, int64_t gs_n, int64_t gs_c, int64_t gs_m,
                    const int32_t* __restrict__ maps_ptr, T* __restrict__ grad_x,
                    PyramidPoolArgs a, int lanes) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  const PyramidPlan& p = a.plan;
  const Maps maps(maps_ptr, a.x, p);
  const Lanes t(a.x, lanes);
  const int ls = t.stride;
  A* grads = reinterpret_cast<A*>(smem);
  A* atoms = grads + p.total * ls;

  // Level gradients: the sum over the output entries that copy the level (grids may repeat);
  // threads along the level's entries, so grad_output reads coalesce.
  for (int i = threadIdx.x; i < p.total * lanes; i += blockDim.x) {
    const int lane = i / p.total, q = i % p.total;
    int l = 0;
    while (l + 1 < p.levels && p.offset[l + 1] <= q) ++l;
    A sum = 0;
    if (t.c0 + lane < a.x.c) {
      const T* g = grad_out + t.b * gs_n + (t.c0 + lane) * gs_c;
      for (int k = 0, m0 = 0; k < p.outputs; ++k) {
        const int lk = p.out_level[k];
        if (lk == l) sum += to_acc(g[(m0 + q - p.offset[l]) * gs_m]);
        m0 += p.oh[lk] * p.ow[lk];
      }
    }
    grads[q * ls + lane] = sum;
  }
  for (int q = threadIdx.x; q < p.atoms_h * p.atoms_w * ls; q += blockDim.x) atoms[q] = A(0);
  __syncthreads();
  // Cascaded levels hand their gradient to the level they pool, smallest first; a thread owns
  // a row of the receiving level (of its lane's channel).
  for (int l = p.levels - 1; l >= 0; --l) {
    if (p.src[l] < 0) continue;
    const PoolSource s = level_source(p, l, maps.ymap, maps.xmap);
    for (int64_t r = t.slot; r < s.h; r += t.slots)
      unpool_row(grads + (p.offset[p.src[l]] + r * s.w) * ls + t.lane, r, s,
                 grads + p.offset[l] * ls + t.lane, p.oh[l], p.ow[l], ls);
    __syncthreads();
  }
  for (int64_t r = t.slot; r < p.atoms_h; r += t.slots)
    for (int l = 0; l < p.levels; ++l)
      if (p.src[l] < 0)
        unpool_row(atoms + r * p.atoms_w * ls + t.lane, r,
                   level_source(p, l, maps.ymap, maps.xmap), grads + p.offset[l] * ls + t.lane,
                   p.oh[l], p.ow[l], ls);
  __syncthreads();
  const int64_t hw = a.x.h * a.x.w;
  for (int64_t i = threadIdx.x; i < hw * lanes; i += blockDim.x) {
    const int lane = static_cast<int>(i % lanes);
    const int64_t pix = i / lanes, y = pix / a.x.w, c = pix % a.x.w, ch = t.c0 + lane;
    if (ch < a.x.c)
      grad_x[t.b * a.x.sn + ch * a.x.sc + y * a.x.sh + c * a.x.sw] =
          from_acc<T>(atoms[(maps.ymap[y] * p.atoms_w + maps.xmap[c]) * ls + lane]);
  }
}

// Channels per block: 1 for NCHW input (each block reads one plane along its rows); for
// channels_last, up to 32 adjacent channels (one 128-byte run per pixel for float32), as many as
// keep the block's shared memory (`entry_bytes` per lane_stride element) within the 48 KiB
// every SM gives without an opt-in.
int channel_lanes(const Strided4& x, size_t entry_bytes) {
  if (x.sc != 1 || x.c == 1) return 1;
  int lanes = team_lanes(x.c);
  while (lanes > 1 && lane_stride(lanes) * entry_bytes > 48 * 1024) lanes /= 2;
  return lanes;
}

unsigned int blocks_of(const Strided4& x, int lanes) {
  return static_cast<unsigned int>(x.n * ((x.c + lanes - 1) / lanes));
}

// Dynamic shared memory beyond the default 48 KiB needs an opt-in per kernel.
template <typename Kernel>
cudaError_t reserve_shared(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
}

}  // namespace

cudaError_t launch_pyramid_pool_maps(int32_t* maps, const PyramidPlan& plan,
                                     cudaStream_t stream) {
  maps_kernel<<<2, kThreads, 0, stream>>>(maps, plan);
  return cudaGetLastError();
}

cudaError_t launch_pyramid_pool_forward(const void* x, const int32_t* maps, void* out,
                                        const PyramidPoolArgs& args, cudaStream_t stream) {
  const PyramidPlan& p = args.plan;
  RTSEG_DISPATCH_DTYPE(args.dtype, T, {
    const size_t entry = sizeof(acc_t<T>) * (args.x.w + p.atoms_h * p.atoms_w + p.total);
    const int lanes = channel_lanes(args.x, entry);
    const size_t bytes = entry * lane_stride(lanes);
    const cudaError_t err = reserve_shared(forward_kernel<T>, bytes);
    if (err != cudaSuccess) return err;
    forward_kernel<T><<<blocks_of(args.x, lanes), kThreads, bytes, stream>>>(
        static_cast<const T*>(x), maps, static_cast<T*>(out), args, lanes);
  });
  return cudaGetLastError();
}

cudaError_t launch_pyramid_pool_backward(const void* grad_output, int64_t gs_n, int64_t gs_c,
                                         int64_t gs_m, const int32_t* maps, void* grad_x,
                                         const PyramidPoolArgs& args, cudaStream_t stream) {
  const PyramidPlan& p = args.plan;
  RTSEG_DISPATCH_DTYPE(args.dtype, T, {
    const size_t entry = sizeof(acc_t<T>) * (p.total + p.atoms_h * p.atoms_w);
    const int lanes = channel_lanes(args.x, entry);
    const size_t bytes = entry * lane_stride(lanes);
    const cudaError_t err = reserve_shared(backward_kernel<T>, bytes);
    if (err != cudaSuccess) return err;
    backward_kernel<T><<<blocks_of(args.x, lanes), kThreads, bytes, stream>>>(
        static_cast<const T*>(grad_output), gs_n, gs_c, gs_m, maps, static_cast<T*>(grad_x),
        args, lanes);
  });
  return cudaGetLastError();
}

}  // namespace rtseg
