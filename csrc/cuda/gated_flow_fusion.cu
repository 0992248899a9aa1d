// gated_flow_fusion CUDA kernels. A thread computes one pixel's taps of both warps once (the
// low warp's 16 taps read the upsampled map from `low` on the fly, merged by address so that
// typically 4 to 9 are read and scattered, common/gated_flow_fusion.h) and applies them to
// several channels of its group.
#include "cuda/cuda_utils.cuh"
#include "cuda/gated_flow_fusion.cuh"

namespace rtseg {
namespace {

// Channels per thread in the forward: enough reuse of the taps, enough threads in flight.
constexpr int64_t kChannelsPerThread = 16;

// Resident blocks per SM that the kernels' __launch_bounds__ ask for (3 blocks of 256 threads:
// 80 registers, 37.5% occupancy; 2: 128, 25%): what their registers allow without spilling on
// sm_90. The scattering backward keeps the atomics' addresses live as well; double needs twice
// the registers for its values.
template <typename T> constexpr int forward_min_blocks() { return sizeof(acc_t<T>) == 8 ? 2 : 3; }
template <typename T, bool kScatter> constexpr int backward_min_blocks() {
  return sizeof(acc_t<T>) == 8 ? 1 : (kScatter ? 2 : 3);
}
template <typename T, int kTaps> constexpr int tap_keys_min_blocks() {
  return sizeof(acc_t<T>) == 8 ? (kTaps == 16 ? 2 : 6) : (kTaps == 16 ? 3 : 7);
}

template <typename T> struct Inputs {
  const T *high, *low, *flow_high, *flow_low, *gate_high, *gate_low;
  explicit Inputs(const GatedFusionInputs& in)
      : high(static_cast<const T*>(in.high)), low(static_cast<const T*>(in.low)),
        flow_high(static_cast<const T*>(in.flow_high)),
        flow_low(static_cast<const T*>(in.flow_low)),
        gate_high(static_cast<const T*>(in.gate_high)),
        gate_low(static_cast<const T*>(in.gate_low)) {}
};

template <typename T>
__device__ __forceinline__ Gate<acc_t<T>> gate_at(const T* gate, const Strided4& s, int64_t b,
                                                  int64_t y, int64_t x) {
  return gate_of(to_acc(gate[b * s.sn + y * s.sh + x * s.sw]));
}

// The high warp's corners of pixel (x, y) in group g, with offsets for plane strides (sy, sx).
template <typename T>
__device__ __forceinline__ BilinearTaps<acc_t<T>> high_taps(const Inputs<T>& p,
                                                            const GatedFusionArgs& a, int64_t b,
                                                            int64_t g, int64_t y, int64_t x,
                                                            int64_t sy, int64_t sx) {
  const Strided4& f = a.flow_high;
  const T* d = p.flow_high + b * f.sn + 2 * g * f.sc + y * f.sh + x * f.sw;
  return fusion_warp_corners(x, y, to_acc(d[0]), to_acc(d[f.sc]), a.high.h, a.high.w, sy, sx);
}

// The low warp's 16 taps of pixel (x, y) in group g, for low-plane strides (sy, sx).
template <typename T>
__device__ __forceinline__ UpsampledWarpTaps<acc_t<T>> low_taps(const Inputs<T>& p,
                                                                const GatedFusionArgs& a,
                                                                int64_t b, int64_t g, int64_t y,
                                                                int64_t x, int64_t sy,
                                                                int64_t sx) {
  const Strided4& f = a.flow_low;
  const int64_t H = a.high.h, W = a.high.w;
  const T* d = p.flow_low + b * f.sn + 2 * g * f.sc + y * f.sh + x * f.sw;
  const auto corners = fusion_warp_corners(x, y, to_acc(d[0]), to_acc(d[f.sc]), H, W, W,
                                           int64_t(1));
  return upsampled_warp_taps(corners, H, W, a.low.h, a.low.w, sy, sx);
}

// The low warp of pixel (x, y) in group g in separable form, one LowAxis per axis: the kernels
// that apply it to many channels keep 24 values per pixel live instead of upsampled_warp_taps' 64.
template <typename T> struct LowWarp {
  LowAxis<acc_t<T>> y, x;
};
template <typename T>
__device__ __forceinline__ LowWarp<T> low_warp(const Inputs<T>& p, const GatedFusionArgs& a,
                                               int64_t b, int64_t g, int64_t y, int64_t x) {
  const Strided4& f = a.flow_low;
  const int64_t H = a.high.h, W = a.high.w;
  const T* d = p.flow_low + b * f.sn + 2 * g * f.sc + y * f.sh + x * f.sw;
  const auto pos = flow_warp_position<acc_t<T>>(x, y, to_acc(d[0]), to_acc(d[f.sc]), H, W, H, W,
                                                true);  // as fusion_warp_corners
  return {low_axis(pos.iy, H, a.low.h), low_axis(pos.ix, W, a.low.w)};
}

// The pixel and channels of item i: NCHW (lanes == 0): item = (b, g, channel chunk, y, x) with x
// fastest, the thread walking its chunk's channels, so that neighbouring threads touch
// neighbouring pixels; channels_last (lanes > 0): item = (b, y, x, g, chunk, lane), a team of
// `lanes` threads (team_lanes) per chunk, lane l walking its channels l, l + lanes, ..., so that
// neighbouring threads touch neighbouring channels.
struct FusionItem {
  int64_t b, g, y, x, chunk, lane, c_begin, c_end, c_step;
};
__device__ __forceinline__ FusionItem fusion_item(int64_t i, const GatedFusionArgs& a,
                                                  int64_t chunks, int64_t per_chunk, int lanes) {
  const int64_t H = a.high.h, W = a.high.w, cg = a.high.c / a.groups;
  FusionItem t;
  t.lane = 0;
  if (lanes > 0) {
    t.lane = i % lanes;
    i /= lanes;
    t.chunk = i % chunks;
    i /= chunks;
    t.g = i % a.groups;
    i /= a.groups;
    t.x = i % W;
    t.y = (i / W) % H;
    t.b = i / (W * H);
  } else {
    t.x = i % W;
    i /= W;
    t.y = i % H;
    i /= H;
    t.chunk = i % chunks;
    i /= chunks;
    t.g = i % a.groups;
    t.b = i / a.groups;
  }
  const int64_t first = t.g * cg + t.chunk * per_chunk;
  t.c_begin = first + t.lane;
  t.c_end = min(first + per_chunk, (t.g + 1) * cg);
  t.c_step = lanes > 0 ? lanes : 1;
  return t;
}

// Item (fusion_item) = a chunk of channels of one pixel and group: both warps' taps once, then
// the output of each channel.
template <typename T>
__global__ void __launch_bounds__(kThreads, forward_min_blocks<T>())
    forward_kernel(Inputs<T> p, T* __restrict__ out, Strided4 os, GatedFusionArgs a,
                   int lanes) {
  using A = acc_t<T>;
  const int64_t hw = a.high.h * a.high.w, cg = a.high.c / a.groups;
  const int64_t per_chunk = lanes > 0 ? cg : kChannelsPerThread;
  const int64_t chunks = (cg + per_chunk - 1) / per_chunk;
  const int64_t total = a.high.n * a.groups * chunks * hw * (lanes > 0 ? lanes : 1);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const FusionItem t = fusion_item(i, a, chunks, per_chunk, lanes);
    const int64_t b = t.b, g = t.g, y = t.y, x = t.x;
    const auto th = high_taps(p, a, b, g, y, x, a.high.sh, a.high.sw);
    const LowWarp<T> lw = low_warp(p, a, b, g, y, x);
    const A scale_high = gate_at(p.gate_high, a.gate_high, b, y, x).scale;
    const A scale_low = gate_at(p.gate_low, a.gate_low, b, y, x).scale;
    for (int64_t c = t.c_begin; c < t.c_end; c += t.c_step) {
      const T* hp = p.high + b * a.high.sn + c * a.high.sc;
      const T* lp = p.low + b * a.low.sn + c * a.low.sc;
      A vl = A(0);
      const A vh = interpolate(th, [hp](int64_t o) { return to_acc(hp[o]); });
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        if (lw.y.weight[r] == A(0)) continue;  // zero-weight taps are skipped, as interpolate()
        const T* row = lp + lw.y.index[r] * a.low.sh;
        A v = A(0);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (lw.x.weight[k] != A(0)) v += lw.x.weight[k] * to_acc(row[lw.x.index[k] * a.low.sw]);
        }
        vl += lw.y.weight[r] * v;
      }
      out[b * os.sn + c * os.sc + y * os.sh + x * os.sw] = from_acc<T>(scale_low * vl +
                                                                       scale_high * vh);
    }
  }
}

