#pragma once
// Argument checks of pixel_context_attention shared by the CPU kernel and any C++ glue. The
// Python wrapper checks the same things with friendlier messages; these guard direct
// torch.ops calls.
#include "torch_utils.h"

namespace rtseg {

inline void check_pixel_context_attention_args(const at::Tensor& query, const at::Tensor& key,
                                               const at::Tensor& value) {
  check_dim(query, 4, "query");
  check_dim(key, 3, "key");
  check_dim(value, 3, "value");
  check_same(key, query, "key", "query");
  check_same(value, query, "value", "query");
  TORCH_CHECK(key.size(0) == query.size(0), "key: expected batch ", query.size(0),
              " (that of query), got ", key.size(0));
  TORCH_CHECK(value.size(0) == query.size(0), "value: expected batch ", query.size(0),
              " (that of query), got ", value.size(0));
  TORCH_CHECK(key.size(1) == query.size(1), "key: expected ", query.size(1),
              " channels (Ck of query), got ", key.size(1));
  TORCH_CHECK(key.size(2) >= 1, "key: expected at least one context vector (M >= 1), got ",
              key.sizes());
  TORCH_CHECK(value.size(2) == key.size(2), "value: expected M = ", key.size(2),
              " context vectors (that of key), got ", value.size(2));
}

inline void check_pixel_context_attention_grad(const at::Tensor& grad_output,
                                               const at::Tensor& lse, const at::Tensor& query,
                                               const at::Tensor& value) {
  const auto B = query.size(0), H = query.size(2), W = query.size(3);
  check_dim(grad_output, 4, "grad_output");
  check_same(grad_output, query, "grad_output", "query");
  TORCH_CHECK(grad_output.size(0) == B && grad_output.size(1) == value.size(1) &&
                  grad_output.size(2) == H && grad_output.size(3) == W,
              "grad_output: expected shape [", B, ", ", value.size(1), ", ", H, ", ", W,
              "], got ", grad_output.sizes());
  check_dim(lse, 2, "lse");
  TORCH_CHECK(lse.size(0) == B && lse.size(1) == H * W, "lse: expected shape [", B, ", ", H * W,
              "], got ", lse.sizes());
  TORCH_CHECK(lse.device() == query.device() && lse.scalar_type() == accumulation_type(query),
              "lse: expected ", accumulation_type(query), " on ", query.device(), ", got ",
              lse.scalar_type(), " on ", lse.device());
}

}  // namespace rtseg
