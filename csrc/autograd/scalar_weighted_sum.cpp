// The Autograd kernel of scalar_weighted_sum, for every backend. Both steps dispatch to the
// backend's kernel (C++ on the CPU, Triton on CUDA) or to the fake kernels under torch.compile.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

namespace rtseg {
namespace {

using Forward = at::Tensor(at::TensorList, const at::Tensor&, bool, double,
                           std::optional<c10::string_view>);
using Backward = std::tuple<std::vector<at::Tensor>, at::Tensor>(
    const at::Tensor&, at::TensorList, const at::Tensor&, bool, double,
    std::optional<c10::string_view>);

// In C++ rather than torch.library.register_autograd: that Python Function (pytree of the tensor
// list, setup_context, the Python backward) cost ~100 us per forward+backward, more than the
// kernels at SGCPNet's small nodes.
class ScalarWeightedSumFunction : public torch::autograd::Function<ScalarWeightedSumFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::TensorList inputs,
                            const at::Tensor& weights, bool normalize, double eps,
                            std::optional<c10::string_view> activation) {
    static const auto op = c10::Dispatcher::singleton()
        .findSchemaOrThrow("rtseg::scalar_weighted_sum", "")
        .typed<Forward>();
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = op.call(inputs, weights, normalize, eps, activation);
    }
    std::vector<at::Tensor> saved(inputs.begin(), inputs.end());
    saved.push_back(weights);
    ctx->save_for_backward(saved);
    ctx->saved_data["normalize"] = normalize;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["swish"] = activation.has_value();
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    static const auto op = c10::Dispatcher::singleton()
        .findSchemaOrThrow("rtseg::scalar_weighted_sum_backward", "")
        .typed<Backward>();
    auto saved = ctx->get_saved_variables();
    const at::Tensor weights = saved.back();
    saved.pop_back();
    const std::optional<c10::string_view> activation =
        ctx->saved_data["swish"].toBool() ? std::optional<c10::string_view>("swish")
                                          : std::nullopt;
    auto [grads, grad_weights] =
        op.call(grad_outputs[0], saved, weights, ctx->saved_data["normalize"].toBool(),
                ctx->saved_data["eps"].toDouble(), activation);
    grads.push_back(grad_weights);
    grads.resize(grads.size() + 3);  // normalize, eps, activation
    return grads;
  }
};

at::Tensor scalar_weighted_sum_autograd(at::TensorList inputs, const at::Tensor& weights,
                                        bool normalize, double eps,
                                        std::optional<c10::string_view> activation) {
  return ScalarWeightedSumFunction::apply(inputs, weights, normalize, eps, activation);
}

}  // namespace

TORCH_LIBRARY_IMPL(rtseg, Autograd, m) {
  m.impl("scalar_weighted_sum", &scalar_weighted_sum_autograd);
}

}  // namespace rtseg