// Item (fusion_item) = a chunk of channels of one pixel and group: the thread (or, channels_last,
// the team) walks the chunk's channels, reducing the per-pixel FusionSums in registers and
// writing them once (no atomics) to the chunk's slot of `partials`; with kScatter the input
// gradients are scattered into the accumulation buffers.
template <typename T, bool kScatter>
__global__ void __launch_bounds__(kThreads, (backward_min_blocks<T, kScatter>()))
    backward_kernel(const T* __restrict__ grad_out, Strided4 gs, Inputs<T> p,
                    acc_t<T>* __restrict__ partials, int64_t chunks,
                    acc_t<T>* __restrict__ grad_high, acc_t<T>* __restrict__ grad_low,
                    GatedFusionArgs a, int lanes) {
  using A = acc_t<T>;
  const int64_t H = a.high.h, W = a.high.w, hw = H * W, cg = a.high.c / a.groups;
  const int64_t per_chunk = (cg + chunks - 1) / chunks;
  // A multiple of `lanes`, and the grid's stride a multiple of 32: a team enters and leaves the
  // loop together, as team_sum needs.
  const int64_t total = a.high.n * a.groups * chunks * hw * (lanes > 0 ? lanes : 1);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const FusionItem t = fusion_item(i, a, chunks, per_chunk, lanes);
    const int64_t b = t.b, g = t.g, y = t.y, x = t.x, chunk = t.chunk;
    A sums[kFusionSums];
#pragma unroll
    for (int q = 0; q < kFusionSums; ++q) sums[q] = A(0);
    // One pass over the channels per warp, so that only one warp's taps are live at a time (the
    // second pass reads grad_out again, mostly from cache).
    {
      const auto th = high_taps(p, a, b, g, y, x, a.high.sh, a.high.sw);
      const A scale = gate_at(p.gate_high, a.gate_high, b, y, x).scale;
      for (int64_t c = t.c_begin; c < t.c_end; c += t.c_step) {
        const A go = to_acc(grad_out[b * gs.sn + c * gs.sc + y * gs.sh + x * gs.sw]);
        const T* hp = p.high + b * a.high.sn + c * a.high.sc;
        A v = A(0), vx = A(0), vy = A(0);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (!corner_used(th, k)) continue;  // outside: see interpolate()
          const A val = to_acc(hp[th.offset[k]]);
          v += th.weight[k] * val;
          vx += th.dweight_dx[k] * val;
          vy += th.dweight_dy[k] * val;
          if (kScatter && th.weight[k] != A(0)) {
            atomicAdd(grad_high + b * a.high.sn + c * a.high.sc + th.offset[k],
                      th.weight[k] * scale * go);
          }
        }
        sums[kHighValue] += go * v;
        sums[kHighDx] += go * vx;
        sums[kHighDy] += go * vy;
      }
    }
    {
      const LowWarp<T> lw = low_warp(p, a, b, g, y, x);
      const A scale = gate_at(p.gate_low, a.gate_low, b, y, x).scale;
      for (int64_t c = t.c_begin; c < t.c_end; c += t.c_step) {
        const A go = to_acc(grad_out[b * gs.sn + c * gs.sc + y * gs.sh + x * gs.sw]);
        const T* lp = p.low + b * a.low.sn + c * a.low.sc;
        A v = A(0), vx = A(0), vy = A(0);
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          if (lw.y.unused(r)) continue;  // merged duplicates and rows outside the map
          const int64_t row = lw.y.index[r] * a.low.sh;
          A rv = A(0), rdx = A(0);
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            // As upsampled_warp_taps' taps: skipped when their weight and both derivatives
            // (products of the entries) are 0, so an inf there cannot turn into nan.
            if (lw.x.unused(k) || (lw.y.weight[r] == A(0) && lw.x.weight[k] == A(0))) continue;
            const int64_t offset = row + lw.x.index[k] * a.low.sw;
            const A val = to_acc(lp[offset]);
            rv += lw.x.weight[k] * val;
            rdx += lw.x.dweight[k] * val;
            const A weight = lw.y.weight[r] * lw.x.weight[k];
            if (kScatter && weight != A(0)) {
              atomicAdd(grad_low + b * a.low.sn + c * a.low.sc + offset, weight * scale * go);
            }
          }
          v += lw.y.weight[r] * rv;
          vx += lw.y.weight[r] * rdx;
          vy += lw.y.dweight[r] * rv;
        }
        sums[kLowValue] += go * v;
        sums[kLowDx] += go * vx;
        sums[kLowDy] += go * vy;
      }
    }
    if (lanes > 0) {
#pragma unroll
      for (int q = 0; q < kFusionSums; ++q) sums[q] = team_sum(sums[q], lanes);
      if (t.lane != 0) continue;  // lane 0 writes the team's sums
    }
    A* slot = partials + (((chunk * a.high.n + b) * a.groups + g) * kFusionSums) * hw + y * W + x;
