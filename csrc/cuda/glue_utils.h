#pragma once
// Torch-side helpers of the CUDA glue files (built only against a CUDA build of torch, or for
// the CUDA simulator).
#include <ATen/ATen.h>
#include <cuda_runtime.h>

#if defined(RTSEG_SIM)
// tools/cuda_sim: the glue runs on CPU tensors and registers its kernels as rtseg_sim::<op>
// (CPU), which the tests route torch.ops.rtseg.<op> to; there is one device and one stream.
namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace c10::cuda
#define RTSEG_CUDA_IMPL(m) TORCH_LIBRARY_IMPL(rtseg_sim, CPU, m)
namespace rtseg {
inline cudaStream_t current_stream() { return nullptr; }
}  // namespace rtseg
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#define RTSEG_CUDA_IMPL(m) TORCH_LIBRARY_IMPL(rtseg, CUDA, m)
namespace rtseg {
inline cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream().stream(); }
}  // namespace rtseg
#endif

namespace rtseg {

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

// The deterministic backward of a scatter: `keys` (rows, entries) names the target each entry
// adds to (targets in [0, num_targets); num_targets marks an unused entry). Returns each row's
// entries stably sorted by target (`order`) and where each target's run of them starts
// (`run_start`, (rows, num_targets + 1)), so a gather kernel can sum every target's entries in a
// fixed order, without atomics.
struct SortedRuns {
  at::Tensor order, run_start;
};
inline SortedRuns sort_into_runs(const at::Tensor& keys, int64_t num_targets) {
  auto sorted = at::sort(keys, /*stable=*/true, /*dim=*/1, /*descending=*/false);
  const at::Tensor sorted_keys = std::get<0>(sorted).contiguous();
  const int64_t rows = keys.size(0);
  auto targets =
      at::arange(num_targets + 1, keys.options()).expand({rows, num_targets + 1}).contiguous();
  return {std::get<1>(sorted).contiguous(),
          at::searchsorted(sorted_keys, targets).contiguous()};
}

}  // namespace rtseg
