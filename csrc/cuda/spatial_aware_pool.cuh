#pragma once
// CUDA launchers of spatial_aware_pool (kernels in spatial_aware_pool.cu; torch glue in
// spatial_aware_pool_glue.cpp).
#include <cuda_runtime.h>

#include "common/core.h"
#include "common/spatial_aware_pool.h"

namespace rtseg {

// One tensor per level: level j's data pointer and sizes/strides at index j - 1.
template <typename Pointer> struct SapLevels {
  Pointer data[kSapMaxLevels];
  Strided4 shape[kSapMaxLevels];
};
using SapOutputs = SapLevels<void*>;
using SapGrads = SapLevels<const void*>;

// Cells (forward) or cell gradients (backward) of levels 3..levels kept in a scratch buffer of
// the accumulation type (float32, or float64 for float64 input): 4 * this many elements.
inline int64_t sap_workspace_cells(int64_t planes, int64_t h, int64_t w, int64_t levels) {
  int64_t cells = 0;
  for (int64_t j = 3; j <= levels; ++j)
    cells += planes * sap_out_size(h, int64_t(1) << j) * sap_out_size(w, int64_t(1) << j);
  return cells;
}

// Forward: reads x once (plus a 4-pixel halo per tile) and writes every level's output.
cudaError_t launch_spatial_aware_pool_forward(const void* x, Strided4 xs, SapOutputs outs,
                                              int levels, bool count_include_pad,
                                              void* workspace, DType dtype, cudaStream_t stream);

// Backward: the adjoint of the forward's cell pyramid, as gathers only (deterministic, no
// atomics); `workspace` is sized as the forward's and holds levels 3.. cell gradients.
cudaError_t launch_spatial_aware_pool_backward(SapGrads grads, void* grad_x, Strided4 gxs,
                                               int levels, bool count_include_pad,
                                               void* workspace, DType dtype,
                                               cudaStream_t stream);

}  // namespace rtseg
