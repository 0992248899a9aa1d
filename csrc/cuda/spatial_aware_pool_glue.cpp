// Torch glue of the spatial_aware_pool CUDA kernels: argument checks, device guard, stream,
// allocation of the outputs and of the coarse levels' cell (gradient) buffer.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "cuda/glue_utils.h"
#include "cuda/spatial_aware_pool.cuh"
#include "spatial_aware_pool.h"

namespace rtseg {
namespace {

std::vector<at::Tensor> spatial_aware_pool_cuda(const at::Tensor& x, int64_t levels,
                                                bool count_include_pad) {
  check_spatial_aware_pool_args(x, levels);
  const DType dtype = to_dtype(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  std::vector<at::Tensor> outs;
  SapOutputs out_levels{};
  for (int64_t j = 1; j <= levels; ++j) {
    outs.push_back(at::empty(spatial_aware_pool_shape(x, j),
                             x.options().memory_format(output_format(x))));
    out_levels.data[j - 1] = outs.back().mutable_data_ptr();
    out_levels.shape[j - 1] = strided4(outs.back());
  }
  if (x.numel() == 0) return outs;
  const int64_t cells = sap_workspace_cells(x.size(0) * x.size(1), x.size(2), x.size(3), levels);
  auto workspace = at::empty({4 * cells}, x.options().dtype(accumulation_type(x)));
  check_launch(launch_spatial_aware_pool_forward(x.const_data_ptr(), strided4(x), out_levels,
                                                 static_cast<int>(levels), count_include_pad,
                                                 workspace.mutable_data_ptr(), dtype,
                                                 current_stream()),
               "spatial_aware_pool");
  return outs;
}

at::Tensor spatial_aware_pool_backward_cuda(at::TensorList grad_outputs, const at::Tensor& x,
                                            int64_t levels, bool count_include_pad) {
  check_spatial_aware_pool_args(x, levels);
  check_spatial_aware_pool_grads(grad_outputs, x, levels);
  const DType dtype = to_dtype(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  auto grad_x = at::empty(x.sizes(), x.options().memory_format(output_format(x)));
  if (x.numel() == 0) return grad_x;
  SapGrads grads{};
  for (int64_t j = 0; j < levels; ++j) {
    grads.data[j] = grad_outputs[j].const_data_ptr();
    grads.shape[j] = strided4(grad_outputs[j]);
  }
  auto workspace = at::empty({4 * sap_workspace_cells(x.size(0) * x.size(1), x.size(2),
                                                      x.size(3), levels)},
                             x.options().dtype(accumulation_type(x)));
  // Gathers in a fixed order: deterministic whatever deterministicAlgorithms() says.
  check_launch(launch_spatial_aware_pool_backward(grads, grad_x.mutable_data_ptr(),
                                                  strided4(grad_x), static_cast<int>(levels),
                                                  count_include_pad,
                                                  workspace.mutable_data_ptr(), dtype,
                                                  current_stream()),
               "spatial_aware_pool_backward");
  return grad_x;
}

}  // namespace

RTSEG_CUDA_IMPL(m) {
  m.impl("spatial_aware_pool", &spatial_aware_pool_cuda);
  m.impl("spatial_aware_pool_backward", &spatial_aware_pool_backward_cuda);
}

}  // namespace rtseg
