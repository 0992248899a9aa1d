#pragma once
// Stub for `make glue-check`: declares only what torch's CUDA headers name, so the
// glue can be syntax-checked against a CPU-only torch. Never linked or run.
#include "cusolver_common.h"
typedef struct cusolverDnContext* cusolverDnHandle_t;
