// Torch glue of the factorized_dw_conv CUDA kernels: argument checks, device guard, stream,
// allocation, and the order="hv" views.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cuda/factorized_dw_conv.cuh"
#include "cuda/glue_utils.h"
#include "factorized_dw_conv.h"

namespace rtseg {
namespace {

at::Tensor factorized_dw_conv_cuda(const at::Tensor& x, const at::Tensor& weight_v,
                                   const at::Tensor& weight_h, int64_t dilation,
                                   const OptTensor& scale_v, const OptTensor& shift_v,
                                   const OptTensor& prelu_v, const OptTensor& scale_h,
                                   const OptTensor& shift_h, const OptTensor& prelu_h,
                                   c10::string_view order) {
  const bool hv = check_factorized_dw_args(x, weight_v, weight_h, dilation, scale_v, shift_v,
                                           prelu_v, scale_h, shift_h, prelu_h, order);
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = at::empty(x.sizes(), x.options().memory_format(output_format(x)));
  if (out.numel() == 0) return out;
  const DWStages stages{{weight_v, scale_v, shift_v, prelu_v},
                        {weight_h, scale_h, shift_h, prelu_h}, hv};
  const DWConvArgs args{factorized_dw_view(x, hv), dilation, stages.first(),
                        stages.second(), to_dtype(x, "x")};
  check_launch(launch_factorized_dw_conv_forward(x.const_data_ptr(), out.mutable_data_ptr(),
                                                 factorized_dw_view(out, hv), args,
                                                 current_stream()),
               "factorized_dw_conv");
  return out;
}

FactorizedDWGrads factorized_dw_conv_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& weight_v,
    const at::Tensor& weight_h, int64_t dilation, const OptTensor& scale_v,
    const OptTensor& shift_v, const OptTensor& prelu_v, const OptTensor& scale_h,
    const OptTensor& shift_h, const OptTensor& prelu_h, c10::string_view order) {
  const bool hv = check_factorized_dw_args(x, weight_v, weight_h, dilation, scale_v, shift_v,
                                           prelu_v, scale_h, shift_h, prelu_h, order);
  check_factorized_dw_grad(grad_output, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto options = x.options().memory_format(output_format(x));
  const auto acc = accumulation_type(x);
  auto grad_x = at::empty(x.sizes(), options);
  auto reduced = at::zeros({x.size(1), kDWGrads}, x.options().dtype(acc));
  if (grad_x.numel() > 0) {
    const DWStages stages{{weight_v, scale_v, shift_v, prelu_v},
                          {weight_h, scale_h, shift_h, prelu_h}, hv};
    const DWConvArgs args{factorized_dw_view(x, hv), dilation, stages.first(),
                          stages.second(), to_dtype(x, "x")};
    auto grad_u1 = at::empty(x.sizes(), options.dtype(acc));
    auto workspace = at::empty({factorized_dw_conv_backward_workspace(args)},
                               x.options().dtype(acc));
    check_launch(launch_factorized_dw_conv_backward(
                     grad_output.const_data_ptr(), factorized_dw_view(grad_output, hv),
                     x.const_data_ptr(), grad_x.mutable_data_ptr(), factorized_dw_view(grad_x, hv),
                     grad_u1.mutable_data_ptr(), factorized_dw_view(grad_u1, hv),
                     workspace.mutable_data_ptr(), reduced.mutable_data_ptr(), args,
                     current_stream()),
                 "factorized_dw_conv_backward");
  }
  return factorized_dw_grads(grad_x, reduced, hv, weight_v, weight_h);
}

}  // namespace

RTSEG_CUDA_IMPL(m) {
  m.impl("factorized_dw_conv", &factorized_dw_conv_cuda);
  m.impl("factorized_dw_conv_backward", &factorized_dw_conv_backward_cuda);
}

}  // namespace rtseg
