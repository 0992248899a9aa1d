// The Autograd kernel of pyramid_pool, for every backend (see scalar_weighted_sum.cpp for why in
// C++): at CSFCN's 1/32 map the Python Function cost ~0.2 ms per forward+backward, as much as the
// two kernels.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace rtseg {
namespace {

using Forward = at::Tensor(const at::Tensor&, at::IntArrayRef, bool, bool);
using Backward = at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, bool, bool);

class PyramidPoolFunction : public torch::autograd::Function<PyramidPoolFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            at::IntArrayRef grids, bool keep_aspect_ratio, bool cascade) {
    static const auto op = c10::Dispatcher::singleton()
        .findSchemaOrThrow("rtseg::pyramid_pool", "")
        .typed<Forward>();
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x});  // read for its shape, dtype and layout only
    ctx->saved_data["grids"] = grids;
    ctx->saved_data["keep_aspect_ratio"] = keep_aspect_ratio;
    ctx->saved_data["cascade"] = cascade;
    return op.call(x, grids, keep_aspect_ratio, cascade);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    static const auto op = c10::Dispatcher::singleton()
        .findSchemaOrThrow("rtseg::pyramid_pool_backward", "")
        .typed<Backward>();
    const auto grids = ctx->saved_data["grids"].toIntVector();
    return {op.call(grad_outputs[0], ctx->get_saved_variables()[0], grids,
                    ctx->saved_data["keep_aspect_ratio"].toBool(),
                    ctx->saved_data["cascade"].toBool()),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor pyramid_pool_autograd(const at::Tensor& x, at::IntArrayRef grids,
                                 bool keep_aspect_ratio, bool cascade) {
  return PyramidPoolFunction::apply(x, grids, keep_aspect_ratio, cascade);
}

}  // namespace

TORCH_LIBRARY_IMPL(rtseg, Autograd, m) {
  m.impl("pyramid_pool", &pyramid_pool_autograd);
}

}  // namespace rtseg
