#pragma once
// Argument checks of grouped_flow_warp shared by the CPU kernel and the CUDA glue. The Python
// wrapper checks the same things with friendlier messages; these guard direct torch.ops calls.
#include "torch_utils.h"

namespace rtseg {

inline void check_grouped_flow_warp_args(const at::Tensor& input, const at::Tensor& flow,
                                         int64_t groups) {
  check_dim(input, 4, "input");
  check_dim(flow, 4, "flow");
  check_same(flow, input, "flow", "input");
  TORCH_CHECK(groups >= 1, "groups: expected a positive integer, got ", groups);
  TORCH_CHECK(input.size(1) % groups == 0, "input: channel count ", input.size(1),
              " is not divisible by groups=", groups);
  TORCH_CHECK(flow.size(0) == input.size(0), "flow: expected batch ", input.size(0),
              " (that of input), got ", flow.size(0));
  TORCH_CHECK(flow.size(1) == 2 * groups, "flow: expected 2*groups = ", 2 * groups,
              " channels, got ", flow.size(1));
  TORCH_CHECK(input.size(2) > 0 && input.size(3) > 0,
              "input: expected a non-empty spatial size, got ", input.sizes());
}

inline void check_grouped_flow_warp_grad(const at::Tensor& grad_output, const at::Tensor& input,
                                         const at::Tensor& flow) {
  check_dim(grad_output, 4, "grad_output");
  check_same(grad_output, input, "grad_output", "input");
  TORCH_CHECK(grad_output.size(0) == input.size(0) && grad_output.size(1) == input.size(1) &&
                  grad_output.size(2) == flow.size(2) && grad_output.size(3) == flow.size(3),
              "grad_output: expected shape [", input.size(0), ", ", input.size(1), ", ",
              flow.size(2), ", ", flow.size(3), "], got ", grad_output.sizes());
}

}  // namespace rtseg
