#pragma once
// Argument checks of gated_flow_fusion shared by the CPU kernel and the CUDA glue. The Python
// wrapper checks the same things with friendlier messages; these guard direct torch.ops calls.
#include "torch_utils.h"

namespace rtseg {

inline void check_gated_flow_fusion_args(const at::Tensor& high, const at::Tensor& low,
                                         const at::Tensor& flow_high, const at::Tensor& flow_low,
                                         const at::Tensor& gate_high, const at::Tensor& gate_low,
                                         int64_t groups) {
  check_dim(high, 4, "high");
  check_dim(low, 4, "low");
  check_dim(flow_high, 4, "flow_high");
  check_dim(flow_low, 4, "flow_low");
  check_dim(gate_high, 4, "gate_high");
  check_dim(gate_low, 4, "gate_low");
  check_same(low, high, "low", "high");
  check_same(flow_high, high, "flow_high", "high");
  check_same(flow_low, high, "flow_low", "high");
  check_same(gate_high, high, "gate_high", "high");
  check_same(gate_low, high, "gate_low", "high");
  TORCH_CHECK(groups >= 1, "groups: expected a positive integer, got ", groups);
  const int64_t B = high.size(0), C = high.size(1), H = high.size(2), W = high.size(3);
  TORCH_CHECK(C % groups == 0, "high: channel count ", C, " is not divisible by groups=", groups);
  TORCH_CHECK(H > 0 && W > 0, "high: expected a non-empty spatial size, got ", high.sizes());
  TORCH_CHECK(low.size(0) == B && low.size(1) == C, "low: expected batch ", B, " and ", C,
              " channels (those of high), got ", low.sizes());
  TORCH_CHECK(low.size(2) > 0 && low.size(3) > 0,
              "low: expected a non-empty spatial size, got ", low.sizes());
  const std::vector<int64_t> flow_shape = {B, 2 * groups, H, W};
  TORCH_CHECK(flow_high.sizes() == flow_shape, "flow_high: expected shape ", flow_shape,
              " (B, 2*groups, H, W of high), got ", flow_high.sizes());
  TORCH_CHECK(flow_low.sizes() == flow_shape, "flow_low: expected shape ", flow_shape,
              " (B, 2*groups, H, W of high), got ", flow_low.sizes());
  const std::vector<int64_t> gate_shape = {B, 1, H, W};
  TORCH_CHECK(gate_high.sizes() == gate_shape, "gate_high: expected shape ", gate_shape,
              ", got ", gate_high.sizes());
  TORCH_CHECK(gate_low.sizes() == gate_shape, "gate_low: expected shape ", gate_shape, ", got ",
              gate_low.sizes());
}

inline void check_gated_flow_fusion_grad(const at::Tensor& grad_output, const at::Tensor& high) {
  check_dim(grad_output, 4, "grad_output");
  check_same(grad_output, high, "grad_output", "high");
  TORCH_CHECK(grad_output.sizes() == high.sizes(), "grad_output: expected shape ", high.sizes(),
              " (that of high), got ", grad_output.sizes());
}

}  // namespace rtseg