#pragma unroll
    for (int q = 0; q < kFusionSums; ++q) slot[q * hw] = sums[q];
  }
}

// item = (b, y, x): adds the partial sums over chunks and groups in a fixed order and applies
// the chain rule to the flow and gate gradients.
template <typename T>
__global__ void __launch_bounds__(kThreads, sizeof(acc_t<T>) == 8 ? 3 : 5)
    finalize_kernel(Inputs<T> p, const acc_t<T>* __restrict__ partials,
                    int64_t chunks, T* __restrict__ grad_flow_high,
                    T* __restrict__ grad_flow_low, T* __restrict__ grad_gate_high,
                    T* __restrict__ grad_gate_low, GatedFusionArgs a) {
  using A = acc_t<T>;
  const int64_t H = a.high.h, W = a.high.w, hw = H * W, G = a.groups, B = a.high.n;
  const auto slope = flow_warp_position<A>(0, 0, A(0), A(0), H, W, H, W, true);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < B * hw;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pix = i % hw, b = i / hw;
    const int64_t x = pix % W, y = pix / W;
    const auto gh = gate_at(p.gate_high, a.gate_high, b, y, x);
    const auto gl = gate_at(p.gate_low, a.gate_low, b, y, x);
    A value_high = A(0), value_low = A(0);
    for (int64_t g = 0; g < G; ++g) {
      A s[kFusionSums];
#pragma unroll
      for (int q = 0; q < kFusionSums; ++q) s[q] = A(0);
      for (int64_t chunk = 0; chunk < chunks; ++chunk) {
        const A* slot = partials + (((chunk * B + b) * G + g) * kFusionSums) * hw + pix;
#pragma unroll
        for (int q = 0; q < kFusionSums; ++q) s[q] += slot[q * hw];
      }
      const int64_t idx = (b * 2 * G + 2 * g) * hw + pix;
      grad_flow_high[idx] = from_acc<T>(gh.scale * slope.dix_ddx * s[kHighDx]);
      grad_flow_high[idx + hw] = from_acc<T>(gh.scale * slope.diy_ddy * s[kHighDy]);
      grad_flow_low[idx] = from_acc<T>(gl.scale * slope.dix_ddx * s[kLowDx]);
      grad_flow_low[idx + hw] = from_acc<T>(gl.scale * slope.diy_ddy * s[kLowDy]);
      value_high += s[kHighValue];
      value_low += s[kLowValue];
    }
    grad_gate_high[i] = from_acc<T>(gh.dscale * value_high);
    grad_gate_low[i] = from_acc<T>(gl.dscale * value_low);
  }
}

