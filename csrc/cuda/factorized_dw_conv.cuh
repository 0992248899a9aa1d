#pragma once
// Launchers of the factorized_dw_conv CUDA kernels: raw pointers, sizes/strides and a stream, so
// this header and its .cu need no torch. Each returns the first failing CUDA call's error.
//
// The kernels compute order="vh" (vertical stage first). For order="hv" the caller passes every
// tensor as an H/W-transposed view (transpose_hw) and the horizontal stage as `first`.
#include <cuda_runtime.h>

#include "common/core.h"
#include "common/factorized_dw_conv.h"

namespace rtseg {

struct DWConvArgs {
  Strided4 x;           // input view (B, C, H, W)
  int64_t dilation;
  DWStagePtrs first;    // the stage convolving along the view's H
  DWStagePtrs second;   // the stage convolving along the view's W
  DType dtype;          // of x, the parameters, out, grad_output and grad_x
};

// out: same sizes as x, strides `out_view`.
cudaError_t launch_factorized_dw_conv_forward(const void* x, void* out, Strided4 out_view,
                                              const DWConvArgs& args, cudaStream_t stream);

// Elements (accumulation type: float32, float64 for float64) of the backward's per-tile
// parameter-gradient workspace.
int64_t factorized_dw_conv_backward_workspace(const DWConvArgs& args);

// grad_x: same sizes as x, strides `grad_x_view`. grad_u1: accumulation-type buffer of x's sizes
// with strides `grad_u1_view` (the gradient at the first conv's output, the one intermediate
// stored). workspace: factorized_dw_conv_backward_workspace(args) elements. reduced: contiguous
// (C, kDWGrads) accumulation-type output, in the layout of common/factorized_dw_conv.h.
// No atomics: the result is bitwise repeatable.
cudaError_t launch_factorized_dw_conv_backward(const void* grad_out, Strided4 grad_out_view,
                                               const void* x, void* grad_x, Strided4 grad_x_view,
                                               void* grad_u1, Strided4 grad_u1_view,
                                               void* workspace, void* reduced,
                                               const DWConvArgs& args, cudaStream_t stream);

}  // namespace rtseg
