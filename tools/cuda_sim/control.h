#pragma once
// The CUDA simulator's controls for its test driver (bindings.cpp).
#include <cstdint>
#include <map>
#include <string>

namespace cuda_sim {

// Seed of the thread schedules: the order in which a block's threads run between barriers.
void set_seed(uint64_t seed);

// Launches run so far per kernel, keyed "<file>:<kernel>" (the kernel without template
// arguments), e.g. "csrc/cuda/pyramid_pool.cu:forward_kernel".
std::map<std::string, int64_t> launch_counts();

// Atomic operations executed so far (a call whose kernels ran none must be bitwise repeatable).
uint64_t atomics_executed();

}  // namespace cuda_sim