// item = (b, g, y, x): the plane pixel (row-major index) and gated weight of each of its taps.
template <typename T, int kTaps>
__global__ void __launch_bounds__(kThreads, (tap_keys_min_blocks<T, kTaps>()))
    tap_keys_kernel(Inputs<T> p, int64_t* __restrict__ keys,
                    acc_t<T>* __restrict__ weights, GatedFusionArgs a) {
  using A = acc_t<T>;
  const int64_t H = a.high.h, W = a.high.w, hw = H * W;
  const Strided4& plane = kTaps == 16 ? a.low : a.high;
  const int64_t sentinel = plane.h * plane.w;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < a.high.n * a.groups * hw;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = i % W, y = (i / W) % H, g = (i / hw) % a.groups, b = i / (hw * a.groups);
    int64_t offset[kTaps];
    A weight[kTaps];
    if constexpr (kTaps == 16) {
      const auto t = low_taps(p, a, b, g, y, x, plane.w, int64_t(1));
      const A scale = gate_at(p.gate_low, a.gate_low, b, y, x).scale;
#pragma unroll
      for (int k = 0; k < 16; ++k) { offset[k] = t.offset[k]; weight[k] = scale * t.weight[k]; }
    } else {
      const auto t = high_taps(p, a, b, g, y, x, plane.w, int64_t(1));
      const A scale = gate_at(p.gate_high, a.gate_high, b, y, x).scale;
#pragma unroll
      for (int k = 0; k < 4; ++k) { offset[k] = t.offset[k]; weight[k] = scale * t.weight[k]; }
    }
#pragma unroll
    for (int k = 0; k < kTaps; ++k) {
      keys[kTaps * i + k] = weight[k] != A(0) ? offset[k] : sentinel;
      weights[kTaps * i + k] = weight[k];
    }
  }
}

