// Torch glue of the grouped_flow_warp CUDA kernels: argument checks, device guard, stream,
// allocation, and the deterministic backward's sort.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cuda/glue_utils.h"
#include "cuda/grouped_flow_warp.cuh"
#include "grouped_flow_warp.h"

namespace rtseg {
namespace {

FlowWarpArgs make_args(const at::Tensor& input, const at::Tensor& flow, int64_t groups,
                       c10::string_view padding_mode, bool align_corners) {
  return {strided4(input), strided4(flow), groups, parse_padding(std::string(padding_mode)),
          align_corners, to_dtype(input, "input")};
}

at::Tensor grouped_flow_warp_cuda(const at::Tensor& input, const at::Tensor& flow,
                                  int64_t groups, c10::string_view padding_mode,
                                  bool align_corners) {
  check_grouped_flow_warp_args(input, flow, groups);
  const c10::cuda::CUDAGuard guard(input.device());
  const FlowWarpArgs args = make_args(input, flow, groups, padding_mode, align_corners);
  auto out = at::empty({input.size(0), input.size(1), flow.size(2), flow.size(3)},
                       input.options().memory_format(output_format(input)));
  if (out.numel() == 0) return out;
  check_launch(launch_grouped_flow_warp_forward(input.const_data_ptr(), flow.const_data_ptr(),
                                                out.mutable_data_ptr(), strided4(out), args,
                                                current_stream()),
               "grouped_flow_warp");
  return out;
}

std::tuple<at::Tensor, at::Tensor> grouped_flow_warp_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input_arg, const at::Tensor& flow,
    int64_t groups, c10::string_view padding_mode, bool align_corners) {
  check_grouped_flow_warp_args(input_arg, flow, groups);
  check_grouped_flow_warp_grad(grad_output, input_arg, flow);
  const c10::cuda::CUDAGuard guard(input_arg.device());
  const at::Tensor input = dense(input_arg);  // gradient buffers below share its strides
  const FlowWarpArgs args = make_args(input, flow, groups, padding_mode, align_corners);
  auto grad_flow = at::empty(flow.sizes(), flow.options());
  if (grad_output.numel() == 0) return {at::zeros_like(input), grad_flow.zero_()};
  const cudaStream_t stream = current_stream();
  const auto acc = accumulation_type(input);

  if (!at::globalContext().deterministicAlgorithms()) {
    auto grad_acc = at::zeros_like(input, input.options().dtype(acc));
    check_launch(launch_grouped_flow_warp_backward(
                     grad_output.const_data_ptr(), strided4(grad_output), input.const_data_ptr(),
                     flow.const_data_ptr(), grad_flow.mutable_data_ptr(),
                     grad_acc.mutable_data_ptr(), args, stream),
                 "grouped_flow_warp_backward");
    return {grad_acc.to(input.scalar_type()), grad_flow};
  }

  // Deterministic: flow gradient without the scatter, then the input gradient gathered from
  // the corner entries sorted by the input pixel they read.
  check_launch(launch_grouped_flow_warp_backward(
                   grad_output.const_data_ptr(), strided4(grad_output), input.const_data_ptr(),
                   flow.const_data_ptr(), grad_flow.mutable_data_ptr(), nullptr, args, stream),
               "grouped_flow_warp_backward");
  const int64_t rows = input.size(0) * groups, in_hw = input.size(2) * input.size(3);
  auto keys = at::empty({rows, flow.size(2) * flow.size(3) * 4}, input.options().dtype(at::kLong));
  auto weights = at::empty(keys.sizes(), input.options().dtype(acc));
  check_launch(launch_grouped_flow_warp_corner_keys(flow.const_data_ptr(),
                                                    keys.mutable_data_ptr<int64_t>(),
                                                    weights.mutable_data_ptr(), args, stream),
               "grouped_flow_warp_backward");
  const SortedRuns runs = sort_into_runs(keys, in_hw);
  auto grad_input = at::empty_like(input);
  check_launch(launch_grouped_flow_warp_gather_grad_input(
                   grad_output.const_data_ptr(), strided4(grad_output),
                   runs.order.const_data_ptr<int64_t>(), runs.run_start.const_data_ptr<int64_t>(),
                   weights.const_data_ptr(), grad_input.mutable_data_ptr(), args, stream),
               "grouped_flow_warp_backward");
  return {grad_input, grad_flow};
}

}  // namespace

RTSEG_CUDA_IMPL(m) {
  m.impl("grouped_flow_warp", &grouped_flow_warp_cuda);
  m.impl("grouped_flow_warp_backward", &grouped_flow_warp_backward_cuda);
}

}  // namespace rtseg
