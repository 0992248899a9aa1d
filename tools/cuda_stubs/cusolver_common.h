#pragma once
// Stub for `make glue-check`: declares only what torch's CUDA headers name, so the
// glue can be syntax-checked against a CPU-only torch. Never linked or run.
typedef enum { CUSOLVER_STATUS_SUCCESS = 0 } cusolverStatus_t;
