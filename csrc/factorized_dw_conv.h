#pragma once
// Argument checks and parameter preparation of factorized_dw_conv shared by the CPU kernel and the
// CUDA glue. The Python wrapper checks the same things with friendlier messages; these guard
// direct torch.ops calls.
#include <optional>
#include <tuple>

#include "common/factorized_dw_conv.h"
#include "torch_utils.h"

namespace rtseg {

using OptTensor = std::optional<at::Tensor>;

inline void check_factorized_dw_param(const OptTensor& p, const at::Tensor& x, const char* name) {
  if (!p.has_value()) return;
  check_same(*p, x, name, "x");
  TORCH_CHECK(p->dim() == 1 && p->size(0) == x.size(1), name, ": expected shape [", x.size(1),
              "] (one value per channel of x), got ", p->sizes());
}

// Returns true for order "hv" (the kernels then run on H/W-transposed views).
inline bool check_factorized_dw_args(const at::Tensor& x, const at::Tensor& weight_v,
                                     const at::Tensor& weight_h, int64_t dilation,
                                     const OptTensor& scale_v, const OptTensor& shift_v,
                                     const OptTensor& prelu_v, const OptTensor& scale_h,
                                     const OptTensor& shift_h, const OptTensor& prelu_h,
                                     c10::string_view order) {
  check_dim(x, 4, "x");
  const int64_t C = x.size(1);
  check_same(weight_v, x, "weight_v", "x");
  check_same(weight_h, x, "weight_h", "x");
  TORCH_CHECK(weight_v.dim() == 4 && weight_v.size(0) == C && weight_v.size(1) == 1 &&
                  weight_v.size(2) == 3 && weight_v.size(3) == 1,
              "weight_v: expected shape [", C, ", 1, 3, 1], got ", weight_v.sizes());
  TORCH_CHECK(weight_h.dim() == 4 && weight_h.size(0) == C && weight_h.size(1) == 1 &&
                  weight_h.size(2) == 1 && weight_h.size(3) == 3,
              "weight_h: expected shape [", C, ", 1, 1, 3], got ", weight_h.sizes());
  TORCH_CHECK(dilation >= 1, "dilation: expected an integer >= 1, got ", dilation);
  TORCH_CHECK(order == "vh" || order == "hv", "order: expected \"vh\" or \"hv\", got \"",
              std::string(order), "\"");
  check_factorized_dw_param(scale_v, x, "scale_v");
  check_factorized_dw_param(shift_v, x, "shift_v");
  check_factorized_dw_param(prelu_v, x, "prelu_v");
  check_factorized_dw_param(scale_h, x, "scale_h");
  check_factorized_dw_param(shift_h, x, "shift_h");
  check_factorized_dw_param(prelu_h, x, "prelu_h");
  return order == "hv";
}

inline void check_factorized_dw_grad(const at::Tensor& grad_output, const at::Tensor& x) {
  check_dim(grad_output, 4, "grad_output");
  check_same(grad_output, x, "grad_output", "x");
  TORCH_CHECK(grad_output.sizes() == x.sizes(), "grad_output: expected shape ", x.sizes(),
              " (that of x), got ", grad_output.sizes());
}

// One stage's parameters made contiguous (they are tiny), kept alive for the kernel's pointers.
struct DWStageTensors {
  at::Tensor weight, scale, shift, prelu;

  DWStageTensors(const at::Tensor& w, const OptTensor& s, const OptTensor& b,
                 const OptTensor& a)
      : weight(w.contiguous()),
        scale(s.has_value() ? s->contiguous() : at::Tensor()),
        shift(b.has_value() ? b->contiguous() : at::Tensor()),
        prelu(a.has_value() ? a->contiguous() : at::Tensor()) {}

  DWStagePtrs ptrs() const {
    auto ptr = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; };
    return {weight.const_data_ptr(), ptr(scale), ptr(shift), ptr(prelu)};
  }
};

// Both stages' tensors, handed to the kernels in kernel order: (v, h), or (h, v) for order "hv".
struct DWStages {
  DWStageTensors v, h;
  bool hv;

  DWStagePtrs first() const { return hv ? h.ptrs() : v.ptrs(); }
  DWStagePtrs second() const { return hv ? v.ptrs() : h.ptrs(); }
};

// The kernels compute order "vh"; "hv" runs them on H/W-transposed views of every tensor.
inline Strided4 factorized_dw_view(const at::Tensor& t, bool hv) {
  return hv ? transpose_hw(strided4(t)) : strided4(t);
}

using FactorizedDWGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                     at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The backward's outputs from grad_x and the reduced (C, kDWGrads) parameter-gradient sums,
// whose stages are in kernel order (first, second): (grad_x, weight_v, weight_h, scale_v,
// shift_v, prelu_v, scale_h, shift_h, prelu_h).
inline FactorizedDWGrads factorized_dw_grads(const at::Tensor& grad_x, const at::Tensor& reduced,
                                             bool hv, const at::Tensor& weight_v,
                                             const at::Tensor& weight_h) {
  const auto dtype = grad_x.scalar_type();
  auto stage = [&](int index, const at::Tensor& weight) {
    const int64_t base = index * kDWGradsPerStage;
    // copy=true: outputs of an op must not alias each other (nor `reduced`)
    auto column = [&](int64_t k) {
      return reduced.select(1, base + k).to(dtype, false, true).contiguous();
    };
    auto grad_weight = reduced.slice(1, base + kDWGradWeight, base + kDWGradWeight + 3)
                           .to(dtype, false, true).contiguous().view(weight.sizes());
    return std::make_tuple(grad_weight, column(kDWGradScale), column(kDWGradShift),
                           column(kDWGradPrelu));
  };
  auto [gwv, gsv, gbv, gav] = stage(hv ? 1 : 0, weight_v);
  auto [gwh, gsh, gbh, gah] = stage(hv ? 0 : 1, weight_h);
  return {grad_x, gwv, gwh, gsv, gbv, gav, gsh, gbh, gah};
}

}  // namespace rtseg
