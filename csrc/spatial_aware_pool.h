#pragma once
// Argument checks of spatial_aware_pool shared by the CPU kernel and the CUDA glue. The Python
// wrapper checks the same things with friendlier messages; these guard direct torch.ops calls.
#include <vector>

#include "common/spatial_aware_pool.h"
#include "torch_utils.h"

namespace rtseg {

inline void check_spatial_aware_pool_args(const at::Tensor& x, int64_t levels) {
  check_dim(x, 4, "x");
  TORCH_CHECK(levels >= 1 && levels <= kSapMaxLevels, "levels: expected an integer in [1, ",
              kSapMaxLevels, "], got ", levels);
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, "x: expected a non-empty spatial size, got ",
              x.sizes());
}

// Level j's output shape (j = 1..levels).
inline std::vector<int64_t> spatial_aware_pool_shape(const at::Tensor& x, int64_t level) {
  const int64_t s = int64_t(1) << level;
  return {x.size(0), x.size(1), sap_out_size(x.size(2), s), sap_out_size(x.size(3), s)};
}

inline void check_spatial_aware_pool_grads(at::TensorList grad_outputs, const at::Tensor& x,
                                           int64_t levels) {
  TORCH_CHECK(int64_t(grad_outputs.size()) == levels, "grad_outputs: expected ", levels,
              " tensors (one per level), got ", grad_outputs.size());
  for (int64_t j = 0; j < levels; ++j) {
    const at::Tensor& g = grad_outputs[j];
    check_dim(g, 4, "grad_outputs");
    check_same(g, x, "grad_outputs", "x");
    const auto shape = spatial_aware_pool_shape(x, j + 1);
    TORCH_CHECK(g.sizes() == at::IntArrayRef(shape), "grad_outputs[", j, "]: expected shape ",
                at::IntArrayRef(shape), ", got ", g.sizes());
  }
}

}  // namespace rtseg
