#pragma once
// Torch-side helpers shared by the CPU kernels and the CUDA glue (never included by .cu files).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <cstdint>
#include <string>

#include "common/bilinear.h"
#include "common/core.h"

namespace rtseg {

inline Strided4 strided4(const at::Tensor& t) {
  return {t.size(0), t.size(1), t.size(2), t.size(3),
          t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// at::parallel_for grain for tasks of `work_per_task` element updates: each chunk gets at least
// `min_work`, so that small calls (gradcheck's, small maps) run inline instead of waking the
// thread pool, which costs milliseconds on a loaded machine.
inline int64_t grain_for(int64_t work_per_task, int64_t min_work = at::internal::GRAIN_SIZE) {
  return std::max<int64_t>(1, min_work / std::max<int64_t>(1, work_per_task));
}

// Accumulation buffers (scattered gradients, partial sums, log-sum-exp) are float32, or float64
// for float64 tensors.
inline at::ScalarType accumulation_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Element type for the CUDA launchers (which see no torch types).
inline DType to_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::Float32;
    case at::kDouble: return DType::Float64;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default:
      TORCH_CHECK(false, name, ": expected float32, float64, float16 or bfloat16, got ",
                  t.scalar_type());
  }
  return DType::Float32;
}

inline Padding parse_padding(const std::string& mode) {
  TORCH_CHECK(mode == "zeros" || mode == "border",
              "padding_mode: expected \"zeros\" or \"border\", got \"", mode, "\"");
  return mode == "zeros" ? Padding::Zeros : Padding::Border;
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK(t.dim() == dim, name, ": expected a ", dim, "-D tensor, got shape ", t.sizes());
}

inline void check_same(const at::Tensor& t, const at::Tensor& ref, const char* name,
                       const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), name, ": expected device ", ref.device(), " (that of ",
              ref_name, "), got ", t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, ": expected dtype ",
              ref.scalar_type(), " (that of ", ref_name, "), got ", t.scalar_type());
}

// Layout of outputs and gradient buffers: channels_last when the input is exactly that, else
// NCHW. rtseg_ops._checks.output_memory_format is the same rule for the fake kernels.
inline at::MemoryFormat output_format(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast)
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

// Non-dense tensors are copied once into output_format so that gradient buffers allocated with
// zeros_like share their strides.
inline at::Tensor dense(const at::Tensor& t) { return t.contiguous(output_format(t)); }

}  // namespace rtseg
