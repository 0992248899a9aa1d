#pragma once
// Stand-in for CUDA's bf16 header when csrc/cuda is built for the CUDA simulator.
#include "cuda_sim.h"
