#pragma once
// Launchers of the grouped_flow_warp CUDA kernels: raw pointers, sizes/strides and a stream, so
// this header and its .cu need no torch. Each returns the launch's cudaError_t.
#include <cuda_runtime.h>

#include "common/bilinear.h"
#include "common/core.h"

namespace rtseg {

struct FlowWarpArgs {
  Strided4 in;    // input (B, C, h, w); also the strides of every input-shaped gradient buffer
  Strided4 flow;  // flow (B, 2G, H, W)
  int64_t groups;
  Padding padding;
  bool align_corners;
  DType dtype;    // of input, flow, output and grad_output
};

// out: (B, C, H, W) with strides `out_strides`.
cudaError_t launch_grouped_flow_warp_forward(const void* input, const void* flow, void* out,
                                             Strided4 out_strides, const FlowWarpArgs& args,
                                             cudaStream_t stream);

// grad_flow: contiguous (B, 2G, H, W) of `dtype`. When grad_input_acc is not null it must be a
// zero-filled accumulation buffer (float32, or float64 for float64 inputs) with the input's
// strides, and receives the input gradient through atomics (fast, not bitwise repeatable).
cudaError_t launch_grouped_flow_warp_backward(const void* grad_out, Strided4 grad_out_strides,
                                              const void* input, const void* flow,
                                              void* grad_flow, void* grad_input_acc,
                                              const FlowWarpArgs& args, cudaStream_t stream);

// Deterministic input gradient in two steps around a stable sort done by the caller:
// 1) for every (b*G + g, pixel, corner) entry, the input pixel it reads (y*w + x, or h*w when the
//    corner has zero weight) and its weight (accumulation type): keys/weights (B*G, H*W*4);
// 2) after sorting each row of keys (stable, giving `order`) and locating each input pixel's run
//    of entries (`run_start`, (B*G, h*w + 1)), each input gradient element sums its run in
//    sorted order: no atomics, the same result on every run.
cudaError_t launch_grouped_flow_warp_corner_keys(const void* flow, int64_t* keys, void* weights,
                                                 const FlowWarpArgs& args, cudaStream_t stream);
cudaError_t launch_grouped_flow_warp_gather_grad_input(
    const void* grad_out, Strided4 grad_out_strides, const int64_t* order,
    const int64_t* run_start, const void* weights, void* grad_input, const FlowWarpArgs& args,
    cudaStream_t stream);

}  // namespace rtseg
