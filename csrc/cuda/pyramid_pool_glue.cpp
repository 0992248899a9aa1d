// Torch glue of the pyramid_pool CUDA kernels: argument checks, level geometry, device guard,
// stream and allocation.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cuda/glue_utils.h"
#include "cuda/pyramid_pool.cuh"
#include "pyramid_pool.h"

namespace rtseg {
namespace {

// The geometry's index maps, built on x's device from the plan (kernel arguments only): no
// host-to-device copy, so the op can be captured in a CUDA graph and replayed.
at::Tensor device_maps(const PyramidPlan& plan, const at::Tensor& x, cudaStream_t stream) {
  auto maps = at::empty({pyramid_pool_maps_size(plan)}, x.options().dtype(at::kInt));
  check_launch(launch_pyramid_pool_maps(maps.mutable_data_ptr<int32_t>(), plan, stream),
               "pyramid_pool");
  return maps;
}

at::Tensor pyramid_pool_cuda(const at::Tensor& x, at::IntArrayRef grids, bool keep_aspect_ratio,
                             bool cascade) {
  check_pyramid_pool_input(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto geo = pyramid_geometry(x.size(2), x.size(3), grids, keep_aspect_ratio, cascade);
  auto out = at::empty({x.size(0), x.size(1), geo.plan.out_total}, x.options());
  if (out.numel() == 0) return out;
  const cudaStream_t stream = current_stream();
  const at::Tensor maps = device_maps(geo.plan, x, stream);
  check_launch(launch_pyramid_pool_forward(x.const_data_ptr(), maps.const_data_ptr<int32_t>(),
                                           out.mutable_data_ptr(),
                                           {strided4(x), geo.plan, to_dtype(x, "x")}, stream),
               "pyramid_pool");
  return out;
}

at::Tensor pyramid_pool_backward_cuda(const at::Tensor& grad_output, const at::Tensor& x,
                                      at::IntArrayRef grids, bool keep_aspect_ratio,
                                      bool cascade) {
  check_pyramid_pool_input(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto geo = pyramid_geometry(x.size(2), x.size(3), grids, keep_aspect_ratio, cascade);
  check_pyramid_pool_grad(grad_output, x, geo.plan);
  auto grad_x = at::empty(x.sizes(), x.options().memory_format(output_format(x)));
  if (grad_x.numel() == 0) return grad_x;
  const cudaStream_t stream = current_stream();
  const at::Tensor maps = device_maps(geo.plan, x, stream);
  check_launch(launch_pyramid_pool_backward(
                   grad_output.const_data_ptr(), grad_output.stride(0), grad_output.stride(1),
                   grad_output.stride(2), maps.const_data_ptr<int32_t>(),
                   grad_x.mutable_data_ptr(), {strided4(grad_x), geo.plan, to_dtype(x, "x")},
                   stream),
               "pyramid_pool_backward");
  return grad_x;
}

}  // namespace

RTSEG_CUDA_IMPL(m) {
  m.impl("pyramid_pool", &pyramid_pool_cuda);
  m.impl("pyramid_pool_backward", &pyramid_pool_backward_cuda);
}

}  // namespace rtseg