// item = (b, c, plane pixel q), or (b, q, c) with c fastest when `channel_fastest` (channels_last
// grad_out and gradient); its entries are order[bg][run_start[q] .. run_start[q + 1]).
template <typename T>
__global__ void __launch_bounds__(kThreads, sizeof(T) == 2 ? 5 : 4)
    gather_grad_kernel(const T* __restrict__ grad_out, Strided4 gs, int taps,
                       const int64_t* __restrict__ order,
                       const int64_t* __restrict__ run_start,
                       const acc_t<T>* __restrict__ weights, T* __restrict__ grad,
                       Strided4 ps, GatedFusionArgs a, bool channel_fastest) {
  using A = acc_t<T>;
  const int64_t cg = ps.c / a.groups, W = a.high.w;
  const int64_t plane_hw = ps.h * ps.w, entries = a.high.h * W * taps;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < ps.n * ps.c * plane_hw;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t inner = channel_fastest ? ps.c : plane_hw;
    const int64_t q = channel_fastest ? (i / inner) % plane_hw : i % inner;
    const int64_t c = channel_fastest ? i % inner : (i / inner) % ps.c;
    const int64_t b = i / (plane_hw * ps.c);
    const int64_t bg = b * a.groups + c / cg;
    const int64_t* row_order = order + bg * entries;
    const A* row_weights = weights + bg * entries;
    const int64_t* runs = run_start + bg * (plane_hw + 1);
    const T* go = grad_out + b * gs.sn + c * gs.sc;
    A acc = A(0);
    for (int64_t e = runs[q]; e < runs[q + 1]; ++e) {
      const int64_t entry = row_order[e], pix = entry / taps;
      acc += row_weights[entry] * to_acc(go[(pix / W) * gs.sh + (pix % W) * gs.sw]);
    }
    grad[b * ps.sn + c * ps.sc + (q / ps.w) * ps.sh + (q % ps.w) * ps.sw] = from_acc<T>(acc);
  }
}

}  // namespace

cudaError_t launch_gated_flow_fusion_forward(const GatedFusionInputs& in, void* out, Strided4 os,
                                             const GatedFusionArgs& a, cudaStream_t stream) {
  const int64_t cg = a.high.c / a.groups;
  const bool channels_last = a.high.sc == 1 && a.low.sc == 1 && os.sc == 1 && a.high.c > 1;
  const int lanes = channels_last ? team_lanes(cg) : 0;
  const int64_t chunks = channels_last ? 1 : (cg + kChannelsPerThread - 1) / kChannelsPerThread;
  const int64_t total = a.high.n * a.groups * chunks * a.high.h * a.high.w * (lanes ? lanes : 1);
  RTSEG_DISPATCH_DTYPE(a.dtype, T, {
    forward_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(
        Inputs<T>(in), static_cast<T*>(out), os, a, lanes);
  });
  return cudaGetLastError();
}

