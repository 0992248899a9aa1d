#pragma once
// Stub for `make glue-check`: declares only what torch's CUDA headers name, so the
// glue can be syntax-checked against a CPU-only torch. Never linked or run.
typedef struct cusparseContext* cusparseHandle_t;
typedef enum { CUSPARSE_STATUS_SUCCESS = 0 } cusparseStatus_t;
