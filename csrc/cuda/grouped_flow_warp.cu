// grouped_flow_warp CUDA kernels. A thread computes one pixel's bilinear taps (the shared math
// of common/bilinear.h) once and applies them to several channels of its group.
#include "cuda/cuda_utils.cuh"
#include "cuda/grouped_flow_warp.cuh"

namespace rtseg {
namespace {

// Channels per thread in the forward: enough reuse of the taps, enough threads in flight.
constexpr int64_t kChannelsPerThread = 8;

template <typename T>
__device__ __forceinline__ BilinearTaps<acc_t<T>> taps_at(const T* flow, const FlowWarpArgs& a,
                                                          int64_t b, int64_t g, int64_t y,
                                                          int64_t x) {
  using A = acc_t<T>;
  const T* f = flow + b * a.flow.sn + (2 * g) * a.flow.sc + y * a.flow.sh + x * a.flow.sw;
  const auto pos = flow_warp_position<A>(x, y, to_acc(f[0]), to_acc(f[a.flow.sc]), a.flow.h,
                                         a.flow.w, a.in.h, a.in.w, a.align_corners);
  return bilinear_taps<A>(pos.ix, pos.iy, a.in.h, a.in.w, a.in.sh, a.in.sw, a.padding);
}

// Any layout: item = (b, g, channel chunk, y, x) with x fastest, so neighbouring threads write
// neighbouring pixels of NCHW outputs.
template <typename T>
__global__ void __launch_bounds__(kThreads, sizeof(acc_t<T>) == 8 ? 3 : 4)
    forward_kernel(const T* __restrict__ input, const T* __restrict__ flow,
                   T* __restrict__ out, Strided4 os, FlowWarpArgs a) {
  using A = acc_t<T>;
  const int64_t cg = a.in.c / a.groups;
  const int64_t chunks = (cg + kChannelsPerThread - 1) / kChannelsPerThread;
  const int64_t hw = a.flow.h * a.flow.w;
  const int64_t total = a.in.n * a.groups * chunks * hw;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = i % a.flow.w, y = (i / a.flow.w) % a.flow.h;
    const int64_t chunk = (i / hw) % chunks, g = (i / (hw * chunks)) % a.groups;
    const int64_t b = i / (hw * chunks * a.groups);
    const auto t = taps_at(flow, a, b, g, y, x);
    const int64_t c_begin = g * cg + chunk * kChannelsPerThread;
    const int64_t c_end = min(c_begin + kChannelsPerThread, (g + 1) * cg);
    for (int64_t c = c_begin; c < c_end; ++c) {
      const T* plane = input + b * a.in.sn + c * a.in.sc;
      const A v = interpolate(t, [plane](int64_t o) { return to_acc(plane[o]); });
      out[b * os.sn + c * os.sc + y * os.sh + x * os.sw] = from_acc<T>(v);
    }
  }
}

// channels_last with 16-byte aligned channel vectors: item = (b, y, x, g, vector) with the
// vector fastest, so a warp reads and writes whole contiguous channel runs of each corner.
template <typename T, int N>
__global__ void __launch_bounds__(kThreads, 4)
    forward_channels_last_kernel(const T* __restrict__ input,
                                 const T* __restrict__ flow, T* __restrict__ out,
                                 Strided4 os, FlowWarpArgs a) {
  using A = acc_t<T>;
  const int64_t cg = a.in.c / a.groups;
  const int64_t vecs = cg / N;
  const int64_t total = a.in.n * a.flow.h * a.flow.w * a.groups * vecs;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t v = i % vecs, g = (i / vecs) % a.groups;
    const int64_t pix = i / (vecs * a.groups);
    const int64_t x = pix % a.flow.w, y = (pix / a.flow.w) % a.flow.h;
    const int64_t b = pix / (a.flow.w * a.flow.h);
    const auto t = taps_at(flow, a, b, g, y, x);
    const T* base = input + b * a.in.sn + (g * cg + v * N);
    A acc[N];
#pragma unroll
    for (int j = 0; j < N; ++j) acc[j] = A(0);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (t.weight[k] == A(0)) continue;  // unused corner: see interpolate()
      const Vec<T, N> corner = *reinterpret_cast<const Vec<T, N>*>(base + t.offset[k]);
#pragma unroll
      for (int j = 0; j < N; ++j) acc[j] += t.weight[k] * to_acc(corner.v[j]);
    }
    Vec<T, N> result;
#pragma unroll
    for (int j = 0; j < N; ++j) result.v[j] = from_acc<T>(acc[j]);
    *reinterpret_cast<Vec<T, N>*>(out + b * os.sn + (g * cg + v * N) + y * os.sh + x * os.sw) =
        result;
  }
}

