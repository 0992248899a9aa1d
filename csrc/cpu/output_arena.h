#pragma once
// Large CPU outputs (32 MiB or more) come from a small cache of huge-page-backed blocks that are
// kept mapped after their tensor dies, like ONNX Runtime's CPU arena or PyTorch's CUDA caching
// allocator. Reason: glibc gives every allocation of 32 MiB or more a fresh mmap and unmaps it on
// free, so each call faulted its output in again. On the 2-core VM that cost 1.5 to 50 ms per
// 33 MB output (7 ms with 4 KiB pages), more than most kernels that fill it. Smaller outputs stay
// with at::empty: glibc already reuses their heap memory.
//
// The cache holds at most RTSEG_CPU_CACHE_MIB MiB of freed blocks (default 512; 0 turns it off);
// rtseg_ops.empty_cpu_cache() hands them back to the system.
#include <ATen/ATen.h>

#include <cstdint>

namespace rtseg {

// at::empty(sizes, options) (options carry the memory format) for a CPU tensor the kernel fills.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// empty_output with t's sizes and dtype, in output_format(t).
at::Tensor empty_output_like(const at::Tensor& t);

// Frees every cached block; returns the bytes handed back.
int64_t empty_cpu_cache();

}  // namespace rtseg
