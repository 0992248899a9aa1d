// The schemas of every rtseg op, in one place. Kernels register against them per device in
// csrc/cpu/<op>.cpp (CPU) and csrc/cuda/<op>_glue.cpp (CUDA); Triton kernels register from Python.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing rtseg_ops._C runs the static registrations below; the module itself is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(rtseg, m) {
  m.def("grouped_flow_warp(Tensor input, Tensor flow, int groups, str padding_mode, "
        "bool align_corners) -> Tensor");
  m.def("grouped_flow_warp_backward(Tensor grad_output, Tensor input, Tensor flow, int groups, "
        "str padding_mode, bool align_corners) -> (Tensor, Tensor)");
  m.def("gated_flow_fusion(Tensor high, Tensor low, Tensor flow_high, Tensor flow_low, "
        "Tensor gate_high, Tensor gate_low, int groups) -> Tensor");
  m.def("gated_flow_fusion_backward(Tensor grad_output, Tensor high, Tensor low, "
        "Tensor flow_high, Tensor flow_low, Tensor gate_high, Tensor gate_low, int groups) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("spatial_aware_pool(Tensor x, int levels, bool count_include_pad) -> Tensor[]");
  m.def("spatial_aware_pool_backward(Tensor[] grad_outputs, Tensor x, int levels, "
        "bool count_include_pad) -> Tensor");
  m.def("pyramid_pool(Tensor x, int[] grids, bool keep_aspect_ratio, bool cascade) -> Tensor");
  m.def("pyramid_pool_backward(Tensor grad_output, Tensor x, int[] grids, "
        "bool keep_aspect_ratio, bool cascade) -> Tensor");
  // Returns (output, lse): the per-pixel log-sum-exp of the logits, kept for the backward.
  m.def("pixel_context_attention(Tensor query, Tensor key, Tensor value, float scale) "
        "-> (Tensor, Tensor)");
  m.def("pixel_context_attention_backward(Tensor grad_output, Tensor query, Tensor key, "
        "Tensor value, Tensor lse, float scale) -> (Tensor, Tensor, Tensor)");
}