// NCHW (lanes == 0): item = (b, g, y, x), the thread walking all channels of its group, so the
// flow gradient is reduced in registers and written once, with no atomics; the input gradient is
// scattered. channels_last input and grad_out (lanes > 0): item = (b, y, x, g, lane), a team of
// `lanes` threads (team_lanes) per (b, g, pixel), lane l walking channels l, l + lanes, ..., so
// grad_out, the corners and the scatter touch contiguous channels; the team's flow gradient
// partials are summed in a fixed order (team_sum), so it stays deterministic.
template <typename T, bool kScatter>
__global__ void __launch_bounds__(kThreads, sizeof(acc_t<T>) == 8 ? 2 : 4)
    backward_kernel(const T* __restrict__ grad_out, Strided4 gs, const T* __restrict__ input,
                    const T* __restrict__ flow, T* __restrict__ grad_flow,
                    acc_t<T>* __restrict__ grad_input, FlowWarpArgs a, int lanes) {
  using A = acc_t<T>;
  const int64_t cg = a.in.c / a.groups;
  const int64_t hw = a.flow.h * a.flow.w;
  const int64_t step = lanes > 0 ? lanes : 1;
  // A multiple of `lanes`, and the grid's stride a multiple of 32: a team enters and leaves the
  // loop together, as team_sum needs.
  const int64_t total = a.in.n * a.groups * hw * step;
  const auto pos0 = flow_warp_position<A>(0, 0, A(0), A(0), a.flow.h, a.flow.w, a.in.h, a.in.w,
                                          a.align_corners);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t lane = 0, x, y, g, b;
    if (lanes > 0) {
      lane = i % lanes;
      g = (i / lanes) % a.groups;
      const int64_t pix = i / (lanes * a.groups);
      x = pix % a.flow.w;
      y = (pix / a.flow.w) % a.flow.h;
      b = pix / hw;
    } else {
      x = i % a.flow.w;
      y = (i / a.flow.w) % a.flow.h;
      g = (i / hw) % a.groups;
      b = i / (hw * a.groups);
    }
    const auto t = taps_at(flow, a, b, g, y, x);
    A gx = A(0), gy = A(0);
    for (int64_t c = g * cg + lane; c < (g + 1) * cg; c += step) {
      const A go = to_acc(grad_out[b * gs.sn + c * gs.sc + y * gs.sh + x * gs.sw]);
      const T* plane = input + b * a.in.sn + c * a.in.sc;
      A vx = A(0), vy = A(0);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (!corner_used(t, k)) continue;  // outside: see interpolate()
        const A v = to_acc(plane[t.offset[k]]);
        vx += t.dweight_dx[k] * v;
        vy += t.dweight_dy[k] * v;
        if (kScatter && t.weight[k] != A(0)) {
          atomicAdd(grad_input + b * a.in.sn + c * a.in.sc + t.offset[k], t.weight[k] * go);
        }
      }
      gx += vx * go;
      gy += vy * go;
    }
    if (lanes > 0) {
      gx = team_sum(gx, lanes);
      gy = team_sum(gy, lanes);
      if (lane != 0) continue;  // lane 0 writes the team's sums
    }
    T* gf = grad_flow + ((b * a.groups + g) * 2) * hw + y * a.flow.w + x;
    gf[0] = from_acc<T>(gx * pos0.dix_ddx);
    gf[hw] = from_acc<T>(gy * pos0.diy_ddy);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, sizeof(acc_t<T>) == 8 ? 5 : 6)
    corner_keys_kernel(const T* __restrict__ flow, int64_t* __restrict__ keys,
                       acc_t<T>* __restrict__ weights, FlowWarpArgs a) {
  const int64_t hw = a.flow.h * a.flow.w;
  const int64_t total = a.in.n * a.groups * hw;
  const int64_t sentinel = a.in.h * a.in.w;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = i % a.flow.w, y = (i / a.flow.w) % a.flow.h;
    const int64_t g = (i / hw) % a.groups, b = i / (hw * a.groups);
    // Offsets in a (h, w) row-major plane, so that a key is the input pixel's index.
    FlowWarpArgs plane = a;
    plane.in.sh = a.in.w;
    plane.in.sw = 1;
    const auto t = taps_at(flow, plane, b, g, y, x);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      keys[4 * i + k] = t.weight[k] != acc_t<T>(0) ? t.offset[k] : sentinel;
      weights[4 * i + k] = t.weight[k];
    }
  }
}

// item = (b, c, input pixel q), or (b, q, c) with c fastest when `channel_fastest` (channels_last
// grad_out and grad_input); its entries are order[bg][run_start[q] .. run_start[q + 1]).
template <typename T>
__global__ void __launch_bounds__(kThreads, sizeof(acc_t<T>) == 8 ? 4 : 5)
    gather_grad_input_kernel(const T* __restrict__ grad_out, Strided4 gs,
                             const int64_t* __restrict__ order,
                             const int64_t* __restrict__ run_start,
                             const acc_t<T>* __restrict__ weights,
                             T* __restrict__ grad_input, FlowWarpArgs a, bool channel_fastest) {
  using A = acc_t<T>;
  const int64_t cg = a.in.c / a.groups;
  const int64_t in_hw = a.in.h * a.in.w, out_hw = a.flow.h * a.flow.w;
  const int64_t total = a.in.n * a.in.c * in_hw;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t inner = channel_fastest ? a.in.c : in_hw;
    const int64_t q = channel_fastest ? (i / inner) % in_hw : i % inner;
    const int64_t c = channel_fastest ? i % inner : (i / inner) % a.in.c;
    const int64_t b = i / (in_hw * a.in.c);
    const int64_t bg = b * a.groups + c / cg;
    const int64_t* row_order = order + bg * out_hw * 4;
    const A* row_weights = weights + bg * out_hw * 4;
    const int64_t* runs = run_start + bg * (in_hw + 1);
    const T* go = grad_out + b * gs.sn + c * gs.sc;
    A acc = A(0);
    for (int64_t e = runs[q]; e < runs[q + 1]; ++e) {
      const int64_t entry = row_order[e], p = entry / 4;
      acc += row_weights[entry] * to_acc(go[(p / a.flow.w) * gs.sh + (p % a.flow.w) * gs.sw]);
    }
    grad_input[b * a.in.sn + c * a.in.sc + (q / a.in.w) * a.in.sh + (q % a.in.w) * a.in.sw] =
        from_acc<T>(acc);
  }
}

}  // namespace