cudaError_t launch_gated_flow_fusion_backward(const void* grad_out, Strided4 gs,
                                              const GatedFusionInputs& in, void* partials,
                                              void* grad_high_acc, void* grad_low_acc,
                                              void* grad_flow_high, void* grad_flow_low,
                                              void* grad_gate_high, void* grad_gate_low,
                                              const GatedFusionArgs& a, cudaStream_t stream) {
  const int64_t chunks = gated_flow_fusion_backward_chunks(a);
  const int64_t hw = a.high.h * a.high.w;
  const int64_t per_chunk = (a.high.c / a.groups + chunks - 1) / chunks;
  const bool channels_last = a.high.sc == 1 && a.low.sc == 1 && gs.sc == 1 && a.high.c > 1;
  const int lanes = channels_last ? team_lanes(per_chunk) : 0;
  const int64_t total = a.high.n * a.groups * chunks * hw * (lanes ? lanes : 1);
  const bool scatter = grad_high_acc != nullptr && grad_low_acc != nullptr;
  RTSEG_DISPATCH_DTYPE(a.dtype, T, {
    using A = acc_t<T>;
    const Inputs<T> p(in);
    const auto* go = static_cast<const T*>(grad_out);
    auto* sums = static_cast<A*>(partials);
    if (scatter) {
      backward_kernel<T, true><<<blocks_for(total), kThreads, 0, stream>>>(
          go, gs, p, sums, chunks, static_cast<A*>(grad_high_acc), static_cast<A*>(grad_low_acc),
          a, lanes);
    } else {
      backward_kernel<T, false><<<blocks_for(total), kThreads, 0, stream>>>(
          go, gs, p, sums, chunks, nullptr, nullptr, a, lanes);
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    finalize_kernel<T><<<blocks_for(a.high.n * hw), kThreads, 0, stream>>>(
        p, sums, chunks, static_cast<T*>(grad_flow_high), static_cast<T*>(grad_flow_low),
        static_cast<T*>(grad_gate_high), static_cast<T*>(grad_gate_low), a);
  });
  return cudaGetLastError();
}

cudaError_t launch_gated_flow_fusion_tap_keys(const GatedFusionInputs& in, bool low_plane,
                                              int64_t* keys, void* weights,
                                              const GatedFusionArgs& a, cudaStream_t stream) {
  const int64_t total = a.high.n * a.groups * a.high.h * a.high.w;
  RTSEG_DISPATCH_DTYPE(a.dtype, T, {
    auto* w = static_cast<acc_t<T>*>(weights);
    if (low_plane) {
      tap_keys_kernel<T, 16><<<blocks_for(total), kThreads, 0, stream>>>(Inputs<T>(in), keys, w,
                                                                          a);
    } else {
      tap_keys_kernel<T, 4><<<blocks_for(total), kThreads, 0, stream>>>(Inputs<T>(in), keys, w,
                                                                         a);
    }
  });
  return cudaGetLastError();
}

cudaError_t launch_gated_flow_fusion_gather_grad(const void* grad_out, Strided4 gs,
                                                 bool low_plane, const int64_t* order,
                                                 const int64_t* run_start, const void* weights,
                                                 void* grad_plane, Strided4 ps,
                                                 const GatedFusionArgs& a,
                                                 cudaStream_t stream) {
  const int64_t total = ps.n * ps.c * ps.h * ps.w;
  RTSEG_DISPATCH_DTYPE(a.dtype, T, {
    gather_grad_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(
        static_cast<const T*>(grad_out), gs, gated_flow_fusion_taps(low_plane), order, run_start,
        static_cast<const acc_t<T>*>(weights), static_cast<T*>(grad_plane), ps, a,
        ps.sc == 1 && gs.sc == 1 && ps.c > 1);
  });
  return cudaGetLastError();
}

}  // namespace rtseg
