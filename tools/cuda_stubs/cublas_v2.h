#pragma once
// Stub for `make glue-check`: declares only what torch's CUDA headers name, so the
// glue can be syntax-checked against a CPU-only torch. Never linked or run.
typedef struct cublasContext* cublasHandle_t;
typedef enum { CUBLAS_STATUS_SUCCESS = 0 } cublasStatus_t;
