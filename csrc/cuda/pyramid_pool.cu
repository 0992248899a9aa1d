// pyramid_pool CUDA kernels: one block per (batch, channel) plane. The forward reads the plane
// once, one atom row at a time (threads along columns, so NCHW reads coalesce), reduces it to
// the atom sums in shared memory and derives every level there; the backward derives the atom
// gradients in shared memory and writes each input gradient once. Every sum has a fixed order
// (no atomics), so both passes are deterministic.
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
__global__ void __launch_bounds__(kThreads, 1) maps_kernel(int32_t* __restrict__ maps, PyramidPlan p) {
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

template <typename T>
__global__ void __launch_bounds__(kThreads, 8)
    forward_kernel(const T* __restrict__ x, const int32_t* __restrict__ maps_ptr,
                   T* __restrict__ out, PyramidPoolArgs a) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  const PyramidPlan& p = a.plan;
  const Maps maps(maps_ptr, a.x, p);
  A* colsum = reinterpret_cast<A*>(smem);
  A* atoms = colsum + a.x.w;
  A* values = atoms + p.atoms_h * p.atoms_w;
  const int64_t plane = blockIdx.x;
  const T* in = x + (plane / a.x.c) * a.x.sn + (plane % a.x.c) * a.x.sc;

  for (int r = 0; r < p.atoms_h; ++r) {
    for (int64_t c = threadIdx.x; c < a.x.w; c += blockDim.x) {
      A sum = 0;
      for (int64_t y = maps.row_starts[r]; y < maps.row_starts[r + 1]; ++y)
        sum += to_acc(in[y * a.x.sh + c * a.x.sw]);
      colsum[c] = sum;
    }
    __syncthreads();
    for (int q = threadIdx.x; q < p.atoms_w; q += blockDim.x) {
      A sum = 0;
      for (int64_t c = maps.col_starts[q]; c < maps.col_starts[q + 1]; ++c) sum += colsum[c];
      atoms[r * p.atoms_w + q] = sum;
    }
    __syncthreads();
  }
  for (int l = 0; l < p.levels; ++l) {
    const A* cells = p.src[l] < 0 ? atoms : values + p.offset[p.src[l]];
    const PoolSource s = level_source(p, l, maps.ymap, maps.xmap);
    for (int q = threadIdx.x; q < p.oh[l] * p.ow[l]; q += blockDim.x)
      values[p.offset[l] + q] = pool_bin(cells, source_width(p, l), s, p.oh[l], p.ow[l],
                                         q / p.ow[l], q % p.ow[l]);
    __syncthreads();
  }
  T* o = out + plane * p.out_total;
  for (int k = 0, m0 = 0; k < p.outputs; ++k) {
    const int l = p.out_level[k], n = p.oh[l] * p.ow[l];
    for (int q = threadIdx.x; q < n; q += blockDim.x)
      o[m0 + q] = from_acc<T>(values[p.offset[l] + q]);
    m0 += n;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 4)
    backward_kernel(const T* __restrict__ grad_out, int64_t gs_n, int64_t gs_c, int64_t gs_m,
                    const int32_t* __restrict__ maps_ptr, T* __restrict__ grad_x,
                    PyramidPoolArgs a) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  const PyramidPlan& p = a.plan;
  const Maps maps(maps_ptr, a.x, p);
  A* grads = reinterpret_cast<A*>(smem);
  A* atoms = grads + p.total;
  const int64_t plane = blockIdx.x, b = plane / a.x.c, ch = plane % a.x.c;
  const T* g = grad_out + b * gs_n + ch * gs_c;

  // Level gradients: the sum over the output entries that copy the level (grids may repeat).
  for (int q = threadIdx.x; q < p.total; q += blockDim.x) {
    int l = 0;
    while (l + 1 < p.levels && p.offset[l + 1] <= q) ++l;
    A sum = 0;
    for (int k = 0, m0 = 0; k < p.outputs; ++k) {
      const int lk = p.out_level[k];
      if (lk == l) sum += to_acc(g[(m0 + q - p.offset[l]) * gs_m]);
      m0 += p.oh[lk] * p.ow[lk];
    }
    grads[q] = sum;
  }
  for (int q = threadIdx.x; q < p.atoms_h * p.atoms_w; q += blockDim.x) atoms[q] = A(0);
  __syncthreads();
  // Cascaded levels hand their gradient to the level they pool, smallest first; a thread owns
  // a row of the receiving level.
  for (int l = p.levels - 1; l >= 0; --l) {
    if (p.src[l] < 0) continue;
    const PoolSource s = level_source(p, l, maps.ymap, maps.xmap);
    for (int64_t r = threadIdx.x; r < s.h; r += blockDim.x)
      unpool_row(grads + p.offset[p.src[l]] + r * s.w, r, s, grads + p.offset[l], p.oh[l],
                 p.ow[l]);
    __syncthreads();
  }
  for (int64_t r = threadIdx.x; r < p.atoms_h; r += blockDim.x)
    for (int l = 0; l < p.levels; ++l)
      if (p.src[l] < 0)
        unpool_row(atoms + r * p.atoms_w, r, level_source(p, l, maps.ymap, maps.xmap),
                   grads + p.offset[l], p.oh[l], p.ow[l]);
  __syncthreads();
  T* gx = grad_x + b * a.x.sn + ch * a.x.sc;
  const int64_t hw = a.x.h * a.x.w;
  for (int64_t i = threadIdx.x; i < hw; i += blockDim.x) {
    const int64_t y = i / a.x.w, c = i % a.x.w;
    gx[y * a.x.sh + c * a.x.sw] = from_acc<T>(atoms[maps.ymap[y] * p.atoms_w + maps.xmap[c]]);
  }
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
  const unsigned int planes = static_cast<unsigned int>(args.x.n * args.x.c);
  RTSEG_DISPATCH_DTYPE(args.dtype, T, {
    const size_t bytes = sizeof(acc_t<T>) * (args.x.w + p.atoms_h * p.atoms_w + p.total);
    const cudaError_t err = reserve_shared(forward_kernel<T>, bytes);
    if (err != cudaSuccess) return err;
    forward_kernel<T><<<planes, kThreads, bytes, stream>>>(
        static_cast<const T*>(x), maps, static_cast<T*>(out), args);
  });
  return cudaGetLastError();
}

cudaError_t launch_pyramid_pool_backward(const void* grad_output, int64_t gs_n, int64_t gs_c,
                                         int64_t gs_m, const int32_t* maps, void* grad_x,
                                         const PyramidPoolArgs& args, cudaStream_t stream) {
  const PyramidPlan& p = args.plan;
  const unsigned int planes = static_cast<unsigned int>(args.x.n * args.x.c);
  RTSEG_DISPATCH_DTYPE(args.dtype, T, {
    const size_t bytes = sizeof(acc_t<T>) * (p.total + p.atoms_h * p.atoms_w);
    const cudaError_t err = reserve_shared(backward_kernel<T>, bytes);
    if (err != cudaSuccess) return err;
    backward_kernel<T><<<planes, kThreads, bytes, stream>>>(
        static_cast<const T*>(grad_output), gs_n, gs_c, gs_m, maps, static_cast<T*>(grad_x),
        args);
  });
  return cudaGetLastError();
}

}  // namespace rtseg
