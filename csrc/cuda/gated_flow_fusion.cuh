#pragma once
// Launchers of the gated_flow_fusion CUDA kernels: raw pointers, sizes/strides and a stream, so
// this header and its .cu need no torch. Each returns the launch's cudaError_t.
#include <cuda_runtime.h>

#include "common/core.h"
#include "common/gated_flow_fusion.h"

namespace rtseg {

struct GatedFusionArgs {
  // Sizes and strides of the six inputs; high's and low's are also those of their gradient
  // buffers.
  Strided4 high, low, flow_high, flow_low, gate_high, gate_low;
  int64_t groups;
  DType dtype;  // of every input, the output and grad_output
};

struct GatedFusionInputs {
  const void *high, *low, *flow_high, *flow_low, *gate_high, *gate_low;
};

// Channel chunks per (batch, group, pixel) in the backward: enough threads to fill a large GPU,
// each walking as many channels as possible so that the per-pixel sums stay in registers.
inline int64_t gated_flow_fusion_backward_chunks(const GatedFusionArgs& a) {
  const int64_t target_threads = int64_t(1) << 18;
  const int64_t items = a.high.n * a.groups * a.high.h * a.high.w;
  const int64_t cg = a.high.c / a.groups;
  const int64_t chunks = items > 0 ? (target_threads + items - 1) / items : 1;
  return chunks < 1 ? 1 : (chunks > cg ? cg : chunks);
}

// out: (B, C, H, W) with strides `out_strides`.
cudaError_t launch_gated_flow_fusion_forward(const GatedFusionInputs& in, void* out,
                                             Strided4 out_strides, const GatedFusionArgs& args,
                                             cudaStream_t stream);

// partials: (chunks, B, G, kFusionSums, H, W) scratch of the accumulation type (float32, or
// float64 for float64 inputs) with chunks = gated_flow_fusion_backward_chunks(args).
// grad_flow_high/low: contiguous (B, 2G, H, W), grad_gate_high/low: contiguous (B, 1, H, W), all
// of `dtype`; they are computed without atomics. When grad_high_acc and grad_low_acc are not
// null they must be zero-filled accumulation buffers with high's and low's strides, and receive
// the input gradients through atomics (fast, not bitwise repeatable).
cudaError_t launch_gated_flow_fusion_backward(const void* grad_out, Strided4 grad_out_strides,
                                              const GatedFusionInputs& in, void* partials,
                                              void* grad_high_acc, void* grad_low_acc,
                                              void* grad_flow_high, void* grad_flow_low,
                                              void* grad_gate_high, void* grad_gate_low,
                                              const GatedFusionArgs& args, cudaStream_t stream);

// Deterministic input gradients in two steps around a stable sort done by the caller, for the
// high plane (4 taps per output pixel) or the low plane (16 taps):
// 1) for every (b*G + g, output pixel, tap) entry, the plane pixel it reads (y*w + x, or h*w
//    when the tap has zero weight) and its gated weight (accumulation type): keys/weights of
//    shape (B*G, H*W*taps);
// 2) after sorting each row of keys (stable, giving `order`) and locating each plane pixel's run
//    of entries (`run_start`, (B*G, h*w + 1)), every gradient element sums its run in sorted
//    order into grad_plane (strides `grad_plane_strides`, `dtype`): no atomics.
inline int gated_flow_fusion_taps(bool low_plane) { return low_plane ? 16 : 4; }
cudaError_t launch_gated_flow_fusion_tap_keys(const GatedFusionInputs& in, bool low_plane,
                                              int64_t* keys, void* weights,
                                              const GatedFusionArgs& args, cudaStream_t stream);
cudaError_t launch_gated_flow_fusion_gather_grad(const void* grad_out, Strided4 grad_out_strides,
                                                 bool low_plane, const int64_t* order,
                                                 const int64_t* run_start, const void* weights,
                                                 void* grad_plane, Strided4 grad_plane_strides,
                                                 const GatedFusionArgs& args,
                                                 cudaStream_t stream);

}  // namespace rtseg
