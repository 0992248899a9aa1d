#pragma once
// Launchers of the pyramid_pool CUDA kernels: raw pointers, sizes/strides, the level plan and a
// stream, so this header and its .cu need no torch. Each returns the launch's cudaError_t.
#include <cuda_runtime.h>

#include "common/core.h"
#include "common/pyramid_pool.h"

namespace rtseg {

struct PyramidPoolArgs {
  Strided4 x;        // input (B, C, H, W); also the strides of the input gradient
  PyramidPlan plan;  // levels and atoms (csrc/pyramid_pool.h: pyramid_geometry)
  DType dtype;       // of x, the output and grad_output
};

// `maps` (device, int32): the atom index of rows 0..H and columns 0..W, then the first row of
// each atom row and H, then the first column of each atom column and W; pyramid_pool_maps_size
// elements, filled on the device by launch_pyramid_pool_maps (from the plan alone, passed by
// value, so that a captured CUDA graph replays it correctly).
inline int64_t pyramid_pool_maps_size(const PyramidPlan& p) {
  return p.in_h + p.in_w + 2 + p.atoms_h + 1 + p.atoms_w + 1;
}
cudaError_t launch_pyramid_pool_maps(int32_t* maps, const PyramidPlan& plan,
                                     cudaStream_t stream);

// out: contiguous (B, C, M).
cudaError_t launch_pyramid_pool_forward(const void* x, const int32_t* maps, void* out,
                                        const PyramidPoolArgs& args, cudaStream_t stream);

// grad_output: (B, C, M) with strides (gs_n, gs_c, gs_m); grad_x has the strides of args.x.
cudaError_t launch_pyramid_pool_backward(const void* grad_output, int64_t gs_n, int64_t gs_c,
                                         int64_t gs_m, const int32_t* maps, void* grad_x,
                                         const PyramidPoolArgs& args, cudaStream_t stream);

}  // namespace rtseg
