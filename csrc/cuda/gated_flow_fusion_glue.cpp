// Torch glue of the gated_flow_fusion CUDA kernels: argument checks, device guard, stream,
// allocation, and the deterministic backward's sort.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cuda/gated_flow_fusion.cuh"
#include "cuda/glue_utils.h"
#include "gated_flow_fusion.h"

namespace rtseg {
namespace {

GatedFusionArgs make_args(const at::Tensor& high, const at::Tensor& low,
                          const at::Tensor& flow_high, const at::Tensor& flow_low,
                          const at::Tensor& gate_high, const at::Tensor& gate_low,
                          int64_t groups) {
  return {strided4(high),      strided4(low),      strided4(flow_high), strided4(flow_low),
          strided4(gate_high), strided4(gate_low), groups,              to_dtype(high, "high")};
}

GatedFusionInputs make_inputs(const at::Tensor& high, const at::Tensor& low,
                              const at::Tensor& flow_high, const at::Tensor& flow_low,
                              const at::Tensor& gate_high, const at::Tensor& gate_low) {
  return {high.const_data_ptr(),      low.const_data_ptr(),      flow_high.const_data_ptr(),
          flow_low.const_data_ptr(), gate_high.const_data_ptr(), gate_low.const_data_ptr()};
}

at::Tensor gated_flow_fusion_cuda(const at::Tensor& high, const at::Tensor& low,
                                  const at::Tensor& flow_high, const at::Tensor& flow_low,
                                  const at::Tensor& gate_high, const at::Tensor& gate_low,
                                  int64_t groups) {
  check_gated_flow_fusion_args(high, low, flow_high, flow_low, gate_high, gate_low, groups);
  const c10::cuda::CUDAGuard guard(high.device());
  auto out = at::empty(high.sizes(), high.options().memory_format(output_format(high)));
  if (out.numel() == 0) return out;
  check_launch(launch_gated_flow_fusion_forward(
                   make_inputs(high, low, flow_high, flow_low, gate_high, gate_low),
                   out.mutable_data_ptr(), strided4(out),
                   make_args(high, low, flow_high, flow_low, gate_high, gate_low, groups),
                   current_stream()),
               "gated_flow_fusion");
  return out;
}

// Deterministic gradient of high (low_plane false) or low: every tap entry keyed by the plane
// pixel it reads, sorted stably, and each gradient element summed over its run in that order.
at::Tensor gather_plane_grad(const at::Tensor& grad_output, const at::Tensor& plane,
                             bool low_plane, const GatedFusionInputs& in,
                             const GatedFusionArgs& args, cudaStream_t stream) {
  const int64_t rows = args.high.n * args.groups;
  const int64_t plane_hw = plane.size(2) * plane.size(3);
  const int64_t entries = args.high.h * args.high.w * gated_flow_fusion_taps(low_plane);
  auto keys = at::empty({rows, entries}, plane.options().dtype(at::kLong));
  auto weights = at::empty({rows, entries}, plane.options().dtype(accumulation_type(plane)));
  check_launch(launch_gated_flow_fusion_tap_keys(in, low_plane, keys.mutable_data_ptr<int64_t>(),
                                                 weights.mutable_data_ptr(), args, stream),
               "gated_flow_fusion_backward");
  const SortedRuns runs = sort_into_runs(keys, plane_hw);
  auto grad = at::empty_like(plane);
  check_launch(launch_gated_flow_fusion_gather_grad(
                   grad_output.const_data_ptr(), strided4(grad_output), low_plane,
                   runs.order.const_data_ptr<int64_t>(), runs.run_start.const_data_ptr<int64_t>(),
                   weights.const_data_ptr(), grad.mutable_data_ptr(), strided4(grad), args,
                   stream),
               "gated_flow_fusion_backward");
  return grad;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gated_flow_fusion_backward_cuda(const at::Tensor& grad_output, const at::Tensor& high_arg,
                                const at::Tensor& low_arg, const at::Tensor& flow_high,
                                const at::Tensor& flow_low, const at::Tensor& gate_high,
                                const at::Tensor& gate_low, int64_t groups) {
  check_gated_flow_fusion_args(high_arg, low_arg, flow_high, flow_low, gate_high, gate_low,
                               groups);
  check_gated_flow_fusion_grad(grad_output, high_arg);
  const c10::cuda::CUDAGuard guard(high_arg.device());
  // The input gradients below share these tensors' strides.
  const at::Tensor high = dense(high_arg), low = dense(low_arg);
  auto grad_flow_high = at::empty(flow_high.sizes(), flow_high.options());
  auto grad_flow_low = at::empty(flow_low.sizes(), flow_low.options());
  auto grad_gate_high = at::empty(gate_high.sizes(), gate_high.options());
  auto grad_gate_low = at::empty(gate_low.sizes(), gate_low.options());
  if (grad_output.numel() == 0) {
    return {at::zeros_like(high),  at::zeros_like(low),    grad_flow_high.zero_(),
            grad_flow_low.zero_(), grad_gate_high.zero_(), grad_gate_low.zero_()};
  }
  const cudaStream_t stream = current_stream();
  const GatedFusionArgs args = make_args(high, low, flow_high, flow_low, gate_high, gate_low,
                                         groups);
  const GatedFusionInputs in = make_inputs(high, low, flow_high, flow_low, gate_high, gate_low);
  const auto acc = accumulation_type(high);
  auto partials = at::empty({gated_flow_fusion_backward_chunks(args), high.size(0), groups,
                             kFusionSums, high.size(2), high.size(3)},
                            high.options().dtype(acc));
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  at::Tensor grad_high_acc, grad_low_acc;
  if (!deterministic) {
    grad_high_acc = at::zeros_like(high, high.options().dtype(acc));
    grad_low_acc = at::zeros_like(low, low.options().dtype(acc));
  }
  check_launch(launch_gated_flow_fusion_backward(
                   grad_output.const_data_ptr(), strided4(grad_output), in,
                   partials.mutable_data_ptr(),
                   deterministic ? nullptr : grad_high_acc.mutable_data_ptr(),
                   deterministic ? nullptr : grad_low_acc.mutable_data_ptr(),
                   grad_flow_high.mutable_data_ptr(), grad_flow_low.mutable_data_ptr(),
                   grad_gate_high.mutable_data_ptr(), grad_gate_low.mutable_data_ptr(), args,
                   stream),
               "gated_flow_fusion_backward");
  at::Tensor grad_high, grad_low;
  if (deterministic) {
    grad_high = gather_plane_grad(grad_output, high, /*low_plane=*/false, in, args, stream);
    grad_low = gather_plane_grad(grad_output, low, /*low_plane=*/true, in, args, stream);
  } else {
    grad_high = grad_high_acc.to(high.scalar_type());
    grad_low = grad_low_acc.to(low.scalar_type());
  }
  return {grad_high, grad_low, grad_flow_high, grad_flow_low, grad_gate_high, grad_gate_low};
}

}  // namespace

RTSEG_CUDA_IMPL(m) {
  m.impl("gated_flow_fusion", &gated_flow_fusion_cuda);
  m.impl("gated_flow_fusion_backward", &gated_flow_fusion_backward_cuda);
}

}  // namespace rtseg
