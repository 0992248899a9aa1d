// Python module of the simulated kernels (the glue registers the ops as rtseg_sim::*): the
// simulator's controls, and the harness's planted-bug kernels (tests/cuda_sim/planted.cu).
#include <torch/extension.h>

#include <string>

#include <cuda_runtime.h>

#include "control.h"

cudaError_t launch_planted(const std::string& which, float* data, int64_t n);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("set_seed", &cuda_sim::set_seed, "seed of the thread schedules");
  m.def("launch_counts", &cuda_sim::launch_counts, "launches so far per file:kernel");
  m.def("atomics_executed", &cuda_sim::atomics_executed, "atomic operations so far");
  m.def("launch_planted", [](const std::string& which, torch::Tensor data) {
    TORCH_CHECK(data.is_contiguous() && data.scalar_type() == at::kFloat, "data: contiguous float32");
    const cudaError_t err = launch_planted(which, data.data_ptr<float>(), data.numel());
    TORCH_CHECK(err == cudaSuccess, which, ": launch failed: ", cudaGetErrorString(err));
  }, "runs one of the planted-bug kernels on `data`");
}
