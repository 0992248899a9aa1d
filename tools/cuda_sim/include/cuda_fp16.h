#pragma once
// Stand-in for CUDA's fp16 header when csrc/cuda is built for the CUDA simulator.
#include "cuda_sim.h"