cudaError_t launch_grouped_flow_warp_forward(const void* input, const void* flow, void* out,
                                             Strided4 os, const FlowWarpArgs& a,
                                             cudaStream_t stream) {
  const int64_t cg = a.in.c / a.groups;
  RTSEG_DISPATCH_DTYPE(a.dtype, T, {
    constexpr int N = vec_width<T>();
    const bool vectorizable = a.in.sc == 1 && os.sc == 1 && cg % N == 0 && a.in.sn % N == 0 &&
                              a.in.sh % N == 0 && a.in.sw % N == 0 && os.sn % N == 0 &&
                              os.sh % N == 0 && os.sw % N == 0 && aligned_to(input, 16) &&
                              aligned_to(out, 16);
    if (vectorizable) {
      const int64_t total = a.in.n * a.flow.h * a.flow.w * a.in.c / N;
      forward_channels_last_kernel<T, N><<<blocks_for(total), kThreads, 0, stream>>>(
          static_cast<const T*>(input), static_cast<const T*>(flow), static_cast<T*>(out), os,
          a);
    } else {
      const int64_t chunks = (cg + kChannelsPerThread - 1) / kChannelsPerThread;
      const int64_t total = a.in.n * a.groups * chunks * a.flow.h * a.flow.w;
      forward_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(
          static_cast<const T*>(input), static_cast<const T*>(flow), static_cast<T*>(out), os,
          a);
    }
  });
  return cudaGetLastError();
}

cudaError_t launch_grouped_flow_warp_backward(const void* grad_out, Strided4 gs,
                                              const void* input, const void* flow,
                                              void* grad_flow, void* grad_input_acc,
                                              const FlowWarpArgs& a, cudaStream_t stream) {
  const int64_t total = a.in.n * a.groups * a.flow.h * a.flow.w;
  RTSEG_DISPATCH_DTYPE(a.dtype, T, {
    const auto* go = static_cast<const T*>(grad_out);
    const auto* in = static_cast<const T*>(input);
    const auto* fl = static_cast<const T*>(flow);
    auto* gf = static_cast<T*>(grad_flow);
    auto* gi = static_cast<acc_t<T>*>(grad_input_acc);
    const bool channels_last = a.in.sc == 1 && gs.sc == 1 && a.in.c > 1;
    const int lanes = channels_last ? team_lanes(a.in.c / a.groups) : 0;
    const unsigned int grid = blocks_for(total * (lanes ? lanes : 1));
    if (gi != nullptr) {
      backward_kernel<T, true><<<grid, kThreads, 0, stream>>>(go, gs, in, fl, gf, gi, a, lanes);
    } else {
      backward_kernel<T, false><<<grid, kThreads, 0, stream>>>(go, gs, in, fl, gf, gi, a, lanes);
    }
  });
  return cudaGetLastError();
}

cudaError_t launch_grouped_flow_warp_corner_keys(const void* flow, int64_t* keys, void* weights,
                                                 const FlowWarpArgs& a, cudaStream_t stream) {
  const int64_t total = a.in.n * a.groups * a.flow.h * a.flow.w;
  RTSEG_DISPATCH_DTYPE(a.dtype, T, {
    corner_keys_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(
        static_cast<const T*>(flow), keys, static_cast<acc_t<T>*>(weights), a);
  });
  return cudaGetLastError();
}

cudaError_t launch_grouped_flow_warp_gather_grad_input(
    const void* grad_out, Strided4 gs, const int64_t* order, const int64_t* run_start,
    const void* weights, void* grad_input, const FlowWarpArgs& a, cudaStream_t stream) {
  const int64_t total = a.in.n * a.in.c * a.in.h * a.in.w;
  RTSEG_DISPATCH_DTYPE(a.dtype, T, {
    gather_grad_input_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(
        static_cast<const T*>(grad_out), gs, order, run_start,
        static_cast<const acc_t<T>*>(weights), static_cast<T*>(grad_input), a,
        a.in.sc == 1 && gs.sc == 1 && a.in.c > 1);
  });
  return cudaGetLastError();
}

}  // namespace rtseg
